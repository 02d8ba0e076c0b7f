"""Model layer: extraction, one shard of images -> one labelled activation Dataset on disk.

Runs on a worker. The Keras model is built once per worker process (:func:`extractor`, under
a lock) and extended, in the graph, with the plan's reductions: the sampled units are gathered
and the spatial/channel means taken on the device, so only what the analysis needs leaves it.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.images import load_images
from .build import cached_model, class_labels, forget_models, forward_lock, input_size, layer_names, layer_output, ModelSpec, PIXELS_LAYER, with_fingerprint
from .preprocess import preprocess
from ..core.batches import batch_slices
from ..core.units import bytes_per_image, LayerPlan, plan_digest
from ..io.atomic import atomic_path
from ..io.store import local_copy
from ..io.layout import shard_path, variable_name
from ..io.shards import input_record, inputs_digest, shard_labels, shard_metadata, shard_status, ShardWriter

LOGITS = "__logits__"
DENSE_GATHER = 0.1
"""Above this fraction of a layer's units, gather from the transposed activations."""


@dataclass(frozen=True)
class ShardTask:
    """One extraction task: which images, where the shard goes, how to decode."""

    image_set: str
    shard: int
    paths: tuple[str, ...]
    first_index: int
    output: str
    batch_size: int = 16
    resize: str = "nearest"
    strict: bool = False
    attrs: dict = field(default_factory=dict, hash=False, compare=False)
    exif_orientation: bool = False
    decoders: int = 1
    """Processes decoding and resizing images while the model runs (:func:`decoder_pool`; 1: the
    worker's own prefetch thread). The shard's values do not depend on it."""
    storage_options: Any = field(default=None, hash=False, compare=False, repr=False)
    """The spec's ``storage_options`` (a :class:`~daskdiff.io.location.StorageOptions`) for images
    that are objects on a store: the worker opens each with them."""

    @property
    def key(self) -> str:
        return f"extract-{self.image_set}-{self.shard:05d}"


def _feature_outputs(out: Any, lp: LayerPlan) -> dict[str, Any]:
    from keras import ops

    result = {}
    if lp.units is not None:
        flat = ops.reshape(out, (-1, lp.n_total))
        if lp.all_units:
            units = flat
        elif len(lp.units) > DENSE_GATHER * lp.n_total:
            # gathering rows of the transposed activations is ~2x faster for large fractions
            units = ops.transpose(ops.take(ops.transpose(flat), np.asarray(lp.units, dtype=np.int32), axis=0))
        else:
            units = ops.take(flat, np.asarray(lp.units, dtype=np.int32), axis=1)
        result[variable_name("units", lp.name)] = units
    if lp.filter_mean:
        if len(lp.shape) == 3:  # a global average pool is ~4x faster than ops.mean over (y, x)
            pooled = ops.average_pool(out, pool_size=lp.shape[:2], strides=1, padding="valid")
            result[variable_name("filter_mean", lp.name)] = ops.reshape(pooled, (-1, lp.shape[2]))
        else:
            spatial = tuple(range(1, len(lp.shape)))  # axes of `out` between batch and channels
            result[variable_name("filter_mean", lp.name)] = ops.mean(out, axis=spatial) if spatial else out
    if lp.location_mean:
        if len(lp.shape) > 1:
            n_pos = int(np.prod(lp.shape[:-1]))
            loc = ops.reshape(ops.mean(out, axis=-1), (-1, n_pos))
        else:
            loc = ops.mean(out, axis=-1, keepdims=True)
        result[variable_name("location_mean", lp.name)] = loc
    return result


def extraction_model(model: Any, plan: dict[str, LayerPlan], spec: ModelSpec) -> Any:
    """A Keras model with one output per stored variable plus the class-score logits.

    The last layer's values are softmax probabilities when ``spec.predictions == 'softmax'``
    (the model itself outputs logits, see :mod:`daskdiff.model.build`).
    """
    import keras
    from keras import ops

    last = layer_names(model)[-1]

    def as_float32(out: Any) -> Any:  # gathers, means and the softmax in float32 (see ModelSpec.precision)
        return out if spec.precision == "float32" else ops.cast(out, "float32")

    outputs: dict[str, Any] = {}
    pixels = None
    for name, lp in plan.items():
        if name == PIXELS_LAYER:  # a second input: the batch before preprocessing
            out = pixels = keras.Input(tuple(model.inputs[0].shape[1:]), name="daskdiff_pixels")
        else:
            out = as_float32(layer_output(model, name))
        if name == last and spec.predictions == "softmax":
            out = ops.softmax(out, axis=-1)
        outputs.update(_feature_outputs(out, lp))
    outputs[LOGITS] = as_float32(model.get_layer(last).output)
    # one input as a tensor, not a list of one: Keras on torch warns at every call whose input's
    # structure differs from the model's
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if pixels is not None:
        inputs = [*model.inputs, pixels]
    return keras.Model(inputs, outputs, name="daskdiff_extractor")


