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


@pytest.mark.parametrize("quiet, closing, printed", [(False, True, True), (True, False, True), (True, True, False)])
def test_a_heartbeat_cut_by_its_workers_close_prints_nothing(caplog, monkeypatch, quiet, closing, printed):
    """distributed's real heartbeat, cut as a worker's close cuts it (its connection pool closing:
    ``CommClosedError``), logs a traceback; a worker set up by daskdiff drops it while closing
    only. The first case is the reference: the same heartbeat without daskdiff's filters."""
    import asyncio
    import logging

    from distributed import Scheduler, Worker
    from distributed.comm.core import CommClosedError
    from distributed.core import Status

    from daskdiff.pipeline.workers import leave_interrupts_to_the_client

    async def cut() -> None:
        raise CommClosedError("ConnectionPool closing.")

    async def scenario() -> None:
        async with Scheduler(host="127.0.0.1", dashboard_address=":0") as s, Worker(s.address, nthreads=1) as w:
            if quiet:
                await asyncio.to_thread(leave_interrupts_to_the_client, w)  # not the main thread: pytest keeps its Ctrl-C
            monkeypatch.setattr(w.scheduler, "heartbeat_worker", lambda **kw: cut(), raising=False)
            w.status = Status.closing if closing else Status.running
            with caplog.at_level(logging.ERROR, logger="distributed.worker"):
                await w.heartbeat()
            w.status = Status.running
            monkeypatch.undo()

    loggers = [logging.getLogger(name) for name in ("distributed.worker", "distributed.worker.state_machine")]
    before = [list(log.filters) for log in loggers]
    try:
        asyncio.run(scenario())
    finally:
        for log, filters in zip(loggers, before):
            log.filters[:] = filters
    heartbeat = [r for r in caplog.records if "Failed to communicate with scheduler during heartbeat" in r.getMessage()]
    assert bool(heartbeat) == printed, caplog.text


SYNC_INTERRUPTED = r"""
import os, signal, sys, threading, time, asyncio
from distributed.utils import LoopRunner, sync
if sys.argv[1] == "quiet":
    from daskdiff.pipeline.cluster import quiet_cancel_before_start
    quiet_cancel_before_start()
runner = LoopRunner(asynchronous=False)
runner.start()
runner.loop.add_callback(time.sleep, 0.5)  # the loop busy: sync's coroutine has not started when Ctrl-C lands
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    sync(runner.loop, asyncio.sleep, 5)
except KeyboardInterrupt:
    print("interrupted")
time.sleep(1)  # the loop runs sync's cancel callback
runner.stop()
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_ctrl_c_before_a_sync_call_starts_prints_no_traceback(quiet):
    """A real SIGINT while ``distributed.utils.sync`` waits for a coroutine that has not started:
    its cancel callback raises ``NameError`` and tornado prints the traceback (the reference,
    without daskdiff's filter), which :func:`quiet_cancel_before_start` drops."""
    run = subprocess.run([sys.executable, "-c", SYNC_INTERRUPTED, "quiet" if quiet else "plain"], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "interrupted\n"), run.stderr
    assert ("sync.<locals>.cancel" in run.stderr and "NameError" in run.stderr) != quiet, run.stderr
