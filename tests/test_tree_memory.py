"""The process tree a job's estimate prints (:func:`daskdiff.pipeline.plan.tree_memory`): what
it counts per worker, against the model's layer shapes counted by hand. Its accuracy against a
measured tree (peak PSS of every process) is printed by ``benchmarks/job.py`` (seed job:
5.60 GB printed, 5.54 GB measured; ``store: none`` 10.8 GB, 12.3 GB; one two-thread worker 3.97 GB), not timed here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import build_tiny_model
from jobtools import tiny_spec


@pytest.mark.keras
@pytest.mark.parametrize("store, handoff, kept", [("needed", "disk", False), ("needed", "memory", True), ("none", "auto", True)])
def test_kept_values_are_counted_where_the_job_keeps_them(tmp_path, tiny_model_path, image_folders, store, handoff, kept):
    from daskdiff.pipeline.health import worker_baseline
    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.plan import tree_memory

    sets = {k: str(Path(v[0]).parent) for k, v in image_folders.items()}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", analysis__substrates=["units"],
                     extraction={"batch_size": 4, "shard_size": 3, "store": store, "handoff": handoff},
                     cluster={"kind": "local", "n_workers": 2})
    plan = plan_job(spec, Path("."), echo=lambda *a: None)
    try:
        tree = tree_memory(plan)
        model = build_tiny_model()
        per_image = 4 * sum(math.prod(layer.output.shape[1:]) for layer in model.layers[1:])  # float32, every layer
        images = sum(len(v) for v in image_folders.values())
        assert tree.workers == 2
        assert tree.kept == (per_image * images // 2 if kept else 0)
        weights = 4 * sum(int(w.numpy().size) for w in model.weights)
        assert tree.baseline == worker_baseline(weights, "tensorflow")
        assert tree.total == tree.client + tree.scheduler + 2 * (tree.baseline + tree.work + tree.kept)
        assert "process tree: ~" in tree.line() and ("kept values" in tree.line()) == kept
    finally:
        plan.release()


@pytest.mark.keras
def test_no_tree_is_printed_for_a_cluster_elsewhere(tmp_path, tiny_model_path, image_folders):
    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.plan import tree_memory

    sets = {k: str(Path(v[0]).parent) for k, v in image_folders.items()}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", cluster={"kind": "address", "address": "tcp://127.0.0.1:1"})
    plan = plan_job(spec, Path("."), echo=lambda *a: None)
    try:
        assert tree_memory(plan) is None  # its workers run on other machines, with their own memory
    finally:
        plan.release()


@pytest.mark.keras
def test_a_two_thread_worker_holds_one_model_and_two_tasks(tmp_path, tiny_model_path, image_folders):
    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.plan import tree_memory

    sets = {k: str(Path(v[0]).parent) for k, v in image_folders.items()}
    trees = {}
    for workers, threads in ((2, 1), (1, 2)):
        spec = tiny_spec(tiny_model_path, sets, tmp_path / f"out-{workers}", cluster={"kind": "local", "n_workers": workers,
                                                                                   "threads_per_worker": threads})
        plan = plan_job(spec, Path("."), echo=lambda *a: None)
        try:
            trees[workers] = tree_memory(plan)
        finally:
            plan.release()
    one, two = trees[1], trees[2]
    assert (one.workers, one.baseline, one.work) == (1, two.baseline, 2 * two.work)  # the threads' tasks run side by side
    assert one.total == two.total - two.baseline  # one model fewer
