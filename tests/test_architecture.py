"""The package's layers, checked by importing them: each layer loads without the layers above it.

Every test imports modules in a fresh interpreter where a meta-path finder makes the daskdiff
layers above raise ImportError (the traceback names the offending import), then checks that no
heavy library the layer must not need was loaded (``sys.modules``). So a module-level import that
points upward, or pulls in such a library, fails the test. Imports inside functions and under
``if TYPE_CHECKING:`` do not run at import, so they are not seen here: :mod:`tests.test_layers`
reads every import statement of the package with ``ast``, wherever it is, and holds them to the
same layers (and to no import circles, no private names across modules, no module over 600 lines).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import daskdiff

LAYERS = ["core", "io", "model", "stimuli", "pipeline"]
TOP = ["daskdiff.stats", "daskdiff.comparison", "daskdiff.plot", "daskdiff.info", "daskdiff.cli", "daskdiff.rsa"]
HEAVY = {
    "core": ["keras", "tensorflow", "torch", "jax", "xarray", "dask", "distributed", "netCDF4", "h5py", "PIL", "matplotlib", "pydantic"],
    "io": ["keras", "tensorflow", "torch", "jax", "dask", "distributed", "matplotlib", "pydantic"],
    "model": ["dask", "distributed", "matplotlib", "pydantic"],
    "stimuli": ["dask", "distributed", "matplotlib", "pydantic", "keras", "tensorflow", "skimage", "imageio"],
    "pipeline": ["matplotlib", "keras", "tensorflow", "skimage", "imageio"],
}

BLOCKER = """
import sys

class Blocked:
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        for blocked in self.names:
            if name == blocked or name.startswith(blocked + "."):
                raise ImportError(f"{name} is blocked in this test: the layer must not import it")
        return None

sys.meta_path.insert(0, Blocked(BLOCKED))
"""


LOADS_KERAS = {"daskdiff.pipeline.preimport"}
"""Modules whose import is there to load Keras: the forkserver's preload, imported in that server alone."""


def modules(layer: str) -> list[str]:
    package = __import__(f"daskdiff.{layer}", fromlist=["_"])
    names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return [name for name in names if name not in LOADS_KERAS]


def import_blocked(names: list[str], blocked: list[str], absent: list[str] = ()) -> subprocess.CompletedProcess:
    """Import ``names`` with ``blocked`` packages unimportable; fail if any of ``absent`` got loaded."""
    code = (
        f"BLOCKED = {blocked!r}\n" + BLOCKER + "".join(f"import {n}\n" for n in names)
        + f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(absent)!r}))\n"
        + "sys.exit(f'loaded what it must not: {loaded}' if loaded else 0)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_without_the_layers_above_it(layer):
    above = [f"daskdiff.{higher}" for higher in LAYERS[LAYERS.index(layer) + 1 :]] + TOP
    out = import_blocked(modules(layer), above, HEAVY[layer])
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.subprocess
def test_the_forkservers_preload_imports_nothing_above_the_pipeline():
    out = import_blocked(sorted(LOADS_KERAS), TOP)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.subprocess
def test_core_needs_only_numpy_and_scipy():
    """The acceptance check of the layout: ``daskdiff.core`` with keras, xarray, dask and tensorflow gone."""
    out = import_blocked(["daskdiff", *modules("core")], [], ["keras", "tensorflow", "xarray", "dask", "distributed"])
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.subprocess
def test_the_checks_can_fail():
    """An upward import and a heavy library are both caught (else every test here would pass blindly)."""
    out = import_blocked(["daskdiff.pipeline.job"], ["daskdiff.io"])
    assert out.returncode != 0 and "daskdiff.io" in out.stderr and "is blocked" in out.stderr
    out = import_blocked(["daskdiff.io.shards"], [], ["xarray"])
    assert out.returncode != 0 and "loaded what it must not: ['xarray']" in out.stderr


def test_every_module_is_in_a_layer_or_on_top():
    top = {m.name for m in pkgutil.iter_modules(daskdiff.__path__)}
    assert top == set(LAYERS) | {"errors", "logs", "stats", "comparison", "plot", "info", "cli", "rsa"}, top


@pytest.mark.subprocess
def test_public_api_keeps_its_names_and_loads_jobs_lazily():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, daskdiff; assert 'xarray' not in sys.modules; "
         "print(daskdiff.run_job.__module__, daskdiff.open_activations.__module__, daskdiff.load_spec.__module__)"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["daskdiff.pipeline.job", "daskdiff.io.shards", "daskdiff.pipeline.spec_file"]
    for name in daskdiff.__all__:
        assert getattr(daskdiff, name) is not None
