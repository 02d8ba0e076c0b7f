"""Every notebook in notebooks/ runs top to bottom on the output of a tiny job made here.

The job (tiny Keras model, two small image sets, one of them named 'noise' so the notebooks'
default reference exists) runs on a LocalCluster with one worker process; two more jobs, one
whose noise set is generated and named 'white_noise' (as in jobs/seed-reproduction.yaml) and
one without a noise set, check how differentiation.ipynb picks its reference. Each notebook's
parameters cell gets the job's output folder, and nbclient executes it in a kernel that runs
this interpreter (a kernel spec in a temporary folder at the front of JUPYTER_PATH, so no
'python3' kernel spec of the user or the system is picked instead). Any cell error fails.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from distributed import Client
from nbclient import NotebookClient

from conftest import write_images
from daskdiff.pipeline.job import run_job
from jobtools import local_cluster, tiny_spec

pytestmark = pytest.mark.cluster

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ON_MOVIES = {"movies.ipynb", "compare.ipynb"}
"""Notebooks whose default output is the movies demo's."""
ON_ANY_JOB = [p for p in NOTEBOOKS if p.name != "compare.ipynb"]
"""Notebooks that run on the tiny job of image sets (compare.ipynb needs stimuli its neural table names)."""


def run_tiny_job(tiny_model_path, sets: dict, output: Path, **overrides) -> Path:
    """Run the tiny job on ``sets`` (folders or ``{generate: ...}`` entries); its output folder."""
    spec = tiny_spec(tiny_model_path, sets, output, **overrides)
    cluster = local_cluster(1)
    with cluster, Client(cluster) as client:
        result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
    return result.path.parent


@pytest.fixture(scope="module")
def job_output(tmp_path_factory, tiny_model_path):
    """Output folder of a tiny job: sets 'noise' (7 noise images) and 'smooth' (6 gradients)."""
    base = tmp_path_factory.mktemp("notebook-job")
    sets = {"noise": base / "noise", "smooth": base / "smooth"}
    write_images(sets["noise"], 7, seed=1)
    write_images(sets["smooth"], 6, seed=2, kind="smooth")
    output = run_tiny_job(tiny_model_path, {k: str(v) for k, v in sets.items()}, base / "out")
    write_sampling_sibling(output)
    return output


def write_sampling_sibling(output: Path) -> None:
    """A stand-in for the same job run with ``analysis.sampling: active`` in ``<output>-active``
    (differentiation.ipynb draws every sampling mode it finds there): the results relabelled,
    with halved differentiation and the variables the unit-statistics pass adds."""
    import numpy as np
    import xarray as xr

    with xr.open_dataset(output / "differentiation.nc") as ds:
        sibling = ds.load()
    sibling["differentiation"] = sibling["differentiation"] / 2
    shape = (sibling.sizes["substrate"], sibling.sizes["layer"])
    sibling["active_units"] = (("substrate", "layer"), np.ones(shape, dtype=np.int64))
    sibling.attrs["sampling_mode"] = "active"
    (output.parent / f"{output.name}-active").mkdir()
    sibling.to_netcdf(output.parent / f"{output.name}-active" / "differentiation.nc")


REFERENCE_JOBS = {
    # the seed reproduction's naming: a generated noise set called white_noise
    "generated_white_noise": (
        {"smooth": "smooth", "white_noise": {"generate": "noise", "count": 6, "size": 32, "seed": 0}},
        "reference set: 'white_noise' (generated as noise: generate: noise in the job's spec)",
    ),
    # no set generated as noise and none named like it: the ratio figure is skipped
    "no_noise_set": (
        {"smooth": "smooth", "textures": "textures"},
        "reference set: none: no set of ['smooth', 'textures'] was generated as noise",
    ),
}


@pytest.fixture(scope="module", params=sorted(REFERENCE_JOBS))
def reference_job(request, tmp_path_factory, tiny_model_path):
    """(case, output folder) of a tiny job from :data:`REFERENCE_JOBS`."""
    base = tmp_path_factory.mktemp(f"notebook-{request.param}")
    write_images(base / "smooth", 6, seed=2, kind="smooth")
    write_images(base / "textures", 5, seed=4)
    sets, _ = REFERENCE_JOBS[request.param]
    sets = {name: str(base / entry) if isinstance(entry, str) else entry for name, entry in sets.items()}
    return request.param, run_tiny_job(tiny_model_path, sets, base / "out")


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A 'python3' kernel spec running this interpreter, first on JUPYTER_PATH (idempotent)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (daskdiff tests)",
        "language": "python",
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield "python3"


