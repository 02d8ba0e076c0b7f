"""Pipeline layer: the output folder of a job, checked, locked and made ready to run in.

Between planning and running a job (:mod:`daskdiff.pipeline.job`), :func:`prepare` takes the
output folder: it refuses a folder that is not daskdiff's to write (files in the way, links out of
it, another job's results without ``--overwrite``), locks it (:class:`~daskdiff.io.lock.OutputLock`),
clears it under ``--overwrite`` (only what its manifest lists), removes temporaries of dead writers,
settles the model's weights and fingerprint, and generates the generated image sets into it (or
reuses an earlier run's). :func:`preview` makes the same checks for a dry run, writing nothing.

Conventions
-----------
Nothing is created or deleted before the folder passes its checks; nothing is deleted before this
run holds the folder's lock; nothing outside the folder is ever touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..core.batches import shard_size
from ..errors import JobError
from ..io.atomic import atomic_write, remove_dead_temporaries
from ..io.confined import check_own_file, read_own_file
from ..io.image_sets import check_min_images
from ..io.layout import ACTIVATIONS_DIR, IMAGES_DIR, JOB_FILE, LOCK_FILE, MANIFEST_FILE, PARTIAL_DIR, partial_key, partial_path, PLOT_FILE, \
    RESULTS_FILE, SHARD_GLOB, shard_path
from ..io.location import ObjectPath, is_remote
from ..io.lock import OutputLock
from ..io.manifest import check_output_folder, Manifest, OutputFolderError, Writes
from ..io.object_output import ObjectLease, ObjectManifest
from ..io.reading import TEXT_FILE_MAX_BYTES
from ..io.store import listing, read_object, upload
from ..logs import reporter, warn
from ..model.build import build_model, ModelSpec, WeightsUnavailableError, with_fingerprint
from . import config
from .movies import check_spectral
from .plan import JobPlan, plan_estimate
from .resolve import generated_fps, ImageSet, reusable_generated
from .spec import JobSpec

_echo = reporter(__name__)


def prepare(plan: JobPlan, *, overwrite: bool = False, echo: Callable = _echo) -> JobPlan:
    """Take ``plan``'s output folder for the run (see the module docstring); the plan to run.

    The returned plan holds the folder's lock (a second run on the folder is refused) until
    ``plan.release()``, and every set's paths: generated sets are generated (or reused) here, and
    the counts, frame rates and estimate are those of the files written. ``overwrite``: replace the
    results of a different spec (``--overwrite``). The weights are checked first (ImageNet's
    downloaded if missing, or the spec's ``fallback_weights``), so a run that cannot have them
    generates nothing, and the model's files are fingerprinted, once per run.
    """
    spec, out = plan.spec, plan.output
    check = _check_object_output if isinstance(out, ObjectPath) else _check_output
    manifest, lock = check(out, spec, overwrite, plan.inputs.user_files, planned_writes(plan), echo)
    try:
        if (n := clean_temporaries(manifest)):
            echo(f"removed {n} temporary file(s) left by an interrupted run")
        notes: list[str] = []  # the weights first: a run that cannot have them generates nothing (adversarial sets cost minutes)
        model = with_fingerprint(_resolve_weights(plan.model, spec, echo, notes))  # the files' content, once per run
        sets = {name: list(s.paths) if s.generate is None else _generated_set(s, manifest, echo, plan.inputs.spec.storage_options)
                for name, s in plan.inputs.sets.items()}
        fps = dict(plan.fps)
        for name, s in plan.inputs.sets.items():
            if s.generate is not None and (rate := generated_fps(s.generate, s.key["params"], out / IMAGES_DIR / name, bool(sets[name]))):
                fps[name] = rate
        counts = {name: len(paths) for name, paths in sets.items()}
        check_spectral(spec, counts, fps)
        ready = dataclasses.replace(plan, sets=sets, counts=counts, fps=fps, model=model, manifest=manifest, lock=lock, notes=notes,
                                    how={name: "exact" for name in sets})
        ready.estimate = plan_estimate(ready)
        return ready
    except BaseException:
        lock.release()
        raise


def check_output(plan: JobPlan, *, overwrite: bool = False) -> tuple[Manifest, bool]:
    """The refusals of ``plan``'s output location that write nothing (what :func:`prepare` checks
    first): its manifest, and whether ``--overwrite`` would clear another spec's results. A run
    checks them before it contacts its cluster, so a bad output folder is named first."""
    check = _check_object_readonly if isinstance(plan.output, ObjectPath) else _check_output_readonly
    return check(plan.output, plan.spec, overwrite, plan.inputs.user_files, planned_writes(plan))


def preview(plan: JobPlan, *, overwrite: bool = False, echo: Callable = _echo) -> JobPlan:
    """The checks of :func:`prepare` that write nothing, for a dry run; ``plan`` with the folder's manifest.

    ``echo`` says what a run would do that a dry run does not: remove another spec's results
    (``--overwrite``), generate sets, download ImageNet weights.
    """
    manifest, clear = check_output(plan, overwrite=overwrite)
    if clear:
        echo(f"--overwrite would remove the {len(manifest.files)} file(s) daskdiff wrote in {plan.output} for another spec")
    for name, s in plan.inputs.sets.items():
        if not s.paths:
            will = {"exact": f"{s.count}", "at most": f"at most {s.count}"}.get(s.how, "an unknown number of (counted as 2)")
            echo(f"image set {name!r}: not generated in a dry run; a run generates {will} image(s)")
    if plan.model.weights == "imagenet":
        echo("ImageNet weights are not loaded in a dry run (a run downloads them to Keras's cache if missing)")
    return dataclasses.replace(plan, manifest=manifest)


def planned_writes(plan: JobPlan) -> Writes:
    """What the job will write in its output folder, as far as it is known before it runs.

    Every shard file of a set whose image count is exact, and every shard file already in a
    set's folder (a generated set's count may still change), every partial result, the results
    file, its figure and ``job.json``; the folders they go in; generated sets' image folders.
    """
    spec, output = plan.spec, plan.output
    e = spec.extraction
    size = shard_size(e.shard_size, e.batch_size)
    files = [output / JOB_FILE, output / RESULTS_FILE, output / PLOT_FILE]
    folders = [output / ACTIVATIONS_DIR, output / PARTIAL_DIR]
    own = []
    for name, s in plan.inputs.sets.items():
        folders.append(output / ACTIVATIONS_DIR / name)
        shards = {shard_path(output, name, i) for i in range(-(-s.count // size))} if s.how == "exact" else set()
        shards.update((output / ACTIVATIONS_DIR / name).glob(SHARD_GLOB))
        files += sorted(shards)
        files += [partial_path(output, partial_key(name, substrate, layer)) for substrate in spec.analysis.substrates for layer in plan.layers]
        if s.generate is not None:
            folders.append(output / IMAGES_DIR)
            own.append(output / IMAGES_DIR / name)
    return Writes(tuple(files), tuple(dict.fromkeys(folders)), tuple(own))


def _check_output_readonly(output: Path, spec: JobSpec, overwrite: bool, inputs: Sequence[str], writes: Writes) -> tuple[Manifest, bool]:
    """The checks of :func:`_check_output` that write nothing: ``(manifest, clear)``, where ``clear``
    says that ``--overwrite`` will remove the files of a different spec's job.

    ``writes`` is what the job will write: a file among them that daskdiff did not write (one
    its manifest does not list), a folder that leads out of ``output`` (a link) or a generated
    set's folder daskdiff did not create is refused (:meth:`~daskdiff.io.manifest.Manifest.check_writes`),
    as is a lock file that is not a plain file. A folder without a manifest whose ``job.json``
    records this very job was written by an older daskdiff (which kept no manifest): its files
    count as daskdiff's, and a re-run resumes them.
    """
    try:
        check_output_folder(output, inputs)
        manifest = Manifest(output)
        check_own_file(output / LOCK_FILE)
        old = _job_record(output / JOB_FILE, manifest)
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    clear = _other_spec(output, spec, old, overwrite)
    if clear and not manifest.found:
        raise JobError(
            f"output folder {output} was written by a daskdiff without a manifest ({manifest.path.name}), "
            "so --overwrite cannot tell its files from yours: delete its activations/, partial/, images/ "
            "and job.json by hand, or choose another --output"
        )
    try:
        manifest.check_writes(writes, adopt=old is not None and not clear and not manifest.found)
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    return manifest, clear


def _other_spec(output: Path | ObjectPath, spec: JobSpec, old: dict | None, overwrite: bool) -> bool:
    """Whether ``output`` holds results of another spec (``old``: its ``job.json``), which
    ``--overwrite`` clears; without ``--overwrite`` that is a :class:`JobError` naming the changed keys."""
    clear = old is not None and old.get("result_digest") != spec.result_digest()
    if clear and not overwrite:
        changed = changed_keys(old.get("spec", {}), spec.model_dump(mode="json"))
        raise JobError(
            f"output folder {output} holds results of a different job spec (changed: {changed}); "
            "re-run with --overwrite to replace them, or choose another --output"
        )
    return clear


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys (``analysis.repeats``) whose values differ between two specs as JSON
    (``job.json``'s and this run's), sorted; a list is one value."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix.rstrip(".")] if old != new else []
    return sorted(k for key in set(old) | set(new) for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}."))


def _job_record(path: Path, manifest: Manifest) -> dict | None:
    """The record ``job.json`` of the job that wrote the folder (None: there is none).

    A ``job.json`` daskdiff did not write (not listed in a manifest; without a manifest, not a
    record of daskdiff's) is refused: it is the user's, and a run would replace it.
    """
    if not os.path.lexists(path):
        return None
    try:
        old = json.loads(read_own_file(path))
        why = "" if isinstance(old, dict) and "result_digest" in old else "it is not a record of daskdiff's"
    except ValueError as err:
        if isinstance(err, OutputFolderError):
            raise
        old, why = None, str(err)
    if manifest.relative(path) not in manifest.files and (manifest.found or why):
        raise OutputFolderError(
            f"{path} is in the way: daskdiff keeps its job record there, but did not write this file (its manifest "
            f"{MANIFEST_FILE} does not list it), and never replaces a file of yours: move or rename it, or choose "
            "another --output (e.g. output: results)"
        )
    if why:
        raise OutputFolderError(f"{path} is unreadable ({why}); delete it to start this output folder afresh, or choose another --output")
    return old


def _check_output(output: Path, spec: JobSpec, overwrite: bool, inputs: Sequence[str], writes: Writes, echo: Callable) -> tuple[Manifest, OutputLock]:
    """Make sure ``output`` may be written, lock it, clear it under ``--overwrite``; its manifest
    and lock (held: the caller releases it).

    Nothing is created or deleted before the folder passes :func:`check_output_folder` and the
    other checks of :func:`_check_output_readonly` (``writes``: what the job will write); nothing
    is deleted before this run holds the folder's lock (:class:`~daskdiff.io.lock.OutputLock`: a
    second run on the same folder is refused, naming the first), and the checks are then made
    again, under the lock; and ``--overwrite`` removes only what the folder's manifest lists
    (files daskdiff wrote), never through a link.
    """
    _check_output_readonly(output, spec, overwrite, inputs, writes)  # refuse before anything is created
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):  # a file of no name (O_TMPFILE), or one removed at once
            pass
    except OSError as err:
        raise JobError(f"output folder {output} is not writable ({err.strerror}); choose another with --output or output:") from None
    try:
        lock = OutputLock(output).acquire()
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    try:
        manifest, clear = _check_output_readonly(output, spec, overwrite, inputs, writes)  # again: now no other run can change it
        if clear:
            kept = manifest.remove_all()
            if kept:
                echo(f"--overwrite kept folder(s) that hold files daskdiff did not write: {', '.join(kept)}")
        return manifest, lock
    except BaseException:
        lock.release()
        raise


def _check_object_readonly(output: ObjectPath, spec: JobSpec, overwrite: bool, inputs: Sequence[str], writes: Writes,
                           lease: ObjectLease | None = None) -> tuple[ObjectManifest, bool]:
    """:func:`_check_output_readonly` for an output prefix on an object store: one listing of the
    prefix, its manifest and ``job.json``; ``(manifest, clear)``.

    A ``job.json`` or a key the job writes that exists but is not listed in the manifest is the
    user's and is refused, naming it; a prefix that cannot be listed (no such bucket, refused
    credentials, an endpoint that does not answer) is a one-line :class:`JobError` naming it and
    what to check. ``inputs``: unused (an input image below the output prefix is s3in's check).
    """
    try:
        existing = listing(output)
        manifest = ObjectManifest(output, lease)
        data = read_object(output / JOB_FILE, TEXT_FILE_MAX_BYTES)
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    except (OSError, ValueError) as err:
        raise _unreachable(output, err) from None
    old = None
    if data is not None:
        if JOB_FILE not in manifest.files:
            raise JobError(f"{output / JOB_FILE} is in the way: daskdiff keeps its job record there, but did not write this "
                           f"object (its manifest {MANIFEST_FILE} does not list it), and never replaces an object of yours: "
                           "move it, or choose another --output")
        try:
            old = json.loads(data)
        except ValueError as err:
            raise JobError(f"{output / JOB_FILE} is unreadable ({err}); delete it to start this output afresh, or choose "
                           "another --output") from None
    clear = _other_spec(output, spec, old, overwrite)
    theirs = manifest.theirs(writes.files, existing)
    if theirs:
        more = f" (and {len(theirs) - 1} other object(s) daskdiff would write)" if len(theirs) > 1 else ""
        raise JobError(f"{theirs[0]}{more} is in the way: daskdiff would write an object of that name, but did not write "
                       f"this one (its manifest {MANIFEST_FILE} does not list it), and never replaces an object of yours: "
                       "move it, or choose another --output")
    return manifest, clear


def _unreachable(output: ObjectPath, err: Exception) -> JobError:
    return JobError(
        f"output {output} cannot be read or written ({type(err).__name__}: {err}); check that its bucket exists, the "
        "credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) and the endpoint (AWS_ENDPOINT_URL) or the spec's storage_options"
    )


def output_lease(output: ObjectPath) -> ObjectLease:
    """The lease a run takes on output prefix ``output`` (not yet acquired), living Dask config
    ``daskdiff.lease.ttl`` seconds without a refresh."""
    return ObjectLease(output, ttl=config.seconds("daskdiff.lease.ttl"))


def _check_object_output(output: ObjectPath, spec: JobSpec, overwrite: bool, inputs: Sequence[str], writes: Writes,
                         echo: Callable) -> tuple[ObjectManifest, ObjectLease]:
    """:func:`_check_output` for an output prefix on an object store: the checks, then the
    prefix's lease (:class:`~daskdiff.io.object_output.ObjectLease`: a second run is refused,
    naming the first; a lease not refreshed for ``daskdiff.lease.ttl`` is taken over, and said),
    the checks again under it, and ``--overwrite``'s deletes (only the keys the manifest lists)."""
    _check_object_readonly(output, spec, overwrite, inputs, writes)  # refuse before anything is written
    try:
        lease = output_lease(output).acquire()
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    except OSError as err:  # e.g. no permission to write there
        raise _unreachable(output, err) from None
    try:
        if lease.took_over:
            echo(f"took over the lease of {output} from a run that stopped refreshing it ({lease.took_over})")
        manifest, clear = _check_object_readonly(output, spec, overwrite, inputs, writes, lease)
        if clear:
            manifest.remove_all()
        return manifest, lease
    except BaseException:
        lease.release()
        raise


