"""Numeric core: one layer's stored values unit by unit, and each repeat's distances from them.

A differentiation task evaluates hundreds of repeats of one layer, each on the same images and a
different sample of units. Stored image by image (``(n_images, n_stored)``), a repeat's sample
is ``n_images x k`` scattered reads; stored unit by unit (:class:`UnitMajor`, ``(n_stored,
n_images)``, C order) it is ``k`` contiguous rows of ``n_images`` values: ~20x faster for
10,000 of 802,816 units of 43 images (``benchmarks/layout.py``). The layout
is made once per task: copied from an image-major array (:func:`unit_major`), or written so as
the shards are read (:func:`transpose_into`, :func:`daskdiff.io.shards.read_features`), in
chunks that stay in cache. One pass over its rows (:func:`from_unit_rows`) then computes what
every repeat's normaliser needs per unit (mean and centred sum of squares over the images, or
the largest |value|), so a repeat's z-score statistics cost ``O(k)``, not a pass over its
``n_images x k`` values.

:func:`unit_major_distances` then gives, for ``euclidean`` and ``sqeuclidean``, what
:func:`~daskdiff.core.differentiation.distances_stack` gives for the image-major stack of the
same repeats (the normalised distances and the undefined flags), to rounding (~1e-15 relative):

- the statistic of each repeat (:data:`~daskdiff.core.differentiation.NORMALIZATIONS`) comes
  from the per-unit moments, combined as Chan et al.'s pairwise update (no ``E[x^2] - E[x]^2``
  cancellation);
- the sampled values are gathered in float32, converted to float64 minus the repeat's shift
  (its mean for ``zscore``) in one pass, and divided by its scale in place (rounded as the
  image-major path rounds them; dividing the ``n x n`` squared distances instead would save that
  pass but move results by up to ~1e-11 where distances are small against the norms);
- the Gram product is one symmetric product per repeat (``y.T @ y``, BLAS ``syrk``), redone on
  centred rows where cancellation would matter, as :mod:`daskdiff.core.distances` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .differentiation import check_normalize, check_scale, describe_statistic, per_unit_divisor
from .distances import check_metric, pairwise_distances_stack

UNIT_MAJOR_METRICS = ("euclidean", "sqeuclidean")
"""The metrics :func:`unit_major_distances` computes from the unit-major layout directly."""

CHUNK_UNITS = 4096
"""Units transposed at a time by :func:`unit_major` (their float64 copy is its temporary)."""

GATHER_BYTES = 1 << 20
"""Bytes of sampled float32 rows :func:`unit_major_distances` gathers at a time (its one
temporary, reused over the repeats): a whole ``(k, n_images)`` copy per repeat (40 MB for 10,000
units of 1,000 images) would be fresh memory each time, paged in at ~2 s per GB of system time on
virtual machines that hand freed memory back to their host."""


def every_row(pos: np.ndarray, n: int) -> bool:
    """Whether sorted, distinct positions ``pos`` are every one of ``n`` rows, in order."""
    return len(pos) == n and (n == 0 or (pos[0] == 0 and pos[-1] == n - 1))


@dataclass(frozen=True)
class UnitMajor:
    """A layer's stored values unit by unit, with per-unit statistics over the images.

    ``values``: ``(n_stored, n_images)`` float32, C order (row ``j`` is stored feature ``j`` for
    every image). ``means`` and ``squares``: each unit's mean over the images and its sum of
    squared deviations from that mean (float64; present for ``zscore`` and ``mean``, ``squares``
    for ``zscore`` only). ``peaks``: each unit's largest |value| (float32; ``max`` only).
    ``peak``: the largest |value| of the whole layer.
    """

    values: np.ndarray
    means: np.ndarray | None
    squares: np.ndarray | None
    peaks: np.ndarray | None
    peak: float

    @property
    def n_images(self) -> int:
        return self.values.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.values, self.means, self.squares, self.peaks) if a is not None)

    def rows(self, pos: np.ndarray) -> np.ndarray:
        """The float32 rows ``pos`` (``(k, n_images)``); the array itself when ``pos`` is every row."""
        if every_row(pos, len(self.values)):
            return self.values
        return self.values.take(pos, axis=0)


def unit_major(values: np.ndarray | Sequence[np.ndarray], normalize: str = "zscore") -> UnitMajor:
    """The unit-major copy of ``values`` ``(n_images, n_stored)``, or of a sequence of such blocks
    of images in order (e.g. one per shard: no concatenated copy first), and its per-unit
    statistics (:func:`transpose_into`, then :func:`from_unit_rows`). The caller may drop
    ``values`` afterwards."""
    check_normalize(normalize)
    blocks = [values] if isinstance(values, np.ndarray) else list(values)
    out = np.empty((blocks[0].shape[1], sum(len(b) for b in blocks)), dtype=np.float32)
    start = 0
    for block in blocks:
        transpose_into(out, block, start)
        start += len(block)
    return from_unit_rows(out, normalize)


def transpose_into(out: np.ndarray, block: np.ndarray, start: int) -> None:
    """Write images ``block`` ``(c, n_stored)`` into columns ``start .. start + c`` of the
    unit-major ``out`` ``(n_stored, n_images)``, :data:`CHUNK_UNITS` units at a time (what each
    step reads and writes stays in cache)."""
    c, m = block.shape
    for a in range(0, m, CHUNK_UNITS):
        b = min(a + CHUNK_UNITS, m)
        out[a:b, start : start + c] = block[:, a:b].T


def from_unit_rows(values: np.ndarray, normalize: str = "zscore") -> UnitMajor:
    """The :class:`UnitMajor` of ``values``, already ``(n_stored, n_images)`` float32 in C order
    (kept, not copied), with the statistics ``normalize`` needs.

    One pass over its rows, a block of at most :data:`CHUNK_UNITS` units and ~8 MB of float64
    at a time: each unit's mean over the images, the sum of squared deviations from it (on the
    centred float64 values: no ``E[x^2] - E[x]^2`` cancellation) and its largest |value|.
    """
    check_normalize(normalize)
    m, n = values.shape
    means = np.empty(m) if normalize in ("zscore", "mean") else None
    squares = np.empty(m) if normalize == "zscore" else None
    peaks = np.empty(m, dtype=np.float32) if normalize == "max" else None
    peak = 0.0
    step = max(1, min(CHUNK_UNITS, (8 << 20) // (8 * max(1, n))))
    for a in range(0, m if n else 0, step):
        b = min(a + step, m)
        rows = values[a:b]
        top = np.maximum(rows.max(axis=1), -rows.min(axis=1))
        peak = max(peak, float(top.max()))
        if peaks is not None:
            peaks[a:b] = top
        if means is not None:
            y = rows.astype(np.float64)
            means[a:b] = y.mean(axis=1)
            if squares is not None:
                y -= means[a:b, None]
                squares[a:b] = np.einsum("ij,ij->i", y, y)
    if not n:  # no images: the statistics of nothing
        for a, empty in ((means, np.nan), (squares, 0.0), (peaks, 0.0)):
            if a is not None:
                a[:] = empty
    return UnitMajor(values, means, squares, peaks, peak)


def worth_unit_major(n_stored: int, gathered: int) -> bool:
    """Whether making the unit-major layout pays for itself: the repeats' samples together
    (``gathered``: the sum of ``k`` over every repeat of every sampled ``n_units``) cover at
    least half as many units as are stored.

    Measured on this project's 2-core VM (``benchmarks/layout.py``, 43 images): a scattered
    image-major gather costs 11-17 ns per value, a unit-major one 1.2-1.4 ns, and the layout
    5-7 ns per stored value, so the layout pays from ``gathered`` ~0.5 ``n_stored`` on.
    """
    return 2 * gathered >= n_stored


def repeat_statistics(um: UnitMajor, picks: Sequence[np.ndarray], normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` of each repeat's sampled matrix ``(n_images, k)``, shaped ``(len(picks),)``.

    The statistics of :data:`~daskdiff.core.differentiation.NORMALIZATIONS` over all entries of
    the matrix, from the per-unit statistics: the mean of the units' means; the sum of squared
    deviations ``sum(squares) + n_images * sum((means - mean)**2)`` (Chan et al.), ddof=0; the
    largest of the units' peaks.
    """
    fn = {"none": _none, "mean": _mean, "zscore": _zscore, "max": _max}[check_normalize(normalize)]
    stats = np.array([fn(um, np.asarray(p)) for p in picks], dtype=np.float64).reshape(len(picks), 2)
    return stats[:, 0], stats[:, 1]


