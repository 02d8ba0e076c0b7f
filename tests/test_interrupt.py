"""Ctrl-C in a terminal (issue 22, item 5), as users press it: ``daskdiff run`` in a session of
its own, SIGINT to its whole process group (what a terminal sends: the LocalCluster's worker
processes get it too) or to the client alone. Either ends the job within seconds with one line,
no worker traceback or warning, no worker process left and no file half-written; the same
command then resumes to the results of a job that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import xarray as xr
import yaml
from distributed import Client, LocalCluster

from conftest import write_images
from daskdiff.io.layout import RESULTS_FILE
from daskdiff.pipeline.job import run_job
from jobtools import assert_same_results, tiny_spec

pytestmark = [pytest.mark.cluster, pytest.mark.subprocess]

DASKDIFF = Path(sys.executable).parent / "daskdiff"
LINE = "daskdiff run: interrupted; re-run the same command to resume (what was written so far is kept)"
BOUND = 15
"""Seconds from SIGINT to the end of the process: 3 s to stop the workers
(``daskdiff.cluster.interrupt-timeout``) and a margin for a loaded 2-core machine; it took 25 to
30 s before (workers waited for their task, then were killed after 24 s)."""


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt-sets")
    write_images(root / "noisy", 12, seed=1)
    write_images(root / "smooth", 12, seed=2, kind="smooth")
    return {"noisy": str(root / "noisy"), "smooth": str(root / "smooth")}


def _spec(model, sets, output):
    return tiny_spec(model, sets, output, cluster={"kind": "local", "n_workers": 2, "start_timeout": 240},
                     extraction={"batch_size": 1, "shard_size": 1})


@pytest.fixture(scope="module")
def reference(tiny_model_path, sets, tmp_path_factory):
    """The results of the job run through without interruption (on threads in this process)."""
    spec = _spec(tiny_model_path, sets, tmp_path_factory.mktemp("reference") / "out")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        return xr.load_dataset(run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None).path)


def _start(job: Path) -> subprocess.Popen:
    """``daskdiff run JOB`` in a session (and process group) of its own, as a terminal starts it,
    with Python's Ctrl-C handling whatever started pytest."""
    return subprocess.Popen([str(DASKDIFF), "run", str(job), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_extraction(proc: subprocess.Popen, output: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list((output / "activations").glob("*/shard-*.nc")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the job ended (rc {proc.returncode}) or stalled before its first shard:\n{out}\n{err[-3000:]}")
        time.sleep(0.05)


def _interrupt(tmp_path, tiny_model_path, sets, to):
    """Start the job, SIGINT ``to`` the process group or the client alone once extraction has
    started, and check how it ends; returns the job's spec file."""
    output = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_spec(tiny_model_path, sets, output).model_dump(mode="json")))
    proc = _start(job)
    try:
        _wait_for_extraction(proc, output)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2, workers  # the LocalCluster's two worker processes (and multiprocessing's helper)
        sent = time.monotonic()
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if "Event loop was unresponsive" not in line]  # a loaded machine's note
    assert (proc.returncode, lines) == (130, [LINE]), err
    assert took < BOUND, f"{took:.1f} s from SIGINT to exit\n{err}"
    _, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive, f"worker processes left: {alive}"
    assert not (output / RESULTS_FILE).exists(), out
    for shard in (output / "activations").glob("*/shard-*.nc"):  # under its final name, a file is whole
        xr.load_dataset(shard)
    return job


def test_ctrl_c_in_a_terminal_ends_the_job_in_seconds_with_one_line_and_a_re_run_resumes(tmp_path, tiny_model_path, sets, reference):
    job = _interrupt(tmp_path, tiny_model_path, sets, "group")
    output = tmp_path / "out"
    again = subprocess.run([str(DASKDIFF), "run", str(job), "--no-progress"], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming:" in again.stdout, again.stdout
    assert_same_results(xr.load_dataset(output / RESULTS_FILE), reference)


def test_sigint_to_the_client_alone_ends_the_job_in_seconds_with_one_line(tmp_path, tiny_model_path, sets):
    _interrupt(tmp_path, tiny_model_path, sets, "client")
