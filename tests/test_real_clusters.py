"""Clusters as people start them, driven through the ``daskdiff`` command (issue 13, items 4, 6, 7, 10).

Everything here is real: ``daskdiff run`` subprocesses, ``dask scheduler``/``dask worker`` CLI
processes, openssl-made certificates, SIGINT and SIGKILL. SLURM is dask-jobqueue's own
``SLURMCluster`` with a stand-in ``sbatch``/``scancel`` on ``PATH`` that run the job script it
writes on this machine (no SLURM needed); what that cannot show (queues, a real node) is not tested.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from daskdiff.errors import InputError, JobError
from daskdiff.io.layout import RESULTS_FILE
from daskdiff.pipeline.cluster import NO_DASHBOARD, _scheduler_lost, connect
from daskdiff.pipeline.spec_cluster import ClusterSection, SecuritySection
from jobtools import make_certificates, record_cluster_starts, tiny_spec

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
RESUME_HINT = "daskdiff run: interrupted; re-run the same command to resume (what was written so far is kept)"
TF_NOISE = re.compile(r"^([IWE]\d{4} \d+:\d+:[\d.]+ +\d+ \S+:\d+\]|WARNING: All log messages before absl)", re.M)


@pytest.fixture
def sets(image_folders):
    return {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """CA 'ca' signing client/scheduler/worker certificates; CA 'other' signing 'stranger'."""
    folder = tmp_path_factory.mktemp("certs")
    good, ca = make_certificates(folder, ["client", "scheduler", "worker"])
    bad, other = make_certificates(folder, ["stranger"], ca="other")
    return {**good, **bad, "ca": ca, "other": other}


def _security(certs, roles=True, **override):
    data = {"tls_ca_file": certs["ca"], "tls_client_cert": certs["client"][0], "tls_client_key": certs["client"][1]}
    if roles:
        for role in ("scheduler", "worker"):
            data[f"tls_{role}_cert"], data[f"tls_{role}_key"] = certs[role]
    return {**data, **override}


def _job(tmp_path, tiny_model_path, sets, cluster, name="job.yaml", **overrides):
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", cluster=cluster, **overrides)
    job = tmp_path / name
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return job


def _daskdiff(*args, env=ENV, **kwargs):
    """Start ``daskdiff ARGS`` as from a terminal (SIGINT not ignored, whatever started pytest)."""
    return subprocess.Popen([str(BIN / "daskdiff"), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def _wait_for_a_shard(proc, output, timeout=240):
    deadline = time.monotonic() + timeout
    while not list((output / "activations").glob("*/shard-*.nc")):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the job ended (rc {proc.returncode}) or stalled before its first shard:\n{out}\n{err[-3000:]}")
        time.sleep(0.05)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CliCluster:
    """``dask scheduler`` + ``dask worker`` (one thread) started by hand; stopped by their process ids."""

    def __init__(self, folder, tls=None, workers=1, dashboard=True, worker_args=()):
        self.file = Path(folder) / "scheduler.json"
        self.file.unlink(missing_ok=True)
        tls_args = ["--protocol", "tls", "--tls-ca-file", tls[0], "--tls-cert", tls[1], "--tls-key", tls[2]] if tls else []
        dash = ["--dashboard-address", "127.0.0.1:0"] if dashboard else ["--no-dashboard"]
        self.scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", *dash, *tls_args,
                                           "--scheduler-file", str(self.file)], env=ENV, stderr=subprocess.DEVNULL)
        self.workers = []
        deadline = time.monotonic() + 60
        while not (self.file.exists() and self.file.stat().st_size):
            assert self.scheduler.poll() is None and time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]
        for i in range(workers):
            extra = list(worker_args[i]) if i < len(worker_args) else []
            self.workers.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(self.file), "--nthreads", "1",
                                                  "--no-dashboard", "--host", "127.0.0.1", *tls_args[2:], *extra], env=ENV, stderr=subprocess.DEVNULL))

    def stop(self):
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------- item 4: TLS on clusters daskdiff starts

def test_tls_local_cluster_with_role_certificates(tmp_path, tiny_model_path, sets, certs):
    """``kind: local`` + ``cluster.security`` with scheduler and worker certificates: the cluster
    listens on tls://, the job completes; the run prints its dashboard, and neither TensorFlow's
    start-up lines nor distributed's 'still alive ... killing' (item 10)."""
    job = _job(tmp_path, tiny_model_path, sets, {"kind": "local", "n_workers": 2, "start_timeout": 120, "security": _security(certs)})
    proc = _daskdiff("run", job, "--no-progress")
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"started LocalCluster with 2 worker\(s\) at tls://127\.0\.0\.1:\d+; dashboard http://127\.0\.0\.1:\d+/status", out), out
    assert "done: 13 images in 2 set(s)" in out
    assert "still alive" not in err, err
    assert not TF_NOISE.search(err), err
    with xr.open_dataset(tmp_path / "out" / RESULTS_FILE) as ds:
        assert ds["differentiation"].notnull().any()


