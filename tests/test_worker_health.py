"""Workers that cannot work, as users meet them (issue 26, items 8 and 11).

Everything is real: ``daskdiff run`` processes and ``daskdiff.cli.main``, LocalClusters that
daskdiff starts with ``cluster.memory_limit`` below what a worker holds, a worker process frozen
with SIGSTOP mid-job. A worker's baseline is measured here, independently of daskdiff's estimate: the RSS of a worker
process started as daskdiff starts it, after building the model and a forward pass.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
import yaml
from distributed import Client, LocalCluster

from daskdiff.cli import main
from daskdiff.pipeline.job import run_job
from jobtools import tiny_spec

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
PAUSE = 0.8  # distributed.worker.memory.pause, Dask's default


def _worker_rss(model_path: str) -> int:
    """In a worker: build the tiny model as extraction does, run a batch through it, return this process's RSS."""
    from daskdiff.model.build import cached_model, input_size, ModelSpec

    model = cached_model(ModelSpec(name=model_path, weights="file"))
    h, w = input_size(model)
    model.predict_on_batch(np.zeros((4, h, w, 3), "float32"))
    return psutil.Process().memory_info().rss


@pytest.fixture(scope="module")
def baseline(tiny_model_path):
    """What one worker of a tiny-model job holds before its first task's data: measured."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      preload=["daskdiff.pipeline.warm"]) as cluster, Client(cluster) as client:
        return client.submit(_worker_rss, tiny_model_path, pure=False).result()


@pytest.fixture
def sets(image_folders):
    return {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}


def _job(tmp_path, model, sets, cluster, name="job.yaml", **overrides):
    spec = tiny_spec(model, sets, tmp_path / "out", cluster=cluster, **overrides)
    job = tmp_path / name
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return job


def _run(*args, env=ENV):
    """``daskdiff ARGS`` in its own process group (all its processes can be stopped at the end)."""
    return subprocess.Popen([str(BIN / "daskdiff"), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def _finish(proc, timeout):
    """``(stdout, stderr)`` of ``proc``; fail, after stopping its process group, if it runs past ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"daskdiff run still ran after {timeout} s (a hang):\n{out[-2000:]}\n{err[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # worker processes left behind, if any
        except ProcessLookupError:
            pass


def _error_line(err: str) -> str:
    """The one error line; no traceback through daskdiff's code (Dask's own loggers may log one of
    theirs while nannies kill workers in a loop: tornado's "exception never retrieved" of a
    scheduler's send to a removed worker, outside daskdiff's hands)."""
    lines = [line for line in err.splitlines() if line.startswith("daskdiff run: error: ")]
    ours = [line for line in err.splitlines() if line.strip().startswith("File ") and f"{os.sep}daskdiff{os.sep}" in line]
    assert not ours and len(lines) == 1, err[-4000:]
    return lines[0]


def _gb(text: str, before: str) -> float:
    """The size in GB (or MB) written right after ``before`` in ``text``."""
    match = re.search(re.escape(before) + r"~?([\d.]+) ?(GB|MB)", text)
    assert match, f"no size after {before!r} in: {text}"
    return float(match.group(1)) * (1.0 if match.group(2) == "GB" else 1e-3)


# ---------------------------------------------------------------- item 8: a memory limit below a worker's baseline

