"""Movies in a job (issue 15): spectral differentiation on a real tiny-model job, checked against
an independent computation (direct Keras call, numpy FFT, scipy pdist); frame order; resume;
spectral options refused before any cluster starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client
from scipy.spatial.distance import pdist

from daskdiff import spectral_differentiation, stimulus_differentiation
from daskdiff.core.units import Sampling, units_for
from daskdiff.info import describe_results
from daskdiff.plot import plot_results, units_used_text
from test_results_cf import _check_cf
from daskdiff.pipeline.job import run_job
from daskdiff.pipeline.spec import SpecError

import cloudpickle
import jobtools
from jobtools import KillOnce, local_cluster, tiny_spec

cloudpickle.register_pickle_by_value(jobtools)  # workers do not have the tests folder on sys.path

pytestmark = pytest.mark.cluster

FPS, FRAMES, STATE = 10.0, 43, 1.0  # 4 windows of 10 frames, 3 trailing frames dropped
GRATING = {"generate": "gratings", "size": 32, "n_frames": FRAMES, "fps": FPS, "temporal_frequency": 0.7, "orientation": 30}


@pytest.fixture(scope="module")
def client2():
    with local_cluster(2) as cluster, \
            Client(cluster) as client:
        yield client


def _spec(model, output, **overrides):
    sets = {"grating": GRATING, "scrambled": {"generate": "scrambled", "source": dict(GRATING), "seed": 1}}
    kw = {"analysis__measures": ["images", "spectral"], "analysis__spectral": {"state_length": STATE}}
    return tiny_spec(model, sets, output, **{**kw, **overrides})


def _run(spec, client, lines=None):
    echo = (lambda *a: lines.append(" ".join(map(str, a)))) if lines is not None else (lambda *a: None)
    return run_job(spec, Path("."), client=client, progress=False, echo=echo)


def _direct_activations(model_path, paths, layers):
    """Reference activations: keras.utils.load_img + the saved model, frames in time order."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    direct = keras.Model(model.inputs, [model.get_layer(n).output for n in layers])
    x = np.stack([np.asarray(keras.utils.load_img(p, target_size=(32, 32)), dtype=np.float32) for p in paths])
    return dict(zip(layers, [np.asarray(o) for o in direct.predict(x, batch_size=4, verbose=0)]))


def _reference_sd(x, fps, state_length):
    """Spectral differentiation restated: z-score over all entries, whole windows, |rfft|^2, pdist, median."""
    z = (x - x.mean()) / x.std()
    n = int(round(fps * state_length))
    w = len(z) // n
    windows = z[: w * n].reshape(w, n, z.shape[1])  # (window, time, unit)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2  # (window, freq, unit)
    states = power.transpose(0, 2, 1).reshape(w, -1)  # unit-major
    return float(np.median(pdist(states)))