@pytest.mark.parametrize("key", ["tls_worker_cert", "tls_scheduler_cert", "tls_client_cert"])
def test_certificate_the_ca_did_not_sign_is_refused_before_any_cluster_starts(certs, key, monkeypatch):
    role = key.split("_")[1]
    section = SecuritySection(**_security(certs, **{key: certs["stranger"][0], key.replace("cert", "key"): certs["stranger"][1]}))
    starts = record_cluster_starts(monkeypatch)
    with pytest.raises(InputError) as err:
        with connect(ClusterSection(kind="local", n_workers=1, security=section), echo=print):
            pytest.fail(f"a cluster started with a {role} certificate from another CA")
    assert starts.started == []
    message = str(err.value)
    assert f"cluster.security.{key}" in message and certs["stranger"][0] in message and certs["ca"] in message
    assert "unable to get local issuer certificate" in message and "\n" not in message


def test_role_key_without_its_certificate_is_a_spec_error(certs):
    from daskdiff.pipeline.spec import SpecError
    from daskdiff.pipeline.spec_file import parse_spec

    data = {"name": "x", "image_sets": {"a": "a"}, "cluster": {"security": {**_security(certs, roles=False), "tls_worker_key": certs["worker"][1]}}}
    with pytest.raises(SpecError, match=r"cluster\.security: tls_worker_key is given without tls_worker_cert"):
        parse_spec(data)
    data["cluster"] = {"kind": "address", "address": "tls://h:1", "security": _security(certs)}
    with pytest.raises(SpecError, match=r"security\.tls_scheduler_cert: with kind 'address' the scheduler and workers are started elsewhere"):
        parse_spec(data)


# ---------------------------------------------------------------- item 10: TLS handshake refused by an external scheduler

def test_tls_handshake_refused_by_an_external_scheduler(tmp_path, certs):
    """A CLI scheduler of CA 'ca'; daskdiff's client from CA 'other' (self-consistent, so only the
    scheduler can refuse it): one line naming the address, the keys to check, at the refusal, not
    after waiting out ``start_timeout`` (120 s; the bound, 60 s, only tells the two apart)."""
    cli = _CliCluster(tmp_path, tls=(certs["ca"], *certs["scheduler"]), workers=0, dashboard=False)
    try:
        security = SecuritySection(tls_ca_file=certs["other"], tls_client_cert=certs["stranger"][0], tls_client_key=certs["stranger"][1])
        started = time.monotonic()
        with pytest.raises(JobError) as err:
            with connect(ClusterSection(kind="address", address=cli.address, security=security, start_timeout=120), echo=print):
                pytest.fail("connected with a certificate of another CA")
        assert time.monotonic() - started < 60
        message = str(err.value)
        assert message.startswith(f"cluster.address {cli.address}: the TLS handshake with the scheduler failed")
        assert "cluster.security.tls_ca_file" in message and "\n" not in message
    finally:
        cli.stop()


# ---------------------------------------------------------------- item 7: a scheduler that is not there

