"""Blocked differentiation (daskdiff.core.blocked) against the unblocked core, scipy and np.median."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.spatial.distance import pdist, squareform

from daskdiff.core.blocked import block_size_for, differentiation_blocked, median_of_chunks, peak_bytes
from daskdiff.core.differentiation import (
    MEDIAN_OVER,
    NORMALIZATIONS,
    UndefinedNormalizationError,
    distances_stack,
    rdm_median,
)
from daskdiff.core.distances import METRICS
from daskdiff.errors import InputError


def activations(n, k, seed, offset=0.0, special_rows=False):
    """float32 (n, k): normal + offset; optionally an all-zero row 1 and a constant row 2."""
    x = np.random.default_rng(seed).normal(size=(n, k)) + offset
    if special_rows:
        x[1] = 0.0
        x[2] = 3.0
    return x.astype(np.float32)


def unblocked(x, metric, normalize, per_unit, median_over, **kw):
    d, _ = distances_stack(x[None], metric, normalize, per_unit, on_undefined="nan", **kw)
    return float(rdm_median(d, median_over)[0])


CASES = [(7, 0.0, True), (10, 0.0, True), (11, 0.0, False), (10, 50.0, False), (11, 50.0, True)]


@pytest.mark.parametrize("median_over", list(MEDIAN_OVER))
@pytest.mark.parametrize("per_unit", [False, True])
@pytest.mark.parametrize("normalize", list(NORMALIZATIONS))
@pytest.mark.parametrize("metric", list(METRICS))
def test_small_blocks_give_the_unblocked_value(metric, normalize, per_unit, median_over):
    for seed, (n, offset, special) in enumerate(CASES):
        x = activations(n, 5, seed, offset, special)
        ref = unblocked(x, metric, normalize, per_unit, median_over)
        for block in (3, 4, n):  # 3 and 4 divide none or some of 7, 10, 11; n is one block
            got = differentiation_blocked(x, None, metric, normalize, per_unit, median_over, block)
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, err_msg=f"n={n} offset={offset} block={block}")


@pytest.mark.parametrize("n", [10, 11])
def test_median_equals_np_median_of_pdist_on_data_normalised_by_hand(n):
    x = activations(n, 6, 3).astype(np.float64)
    z = (x - x.mean()) / x.std()
    cond = pdist(z, "euclidean") / np.sqrt(6)
    assert differentiation_blocked(x, None, "euclidean", "zscore", True, "condensed", 3) == pytest.approx(
        np.median(cond), rel=1e-12)
    assert differentiation_blocked(x, None, "euclidean", "zscore", True, "square", 4) == pytest.approx(
        np.median(squareform(cond)), rel=1e-12)
    m = x / np.abs(x).max()
    assert differentiation_blocked(x, None, "cityblock", "max", False, "condensed", 3) == pytest.approx(
        np.median(pdist(m, "cityblock")), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(0, 6), max_size=12), st.integers(1, 3)), min_size=1, max_size=6),
    st.integers(1, 6),
    st.integers(2, 8),
)
def test_median_of_chunks_is_bit_identical_to_np_median(parts, cap, n_bins):
    # few distinct values (ties), weights, tiny cap and bins: many histogram passes
    chunks = [(np.asarray(v, dtype=np.float64) / 7.0, w) for v, w in parts]
    everything = np.concatenate([np.repeat(v, w) for v, w in chunks])
    if everything.size == 0:
        with pytest.raises(InputError, match="no values"):
            median_of_chunks(lambda: chunks, cap=cap, n_bins=n_bins)
        return
    assert median_of_chunks(lambda: chunks, cap=cap, n_bins=n_bins) == np.median(everything)


def test_median_of_chunks_spread_values_bit_identical():
    rng = np.random.default_rng(5)
    chunks = [(rng.lognormal(size=s), 1 + s % 2) for s in (0, 30, 17, 40, 1)]
    everything = np.concatenate([np.repeat(v, w) for v, w in chunks])
    assert median_of_chunks(lambda: chunks, cap=4, n_bins=3) == np.median(everything)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 14), st.integers(1, 6), st.integers(1, 14), st.sampled_from(sorted(METRICS)),
    st.sampled_from(sorted(NORMALIZATIONS)), st.sampled_from(list(MEDIAN_OVER)), st.integers(0, 2**16),
)
def test_random_shapes_and_blocks(n, k, block, metric, normalize, median_over, seed):
    x = activations(n, k, seed)
    ref = unblocked(x, metric, normalize, False, median_over)
    got = differentiation_blocked(x, None, metric, normalize, False, median_over, min(block, n))
    # atol: a median that is 0 in one summation order can be a rounding error (~1e-16) in another
    # (correlation distances of k=2 units, n=9, found by hypothesis); values here are O(1)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_a_function_of_rows_gives_the_array_value():
    x = activations(11, 4, 8)
    calls = []

    def rows(start, stop):
        calls.append((start, stop))
        return x[start:stop]

    got = differentiation_blocked(rows, 11, "correlation", "zscore", False, "condensed", 4)
    assert got == differentiation_blocked(x, None, "correlation", "zscore", False, "condensed", 4)
    assert max(stop - start for start, stop in calls) <= 4
    with pytest.raises(InputError, match="n_images is required"):
        differentiation_blocked(rows, None, block=4)
    short_last = lambda a, b: x[a : min(b, 10)]  # noqa: E731  (one row short at the end)
    with pytest.raises(InputError, match=r"x_of_block\(8, 11\) returned shape \(2, 4\); expected \(3, 4\)"):
        differentiation_blocked(short_last, 11, block=4)


def test_undefined_normalisers_give_nan_or_raise_as_the_unblocked_core():
    constant = np.full((9, 3), 2.0, dtype=np.float32)
    assert np.isnan(unblocked(constant, "euclidean", "zscore", False, "condensed"))
    assert np.isnan(differentiation_blocked(constant, None, "euclidean", "zscore", block=2, on_undefined="nan"))
    with pytest.raises(UndefinedNormalizationError, match="standard deviation of all entries of conv1"):
        differentiation_blocked(constant, None, "euclidean", "zscore", block=2, name="conv1")
    tiny = activations(9, 3, 2) * np.float32(1e-8)
    assert np.isnan(unblocked(tiny, "euclidean", "max", False, "condensed", min_scale=1e-6))
    assert np.isnan(differentiation_blocked(tiny, None, "euclidean", "max", block=2, on_undefined="nan", min_scale=1e-6))
    assert np.isfinite(differentiation_blocked(tiny, None, "euclidean", "max", block=2, min_scale=1e-12))


def test_non_finite_input_raises_input_error():
    x = activations(6, 3, 1)
    x[4, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        differentiation_blocked(x, None, "cityblock", "none", block=4)


def test_block_size_for_ten_thousand_images_and_units_fits_two_gigabytes():
    budget = 2e9
    b = block_size_for(10_000, 10_000, budget)
    assert peak_bytes(b, 10_000) <= budget < peak_bytes(b + 1, 10_000)
    assert 1_000 < b < 10_000
    assert block_size_for(50, 10, 1e9) == 50
    with pytest.raises(InputError, match="budget_bytes=1000 is below"):
        block_size_for(10_000, 10_000, 1e3)


@pytest.mark.parametrize("metric, median_over", [("euclidean", "condensed"), ("cosine", "square"),
                                                 ("correlation", "condensed"), ("cityblock", "square")])
def test_measured_peak_memory_stays_under_the_model(metric, median_over):
    n, k = 150, 300
    x = activations(n, k, 4)
    budget = peak_bytes(40, k)
    block = block_size_for(n, k, budget)
    assert block == 40
    differentiation_blocked(x[:5, :3], None, metric, "zscore", False, median_over, 2)  # lazy imports (numpy.ma) first
    tracemalloc.start()
    try:
        differentiation_blocked(x, None, metric, "zscore", False, median_over, budget_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= budget


def test_bad_options_are_named():
    x = activations(5, 2, 0)
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        differentiation_blocked(x, None, "manhattan")
    with pytest.raises(InputError, match="block must be >= 1"):
        differentiation_blocked(x, None, block=0)
    with pytest.raises(InputError, match="at least 2 images"):
        differentiation_blocked(x[:1])

