"""Bootstrap over images: hand-made cases, determinism, duplicate-pair exclusion, labelled wrapper."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform

from daskdiff.core.bootstrap import bootstrap_difference, resampled_differentiation
from daskdiff.stats import set_difference


def _rdm(points):
    return squareform(pdist(points))


def _points(seed, n, scale, dim=6):
    return np.random.default_rng(seed).normal(scale=scale, size=(n, dim))


def test_clearly_different_sets_exclude_zero():
    wide, narrow = _rdm(_points(1, 20, 3.0)), _rdm(_points(2, 15, 1.0))
    res = bootstrap_difference(wide, narrow, n_boot=2000, seed=0)
    assert res.difference == pytest.approx(np.median(pdist(_points(1, 20, 3.0))) - np.median(pdist(_points(2, 15, 1.0))))
    assert 0 < res.low < res.difference < res.high


def test_same_distribution_includes_zero():
    a, b = _rdm(_points(3, 25, 1.0)), _rdm(_points(4, 25, 1.0))
    res = bootstrap_difference(a, b, n_boot=2000, seed=0)
    assert res.low < 0 < res.high
    # the interval is about the observed difference, and narrower than the sets' own spread
    assert res.low < res.difference < res.high
    assert res.high - res.low < np.median(pdist(_points(3, 25, 1.0)))


def test_deterministic_from_seed_and_no_global_state():
    a, b = _rdm(_points(5, 10, 1.0)), _rdm(_points(6, 12, 2.0))
    first = bootstrap_difference(a, b, n_boot=300, seed=7)
    np.random.seed(123)  # global state must not matter
    np.random.random(10)
    again = bootstrap_difference(a, b, n_boot=300, seed=7)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert (first.low, first.high) == (again.low, again.high)
    other = bootstrap_difference(a, b, n_boot=300, seed=8)
    assert not np.array_equal(first.samples, other.samples)


def test_copies_of_one_image_are_not_pairs():
    # image 0 drawn three times, image 1 once: the only distinct pair is (0, 1), 3 times
    d = np.array([[0.0, 5.0, 9.0], [5.0, 0.0, 7.0], [9.0, 7.0, 0.0]])
    got = resampled_differentiation(d, np.array([[0, 0, 0, 1]]))
    assert got[0] == 5.0  # counting the copies' zero distances would give median(0,0,0,5,5,5) = 2.5
    # one distinct image: no pair at all
    assert np.isnan(resampled_differentiation(d, np.array([[2, 2, 2]]))[0])
    # and over a whole bootstrap no resample ever reaches below the smallest real distance
    far = 1.0 + _rdm(_points(9, 8, 1.0)) * 0  # every distinct pair at distance 1
    np.fill_diagonal(far, 0)
    res = bootstrap_difference(far, far, n_boot=500, seed=1)
    np.testing.assert_array_equal(res.samples[np.isfinite(res.samples)], 0.0)


def _brute_force(d, index, median_over):
    out = []
    for r in index:
        sub = d[np.ix_(r, r)]
        copies = (r[:, None] == r[None, :]) & ~np.eye(len(r), dtype=bool)
        if median_over == "condensed":
            i, j = np.triu_indices(len(r), k=1)
            values = sub[i, j][r[i] != r[j]]
        else:
            values = sub[~copies]
        out.append(np.median(values) if values.size and (r != r[0]).any() else np.nan)
    return np.array(out)


@pytest.mark.parametrize("median_over", ["condensed", "square"])
@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 9), k=st.integers(2, 11), seed=st.integers(0, 2**16))
def test_resampled_matches_brute_force(median_over, n, k, seed):
    rng = np.random.default_rng(seed)
    d = _rdm(rng.normal(size=(n, 3)))
    index = rng.integers(0, n, size=(6, k))
    np.testing.assert_allclose(resampled_differentiation(d, index, median_over=median_over), _brute_force(d, index, median_over), rtol=1e-12)


def test_identity_resample_is_the_differentiation():
    x = _points(10, 11, 1.0)
    got = resampled_differentiation(_rdm(x), np.arange(11)[None, :])
    assert got[0] == pytest.approx(np.median(pdist(x)), rel=1e-12)


def test_batch_axes_share_the_resamples():
    a = np.stack([_rdm(_points(s, 9, 1.0)) for s in range(3)])
    b = np.stack([_rdm(_points(s + 10, 7, 2.0)) for s in range(3)])
    batched = bootstrap_difference(a, b, n_boot=200, seed=4)
    assert batched.samples.shape == (200, 3) and batched.difference.shape == (3,)
    for layer in range(3):  # each batch entry is what it would be on its own, same seed
        alone = bootstrap_difference(a[layer], b[layer], n_boot=200, seed=4)
        np.testing.assert_allclose(batched.samples[:, layer], alone.samples)


def test_nan_rdm_gives_nan_not_a_wrong_number():
    a = _rdm(_points(11, 6, 1.0))
    bad = a.copy()
    bad[0, 1] = bad[1, 0] = np.nan
    res = bootstrap_difference(np.stack([a, bad]), np.stack([a, a]), n_boot=50)
    assert np.isfinite(res.difference[0]) and np.isnan(res.difference[1])
    assert np.isnan(res.low[1]) and np.isnan(res.high[1]) and np.all(np.isnan(res.samples[:, 1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rdm_a=np.zeros((3, 4))), "square"),
        (dict(rdm_a=np.zeros((1, 1))), "at least 2"),
        (dict(ci=95), "ci=0.95"),
        (dict(n_boot=0), "n_boot"),
        (dict(median_over="full"), "valid values"),
        (dict(rdm_b=np.zeros((2, 5, 5))), "leading shape"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(rdm_a=np.ones((4, 4)) - np.eye(4), rdm_b=np.ones((5, 5)) - np.eye(5))
    args.update(kwargs)
    a, b = args.pop("rdm_a"), args.pop("rdm_b")
    with pytest.raises(ValueError, match=match):
        bootstrap_difference(a, b, **args)


def test_index_out_of_range():
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        resampled_differentiation(np.ones((3, 3)) - np.eye(3), np.array([[0, 3]]))


def _results(sets):
    """A results-like Dataset holding only what set_difference reads (sets of unequal size)."""
    layers = ["conv1", "fc1"]
    width = max(len(p) for p in sets.values())
    rdm = np.full((len(sets), 1, 2, len(layers), width, width), np.nan)
    for s, points in enumerate(sets.values()):
        n = len(points)
        for li in range(len(layers)):
            for ni in range(2):
                rdm[s, 0, ni, li, :n, :n] = _rdm(points * (li + 1) * (ni + 1))
    return xr.Dataset(
        {
            "rdm": (("image_set", "substrate", "n_units", "layer", "image_i", "image_j"), rdm),
            "n_images": (("image_set",), [len(p) for p in sets.values()]),
        },
        coords={"image_set": list(sets), "substrate": ["units"], "n_units": ["10", "all"], "layer": layers},
        attrs={"median_over": "condensed"},
    )


def test_set_difference_over_layers():
    wide, narrow = _points(20, 12, 3.0), _points(21, 9, 1.0)
    ds = _results({"wide": wide, "narrow": narrow})
    out = set_difference(ds, "wide", "narrow", n_boot=400, seed=2)
    assert out["difference"].dims == ("substrate", "n_units", "layer")
    expected = np.median(pdist(wide * 2)) - np.median(pdist(narrow * 2))  # layer fc1 scales by 2
    assert float(out["difference"].sel(substrate="units", n_units=10, layer="fc1")) == pytest.approx(expected)
    assert bool((out["ci_low"] > 0).all())  # padding of the smaller set never enters
    one = set_difference(ds, "wide", "narrow", substrate="units", n_units="all", n_boot=400, seed=2, keep_samples=True)
    assert one["difference"].dims == ("layer",) and one["samples"].dims == ("bootstrap", "layer")
    assert one.attrs["set_a"] == "wide" and one.attrs["n_boot"] == 400


def test_set_difference_errors():
    ds = _results({"a": _points(1, 4, 1.0), "b": _points(2, 4, 1.0)})
    with pytest.raises(ValueError, match=r"'c' is not in these results; the sets are \['a', 'b'\]"):
        set_difference(ds, "a", "c")
    with pytest.raises(ValueError, match="rdm_max_images"):
        set_difference(ds.drop_vars("rdm"), "a", "b")
