"""The output folder: daskdiff deletes only what it wrote, and refuses folders it could damage.

A user's project folder with ``output: .``: the spec, the user's own files, and daskdiff's
activations/partial/images side by side. These tests run ``daskdiff run`` as a user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daskdiff.errors import JobError
from daskdiff.pipeline.job import plan_job
from daskdiff.io.layout import LOCK_FILE, MANIFEST_FILE
from daskdiff.io.manifest import check_output_folder, Manifest, OutputFolderError
from daskdiff.pipeline.spec_file import parse_spec

from conftest import write_images

BIN = Path(sys.executable).parent


def _spec(model_path: str, sets: dict, **analysis) -> dict:
    return {
        "name": "mine",
        "model": {"name": model_path, "weights": "file"},
        "image_sets": sets,
        "analysis": {"substrates": ["filter_mean"], "n_units": ["all"], "repeats": 2, "seed": 1, **analysis},
        "extraction": {"batch_size": 4, "shard_size": 4},
        "cluster": {"n_workers": 1},
        "output": ".",
    }


def _daskdiff(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [str(BIN / "daskdiff"), "run", str(project / "job.yaml"), "--no-progress", *args]
    return subprocess.run(cmd, env=env, cwd=project, capture_output=True, text=True, timeout=300)


def _fingerprints(folder: Path) -> dict[str, str]:
    """Every file's hash, but the output folder's lock (which any run takes, and never deletes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and p.name != LOCK_FILE}


def _user_files(project: Path) -> dict[str, str]:
    """Files of the user's in the places daskdiff writes to, some named like daskdiff's own."""
    write_images(project / "images" / "cats", 3, seed=9)  # photos the user keeps (not an input set)
    (project / "images" / "cats" / ".draft.png.x.tmp").write_text("the user's hidden temporary")
    (project / "activations").mkdir()
    (project / "activations" / "notes.txt").write_text("my notes")
    (project / "partial").mkdir()
    (project / "partial" / "keep.npz").write_bytes(b"my own npz")
    (project / "README.md").write_text("my project")
    return _fingerprints(project)


@pytest.mark.cluster
def test_overwrite_in_output_dot_deletes_only_daskdiff_files(tmp_path, tiny_model_path):
    data = tmp_path / "data"
    write_images(data / "dogs", 5, seed=4)
    project = tmp_path / "project"
    project.mkdir()
    theirs = _user_files(project)
    sets = {"dogs": str(data / "dogs"), "noise": {"generate": "noise", "count": 4, "seed": 2}}
    (project / "job.yaml").write_text(yaml.safe_dump(_spec(tiny_model_path, sets)))
    first = _daskdiff(project)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"figure: {project / 'differentiation.png'}" in first.stdout and (project / "differentiation.png").stat().st_size > 1000
    written = json.loads((project / MANIFEST_FILE).read_text())
    assert "differentiation.nc" in written["files"] and "images/noise" in written["dirs"]
    assert not any(f in theirs for f in written["files"])

    # a changed spec is refused, then --overwrite replaces daskdiff's files and only those
    changed = dict(sets, noise={"generate": "noise", "count": 3, "seed": 5})
    (project / "job.yaml").write_text(yaml.safe_dump(_spec(tiny_model_path, changed)))
    refused = _daskdiff(project)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    second = _daskdiff(project, "--overwrite")
    assert second.returncode == 0, second.stderr[-3000:]
    now = _fingerprints(project)
    assert {k: now.get(k) for k in theirs if k != "job.yaml"} == {k: v for k, v in theirs.items() if k != "job.yaml"}
    noise = sorted(p.name for p in (project / "images" / "noise").glob("*.png"))
    assert len(noise) == 3, noise  # the first run's 4th generated image is gone: it was daskdiff's
    for f in (data / "dogs").iterdir():
        assert f.exists()


@pytest.mark.cluster
def test_output_folder_holding_an_input_set_is_refused_before_anything_is_written(tmp_path, tiny_model_path):
    """The reported case: photos in images/cats next to the spec, ``output: .``, then --overwrite."""
    project = tmp_path / "project"
    photos = write_images(project / "images" / "cats", 4, seed=3)
    before = _fingerprints(project)
    (project / "job.yaml").write_text(yaml.safe_dump(_spec(tiny_model_path, {"cats": "images/cats"})))
    for args in ((), ("--overwrite",)):
        out = _daskdiff(project, *args)
        assert out.returncode == 2
        assert f"contains the input image {photos[0]}" in out.stderr and "output: results" in out.stderr
    assert {k: v for k, v in _fingerprints(project).items() if k != "job.yaml"} == before
    assert sorted(p.name for p in project.iterdir()) == ["images", "job.yaml"]