def test_spectral_job_matches_independent_computation_and_resumes(tmp_path, tiny_model_path, client2):
    spec = _spec(tiny_model_path, tmp_path / "out")
    result = _run(spec, client2)
    ds = xr.open_dataset(result.path)
    assert ds["spectral_differentiation"].dims == ("image_set", "substrate", "n_units", "layer", "repeat")
    assert list(ds["fps"].values) == [FPS, FPS]
    assert list(ds["spectral_windows"].values) == [4, 4] and list(ds["spectral_dropped"].values) == [3, 3]
    attrs = ds["spectral_differentiation"].attrs
    assert attrs["state_length"] == STATE and not {"fs", "dropped_samples", "samples_per_window"} & set(attrs)
    assert list(ds["spectral_samples_per_window"].values) == [round(STATE * FPS)] * 2
    assert {"stimulus_differentiation", "spectral_differentiation", "fps"} <= _check_cf(result.path)  # CF rules, by netCDF4
    # frames in time order, as movie.json lists them
    record = json.loads((tmp_path / "out" / "images" / "grating" / "movie.json").read_text())
    frames = [str(tmp_path / "out" / "images" / "grating" / f) for f in record["frames"]]
    assert [Path(p).name for p in ds["image_path"].sel(image_set="grating").values[:FRAMES]] == record["frames"]
    assert record["frames"] == sorted(record["frames"]) and len(frames) == FRAMES

    layers = ["conv2", "fc1"]
    acts = _direct_activations(tiny_model_path, frames, layers)
    a = spec.analysis
    sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, mode=a.sampling, seed=a.seed)
    for layer in layers:
        flat = acts[layer].reshape(FRAMES, -1).astype(np.float64)
        for repeat in (0, 5):
            units = units_for(acts[layer].shape[1:], "units", 5, sampling, layer, repeat)
            ref = _reference_sd(flat[:, units], FPS, STATE)
            got = ds["spectral_differentiation"].sel(image_set="grating", substrate="units", n_units=5, layer=layer, repeat=repeat)
            assert float(got) == pytest.approx(ref, rel=1e-6)
            norm = ds["normalized_spectral_differentiation"].sel(image_set="grating", substrate="units", n_units=5, layer=layer, repeat=repeat)
            assert float(norm) == pytest.approx(ref / np.sqrt(5), rel=1e-6)
        # filter_mean, every filter: exact, in repeat 0 only. A drifting grating's spatial mean
        # hardly changes in time, so z-scoring it amplifies the float32 rounding of the mean
        # (taken in float32, as the network's pooling does): a looser tolerance
        fm = acts[layer].mean(axis=(1, 2), dtype=np.float32).astype(np.float64) if acts[layer].ndim == 4 else None
        if fm is not None:
            got = ds["spectral_differentiation"].sel(image_set="grating", substrate="filter_mean", n_units=-1, layer=layer)
            assert float(got.sel(repeat=0)) == pytest.approx(_reference_sd(fm, FPS, STATE), rel=1e-4)
            assert np.all(np.isnan(got.values[1:]))
    # the image measure is computed too, and the control differs from the movie
    assert np.isfinite(ds["differentiation"].sel(n_units=5).values).all()
    assert not np.allclose(ds["spectral_differentiation"].sel(image_set="grating"), ds["spectral_differentiation"].sel(image_set="scrambled"))
    before = ds.load()
    ds.close()
    summary = describe_results(result.path)  # daskdiff info
    assert "spectral differentiation: state_length 1 s" in summary and re.search(r"grating\s+10\s+4\s+3\s", summary), summary
    stimulus = float(before["stimulus_differentiation"].sel(image_set="grating"))
    assert f"stimulus differentiation of each movie's own frames (rf_area 250 deg^2, field of view 95 x 120 deg): grating {stimulus:.4g}, " in summary, summary
    fig = plot_results(before)  # daskdiff plot: image panels, then spectral ones
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    units = [units_used_text(before, s, n) for s in ("units", "filter_mean") for n in (5, -1)]
    substrates = ["units", "units", "filter_mean", "filter_mean"]
    assert titles == [f"{s}, {u}" for s, u in zip(substrates, units)] + [f"{s}, {u} (spectral)" for s, u in zip(substrates, units)], titles
    # the titles say how many units were used: the tiny model's conv1 has 4 channels, fewer than 5
    assert units[0] == "5 units" and units[1].startswith("all units (") and units[2].startswith("5 units asked, 4-5 used per layer")

    lines = []
    again = _run(spec, client2, lines)  # resume: every shard and partial result is reused
    resumed = [m for line in lines if (m := re.match(r"resuming: (\d+) of (\d+) shard file\(s\) and (\d+) of (\d+) partial", line))]
    assert resumed and resumed[0][1] == resumed[0][2] and resumed[0][3] == resumed[0][4], lines
    with xr.open_dataset(again.path) as ds2:
        xr.testing.assert_identical(ds2.drop_attrs(), before.drop_attrs())
    # another spec on the same folder with --overwrite: the movies (their movie.json too) are daskdiff's to replace;
    # the sensitivity options (a Tukey taper with overlap, log-spaced bins) in a job equal the core
    # function (itself checked against scipy.signal.spectrogram) on the direct Keras activations
    options = {"state_length": 2.0, "window": ["tukey", 0.25], "overlap": 0.125, "log_frequency": True}
    changed = _spec(tiny_model_path, tmp_path / "out", analysis__spectral=options)
    result = run_job(changed, Path("."), client=client2, progress=False, echo=lambda *a: None, overwrite=True)
    with xr.open_dataset(result.path) as ds3:
        assert list(ds3["spectral_windows"].values) == [2, 2]  # 20-frame windows every 18 frames: 0-19, 18-37
        assert list(ds3["spectral_dropped"].values) == [5, 5]
        assert ds3["spectral_differentiation"].attrs["log_frequency"] in (1, True)
        for layer in layers:
            flat = acts[layer].reshape(FRAMES, -1).astype(np.float64)
            units = units_for(acts[layer].shape[1:], "units", 5, sampling, layer, 3)
            z = (flat[:, units] - flat[:, units].mean()) / flat[:, units].std()
            ref = spectral_differentiation(z, fs=FPS, state_length=2.0, window=("tukey", 0.25), overlap=0.125, log_frequency=True)
            got = ds3["spectral_differentiation"].sel(image_set="grating", substrate="units", n_units=5, layer=layer, repeat=3)
            assert float(got) == pytest.approx(ref, rel=1e-6)


