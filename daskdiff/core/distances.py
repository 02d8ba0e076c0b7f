"""Numeric core: pairwise distances between images' activation vectors (pure numpy).

Every function here takes a *stack* of matrices ``x`` of shape ``(..., n_images, n_units)``
and returns distance matrices of shape ``(..., n_images, n_images)``: the batched form is the
kernel the cluster runs for many sampling repeats of one layer at once, and the single-matrix
form, :func:`pairwise_distances`, is the same code with a stack of one.

Conventions
-----------
- Distances are computed in float64 whatever the input dtype.
- Matrices are exactly symmetric with an exactly zero diagonal.
- ``euclidean``, ``sqeuclidean``, ``cosine`` and ``correlation`` use the Gram-matrix
  formulation (one matrix product per matrix); squared distances are clamped at 0 before the
  square root. When some pair's squared distance is below ``CANCELLATION`` (1e-5) of the sum
  of the two squared norms (e.g. activations with a large common offset), that matrix's
  product is redone on column-centred data (decided per matrix of a stack, so each matrix's
  distances are the same whether it is computed alone or in a stack): distances are translation invariant and centring removes most
  of the cancellation in ``|a|^2 + |b|^2 - 2 a.b``.
- ``cityblock`` and ``chebyshev`` have no Gram form; they loop over rows, vectorised over the
  other rows and units.
- ``cosine`` between an all-zero row and any other row is defined as 1 (similarity 0), and as 0
  between two all-zero rows. ``correlation`` does the same for constant rows (zero variance).
  scipy returns NaN in these cases; we define a value so a dead layer gives differentiation 0
  rather than NaN.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

Metric = Literal["euclidean", "sqeuclidean", "correlation", "cosine", "cityblock", "chebyshev"]


def symmetrize(d: np.ndarray) -> np.ndarray:
    """Keep the strict upper triangle, mirror it, zero the diagonal (in float64)."""
    upper = np.triu(d, k=1)
    return upper + upper.swapaxes(-1, -2)


def _gram(x: np.ndarray, units_first: bool = False) -> np.ndarray:
    """``x @ x.T`` per matrix (``x.T @ x`` when ``units_first``): one symmetric product each
    (numpy hands a matrix times its own transpose to BLAS ``syrk``)."""
    if units_first:
        return np.matmul(x.swapaxes(-1, -2), x)
    return np.matmul(x, x.swapaxes(-1, -2))


CANCELLATION = 1e-5
"""Below this d² / (|a|² + |b|²) for some pair, squared distances are recomputed after centring."""


def sq_from_gram(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|a|² + |b|² - 2 a.b clamped at 0, |a|² + |b|²) from Gram matrices ``d`` ``(..., n, n)``
    (float64), formed in place in ``d``."""
    sq = np.diagonal(d, axis1=-2, axis2=-1).copy()
    scale = sq[..., :, None] + sq[..., None, :]
    d *= -2.0
    d += scale
    np.maximum(d, 0.0, out=d)
    return d, scale


def _sqeuclidean(x: np.ndarray, units_first: bool = False) -> np.ndarray:
    """|a|² + |b|² - 2 a.b from one Gram matrix; recomputed on column-centred data (translation
    invariant) when a pair's distance is so small against the norms that rounding in the Gram
    matrix would matter (relative error ~ 1e-16 / CANCELLATION). ``units_first``: ``x`` is
    ``(..., n_units, n_images)``."""
    images = -1 if units_first else -2
    d, scale = sq_from_gram(_gram(x, units_first))
    risky = d < CANCELLATION * scale  # never true for two all-zero rows (0 < 0)
    i = np.arange(x.shape[images])
    risky[..., i, i] = False
    redo = risky.any(axis=(-2, -1))  # decided per matrix: a matrix's result never depends on its neighbours
    if redo.any():
        redo_x = x[redo]
        d[redo], _ = sq_from_gram(_gram(redo_x - redo_x.mean(axis=images, keepdims=True), units_first))
    return symmetrize(d)


def _euclidean(x: np.ndarray) -> np.ndarray:
    return np.sqrt(_sqeuclidean(x))


