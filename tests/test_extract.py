"""Extraction against a direct Keras call on the same preprocessed images."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from daskdiff.model.extract import extract_shard, ShardTask
from daskdiff.model.architecture import model_layers
from daskdiff.model.build import build_model, ModelSpec, WeightsUnavailableError
from daskdiff.core.units import Sampling, storage_plan
from daskdiff.io.layout import shard_path
from daskdiff.io.shards import open_activations, read_features


def _reference_outputs(model_path, layers, paths, size):
    """Independent reference: keras.utils.load_img + the saved model (softmax head intact)."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    direct = keras.Model(model.inputs, [model.get_layer(n).output for n in layers])
    x = np.stack([np.asarray(keras.utils.load_img(p, target_size=size), dtype=np.float32) for p in paths])
    return dict(zip(layers, [np.asarray(o) for o in direct.predict(x, verbose=0)]))


@pytest.fixture
def tiny_plan(tiny_model_path):
    spec = ModelSpec(name=tiny_model_path, weights="file")
    info = model_layers(spec)
    sampling = Sampling(n_units=(5, 40), repeats=3, seed=11)
    plan = storage_plan(info["shapes"], ["units", "filter_mean", "location_mean"], sampling, full_layers=[info["last_layer"]])
    return spec, info, plan


def test_shard_equals_direct_keras_call(tmp_path, image_folders, tiny_plan, tiny_model_path):
    spec, info, plan = tiny_plan
    paths = image_folders["noisy"]
    task = ShardTask("noisy", 0, tuple(paths), 0, str(tmp_path / "out"), batch_size=3)
    summary = extract_shard(task, plan, spec)
    assert summary["n_images"] == len(paths) and summary["skipped"] == []

    ref = _reference_outputs(tiny_model_path, info["layers"], paths, info["input_size"])
    ds = xr.open_dataset(shard_path(tmp_path / "out", "noisy", 0))
    assert list(ds["path"].values) == paths
    for layer in info["layers"]:
        full = ref[layer].reshape(len(paths), -1)
        lp = plan[layer]
        units = ds[f"units__{layer}"].values
        np.testing.assert_array_equal(ds[f"unit__{layer}"].values, lp.units)
        np.testing.assert_allclose(units, full[:, lp.units], rtol=1e-5, atol=1e-6)
        a = ref[layer]
        spatial = tuple(range(1, a.ndim - 1))
        fm = a.mean(axis=spatial) if spatial else a
        np.testing.assert_allclose(ds[f"filter_mean__{layer}"].values, fm, rtol=1e-5, atol=1e-6)
        loc = a.mean(axis=-1).reshape(len(paths), -1)
        np.testing.assert_allclose(ds[f"location_mean__{layer}"].values, loc, rtol=1e-5, atol=1e-6)
    # the class-score layer is stored in full, as softmax probabilities by default
    probs = ref["predictions"]
    np.testing.assert_allclose(ds["units__predictions"].values, probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ds["top1_class"].values, probs.argmax(axis=1))
    np.testing.assert_allclose(ds["top1_prob"].values, probs.max(axis=1), rtol=1e-5)
    # weights='file': the model file's resolved path and the start of its sha256, by hashlib
    digest = hashlib.sha256(Path(tiny_model_path).read_bytes()).hexdigest()
    assert ds.attrs["weights"] == f"{Path(tiny_model_path).resolve()} (sha256 {digest[:16]})"
    ds.close()


