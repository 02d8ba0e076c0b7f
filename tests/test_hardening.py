"""Hardening: bad input, failing tasks, killed clients, security. Real processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr
import yaml
from distributed import Client, WorkerPlugin
from PIL import Image

from daskdiff import cli
from daskdiff.io.image_sets import ImageSetError
from daskdiff.errors import JobError
from daskdiff.pipeline.job import plan_job, run_job
from daskdiff.pipeline.spec import SpecError
from daskdiff.pipeline.spec_file import load_spec

import jobtools
from jobtools import local_cluster, record_cluster_starts, tiny_spec

cloudpickle.register_pickle_by_value(jobtools)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BIN = Path(sys.executable).parent


def _cluster(n=1):
    return local_cluster(n)


def _quiet(*args):
    pass


@pytest.fixture
def sets(image_folders):
    return {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}


# ---------------------------------------------------------------- job specs

GOOD = {"name": "x", "image_sets": {"a": "imgs"}}


@pytest.mark.parametrize(
    "text, match",
    [
        ("name: x\nimage_sets: {a: imgs\n", "not valid YAML"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {repeets: 3}\n", r"analysis\.repeets: unknown key"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {per_unit: maybe}\n", r"analysis\.per_unit: .*valid boolean.*'maybe'"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {metric: manhattan}\n", r"analysis\.metric: .*'euclidean'.*'chebyshev'.*manhattan"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {substrates: [pixels]}\n", r"analysis\.substrates\.0: .*'units'.*'filter_mean'.*pixels"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {n_units: [0]}\n", r"analysis\.n_units: .*positive integer or 'all'.*got 0"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {repeats: 0}\n", r"analysis\.repeats: .*greater than 0"),
        ("name: x\nimage_sets: {a: imgs}\nanalysis: {sampling: spiral}\n", r"analysis\.sampling: .*valid modes"),
        ("name: x\nimage_sets: {}\n", "at least one image set"),
        ("image_sets: {a: imgs}\n", r"name: Field required"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("name: x\nimage_sets: {a: !!python/object/apply:os.system [echo pwned]}\n", "not valid YAML"),
    ],
)
def test_bad_spec_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=match) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_bad_spec_cli_exit_code(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nimage_sets: {a: imgs}\nanalysis: {repeats: 0}\n")
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "analysis.repeats" in err and "nothing was run" in err


def test_unknown_layer_fails_before_cluster(tmp_path, tiny_model_path, sets, monkeypatch):
    starts = record_cluster_starts(monkeypatch)  # connect's cluster and the early one both start through it
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", model={"name": tiny_model_path, "weights": "file", "layers": ["conv1", "conv7"]})
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['conv7'\].*valid layers are"):
        run_job(spec, Path("."), progress=False, echo=_quiet)
    assert starts.started == []


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_empty_or_missing_set_fails_before_cluster(tmp_path, tiny_model_path, sets, monkeypatch, kind):
    starts = record_cluster_starts(monkeypatch)
    folder = tmp_path / "nothing here"
    if kind == "empty":
        folder.mkdir()
    spec = tiny_spec(tiny_model_path, {**sets, "broken": str(folder)}, tmp_path / "out")
    with pytest.raises(ImageSetError, match="broken"):
        run_job(spec, Path("."), progress=False, echo=_quiet)
    assert starts.started == []


def test_output_not_writable(tmp_path, tiny_model_path, sets):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    spec = tiny_spec(tiny_model_path, sets, blocker / "out")
    with pytest.raises(JobError, match="not writable.*--output"):
        plan_job(spec, Path("."), echo=_quiet)


# ---------------------------------------------------------------- bad images in a job

def _corpus(folder: Path) -> tuple[list[str], list[str]]:
    """Valid images and bad files side by side in one folder; returns (valid names, bad names)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "plain.png")
    (folder / "zero.jpg").write_bytes(b"")
    Image.fromarray(rgb).save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    (folder / "text.jpg").write_text("this is not an image")
    Image.fromarray((rng.integers(0, 65536, (20, 20))).astype(np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, np.full((30, 40), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb[:1, :1]).save(folder / "tiny1x1.png")
    Image.new("L", (11000, 10000)).save(folder / "bomb.png")  # 110 M pixels > Pillow's limit
    (folder / "dir with spaces").mkdir()
    Image.fromarray(rgb).save(folder / "kätzchen 猫.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    valid = ["plain.png", "sixteen.png", "cmyk.jpg", "rgba.png", "palette.gif", "tiny1x1.png", "kätzchen 猫.png"]
    bad = ["zero.jpg", "truncated.jpg", "text.jpg", "bomb.png", "dangling.png"]
    return valid, bad


@pytest.mark.cluster
def test_bad_files_skipped_valid_ones_processed(tmp_path, tiny_model_path, sets):
    valid, bad = _corpus(tmp_path / "corpus")
    spec = tiny_spec(tiny_model_path, {**sets, "corpus": str(tmp_path / "corpus")}, tmp_path / "out")
    lines = []
    with _cluster(2) as cluster, Client(cluster) as client:
        result = run_job(spec, Path("."), client=client, progress=False, echo=lines.append)
    with xr.open_dataset(result.path) as ds:
        assert int(ds["n_images"].sel(image_set="corpus")) == len(valid)
        kept = sorted(Path(p).name for p in ds["image_path"].sel(image_set="corpus").values if p)
        assert kept == sorted(valid)
        skipped = {Path(p).name: r for p, r in zip(ds["skipped_path"].values, ds["skipped_reason"].values)}
        assert sorted(skipped) == sorted(bad)
        assert "empty" in skipped["zero.jpg"] and "decompression bomb" in skipped["bomb.png"]
        assert np.isfinite(ds["differentiation"].sel(image_set="corpus", n_units=-1).isel(repeat=0)).all()
    assert sum("skipped (corpus)" in line for line in lines) == len(bad)


@pytest.mark.cluster
def test_every_file_bad_fails_clearly_and_keeps_other_sets(tmp_path, tiny_model_path, sets):
    folder = tmp_path / "allbad"
    folder.mkdir()
    for i in range(3):
        (folder / f"b{i}.png").write_bytes(b"\x89PNG broken")
    spec = tiny_spec(tiny_model_path, {**sets, "allbad": str(folder)}, tmp_path / "out")
    with _cluster(1) as cluster, Client(cluster) as client:
        with pytest.raises(JobError, match=r"image set 'allbad' has 0 decodable image\(s\)"):
            run_job(spec, Path("."), client=client, progress=False, echo=_quiet)
    # the valid sets' shards are kept (7 images, shard size 3 rounded up to the batch size 4)
    assert len(list((tmp_path / "out" / "activations" / "noisy").glob("shard-*.nc"))) == 2


# ---------------------------------------------------------------- failing tasks and resources

class BreakShard(WorkerPlugin):
    """Makes every attempt at one shard fail inside the model call, as a crashing model would."""

    name = "test-break-shard"

    def __init__(self, shard, log):
        self.shard, self.log = shard, log

    def setup(self, worker):
        import daskdiff.model.extract as extract

        original = extract.run_extraction
        shard, log = self.shard, self.log

        def broken(paths, *args, **kwargs):
            if any(p.endswith(shard) for p in paths):
                with open(log, "a") as f:
                    f.write("attempt\n")
                raise RuntimeError("model crashed on this input (test)")
            return original(paths, *args, **kwargs)

        extract.run_extraction = broken


@pytest.mark.cluster
def test_task_that_keeps_failing_names_shard_and_cause(tmp_path, tiny_model_path, sets):
    log = tmp_path / "attempts.log"
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction={"batch_size": 4, "shard_size": 4, "retries": 2})
    with _cluster(1) as cluster, Client(cluster) as client:
        client.register_plugin(BreakShard("noisy/img-005.png", str(log)))
        t0 = time.monotonic()
        with pytest.raises(JobError, match=r"shard 1 of set 'noisy'.*after 2 retries.*model crashed on this input"):
            run_job(spec, Path("."), client=client, progress=False, echo=_quiet)
    assert time.monotonic() - t0 < 120
    assert log.read_text().count("attempt") == 3  # first try + 2 retries


@pytest.mark.cluster
def test_required_gpu_missing_is_a_bounded_error(tmp_path, tiny_model_path, sets):
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction={"require_gpu": True}, cluster={"start_timeout": 2})
    with _cluster(1) as cluster, Client(cluster) as client:
        t0 = time.monotonic()
        with pytest.raises(JobError, match="no worker offered a 'GPU' resource within cluster.start_timeout=2"):
            run_job(spec, Path("."), client=client, progress=False, echo=_quiet)
        assert time.monotonic() - t0 < 30


# ---------------------------------------------------------------- a killed client, then resume

def _all_visible_files_complete(out: Path) -> None:
    for f in out.rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            if f.suffix == ".nc":
                xr.open_dataset(f).close()
            elif f.suffix == ".npz":
                np.load(f, allow_pickle=False).close()


@pytest.mark.cluster
def test_client_killed_then_resumed(tmp_path, tiny_model_path, sets):
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction={"batch_size": 1, "shard_size": 1})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    cmd = [str(BIN / "daskdiff"), "run", str(job), "--workers", "1", "--no-progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = tmp_path / "out" / "activations"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.rglob("shard-*.nc"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster, mid-extraction
    proc.wait()
    n_done = len(list(shards.rglob("shard-*.nc")))
    assert 3 <= n_done < 13, f"kill landed outside extraction ({n_done} shards)"
    assert not (tmp_path / "out" / "differentiation.nc").exists()
    _all_visible_files_complete(tmp_path / "out")

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming:" in out.stdout
    assert not list((tmp_path / "out").rglob(".*.tmp*"))
    clean = run_job(tiny_spec(tiny_model_path, sets, tmp_path / "clean", extraction={"batch_size": 1, "shard_size": 1}), Path("."),
                    n_workers=1, progress=False, echo=_quiet)
    with xr.open_dataset(tmp_path / "out" / "differentiation.nc") as a, xr.open_dataset(clean.path) as b:
        np.testing.assert_array_equal(a["differentiation"].values, b["differentiation"].values)
        np.testing.assert_array_equal(a["rdm"].values, b["rdm"].values)


# ---------------------------------------------------------------- security

@pytest.mark.cluster
def test_local_cluster_listens_on_localhost_only(tmp_path):
    from daskdiff.pipeline.cluster import connect
    from daskdiff.pipeline.spec_cluster import ClusterSection

    with connect(ClusterSection(n_workers=1), echo=_quiet) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        for addr in client.scheduler_info()["workers"]:
            assert addr.startswith("tcp://127.0.0.1:")


def test_partials_with_object_arrays_are_refused(tmp_path):
    """Partial results are plain numeric arrays: a pickled object inside one is never loaded."""
    from daskdiff.io.partials import load_partial

    path = tmp_path / "evil.npz"
    np.savez(path, differentiation=np.zeros(3), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_partial(path)


def test_yaml_specs_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    job = tmp_path / "job.yaml"
    job.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nimage_sets: {{a: imgs}}\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(job)
    assert not marker.exists()
