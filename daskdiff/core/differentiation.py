"""Numeric core: differentiation, the median pairwise distance between images' activation vectors.

Pure numpy. The batched :func:`differentiation_stack` evaluates many sampling repeats of one
layer at once (one stack of Gram matrices); :func:`differentiation` is the single-matrix form.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

from .distances import check_metric, Metric, pairwise_distances_stack

Normalize = Literal["none", "mean", "zscore", "max"]
MedianOver = Literal["condensed", "square"]


class UndefinedNormalizationError(ValueError):
    """The normalising statistic of a layer is zero or not finite (e.g. a dead layer)."""


def _stat_none(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    shape = x.shape[:-2] + (1, 1)
    return np.zeros(shape), np.ones(shape), "none"


def _stat_mean(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    mean = x.mean(axis=(-2, -1), keepdims=True)
    return np.zeros_like(mean), mean, "mean of all entries"


SQUARES_CHUNK = 2**20
"""Entries squared at a time by :func:`_centred_square_sum` (its only temporary: 8 MiB)."""


def _centred_square_sum(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``sum((x - mean)**2)`` over the last two axes of ``x``, without a temporary of ``x``'s size.

    Each chunk of :data:`SQUARES_CHUNK` entries per matrix is summed pairwise (as ``np.sum``);
    the chunks' sums are added in order: as accurate as ``np.var``'s one pairwise sum.
    """
    lead = x.shape[:-2]
    flat = x.reshape(lead + (-1,))
    centre = mean.reshape(lead + (1,))
    step = max(1024, SQUARES_CHUNK // max(1, int(np.prod(lead, dtype=np.int64))))
    total = np.zeros(lead)
    buf = np.empty(lead + (min(step, flat.shape[-1]),))
    for start in range(0, flat.shape[-1], step):
        part = flat[..., start : start + step]
        b = buf[..., : part.shape[-1]]
        np.subtract(part, centre, out=b)
        np.multiply(b, b, out=b)
        total += b.sum(axis=-1)
    return total


def _stat_zscore(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    mean = x.mean(axis=(-2, -1), keepdims=True)
    sd = np.sqrt(_centred_square_sum(x, mean) / (x.shape[-2] * x.shape[-1])).reshape(mean.shape)  # ddof=0, as np.std
    return mean, sd, "standard deviation of all entries"


def _stat_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    peak = np.maximum(x.max(axis=(-2, -1), keepdims=True), -x.min(axis=(-2, -1), keepdims=True))  # |x|'s maximum, no |x| copy
    return np.zeros_like(peak), peak, "maximum absolute entry"


NORMALIZATIONS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, str]]] = {
    "none": _stat_none,
    "mean": _stat_mean,
    "zscore": _stat_zscore,
    "max": _stat_max,
}
"""Name -> function giving ``(shift, scale, description)``; normalised x = (x - shift) / scale."""


def describe_statistic(normalize: str) -> str:
    """What ``normalize``'s scale is (e.g. "standard deviation of all entries"), for the message of
    an undefined one where the statistic was computed some other way (in blocks, from moments)."""
    return NORMALIZATIONS[normalize](np.ones((1, 1)))[2]


def check_normalize(normalize: str) -> str:
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalize {normalize!r}; valid values are {sorted(NORMALIZATIONS)}"
        )
    return normalize


def per_unit_divisor(metric: str, n_units: int) -> float:
    """What ``per_unit=True`` divides a distance by, for ``n_units`` units.

    ``euclidean``: ``sqrt(n_units)`` (root-mean-square difference per unit);
    ``sqeuclidean`` and ``cityblock``: ``n_units`` (mean squared / absolute difference);
    ``chebyshev``, ``cosine``, ``correlation``: 1 (already independent of the number of units).
    """
    check_metric(metric)
    if metric == "euclidean":
        return float(np.sqrt(n_units))
    if metric in ("sqeuclidean", "cityblock"):
        return float(n_units)
    return 1.0


