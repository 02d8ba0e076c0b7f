"""Pipeline layer, step 2 of a job: plan it from its resolved inputs; pure (no cluster, no writes).

:func:`plan` loads the model's architecture (not its weights), checks the job against its
bounds in two steps (:mod:`daskdiff.pipeline.budget`: from the image counts alone, then with the
layers' shapes, before the storage plan, whose cost grows with ``repeats``) and against the
workers' memory, builds the storage plan (:class:`~daskdiff.core.units.StorageRecipe`) and the
job's estimate. :func:`check` prints the movies' lines and the estimate, and refuses a job over a
bound. A dry run is :func:`plan` + :func:`check`; a run also prepares the output folder
(:func:`daskdiff.pipeline.output.prepare`) in between.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core.estimate import estimate_work, WorkEstimate
from ..core.units import bytes_per_image, expected_stored, plan_digest, Sampling, StorageRecipe
from ..io.layout import IMAGES_DIR
from ..io.lock import OutputLock
from ..io.manifest import Manifest
from ..logs import reporter
from ..model.architecture import model_layers
from ..model.build import ModelSpec
from ..model.extract import ShardTask
from . import config
from .budget import check_budget, describe, gb, job_size, Limits, lower_bound_size, mean_chars
from .health import check_worker_memory, memory_needs, MemoryNeeds
from .movies import spectral_lines
from .resolve import JobInputs
from .spec import JobSpec
from .tasks import DiffTask

_echo = reporter(__name__)


@dataclass
class JobPlan:
    """Everything the client decides before the cluster starts (the per-layer storage plan is
    ``storage``, a dict of :class:`daskdiff.core.units.LayerPlan`, built from ``recipe``, which is
    what tasks carry)."""

    spec: JobSpec
    output: Path
    model: ModelSpec
    sets: dict[str, list[str]]
    layers: list[str]
    shapes: dict[str, tuple[int, ...]]
    storage: dict
    recipe: StorageRecipe
    sampling: Sampling
    notes: list[str]
    manifest: Manifest | None
    """The output folder's manifest (None until the folder is prepared: :func:`daskdiff.pipeline.output.prepare`)."""
    estimate: WorkEstimate | None = None
    limits: Limits | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """Images per set; in a dry run, a generated set not yet on disk has the count its generator
    will write (:func:`daskdiff.stimuli.registry.planned_count`) and no paths in ``sets``."""
    lock: OutputLock | None = None
    """The output folder's lock, held from planning until :meth:`release` (:func:`run_job` releases it)."""
    fps: dict[str, float] = field(default_factory=dict)
    """Frame rate (Hz) of each set that is a movie (from its ``movie.json``, its file or the
    spec's ``fps:``; in a dry run, the rate a generator will record, when known)."""
    memory: MemoryNeeds | None = None
    """What a worker needs before its first task, and the setting that gives it memory."""
    inputs: JobInputs | None = None
    """What the plan was made from (:func:`daskdiff.pipeline.resolve.resolve`)."""
    how: dict[str, str] = field(default_factory=dict)
    """How each set's count is known (``'exact'``, ``'at most'``, ``'unknown'``: see
    :mod:`daskdiff.pipeline.resolve`); every set's is exact once the output folder is prepared."""
    model_info: dict = field(default_factory=dict)
    """The architecture's facts (:func:`daskdiff.model.architecture.model_layers`)."""

    @functools.cached_property
    def digest(self) -> str:
        return plan_digest(self.storage)

    def release(self) -> None:
        """Give up the output folder's lock (another run may then take the folder)."""
        if self.lock is not None:
            self.lock.release()

    @functools.cached_property
    def token(self) -> str:
        """A short hash of the output folder, the spec, the model (with its fingerprint: its files'
        content), the image lists and the plan: part of every task key, so that jobs sharing a
        scheduler never share a task, and a re-run on another model never meets the old run's results."""
        identity = [str(self.output), self.spec.result_digest(), repr(self.model), self.sets, self.digest]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]

    def key(self, task: ShardTask | DiffTask, suffix: str = "") -> str:
        """The Dask key of one of this job's tasks (``suffix``: that of a resubmitted task)."""
        return f"daskdiff-{self.token}-{task.key}{suffix}"


    def summary(self) -> str:
        """One line: images, sets, layers, bytes stored per image, the output folder."""
        return (
            f"planned {sum(self.counts.values())} image(s) in {len(self.counts)} set(s), {len(self.layers)} layer(s); "
            f"stores {bytes_per_image(self.storage) / 1e6:.2f} MB of activation values per image (shard files add their coordinates) -> {self.output}"
        )


    @property
    def exact(self) -> set[str]:
        """The sets whose image count (and a movie's frame rate) is known."""
        return {name for name, how in self.how.items() if how == "exact"}


