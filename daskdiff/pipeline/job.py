"""Pipeline layer: a whole job, image sets -> extraction shards -> differentiation tasks -> one results file.

The client plans (image lists, model layer shapes, the sampling plan) before any cluster
starts, so a bad spec, a missing set or an unknown layer fails at once. Dask then runs two
stages of pure, idempotent tasks whose outputs are files with deterministic names:

1. extraction: one task per shard -> ``activations/<set>/shard-NNNNN.nc``;
2. differentiation: one task per (set, substrate, n_units, layer, chunk of repeats) ->
   ``partial/<key>.npz``.

A re-run (after a crash, a killed worker, Ctrl-C) skips every file that exists, so it resumes;
a task that Dask runs twice rewrites the same bytes. Results do not depend on the number of
workers, shard size or task order: every random draw comes from ``(seed, layer, repeat)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Sequence


from ..errors import JobError
from ..io.layout import ACTIVATIONS_DIR, IMAGES_DIR, JOB_FILE, PARTIAL_DIR, PLOT_FILE, RESULTS_FILE, shard_files, shard_path
from .tasks import DiffTask, run_diff_task
from ..model.extract import extract_shard, ShardTask
from ..io.images import resolve_image_set
from ..io.manifest import check_output_folder, Manifest, OutputFolderError
from ..model.build import WEIGHTS_KEYWORDS, build_model, model_layers, ModelSpec, WeightsUnavailableError
from ..core.units import bytes_per_image, n_units_label, plan_digest, Sampling, storage_plan
from ..io.results import assemble, read_set_metadata
from .spec import JobSpec, resolve_path, spec_yaml
from ..io.atomic import atomic_write, write_netcdf
from ..io.shards import read_shard_header

@dataclass
class JobResult:
    """What a finished job reports: the results file, images per set, skipped files, notes."""

    path: Path
    n_images: dict[str, int]
    skipped: list[tuple[str, str, str]]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        done = sum(self.n_images.values())
        return (
            f"done: {done} images in {len(self.n_images)} set(s), {len(self.skipped)} skipped, "
            f"{self.seconds:.1f} s -> {self.path}"
        )


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("daskdiff", "dask", "distributed", "xarray", "numpy", "scipy", "tensorflow", "keras", "netCDF4"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class JobPlan:
    """Everything the client decides before the cluster starts (the per-layer storage plan is
    ``storage``, a dict of :class:`daskdiff.core.units.LayerPlan`)."""

    spec: JobSpec
    output: Path
    model: ModelSpec
    sets: dict[str, list[str]]
    layers: list[str]
    shapes: dict[str, tuple[int, ...]]
    storage: dict
    sampling: Sampling
    notes: list[str]
    manifest: Manifest

    @property
    def digest(self) -> str:
        return plan_digest(self.storage)


def _check_output(output: Path, spec: JobSpec, overwrite: bool, inputs: Sequence[str], echo: Callable) -> Manifest:
    """Make sure ``output`` may be written, clear it under ``--overwrite``; its manifest.

    Nothing is created or deleted before the folder passes :func:`check_output_folder`, and
    ``--overwrite`` removes only what the folder's manifest lists (files daskdiff wrote).
    """
    try:
        check_output_folder(output, inputs)
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    try:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write(output / ".write-test", lambda tmp: Path(tmp).write_text("ok"))
        (output / ".write-test").unlink()
    except OSError as err:
        raise JobError(f"output folder {output} is not writable ({err.strerror}); choose another with --output or output:") from None
    try:
        manifest = Manifest(output)
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    job_file = output / JOB_FILE
    if job_file.exists():
        try:
            old = json.loads(job_file.read_text())
        except (OSError, ValueError) as err:
            raise JobError(f"{job_file} is unreadable ({err}); delete it to start this output folder afresh, or choose another --output") from None
        if old.get("result_digest") != spec.result_digest():
            if not overwrite:
                new = spec.model_dump(mode="json")
                changed = sorted(k for k in set(old.get("spec", {})) | set(new) if old.get("spec", {}).get(k) != new.get(k))
                raise JobError(
                    f"output folder {output} holds results of a different job spec (changed: {changed}); "
                    "re-run with --overwrite to replace them, or choose another --output"
                )
            if not manifest.path.exists():
                raise JobError(
                    f"output folder {output} was written by a daskdiff without a manifest ({manifest.path.name}), "
                    "so --overwrite cannot tell its files from yours: delete its activations/, partial/, images/ "
                    "and job.json by hand, or choose another --output"
                )
            kept = manifest.remove_all()
            if kept:
                echo(f"--overwrite kept folder(s) that hold files daskdiff did not write: {', '.join(kept)}")
    return manifest


def _clean_temporaries(manifest: Manifest) -> int:
    """Remove temporaries a killed run left of files daskdiff writes; no other file is touched."""
    found = manifest.temporaries()
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return len(found)


def _generator_params(params: dict, base: Path) -> dict:
    """Resolve a generated set's path parameters against the spec's folder.

    ``source``/``movie`` are paths unless they name a bundled photo (``source: chelsea``);
    ``model`` is a path when it ends in ``.keras``; ``weights`` unless imagenet/random/file.
    """
    from ..stimuli.photos import SAMPLE_PHOTOS

    out = dict(params)
    for key, value in params.items():
        if not isinstance(value, str):
            continue
        is_path = (
            (key in ("source", "movie") and value not in SAMPLE_PHOTOS)
            or (key == "model" and value.endswith(".keras"))
            or (key == "weights" and value not in WEIGHTS_KEYWORDS)
        )
        if is_path:
            out[key] = str(resolve_path(value, base))
    return out


def _generated_set(name: str, entry: Any, base: Path, manifest: Manifest, echo: Callable) -> list[str]:
    """Generate a set into ``<output>/images/<name>``, or reuse it when ``.generated.json`` says the
    same generator and parameters already wrote every file (adversarial sets cost minutes).

    The folder must be daskdiff's own (listed in the output's manifest): a folder of the user's
    that happens to stand there is never written into.
    """
    from ..stimuli.registry import generate

    folder = manifest.output / IMAGES_DIR / name
    if folder.exists() and manifest.relative(folder) not in manifest.dirs:
        raise JobError(
            f"generated image set {name!r} would be written to {folder}, which daskdiff did not create; "
            "rename the set or the folder, or choose another --output"
        )
    manifest.make_dirs(folder)
    params = _generator_params(entry.params(), base)
    record = folder / ".generated.json"
    key = {"generate": entry.generate, "params": params}
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key and all(Path(p).exists() for p in saved.get("paths", [])):
            echo(f"image set {name!r}: reusing {len(saved['paths'])} generated image(s) in {folder}")
            return sorted(saved["paths"])
    paths = generate(entry.generate, folder, **params)
    manifest.add_files([*paths, record])
    atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps({"key": key, "paths": paths})))
    echo(f"image set {name!r}: generated {len(paths)} image(s) ({entry.generate}) in {folder}")
    return sorted(paths)


def _path_sets(spec: JobSpec, base: Path) -> dict[str, list[str]]:
    """The sets read from disk (folders, globs, list files), resolved to image paths."""
    return {
        name: resolve_image_set(entry.path, name=name, base_dir=base)
        for name, entry in spec.image_sets.items()
        if not hasattr(entry, "generate")
    }


def _image_sets(spec: JobSpec, base: Path, manifest: Manifest, path_sets: dict[str, list[str]], echo: Callable) -> dict[str, list[str]]:
    """Every set's image paths, in the spec's order; generated sets are made (or reused) here."""
    return {
        name: path_sets[name] if name in path_sets else _generated_set(name, entry, base, manifest, echo)
        for name, entry in spec.image_sets.items()
    }


def _model_spec(spec: JobSpec, base: Path, weights: str | None) -> ModelSpec:
    m = spec.model
    w = weights or m.weights
    if w not in WEIGHTS_KEYWORDS:
        w = str(resolve_path(w, base))
    name = str(resolve_path(m.name, base)) if m.name.endswith(".keras") else m.name
    return ModelSpec(name=name, weights=w, seed=m.seed, layers=tuple(m.layers) if m.layers else None, predictions=m.predictions, preprocess=m.preprocess)


def _resolve_weights(model: ModelSpec, spec: JobSpec, echo: Callable, notes: list[str]) -> ModelSpec:
    """Check ImageNet weights can be had here; fall back to random only if the spec says so."""
    if model.weights != "imagenet":
        return model
    try:
        build_model(model)
        return model
    except WeightsUnavailableError as err:
        if spec.model.fallback_weights != "random":
            raise JobError(str(err)) from None
        note = (
            f"IMAGENET WEIGHTS UNAVAILABLE, USING RANDOM WEIGHTS (seed={spec.model.seed}) as the spec's "
            "model.fallback_weights says: results describe an untrained network"
        )
        echo("!" * 78 + f"\n!! {note}\n" + "!" * 78)
        notes.append(note)
        return ModelSpec(**{**model.__dict__, "weights": "random"})


def plan_job(spec: JobSpec, base: Path, *, output: str | Path | None = None, weights: str | None = None, overwrite: bool = False, echo: Callable = print) -> JobPlan:
    """Validate and plan a job on the client; nothing runs on a cluster."""
    out = Path(output) if output else resolve_path(spec.output, base)
    out = out.resolve()
    path_sets = _path_sets(spec, base)
    manifest = _check_output(out, spec, overwrite, [p for paths in path_sets.values() for p in paths], echo)
    if (n := _clean_temporaries(manifest)):
        echo(f"removed {n} temporary file(s) left by an interrupted run")
    sets = _image_sets(spec, base, manifest, path_sets, echo)
    model = _model_spec(spec, base, weights)
    info = model_layers(model)
    notes: list[str] = []
    model = _resolve_weights(model, spec, echo, notes)
    a = spec.analysis
    sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, mode=a.sampling, seed=a.seed)
    storage = storage_plan(info["shapes"], a.substrates, sampling, store=spec.extraction.store, full_layers=[info["last_layer"]])
    return JobPlan(spec, out, model, sets, info["layers"], info["shapes"], storage, sampling, notes, manifest)


def shard_size(requested: int, batch_size: int) -> int:
    """Shard size rounded up to a multiple of the batch size.

    Batches then hold the same images (same global positions) whatever the shard size, so
    float32 activations, and so results, are bit-identical for any shard size. (The batch
    size itself changes float32 rounding, ~1e-7 relative: it is part of the spec digest.)
    """
    return -(-requested // batch_size) * batch_size


def _shard_tasks(plan: JobPlan, attrs: dict) -> list[ShardTask]:
    e = plan.spec.extraction
    size = shard_size(e.shard_size, e.batch_size)
    tasks = []
    for name, paths in plan.sets.items():
        for shard, start in enumerate(range(0, len(paths), size)):
            chunk = tuple(paths[start : start + size])
            tasks.append(ShardTask(name, shard, chunk, start, str(plan.output), e.batch_size, e.resize, e.strict, attrs))
    return tasks


def _shard_done(task: ShardTask, digest: str) -> bool:
    path = shard_path(task.output, task.image_set, task.shard)
    if not path.exists():
        return False
    try:
        head = read_shard_header(path)
    except (OSError, KeyError):
        return False  # unreadable (e.g. damaged by hand): rewrite it
    n_skipped = len(json.loads(head["attrs"].get("skipped_json", "[]")))
    return head["attrs"].get("plan_digest") == digest and head["n_images"] + n_skipped == len(task.paths)


def _diff_tasks(plan: JobPlan, keep_rdm: bool) -> list[DiffTask]:
    a = plan.spec.analysis
    tasks = []
    for name in plan.sets:
        files = tuple(str(f) for f in shard_files(plan.output, name))
        for substrate in a.substrates:
            for n in a.n_units:
                total = plan.sampling.repeats_for(n)
                for layer in plan.layers:
                    for start in range(0, total, a.repeats_per_task):
                        stop = min(start + a.repeats_per_task, total)
                        tasks.append(
                            DiffTask(name, substrate, n, layer, plan.shapes[layer], start, stop, files, str(plan.output),
                                     plan.sampling, a.metric, a.normalize, a.per_unit, a.median_over, keep_rdm)
                        )
    return tasks


def _run_stage(client: Any, fn: Callable, tasks: Sequence, extra: tuple, *, desc: str, unit: str, progress: bool, retries: int, resources: dict | None, describe_task: Callable) -> list:
    """Submit one task per item, show progress, and turn a failure into a JobError naming it."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    if not tasks:
        return []
    futures = {client.submit(fn, t, *extra, key=f"daskdiff-{t.key}", retries=retries, resources=resources): t for t in tasks}
    results = []
    interval = 0.1 if sys.stderr.isatty() else 10.0  # a log file gets a line every 10 s, not every task
    with tqdm(total=len(futures), desc=desc, unit=unit, disable=not progress, file=sys.stderr, mininterval=interval) as bar:
        for future in as_completed(futures):
            if future.status == "error":
                task = futures[future]
                exc = future.exception()
                client.cancel(list(futures))
                raise JobError(f"{desc} failed for {describe_task(task)} after {retries} retries: {type(exc).__name__}: {exc}") from exc
            results.append(future.result())
            bar.update(1)
    return results


