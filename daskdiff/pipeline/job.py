"""Pipeline layer: a whole job, in four steps: resolve -> plan -> run -> record.

1. :func:`daskdiff.pipeline.resolve.resolve`: the spec's image sets and model, read from the disk
   once, as a frozen :class:`~daskdiff.pipeline.resolve.JobInputs`;
2. :func:`daskdiff.pipeline.plan.plan`: the layers, the storage plan and the estimate, checked
   against the job's bounds; pure. A run then prepares the output folder
   (:func:`daskdiff.pipeline.output.prepare`: checked, locked, generated sets written), and the
   estimate is printed and checked (:func:`daskdiff.pipeline.plan.check`) before any task is submitted;
3. :func:`daskdiff.pipeline.run.run`: every task submitted at once on a Dask cluster; extraction
   shards and partial results written by the workers;
4. :func:`daskdiff.pipeline.record.record`: the results file, ``differentiation.nc``.

So a bad spec, a missing set or an unknown layer fails at once, before any cluster starts; and
a scheduler started elsewhere whose port refuses connections, before anything is written
(:func:`daskdiff.pipeline.cluster.refuse_unreachable`). A
``LocalCluster`` the job starts itself starts once the plan has passed, while the client prepares
the output folder and generates image sets: its workers import Keras meanwhile.

A re-run (after a crash, a killed worker, Ctrl-C) finds the finished files: each task checks its
own file on the worker and reuses it, so the job resumes; a task that Dask runs twice rewrites the
same bytes. Results do not depend on the number of workers, shard size or task order: every random
draw comes from ``(seed, layer, repeat)``.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..io.atomic import atomic_write
from ..io.layout import JOB_FILE
from ..io.location import is_remote
from ..logs import reporter, warn
from .budget import Limits, limits_at
from .output import check_output, clean_temporaries, prepare, preview
from .plan import check, JobPlan, plan
from .record import record, versions
from .resolve import JobInputs, resolve
from .run import run, task_slots
from .spec import JobSpec
from .stimulus import gather_stimulus, submit_stimulus
from .target import Target

_echo = reporter(__name__)


@dataclass
class JobResult:
    """What a finished job reports: the results file, images per set, skipped files, notes."""

    path: Path
    n_images: dict[str, int]
    skipped: list[tuple[str, str, str]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds from the start of the job to: ``planned``, ``extracted`` (last shard),
    ``differentiated`` (last task), ``written`` (results file). Stages overlap: a set
    differentiates while others still extract."""

    def summary(self) -> str:
        done = sum(self.n_images.values())
        return (
            f"done: {done} images in {len(self.n_images)} set(s), {len(self.skipped)} skipped, "
            f"{self.seconds:.1f} s -> {self.path}"
        )


def plan_job(
    spec: JobSpec,
    base: Path,
    *,
    output: str | Path | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    echo: Callable = _echo,
    force: bool = False,
    dry_run: bool = False,
    limits: Limits | None = None,
    checked: Callable[[], None] | None = None,
) -> JobPlan:
    """Resolve, plan and check a job on the client; nothing runs on a cluster.

    The job's work is estimated and bounded (:mod:`daskdiff.pipeline.budget`) three times, each
    before the step whose cost it bounds: from the spec and image counts alone (before the model
    is loaded), with the layer shapes (before anything is written and before the storage plan,
    whose cost grows with ``repeats``), and exactly (echoed). A job over a bound raises
    :class:`daskdiff.pipeline.budget.BudgetError` unless ``force``.

    ``dry_run``: write nothing (no output folder, no generated images, no temporaries removed,
    weights not loaded); the plan returned only describes the job. ``limits``: what the job may
    use (default: :func:`daskdiff.pipeline.budget.limits_at` the spec's cluster). ``checked``:
    called (not in a dry run) once the plan has passed, before the output folder is locked and
    image sets are generated: :func:`run_job` starts a local cluster's workers there.

    A plan that is not a dry run holds the output folder's lock (a second run on the folder is
    refused) until ``plan.release()``; :func:`run_job` releases it when the job ends, however it
    ends.
    """
    inputs = resolve(spec, base, output=output, weights=weights, echo=echo)
    return _plan(inputs, limits or limits_at(Target.of(spec.cluster), inputs.output), overwrite=overwrite, echo=echo, force=force,
                 dry_run=dry_run, checked=checked)


