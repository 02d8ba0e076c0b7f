"""Numeric core: subsampling of a layer's units, deterministic from (seed, layer, repeat) (and, for
the data-dependent modes, the job's unit statistics: a :class:`UnitPool`).

Unit indices are *flat* indices into one image's activations of a layer, flattened in C order
with channels last: for a conv layer of shape ``(y, x, channels)`` unit ``(i, j, c)`` has flat
index ``(i * n_x + j) * n_channels + c``. A dense layer of shape ``(n,)`` is treated as
``(1, 1, n)``: every unit is its own channel.

The same ``(seed, layer, repeat)`` gives the same units on every worker, in every process and
in any call order, so one repeat uses the same units for every image and every image set.

Modes ``random``, ``equal`` and ``channel=K`` depend on the layer's shape alone. The
*data-dependent* modes (:data:`DATA_MODES`) draw from a :class:`UnitPool`, which the job builds
once per layer from statistics over all its images (:mod:`daskdiff.core.activity`):

- ``active``: uniformly among the units that are not constant over the job's images;
- ``weighted=mean`` / ``weighted=variance``: without replacement, with probability proportional
  to the unit's mean activation (negative means count as 0) or to its variance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from ..errors import InputError, shorten

ALL = "all"
"""The ``n_units`` value meaning every unit of the layer, exact (no sampling)."""

DATA_MODES = ("active", "weighted=mean", "weighted=variance")
"""Sampling modes whose draws depend on the job's activations (a :class:`UnitPool`), not only on
the seed: their layers store every unit, and the job computes the unit statistics first."""


def is_data_mode(mode: str) -> bool:
    """Whether ``mode`` draws from the job's unit statistics (one of :data:`DATA_MODES`)."""
    return mode in DATA_MODES


@dataclass(frozen=True, eq=False)
class UnitPool:
    """The units a data-dependent mode draws from, for one (layer, substrate) of a job.

    ``units``: sorted flat indices of the eligible units (those with a positive weight);
    ``weights``: their weights (float64, all > 0), or None for a uniform draw (``active``);
    ``n_features``: the layer's number of features; ``n_active``: how many of them are not
    constant over the job's images (recorded in the results); ``digest``: SHA-256 of the mode,
    units and weights (a partial result computed from another pool is stale). Built by
    :func:`daskdiff.core.activity.unit_pool`.
    """

    mode: str
    units: np.ndarray
    weights: np.ndarray | None
    n_features: int
    n_active: int
    digest: str

    @classmethod
    def of(cls, mode: str, units: np.ndarray, weights: np.ndarray | None, n_features: int, n_active: int) -> "UnitPool":
        units = np.ascontiguousarray(units, dtype=np.int64)
        weights = None if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        h = hashlib.sha256(repr((mode, int(n_features), len(units))).encode())
        h.update(units.tobytes())
        if weights is not None:
            h.update(weights.tobytes())
        return cls(mode, units, weights, int(n_features), int(n_active), h.hexdigest())

    @cached_property
    def cdf(self) -> np.ndarray:
        """Cumulative weights (computed once per pool, where it draws; not pickled)."""
        return np.cumsum(self.weights)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "cdf"}


def _draw_from_pool(rng: np.random.Generator, pool: UnitPool, k: int) -> np.ndarray:
    """k units of ``pool`` (all of them if it holds at most k), sorted.

    Uniform: numpy's choice without replacement among the pool's positions. Weighted:
    successive sampling, each next unit drawn among those left with probability proportional to
    its weight. It is drawn as the first occurrences, in stream order, of i.i.d. draws with
    replacement (inverse CDF over the pool's cumulative weights, :func:`_weighted_prefix`), in
    rounds sized to the weight left; once a round would need more draws than the pool has units,
    the rest is the exponential race among the units left (each key ``E / w``, ``E ~ Exp(1)``,
    the smallest win; Efraimidis & Spirakis 2006), which continues successive sampling exactly.
    """
    m = len(pool.units)
    if k >= m:
        return pool.units.copy()
    if pool.weights is None:
        return np.sort(pool.units[_choose(rng, m, k)])
    chosen = _weighted_prefix(rng, pool.weights, pool.cdf, k)
    if (needed := k - len(chosen)) > 0:
        keys = rng.standard_exponential(m) / pool.weights
        keys[chosen] = np.inf
        chosen = np.concatenate([chosen, np.argpartition(keys, needed - 1)[:needed]])
    return np.sort(pool.units[chosen])


