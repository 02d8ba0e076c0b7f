"""The distance core against scipy's pdist (independent reference) and invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import pdist, squareform

import daskdiff
from daskdiff.core.distances import METRICS, pairwise_distances_stack, rdm_stack_repeats

ALL_METRICS = sorted(METRICS)


def _inputs():
    rng = np.random.default_rng(1234)
    dense = rng.normal(size=(17, 300))
    relu = np.maximum(rng.normal(size=(23, 500)), 0.0) * rng.exponential(3.0, size=500)
    relu[:, rng.random(500) < 0.3] = 0.0  # dead units, as in real ReLU layers
    offset = rng.normal(size=(11, 64)) + 1e3  # large mean: stresses the Gram formulation
    return {"dense": dense, "relu": relu, "offset": offset}


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("kind", ["dense", "relu", "offset"])
def test_matches_scipy(metric, kind):
    x = _inputs()[kind]
    ours = daskdiff.pairwise_distances(x, metric)
    ref = squareform(pdist(x, metric))
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_float32_input_computed_in_float64(metric):
    x = _inputs()["relu"].astype(np.float32)
    ref = squareform(pdist(x.astype(np.float64), metric))
    np.testing.assert_allclose(daskdiff.pairwise_distances(x, metric), ref, rtol=1e-9)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cityblock", "chebyshev"])
def test_constant_rows_match_scipy(metric):
    # rows constant within themselves, different between rows, plus two identical rows
    x = np.repeat(np.array([[0.0], [2.5], [2.5], [-7.0]]), 50, axis=1)
    ref = squareform(pdist(x, metric))
    np.testing.assert_allclose(daskdiff.pairwise_distances(x, metric), ref, rtol=1e-9, atol=1e-12)


def test_identical_rows_give_zero_distance():
    x = np.tile(np.linspace(0, 5, 40), (6, 1))
    for metric in ALL_METRICS:
        np.testing.assert_allclose(daskdiff.pairwise_distances(x, metric), 0.0, atol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "correlation"])
def test_degenerate_rows_are_defined_not_nan(metric):
    """scipy gives NaN; we define 1 against a regular row and 0 between two degenerate rows."""
    rng = np.random.default_rng(0)
    regular = rng.normal(size=(3, 20))
    degenerate = np.zeros((2, 20)) if metric == "cosine" else np.full((2, 20), 4.0)
    x = np.vstack([regular, degenerate])
    d = daskdiff.pairwise_distances(x, metric)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d[:3, :3], squareform(pdist(regular, metric)), rtol=1e-9)
    np.testing.assert_array_equal(d[3:, :3], 1.0)
    np.testing.assert_array_equal(d[:3, 3:], 1.0)
    np.testing.assert_array_equal(d[3:, 3:], 0.0)


def test_all_zero_layer_has_zero_distances():
    for metric in ALL_METRICS:
        np.testing.assert_array_equal(daskdiff.pairwise_distances(np.zeros((5, 8)), metric), 0.0)


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("shape", [(4, 9, 30), (2, 3, 6, 11)])
def test_each_matrix_of_a_stack_matches_scipy(metric, shape):
    """Every matrix of a stack, whatever the leading axes, against scipy on that matrix alone."""
    rng = np.random.default_rng(7)
    x = np.maximum(rng.normal(size=shape), 0)
    stacked = pairwise_distances_stack(x, metric)
    assert stacked.shape == shape[:-1] + (shape[-2],)
    for index in np.ndindex(shape[:-2]):
        ref = squareform(pdist(x[index], metric))
        np.testing.assert_allclose(stacked[index], ref, rtol=1e-9, atol=0, err_msg=f"matrix {index}")


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="valid metrics are"):
        daskdiff.pairwise_distances(np.ones((3, 3)), "manhattan")
    with pytest.raises(ValueError, match="NaN"):
        daskdiff.pairwise_distances(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        daskdiff.pairwise_distances(np.ones(4))


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    x=st.integers(2, 9).flatmap(
        lambda n: arrays(np.float64, (n, 6), elements=finite)
    ),
    metric=st.sampled_from(ALL_METRICS),
    data=st.data(),
)
def test_properties(x, metric, data):
    d = daskdiff.pairwise_distances(x, metric)
    # symmetric, zero diagonal, non-negative
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    assert np.all(d >= 0)
    # permutation equivariance: permuting images permutes the matrix
    perm = np.array(data.draw(st.permutations(range(len(x)))))
    dp = daskdiff.pairwise_distances(x[perm], metric)
    scale = max(1.0, float(np.abs(d).max()))
    np.testing.assert_allclose(dp, d[np.ix_(perm, perm)], atol=1e-9 * scale)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "correlation"])
def test_a_matrix_gives_the_same_bits_alone_or_stacked_with_badly_conditioned_neighbours(metric):
    """Re-centring against cancellation is decided per matrix: a repeat's value cannot depend on
    which other repeats share its task (and so on ``repeats_per_task``)."""
    rng = np.random.default_rng(7)
    plain = rng.standard_normal((3, 6, 40))
    offset = rng.standard_normal((2, 6, 40)) * 1e-3 + 1e3  # large common offset: needs centring
    stack = np.concatenate([plain[:1], offset[:1], plain[1:], offset[1:]])
    together = pairwise_distances_stack(stack, metric)
    for i, matrix in enumerate(stack):
        alone = pairwise_distances_stack(matrix[None], metric)[0]
        np.testing.assert_array_equal(together[i], alone)
        np.testing.assert_allclose(alone, squareform(pdist(matrix, metric)), rtol=1e-6, atol=1e-9)


def test_stacks_of_repeats_keep_their_distance_matrices_within_the_bound():
    # 8 * 1000**2 bytes per matrix: 4 fit 32 MiB (4.19); 43 images: 2,268 fit, so what is wanted
    assert rdm_stack_repeats(1000, 25) == 4
    assert rdm_stack_repeats(43, 25) == 25
    assert rdm_stack_repeats(5000, 25) == 1  # one matrix over the bound is still computed
    assert rdm_stack_repeats(1000, 2) == 2
