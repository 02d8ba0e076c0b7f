"""Stimuli layer: adversarial images, projected gradient descent on 0-255 RGB pixels, checked after saving.

An attack moves each image, within an L-infinity ball of ``eps`` grey levels around it, so
that the model stops putting it in a group of classes (untargeted: by default the five
ImageNet cats 281-285, so that a tabby does not merely become a tiger cat) or puts it in one
class (targeted). Every result is rounded to uint8, saved as PNG, read back through the
pipeline extraction uses (:func:`daskdiff.io.images.load_images` at the model's input size, then
:func:`daskdiff.model.preprocess.preprocess`) and classified again: only that reloaded image decides
success, and the table written beside the images says so per image.

Layers:

- :class:`PGD`: the attack's parameters, its objective (on logits, backend-neutral
  ``keras.ops``) and its success test (on numpy logits);
- :func:`loss_gradient`: the differentiable pixel -> logits path (through
  :func:`daskdiff.model.preprocess.preprocess_tensor`, the same preprocessing as extraction),
  written once in ``keras.ops`` and differentiated by one small function per Keras backend
  (:data:`GRADIENTS`: TensorFlow ``GradientTape``, ``torch.autograd``, ``jax.grad``);
- :func:`projected_gradient_descent`: uint8 images in, uint8 adversarial images out;
- :func:`attack_shard`: one :class:`AttackTask` (a few files) -> PNG files + table rows; a pure
  function that Dask can map over shards like extraction;
- :func:`attack_images`: a whole image set, here or on a ``distributed.Client``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

import annotated_types
import numpy as np

from ..core.batches import batch_slices
from ..core.ranking import class_mass, softmax
from ..errors import InputError, shorten
from ..io.images import load_images
from ..io.png import write_images
from ..model.build import cached_model, forward_lock, input_size, ModelSpec
from ..model.preprocess import preprocess_tensor
from .common import repeated_names
from .select import check_batch_size, class_indices, class_ranges, ClassesLike, image_paths, model_labels, predict_logits, run_tasks, shards, write_table

ADVERSARIAL_TABLE = "adversarial.csv"
"""Name of the table :func:`attack_images` writes beside the images."""

MAX_ITERS = 1000
"""Most PGD iterations: each is a forward and a backward pass of every image; 1,000 steps of a
tenth of a grey level cross the widest ball of 8 grey levels more than ten times over."""

Iterations = Annotated[int, annotated_types.Interval(ge=0, le=MAX_ITERS)]
"""The type of ``iters``: job specs check it (:func:`daskdiff.stimuli.registry.check_generator_types`)."""

CAT_CLASSES: tuple[int, ...] = (281, 282, 283, 284, 285)
"""ImageNet's domestic cats: tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat."""

TABLE_COLUMNS = [
    "path", "file", "status", "written", "linf",
    "prob_before", "prob_after", "clean_success",
    "top1_before_index", "top1_before_label", "top1_before_prob",
    "top1_after_index", "top1_after_label", "top1_after_prob",
    "reason",
]  # fmt: skip
"""Columns of the table; :func:`attack_images` documents them."""


