"""Pipeline layer: a whole job, image sets -> extraction shards -> differentiation tasks -> one results file.

The client plans (image lists, model layer shapes, the sampling plan) before any task runs,
so a bad spec, a missing set or an unknown layer fails at once, before any cluster starts (a
``LocalCluster`` the job starts itself starts once they have passed, while the client generates
image sets and builds the storage plan: its workers import Keras meanwhile). It then submits every
task of the job at once, as one graph of pure, idempotent tasks whose outputs are files with
deterministic names:

1. extraction: one task per shard -> ``activations/<set>/shard-NNNNN.nc``; it returns the shard's
   labels and skipped files;
2. differentiation: one task per (set, substrate, layer), computing every ``n_units`` and every
   repeat from one read of that layer's stored values -> ``partial/<set>--<substrate>--<layer>.npz``;
   it returns the same arrays. A set's tasks depend on that set's shards only (Dask futures as
   arguments), so a set starts differentiating as soon as its own shards are written.

Every task carries its inputs by value (the storage plan as its small
:class:`~daskdiff.core.units.StorageRecipe`; nothing is scattered), so Dask can rerun any task on
any worker: a worker that dies costs the job its tasks in progress, not the job. Every task key
holds the job's :attr:`JobPlan.token` (output folder, spec, model, images, plan), so jobs that
share a scheduler never share a task.

A re-run (after a crash, a killed worker, Ctrl-C) finds the finished files: each task checks its
own file on the worker and reuses it, so the job resumes; a task that Dask runs twice rewrites the
same bytes. Results do not depend on the number of workers, shard size or task order: every random
draw comes from ``(seed, layer, repeat)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DaskdiffError, InputError, JobError
from ..logs import reporter
from ..io.confined import check_own_file, read_own_file, remove_inside
from ..io.layout import (ACTIVATIONS_DIR, IMAGES_DIR, JOB_FILE, LOCK_FILE, MANIFEST_FILE, PARTIAL_DIR, partial_key, partial_path, PLOT_FILE,
                         RESULTS_FILE, SHARD_GLOB, shard_path, variable_name)
from .tasks import DiffTask, run_diff_task, SpectralOptions
from ..model.extract import extract_shard, ShardTask
from ..io.images import DuplicateImagesWarning, check_min_images, resolve_image_set
from ..io.manifest import check_output_folder, Manifest, OutputFolderError, Writes
from ..io.lock import OutputLock
from ..io.atomic import DiskFullError, remove_dead_temporaries
from ..model.build import WEIGHTS_KEYWORDS, build_model, model_layers, ModelSpec, WeightsUnavailableError, with_fingerprint
from ..core.units import bytes_per_image, cached_storage_plan, expected_stored, n_units_label, plan_digest, Sampling, StorageRecipe
from ..core.batches import shard_size
from ..core.estimate import estimate_work, WorkEstimate
from .budget import check_budget, describe, is_external, job_size, Limits, limits_for, lower_bound_size, mean_chars
from .health import check_worker_memory, memory_needs, MemoryNeeds, WorkerWatch
from ..io.partials import PartialResult
from ..io.results import assemble, set_metadata
from ..io.shards import CorruptShardError
from .spec import JobSpec, resolve_path, spec_yaml
from ..io.atomic import atomic_write, write_netcdf

_echo = reporter(__name__)  # the default echo: this module's logger (see daskdiff.logs)


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
    manifest: Manifest
    estimate: WorkEstimate | None = None
    limits: Limits | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """Images per set; in a dry run, a generated set not yet on disk has the count its generator
    will write (:func:`daskdiff.stimuli.registry.planned_count`) and no paths in ``sets``."""
    dry_run: bool = False
    """Planned without writing anything (``plan_job(dry_run=True)``): such a plan is never run."""
    lock: OutputLock | None = None
    """The output folder's lock, held from planning until :meth:`release` (:func:`run_job` releases it)."""
    fps: dict[str, float] = field(default_factory=dict)
    """Frame rate (Hz) of each set that is a movie (from its ``movie.json``, its file or the
    spec's ``fps:``; in a dry run, the rate a generator will record, when known)."""
    memory: MemoryNeeds | None = None
    """What a worker needs before its first task, and the setting that gives it memory."""

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
    clear = old is not None and old.get("result_digest") != spec.result_digest()
    if clear and not overwrite:
        new = spec.model_dump(mode="json")
        changed = sorted(k for k in set(old.get("spec", {})) | set(new) if old.get("spec", {}).get(k) != new.get(k))
        raise JobError(
            f"output folder {output} holds results of a different job spec (changed: {changed}); "
            "re-run with --overwrite to replace them, or choose another --output"
        )
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