def layer_statistic(um: UnitMajor, normalize: str) -> tuple[float, float]:
    """``(shift, scale)`` over every entry of the layer (an exact ``n_units``): :func:`repeat_statistics`
    of one repeat that holds every unit, with no pass over the values."""
    shift, scale = repeat_statistics(um, [np.arange(len(um.values))], normalize)
    return float(shift[0]), float(scale[0])


def _none(um: UnitMajor, pos: np.ndarray) -> tuple[float, float]:
    return 0.0, 1.0


def _mean(um: UnitMajor, pos: np.ndarray) -> tuple[float, float]:
    return 0.0, float(um.means[pos].mean())


def _zscore(um: UnitMajor, pos: np.ndarray) -> tuple[float, float]:
    mu = um.means[pos]
    mean = float(mu.mean())
    dev = mu - mean
    m2 = float(um.squares[pos].sum()) + um.n_images * float(np.dot(dev, dev))
    return mean, float(np.sqrt(m2 / (um.n_images * len(pos))))


def _max(um: UnitMajor, pos: np.ndarray) -> tuple[float, float]:
    return 0.0, float(um.peaks[pos].max())


def unit_major_distances(
    um: UnitMajor,
    picks: Sequence[np.ndarray],
    metric: str = "euclidean",
    normalize: str = "none",
    per_unit: bool = False,
    *,
    name: str | None = None,
    min_scale: float = 0.0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance matrices of the sampled matrices ``um.values[pick].T``, one per pick.

    Parameters
    ----------
    um : UnitMajor
        The layer's values and statistics (:func:`unit_major`, made for this ``normalize``).
    picks : sequence of int arrays
        One per repeat: the ``k`` rows (stored features) it samples, sorted, all the same length.
    metric : {'euclidean', 'sqeuclidean'}
    normalize, per_unit, name, min_scale
        As :func:`~daskdiff.core.differentiation.distances_stack` with ``on_undefined='nan'``.
    out : numpy.ndarray, optional
        A float64 buffer of at least ``len(picks) * k * n_images`` elements for the stack
        (e.g. a reused scratch buffer); its contents are overwritten.

    Returns
    -------
    rdms : numpy.ndarray
        ``(len(picks), n_images, n_images)`` float64, symmetric, zero diagonal; NaN for an
        undefined matrix.
    undefined : numpy.ndarray
        ``(len(picks),)`` bool: the repeats whose normalising statistic is not finite or
        ``<= min_scale``.
    """
    if check_metric(metric) not in UNIT_MAJOR_METRICS:
        raise ValueError(f"metric {metric!r}: unit_major_distances computes {list(UNIT_MAJOR_METRICS)}; "
                         "use distances_stack on the image-major stack for the others")
    n, r = um.n_images, len(picks)
    if n < 2:
        raise ValueError(f"need at least 2 images to compute distances, got {n}")
    k = len(picks[0])
    shift, scale = repeat_statistics(um, picks, normalize)
    bad, safe = check_scale(scale, normalize, describe_statistic(normalize), name=name, on_undefined="nan", min_scale=min_scale)
    size = r * k * n
    stack = (np.empty(size) if out is None else out.reshape(-1)[:size]).reshape(r, k, n)
    rows = np.empty((min(k, max(1, GATHER_BYTES // (4 * n))), n), dtype=np.float32)
    for i, pos in enumerate(picks):
        if bad[i]:
            stack[i] = 0.0  # its distances are discarded below
            continue
        pos = np.asarray(pos)
        if every_row(pos, len(um.values)):
            np.subtract(um.values, shift[i], out=stack[i])
        else:  # a block of rows at a time through one small buffer: no (k, n) float32 copy per repeat
            for a in range(0, k, len(rows)):
                b = min(a + len(rows), k)
                np.take(um.values, pos[a:b], axis=0, out=rows[: b - a])
                np.subtract(rows[: b - a], shift[i], out=stack[i, a:b])
        stack[i] /= safe[i]  # as the image-major path rounds: results equal its to ~1e-15
    d = pairwise_distances_stack(stack, metric, units_first=True)
    if per_unit:
        d /= per_unit_divisor(metric, k)
    d[bad] = np.nan
    return d, bad
