"""Sampling modes that look at the activations: ``active`` and ``weighted=mean|variance``.

References are independent: numpy's mean/var/ptp for the statistics, scipy's pdist + median for
differentiation, the exact inclusion probabilities of successive sampling (enumerated by hand) for
the weighted draws, and the shard files reopened for the job test.
"""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist

import daskdiff
from daskdiff.core.activity import merge_unit_stats, unit_pool, unit_stats
from daskdiff.core.sampling import check_mode, expected_union, sample_size
from daskdiff.core.units import expected_stored, Sampling, storage_plan
from daskdiff.errors import InputError

SEED = 11


def _live_differentiation(x: np.ndarray) -> float:
    """The core's differentiation restated: z-score over all entries of the matrix, Euclidean
    distances divided by sqrt(n_units), median over the condensed distances."""
    z = (x - x.mean()) / x.std()
    return float(np.median(pdist(z)) / np.sqrt(x.shape[1]))


def _dead_layer(n_images: int = 30, n_units: int = 20000, live_share: float = 0.05):
    """A ReLU-like layer: 95 % of the units are 0 for every image, the rest vary (half-normal)."""
    rng = np.random.default_rng(SEED)
    values = np.zeros((n_images, n_units), dtype=np.float32)
    live = np.sort(rng.choice(n_units, int(live_share * n_units), replace=False))
    values[:, live] = np.abs(rng.standard_normal((n_images, len(live)))) * rng.uniform(0.5, 2.0, len(live))
    return values, live


def _draw_differentiation(values, mode, n, repeat, pool=None):
    idx = daskdiff.sample_units(values.shape[1], n, seed=SEED, layer="relu", repeat=repeat, mode=mode, pool=pool)
    return daskdiff.differentiation(values[:, idx].astype(np.float64), "euclidean", "zscore", True), idx


def test_active_recovers_the_live_units_and_random_does_not():
    values, live = _dead_layer()
    reference = _live_differentiation(values[:, live].astype(np.float64))
    pool = unit_pool(unit_stats(values), "active", layer="relu")
    np.testing.assert_array_equal(pool.units, live)  # the live units, found from the data
    # all the live units (n_units above their count): exactly the live units' differentiation
    exact, idx = _draw_differentiation(values, "active", 5000, 0, pool)
    np.testing.assert_array_equal(idx, live)
    assert exact == pytest.approx(reference, rel=1e-12)
    # 200 units: active stays within sampling noise of it, random (about 10 live units among 190 dead ones) does not
    active = [_draw_differentiation(values, "active", 200, r, pool)[0] for r in range(10)]
    random = [_draw_differentiation(values, "random", 200, r)[0] for r in range(10)]
    assert abs(np.mean(active) / reference - 1) < 0.05, (np.mean(active), reference)
    assert abs(np.mean(random) / reference - 1) > 0.3, (np.mean(random), reference)
    assert all(np.isin(_draw_differentiation(values, "active", 200, r, pool)[1], live).all() for r in range(3))