def _planned_writes(spec: JobSpec, base: Path, output: Path, counts: dict[str, int], how: dict[str, str], layers: Sequence[str]) -> Writes:
    """What the job will write in ``output``, as far as it is known before it runs.

    Every shard file of a set whose image count is exact, and every shard file already in a
    set's folder (a generated set's count may still change), every partial result, the results
    file, its figure and ``job.json``; the folders they go in; generated sets' image folders.
    """
    e = spec.extraction
    size = shard_size(e.shard_size, e.batch_size)
    files = [output / JOB_FILE, output / RESULTS_FILE, output / PLOT_FILE]
    folders = [output / ACTIVATIONS_DIR, output / PARTIAL_DIR]
    own = []
    for name, entry in set_entries(spec, base).items():
        folders.append(output / ACTIVATIONS_DIR / name)
        shards = {shard_path(output, name, i) for i in range(-(-counts[name] // size))} if how[name] == "exact" else set()
        shards.update((output / ACTIVATIONS_DIR / name).glob(SHARD_GLOB))
        files += sorted(shards)
        files += [partial_path(output, partial_key(name, substrate, layer)) for substrate in spec.analysis.substrates for layer in layers]
        if hasattr(entry, "generate"):
            folders.append(output / IMAGES_DIR)
            own.append(output / IMAGES_DIR / name)
    return Writes(tuple(files), tuple(dict.fromkeys(folders)), tuple(own))


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


def _clean_temporaries(manifest: Manifest, client: Any = None) -> int:
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


def _is_path_param(key: str, value: Any) -> bool:
    """Whether generator parameter ``key`` holds a path: ``source``/``movie`` unless they name a
    bundled photo (``source: chelsea``); ``model`` when it ends in ``.keras``; ``weights`` unless
    imagenet/random/file."""
    from ..stimuli.photos import SAMPLE_PHOTOS

    return isinstance(value, str) and (
        (key in ("source", "movie") and value not in SAMPLE_PHOTOS)
        or (key == "model" and value.endswith(".keras"))
        or (key == "weights" and value not in WEIGHTS_KEYWORDS)
    )


def _generator_params(params: dict, base: Path) -> dict:
    """Resolve a generated set's path parameters (:func:`_is_path_param`) against the spec's
    folder, also inside a nested ``{generate: ...}`` source (``scrambled``)."""
    out = dict(params)
    for key, value in params.items():
        if isinstance(value, dict) and "generate" in value:
            out[key] = _generator_params(value, base)
        elif _is_path_param(key, value):
            out[key] = str(resolve_path(value, base))
    return out


def _generator_inputs(kind: str, params: dict, prefix: str = "") -> dict[str, Any]:
    """What each input file of a generator is now, by its (dotted) parameter name; ``params``
    resolved (:func:`_generator_params`).

    A model or weights file: its SHA-256 (memoised per process, as the job's model is). The
    ``source`` of ``select``/``adversarial`` (a folder, glob or list file of images): the input
    record of its images (:func:`~daskdiff.io.shards.input_record`: path, size, mtime). Any other
    path (a movie file, an image, a folder of frames): ``(size, mtime_ns, inode)`` of the file,
    or the input record of a folder's files. A nested ``{generate: ...}`` source's inputs come
    under ``source.<name>``. A path that cannot be read is None (the generator then names it).
    """
    from ..io.fingerprints import file_sha256, file_stat
    from ..io.images import resolve_image_set
    from ..io.shards import input_record

    out: dict[str, Any] = {}
    for key, value in params.items():
        name = prefix + key
        if isinstance(value, dict) and "generate" in value:
            out.update(_generator_inputs(str(value["generate"]), value, name + "."))
        elif not _is_path_param(key, value):
            continue
        elif key in ("model", "weights"):
            out[name] = {"sha256": file_sha256(value, f"{key} file")} if Path(value).is_file() else None
        elif key == "source" and kind in ("select", "adversarial"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DuplicateImagesWarning)
                    out[name] = input_record(resolve_image_set(value))
            except (InputError, OSError):  # the generator names the problem
                out[name] = None
        elif Path(value).is_dir():
            out[name] = input_record(sorted(str(f) for f in Path(value).iterdir() if f.is_file()))
        else:
            out[name] = file_stat(value)
    return out


def _generated_key(entry: Any, base: Path) -> dict:
    """What a generated set's ``.generated.json`` must record for the set to be reused: the
    generator, its resolved parameters and, when it reads files, what they are now
    (:func:`_generator_inputs`), so that a movie or source replaced under the same name is
    noticed. In its JSON form, as it is read back."""
    params = _generator_params(entry.params(), base)
    key = {"generate": entry.generate, "params": params}
    if inputs := _generator_inputs(entry.generate, params):
        key["inputs"] = inputs  # only when there are some: other sets' records stay valid
    return json.loads(json.dumps(key))


def _generated_set(name: str, entry: Any, base: Path, manifest: Manifest, echo: Callable) -> list[str]:
    """Generate a set into ``<output>/images/<name>``, or reuse it when ``.generated.json`` says the
    same generator, parameters and input files (:func:`_generated_key`) already wrote every file
    (adversarial sets cost minutes).

    The folder must be daskdiff's own (listed in the output's manifest): a folder of the user's
    that happens to stand there is never written into (:func:`_check_output_readonly` refuses it).
    """
    from ..stimuli.registry import generate

    folder = manifest.output / IMAGES_DIR / name  # checked with the job's writes (_check_output): daskdiff's own, or absent
    manifest.make_dirs(folder)
    key = _generated_key(entry, base)
    params = key["params"]
    record = folder / ".generated.json"
    reused = _reusable_generated(folder, key)
    if reused is not None:
        echo(f"image set {name!r}: reusing {len(reused)} generated image(s) in {folder}")
        return reused
    from ..stimuli.movie import MOVIE_RECORD
    from ..stimuli.registry import MOVIE_KINDS

    movie_record = [folder / MOVIE_RECORD] if entry.generate in MOVIE_KINDS else []  # a movie's frame rate: daskdiff's too
    manifest.add_files([*movie_record, record])  # before it is written, so --overwrite may remove it
    paths = generate(entry.generate, folder, **params)
    manifest.add_files([*paths, record])
    atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps({"key": key, "paths": paths})))
    echo(f"image set {name!r}: generated {len(paths)} image(s) ({entry.generate}) in {folder}")
    return sorted(paths)


def _reusable_generated(folder: Path, key: dict) -> list[str] | None:
    """The sorted paths a previous run generated in ``folder`` for ``key``, if all still exist
    (regular files in ``folder``: a record that names anything else is not reused)."""
    record = folder / ".generated.json"
    if not os.path.lexists(record):
        return None
    try:
        saved = json.loads(read_own_file(record))  # never through a link, never a FIFO
    except OutputFolderError as err:
        raise JobError(str(err)) from None
    except ValueError:  # damaged: generate the set again
        return None
    paths = saved.get("paths") if isinstance(saved, dict) else None
    inside = folder.resolve()
    if (isinstance(paths, list) and saved.get("key") == key
            and all(isinstance(p, str) and Path(p).is_file() and Path(p).resolve().parent == inside for p in paths)):
        return sorted(paths)
    return None


def _planned_sets(spec: JobSpec, base: Path, output: Path, path_sets: dict[str, list[str]]
                  ) -> tuple[dict[str, list[str]], dict[str, int], dict[str, str], dict[str, tuple[int, int]]]:
    """Every set's known paths, image count and how the count is known, before anything is
    generated, and the sets still to generate whose image size is known.

    A set read from disk, and a generated set a previous run left complete in the output folder,
    have their paths (``'exact'``). Any other generated set has no paths yet and the count its
    generator will write (:func:`daskdiff.stimuli.registry.planned_count`: ``'exact'``, ``'at
    most'``, or ``'unknown'``, then counted as 2, the fewest a set may have); where its parameters
    decide its images' size (:func:`daskdiff.stimuli.registry.planned_pixels`), it is in the last
    dict, set -> (pixels per image, peak bytes of generating it: :func:`daskdiff.stimuli.registry.generation_peak_bytes`).
    """
    from ..stimuli.registry import generation_peak_bytes, planned_count, planned_pixels

    paths, counts, how, generated = {}, {}, {}, {}
    for name, entry in set_entries(spec, base).items():
        if name in path_sets:
            paths[name], counts[name], how[name] = path_sets[name], len(path_sets[name]), "exact"
            continue
        key = _generated_key(entry, base)
        reused = _reusable_generated(output / IMAGES_DIR / name, key)
        if reused is not None:
            paths[name], counts[name], how[name] = reused, len(reused), "exact"
            continue
        n, how[name] = planned_count(entry.generate, key["params"])
        paths[name], counts[name] = [], max(2, n or 2)
        if (pixels := planned_pixels(entry.generate, key["params"])) is not None:
            generated[name] = (pixels, generation_peak_bytes(entry.generate, pixels, counts[name]))
    return paths, counts, how, generated


LIST_FILE_SUFFIXES = (".txt", ".lst")
"""A set's ``path`` that is a file with one of these suffixes lists images; any other file is a movie."""


def set_entries(spec: JobSpec, base: Path) -> dict[str, Any]:
    """The spec's image sets, with a set given as a movie *file* (``{path: clip.gif}``) turned
    into the generated set ``{generate: movie, movie: clip.gif}``: its frames are written, in
    order, into the output folder (:func:`daskdiff.stimuli.movie.movie_copy`), where the network reads them."""
    from .spec import GeneratedSet

    out = {}
    for name, entry in spec.image_sets.items():
        path = getattr(entry, "path", None)
        if path is not None and resolve_path(path, base).is_file() and Path(path).suffix.lower() not in LIST_FILE_SUFFIXES:
            extra = {"fps": entry.fps} if entry.fps is not None else {}
            entry = GeneratedSet(generate="movie", movie=path, **extra)
        out[name] = entry
    return out


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(path).name)]


