"""Warnings and errors of daskdiff (kept import-light: pytest's config imports this module)."""


class DaskdiffWarning(UserWarning):
    """A warning issued by daskdiff itself (the test-suite turns these into errors)."""
