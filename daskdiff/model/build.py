"""Model layer: building Keras models (weights), layer selection and class labels.

This module knows Keras and numpy, nothing about Dask or files of activations. A
:class:`ModelSpec` is a small, picklable description; workers build the model from it
(:func:`build_model`), so a Keras model is never sent over the network.

Conventions
-----------
- Images enter as uint8 RGB arrays ``(n, height, width, 3)``;
  :func:`daskdiff.model.preprocess.preprocess` (importable from here too) applies the model's
  own ``preprocess_input`` (VGG16: 'caffe' mode, RGB->BGR and ImageNet mean subtraction, no
  scaling).
- keras.applications models are built with ``classifier_activation=None``: the
  ``predictions`` layer yields logits, and probabilities are ``softmax(logits)``. Which of the
  two a job analyses as the ``predictions`` layer is :attr:`ModelSpec.predictions`; the seeds
  used softmax probabilities.
- ``weights='random'`` draws every kernel (weights with 2 or more axes) from
  ``N(0, 2 / fan_in)`` (He normal) with ``numpy.random.default_rng(SeedSequence(seed,
  spawn_key=(i,)))`` for the i-th weight; biases and normalisation constants keep their
  deterministic initial values. The same seed gives the same model on every backend and
  worker, without touching Keras's global random state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ..errors import MAX_QUOTED, DaskdiffError, InputError, shorten
from ..io.fingerprints import file_identity
from ..io.location import is_remote
from ..io.reading import local_copy
from .keras_config import backend_name, keras_home, package_version
from .preprocess import PREPROCESS_MODES, preprocess  # noqa: F401  (re-exported: spec and callers import them from here)
from .quiet import import_tensorflow_quietly

APPLICATIONS: dict[str, str] = {
    "VGG16": "vgg16",
    "VGG19": "vgg19",
    "ResNet50": "resnet",
    "ResNet101": "resnet",
    "ResNet50V2": "resnet_v2",
    "InceptionV3": "inception_v3",
    "Xception": "xception",
    "MobileNetV2": "mobilenet_v2",
    "DenseNet121": "densenet",
    "EfficientNetB0": "efficientnet",
    "ConvNeXtTiny": "convnext",
}
"""keras.applications model name -> the keras.applications submodule with its
``preprocess_input`` and ``decode_predictions``."""

WEIGHTS_KEYWORDS = ("imagenet", "random", "file")
"""``weights`` values that are not a path: ImageNet, seeded random, the ``.keras`` file's own."""

