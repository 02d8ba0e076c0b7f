"""Stimuli layer: classification of image sets, and selection of the images a model puts in given classes.

Layers, as in the rest of daskdiff:

- numeric core: :func:`daskdiff.core.ranking.top_k` and :func:`daskdiff.core.ranking.class_mass`
  on numpy arrays of probabilities;
- model: :func:`predict_logits` (uint8 RGB images -> logits, batch by batch) and
  :func:`classify_shard`, a pure function of one :class:`ClassifyTask` (paths -> class
  probabilities) that Dask can map over shards like extraction;
- files: :func:`select_images` classifies a set, copies the kept files and writes a CSV table.

Conventions
-----------
- Images are decoded with :func:`daskdiff.io.images.load_images` at the model's input size and
  preprocessed with :func:`daskdiff.model.preprocess.preprocess`, exactly as extraction does; class
  probabilities are ``softmax(logits)`` in float64 (:func:`daskdiff.core.ranking.softmax`).
- Classes are named by :func:`class_indices`: a label (``'tabby'``), an index (``281``), an
  inclusive range (``'281-285'``), or several of those separated by commas or in a list. The
  probability of a group of classes is the sum of its members' probabilities (its *mass*).
- Top-k rankings sort by probability, ties going to the lower class index (a stable sort), as
  the extraction shards' ``top5_class`` coordinate does.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.batches import batch_slices
from ..core.ranking import class_mass, softmax, top_k
from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.image_sets import resolve_image_set
from ..io.images import load_images
from ..model.build import cached_model, class_index, class_labels, forward_lock, input_size, ModelSpec
from ..model.preprocess import preprocess
from .common import repeated_names

SELECTION_TABLE = "selection.csv"
"""Name of the table :func:`select_images` writes beside the kept images."""

TOP_K = 5
"""How many classes the tables rank for each image."""

ClassesLike = str | int | Sequence[str | int]

_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


# --------------------------------------------------------------------------------------------
# Classes and models given as plain keywords
# --------------------------------------------------------------------------------------------


def class_indices(classes: ClassesLike, labels: Sequence[str]) -> tuple[int, ...]:
    """Class indices from names, indices and ranges; sorted, without repeats.

    Parameters
    ----------
    classes : str, int or sequence of str/int
        ``'tabby'``, ``281``, ``'281'``, ``'281-285'`` (inclusive), ``'tabby,tiger_cat'`` or a
        list of such items.
    labels : sequence of str
        The model's class names (:func:`daskdiff.model.build.class_labels`).

    Raises
    ------
    ValueError
        An unknown name (the message lists close matches), an index out of range, a reversed
        range or an empty selection.
    """
    if isinstance(classes, bool) or not isinstance(classes, (str, int, np.integer, list, tuple)):
        raise InputError(
            f"classes must be a class name, index or range such as 'tabby', 281 or '281-285' "
            f"(or a list of them), got {classes!r}"
        )
    items = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
    parts: list[str | int] = []
    for item in items:
        parts += [p.strip() for p in item.split(",") if p.strip()] if isinstance(item, str) else [int(item)]
    if not parts:
        raise InputError(f"classes names no class: {classes!r}; give e.g. 'tabby', 281 or '281-285'")
    indices: set[int] = set()
    for part in parts:
        match = _RANGE.fullmatch(part) if isinstance(part, str) else None
        if match:
            first, last = (int(g) for g in match.groups())
            if first > last:
                raise InputError(f"class range {part!r} is reversed; write it low-high, e.g. '281-285'")
            indices.update(class_index(i, labels) for i in range(first, last + 1))
        else:
            indices.add(class_index(part, labels))
    return tuple(sorted(indices))


def class_ranges(classes: Sequence[int]) -> str:
    """Compact text of class indices, the inverse of :func:`class_indices`: ``'0,281-285'``."""
    values = sorted(set(int(c) for c in classes))
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def model_spec(model: str = "VGG16", weights: str | None = None, seed: int = 0, preprocess: str | None = None) -> ModelSpec:
    """A :class:`~daskdiff.model.build.ModelSpec` from the plain keywords of generators and the CLI.

    ``weights=None`` means ``'imagenet'`` for a keras.applications name and ``'file'`` (the
    weights saved in it) for a ``.keras`` file.
    """
    if weights is None:
        weights = "file" if str(model).endswith(".keras") else "imagenet"
    return ModelSpec(name=str(model), weights=str(weights), seed=int(seed), preprocess=preprocess)


def model_labels(spec: ModelSpec) -> list[str]:
    """Class names of ``spec``'s model; an application's 1000 without loading its weights."""
    n_classes = 1000 if spec.is_application else int(cached_model(spec).output_shape[-1])
    return class_labels(n_classes)


# --------------------------------------------------------------------------------------------
# Model: images -> logits, one shard at a time
# --------------------------------------------------------------------------------------------


def predict_logits(images: np.ndarray, spec: ModelSpec, *, batch_size: int = 16) -> np.ndarray:
    """Logits ``(n, n_classes)`` float32 of uint8 RGB images ``(n, h, w, 3)`` at the model's size."""
    model = cached_model(spec)
    n_classes = int(model.output_shape[-1])
    parts = []
    for batch in batch_slices(len(images), batch_size):
        x = preprocess(images[batch], spec)
        with forward_lock():
            parts.append(np.asarray(model.predict_on_batch(x), dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)


@dataclass(frozen=True)
class ClassifyTask:
    """One shard to classify: which files, with which model, how to decode."""

    paths: tuple[str, ...]
    spec: ModelSpec
    batch_size: int = 16
    resize: str = "nearest"


@dataclass(frozen=True)
class Classified:
    """Class probabilities of a shard's decodable images, and the files that did not decode."""

    probabilities: np.ndarray
    """``(n_ok, n_classes)`` float64."""
    ok: tuple[int, ...]
    """For each row, its position in the task's ``paths``."""
    skipped: tuple[tuple[str, str], ...]
    """``(path, reason)`` of the files that could not be decoded."""


def classify_shard(task: ClassifyTask) -> Classified:
    """Decode and classify one shard; a pure function, mapped over shards by Dask if asked."""
    model = cached_model(task.spec)
    images, ok, skipped = load_images(list(task.paths), input_size(model), resize=task.resize)
    logits = predict_logits(images, task.spec, batch_size=task.batch_size)
    return Classified(softmax(logits), tuple(ok), tuple((s.path, s.reason) for s in skipped))


def run_tasks(function: Callable[[Any], Any], tasks: Sequence[Any], client: Any = None) -> list[Any]:
    """``[function(t) for t in tasks]``, here or, given a ``distributed.Client``, on its workers.

    The results are the same either way (each task is a pure function of itself); only where
    it runs changes.
    """
    if client is None:
        return [function(task) for task in tasks]
    return client.gather(client.map(function, list(tasks), pure=False))


def image_paths(source: str | os.PathLike | Sequence[str | os.PathLike], *, base_dir: str | os.PathLike | None = None) -> list[str]:
    """Absolute image paths of an image set (folder, glob, list file) or of a list of paths."""
    if isinstance(source, (str, os.PathLike)):
        return resolve_image_set(source, name="source", base_dir=base_dir)
    paths = [os.path.abspath(os.path.join(base_dir or os.getcwd(), os.fspath(p))) for p in source]
    if not paths:
        raise InputError("source is an empty list of images; give a folder, a glob pattern, a list file or image paths")
    return paths


def shards(paths: Sequence[str], shard_size: int) -> list[tuple[str, ...]]:
    """``paths`` cut into consecutive tuples of at most ``shard_size``."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, e.g. shard_size=32; got {shard_size!r}")
    return [tuple(paths[shard]) for shard in batch_slices(len(paths), shard_size)]


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, e.g. batch_size=16; got {batch_size!r}")
    return int(batch_size)


# --------------------------------------------------------------------------------------------
# Selection: classify, copy the kept files, write the table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What :func:`select_images` did."""

    kept: list[str]
    """Absolute paths of the copies in the output folder, sorted."""
    table: str
    """The CSV table (every image, kept or not)."""
    classes: tuple[int, ...]
    min_prob: float
    n_images: int
    n_skipped: int

    def summary(self) -> str:
        share = f" ({len(self.kept) / self.n_images:.1%})" if self.n_images else ""
        return (
            f"kept {len(self.kept)} of {self.n_images} image(s){share} with p(classes "
            f"{class_ranges(self.classes)}) >= {self.min_prob:g}; {self.n_skipped} not decoded; table: {self.table}"
        )


def select_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: ModelSpec,
    *,
    classes: ClassesLike,
    min_prob: float = 0.5,
    batch_size: int = 16,
    resize: str = "nearest",
    shard_size: int = 64,
    base_dir: str | os.PathLike | None = None,
    client: Any = None,
) -> Selection:
    """Keep the images of a set that a model puts in ``classes`` with probability >= ``min_prob``.

    Parameters
    ----------
    source : str, path-like or sequence of them
        An image set (folder, glob pattern or list file, see
        :func:`daskdiff.io.image_sets.resolve_image_set`) or a list of image paths.
    out_dir : str or path-like
        Folder the kept files are copied into (created if missing), keeping their names and
        bytes, and where the table ``selection.csv`` is written.
    model : ModelSpec
        The classifier (e.g. ``model_spec('VGG16', 'imagenet')``).
    classes : str, int or list
        The class or classes to keep (see :func:`class_indices`): ``'tabby'``, ``281``,
        ``'281-285'``...
    min_prob : float, default 0.5
        Threshold on the summed probability of ``classes``, in [0, 1].
    batch_size : int, default 16
        Images per forward pass.
    resize : {'nearest', 'bilinear', 'bicubic', 'lanczos'}
        Resize filter of :func:`daskdiff.io.images.load_image`.
    shard_size : int, default 64
        Images per task when ``client`` is given (and per sequential step otherwise).
    base_dir : str or path-like, optional
        Folder a relative ``source`` is relative to (default: the working directory).
    client : distributed.Client, optional
        Classify the shards on this cluster (its workers must see the files); default: here.

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        Bad classes or threshold, or two kept files with the same name (from different folders).

    Notes
    -----
    An image is kept when its summed probability is ``>= min_prob``. The table has one row per
    image of the set, kept or not, in path order, with columns ``path`` (the source),
    ``file`` (the copy's name, empty if not kept), ``status`` (``kept``, ``below_threshold``
    or ``not_decoded``), ``probability`` (summed probability of ``classes``), ``reason`` (why
    a file did not decode), and ``top{r}_index``, ``top{r}_label``, ``top{r}_prob`` for ranks
    ``r = 1..5``. Files already in ``out_dir`` that this call does not write are left alone.
    """
    min_prob = _check_min_prob(min_prob)
    batch_size = check_batch_size(batch_size)
    labels = model_labels(model)
    chosen = class_indices(classes, labels)
    paths = image_paths(source, base_dir=base_dir)
    tasks = [ClassifyTask(chunk, model, batch_size, resize) for chunk in shards(paths, shard_size)]
    results = run_tasks(classify_shard, tasks, client)

    rows = [row for task, result in zip(tasks, results) for row in _selection_rows(task, result, chosen, min_prob, labels)]
    n_skipped = sum(len(dict(result.skipped)) for result in results)
    kept_sources = [str(row["path"]) for row in rows if row["status"] == "kept"]
    repeated = repeated_names(os.path.basename(p) for p in kept_sources)
    if repeated:
        raise InputError(
            f"kept images from different folders share the file name(s) {repeated}; the selection "
            "keeps names, so rename them or select from each folder separately"
        )
    folder = Path(os.path.abspath(out_dir))
    folder.mkdir(parents=True, exist_ok=True)
    kept = [_copy_into(path, folder) for path in kept_sources]
    table = write_table(folder / SELECTION_TABLE, _selection_columns(labels), rows)
    return Selection(sorted(kept), str(table), chosen, min_prob, len(paths), n_skipped)


