"""Numeric core, array-API form: one stack of repeats' gathers, normalisers and Gram products,
on whatever array library holds the values (numpy, or a GPU's torch or jax arrays).

:func:`distances_on_arrays` gives what :func:`~daskdiff.core.differentiation.distances_stack`
gives for the stack of sampled matrices ``values[:, pick]`` (one ``pick`` per repeat), for the
metrics with a Gram form (:data:`GRAM_METRICS`). It is written against the Python array API
standard (``xp`` is the namespace of ``values``: :func:`array_api_compat.array_namespace`), so the
``O(repeats x images x units)`` work (the gather, the normalising statistics, the unit-length or
centred rows, the Gram products) runs where ``values`` lie; only the ``(repeats, images,
images)`` Gram stack, the per-repeat statistics and the null-row flags come back to the host,
where the distances are formed as in :mod:`daskdiff.core.distances`.

Conventions (as the host path; see :mod:`daskdiff.core.distances` and
:func:`~daskdiff.core.differentiation.normalize_stack`):

- Everything after the gather is float64, on the arrays' device.
- A matrix whose normalising statistic is undefined (not finite, or ``<= min_scale``) gives NaN
  distances, and its flag is set.
- The rows are always column-centred before the Gram product (distances are translation
  invariant). The host path centres only a matrix where cancellation would matter, so the two
  agree to rounding (~1e-15 relative), not bit for bit; on a GPU the products' summation order
  differs too. Each repeat's matrix is computed independently of the others in its stack.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .differentiation import check_normalize, check_scale, per_unit_divisor
from .distances import check_metric, cosine_from_sq, sq_from_gram, symmetrize

GRAM_METRICS = ("euclidean", "sqeuclidean", "cosine", "correlation")
"""The metrics :func:`distances_on_arrays` computes (``cityblock`` and ``chebyshev`` have no Gram form)."""


def _where_rows(xp: Any, flags: Any, value: float, x: Any) -> Any:
    """``x`` with the rows (last axis) flagged in ``flags`` (``x.shape[:-1]``) set to ``value``."""
    return xp.where(flags[..., None], xp.asarray(value, dtype=x.dtype, device=_device(x)), x)


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def _unit_rows(xp: Any, z: Any, null: Any) -> Any:
    """Rows of ``z`` scaled to unit length (scaled by their peak first, as the host's ``unit_rows``);
    flagged rows become all zero."""
    peak = _where_rows(xp, null, 1.0, xp.max(xp.abs(z), axis=-1, keepdims=True))
    scaled = z / peak
    norms = _where_rows(xp, null, 1.0, xp.sqrt(xp.sum(scaled * scaled, axis=-1, keepdims=True)))
    return _where_rows(xp, null, 0.0, scaled / norms)


def _statistics(xp: Any, x: Any, normalize: str) -> tuple[Any, Any]:
    """``(shift, scale)`` of each matrix of ``x`` ``(r, n, k)``, shaped ``(r,)``: see
    :data:`~daskdiff.core.differentiation.NORMALIZATIONS` (the same statistics)."""
    r = x.shape[0]
    zero = xp.zeros((r,), dtype=x.dtype, device=_device(x))
    if normalize == "none":
        return zero, zero + 1.0
    if normalize == "max":
        return zero, xp.maximum(xp.max(x, axis=(-2, -1)), -xp.min(x, axis=(-2, -1)))
    mean = xp.mean(x, axis=(-2, -1))
    if normalize == "mean":
        return zero, mean
    centred = x - mean[:, None, None]
    return mean, xp.sqrt(xp.mean(centred * centred, axis=(-2, -1)))  # ddof=0, as np.std


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy of an array of any array-API library (a GPU's copied to the host)."""
    from array_api_compat import to_device

    try:
        return np.asarray(x)
    except (TypeError, RuntimeError):  # torch on a GPU: copy to the CPU first
        return np.asarray(to_device(x, "cpu"))


def distances_on_arrays(
    values: Any,
    picks: Sequence[np.ndarray],
    metric: str = "euclidean",
    normalize: str = "none",
    per_unit: bool = False,
    *,
    name: str | None = None,
    min_scale: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance matrices of the sampled matrices ``values[:, pick]``, one per pick.

    Parameters
    ----------
    values : array
        ``(n_images, n_features)`` of any array-API library (numpy, torch, jax) and float dtype,
        on any device; the work up to the Gram products runs there.
    picks : sequence of int arrays
        One per repeat, each the ``k`` feature positions of that repeat (all the same length).
    metric : {'euclidean', 'sqeuclidean', 'cosine', 'correlation'}
    normalize, per_unit, name, min_scale
        As :func:`~daskdiff.core.differentiation.distances_stack` (undefined matrices give NaN).

    Returns
    -------
    rdms : numpy.ndarray
        ``(len(picks), n_images, n_images)`` float64, exactly symmetric, zero diagonal.
    undefined : numpy.ndarray
        ``(len(picks),)`` bool: the matrices whose normaliser was undefined (their RDM is NaN).
    """
    from array_api_compat import array_namespace

    if check_metric(metric) not in GRAM_METRICS:
        raise ValueError(f"metric {metric!r} has no Gram form; distances_on_arrays computes {list(GRAM_METRICS)}")
    check_normalize(normalize)
    xp = array_namespace(values)
    n, k, r = values.shape[0], len(picks[0]), len(picks)
    if n < 2:
        raise ValueError(f"need at least 2 images to compute distances, got values of shape {tuple(values.shape)}")
    where = _device(values)
    idx = xp.asarray(np.concatenate([np.asarray(p, dtype=np.int64) for p in picks]), device=where)
    x = xp.permute_dims(xp.reshape(xp.astype(xp.take(values, idx, axis=1), xp.float64), (n, r, k)), (1, 0, 2))
    shift, scale = _statistics(xp, x, normalize)
    bad, safe = check_scale(to_numpy(scale), normalize, "normalising statistic", name=name, on_undefined="nan",
                            min_scale=min_scale)  # flags only: the description words an error never raised here
    safe_dev, bad_dev = xp.asarray(safe, device=where), xp.asarray(bad, device=where)
    y = (x - shift[:, None, None]) / safe_dev[:, None, None]
    y = xp.where(bad_dev[:, None, None], xp.asarray(0.0, dtype=y.dtype, device=where), y)
    null = None
    if metric == "cosine":
        null = xp.all(y == 0.0, axis=-1)
        y = _unit_rows(xp, y, null)
    elif metric == "correlation":
        null = xp.all(y == y[..., :1], axis=-1)
        y = _unit_rows(xp, _where_rows(xp, null, 0.0, y - xp.mean(y, axis=-1, keepdims=True)), null)
    y = y - xp.mean(y, axis=-2, keepdims=True)
    d = symmetrize(sq_from_gram(to_numpy(xp.matmul(y, xp.permute_dims(y, (0, 2, 1)))).astype(np.float64, copy=True))[0])
    if null is not None:
        flags = to_numpy(null)
        d = cosine_from_sq(d, flags, flags)
    elif metric == "euclidean":
        np.sqrt(d, out=d)
    if per_unit:
        d /= per_unit_divisor(metric, k)
    d[bad] = np.nan
    return d, bad
