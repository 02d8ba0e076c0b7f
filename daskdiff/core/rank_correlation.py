"""Numeric core: Spearman's rank correlation across stimuli, its permutation p-value, a bootstrap
interval over sessions, and Holm's step-down adjustment (numpy and scipy only).

The comparison of a network with recorded neurons (:mod:`daskdiff.comparison`) asks, for each
network layer, whether the network ranks a handful of stimuli (the 12 OpenScope movies) the way a
group of cortical recordings does. Everything here works on plain arrays whose last axis is the
stimuli; leading axes are a batch (network layers, bootstrap resamples).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

EXACT_LIMIT = math.factorial(8)
"""Permutation tests enumerate all ``n!`` orders when ``n! <= max(n_permutations, EXACT_LIMIT)``
(every ``n <= 8``); otherwise they draw ``n_permutations`` random orders (Monte Carlo)."""

_REL_TOL = 1e-12  # a permuted statistic within this (relative) of the observed one counts as equal


def _unit_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis, centred and scaled to unit norm (NaN rows stay NaN).

    A row that is constant (all ranks equal) has no direction: it becomes NaN.
    """
    ranks = rankdata(np.asarray(values, dtype=np.float64), axis=-1, nan_policy="propagate")
    centred = ranks - ranks.mean(axis=-1, keepdims=True)
    norm = np.sqrt(np.sum(centred**2, axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation along the last axis, broadcast over the leading axes.

    Parameters
    ----------
    x, y : array_like, shapes (..., n)
        Values of the same ``n`` stimuli, in the same order; leading shapes broadcast.

    Returns
    -------
    numpy.ndarray
        The correlation, shape of the broadcast leading axes; NaN where a row holds a NaN or is
        constant (its ranks have no spread).

    Notes
    -----
    The Pearson correlation of the average ranks (ties share the mean of their ranks), as
    :func:`scipy.stats.spearmanr` computes it.
    """
    return np.sum(_unit_ranks(x) * _unit_ranks(y), axis=-1)


class PermutationTest(NamedTuple):
    """Result of :func:`permutation_test`."""

    rho: np.ndarray
    """Observed Spearman correlation per row of ``x``."""
    p_value: np.ndarray
    """Two-sided permutation p-value per row (NaN where ``rho`` is NaN)."""
    n_permutations: int
    """Orders of the stimuli evaluated: ``n!`` when exact, else the Monte Carlo draws."""
    exact: bool
    """Whether every order was enumerated."""


def permutation_test(x: np.ndarray, y: np.ndarray, *, n_permutations: int = 9999,
                     seed: int | np.random.SeedSequence | None = 0) -> PermutationTest:
    """Spearman's rho of each row of ``x`` with ``y``, and its permutation p-value.

    Parameters
    ----------
    x : array_like, shape (k, n)
        ``k`` rows (e.g. network layers) of values of ``n`` stimuli.
    y : array_like, shape (n,)
        The values the rows are correlated with (e.g. one neural group's means).
    n_permutations : int
        Random orders drawn when the test is not exact (see :data:`EXACT_LIMIT`).
    seed : int, numpy.random.SeedSequence or None
        Seeds the Monte Carlo draws (``numpy.random.default_rng``); an exact test draws nothing.

    Returns
    -------
    PermutationTest

    Notes
    -----
    The null hypothesis is that the pairing of ``y``'s values with the stimuli is arbitrary:
    ``y`` is permuted (the same orders for every row of ``x``) and rho recomputed. The p-value
    is two-sided as in :func:`scipy.stats.permutation_test` (``permutation_type='pairings'``):
    ``min(1, 2 * min(P(null <= observed), P(null >= observed)))``. Exact tests count every one
    of the ``n!`` orders, the observed one included; Monte Carlo tests add the observed order to
    both counts, ``(hits + 1) / (n_permutations + 1)`` (so p is never 0).
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or x.shape[-1] != y.shape[0]:
        raise ValueError(f"x must be (k, n) and y (n,) over the same n stimuli; got {x.shape} and {y.shape}")
    if not (isinstance(n_permutations, (int, np.integer)) and n_permutations >= 1):
        raise ValueError(f"n_permutations must be a positive integer, e.g. 9999; got {n_permutations!r}")
    n = y.shape[0]
    exact = math.factorial(n) <= max(int(n_permutations), EXACT_LIMIT)
    if exact:
        orders = np.array(list(itertools.permutations(range(n))), dtype=np.intp).reshape(-1, n)
    else:
        rng = np.random.default_rng(seed)
        orders = rng.permuted(np.tile(np.arange(n), (int(n_permutations), 1)), axis=1)
    ux, uy = _unit_ranks(x), _unit_ranks(y)
    observed = ux @ uy  # (k,)
    null = ux @ uy[orders].T  # (k, P)
    tol = _REL_TOL * np.maximum(1.0, np.abs(observed))[:, None]
    adjust = 0 if exact else 1
    total = len(orders) + adjust
    less = (np.sum(null <= observed[:, None] + tol, axis=1) + adjust) / total
    greater = (np.sum(null >= observed[:, None] - tol, axis=1) + adjust) / total
    p = np.minimum(1.0, 2 * np.minimum(less, greater))
    p = np.where(np.isfinite(observed), p, np.nan)
    return PermutationTest(observed, p, len(orders), exact)


def bootstrap_interval(x: np.ndarray, sessions: np.ndarray, *, n_bootstrap: int = 1000,
                       seed: int | np.random.SeedSequence | None = 0, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over sessions of Spearman's rho between rows of ``x`` and the session mean.

    Parameters
    ----------
    x : array_like, shape (k, n)
        ``k`` rows (network layers) of values of ``n`` stimuli; held fixed.
    sessions : array_like, shape (s, n)
        One row per recording session: its value for each stimulus (NaN where the session did
        not see the stimulus).
    n_bootstrap : int
        Resamples.
    seed : int, numpy.random.SeedSequence or None
        Seeds ``numpy.random.default_rng``, which draws every resample; the same seed gives the
        same interval.
    confidence : float
        In (0, 1).

    Returns
    -------
    low, high : numpy.ndarray, shape (k,)
        The ``(1 - confidence)/2`` and ``(1 + confidence)/2`` percentiles of the resampled rho
        (NaN where no resample defines it).

    Notes
    -----
    Each resample draws ``s`` sessions with replacement (the same draw for every row of ``x``),
    averages them per stimulus (ignoring NaN) and correlates that mean with each row. A
    resample in which some stimulus has no session, or whose mean is constant, gives NaN and is
    left out of the percentiles. With one session every resample is that session: the interval
    is a single point, not a statement of uncertainty.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    sessions = np.atleast_2d(np.asarray(sessions, dtype=np.float64))
    if sessions.shape[-1] != x.shape[-1]:
        raise ValueError(f"x (k, n) and sessions (s, n) must share n stimuli; got {x.shape} and {sessions.shape}")
    if not (isinstance(n_bootstrap, (int, np.integer)) and n_bootstrap >= 1):
        raise ValueError(f"n_bootstrap must be a positive integer, e.g. 1000; got {n_bootstrap!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a level in (0, 1), e.g. 0.95; got {confidence!r}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, sessions.shape[0], size=(int(n_bootstrap), sessions.shape[0]))
    resampled = sessions[draws]  # (B, s, n)
    present = np.isfinite(resampled)
    count = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(present, resampled, 0.0).sum(axis=1) / count  # (B, n); NaN where no session
    rho = spearman(x[None, :, :], means[:, None, :])  # (B, k)
    low = np.full(x.shape[0], np.nan)
    high = np.full(x.shape[0], np.nan)
    defined = np.any(np.isfinite(rho), axis=0)
    if np.any(defined):
        q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
        bounds = np.nanpercentile(rho[:, defined], q, axis=0)
        low[defined], high[defined] = bounds[0], bounds[1]
    return low, high


def holm(p_values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Holm's step-down adjusted p-values along ``axis`` (a family per slice); NaN stays NaN.

    Notes
    -----
    With the ``m`` defined p-values of a family sorted, ``p_(1) <= ... <= p_(m)``, the adjusted
    value of ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (Holm 1979). Rejecting
    where the adjusted value is at most alpha controls the family-wise error rate at alpha.
    NaN p-values are not members of the family (they do not count in ``m``).
    """
    p = np.moveaxis(np.asarray(p_values, dtype=np.float64), axis, -1)
    out = np.full(p.shape, np.nan)
    for index in np.ndindex(p.shape[:-1]):
        row = p[index]
        defined = np.flatnonzero(np.isfinite(row))
        if defined.size == 0:
            continue
        order = defined[np.argsort(row[defined], kind="stable")]
        m = order.size
        scaled = np.minimum(1.0, (m - np.arange(m)) * row[order])
        out[index + (order,)] = np.maximum.accumulate(scaled)
    return np.moveaxis(out, -1, axis)
