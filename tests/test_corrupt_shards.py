"""Corrupt shards (bytes flipped on disk, truncated files) are detected, named and recomputed."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from daskdiff.core.units import Sampling, storage_plan
from daskdiff.io import shards as storage
from daskdiff.io.shards import (
    CorruptShardError, ShardWriter, activation_variables, inputs_digest, read_features, shard_labels, shard_status,
)
from daskdiff.pipeline import run as job_run
from daskdiff.errors import JobError
from daskdiff.pipeline.job import run_job

from conftest import write_images
from jobtools import flip_chunk, local_cluster, tiny_spec

SHAPES = {"conv": (6, 5, 4), "fc": (7,)}
RECORD = [(f"/im/{i}.png", 100 + i, 10**18 + i) for i in range(8)]
"""A made-up input record (path, size, mtime_ns) for shards written by hand."""


def _write_shard(path, n=5, seed=0):
    plan = storage_plan(SHAPES, ["units", "filter_mean"], Sampling(n_units=(3,), repeats=2, seed=1))
    rng = np.random.default_rng(seed)
    features = {k: rng.standard_normal((n, size)).astype(np.float32) for k, (_, size) in activation_variables(plan).items()}
    labels = shard_labels(plan, paths=[f"/im/{i}.png" for i in range(n)], image_set="s", image_index=list(range(n)),
                          logits=rng.standard_normal((n, 3)).astype(np.float32), labels=["a", "b", "c"],
                          attrs={"plan_digest": "d", "inputs_digest": inputs_digest("d", RECORD[:n])})
    with ShardWriter(path, plan, chunk_images=2) as writer:
        writer.append(features)
        writer.write_labels(labels, RECORD[:n])
    return features


def test_shards_are_read_into_one_array_in_order_with_one_shard_extra_at_most(tmp_path):
    """Three shards of a 40,000-feature layer read back as their rows in shard order, exactly;
    the read's peak (tracemalloc) is the values plus a few chunks of 4 images, not twice the values."""
    import tracemalloc

    shapes = {"conv": (20, 20, 100)}
    plan = storage_plan(shapes, ["units"], Sampling(n_units=("all",), repeats=1, seed=1))
    paths, written = [], []
    for shard, n in enumerate((16, 16, 9)):
        rng = np.random.default_rng(shard)
        features = {k: rng.standard_normal((n, size)).astype(np.float32) for k, (_, size) in activation_variables(plan).items()}
        record = [(f"/im/{shard}-{i}.png", 1, 1) for i in range(n)]
        labels = shard_labels(plan, paths=[r[0] for r in record], image_set="s", image_index=list(range(n)),
                              logits=rng.standard_normal((n, 3)).astype(np.float32), labels=["a", "b", "c"],
                              attrs={"plan_digest": "d", "inputs_digest": inputs_digest("d", record)})
        paths.append(tmp_path / f"shard-{shard:05d}.nc")
        with ShardWriter(paths[-1], plan, chunk_images=4) as writer:
            writer.append(features)
            writer.write_labels(labels, record)
        written.append(features["units__conv"])
    tracemalloc.start()
    try:
        values, index = read_features(paths, "units", "conv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(values, np.concatenate(written))
    np.testing.assert_array_equal(index, np.arange(40_000))
    chunk = 4 * 40_000 * 4
    assert values.nbytes <= peak < values.nbytes + 4 * chunk, (peak, values.nbytes, chunk)
    # the shards' numbers of images known (the job's metadata): each file is opened once, same values
    np.testing.assert_array_equal(read_features(paths, "units", "conv", [16, 16, 9])[0], values)
    with pytest.raises(CorruptShardError, match=r"shard-00001.nc.*not 15 images"):
        read_features(paths, "units", "conv", [16, 15, 9])
    # unit-major: the transpose, C order, read with the same peak (no image-major copy first)
    tracemalloc.start()
    try:
        rows, index = read_features(paths, "units", "conv", [16, 16, 9], units_first=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(rows, np.concatenate(written).T)
    assert rows.flags.c_contiguous and index.tolist() == list(range(40_000))
    assert rows.nbytes <= peak < rows.nbytes + 4 * chunk, (peak, rows.nbytes, chunk)
    with pytest.raises(CorruptShardError, match=r"shard-00002.nc.*not 8 images"):
        read_features(paths, "units", "conv", [16, 16, 8], units_first=True)


def test_flipped_bytes_raise_corrupt_shard_error_naming_the_file(tmp_path):
    path = tmp_path / "shard-00003.nc"
    features = _write_shard(path)
    with netCDF4.Dataset(path) as nc:
        assert all(nc[name].filters()["fletcher32"] for name in features)
        assert nc["unit__conv"].filters()["fletcher32"] and nc["top1_prob"].filters()["fletcher32"]
    flip_chunk(path, "units__conv", rows=slice(2, 4))
    for units_first in (False, True):
        with pytest.raises(CorruptShardError, match=f"shard {path} is corrupt") as info:
            read_features([path], "units", "conv", units_first=units_first)
        assert info.value.path == str(path)
    # other variables' chunks are intact and still read exactly
    np.testing.assert_array_equal(read_features([path], "units", "fc")[0], features["units__fc"])


def test_without_checksum_the_same_flip_is_read_silently(tmp_path, monkeypatch):
    """The reference the checksum is tested against: the same damage, unchecked, gives wrong values."""
    monkeypatch.setattr(storage, "CHECKSUM", {})
    path = tmp_path / "plain.nc"
    features = _write_shard(path)
    flip_chunk(path, "units__conv", rows=slice(2, 4))
    values, _ = read_features([path], "units", "conv")
    assert not np.array_equal(values, features["units__conv"])


def test_truncated_shard_is_not_complete_and_is_corrupt(tmp_path):
    path = tmp_path / "shard-00000.nc"
    _write_shard(path)
    plan = storage_plan(SHAPES, ["units", "filter_mean"], Sampling(n_units=(3,), repeats=2, seed=1))
    assert shard_status(path, plan, "d", RECORD[:5])[0] is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    meta, why = shard_status(path, plan, "d", RECORD[:5])
    assert meta is None and why.startswith("it is unreadable")
    with pytest.raises(CorruptShardError, match=str(path)):
        read_features([path], "units", "conv")


def _cluster(processes):
    if not processes:  # threads of this process (in-process transport): they see monkeypatches
        return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0")  # HDF5 is not thread-safe
    return local_cluster(2)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("corrupt")
    write_images(root / "noisy", 7, seed=1)
    write_images(root / "smooth", 6, seed=2, kind="smooth")
    sets = {"noisy": str(root / "noisy"), "smooth": str(root / "smooth")}
    return root, sets


@pytest.mark.cluster
def test_corrupt_shard_recomputed_within_the_run(tiny_job, tiny_model_path):
    root, sets = tiny_job
    out = root / "out"
    spec = tiny_spec(tiny_model_path, sets, out)
    with _cluster(processes=True) as cluster, Client(cluster) as client:
        first = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
        reference = xr.load_dataset(first.path)
        corrupt = out / "activations" / "noisy" / "shard-00001.nc"
        clean, _ = read_features([corrupt], "units", "conv2")
        flip_chunk(corrupt, "units__conv2", rows=slice(0, 3))
        with pytest.raises(CorruptShardError):
            read_features([corrupt], "units", "conv2")
        truncated = out / "activations" / "smooth" / "shard-00000.nc"
        size = truncated.stat().st_size
        sound, _ = read_features([truncated], "units", "conv2")
        truncated.write_bytes(truncated.read_bytes()[: size // 2])
        for p in (out / "partial").glob("*.npz"):
            p.unlink()
        first.path.unlink()
        lines = []
        second = run_job(spec, Path("."), client=client, progress=False, echo=lines.append)
    assert lines.count(f"shard {corrupt} is corrupt (checksum mismatch): removed, recomputing") == 1, lines
    again = xr.load_dataset(second.path)
    for name in ("differentiation", "rdm", "n_undefined"):
        np.testing.assert_array_equal(reference[name].values, again[name].values)
    np.testing.assert_array_equal(read_features([corrupt], "units", "conv2")[0], clean)  # replaced by a sound file
    assert truncated.stat().st_size == size  # re-extracted by its task, without a message
    np.testing.assert_array_equal(read_features([truncated], "units", "conv2")[0], sound)


def _corrupt_after_writing(task, *args, **kwargs):
    """extract_shard, then damage the fresh file of shard 0 of set 'noisy' (every time it is written)."""
    meta = _extract_shard(task, *args, **kwargs)
    if task.image_set == "noisy" and task.shard == 0 and not meta.get("resumed"):
        flip_chunk(meta["path"], "units__fc1")
    return meta


_extract_shard = job_run.extract_shard


@pytest.mark.cluster
def test_shard_corrupt_again_fails_the_job(tiny_job, tiny_model_path, monkeypatch):
    root, sets = tiny_job
    monkeypatch.setattr(job_run, "extract_shard", _corrupt_after_writing)  # in-process workers see the patch
    spec = tiny_spec(tiny_model_path, sets, root / "again")
    shard = root / "again" / "activations" / "noisy" / "shard-00000.nc"
    lines = []
    with _cluster(processes=False) as cluster, Client(cluster) as client:
        with pytest.raises(JobError, match=f"shard {shard} is corrupt again after it was recomputed"):
            run_job(spec, Path("."), client=client, progress=False, echo=lines.append)
    assert lines.count(f"shard {shard} is corrupt (checksum mismatch): removed, recomputing") == 1, lines
