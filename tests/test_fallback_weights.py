"""``model.fallback_weights: random``: ImageNet weights that cannot be had fall back, loudly.

Offline by construction, whatever the machine: Keras's download function raises, and its cache
folder is an empty temporary one. MobileNetV2 is the smallest keras.applications model daskdiff
knows, so the whole job stays a few seconds on two cores.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from PIL import Image

import daskdiff.pipeline.cluster
from daskdiff.io.layout import shard_path
from daskdiff.model.build import keras_cache_dir
from daskdiff.errors import JobError
from daskdiff.pipeline.job import run_job
from daskdiff.pipeline.spec_file import parse_spec

from conftest import write_images
from jobtools import record_cluster_starts

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
LAYERS = ["block_16_project_BN", "out_relu"]

pytestmark = pytest.mark.keras  # MobileNetV2, built offline


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No download possible and an empty Keras cache (KERAS_HOME and Keras's own copy of it)."""
    import keras.src.backend.config as config
    import keras.src.utils.file_utils as file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))
    assert keras_cache_dir() == home / "models" and not list(home.rglob("*.h5"))
    return home


def _spec(tmp_path, **model):
    images = write_images(tmp_path / "imgs", 3, seed=4)
    return parse_spec({
        "name": "fallback",
        "model": {"name": "MobileNetV2", "weights": "imagenet", "seed": 2, "layers": LAYERS, **model},
        "image_sets": {"imgs": str(Path(images[0]).parent)},
        "analysis": {"substrates": ["units"], "n_units": [20], "repeats": 2},
        "output": str(tmp_path / "out"),
    }), images


def _no_task(*args, **kwargs):
    raise AssertionError("the job went on to submit tasks")


def test_without_fallback_fails_before_any_task_saying_how_to_get_weights(offline, tmp_path, monkeypatch):
    """The weights are resolved while the job is planned; every cluster that started meanwhile (the
    early local one) is closed, and no task is submitted."""
    starts = record_cluster_starts(monkeypatch)
    monkeypatch.setattr(daskdiff.pipeline.cluster, "connect", _no_task)
    spec, _ = _spec(tmp_path)
    with pytest.raises(JobError) as err:
        run_job(spec, tmp_path, progress=False, echo=lambda *a: None)
    assert len(starts.started) <= 1 and starts.all_closed  # at most the early local cluster, closed again
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{WEIGHTS_FILE}" in msg
    assert str(offline / "models") in msg and "KERAS_HOME" in msg
    assert "weights: random" in msg and "--weights PATH" in msg
    assert not (tmp_path / "out" / "differentiation.nc").exists()



def test_without_weights_no_set_is_generated_first(offline, tmp_path, monkeypatch):
    """Issue 22 item 3: the weights are settled before the job generates its sets (adversarial ones
    cost minutes): a run that cannot have them writes no generated image."""
    monkeypatch.setattr(daskdiff.pipeline.cluster, "connect", _no_task)
    spec, _ = _spec(tmp_path)
    spec = spec.model_copy(update={"image_sets": {**spec.image_sets, **parse_spec({
        "name": "x", "image_sets": {"noise": {"generate": "noise", "count": 3, "size": 16}}, "output": "o"}).image_sets}})
    with pytest.raises(JobError, match="KERAS_HOME"):
        run_job(spec, tmp_path, progress=False, echo=lambda *a: None)
    assert not list((tmp_path / "out").rglob("*.png")), "images were generated before the weights were checked"

def _he_normal_mobilenet(seed: int):
    """MobileNetV2 with the random weights daskdiff's model docstring defines, drawn here:
    every weight with 2+ axes from N(0, 2 / fan_in), rng SeedSequence(seed, spawn_key=(i,))."""
    import keras

    model = keras.applications.MobileNetV2(weights=None, include_top=True, classifier_activation=None)
    for i, w in enumerate(model.weights):
        shape = tuple(w.shape)
        if len(shape) >= 2:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            w.assign(rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[:-1]))))
    return model


@pytest.mark.cluster
def test_fallback_runs_on_seeded_random_weights_and_says_so(offline, tmp_path, monkeypatch):
    import keras

    spec, images = _spec(tmp_path, fallback_weights="random")
    lines = []
    for key in ("HDF5_USE_FILE_LOCKING", "TF_CPP_MIN_LOG_LEVEL"):  # the worker plugin sets them in this process
        monkeypatch.setenv(key, "FALSE" if key.startswith("HDF5") else "3")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        result = run_job(spec, tmp_path, client=client, progress=False, echo=lines.append)

    banner = [line for line in lines if "IMAGENET WEIGHTS UNAVAILABLE" in line]
    assert len(banner) == 1 and banner[0].startswith("!" * 78) and "seed=2" in banner[0]
    assert len(result.notes) == 1 and "RANDOM WEIGHTS (seed=2)" in result.notes[0] and "untrained" in result.notes[0]
    with xr.open_dataset(result.path) as ds:
        assert ds.attrs["warning"] == result.notes[0]
        assert ds.attrs["weights"] == "random(seed=2, he_normal)"
        assert np.isfinite(ds["differentiation"].values).all()

    # the shard's activations are those of the documented seeded random network
    reference = _he_normal_mobilenet(seed=2)
    probe = keras.Model(reference.inputs, [reference.get_layer(n).output for n in LAYERS])
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32) for p in images])
    want = dict(zip(LAYERS, probe.predict(x / 127.5 - 1.0, verbose=0)))  # MobileNetV2's 'tf' preprocessing
    with xr.open_dataset(shard_path(tmp_path / "out", "imgs", 0)) as shard:
        assert shard.attrs["weights"] == "random(seed=2, he_normal)"
        for layer in LAYERS:
            units = shard[f"units__{layer}"]
            flat = want[layer].reshape(len(images), -1)[:, units[f"unit__{layer}"].values]
            np.testing.assert_allclose(units.values, flat, rtol=1e-4, atol=1e-4 * np.abs(want[layer]).max())
