"""Pipeline layer: a job's work estimated and bounded before anything runs.

:func:`daskdiff.core.estimate.estimate_work` does the arithmetic; this module feeds it a job's
sizes (:func:`job_size`), finds what the job may use here (:func:`limits_at`: free disk under
the output folder, this machine's memory, a worker's memory limit), refuses a job over a bound
(:func:`check_budget`) and words the estimate (:func:`describe`).

The job checks three times, each before the step whose cost it bounds:

1. from the spec and the image counts alone (:func:`lower_bound_size`: every layer of one
   unit), before the model is even loaded, so ``repeats: 1.0e+9`` is refused in milliseconds;
2. with the model's layer shapes and the *expected* number of units stored per layer, before the
   storage plan is built (its cost grows with ``repeats``) and before anything is written;
3. with the storage plan's exact numbers, before any task is submitted: this estimate is
   printed. A ``LocalCluster`` the job starts itself starts after check 2 (its workers import
   Keras while the plan is finished); any other cluster only after check 3.

``--force`` (``run_job(force=True)``) runs a job over a bound anyway.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from ..core.batches import shard_size
from ..core.estimate import Calibration, JobSize, LayerSize, WorkEstimate
from ..errors import InputError
from ..logs import reporter, warn
from ..io.layout import ACTIVATIONS_DIR, PARTIAL_DIR, RESULTS_FILE
from ..io.location import ObjectPath
from . import config
from .machine import default_workers, machine_memory, usable_cores
from .target import Target

_echo = reporter(__name__)  # the default echo: this module's logger (see daskdiff.logs)


class BudgetError(InputError):
    """A job whose estimate exceeds a bound; the message names the figures, the spec keys that
    drive them and ``--force``."""


@dataclass(frozen=True)
class Limits:
    """What a job may use here. ``None``: not known (not checked)."""

    disk_free: int | None
    disk_path: Path
    reusable: int
    """Bytes of shards, partial results and results already in the output folder (a resumed or
    overwritten job reuses or replaces them)."""
    client_memory: int | None
    worker_memory: int | None
    worker_memory_source: str
    workers: int | None
    threads: int = 1
    """Threads per worker (``cluster.threads_per_worker`` of a local cluster)."""

    @property
    def slots(self) -> int | None:
        """Tasks the cluster runs at once, for the wall-time estimate: ``workers x threads``, but a
        worker's extra threads add no more than this machine's cores (a two-thread worker on 2
        cores runs VGG16's forward passes and the differentiation as fast as two one-thread
        workers, measured; a fourth thread on 2 cores adds nothing)."""
        if not self.workers:
            return self.workers
        return min(self.workers * self.threads, max(self.workers, usable_cores()))


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _bytes_in(output: Path) -> int:
    total = 0
    for folder in (output / ACTIVATIONS_DIR, output / PARTIAL_DIR):
        if folder.is_dir():
            total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    results = output / RESULTS_FILE
    return total + (results.stat().st_size if results.is_file() else 0)


def check_local_cluster(cluster, n_workers: int | None = None) -> None:
    """Refuse a ``local`` cluster that cannot fit this machine: more worker threads than its cores
    (:func:`usable_cores`), or memory limits that add up to more than its memory.

    Parameters
    ----------
    cluster : ClusterSection
        The spec's ``cluster`` section (``kind: local``).
    n_workers : int, optional
        ``--workers``, which overrides ``cluster.n_workers``.

    Raises
    ------
    InputError
        Naming the key (``cluster.n_workers``, ``--workers``, ``cluster.threads_per_worker`` or
        ``cluster.memory_limit``) and a value that fits. Each worker is a process that holds the
        model and runs its forward pass on its threads: more threads than cores only add memory
        and contention, and a limit the workers cannot all have makes the estimate's memory
        checks meaningless.
    """
    cores, threads = usable_cores(), cluster.threads_per_worker
    if threads > cores:
        raise InputError(f"cluster.threads_per_worker {threads} is more than the {cores} core(s) this machine gives daskdiff; "
                         f"give cluster.threads_per_worker: {cores} or fewer")
    n = n_workers or cluster.n_workers
    if n is None:
        return
    key = "--workers" if n_workers else "cluster.n_workers"
    if n * threads > cores:
        raise InputError(f"{key} {n} with {threads} thread(s) each is {n * threads} threads, more than the {cores} core(s) this "
                         f"machine gives daskdiff (each worker is a process running the model); give {key} {cores // threads} or fewer")
    total = machine_memory()
    each = worker_memory_limit(cluster.memory_limit, threads, cores)
    if n * each > total * 1.001:
        raise InputError(f"{key} {n} workers with cluster.memory_limit {cluster.memory_limit} ({gb(each)} each) need {gb(n * each)}, "
                         f"more than this machine's {gb(total)}; give fewer workers ({max(1, total // each)} at most), "
                         "a smaller cluster.memory_limit, or memory_limit: auto (the memory shared by the cores)")


def worker_memory_limit(memory_limit: str | float | None, threads: int, cores: int | None = None) -> int:
    """A LocalCluster worker's memory limit in bytes for ``cluster.memory_limit``, as Dask's
    ``parse_memory_limit`` computes it: ``auto`` is this machine's memory x threads / cores, a
    fraction up to 1 is that share of it, a size (``4GB``) is itself, 0 or None is no limit (the
    machine's memory); never more than the machine's memory."""
    from dask.utils import parse_bytes

    total = machine_memory()
    if memory_limit is None:
        return total
    if memory_limit == "auto":
        return int(total * min(1.0, threads / (cores or os.cpu_count() or 1)))
    try:
        value = float(memory_limit)
    except (TypeError, ValueError):
        value = float(parse_bytes(str(memory_limit)))
    else:
        value = value * total if value <= 1 else value
    return int(min(value, total)) if value > 0 else total


def limits_at(target: Target, output: Path) -> Limits:
    """The disk under ``output``, this machine's available memory, and a worker's memory limit.

    Parameters
    ----------
    target : Target
        Where the job runs (its ``cluster`` section and ``--workers``).
    output : Path or ObjectPath
        The output folder (it need not exist: the free space of its nearest existing parent); an
        output on an object store has no free space to check (``disk_free`` None).

    Returns
    -------
    Limits
        A worker's limit is :func:`worker_memory_limit` of ``cluster.memory_limit`` on a
        LocalCluster, the ``memory`` of a SLURM job over its ``processes``, and unknown (None)
        on an external cluster (:attr:`Target.external`), whose workers are not known before
        connecting.

    Raises
    ------
    InputError
        A ``local`` cluster that cannot fit this machine (:func:`check_local_cluster`).
    """
    import psutil

    cluster = target.section
    remote = isinstance(output, ObjectPath)  # an object store: no free space to check, nothing counted as reusable
    where = output if remote else _existing_parent(Path(output))
    try:
        free = None if remote else shutil.disk_usage(where).free
    except OSError:
        free = None
    workers = None if target.external else target.n_workers or cluster.n_workers
    if target.kind == "local":
        check_local_cluster(cluster, target.n_workers)
    if target.external:
        memory, source = None, "external cluster"
    elif target.kind == "slurm":
        memory, source = _slurm_memory({k: cluster.slurm.resolved(k)[0] for k in ("memory", "processes")}), "cluster.slurm memory / processes"
        workers = None
    else:
        try:
            memory = worker_memory_limit(cluster.memory_limit, cluster.threads_per_worker)
        except (ValueError, TypeError):
            memory = None
        source = f"cluster.memory_limit {cluster.memory_limit}"
        if workers is None and target.kind == "local":
            workers = default_workers()
    threads = cluster.threads_per_worker if target.kind == "local" and not target.external else 1
    return Limits(free, where, 0 if remote else _bytes_in(Path(output)), int(psutil.virtual_memory().available), memory, source, workers,
                  threads)


def _slurm_memory(options: Mapping) -> int | None:
    from dask.utils import parse_bytes

    try:
        total = parse_bytes(str(options["memory"]))
    except (KeyError, ValueError, TypeError):
        return None
    return total // max(1, int(options.get("processes", 1) or 1))


def calibration() -> Calibration:
    """The estimate's :class:`~daskdiff.core.estimate.Calibration` from Dask config
    ``daskdiff.estimate.*`` (a field's name with ``-`` for ``_``), whose defaults in
    ``daskdiff.yaml`` are the measured ones. A rate per second (``*-per-s``, ``*-per-cpu-s``: it
    divides) must be above 0, any other value at least 0."""
    def value(name: str, kind: type) -> int | float:
        return config.number(f"daskdiff.estimate.{name.replace('_', '-')}", kind, positive=name.endswith(("_per_s", "_per_cpu_s")))

    return Calibration(**{f.name: value(f.name, type(f.default)) for f in fields(Calibration)})


def mean_chars(paths) -> float:
    return sum(map(len, paths)) / len(paths) if paths else 60.0


def job_size(spec, counts: Mapping[str, int], shapes: Mapping[str, tuple], stored: Mapping[str, Mapping[str, int]], *,
             forward_flops: float, path_chars: Mapping[str, float], plan_built: bool, task_memory: int | None = None,
             fps: Mapping[str, float] | None = None, written: Mapping[str, Mapping[str, int]] | None = None,
             generated: Mapping[str, tuple[int, int]] | None = None, input_values: int = 0) -> JobSize:
    """The :class:`JobSize` of a job: its spec, image counts, layer shapes and stored values, the
    memory budget of one differentiation task (:func:`daskdiff.pipeline.job.task_memory_budget`),
    and the movies' frame rates ``fps`` (set -> frames/s; their spectral differentiation is counted
    when ``analysis.measures`` holds ``spectral``), costed at :func:`calibration`; ``written``: the
    values the shard files store, where they are not ``stored`` (the values extracted); ``generated``: the sets still to be
    generated, as :attr:`daskdiff.core.estimate.JobSize.generated`; ``input_values``: the values
    of one image as the model takes it."""
    a, e = spec.analysis, spec.extraction
    spectral = {name: max(1, round(rate * a.spectral.state_length)) for name, rate in (fps or {}).items()
                if name in counts and "spectral" in a.measures}
    return JobSize(
        images=dict(counts),
        layers=[LayerSize(name, tuple(shape), dict(stored[name]), None if written is None else dict(written[name]))
                for name, shape in shapes.items()],
        substrates=list(a.substrates),
        n_units=list(a.n_units),
        repeats=a.repeats,
        repeats_per_task=a.repeats_per_task,
        sampling=a.sampling,
        metric=a.metric,
        keep_rdm=max(counts.values(), default=0) <= a.rdm_max_images,
        shard_size=shard_size(e.shard_size, e.batch_size),
        batch_size=e.batch_size,
        forward_flops=forward_flops,
        path_chars=dict(path_chars),
        plan_built=plan_built,
        task_memory=task_memory,
        images_measure="images" in a.measures,
        spectral=spectral,
        generated=dict(generated or {}),
        input_values=input_values,
        calibration=calibration(),
    )


def lower_bound_size(spec, counts: Mapping[str, int], generated: Mapping[str, tuple[int, int]] | None = None) -> JobSize:
    """A :class:`JobSize` no larger than the job's, from the spec and image counts alone.

    Every layer is taken as one unit (the spec's ``model.layers``, else one layer), the model as
    free: what remains are the costs that grow with the number of images and with ``repeats``
    (each task's ``n_units x repeats`` results, the results file's, the mean RDMs), and those of
    the images still to be ``generated`` (:func:`job_size`).
    """
    names = list(spec.model.layers or ["<any layer>"])
    shapes = {name: (1,) for name in names}
    stored = {name: {s: 1 for s in spec.analysis.substrates} for name in names}
    return job_size(spec, counts, shapes, stored, forward_flops=0.0, path_chars={}, plan_built=True, generated=generated)


def gb(n: float) -> str:
    """Bytes in words: '812 B', '3.4 MB', '1.2 GB', '5.0 TB'."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}" if n / size < 1e4 else f"{n / size:.3e} {unit}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.3g} {unit}" if value < 1e4 else f"{value:.3e} {unit}"
    return f"{seconds:.2g} s"


def describe(est: WorkEstimate, limits: Limits, *, what: str = "estimate") -> list[str]:
    """A few lines of the estimate, as a job prints them."""
    per_image = est.shard_bytes / est.images if est.images else 0
    free = f"{gb(limits.disk_free)} free under {limits.disk_path}" if limits.disk_free is not None else "free space unknown"
    worker = (f"a worker may use {gb(limits.worker_memory)} ({limits.worker_memory_source})"
              if limits.worker_memory else f"worker memory unknown ({limits.worker_memory_source}): not checked")
    planning = f"planning {duration(est.plan_seconds)}, " if est.plan_seconds else ""
    planning += f"generating images {duration(est.generation_seconds)}, " if est.generated_bytes else ""
    generated = f"generated images {gb(est.generated_bytes)}; " if est.generated_bytes else ""
    wall = ""
    if limits.workers:
        threads = f" of {limits.threads} threads" if limits.threads > 1 else ""
        wall = f"; ~{duration(est.wall_seconds(limits.slots))} of wall time on {limits.workers} worker(s){threads}"
    return [
        f"{what}: {est.images} image(s); {est.extraction_tasks} extraction + {est.differentiation_tasks} differentiation task(s)",
        f"  disk: {gb(est.disk_bytes)} ({generated}shards {gb(est.shard_bytes)}, {gb(per_image)} per image; partial results "
        f"{gb(est.partial_bytes)}; results {gb(est.results_bytes)}); {free}",
        f"  memory: largest differentiation task {gb(est.task_memory)} ({est.largest_task}), extraction batches "
        f"{gb(est.extraction_memory)} at least, {worker}; "
        f"client {gb(est.client_memory)} beyond its ~0.4 GB of Python (and ~2 GB more the first time it meets an "
        "architecture: it builds the model once to learn its layers)",
        f"  time: ~{duration(est.cpu_seconds)} of CPU ({planning}extraction {duration(est.extraction_seconds)}, "
        f"differentiation {duration(est.differentiation_seconds)}){wall} (an order of magnitude: costs measured on 2 CPU cores)",
    ]


def problems(est: WorkEstimate, limits: Limits) -> list[str]:
    """Each bound ``est`` exceeds, with the spec keys that drive it and what to change.

    The bounds on tasks and CPU-hours are Dask config ``daskdiff.budget.max-tasks`` and
    ``daskdiff.budget.max-cpu-hours`` (``docs/configuration.md``).
    """
    out = []
    max_tasks = config.number("daskdiff.budget.max-tasks", int)
    if est.tasks > max_tasks:
        out.append(
            f"{est.tasks:,} tasks ({est.extraction_tasks:,} extraction, {est.differentiation_tasks:,} differentiation), "
            f"more than {max_tasks:,} (daskdiff.budget.max-tasks): fewer image_sets, analysis.substrates or model.layers, or a larger extraction.shard_size"
        )
    if limits.worker_memory and est.task_memory > limits.worker_memory:
        out.append(
            f"one differentiation task ({est.largest_task}) needs ~{gb(est.task_memory)}, more than the {gb(limits.worker_memory)} "
            f"a worker may use ({limits.worker_memory_source}): lower analysis.repeats_per_task, analysis.repeats or "
            "analysis.n_units (an 'all' or a large n_units holds the layer in float64), split the image set, or give "
            "workers more memory (cluster.memory_limit, fewer cluster.n_workers)"
        )
    if limits.worker_memory and est.extraction_memory > limits.worker_memory:
        out.append(
            f"one extraction task's batches need ~{gb(est.extraction_memory)} at least (extraction.batch_size images, decoded "
            f"and ahead, and the model.layers outputs), more than the {gb(limits.worker_memory)} a worker may use "
            f"({limits.worker_memory_source}): lower extraction.batch_size, or give workers more memory"
        )
    if limits.client_memory and est.client_memory > limits.client_memory:
        generating = ("; the generated image_sets: one image, or a scrambled movie, at a time: a smaller size or n_frames"
                      if est.generated_bytes else "")
        out.append(
            f"the client (this process) would hold ~{gb(est.client_memory)} (the storage plan: analysis.repeats draws of "
            f"analysis.n_units per layer; the results: analysis.repeats values per set, substrate, n_units and layer{generating}), "
            f"more than the {gb(limits.client_memory)} available here: lower analysis.repeats or analysis.n_units, "
            "or fewer model.layers"
        )
    if limits.disk_free is not None and est.disk_bytes > limits.disk_free + limits.reusable:
        out.append(
            f"the job writes ~{gb(est.disk_bytes)} (shards {gb(est.shard_bytes)}"
            + (f", generated images {gb(est.generated_bytes)}: a smaller size or count of the generated image_sets" if est.generated_bytes else "")
            + f"), more than the {gb(limits.disk_free)} free "
            f"under {limits.disk_path}: lower analysis.n_units or analysis.repeats (a shard stores the union of every "
            "repeat's units), fewer model.layers, extraction.store: needed, or another --output / output:"
        )
    max_cpu_hours = config.number("daskdiff.budget.max-cpu-hours")
    if est.cpu_seconds > max_cpu_hours * 3600:
        out.append(
            f"~{duration(est.cpu_seconds)} of CPU, more than {max_cpu_hours:,g} CPU-hours (daskdiff.budget.max-cpu-hours): lower analysis.repeats or "
            "analysis.n_units, or use fewer or smaller image_sets (a generated set's count, size or n_frames)"
        )
    return out


def check_budget(est: WorkEstimate, limits: Limits, *, force: bool, what: str = "estimate", echo=_echo, quote: bool = True) -> None:
    """Raise :class:`BudgetError` when ``est`` exceeds a bound, unless ``force`` (then echo so).

    Parameters
    ----------
    est : WorkEstimate
    limits : Limits
    force : bool
        Go ahead anyway: echo ``--force: running although ...`` instead of raising.
    what : str
        What ``est`` is (``'estimate'``, ``'lower bound'``), in the error's copy of it.
    echo : callable
    quote : bool
        Whether the error repeats the estimate (:func:`describe`); the job quotes it unless it
        has just echoed it.

    Raises
    ------
    BudgetError
        Listing each bound exceeded (:func:`problems`), with the spec keys to change and
        ``--force``.
    """
    found = problems(est, limits)
    if not found:
        return
    if force:
        warn(echo, "--force: running although " + "; ".join(found))
        return
    lines = "\n".join(f"  - {p}" for p in found)
    raise BudgetError(
        f"the job is too large to run as specified; nothing was run:\n{lines}\n"
        + ("\n".join(describe(est, limits, what=what)) + "\n" if quote else "")
        + "Change the spec keys named above, or re-run with --force to run it anyway."
    )