def _check_min_prob(min_prob: object) -> float:
    if isinstance(min_prob, bool) or not isinstance(min_prob, (int, float, np.floating, np.integer)) or not 0 <= min_prob <= 1:
        raise InputError(f"min_prob must be a probability in [0, 1], e.g. min_prob=0.5; got {min_prob!r}")
    return float(min_prob)


def _selection_rows(
    task: ClassifyTask, result: Classified, chosen: tuple[int, ...], min_prob: float, labels: Sequence[str]
) -> list[dict[str, object]]:
    """The table rows of one classified shard, in its path order (columns: :func:`_selection_columns`)."""
    reasons = dict(result.skipped)
    row_of = {task.paths[j]: i for i, j in enumerate(result.ok)}
    mass = class_mass(result.probabilities, chosen)
    top, top_p = top_k(result.probabilities)
    rows: list[dict[str, object]] = []
    for path in task.paths:
        if path not in row_of:
            rows.append({"path": path, "file": "", "status": "not_decoded", "probability": "", "reason": reasons.get(path, "")})
            continue
        i = row_of[path]
        keep = bool(mass[i] >= min_prob)
        row: dict[str, object] = {
            "path": path,
            "file": os.path.basename(path) if keep else "",
            "status": "kept" if keep else "below_threshold",
            "probability": float(mass[i]),
            "reason": "",
        }
        for r, (c, p) in enumerate(zip(top[i], top_p[i]), start=1):
            row.update({f"top{r}_index": int(c), f"top{r}_label": labels[c], f"top{r}_prob": float(p)})
        rows.append(row)
    return rows