def with_output(nb: nbformat.NotebookNode, output: Path, **parameters: str) -> nbformat.NotebookNode:
    """Replace the ``output = ...`` line of the parameters cell (the only such cell), and the
    ``name = ...`` line of each of ``parameters`` (values given as strings)."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    for name, value in {"output": str(output), **parameters}.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cells[0].source, count=1, flags=re.M)
        assert n == 1, f"the parameters cell must set {name} = ..."
        cells[0].source = source
    return nb


def test_notebooks_exist_and_are_clean():
    assert {p.name for p in NOTEBOOKS} >= {"differentiation.ipynb", "activations.ipynb", "image_sets.ipynb", "movies.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: the first cell must be the parameters cell"
        default = "../output/movies-demo" if path.name in ON_MOVIES else "../output/demo"
        assert f'output = "{default}"' in code[0].source
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} is committed with outputs"


def execute(path: Path, output: Path, kernel_name: str, **parameters: str) -> list:
    """Run the notebook at ``path`` on a job's ``output`` (and other ``parameters``) top to bottom; its cells' outputs.

    Fails on any cell error, on fewer than 2 figures, and on a warning printed to stderr.
    """
    nb = with_output(nbformat.read(path, as_version=4), output, **parameters)
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable"))
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=120, resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 2, f"{path.name} displayed {len(figures)} figure(s)"
    warnings = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr" and "Warning" in o.text]
    assert not warnings, f"{path.name} warned: {warnings}"
    return outputs


@pytest.mark.parametrize("path", ON_ANY_JOB, ids=[p.stem for p in ON_ANY_JOB])
def test_notebook_runs(path, job_output, kernel_name):
    outputs = execute(path, job_output, kernel_name)
    if path.name == "differentiation.ipynb":  # a folder of noise images, found by its name
        printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
        assert "reference set: 'noise' (its name contains 'noise')" in printed, printed
        assert "sampling modes found: ['random', 'active']" in printed, printed
        assert "active active units per layer: {'conv1': 1," in printed, printed


def test_differentiation_notebook_finds_or_skips_its_reference(reference_job, kernel_name):
    """A noise set named white_noise is found from the spec the results keep; without one the
    ratio figure is skipped with a note, and the notebook still runs to the end."""
    case, output = reference_job
    path = next(p for p in NOTEBOOKS if p.name == "differentiation.ipynb")
    printed = "".join(o.text for o in execute(path, output, kernel_name) if o.output_type == "stream" and o.name == "stdout")
    assert REFERENCE_JOBS[case][1] in printed, printed
    skipped = "skipped: no reference set" in printed
    assert skipped == (case == "no_noise_set"), printed
    if case == "no_noise_set":
        assert "no reference set: differences from the first set, 'smooth'" in printed


@pytest.fixture(scope="module")
def movie_job(tmp_path_factory, tiny_model_path):
    """Output folder of a tiny movie job: a grating and its scrambled control, both measures, the input layer."""
    grating = {"generate": "gratings", "size": 32, "n_frames": 40, "fps": 10, "temporal_frequency": 0.7, "orientation": 30}
    sets = {"grating": grating, "scrambled": {"generate": "scrambled", "source": dict(grating), "seed": 1}}
    return run_tiny_job(tiny_model_path, sets, tmp_path_factory.mktemp("notebook-movies") / "out",
                        analysis__measures=["images", "spectral"], analysis__spectral={"state_length": 1.0},
                        model__layers=["input", "conv1", "conv2", "fc1"])


def test_movies_notebook_on_a_movie_job(movie_job, kernel_name):
    """movies.ipynb on spectral results: by layer, the scrambled ratio, input beside layers, states."""
    path = next(p for p in NOTEBOOKS if p.name == "movies.ipynb")
    outputs = execute(path, movie_job, kernel_name)
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "grating: control 'scrambled'" in printed, printed  # its own control, by the source movie.json records
    assert "grating: layer / input (units, 5 units" in printed and "): input 1" in printed, printed
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 3


def test_compare_notebook_on_a_movie_job(movie_job, kernel_name, tmp_path):
    """compare.ipynb on the tiny movie job and the shipped synthetic table: 'grating' mapped to the
    table's 'gratings', 'scrambled' matched by name, the table's other stimuli listed, two figures."""
    path = next(p for p in NOTEBOOKS if p.name == "compare.ipynb")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("grating: gratings\n")
    outputs = execute(path, movie_job, kernel_name, stimulus_map=str(mapping))
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "matched: ['grating -> gratings', 'scrambled -> scrambled']" in printed, printed
    assert "warning: compared on 2 matched stimuli; unmatched: table stimuli ['natural', 'noise', 'dots'" in printed, printed


@pytest.mark.cluster
@pytest.mark.vgg16
def test_movies_demo_spec_runs_and_the_movies_notebook_reads_it(tmp_path, kernel_name):
    """jobs/movies-demo.yaml as a user runs it (``daskdiff run``, its own LocalCluster, VGG16 with
    the spec's loud fallback to random weights offline), then movies.ipynb on its output. The
    movies are cut to 3 s (24 frames, 3 windows of 1 s) for the suite's time; every other key is
    the file's."""
    import subprocess

    import xarray as xr
    import yaml

    entries = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "movies-demo.yaml").read_text())
    for movie in (entries["image_sets"]["natural"], entries["image_sets"]["scrambled"]["source"]):
        assert movie["duration"] == 6
        movie["duration"] = 3
    spec = tmp_path / "movies-demo.yaml"
    spec.write_text(yaml.safe_dump(entries))
    out = tmp_path / "movies-demo"
    done = subprocess.run([str(Path(sys.executable).parent / "daskdiff"), "run", str(spec), "--output", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 48 images in 2 set(s), 0 skipped" in done.stdout, done.stdout[-2000:]
    with xr.open_dataset(out / "differentiation.nc") as ds:
        assert list(ds["fps"].values) == [8.0, 8.0] and list(ds["spectral_windows"].values) == [3, 3]
        assert list(ds["layer"].values) == ["input", "block1_conv2", "block3_conv3", "block5_conv3", "fc2"]
        for name in ("differentiation", "spectral_differentiation"):
            assert int(ds[name].notnull().sum()) > 0.9 * ds[name].size, name
    path = next(p for p in NOTEBOOKS if p.name == "movies.ipynb")
    printed = "".join(o.text for o in execute(path, out, kernel_name) if o.output_type == "stream" and o.name == "stdout")
    assert "natural: control 'scrambled'" in printed, printed
