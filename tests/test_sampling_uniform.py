"""sample_units draws uniformly: chi-square goodness of fit over many repeats, and a control
showing that the same statistic rejects a biased sampler (so these tests can fail).

Draws differ only in ``repeat`` (what a job varies), with a fixed seed, so each test is
deterministic. Counts of single units over draws of ``k`` distinct units of ``n`` are not
multinomial: their covariance is the multinomial one times ``(n - k) / (n - 1)``, so Pearson's
statistic is divided by that factor to be chi-square with ``n - 1`` degrees of freedom (without
it the test would be too lenient).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import chi2, chisquare

from daskdiff import sample_units

SEED = 20240611
ALPHA = 1e-3


def _unit_count_p(draws: list[np.ndarray], n: int, k: int) -> float:
    """p-value that every unit of ``range(n)`` is equally likely, from draws of k distinct units."""
    counts = np.bincount(np.concatenate(draws), minlength=n)
    assert len(counts) == n, "a draw held an index outside the population"
    statistic = chisquare(counts).statistic * (n - 1) / (n - k)
    return float(chi2.sf(statistic, n - 1))


def _subset_p(draws: list[np.ndarray], n: int, k: int) -> float:
    """p-value that every k-subset of ``range(n)`` is equally likely (one subset per draw: exact)."""
    index = {s: i for i, s in enumerate(itertools.combinations(range(n), k))}
    counts = np.bincount([index[tuple(int(u) for u in d)] for d in draws], minlength=len(index))
    return float(chisquare(counts).pvalue)


def _random_draws(n_total, k, repeats, **kw):
    return [sample_units(n_total, k, seed=SEED, layer="L", repeat=r, **kw) for r in range(repeats)]


def _biased_draws(n, k, repeats, weights):
    rng = np.random.default_rng(SEED)
    p = np.asarray(weights, dtype=float) / np.sum(weights)
    return [np.sort(rng.choice(n, size=k, replace=False, p=p)) for _ in range(repeats)]


def _off_by_one_draws(n, k, repeats):
    """A plausible bug: drawing from range(n - 1), so the last unit is never chosen."""
    rng = np.random.default_rng(SEED)
    return [np.sort(rng.choice(n - 1, size=k, replace=False)) for _ in range(repeats)]


def test_random_mode_every_unit_equally_likely():
    n, k = 60, 7
    assert _unit_count_p(_random_draws(n, k, 2000), n, k) > ALPHA


def test_random_mode_every_subset_equally_likely():
    """C(8, 3) = 56 subsets, 5600 draws: about 100 of each."""
    n, k = 8, 3
    assert _subset_p(_random_draws(n, k, 5600), n, k) > ALPHA


@pytest.mark.parametrize("layer", ["block1_conv1", "fc2"])
def test_random_mode_uniform_across_layers(layer):
    """Repeat 0 of many seeds for a layer name: the layer key does not bias the draw."""
    n, k = 40, 5
    draws = [sample_units(n, k, seed=s, layer=layer, repeat=0) for s in range(2000)]
    assert _unit_count_p(draws, n, k) > ALPHA


def test_equal_mode_positions_uniform_within_each_channel():
    """(5, 4, 3) conv layer, 6 units: 2 of the 20 positions of every channel, uniformly."""
    shape, k = (5, 4, 3), 6
    n_positions, n_channels = 20, 3
    draws = _random_draws(shape, k, 2000, mode="equal")
    for c in range(n_channels):
        per_channel = [d[d % n_channels == c] // n_channels for d in draws]
        assert all(len(p) == k // n_channels for p in per_channel)
        assert _unit_count_p(per_channel, n_positions, k // n_channels) > ALPHA, f"channel {c}"


def test_channel_mode_positions_uniform():
    shape, k = (6, 5, 4), 3
    draws = _random_draws(shape, k, 2000, mode="channel=2")
    assert all(np.all(d % 4 == 2) for d in draws)
    assert _unit_count_p([d // 4 for d in draws], 30, k) > ALPHA


def test_statistics_reject_biased_samplers():
    """The same statistics and sample sizes as above flag a 30 % tilt and an off-by-one."""
    n, k = 60, 7
    tilt = 1 + 0.3 * np.arange(n) / (n - 1)
    assert _unit_count_p(_biased_draws(n, k, 2000, tilt), n, k) < 1e-6
    assert _unit_count_p(_off_by_one_draws(n, k, 2000), n, k) < 1e-6
    # a sampler uniform over units but not over subsets: 0 and 1 always drawn together
    rng = np.random.default_rng(SEED)
    paired = []
    for _ in range(5600):
        first = int(rng.integers(8))
        partner = first ^ 1  # 0<->1, 2<->3, ...: the third unit is uniform among the rest
        rest = rng.choice([u for u in range(8) if u not in (first, partner)])
        paired.append(np.sort([first, partner, rest]))
    assert _unit_count_p(paired, 8, 3) > ALPHA  # the unit counts cannot see this bias...
    assert _subset_p(paired, 8, 3) < 1e-6  # ...the subset counts can
