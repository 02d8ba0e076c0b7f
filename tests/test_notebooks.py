"""Every notebook in notebooks/ runs top to bottom on the output of a tiny job made here.

The job (tiny Keras model, two small image sets, one of them named 'noise' so the notebooks'
default reference exists) runs on a LocalCluster with one worker process; each notebook's
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
from distributed import Client, LocalCluster
from nbclient import NotebookClient

from conftest import write_images
from daskdiff.pipeline.job import run_job
from jobtools import tiny_spec

pytestmark = pytest.mark.cluster

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def job_output(tmp_path_factory, tiny_model_path):
    """Output folder of a tiny job: sets 'noise' (7 noise images) and 'smooth' (6 gradients)."""
    base = tmp_path_factory.mktemp("notebook-job")
    sets = {"noise": base / "noise", "smooth": base / "smooth"}
    write_images(sets["noise"], 7, seed=1)
    write_images(sets["smooth"], 6, seed=2, kind="smooth")
    spec = tiny_spec(tiny_model_path, {k: str(v) for k, v in sets.items()}, base / "out")
    cluster = LocalCluster(n_workers=1, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with cluster, Client(cluster) as client:
        result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
    return result.path.parent


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


def with_output(nb: nbformat.NotebookNode, output: Path) -> nbformat.NotebookNode:
    """Replace the ``output = ...`` line of the parameters cell (the only such cell)."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    source, n = re.subn(r"^output = .*$", f"output = {str(output)!r}", cells[0].source, count=1, flags=re.M)
    assert n == 1, "the parameters cell must set output = ..."
    cells[0].source = source
    return nb


def test_notebooks_exist_and_are_clean():
    assert {p.name for p in NOTEBOOKS} >= {"differentiation.ipynb", "activations.ipynb", "image_sets.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: the first cell must be the parameters cell"
        assert 'output = "../output/demo"' in code[0].source
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} is committed with outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, job_output, kernel_name):
    nb = with_output(nbformat.read(path, as_version=4), job_output)
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable"))
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=120, resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 2, f"{path.name} displayed {len(figures)} figure(s)"
    warnings = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr" and "Warning" in o.text]
    assert not warnings, f"{path.name} warned: {warnings}"
