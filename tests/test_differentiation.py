"""differentiation: median of the condensed RDM, normalisations, per-unit scaling."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

import daskdiff
from daskdiff.core.differentiation import condensed, per_unit_divisor, UndefinedNormalizationError


# normalisations by hand, with statistics over all entries of one matrix (ddof=0), as documented
BY_HAND = {
    "none": lambda x: x,
    "mean": lambda x: x / x.mean(),
    "zscore": lambda x: (x - x.mean()) / x.std(),
    "max": lambda x: x / np.abs(x).max(),
}
# what per_unit divides by, for n units (documented in per_unit_divisor)
PER_UNIT = {"euclidean": np.sqrt, "sqeuclidean": float, "cityblock": float}


def _reference(x, metric="euclidean", normalize="none", per_unit=False, median_over="condensed"):
    """scipy's condensed distances of one matrix, normalised by hand; median with numpy."""
    d = pdist(BY_HAND[normalize](np.asarray(x, dtype=np.float64)), metric)
    if per_unit:
        d = d / PER_UNIT.get(metric, lambda n: 1.0)(x.shape[-1])
    return float(np.median(squareform(d) if median_over == "square" else d))


def test_hand_computed_case():
    # three images on a line at 0, 3 and 4 (one unit): pair distances 3, 4, 1 -> median 3
    x = np.array([[0.0], [3.0], [4.0]])
    assert daskdiff.differentiation(x) == 3.0
    # the seeds' full-square median includes three zeros on the diagonal: sorted
    # [0,0,0,1,1,3,3,4,4] -> median 1, biased low
    assert daskdiff.differentiation(x, median_over="square") == 1.0


@pytest.mark.parametrize("metric", sorted(daskdiff.METRICS))
def test_matches_median_of_pdist(metric):
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(43, 200)), 0)
    assert daskdiff.differentiation(x, metric) == pytest.approx(np.median(pdist(x, metric)), rel=1e-9)


@pytest.mark.parametrize("normalize", sorted(BY_HAND))
def test_normalizations(normalize):
    rng = np.random.default_rng(4)
    x = np.maximum(rng.normal(1.0, size=(12, 80)), 0)
    ref = np.median(pdist(BY_HAND[normalize](x), "euclidean"))
    assert daskdiff.differentiation(x, normalize=normalize) == pytest.approx(ref, rel=1e-9)


def test_per_unit_makes_unit_counts_comparable():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 10_000))
    small = daskdiff.differentiation(x[:, :200], per_unit=True)
    large = daskdiff.differentiation(x, per_unit=True)
    # RMS difference of two independent N(0, 1) vectors is sqrt(2) for any number of units
    assert small == pytest.approx(np.sqrt(2), rel=0.05)
    assert large == pytest.approx(np.sqrt(2), rel=0.01)
    assert daskdiff.differentiation(x[:, :200]) == pytest.approx(small * np.sqrt(200), rel=1e-12)


def test_per_unit_divisors():
    assert per_unit_divisor("euclidean", 400) == 20.0
    assert per_unit_divisor("cityblock", 400) == 400.0
    assert per_unit_divisor("correlation", 400) == 1.0


@pytest.mark.parametrize("normalize", ["mean", "zscore", "max"])
def test_zero_normaliser_raises_naming_layer(normalize):
    with pytest.raises(UndefinedNormalizationError, match="block5_conv3"):
        daskdiff.differentiation(np.zeros((4, 10)), normalize=normalize, name="layer 'block5_conv3'")
    assert issubclass(UndefinedNormalizationError, ValueError)


@pytest.mark.parametrize("metric", sorted(daskdiff.METRICS))
@pytest.mark.parametrize("normalize", sorted(BY_HAND))
def test_each_matrix_of_a_stack_matches_scipy(metric, normalize):
    """Each repeat is normalised by its own statistics, not by the whole stack's."""
    rng = np.random.default_rng(10)
    stack = np.maximum(rng.normal(size=(2, 3, 9, 25)), 0) * rng.exponential(2.0, size=(2, 3, 1, 1))
    for per_unit in (False, True):
        for median_over in ("condensed", "square"):
            out = daskdiff.differentiation_stack(stack, metric, normalize, per_unit, median_over=median_over)
            assert out.shape == (2, 3) and out.dtype == np.float64
            for index in np.ndindex(2, 3):
                ref = _reference(stack[index], metric, normalize, per_unit, median_over)
                assert out[index] == pytest.approx(ref, rel=1e-9, abs=1e-12), (index, per_unit, median_over)


def test_stack_nan_only_for_undefined_repeat():
    rng = np.random.default_rng(6)
    stack = np.maximum(rng.normal(size=(3, 8, 20)), 0)
    stack[1] = 0.0  # a repeat that sampled only dead units
    out = daskdiff.differentiation_stack(stack, normalize="mean", on_undefined="nan")
    assert np.isnan(out[1])
    for r in (0, 2):
        assert out[r] == pytest.approx(_reference(stack[r], normalize="mean"), rel=1e-12)
    with pytest.raises(UndefinedNormalizationError):
        daskdiff.differentiation_stack(stack, normalize="mean")


def test_condensed_order_is_scipy_order():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(7, 5))
    np.testing.assert_allclose(condensed(daskdiff.pairwise_distances(x)), pdist(x), rtol=1e-12)


def test_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        daskdiff.differentiation(np.ones((1, 5)))


def test_min_scale_treats_rounding_noise_as_undefined():
    """Softmax tails of ~1e-30 have an SD far below float32 resolution of the layer."""
    rng = np.random.default_rng(9)
    tails = rng.uniform(0, 1e-30, size=(2, 6, 50))
    d, undefined = daskdiff.distances_stack(tails, normalize="zscore", on_undefined="nan", min_scale=1e-6 * 1.0)
    assert undefined.all() and np.isnan(d).all()
    # without the floor the noise is z-scored into distances of order 1
    d0, undefined0 = daskdiff.distances_stack(tails, normalize="zscore", on_undefined="nan")
    assert not undefined0.any() and np.nanmedian(d0) > 1


@pytest.mark.parametrize("normalize", sorted(BY_HAND))
def test_normalising_in_chunks_and_in_place_matches_by_hand(normalize, monkeypatch):
    """The z-score's squares are summed a chunk at a time (here 7 entries, so many chunks per
    matrix); ``overwrite_x`` normalises the caller's float64 stack itself, and only then."""
    from daskdiff.core import differentiation as dd

    monkeypatch.setattr(dd, "SQUARES_CHUNK", 7)
    rng = np.random.default_rng(8)
    stack = np.maximum(rng.normal(0.5, size=(3, 9, 31)), 0) + 2.0
    ref = np.stack([BY_HAND[normalize](m) for m in stack])
    kept = stack.copy()
    out, bad = dd.normalize_stack(stack, normalize)
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-14)
    assert not bad.any() and out is not stack and np.array_equal(stack, kept)
    again, _ = dd.normalize_stack(stack, normalize, overwrite_x=True)
    assert again is stack and np.array_equal(again, out)
    as32, _ = dd.normalize_stack(kept.astype(np.float32), normalize, overwrite_x=False)  # a converted copy: in place is free
    np.testing.assert_allclose(as32, np.stack([BY_HAND[normalize](m) for m in kept.astype(np.float32).astype(np.float64)]), rtol=1e-14, atol=1e-14)