def _weighted_prefix(rng: np.random.Generator, weights: np.ndarray, cdf: np.ndarray, k: int) -> np.ndarray:
    """Up to k distinct positions of ``weights`` (``cdf`` their cumulative sum), successive
    sampling (see :func:`_draw_from_pool`): rounds of ``1.25 * needed * total / left + 16`` draws
    while that is below the number of weights."""
    total = float(cdf[-1])
    chosen = np.zeros(0, dtype=np.int64)
    left = total
    while (needed := k - len(chosen)) > 0:
        draws = int(np.ceil(1.25 * needed * total / left)) + 16 if left > 0 else len(weights) + 1
        if draws > len(weights):
            break
        u = rng.random(draws) * total
        order = np.argsort(u)  # sorted queries search a large cdf faster; the stream order is kept
        picks = np.empty(draws, dtype=np.int64)
        picks[order] = np.minimum(np.searchsorted(cdf, u[order], side="right"), len(weights) - 1)
        _, first = np.unique(picks, return_index=True)
        picks = picks[np.sort(first)]  # first occurrences, in stream order
        picks = picks[~np.isin(picks, chosen)][:needed]
        chosen = np.concatenate([chosen, picks])
        left = total - float(weights[chosen].sum())
    return chosen


def layer_key(layer: str | int) -> int:
    """A stable non-negative integer for a layer name (or the integer itself).

    Uses SHA-256 of the UTF-8 name, so it is the same in every process (unlike ``hash``).
    """
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if layer < 0:
            raise ValueError(f"layer index must be >= 0, got {layer}")
        return int(layer)
    if isinstance(layer, str):
        return int.from_bytes(hashlib.sha256(layer.encode("utf-8")).digest()[:8], "little")
    raise TypeError(f"layer must be a layer name (str) or index (int), got {type(layer).__name__}")


