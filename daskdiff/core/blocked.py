"""Numeric core: exact differentiation of any number of images in bounded memory, block by block.

:func:`differentiation_blocked` gives the value that :func:`~daskdiff.core.differentiation.distances_stack`
and :func:`~daskdiff.core.differentiation.rdm_median` give for one matrix ``(n_images, n_units)``,
without ever holding the ``n_images x n_images`` distance matrix: the images are read in blocks
of rows (from an array or from a function that returns rows ``start:stop``), the normalising
statistic is combined over blocks, distances are formed one pair of blocks at a time, and the
median is found exactly by selection over those blocks (:func:`median_of_chunks`).
:func:`block_size_for` picks the block size for a memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ..errors import InputError
from .differentiation import (
    MedianOver,
    Normalize,
    check_median_over,
    check_normalize,
    check_scale,
    describe_statistic,
    per_unit_divisor,
)
from .distances import (
    Metric,
    check_metric,
    correlation_rows,
    cosine_from_sq,
    cosine_null_rows,
    unit_rows,
)

BlockSource = Callable[[int, int], np.ndarray]
"""``f(start, stop)`` -> the rows ``start:stop`` of the ``(n_images, n_units)`` activations."""

Chunks = Callable[[], Iterable[tuple[np.ndarray, int]]]
"""A re-iterable source of ``(values, weight)``: 1-D arrays, each value counted ``weight`` times."""

N_BINS = 4096
"""Bins of each histogram pass of :func:`median_of_chunks` (each pass narrows the bracket ~4096x)."""

DEFAULT_BUDGET = 256 * 2**20
"""Working-memory budget in bytes when :func:`differentiation_blocked` is given no block size."""


def peak_bytes(block: int, n_units: int) -> int:
    """The documented peak working memory, in bytes, of :func:`differentiation_blocked`.

    ``8 * (6 * block * n_units + 10 * block**2) + 64 * N_BINS``: see :func:`block_size_for`.
    """
    return 8 * (6 * block * n_units + 10 * block * block) + 64 * N_BINS


def block_size_for(n_images: int, n_units: int, budget_bytes: float) -> int:
    """The largest block of images whose working memory stays within ``budget_bytes``.

    Parameters
    ----------
    n_images, n_units : int
        Shape of one repeat's activations ``(n_images, n_units)``.
    budget_bytes : float
        Peak working memory allowed, in bytes (the activations themselves, when passed as an
        array, are not counted).

    Returns
    -------
    int
        Between 1 and ``n_images``.

    Notes
    -----
    Memory model (float64, ``b`` images per block, ``k = n_units``), :func:`peak_bytes`:

    - rows: the prepared block ``(b, k)`` of the outer loop, the block ``(b, k)`` of the inner
      loop and up to four ``(b, k)`` temporaries while a block is read, converted to float64,
      normalised and (``cosine``, ``correlation``) scaled to unit rows: ``6 * b * k``;
      ``cityblock`` and ``chebyshev`` use two ``(b, k)`` temporaries per row instead;
    - one pair of blocks: the distance block ``(b, b)`` and its temporaries (the norms' sum,
      ``sqrt``/``clip``, the strict triangle's indices and values, the bracket mask, the bin
      indices): ``6 * b**2``;
    - the exact pass of the median selection: the candidates in the bracket of each of the (at
      most two) middle ranks, at most ``b**2`` each, plus their sorted copy: ``4 * b**2``;
    - the histograms: ``64 * N_BINS`` bytes.

    The tests measure the peak with :mod:`tracemalloc` and check it stays under this model.
    """
    n_images, n_units = int(n_images), int(n_units)
    if n_images < 1 or n_units < 1:
        raise InputError(f"n_images and n_units must be >= 1, got n_images={n_images}, n_units={n_units}")
    if peak_bytes(1, n_units) > budget_bytes:
        raise InputError(
            f"budget_bytes={budget_bytes:.0f} is below the working memory of a single image "
            f"({peak_bytes(1, n_units)} bytes for n_units={n_units}); raise budget_bytes"
        )
    # 80 b^2 + 48 k b + 64 N_BINS - budget = 0, then step to the exact largest fitting block
    c = 64 * N_BINS - budget_bytes
    b = int((-48 * n_units + np.sqrt((48.0 * n_units) ** 2 - 4 * 80 * c)) / (2 * 80))
    b = max(1, min(b, n_images))
    while b < n_images and peak_bytes(b + 1, n_units) <= budget_bytes:
        b += 1
    while b > 1 and peak_bytes(b, n_units) > budget_bytes:
        b -= 1
    return b


def median_of_chunks(chunks: Chunks, *, cap: int = 2**20, n_bins: int = N_BINS) -> float:
    """Exact median of values given chunk by chunk, holding at most ``cap`` candidates at once.

    Parameters
    ----------
    chunks : callable
        Called once per pass; returns an iterable of ``(values, weight)``, 1-D float arrays whose
        values each count ``weight`` times. Every call must give the same values.
    cap : int
        Most candidate values kept per middle rank for the exact pass.
    n_bins : int
        Bins of each histogram pass.

    Returns
    -------
    float
        Bit-identical to ``np.median`` of all values (with repeats), the mean of the two middle
        values for an even count.

    Notes
    -----
    Pass 0 finds the count, minimum and maximum. For each middle rank, a bracket ``[lo, hi)``
    and the count below it are refined by histogram passes until the bracket holds at most
    ``cap`` values (then one exact pass collects and sorts them) or a single float value.
    """
    lo, hi, total = np.inf, -np.inf, 0
    for values, weight in chunks():
        if values.size:
            vmin, vmax = values.min(), values.max()
            if not (np.isfinite(vmin) and np.isfinite(vmax)):
                raise InputError(
                    "the values contain NaN or infinite entries (distances that overflowed "
                    "float64?); rescale the activations, e.g. x / np.abs(x).max()"
                )
            lo, hi = min(lo, float(vmin)), max(hi, float(vmax))
            total += int(weight) * values.size
    if total == 0:
        raise InputError("no values to take the median of (fewer than 2 images?)")
    ranks = sorted({(total - 1) // 2, total // 2})
    brackets = {r: _Bracket(lo, float(np.nextafter(hi, np.inf)), 0, total) for r in ranks}
    found: dict[int, float] = {}
    while len(found) < len(ranks):
        plans = {}
        for r in ranks:
            if r in found:
                continue
            br = brackets[r]
            if np.nextafter(br.lo, np.inf) >= br.hi:  # one float value left
                found[r] = br.lo
            elif br.count <= cap:
                plans[r] = []
            else:
                plans[r] = np.unique(np.linspace(br.lo, br.hi, n_bins + 1))
        if not plans:
            break
        counts = {r: np.zeros(len(e) - 1, np.int64) for r, e in plans.items() if isinstance(e, np.ndarray)}
        for values, weight in chunks():
            for r, plan in plans.items():
                br = brackets[r]
                inside = values[(values >= br.lo) & (values < br.hi)]
                if isinstance(plan, list):
                    plan.append(np.repeat(inside, weight))
                else:
                    idx = np.searchsorted(plan, inside, side="right") - 1
                    counts[r] += np.bincount(idx, minlength=len(plan) - 1) * int(weight)
        for r, plan in plans.items():
            br = brackets[r]
            if isinstance(plan, list):
                found[r] = float(np.sort(np.concatenate(plan))[r - br.below])
                continue
            cum = np.cumsum(counts[r])
            b = int(np.searchsorted(cum, r - br.below, side="right"))
            below = br.below + (int(cum[b - 1]) if b else 0)
            brackets[r] = _Bracket(float(plan[b]), float(plan[b + 1]), below, int(counts[r][b]))
    if len(ranks) == 1:
        return float(found[ranks[0]])
    return float(np.mean(np.array([found[ranks[0]], found[ranks[1]]])))


class _Bracket(NamedTuple):
    lo: float
    hi: float
    below: int  # values < lo
    count: int  # values in [lo, hi)


class _Rows(NamedTuple):
    rows: np.ndarray  # (b, k) float64, as the metric's kernel needs them
    sq: np.ndarray | None  # (b,) squared row norms (Gram metrics)
    null: np.ndarray | None  # (b,) rows whose cosine/correlation distance is defined (1)


def _plain_rows(z: np.ndarray) -> tuple[np.ndarray, None]:
    return z, None


def _cosine_rows(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    null = cosine_null_rows(z)
    return unit_rows(z, null), null


def _correlation_rows(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centred, constant = correlation_rows(z)
    return unit_rows(centred, constant), constant


def _sq_block(a: _Rows, b: _Rows) -> np.ndarray:
    d = a.rows @ b.rows.T
    d *= -2.0
    d += a.sq[:, None] + b.sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _reduce_block(a: _Rows, b: _Rows, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    out = np.empty((len(a.rows), len(b.rows)))
    for i, row in enumerate(a.rows):
        out[i] = reduce(np.abs(b.rows - row), axis=-1)
    return out


def _cosine_block(a: _Rows, b: _Rows) -> np.ndarray:
    return cosine_from_sq(_sq_block(a, b), a.null, b.null)


_ROWS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]] = {
    "euclidean": _plain_rows,
    "sqeuclidean": _plain_rows,
    "cosine": _cosine_rows,
    "correlation": _correlation_rows,
    "cityblock": _plain_rows,
    "chebyshev": _plain_rows,
}
"""Metric -> per-row transform of normalised rows ``(b, k)``: ``(rows, null-row flags or None)``."""

_KERNELS: dict[str, Callable[[_Rows, _Rows], np.ndarray]] = {
    "euclidean": lambda a, b: np.sqrt(_sq_block(a, b)),
    "sqeuclidean": _sq_block,
    "cosine": _cosine_block,
    "correlation": _cosine_block,
    "cityblock": lambda a, b: _reduce_block(a, b, np.sum),
    "chebyshev": lambda a, b: _reduce_block(a, b, np.max),
}
"""Metric -> distances ``(len(a), len(b))`` between two prepared blocks."""

_GRAM = frozenset({"euclidean", "sqeuclidean", "cosine", "correlation"})
"""Metrics computed from Gram blocks: their rows are column-centred and carry squared norms."""


@dataclass
class _Moments:
    """Count, mean, sum of squared deviations and peak |x| of all entries, combined over blocks."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    peak: float = 0.0
    finite: bool = True

    def add(self, blk: np.ndarray) -> None:
        n = blk.size
        bmean = float(blk.mean())
        bm2 = float(np.square(blk - bmean).sum())
        total = self.count + n
        delta = bmean - self.mean  # Chan et al.'s pairwise update: no E[x^2] - E[x]^2 cancellation
        self.mean += delta * n / total
        self.m2 += bm2 + delta * delta * self.count * n / total
        self.count = total
        self.peak = float(np.maximum(self.peak, np.abs(blk).max()))
        self.finite = self.finite and bool(np.isfinite(blk).all())