def _cosine_of(x: np.ndarray, null_rows: np.ndarray) -> np.ndarray:
    """1 - cosine similarity; rows flagged in ``null_rows`` have similarity 0 to others.

    Computed as half the squared Euclidean distance between the unit-length rows, which goes
    through the centred Gram path and so avoids most of the cancellation in ``1 - cos`` for
    nearly parallel rows.
    """
    return cosine_from_sq(_sqeuclidean(unit_rows(x, null_rows)), null_rows, null_rows)


def unit_rows(x: np.ndarray, null_rows: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length; rows flagged in ``null_rows`` become all zero."""
    peak = np.abs(x).max(axis=-1, keepdims=True)
    peak[null_rows] = 1.0
    scaled = x / peak  # guards the norm against underflow/overflow of tiny/huge entries
    norms = np.sqrt(np.einsum("...k,...k->...", scaled, scaled))
    norms[null_rows] = 1.0
    unit = scaled / norms[..., None]
    unit[null_rows] = 0.0
    return unit


def cosine_from_sq(sq: np.ndarray, null_a: np.ndarray, null_b: np.ndarray) -> np.ndarray:
    """Cosine distance from squared Euclidean distances ``(..., n, m)`` between unit rows.

    ``null_a`` (``(..., n)``) and ``null_b`` (``(..., m)``) flag the rows whose distance to any
    other row is 1 (and 0 between two flagged rows).
    """
    d = np.clip(0.5 * sq, 0.0, 2.0)
    null_pair = null_a[..., :, None] | null_b[..., None, :]
    both_null = null_a[..., :, None] & null_b[..., None, :]
    d[null_pair] = 1.0
    d[both_null] = 0.0
    return d


def cosine_null_rows(x: np.ndarray) -> np.ndarray:
    """The all-zero rows of ``x``: their cosine distance to any other row is defined as 1."""
    return ~np.any(x != 0, axis=-1)


def correlation_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows minus their mean, constant-row flags)``: correlation is the cosine of these."""
    constant = np.all(x == x[..., :1], axis=-1)
    centred = x - x.mean(axis=-1, keepdims=True)
    centred[constant] = 0.0
    return centred, constant


def _cosine(x: np.ndarray) -> np.ndarray:
    return _cosine_of(x, cosine_null_rows(x))


def _correlation(x: np.ndarray) -> np.ndarray:
    return _cosine_of(*correlation_rows(x))


def _row_loop(x: np.ndarray, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    n = x.shape[-2]
    d = np.zeros(x.shape[:-1] + (n,), dtype=np.float64)
    for i in range(n - 1):
        diff = np.abs(x[..., i + 1 :, :] - x[..., i : i + 1, :])
        d[..., i, i + 1 :] = reduce(diff, axis=-1)
    return d + d.swapaxes(-1, -2)


def _cityblock(x: np.ndarray) -> np.ndarray:
    return _row_loop(x, np.sum)


def _chebyshev(x: np.ndarray) -> np.ndarray:
    return _row_loop(x, np.max)


METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "euclidean": _euclidean,
    "sqeuclidean": _sqeuclidean,
    "correlation": _correlation,
    "cosine": _cosine,
    "cityblock": _cityblock,
    "chebyshev": _chebyshev,
}
"""Metric name -> function of a float64 stack ``(..., n, k)`` returning ``(..., n, n)``."""


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is a known metric name, else raise a ValueError listing them."""
    if metric not in METRICS:
        raise ValueError(
            f"unknown metric {metric!r}; valid metrics are {sorted(METRICS)}, "
            f"e.g. metric='euclidean'"
        )
    return metric


RDM_STACK_BYTES = 32 << 20
"""The most bytes of ``(repeats, n_images, n_images)`` float64 distance matrices one stack of
repeats makes (:func:`rdm_stack_repeats`). Each such matrix has ~5 temporaries as large (the Gram
product, the norms' sums, the cancellation mask, the symmetrised copy, the finiteness check):
above ~32 MB each is fresh memory from the kernel, whatever the allocator keeps. Measured for
1,000 images, 10,000 units (one thread, the workers' tuned allocator, this project's 2-core VM):
0.243-0.248 s per repeat at 1 to 8 repeats per stack, 0.294 s at 25 (0.253 and 0.313 s with
Dask's allocator settings)."""


def rdm_stack_repeats(n_images: int, wanted: int) -> int:
    """Repeats per stack, at most ``wanted``, whose distance matrices fit :data:`RDM_STACK_BYTES`
    (at least 1): 25 for 43 images, 4 for 1,000."""
    return max(1, min(wanted, RDM_STACK_BYTES // (8 * max(1, n_images) ** 2)))


def pairwise_distances_stack(x: np.ndarray, metric: Metric = "euclidean", *, units_first: bool = False) -> np.ndarray:
    """Distance matrices for a stack of activation matrices.

    Parameters
    ----------
    x : array_like, shape (..., n_images, n_units)
        Activations; leading axes (e.g. sampling repeats) are batch axes.
    metric : {'euclidean', 'sqeuclidean', 'correlation', 'cosine', 'cityblock', 'chebyshev'}
        Distance between two images' activation vectors, as in
        :func:`scipy.spatial.distance.pdist`.
    units_first : bool
        ``x`` is ``(..., n_units, n_images)`` instead (one row per unit, e.g. gathered from a
        unit-major layout): the same distances, from ``x.T @ x``. The Gram metrics
        (``euclidean``, ``sqeuclidean``) use it as it is; the others see the transposed view.

    Returns
    -------
    numpy.ndarray, shape (..., n_images, n_images), float64
        Symmetric, zero diagonal.

    Notes
    -----
    See the module docstring for the numerical conventions (Gram formulation, clamping, the
    value defined for all-zero and constant rows).
    """
    fn = METRICS[check_metric(metric)]
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2:
        raise ValueError(
            f"x must have shape (..., n_images, n_units), got shape {arr.shape}; "
            "reshape a single vector with x.reshape(1, -1)"
        )
    if units_first and fn in (_euclidean, _sqeuclidean):
        d = _sqeuclidean(arr, units_first=True)
        if fn is _euclidean:
            np.sqrt(d, out=d)
    else:
        d = fn(arr.swapaxes(-1, -2) if units_first else arr)
    # checking the (n, n) result is far cheaper than a pass over the input; NaN/inf in x
    # always reach it, and only then is x scanned to say which problem it is
    if not np.all(np.isfinite(d)):
        if not np.all(np.isfinite(arr)):
            raise ValueError("x contains NaN or infinite values; distances would be undefined")
        raise ValueError(
            "distances overflowed float64 (entries of x around 1e150 or larger); rescale x first, "
            "e.g. x / np.abs(x).max()"
        )
    return d


def pairwise_distances(x: np.ndarray, metric: Metric = "euclidean") -> np.ndarray:
    """Distance matrix between the rows of ``x`` (the images' activation vectors).

    Parameters
    ----------
    x : array_like, shape (n_images, n_units)
        One row per image.
    metric : {'euclidean', 'sqeuclidean', 'correlation', 'cosine', 'cityblock', 'chebyshev'}
        As in :func:`scipy.spatial.distance.pdist`; ``euclidean`` is *not* squared.

    Returns
    -------
    numpy.ndarray, shape (n_images, n_images), float64
        Symmetric with a zero diagonal; equals ``squareform(pdist(x, metric))`` to ~1e-12
        relative for rows that are not (nearly) identical.

    Notes
    -----
    ``euclidean``, ``sqeuclidean``, ``cosine`` and ``correlation`` are computed from one Gram
    matrix (redone on column-centred data when rounding would matter, see the module notes)
    and clamped at 0 before the square root. ``cosine`` (``correlation``) between an all-zero (constant) row and another row
    is 1, between two such rows 0, where scipy gives NaN.

    See Also
    --------
    pairwise_distances_stack : the batched form over many matrices at once.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(
            f"x must be 2-D (n_images, n_units), got shape {arr.shape}; "
            "use pairwise_distances_stack for a stack of matrices"
        )
    return pairwise_distances_stack(arr, metric)