def model_input(model: Any, batch: np.ndarray, spec: ModelSpec) -> Any:
    """What :func:`extraction_model`'s model takes for a batch of uint8 RGB images: the
    preprocessed batch, plus the batch itself as float32 when it stores :data:`PIXELS_LAYER`."""
    x = preprocess(batch, spec)
    return [x, np.asarray(batch, dtype=np.float32)] if len(model.inputs) == 2 else x


_LOCK = threading.Lock()
_DIGESTS: dict[int, tuple[dict, str]] = {}


def _digest(plan: dict[str, LayerPlan]) -> str:
    """plan_digest, memoised per plan object (a worker builds each job's plan once, see
    :func:`daskdiff.core.units.cached_storage_plan`)."""
    hit = _DIGESTS.get(id(plan))
    if hit is None or hit[0] is not plan:
        _DIGESTS.clear()
        hit = _DIGESTS[id(plan)] = (plan, plan_digest(plan))
    return hit[1]

_EXTRACTORS: dict[tuple[ModelSpec, str], Any] = {}


def extractor(spec: ModelSpec, plan: dict[str, LayerPlan]) -> tuple[Any, Any]:
    """(base model, extraction model) for this process, built once per (spec, plan)."""
    key = (spec, _digest(plan))
    with _LOCK:
        if key not in _EXTRACTORS:
            base = cached_model(spec)
            _EXTRACTORS.clear()
            _EXTRACTORS[key] = (base, extraction_model(base, plan, spec))
        return _EXTRACTORS[key]


def release_models() -> None:
    """Drop this process's model and extraction model (a worker, once its job's extraction is
    done: the differentiation stage needs neither), and Keras's global state
    (``keras.backend.clear_session``). Their memory goes back
    to the system under :data:`daskdiff.model.quiet.TF_DEFAULT_ENV`; a later extraction builds
    them again. Not while this process builds or runs another model."""
    import gc
    import sys

    with _LOCK:
        _EXTRACTORS.clear()
    forget_models()
    if "keras" in sys.modules:  # without it ~0.5 GB of a VGG16 built by keras.applications stayed (measured)
        sys.modules["keras"].backend.clear_session()
    gc.collect()


@dataclass
class Batch:
    """One batch's extraction model outputs (variable name -> ``(n_ok, n)`` float32, plus the
    class-score logits under :data:`LOGITS`), the indices of the images that decoded, and the
    ``(path, reason)`` of those that did not."""

    outputs: dict[str, np.ndarray]
    ok: list[int]
    skipped: list[tuple[str, str]]


PREFETCH_BATCHES = 2
"""Batches decoded ahead of the forward pass."""

_DECODERS: dict[int, Any] = {}


def _close_decoders() -> None:
    """End the decoding processes at exit (before the interpreter tears down what their pool needs)."""
    for pool in _DECODERS.values():
        pool.terminate()
    _DECODERS.clear()


atexit.register(_close_decoders)


def decoder_pool(n: int) -> Any:
    """This process's pool of ``n`` image-decoding processes, started once and kept; None for
    ``n <= 1``.

    Processes, because Pillow's PNG and JPEG decoders hold the GIL: threads decode no faster than
    one (``benchmarks/decode.py``). They are spawned (not forked: the parent runs TensorFlow's or
    torch's threads) and import only numpy and Pillow. A Dask worker process is daemonic, and
    multiprocessing refuses children to daemonic processes; this pool's are started with that
    flag lifted for the moment of their start: they are daemonic themselves, so they end with the
    worker, and a worker killed outright leaves them to exit on their closed pipes.
    """
    if n <= 1:
        return None
    with _LOCK:
        pool = _DECODERS.get(n)
        if pool is None:
            for old in _DECODERS.values():
                old.terminate()
            _DECODERS.clear()
            import multiprocessing

            me = multiprocessing.current_process()
            daemon = me._config.get("daemon")
            me._config["daemon"] = False
            try:
                pool = _DECODERS[n] = multiprocessing.get_context("spawn").Pool(n)
            finally:
                if daemon is None:
                    me._config.pop("daemon", None)
                else:
                    me._config["daemon"] = daemon
        return pool