def _rng(seed: int, layer: str | int, repeat: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, e.g. seed=0; got {seed!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 0:
        raise ValueError(f"repeat must be a non-negative integer, got {repeat!r}")
    sequence = np.random.SeedSequence(int(seed), spawn_key=(layer_key(layer), int(repeat)))
    return np.random.default_rng(sequence)


def _unit_shape(n_total: int | Sequence[int]) -> tuple[int, int, int]:
    """(positions, channels) view of a layer: returns (n_positions, n_channels, n_total)."""
    shape = (int(n_total),) if np.isscalar(n_total) else tuple(int(s) for s in n_total)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"layer size/shape must be positive, got {n_total!r}")
    n_channels = shape[-1]
    n_positions = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return n_positions, n_channels, n_positions * n_channels


def _choose(rng: np.random.Generator, population: int, k: int) -> np.ndarray:
    """k distinct integers from range(population), without materialising the range."""
    if k >= population:
        return np.arange(population, dtype=np.int64)
    return rng.choice(population, size=k, replace=False, shuffle=False).astype(np.int64)


def sample_units(
    n_total: int | Sequence[int],
    n_units: int | str,
    *,
    seed: int,
    layer: str | int,
    repeat: int,
    mode: str = "random",
    pool: UnitPool | None = None,
) -> np.ndarray:
    """Sorted flat indices of the units sampled from one layer for one repeat.

    Parameters
    ----------
    n_total : int or tuple of int
        The layer's number of units, or the shape of one image's activations with channels last
        (``(y, x, channels)`` for a conv layer). The modes ``equal`` and ``channel=K`` need the
        shape; given an int, the layer is treated as dense (every unit its own channel).
    n_units : int or 'all'
        How many units to sample. Values above the layer size, and ``'all'``, give every unit
        (the second seed's behaviour when it asked for 10,000 units of a 1,000-unit layer).
    seed, layer, repeat
        The sample depends on these alone (``numpy.random.SeedSequence(seed,
        spawn_key=(layer_key(layer), repeat))``). ``layer`` is a layer name or index.
    mode : {'random', 'equal', 'channel=K', 'active', 'weighted=mean', 'weighted=variance'}
        ``random``: ``n_units`` distinct units uniformly from the whole layer.
        ``equal``: ``n_units // n_channels`` units from every channel (the total is rounded
        *down* to a multiple of the channel count and capped at the layer size); a request
        smaller than the channel count raises ``ValueError``. For a dense layer every unit is
        its own channel, so ``equal`` is ``random``.
        ``channel=K``: ``n_units`` positions of channel ``K`` alone.
        ``active``, ``weighted=mean``, ``weighted=variance`` (:data:`DATA_MODES`): ``n_units``
        of ``pool``'s units (all of them when the pool holds no more), uniformly or with
        probability proportional to their weights, without replacement.
    pool : UnitPool, optional
        The job's eligible units and weights for this layer (required by, and only used by,
        the data-dependent modes; :func:`daskdiff.core.activity.unit_pool`).

    Returns
    -------
    numpy.ndarray of int64, shape (n_sampled,)
        Sorted, distinct flat indices (see the module docstring for the flattening).

    Notes
    -----
    Sampling never allocates an array of the layer's size (numpy's Floyd-style choice without
    replacement), so 200 of 3.2 million units costs microseconds. The seeds' bug of drawing a
    different mask for every image is not reproducible here by design: distances between images
    are only meaningful over the same units.
    """
    n_positions, n_channels, size = _unit_shape(n_total)
    if isinstance(n_units, str):
        if n_units != ALL:
            raise ValueError(f"n_units must be a positive integer or 'all', got {n_units!r}")
        k = size
    elif isinstance(n_units, bool) or not isinstance(n_units, (int, np.integer)) or n_units <= 0:
        raise ValueError(f"n_units must be a positive integer or 'all', got {n_units!r}")
    else:
        k = int(n_units)
    check_sampling(n_total, k, mode, layer=layer)
    rng = _rng(seed, layer, repeat)
    if is_data_mode(mode):
        if pool is None or pool.mode != mode or pool.n_features != size:
            raise ValueError(f"sampling {mode!r} draws from the job's unit statistics: pass pool=, the UnitPool of this "
                             f"layer for this mode (daskdiff.core.activity.unit_pool), got {pool!r:.80}")
        return _draw_from_pool(rng, pool, k)
    if k >= size and mode in ("random", "equal"):
        return np.arange(size, dtype=np.int64)  # every unit, already in order (no sort of millions)
    if mode == "random" or (mode == "equal" and n_positions == 1):
        return np.sort(_choose(rng, size, k))
    if mode == "equal":
        positions = [_choose(rng, n_positions, k // n_channels) for _ in range(n_channels)]
        idx = np.concatenate([p * n_channels + c for c, p in enumerate(positions)])
        return np.sort(idx)
    return np.sort(_choose(rng, n_positions, k) * n_channels + _channel(mode))


def _channel(mode: str) -> int:
    """K of a ``'channel=K'`` mode."""
    try:
        return int(mode.split("=", 1)[1])
    except ValueError:
        raise InputError(f"sampling mode {shorten(repr(mode))}: the channel must be an integer, e.g. 'channel=3'") from None


def check_sampling(n_total: int | Sequence[int], n_units: int | str, mode: str = "random", *, layer: str | int = "") -> None:
    """Refuse, without drawing, a request that :func:`sample_units` cannot meet for this layer.

    Parameters
    ----------
    n_total, n_units, mode
        As for :func:`sample_units` (``n_units`` already checked to be a positive int or ``'all'``).
    layer : str or int
        The layer's name, only to name it in the message.

    Raises
    ------
    InputError
        A ``ValueError``, for ``mode='equal'`` with fewer units than the layer has channels (it
        takes the same number from each), for ``'channel=K'`` with no channel ``K`` in the
        layer, and for an unknown mode. The message names the job spec's keys too
        (``analysis.n_units``, ``analysis.sampling``), whose values reach here unchanged.
    """
    n_positions, n_channels, size = _unit_shape(n_total)
    k = size if n_units == ALL else int(n_units)
    if mode == "random" or (mode == "equal" and n_positions == 1) or is_data_mode(mode):
        return
    if mode == "equal":
        if k < n_channels:
            raise InputError(
                f"sampling 'equal' takes the same number of units from each of the {n_channels} channels of layer "
                f"{layer!r}, so n_units must be at least {n_channels}, got {k}: give analysis.n_units of at least "
                f"{n_channels} (or all), or analysis.sampling: random (n_units >= {n_channels} or mode='random' "
                "in daskdiff.sample_units)"
            )
        return
    if mode.startswith("channel="):
        channel = _channel(mode)
        if not 0 <= channel < n_channels:
            raise InputError(
                f"sampling {shorten(repr(mode))}: layer {layer!r} has channels 0..{n_channels - 1}: give "
                f"analysis.sampling 'channel=K' with K from 0 to {n_channels - 1}, or analysis.sampling: random"
            )
        return
    raise InputError(f"unknown sampling mode {shorten(repr(mode))}; valid modes are {_VALID}")


def sample_size(n_total: int | Sequence[int], n_units: int | str, mode: str = "random") -> int:
    """How many units :func:`sample_units` returns for these arguments, without drawing any.

    Parameters
    ----------
    n_total, n_units, mode
        As for :func:`sample_units`.

    Returns
    -------
    int
        For planning and estimates. A mode that :func:`sample_units` refuses for this layer
        (``equal`` with fewer units than channels) gives 0; an unknown mode raises ValueError.
        The data-dependent modes give the most they can draw (fewer when the layer has fewer
        eligible units, which only the job's activations tell).
    """
    n_positions, n_channels, size = _unit_shape(n_total)
    k = size if n_units == ALL else int(n_units)
    if mode == "random" or (mode == "equal" and n_positions == 1) or is_data_mode(mode):
        return min(k, size)
    if mode == "equal":
        return min(k // n_channels, n_positions) * n_channels
    check_mode(mode)
    return min(k, n_positions)


def expected_union(n_total: int | Sequence[int], draws: dict[int | str, int], mode: str = "random") -> float:
    """Expected number of distinct units over independent draws of :func:`sample_units`.

    Parameters
    ----------
    n_total : int or tuple of int
        The layer's size or unit shape, as for :func:`sample_units`.
    draws : dict
        ``n_units`` -> how many repeats draw that many units (``'all'`` covers the layer).
    mode : str
        The sampling mode.

    Returns
    -------
    float
        Each repeat's draw is a uniform sample without replacement (of the layer, of each
        channel's positions for ``equal``, of one channel's positions for ``channel=K``), and
        draws of different repeats or ``n_units`` are taken as independent. A unit is then
        missed by every draw with probability ``prod (1 - s / population) ** repeats``: the
        union is the population times one minus that. It is the exact expectation for
        independent draws; the spread around it is about the square root of the population, so
        a layer's real count (:func:`daskdiff.core.units.storage_plan`) is within a fraction of
        a percent of it for any layer of more than a few thousand units. The data-dependent
        modes store every unit (their draws are known only after extraction): the layer's size.
    """
    n_positions, n_channels, size = _unit_shape(n_total)
    if is_data_mode(mode) or any(n == ALL for n, r in draws.items() if r > 0):
        return float(size)
    dense = mode == "random" or (mode == "equal" and n_positions == 1)
    population = size if dense else n_positions
    groups = 1 if dense or mode != "equal" else n_channels
    log_missed = 0.0
    for n, repeats in draws.items():
        taken = sample_size(n_total, n, mode) // groups
        if repeats <= 0 or taken <= 0:
            continue
        if taken >= population:
            return float(population * groups)
        log_missed += repeats * float(np.log1p(-taken / population))
    return float(population * groups * -np.expm1(log_missed))


def check_mode(mode: str) -> str:
    """Validate a sampling mode string without a layer (for job specs)."""
    if mode in ("random", "equal") or is_data_mode(mode):
        return mode
    if mode.startswith("channel="):
        tail = mode.split("=", 1)[1]
        if tail.isdigit():
            return mode
    raise ValueError(f"unknown sampling mode {shorten(repr(mode))}; valid modes are {_VALID}")


_VALID = ("'random', 'equal', 'channel=K' (K a channel index, e.g. 'channel=0'), "
          + ", ".join(repr(m) for m in DATA_MODES))
