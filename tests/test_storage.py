"""Shard files written batch by batch read back exactly like xarray's own NetCDF of the same data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

from daskdiff.io import shards as storage
from daskdiff.core.units import Sampling, storage_plan
from daskdiff.io.atomic import atomic_path
from daskdiff.io.shards import activation_variables, read_features, shard_labels, ShardWriter

SHAPES = {"conv": (6, 5, 4), "pool": (3, 2, 4), "fc": (7,), "predictions": (5,)}
LABELS = [f"class_{i}" for i in range(5)]


def _plan():
    sampling = Sampling(n_units=(3, 10), repeats=4, seed=5)
    return storage_plan(SHAPES, ["units", "filter_mean", "location_mean"], sampling, full_layers=["predictions"])


def _shard(plan, n, seed=0):
    rng = np.random.default_rng(seed)
    features = {name: rng.standard_normal((n, size)).astype(np.float32) for name, (_, size) in activation_variables(plan).items()}
    logits = rng.standard_normal((n, 5)).astype(np.float32)
    labels = shard_labels(
        plan,
        paths=[f"/images/é{i}.png" for i in range(n)],
        image_set="set",
        image_index=list(range(10, 10 + n)),
        logits=logits,
        labels=LABELS,
        attrs={"model": "tiny", "shard": 3},
        skipped=[("/images/bad.png", "cannot identify image file")],
    )
    return features, labels


def _reference(plan, features, labels):
    """The same shard as one xarray Dataset (what ``Dataset.to_netcdf`` would store)."""
    data = {name: (("image", dim), features[name]) for name, (dim, _) in activation_variables(plan).items()}
    return labels.assign(data)


@pytest.mark.parametrize(("n", "batches"), [(7, [3, 3, 1]), (4, [4]), (0, [])])
def test_streamed_shard_reads_back_like_xarray_netcdf(tmp_path, n, batches):
    plan = _plan()
    features, labels = _shard(plan, n)
    path = tmp_path / "shard.nc"
    with ShardWriter(path, plan, chunk_images=3) as writer:
        start = 0
        for size in batches:
            writer.append({k: v[start : start + size] for k, v in features.items()})
            start += size
        writer.write_labels(labels)

    reference = tmp_path / "reference.nc"
    _reference(plan, features, labels).to_netcdf(reference, engine="netcdf4")
    with xr.open_dataset(path) as got, xr.open_dataset(reference) as want:
        xr.testing.assert_identical(got.load(), want.load())
        assert set(got.data_vars) == set(activation_variables(plan))
        assert "channel__conv" in got.coords and got["units__conv"].dims == ("image", "unit__conv")
    values, index = read_features([path], "units", "conv")
    np.testing.assert_array_equal(values, features["units__conv"])
    np.testing.assert_array_equal(index, plan["conv"].units)


def test_chunks_are_whole_images_and_capped(tmp_path, monkeypatch):
    import netCDF4

    plan = _plan()
    monkeypatch.setattr(storage, "CHUNK_BYTES", 4 * 30)  # 30 float32 values per chunk at most
    with ShardWriter(tmp_path / "s.nc", plan, chunk_images=16):
        pass
    with netCDF4.Dataset(tmp_path / "s.nc") as nc:
        for name, (_, size) in activation_variables(plan).items():
            rows, cols = nc[name].chunking()
            assert cols == size and rows == max(1, min(16, 30 // size)), name


def test_each_appended_batch_is_in_the_file_before_the_next(tmp_path):
    """The writer holds no chunk back: HDF5's chunk cache (64 MiB per variable by netCDF's default)
    kept up to ~0.8 GB of a VGG16 shard in the worker and wrote it only when the labels came,
    2.8-4 s at the end of each extraction task (2026-12-08)."""
    plan = storage_plan({"conv": (100, 100, 20)}, ["units"], Sampling(n_units=("all",), repeats=1, seed=0))
    rng = np.random.default_rng(0)
    features = {name: rng.standard_normal((6, size), dtype=np.float32) for name, (_, size) in activation_variables(plan).items()}
    assert sum(v.nbytes for v in features.values()) == 6 * 200_000 * 4  # 4.8 MB: far more than the file's own metadata
    path = tmp_path / "s.nc"
    with ShardWriter(path, plan, chunk_images=2) as writer:
        for start in range(0, 6, 2):
            writer.append({k: v[start : start + 2] for k, v in features.items()})
            written = sum(v[: start + 2].nbytes for v in features.values())
            assert os.path.getsize(path) >= written, (start, os.path.getsize(path), written)


def test_batch_with_mismatched_image_counts_is_refused(tmp_path):
    plan = _plan()
    features, _ = _shard(plan, 2)
    features["units__fc"] = features["units__fc"][:1]
    with ShardWriter(tmp_path / "s.nc", plan) as writer, pytest.raises(ValueError, match=r"different numbers of images: \[1, 2\]"):
        writer.append(features)


def test_atomic_path_publishes_only_finished_files(tmp_path):
    target = tmp_path / "sub" / "file.nc"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".file.nc.") and ".tmp" in tmp.name
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and os.listdir(target.parent) == ["file.nc"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["file.nc"]


def test_storage_recipe_rebuilds_the_plan_once_per_process_and_checks_its_digest():
    """Tasks carry a StorageRecipe (small, by value); workers rebuild the same plan from it."""
    import pickle

    from daskdiff.core.units import cached_storage_plan, plan_digest, StorageRecipe
    from daskdiff.errors import JobError

    recipe = StorageRecipe(tuple(SHAPES.items()), ("units", "filter_mean", "location_mean"), Sampling(n_units=(3, 10), repeats=4, seed=5),
                           full_layers=("predictions",))
    assert len(pickle.dumps(recipe)) < 1000
    digest = plan_digest(_plan())
    plan = cached_storage_plan(pickle.loads(pickle.dumps(recipe)), digest)
    assert plan_digest(plan) == digest and list(plan) == list(SHAPES)
    assert cached_storage_plan(recipe, digest) is plan  # built once per process
    other = StorageRecipe(recipe.shapes, recipe.substrates, Sampling(n_units=(3, 10), repeats=4, seed=6), full_layers=("predictions",))
    with pytest.raises(JobError, match="same daskdiff and numpy versions on the workers"):
        cached_storage_plan(other, digest)


def test_store_none_extracts_what_needed_does_and_writes_no_units_but_the_full_layers():
    from daskdiff.core.units import bytes_per_image, plan_digest

    sampling = Sampling(n_units=(3, 10), repeats=4, seed=5)
    subs = ["units", "filter_mean"]
    needed = storage_plan(SHAPES, subs, sampling, full_layers=["predictions"])
    none = storage_plan(SHAPES, subs, sampling, store="none", full_layers=["predictions"])
    for name in SHAPES:
        assert none[name].extracted() == needed[name].extracted() == needed[name].stored()
        np.testing.assert_array_equal(none[name].units, needed[name].units)
    assert {n: lp.stored() for n, lp in none.items()} == {
        "conv": {"filter_mean": 4}, "pool": {"filter_mean": 4}, "fc": {"filter_mean": 7}, "predictions": {"units": 5, "filter_mean": 5}}
    assert [v for v in activation_variables(none) if v.startswith("units__")] == ["units__predictions"]
    assert bytes_per_image(none) == 4 * (4 + 4 + 7 + 5 + 5)
    assert bytes_per_image(none, extracted=True) == bytes_per_image(needed)
    # a shard written without units is never taken for one with them (and back)
    assert plan_digest(none) != plan_digest(needed)


def test_needed_plans_keep_the_digest_of_shards_written_before_store_none_existed():
    """The digest formula of earlier versions, by hand: their shards still resume."""
    import hashlib

    from daskdiff.core.units import plan_digest

    plan = _plan()
    digest = hashlib.sha256()
    for name, lp in plan.items():
        digest.update(repr((name, lp.shape, lp.all_units, lp.filter_mean, lp.location_mean)).encode())
        if lp.units is not None and not lp.all_units:
            digest.update(np.ascontiguousarray(lp.units, dtype=np.int64).tobytes())
    assert plan_digest(plan) == digest.hexdigest()