def _movie_folder(name: str, entry: Any, base: Path) -> tuple[list[str], float] | None:
    """The frames (time order) and frame rate of a path set that is a movie, else None.

    A folder with ``movie.json`` is a movie at its recorded rate (a spec ``fps`` must agree), its
    frames in the record's order; another folder, glob or list is a movie when the spec gives
    ``fps``, its frames in sorted name order, which must be time order (zero-padded numbers).
    """
    from ..stimuli.movie import MOVIE_RECORD, read_movie_record

    folder = resolve_path(entry.path, base)
    if folder.is_dir() and (folder / MOVIE_RECORD).is_file():
        record = read_movie_record(folder)
        fps = float(record["fps"])
        if entry.fps is not None and abs(entry.fps - fps) > 1e-9 * fps:
            raise JobError(f"image_sets.{name}.fps: {entry.fps} disagrees with {folder / MOVIE_RECORD}, which records fps "
                           f"{fps}; remove fps: from the spec (the movie's own rate is used)")
        return [str((folder / f).absolute()) for f in record["frames"]], fps
    if entry.fps is None:
        return None
    paths = resolve_image_set(entry.path, name=name, base_dir=base)
    if sorted(paths, key=_natural_key) != paths:
        raise JobError(f"image_sets.{name}: the frames' names do not sort in time order (e.g. frame-2 after frame-10); "
                       "number them with leading zeros (frame-000002.png), as daskdiff's movie generators do")
    return paths, float(entry.fps)


