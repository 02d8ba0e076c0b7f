"""A differentiation task in bounded memory (issue 12, item 2): shorter stacks of repeats, then
blocks of images, chosen from the task's memory budget, with the same results.

References: the unbounded task itself (stacks are bit-identical), and scipy's ``pdist`` on one
repeat's sampled units (the blocked path, which sums in another order, to 1e-12).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from daskdiff.core.estimate import stack_bytes
from daskdiff.core.units import Sampling, storage_plan, units_for
from daskdiff.io.shards import ShardWriter, activation_variables, shard_labels
from daskdiff.pipeline.plan import TASK_MEMORY_SHARE, task_memory_budget
from daskdiff.pipeline.spec_file import parse_spec
from daskdiff.pipeline.tasks import DiffTask, run_diff_task, stack_repeats

SHAPE = (6, 6, 8)  # 288 units


def _shards(folder, n_images, plan, per_shard):
    rng = np.random.default_rng(7)
    files = []
    for s, start in enumerate(range(0, n_images, per_shard)):
        m = min(per_shard, n_images - start)
        path = folder / f"shard-{s:05d}.nc"
        labels = shard_labels(plan, paths=[f"/im/{start + i}.png" for i in range(m)], image_set="big", image_index=list(range(start, start + m)),
                              logits=np.zeros((m, 3), np.float32), labels=["a", "b", "c"], attrs={})
        with ShardWriter(path, plan, chunk_images=16) as writer:
            writer.append({name: rng.gamma(2.0, 1.0, size=(m, k)).astype(np.float32) for name, (_, k) in activation_variables(plan).items()})
            writer.write_labels(labels)
        files.append(str(path))
    return files


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    """1,500 images of one conv layer, in 3 shards: a stack of one repeat needs ~74 MB."""
    folder = tmp_path_factory.mktemp("big")
    sampling = Sampling(n_units=(40, "all"), repeats=3, seed=2)
    plan = storage_plan({"conv": SHAPE}, ["units"], sampling)
    return folder, _shards(folder, 1500, plan, 500), sampling


def _task(folder, files, sampling, budget, metric="euclidean", name="t"):
    return DiffTask("big", "units", "conv", SHAPE, tuple(files), str(folder / name), sampling, metric, "zscore", True,
                    "condensed", False, repeats_per_stack=3, memory_budget=budget)


def test_stack_size_follows_the_budget():
    n, k = 1500, 40
    one = stack_bytes(1, n, k, "euclidean")
    assert stack_repeats(n, k, "euclidean", 25, None) == 25
    assert stack_repeats(n, k, "euclidean", 25, 25 * one) == 25
    got = stack_repeats(n, k, "euclidean", 25, 3 * one)
    assert 1 <= got <= 3 and stack_bytes(got, n, k, "euclidean") <= 3 * one
    assert stack_repeats(n, k, "euclidean", 25, one - 1) == 0  # one repeat alone does not fit: blocks


@pytest.mark.parametrize("metric", ["euclidean", "cityblock"])
def test_blocked_task_equals_the_unbounded_one_and_scipy(big_set, metric):
    folder, files, sampling = big_set
    free = run_diff_task(_task(folder, files, sampling, None, metric, f"free-{metric}")).arrays
    assert stack_repeats(1500, 40, metric, 3, 20 * 2**20) == 0  # 20 MB forces blocks of images
    small = run_diff_task(_task(folder, files, sampling, 20 * 2**20 + 1500 * 288 * 4 + 288 * 8, metric, f"small-{metric}")).arrays
    np.testing.assert_allclose(small["differentiation"], free["differentiation"], rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(small["units_used"], free["units_used"])

    # scipy on repeat 1 of n_units=40: the sampled units, z-scored over the whole matrix
    from daskdiff.io.shards import read_features

    values, index = read_features(files, "units", "conv")
    x = values[:, np.searchsorted(index, units_for(SHAPE, "units", 40, sampling, "conv", 1))].astype(np.float64)
    z = (x - x.mean()) / x.std()
    divisor = np.sqrt(40) if metric == "euclidean" else 40
    np.testing.assert_allclose(small["differentiation"][0, 1], np.median(pdist(z, metric)) / divisor, rtol=1e-12)


def test_shorter_stacks_are_bit_identical(big_set):
    folder, files, sampling = big_set
    free = run_diff_task(_task(folder, files, sampling, None, name="free-stack")).arrays
    values_bytes = 1500 * 288 * 4 + 288 * 8
    budget = values_bytes + stack_bytes(1, 1500, 288, "euclidean") + 1  # room for one repeat of 'all', not three
    short = run_diff_task(_task(folder, files, sampling, budget, name="short")).arrays
    np.testing.assert_array_equal(short["differentiation"], free["differentiation"])


def test_blocked_task_stays_near_its_budget(big_set):
    """tracemalloc peak of the whole task against the budget (values included)."""
    folder, files, sampling = big_set
    budget = 1500 * 288 * 4 + 20 * 2**20
    tracemalloc.start()
    try:
        run_diff_task(_task(folder, files, sampling, budget, name="traced"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    unbounded = 1500 * 288 * 4 + stack_bytes(3, 1500, 40, "euclidean")
    assert peak < 1.5 * budget < unbounded, (peak, budget, unbounded)


def test_budget_from_the_spec_or_the_workers():
    base = {"name": "m", "image_sets": {"a": "x"}, "output": "o"}
    auto = parse_spec(base, "test")
    assert task_memory_budget(auto, [(8 * 2**30, 2), (4 * 2**30, 1)]) == int(TASK_MEMORY_SHARE * 4 * 2**30)
    assert task_memory_budget(auto, [(0, 1)]) is None  # workers without a memory limit
    fixed = parse_spec({**base, "analysis": {"task_memory": "3GiB"}}, "test")
    assert task_memory_budget(fixed, [(2**30, 1)]) == 3 * 2**30
    with pytest.raises(ValueError, match="analysis.task_memory.*'auto' or a positive size"):
        parse_spec({**base, "analysis": {"task_memory": "lots"}}, "test")