def test_statistics_match_numpy_and_merge_exactly():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 50)).astype(np.float32) * 3 + 1000 for n in (1, 7, 300)]  # > one block of 256
    parts[1][:, 4] = parts[0][0, 4]  # unit 4 constant over sets 0 and 1, not 2
    everything = np.concatenate(parts).astype(np.float64)
    merged = merge_unit_stats([unit_stats(p) for p in parts])
    assert merged.count == 308
    np.testing.assert_allclose(merged.mean, everything.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(merged.variance, everything.var(axis=0), rtol=1e-9)  # large mean, small spread
    np.testing.assert_array_equal(merged.active, np.ptp(everything, axis=0) > 0)
    whole = unit_stats(np.concatenate(parts))
    np.testing.assert_array_equal(whole.low, merged.low)
    np.testing.assert_array_equal(whole.high, merged.high)


def test_weighted_pools_hold_mean_and_variance_weights():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((20, 30)).astype(np.float32)
    values[:, :3] = 0.0  # dead
    values[:, 3] = 2.0  # constant, positive mean
    stats = unit_stats(values)
    mean = unit_pool(stats, "weighted=mean")
    expected = np.clip(values.astype(np.float64).mean(axis=0), 0, None)
    np.testing.assert_array_equal(mean.units, np.flatnonzero(expected > 0))
    np.testing.assert_allclose(mean.weights, expected[expected > 0], rtol=1e-12)
    variance = unit_pool(stats, "weighted=variance")
    np.testing.assert_array_equal(variance.units, np.arange(4, 30))
    np.testing.assert_allclose(variance.weights, values[:, 4:].astype(np.float64).var(axis=0), rtol=1e-12)
    assert variance.n_active == mean.n_active == 26


def _successive_inclusion(weights: np.ndarray, k: int) -> np.ndarray:
    """P(unit in the draw) for k successive draws, each proportional to the weights left."""
    p = np.zeros(len(weights))
    for order in itertools.permutations(range(len(weights)), k):
        prob, left = 1.0, weights.sum()
        for i in order:
            prob *= weights[i] / left
            left -= weights[i]
        p[list(order)] += prob
    return p


SMALL = np.array([1.0, 2.0, 3.0, 0.0, 4.0, 10.0])
"""Few units: a draw is the exponential race alone."""
SPREAD = np.r_[np.arange(1.0, 40.0), 0.0]
"""40 units: a draw is mostly inverse-CDF draws with rejection of repeats."""


@pytest.mark.parametrize(("weights", "k"), [(SMALL, 1), (SMALL, 3), (SPREAD, 3)], ids=["race-1", "race-3", "rejection-3"])
def test_weighted_draws_follow_their_weights(weights, k):
    values = np.tile(weights, (2, 1)).astype(np.float32)  # the mean of each unit is its weight
    pool = unit_pool(unit_stats(values), "weighted=mean")
    repeats = 4000
    counts = np.zeros(len(weights))
    for r in range(repeats):
        idx = daskdiff.sample_units(len(weights), k, seed=SEED, layer="fc", repeat=r, mode="weighted=mean", pool=pool)
        assert len(idx) == len(np.unique(idx)) == k  # without replacement
        counts[idx] += 1
    p = _successive_inclusion(weights, k)
    if k == 1:
        np.testing.assert_allclose(p, weights / weights.sum())  # one draw: proportional to the weight
    assert counts[weights == 0].sum() == 0  # zero weight: never drawn
    # binomial bound: each count within 5 standard deviations of repeats * p (a false alarm < 1e-5 per unit)
    bound = 5 * np.sqrt(repeats * p * (1 - p))
    assert np.all(np.abs(counts - repeats * p) <= bound + 1e-9), (counts, repeats * p, bound)


def test_draws_reproducible_by_seed_layer_repeat():
    values, _ = _dead_layer(n_images=5, n_units=3000)
    for mode in ("active", "weighted=mean", "weighted=variance"):
        pool = unit_pool(unit_stats(values), mode)
        again = unit_pool(unit_stats(values.copy()), mode)
        draw = lambda p, seed=SEED, layer="l", repeat=0: daskdiff.sample_units(  # noqa: E731
            3000, 40, seed=seed, layer=layer, repeat=repeat, mode=mode, pool=p)
        np.testing.assert_array_equal(draw(pool), draw(again))
        shipped = pickle.loads(pickle.dumps(pool))  # as a worker gets it (its cumulative weights left out)
        assert "cdf" not in vars(shipped) and len(pickle.dumps(pool)) < 1.1 * len(pickle.dumps(shipped)) + 1000
        np.testing.assert_array_equal(draw(pool), draw(shipped))
        assert pool.digest == again.digest
        assert not np.array_equal(draw(pool), draw(pool, repeat=1))
        assert not np.array_equal(draw(pool), draw(pool, seed=SEED + 1))
        assert not np.array_equal(draw(pool), draw(pool, layer="m"))


def test_data_modes_store_every_unit_and_estimate_it():
    shapes = {"conv": (4, 4, 8), "fc": (30,)}
    sampling = Sampling(n_units=(5,), repeats=3, mode="active", seed=0)
    plan = storage_plan(shapes, ["units", "filter_mean"], sampling)
    assert [plan[n].all_units for n in shapes] == [True, True]
    assert expected_stored(shapes, ["units"], sampling) == {"conv": {"units": 128}, "fc": {"units": 30}}
    assert expected_union((4, 4, 8), {5: 3}, "weighted=variance") == 128
    assert sample_size((4, 4, 8), 5, "active") == 5
    random = storage_plan(shapes, ["units"], Sampling(n_units=(5,), repeats=3, mode="random", seed=0))
    assert not random["conv"].all_units  # the seed-only modes keep storing only their draws


def test_bad_input_names_the_layer_and_the_fix():
    dead = np.zeros((4, 10), dtype=np.float32)
    for mode in ("active", "weighted=mean", "weighted=variance"):
        with pytest.raises(InputError, match=r"layer 'block9'.*analysis\.sampling: random"):
            unit_pool(unit_stats(dead), mode, layer="block9")
    with pytest.raises(ValueError, match=r"valid modes are .*'weighted=mean', 'weighted=variance'"):
        check_mode("weighted")
    with pytest.raises(ValueError, match="pass pool="):
        daskdiff.sample_units(10, 2, seed=0, layer="x", repeat=0, mode="active")


def test_spec_accepts_the_data_modes():
    from daskdiff.pipeline.spec_file import parse_spec

    spec = {"name": "s", "model": {"name": "VGG16"}, "image_sets": {"a": "imgs"}, "output": "out",
            "analysis": {"sampling": "weighted=variance"}}
    assert parse_spec(spec, "spec").analysis.sampling == "weighted=variance"
    with pytest.raises(InputError, match="analysis.sampling"):
        parse_spec({**spec, "analysis": {"sampling": "weighted"}}, "spec")


# --------------------------------------------------------------------------- one lean job


@pytest.fixture(scope="module")
def cluster2():
    from distributed import Client
    from jobtools import local_cluster

    with local_cluster(2) as c, \
            Client(c) as client:
        yield client


def test_job_pools_every_set_and_ignores_shards(tmp_path, tiny_model_path, image_folders, cluster2):
    """``active`` in a job: the same units for every set, drawn among the units that vary over
    all the job's images (reopened shards, numpy, pdist), whatever the shard size, and with the
    units handed over in memory (``store: none``) as read from the files."""
    import xarray as xr
    from jobtools import assert_same_results, tiny_spec

    from daskdiff.pipeline.job import run_job

    sets = {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}
    kw = {"analysis__substrates": ["units", "filter_mean"], "analysis__n_units": [3], "analysis__repeats": 2, "analysis__sampling": "active",
          "model__layers": ["conv2", "fc1"]}
    paths = {}
    for size, store in ((1, "needed"), (8, "none")):
        spec = tiny_spec(tiny_model_path, sets, tmp_path / f"s{size}", extraction__shard_size=size, extraction__batch_size=1,
                         extraction__store=store, **kw)
        paths[size] = run_job(spec, Path("."), client=cluster2, progress=False, echo=lambda *a: None).path
    with xr.open_dataset(paths[1]) as one, xr.open_dataset(paths[8]) as eight:
        assert_same_results(one.drop_attrs(), eight.drop_attrs())
        acts = {s: daskdiff.open_activations(tmp_path / "s1", s) for s in sets}
        for layer in ("conv2", "fc1"):
            x = {s: a[f"units__{layer}"].values.astype(np.float64) for s, a in acts.items()}
            live = np.flatnonzero(np.ptp(np.concatenate(list(x.values())), axis=0) > 0)
            assert int(eight["active_units"].sel(substrate="units", layer=layer)) == len(live)
            pool = unit_pool(unit_stats(np.concatenate([v.astype(np.float32) for v in x.values()])), "active")
            np.testing.assert_array_equal(pool.units, live)
            for repeat in range(2):
                idx = daskdiff.sample_units(x["noisy"].shape[1], 3, seed=3, layer=layer, repeat=repeat, mode="active", pool=pool)
                assert np.isin(idx, live).all()
                for s in sets:
                    got = float(eight["differentiation"].sel(image_set=s, substrate="units", layer=layer, repeat=repeat).squeeze())
                    assert got == pytest.approx(_live_differentiation(x[s][:, idx]), rel=1e-12)
        for a in acts.values():
            a.close()


def test_sampling_modes_figure_draws_each_mode_and_its_ratio():
    """The figure's lines are the mean over defined repeats per set and layer, and their ratio to
    the reference set, for each mode (n_units given as the int -1 for 'all' works too)."""
    import daskdiff.plot as dp

    rng = np.random.default_rng(2)
    sets, layers = ["cats", "white_noise"], ["conv", "fc"]

    def results(n_units):
        d = rng.uniform(0.5, 2.0, (2, 1, 2, 2, 3))
        d[:, :, 0, :, 1:] = np.nan  # 'all' (or -1): exact, repeat 0 only
        return xr.Dataset({"differentiation": (("image_set", "substrate", "n_units", "layer", "repeat"), d)},
                          coords={"image_set": sets, "substrate": ["units"], "n_units": n_units, "layer": layers})

    import xarray as xr

    by_mode = {"random": results(["all", "200"]), "active": results(np.array([-1, 200], dtype=np.int64))}
    fig = dp.plot_sampling_modes(by_mode, reference="white_noise", n_units=[200, "all"])
    (left200, right200), (left_all, _) = fig.axes[0:2], fig.axes[2:4]
    for mode, ds in by_mode.items():
        mean = np.nanmean(ds["differentiation"].values, axis=-1)  # (set, substrate, n_units, layer)
        drawn = [line.get_ydata() for line in left200.lines if line.get_linestyle() == dp.MODE_STYLES[mode] and line.get_marker() == "o"]
        np.testing.assert_allclose(drawn, mean[:, 0, 1, :], rtol=1e-12)
        drawn_all = [line.get_ydata() for line in left_all.lines if line.get_linestyle() == dp.MODE_STYLES[mode] and line.get_marker() == "o"]
        np.testing.assert_allclose(drawn_all, mean[:, 0, 0, :], rtol=1e-12)
        ratio = [line.get_ydata() for line in right200.lines if line.get_linestyle() == dp.MODE_STYLES[mode] and line.get_marker() == "o"]
        np.testing.assert_allclose(ratio, [mean[0, 0, 1, :] / mean[1, 0, 1, :]], rtol=1e-12)
