"""Shared fixtures (a tiny Keras model saved to a file, small generated image folders) and the
markers that say what a test costs, with the guard of ``pytest --fast`` (``python3 dev.py fast``)."""

from __future__ import annotations

import atexit
import importlib.abc
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
from daskdiff.model.quiet import TF_DEFAULT_ENV  # noqa: E402 (light: imports no Keras)

for _key, _value in TF_DEFAULT_ENV.items():
    # The tests' own Keras calls (references, in-process clusters) run TensorFlow as daskdiff's
    # workers do, whichever imports it first in this process: a test that compares a job with a
    # reference bit for bit needs the same settings on both sides.
    os.environ.setdefault(_key, _value)
if "DASK_DASKDIFF__MODEL__ARCHITECTURE_CACHE" not in os.environ:
    # the architectures' facts the tests' plans measure (daskdiff.model.architecture): kept for the
    # session (its pytest-xdist workers and subprocesses inherit it), never in the user's own cache
    _ARCHITECTURES = tempfile.mkdtemp(prefix="daskdiff-tests-architectures-")
    os.environ["DASK_DASKDIFF__MODEL__ARCHITECTURE_CACHE"] = _ARCHITECTURES
    atexit.register(shutil.rmtree, _ARCHITECTURES, ignore_errors=True)

import logging

import numpy as np
import pytest
from PIL import Image
from s3server import s3_bucket, s3_server, s3fs_fresh  # noqa: F401  (fixtures: a moto S3 endpoint)

# ---------------------------------------------------------------- what a test costs
#
# Three markers (registered in pyproject.toml) say what a test needs beyond this Python process:
# ``keras`` (a Keras model, so TensorFlow or another backend is imported), ``cluster`` (a Dask
# cluster, with its worker processes) and ``subprocess`` (a child process, e.g. ``daskdiff run``).
# ``pytest --fast`` (``python3 dev.py fast``) runs the tests that have none of them, between edits.
#
# A test gets its marker from the fixtures it uses, followed through the fixtures those use: the
# names in COSTLY_FIXTURES below and in its module's own ``COSTLY_FIXTURES`` dict (for a fixture
# whose name means something else elsewhere). A test that builds a model, starts a cluster or runs
# a process by itself is marked in its file. Under ``--fast`` and ``--check-markers`` a test that
# does any of these without its marker fails, naming the marker, so the markers cannot fall behind.

COSTLY = ("keras", "cluster", "subprocess")

#: Fixtures that cost, and the marker each gives every test that uses it.
COSTLY_FIXTURES = {
    "tiny_model_path": "keras",
    "client": "cluster",
    "client2": "cluster",
    "two_clusters": "cluster",
    "threaded_cluster": "cluster",
    "small_fs": "subprocess",
}

#: Top-level packages whose import means a Keras model or one of its backends.
KERAS_MODULES = ("keras", "tensorflow", "torch", "jax")


def pytest_addoption(parser):
    parser.addoption(
        "--fast",
        action="store_true",
        help="run only the tests marked neither keras, cluster nor subprocess (python3 dev.py fast), "
        "with --check-markers",
    )
    parser.addoption(
        "--check-markers",
        action="store_true",
        help="fail a test that imports Keras/TensorFlow/torch/jax, starts a Dask cluster or a child "
        "process without the marker keras, cluster or subprocess that says so",
    )


def pytest_configure(config):
    if config.getoption("fast") or config.getoption("check_markers"):
        config.pluginmanager.register(MarkerGuard(), "daskdiff-marker-guard")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, so that -m "not keras" sees these
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = {**COSTLY_FIXTURES, **getattr(item.module, "COSTLY_FIXTURES", {})}
        markers = {fixtures[name] for name in item.fixturenames if name in fixtures}
        if item.get_closest_marker("vgg16"):
            markers.add("keras")
        for name in sorted(markers - {m.name for m in item.iter_markers()}):
            item.add_marker(name)
    if config.getoption("fast"):
        keep, costly = [], []
        for item in items:
            (costly if any(item.get_closest_marker(name) for name in COSTLY) else keep).append(item)
        config.hook.pytest_deselected(items=costly)
        items[:] = keep


class CostlyCall(RuntimeError):
    """Raised by MarkerGuard where a test does something costly that its markers do not declare."""