def _plan(inputs: JobInputs, limits: Limits, *, overwrite: bool, echo: Callable, force: bool, dry_run: bool = False,
          checked: Callable[[], None] | None = None) -> JobPlan:
    """:func:`plan_job` from resolved inputs."""
    planned = plan(inputs, limits=limits, force=force, echo=echo)
    if dry_run:
        planned = preview(planned, overwrite=overwrite, echo=echo)
    else:
        if checked is not None:  # the output folder's refusals first, then the cluster's (``checked``), then writes
            check_output(planned, overwrite=overwrite)
            checked()
        planned = prepare(planned, overwrite=overwrite, echo=echo)
    try:
        check(planned, force=force, echo=echo)
    except BaseException:
        planned.release()
        raise
    return planned


def run_job(
    spec: JobSpec,
    base: Path,
    *,
    client: Any = None,
    output: str | Path | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
    echo: Callable = _echo,
    force: bool = False,
) -> JobResult:
    """Run a job end to end (see the module docstring); returns where the results are.

    ``client``: an existing ``distributed.Client`` to use (tests, notebooks); otherwise one is
    made from the spec's cluster section and the ``scheduler``/``scheduler_file``/``n_workers``
    overrides (see :func:`daskdiff.pipeline.cluster.connect`). The figure of the results is
    drawn by the CLI (:func:`daskdiff.plot.plot_results`), not here. The job's estimate is
    echoed before any task is submitted (and before any cluster but a local one starts), and a
    job over a bound is refused (:class:`daskdiff.pipeline.budget.BudgetError`) unless ``force``. ``echo`` receives each
    progress and warning line; by default they are records of the ``daskdiff.pipeline.job``
    logger (see :mod:`daskdiff.logs`). A ``LocalCluster`` the job starts itself starts while the
    job is planned, once the spec, the image sets' paths, the layers and the first two bounds
    have passed (``plan_job``'s ``checked``): its workers import Keras meanwhile; the whole
    estimate is still printed, and checked, before any task is submitted.
    """
    from .cluster import connect, EarlyCluster, refuse_unreachable

    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def clock(stage: str) -> None:
        stages[stage] = round(time.perf_counter() - t0, 3)

    target = Target.of(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers, client=client is not None)
    early: list[EarlyCluster] = []

    def start_workers() -> None:  # once the spec and output are checked, before anything is written:
        refuse_unreachable(target)  # a wrong port fails at once; a LocalCluster's workers start (and import Keras)
        if target.starts_locally:
            early.append(EarlyCluster(spec.cluster, n_workers))

    with contextlib.ExitStack() as cleanup:  # however the job ends:
        @cleanup.push
        def close_early(kind: type[BaseException] | None, *_: Any) -> None:  # an early cluster connect did not take
            for cluster in early:
                cluster.close(abandoned=kind is not None)

        inputs = resolve(spec, base, output=output, weights=weights, echo=echo)
        for line in local_sets_elsewhere(inputs, target):
            warn(echo, line)
        plan = _plan(inputs, limits_at(target, inputs.output), overwrite=overwrite, echo=echo, force=force, checked=start_workers)
        cleanup.callback(plan.release)  # the plan holds the output folder's lock until the job ends
        echo(plan.summary())
        clock("planned")
        attrs = {**plan.model.identity(), "daskdiff_version": versions()["daskdiff"]}
        plan.manifest.add_files([plan.output / JOB_FILE])
        job_record = json.dumps({"result_digest": spec.result_digest(), "spec": spec.model_dump(mode="json")}, indent=1)
        atomic_write(plan.output / JOB_FILE, lambda tmp: Path(tmp).write_text(job_record))

        def on(c: Any) -> JobResult:
            keep_rdm = "images" in spec.analysis.measures and max(map(len, plan.sets.values())) <= spec.analysis.rdm_max_images
            stimulus = submit_stimulus(plan, c)  # beside extraction, on the workers
            revised: dict = {}
            metadata, partials, pools = run(plan, c, attrs=attrs, keep_rdm=keep_rdm, progress=progress, clock=clock, echo=echo,
                                            revised=revised, release=not target.external)
            n_images = {name: len(m["paths"]) for name, m in metadata.items()}
            path, skipped, notes = record(plan, metadata, partials, keep_rdm=keep_rdm, command=command, echo=echo,
                                          stimulus=gather_stimulus(stimulus, echo), pools=pools,
                                          timing=_timing(plan, c, revised, t0))
            clock("written")
            if (n := clean_temporaries(plan.manifest, c)):
                echo(f"removed {n} temporary file(s) of writers that died during the run")
            echo("stages (s from start): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
            return JobResult(path=path, n_images=n_images, skipped=skipped, seconds=time.perf_counter() - t0, notes=notes, stages=stages)

        if client is not None:
            return on(client)
        with connect(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers, echo=echo,
                     early=early[0] if early else None, needs=plan.memory, target=target) as c:
            return on(c)


def _timing(plan: Any, client: Any, revised: dict, t0: float) -> dict[str, float]:
    """The results' record of the job's time (wall seconds, ``time.perf_counter()`` ``t0`` at its
    start): ``estimate_s``, the estimate printed before any task ran (on the workers the cluster
    has, where the estimate could not count them); ``estimate_revised_s``, the time at the
    revision after the first shard plus the time it said was left (absent when every shard was
    resumed); ``wall_s``, the time until the results file was written."""
    out = {"estimate_s": round(plan.estimate.wall_seconds(task_slots(plan, client)), 1)}
    if "left_s" in revised:
        out["estimate_revised_s"] = round(revised["at"] - t0 + revised["left_s"], 1)
    return {**out, "wall_s": round(time.perf_counter() - t0, 1)}


def local_sets_elsewhere(inputs: JobInputs, target: Target) -> list[str]:
    """One line per image set on this machine's disk when the job's scheduler was started
    elsewhere (``--scheduler``, ``--scheduler-file``, ``cluster.kind: address``): its workers read
    the set's paths on their own disks, which may not hold them (a shared file system does; a
    Kubernetes pod's does not). Empty for a cluster daskdiff starts, and for sets on an object store."""
    if target.kind not in ("address", "scheduler_file"):
        return []
    return [f"image set {name!r} is on this machine's disk ({inputs.spec.image_sets[name].path}) and the workers run "
            f"elsewhere ({target.source} {target.address or target.scheduler_file}): unless they share that folder, copy "
            f"it to the object store (aws s3 sync FOLDER s3://BUCKET/{name}/) and name the URL in image_sets.{name}"
            for name, s in inputs.sets.items() if s.generate is None and s.paths and not is_remote(s.paths[0])]


def dry_run(
    spec: JobSpec,
    base: Path,
    *,
    output: str | Path | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    n_workers: int | None = None,
    force: bool = False,
    echo: Callable = _echo,
) -> JobPlan:
    """Plan and estimate a job as :func:`run_job` would, and echo both; run and write nothing.

    No cluster starts, no file or folder is created or removed (generated sets are not made:
    their planned counts are used), and no weights are loaded. A job over a bound raises the
    same :class:`daskdiff.pipeline.budget.BudgetError` a run would (after echoing the estimate).
    """
    echo("dry run: nothing is written and no cluster starts")
    inputs = resolve(spec, base, output=output, weights=weights, echo=echo)
    target = Target.of(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers)
    for line in local_sets_elsewhere(inputs, target):
        warn(echo, line)
    plan = _plan(inputs, limits_at(target, inputs.output), overwrite=overwrite, echo=echo, force=force,
                 dry_run=True)
    echo(plan.summary())
    for name, n in plan.counts.items():
        rate = f" (a movie at {plan.fps[name]:g} fps)" if name in plan.fps else ""
        echo(f"  image set {name!r}: {n} image(s){rate}")
    return plan
