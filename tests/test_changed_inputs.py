"""Changed input images are noticed (issue 14, item 3): a re-run recomputes exactly what depends
on them, says so, and gives the results of a fresh run on the new images.

Real files on disk and real jobs on a LocalCluster of worker processes; the reference is always a
fresh job, in a new output folder, on the images as they are now.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client

from daskdiff.pipeline.job import run_job

from conftest import write_images
from jobtools import local_cluster, tiny_spec

pytestmark = pytest.mark.cluster

NUMERIC = ("differentiation", "n_undefined", "units_used", "top1_class", "top1_prob", "top5_class", "top5_prob")


@pytest.fixture(scope="module")
def client():
    with local_cluster(1) as cluster, Client(cluster) as c:
        yield c


def _run(spec, client, lines=None):
    echo = (lambda *a: lines.append(" ".join(map(str, a)))) if lines is not None else (lambda *a: None)
    return xr.load_dataset(run_job(spec, Path("."), client=client, progress=False, echo=echo).path)


def _assert_same(got: xr.Dataset, want: xr.Dataset) -> None:
    for name in NUMERIC:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    np.testing.assert_array_equal(got["image_path"].values, want["image_path"].values)


def _mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the shards and partial results (the results file is always rewritten)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.glob("*/**/*")) if p.is_file() and p.suffix in (".nc", ".npz")}


def _fresh(tmp_path, tiny_model_path, sets, client, name):
    """The reference: a fresh job on the same folders as they are now, into a new output folder."""
    return _run(tiny_spec(tiny_model_path, sets, tmp_path / name), client)


def test_replaced_image_recomputes_its_shard_and_set(tmp_path, tiny_model_path, client):
    folders = {"a": write_images(tmp_path / "a", 7, seed=11), "b": write_images(tmp_path / "b", 6, seed=12)}
    sets = {name: str(Path(paths[0]).parent) for name, paths in folders.items()}
    out = tmp_path / "out"
    spec = tiny_spec(tiny_model_path, sets, out)
    old = _run(spec, client)
    before = _mtimes(out)

    # the user replaces a.img-004.png by another picture under the same name (shard 1 of set a:
    # shards hold 4 images, the batch size)
    victim = Path(folders["a"][4])
    other = write_images(tmp_path / "elsewhere", 1, seed=99)[0]
    shutil.copyfile(other, victim)
    lines: list[str] = []
    new = _run(spec, client, lines)

    fresh = _fresh(tmp_path, tiny_model_path, sets, client, "fresh")
    _assert_same(new, fresh)
    assert not np.array_equal(new["differentiation"].sel(image_set="a").values, old["differentiation"].sel(image_set="a").values)
    np.testing.assert_array_equal(new["differentiation"].sel(image_set="b").values, old["differentiation"].sel(image_set="b").values)

    said = [line for line in lines if "extracted again" in line]
    assert len(said) == 1 and "'a'" in said[0] and "shard 1" in said[0] and "1 changed (img-004.png)" in said[0], lines
    after = _mtimes(out)
    rewritten = {k for k in before if after[k] != before[k]}
    # exactly what depends on the changed image: its shard, set a's partial results, nothing of set b
    assert "activations/a/shard-00001.nc" in rewritten
    assert not any(k.startswith("activations/b/") or k.startswith("partial/b--") for k in rewritten), rewritten
    assert "activations/a/shard-00000.nc" not in rewritten
    assert {k for k in before if k.startswith("partial/a--")} <= rewritten


def test_added_image_is_listed_once_and_used(tmp_path, tiny_model_path, client):
    paths = write_images(tmp_path / "a", 6, seed=21)
    write_images(tmp_path / "b", 5, seed=22)
    sets = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    out = tmp_path / "out"
    spec = tiny_spec(tiny_model_path, sets, out)
    _run(spec, client)

    # one more image, sorting first: every shard's images shift
    extra = write_images(tmp_path / "new", 1, seed=23)[0]
    shutil.copyfile(extra, tmp_path / "a" / "img-000a.png")
    lines: list[str] = []
    new = _run(spec, client, lines)
    fresh = _run(tiny_spec(tiny_model_path, sets, tmp_path / "fresh"), client)
    _assert_same(new, fresh)
    listed = [p for p in new["image_path"].sel(image_set="a").values if p]
    assert len(listed) == len(set(listed)) == len(paths) + 1
    assert str(tmp_path / "a" / "img-000a.png") in listed
    assert any("extracted again" in line and "added (img-000a.png)" in line for line in lines), lines


def test_unchanged_rerun_reuses_everything(tmp_path, tiny_model_path, client):
    write_images(tmp_path / "a", 5, seed=31)
    write_images(tmp_path / "b", 5, seed=32)
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, tmp_path / "out")
    first = _run(spec, client)
    before = _mtimes(tmp_path / "out")
    lines: list[str] = []
    second = _run(spec, client, lines)
    assert _mtimes(tmp_path / "out") == before
    assert not any("extracted again" in line for line in lines)
    _assert_same(second, first)
