"""Pipeline layer, step 3 of a job: run its plan on a Dask cluster.

:func:`run` submits every task of the job at once, as one graph of pure, idempotent tasks whose
outputs are files with deterministic names, and gathers what they return:

1. extraction: one task per shard -> ``activations/<set>/shard-NNNNN.nc``; it returns the shard's
   labels and skipped files;
2. differentiation: one task per (set, substrate, layer), computing every ``n_units`` and every
   repeat from one read of that layer's stored values -> ``partial/<set>--<substrate>--<layer>.npz``;
   it returns the same arrays. A set's tasks depend on that set's shards only (Dask futures as
   arguments), so a set starts differentiating as soon as its own shards are written.

Every task carries its inputs by value (the storage plan as its small
:class:`~daskdiff.core.units.StorageRecipe`; nothing is scattered), so Dask can rerun any task on
any worker: a worker that dies costs the job its tasks in progress, not the job. Every task key
holds the job's :attr:`~daskdiff.pipeline.plan.JobPlan.token`, so jobs that share a scheduler never
share a task. A task finds its own finished file on its worker and reuses it (resume); a corrupt
shard found by a differentiation task is deleted and recomputed within the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..core.batches import shard_size
from ..core.estimate import revised_wall_seconds
from ..core.sampling import is_data_mode
from ..core.units import bytes_per_image, cached_storage_plan, StorageRecipe
from ..errors import DaskdiffError, JobError
from ..io.atomic import DiskFullError
from ..io.location import for_task
from ..io.layout import ACTIVATIONS_DIR, PARTIAL_DIR, shard_path, variable_name
from ..io.partials import Partial
from ..io.results import set_metadata
from ..io.shards import CorruptShardError
from ..logs import reporter, warn
from ..model.build import ModelSpec
from ..model.extract import extract_shard, release_models, ShardTask
from .activity import pool_summary, submit_pools
from .budget import duration
from .health import WorkerWatch
from .machine import machine_memory
from .plan import JobPlan, keeps_values, task_memory_budget
from .resolve import storage_options
from .spec import JobSpec
from .tasks import DiffTask, run_diff_task, SpectralOptions
from .workers import decoders, device_error, give_back_freed_memory, gpu_resource_offered, mislabeled_gpu_workers, WorkerSetup

_echo = reporter(__name__)


def _release_and_trim() -> None:
    release_models()
    give_back_freed_memory()


async def _release_models() -> None:
    """:func:`~daskdiff.model.extract.release_models` and
    :func:`~daskdiff.pipeline.workers.give_back_freed_memory` on a worker (a coroutine, so that the
    client need not wait: ``Client.run(wait=False)`` takes only these), in a thread, so that the
    worker's event loop (its heartbeats, its answer to a close) does not wait for them."""
    await asyncio.get_running_loop().run_in_executor(None, _release_and_trim)


