"""An output on an object store (moto's S3 server): the same results as on disk, resume, one run per
prefix (the lease), --overwrite deleting only what the manifest lists, no partial object ever visible."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from daskdiff.errors import JobError
from daskdiff.io.atomic import atomic_write
from daskdiff.io.location import for_task, location, ObjectPath
from daskdiff.io.lock import OutputFolderBusyError
from daskdiff.io.manifest import OutputFolderError
from daskdiff.io.object_output import ObjectLease, ObjectManifest
from daskdiff.io.shards import open_activations
from daskdiff.pipeline.job import run_job

from jobtools import assert_same_results, flip_chunk, local_cluster, run_quietly, set_folders, tiny_spec, worker_processes


# ---------------------------------------------------------------- the lease, the manifest, whole writes


def test_object_path_names_like_a_path_and_is_never_opened_as_one():
    out = ObjectPath("s3://bucket/run/", {"key": "AKIA", "secret": "s", "endpoint_url": "http://x"})
    shard = out / "activations" / "a/shard-00000.nc"
    assert str(shard) == "s3://bucket/run/activations/a/shard-00000.nc"
    assert (shard.name, str(shard.parent)) == ("shard-00000.nc", "s3://bucket/run/activations/a")
    assert shard.relative_to(out).as_posix() == "activations/a/shard-00000.nc"
    assert shard.options == out.options and shard == ObjectPath("s3://bucket/run/activations/a/shard-00000.nc")
    assert "AKIA" not in repr(shard) and "http://x" in repr(shard)
    with pytest.raises(TypeError):
        open(shard, "rb")  # no __fspath__: never a local file named s3:
    assert location("s3://bucket/run") == ObjectPath("s3://bucket/run") and location("file:///tmp/x") == Path("/tmp/x")
    assert for_task(Path("/tmp/x")) == "/tmp/x" and for_task(out).options == out.options


def test_second_lease_is_refused_naming_the_first(s3_bucket, s3fs_fresh):
    out = ObjectPath(f"s3://{s3_bucket}/run")
    with ObjectLease(out, command="daskdiff run first.yaml"):
        with pytest.raises(OutputFolderBusyError, match=r"in use by another daskdiff run \(pid \d+ on .*first\.yaml"):
            ObjectLease(out, command="daskdiff run second.yaml").acquire()
        assert json.loads(s3fs_fresh.cat(f"{s3_bucket}/run/.daskdiff-lock"))["command"] == "daskdiff run first.yaml"
    assert not s3fs_fresh.exists(f"{s3_bucket}/run/.daskdiff-lock")  # released: deleted
    ObjectLease(out).acquire().release()  # and free again


def test_stale_lease_is_taken_over_and_its_holder_stops(s3_bucket, s3fs_fresh):
    out = ObjectPath(f"s3://{s3_bucket}/run")
    dead = ObjectLease(out, command="daskdiff run dead.yaml", ttl=1.5).acquire()
    dead._stop.set()  # its process stops refreshing (as a SIGKILLed client would)
    dead._thread.join()
    time.sleep(0.5)
    with pytest.raises(OutputFolderBusyError, match=r"refreshed \d s ago"):  # still fresh by the store's clock (1 s resolution)
        ObjectLease(out).acquire()
    time.sleep(2.5)
    taker = ObjectLease(out, command="daskdiff run new.yaml", ttl=30).acquire()
    assert "dead.yaml" in taker.took_over
    # the old holder, were it only slow, finds out at its next refresh and writes no more records
    dead._stop.clear()
    dead.ttl = 0.3
    import threading

    t = threading.Thread(target=dead._refresh)
    t.start()
    time.sleep(0.5)
    dead._stop.set()
    t.join()
    with pytest.raises(OutputFolderBusyError, match="lost its lease.*new.yaml"):
        ObjectManifest(out, dead).add_files([out / "job.json"])
    taker.release()


def test_overwrite_deletes_only_listed_objects(s3_bucket, s3fs_fresh):
    out = ObjectPath(f"s3://{s3_bucket}/run")
    manifest = ObjectManifest(out)
    manifest.add_files([out / "activations" / "a" / "shard-00000.nc", out / "job.json"])
    for key in ("activations/a/shard-00000.nc", "job.json", "activations/a/mine.txt", "notes.txt"):
        s3fs_fresh.pipe(f"{s3_bucket}/run/{key}", b"x")
    s3fs_fresh.pipe(f"{s3_bucket}/run-other/job.json", b"x")  # a sibling prefix that shares the name's start
    assert ObjectManifest(out).files == {"activations/a/shard-00000.nc", "job.json"}
    ObjectManifest(out).remove_all()
    left = sorted(s3fs_fresh.find(s3_bucket))
    assert left == [f"{s3_bucket}/run-other/job.json", f"{s3_bucket}/run/activations/a/mine.txt", f"{s3_bucket}/run/notes.txt"]


def test_a_damaged_manifest_deletes_nothing(s3_bucket, s3fs_fresh):
    s3fs_fresh.pipe(f"{s3_bucket}/run/.daskdiff-manifest.json", json.dumps({"files": ["../other/x"], "dirs": []}).encode())
    with pytest.raises(OutputFolderError, match=r"lists '\.\./other/x'.*goes up"):
        ObjectManifest(ObjectPath(f"s3://{s3_bucket}/run"))


def test_a_failed_write_leaves_no_object(s3_bucket, s3fs_fresh):
    target = ObjectPath(f"s3://{s3_bucket}/run/differentiation.nc")

    def half(tmp):
        Path(tmp).write_bytes(b"half a file")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half)
    assert s3fs_fresh.find(s3_bucket) == []
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"whole"))
    assert s3fs_fresh.cat(f"{s3_bucket}/run/differentiation.nc") == b"whole"


# ---------------------------------------------------------------- jobs on a real cluster


@pytest.fixture(scope="module")
def s3client():
    from distributed import Client

    with local_cluster(2) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture
def sets(image_folders):
    return set_folders(image_folders)


_run = run_quietly


def _keys(fs, bucket, prefix="out"):
    return sorted(k[len(f"{bucket}/{prefix}/"):] for k in fs.find(f"{bucket}/{prefix}"))


@pytest.mark.cluster
def test_s3_output_equals_local_output(tmp_path, tiny_model_path, sets, s3client, s3_bucket, s3fs_fresh):
    local = _run(tiny_spec(tiny_model_path, sets, tmp_path / "local"), s3client)
    url = f"s3://{s3_bucket}/out/"
    remote = _run(tiny_spec(tiny_model_path, sets, url), s3client)
    assert str(remote.path) == f"s3://{s3_bucket}/out/differentiation.nc"
    # an independent reader: xarray on a downloaded copy of the results object
    s3fs_fresh.get(f"{s3_bucket}/out/differentiation.nc", str(tmp_path / "copy.nc"))
    with xr.open_dataset(local.path) as want, xr.open_dataset(tmp_path / "copy.nc") as got:
        assert_same_results(got, want)
    keys = _keys(s3fs_fresh, s3_bucket)
    listed = json.loads(s3fs_fresh.cat(f"{s3_bucket}/out/.daskdiff-manifest.json"))["files"]
    assert set(keys) - set(listed) == {".daskdiff-manifest.json"}  # no lease left, no temporaries, nothing unlisted
    local_shards = sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("shard-*.nc"))
    assert [k for k in keys if k.startswith("activations/")] == local_shards
    with open_activations(url, "noisy") as got, open_activations(tmp_path / "local", "noisy") as want:
        np.testing.assert_array_equal(got["units__conv1"].values, want["units__conv1"].values)
    # a second client while the first holds the prefix is refused, naming it
    with ObjectLease(ObjectPath(url), command="daskdiff run other.yaml"):
        with pytest.raises(JobError, match=r"in use by another daskdiff run .*other\.yaml"):
            _run(tiny_spec(tiny_model_path, sets, url), s3client)
    # --overwrite with another spec: every object daskdiff listed goes, an object of the user's stays
    s3fs_fresh.pipe(f"{s3_bucket}/out/activations/smooth/notes.txt", b"mine")
    one_set = tiny_spec(tiny_model_path, {"noisy": sets["noisy"]}, url, analysis__repeats=5)
    with pytest.raises(JobError, match="different job spec.*--overwrite"):
        _run(one_set, s3client)
    _run(one_set, s3client, overwrite=True)
    keys = _keys(s3fs_fresh, s3_bucket)
    assert "activations/smooth/notes.txt" in keys
    assert not [k for k in keys if k.startswith("activations/smooth/shard-") or k.startswith("partial/smooth--")]


def _wait_for(fs, bucket, proc, found, what):
    deadline = time.monotonic() + 300
    while not any(map(found, _keys(fs, bucket))):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"no {what} was stored in time"
        time.sleep(0.05)




@pytest.mark.subprocess
@pytest.mark.cluster
def test_s3_resume_after_killed_worker_and_killed_client(tmp_path, tiny_model_path, sets, s3client, s3_bucket, s3fs_fresh):
    """``daskdiff run`` on a LocalCluster of 2 workers: one worker SIGKILLed once the first shard is
    stored (extraction goes on), then the client and its cluster SIGKILLed once a partial result
    is stored. The same command again takes over the dead run's lease, says what it reused, and
    gives the results of an undisturbed run on disk."""
    reference = _run(tiny_spec(tiny_model_path, sets, tmp_path / "ref"), s3client)
    spec = tiny_spec(tiny_model_path, sets, f"s3://{s3_bucket}/out", cluster={"kind": "local", "n_workers": 2, "threads_per_worker": 1})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DASK_DASKDIFF__LEASE__TTL="3s")
    cmd = [str(Path(sys.executable).parent / "daskdiff"), "run", str(job), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for(s3fs_fresh, s3_bucket, proc, lambda k: k.startswith("activations/"), "shard")
        workers = worker_processes(proc.pid)
        assert len(workers) == 2, workers
        workers[0].kill()
        _wait_for(s3fs_fresh, s3_bucket, proc, lambda k: k.startswith("partial/") and "--units--" in k, "partial result")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and the workers of its local cluster
        proc.wait()
    assert not s3fs_fresh.exists(f"{s3_bucket}/out/differentiation.nc")  # killed before the results: none, not a part
    assert s3fs_fresh.exists(f"{s3_bucket}/out/.daskdiff-lock")  # the dead run's lease is left, to expire
    time.sleep(3.5)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-3000:]
    assert "took over the lease" in said
    resumed = re.search(r"resuming: (\d+) of 4 shard file\(s\) and (\d+) of \d+ partial result", said)
    assert resumed and int(resumed[1]) >= 2 and int(resumed[2]) >= 1, said[-3000:]  # a set's 2 shards, then its partial
    s3fs_fresh.get(f"{s3_bucket}/out/differentiation.nc", str(tmp_path / "again.nc"))
    with xr.open_dataset(reference.path) as want, xr.open_dataset(tmp_path / "again.nc") as got:
        assert_same_results(got, want)


@pytest.mark.cluster
def test_corrupt_shard_on_s3_is_recomputed(tmp_path, tiny_model_path, sets, s3client, s3_bucket, s3fs_fresh):
    url = f"s3://{s3_bucket}/out"
    spec = tiny_spec(tiny_model_path, sets, url)
    first = _run(spec, s3client)
    key = f"{s3_bucket}/out/activations/noisy/shard-00001.nc"
    local = tmp_path / "shard.nc"
    s3fs_fresh.get(key, str(local))
    flip_chunk(local, "units__conv2", rows=slice(0, 2))
    s3fs_fresh.put(str(local), key)
    s3fs_fresh.get(str(first.path).removeprefix("s3://"), str(tmp_path / "first.nc"))
    for partial in s3fs_fresh.glob(f"{s3_bucket}/out/partial/noisy--*"):
        s3fs_fresh.rm(partial)
    lines = []
    second = run_job(spec, Path("."), client=s3client, progress=False, echo=lines.append)
    assert lines.count(f"shard {url}/activations/noisy/shard-00001.nc is corrupt (checksum mismatch): removed, recomputing") == 1, lines
    s3fs_fresh.get(str(second.path).removeprefix("s3://"), str(tmp_path / "second.nc"))
    with xr.open_dataset(tmp_path / "first.nc") as want, xr.open_dataset(tmp_path / "second.nc") as got:
        assert_same_results(got, want)


def test_an_output_bucket_that_does_not_exist_is_one_line(tiny_model_path, sets, s3_server):
    from daskdiff.pipeline.job import dry_run

    spec = tiny_spec(tiny_model_path, sets, "s3://no-such-bucket-daskdiff/out")
    with pytest.raises(JobError, match=r"^output s3://no-such-bucket-daskdiff/out cannot be read or written \(FileNotFoundError: "
                                       r".*check that its bucket exists[^\n]*$"):
        dry_run(spec, Path("."), echo=lambda *a: None)


@pytest.mark.cluster
def test_generated_sets_under_an_s3_output_equal_local_ones_and_are_reused(
        tmp_path, tiny_model_path, sets, s3client, s3_bucket, s3fs_fresh):
    """A generated set (noise) and a generated movie (gratings) with an S3 output: generated on the
    client, uploaded under ``images/<set>/`` (listed in the manifest), read by the workers from S3;
    the results equal those of a local output; a rerun reuses them; --overwrite deletes them."""
    generated = {"gen": {"generate": "noise", "count": 5, "size": 32, "seed": 2},
                 "movie": {"generate": "gratings", "size": 32, "n_frames": 6, "fps": 4.0, "temporal_frequency": 0.7}}
    spec = tiny_spec(tiny_model_path, {"noisy": sets["noisy"], **generated}, tmp_path / "local")
    local = _run(spec, s3client)
    url = f"s3://{s3_bucket}/out/"
    remote = _run(tiny_spec(tiny_model_path, {"noisy": sets["noisy"], **generated}, url), s3client)
    s3fs_fresh.get(f"{s3_bucket}/out/differentiation.nc", str(tmp_path / "copy.nc"))
    with xr.open_dataset(local.path) as want, xr.open_dataset(tmp_path / "copy.nc") as got:
        assert_same_results(got, want)
        assert list(got["fps"].sel(image_set="movie").values.ravel())[0] == 4.0
        assert str(got["image_path"].sel(image_set="gen").values.ravel()[0]).startswith(f"{url}images/gen/")
    keys = _keys(s3fs_fresh, s3_bucket)
    images = [k for k in keys if k.startswith("images/")]
    assert len([k for k in images if k.endswith(".png")]) == 11
    assert {"images/gen/.generated.json", "images/movie/.generated.json", "images/movie/movie.json"} <= set(images)
    listed = json.loads(s3fs_fresh.cat(f"{s3_bucket}/out/.daskdiff-manifest.json"))["files"]
    assert set(images) <= set(listed)

    lines: list[str] = []
    run_job(tiny_spec(tiny_model_path, {"noisy": sets["noisy"], **generated}, url), Path("."), client=s3client,
            progress=False, echo=lines.append)
    assert sum("reusing" in line and "generated image(s)" in line for line in lines) == 2, lines

    s3fs_fresh.pipe(f"{s3_bucket}/out/images/gen/notes.txt", b"mine")
    _run(tiny_spec(tiny_model_path, {"noisy": sets["noisy"]}, url, analysis__repeats=5), s3client, overwrite=True)
    assert [k for k in _keys(s3fs_fresh, s3_bucket) if k.startswith("images/")] == ["images/gen/notes.txt"]
