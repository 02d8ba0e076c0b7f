"""Numeric core: cutting ``n`` items into consecutive batches (and shards of whole batches), the one batching helper of every layer."""

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


def shard_size(requested: int, batch_size: int) -> int:
    """Shard size rounded up to a multiple of the batch size.

    Batches then hold the same images (same global positions) whatever the shard size, so
    float32 activations, and so results, are bit-identical for any shard size. (The batch
    size itself changes float32 rounding, ~1e-7 relative: it is part of the spec digest.)

    Parameters
    ----------
    requested : int
        ``extraction.shard_size``: images per shard asked for (>= 1).
    batch_size : int
        ``extraction.batch_size``: images per forward pass (>= 1).

    Returns
    -------
    int
        The smallest multiple of ``batch_size`` that is at least ``requested``.
    """
    return -(-requested // batch_size) * batch_size