@pytest.mark.parametrize("where", ["missing file", "wrong address"])
def test_no_scheduler_is_one_line_within_start_timeout(tmp_path, tiny_model_path, sets, where):
    job = _job(tmp_path, tiny_model_path, sets, {"start_timeout": 3})
    port = _free_port()
    flag = ["--scheduler-file", tmp_path / "no-such.json"] if where == "missing file" else ["--scheduler", f"tcp://127.0.0.1:{port}"]
    started = time.monotonic()
    proc = _daskdiff("run", job, *flag, "--no-progress")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    if where == "missing file":
        assert f"waiting up to 3 s for scheduler file {tmp_path / 'no-such.json'} (--scheduler-file) to appear" in out
        assert lines[0].startswith(f"daskdiff run: error: --scheduler-file {tmp_path / 'no-such.json'}: it does not exist after 3 s (cluster.start_timeout)")
    else:
        assert lines[0].startswith(f"daskdiff run: error: --scheduler tcp://127.0.0.1:{port}: nothing listens on port {port} of 127.0.0.1 "
                                   "(connection refused); check")  # at once (tests/test_scheduler_refused.py)
    assert time.monotonic() - started < 100


def test_scheduler_file_problems_name_the_file(tmp_path):
    port = _free_port()
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"address": f"tcp://127.0.0.1:{port}"}))
    with pytest.raises(JobError, match=rf"^--scheduler-file {re.escape(str(stale))} names tcp://127\.0\.0\.1:{port}: no Dask scheduler answered within 2 s.*stopped"):
        with connect(ClusterSection(start_timeout=2), scheduler_file=str(stale), echo=print):
            pass
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    with pytest.raises(InputError, match=rf"^cluster\.scheduler_file {re.escape(str(garbage))}: it is not a JSON scheduler file"):
        with connect(ClusterSection(kind="address", scheduler_file=str(garbage), start_timeout=1), echo=print):
            pass


def test_scheduler_file_written_after_the_job_starts_is_waited_for(tmp_path):
    """A batch script that starts the scheduler and daskdiff together: the file appears later."""
    (tmp_path / "real").mkdir()
    cli = _CliCluster(tmp_path / "real", workers=1, dashboard=False)
    late = tmp_path / "late.json"
    threading.Timer(1.5, lambda: late.write_text(cli.file.read_text())).start()
    lines = []
    try:
        with connect(ClusterSection(start_timeout=60), scheduler_file=str(late), echo=lines.append) as client:
            assert client.scheduler.address == cli.address
    finally:
        cli.stop()
    assert lines[0] == f"waiting up to 60 s for scheduler file {late} (--scheduler-file) to appear"
    assert lines[1] == f"connected to scheduler {cli.address}; {NO_DASHBOARD}"


# ---------------------------------------------------------------- item 10: the scheduler lost mid-job

def test_a_closed_stream_counts_as_the_scheduler_lost_only_when_it_is(tmp_path):
    """The race CI hit: a result fetch in flight fails with a plain closed stream before the client's
    own connection notices the scheduler died. That is the scheduler lost (one line, re-run); the
    same error with the scheduler alive is not (the traceback is kept)."""
    from distributed import Client
    from distributed.comm.core import CommClosedError

    cli = _CliCluster(tmp_path, workers=0, dashboard=False)
    client = Client(cli.address, timeout=30)
    try:
        closed = CommClosedError("in <TCP (closed) ConnectionPool.gather>: Stream is closed")
        assert not _scheduler_lost(client, closed, wait=1.0)
        assert not _scheduler_lost(client, ValueError("a task's own error"))
        cli.scheduler.kill()
        cli.scheduler.wait()
        assert _scheduler_lost(client, closed)
    finally:
        client.close(timeout=5)
        cli.stop()


def test_scheduler_killed_mid_job_says_rerun_resumes(tmp_path, tiny_model_path, sets):
    job = _job(tmp_path, tiny_model_path, sets, {"start_timeout": 60}, extraction={"batch_size": 1, "shard_size": 1})
    cli = _CliCluster(tmp_path)
    try:
        proc = _daskdiff("run", job, "--scheduler-file", cli.file, "--no-progress")
        _wait_for_a_shard(proc, tmp_path / "out")
        cli.scheduler.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        cli.stop()
    assert re.search(rf"connected to scheduler {cli.address}; dashboard http://127\.0\.0\.1:\d+/status", out), out
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"daskdiff run: error: lost the connection to the Dask scheduler at {cli.address} mid-job")
    assert "re-run the same command to resume" in err
    cli = _CliCluster(tmp_path)
    try:
        again = _daskdiff("run", job, "--scheduler-file", cli.file, "--no-progress")
        out, err = again.communicate(timeout=300)
    finally:
        cli.stop()
    assert again.returncode == 0, err[-3000:]
    assert "resuming:" in out and "done: 13 images" in out


