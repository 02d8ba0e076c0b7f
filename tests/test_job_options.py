"""Whole-job options on the tiny model, each against an independent reference.

Two jobs, run once for the module on one worker process:

- ``wide``: ``extraction.store: all``, ``sampling: equal``, substrates ``units``, ``filter_mean``
  and ``location_mean``, ``metric: cityblock``, ``median_over: square``, ``rdm_max_images: 0``;
- ``channel``: ``sampling: channel=3``, ``metric: correlation`` (the default ``store: needed``,
  ``median_over: condensed``, an ``rdm`` kept).

References: the images decoded with Pillow and passed through the saved Keras model directly;
shards reopened with xarray; units re-drawn with :func:`daskdiff.sample_units`; means, z-scores
and medians with numpy; distances with :func:`scipy.spatial.distance.pdist`.
"""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr
from distributed import Client
from PIL import Image
from scipy.spatial.distance import pdist, squareform

import daskdiff
from daskdiff.core.units import Sampling
from daskdiff.io.layout import shard_files
from daskdiff.io.partials import load_partial
from daskdiff.io.results_attrs import n_units_value
from daskdiff.io.shards import open_activations
from daskdiff.pipeline.job import run_job
from daskdiff.pipeline.tasks import DiffTask, run_diff_task

import jobtools
from conftest import write_images
from jobtools import local_cluster, tiny_spec

cloudpickle.register_pickle_by_value(jobtools)

pytestmark = pytest.mark.cluster

SETS = {"noisy": 7, "smooth": 6}
FLOOR = 1e-6  # documented in daskdiff.pipeline.tasks: SD at most 1e-6 x the layer's peak |value| is undefined

WIDE = dict(
    analysis__substrates=["units", "filter_mean", "location_mean"],
    analysis__n_units=[8, "all"],
    analysis__repeats=3,
    analysis__repeats_per_task=2,
    analysis__sampling="equal",
    analysis__metric="cityblock",
    analysis__median_over="square",
    analysis__rdm_max_images=0,
    analysis__seed=5,
    extraction__store="all",
)
CHANNEL = dict(
    analysis__substrates=["units"],
    analysis__n_units=[5],
    analysis__repeats=3,
    analysis__repeats_per_task=2,
    analysis__sampling="channel=3",
    analysis__metric="correlation",
    analysis__seed=7,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return {
        "noisy": write_images(root / "noisy", SETS["noisy"], seed=1),
        "smooth": write_images(root / "smooth", SETS["smooth"], seed=2, kind="smooth"),
    }


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_model_path, images):
    """name -> (spec, output folder, results Dataset in memory)."""
    root = tmp_path_factory.mktemp("jobs")
    folders = {name: str(Path(paths[0]).parent) for name, paths in images.items()}
    out = {}
    with local_cluster(1) as cluster, Client(cluster) as client:
        for name, options in (("wide", WIDE), ("channel", CHANNEL)):
            spec = tiny_spec(tiny_model_path, folders, root / name, **options)
            result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
            out[name] = (spec, root / name, xr.load_dataset(result.path))
    return out


@pytest.fixture(scope="module")
def direct(tiny_model_path, images):
    """Every layer's activations from a direct Keras call: set -> layer -> (n_images, *shape)."""
    import keras

    model = keras.saving.load_model(tiny_model_path, compile=False)  # softmax head kept
    layers = [layer.name for layer in model.layers[1:]]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in layers])
    out = {}
    for name, paths in images.items():
        x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.Resampling.NEAREST), dtype=np.float32) for p in paths])
        out[name] = dict(zip(layers, (np.asarray(a) for a in probe.predict(x, verbose=0))))
    return out


