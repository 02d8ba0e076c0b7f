"""Numeric core: the distances of one matrix of every stored unit, in blocks of units.

An ``n_units`` that covers a whole layer (``'all'``) is evaluated once, on every stored value:
for VGG16's ``block1_conv1`` and 43 images, a ``43 x 3,211,264`` matrix. Converting it to a
float64 stack first, as :func:`~daskdiff.core.differentiation.distances_stack` does, allocates
1.1 GB that is touched once and freed (on virtual machines each first touch of a page costs
~3 s per GB). :func:`exact_distances` gives the same distances from the float32 values in
blocks of :data:`BLOCK_UNITS` units, holding one float64 block at a time:

- the normaliser (:data:`~daskdiff.core.differentiation.NORMALIZATIONS`: a shift and a scale
  over all entries) from per-block sums in float64, the z-score's sum of squares centred on the
  mean (two passes, no ``E[x^2] - E[x]^2`` cancellation), or given by the caller (the
  unit-major layout has each unit's moments already);
- the Gram matrix as the sum of each normalised block's symmetric product, then
  :func:`~daskdiff.core.distances.sq_from_gram`; where a pair's squared distance is below
  :data:`~daskdiff.core.distances.CANCELLATION` of its norms, the products are redone on
  blocks centred per unit over the images, as :mod:`daskdiff.core.distances` does.

Only the order in which the Gram matrix's terms are added differs from the stacked path (BLAS
blocks its inner dimension too), so results agree with it to ~1e-15 relative where distances
are not small against the norms.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .differentiation import check_normalize, check_scale, describe_statistic, per_unit_divisor
from .distances import CANCELLATION, sq_from_gram, symmetrize

EXACT_METRICS = ("euclidean", "sqeuclidean")
"""The metrics :func:`exact_distances` computes."""

BLOCK_UNITS = 16384
"""Units per block: a float64 block of 43 images is 5.6 MB (in cache-sized pieces for BLAS)."""


def _blocks(x: np.ndarray, units_first: bool, block: int) -> Iterator[np.ndarray]:
    """``x``'s units ``block`` at a time, as ``(n_images, b)`` views (``(b, n_images)`` when ``units_first``)."""
    n = x.shape[0] if units_first else x.shape[1]
    for start in range(0, n, block):
        yield x[start : start + block] if units_first else x[:, start : start + block]


def _statistic(x: np.ndarray, normalize: str, units_first: bool, block: int) -> tuple[float, float]:
    """``(shift, scale)`` of :data:`~daskdiff.core.differentiation.NORMALIZATIONS` over all
    entries of ``x``, block by block in float64."""
    if normalize == "none":
        return 0.0, 1.0
    if normalize == "max":
        return 0.0, max((max(float(b.max()), -float(b.min())) for b in _blocks(x, units_first, block) if b.size), default=np.nan)
    mean = sum(float(b.sum(dtype=np.float64)) for b in _blocks(x, units_first, block)) / x.size
    if normalize == "mean":
        return 0.0, mean
    squares = 0.0
    for b in _blocks(x, units_first, block):
        centred = b.astype(np.float64) - mean
        squares += float(np.einsum("ij,ij->", centred, centred))
    return mean, float(np.sqrt(squares / x.size))


def _gram(x: np.ndarray, shift: float, scale: float, units_first: bool, block: int, centred: bool) -> np.ndarray:
    """Sum over blocks of the normalised block's ``y @ y.T`` (images by images), float64; with
    ``centred`` each unit's mean over the images is taken from its normalised values first."""
    n = x.shape[1] if units_first else x.shape[0]
    gram = np.zeros((n, n))
    for b in _blocks(x, units_first, block):
        y = b.astype(np.float64)
        y -= shift
        y /= scale
        if centred:
            y -= y.mean(axis=1 if units_first else 0, keepdims=True)
        gram += y.T @ y if units_first else y @ y.T  # one symmetric product (BLAS syrk)
    return gram


def exact_distances(x: np.ndarray, metric: str = "euclidean", normalize: str = "none", per_unit: bool = False, *,
                    units_first: bool = False, name: str | None = None, on_undefined: str = "raise",
                    min_scale: float = 0.0, block: int = BLOCK_UNITS,
                    statistic: tuple[float, float] | None = None) -> tuple[np.ndarray, bool]:
    """The distance matrix of ``x`` (``(n_images, n_units)``, or ``(n_units, n_images)`` with
    ``units_first``; any float dtype, not copied), normalised by ``normalize`` over all its
    entries: what :func:`~daskdiff.core.differentiation.distances_stack` gives for ``x[None]``,
    computed in blocks of ``block`` units (see the module notes).

    Returns ``(d, undefined)``: the symmetric ``(n, n)`` float64 matrix (NaN when the
    normaliser is undefined and ``on_undefined='nan'``) and whether it was. ``per_unit``,
    ``name``, ``on_undefined`` and ``min_scale`` are those of ``distances_stack``.
    ``statistic``: the normaliser's ``(shift, scale)`` over all of ``x`` where the caller has it
    (from per-unit moments: :func:`daskdiff.core.unit_major.layer_statistic`), sparing the
    two passes over ``x`` that compute it here.
    """
    if metric not in EXACT_METRICS:
        raise ValueError(f"exact_distances computes {EXACT_METRICS}, not {metric!r}")
    check_normalize(normalize)
    n_images, n_units = (x.shape[1], x.shape[0]) if units_first else x.shape
    if n_images < 2:
        raise ValueError(f"need at least 2 images to compute distances, got {n_images}")
    shift, scale = _statistic(x, normalize, units_first, block) if statistic is None else statistic
    bad, safe = check_scale(np.array(scale), normalize, describe_statistic(normalize), name=name, on_undefined=on_undefined,
                            min_scale=min_scale)
    if bad:
        return np.full((n_images, n_images), np.nan), True
    shift, scale = float(shift), float(safe)
    d, norms = sq_from_gram(_gram(x, shift, scale, units_first, block, centred=False))
    risky = d < CANCELLATION * norms
    np.fill_diagonal(risky, False)
    if risky.any():
        d, _ = sq_from_gram(_gram(x, shift, scale, units_first, block, centred=True))
    d = symmetrize(d)
    if metric == "euclidean":
        d = np.sqrt(d)
    if per_unit:
        d /= per_unit_divisor(metric, n_units)
    return d, False
