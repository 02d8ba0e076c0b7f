"""Numeric core: bootstrap over images of differentiation and of differences between sets (pure numpy)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .differentiation import MedianOver, check_median_over, rdm_median


_CHUNK_ELEMENTS = 4_000_000  # bootstrap samples x batch x pairs held at once


class BootstrapDifference(NamedTuple):
    """Result of :func:`bootstrap_difference`; every array has the RDMs' leading shape."""

    difference: np.ndarray
    """Observed differentiation of set a minus that of set b."""
    low: np.ndarray
    """Lower percentile bound of the bootstrap distribution of the difference."""
    high: np.ndarray
    """Upper percentile bound."""
    samples: np.ndarray
    """The bootstrap differences, shape ``(n_boot, ...)`` (NaN for a degenerate resample)."""


def _check_rdm(rdm: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(rdm, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} must be square RDMs of shape (..., n_images, n_images), got shape {arr.shape}")
    if arr.shape[-1] < 2:
        raise ValueError(f"{name} has {arr.shape[-1]} image(s); a difference of differentiation needs at least 2 per set")
    return arr


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``np.median`` of each batch entry's values repeated ``weights`` times.

    ``values`` (..., P) float (no NaN), ``weights`` (B, P) non-negative integers shared by the
    whole batch; returns (B, ...). The median of an even count is the mean of the two middle
    values, as ``np.median`` does; a total weight of 0 gives NaN.
    """
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)  # (..., P)
    cum = np.cumsum(weights[:, order], axis=-1)  # (B, ..., P)
    total = cum[..., -1]
    out = np.full(total.shape, np.nan)
    ok = total > 0
    ordered = np.broadcast_to(ordered, cum.shape)
    halves = []
    for pos in ((total - 1) // 2, total // 2):  # 0-based ranks of the two middle values
        rank = np.sum(cum <= pos[..., None], axis=-1, keepdims=True)
        rank = np.minimum(rank, cum.shape[-1] - 1)
        halves.append(np.take_along_axis(ordered, rank, axis=-1)[..., 0])
    out[ok] = 0.5 * (halves[0][ok] + halves[1][ok])
    return out


def resampled_differentiation(rdm: np.ndarray, index: np.ndarray, *, median_over: MedianOver = "condensed") -> np.ndarray:
    """Differentiation of image resamples of RDMs, leaving out pairs of copies of one image.

    Parameters
    ----------
    rdm : array_like, shape (..., n, n)
        Symmetric distance matrices of one image set; the leading axes (e.g. layers) are a
        batch, and every resample is applied to all of them.
    index : array_like of int, shape (n_resamples, k)
        Each row lists the original images of one resample (drawn with replacement, any
        ``k``; ``k = n`` for the bootstrap).
    median_over : {'condensed', 'square'}
        As in :func:`daskdiff.differentiation`: the median over each pair of resampled
        images once, or over the full square (both triangles, and the ``k`` zeros of the
        diagonal).

    Returns
    -------
    numpy.ndarray, shape (n_resamples, ...)
        NaN where the resample holds no pair of distinct images (all ``k`` draws were one
        image), or where the RDM holds a NaN.

    Notes
    -----
    A resample that draws image ``i`` twice would put a distance of exactly 0 between the two
    copies. That zero is not a distance between two images of the population: it comes from
    the resampling, and it would drag the median down more the more duplicates a resample
    has (about a third of a bootstrap resample's images are duplicates). Pairs of copies of
    the same original image are therefore left out: a resample with image ``i`` drawn
    ``c_i`` times contributes the distance ``d_ij`` ``c_i * c_j`` times for every pair of
    distinct originals ``i < j``, and nothing for ``i = j``. With ``median_over='square'``
    the diagonal still contributes its ``k`` zeros, as the full-square median always does.
    """
    arr = _check_rdm(rdm, "rdm")
    median_over = check_median_over(median_over)
    idx = np.asarray(index)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"index must be a 2-D integer array (n_resamples, k), got {idx.dtype} of shape {idx.shape}")
    n = arr.shape[-1]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"index holds values outside [0, {n}); they must be positions of the RDM's {n} images")
    n_res, k = idx.shape
    i, j = np.triu_indices(n, k=1)
    values = arr[..., i, j]  # (..., P)
    if median_over == "square":  # the diagonal's zeros, then each pair twice
        values = np.concatenate([np.zeros(values.shape[:-1] + (1,)), values], axis=-1)
    batch = values.shape[:-1]
    out = np.full((n_res,) + batch, np.nan)
    finite = np.all(np.isfinite(values), axis=-1)
    safe = np.where(finite[..., None], values, 0.0)
    per_sample = max(1, int(np.prod(batch, dtype=np.int64)) * values.shape[-1])
    step = max(1, _CHUNK_ELEMENTS // per_sample)
    for start in range(0, n_res, step):
        chunk = idx[start : start + step]
        rows = np.arange(len(chunk))[:, None]
        counts = np.bincount((chunk + n * rows).ravel(), minlength=len(chunk) * n).reshape(len(chunk), n)
        weights = counts[:, i] * counts[:, j]  # (b, P): same-image pairs never appear here
        no_pair = weights.sum(axis=1) == 0
        if median_over == "square":
            weights = np.concatenate([np.full((len(chunk), 1), k), 2 * weights], axis=1)
        medians = _weighted_median(safe, weights)
        medians[no_pair] = np.nan
        out[start : start + step] = medians
    return np.where(finite, out, np.nan)


def bootstrap_difference(
    rdm_a: np.ndarray,
    rdm_b: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int | None = 0,
    ci: float = 0.95,
    median_over: MedianOver = "condensed",
) -> BootstrapDifference:
    """Difference of differentiation between two image sets, with a bootstrap CI over images.

    Parameters
    ----------
    rdm_a, rdm_b : array_like, shapes (..., n_a, n_a) and (..., n_b, n_b)
        Each set's distance matrices; the leading shapes must match (e.g. one RDM per layer).
        The sets may have different numbers of images.
    n_boot : int
        Number of bootstrap resamples.
    seed : int or None
        Seed of the ``numpy.random.default_rng`` that draws every resample (no global state):
        the same seed gives the same interval.
    ci : float
        Confidence level of the percentile interval, in (0, 1).
    median_over : {'condensed', 'square'}
        How a set's differentiation is taken from its RDM (see
        :func:`daskdiff.differentiation`); use the job's ``median_over``.

    Returns
    -------
    BootstrapDifference
        ``difference`` (observed a - b), ``low`` and ``high`` (the ``(1 - ci)/2`` and
        ``(1 + ci)/2`` percentiles of the bootstrap differences) and ``samples``
        ``(n_boot, ...)``; each of the first three has the RDMs' leading shape.

    Notes
    -----
    Each resample draws ``n_a`` images of set a and, independently, ``n_b`` images of set b,
    uniformly with replacement; the same draw is used for every leading index (every layer),
    so intervals of different layers come from the same resamples. Pairs of copies of one
    image are left out of a resample's median (see :func:`resampled_differentiation`). A
    resample that draws a single distinct image has no pair left and gives NaN; those are
    ignored by the percentiles (with 8 images, about 1 resample in 2 million).

    This is the plain percentile bootstrap. With few images (the demo has 8 per set) the
    interval is coarse and tends to be too narrow: read it as a rough guide, not a test.

    See Also
    --------
    set_difference : the same over a results Dataset's layers.
    """
    a = _check_rdm(rdm_a, "rdm_a")
    b = _check_rdm(rdm_b, "rdm_b")
    median_over = check_median_over(median_over)
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"rdm_a and rdm_b must have the same leading shape, got {a.shape[:-2]} and {b.shape[:-2]}")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci is a confidence level in (0, 1), e.g. ci=0.95; got {ci!r}")
    rng = np.random.default_rng(seed)
    n_a, n_b = a.shape[-1], b.shape[-1]
    idx_a = rng.integers(0, n_a, size=(n_boot, n_a))
    idx_b = rng.integers(0, n_b, size=(n_boot, n_b))
    samples = resampled_differentiation(a, idx_a, median_over=median_over) - resampled_differentiation(b, idx_b, median_over=median_over)
    observed = np.asarray(rdm_median(a, median_over) - rdm_median(b, median_over), dtype=np.float64)
    low = np.full(observed.shape, np.nan)
    high = np.full(observed.shape, np.nan)
    defined = np.isfinite(observed) & np.any(np.isfinite(samples), axis=0)
    if np.any(defined):
        q = 100 * np.array([(1 - ci) / 2, (1 + ci) / 2])
        bounds = np.nanpercentile(samples[:, defined], q, axis=0)
        low[defined], high[defined] = bounds[0], bounds[1]
    return BootstrapDifference(observed, low, high, samples)