@pytest.mark.parametrize("precision, policy, spread", [("bfloat16", "mixed_bfloat16", 2e-2), ("float16", "mixed_float16", 2e-3)])
def test_mixed_precision_shard_equals_a_model_built_in_that_policy(tmp_path, image_folders, tiny_plan, precision, policy, spread):
    """``model.precision: bfloat16`` (``float16``): the shard equals the tiny model built afresh
    under Keras's global ``mixed_bfloat16`` (``mixed_float16``) policy, an independent route to
    the same graph; it is stored as float32 and differs from float32 by 16-bit rounding."""
    import keras

    from conftest import build_tiny_model

    spec, info, plan = tiny_plan
    paths = image_folders["noisy"]
    mixed = ModelSpec(name=spec.name, weights="file", precision=precision)
    extract_shard(ShardTask("noisy", 0, tuple(paths), 0, str(tmp_path / "mixed"), batch_size=3), plan, mixed)
    extract_shard(ShardTask("noisy", 0, tuple(paths), 0, str(tmp_path / "plain"), batch_size=3), plan, spec)
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_tiny_model()  # the same seeded weights as the saved file, every layer in the policy
    finally:
        keras.config.set_dtype_policy(before)
    assert model.get_layer("conv1").dtype_policy.name == policy
    direct = keras.Model(model.inputs, [model.get_layer(n).output for n in info["layers"]])
    x = np.stack([np.asarray(keras.utils.load_img(p, target_size=info["input_size"]), dtype=np.float32) for p in paths])
    ref = dict(zip(info["layers"], [np.asarray(o, dtype=np.float32) for o in direct.predict(x, verbose=0)]))
    with xr.open_dataset(shard_path(tmp_path / "mixed", "noisy", 0)) as ds, xr.open_dataset(shard_path(tmp_path / "plain", "noisy", 0)) as plain:
        assert ds.attrs["precision"] == precision and plain.attrs["precision"] == "float32"
        for layer in [n for n in info["layers"] if n != info["last_layer"]]:
            units = ds[f"units__{layer}"]
            assert units.dtype == np.float32
            np.testing.assert_allclose(units.values, ref[layer].reshape(len(paths), -1)[:, plan[layer].units], rtol=1e-6, atol=1e-6)
            scale = float(np.abs(plain[f"units__{layer}"].values).max())
            gap = float(np.abs(units.values - plain[f"units__{layer}"].values).max()) / scale
            assert 1e-4 < gap < spread, (layer, gap)  # 16-bit rounding: 8 (bfloat16) or 11 (float16) bits of mantissa


@pytest.mark.subprocess
def test_decoder_processes_give_the_same_shard(tmp_path, image_folders, tiny_plan):
    """extraction.decoders: 3 decoding processes and batches prefetched give the one-process shard, bit for bit."""
    spec, info, plan = tiny_plan
    paths = image_folders["noisy"] + image_folders["smooth"]
    for n in (1, 3):
        extract_shard(ShardTask("s", 0, tuple(paths), 0, str(tmp_path / f"d{n}"), batch_size=2, decoders=n), plan, spec)
    with xr.open_dataset(shard_path(tmp_path / "d1", "s", 0)) as one, xr.open_dataset(shard_path(tmp_path / "d3", "s", 0)) as three:
        xr.testing.assert_identical(one.drop_attrs(), three.drop_attrs())