def _gpu_resources(client: Any, spec: JobSpec) -> dict | None:
    """``{'GPU': 1}`` when some worker offers a GPU; waits for one when ``require_gpu`` is set."""
    from .cluster import gpu_resource_offered

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
    return {"GPU": 1} if gpu else None


def _extract(client: Any, plan: JobPlan, attrs: dict, progress: bool, echo: Callable) -> None:
    """Stage 1: extract every shard that is not already on disk for this plan."""
    e = plan.spec.extraction
    resources = _gpu_resources(client, plan.spec)
    all_shards = _shard_tasks(plan, attrs)
    todo = [t for t in all_shards if not _shard_done(t, plan.digest)]
    if len(todo) < len(all_shards):
        echo(f"resuming: {len(all_shards) - len(todo)} of {len(all_shards)} shard(s) already extracted")
    for name in {t.image_set for t in todo}:
        plan.manifest.make_dirs(plan.output / ACTIVATIONS_DIR / name)
    plan.manifest.add_files(shard_path(t.output, t.image_set, t.shard) for t in todo)
    storage_future = client.scatter(plan.storage, broadcast=True, hash=False) if todo else None
    _run_stage(client, extract_shard, todo, (storage_future, plan.model), desc="extract", unit="shard", progress=progress,
               retries=e.retries, resources=resources,
               describe_task=lambda t: f"shard {t.shard} of set {t.image_set!r} ({len(t.paths)} images, {t.paths[0]} ...)")