class MarkerGuard:
    """Refuse, record and fail what a running test does that its markers do not declare.

    Child processes are watched where every way of starting one passes (``subprocess.Popen``,
    multiprocessing's spawn and forkserver through ``_posixsubprocess.fork_exec``, ``os.fork``,
    ``os.posix_spawn``, ``os.system``): a test marked ``subprocess`` or ``cluster`` (whose workers
    are processes) may start them. Dask clusters are watched where every one is made
    (``distributed.deploy.spec.SpecCluster``, which ``LocalCluster`` and ``Client()`` use), and
    Keras, TensorFlow, torch and jax at their first import, so that one is seen only if no earlier
    test imported it: in a ``--fast`` run, where no test may, every time. Refused calls raise
    CostlyCall and are recorded, so that a test that catches the error still fails, its report
    naming what it did and the marker to add. Between tests (collection) nothing is refused;
    ``--fast`` fails instead if collecting imported a Keras backend.
    """

    def __init__(self):
        import _posixsubprocess

        import distributed.deploy.spec

        # the standard library runs `uname -p` once per interpreter, when someone (TensorFlow at its
        # import) first asks for the processor's name: asked here, before anything is watched
        platform.processor()
        self.allowed: set[str] | None = None  # the running test's markers; None between tests
        self.seen: list[str] = []
        self._guard(subprocess.Popen, "_execute_child", "subprocess", "starts a child process")
        self._guard(_posixsubprocess, "fork_exec", "subprocess", "starts a child process")
        for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
            self._guard(os, name, "subprocess", f"starts a child process (os.{name})")
        self._guard(distributed.deploy.spec.SpecCluster, "__init__", "cluster", "starts a Dask cluster")
        sys.meta_path.insert(0, _KerasImportGuard(self))

    def check(self, marker: str, what: str) -> None:
        if self.allowed is None or marker in self.allowed or (marker == "subprocess" and "cluster" in self.allowed):
            return
        message = (f"this test {what} ({_where()}) but is not marked {marker}: mark it @pytest.mark.{marker}, "
                   f"or add its fixture to COSTLY_FIXTURES (tests/conftest.py, or its module's own)")
        self.seen.append(message)
        raise CostlyCall(message)

    def _guard(self, owner, name: str, marker: str, what: str) -> None:
        original = getattr(owner, name)

        def guarded(*args, **kwargs):
            self.check(marker, what)
            return original(*args, **kwargs)

        setattr(owner, name, guarded)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item):
        self.allowed = {m.name for m in item.iter_markers()}
        try:
            return (yield)
        finally:
            self.allowed = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if self.seen:
            report.outcome = "failed"
            earlier = f"\n\n{report.longrepr}" if report.longrepr else ""
            report.longrepr = "\n".join(dict.fromkeys(self.seen)) + earlier
            self.seen.clear()
        return report

    def pytest_collection_finish(self, session):
        imported = [name for name in KERAS_MODULES if name in sys.modules]
        if session.config.getoption("fast") and imported:
            raise pytest.UsageError(
                f"--fast: collecting the tests imported {', '.join(imported)}; a test module imports it at its "
                "top (or through a helper): import it inside the tests or fixtures that need it instead"
            )


def _where() -> str:
    """The innermost line of this project's code (daskdiff or a test) on the stack, and its thread."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mine = tuple(os.path.join(root, folder) + os.sep for folder in ("daskdiff", "tests"))
    ours = [f for f in traceback.extract_stack() if f.filename.startswith(mine) and f.filename != __file__]
    line = f"{os.path.relpath(ours[-1].filename, root)}:{ours[-1].lineno} in {ours[-1].name}" if ours else "outside this project"
    thread = threading.current_thread()
    return line if thread is threading.main_thread() else f"{line}, thread {thread.name!r}"


class _KerasImportGuard(importlib.abc.MetaPathFinder):
    """The first finder asked for a module: a Keras backend's import asks MarkerGuard first, which
    refuses it for a test not marked keras; every import is then left to the usual finders."""

    def __init__(self, guard: MarkerGuard):
        self.guard = guard

    def find_spec(self, fullname, path=None, target=None):
        if fullname in KERAS_MODULES:
            self.guard.check("keras", f"imports {fullname}")
        return None


@pytest.fixture(autouse=True)
def _daskdiff_logger_restored():
    """``daskdiff.cli.main`` run in this process configures the ``daskdiff`` logger (a stdout
    handler, a level); each test starts from, and leaves, the library's unconfigured logger."""
    logger = logging.getLogger("daskdiff")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:], logger.level = handlers, level


def build_tiny_model(seed: int = 0):
    """A small conv net with VGG-like layer kinds (conv, pool, flatten, dense, predictions).

    Weights are set from a numpy Generator (not Keras's global RNG) so the model is the same
    in every process.
    """
    import keras

    inputs = keras.Input((32, 32, 3), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(12, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        w.assign((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype("float32") + (0.05 if len(shape) == 1 else 0))
    return model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_tiny_model().save(path)
    return str(path)


def write_images(folder, count, *, seed, size=(40, 36), kind="noise"):
    """Write ``count`` RGB PNGs of random content; returns the sorted paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        if kind == "noise":
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        else:  # smooth gradients with a random tint: low diversity
            yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
            base = (xx * 255 // size[0]).astype(np.uint8)
            arr = np.stack([base, base[::-1], np.full_like(base, rng.integers(0, 40))], axis=-1)
        p = folder / f"img-{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def image_folders(tmp_path):
    """Two small image sets on disk: 'noisy' (7 images) and 'smooth' (6 images)."""
    return {
        "noisy": write_images(tmp_path / "noisy", 7, seed=1),
        "smooth": write_images(tmp_path / "smooth", 6, seed=2, kind="smooth"),
    }