def test_decoders_auto_is_one_without_a_gpu_and_a_share_of_the_cores_with_one(monkeypatch):
    import distributed

    from daskdiff.pipeline import workers
    from daskdiff.pipeline.spec import MAX_DECODERS

    assert workers.decoders() == 1  # not in a worker: the forward pass needs the cores
    worker = type("FakeWorker", (), {workers.DEVICE_ATTRIBUTE: {"gpu": True}})()
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    monkeypatch.setattr(workers, "node_gpus", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert workers.decoders() == 8  # 64 cores over 8 GPUs
    monkeypatch.setattr(workers, "node_gpus", lambda: 1)
    assert workers.decoders() == MAX_DECODERS
    setattr(worker, workers.DEVICE_ATTRIBUTE, {"gpu": False})
    assert workers.decoders() == 1


def test_conv_unit_coordinates(tmp_path, image_folders, tiny_plan):
    spec, info, plan = tiny_plan
    extract_shard(ShardTask("noisy", 0, tuple(image_folders["noisy"][:2]), 0, str(tmp_path)), plan, spec)
    ds = xr.open_dataset(shard_path(tmp_path, "noisy", 0))
    h, w, c = info["shapes"]["conv2"]
    idx = ds["unit__conv2"].values
    np.testing.assert_array_equal(idx, (ds["y__conv2"].values * w + ds["x__conv2"].values) * c + ds["channel__conv2"].values)
    ds.close()


def test_logits_option(tmp_path, image_folders, tiny_model_path):
    spec = ModelSpec(name=tiny_model_path, weights="file", predictions="logits", layers=("predictions",))
    info = model_layers(spec)
    plan = storage_plan(info["shapes"], ["units"], Sampling(n_units=("all",), repeats=1), full_layers=["predictions"])
    extract_shard(ShardTask("noisy", 0, tuple(image_folders["noisy"]), 0, str(tmp_path)), plan, spec)
    with xr.open_dataset(shard_path(tmp_path, "noisy", 0)) as ds:
        logits = ds["units__predictions"].values
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        np.testing.assert_allclose(ds["top1_prob"].values, probs.max(1), rtol=1e-5)
        assert not np.allclose(logits.sum(1), 1.0)


def test_bad_images_are_skipped_and_recorded(tmp_path, image_folders, tiny_plan):
    spec, info, plan = tiny_plan
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    paths = (image_folders["noisy"][0], str(bad), image_folders["noisy"][1])
    summary = extract_shard(ShardTask("noisy", 3, paths, 30, str(tmp_path / "o")), plan, spec)
    assert summary["n_images"] == 2
    assert summary["skipped"][0][0] == str(bad)
    ds = open_activations(tmp_path / "o", "noisy")
    assert ds.sizes["image"] == 2
    assert list(ds["image_index"].values) == [30, 32]
    assert json.loads(ds.attrs["skipped_json"])[0][0] == str(bad)
    ds.close()


def test_shard_of_only_bad_images(tmp_path, tiny_plan):
    spec, info, plan = tiny_plan
    bad = tmp_path / "a.jpg"
    bad.write_text("not an image")
    summary = extract_shard(ShardTask("s", 0, (str(bad),), 0, str(tmp_path / "o")), plan, spec)
    assert summary["n_images"] == 0
    with xr.open_dataset(shard_path(tmp_path / "o", "s", 0)) as ds:
        assert ds.sizes["image"] == 0


def test_open_activations_concatenates_shards(tmp_path, image_folders, tiny_plan):
    spec, info, plan = tiny_plan
    paths = image_folders["noisy"]
    for shard, (lo, hi) in enumerate([(0, 3), (3, 7)]):
        extract_shard(ShardTask("noisy", shard, tuple(paths[lo:hi]), lo, str(tmp_path)), plan, spec)
    ds = open_activations(tmp_path, "noisy")
    assert list(ds["path"].values) == paths
    assert ds["units__conv1"].chunks is not None  # lazy, dask-backed
    one = extract_shard(ShardTask("all", 0, tuple(paths), 0, str(tmp_path)), plan, spec)
    values, index = read_features([one["path"]], "units", "conv1")
    np.testing.assert_allclose(ds["units__conv1"].values, values, rtol=1e-6)
    ds.close()


@pytest.mark.keras
def test_random_weights_reproducible():
    a = build_model(ModelSpec("VGG16", weights="random", seed=3))
    w_a = a.get_layer("block3_conv1").get_weights()[0]
    b = build_model(ModelSpec("VGG16", weights="random", seed=3))
    np.testing.assert_array_equal(w_a, b.get_layer("block3_conv1").get_weights()[0])
    c = build_model(ModelSpec("VGG16", weights="random", seed=4))
    assert not np.array_equal(w_a, c.get_layer("block3_conv1").get_weights()[0])
    # He-normal scale: std ~ sqrt(2 / fan_in)
    assert np.std(w_a) == pytest.approx(np.sqrt(2 / (3 * 3 * 128)), rel=0.02)


@pytest.mark.keras
def test_imagenet_offline_error_names_file_cache_and_options(monkeypatch, tmp_path):
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras.src.backend.config as config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(ModelSpec("VGG16", weights="imagenet"))
    msg = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in msg
    assert str(tmp_path) in msg
    assert "weights: random" in msg and "weights file" in msg


def test_unknown_layer_lists_valid(tiny_model_path):
    with pytest.raises(ValueError, match="valid layers are .*conv1"):
        model_layers(ModelSpec(name=tiny_model_path, weights="file", layers=("conv9",)))


@pytest.mark.vgg16
def test_vgg16_random_weights_end_to_end(tmp_path, image_folders):
    """The real VGG16 (random weights): shard values equal a direct Keras call."""
    import keras

    from daskdiff.model.build import cached_model

    spec = ModelSpec("VGG16", weights="random", seed=0)
    info = model_layers(spec)
    assert len(info["layers"]) == 22 and info["layers"][0] == "block1_conv1" and info["layers"][-1] == "predictions"
    plan = storage_plan(info["shapes"], ["units", "filter_mean"], Sampling(n_units=(200,), repeats=2), full_layers=["predictions"])
    paths = image_folders["noisy"][:3]
    extract_shard(ShardTask("noisy", 0, tuple(paths), 0, str(tmp_path), batch_size=2), plan, spec)
    base = cached_model(spec)
    check = ["block1_conv1", "block3_pool", "block5_conv3", "fc2", "predictions"]
    direct = keras.Model(base.inputs, [base.get_layer(n).output for n in check])
    x = np.stack([np.asarray(keras.utils.load_img(p, target_size=(224, 224)), dtype=np.float32) for p in paths])
    x = keras.applications.vgg16.preprocess_input(x)
    ref = dict(zip(check, direct.predict(x, verbose=0)))
    ref["predictions"] = np.exp(ref["predictions"] - ref["predictions"].max(1, keepdims=True))
    ref["predictions"] /= ref["predictions"].sum(1, keepdims=True)
    with xr.open_dataset(shard_path(tmp_path, "noisy", 0)) as ds:
        for layer in check:
            full = ref[layer].reshape(len(paths), -1)
            np.testing.assert_allclose(ds[f"units__{layer}"].values, full[:, plan[layer].units], rtol=1e-5, atol=1e-5 * np.abs(full).max())
        assert ds.attrs["weights"] == "random(seed=0, he_normal)"
        assert "vgg16.preprocess_input" in ds.attrs["preprocessing"]


@pytest.mark.keras
@pytest.mark.parametrize("shape", [(7, 5), (5,), (4, 6, 3)])
def test_in_graph_reductions_match_numpy_for_any_layer_shape(shape):
    """1-D conv, dense and 2-D conv outputs: in-graph gathers and means equal numpy's."""
    import keras

    from daskdiff.model.extract import _feature_outputs
    from daskdiff.core.units import LayerPlan
    from daskdiff.core.substrates import reduce

    size = int(np.prod(shape))
    lp = LayerPlan("L", shape, units=np.arange(0, size, 2), filter_mean=True, location_mean=True)
    inp = keras.Input(shape)
    model = keras.Model(inp, _feature_outputs(inp, lp))
    x = np.random.default_rng(0).normal(size=(3,) + shape).astype("float32")
    out = model.predict_on_batch(x)
    np.testing.assert_array_equal(out["units__L"], x.reshape(3, -1)[:, ::2])
    np.testing.assert_allclose(out["filter_mean__L"], reduce(x, "filter_mean"), atol=1e-6)
    np.testing.assert_allclose(out["location_mean__L"], reduce(x, "location_mean"), atol=1e-6)


@pytest.mark.keras
def test_dense_gather_path_equals_plain_take():
    """Above DENSE_GATHER of a layer's units the gather goes through a transpose: same values."""
    import keras

    from daskdiff.model.extract import _feature_outputs
    from daskdiff.core.units import LayerPlan

    shape = (6, 6, 4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2,) + shape).astype("float32")
    for frac in (0.05, 0.5):
        units = np.sort(rng.choice(144, int(144 * frac), replace=False))
        lp = LayerPlan("L", shape, units=units)
        inp = keras.Input(shape)
        out = keras.Model(inp, _feature_outputs(inp, lp)).predict_on_batch(x)
        np.testing.assert_array_equal(out["units__L"], x.reshape(2, -1)[:, units])


