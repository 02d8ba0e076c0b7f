"""Clusters as users start them: ``dask scheduler`` and ``dask worker`` processes, ``daskdiff run``.

Each job's ``differentiation.nc`` must equal, bit for bit in every numeric variable, that of the
same spec on a one-thread LocalCluster:

- a 2-thread and a 4-thread worker (the tasks of each share one process's netCDF/HDF5 library);
- two jobs with the same set names, other images and seeds, run at once on one scheduler;
- the only worker SIGKILLed (under its nanny, which starts a new one) when the first shard
  appears on disk, and the new one again when the first partial result appears;
- a scheduler listening on every interface, reached at this machine's own non-loopback address
  (one warning that plain TCP is unencrypted, and how to use TLS) and at 127.0.0.1 (none).

"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
import yaml
from distributed import Client

from daskdiff.pipeline.job import run_job

from conftest import write_images
from jobtools import local_cluster, tiny_spec

pytestmark = pytest.mark.cluster

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONFAULTHANDLER="1")
DASK = [str(Path(sys.executable).parent / "dask")]
DASKDIFF = str(Path(sys.executable).parent / "daskdiff")
OVERRIDES = {"extraction__batch_size": 2, "extraction__shard_size": 2, "analysis__repeats": 12}
"""7 + 6 images in shards of 2 (7 shards), 20 differentiation tasks: room to kill a worker mid-stage."""


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_model_path):
    """Specs 'a' and 'b' (the same set names, other images and seeds) and their results on a
    one-thread LocalCluster."""
    root = tmp_path_factory.mktemp("cli-cluster")
    images = {"a": (1, 2, 3), "b": (7, 8, 11)}  # image seeds of 'noisy' and 'smooth', analysis seed
    specs, reference = {}, {}
    with local_cluster(1) as cluster, Client(cluster) as client:
        for name, (noisy, smooth, seed) in images.items():
            write_images(root / name / "noisy", 7, seed=noisy)
            write_images(root / name / "smooth", 6, seed=smooth, kind="smooth")
            sets = {s: str(root / name / s) for s in ("noisy", "smooth")}
            spec = tiny_spec(tiny_model_path, sets, root / name / "reference", analysis__seed=seed, **OVERRIDES)
            specs[name] = root / f"{name}.yaml"
            specs[name].write_text(yaml.safe_dump(spec.model_dump(mode="json")))
            result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
            reference[name] = xr.load_dataset(result.path)
    return root, specs, reference


def assert_same_results(path, reference):
    """Every numeric variable of the results file at ``path`` equals ``reference``'s exactly."""
    got = xr.load_dataset(path)
    numeric = [name for name, var in reference.variables.items() if var.dtype.kind in "biuf"]
    assert "differentiation" in numeric and "rdm" in numeric
    assert not np.all(np.isnan(reference["differentiation"].values))
    for name in numeric:
        np.testing.assert_array_equal(got[name].values, reference[name].values, err_msg=name)
    np.testing.assert_array_equal(got["image_path"].values, reference["image_path"].values)


@contextlib.contextmanager
def scheduler(folder: Path):
    """A ``dask scheduler`` process; yields its scheduler file."""
    sfile = folder / "scheduler.json"
    sfile.unlink(missing_ok=True)
    with open(folder / "scheduler.log", "ab") as log:
        proc = subprocess.Popen([*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)], env=ENV, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not (sfile.exists() and sfile.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.1)
        yield sfile
    finally:
        stop(proc)


@contextlib.contextmanager
def worker(sfile: Path, nthreads: int, log: Path):
    """A ``dask worker --nthreads N`` (a nanny and its worker process); yields the worker process's pid."""
    n_before = len(_workers(sfile))
    with open(log, "ab") as out:
        proc = subprocess.Popen([*DASK, "worker", "--scheduler-file", str(sfile), "--nthreads", str(nthreads), "--no-dashboard", "--host", "127.0.0.1"], env=ENV, stdout=out, stderr=out)
    try:
        with Client(scheduler_file=str(sfile)) as client:
            client.wait_for_workers(n_before + 1, timeout=120)
            pids = client.run(os.getpid)
        yield next(pid for pid in pids.values() if _parent(pid) == proc.pid)  # the nanny runs in the CLI process
    finally:
        stop(proc)


def _workers(sfile: Path) -> dict:
    with Client(scheduler_file=str(sfile)) as client:
        return client.scheduler_info()["workers"]


def _parent(pid: int) -> int:
    """The pid of the process that started process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def daskdiff_run(spec: Path, sfile: Path, output: Path) -> subprocess.Popen:
    return subprocess.Popen([DASKDIFF, "run", str(spec), "--scheduler-file", str(sfile), "--output", str(output), "--no-progress"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(run: subprocess.Popen, *logs: Path) -> str:
    """The run's output, once it exited 0 (else fail with it and the tails of ``logs``)."""
    out, _ = run.communicate(timeout=400)
    tails = "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    assert run.returncode == 0, f"daskdiff run exited {run.returncode}:\n{out[-4000:]}{tails}"
    return out


@pytest.fixture(scope="module")
def threaded_cluster(jobs):
    """A ``dask scheduler`` with a 2-thread and a 4-thread ``dask worker``; yields the scheduler
    file and the workers' logs."""
    root = jobs[0]
    logs = [root / "worker-2-threads.log", root / "worker-4-threads.log"]
    with scheduler(root) as sfile, worker(sfile, 2, logs[0]), worker(sfile, 4, logs[1]):
        yield sfile, logs


