"""Pipeline layer: the unit-statistics pass of the data-dependent sampling modes (``active``,
``weighted=mean``, ``weighted=variance``).

Their draws depend on every image of the job, so before a layer is differentiated:

1. one task per (set, substrate, layer) reduces that set's stored values to per-unit sufficient
   statistics (:func:`daskdiff.core.activity.unit_stats`), on the set's shard futures, reading
   the values as the differentiation task does (from the files, or from the workers' memory);
2. one task per (substrate, layer) merges the sets in the job's set order and builds the pool of
   units the mode draws from (:func:`daskdiff.core.activity.unit_pool`);
3. every set's differentiation task of that (substrate, layer) takes the pool as an argument.

So every set draws the same units, and the pool does not depend on shard size, worker count or
task order. The cost is one more read of every analysed variable (two passes over it in memory)
and, for the ``units`` substrate, storing every unit (:func:`daskdiff.core.units.storage_plan`).
"""

from __future__ import annotations

from typing import Any

from ..core.activity import merge_unit_stats, unit_pool, unit_stats, UnitStats
from ..core.sampling import UnitPool
from ..io.layout import variable_name
from .plan import JobPlan
from .tasks import DiffTask, task_values


def set_unit_stats(task: DiffTask, *shards: Any, values: list | None = None) -> UnitStats:
    """Statistics of the variable ``task`` reads, over its set's images (every feature stored)."""
    data, index = task_values(task, values, shards)
    if len(index) != data.shape[1] or (len(index) and index[-1] != len(index) - 1):
        raise ValueError(f"{task.key}: the shards do not store every unit, which sampling {task.sampling.mode!r} needs; "
                         "they were written for another plan: re-run with --overwrite")
    return unit_stats(data)


def layer_pool(mode: str, label: str, *parts: UnitStats) -> UnitPool:
    """The pool of one (substrate, layer): its sets' statistics merged in the order given."""
    return unit_pool(merge_unit_stats(parts), mode, layer=label)


def pool_summary(pool: UnitPool) -> dict[str, int]:
    """What the results record of a pool: features not constant over the images, and eligible
    (drawn from) features."""
    return {"active_units": pool.n_active, "eligible_units": len(pool.units)}


def submit_pools(client: Any, plan: JobPlan, diff_tasks: list[DiffTask], shards: dict[str, list],
                 values: dict[str, list[dict[str, Any]]], suffix: str = "") -> dict[tuple[str, str], Any]:
    """Submit the statistics pass; ``(substrate, layer)`` -> the future of its :class:`UnitPool`.

    ``shards``: per set, its shard metadata futures (shard order); ``values``: per set, per
    shard, variable name -> the future of its values kept in memory (empty: read from files).
    Pools fail without retries: an empty pool is an input error, the same on every try.
    """
    per_layer: dict[tuple[str, str], list[Any]] = {}
    for t in diff_tasks:
        kept = values.get(t.image_set)
        name = variable_name(t.substrate, t.layer)
        stats = client.submit(set_unit_stats, t, *shards[t.image_set], values=[v[name] for v in kept] if kept else None,
                              key=plan.key(t, f"-stats{suffix}"), retries=plan.spec.extraction.retries)
        per_layer.setdefault((t.substrate, t.layer), []).append(stats)
    mode = plan.sampling.mode
    return {(sub, layer): client.submit(layer_pool, mode, layer if sub == "units" else f"{layer} ({sub})", *parts,
                                        key=f"daskdiff-{plan.token}-pool--{sub}--{layer}{suffix}", retries=0)
            for (sub, layer), parts in per_layer.items()}
