"""Numeric core: per-unit statistics of a layer's activations over a job's images, merged exactly,
and the pool of units a data-dependent sampling mode draws from.

Pure numpy. :func:`unit_stats` reduces one image set's ``(images, features)`` values to its
sufficient statistics (count, mean, sum of squared deviations, min, max per feature);
:func:`merge_unit_stats` combines sets (Chan et al.'s pairwise update, in the order given);
:func:`unit_pool` turns the merged statistics into the :class:`~daskdiff.core.sampling.UnitPool`
of a mode of :data:`~daskdiff.core.sampling.DATA_MODES`.

Determinism: a set's statistics are reduced over its images in blocks of :func:`block_images`
rows (a number that depends on the layer's size alone) of the set's values in image order, so
they do not depend on how the set was cut into shards or which worker read it; sets are merged
in the job's set order. The pools, and so the draws, are the same for any shard size, worker
count or task order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from .sampling import DATA_MODES, UnitPool

BLOCK_VALUES = 1 << 23
"""Values reduced at once by :func:`unit_stats` (64 MiB of float64 working memory per temporary)."""


def block_images(n_features: int) -> int:
    """Images per block of :func:`unit_stats`: at most 256, and at most :data:`BLOCK_VALUES`
    values (at least one image)."""
    return max(1, min(256, BLOCK_VALUES // max(1, int(n_features))))


@dataclass(frozen=True, eq=False)
class UnitStats:
    """Per-feature statistics of a layer's values over ``count`` images.

    ``mean`` and ``m2`` (the sum of squared deviations from the mean; the variance is
    ``m2 / count``) are float64; ``low`` and ``high`` the minimum and maximum, as stored (float32).
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def variance(self) -> np.ndarray:
        """Population variance per feature (``m2 / count``)."""
        return self.m2 / self.count

    @property
    def active(self) -> np.ndarray:
        """Whether each feature varies over the images (not constant, e.g. not an all-zero ReLU)."""
        return self.high > self.low


def unit_stats(values: np.ndarray) -> UnitStats:
    """Sufficient statistics of ``values`` ``(images, features)`` per feature (axis 0 reduced).

    Two passes over blocks of :func:`block_images` images: the sum (float64) for the mean, then
    the sum of squared deviations from it, so the variance of a unit with a large mean and a small
    spread keeps its digits (no ``E[x^2] - E[x]^2`` cancellation).
    """
    values = np.asarray(values)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"values must be (images, features) with at least one image, got shape {values.shape}")
    n, step = len(values), block_images(values.shape[1])
    total = np.zeros(values.shape[1])
    low, high = values[0].copy(), values[0].copy()
    for start in range(0, n, step):
        block = values[start : start + step]
        total += block.sum(axis=0, dtype=np.float64)
        np.minimum(low, block.min(axis=0), out=low)
        np.maximum(high, block.max(axis=0), out=high)
    mean = total / n
    m2 = np.zeros(values.shape[1])
    for start in range(0, n, step):
        m2 += np.square(values[start : start + step] - mean).sum(axis=0)
    return UnitStats(n, mean, m2, low, high)


def merge_unit_stats(parts: Sequence[UnitStats]) -> UnitStats:
    """The statistics of the union of ``parts``' images, merged left to right.

    Chan, Golub & LeVeque's update for two groups ``a``, ``b``: ``mean = mean_a + d * n_b / n``
    and ``m2 = m2_a + m2_b + d^2 * n_a * n_b / n`` with ``d = mean_b - mean_a``; min and max are
    exact. The same parts in the same order give the same bits.
    """
    if not parts:
        raise ValueError("merge_unit_stats needs at least one UnitStats")
    out = parts[0]
    for b in parts[1:]:
        if b.mean.shape != out.mean.shape:
            raise ValueError(f"cannot merge statistics of {out.mean.shape} and {b.mean.shape} features")
        n = out.count + b.count
        d = b.mean - out.mean
        out = UnitStats(n, out.mean + d * (b.count / n), out.m2 + b.m2 + np.square(d) * (out.count * b.count / n),
                        np.minimum(out.low, b.low), np.maximum(out.high, b.high))
    return out


def mode_weights(stats: UnitStats, mode: str) -> np.ndarray:
    """Each feature's weight under a data-dependent ``mode`` (0: never drawn).

    ``active``: 1 where the feature is not constant over the images, else 0;
    ``weighted=mean``: the mean activation, negative means counted as 0;
    ``weighted=variance``: the variance over the images (0 for a constant feature).
    """
    if mode == "active":
        return stats.active.astype(np.float64)
    if mode == "weighted=mean":
        return np.maximum(stats.mean, 0.0)
    if mode == "weighted=variance":
        return np.where(stats.active, stats.variance, 0.0)
    raise ValueError(f"mode must be one of {list(DATA_MODES)}, got {mode!r}")


def unit_pool(stats: UnitStats, mode: str, *, layer: str = "") -> UnitPool:
    """The units ``mode`` draws from (positive weight) and their weights (None for ``active``).

    Raises
    ------
    InputError
        No unit of the layer has a positive weight (every unit constant over the job's images,
        or no positive mean), naming the layer and the fix.
    """
    weights = mode_weights(stats, mode)
    units = np.flatnonzero(weights > 0)
    if len(units) == 0:
        what = {"active": "varies", "weighted=mean": "has a positive mean activation",
                "weighted=variance": "has a positive variance"}[mode]
        raise InputError(
            f"layer {layer!r}: no unit {what} over the job's {stats.count} images, so analysis.sampling {mode!r} has "
            "nothing to draw; use analysis.sampling: random for this job, or leave the layer out of model.layers"
        )
    return UnitPool.of(mode, units, None if mode == "active" else weights[units], len(weights), int(stats.active.sum()))