@pytest.mark.keras
def test_roots_and_home_are_refused(tmp_path, monkeypatch):
    with pytest.raises(OutputFolderError, match="is a filesystem root"):
        check_output_folder(Path("/"), [])
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    spec = parse_spec({"name": "x", "image_sets": {"a": str(tmp_path / "imgs")}, "output": str(home)}, "test")
    write_images(tmp_path / "imgs", 2, seed=1)
    with pytest.raises(JobError, match="is your home folder"):
        plan_job(spec, tmp_path, echo=lambda *a: None)
    assert list(home.iterdir()) == []


def test_a_link_into_the_output_folder_counts_as_inside(tmp_path):
    (tmp_path / "out" / "photos").mkdir(parents=True)
    (tmp_path / "out" / "photos" / "a.png").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "out" / "photos")
    with pytest.raises(OutputFolderError, match="contains the input image"):
        check_output_folder(tmp_path / "out", [str(tmp_path / "link" / "a.png")])
    check_output_folder(tmp_path / "elsewhere", [str(tmp_path / "link" / "a.png")])


@pytest.mark.keras
def test_overwrite_of_a_folder_without_manifest_deletes_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "activations" / "a").mkdir(parents=True)
    (out / "activations" / "a" / "shard-00000.nc").write_bytes(b"old")
    (out / "job.json").write_text(json.dumps({"result_digest": "old", "spec": {}}))
    write_images(tmp_path / "imgs", 2, seed=1)
    spec = parse_spec({"name": "x", "image_sets": {"a": str(tmp_path / "imgs")}, "output": str(out)}, "test")
    before = _fingerprints(out)
    with pytest.raises(JobError, match="without a manifest.*by hand"):
        plan_job(spec, tmp_path, overwrite=True, echo=lambda *a: None)
    assert _fingerprints(out) == before


@pytest.mark.keras
def test_generated_set_never_writes_into_a_folder_daskdiff_did_not_create(tmp_path):
    out = tmp_path / "out"
    mine = write_images(out / "images" / "noise", 2, seed=1)
    spec = parse_spec({"name": "x", "image_sets": {"noise": {"generate": "noise", "count": 2}}, "output": str(out)}, "test")
    before = _fingerprints(out)
    with pytest.raises(JobError, match="which daskdiff did not create"):
        plan_job(spec, tmp_path, echo=lambda *a: None)
    assert _fingerprints(out) == before and len(mine) == 2


def test_manifest_removes_listed_files_their_temporaries_and_empty_listed_folders(tmp_path):
    m = Manifest(tmp_path)
    m.make_dirs(tmp_path / "a" / "b")
    m.add_files([tmp_path / "a" / "b" / "x.nc", tmp_path / "top.nc"])
    (tmp_path / "a" / "b" / "x.nc").write_text("1")
    (tmp_path / "a" / "b" / ".x.nc.k3j_9.tmp").write_text("killed writer")
    (tmp_path / "a" / "b" / ".y.nc.k3j_9.tmp").write_text("not ours: y.nc is not listed")
    (tmp_path / "top.nc").write_text("2")
    again = Manifest(tmp_path)  # read back from disk, as the next run does
    assert again.files == {"a/b/x.nc", "top.nc"} and again.dirs == {"a", "a/b"}
    assert [p.name for p in again.temporaries()] == [".x.nc.k3j_9.tmp"]
    assert again.remove_all() == ["a/b", "a"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/.y.nc.k3j_9.tmp"]
    (tmp_path / "a" / "b" / ".y.nc.k3j_9.tmp").unlink()
    m2 = Manifest(tmp_path)
    m2.make_dirs(tmp_path / "a" / "b" / "c")
    assert m2.dirs == {"a/b/c"}  # folders that existed already are not daskdiff's
    m2.remove_all()
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "c").exists()


def test_unreadable_manifest_names_the_file(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text('{"files": [')
    with pytest.raises(OutputFolderError, match=rf"{MANIFEST_FILE} is unreadable.*by hand"):
        Manifest(tmp_path)