def _by_hand(a: np.ndarray, substrate: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Features (n_images, n_features) of activations (n_images, *shape), and their shape for sampling."""
    n, shape = len(a), a.shape[1:]
    if substrate == "units":
        return a.reshape(n, -1), shape
    if substrate == "filter_mean":
        return (a.mean(axis=(1, 2)), (shape[-1],)) if a.ndim == 4 else (a, shape)
    if a.ndim == 4:
        return a.mean(axis=-1).reshape(n, -1), shape[:-1] + (1,)
    return a.mean(axis=-1, keepdims=True), (1,)


def _correlation(x: np.ndarray) -> np.ndarray:
    """scipy's correlation distance, with the documented value where a row is constant:
    1 between a constant row and any other, 0 between two constant rows."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = pdist(x, "correlation")
    constant = np.ptp(x, axis=1) == 0
    i, j = np.triu_indices(len(x), k=1)
    d[constant[i] | constant[j]] = 1.0
    d[constant[i] & constant[j]] = 0.0
    return d


def _reference(values: np.ndarray, peak: float, metric: str, median_over: str) -> tuple[float, np.ndarray | None]:
    """Differentiation (z-score over all entries, per-unit distances) and the square RDM."""
    x = values.astype(np.float64)
    if x.std() <= FLOOR * peak:
        return np.nan, None
    x = (x - x.mean()) / x.std()
    d = _correlation(x) if metric == "correlation" else pdist(x, metric) / x.shape[1]  # cityblock: per unit
    return float(np.median(squareform(d) if median_over == "square" else d)), squareform(d)


def _got(ds, **where) -> np.ndarray:
    return ds["differentiation"].sel(**where).values


# ---------------------------------------------------------------- store: all

def test_store_all_keeps_every_unit_of_every_layer(jobs, direct):
    _, folder, ds = jobs["wide"]
    for name in SETS:
        with open_activations(folder, name) as acts:
            for layer, ref in direct[name].items():
                full = acts[f"units__{layer}"]
                np.testing.assert_array_equal(full[f"unit__{layer}"].values, np.arange(ref[0].size))
                flat = ref.reshape(len(ref), -1)
                np.testing.assert_allclose(full.values, flat, rtol=1e-5, atol=1e-6 * np.abs(flat).max())
    # the default store (job 'channel') keeps only what it samples of a hidden layer
    with open_activations(jobs["channel"][1], "noisy") as acts:
        assert acts.sizes["unit__conv2"] < direct["noisy"]["conv2"][0].size


def test_stored_reductions_equal_means_by_hand(jobs, direct):
    _, folder, _ = jobs["wide"]
    with open_activations(folder, "noisy") as acts:
        for layer, ref in direct["noisy"].items():
            for substrate in ("filter_mean", "location_mean"):
                want, _ = _by_hand(ref.astype(np.float64), substrate)
                got = acts[f"{substrate}__{layer}"].values
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=f"{substrate} {layer}")


# ------------------------------------ equal sampling, cityblock, square median, all substrates

def test_wide_job_matches_reference(jobs, direct):
    spec, folder, ds = jobs["wide"]
    a = spec.analysis
    defined = square_lower = 0
    for name in SETS:
        with open_activations(folder, name) as acts:
            for layer, ref in direct[name].items():
                for substrate in a.substrates:
                    stored = acts[f"{substrate}__{layer}"].values
                    _, fshape = _by_hand(ref, substrate)
                    peak = float(np.abs(stored).max())
                    for n in a.n_units:
                        repeats = 1 if n == "all" else a.repeats
                        for r in range(repeats):
                            idx = daskdiff.sample_units(fshape, n, seed=a.seed, layer=layer, repeat=r, mode="equal")
                            want, rdm = _reference(stored[:, idx], peak, "cityblock", "square")
                            got = _got(ds, image_set=name, substrate=substrate, n_units=n_units_value(n), layer=layer)
                            where = f"{name} {substrate} n={n} {layer} repeat {r}"
                            np.testing.assert_allclose(got[r], want, rtol=1e-12, equal_nan=True, err_msg=where)
                            if rdm is not None:
                                defined += 1
                                square_lower += bool(want < np.median(rdm[np.triu_indices(len(rdm), 1)]))
                        assert np.all(np.isnan(got[repeats:])), f"{name} {substrate} n={n} {layer}"
    assert defined > 100  # the reference was really compared, not NaN against NaN
    assert square_lower > defined // 2  # the square median (zero diagonal included) is mostly not the condensed one