# ---------------------------------------------------------------- item 6: Ctrl-C on every cluster kind

FAKE_SBATCH = """#!/bin/bash
# stand-in for sbatch: run the job script now, in the background, in a process group of its own
jobs="{jobs}"
id=$$
cp "$1" "$jobs/$id.sh"
setsid bash "$jobs/$id.sh" > "$jobs/$id.log" 2>&1 < /dev/null &
echo $! > "$jobs/$id.pid"
echo "Submitted batch job $id"
"""
FAKE_SBATCH_REFUSES = """#!/bin/bash
# stand-in for sbatch on a cluster without the partition asked for: what SLURM's sbatch prints
echo "sbatch: error: invalid partition specified: nope" >&2
echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
exit 1
"""
FAKE_SBATCH_QUEUES = """#!/bin/bash
# stand-in for sbatch on a full cluster: the job is accepted and stays pending (never runs)
jobs="{jobs}"
id=$$
cp "$1" "$jobs/$id.sh"
echo "Submitted batch job $id"
"""
FAKE_SCANCEL = """#!/bin/bash
# stand-in for scancel: end the job's process group
for id in "$@"; do echo "$id" >> "{jobs}/cancelled"; kill -TERM -- "-$(cat "{jobs}/$id.pid")" 2>/dev/null; done
exit 0
"""


def _fake_slurm(tmp_path, sbatch=FAKE_SBATCH):
    """PATH with a stand-in ``sbatch`` (``FAKE_SBATCH`` runs the job here) and ``scancel``; and its jobs folder."""
    bindir, jobs = tmp_path / "fake-slurm", tmp_path / "slurm-jobs"
    bindir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", sbatch), ("scancel", FAKE_SCANCEL)):
        (bindir / name).write_text(text.format(jobs=jobs))
        (bindir / name).chmod(0o755)
    return dict(ENV, PATH=f"{bindir}{os.pathsep}{ENV['PATH']}"), jobs


def _end_fake_jobs(jobs):
    for pid_file in jobs.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


@pytest.mark.parametrize("kind", ["local", "address", "slurm"])
def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path, tiny_model_path, sets, certs, kind):
    """SIGINT mid-extraction: exit 130 and the hint, on every kind. SLURM (dask-jobqueue installs a
    SIGINT handler calling sys.exit() at import) runs over TLS with worker certificates; the
    interrupted job's SLURM job is cancelled, and a re-run resumes to the end."""
    env, jobs, cli = ENV, None, None
    slow = {"extraction": {"batch_size": 1, "shard_size": 1}}
    if kind == "slurm":
        pytest.importorskip("dask_jobqueue")
        env, jobs = _fake_slurm(tmp_path)
        slurm = {"cores": 1, "processes": 1, "memory": "2GB", "walltime": "00:20:00",
                 "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
        job = _job(tmp_path, tiny_model_path, sets, {"kind": "slurm", "slurm": slurm, "start_timeout": 120, "security": _security(certs)}, **slow)
    elif kind == "address":
        cli = _CliCluster(tmp_path, dashboard=False)
        job = _job(tmp_path, tiny_model_path, sets, {"kind": "address", "scheduler_file": str(cli.file), "start_timeout": 60}, **slow)
    else:
        job = _job(tmp_path, tiny_model_path, sets, {"kind": "local", "n_workers": 1, "start_timeout": 120}, **slow)
    try:
        proc = _daskdiff("run", job, "--no-progress", env=env)
        _wait_for_a_shard(proc, tmp_path / "out")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out, err[-3000:])
        assert err.strip().splitlines()[-1] == RESUME_HINT, err
        assert "Traceback" not in err, err  # LocalCluster workers too, though they share our stderr (tests/test_interrupt.py)
        assert not (tmp_path / "out" / RESULTS_FILE).exists()
        if kind != "slurm":
            return
        (script,) = jobs.glob("*.sh")
        command = script.read_text()
        assert re.search(rf"dask_worker tls://127\.0\.0\.1:\d+ .*--protocol tls:// --tls-ca-file {certs['ca']} "
                         rf"--tls-cert {certs['worker'][0]} --tls-key {certs['worker'][1]}", command), command
        assert (jobs / "cancelled").read_text().split() == [script.stem]
        again = _daskdiff("run", job, "--no-progress", env=env)
        out, err = again.communicate(timeout=400)
        assert again.returncode == 0, err[-3000:]
        assert re.search(r"started SLURMCluster with 1 worker\(s\) at tls://127\.0\.0\.1:\d+; dashboard http://", out), out
        assert "resuming:" in out and "done: 13 images" in out
    finally:
        if cli is not None:
            cli.stop()
        if jobs is not None:
            _end_fake_jobs(jobs)