# --------------------------------------------------------------------------------------------
# The attack's parameters, objective and success test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent in 0-255 pixel space; exactly one of ``avoid``, ``target``.

    Parameters
    ----------
    eps : int
        Radius of the L-infinity ball, in grey levels (>= 0).
    step : float
        Change of every pixel channel per iteration, in grey levels (> 0).
    iters : int
        Number of iterations (>= 0).
    avoid : tuple of int, optional
        Untargeted: minimise ``log sum_{c in avoid} p_c``; success is a top-1 class outside
        ``avoid``.
    target : int, optional
        Targeted: maximise ``log p_target``; success is top-1 ``== target``.
    """

    eps: int = 8
    step: float = 1.0
    iters: int = 10
    avoid: tuple[int, ...] | None = CAT_CLASSES
    target: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, np.integer)) or self.eps < 0:
            raise InputError(f"eps must be a whole number of grey levels >= 0, e.g. eps=8; got {self.eps!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, float, np.integer, np.floating)) or not 0 < self.step < np.inf:
            raise InputError(f"step must be a positive number of grey levels, e.g. step=1; got {self.step!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, (int, np.integer)) or not 0 <= self.iters <= MAX_ITERS:
            raise InputError(f"iters must be an integer from 0 to {MAX_ITERS}, e.g. iters=10; got {shorten(repr(self.iters))}")
        if (self.avoid is None) == (self.target is None):
            raise InputError(
                f"give exactly one of avoid (untargeted) and target (targeted), got avoid={self.avoid!r} "
                f"and target={self.target!r}; e.g. avoid=(281, 282, 283, 284, 285) or target=1"
            )
        if self.avoid is not None and not self.avoid:
            raise InputError("avoid must name at least one class, e.g. avoid=(281, 282, 283, 284, 285)")

    @property
    def classes(self) -> tuple[int, ...]:
        """The classes whose probability mass the table reports: ``avoid`` or ``(target,)``."""
        return self.avoid if self.avoid is not None else (self.target,)  # type: ignore[return-value]

    def loss(self, logits: Any) -> Any:
        """Per-image objective to *minimise*, in ``keras.ops`` on logits ``(n, n_classes)``.

        Untargeted: ``log sum_{c in avoid} softmax(z)_c = logsumexp(z[avoid]) - logsumexp(z)``;
        targeted: ``-log softmax(z)_target = logsumexp(z) - z[target]``.
        """
        from keras import ops

        total = ops.logsumexp(logits, axis=-1)
        chosen = ops.logsumexp(ops.take(logits, np.asarray(self.classes, np.int32), axis=-1), axis=-1)
        return chosen - total if self.target is None else total - chosen

    def succeeded(self, logits: np.ndarray) -> np.ndarray:
        """Whether each image's top-1 class is outside ``avoid`` (or is ``target``)."""
        top1 = np.argmax(np.asarray(logits), axis=-1)
        if self.target is None:
            return ~np.isin(top1, self.avoid)
        return top1 == self.target


# --------------------------------------------------------------------------------------------
# The differentiable path: pixels -> preprocessing -> logits, and its gradient
# --------------------------------------------------------------------------------------------