PREDICTIONS = ("softmax", "logits")
"""What the class-score layer of a shard holds."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What model a job runs; small and picklable, sent to workers instead of a model.

    Parameters
    ----------
    name : str
        A keras.applications name (see :data:`APPLICATIONS`) or the path of a ``.keras`` file.
    weights : str
        ``'imagenet'`` (Keras's download cache), ``'random'`` (seeded, see module notes), or
        the path of a weights file (``.weights.h5`` or a legacy ``.h5``).
    seed : int
        Seed of ``weights='random'``.
    layers : tuple of str, optional
        Layers to extract, in any order (stored in network order). Default: every layer after
        the input (22 for VGG16, ``block1_conv1`` ... ``predictions``).
    predictions : {'softmax', 'logits'}
        What the ``predictions`` (last) layer's values are: probabilities (the seeds) or
        pre-softmax logits.
    preprocess : {'caffe', 'tf', 'torch', 'none'}, optional
        Override of the preprocessing; default: the application's own ``preprocess_input``
        (``'none'`` for a ``.keras`` file).
    precision : {'float32', 'bfloat16', 'float16'}
        The forward pass's compute dtype (:data:`PRECISIONS`): ``float32``, or Keras mixed
        precision (``mixed_bfloat16`` / ``mixed_float16``: weights kept in float32, each layer
        computing in 16 bits). Activations are cast to float32 before they are gathered,
        averaged and stored.
    fingerprint : str, optional
        :func:`model_fingerprint` of this spec, taken once by the job's client
        (:func:`with_fingerprint`): the model's files as they were when the job was planned. Part
        of the spec's equality, hence of every task key and of each worker's model cache
        (:func:`cached_model`), recorded in every shard; a model built from files that no longer
        match it is refused (:func:`build_model`). None: not taken yet.
    storage_options : mapping, optional
        For model and weights files given as URLs (``s3://b/net.keras``); not in equality or ``repr``.
    """

    name: str = "VGG16"
    weights: str = "imagenet"
    seed: int = 0
    layers: tuple[str, ...] | None = None
    predictions: str = "softmax"
    preprocess: str | None = None
    precision: str = "float32"
    fingerprint: str | None = None
    storage_options: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def is_application(self) -> bool:
        return self.name in APPLICATIONS

    @property
    def application(self) -> str | None:
        """The keras.applications submodule of this model (``'vgg16'``); None for a ``.keras`` file."""
        return APPLICATIONS.get(self.name)

    def identity(self) -> dict[str, str]:
        """Attributes that identify the model in output files, with the Keras backend that runs it.

        ``keras_backend`` (and ``keras_backend_version``, its package's version) is this
        process's (``KERAS_BACKEND``, read by Keras when it is first imported): a shard records
        its worker's; the results file those of its shards, and the client's apart. It is provenance only: no digest that
        decides whether a shard or an output folder is reused includes it, so a folder written
        on one backend is resumed on another (their values agree to float32 rounding;
        tests/test_backends.py). ``keras_version`` is provenance too. ``model_fingerprint`` is
        :func:`model_fingerprint` (this spec's own when taken, :attr:`fingerprint`): it decides
        whether a shard is reused.
        """
        backend = backend_name()
        return {
            "model": self.name,
            "weights": weights_identity(self),
            "preprocessing": self.preprocess_mode(),
            "predictions_layer_values": self.predictions,
            "precision": self.precision,
            "model_fingerprint": self.fingerprint or model_fingerprint(self),
            "keras_version": package_version("keras"),
            "keras_backend": backend,
            "keras_backend_version": package_version(backend),
        }

    def preprocess_mode(self) -> str:
        if self.preprocess is not None:
            return self.preprocess
        if self.is_application:
            return f"keras.applications.{self.application}.preprocess_input"
        return "none"


def check_model_name(name: str) -> str:
    if name in APPLICATIONS or name.endswith(".keras"):
        return name
    raise InputError(
        f"unknown model {shorten(repr(name))}; use one of {sorted(APPLICATIONS)} or the path of a saved "
        "'.keras' model file"
    )


RANDOM_INIT = "he_normal"
"""The scheme of ``weights='random'`` (see the module notes): part of the weights' identity."""


def check_model_file(spec: ModelSpec) -> None:
    """Refuse a ``.keras`` model path that is no file here (an object store's URL is checked when read)."""
    if not spec.is_application and not is_remote(spec.name) and not Path(spec.name).is_file():
        raise InputError(f"model file {spec.name!r} does not exist; give a keras.applications name or an existing '.keras' file")


def _weights_file(spec: ModelSpec) -> Path | str | None:
    """The file the weights of ``spec`` are read from (the ``.keras`` file itself for
    ``weights='file'``); None for 'imagenet' and 'random'. Raises a clear InputError for
    ``weights='file'`` with a keras.applications name, or a weights file that does not exist."""
    if spec.weights in ("imagenet", "random"):
        return None
    if spec.weights == "file":
        if spec.is_application:
            raise InputError(
                "weights='file' keeps the weights saved in a '.keras' model file; for "
                f"{spec.name} use 'imagenet', 'random' or the path of a weights file"
            )
        return spec.name if is_remote(spec.name) else Path(spec.name)
    path = spec.weights if is_remote(spec.weights) else Path(spec.weights)  # an object is checked by its HEAD
    if not is_remote(path) and not path.is_file():
        raise InputError(
            f"weights file {spec.weights!r} does not exist; give weights='imagenet', "
            "weights='random' (with a seed) or the path of an existing weights file"
        )
    return path


