"""Base layer: daskdiff's own error types (imports nothing, so every layer may use it).

The CLI prints a :class:`DaskdiffError` as one line, with no traceback: its message names the
file, key or value at fault and how to fix it. Any other exception is a bug in daskdiff, and the
CLI shows its traceback and asks for a report.
"""


class DaskdiffError(Exception):
    """An error caused by the user's input or environment, reported in one line that says the fix."""


class InputError(DaskdiffError, ValueError):
    """A value, key or file given by the user is not valid (a ``ValueError``, so callers may catch either)."""


class JobError(DaskdiffError, RuntimeError):
    """A job that cannot go on; the message names the shard, task or file and the cause."""


class DeviceError(JobError):
    """A worker's accelerator failed a task (out of memory, device lost); the message names the
    worker, the device and the batch size, and what to change."""


MAX_QUOTED = 200
"""Error messages quote at most this many characters of a value taken from the user's input."""


def shorten(text: str, limit: int = MAX_QUOTED) -> str:
    """``text``, cut to ``limit`` characters with a note of the full length when longer."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
