"""One partial-result type (issue 21, item 3): the layout a task fills, its file keeps, the estimate
counts and the results file combines (with xarray).

References: the arrays a real task writes (shapes, dtypes, bytes, file size), a partial file
written by hand as daskdiff 29151c4 wrote it (still reused), and the results variables restated
with plain loops over the partials.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from daskdiff.core.estimate import partial_file_bytes
from daskdiff.core.partial_layout import SOURCE, PartialLayout
from daskdiff.core.units import Sampling, storage_plan
from daskdiff.io.partials import Partial, load_partial, sources_digest, write_partial
from daskdiff.io.results import assemble, combine_partials
from daskdiff.io.shards import ShardWriter, activation_variables, shard_labels, shard_metadata
from daskdiff.pipeline.tasks import DiffTask, SpectralOptions, partial_layout, run_diff_task

SHAPE = (3, 3, 4)  # 36 units


def _shards(folder, sizes, plan, digest="d0"):
    rng = np.random.default_rng(5)
    files, start = [], 0
    for s, m in enumerate(sizes):
        path = folder / f"shard-{s:05d}.nc"
        labels = shard_labels(plan, paths=[f"/im/{start + i}.png" for i in range(m)], image_set="a", image_index=list(range(start, start + m)),
                              logits=np.zeros((m, 3), np.float32), labels=["x", "y", "z"], attrs={"inputs_digest": f"{digest}-{s}"})
        with ShardWriter(path, plan, chunk_images=4) as writer:
            writer.append({name: rng.gamma(2.0, 1.0, size=(m, k)).astype(np.float32) for name, (_, k) in activation_variables(plan).items()})
            writer.write_labels(labels)
        files.append(str(path))
        start += m
    return files


@pytest.fixture(scope="module")
def movie_task(tmp_path_factory):
    """A 12-frame set in 2 shards, its task keeping the RDM and computing spectral differentiation."""
    folder = tmp_path_factory.mktemp("partial")
    sampling = Sampling(n_units=(5, "all"), repeats=4, seed=1)
    files = _shards(folder, [7, 5], storage_plan({"conv": SHAPE}, ["units"], sampling))
    task = DiffTask("a", "units", "conv", SHAPE, tuple(files), str(folder / "out"), sampling, "euclidean", "zscore", True,
                    "condensed", True, repeats_per_stack=2, spectral=SpectralOptions(fs=4.0, state_length=1.0))
    return task, tuple(shard_metadata(f) for f in files)


def test_the_layout_is_what_a_task_writes(movie_task):
    task, shards = movie_task
    got = run_diff_task(task, *shards)
    layout = partial_layout(task, shards)
    assert layout == PartialLayout(2, 4, 12, keep_rdm=True, spectral=True, source=True) == got.layout
    on_disk = load_partial(task.path)
    assert list(on_disk) == [f.name for f in layout.fields]  # the file's order
    for f in layout.fields:
        assert on_disk[f.name].dtype == f.dtype and on_disk[f.name].shape == layout.shapes()[f.name], f.name
        np.testing.assert_array_equal(on_disk[f.name], got.arrays[f.name])
    assert layout.nbytes() == sum(a.nbytes for a in on_disk.values())
    assert partial_file_bytes(layout) == pytest.approx(os.path.getsize(task.path), rel=0.02)
    assert str(on_disk[SOURCE]) == sources_digest([m["attrs"]["inputs_digest"] for m in shards])
    assert on_disk["rdm_count"].tolist() == [(~on_disk["undefined"][0]).sum(), 1]  # 'all': one repeat, past it none
    assert np.isnan(on_disk["differentiation"][1, 1:]).all() and not np.isnan(on_disk["differentiation"][0]).any()  # 'all': one repeat


def test_dask_counts_a_partials_arrays(movie_task):
    """Dask accounts a worker's memory by ``dask.sizeof``: a partial held there weighs its arrays."""
    from dask.sizeof import sizeof

    partial = run_diff_task(*movie_task[:1], *movie_task[1])
    assert sizeof(partial) >= sum(a.nbytes for a in partial.arrays.values()) > 0.9 * sizeof(partial)


def test_a_partial_file_of_the_previous_format_is_reused(movie_task):
    """A file written as daskdiff 29151c4 wrote it (its arrays by name, in its order) is read back, not recomputed."""
    task, shards = movie_task
    task = DiffTask(**{**task.__dict__, "output": task.output + "-old"})
    n_n, repeats, n = 2, 4, 12
    old = {
        "differentiation": np.full((n_n, repeats), 0.25),
        "undefined": np.zeros((n_n, repeats), dtype=bool),
        "units_used": np.array([5, 36], dtype=np.int64),
        "spectral_differentiation": np.full((n_n, repeats), 0.5),
        "rdm_sum": np.ones((n_n, n, n)),
        "rdm_count": np.array([4, 1], dtype=np.int64),
        "source": np.asarray(sources_digest([m["attrs"]["inputs_digest"] for m in shards])),
    }
    write_partial(task.path, old)
    reused = run_diff_task(task, *shards)
    assert reused.warning is None and set(reused.arrays) == set(old)
    for name, value in old.items():
        np.testing.assert_array_equal(reused.arrays[name], value, err_msg=name)