def _set_metadata(plan: JobPlan) -> dict[str, dict]:
    """Each set's per-image labels and skipped files, read from its shards; at least 2 images each."""
    metadata = {name: read_set_metadata(shard_files(plan.output, name)) for name in plan.sets}
    for name, m in metadata.items():
        if len(m["paths"]) < 2:
            raise JobError(f"image set {name!r} has {len(m['paths'])} decodable image(s); differentiation needs at least 2 (skipped: {m['skipped']})")
    return metadata


def _differentiate(client: Any, plan: JobPlan, keep_rdm: bool, progress: bool, echo: Callable) -> list[DiffTask]:
    """Stage 2: run every differentiation task whose partial result is not on disk; all tasks."""
    tasks = _diff_tasks(plan, keep_rdm)
    todo = [t for t in tasks if not t.path.exists()]
    if len(todo) < len(tasks):
        echo(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} differentiation task(s) already done")
    if todo:
        plan.manifest.make_dirs(plan.output / PARTIAL_DIR)
        plan.manifest.add_files(t.path for t in todo)
    _run_stage(client, run_diff_task, todo, (), desc="differentiation", unit="task", progress=progress,
               retries=plan.spec.extraction.retries, resources=None, describe_task=lambda t: f"task {t.key}")
    return tasks


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
    echo: Callable = print,
) -> JobResult:
    """Run a job end to end (see the module docstring); returns where the results are.

    ``client``: an existing ``distributed.Client`` to use (tests, notebooks); otherwise one is
    made from the spec's cluster section and the ``scheduler``/``scheduler_file``/``n_workers``
    overrides (see :func:`daskdiff.pipeline.cluster.connect`). The figure of the results is
    drawn by the CLI (:func:`daskdiff.plot.plot_results`), not here.
    """
    from .cluster import WorkerSetup, connect

    t0 = time.perf_counter()
    plan = plan_job(spec, base, output=output, weights=weights, overwrite=overwrite, echo=echo)
    echo(
        f"planned {sum(map(len, plan.sets.values()))} image(s) in {len(plan.sets)} set(s), {len(plan.layers)} layer(s); "
        f"stores {bytes_per_image(plan.storage) / 1e6:.2f} MB per image -> {plan.output}"
    )
    attrs = {**plan.model.identity(), "daskdiff_version": versions()["daskdiff"]}
    plan.manifest.add_files([plan.output / JOB_FILE])
    job_record = json.dumps({"result_digest": spec.result_digest(), "spec": spec.model_dump(mode="json")}, indent=1)
    atomic_write(plan.output / JOB_FILE, lambda tmp: Path(tmp).write_text(job_record))

    def on(c: Any) -> JobResult:
        c.register_plugin(WorkerSetup())
        _extract(c, plan, attrs, progress, echo)
        metadata = _set_metadata(plan)
        n_images = {name: len(m["paths"]) for name, m in metadata.items()}
        keep_rdm = max(n_images.values()) <= spec.analysis.rdm_max_images
        tasks = _differentiate(c, plan, keep_rdm, progress, echo)
        path, skipped, notes = write_results(plan, metadata, tasks, keep_rdm, command, echo)
        return JobResult(path=path, n_images=n_images, skipped=skipped, seconds=time.perf_counter() - t0, notes=notes)

    if client is not None:
        return on(client)
    with connect(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers, echo=echo) as c:
        return on(c)