def test_bad_spectral_options_fail_before_the_cluster(tmp_path, tiny_model_path):
    unreachable = {"kind": "address", "address": "tcp://127.0.0.1:9"}  # never contacted: planning fails first
    cases = [
        ({"analysis__spectral": {"state_length": 0.15}}, r"analysis\.spectral\.state_length: movie 'grating' at 10 fps: state_length \* fs must be a whole number"),
        ({"analysis__spectral": {"state_length": 3.0}}, r"analysis\.spectral\.state_length: movie 'grating' has 43 frame\(s\) at 10 fps, 1 whole window"),
    ]
    for overrides, message in cases:
        spec = _spec(tiny_model_path, tmp_path / "out", cluster=unreachable, **overrides)
        with pytest.raises(SpecError, match=message):
            run_job(spec, Path("."), progress=False, echo=lambda *a: None)
    noise = tiny_spec(tiny_model_path, {"noise": {"generate": "noise", "count": 4, "size": 32}}, tmp_path / "out2",
                      analysis__measures=["spectral"], cluster=unreachable)
    with pytest.raises(SpecError, match=r"analysis\.measures: spectral needs every image set to be a movie, but 'noise' has no frame rate"):
        run_job(noise, Path("."), progress=False, echo=lambda *a: None)


def test_movie_given_as_frames_folder_or_file_equals_the_generated_one(tmp_path, tiny_model_path, client2):
    """The same frames as a generated movie, a plain folder with ``fps:``, an APNG file and a
    ``.npy`` array with ``fps:`` give the same spectral and stimulus differentiation; ``[spectral]``
    alone leaves the image measure NaN."""
    import shutil

    from PIL import Image

    from daskdiff.stimuli.registry import generate

    source = tmp_path / "source"
    paths = generate("gratings", source, **{k: v for k, v in GRATING.items() if k != "generate"})
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in paths:
        shutil.copy(p, plain / Path(p).name)
    frames = [Image.open(p).convert("RGB") for p in paths]
    frames[0].save(tmp_path / "clip.png", save_all=True, append_images=frames[1:], duration=int(1000 / FPS), loop=0)
    grey = np.stack([np.asarray(f) for f in frames])
    assert (grey == grey[..., :1]).all()  # a grey grating: R = G = B
    np.save(tmp_path / "clip.npy", grey[..., 0])  # as the OpenScope stimuli are stored: (frames, rows, cols) uint8
    sets = {"generated": GRATING, "folder": {"path": str(plain), "fps": FPS}, "file": {"path": str(tmp_path / "clip.png")},
            "array": {"path": str(tmp_path / "clip.npy"), "fps": FPS}}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", analysis__measures=["spectral"], analysis__spectral={"state_length": STATE})
    with xr.open_dataset(_run(spec, client2).path) as ds:
        assert list(ds["fps"].values) == [FPS] * 4 and list(ds["n_images"].values) == [FRAMES] * 4
        sd = ds["spectral_differentiation"]
        assert np.isfinite(sd.sel(n_units=5)).all()
        for name in ("folder", "file", "array"):
            np.testing.assert_array_equal(sd.sel(image_set=name).values, sd.sel(image_set="generated").values)
        assert ds["differentiation"].attrs["measured"] == 0 and bool(ds["differentiation"].isnull().all())
        assert "rdm" not in ds
        # each movie's own stimulus differentiation, from its frames at native size (32 x 32), equals
        # the function on the frames read back independently (Pillow), however the movie was given
        stimulus = ds["stimulus_differentiation"]
        np.testing.assert_allclose(stimulus.values, stimulus_differentiation(grey, FPS), rtol=1e-12)
        assert stimulus.attrs["rf_area"] == 250.0 and list(stimulus.attrs["field_of_view"]) == [95.0, 120.0]
    (plain / Path(paths[2]).name).rename(plain / "grating-2.png")  # unpadded: 'grating-2' sorts after 'grating-000010'
    with pytest.raises(Exception, match=r"image_sets\.folder: the frames' names do not sort in time order"):
        _run(tiny_spec(tiny_model_path, {"folder": sets["folder"]}, tmp_path / "out2", analysis__measures=["spectral"]), client2)