def test_weights_file_is_loaded(tmp_path, tiny_model_path):
    """weights: PATH loads a weights file the test writes (different from the model file's own)."""

    from conftest import build_tiny_model

    other = build_tiny_model(seed=99)
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    model = build_model(ModelSpec(name=tiny_model_path, weights=str(path)))
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    own = build_model(ModelSpec(name=tiny_model_path, weights="file"))
    assert not np.array_equal(own.get_weights()[0], other.get_weights()[0])
    with pytest.raises(ValueError, match="does not exist"):
        build_model(ModelSpec(name=tiny_model_path, weights=str(tmp_path / "missing.weights.h5")))


@pytest.mark.vgg16
@pytest.mark.parametrize("name, size, layer", [("InceptionV3", (299, 299), "mixed10"), ("ResNet50", (224, 224), "conv5_block3_out")])
def test_other_applications_through_the_pipeline(tmp_path, image_folders, name, size, layer):
    """Nothing downstream assumes VGG16: other shapes, input sizes, preprocessing, layer names."""
    import keras

    from daskdiff.model.build import cached_model, preprocess

    spec = ModelSpec(name, weights="random", seed=1, layers=(layer, "predictions"))
    info = model_layers(spec)
    assert info["input_size"] == size and info["layers"] == [layer, "predictions"]
    plan = storage_plan(info["shapes"], ["units", "filter_mean"], Sampling(n_units=(50,), repeats=2), full_layers=["predictions"])
    paths = image_folders["noisy"][:2]
    extract_shard(ShardTask("noisy", 0, tuple(paths), 0, str(tmp_path)), plan, spec)
    base = cached_model(spec)
    direct = keras.Model(base.inputs, base.get_layer(layer).output)
    x = np.stack([np.asarray(keras.utils.load_img(p, target_size=size), dtype=np.float32) for p in paths])
    ref = direct.predict(preprocess(x, spec), verbose=0)
    with xr.open_dataset(shard_path(tmp_path, "noisy", 0)) as ds:
        np.testing.assert_allclose(ds[f"units__{layer}"].values, ref.reshape(2, -1)[:, plan[layer].units], rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        np.testing.assert_allclose(ds[f"filter_mean__{layer}"].values, ref.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5 * np.abs(ref).max())
        assert "preprocess_input" in ds.attrs["preprocessing"]


@pytest.mark.subprocess
def test_extraction_leaves_nothing_in_the_temporary_folder(tmp_path, image_folders, tiny_model_path):
    """Nothing outside the output is touched: TensorFlow's AutoGraph would write a
    ``__autograph_generated_file*.py`` into the system's temporary folder for every model traced,
    removed at exit only if the process exits normally (a worker its nanny kills leaves it)."""
    import subprocess
    import sys

    temp, out = tmp_path / "temp", tmp_path / "out"
    temp.mkdir()
    code = f"""
from daskdiff.core.units import Sampling, storage_plan
from daskdiff.model.architecture import model_layers
from daskdiff.model.build import ModelSpec
from daskdiff.model.extract import extract_shard, ShardTask
spec = ModelSpec(name={tiny_model_path!r}, weights="file")
info = model_layers(spec)
plan = storage_plan(info["shapes"], ["units"], Sampling(n_units=(5,), repeats=2, seed=1), full_layers=[info["last_layer"]])
print(extract_shard(ShardTask("noisy", 0, tuple({image_folders["noisy"][:4]!r}), 0, {str(out)!r}, batch_size=2), plan, spec)["n_images"])
import json, os; print(json.dumps(os.listdir({str(temp)!r})))  # before exit: a killed worker runs no atexit clean-up
"""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | {"TMPDIR": str(temp), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    n_images, left = done.stdout.strip().splitlines()[-2:]
    assert n_images == "4" and json.loads(left) == []
