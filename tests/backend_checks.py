"""Run daskdiff's model-touching parts on the Keras backend of this process; tests/test_backends.py
starts it once per installed backend, with ``KERAS_BACKEND`` set, and checks what it wrote.

    python tests/backend_checks.py CONFIG.json OUT_DIR

``CONFIG.json`` names the inputs the test made (model files, image folders). Each check writes
its outputs under ``OUT_DIR/<check>/``; ``OUT_DIR/report.json`` records the process's backend,
the seconds each check took and the traceback of any that failed (the others still run). This
file knows nothing of the expected values: the test compares, in its own process.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def _direct_outputs(model, layers, x):
    """The named layers' full outputs, by a plain Keras call on the same backend."""
    import keras

    direct = keras.Model(model.inputs[0], [model.get_layer(n).output for n in layers])
    return dict(zip(layers, [np.asarray(o) for o in direct.predict_on_batch(x)]))


def _extract(name: str, spec, substrates: list[str], n_units: tuple, paths: list[str], batch_size: int, out: Path) -> None:
    """A shard of ``paths`` under folder ``out/name``, plus ``name_direct.npz``: every layer's
    output by a direct Keras call on the same preprocessed images, and ``name_plan.npz``."""
    import keras

    from daskdiff.core.units import Sampling, storage_plan
    from daskdiff.model.architecture import model_layers
    from daskdiff.model.build import cached_model, preprocess
    from daskdiff.model.extract import extract_shard, ShardTask

    info = model_layers(spec)
    plan = storage_plan(info["shapes"], substrates, Sampling(n_units=n_units, repeats=2, seed=11), full_layers=[info["last_layer"]])
    extract_shard(ShardTask("noisy", 0, tuple(paths), 0, str(out / name), batch_size=batch_size), plan, spec)
    x = np.stack([np.asarray(keras.utils.load_img(p, target_size=info["input_size"]), dtype=np.float32) for p in paths])
    np.savez(out / f"{name}_direct.npz", **_direct_outputs(cached_model(spec), info["layers"], preprocess(x, spec)))
    np.savez(out / f"{name}_plan.npz", **{k: lp.units for k, lp in plan.items() if lp.units is not None})


def check_extract(config: dict, out: Path) -> None:
    """The tiny model, every substrate, batches of 3 with a last batch of 1."""
    from daskdiff.model.build import ModelSpec

    spec = ModelSpec(name=config["tiny_model"], weights="file")
    _extract("tiny", spec, ["units", "filter_mean", "location_mean"], (5, 40), config["images"], 3, out)


def check_vgg16(config: dict, out: Path) -> None:
    """VGG16 with seeded random weights (the same on every backend), 3 images in batches of 2."""
    from daskdiff.model.build import ModelSpec

    _extract("vgg16", ModelSpec("VGG16", weights="random", seed=0), ["units", "filter_mean"], (200,), config["images"][:3], 2, out)


def check_weights(config: dict, out: Path) -> None:
    """A weights file and a .keras model written by the test's process, and seeded random weights."""
    from daskdiff.model.build import build_model, ModelSpec

    loaded = build_model(ModelSpec(name=config["tiny_model"], weights=config["weights_file"]))
    np.savez(out / "weights_file.npz", *loaded.get_weights())
    own = build_model(ModelSpec(name=config["tiny_model"], weights="file"))
    np.savez(out / "keras_file.npz", *own.get_weights())
    random = build_model(ModelSpec(name=config["tiny_model"], weights="random", seed=5))
    np.savez(out / "random.npz", *random.get_weights())