def run(plan: JobPlan, client: Any, *, attrs: dict, keep_rdm: bool, progress: bool = True,
        clock: Callable[[str], None] = lambda stage: None, echo: Callable = _echo,
        revised: dict | None = None, release: bool = False) -> tuple[dict[str, dict], list[Partial], dict]:
    """Run ``plan`` on ``client``'s cluster; the sets' metadata, the partial results (results order)
    and, for a data-dependent sampling mode, ``(substrate, layer)`` -> its pool's
    :func:`~daskdiff.pipeline.activity.pool_summary` (else empty).

    ``attrs``: what every shard file records (the model's identity, daskdiff's version);
    ``keep_rdm``: the tasks return their RDMs; ``progress``: a progress bar per stage (stderr);
    ``clock(stage)`` is called as each stage ends (``extracted``, ``differentiated``). Workers
    that cannot run a task (paused, or restarted for memory) end the job with a
    :class:`JobError` saying what to set (:class:`~daskdiff.pipeline.health.WorkerWatch`).
    ``revised``: filled in (``left_s``, ``image_s``, ``at``: its ``time.perf_counter()``) when the
    first extraction task that ran reports its time, and the estimate is revised and said (:class:`_Reviser`).
    ``release``: once every shard is extracted, the workers drop their models
    (:func:`~daskdiff.model.extract.release_models`), whose memory the differentiation stage then
    has; for a cluster the job started (a worker of someone else's cluster keeps its model warm).
    """
    def stage_done(stage: str) -> None:
        clock(stage)
        if release and stage == "extracted":
            client.run(_release_models, wait=False)

    with WorkerWatch(client, plan.memory, echo) as watch:
        try:
            client.register_plugin(WorkerSetup())
            submitted = _submit(client, plan, attrs, keep_rdm, echo)
            metadata, partials = _gather(client, plan, submitted, progress, stage_done, echo, watch, _Reviser(plan, client, revised, echo))
            return metadata, partials, {k: client.submit(pool_summary, f, key=f"{f.key}-summary").result() for k, f in submitted.pools.items()}
        except Exception as err:  # e.g. a closed connection to a worker its nanny killed for memory
            if isinstance(err, DaskdiffError) or (why := watch.explain(err)) is None:
                raise
            raise why from None


def _shard_tasks(plan: JobPlan, attrs: dict) -> list[ShardTask]:
    e = plan.spec.extraction
    size = shard_size(e.shard_size, e.batch_size)
    options = storage_options(plan.spec)
    tasks = []
    for name, paths in plan.sets.items():
        for shard, start in enumerate(range(0, len(paths), size)):
            chunk = tuple(paths[start : start + size])
            tasks.append(ShardTask(name, shard, chunk, start, for_task(plan.output), e.batch_size, e.resize, e.strict, attrs,
                                   exif_orientation=e.exif_orientation == "apply",
                                   decoders=0 if e.decoders == "auto" else e.decoders, storage_options=options))
    return tasks


def _worker_limits(client: Any) -> list[tuple[int, int]]:
    return [(int(w.get("memory_limit") or 0), int(w.get("nthreads") or 1)) for w in client.scheduler_info()["workers"].values()]