def _results_attrs(plan: JobPlan, command: str | None) -> dict[str, Any]:
    """The results file's global attributes: CF provenance, the spec, the analysis conventions."""
    spec = plan.spec
    a = spec.analysis
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs = {
        "Conventions": "CF-1.8",
        "title": f"daskdiff differentiation results of job {spec.name!r}",
        "source": f"daskdiff {versions()['daskdiff']}",
        "history": f"{now}: {command or 'daskdiff.run_job'}",
        "job_spec": spec_yaml(spec),
        "package_versions": json.dumps(versions()),
        "seed": a.seed,
        "metric": a.metric,
        "normalize": a.normalize,
        "normalize_scope": "per image set, layer, substrate, n_units and repeat (all entries of the sampled matrix)",
        "per_unit": int(a.per_unit),
        "median_over": a.median_over,
        "sampling_mode": a.sampling,
        "repeats": a.repeats,
        "plan_digest": plan.digest,
        "bytes_per_image": bytes_per_image(plan.storage),
        **plan.model.identity(),
    }
    if plan.notes:
        attrs["warning"] = " | ".join(plan.notes)
    return attrs


def write_results(plan: JobPlan, metadata: dict, tasks: list[DiffTask], keep_rdm: bool, command: str | None, echo: Callable) -> tuple[Path, list[tuple[str, str, str]], list[str]]:
    """Assemble the partial results into ``differentiation.nc`` (written atomically).

    Returns the file's path, the skipped files as ``(set, path, reason)`` and the job's notes
    (the plan's, plus a count of undefined repeats), each also echoed.
    """
    a = plan.spec.analysis
    ds = assemble(
        sets=list(plan.sets), metadata=metadata, substrates=list(a.substrates), n_units=[n_units_label(n) for n in a.n_units],
        layers=plan.layers, repeats=a.repeats, partials=[t.partial for t in tasks], keep_rdm=keep_rdm,
        attrs=_results_attrs(plan, command),
    )
    plan.manifest.add_files([plan.output / RESULTS_FILE, plan.output / PLOT_FILE])
    path = write_netcdf(ds, plan.output / RESULTS_FILE)
    notes = list(plan.notes)
    if undefined := int(ds["n_undefined"].sum()):
        note = (
            f"{undefined} repeat(s) had a normaliser of zero or below float32 resolution of the layer "
            "(e.g. only dead units or ~0 softmax tails sampled): NaN, counted in n_undefined"
        )
        echo("warning: " + note)
        notes.append(note)
    skipped = [(str(s), str(p), str(r)) for s, p, r in zip(ds["skipped_set"].values, ds["skipped_path"].values, ds["skipped_reason"].values)]
    for s, p, r in skipped:
        echo(f"skipped ({s}): {p}: {r}")
    ds.close()
    return path, skipped, notes