def _selection_columns(labels: Sequence[str]) -> list[str]:
    """Columns of the selection table: the outcome, then the top classes (at most :data:`TOP_K`)."""
    return ["path", "file", "status", "probability", "reason"] + [
        f"top{r}_{c}" for r in range(1, min(TOP_K, len(labels)) + 1) for c in ("index", "label", "prob")
    ]


def _copy_into(source: str, folder: Path) -> str:
    """Copy ``source`` into ``folder`` under its own name, atomically; the copy's path."""
    target = folder / os.path.basename(source)
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    return str(target)


def write_table(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[dict[str, object]]) -> Path:
    """Write ``rows`` as a CSV file with a header, atomically; missing cells are left empty."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def selected_images(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: str | int | list,
    min_prob: float = 0.5,
    model: str = "VGG16",
    weights: str | None = None,
    seed: int = 0,
    preprocess: str | None = None,
    batch_size: int = 16,
    resize: str = "nearest",
) -> list[str]:
    """Copy the images of ``source`` that a model puts in ``classes`` with p >= ``min_prob``.

    The job-spec form of :func:`daskdiff.stimuli.select.select_images` (see it for the parameters and
    the ``selection.csv`` table written beside the copies); the model is given by plain
    keywords (:func:`daskdiff.stimuli.select.model_spec`: ``weights=None`` is ``'imagenet'`` for a
    keras.applications name, the file's own weights for a ``.keras`` path). Returns the copies'
    absolute paths, sorted.
    """
    spec = model_spec(model, weights, seed, preprocess)
    selection = select_images(source, out_dir, spec, classes=classes, min_prob=min_prob, batch_size=batch_size, resize=resize)
    return selection.kept
