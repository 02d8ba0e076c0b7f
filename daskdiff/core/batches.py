"""Numeric core: cutting ``n`` items into consecutive batches, the one batching helper of every layer."""

from __future__ import annotations


def batch_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of ``range(n)``, each of at most ``size`` items (the last may be shorter).

    Parameters
    ----------
    n : int
        Number of items (>= 0); ``n = 0`` gives no slice.
    size : int
        Items per batch (>= 1).

    Returns
    -------
    list of slice
        ``slice(0, size), slice(size, 2 * size), ..., slice(k * size, n)``; every slice has an
        explicit ``stop <= n``.

    Raises
    ------
    ValueError
        ``size < 1``.
    """
    if size < 1:
        raise ValueError(f"batch size must be a positive integer, got {size!r}")
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
