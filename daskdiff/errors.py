"""Warnings and errors of daskdiff (kept import-light: pytest's config imports this module)."""


class DaskdiffWarning(UserWarning):
    """A warning issued by daskdiff itself (the test-suite turns these into errors)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that the CLI prints as one clear message (no traceback): bad input."""
    from .images import ImageDecodeError, ImageSetError
    from .job import JobError
    from .models import WeightsUnavailableError
    from .spec import SpecError

    return (SpecError, ImageSetError, ImageDecodeError, JobError, WeightsUnavailableError, ValueError, FileNotFoundError, KeyError)
