"""Work counted, not timed: how a test says "fast" without a clock.

The house rule: speed targets live in ``benchmarks/``; a unit test on shared CI cores asserts
what was done (lines of Python run, calls made, bytes allocated), which no machine's speed
changes. Importable by a fresh interpreter too (``sys.path`` holding ``tests/``), as the planning
test of ``tests/test_estimate.py`` runs it.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Callable


class TooMuchWork(RuntimeError):
    """Raised into the traced code once it has run more lines than its limit."""


def lines_run(fn: Callable[..., Any], *args: Any, limit: int = 10**7) -> tuple[Any, int]:
    """``(fn(*args), the number of lines of Python it ran)``, traced with :func:`sys.settrace`.

    Past ``limit`` lines :class:`TooMuchWork` is raised in the traced code, so a loop that a test
    means to rule out (say, over a billion repeats) fails at once instead of hanging. Lines of
    this thread only; C code (numpy) counts as the one line that calls it.
    """
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
            if count > limit:
                raise TooMuchWork(f"more than {limit} lines of Python run")
        return trace

    before = sys.gettrace()
    gc.collect()  # finalizers of earlier tests' garbage (Python ``__del__``) run now, not counted in ``fn``'s lines
    gc.disable()
    sys.settrace(trace)
    try:
        return fn(*args), count
    finally:
        sys.settrace(before)
        gc.enable()