@pytest.mark.parametrize("short", [1.15, 2.0], ids=["paused", "killed"])
def test_a_memory_limit_below_a_workers_baseline_is_refused_before_any_cluster(tmp_path, tiny_model_path, sets, baseline, capsys, short):
    """``cluster.memory_limit`` 1.15 times too small (the worker would sit above Dask's pause
    fraction) or half of what a worker holds (its nanny would kill it in a loop): ``--dry-run``
    refuses it in one line naming the key, the baseline and what to set; nothing is written."""
    limit = int(baseline / PAUSE / short) if short < 2 else int(baseline / short)
    job = _job(tmp_path, tiny_model_path, sets, {"memory_limit": str(limit), "n_workers": 1})
    assert main(["run", str(job), "--dry-run"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"daskdiff run: error: cluster.memory_limit {limit} gives each worker ")
    assert _gb(line, "a worker holds ") == pytest.approx(baseline / 1e9, rel=0.15)
    advised = _gb(line, "set cluster.memory_limit to at least ")
    assert advised * 1e9 * PAUSE >= baseline, "the advised limit would pause the worker too"
    assert not (tmp_path / "out").exists()


def test_a_slurm_job_too_small_for_its_worker_processes_is_refused(tmp_path, tiny_model_path, sets, baseline, capsys):
    """On SLURM a worker's memory is the job's ``memory`` over its ``processes``: too little per
    process is refused in one line naming cluster.slurm.memory and cluster.slurm.processes."""
    per_process = int(baseline / PAUSE / 1.15)
    job = _job(tmp_path, tiny_model_path, sets, {"kind": "slurm", "slurm": {"cores": 2, "processes": 2, "memory": str(2 * per_process)}})
    assert main(["run", str(job), "--dry-run"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("daskdiff run: error: cluster.slurm memory / processes gives each worker ")
    assert _gb(line, "gives each worker ") * 1e9 == pytest.approx(per_process, rel=0.01)
    total = _gb(line, "set cluster.slurm.memory to at least ")
    assert total * 1e9 / 2 * PAUSE >= baseline and "for each of its 2 worker processes), or fewer cluster.slurm.processes" in line
    assert not (tmp_path / "out").exists()


def test_the_advised_memory_limit_runs(tmp_path, tiny_model_path, sets, baseline, capsys):
    """The limit a refusal advises is enough: the job runs with it."""
    job = _job(tmp_path, tiny_model_path, sets, {"memory_limit": str(int(baseline / PAUSE / 1.15)), "n_workers": 1})
    assert main(["run", str(job), "--dry-run"]) == 2
    advised = re.search(r"set cluster\.memory_limit to at least ([\d.]+GB)", capsys.readouterr().err).group(1)
    job = _job(tmp_path, tiny_model_path, sets, {"memory_limit": advised, "n_workers": 1, "start_timeout": 120}, "advised.yaml")
    out, err = _finish(_run("run", job, "--no-progress"), 300)
    assert "done: 13 images in 2 set(s)" in out, err[-3000:]
    assert "Pausing worker" not in err


@pytest.mark.timeout(500)
@pytest.mark.parametrize("short", [1.15, 2.0], ids=["paused", "killed"])
def test_a_run_with_too_little_worker_memory_ends_in_one_line_not_a_hang(tmp_path, tiny_model_path, sets, baseline, short):
    """Run anyway (``--force``): workers that Dask pauses from their start, or that their nannies
    kill and restart in a loop, end the job in one line naming cluster.memory_limit, what a worker
    held and what to set; no hang, no traceback."""
    limit = int(baseline / PAUSE / short) if short < 2 else int(baseline / short)
    job = _job(tmp_path, tiny_model_path, sets, {"memory_limit": str(limit), "n_workers": 2, "start_timeout": 400})
    started = time.monotonic()
    # Two restarts end the job (daskdiff.health.restarts-before-work, 3 by default): still a loop, one
    # worker start shorter. An abandoned job's cluster gets daskdiff.cluster.interrupt-timeout (3 s),
    # not close-timeout, made long here: a nanny caught restarting its worker would hold the close
    # for all of it, twice, before the line (with the default 30 s: 70 s after the last restart).
    # The limits are set from the baseline of a spawned worker (the fixture's); a worker forked from
    # daskdiff's forkserver starts below it, sharing the server's pages (daskdiff.pipeline.forkserver),
    # and is paused where a spawned one is killed: the workers are spawned here, as a restarted one is.
    proc = _run("run", job, "--force", "--no-progress", env=ENV | {"DASK_DASKDIFF__HEALTH__RESTARTS_BEFORE_WORK": "2",
                                                                   "DASK_DASKDIFF__CLUSTER__CLOSE_TIMEOUT": "150s",
                                                                   "DASK_DASKDIFF__WORKER_FORKSERVER": "False"})
    out, err = _finish(proc, 300)  # a job that waited out start_timeout (400 s) fails here, as a hang
    line = _error_line(err)
    assert proc.returncode == 2
    assert f"cluster.memory_limit {limit}" in line
    if short < 2:
        assert line.startswith("daskdiff run: error: every worker is paused, so no task can run: worker tcp://127.0.0.1:")
        assert _gb(line, "holds ") * 1e9 >= PAUSE * limit
        assert "is paused: it holds" in out  # each worker, said as it was found
    else:
        assert line.startswith("daskdiff run: error: workers were killed and restarted for exceeding their memory limit"), line
        said = re.search(r"\((\d+) restarts? reported, up to ", line)
        assert said, line
        assert int(said[1]) == out.count("its nanny killed and restarted it") >= 1  # the count said is the restarts reported
    assert _gb(line, "set cluster.memory_limit to at least ") * 1e9 * PAUSE >= baseline
    assert time.monotonic() - started < 150, "the job waited out cluster.start_timeout or close-timeout instead of noticing"
    assert "--force: running although cluster.memory_limit" in out


# ---------------------------------------------------------------- item 11: a frozen worker

OVERRIDES = {"extraction__batch_size": 2, "extraction__shard_size": 2, "analysis__repeats": 12}
"""7 + 6 images in shards of 2 (7 shards), 20 differentiation tasks: a job long enough to freeze a worker in."""


def _lines(stream, into: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(420)
def test_a_frozen_worker_is_reported_and_the_job_finishes_on_the_others(tmp_path, tiny_model_path, sets):
    """SIGSTOP one worker of daskdiff's 2-worker LocalCluster while it has tasks of the job: the
    job says which worker stopped answering and for how long, and finishes on the other worker
    (and the one its nanny starts) with the results of a clean run. ``daskdiff.worker-ttl`` is set
    as a user sets Dask config, in the environment, to keep the test short."""
    clean = tiny_spec(tiny_model_path, sets, tmp_path / "clean", **OVERRIDES)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:  # the reference in this process: no worker process to start
        reference = xr.load_dataset(run_job(clean, Path("."), client=client, progress=False, echo=lambda *a: None).path)

    job = _job(tmp_path, tiny_model_path, sets, {"n_workers": 2}, **OVERRIDES)
    proc = _run("run", job, "--no-progress", env=dict(ENV, DASK_DASKDIFF__WORKER_TTL="5s"))
    out: list[str] = []
    reader = _lines(proc.stdout, out)
    stopped = None
    try:
        deadline = time.monotonic() + 240
        while not (found := [line for line in out if line.startswith("started LocalCluster")]):
            assert proc.poll() is None and time.monotonic() < deadline, f"no cluster started:\n{''.join(out)}{proc.stderr.read()}"
            time.sleep(0.05)
        address = re.search(r" at (tcp://\S+);", found[0]).group(1)
        with Client(address, timeout=30) as spy:
            pids = spy.run(os.getpid)
            while not (busy := [w for w, keys in spy.processing().items() if any("daskdiff-" in str(k) for k in keys)]):
                assert proc.poll() is None and time.monotonic() < deadline, "the job ended before a worker could be frozen"
                time.sleep(0.01)
            victim, stopped = busy[0], pids[busy[0]]
            os.kill(stopped, signal.SIGSTOP)
            frozen_at = time.monotonic()
        proc.wait(timeout=300)
    finally:
        if stopped is not None and psutil.pid_exists(stopped):
            os.kill(stopped, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        reader.join(timeout=30)
    text, err = "".join(out), proc.stderr.read()
    assert proc.returncode == 0, f"{text[-3000:]}\n{err[-3000:]}"
    said = [line for line in out if line.startswith(f"warning: worker {victim} stopped answering: no heartbeat for ")]
    assert len(said) == 1, text
    silent = int(re.search(r"no heartbeat for (\d+) s", said[0]).group(1))
    assert 5 <= silent <= time.monotonic() - frozen_at
    assert "its tasks run on the other workers" in said[0]
    assert "done: 13 images in 2 set(s)" in text
    got = xr.load_dataset(tmp_path / "out" / "differentiation.nc")
    numeric = [name for name, var in reference.variables.items() if var.dtype.kind in "biuf"]
    assert "differentiation" in numeric and not np.all(np.isnan(reference["differentiation"].values))
    for name in numeric:
        np.testing.assert_array_equal(got[name].values, reference[name].values, err_msg=name)