def normalize_stack(
    x: np.ndarray,
    normalize: Normalize = "none",
    *,
    name: str | None = None,
    on_undefined: str = "raise",
    min_scale: float = 0.0,
    overwrite_x: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise each matrix of a stack by statistics over all of its entries.

    Returns the normalised float64 stack and a boolean array (one per matrix) that is True
    where the statistic was not finite or ``<= min_scale`` (0 by default). With
    ``on_undefined='raise'`` such a matrix raises :class:`UndefinedNormalizationError` naming
    ``name`` (e.g. the layer) and the statistic; with ``'nan'`` its entries become NaN and the
    flag tells which.

    ``min_scale`` guards against dividing by rounding noise: e.g. 200 sampled softmax outputs
    that are all ~1e-30 have a non-zero SD, but it is far below float32 resolution of the
    layer's values, and z-scoring would blow it up to distances of order 1. The job passes
    ``1e-6 * max|activation|`` of the layer in the image set.

    ``overwrite_x=True`` lets a float64 ``x`` be normalised in place (the returned stack is then
    ``x`` itself), as scipy's ``overwrite_a``; the values are the same either way.
    """
    fn = NORMALIZATIONS[check_normalize(normalize)]
    arr = np.asarray(x, dtype=np.float64)
    shift, scale, what = fn(arr)
    bad, safe_scale = check_scale(scale, normalize, what, name=name, on_undefined=on_undefined, min_scale=min_scale)
    # in place where ``arr`` is a converted copy or the caller gave ``x`` up: a layer's stack can
    # be gigabytes, and every fresh temporary of that size costs page faults
    out = np.subtract(arr, shift, out=arr if overwrite_x or arr is not x else None)
    np.divide(out, safe_scale, out=out)
    bad = bad.reshape(bad.shape[:-2])
    out[bad] = np.nan
    return out, bad


def check_scale(
    scale: np.ndarray,
    normalize: str,
    what: str,
    *,
    name: str | None = None,
    on_undefined: str = "raise",
    min_scale: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(bad, safe_scale)`` for normalising statistics ``scale``: see :func:`normalize_stack`.

    ``bad`` is True where ``scale`` is not finite or ``<= min_scale`` in absolute value;
    ``safe_scale`` is ``scale`` with those entries replaced by 1. With ``on_undefined='raise'``
    a bad entry raises :class:`UndefinedNormalizationError` naming ``what`` and ``name``.
    """
    scale = np.asarray(scale)
    bad = ~np.isfinite(scale) | (np.abs(scale) <= min_scale)
    if np.any(bad) and on_undefined == "raise":
        where = f" of {name}" if name else ""
        value = scale[bad].ravel()[0]
        raise UndefinedNormalizationError(
            f"normalize={normalize!r}: the {what}{where} is {value} (a dead or constant layer?"
            f"{' at most min_scale=' + str(min_scale) if min_scale else ''}), "
            "so it cannot be divided by; use normalize='none', sample more units, or leave the "
            "layer out"
        )
    return bad, np.where(bad, 1.0, scale)


def condensed(d: np.ndarray) -> np.ndarray:
    """The strict upper triangle of ``(..., n, n)`` matrices, row by row: ``(..., n*(n-1)/2)``.

    Same order as :func:`scipy.spatial.distance.squareform` (pair (0,1), (0,2), ..., (1,2), ...).
    """
    n = d.shape[-1]
    i, j = np.triu_indices(n, k=1)
    return d[..., i, j]


def _median_condensed(d: np.ndarray) -> np.ndarray:
    return np.median(condensed(d), axis=-1)


def _median_square(d: np.ndarray) -> np.ndarray:
    return np.median(d.reshape(d.shape[:-2] + (-1,)), axis=-1)


MEDIAN_OVER: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "condensed": _median_condensed,
    "square": _median_square,
}
"""What the median of an RDM is taken over: the strict upper triangle (``condensed``, each pair
once, no diagonal) or the full square matrix (``square``: each pair twice plus the zero
diagonal, as the seed notebooks do)."""


def check_median_over(median_over: str) -> str:
    if median_over not in MEDIAN_OVER:
        raise ValueError(f"unknown median_over {median_over!r}; valid values are {list(MEDIAN_OVER)}")
    return median_over


def rdm_median(d: np.ndarray, median_over: str = "condensed") -> np.ndarray:
    """Median of each RDM in a stack, over what :data:`MEDIAN_OVER` names (default: condensed)."""
    return MEDIAN_OVER[check_median_over(median_over)](d)


