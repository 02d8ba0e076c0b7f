"""One owner per output folder (issue 14, item 2).

- a second ``daskdiff run`` on a folder another run is writing is refused, naming the first;
- temporaries are deleted only when the process that writes them is dead;
- a temporary deleted under its writer never turns into a finished (labels-only) shard;
- a shard counts as finished only when every variable its plan needs is there.

Real processes, real files; the writers whose liveness is judged are real processes too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from daskdiff.core.units import Sampling, storage_plan
from daskdiff.io.atomic import owner_tag
from daskdiff.io.layout import LOCK_FILE, shard_path
from daskdiff.io.manifest import Manifest
from daskdiff.io.shards import ShardWriter, activation_variables, inputs_digest, shard_labels, shard_status
from daskdiff.model.architecture import model_layers
from daskdiff.model.build import ModelSpec
from daskdiff.model.extract import extract_shard, ShardTask
from daskdiff.pipeline.job import plan_job

from conftest import write_images
from jobtools import tiny_spec

BIN = Path(sys.executable).parent


def _host() -> str:
    return owner_tag().rsplit("+", 1)[0]


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.cluster
def test_second_run_on_a_busy_folder_is_refused_naming_the_first(tmp_path, tiny_model_path):
    """The first run holds the folder while it waits for workers (a CLI scheduler with none yet:
    as on a batch cluster whose workers are queued); a second run on the folder is refused."""
    write_images(tmp_path / "a", 4, seed=1)
    write_images(tmp_path / "b", 4, seed=2)
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, tmp_path / "out",
                     cluster={"start_timeout": 240})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    sfile = tmp_path / "scheduler.json"
    cmd = [str(BIN / "daskdiff"), "run", str(job), "--scheduler-file", str(sfile), "--no-progress"]
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(sfile)], env=env, stderr=subprocess.DEVNULL)
    first = worker = None
    lock = tmp_path / "out" / LOCK_FILE
    try:
        assert _wait_for(lambda: sfile.exists() and sfile.stat().st_size > 0, 60)
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert _wait_for(lambda: lock.exists() and f'"pid": {first.pid},' in lock.read_text(), 120), "the first run never took the folder"
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second one checked the folder"
        assert second.returncode == 2, second.stderr[-2000:]
        message = second.stderr.strip().splitlines()[-1]
        assert f"is in use by another daskdiff run (pid {first.pid} on " in message and "choose another --output" in message
        worker = subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(sfile), "--nthreads", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"], env=env, stderr=subprocess.DEVNULL)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
        assert "removed" not in out  # nobody deleted the first run's temporaries
        # once the holder is gone, the folder is free again: a re-run resumes everything
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads(lock.read_text())["pid"] != first.pid
    finally:
        for proc in (first, worker, scheduler):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)


@pytest.mark.subprocess
def test_temporaries_are_removed_only_when_their_writer_is_dead(tmp_path, tiny_model_path):
    write_images(tmp_path / "a", 3, seed=1)
    write_images(tmp_path / "b", 3, seed=2)
    out = tmp_path / "out"
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, out)
    plan_job(spec, Path("."), echo=lambda *a: None).release()  # a first run's manifest and folders
    manifest = Manifest(out)
    target = shard_path(out, "a", 0)
    manifest.make_dirs(target.parent)
    manifest.add_files([target])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "live": f".{target.name}.{_host()}+{live.pid}+abc123.tmp",
            "dead": f".{target.name}.{_host()}+{dead.pid}+abc123.tmp",
            "elsewhere": f".{target.name}.another-machine+{live.pid}+abc123.tmp",
            "legacy": f".{target.name}.k3j4h5.tmp",  # an older daskdiff's temporary: no owner in the name
            "not ours": ".notes.txt.abc.tmp",
        }
        for name in names.values():
            (target.parent / name).write_bytes(b"half-written")
        lines: list[str] = []
        plan_job(spec, Path("."), echo=lines.append).release()
        left = {k for k, name in names.items() if (target.parent / name).exists()}
        assert left == {"live", "elsewhere", "not ours"}
        assert "removed 2 temporary file(s) left by an interrupted run" in lines
    finally:
        live.kill()
        live.wait()
    plan_job(spec, Path("."), echo=lambda *a: None).release()
    assert not (target.parent / names["live"]).exists()  # its writer is dead now


def test_temporary_deleted_under_its_writer_never_becomes_a_shard(tmp_path, image_folders, tiny_model_path, monkeypatch):
    """What a second run's cleanup did to a live run: the writer must fail, not publish labels only."""
    spec = ModelSpec(name=tiny_model_path, weights="file")
    info = model_layers(spec)
    plan = storage_plan(info["shapes"], ["units", "filter_mean"], Sampling(n_units=(5,), repeats=2, seed=1), full_layers=[info["last_layer"]])
    task = ShardTask("noisy", 0, tuple(image_folders["noisy"]), 0, str(tmp_path), batch_size=2)
    real_append = ShardWriter.append

    def append_then_lose_the_file(self, features):
        real_append(self, features)
        for tmp in shard_path(tmp_path, "noisy", 0).parent.glob(".*.tmp"):
            tmp.unlink()  # another process removes the temporary while this task writes it

    monkeypatch.setattr(ShardWriter, "append", append_then_lose_the_file)
    with pytest.raises(FileNotFoundError):
        extract_shard(task, plan, spec)
    assert not shard_path(tmp_path, "noisy", 0).exists()

    monkeypatch.setattr(ShardWriter, "append", real_append)
    summary = extract_shard(task, plan, spec)  # Dask's retry: the shard is written whole
    assert summary["n_images"] == len(image_folders["noisy"]) and not summary["resumed"]


