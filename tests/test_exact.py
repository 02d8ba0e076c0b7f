"""The distances of a whole layer in blocks of units (:mod:`daskdiff.core.exact`) against scipy's
``pdist`` on the matrix normalised by hand, and against the stacked path it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from references import normalised_by_hand
from daskdiff.core.differentiation import distances_stack
from daskdiff.core.exact import exact_distances
from daskdiff.core.unit_major import layer_statistic, unit_major


def _layer(rng, n_images=9, n_units=1000, offset=0.0):
    """ReLU-like float32 activations (a third exactly zero), plus ``offset``."""
    x = np.maximum(rng.standard_normal((n_images, n_units)), 0) * rng.gamma(2.0, 1.0, n_units)
    return (x + offset).astype(np.float32)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("normalize", ["none", "mean", "zscore", "max"])
@pytest.mark.parametrize("per_unit", [False, True])
@pytest.mark.parametrize("block", [1, 7, 256, 10**6])
def test_blocks_of_units_give_scipys_distances(metric, normalize, per_unit, block):
    rng = np.random.default_rng(block)
    x = _layer(rng)
    reference = squareform(pdist(normalised_by_hand(x, normalize), metric))
    if per_unit:
        reference /= np.sqrt(x.shape[1]) if metric == "euclidean" else x.shape[1]
    for units_first, given in ((False, x), (True, np.ascontiguousarray(x.T))):
        d, undefined = exact_distances(given, metric, normalize, per_unit, units_first=units_first, block=block)
        assert undefined is False
        np.testing.assert_allclose(d, reference, rtol=1e-12, atol=0)
        assert np.array_equal(d, d.T) and not np.diagonal(d).any()


@pytest.mark.parametrize("normalize", ["none", "mean", "zscore", "max"])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_the_normaliser_from_per_unit_moments_gives_scipys_distances(normalize, offset):
    """The job's exact path on the unit-major layout passes the normaliser combined from each
    unit's moments (``statistic``) instead of two passes over the values: the same distances."""
    x = _layer(np.random.default_rng(11), n_images=13, n_units=5000, offset=offset)
    um = unit_major(x, normalize)
    statistic = layer_statistic(um, normalize)
    reference = squareform(pdist(normalised_by_hand(x, normalize), "euclidean"))
    d, undefined = exact_distances(um.values, "euclidean", normalize, units_first=True, block=512, statistic=statistic)
    assert undefined is False
    np.testing.assert_allclose(d, reference, rtol=1e-12, atol=0)
    # the statistic given is the one used: twice the scale, half the distances
    half, _ = exact_distances(um.values, "euclidean", normalize, units_first=True, block=512,
                              statistic=(statistic[0], 2 * statistic[1]))
    np.testing.assert_allclose(half, reference / 2, rtol=1e-12, atol=0)


def test_a_given_zero_scale_is_undefined_and_named():
    """A constant layer's moments give a z-score scale of 0: undefined, as when computed here."""
    x = np.full((5, 300), 2.5, dtype=np.float32)
    um = unit_major(x, "zscore")
    statistic = layer_statistic(um, "zscore")
    assert statistic == (2.5, 0.0)
    d, undefined = exact_distances(um.values, "euclidean", "zscore", units_first=True, on_undefined="nan", statistic=statistic)
    assert undefined is True and np.isnan(d).all()
    with pytest.raises(ValueError, match="standard deviation of all entries"):
        exact_distances(um.values, "euclidean", "zscore", units_first=True, name="layer 'flat'", statistic=statistic)


@pytest.mark.parametrize("normalize", ["none", "zscore"])
def test_near_identical_images_with_a_large_offset_are_centred_as_the_stacked_path_centres_them(normalize):
    """A common offset of 1e4 and differences of 1e-3: the uncentred Gram matrix would lose them."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal(3000)
    x = (1e4 + base + 1e-3 * rng.standard_normal((6, 3000))).astype(np.float64)
    reference = squareform(pdist(normalised_by_hand(x, normalize), "euclidean"))
    d, _ = exact_distances(x, "euclidean", normalize, block=128)
    stacked, _ = distances_stack(x[None], "euclidean", normalize)
    np.testing.assert_allclose(d, reference, rtol=1e-7)  # what float64 leaves of 1e-3 against 1e4
    np.testing.assert_allclose(d, stacked[0], rtol=1e-9)
    uncentred = np.sqrt(np.maximum(0, np.add.outer((x * x).sum(1), (x * x).sum(1)) - 2 * x @ x.T))
    assert np.abs(uncentred - reference)[~np.eye(6, dtype=bool)].max() > 1e-3 * reference.max() or normalize == "zscore"


def test_an_undefined_normaliser_gives_nan_or_the_stacked_paths_error():
    x = np.zeros((5, 40), dtype=np.float32)
    d, undefined = exact_distances(x, "euclidean", "zscore", on_undefined="nan", name="layer 'dead'")
    assert undefined is True and np.isnan(d).all() and d.shape == (5, 5)
    with pytest.raises(ValueError, match=r"standard deviation of all entries of layer 'dead' is 0\.0"):
        exact_distances(x, "euclidean", "zscore", name="layer 'dead'")
    tiny = np.full((4, 30), 1e-30, dtype=np.float32)
    tiny[0, 0] = 2e-30
    assert exact_distances(tiny, "euclidean", "zscore", on_undefined="nan", min_scale=1e-6)[1] is True  # below float32 resolution of the layer
    assert exact_distances(tiny.astype(np.float64), "euclidean", "zscore", on_undefined="nan")[1] is False


def test_the_stacked_path_agrees_to_rounding_on_a_wide_layer():
    """100,000 units (seven blocks): the old path's distances, to ~1e-14."""
    x = _layer(np.random.default_rng(3), n_images=12, n_units=100_000)
    stacked, _ = distances_stack(x[None], "euclidean", "zscore", per_unit=True)
    d, _ = exact_distances(x, "euclidean", "zscore", per_unit=True)
    np.testing.assert_allclose(d, stacked[0], rtol=1e-13, atol=0)


def test_a_whole_layer_is_never_copied_to_float64():
    """The stacked path converts the layer to a float64 stack (twice the float32 values); the
    blocked one holds a few blocks at most (tracemalloc sees numpy's allocations)."""
    import tracemalloc

    x = _layer(np.random.default_rng(4), n_images=9, n_units=400_000)  # 14.4 MB of float32

    def peak(f) -> int:
        tracemalloc.start()
        try:
            f()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    stacked = peak(lambda: distances_stack(x[None], "euclidean", "zscore", per_unit=True))
    blocked = peak(lambda: exact_distances(x, "euclidean", "zscore", per_unit=True))
    assert stacked > 2 * x.nbytes  # the copy the blocked path avoids
    assert blocked < 0.25 * x.nbytes, blocked
