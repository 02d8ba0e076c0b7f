"""Base layer: where daskdiff's progress and warning lines go (imports only the standard library).

Conventions
-----------
Every line a job reports (what it connected to, the plan, resumed and skipped work, warnings,
stage times) is a record of a logger under ``daskdiff``, named after the module that reports it
(``daskdiff.pipeline.job``, ``daskdiff.pipeline.cluster``, ``daskdiff.pipeline.budget``).
Progress is ``INFO`` (``echo(line)``); a line that warns is ``WARNING``, said with
:func:`warn` (``warn(echo, line)``), which the code calls where it warns: the level is chosen
there, never guessed from the text. The message is the whole line as the console shows it (a
warning's starts with ``warning:``, ``--force:`` or ``skipped (``), with no prefix of its own.

So the usual controls apply:

- a library call (a notebook, a script) prints nothing at ``INFO`` until logging is configured,
  e.g. ``logging.basicConfig(level="INFO")`` or :func:`log_to_terminal`;
- ``daskdiff`` on the command line calls :func:`log_to_terminal` (one handler, stdout, the bare
  message), unless Dask's logging configuration names a ``daskdiff`` logger: then Dask's
  handler, format and level are used instead, e.g. ``DASK_LOGGING__DASKDIFF=warning`` or, in a
  Dask config file, ``logging: {daskdiff: warning}`` keeps only the warnings.

Functions that report take ``echo``: a callable that receives each line instead of the logger
(tests and callers that want the lines as strings, warnings included); the default is
:func:`reporter` of the function's module.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, TextIO

ROOT = "daskdiff"

logging.getLogger(ROOT).addHandler(logging.NullHandler())  # a library's logger: silent until configured


class Reporter:
    """An ``echo`` that logs to logger ``name``: a call logs at INFO, :meth:`warning` at WARNING."""

    def __init__(self, name: str) -> None:
        self.log = logging.getLogger(name)

    def __call__(self, message: str) -> None:
        self.log.info(message, stacklevel=2)

    def warning(self, message: str) -> None:
        self.log.warning(message, stacklevel=3)


def reporter(name: str) -> Reporter:
    """The default ``echo`` of module ``name``: its lines are records of logger ``name``."""
    return Reporter(name)


def warn(echo: Callable[[str], None], message: str) -> None:
    """Say ``message``, a warning: at WARNING through a :class:`Reporter`; any other ``echo``
    (a list's ``append``, ``print``) receives the line as it receives every other."""
    (echo.warning if isinstance(echo, Reporter) else echo)(message)


def log_to_terminal(level: int | str = logging.INFO, stream: TextIO | None = None) -> logging.Handler | None:
    """Show daskdiff's lines on ``stream`` (default stdout), bare, from ``level`` up.

    Does nothing and returns None if the ``daskdiff`` logger already has a handler (configured by
    the user or by Dask's ``logging`` config); else returns the handler it added. The logger's
    level is set only if it has none, so a level set earlier wins.
    """
    logger = logging.getLogger(ROOT)
    if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        return None
    handler = logging.StreamHandler(stream) if stream is not None else _Stdout(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
    return handler


class _Stdout(logging.StreamHandler):
    """A handler for whatever ``sys.stdout`` is when a line is logged (it may be replaced later:
    a notebook's cell output, pytest's capture), not the stream that was current when it was made."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def named_in_dask_config(config: dict) -> bool:
    """Whether a Dask ``logging`` config section (old style or ``dictConfig`` style) names a daskdiff logger."""
    names = config.get("loggers", {}) if "version" in config else config
    return any(str(n) == ROOT or str(n).startswith(ROOT + ".") for n in names or {})