def weights_identity(spec: ModelSpec) -> str:
    """A string that identifies the weights: 'imagenet', 'random(seed=0, he_normal)' or the
    file's path and the first 16 hex digits of its SHA-256 (memoised per process,
    :func:`daskdiff.io.fingerprints.file_sha256`)."""
    if spec.weights == "imagenet":
        return "imagenet"
    if spec.weights == "random":
        return f"random(seed={spec.seed}, {RANDOM_INIT})"
    identity = file_identity(path := _weights_file(spec), "weights file", spec.storage_options)
    return f"{path.resolve()} (sha256 {identity['sha256'][:16]})" if "sha256" in identity else f"{path} ({json.dumps(identity['object'])})"


def model_fingerprint(spec: ModelSpec) -> str:
    """What decides the numbers a model computes from an image, as one digest (32 hex digits).

    The digest of: the architecture (a keras.applications name, or the SHA-256 of the ``.keras``
    file's bytes), the weights (``'imagenet'`` with the application; ``'random'`` with the seed
    and :data:`RANDOM_INIT`; the SHA-256 of the weights file, or of the ``.keras`` file for
    ``'file'``), the preprocessing (:meth:`ModelSpec.preprocess_mode`), what the predictions
    layer holds and the precision. Paths are not in it: the same bytes elsewhere are the same model.

    Notes
    -----
    Files are hashed once per process while they are unchanged
    (:func:`daskdiff.io.fingerprints.file_sha256`). ImageNet weights are the file Keras pins by
    its hash in ``keras.applications`` (and verifies at every load). Not in it, on purpose: the
    Keras version and backend, and the device (provenance, recorded in every shard: their values
    agree to float32 rounding, ``tests/test_backends.py``), and the layers (the storage plan's
    digest holds them).
    """
    check_model_name(spec.name)
    weights = _weights_file(spec)
    parts = {
        "architecture": spec.name if spec.is_application else file_identity(spec.name, "model file", spec.storage_options, "keras_sha256"),
        "weights": (f"imagenet {spec.name}" if spec.weights == "imagenet"
                    else f"random(seed={spec.seed}, {RANDOM_INIT})" if spec.weights == "random"
                    else file_identity(weights, "weights file", spec.storage_options)),
        "preprocessing": spec.preprocess_mode(),
        "predictions": spec.predictions,
        "precision": spec.precision,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def with_fingerprint(spec: ModelSpec) -> ModelSpec:
    """``spec`` with its :attr:`~ModelSpec.fingerprint` taken now (``spec`` itself if it has one)."""
    return spec if spec.fingerprint is not None else dataclasses.replace(spec, fingerprint=model_fingerprint(spec))


class ModelChangedError(InputError):
    """The model's files no longer hold what the job's fingerprint says (rewritten during the run)."""


def check_fingerprint(spec: ModelSpec) -> None:
    """Refuse a spec whose files changed since its :attr:`~ModelSpec.fingerprint` was taken.

    Raises
    ------
    ModelChangedError
        Naming the files and what to do; nothing when ``spec.fingerprint`` is None.
    """
    if spec.fingerprint is None:
        return
    now = model_fingerprint(spec)
    if now != spec.fingerprint:
        files = [f for f in dict.fromkeys([None if spec.is_application else spec.name,
                                           spec.weights if spec.weights not in WEIGHTS_KEYWORDS else None]) if f]
        raise ModelChangedError(
            f"the model changed during the run: the content of {' or '.join(map(repr, files))} is not what the job "
            f"started with (model fingerprint {spec.fingerprint[:16]}, now {now[:16]}); re-run the job once the file is "
            "final: its shards are then extracted with the model as it is"
        )


def keras_cache_dir() -> Path:
    """Where Keras caches downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    return keras_home() / "models"


class WeightsUnavailableError(DaskdiffError, RuntimeError):
    """ImageNet weights could not be downloaded (no network) and are not in the cache."""


def _imagenet_error(model_name: str, exc: Exception) -> WeightsUnavailableError:
    match = re.search(r"https?://\S+?\.h5", str(exc))
    url = match.group(0) if match else "(see the Keras documentation of keras.applications)"
    fname = url.rsplit("/", 1)[-1] if match else "<weights file>.h5"
    return WeightsUnavailableError(
        f"could not get ImageNet weights for {model_name}: {exc}\n"
        f"Keras downloads {fname} from {url} into its cache folder {keras_cache_dir()}. "
        "Without network access, either (1) copy that file into that folder (or point "
        "KERAS_HOME at a folder whose models/ subfolder has it), (2) give the path of a local "
        "weights file (weights: /path/to/file.weights.h5, or --weights PATH), or (3) use "
        "weights: random with a seed for a smoke run (results are then not about a trained "
        "network)."
    )


def _randomize(model: Any, seed: int) -> None:
    for i, variable in enumerate(model.weights):
        shape = tuple(variable.shape)
        if len(shape) < 2:
            continue
        fan_in = int(np.prod(shape[:-1]))
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(np.sqrt(2.0 / fan_in))  # in place: fc1 alone is 411 MB
        variable.assign(values)


PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
"""``model.precision`` -> the Keras dtype policy its layers compute in (None: float32 as built)."""


def with_precision(model: Any, precision: str) -> Any:
    """``model`` with every layer but its inputs computing under ``precision``'s mixed policy,
    the same weights (kept in float32); ``model`` itself for ``float32``."""
    import keras

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; valid values are {list(PRECISIONS)}")
    policy = PRECISIONS[precision]
    if policy is None:
        return model

    def clone(layer: Any) -> Any:
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    mixed = keras.models.clone_model(model, clone_function=clone)
    mixed.set_weights(model.get_weights())
    return mixed


def build_model(spec: ModelSpec) -> Any:
    """Build the Keras model of ``spec`` with its weights; the last layer outputs logits.

    A spec with a :attr:`~ModelSpec.fingerprint` is built only from files that still match it
    (checked before and after loading: a file rewritten in between is noticed).

    Raises
    ------
    ModelChangedError
        The model or weights file changed since the fingerprint was taken (during the run).
    WeightsUnavailableError
        ``weights='imagenet'`` and the file is neither cached nor downloadable; the message
        names the file, the cache folder and the two alternatives.
    """
    check_model_name(spec.name)
    check_fingerprint(spec)
    import_tensorflow_quietly()
    import keras

    if spec.is_application:
        constructor = getattr(keras.applications, spec.name)
        keras_weights = "imagenet" if spec.weights == "imagenet" else None
        try:
            model = constructor(weights=keras_weights, include_top=True, classifier_activation=None)
        except Exception as exc:  # keras raises a bare Exception on a failed download
            if keras_weights == "imagenet" and "URL fetch failure" in str(exc):
                raise _imagenet_error(spec.name, exc) from exc
            raise
    else:
        check_model_file(spec)
        with local_copy(spec.name, spec.storage_options, "model file") as path:  # an object: a temporary copy
            model = keras.saving.load_model(path, compile=False)
        last = model.layers[-1]
        if getattr(last, "activation", None) is keras.activations.softmax:
            last.activation = keras.activations.linear  # logits; softmax is applied on demand
        if spec.weights == "imagenet":
            raise InputError(
                f"weights='imagenet' only applies to keras.applications models; the model file "
                f"{spec.name!r} carries its own weights: use weights: file (keep them), 'random', "
                "or the path of a weights file"
            )
    if spec.weights == "random":
        _randomize(model, spec.seed)
    elif spec.weights not in ("imagenet", "file"):
        with local_copy(_weights_file(spec), spec.storage_options, "weights file") as path:  # raises if missing
            model.load_weights(path)
    check_fingerprint(spec)  # again: a file rewritten while it was loaded
    return with_precision(model, spec.precision)


def layer_names(model: Any) -> list[str]:
    """Every layer after the input layer(s), in network order."""
    import keras

    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


INPUT_LAYER = "input"
"""The optional pseudo-layer of ``model.layers``: each image's pixels as the network receives
them, i.e. **after** preprocessing (for VGG16's ``caffe`` mode: BGR, minus the ImageNet channel
means), resized to the input size. It comes first in network order (after :data:`PIXELS_LAYER`)
and is never in the default (every layer after the input)."""

PIXELS_LAYER = "pixels"
"""The optional pseudo-layer of ``model.layers``: each image's pixels **before** preprocessing,
resized to the input size: RGB, 0-255 (the stimulus as shown, as the paper's stimulus analysis
took it). It comes first in network order and is never in the default."""

PSEUDO_LAYERS = (PIXELS_LAYER, INPUT_LAYER)
"""The pseudo-layers, in the order they come before the network's layers."""


def layer_output(model: Any, name: str) -> Any:
    """The symbolic output of layer ``name``; :data:`INPUT_LAYER` is the model's input, and so is
    :data:`PIXELS_LAYER` as far as shapes go (the extraction model feeds it the unpreprocessed
    batch, :func:`daskdiff.model.extract.extraction_model`)."""
    return model.inputs[0] if name in PSEUDO_LAYERS else model.get_layer(name).output


def select_layers(model: Any, wanted: tuple[str, ...] | list[str] | None) -> list[str]:
    """The requested layers of ``model`` in network order (:func:`select_names`)."""
    return select_names(layer_names(model), wanted, model.name)


def select_names(names: list[str], wanted: tuple[str, ...] | list[str] | None, model_name: str) -> list[str]:
    """The requested layers in network order (the :data:`PSEUDO_LAYERS` first), from the network's
    layer ``names`` (:func:`layer_names`); unknown names raise an InputError listing valid ones."""
    if wanted is None:
        return list(names)
    unknown = [w for w in wanted if w not in names and w not in PSEUDO_LAYERS]
    if unknown:
        raise InputError(f"unknown layer(s) {shorten(str(unknown))} for model {model_name!r}; "
                         f"valid layers are {shorten(str(list(PSEUDO_LAYERS) + list(names)), 4 * MAX_QUOTED)}")
    if len(set(wanted)) != len(wanted):
        twice = sorted(name for name, n in Counter(wanted).items() if n > 1)
        raise InputError(f"layers lists a layer twice: {shorten(str(twice))}")
    first = [p for p in PSEUDO_LAYERS if p in wanted and p not in names]
    return first + [n for n in names if n in set(wanted)]


def forward_flops(model: Any) -> int:
    """Floating-point operations of one image's forward pass, counted from the layers' shapes.

    A layer with a kernel (convolutions, dense layers) costs 2 operations (a multiply and an
    add) per weight use: ``2 x output values x kernel values per output`` (for a depthwise
    convolution, the kernel's spatial size; a separable one adds its pointwise kernel). Every
    other layer costs one operation per output value. Normalisation statistics, attention and
    recurrent layers are not modelled: an order-of-magnitude figure for estimates
    (:mod:`daskdiff.core.estimate`), exact for the multiply-adds of VGG-like networks (VGG16:
    30.9 GFLOP, i.e. the 15.5 G multiply-adds usually quoted).
    """
    total = 0
    for layer in model.layers:
        try:
            out = layer.output.shape[1:]
        except (AttributeError, ValueError):  # a layer used twice or not in the graph: skip it
            continue
        outputs = int(np.prod([s for s in out if s is not None]))
        kind = type(layer).__name__
        if hasattr(layer, "depthwise_kernel"):
            total += 2 * outputs * int(np.prod(layer.depthwise_kernel.shape[:2]))
            if hasattr(layer, "pointwise_kernel"):
                total += 2 * outputs * int(np.prod(layer.pointwise_kernel.shape[:-1]))
        elif getattr(layer, "kernel", None) is not None and len(layer.kernel.shape) >= 2 and "Depthwise" not in kind:
            total += 2 * outputs * int(np.prod(layer.kernel.shape[:-1]))
        elif "Depthwise" in kind:
            total += 2 * outputs * int(np.prod(layer.kernel.shape[:2]))
        else:
            total += outputs
    return total


def input_size(model: Any) -> tuple[int, int]:
    """(height, width) of the model's image input."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None:
        raise InputError(f"the model must take fixed-size RGB images (None, h, w, 3); its input shape is {shape}")
    return int(shape[1]), int(shape[2])


def weight_bytes(model: Any) -> int:
    """Bytes of ``model``'s weights, each at its own dtype's size (``float32``: 4, ``bfloat16``: 2)."""
    total = 0
    for w in model.weights:
        bits = re.search(r"(\d+)$", str(w.dtype))
        total += int(np.prod(w.shape)) * (int(bits.group(1)) // 8 if bits else 1)
    return total


_CLASS_INDEX_FILE = "imagenet_class_index.json"


def class_labels(n_classes: int) -> list[str]:
    """Names of the model's output classes.

    For 1000 classes, the ImageNet names from Keras's ``imagenet_class_index.json`` when it is
    in the Keras cache (Keras downloads it with the first ``decode_predictions`` call);
    otherwise, and for other class counts, ``'class_0281'``-style names.
    """
    path = keras_cache_dir() / _CLASS_INDEX_FILE
    if n_classes == 1000 and path.is_file():
        with open(path) as f:
            index = json.load(f)
        return [index[str(i)][1] for i in range(1000)]
    return [f"class_{i:04d}" for i in range(n_classes)]


def class_index(name_or_index: str | int, labels: list[str]) -> int:
    """Class index from a label name (e.g. 'tabby') or an index; errors name close matches."""
    if isinstance(name_or_index, int) or (isinstance(name_or_index, str) and name_or_index.isdigit()):
        i = int(name_or_index)
        if not 0 <= i < len(labels):
            raise InputError(f"class index {i} is out of range 0..{len(labels) - 1}")
        return i
    if name_or_index in labels:
        return labels.index(name_or_index)
    import difflib

    close = difflib.get_close_matches(str(name_or_index), labels, n=5)
    hint = f"; close matches: {close}" if close else ""
    no_names = labels and labels[0].startswith("class_")
    extra = (
        f" (class names need Keras's {_CLASS_INDEX_FILE} in {keras_cache_dir()}; give the class index instead, e.g. 281 for tabby)"
        if no_names
        else ""
    )
    raise InputError(f"unknown class {name_or_index!r}{hint}{extra}")


_FORWARD_LOCK = threading.RLock()


def forward_lock() -> contextlib.AbstractContextManager:
    """Hold this around a forward pass (or a gradient) through a model of this process.

    On JAX, Keras's ``predict_on_batch`` donates the model's variable buffers to the compiled
    call and puts new ones in their place after it, so two threads that share a model (a worker
    with ``threads_per_worker > 1``, a threaded ``LocalCluster``) would read deleted buffers:
    there the calls take turns under one process-wide lock. TensorFlow and torch need none,
    and get a context that does nothing.
    """
    import keras

    return _FORWARD_LOCK if keras.backend.backend() == "jax" else contextlib.nullcontext()


_BUILD_LOCK = threading.Lock()
_CACHE: dict[ModelSpec, Any] = {}
_LOG = logging.getLogger(__name__)


def cached_model(spec: ModelSpec) -> Any:
    """The model of ``spec``, built once per process under a lock and kept.

    The cache is keyed by the spec with its :attr:`~ModelSpec.fingerprint` (taken here when the
    spec has none: a ``stat`` per call while the files are unchanged), so a long-lived process
    (a ``dask worker``, a notebook) builds the model again when its file was rewritten, never
    serving the old one. Each build is logged (logger ``daskdiff.model.build``, level INFO,
    message starting ``built model``), so a worker's log shows when it built its model.
    """
    spec = with_fingerprint(spec)
    with _BUILD_LOCK:
        if spec not in _CACHE:
            _CACHE.clear()  # one model per worker: a new spec replaces the old one
            _CACHE[spec] = build_model(spec)
            _LOG.info("built model %s (weights %s) in process %d", spec.name, spec.weights, os.getpid())
        return _CACHE[spec]


def forget_models() -> None:
    """Drop the model :func:`cached_model` keeps: the next call builds it again."""
    with _BUILD_LOCK:
        _CACHE.clear()