_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict(model: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
    """``model.predict_on_batch(batch)`` of the extraction model: its outputs by name, as arrays.

    On TensorFlow the model's call is one ``tf.function`` per model (traced once per batch
    shape, as Keras's own predict function) and its outputs are taken without a copy
    (``np.asarray`` of a CPU tensor shares its buffer; read-only): Keras's ``predict_on_batch``
    copies every output, ~1 GB per batch of 16 VGG16 images with every layer, which cost
    ~30 % of an extraction (``benchmarks/job.py``). The values are the same, bit for bit (the
    same graph). Without AutoGraph (the call has no Python control flow to convert), which would
    leave a ``__autograph_generated_file*.py`` in the system's temporary folder for every model.
    Other backends keep ``predict_on_batch``.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch(batch)
    call = _CALLS.get(model)
    if call is None:
        import tensorflow as tf

        held = weakref.ref(model)  # not the model itself: _CALLS would keep it alive
        call = _CALLS[model] = tf.function(lambda x: held()(x, training=False), reduce_retracing=True, autograph=False)
    return {name: np.asarray(value) for name, value in call(batch).items()}


def run_extraction(
    images_paths: list[str], spec: ModelSpec, plan: dict[str, LayerPlan], *, batch_size: int = 16,
    resize: str = "nearest", strict: bool = False, exif_orientation: bool = False, decoders: int = 1,
    storage_options: Any = None,
) -> Iterator[Batch]:
    """Decode and run images through the extraction model, yielding batch after batch.

    Decoding overlaps the forward pass: up to :data:`PREFETCH_BATCHES` batches are decoded
    ahead by a helper thread, each batch's images spread over ``decoders`` processes when
    ``decoders > 1`` (:func:`decoder_pool`), in input order whatever the processes. Batches of
    which no image decoded are yielded with empty outputs, so that their skipped files are reported.
    """
    base, model = extractor(spec, plan)
    size = input_size(base)
    chunks = batch_slices(len(images_paths), batch_size)
    images = decoder_pool(decoders)

    def decode(sl: slice):
        return sl, load_images(images_paths[sl], size, resize=resize, strict=strict, exif_orientation=exif_orientation, pool=images,
                               storage_options=storage_options)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="daskdiff-prefetch") as pool:
        pending = [pool.submit(decode, c) for c in chunks[:PREFETCH_BATCHES]]
        for i in range(len(chunks)):
            sl, (batch, batch_ok, batch_skipped) = pending.pop(0).result()
            if i + PREFETCH_BATCHES < len(chunks):
                pending.append(pool.submit(decode, chunks[i + PREFETCH_BATCHES]))
            outputs = {}
            if len(batch_ok):
                with forward_lock():
                    outputs = predict(model, model_input(model, batch, spec))
            yield Batch(
                {k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()},
                [sl.start + j for j in batch_ok],
                [(s.path, s.reason) for s in batch_skipped],
            )


class _Kept:
    """A shard's values in memory: each extracted variable's rows filled batch by batch into one
    preallocated float32 array (no list of batches to concatenate, no second copy)."""

    def __init__(self, plan: dict[str, LayerPlan], n_images: int):
        self.index = {}
        self.arrays = {}
        for lp in plan.values():
            for sub, n in lp.extracted().items():
                name = variable_name(sub, lp.name)
                self.arrays[name] = np.empty((n_images, n), np.float32)
                self.index[name] = lp.units if sub == "units" and not lp.all_units else None
        self.n = 0

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        rows = slice(self.n, self.n + len(next(iter(outputs.values()))))
        for name, array in self.arrays.items():
            array[rows] = outputs[name]
        self.n = rows.stop

    def values(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Variable name -> ``(values (n_images, n) float32, index)``: ``index`` the sorted flat
        features of the columns, None when they are every feature in order."""
        return {name: (array[: self.n], self.index[name]) for name, array in self.arrays.items()}


def _batches(task: ShardTask, plan: dict[str, LayerPlan], spec: ModelSpec) -> Iterator[Batch]:
    return run_extraction(list(task.paths), spec, plan, batch_size=task.batch_size, resize=task.resize, strict=task.strict,
                          exif_orientation=task.exif_orientation, decoders=task.decoders, storage_options=task.storage_options)


def extract_shard(task: ShardTask, plan: dict[str, LayerPlan], spec: ModelSpec, *, keep: bool = False) -> dict[str, Any]:
    """Extract one shard and write it atomically to its deterministic path.

    Each batch's activations are appended to the shard's (temporary) file by a helper thread
    while the next batch goes through the model (:class:`daskdiff.io.shards.ShardWriter`); the
    labels follow, then the file is renamed into place. Re-running the same task (e.g. after
    Dask re-schedules it from a dead worker) rewrites the same file with the same contents.

    A shard already on disk for this plan, this model (its :func:`~daskdiff.model.build.model_fingerprint`,
    the spec's own when the client took it) and these very files (the input record: each path's
    size and mtime, :func:`~daskdiff.io.shards.input_record`) is not extracted again (resume;
    the check runs here, on the worker, so the client reads no shard). Returns the shard's
    :func:`~daskdiff.io.shards.shard_metadata`, read back from the finished file, with its
    ``path``, ``resumed``, when a shard on disk was replaced, ``replaced``: why, in words, and
    ``values``: with ``keep``, every extracted variable in memory (:meth:`_Kept.values`), for
    differentiation to take from the worker's memory; None without ``keep``, or when the shard
    was on disk with every value in its file (then they are read from it). A shard on disk whose
    plan writes no units (``extraction.store: none``) is extracted again for ``keep``: its file,
    complete as it is, is left alone.
    """
    spec = with_fingerprint(spec)
    path = shard_path(task.output, task.image_set, task.shard)
    record = input_record(task.paths, task.storage_options)
    with local_copy(path) as copy:  # an object-store shard: downloaded to a local temporary
        done, why = shard_status(copy, plan, _digest(plan), record, model=spec.fingerprint)
    unwritten = any(lp.units is not None and not lp.write_units for lp in plan.values())
    kept = _Kept(plan, len(task.paths)) if keep else None
    if done is not None and not (keep and unwritten):
        return {**done, "path": str(path), "resumed": True, "replaced": None, "values": None}
    if done is not None:
        for batch in _batches(task, plan, spec):
            if batch.ok:
                kept.append(batch.outputs)
        return {**done, "path": str(path), "resumed": True, "replaced": None, "values": kept.values()}
    base, _ = extractor(spec, plan)
    started = time.perf_counter()  # after the model is built (once per worker): "seconds" is this shard's images
    ok: list[int] = []
    skipped: list[tuple[str, str]] = []
    logits: list[np.ndarray] = []
    with atomic_path(path, needed=bytes_per_image(plan) * len(task.paths)) as tmp:
        with (
            ShardWriter(tmp, plan, chunk_images=task.batch_size) as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="daskdiff-write") as pool,
        ):
            pending = None
            for batch in _batches(task, plan, spec):
                skipped += batch.skipped
                if not batch.ok:
                    continue
                logits.append(batch.outputs.pop(LOGITS))
                ok += batch.ok
                if kept is not None:
                    kept.append(batch.outputs)
                if pending is not None:
                    pending.result()  # one batch in flight: memory stays at two batches
                pending = pool.submit(writer.append, batch.outputs)
            if pending is not None:
                pending.result()
            n_classes = int(base.layers[-1].output.shape[-1])
            attrs = {
                **task.attrs,
                **spec.identity(),
                "resize": task.resize,
                "exif_orientation": int(task.exif_orientation),
                "plan_digest": _digest(plan),
                "inputs_digest": inputs_digest(_digest(plan), record, spec.fingerprint),
                "shard": task.shard,
                "title": f"daskdiff activations of image set {task.image_set!r}, shard {task.shard}",
            }
            labels = shard_labels(
                plan,
                paths=[task.paths[i] for i in ok],
                image_set=task.image_set,
                image_index=[task.first_index + i for i in ok],
                logits=np.concatenate(logits) if logits else np.zeros((0, n_classes), np.float32),
                labels=class_labels(n_classes),
                attrs=attrs,
                skipped=skipped,
            )
            writer.write_labels(labels, record)
        meta = shard_metadata(tmp)  # read back from the finished file before it is published (no download)
    return {**meta, "path": str(path), "resumed": False, "replaced": why,
            "values": None if kept is None else kept.values(), "seconds": time.perf_counter() - started}
