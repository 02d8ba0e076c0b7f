"""Every part of daskdiff that touches a model, on each installed Keras backend.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so each backend runs in a fresh
process: ``tests/backend_checks.py``, started once per backend (and once more for VGG16) with
``KERAS_BACKEND`` set, builds models and loads weights, extracts a shard, selects images by
class, attacks images and runs a whole job on a LocalCluster of one worker process; this module
compares what it wrote with references computed here (numpy, or a direct Keras call on the same
backend) and with the TensorFlow run. A backend that is not installed is skipped, naming the
extra that installs it (``pip install -e '.[torch]'``, ``'.[jax]'``), except in CI (``CI=true``),
where it fails: the ``test`` extra, which CI installs, has torch and JAX.

Tolerances (float32 throughout):

- a shard against a direct Keras call on the same backend: ``rtol=1e-5`` and ``atol`` 1e-6 of
  the layer's largest value (torch on the CPU computes a batch of one image with another
  convolution algorithm than a batch of three: differences of ~2e-7 of the layer's scale);
- a shard on torch or JAX against the TensorFlow shard: the same for the tiny model; for VGG16
  with random weights (the test_extract.py tolerance, ``atol`` 1e-5 of the layer's largest
  value) ``rtol=1e-4`` across backends (measured: 3.5e-6 of the scale); the class-score layer
  by its logits, as softmax magnifies their rounding (logits of +-600: probabilities ~1e-3);
- a job's differentiation against the TensorFlow job's: ``rtol=1e-5`` and ``atol=1e-5``. The
  differentiation is a distance between z-scored activations, in units of their standard
  deviation, so ``atol`` is 1e-5 of the layer's spread: where the images of a set are nearly
  alike (the 'smooth' set's filter means) the distances are small differences of large
  values, and float32 rounding of the activations shows in them relatively more (measured:
  at most 5e-6 absolute, 3e-5 relative, on JAX; 9e-7 and 8e-6 on torch);
- adversarial PNGs: byte for byte equal to TensorFlow's (the attack steps by the gradient's sign);
- seeded random weights, weights files and ``.keras`` files: exactly equal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import build_tiny_model, write_images
from daskdiff.model.build import APPLICATIONS, ModelSpec
from daskdiff.model.preprocess import preprocess
import test_attack
import test_select

pytestmark = [pytest.mark.keras, pytest.mark.subprocess]  # each backend runs backend_checks.py in its own process

HERE = Path(__file__).resolve().parent
BACKENDS = ("tensorflow", "torch", "jax")
EXTRA = {"tensorflow": "tensorflow (a dependency of daskdiff)", "torch": "pip install -e '.[torch]'", "jax": "pip install -e '.[jax]'"}
MAIN_CHECKS = ["weights", "preprocess", "extract", "select", "attack", "job"]
RTOL = 1e-5
SCALE_ATOL = 1e-6
JOB_RTOL = 1e-5
JOB_ATOL = 1e-5


def installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def need(backend: str) -> None:
    """Skip a test whose backend is not installed, naming the extra; fail instead in CI."""
    if not installed(backend):
        why = f"Keras backend {backend!r} is not installed: {EXTRA[backend]}"
        if os.environ.get("CI") == "true":  # the test extra installs every backend: never skip silently in CI
            pytest.fail(why + " (CI installs daskdiff[test], which has it)")
        pytest.skip(why)


def close(actual, desired, rtol=RTOL, scale_atol=SCALE_ATOL, what=""):
    """allclose with an absolute tolerance relative to the largest value of ``desired``."""
    desired = np.asarray(desired)
    atol = scale_atol * float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=what)


def close_softmax(actual, logits, units, rtol=RTOL, scale_atol=SCALE_ATOL, what=""):
    """Probabilities ``actual`` (the columns ``units`` of a softmax) against the ``logits``.

    Compared as log-probabilities, clamped at 1e-30 (float32's softmax loses its relative
    precision towards the underflow at 1.2e-38, where backends flush differently): when the logits
    move by at most ``scale_atol`` of their largest magnitude (the rounding of two runs of the
    same model), a log-probability moves by at most twice that (its logit's move, and the
    log-sum-exp's). VGG16 with random weights has logits of +-600, so rounding that ``close``
    accepts for them moves a probability by ~1e-3 of itself."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    floor = np.log(1e-30)
    got = np.maximum(np.log(np.maximum(np.asarray(actual, dtype=np.float64), 1e-300)), floor)
    atol = rtol + 2 * scale_atol * float(np.abs(logits).max())
    np.testing.assert_allclose(got, np.maximum(log_p[:, units], floor), rtol=0, atol=atol, err_msg=what)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The inputs of every backend's run, made once here (with this process's backend)."""
    root = tmp_path_factory.mktemp("backend-inputs")
    tiny = root / "tiny.keras"
    build_tiny_model().save(tiny)
    other = build_tiny_model(seed=99)
    other.save_weights(root / "other.weights.h5")
    noisy = write_images(root / "noisy", 7, seed=1)
    write_images(root / "smooth", 6, seed=2, kind="smooth")
    select_images = {n: test_select.textured(c, s) for s, (n, c) in enumerate(test_select.COLOURS.items())}
    test_select.write_pngs(root / "select-src", select_images)
    attack_images = {n: test_attack.textured(c, s) for s, (n, c) in enumerate({**test_attack.CATS, **test_attack.NOT_A_CAT}.items())}
    test_attack.write_pngs(root / "attack-src", attack_images)
    config = {
        "tiny_model": str(tiny),
        "weights_file": str(root / "other.weights.h5"),
        "images": noisy,
        "image_sets": {"noisy": str(root / "noisy"), "smooth": str(root / "smooth")},
        "select_model": test_select.colour_model(root / "select.keras", test_select.WEIGHTS, test_select.BIAS),
        "select_sources": str(root / "select-src"),
        "attack_model": test_attack.colour_model(root / "attack.keras", test_attack.WEIGHTS, test_attack.BIAS, preprocess="caffe"),
        "attack_sources": str(root / "attack-src"),
    }
    return {
        "root": root,
        "config": config,
        "tiny_weights": build_tiny_model().get_weights(),
        "other_weights": other.get_weights(),
        "select_images": select_images,
        "attack_images": attack_images,
    }


class BackendRun:
    """What one run of ``backend_checks.py`` wrote."""

    def __init__(self, backend: str, out: Path, proc: subprocess.CompletedProcess):
        self.backend, self.out, self.proc = backend, out, proc
        report = out / "report.json"
        assert report.exists(), f"backend_checks.py on {backend} wrote no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        self.report = json.loads(report.read_text())

    def check(self, name: str) -> Path:
        """The folder of check ``name``; fails with the check's traceback if it raised."""
        error = self.report["errors"].get(name)
        assert error is None, f"check {name!r} failed on {self.backend}:\n{error}"
        return self.out / name


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory):
    """``run(backend, group)``: the checks of ``group`` run once on ``backend``, in a subprocess."""
    cache: dict[tuple[str, str], BackendRun] = {}

    def get(backend: str, group: str = "main") -> BackendRun:
        need(backend)
        if (backend, group) not in cache:
            out = tmp_path_factory.mktemp(f"backend-{backend}-{group}")
            config = dict(inputs["config"], checks=MAIN_CHECKS if group == "main" else [group])
            (out / "config.json").write_text(json.dumps(config))
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
            proc = subprocess.run(
                [sys.executable, str(HERE / "backend_checks.py"), str(out / "config.json"), str(out)],
                env=env, capture_output=True, text=True, timeout=540,
            )
            cache[backend, group] = BackendRun(backend, out, proc)
        return cache[backend, group]

    return get