def test_scheduler_without_workers_says_how_to_start_one(tmp_path):
    cli = _CliCluster(tmp_path, workers=0, dashboard=False)
    try:
        with pytest.raises(JobError) as err:
            with connect(ClusterSection(start_timeout=2), scheduler=cli.address, echo=print):
                pytest.fail("a job went on without workers")
    finally:
        cli.stop()
    assert str(err.value) == (f"the scheduler at {cli.address} has 0 worker(s) after 2 s (cluster.start_timeout), 1 needed; "
                              f"start one with 'dask worker {cli.address} --nthreads 1'")


# ---------------------------------------------------------------- item 5: SLURM problems named by their spec key, at once

SLURM = {"cores": 1, "processes": 1, "memory": "2GB", "walltime": "00:20:00",
         "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}


def _slurm_job_text(tmp_path, tiny_model_path, sets, slurm, **cluster):
    """A job spec's YAML with ``cluster.slurm`` given as-is (``slurm`` may be invalid: it is not parsed here)."""
    data = tiny_spec(tiny_model_path, sets, tmp_path / "out").model_dump(mode="json")
    data["cluster"] = {"kind": "slurm", "start_timeout": 120, **cluster, "slurm": "SLURM"}
    return yaml.safe_dump(data).replace("slurm: SLURM", "slurm: " + slurm)


@pytest.mark.parametrize("slurm, expected", [
    ("{cores: 1, memory: 2GB, walltime: 1:00:00}",
     "cluster.slurm.walltime: is the integer 3600: YAML reads an unquoted H:MM:SS as seconds in base 60 (1:00:00 is 3600), "
     "which SLURM would take as 3600 minutes; quote it: walltime: '01:00:00'"),
    ("{cores: 1, memory: 2GB, quue: gpu}", "cluster.slurm: cluster.slurm.quue is not a SLURMCluster option daskdiff passes on; the keys are: cores, memory,"),
    ("{queue: gpu}", "cluster: cluster.slurm.cores and cluster.slurm.memory missing: a SLURM job needs its size"),
    ("{cores: 1, memory: 2GB, n_workers: 3}", "cluster.slurm.n_workers is not allowed here: give cluster.jobs"),
])
def test_slurm_section_errors_name_the_key_before_anything_runs(tmp_path, tiny_model_path, sets, slurm, expected):
    """A bad ``cluster.slurm`` is a spec error: exit 2 within seconds, no output folder, no sbatch call."""
    env, jobs = _fake_slurm(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(_slurm_job_text(tmp_path, tiny_model_path, sets, slurm))
    proc = _daskdiff("run", job, "--no-progress", env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert expected in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists() and not list(jobs.iterdir())


def test_slurm_size_from_dask_config_as_dask_jobqueue_users_set_it(tmp_path):
    """``jobqueue.slurm.cores/memory`` in Dask config (here ``DASK_JOBQUEUE__SLURM__*``) complete the
    spec; the spec's values go on top, and only they are passed to SLURMCluster."""
    import dask

    from daskdiff.pipeline.spec import SpecError
    from daskdiff.pipeline.spec_file import parse_spec

    data = {"name": "x", "image_sets": {"a": "a"}, "cluster": {"kind": "slurm", "slurm": {"queue": "gpu", "memory": "4GB"}}}
    with pytest.raises(SpecError, match=r"cluster\.slurm\.cores missing.*jobqueue\.slurm\.cores"):
        parse_spec(data)
    with dask.config.set({"jobqueue.slurm.cores": 8, "jobqueue.slurm.memory": "32GB", "jobqueue.slurm.queue": "cpu"}):
        slurm = parse_spec(data).cluster.slurm
        assert slurm.kwargs() == {"queue": "gpu", "memory": "4GB"}
        assert slurm.resolved("cores") == (8, "Dask config jobqueue.slurm.cores")
        assert slurm.resolved("memory") == ("4GB", "cluster.slurm.memory")
    code = ("from daskdiff.pipeline.spec_file import parse_spec; import sys, json; "
            "print(parse_spec(json.loads(sys.argv[1])).cluster.slurm.resolved('cores'))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(data)], env=dict(ENV, DASK_JOBQUEUE__SLURM__CORES="6"),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "(6, 'Dask config jobqueue.slurm.cores')", done.stderr


def test_slurm_sbatch_refusal_is_one_line_at_once(tmp_path, tiny_model_path, sets):
    """sbatch refuses the partition: one line quoting its ``sbatch: error:`` and naming
    ``cluster.slurm.queue``, long before ``start_timeout``, with no traceback."""
    pytest.importorskip("dask_jobqueue")
    env, jobs = _fake_slurm(tmp_path, FAKE_SBATCH_REFUSES)
    job = tmp_path / "job.yaml"
    job.write_text(_slurm_job_text(tmp_path, tiny_model_path, sets, json.dumps({**SLURM, "queue": "nope"})))
    started = time.monotonic()
    proc = _daskdiff("run", job, "--no-progress", env=env)
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 2, (out, err)
    assert time.monotonic() - started < 60  # start_timeout is 120
    assert "Traceback" not in err and "Status.created" not in err, err
    (line,) = err.strip().splitlines()
    assert line == ("daskdiff run: error: cluster.kind slurm: sbatch refused the job: sbatch: error: invalid partition specified: nope; "
                    "sbatch: error: Batch job submission failed: Invalid partition name specified; check cluster.slurm.queue 'nope' "
                    "(sinfo lists partitions and their limits)"), line


def test_slurm_job_still_pending_at_start_timeout(tmp_path, tiny_model_path, sets):
    """The job is queued and never runs: one line at ``start_timeout`` with its job id, the
    partition and the squeue command; the queued job is cancelled."""
    pytest.importorskip("dask_jobqueue")
    env, jobs = _fake_slurm(tmp_path, FAKE_SBATCH_QUEUES)
    job = tmp_path / "job.yaml"
    job.write_text(_slurm_job_text(tmp_path, tiny_model_path, sets, json.dumps({**SLURM, "queue": "long"}), start_timeout=4))
    proc = _daskdiff("run", job, "--no-progress", env=env)
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 2, (out, err)
    (script,) = jobs.glob("*.sh")
    jid = script.stem
    assert "Traceback" not in err and "WorkerStartTimeoutError" not in err, err
    (line,) = err.strip().splitlines()
    assert line == (f"daskdiff run: error: cluster.kind slurm: SLURM job {jid} in partition 'long' (cluster.slurm.queue) started no worker "
                    f"within 4 s (cluster.start_timeout); it is still queued or failed at start: see 'squeue -j {jid}' (the REASON column) "
                    "and the job's log, or raise cluster.start_timeout"), line
    assert (jobs / "cancelled").read_text().split() == [jid]


# ---------------------------------------------------------------- item 8: a GPU label on a worker without a GPU

def _labeled_worker(cli, timeout=60):
    """The address of the CLI worker started with ``--resources GPU=1``."""
    from distributed import Client

    with Client(cli.address, timeout=30) as client:
        client.wait_for_workers(len(cli.workers), timeout=timeout)
        workers = client.scheduler_info(n_workers=-1)["workers"]
    (address,) = [a for a, w in workers.items() if w.get("resources", {}).get("GPU")]
    return address


def test_gpu_label_without_a_gpu_is_named(tmp_path, tiny_model_path, sets):
    """``dask worker --resources GPU=1`` on this CPU machine, beside a plain worker: the job names
    the worker in one warning line and runs on both; with ``require_gpu`` it is refused (exit 2)."""
    cli = _CliCluster(tmp_path, workers=2, dashboard=False, worker_args=[["--resources", "GPU=1"]])
    try:
        address = _labeled_worker(cli)
        (tmp_path / "strict").mkdir()
        strict = _job(tmp_path / "strict", tiny_model_path, sets, {"start_timeout": 60},
                      extraction={"batch_size": 4, "shard_size": 3, "require_gpu": True})
        proc = _daskdiff("run", strict, "--scheduler-file", cli.file, "--no-progress")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (out, err[-3000:])
        assert err.strip().splitlines()[-1] == (
            "daskdiff run: error: extraction.require_gpu is set but 1 of 1 worker(s) offering a 'GPU' resource have no GPU "
            f"(worker {address}: TensorFlow lists 0 GPU(s)); start those workers without --resources GPU=1 or on GPU nodes (check "
            "the CUDA driver and a GPU build of the backend there), or set require_gpu: false"), err
        job = _job(tmp_path, tiny_model_path, sets, {"start_timeout": 60})
        proc = _daskdiff("run", job, "--scheduler-file", cli.file, "--no-progress")
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        assert (f"warning: worker {address} offers a 'GPU' resource but has no GPU (TensorFlow lists 0 GPU(s)); "
                "extraction tasks go to every worker") in out.splitlines(), out
        assert "done: 13 images" in out
    finally:
        cli.stop()


# ---------------------------------------------------------------- item 9: dask-cuda installed but unusable, or no GPU

FAKE_DASK_CUDA = {
    "broken": 'raise ImportError("needs cupy-cuda12x")  # how an install without its CUDA extra fails at import\n',
    "installed": ("class LocalCUDACluster:  # stands in for dask-cuda: daskdiff asks the real NVML before starting it\n"
                  "    def __init__(self, *args, **kwargs):\n        raise AssertionError('started without a GPU')\n"),
}


@pytest.mark.parametrize("dask_cuda", ["missing", "broken", "installed"])
def test_local_cuda_says_the_real_cause_in_one_line(tmp_path, tiny_model_path, sets, dask_cuda):
    """``kind: local_cuda`` on this CPU machine: dask-cuda absent, broken at import (a package
    ``dask_cuda`` on PYTHONPATH raising ImportError), or importable with no GPU (the real
    NVML, from nvidia-ml-py, finds no driver): one line with the cause, exit 2."""
    import importlib.util

    env = ENV
    if dask_cuda == "missing" and importlib.util.find_spec("dask_cuda") is not None:
        pytest.skip("dask-cuda is installed here")
    if dask_cuda == "installed":
        pytest.importorskip("pynvml")
    if dask_cuda != "missing":
        package = tmp_path / "site" / "dask_cuda"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(FAKE_DASK_CUDA[dask_cuda])
        env = dict(ENV, PYTHONPATH=str(tmp_path / "site"))
    job = _job(tmp_path, tiny_model_path, sets, {"kind": "local_cuda", "start_timeout": 30})
    proc = _daskdiff("run", job, "--no-progress", env=env)
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    expected = {
        "missing": "cluster.kind 'local_cuda' needs dask-cuda: pip install 'daskdiff[gpu]' (on CPU machines use cluster.kind: local)",
        "broken": "cluster.kind 'local_cuda': dask-cuda is installed but cannot be imported (ImportError: needs cupy-cuda12x); install the "
                  "consistent set with pip install 'daskdiff[gpu]' (dask-cuda[cu12]), or use cluster.kind: local on CPU machines",
        "installed": "cluster.kind 'local_cuda': no NVIDIA GPU/driver found (NVML: NVML Shared Library Not Found); use cluster.kind: local "
                     "on CPU machines",
    }[dask_cuda]
    assert line == f"daskdiff run: error: {expected}", line