def plan(inputs: JobInputs, *, limits: Limits, force: bool = False, echo: Callable = _echo) -> JobPlan:
    """Plan the job of ``inputs`` within ``limits``; nothing is written, no cluster is used.

    A job over a bound of the first two estimates raises
    :class:`daskdiff.pipeline.budget.BudgetError` unless ``force`` (the last estimate is checked
    by :func:`check`, which says what ``--force`` ran over); so does one whose workers could never
    run a task (:func:`daskdiff.pipeline.health.check_worker_memory`, which ``echo`` s under
    ``force``). The plan's sets are the paths known now: a generated set still to generate has
    none, and the count its generator will write.
    """
    spec, counts = inputs.spec, inputs.counts
    quiet = lambda *_: None  # noqa: E731  (only the last check says that --force ran over a bound)
    check_budget(estimate_work(lower_bound_size(spec, counts, inputs.generated)), limits, force=force, what="lower bound", echo=quiet)
    info = model_layers(inputs.model, config.cache_folder("daskdiff.model.architecture-cache", "architectures"))
    a = spec.analysis
    sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, mode=a.sampling, seed=a.seed)
    full = (info["last_layer"],)
    shapes = info["shapes"]
    store = spec.extraction.store
    sets = {name: list(s.paths) for name, s in inputs.sets.items()}
    recipe = StorageRecipe(tuple(shapes.items()), tuple(a.substrates), sampling, store, full)
    planned = JobPlan(spec, inputs.output, inputs.model, sets, info["layers"], shapes, {}, recipe, sampling, [], None, limits=limits,
                      counts=counts, fps=inputs.fps, inputs=inputs, how=inputs.how, model_info=info)
    expected = expected_stored(shapes, a.substrates, sampling, store=store, full_layers=list(full))
    written = expected_stored(shapes, a.substrates, sampling, store=store, full_layers=list(full), written=True)
    before = plan_estimate(planned, expected, written, built=False)
    check_budget(before, limits, force=force, what="estimate before the storage plan", echo=quiet)
    planned.memory = memory_needs(spec.cluster, limits, info["weight_bytes"], before.task_memory)
    check_worker_memory(planned.memory, force=force, echo=echo)  # a worker that could never run a task: before any cluster starts
    planned.storage = recipe.build()
    planned.estimate = plan_estimate(planned)
    return planned


def plan_estimate(plan: JobPlan, stored: dict | None = None, written: dict | None = None, *, built: bool = True) -> WorkEstimate:
    """The work of ``plan`` for the sets and counts it holds now (:mod:`daskdiff.core.estimate`).

    ``stored``/``written``: values extracted and written per layer (default: the storage plan's);
    ``built``: whether the storage plan is built (its cost is then spent). A set still to generate
    is counted with its planned count, its generation's cost, and paths of the length its folder gives.
    """
    spec, info = plan.spec, plan.model_info
    if stored is None:
        stored = {name: lp.extracted() for name, lp in plan.storage.items()}
        written = {name: lp.stored() for name, lp in plan.storage.items()}
    chars = {name: mean_chars(p) if p else len(str(plan.output / IMAGES_DIR / name)) + 16 for name, p in plan.sets.items()}
    generated = {name: g for name, g in (plan.inputs.generated if plan.inputs else {}).items() if not plan.sets.get(name)}
    limits = plan.limits
    size = job_size(spec, plan.counts, plan.shapes, stored, forward_flops=info["forward_flops"], path_chars=chars, plan_built=built,
                    task_memory=task_memory_budget(spec, [(limits.worker_memory or 0, spec.cluster.threads_per_worker)]), fps=plan.fps,
                    written=written, generated=generated, input_values=math.prod(info["input_size"]) * 3)
    return estimate_work(size)


def check(plan: JobPlan, *, force: bool = False, echo: Callable = _echo) -> None:
    """Say the job's movies and estimate (``echo``), and refuse it over a bound.

    Raises
    ------
    daskdiff.pipeline.budget.BudgetError
        The estimate exceeds a bound of ``plan.limits``, and not ``force`` (with ``force`` it is said).
    """
    exact = None if len(plan.exact) == len(plan.how) else plan.exact
    for line in spectral_lines(plan.spec, plan.counts, plan.fps, exact):
        echo(line)
    for line in describe(plan.estimate, plan.limits):
        echo(line)
    if (tree := tree_memory(plan)) is not None:
        echo(tree.line())
    check_budget(plan.estimate, plan.limits, force=force, echo=echo, quote=False)