def test_input_and_pixels_layers_are_the_pixels_after_and_before_preprocessing(tmp_path, tiny_model_path, client2):
    """``model.layers: [pixels, input, ...]``: ``input`` is what the network receives (here with
    VGG16's ``caffe`` preprocessing: BGR minus the ImageNet means), ``pixels`` the RGB 0-255 frames
    before it; both first in layer order; filter_mean is the mean of each channel."""
    import keras

    pan = {"generate": "photo_movie", "photo": "astronaut", "size": 32, "n_frames": FRAMES, "fps": FPS}
    spec = tiny_spec(tiny_model_path, {"grating": GRATING, "pan": pan}, tmp_path / "out", model__layers=["conv1", "input", "pixels"],
                     model__preprocess="caffe", analysis__measures=["images", "spectral"], analysis__spectral={"state_length": STATE})
    with xr.open_dataset(_run(spec, client2).path) as ds:
        assert list(ds["layer"].values) == ["pixels", "input", "conv1"]

        def pixels_of(name):
            folder = tmp_path / "out" / "images" / name
            frames = json.loads((folder / "movie.json").read_text())["frames"]
            return np.stack([np.asarray(keras.utils.load_img(folder / f), dtype=np.float64) for f in frames])

        def caffe(rgb):  # keras.applications' own caffe preprocessing, in float64
            return keras.applications.imagenet_utils.preprocess_input(rgb.astype(np.float32), mode="caffe").astype(np.float64)

        a = spec.analysis
        sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, mode=a.sampling, seed=a.seed)
        # a grating of whole cycles has the same R, G, B means in every frame: undefined (NaN), counted;
        # after caffe's channel shifts the z-score's SD is their spread, defined
        means = ds["spectral_differentiation"].sel(substrate="filter_mean", n_units=-1, repeat=0)
        assert np.isnan(float(means.sel(image_set="grating", layer="pixels"))) and np.isfinite(float(means.sel(image_set="grating", layer="input")))
        undefined = ds["n_undefined"].sel(image_set="grating", substrate="filter_mean", n_units=-1)
        assert int(undefined.sel(layer="pixels")) == 1 and int(undefined.sel(layer="input")) == 0
        for layer, values in (("pixels", lambda rgb: rgb), ("input", caffe)):
            means = ds["spectral_differentiation"].sel(substrate="filter_mean", n_units=-1, layer=layer, repeat=0)
            pan_values = values(pixels_of("pan")).mean(axis=(1, 2))  # (frames, 3): mean R, G, B (B, G, R for input)
            assert float(means.sel(image_set="pan")) == pytest.approx(_reference_sd(pan_values, FPS, STATE), rel=1e-4)  # float32 means
            grating = values(pixels_of("grating"))
            units = units_for(grating.shape[1:], "units", 5, sampling, layer, 2)
            got = ds["spectral_differentiation"].sel(image_set="grating", substrate="units", n_units=5, layer=layer, repeat=2)
            assert float(got) == pytest.approx(_reference_sd(grating.reshape(FRAMES, -1)[:, units], FPS, STATE), rel=1e-6)
        # the two differ: the channel means' spread enters the z-score of the input, not of the pixels
        assert not np.allclose(ds["differentiation"].sel(layer="pixels", substrate="units"), ds["differentiation"].sel(layer="input", substrate="units"))


def test_spectral_results_do_not_depend_on_workers_or_shards(tmp_path, tiny_model_path, client2):
    a = _run(_spec(tiny_model_path, tmp_path / "a", extraction__shard_size=2), client2)
    with local_cluster(1) as cluster, \
            Client(cluster) as client1:
        b = _run(_spec(tiny_model_path, tmp_path / "b", extraction__shard_size=50), client1)
    with xr.open_dataset(a.path) as da, xr.open_dataset(b.path) as db:
        for name in ("spectral_differentiation", "normalized_spectral_differentiation", "differentiation"):
            np.testing.assert_allclose(da[name], db[name], rtol=1e-12, equal_nan=True)


def test_worker_killed_during_spectral_differentiation(tmp_path, tiny_model_path, client2):
    """A worker dies in a differentiation task of a movie job: Dask reruns it, the results are those of a clean run."""
    reference = _run(_spec(tiny_model_path, tmp_path / "ref"), client2)
    marker = tmp_path / "killed"
    with local_cluster(2) as cluster, \
            Client(cluster) as client:
        client.register_plugin(KillOnce("grating--units--", str(marker), delay=0.01))
        result = _run(_spec(tiny_model_path, tmp_path / "out"), client)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    with xr.open_dataset(reference.path) as a, xr.open_dataset(result.path) as b:
        np.testing.assert_allclose(a["spectral_differentiation"], b["spectral_differentiation"], rtol=1e-12, equal_nan=True)