def test_many_thread_workers_give_the_one_thread_results(jobs, threaded_cluster):
    root, specs, reference = jobs
    sfile, logs = threaded_cluster
    out = finished(daskdiff_run(specs["a"], sfile, root / "threads"), *logs)
    assert "done: 13 images in 2 set(s)" in out
    assert_same_results(root / "threads" / "differentiation.nc", reference["a"])
    with Client(scheduler_file=str(sfile)) as client:
        threads = {w["nthreads"]: w["id"] for w in client.scheduler_info()["workers"].values()}
        executed = client.run(lambda dask_worker: (dask_worker.state.nthreads, dask_worker.state.executed_count))
    assert sorted(threads) == [2, 4]
    assert all(count > 0 for _, count in executed.values()), f"a worker ran no task: {executed}"
    assert not any("killed by signal" in log.read_text() for log in logs)


def test_two_jobs_with_the_same_set_names_at_once_on_one_scheduler(jobs, threaded_cluster):
    root, specs, reference = jobs
    sfile, logs = threaded_cluster
    runs = {name: daskdiff_run(specs[name], sfile, root / f"shared-{name}") for name in ("a", "b")}
    for run in runs.values():
        finished(run, *logs)
    for name in ("a", "b"):
        assert_same_results(root / f"shared-{name}" / "differentiation.nc", reference[name])
    with pytest.raises(AssertionError):  # the two jobs' results differ: the test compares something
        assert_same_results(root / "shared-a" / "differentiation.nc", reference["b"])


def _kill_when(pattern: str, out: Path, run: subprocess.Popen, pid: int, total: int, log: Path) -> None:
    """SIGKILL process ``pid`` as soon as a file matching ``pattern`` is in ``out``; check that
    fewer than ``total`` such files were there (the stage was not over)."""
    while not (found := list(out.glob(pattern))) and run.poll() is None:
        time.sleep(0.005)
    if not found:
        finished(run, log)  # the job ended first: fails with its output if it failed
    os.kill(pid, signal.SIGKILL)
    assert 0 < len(found) < total, f"the worker was killed when {len(found)} of {total} {pattern} existed: not mid-stage"


def _restarted(sfile: Path, old: int) -> int:
    """The pid of the worker process the nanny started after ``old`` was killed."""
    deadline = time.monotonic() + 120
    with Client(scheduler_file=str(sfile)) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the scheduler may still list the dead worker
                pids = set(client.run(os.getpid).values()) - {old}
                if pids:
                    return pids.pop()
            time.sleep(0.1)
    raise AssertionError(f"no new worker process after {old} was killed")


def test_only_worker_killed_mid_extraction_and_again_mid_differentiation(jobs, tmp_path):
    root, specs, reference = jobs
    out, log = tmp_path / "out", tmp_path / "worker.log"
    with scheduler(tmp_path) as sfile, worker(sfile, 1, log) as first:
        run = daskdiff_run(specs["a"], sfile, out)
        _kill_when("activations/*/shard-*.nc", out, run, first, 7, log)
        second = _restarted(sfile, first)
        _kill_when("partial/*.npz", out, run, second, 20, log)
        finished(run, log)
    text = log.read_text()
    assert f"Worker process {first} was killed by signal 9" in text and f"Worker process {second} was killed by signal 9" in text
    assert_same_results(out / "differentiation.nc", reference["a"])


def _own_address() -> str:
    """A non-loopback IPv4 address of one of this machine's own interfaces (never another host's)."""
    found = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family == socket.AF_INET and not a.address.startswith("127.")]
    assert found, "this machine has no non-loopback IPv4 address"
    return found[0]


def test_plain_tcp_beyond_loopback_gets_one_tls_warning_and_loopback_none(jobs, tmp_path):
    """``dask scheduler --host 0.0.0.0``: ``daskdiff run --scheduler tcp://<this machine's own
    address>`` says, in one line, that the connection is unencrypted and how to use TLS; the same
    scheduler at ``tcp://127.0.0.1`` gets no such line. Both jobs give the reference results."""
    root, specs, reference = jobs
    sfile, log = tmp_path / "scheduler.json", tmp_path / "worker.log"
    with open(tmp_path / "scheduler.log", "ab") as out:
        proc = subprocess.Popen([*DASK, "scheduler", "--host", "0.0.0.0", "--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)],
                                env=ENV, stdout=out, stderr=out)
    outputs = {}
    try:
        deadline = time.monotonic() + 60
        while not (sfile.exists() and sfile.stat().st_size):
            assert proc.poll() is None and time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        port = int(yaml.safe_load(sfile.read_text())["address"].rsplit(":", 1)[1])
        with worker(sfile, 1, log):
            for host in (_own_address(), "127.0.0.1"):
                run = subprocess.Popen([DASKDIFF, "run", str(specs["a"]), "--scheduler", f"tcp://{host}:{port}", "--output",
                                        str(tmp_path / host), "--no-progress"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                outputs[host] = finished(run, log)
                assert_same_results(tmp_path / host / "differentiation.nc", reference["a"])
    finally:
        stop(proc)

    def about_tls(out):
        return [line for line in out.splitlines() if "unencrypted" in line or "TLS" in line]

    warned = about_tls(outputs[_own_address()])
    assert len(warned) == 1, outputs[_own_address()]
    assert warned[0].startswith(f"warning: --scheduler tcp://{_own_address()}:{port} is a plain tcp:// connection beyond this machine")
    assert "unencrypted" in warned[0] and "--protocol tls" in warned[0] and "tls:// address and cluster.security" in warned[0]
    assert about_tls(outputs["127.0.0.1"]) == []