def test_shard_lacking_a_variable_of_the_plan_is_not_finished(tmp_path):
    shapes = {"conv": (4, 4, 3), "fc": (6,)}
    small = storage_plan(shapes, ["filter_mean"], Sampling(n_units=(3,), repeats=2, seed=1))
    full = storage_plan(shapes, ["filter_mean", "units"], Sampling(n_units=(3,), repeats=2, seed=1))
    record = [("/im/0.png", 10, 1), ("/im/1.png", 11, 2)]
    rng = np.random.default_rng(0)
    path = tmp_path / "shard-00000.nc"
    labels = shard_labels(small, paths=["/im/0.png", "/im/1.png"], image_set="s", image_index=[0, 1],
                          logits=rng.standard_normal((2, 3)).astype(np.float32), labels=["x", "y", "z"],
                          attrs={"plan_digest": "d", "inputs_digest": inputs_digest("d", record)})
    with ShardWriter(path, small, chunk_images=2) as writer:
        writer.append({k: rng.standard_normal((2, n)).astype(np.float32) for k, (_, n) in activation_variables(small).items()})
        writer.write_labels(labels, record)
    assert shard_status(path, small, "d", record)[0] is not None
    meta, why = shard_status(path, full, "d", record)
    assert meta is None and why.startswith("it lacks variable(s) units__")
    meta, why = shard_status(path, small, "d", [("/im/0.png", 10, 1), ("/im/1.png", 12, 3)])
    assert meta is None and why == "its input images changed: 1 changed (1.png)"


@pytest.mark.cluster
def test_client_killed_on_external_cluster_then_rerun_at_once(tmp_path, tiny_model_path):
    """The README's advice after a killed client: re-run at once. The old client's tasks may still
    be writing on the workers; the new run must neither break them nor be broken by them."""
    import xarray as xr

    write_images(tmp_path / "a", 8, seed=5)
    write_images(tmp_path / "b", 8, seed=6)
    sets = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction={"batch_size": 1, "shard_size": 1})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    sfile = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(sfile)], env=env, stderr=subprocess.DEVNULL)
    worker = None
    try:
        assert _wait_for(lambda: sfile.exists() and sfile.stat().st_size > 0, 60)
        worker = subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(sfile), "--nthreads", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"], env=env, stderr=subprocess.DEVNULL)
        cmd = [str(BIN / "daskdiff"), "run", str(job), "--scheduler-file", str(sfile), "--no-progress"]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shards = tmp_path / "out" / "activations"
        assert _wait_for(lambda: len(list(shards.rglob("shard-*.nc"))) >= 2, 180)
        first.kill()  # SIGKILL: the client only; its tasks go on running on the worker
        first.wait()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
    assert not list((tmp_path / "out").rglob(".*.tmp"))
    clean = tiny_spec(tiny_model_path, sets, tmp_path / "clean", extraction={"batch_size": 1, "shard_size": 1})
    from daskdiff.pipeline.job import run_job

    ref = run_job(clean, Path("."), n_workers=1, progress=False, echo=lambda *a: None)
    with xr.open_dataset(tmp_path / "out" / "differentiation.nc") as got, xr.open_dataset(ref.path) as want:
        for name in ("differentiation", "rdm", "top1_class", "top1_prob"):
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


@pytest.mark.cluster
def test_temporary_of_a_writer_that_dies_during_the_run_is_removed_at_its_end(tmp_path, tiny_model_path):
    """A temporary whose writer is alive at planning is kept; that writer dies while the job runs
    (as a killed worker's would): the job's end removes it, and says so."""
    from daskdiff.pipeline.job import run_job

    write_images(tmp_path / "a", 3, seed=1)
    write_images(tmp_path / "b", 3, seed=2)
    out = tmp_path / "out"
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, out, cluster={"n_workers": 1})
    plan_job(spec, Path("."), echo=lambda *a: None).release()
    manifest = Manifest(out)
    target = shard_path(out, "a", 0)
    manifest.make_dirs(target.parent)
    manifest.add_files([target])
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    tmp = target.parent / f".{target.name}.{_host()}+{writer.pid}+abc123.tmp"
    tmp.write_bytes(b"half-written by a worker")
    lines: list[str] = []

    def echo(*parts):
        line = " ".join(map(str, parts))
        lines.append(line)
        if line.startswith("planned "):  # the job has planned (and kept the live writer's file): the writer dies
            assert tmp.exists()
            writer.kill()
            writer.wait()

    try:
        run_job(spec, Path("."), progress=False, echo=echo)
    finally:
        writer.kill()
        writer.wait()
    assert not tmp.exists()
    assert "removed 1 temporary file(s) of writers that died during the run" in lines, lines
