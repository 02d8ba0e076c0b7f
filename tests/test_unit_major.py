"""The unit-major layout of a task's values and the distances computed from it, against scipy."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from references import normalised_by_hand
import daskdiff.core.unit_major as unit_major_module
from daskdiff.core.unit_major import repeat_statistics, unit_major, unit_major_distances, worth_unit_major
from daskdiff.core.distances import pairwise_distances_stack


def _layer(kind: str, n: int = 17, m: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "relu":
        return np.maximum(rng.standard_normal((n, m)), 0).astype(np.float32)
    if kind == "offset":  # a large common offset: cancellation in |a|^2 + |b|^2 - 2ab and in E[x^2] - E[x]^2
        return (1e4 + 1e-2 * rng.standard_normal((n, m))).astype(np.float32)
    raise ValueError(kind)


def _picks(m: int, k: int, r: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [np.sort(rng.choice(m, k, replace=False)) for _ in range(r)]


@pytest.mark.parametrize("kind", ["relu", "offset"])
@pytest.mark.parametrize("normalize", ["zscore", "none", "mean", "max"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_unit_major_distances_equal_scipy_on_the_normalised_samples(kind, normalize, metric):
    values = _layer(kind)
    picks = _picks(values.shape[1], 300, 4) + [np.arange(values.shape[1])]  # and every unit (an exact n_units)
    um = unit_major(values, normalize)
    # without a shift the offset layer's normalised entries are 1 +- 1e-6: scipy's own differences
    # of them carry ~1e-16 / 1e-6 relative rounding, so the reference is only that good
    rtol = 1e-9 if kind == "offset" and normalize != "zscore" else 1e-11
    for per_unit in (False, True):
        picks_k = picks[:4]
        d, bad = unit_major_distances(um, picks_k, metric, normalize, per_unit)
        assert not bad.any()
        for got, pos in zip(d, picks_k):
            want = squareform(pdist(normalised_by_hand(values[:, pos], normalize), metric))
            if per_unit:
                want /= np.sqrt(len(pos)) if metric == "euclidean" else len(pos)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12 * want.max())
    d, _ = unit_major_distances(um, picks[4:], metric, normalize)
    np.testing.assert_allclose(d[0], squareform(pdist(normalised_by_hand(values, normalize), metric)), rtol=rtol)


def test_zscore_statistics_hold_under_a_large_offset():
    """sd 1e-2 around 1e4: a one-pass E[x^2] - E[x]^2 in float64 would be off by ~1e-4 relative."""
    values = _layer("offset")
    picks = _picks(values.shape[1], 300, 3)
    shift, scale = repeat_statistics(unit_major(values, "zscore"), picks, "zscore")
    for s, c, pos in zip(shift, scale, picks):
        x = values[:, pos].astype(np.float64)
        assert s == pytest.approx(x.mean(), rel=1e-14)
        assert c == pytest.approx(x.std(), rel=1e-12)


def test_a_dead_layer_is_flagged_and_gives_nan():
    values = np.zeros((6, 400), dtype=np.float32)
    values[:, :10] = 1.0  # alive only outside the samples below
    um = unit_major(values, "zscore")
    d, bad = unit_major_distances(um, [np.arange(100, 150), np.arange(0, 50)], "euclidean", "zscore", min_scale=1e-9)
    assert bad.tolist() == [True, False]
    assert np.isnan(d[0]).all() and not np.isnan(d[1]).any()


def test_layout_rows_and_peak():
    values = _layer("relu", 9, 10_000)  # more than one chunk of units
    um = unit_major(values, "max")
    np.testing.assert_array_equal(um.values, values.T)
    np.testing.assert_array_equal(um.peaks, np.abs(values).max(axis=0))
    assert um.peak == np.abs(values).max()


def test_units_first_stack_equals_scipy_for_every_metric():
    x = np.random.default_rng(0).standard_normal((3, 40, 8)) + 50.0  # (repeats, units, images), offset
    for metric in ("euclidean", "sqeuclidean", "cosine", "correlation", "cityblock", "chebyshev"):
        d = pairwise_distances_stack(x, metric, units_first=True)
        for got, m in zip(d, x):
            np.testing.assert_allclose(got, squareform(pdist(m.T, metric)), rtol=1e-9, atol=1e-12)


def test_worth_unit_major():
    assert worth_unit_major(802_816, 100 * 10_000)  # the seed's 10,000-unit repeats
    assert not worth_unit_major(802_816, 100 * 200)  # 200 units: the layout would cost more than it saves


@pytest.mark.parametrize("normalize", ["zscore", "max"])
def test_gathering_a_few_rows_at_a_time_gives_the_same_distances(monkeypatch, normalize):
    values = _layer("relu")
    picks = _picks(values.shape[1], 300, 3) + [np.arange(values.shape[1])]
    um = unit_major(values, normalize)
    whole = [unit_major_distances(um, picks[:3], "euclidean", normalize)[0], unit_major_distances(um, picks[3:], "euclidean", normalize)[0]]
    monkeypatch.setattr(unit_major_module, "GATHER_BYTES", 4 * values.shape[0] * 7)  # 7 rows at a time: 43 blocks, the last of 6
    blocks = [unit_major_distances(um, picks[:3], "euclidean", normalize)[0], unit_major_distances(um, picks[3:], "euclidean", normalize)[0]]
    for got, want in zip(blocks, whole):
        np.testing.assert_array_equal(got, want)
    for got, pos in zip(blocks[0], picks[:3]):
        np.testing.assert_allclose(got, squareform(pdist(normalised_by_hand(values[:, pos], normalize))), rtol=1e-11)


@pytest.mark.parametrize("normalize", ["zscore", "mean", "max", "none"])
def test_blocks_of_images_give_the_layout_and_statistics_of_the_whole(normalize):
    values = _layer("relu", n=23, m=9000)  # 3 chunks of units, the last partial
    whole = unit_major(values, normalize)
    blocks = unit_major([values[:5], values[5:6], values[6:]], normalize)  # e.g. one block per shard
    np.testing.assert_array_equal(blocks.values, values.T)
    assert blocks.values.flags.c_contiguous and blocks.peak == whole.peak == np.abs(values).max()
    for got, want in zip((blocks.means, blocks.squares, blocks.peaks), (whole.means, whole.squares, whole.peaks)):
        np.testing.assert_array_equal(got, want)
    y = values.astype(np.float64)
    if normalize in ("zscore", "mean"):
        np.testing.assert_allclose(whole.means, y.mean(axis=0), rtol=1e-13)
    if normalize == "zscore":
        np.testing.assert_allclose(whole.squares, ((y - y.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-12)
    if normalize == "max":
        np.testing.assert_array_equal(whole.peaks, np.abs(values).max(axis=0))