def _partials(sets, substrates, layers, n_n, repeats, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s, n in sets.items():
        for b in substrates:
            for layer in layers:
                und = rng.random((n_n, repeats)) < 0.3
                und[0] = True  # no defined repeat at all: its mean RDM is NaN
                arrays = {"differentiation": rng.random((n_n, repeats)), "undefined": und,
                          "units_used": np.array([3 + layers.index(layer) + 10 * substrates.index(b) + i for i in range(n_n)]),
                          "spectral_differentiation": rng.random((n_n, repeats)),
                          "rdm_sum": rng.random((n_n, n, n)) * (~und).sum(axis=1)[:, None, None],
                          "rdm_count": (~und).sum(axis=1)}
                out.append(Partial(s, b, layer, arrays))
    return out


def _metadata(sets):
    return {s: {"paths": [f"{s}/{i}.png" for i in range(n)], "skipped": [], "top1_label": np.array(["x"] * n, dtype=object),
                "top1_class": np.zeros(n, np.int64), "top1_prob": np.ones(n), "top5_class": np.zeros((n, 5), np.int64),
                "top5_prob": np.ones((n, 5)), "top5_label": np.full((n, 5), "x", dtype=object)} for s, n in sets.items()}


def test_results_are_the_partials_combined_by_label():
    sets, substrates, layers, n_units, repeats = {"big": 5, "small": 3}, ["units", "filter_mean"], ["l1", "l2", "l3"], [4, -1], 3
    partials = _partials(sets, substrates, layers, len(n_units), repeats)
    spectral = {"state_length": 1.0, "overlap": 0.0, "metric": "euclidean", "window": None, "log_frequency": False, "normalize": "zscore"}
    kw = dict(sets=list(sets), metadata=_metadata(sets), substrates=substrates, n_units=n_units, layers=layers, repeats=repeats,
              keep_rdm=True, attrs={"title": "t"}, fps={"big": 1.0, "small": 1.0}, spectral=spectral)
    ds = assemble(partials=partials, **kw)
    shuffled = assemble(partials=[partials[i] for i in np.random.default_rng(1).permutation(len(partials))], **kw)
    assert ds.identical(shuffled)
    assert ds["differentiation"].dims == ("image_set", "substrate", "n_units", "layer", "repeat")
    assert ds["rdm"].dims == ("image_set", "substrate", "n_units", "layer", "image_i", "image_j")
    assert ds["units_used"].dims == ("substrate", "n_units", "layer") and ds["n_undefined"].dtype == np.int64
    assert list(ds.coords) == ["image_set", "substrate", "n_units", "layer", "layer_index", "repeat", "rank", "image",
                               "image_name", "image_i", "image_j", "image_name_i", "image_name_j"]
    assert ds["n_units"].dtype == np.int64 and ds.sel(n_units=-1)["differentiation"].shape == (2, 2, 3, 3)
    assert ds.sizes["image_i"] == 5
    for p in partials:
        s, b, layer = list(sets).index(p.image_set), substrates.index(p.substrate), layers.index(p.layer)
        n = sets[p.image_set]
        for i in range(len(n_units)):
            np.testing.assert_array_equal(ds["differentiation"].values[s, b, i, layer], p.arrays["differentiation"][i])
            assert ds["n_undefined"].values[s, b, i, layer] == p.arrays["undefined"][i].sum()
            assert ds["units_used"].values[b, i, layer] == p.arrays["units_used"][i]
            rdm = ds["rdm"].values[s, b, i, layer]
            with np.errstate(invalid="ignore"):
                np.testing.assert_array_equal(rdm[:n, :n], p.arrays["rdm_sum"][i] / p.arrays["rdm_count"][i])
            assert np.isnan(rdm[n:]).all() and np.isnan(rdm[:, n:]).all()
            np.testing.assert_array_equal(ds["normalized_spectral_differentiation"].values[s, b, i, layer],
                                          p.arrays["spectral_differentiation"][i] / np.sqrt(p.arrays["units_used"][i]))
    assert np.isnan(ds["rdm"].values[:, :, 0]).all()  # no defined repeat


def test_a_missing_partial_is_named():
    sets, layers = {"a": 3, "b": 3}, ["l1", "l2"]
    partials = _partials(sets, ["units"], layers, 1, 2)[:-1]
    with pytest.raises(ValueError, match=r"no partial result for 1 \(set, substrate, layer\), e.g. \('b', 'units', 'l2'\)"):
        combine_partials(partials, sets=list(sets), substrates=["units"], layers=layers, n_units=[-1])