def test_equal_sampling_takes_the_same_count_from_every_channel(jobs, direct):
    spec, _, ds = jobs["wide"]
    for layer in ("conv1", "pool1", "conv2"):
        channels = direct["noisy"][layer].shape[-1]
        for r in range(spec.analysis.repeats):
            idx = daskdiff.sample_units(direct["noisy"][layer].shape[1:], 8, seed=5, layer=layer, repeat=r, mode="equal")
            np.testing.assert_array_equal(np.bincount(idx % channels, minlength=channels), np.full(channels, 8 // channels))
        assert int(ds["units_used"].sel(substrate="units", n_units=8, layer=layer)) == 8 // channels * channels


def test_rdm_max_images_zero_stores_no_rdm(jobs):
    assert "rdm" not in jobs["wide"][2].data_vars
    assert "rdm" in jobs["channel"][2].data_vars  # the default keeps it for these small sets


# ---------------------------------------------------------------- channel=3, correlation

def test_channel_job_matches_reference(jobs, direct):
    spec, folder, ds = jobs["channel"]
    a = spec.analysis
    defined_anywhere = len(SETS) * len(direct["noisy"])
    for name in SETS:
        with open_activations(folder, name) as acts:
            for layer, ref in direct[name].items():
                full = acts[f"units__{layer}"]
                peak = float(np.abs(full.values).max())
                shape = ref.shape[1:]
                channels = shape[-1] if len(shape) > 1 else shape[0]
                rdms = []
                for r in range(a.repeats):
                    idx = daskdiff.sample_units(shape, 5, seed=a.seed, layer=layer, repeat=r, mode="channel=3")
                    assert np.all(idx % channels == 3)
                    want, rdm = _reference(full.sel({f"unit__{layer}": idx}).values, peak, "correlation", "condensed")
                    got = _got(ds, image_set=name, substrate="units", n_units=5, layer=layer)[r]
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True), f"{name} {layer} repeat {r}"
                    if rdm is not None:
                        rdms.append(rdm)
                used = int(ds["units_used"].sel(substrate="units", n_units=5, layer=layer))
                assert used == (5 if len(shape) > 1 else 1)  # a dense layer's channel 3 is one unit
                n = SETS[name]
                mean_rdm = ds["rdm"].sel(image_set=name, substrate="units", n_units=5, layer=layer).values[:n, :n]
                if rdms:  # the mean over the defined repeats
                    np.testing.assert_allclose(mean_rdm, np.mean(rdms, axis=0), rtol=1e-9, atol=1e-12)
                else:  # e.g. the saturated softmax of the tiny model: no defined repeat, no mean
                    assert np.all(np.isnan(mean_rdm))
                    defined_anywhere -= 1
    assert defined_anywhere >= 8  # of 12 (set, layer) pairs: the reference was really compared


# ------------------------------------------- shards written for another plan

def _task_like_the_job(spec, folder, shape, tmp_path, **changes) -> DiffTask:
    """The job's task of set 'noisy', substrate units, layer conv2 (every n_units and repeat), writing to tmp_path."""
    a = spec.analysis
    sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, mode=a.sampling, seed=a.seed)
    fields = dict(
        image_set="noisy", substrate="units", layer="conv2", shape=shape,
        files=tuple(str(f) for f in shard_files(folder, "noisy")), output=str(tmp_path), sampling=sampling,
        metric=a.metric, normalize=a.normalize, per_unit=a.per_unit, median_over=a.median_over, keep_rdm=False,
        repeats_per_stack=a.repeats_per_task,
    )
    fields.update(changes)
    return DiffTask(**fields)


def test_task_on_shards_of_its_own_plan_reproduces_the_job(jobs, direct, tmp_path):
    spec, folder, ds = jobs["channel"]
    task = _task_like_the_job(spec, folder, direct["noisy"]["conv2"].shape[1:], tmp_path)
    returned = run_diff_task(task).arrays["differentiation"]
    np.testing.assert_array_equal(load_partial(task.path)["differentiation"], returned)
    for i, n in enumerate(spec.analysis.n_units):
        np.testing.assert_array_equal(returned[i], _got(ds, image_set="noisy", substrate="units", n_units=n_units_value(n), layer="conv2"))


@pytest.mark.parametrize("change", ["seed", "mode"])
def test_shards_written_for_another_plan_are_refused(jobs, direct, tmp_path, change):
    spec, folder, _ = jobs["channel"]
    a = spec.analysis
    other = {"seed": dict(seed=a.seed + 1), "mode": dict(mode="channel=2")}[change]
    sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, **{"mode": a.sampling, "seed": a.seed, **other})
    task = _task_like_the_job(spec, folder, direct["noisy"]["conv2"].shape[1:], tmp_path, sampling=sampling)
    with pytest.raises(ValueError) as err:
        run_diff_task(task)
    msg = str(err.value)
    assert task.key in msg and "'noisy'" in msg and "another plan" in msg and "--overwrite" in msg
    assert not task.path.exists()