def reference(run, backend: str, group: str = "main") -> BackendRun | None:
    """The TensorFlow run to compare ``backend`` with; None for TensorFlow itself or without it."""
    if backend == "tensorflow" or not installed("tensorflow"):
        return None
    return run("tensorflow", group)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_run_is_on_the_backend_asked_for(run, backend):
    r = run(backend)
    assert r.report["keras_backend"] == r.report["env"] == backend
    if backend != "tensorflow":  # GPU nodes have no TensorFlow: nothing may import it
        assert "tensorflow" not in r.report["frameworks"], r.report["frameworks"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_files_keras_files_and_random_weights_load_exactly(run, inputs, backend):
    folder = run(backend).check("weights")
    for name, want in [("weights_file", inputs["other_weights"]), ("keras_file", inputs["tiny_weights"])]:
        with np.load(folder / f"{name}.npz") as got:
            assert len(got.files) == len(want)
            for i, w in enumerate(want):
                np.testing.assert_array_equal(got[f"arr_{i}"], w, err_msg=f"{name} weight {i}")
    # weights='random': every kernel drawn by numpy (see daskdiff.model.build), biases as in the file
    with np.load(folder / "random.npz") as got:
        for i, own in enumerate(inputs["tiny_weights"]):
            if own.ndim < 2:
                want = own
            else:
                rng = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(i,)))
                want = rng.standard_normal(own.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(own.shape[:-1])))
            np.testing.assert_array_equal(got[f"arr_{i}"], want, err_msg=f"random weight {i}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_preprocessing_of_arrays_and_tensors_agree_and_is_differentiable(run, backend):
    """Every application's and mode's preprocessing: the tensor path (the attack's) equals the
    numpy path (extraction's), exactly (on JAX to 4 float32 ulps: XLA divides by a constant as
    a multiplication by its inverse), and its gradient is the chain rule's, with the TensorFlow
    run's numpy values."""
    with np.load(run(backend).check("preprocess") / "preprocess.npz") as f:
        arrays = dict(f)
    ref = None
    if (r := reference(run, backend)) is not None:
        with np.load(r.check("preprocess") / "preprocess.npz") as f:
            ref = dict(f)
    keys = sorted({k.split("/")[0] for k in arrays})
    assert "VGG16" in keys and "caffe" in keys and len(keys) == 15
    for key in keys:
        numpy, tensor, gradient = (arrays[f"{key}/{part}"] for part in ("numpy", "tensor", "gradient"))
        if backend == "jax":
            np.testing.assert_allclose(tensor, numpy, rtol=0, atol=4 * np.spacing(np.abs(numpy).max()), err_msg=key)
        else:
            np.testing.assert_array_equal(tensor, numpy, err_msg=key)
        if ref is not None:
            np.testing.assert_array_equal(numpy, ref[f"{key}/numpy"], err_msg=key)
        # every mode is affine in each channel: the gradient of sum(y * (1, 2, 3)) with respect to
        # input channel k is the numpy path's slope along k, weighted by the output channels
        spec = ModelSpec(name=key) if key in APPLICATIONS else ModelSpec(name="m.keras", weights="file", preprocess=key)
        x = np.random.default_rng(0).integers(0, 256, size=numpy.shape, dtype=np.uint8).astype(np.float32)
        base = preprocess(x, spec).astype(np.float64)
        want = np.empty(numpy.shape)
        for k in range(3):
            shifted = x.copy()
            shifted[..., k] += 16
            want[..., k] = ((preprocess(shifted, spec) - base) / 16 * [1.0, 2.0, 3.0]).sum(axis=-1)
        np.testing.assert_allclose(gradient, want, rtol=1e-4, atol=1e-6, err_msg=key)
    # VGG16 ('caffe'): BGR, so weights 1, 2, 3 on B, G, R are 3, 2, 1 on R, G, B
    np.testing.assert_array_equal(arrays["VGG16/gradient"], np.broadcast_to([3.0, 2.0, 1.0], arrays["VGG16/gradient"].shape))


def _compare_shard(folder: Path, name: str, n_images: int, rtol=RTOL, scale_atol=SCALE_ATOL, layers=None):
    """The shard's values against the direct Keras call of the same run."""
    with np.load(folder / f"{name}_direct.npz") as d, np.load(folder / f"{name}_plan.npz") as p:
        direct, units = dict(d), dict(p)
    with xr.open_dataset(folder / name / "activations" / "noisy" / "shard-00000.nc") as ds:
        assert ds.sizes["image"] == n_images
        for layer in layers or direct:
            a = direct[layer]
            full = a.reshape(n_images, -1)
            np.testing.assert_array_equal(ds[f"unit__{layer}"].values, units[layer])
            if layer == list(direct)[-1]:  # the class scores: logits in the direct call, softmax in the shard
                close_softmax(ds[f"units__{layer}"].values, full, units[layer], rtol, scale_atol, f"units of {layer}")
                if f"filter_mean__{layer}" in ds:  # of a dense layer: its values
                    close_softmax(ds[f"filter_mean__{layer}"].values, full, slice(None), rtol, scale_atol, f"filter_mean of {layer}")
                e = np.exp(full - full.max(axis=1, keepdims=True))
                a = e / e.sum(axis=1, keepdims=True)
            else:
                close(ds[f"units__{layer}"].values, full[:, units[layer]], rtol, scale_atol, f"units of {layer}")
                if f"filter_mean__{layer}" in ds:
                    spatial = tuple(range(1, a.ndim - 1))
                    close(ds[f"filter_mean__{layer}"].values, a.mean(axis=spatial) if spatial else a, rtol, scale_atol, f"filter_mean of {layer}")
            if f"location_mean__{layer}" in ds:
                close(ds[f"location_mean__{layer}"].values, a.mean(axis=-1).reshape(n_images, -1), rtol, scale_atol, f"location_mean of {layer}")
        return {k: ds[k].values for k in ds.data_vars if "__" in k}, dict(ds.attrs), direct


def _compare_backends(got: tuple, want: tuple, rtol: float, scale_atol: float) -> None:
    """Two runs' shards (``_compare_shard``'s returns) agree; the class scores by their logits.

    Softmax magnifies the logits' rounding (VGG16 with random weights has logits of +-600, whose
    float32 rounding moves probabilities by ~1e-3 relative): the shards' probabilities are
    checked against their own backend's logits (``_compare_shard``), and the logits here."""
    (values, _, direct), (ref_values, _, ref_direct) = got, want
    last = list(direct)[-1]
    assert sorted(values) == sorted(ref_values)
    for name, v in ref_values.items():
        if not name.endswith(f"__{last}"):
            close(values[name], v, rtol, scale_atol, what=name)
    close(direct[last], ref_direct[last], rtol, scale_atol, what=f"logits of {last}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_shard_equals_direct_keras_call_and_tensorflow(run, backend):
    """A shard of the tiny model (every substrate) equals a direct Keras call on the same
    backend, and the TensorFlow shard."""
    got = _compare_shard(run(backend).check("extract"), "tiny", 7)
    assert got[1]["keras_backend"] == backend
    if (ref := reference(run, backend)) is not None:
        _compare_backends(got, _compare_shard(ref.check("extract"), "tiny", 7), RTOL, SCALE_ATOL)


@pytest.mark.vgg16
@pytest.mark.parametrize("backend", BACKENDS)
def test_vgg16_random_weights_shard_equals_direct_keras_call_and_tensorflow(run, backend):
    """VGG16 with seeded random weights (the same model on every backend): sampled units and
    filter means equal a direct Keras call on the same backend and the TensorFlow shard."""
    got = _compare_shard(run(backend, "vgg16").check("vgg16"), "vgg16", 3, rtol=1e-5, scale_atol=1e-5)
    assert got[1]["weights"] == "random(seed=0, he_normal)" and got[1]["keras_backend"] == backend
    if (ref := reference(run, backend, "vgg16")) is not None:
        want = _compare_shard(ref.check("vgg16"), "vgg16", 3, rtol=1e-5, scale_atol=1e-5)
        _compare_backends(got, want, rtol=1e-4, scale_atol=1e-5)  # measured: 3.5e-6 of the scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_selection_keeps_the_images_numpy_says(run, inputs, backend):
    folder = run(backend).check("select") / "kept"
    expected = dict(zip(inputs["select_images"], test_select.reference_probabilities(
        np.stack(list(inputs["select_images"].values())), test_select.WEIGHTS, test_select.BIAS)))
    want = {name for name, p in expected.items() if p[0] >= 0.5}
    rows = test_select.read_table(folder / test_select.SELECTION_TABLE)
    assert len(rows) == len(expected)
    for row in rows:
        name = Path(row["path"]).stem
        assert row["status"] == ("kept" if name in want else "below_threshold")
        assert float(row["probability"]) == pytest.approx(expected[name][0], abs=1e-5)
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adversarial_images_flip_the_class_and_equal_tensorflow(run, inputs, backend):
    """Every image's attack succeeds, checked here in numpy on the saved PNG, within eps; and
    the PNGs are byte for byte the TensorFlow run's."""
    folder = run(backend).check("attack") / "adv"
    rows = {Path(r["path"]).stem: r for r in test_attack.read_table(folder / test_attack.ADVERSARIAL_TABLE)}
    assert sorted(rows) == sorted(inputs["attack_images"])
    for name, row in rows.items():
        png = test_attack.read_png(folder / row["file"])
        assert np.abs(png.astype(int) - inputs["attack_images"][name].astype(int)).max() <= 8
        p = test_attack.reference_probabilities(png[None], test_attack.WEIGHTS, test_attack.BIAS)[0]
        assert row["status"] == "success" and int(row["top1_after_index"]) == int(np.argmax(p)) == 2
    if (ref := reference(run, backend)) is not None:
        ref_folder = ref.check("attack") / "adv"
        for name, row in rows.items():
            assert (folder / row["file"]).read_bytes() == (ref_folder / row["file"]).read_bytes(), name


@pytest.mark.cluster
@pytest.mark.parametrize("backend", BACKENDS)
def test_job_on_a_worker_of_the_backend_agrees_with_tensorflow(run, backend):
    """A whole job, its one worker process on the backend too (inherited from the environment);
    the shards and the results record it; the differentiation equals TensorFlow's (rtol and atol 1e-5)."""
    folder = run(backend).check("job")
    workers = json.loads((folder / "workers.json").read_text())
    assert [(w["env"], w["keras"]) for w in workers["backend"]] == [(backend, backend)]
    if backend != "tensorflow":  # (Keras itself imports jax wherever jax is installed)
        assert [backend in f and "tensorflow" not in f for f in workers["frameworks"]] == [True]
    results = xr.open_dataset(folder / "job" / "differentiation.nc")
    assert results.attrs["keras_backend"] == backend
    for shard in sorted((folder / "job" / "activations").rglob("*.nc")):
        with xr.open_dataset(shard) as ds:
            assert ds.attrs["keras_backend"] == backend, shard
    d = results["differentiation"].values
    assert np.isfinite(d).sum() > 0.4 * d.size
    if (ref := reference(run, backend)) is not None:
        with xr.open_dataset(ref.check("job") / "job" / "differentiation.nc") as want:
            assert want.attrs["keras_backend"] == "tensorflow"
            np.testing.assert_array_equal(np.isnan(d), np.isnan(want["differentiation"].values))
            np.testing.assert_allclose(d, want["differentiation"].values, rtol=JOB_RTOL, atol=JOB_ATOL, equal_nan=True)
    results.close()


@pytest.mark.cluster
@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_products_on_the_backends_arrays_equal_host_numpy(run, backend):
    """The job again with ``analysis.device: backend`` (its gathers, normalisers and Gram products
    on the worker's torch or jax arrays, on the CPU here) gives the host numpy job's differentiation
    to 1e-12 relative, NaN for NaN; a TensorFlow worker refuses it, naming the fix."""
    folder = run(backend).check("job")
    if backend == "tensorflow":
        error = (folder / "device-error.txt").read_text()
        assert "analysis.device: backend needs workers on KERAS_BACKEND=torch or jax" in error
        assert "set analysis.device: auto (or host)" in error
        return
    assert not (folder / "device-error.txt").exists()
    with xr.open_dataset(folder / "job" / "differentiation.nc") as host, \
            xr.open_dataset(folder / "job-device" / "differentiation.nc") as device:
        want, got = host["differentiation"].values, device["differentiation"].values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isfinite(want).sum() > 0.4 * want.size
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
    workers = json.loads((folder / "workers.json").read_text())
    assert workers["array_namespaces"] == [{"array_api_compat": True, "torch": backend == "torch"}]  # jax: jax.numpy itself


@pytest.mark.cluster
def test_results_record_the_workers_backend_not_the_clients(tmp_path, tiny_model_path, image_folders):
    """This process (the client) runs TensorFlow, its LocalCluster's workers torch: the results file
    says torch, as every shard does, and names the client's backend apart."""
    need("torch")
    from distributed import Client

    from daskdiff.pipeline.job import run_job
    from jobtools import local_cluster, tiny_spec

    sets = {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out")
    env = {"KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with local_cluster(1, env=env) as cluster, \
            Client(cluster) as client:
        result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
    import keras
    import torch

    assert keras.backend.backend() == "tensorflow"
    with xr.open_dataset(result.path) as ds:
        assert ds.attrs["keras_backend"] == "torch" and ds.attrs["keras_backend_version"] == torch.__version__
        assert ds.attrs["client_keras_backend"] == "tensorflow"
    for shard in sorted((tmp_path / "out" / "activations").rglob("*.nc")):
        with xr.open_dataset(shard) as s:
            assert s.attrs["keras_backend"] == "torch", shard