def clean_temporaries(manifest: Manifest, client: Any = None) -> int:
    """Remove temporaries of files daskdiff writes whose writer is dead; no other file is touched.

    A temporary names its writer (host and pid, :func:`daskdiff.io.atomic.owner_tag`): this
    machine judges its own; with a ``client``, every worker's machine judges its own too (a
    worker of a killed client's cluster may still be writing). Returns how many were removed.
    """
    found = [str(p) for p in manifest.temporaries()]
    removed = set(remove_dead_temporaries(str(manifest.output), found)) if found else set()
    if client is not None and (left := [p for p in found if p not in removed]):
        for gone in client.run(remove_dead_temporaries, str(manifest.output), left).values():
            removed.update(gone)
    return len(removed)


def _generated_set(s: ImageSet, manifest: Manifest, echo: Callable, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Generate set ``s`` into ``<output>/images/<name>``, or reuse it when ``.generated.json`` says
    the same generator, parameters and input files (``s.key``:
    :func:`~daskdiff.pipeline.resolve.generated_key`) already wrote every file (adversarial sets
    cost minutes).

    The folder must be daskdiff's own (listed in the output's manifest): a folder of the user's
    that happens to stand there is never written into (:func:`_check_output_readonly` refuses it).
    A movie file on an object store is downloaded once, here on the client, with the job's
    ``storage_options`` (:func:`daskdiff.stimuli.movie.movie_copy`); the workers read its frames.
    """
    from ..stimuli.movie import MOVIE_RECORD
    from ..stimuli.registry import generate, GENERATORS

    folder = manifest.output / IMAGES_DIR / s.name  # checked with the job's writes (_check_output): daskdiff's own, or absent
    manifest.make_dirs(folder)
    key = dict(s.key)
    record = folder / ".generated.json"
    reused = reusable_generated(folder, key)
    if reused is not None:
        echo(f"image set {s.name!r}: reusing {len(reused)} generated image(s) in {folder}")
        return reused
    movie_record = [folder / MOVIE_RECORD] if GENERATORS[s.generate].movie else []  # a movie's frame rate: daskdiff's too
    manifest.add_files([*movie_record, record])  # before it is written, so --overwrite may remove it
    remote = {"storage_options": storage_options} if s.generate == "movie" and is_remote(key["params"].get("movie")) else {}
    if isinstance(folder, ObjectPath):
        paths = _generate_objects(s, folder, manifest, [*movie_record, record], key["params"], remote)
    else:
        paths = generate(s.generate, folder, **key["params"], **remote)
    manifest.add_files([*paths, record])
    check_min_images(paths, s.name)  # a still image on an object store, told from a movie only once read
    atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps({"key": key, "paths": paths})))
    echo(f"image set {s.name!r}: generated {len(paths)} image(s) ({s.generate}) in {folder}")
    return sorted(paths)


def _generate_objects(s: ImageSet, folder: ObjectPath, manifest: ObjectManifest, records: list[ObjectPath],
                      params: dict, extra: dict) -> list[str]:
    """Generate set ``s`` into a local temporary folder, then upload each image (and a movie's
    ``movie.json``) whole, directly below ``folder`` (``<output>/images/<set>``); their URLs.

    Every key is listed in the manifest before it is uploaded (``--overwrite`` deletes them, and
    only them); an object already there that daskdiff did not write is refused, never replaced.
    """
    from ..stimuli.movie import MOVIE_RECORD
    from ..stimuli.registry import generate

    with tempfile.TemporaryDirectory(prefix="daskdiff-generate-") as tmp:
        local = generate(s.generate, tmp, **params, **extra)
        names = [Path(p).name for p in local]
        if MOVIE_RECORD in {r.name for r in records}:
            local, names = [*local, os.path.join(tmp, MOVIE_RECORD)], [*names, MOVIE_RECORD]
        targets = [folder / n for n in names]
        try:
            theirs = manifest.theirs(targets, [f"{IMAGES_DIR}/{s.name}/{k}" for k in listing(folder)])
        except OSError as err:
            raise _unreachable(manifest.output, err) from None
        if theirs:
            raise JobError(f"{theirs[0]} is in the way: daskdiff would write generated image set {s.name!r} there, but did "
                           f"not write this object (its manifest {MANIFEST_FILE} does not list it): move it, or choose "
                           "another --output")
        manifest.add_files(targets)  # before they are written, so --overwrite may remove them
        for path, target in zip(local, targets):
            upload(path, target)
    return [str(t) for t in targets if t.name != MOVIE_RECORD]


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
        warn(echo, "!" * 78 + f"\n!! {note}\n" + "!" * 78)
        notes.append(note)
        return ModelSpec(**{**model.__dict__, "weights": "random"})