_BLOCK_STATS: dict[str, Callable[[_Moments], tuple[float, float]]] = {
    "none": lambda m: (0.0, 1.0),
    "mean": lambda m: (0.0, m.mean),
    "zscore": lambda m: (m.mean, float(np.sqrt(m.m2 / m.count))),
    "max": lambda m: (0.0, m.peak),
}
"""Normalize -> ``(shift, scale)`` from block moments, as :data:`~daskdiff.core.differentiation.NORMALIZATIONS` from the whole matrix."""


def _as_source(x: np.ndarray | BlockSource, n_images: int | None) -> tuple[BlockSource, int]:
    if callable(x):
        if n_images is None:
            raise InputError("n_images is required when x_of_block is a function; pass n_images=N")
        return x, int(n_images)
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InputError(f"x must be 2-D (n_images, n_units) or a function of (start, stop), got shape {arr.shape}")
    if n_images is not None and int(n_images) != arr.shape[0]:
        raise InputError(f"n_images={n_images} but x has {arr.shape[0]} rows; leave n_images out for an array")
    return (lambda start, stop: arr[start:stop]), arr.shape[0]


def _fetch(source: BlockSource, start: int, stop: int, n_units: int | None) -> np.ndarray:
    blk = np.asarray(source(start, stop), dtype=np.float64)
    if blk.ndim != 2 or blk.shape[0] != stop - start or (n_units is not None and blk.shape[1] != n_units):
        want = f"({stop - start}, {n_units if n_units is not None else 'n_units'})"
        raise InputError(f"x_of_block({start}, {stop}) returned shape {blk.shape}; expected {want}")
    return blk