def distances_stack(
    x: np.ndarray,
    metric: Metric = "euclidean",
    normalize: Normalize = "none",
    per_unit: bool = False,
    *,
    name: str | None = None,
    on_undefined: str = "raise",
    min_scale: float = 0.0,
    overwrite_x: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance matrices (RDMs) for a stack ``(..., n_images, n_units)``.

    Returns ``(rdms, undefined)``: ``rdms`` of shape ``(..., n, n)`` (NaN where the normaliser
    was undefined and ``on_undefined='nan'``) and the boolean ``undefined`` flags.
    See :func:`differentiation` for the conventions; ``overwrite_x``: see :func:`normalize_stack`.
    """
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[-2] < 2:
        raise ValueError(
            f"need at least 2 images to compute distances, got activations of shape {arr.shape} "
            "(n_images is the second-to-last axis)"
        )
    if on_undefined not in ("raise", "nan"):
        raise ValueError(f"on_undefined must be 'raise' or 'nan', got {on_undefined!r}")
    normed, undefined = normalize_stack(arr, normalize, name=name, on_undefined=on_undefined, min_scale=min_scale,
                                        overwrite_x=overwrite_x)
    normed[undefined] = 0.0  # distances of these matrices are discarded below
    d = pairwise_distances_stack(normed, metric)
    if per_unit:
        d /= per_unit_divisor(metric, arr.shape[-1])
    d[undefined] = np.nan
    return d, undefined


def differentiation_stack(
    x: np.ndarray,
    metric: Metric = "euclidean",
    normalize: Normalize = "none",
    per_unit: bool = False,
    *,
    median_over: MedianOver = "condensed",
    name: str | None = None,
    on_undefined: str = "raise",
) -> np.ndarray:
    """Differentiation of every matrix in a stack: the batched kernel of the job.

    Parameters
    ----------
    x : array_like, shape (..., n_images, n_units)
        E.g. ``(n_repeats, n_images, n_units)``: one matrix per sampling repeat of a layer.
    metric, normalize, per_unit, median_over, name
        As in :func:`differentiation`.
    on_undefined : {'raise', 'nan'}
        What a matrix whose normalising statistic is 0 or not finite gives: an
        :class:`UndefinedNormalizationError`, or NaN for that matrix alone (the job records and
        reports how many repeats were undefined; it never drops them silently).

    Returns
    -------
    numpy.ndarray, shape (...), float64
    """
    d, undefined = distances_stack(
        x, metric, normalize, per_unit, name=name, on_undefined=on_undefined
    )
    out = np.asarray(rdm_median(d, median_over), dtype=np.float64)
    out[undefined] = np.nan
    return out


def differentiation(
    x: np.ndarray,
    metric: Metric = "euclidean",
    normalize: Normalize = "none",
    per_unit: bool = False,
    *,
    median_over: MedianOver = "condensed",
    name: str | None = None,
) -> float:
    """Differentiation of a set of images in one layer: the median pairwise distance.

    Parameters
    ----------
    x : array_like, shape (n_images, n_units)
        One row per image (e.g. the sampled units of one layer).
    metric : str
        See :func:`daskdiff.pairwise_distances`; ``euclidean`` is not squared.
    normalize : {'none', 'mean', 'zscore', 'max'}
        Applied to ``x`` before distances, with statistics over *all* entries of ``x``:
        ``mean`` divides by the mean (the first seed), ``zscore`` subtracts the mean and divides
        by the standard deviation (ddof=0; the second seed), ``max`` divides by the maximum
        absolute entry, ``none`` leaves ``x`` as it is. A zero or non-finite statistic raises
        :class:`UndefinedNormalizationError` (a ``ValueError``) naming ``name`` and the statistic.
    per_unit : bool
        Divide distances by :func:`per_unit_divisor` (``sqrt(n_units)`` for Euclidean: the
        root-mean-square difference per unit), so 200 and 10,000 units are comparable.
    median_over : {'condensed', 'square'}
        ``condensed`` (default): the median of the strict upper triangle, each pair once.
        ``square``: the median of the full square matrix, diagonal zeros and both triangles
        included, as the seed notebooks computed it. It is biased low, and the bias depends on
        the number of images; use it only to compare with the seeds' numbers.
    name : str, optional
        Named in error messages (e.g. the layer).

    Returns
    -------
    float

    Notes
    -----
    Subtracting a constant (``zscore``) does not change Euclidean, city-block or Chebyshev
    distances, so for those ``zscore`` is a division by the standard deviation. Note that this
    does *not* make Euclidean distance equivalent to correlation distance, as the second seed
    says: that needs each image's vector z-scored on its own (use ``metric='correlation'``).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(
            f"x must be 2-D (n_images, n_units), got shape {arr.shape}; "
            "use differentiation_stack for a stack of matrices"
        )
    return float(
        differentiation_stack(arr, metric, normalize, per_unit, median_over=median_over, name=name)
    )
