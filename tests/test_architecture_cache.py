"""A job's client plans from an architecture's cached facts, without importing Keras
(:mod:`daskdiff.model.architecture`), and Keras's settings are read as Keras reads them
(:mod:`daskdiff.model.keras_config`).

References: the facts are compared with a model Keras builds in the test (layer names, each
layer's output shape, the input size), and the settings with what an imported Keras reports
in the same process; whether a process imported Keras is read from its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import build_tiny_model


def _keras_facts(model) -> dict:
    """Layer names, output shapes and input size as the Keras model itself gives them."""
    import keras

    names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    shapes = {name: tuple(int(s) for s in model.get_layer(name).output.shape[1:]) for name in names}
    return {"layers": names, "shapes": shapes, "input_size": tuple(int(s) for s in model.input_shape[1:3])}


def _wide_model():
    """A model of the tiny one's layer names with other widths (a rewritten file's new architecture)."""
    import keras

    inputs = keras.Input((24, 24, 3), name="input")
    x = keras.layers.Conv2D(7, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(9, 3, padding="same", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(11, name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x), name="wide")


@pytest.mark.keras
def test_cached_facts_equal_what_keras_builds_and_a_rewritten_file_is_measured_again(tmp_path):
    from daskdiff.model.architecture import model_layers
    from daskdiff.model.build import ModelSpec

    path = tmp_path / "net.keras"
    tiny = build_tiny_model()
    tiny.save(path)
    spec = ModelSpec(name=str(path), weights="file")
    cache = tmp_path / "cache"
    cold = model_layers(spec, cache)
    warm = model_layers(spec, cache)
    assert (cold["cached"], warm["cached"]) == (False, True)
    expected = _keras_facts(tiny)
    for facts in (cold, warm):
        assert facts["layers"] == expected["layers"]
        assert facts["shapes"] == expected["shapes"]
        assert facts["input_size"] == expected["input_size"] == (32, 32)
        assert facts["last_layer"] == "predictions"
        assert facts["weight_bytes"] == 4 * sum(int(w.numpy().size) for w in tiny.weights)
    assert {k: v for k, v in cold.items() if k != "cached"} == {k: v for k, v in warm.items() if k != "cached"}

    wide = _wide_model()
    wide.save(path)  # the same path rewritten: a new architecture, never the old file's facts
    rewritten = model_layers(spec, cache)
    assert rewritten["cached"] is False
    assert rewritten["shapes"] == _keras_facts(wide)["shapes"]
    assert rewritten["shapes"]["conv1"] == (24, 24, 7) != cold["shapes"]["conv1"]
    assert len(list(cache.glob("*.json"))) == 2

    chosen = model_layers(ModelSpec(name=str(path), weights="file", layers=("conv2", "pixels")), cache)
    assert chosen["cached"] is True
    assert chosen["layers"] == ["pixels", "conv2"]
    assert chosen["shapes"] == {"pixels": (24, 24, 3), "conv2": (12, 12, 9)}
    from daskdiff.errors import InputError

    with pytest.raises(InputError, match=r"unknown layer\(s\) \['conv9'\] for model 'wide'"):
        model_layers(ModelSpec(name=str(path), weights="file", layers=("conv9",)), cache)


@pytest.mark.keras
def test_a_damaged_or_unwritable_cache_costs_only_a_build(tmp_path):
    from daskdiff.model.architecture import architecture_key, model_layers
    from daskdiff.model.build import ModelSpec

    path = tmp_path / "net.keras"
    build_tiny_model().save(path)
    spec = ModelSpec(name=str(path), weights="file")
    cache = tmp_path / "cache"
    first = model_layers(spec, cache)
    entry = cache / f"{architecture_key(spec)}.json"
    for damage in ("{not json", json.dumps({"layers": ["conv1"]}), "[]"):
        entry.write_text(damage)
        again = model_layers(spec, cache)
        assert again["cached"] is False and again["shapes"] == first["shapes"]
        assert json.loads(entry.read_text())["shapes"]["conv1"] == [32, 32, 4]  # measured and kept whole again
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary left beside it

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: a path under a file cannot be made either way
            locked = tmp_path / "a-file"
            locked.write_text("")
        assert model_layers(spec, locked / "cache")["shapes"] == first["shapes"]
    finally:
        (tmp_path / "locked").chmod(0o700)


_PLAN_AND_REPORT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.spec_file import load_spec
    spec, base = load_spec(sys.argv[1])
    plan = plan_job(spec, base, echo=lambda *a: None)
    plan.release()
    print(json.dumps({"keras": "keras" in sys.modules, "tensorflow": "tensorflow" in sys.modules,
                      "cached": plan.model_info["cached"], "shapes": {k: list(v) for k, v in plan.shapes.items()}}))
""")


@pytest.mark.keras
@pytest.mark.subprocess
def test_a_client_plans_without_importing_keras_once_the_architecture_is_known(tmp_path, tiny_model_path, image_folders):
    """The cold plan builds the model (Keras imported); the next, in a new process, reads the
    cache and never imports Keras or TensorFlow; both plan the shapes Keras gives."""
    import yaml

    spec = {"name": "tiny", "model": {"name": tiny_model_path, "weights": "file"}, "image_sets": {k: str(Path(v[0]).parent) for k, v in image_folders.items()},
            "analysis": {"n_units": [5, "all"], "repeats": 3}, "output": str(tmp_path / "out")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "DASK_DASKDIFF__MODEL__ARCHITECTURE_CACHE": str(tmp_path / "cache")}

    def plan() -> dict:
        done = subprocess.run([sys.executable, "-c", _PLAN_AND_REPORT, str(tmp_path / "job.yaml")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, warm = plan(), plan()
    assert (cold["cached"], cold["keras"]) == (False, True)
    assert (warm["cached"], warm["keras"], warm["tensorflow"]) == (True, False, False)
    expected = _keras_facts(build_tiny_model())["shapes"]
    assert warm["shapes"] == cold["shapes"] == {k: list(v) for k, v in expected.items()}


_BACKEND_THEN_KERAS = textwrap.dedent("""
    import sys
    from daskdiff.model.keras_config import backend_name, keras_home
    before = (backend_name(), str(keras_home()))
    assert "keras" not in sys.modules
    import keras
    from keras.src.backend import config
    print(before == (keras.backend.backend(), config.keras_home()), before, keras.backend.backend())
""")


@pytest.mark.subprocess
@pytest.mark.parametrize("case", ["environment", "keras.json", "neither", "not json", "empty variable"])
def test_backend_name_is_what_keras_then_reports(tmp_path, case):
    """Each case in a fresh process: the name read without Keras, then Keras's own after importing it."""
    home = tmp_path / "keras-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    env["KERAS_HOME"] = str(home)
    if case == "environment":
        env["KERAS_BACKEND"] = "torch"
        (home / "keras.json").write_text(json.dumps({"backend": "jax"}))
    elif case == "keras.json":
        (home / "keras.json").write_text(json.dumps({"backend": "torch", "floatx": "float32"}))
    elif case == "not json":
        (home / "keras.json").write_text("{backend: torch")
    elif case == "empty variable":
        env["KERAS_BACKEND"] = ""
        (home / "keras.json").write_text(json.dumps({"backend": "torch"}))
    done = subprocess.run([sys.executable, "-c", _BACKEND_THEN_KERAS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    agreed, *_, backend = done.stdout.split()
    assert agreed == "True", done.stdout
    assert backend == {"environment": "torch", "keras.json": "torch", "neither": "tensorflow", "not json": "tensorflow",
                       "empty variable": "torch"}[case]