CLIENT_BYTES = 400_000_000
"""What a job's client holds (Python, Dask, xarray, the plan) once the architecture is cached:
0.37 GB peak RSS measured for the seed job (``benchmarks/job.py``)."""

SCHEDULER_BYTES = 300_000_000
"""A local cluster's scheduler and its workers' nanny processes (~0.1 GB each, measured PSS)."""


@dataclass(frozen=True)
class TreeMemory:
    """What the process tree of a job on a local cluster holds at its peak, part by part (bytes)."""

    client: int
    scheduler: int
    workers: int
    baseline: int
    """Each worker before its first task: Python, Dask, the Keras backend and the model (:func:`daskdiff.pipeline.health.worker_baseline`)."""
    work: int
    """Each worker's largest working set: its extraction batches (one computed while the last is
    written, :func:`daskdiff.core.estimate.extraction_batch_bytes`) or its largest
    differentiation task, whichever is larger, once per thread that runs a task at once (one
    model serves them all)."""
    kept: int
    """Each worker's share of the values kept in memory between extraction and differentiation
    (``extraction.store: none``, or ``handoff: memory``); 0 when they are read back from the shards."""

    @property
    def total(self) -> int:
        return self.client + self.scheduler + self.workers * (self.baseline + self.work + self.kept)

    def line(self) -> str:
        kept = f" + kept values {gb(self.kept)}" if self.kept else ""
        return (f"  process tree: ~{gb(self.total)} at its peak on this machine (client {gb(self.client)}, scheduler and nannies "
                f"{gb(self.scheduler)}, {self.workers} worker(s) of {gb(self.baseline)} with the model + work "
                f"{gb(self.work)}{kept} each)")


def keeps_values(extraction: Any, need: int, total: int | None) -> bool:
    """Whether differentiation takes the shards' values from the workers' memory (see
    ``extraction.handoff``; ``store: none`` always does: its files hold no units). Under ``auto``,
    when the ``need`` bytes of all shards' values take at most ``daskdiff.handoff.memory-share``
    (Dask config; 0.3) of the cluster's ``total`` memory limits (None: not known, not kept): Dask
    spills at 60 % of a worker's limit, and differentiation's working memory needs the rest."""
    if extraction.store == "none" or extraction.handoff != "auto":
        return extraction.store == "none" or extraction.handoff == "memory"
    return total is not None and need <= config.number("daskdiff.handoff.memory-share") * total


def tree_memory(plan: JobPlan) -> TreeMemory | None:
    """The :class:`TreeMemory` of ``plan`` on a local cluster that the job starts; None on
    another cluster (its processes are elsewhere) or before the plan's memory is known.

    Values are kept in memory where :func:`keeps_values` says so for the planned workers' limits
    (the job decides again with the cluster's own once it is up).
    """
    spec, limits, est = plan.spec, plan.limits, plan.estimate
    if spec.cluster.kind != "local" or plan.memory is None or est is None or not limits or not limits.workers:
        return None
    extracted = bytes_per_image(plan.storage, extracted=True) * sum(plan.counts.values())
    kept = keeps_values(spec.extraction, extracted, limits.worker_memory * limits.workers if limits.worker_memory else None)
    work = max(est.extraction_memory, est.task_memory) * (limits.slots // limits.workers)  # a worker's tasks at once
    return TreeMemory(CLIENT_BYTES + est.client_memory, SCHEDULER_BYTES, limits.workers, plan.memory.baseline, work,
                      extracted // limits.workers if kept else 0)


def task_memory_budget(spec: JobSpec, worker_limits: Sequence[tuple[int, int]]) -> int | None:
    """Bytes one differentiation task may hold: ``analysis.task_memory``, or for ``auto``
    ``daskdiff.task.memory-share`` (Dask config; 0.5: Dask spills at 60 % and pauses a worker at
    80 % of its limit, and the model, Python and buffers need the rest) of the smallest ``memory_limit / nthreads`` of ``worker_limits``
    (``(memory_limit, nthreads)`` per worker; a limit of 0 means none); None when no worker
    has a limit."""
    if spec.analysis.task_memory != "auto":
        from dask.utils import parse_bytes

        return int(parse_bytes(spec.analysis.task_memory))
    per_thread = [limit / max(1, threads) for limit, threads in worker_limits if limit]
    return int(config.number("daskdiff.task.memory-share") * min(per_thread)) if per_thread else None