def _path_sets(spec: JobSpec, base: Path, echo: Callable, fps: dict[str, float] | None = None) -> dict[str, list[str]]:
    """The sets read from disk (folders, globs, list files), resolved to image paths.

    A set of fewer than 2 files is refused here, before any cluster starts; paths that reach the
    same file through links are dropped, and the job says so. A set that is a movie
    (:func:`_movie_folder`) keeps its frames in time order, and its frame rate goes to ``fps``.
    """
    sets = {}
    for name, entry in set_entries(spec, base).items():
        if hasattr(entry, "generate"):
            continue
        movie = _movie_folder(name, entry, base)
        if movie is not None:
            sets[name] = movie[0]
            if fps is not None:
                fps[name] = movie[1]
            check_min_images(sets[name], name)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DuplicateImagesWarning)
            sets[name] = resolve_image_set(entry.path, name=name, base_dir=base)
        for w in caught:
            if issubclass(w.category, DuplicateImagesWarning):
                echo(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        check_min_images(sets[name], name)
    return sets


def _generated_fps(spec: JobSpec, base: Path, output: Path, sets: dict[str, list[str]], fps: dict[str, float]) -> None:
    """Add the frame rate of every generated movie set to ``fps``: from the ``movie.json`` its
    generator wrote, or (not generated yet: a dry run) the rate it will record, when known."""
    from ..stimuli.movie import MOVIE_RECORD, planned_fps, read_movie_record
    from ..stimuli.registry import MOVIE_KINDS

    for name, entry in set_entries(spec, base).items():
        if not hasattr(entry, "generate") or entry.generate not in MOVIE_KINDS:
            continue
        record = output / IMAGES_DIR / name / MOVIE_RECORD
        if sets.get(name) and record.is_file():
            fps[name] = float(read_movie_record(record.parent)["fps"])
        elif (rate := planned_fps(entry.generate, _generator_params(entry.params(), base))) is not None:
            fps[name] = rate


def _image_sets(spec: JobSpec, base: Path, manifest: Manifest, path_sets: dict[str, list[str]], echo: Callable) -> dict[str, list[str]]:
    """Every set's image paths, in the spec's order; generated sets are made (or reused) here."""
    return {
        name: path_sets[name] if name in path_sets else _generated_set(name, entry, base, manifest, echo)
        for name, entry in set_entries(spec, base).items()
    }


def _model_spec(spec: JobSpec, base: Path, weights: str | None) -> ModelSpec:
    m = spec.model
    w = weights or m.weights
    if w not in WEIGHTS_KEYWORDS:
        w = str(resolve_path(w, base))
    name = str(resolve_path(m.name, base)) if m.name.endswith(".keras") else m.name
    return ModelSpec(name=name, weights=w, seed=m.seed, layers=tuple(m.layers) if m.layers else None, predictions=m.predictions, preprocess=m.preprocess,
                     precision=m.precision)


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


def check_spectral(spec: JobSpec, counts: dict[str, int], fps: dict[str, float], exact: set[str] | None = None) -> None:
    """Refuse, before any cluster starts, spectral options that a set cannot meet.

    With ``spectral`` in ``analysis.measures`` every set must be a movie (have a frame rate),
    ``analysis.spectral.state_length * fps`` must be a whole number of frames, and each movie
    must hold at least 2 whole windows. ``exact``: the sets whose counts and rates are known
    (a dry run or the check before generation skips the others); None: all of them.

    Raises
    ------
    SpecError
        Naming the spec key (``analysis.measures`` or ``analysis.spectral.state_length``) and the fix.
    """
    from ..core.spectral import spectral_windows
    from .spec import SpecError

    a = spec.analysis
    if "spectral" not in a.measures:
        return
    o = a.spectral
    for name, n in counts.items():
        if exact is not None and name not in exact:
            continue
        if name not in fps:
            if exact is not None:
                continue  # a generated movie whose rate is known only once it is written
            raise SpecError(
                f"analysis.measures: spectral needs every image set to be a movie, but {name!r} has no frame rate; give "
                f"image_sets.{name}.fps (a folder of frames), use a movie folder (movie.json), a movie file or a movie "
                "generator (gratings, photo_movie, skimage_gif, scrambled), or remove spectral from analysis.measures"
            )
        try:
            w = spectral_windows(n, fs=fps[name], state_length=o.state_length, overlap=o.overlap)
        except InputError as err:
            raise SpecError(f"analysis.spectral.state_length: movie {name!r} at {fps[name]:g} fps: {err}") from None
        if w.n_windows < 2:
            need = w.step + w.samples_per_window
            raise SpecError(
                f"analysis.spectral.state_length: movie {name!r} has {n} frame(s) at {fps[name]:g} fps, {w.n_windows} "
                f"whole window(s) of {w.samples_per_window} frames (state_length={o.state_length:g} s); spectral "
                f"differentiation needs at least 2 windows ({need} frames): shorten state_length (at most "
                f"{n / fps[name] / 2:g} s) or use a longer movie"
            )


def spectral_lines(spec: JobSpec, counts: dict[str, int], fps: dict[str, float], exact: set[str] | None = None) -> list[str]:
    """One line per movie: frames, frame rate and, for spectral differentiation, its windows
    (``exact``: the sets whose frame counts are known; None: all)."""
    from ..core.spectral import spectral_windows

    o = spec.analysis.spectral
    lines = []
    for name, rate in fps.items():
        known = name in counts and (exact is None or name in exact)
        line = f"movie {name!r}: {counts[name] if known else 'an unknown number of'} frame(s) at {rate:g} fps"
        if "spectral" in spec.analysis.measures and known:
            w = spectral_windows(counts[name], fs=rate, state_length=o.state_length, overlap=o.overlap)
            line += f"; {w.n_windows} window(s) of {w.samples_per_window} frames, {w.dropped} trailing frame(s) dropped"
        lines.append(line)
    return lines


def _output_folder(spec: JobSpec, base: Path, output: str | Path | None) -> Path:
    """The job's output folder, resolved: ``--output`` if given, else the spec's ``output`` (relative to the spec's folder)."""
    return (Path(output) if output else resolve_path(spec.output, base)).resolve()


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
    """Validate, estimate and plan a job on the client; nothing runs on a cluster.

    The job's work is estimated and bounded (:mod:`daskdiff.pipeline.budget`) three times, each
    before the step whose cost it bounds: from the spec and image counts alone (before the model
    is loaded), with the layer shapes (before anything is written and before the storage plan,
    whose cost grows with ``repeats``), and exactly (echoed). A job over a bound raises
    :class:`daskdiff.pipeline.budget.BudgetError` unless ``force``.

    ``dry_run``: write nothing (no output folder, no generated images, no temporaries removed,
    weights not loaded); the plan returned only describes the job. ``limits``: what the job may
    use (default: :func:`daskdiff.pipeline.budget.limits_for` the spec's cluster). ``checked``:
    called (not in a dry run) once the spec, the image sets' paths, the layers and the first two
    bounds have passed, before the output folder is locked and image sets are generated:
    :func:`run_job` starts a local cluster's workers there.

    A plan that is not a dry run holds the output folder's lock (a second run on the folder is
    refused) until ``plan.release()``; :func:`run_job` releases it when the job ends, however it
    ends.
    """
    out = _output_folder(spec, base, output)
    fps: dict[str, float] = {}
    path_sets = _path_sets(spec, base, echo, fps)
    known, counts, how, generated = _planned_sets(spec, base, out, path_sets)
    _generated_fps(spec, base, out, known, fps)
    check_spectral(spec, counts, fps, exact={name for name, kind in how.items() if kind == "exact"})
    limits = limits or limits_for(spec.cluster, out)
    quiet = lambda *_: None  # noqa: E731  (only the exact check says that --force ran over a bound)
    check_budget(estimate_work(lower_bound_size(spec, counts, generated)), limits, force=force, what="lower bound", echo=quiet)
    model = _model_spec(spec, base, weights)
    info = model_layers(model)
    a = spec.analysis
    sampling = Sampling(n_units=tuple(a.n_units), repeats=a.repeats, mode=a.sampling, seed=a.seed)
    full = [info["last_layer"]]
    shapes = info["shapes"]
    store = spec.extraction.store
    chars = {name: mean_chars(p) if p else len(str(out / IMAGES_DIR / name)) + 16 for name, p in known.items()}

    def estimate(stored: dict, written: dict, counts: dict, built: bool) -> WorkEstimate:
        size = job_size(spec, counts, shapes, stored, forward_flops=info["forward_flops"], path_chars=chars, plan_built=built,
                        task_memory=task_memory_budget(spec, [(limits.worker_memory or 0, spec.cluster.threads_per_worker)]), fps=fps,
                        written=written, generated=generated, input_values=math.prod(info["input_size"]) * 3)
        return estimate_work(size)

    expected = expected_stored(shapes, a.substrates, sampling, store=store, full_layers=full)
    written = expected_stored(shapes, a.substrates, sampling, store=store, full_layers=full, written=True)
    before = estimate(expected, written, counts, False)
    check_budget(before, limits, force=force, what="estimate before the storage plan", echo=quiet)
    needs = memory_needs(spec.cluster, limits, info["weight_bytes"], before.task_memory)
    check_worker_memory(needs, force=force, echo=echo)  # a worker that could never run a task: before any cluster starts
    if checked is not None and not dry_run:
        checked()
    notes: list[str] = []
    inputs = [p for paths in path_sets.values() for p in paths]
    writes = _planned_writes(spec, base, out, counts, how, info["layers"])
    if dry_run:
        manifest, clear = _check_output_readonly(out, spec, overwrite, inputs, writes)
        sets = known
        if clear:
            echo(f"--overwrite would remove the {len(manifest.files)} file(s) daskdiff wrote in {out} for another spec")
        for name, kind in how.items():
            if not known[name]:
                will = {"exact": f"{counts[name]}", "at most": f"at most {counts[name]}"}.get(kind, "an unknown number of (counted as 2)")
                echo(f"image set {name!r}: not generated in a dry run; a run generates {will} image(s)")
        if model.weights == "imagenet":
            echo("ImageNet weights are not loaded in a dry run (a run downloads them to Keras's cache if missing)")
        lock = None
    else:
        manifest, lock = _check_output(out, spec, overwrite, inputs, writes, echo)
    try:
        if not dry_run:
            if (n := _clean_temporaries(manifest)):
                echo(f"removed {n} temporary file(s) left by an interrupted run")
            sets = _image_sets(spec, base, manifest, path_sets, echo)
            generated = {}  # written now: on the disk, and no longer on the client
            counts = {name: len(paths) for name, paths in sets.items()}
            chars = {name: mean_chars(paths) for name, paths in sets.items()}
            model = with_fingerprint(_resolve_weights(model, spec, echo, notes))  # the files' content, once per run
            _generated_fps(spec, base, out, sets, fps)
            check_spectral(spec, counts, fps)
        for line in spectral_lines(spec, counts, fps, None if not dry_run else {n for n, k in how.items() if k == "exact"}):
            echo(line)
        recipe = StorageRecipe(tuple(shapes.items()), tuple(a.substrates), sampling, store, tuple(full))
        storage = recipe.build()
        final = estimate({name: lp.extracted() for name, lp in storage.items()}, {name: lp.stored() for name, lp in storage.items()},
                         counts, True)
        for line in describe(final, limits):
            echo(line)
        check_budget(final, limits, force=force, echo=echo, quote=False)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return JobPlan(spec, out, model, sets, info["layers"], info["shapes"], storage, recipe, sampling, notes, manifest,
                   estimate=final, limits=limits, counts=counts, dry_run=dry_run, lock=lock, fps=fps, memory=needs)


def _shard_tasks(plan: JobPlan, attrs: dict) -> list[ShardTask]:
    e = plan.spec.extraction
    size = shard_size(e.shard_size, e.batch_size)
    tasks = []
    for name, paths in plan.sets.items():
        for shard, start in enumerate(range(0, len(paths), size)):
            chunk = tuple(paths[start : start + size])
            tasks.append(ShardTask(name, shard, chunk, start, str(plan.output), e.batch_size, e.resize, e.strict, attrs,
                                   exif_orientation=e.exif_orientation == "apply",
                                   decoders=0 if e.decoders == "auto" else e.decoders))
    return tasks


TASK_MEMORY_SHARE = 0.5
"""Share of a worker thread's memory limit one differentiation task may use by default
(``analysis.task_memory: auto``). Dask spills at 60 % and pauses a worker at 80 % of its limit
(``distributed.worker.memory.target``/``pause``); the model, Python and buffers need the rest."""


def task_memory_budget(spec: JobSpec, worker_limits: Sequence[tuple[int, int]]) -> int | None:
    """Bytes one differentiation task may hold: ``analysis.task_memory``, or for ``auto``
    :data:`TASK_MEMORY_SHARE` of the smallest ``memory_limit / nthreads`` of ``worker_limits``
    (``(memory_limit, nthreads)`` per worker; a limit of 0 means none); None when no worker
    has a limit."""
    if spec.analysis.task_memory != "auto":
        from dask.utils import parse_bytes

        return int(parse_bytes(spec.analysis.task_memory))
    per_thread = [limit / max(1, threads) for limit, threads in worker_limits if limit]
    return int(TASK_MEMORY_SHARE * min(per_thread)) if per_thread else None


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
        files = tuple(str(shard_path(plan.output, name, i)) for i in range(-(-len(paths) // size)))
        spectral = (SpectralOptions(plan.fps[name], o.state_length, o.metric, o.window_arg(), o.overlap, o.log_frequency)
                    if "spectral" in a.measures else None)
        for substrate in a.substrates:
            for layer in plan.layers:
                tasks.append(
                    DiffTask(name, substrate, layer, plan.shapes[layer], files, str(plan.output), plan.sampling,
                             a.metric, a.normalize, a.per_unit, a.median_over, keep_rdm, a.repeats_per_task, memory_budget,
                             images="images" in a.measures, spectral=spectral,
                             written=substrate in plan.storage[layer].stored(), device=a.device)
                )
    return tasks


def _gpu_resources(client: Any, spec: JobSpec, echo: Callable = _echo) -> dict | None:
    """``{'GPU': 1}`` when some worker offers a GPU it has; waits for one when ``require_gpu`` is set.

    A worker whose ``GPU`` resource is not backed by a GPU (``dask worker --resources GPU=1`` on
    a CPU node) is named in one line each. With ``require_gpu`` that is a :class:`JobError`;
    without, extraction is restricted to GPU workers only where one really has a GPU.
    """
    from .workers import gpu_resource_offered, mislabeled_gpu_workers

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
        echo(f"warning: worker {address} offers a 'GPU' resource but has no GPU ({found}); {rest}")
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


def _extract(task: ShardTask, recipe: StorageRecipe, digest: str, model: ModelSpec, keep: bool = False) -> dict[str, Any]:
    """:func:`extract_shard` with the storage plan built on the worker from ``recipe`` (``keep``:
    the values stay in the worker's memory, see :func:`_submit_shard`).

    Every input is passed by value (a few hundred bytes), nothing is scattered: when a worker
    dies, Dask reruns its tasks anywhere, and the job loses only the work in progress. An
    accelerator that fails (out of memory, device lost) raises
    :class:`~daskdiff.errors.DeviceError`, naming the worker, the device and the batch size.
    """
    from .workers import decoders, device_error

    # extraction.decoders, decided on the worker: auto (0), or the number given, capped by its cores
    task = dataclasses.replace(task, decoders=decoders(task.decoders or None))
    try:
        return extract_shard(task, cached_storage_plan(recipe, digest), model, keep=keep)
    except Exception as err:
        if (device := device_error(err, task.batch_size, f"shard {task.shard} of set {task.image_set!r}")) is None:
            raise
        raise device from err


def _diff_or_corrupt(task: DiffTask, *shards: Any, values: list | None = None) -> PartialResult | CorruptShardError:
    """:func:`run_diff_task`, but a corrupt shard is returned, not raised.

    Dask's ``retries`` would run a failed task again on the same damaged file; returned, the
    error reaches the client at once, which deletes and recomputes the shard (:func:`_gather`).
    """
    try:
        return run_diff_task(task, *shards, values=values)
    except CorruptShardError as err:
        return err


def _shard_metadata(extracted: dict[str, Any]) -> dict[str, Any]:
    """An extraction's result without its values: what the client gathers."""
    return {k: v for k, v in extracted.items() if k != "values"}


def _shard_variable(extracted: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """One variable's ``(values, index)`` of an extraction kept in memory (None: read its file)."""
    return None if extracted["values"] is None else extracted["values"][name]


HANDOFF_SHARE = 0.3
"""With ``extraction.handoff: auto``, shards' values go from extraction to differentiation in the
workers' memory when all of them take at most this share of the cluster's memory limits (Dask
spills at 60 % of a worker's limit; differentiation's working memory needs the rest)."""


def _handoff(plan: JobPlan, client: Any) -> bool:
    """Whether differentiation takes the shards' values from the workers' memory (see
    ``extraction.handoff``; ``store: none`` always does: its files hold no units)."""
    e = plan.spec.extraction
    if e.store == "none" or e.handoff != "auto":
        return e.store == "none" or e.handoff == "memory"
    from .machine import machine_memory

    total = sum(limit or machine_memory() for limit, _ in _worker_limits(client))
    need = bytes_per_image(plan.storage, extracted=True) * sum(map(len, plan.sets.values()))
    return need <= HANDOFF_SHARE * total


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
    whose partial result is not on disk."""
    if plan.spec.extraction.store != "none":
        return set()
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
    diffs = [(_submit_diff(client, plan, t, [f for f, _ in shards[t.image_set]], values[t.image_set]), t) for t in diff_tasks]
    return _Submitted(shards, diffs, resources, values)


def _submit_diff(client: Any, plan: JobPlan, t: DiffTask, shards: list, values: list[dict[str, Any]], suffix: str = "") -> Any:
    """Submit one differentiation task on its set's shard metadata futures and, where the values
    are kept in memory, that of its variable in every shard."""
    name = variable_name(t.substrate, t.layer)
    kept = [v[name] for v in values] if values else None
    return client.submit(_diff_or_corrupt, t, *shards, values=kept, key=plan.key(t, suffix), retries=plan.spec.extraction.retries)


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
    remove_inside(plan.output, plan.manifest.relative(path))
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
        new = _submit_diff(client, plan, t, shard_futures, submitted.values.get(name), suffix)
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


def _gather(client: Any, plan: JobPlan, submitted: _Submitted, progress: bool, clock: Callable[[str], None], echo: Callable = _echo,
            watch: WorkerWatch | None = None) -> tuple[dict[str, dict], list[PartialResult]]:
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
    partials: dict[Any, PartialResult] = {}
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
            if stage == "extract" and future.status == "finished" and (why := future.result().get("replaced")):
                echo(f"set {task.image_set!r}: shard {task.shard} was extracted again because {why}; "
                     "the set's differentiation is recomputed from it")
            if stage == "differentiation" and future.status == "finished":
                partials[future] = future.result()  # gathered once, as it finishes
                if partials[future].warning:  # found by the task on its worker: said here, on the console
                    echo("warning: " + partials[future].warning)
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
    from .cluster import EarlyCluster, connect, starts_locally
    from .workers import WorkerSetup

    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def clock(stage: str) -> None:
        stages[stage] = round(time.perf_counter() - t0, 3)

    limits = _limits(spec, base, output, client, scheduler, scheduler_file, n_workers)
    early: list[EarlyCluster] = []

    def start_workers() -> None:  # a LocalCluster's workers start (and import Keras) while the plan is finished
        if client is None and starts_locally(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers):
            early.append(EarlyCluster(spec.cluster, n_workers))

    with contextlib.ExitStack() as cleanup:  # however the job ends:
        cleanup.callback(lambda: [cluster.close() for cluster in early])  # an early cluster connect did not take
        plan = plan_job(spec, base, output=output, weights=weights, overwrite=overwrite, echo=echo, force=force, limits=limits,
                        checked=start_workers)
        cleanup.callback(plan.release)  # the plan holds the output folder's lock until the job ends
        echo(plan.summary())
        clock("planned")
        attrs = {**plan.model.identity(), "daskdiff_version": versions()["daskdiff"]}
        plan.manifest.add_files([plan.output / JOB_FILE])
        job_record = json.dumps({"result_digest": spec.result_digest(), "spec": spec.model_dump(mode="json")}, indent=1)
        atomic_write(plan.output / JOB_FILE, lambda tmp: Path(tmp).write_text(job_record))

        def on(c: Any) -> JobResult:
            keep_rdm = "images" in spec.analysis.measures and max(map(len, plan.sets.values())) <= spec.analysis.rdm_max_images
            with WorkerWatch(c, plan.memory, echo) as watch:
                try:
                    c.register_plugin(WorkerSetup())
                    metadata, partials = _gather(c, plan, _submit(c, plan, attrs, keep_rdm, echo), progress, clock, echo, watch)
                except Exception as err:  # e.g. a closed connection to a worker its nanny killed for memory
                    if isinstance(err, DaskdiffError) or (why := watch.explain(err)) is None:
                        raise
                    raise why from None
            n_images = {name: len(m["paths"]) for name, m in metadata.items()}
            path, skipped, notes = write_results(plan, metadata, partials, keep_rdm, command, echo)
            clock("written")
            if (n := _clean_temporaries(plan.manifest, c)):
                echo(f"removed {n} temporary file(s) of writers that died during the run")
            echo("stages (s from start): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
            return JobResult(path=path, n_images=n_images, skipped=skipped, seconds=time.perf_counter() - t0, notes=notes, stages=stages)

        if client is not None:
            return on(client)
        with connect(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers, echo=echo,
                     early=early[0] if early else None, needs=plan.memory) as c:
            return on(c)


def _limits(spec: JobSpec, base: Path, output: str | Path | None, client: Any, scheduler: str | None,
            scheduler_file: str | None, n_workers: int | None) -> Limits:
    """What the job may use, for the cluster it will run on (a given client counts as external)."""
    out = _output_folder(spec, base, output)
    external = client is not None or is_external(spec.cluster, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers)
    return limits_for(spec.cluster, out, external=external, n_workers=n_workers)


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
    limits = _limits(spec, base, output, None, scheduler, scheduler_file, n_workers)
    plan = plan_job(spec, base, output=output, weights=weights, overwrite=overwrite, echo=echo, force=force,
                    dry_run=True, limits=limits)
    echo(plan.summary())
    for name, n in plan.counts.items():
        rate = f" (a movie at {plan.fps[name]:g} fps)" if name in plan.fps else ""
        echo(f"  image set {name!r}: {n} image(s){rate}")
    return plan


def _results_attrs(plan: JobPlan, command: str | None, metadata: dict | None = None) -> dict[str, Any]:
    """The results file's global attributes: CF provenance, the spec, the analysis conventions.

    ``keras_backend`` (and ``keras_backend_version``) are those the shards were extracted with
    (``metadata``'s ``backends``; several, comma-separated, when workers or resumed runs differed),
    ``client_keras_backend`` this process's."""
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
    # the backend that computed the activations is the workers' (their shards say which), not this client's
    attrs["client_keras_backend"] = attrs["keras_backend"]
    found = list(dict.fromkeys(b for meta in (metadata or {}).values() for b in meta.get("backends", []) if b[0]))
    if found:
        attrs["keras_backend"] = ", ".join(dict.fromkeys(b for b, _ in found))
        attrs["keras_backend_version"] = ", ".join(dict.fromkeys(str(v) for _, v in found))
    if plan.notes:
        attrs["warning"] = " | ".join(plan.notes)
    return attrs


def write_results(plan: JobPlan, metadata: dict, partials: list[PartialResult], keep_rdm: bool, command: str | None, echo: Callable) -> tuple[Path, list[tuple[str, str, str]], list[str]]:
    """Assemble the partial results into ``differentiation.nc`` (written atomically).

    Returns the file's path, the skipped files as ``(set, path, reason)`` and the job's notes
    (the plan's, plus a count of undefined repeats), each also echoed.
    """
    a = plan.spec.analysis
    ds = assemble(
        sets=list(plan.sets), metadata=metadata, substrates=list(a.substrates), n_units=[n_units_label(n) for n in a.n_units],
        layers=plan.layers, repeats=a.repeats, partials=partials, keep_rdm=keep_rdm,
        attrs=_results_attrs(plan, command, metadata), fps=plan.fps,
        spectral={**a.spectral.model_dump(mode="json"), "normalize": a.normalize} if "spectral" in a.measures else None,
        images="images" in a.measures,
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