def _diff_tasks(plan: JobPlan, keep_rdm: bool, memory_budget: int | None = None) -> list[DiffTask]:
    """One task per (set, substrate, layer), in results order; shard files are known from the plan."""
    a = plan.spec.analysis
    e = plan.spec.extraction
    size = shard_size(e.shard_size, e.batch_size)
    tasks = []
    o = a.spectral
    for name, paths in plan.sets.items():
        files = tuple(for_task(shard_path(plan.output, name, i)) for i in range(-(-len(paths) // size)))
        spectral = (SpectralOptions(plan.fps[name], o.state_length, o.metric, o.window_arg(), o.overlap, o.log_frequency)
                    if "spectral" in a.measures else None)
        for substrate in a.substrates:
            for layer in plan.layers:
                tasks.append(
                    DiffTask(name, substrate, layer, plan.shapes[layer], files, for_task(plan.output), plan.sampling,
                             a.metric, a.normalize, a.per_unit, a.median_over, keep_rdm, a.repeats_per_task, memory_budget,
                             images="images" in a.measures, spectral=spectral,
                             stored=plan.storage[layer].stored().get(substrate, 0), device=a.device)
                )
    return tasks


def _gpu_resources(client: Any, spec: JobSpec, echo: Callable = _echo) -> dict | None:
    """``{'GPU': 1}`` when some worker offers a GPU it has; waits for one when ``require_gpu`` is set.

    A worker whose ``GPU`` resource is not backed by a GPU (``dask worker --resources GPU=1`` on
    a CPU node) is named in one line each. With ``require_gpu`` that is a :class:`JobError`;
    without, extraction is restricted to GPU workers only where one really has a GPU.
    """
    gpu = gpu_resource_offered(client)
    deadline = time.monotonic() + spec.cluster.start_timeout
    while spec.extraction.require_gpu and not gpu and time.monotonic() < deadline:
        time.sleep(1.0)  # workers of a batch cluster may still be queued
        gpu = gpu_resource_offered(client)
    if spec.extraction.require_gpu and not gpu:
        raise JobError(
            f"extraction.require_gpu is set but no worker offered a 'GPU' resource within "
            f"cluster.start_timeout={spec.cluster.start_timeout} s; start workers with --resources GPU=1 "
            "(dask-cuda's LocalCUDACluster does) or set require_gpu: false"
        )
    if not gpu:
        return None
    wrong, labeled = mislabeled_gpu_workers(client)
    if wrong and spec.extraction.require_gpu:
        address, found = next(iter(wrong.items()))
        raise JobError(
            f"extraction.require_gpu is set but {len(wrong)} of {labeled} worker(s) offering a 'GPU' resource have no GPU "
            f"(worker {address}: {found}); start those workers without --resources GPU=1 or on GPU nodes (check the "
            "CUDA driver and a GPU build of the backend there), or set require_gpu: false"
        )
    rest = "extraction tasks still go to it, on CPU" if len(wrong) < labeled else "extraction tasks go to every worker"
    for address, found in wrong.items():
        warn(echo, f"warning: worker {address} offers a 'GPU' resource but has no GPU ({found}); {rest}")
    return {"GPU": 1} if len(wrong) < labeled else None


@dataclass
class _Submitted:
    """The job's futures: extraction per set (shard order) and differentiation (results order)."""

    shards: dict[str, list[tuple[Any, ShardTask]]]
    diffs: list[tuple[Any, DiffTask]]
    resources: dict | None = None
    """Worker resources of the extraction tasks (also those of a recomputed corrupt shard)."""
    values: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per set, per shard: variable name -> the future of its values kept in memory (none: read from files)."""
    pools: dict[tuple[str, str], Any] = field(default_factory=dict)
    """(substrate, layer) -> the future of its pool of units (data-dependent sampling modes only)."""


def _extract(task: ShardTask, recipe: StorageRecipe, digest: str, model: ModelSpec, keep: bool = False) -> dict[str, Any]:
    """:func:`extract_shard` with the storage plan built on the worker from ``recipe`` (``keep``:
    the values stay in the worker's memory, see :func:`_submit_shard`).

    Every input is passed by value (a few hundred bytes), nothing is scattered: when a worker
    dies, Dask reruns its tasks anywhere, and the job loses only the work in progress. An
    accelerator that fails (out of memory, device lost) raises
    :class:`~daskdiff.errors.DeviceError`, naming the worker, the device and the batch size.
    """
    # extraction.decoders, decided on the worker: auto (0), or the number given, capped by its cores
    task = dataclasses.replace(task, decoders=decoders(task.decoders or None))
    try:
        return extract_shard(task, cached_storage_plan(recipe, digest), model, keep=keep)
    except Exception as err:
        if (device := device_error(err, task.batch_size, f"shard {task.shard} of set {task.image_set!r}")) is None:
            raise
        raise device from err


def _diff_or_corrupt(task: DiffTask, *shards: Any, values: list | None = None, pool: Any = None) -> Partial | CorruptShardError:
    """:func:`run_diff_task`, but a corrupt shard is returned, not raised.

    Dask's ``retries`` would run a failed task again on the same damaged file; returned, the
    error reaches the client at once, which deletes and recomputes the shard (:func:`_gather`).
    """
    try:
        return run_diff_task(task, *shards, values=values, pool=pool)
    except CorruptShardError as err:
        return err


def _shard_metadata(extracted: dict[str, Any]) -> dict[str, Any]:
    """An extraction's result without its values: what the client gathers."""
    return {k: v for k, v in extracted.items() if k != "values"}


def _shard_variable(extracted: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """One variable's ``(values, index)`` of an extraction kept in memory (None: read its file)."""
    return None if extracted["values"] is None else extracted["values"][name]


def _handoff(plan: JobPlan, client: Any) -> bool:
    """Whether differentiation takes the shards' values from the workers' memory
    (:func:`daskdiff.pipeline.plan.keeps_values`, with the cluster's memory limits)."""
    e = plan.spec.extraction
    total = sum(limit or machine_memory() for limit, _ in _worker_limits(client)) if e.store != "none" and e.handoff == "auto" else None
    return keeps_values(e, bytes_per_image(plan.storage, extracted=True) * sum(map(len, plan.sets.values())), total)


def _submit_shard(client: Any, plan: JobPlan, t: ShardTask, keep: bool, resources: dict | None,
                  suffix: str = "") -> tuple[Any, dict[str, Any] | None]:
    """Submit one extraction: its metadata future and, with ``keep``, a future per variable.

    With ``keep`` the extraction task's values stay in its worker's memory; one small task per
    variable picks that variable out, so a differentiation task depends on (and Dask moves, or
    spills under memory pressure) only the variable it uses, and the whole shard is released once
    every variable is picked. Dask recomputes lost values from the task (a dead worker).
    """
    retries = plan.spec.extraction.retries
    if not keep:
        return client.submit(_extract, t, plan.recipe, plan.digest, plan.model, key=plan.key(t, suffix), retries=retries,
                             resources=resources), None
    whole = client.submit(_extract, t, plan.recipe, plan.digest, plan.model, True, key=plan.key(t, f"-values{suffix}"),
                          retries=retries, resources=resources)
    meta = client.submit(_shard_metadata, whole, key=plan.key(t, suffix), retries=retries)
    names = [variable_name(sub, lp.name) for lp in plan.storage.values() for sub in lp.extracted()]
    return meta, {name: client.submit(_shard_variable, whole, name, key=plan.key(t, f"-{name}{suffix}"), retries=retries)
                  for name in names}


def _needs_values(plan: JobPlan, diff_tasks: list[DiffTask]) -> set[str]:
    """Sets whose shards must be extracted again to keep their values in memory although their
    files are complete: under ``store: none`` (files without units), sets with a ``units`` task
    whose partial result is not on disk; every set under a data-dependent sampling mode, whose
    unit statistics read every set's units (:mod:`~daskdiff.pipeline.activity`)."""
    if plan.spec.extraction.store != "none":
        return set()
    if is_data_mode(plan.sampling.mode) and "units" in plan.spec.analysis.substrates:
        return set(plan.sets)
    return {t.image_set for t in diff_tasks if t.substrate == "units" and not t.path.exists()}


def _submit(client: Any, plan: JobPlan, attrs: dict, keep_rdm: bool, echo: Callable) -> _Submitted:
    """Submit every task at once; a set's differentiation tasks depend on that set's shards only.

    Finished shards and partial results are recognised by the tasks themselves (resume), so the
    client only records, before anything is written, which files the tasks may write.
    """
    spec = plan.spec
    resources = _gpu_resources(client, spec, echo)
    shard_tasks = _shard_tasks(plan, attrs)
    budget = task_memory_budget(spec, _worker_limits(client))
    diff_tasks = _diff_tasks(plan, keep_rdm, budget)
    handoff = _handoff(plan, client)
    wanted = _needs_values(plan, diff_tasks)
    shard_files_ = [shard_path(t.output, t.image_set, t.shard) for t in shard_tasks]
    on_disk = sum(f.exists() for f in shard_files_), sum(t.path.exists() for t in diff_tasks)
    if any(on_disk):
        echo(f"resuming: {on_disk[0]} of {len(shard_tasks)} shard file(s) and {on_disk[1]} of {len(diff_tasks)} "
             "partial result(s) already on disk (the tasks check and reuse them)")
    for name in plan.sets:
        plan.manifest.make_dirs(plan.output / ACTIVATIONS_DIR / name)
    plan.manifest.make_dirs(plan.output / PARTIAL_DIR)
    plan.manifest.add_files([*shard_files_, *(t.path for t in diff_tasks)])
    shards: dict[str, list[tuple[Any, ShardTask]]] = {name: [] for name in plan.sets}
    values: dict[str, list[dict[str, Any]]] = {name: [] for name in plan.sets}
    for t in shard_tasks:
        meta, kept = _submit_shard(client, plan, t, handoff and (spec.extraction.store != "none" or t.image_set in wanted), resources)
        shards[t.image_set].append((meta, t))
        if kept is not None:
            values[t.image_set].append(kept)
    pools = (submit_pools(client, plan, diff_tasks, {n: [f for f, _ in pairs] for n, pairs in shards.items()}, values)
             if is_data_mode(plan.sampling.mode) else {})
    diffs = [(_submit_diff(client, plan, t, [f for f, _ in shards[t.image_set]], values[t.image_set], pool=pools.get((t.substrate, t.layer))), t)
             for t in diff_tasks]
    return _Submitted(shards, diffs, resources, values, pools)


def _submit_diff(client: Any, plan: JobPlan, t: DiffTask, shards: list, values: list[dict[str, Any]], suffix: str = "",
                 pool: Any = None) -> Any:
    """Submit one differentiation task on its set's shard metadata futures and, where the values
    are kept in memory, that of its variable in every shard (and, for a data-dependent sampling
    mode, the future of its layer's pool of units)."""
    name = variable_name(t.substrate, t.layer)
    kept = [v[name] for v in values] if values else None
    extra = {} if pool is None else {"pool": pool}
    return client.submit(_diff_or_corrupt, t, *shards, values=kept, key=plan.key(t, suffix), retries=plan.spec.extraction.retries, **extra)


def _is_corrupt(future: Any) -> bool:
    """Whether a finished differentiation future returned a :class:`CorruptShardError`."""
    kind = future.type
    if kind is None:  # the scheduler did not report the type: look at the (small) value itself
        return isinstance(future.result(), CorruptShardError)
    return isinstance(kind, type) and issubclass(kind, CorruptShardError)


@dataclass
class _Recompute:
    """What :func:`_gather` tracks to recompute corrupt shards within the run."""

    what: dict
    pending: Any
    """The ``as_completed`` iterator: new futures are added to it."""
    bars: dict
    superseded: set = field(default_factory=set)
    recomputed: set = field(default_factory=set)


def _recompute_shard(client: Any, plan: JobPlan, submitted: _Submitted, state: _Recompute, err: CorruptShardError, echo: Callable) -> None:
    """Delete the corrupt shard ``err.path`` and submit it again, then its set's unfinished tasks.

    The extraction task re-extracts because the file is missing. The set's differentiation tasks
    that have not finished (the failed one, those waiting and those running, which would find
    the file gone) are cancelled and submitted again on the new shard, under new keys; finished
    ones are kept (each chunk is checked, so what they read was sound). A shard that is corrupt
    again fails the job.
    """
    path = err.path
    if path in state.recomputed:
        raise JobError(
            f"shard {path} is corrupt again after it was recomputed in this run ({err.detail}): "
            "the disk or filesystem under the output folder damages files; check it, or choose another --output"
        ) from err
    found = [(name, i) for name, pairs in submitted.shards.items() for i, (_, t) in enumerate(pairs)
             if str(shard_path(t.output, t.image_set, t.shard)) == path]
    if not found:
        raise JobError(f"{err} (the file is not one of this job's shards)") from err
    name, i = found[0]
    state.recomputed.add(path)
    echo(f"shard {path} is corrupt (checksum mismatch): removed, recomputing")
    plan.manifest.remove_file(path)
    suffix = f"-recomputed{len(state.recomputed)}"  # keys of a new graph: never those of the old futures
    shard_task = submitted.shards[name][i][1]
    kept = submitted.values.get(name)
    future, values = _submit_shard(client, plan, shard_task, bool(kept), submitted.resources, suffix)
    submitted.shards[name][i] = (future, shard_task)
    if kept:
        kept[i] = values
    state.what[future] = ("extract", shard_task)
    state.pending.add(future)
    state.bars["extract"].total += 1
    shard_futures = [f for f, _ in submitted.shards[name]]
    for j, (old, t) in enumerate(submitted.diffs):
        if t.image_set != name or (old.status == "finished" and not _is_corrupt(old)):
            continue
        state.superseded.add(old)
        client.cancel([old])
        new = _submit_diff(client, plan, t, shard_futures, submitted.values.get(name), suffix, submitted.pools.get((t.substrate, t.layer)))
        submitted.diffs[j] = (new, t)
        state.what[new] = ("differentiation", t)
        state.pending.add(new)


def _as_they_finish(pending: Any, check: Callable[[], None], every: float = 0.05) -> Iterator[Any]:
    """The futures of ``pending`` (a ``distributed.as_completed``) as they finish; ``check()`` is
    called between them, and every ``every`` seconds while none finishes."""
    while not pending.is_empty():
        check()
        batch = pending.next_batch(block=False)
        if not batch:
            time.sleep(every)
        yield from batch


def task_slots(plan: JobPlan, client: Any) -> int:
    """Tasks the cluster runs at once, for the wall-time estimate: the plan's
    (:attr:`~daskdiff.pipeline.budget.Limits.slots`), else the workers the cluster has."""
    return plan.limits.slots or len(client.scheduler_info().get("workers", {})) or 1


class _Reviser:
    """Revises the job's estimate once, on the first extraction task that ran (not resumed): its
    seconds per image, measured on its worker, replace the calibrated ones
    (:func:`daskdiff.core.estimate.revised_wall_seconds`); one line says it, ``into`` records it."""

    def __init__(self, plan: JobPlan, client: Any, into: dict | None, echo: Callable) -> None:
        self.est, self.into, self.echo, self.done = plan.estimate, into if into is not None else {}, echo, 0
        self.total = sum(map(len, plan.sets.values()))
        self.slots = task_slots(plan, client)

    def extracted(self, meta: dict[str, Any]) -> None:
        self.done += meta.get("n_images", 0)
        if self.est is None or "left_s" in self.into or meta.get("resumed") or not meta.get("n_images"):
            return
        image_s = meta["seconds"] / meta["n_images"]
        left = revised_wall_seconds(self.est, self.slots, images_left=self.total - self.done, image_s=image_s)
        self.into.update(left_s=left, image_s=image_s, at=time.perf_counter())
        self.echo(f"estimate revised after the first shard: ~{duration(left)} left (extraction {image_s:.2g} s/image measured "
                  f"vs {self.est.image_seconds:.2g} s/image assumed, on {self.slots} worker thread(s))")


def _gather(client: Any, plan: JobPlan, submitted: _Submitted, progress: bool, clock: Callable[[str], None], echo: Callable = _echo,
            watch: WorkerWatch | None = None, reviser: _Reviser | None = None) -> tuple[dict[str, dict], list[Partial]]:
    """Wait for every task, with a progress bar per stage; the sets' metadata and the partials.

    A failed task cancels the job with a JobError naming it. A set whose shards hold fewer than 2
    decodable images cancels only its own differentiation: the other sets' work goes on and is
    kept (their files resume a later run), then the job fails naming that set. A differentiation
    task that finds a corrupt shard (checksum mismatch) makes the job delete and recompute that
    shard and the set's unfinished tasks (:func:`_recompute_shard`), once per shard. What a task
    found on its worker is said here: a shard extracted again, and why; a corrupt partial result
    that was recomputed (a ``warning:`` line naming the file). ``watch`` checks the workers
    meanwhile (:meth:`WorkerWatch.poll`): workers that cannot run a task
    (paused, or restarted for memory) cancel the job with its JobError.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    retries = plan.spec.extraction.retries
    what: dict[Any, tuple[str, Any]] = {f: ("extract", t) for pairs in submitted.shards.values() for f, t in pairs}
    what.update({f: ("differentiation", t) for f, t in submitted.diffs})
    too_small: dict[str, str] = {}
    interval = 0.1 if sys.stderr.isatty() else 10.0  # a log file gets a line every 10 s, not every task
    bars = {
        stage: tqdm(total=n, desc=stage, unit=unit, disable=not progress, file=sys.stderr, mininterval=interval)
        for stage, n, unit in (("extract", len(what) - len(submitted.diffs), "shard"), ("differentiation", len(submitted.diffs), "task"))
    }
    done = {"extract": 0, "differentiation": 0}  # a stage ends when done reaches its bar's total (recomputes add to it)
    partials: dict[Any, Partial] = {}
    pending = as_completed(list(what))
    state = _Recompute(what, pending, bars)

    def check() -> None:
        if watch is None:
            return
        try:
            watch.poll(sum(done.values()))
        except JobError:
            client.cancel(list(what))
            raise

    try:
        for future in _as_they_finish(pending, check):
            if future in state.superseded:
                continue
            stage, task = what[future]
            if future.status == "cancelled" and task.image_set in too_small:
                continue
            if stage == "differentiation" and future.status == "finished" and _is_corrupt(future):
                _recompute_shard(client, plan, submitted, state, future.result(), echo)
                continue
            problem = too_small.get(task.image_set) or _too_small(task.image_set, submitted.shards[task.image_set])
            if problem and task.image_set not in too_small:
                too_small[task.image_set] = problem
                client.cancel([f for f, t in submitted.diffs if t.image_set == task.image_set])
            if future.status == "error" and not (stage == "differentiation" and task.image_set in too_small):
                exc = future.exception()
                client.cancel(list(what))
                if watch is not None and (why := watch.explain(exc)) is not None:  # a worker killed for memory
                    raise why from None
                if isinstance(exc, DiskFullError):
                    total = bytes_per_image(plan.storage) * sum(map(len, plan.sets.values()))
                    raise JobError(f"{exc}; this job's shards need about {total / 2**30:.2f} GiB in all") from exc
                described = (f"shard {task.shard} of set {task.image_set!r} ({len(task.paths)} images, {task.paths[0]} ...)"
                             if stage == "extract" else f"task {task.key}")
                raise JobError(f"{stage} failed for {described} after {retries} retries: {type(exc).__name__}: {exc}") from exc
            if stage == "extract" and future.status == "finished" and reviser is not None:
                reviser.extracted(future.result())
            if stage == "extract" and future.status == "finished" and (why := future.result().get("replaced")):
                echo(f"set {task.image_set!r}: shard {task.shard} was extracted again because {why}; "
                     "the set's differentiation is recomputed from it")
            if stage == "differentiation" and future.status == "finished":
                partials[future] = future.result()  # gathered once, as it finishes
                if partials[future].warning:  # found by the task on its worker: said here, on the console
                    warn(echo, "warning: " + partials[future].warning)
            bars[stage].update(1)
            done[stage] += 1
            if done[stage] == bars[stage].total:
                clock("extracted" if stage == "extract" else "differentiated")
    finally:
        for bar in bars.values():
            bar.close()
    if too_small:
        raise JobError("; ".join(too_small.values()) + "; the other sets' shards and partial results are kept for a re-run")
    metadata = {name: set_metadata([f.result() for f, _ in pairs]) for name, pairs in submitted.shards.items()}
    return metadata, [partials[f] if f in partials else f.result() for f, _ in submitted.diffs]


def _too_small(name: str, shards: list[tuple[Any, ShardTask]]) -> str | None:
    """Why set ``name`` cannot be differentiated, once all its shards are in: fewer than 2 images."""
    if not all(f.status == "finished" for f, _ in shards):
        return None
    metas = [f.result() for f, _ in shards]
    n = sum(m["n_images"] for m in metas)
    if n >= 2:
        return None
    skipped = [s for m in metas for s in m["skipped"]]
    return f"image set {name!r} has {n} decodable image(s); differentiation needs at least 2 (skipped: {skipped})"