def check_preprocess(config: dict, out: Path) -> None:
    """Every application's and mode's preprocessing: the numpy path, the tensor path, and the
    gradient of the tensor path (channel weights 1, 2, 3) by the backend's gradient function."""
    from keras import ops

    from daskdiff.model.build import APPLICATIONS, ModelSpec
    from daskdiff.model.preprocess import preprocess, preprocess_tensor
    from daskdiff.stimuli.adversarial import gradient_function

    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 7, 5, 3), dtype=np.uint8)
    x = pixels.astype(np.float32)
    weights = np.arange(1, 4, dtype=np.float32)
    specs = {name: ModelSpec(name=name) for name in APPLICATIONS}
    specs.update({mode: ModelSpec(name="m.keras", weights="file", preprocess=mode) for mode in ("caffe", "tf", "torch", "none")})
    arrays = {}
    for key, spec in specs.items():
        arrays[f"{key}/numpy"] = preprocess(pixels, spec)
        arrays[f"{key}/tensor"] = ops.convert_to_numpy(preprocess_tensor(ops.convert_to_tensor(x), spec))
        arrays[f"{key}/gradient"] = gradient_function()(lambda t: ops.multiply(preprocess_tensor(t, spec), weights), x)
    np.savez(out / "preprocess.npz", **arrays)


def check_select(config: dict, out: Path) -> None:
    from daskdiff.stimuli.select import model_spec, select_images

    select_images(config["select_sources"], out / "kept", model_spec(config["select_model"]), classes=0, min_prob=0.5, batch_size=4)


def check_attack(config: dict, out: Path) -> None:
    """The untargeted attack away from classes 0-1, through 'caffe' preprocessing."""
    from daskdiff.stimuli.adversarial import attack_images
    from daskdiff.stimuli.select import model_spec

    spec = model_spec(config["attack_model"], preprocess="caffe")
    attack_images(config["attack_sources"], out / "adv", spec, eps=8, step=1, iters=10, avoid="0-1", batch_size=2)


def check_job(config: dict, out: Path) -> None:
    """A whole job of the tiny model on a LocalCluster of one worker process, which inherits
    ``KERAS_BACKEND`` from this process's environment; the worker's backend is asked, too."""
    from distributed import Client

    from daskdiff.pipeline.job import run_job

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from jobtools import local_cluster, tiny_spec

    spec = tiny_spec(config["tiny_model"], config["image_sets"], out / "job")

    def worker_backend():
        import keras

        return {"env": os.environ.get("KERAS_BACKEND"), "keras": keras.backend.backend(), "pid": os.getpid()}

    with local_cluster(1) as cluster:
        with Client(cluster) as client:
            workers = client.run(worker_backend)
            run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
            # the same job with the gathers and Gram products on the backend's own arrays
            on_backend = tiny_spec(config["tiny_model"], config["image_sets"], out / "job-device", analysis__device="backend")
            try:
                run_job(on_backend, Path("."), client=client, progress=False, echo=lambda *a: None)
            except Exception as err:  # TensorFlow has no array namespace: the error is the check
                (out / "device-error.txt").write_text(f"{type(err).__name__}: {err}")
            workers_after = client.run(lambda: sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "torch", "jax"}))
            namespaces = client.run(lambda: {"array_api_compat": "array_api_compat" in sys.modules,  # only the device path imports it
                                             "torch": "array_api_compat.torch" in sys.modules})
    (out / "workers.json").write_text(json.dumps({"backend": list(workers.values()), "frameworks": list(workers_after.values()),
                                                  "array_namespaces": list(namespaces.values())}))


CHECKS = {"weights": check_weights, "preprocess": check_preprocess, "extract": check_extract, "vgg16": check_vgg16, "select": check_select, "attack": check_attack, "job": check_job}


def main(config_path: str, out_dir: str) -> int:
    config = json.loads(Path(config_path).read_text())
    out = Path(out_dir)
    import keras

    report: dict = {"keras_backend": keras.backend.backend(), "env": os.environ.get("KERAS_BACKEND"), "seconds": {}, "errors": {}}
    for name in config.get("checks", list(CHECKS)):
        (out / name).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            CHECKS[name](config, out / name)
        except Exception:  # recorded for the test to show; the other checks still run
            report["errors"][name] = traceback.format_exc()
        report["seconds"][name] = round(time.perf_counter() - t0, 2)
    report["frameworks"] = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "torch", "jax"})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