def _tensorflow_gradient(function: Callable[[Any], Any], pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    x = tf.convert_to_tensor(pixels, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(function(x))
    return np.asarray(tape.gradient(total, x))


def _torch_gradient(function: Callable[[Any], Any], pixels: np.ndarray) -> np.ndarray:
    import torch
    from keras import ops

    x = ops.convert_to_tensor(np.array(pixels, dtype=np.float32)).requires_grad_(True)  # on Keras's device
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(torch.sum(function(x)), x)
    return grad.detach().cpu().numpy()


def _jax_gradient(function: Callable[[Any], Any], pixels: np.ndarray) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    return np.asarray(jax.grad(lambda x: jnp.sum(function(x)))(jnp.asarray(pixels, dtype=jnp.float32)))


GRADIENTS: dict[str, Callable[[Callable[[Any], Any], np.ndarray], np.ndarray]] = {
    "tensorflow": _tensorflow_gradient,
    "torch": _torch_gradient,
    "jax": _jax_gradient,
}
"""Keras backend name -> ``gradient(function, pixels)``: d(sum of ``function(x)``)/dx at
``x = pixels`` (float32 numpy in, float32 numpy out), where ``function`` maps a backend tensor
to a backend tensor with ``keras.ops`` and Keras models. The only backend-specific code of
the attack: TensorFlow's ``GradientTape``, ``torch.autograd.grad``, ``jax.grad``."""


def gradient_function() -> Callable[[Callable[[Any], Any], np.ndarray], np.ndarray]:
    """The gradient function of the running Keras backend; InputError for one without it."""
    import keras

    backend = keras.backend.backend()
    if backend not in GRADIENTS:
        raise InputError(
            f"adversarial images need gradients, which daskdiff computes with the "
            f"{', '.join(sorted(GRADIENTS))} backends; Keras runs on {backend!r}. Set the environment "
            "variable KERAS_BACKEND to one of them before Python starts, e.g. "
            "'KERAS_BACKEND=tensorflow daskdiff images adversarial ...'"
        )
    return GRADIENTS[backend]


def loss_gradient(model: Any, pixels: np.ndarray, spec: ModelSpec, pgd: PGD) -> np.ndarray:
    """d(sum of ``pgd.loss``)/d(pixels) of float32 0-255 RGB ``pixels``, through the preprocessing.

    The path pixels -> :func:`~daskdiff.model.preprocess.preprocess_tensor` -> model (inference
    mode) -> :meth:`PGD.loss` is written once, in ``keras.ops``; the running backend's
    :data:`GRADIENTS` function differentiates it.
    """
    gradient = gradient_function()
    with forward_lock():
        return gradient(lambda x: pgd.loss(model(preprocess_tensor(x, spec), training=False)), pixels)


def projected_gradient_descent(images: np.ndarray, spec: ModelSpec, pgd: PGD) -> np.ndarray:
    """Adversarial versions of uint8 RGB images ``(n, h, w, 3)`` at the model's input size.

    Returns
    -------
    numpy.ndarray
        uint8, same shape; every value within ``pgd.eps`` of the original and in 0..255.

    Notes
    -----
    Starting from the image itself (no random start, so the result is deterministic), each
    iteration takes ``x <- clip(x - step * sign(grad loss(x)), max(x0 - eps, 0),
    min(x0 + eps, 255))``; the result is rounded half to even. The bounds are whole numbers,
    so rounding keeps every value inside them: the L-infinity distance of the uint8 result is
    at most ``eps``. With a whole-number ``step`` every iterate is already whole, and rounding
    changes nothing. Images do not interact: the loss is summed over the batch, and the model
    runs in inference mode.
    """
    gradient_function()  # fail before building the model on a backend without gradients
    model = cached_model(spec)
    x0 = np.asarray(images, dtype=np.float32)
    low = np.maximum(x0 - pgd.eps, 0)
    high = np.minimum(x0 + pgd.eps, 255)
    x = x0.copy()
    for _ in range(pgd.iters):
        x = np.clip(x - np.float32(pgd.step) * np.sign(loss_gradient(model, x, spec, pgd)), low, high)
    return np.rint(x).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# One shard: attack, save, reload, check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackTask:
    """One shard of an attack: which files, where the PNGs go, which model and attack."""

    paths: tuple[str, ...]
    out_dir: str
    spec: ModelSpec
    pgd: PGD
    labels: tuple[str, ...] = field(repr=False)
    batch_size: int = 16
    resize: str = "nearest"
    keep_failures: bool = True


def output_name(path: str) -> str:
    """File name of the adversarial version of ``path``: its stem + ``.png``."""
    return Path(path).stem + ".png"


def attack_shard(task: AttackTask) -> list[dict[str, object]]:
    """Attack one shard, write its PNGs, reload and classify them; one table row per file.

    A pure function of the task (deterministic, rewrites the same bytes if run twice), mapped
    over shards by :func:`attack_images`, here or on Dask workers that see ``out_dir``.
    """
    size = input_size(cached_model(task.spec))
    images, ok, skipped = load_images(list(task.paths), size, resize=task.resize)
    rows: dict[str, dict[str, object]] = {
        s.path: {"path": s.path, "file": "", "status": "not_decoded", "written": False, "reason": s.reason}
        for s in skipped
    }
    for batch in batch_slices(len(ok), task.batch_size):
        paths = [task.paths[j] for j in ok[batch]]
        rows.update(zip(paths, _attack_batch(task, images[batch], paths, size)))
    return [rows[path] for path in task.paths]


def _attack_batch(task: AttackTask, clean: np.ndarray, paths: list[str], size: tuple[int, int]) -> list[dict[str, object]]:
    """Attack one batch of decoded images, write their PNGs, reload and classify them; their table rows."""
    spec, pgd, labels = task.spec, task.pgd, task.labels
    before = predict_logits(clean, spec, batch_size=task.batch_size)
    adversarial = projected_gradient_descent(clean, spec, pgd)
    written = write_images(task.out_dir, zip(map(output_name, paths), adversarial))
    reloaded, _, _ = load_images(written, size, resize=task.resize, strict=True)
    after = predict_logits(reloaded, spec, batch_size=task.batch_size)
    linf = np.abs(reloaded.astype(np.int16) - clean.astype(np.int16)).reshape(len(clean), -1).max(axis=1)
    if np.any(linf > pgd.eps):  # cannot happen (see projected_gradient_descent): never hide it
        raise RuntimeError(f"internal error: L-inf distance {int(linf.max())} > eps={pgd.eps} in {written}")
    success, clean_success = pgd.succeeded(after), pgd.succeeded(before)
    p_before, p_after = softmax(before), softmax(after)
    rows = []
    for i, (path, out) in enumerate(zip(paths, written)):
        keep = bool(success[i]) or task.keep_failures
        if not keep:
            os.unlink(out)
        top_b, top_a = int(np.argmax(p_before[i])), int(np.argmax(p_after[i]))
        rows.append(
            {
                "path": path,
                "file": os.path.basename(out) if keep else "",
                "status": "success" if success[i] else "failure",
                "written": keep,
                "linf": int(linf[i]),
                "prob_before": float(class_mass(p_before[i], pgd.classes)),
                "prob_after": float(class_mass(p_after[i], pgd.classes)),
                "clean_success": bool(clean_success[i]),
                "top1_before_index": top_b,
                "top1_before_label": labels[top_b],
                "top1_before_prob": float(p_before[i, top_b]),
                "top1_after_index": top_a,
                "top1_after_label": labels[top_a],
                "top1_after_prob": float(p_after[i, top_a]),
                "reason": "",
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# A whole image set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackReport:
    """What :func:`attack_images` did: one row per source image, and where things are."""

    rows: list[dict[str, object]]
    table: str
    written: list[str]
    pgd: PGD

    @property
    def attacked(self) -> list[dict[str, object]]:
        return [r for r in self.rows if r["status"] != "not_decoded"]

    @property
    def n_success(self) -> int:
        return sum(r["status"] == "success" for r in self.rows)

    @property
    def success_rate(self) -> float:
        """Successes / decoded images (NaN if none decoded)."""
        return self.n_success / len(self.attacked) if self.attacked else float("nan")

    def summary(self) -> str:
        rows, pgd = self.attacked, self.pgd
        goal = f"top-1 outside classes {class_ranges(pgd.avoid)}" if pgd.target is None else f"top-1 == class {pgd.target}"
        if not rows:
            return f"no image could be decoded; table: {self.table}"
        linf = max(int(r["linf"]) for r in rows)
        before = np.mean([r["prob_before"] for r in rows])
        after = np.mean([r["prob_after"] for r in rows])
        already = sum(bool(r["clean_success"]) for r in rows)
        failed = len(rows) - self.n_success
        kept = "written" if all(r["written"] for r in rows) else "removed"
        return (
            f"success rate {self.success_rate:.1%} ({self.n_success} of {len(rows)}; {goal}, checked on "
            f"the saved PNGs; {already} already so before the attack); {failed} failure(s), {kept}; "
            f"max L-inf {linf} <= eps {pgd.eps} grey levels; mean p(classes {class_ranges(pgd.classes)}) "
            f"{before:.4f} -> {after:.4f}; {len(self.rows) - len(rows)} not decoded; table: {self.table}"
        )

    def details(self) -> str:
        """One line per image, then :meth:`summary`."""
        lines = []
        for r in self.rows:
            name = os.path.basename(str(r["path"]))
            if r["status"] == "not_decoded":
                lines.append(f"{name}: not decoded ({r['reason']})")
                continue
            lines.append(
                f"{name}: {'success' if r['status'] == 'success' else 'FAILURE'}, L-inf {r['linf']}, "
                f"p(classes) {r['prob_before']:.4f} -> {r['prob_after']:.4f}, top-1 "
                f"{r['top1_before_label']} -> {r['top1_after_label']} ({r['top1_after_prob']:.3f})"
                + ("" if r["written"] else ", not written")
            )
        return "\n".join([*lines, self.summary()])


def attack_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: ModelSpec,
    *,
    eps: int = 8,
    step: float = 1,
    iters: Iterations = 10,
    avoid: ClassesLike | None = None,
    target: str | int | None = None,
    keep_failures: bool = True,
    batch_size: int = 16,
    resize: str = "nearest",
    shard_size: int = 32,
    base_dir: str | os.PathLike | None = None,
    client: Any = None,
) -> AttackReport:
    """Write adversarial PNG versions of an image set and a table of how each one fared.

    Parameters
    ----------
    source : str, path-like or sequence of them
        An image set (folder, glob pattern or list file) or a list of image paths.
    out_dir : str or path-like
        Folder of the PNGs (``<source stem>.png``) and of the table ``adversarial.csv``;
        created if missing; must not be where the sources are.
    model : ModelSpec
        The attacked model (e.g. ``model_spec('VGG16', 'imagenet')``).
    eps : int, default 8
        L-infinity radius in grey levels.
    step : float, default 1
        Grey levels per iteration.
    iters : int, default 10
        Iterations.
    avoid : str, int or list, optional
        Untargeted attack away from these classes (see
        :func:`daskdiff.stimuli.select.class_indices`); default, when ``target`` is not given, the
        ImageNet cats ``'281-285'``.
    target : str or int, optional
        Targeted attack towards this class instead.
    keep_failures : bool, default True
        Keep the PNG of an image whose attack failed (the table marks it ``failure``); with
        False it is written, checked and deleted, so the folder holds only successes.
    batch_size : int, default 16
        Images per gradient computation.
    resize : {'nearest', 'bilinear', 'bicubic', 'lanczos'}
        How sources are resized to the model's input size (as in extraction).
    shard_size : int, default 32
        Images per task (per Dask task with ``client``).
    base_dir : str or path-like, optional
        Folder a relative ``source`` is relative to.
    client : distributed.Client, optional
        Run the shards on this cluster; its workers must see the sources and ``out_dir``.

    Returns
    -------
    AttackReport
        ``written`` lists the PNGs in the folder, sorted.

    Notes
    -----
    Each source is decoded at the model's input size as extraction decodes it, attacked with
    :func:`projected_gradient_descent` and saved as PNG, so outputs have the model's input
    size. The PNG is then read back with :func:`daskdiff.io.images.load_images` and classified
    after :func:`daskdiff.model.preprocess.preprocess`; success (top-1 outside ``avoid``, or equal to
    ``target``) and the L-infinity distance are measured on that reloaded image against the
    decoded source. Failures are reported, never dropped silently.

    Table columns, one row per source in path order: ``path``; ``file`` (the PNG's name, empty
    if not written); ``status`` (``success``, ``failure`` or ``not_decoded``); ``written``;
    ``linf`` (max absolute difference, grey levels); ``prob_before``/``prob_after`` (summed
    probability of ``avoid``, or of ``target``, on the decoded source and on the reloaded PNG);
    ``clean_success`` (the source already met the success test); ``top1_before_*`` and
    ``top1_after_*`` (index, label, probability); ``reason`` (why a file did not decode).
    """
    gradient_function()  # fail before any work on a backend without gradients
    batch_size = check_batch_size(batch_size)
    labels = model_labels(model)
    pgd = _pgd_from_keywords(model, labels, eps=eps, step=step, iters=iters, avoid=avoid, target=target)
    paths = image_paths(source, base_dir=base_dir)
    folder = Path(os.path.abspath(out_dir))
    _check_outputs(paths, folder)
    tasks = [
        AttackTask(chunk, str(folder), model, pgd, tuple(labels), batch_size, resize, bool(keep_failures))
        for chunk in shards(paths, shard_size)
    ]
    rows = [row for part in run_tasks(attack_shard, tasks, client) for row in part]
    folder.mkdir(parents=True, exist_ok=True)
    table = write_table(folder / ADVERSARIAL_TABLE, TABLE_COLUMNS, rows)
    written = sorted(str(folder / str(r["file"])) for r in rows if r["file"])
    return AttackReport(rows, str(table), written, pgd)


def _pgd_from_keywords(
    model: ModelSpec, labels: Sequence[str], *, eps: int, step: float, iters: int,
    avoid: ClassesLike | None, target: str | int | None,
) -> PGD:
    """The :class:`PGD` of :func:`attack_images`'s keywords: away from ``avoid`` (default the cats) or towards ``target``."""
    if target is not None and avoid is not None:
        raise InputError(f"give avoid (untargeted) or target (targeted), not both; got avoid={avoid!r}, target={target!r}")
    if target is None and avoid is None and len(labels) != 1000:
        raise InputError(
            f"the default avoid='281-285' (ImageNet's cats) needs a 1000-class ImageNet model; "
            f"{model.name!r} has {len(labels)} classes: give avoid= or target="
        )
    if target is None:
        avoided = class_indices(CAT_CLASSES if avoid is None else avoid, labels)
        return PGD(eps=eps, step=step, iters=iters, avoid=avoided)
    targets = class_indices(target, labels)
    if len(targets) != 1:
        raise InputError(f"target must be one class, got {target!r} ({len(targets)} classes)")
    return PGD(eps=eps, step=step, iters=iters, avoid=None, target=targets[0])


def _check_outputs(paths: Sequence[str], folder: Path) -> None:
    """InputError if two sources share an output name, or an output would overwrite a source."""
    names = [output_name(p) for p in paths]
    repeated = repeated_names(names)
    if repeated:
        raise InputError(
            f"sources share the output name(s) {repeated} (outputs are '<stem>.png'); rename them "
            "or attack each folder separately"
        )
    clashes = sorted(set(map(os.path.realpath, paths)) & {os.path.realpath(folder / n) for n in names})
    if clashes:
        raise InputError(f"out_dir {str(folder)!r} would overwrite source image(s) {clashes[:3]}; choose another folder")


def adversarial_images(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    eps: int = 8,
    step: float = 1,
    iters: Iterations = 10,
    avoid: str | int | list | None = None,
    target: str | int | None = None,
    keep_failures: bool = True,
    model: str = "VGG16",
    weights: str | None = None,
    seed: int = 0,
    preprocess: str | None = None,
    batch_size: int = 16,
    resize: str = "nearest",
) -> list[str]:
    """Write adversarial PNG versions of the images of ``source`` (default: away from cats).

    The job-spec form of :func:`daskdiff.stimuli.adversarial.attack_images` (see it for the parameters, the
    success check on the reloaded PNGs and the ``adversarial.csv`` table); the model is given
    by plain keywords as in :func:`selected_images`. Returns the absolute paths of the PNGs in
    ``out_dir``, sorted (failures included unless ``keep_failures=False``).
    """
    from .select import model_spec

    spec = model_spec(model, weights, seed, preprocess)
    report = attack_images(
        source, out_dir, spec, eps=eps, step=step, iters=iters, avoid=avoid, target=target,
        keep_failures=keep_failures, batch_size=batch_size, resize=resize,
    )
    return report.written