def _starts(n: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, n)) for s in range(0, n, block)]


def _pair_chunks(prepare: Callable[[int, int], _Rows], spans: list[tuple[int, int]], metric: str,
                 divisor: float | None, square: bool, n: int) -> Chunks:
    kernel = _KERNELS[metric]
    weight = 2 if square else 1

    def chunks() -> Iterator[tuple[np.ndarray, int]]:
        if square:
            yield np.zeros(1), n  # the n zeros of the diagonal
        for i, span in enumerate(spans):
            a = prepare(*span)
            for other in spans[i:]:
                same = other == span
                d = kernel(a, a if same else prepare(*other))
                if divisor is not None:
                    d /= divisor
                yield (d[np.triu_indices(len(d), k=1)] if same else d.ravel()), weight

    return chunks


def differentiation_blocked(
    x_of_block: np.ndarray | BlockSource,
    n_images: int | None = None,
    metric: Metric = "euclidean",
    normalize: Normalize = "none",
    per_unit: bool = False,
    median_over: MedianOver = "condensed",
    block: int | None = None,
    *,
    name: str | None = None,
    on_undefined: str = "raise",
    min_scale: float = 0.0,
    budget_bytes: float = DEFAULT_BUDGET,
) -> float:
    """Differentiation of one matrix of activations, computed over blocks of images.

    Parameters
    ----------
    x_of_block : array_like, shape (n_images, n_units), or callable
        The activations (float32 or float64), or ``f(start, stop)`` returning rows
        ``start:stop`` (then ``n_images`` is required). Each row is read several times.
    n_images : int, optional
        Number of images; taken from the array when ``x_of_block`` is one.
    metric, normalize, per_unit, median_over, name, on_undefined, min_scale
        As in :func:`daskdiff.core.differentiation.distances_stack` and
        :func:`~daskdiff.core.differentiation.rdm_median`.
    block : int, optional
        Images per block; by default :func:`block_size_for` ``budget_bytes``.
    budget_bytes : float
        Working-memory budget used when ``block`` is not given.

    Returns
    -------
    float
        The unblocked value for this matrix (``distances_stack`` then ``rdm_median``) to rounding,
        NaN where the normaliser is undefined and ``on_undefined='nan'``.

    Notes
    -----
    The normalising statistic is combined over blocks (sums, Chan's update of the sum of squared
    deviations, maxima) and each block normalised as ``(x - shift) / scale``. ``euclidean``,
    ``sqeuclidean``, ``cosine`` and ``correlation`` come from Gram blocks of the (unit, for
    cosine/correlation) rows, always centred on their column means (found in one more pass):
    distances are translation invariant, and the unblocked core centres too whenever rounding
    would matter, so the two agree to ~1e-15 relative. ``cityblock`` and ``chebyshev`` come from
    distance blocks. The median is exact over these distances (:func:`median_of_chunks`): about
    three passes over all pairs of blocks, each recomputing the distances.
    """
    check_metric(metric)
    check_normalize(normalize)
    square = check_median_over(median_over) == "square"
    if on_undefined not in ("raise", "nan"):
        raise InputError(f"on_undefined must be 'raise' or 'nan', got {on_undefined!r}")
    source, n = _as_source(x_of_block, n_images)
    if n < 2:
        raise InputError(f"need at least 2 images to compute distances, got n_images={n}")
    k = _fetch(source, 0, 1, None).shape[1]
    block = block_size_for(n, k, budget_bytes) if block is None else int(block)
    if block < 1:
        raise InputError(f"block must be >= 1 image, got block={block}")
    spans = _starts(n, block)

    moments = _Moments()
    for span in spans:
        moments.add(_fetch(source, *span, k))
    shift, scale = _BLOCK_STATS[normalize](moments)
    bad, safe_scale = check_scale(np.float64(scale), normalize, describe_statistic(normalize), name=name,
                                  on_undefined=on_undefined, min_scale=min_scale)
    if bad:
        return float("nan")
    if not moments.finite:
        raise InputError("x contains NaN or infinite values; distances would be undefined")

    transform = _ROWS[metric]

    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        return transform((_fetch(source, start, stop, k) - shift) / safe_scale)

    centre = sum(rows(*span)[0].sum(axis=0) for span in spans) / n if metric in _GRAM else None

    def prepare(start: int, stop: int) -> _Rows:
        r, null = rows(start, stop)
        if centre is None:
            return _Rows(r, None, null)
        r -= centre
        return _Rows(r, np.einsum("ij,ij->i", r, r), null)

    divisor = per_unit_divisor(metric, k) if per_unit else None
    chunks = _pair_chunks(prepare, spans, metric, divisor, square, n)
    return median_of_chunks(chunks, cap=block * block)
