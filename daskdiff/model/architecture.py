"""Model layer: an architecture's facts, known without building the model where it was built before.

A job's client needs the layer names, each layer's unit shape, the input size, the forward
pass's FLOPs and the weights' size to check and plan a job (:func:`model_layers`). Building the
architecture to learn them imports the Keras backend and allocates the weights: ~2.4 GB and
several seconds of a client that then runs no network. So the facts of each architecture are
kept, once measured, in a small JSON file per architecture in a cache folder (the pipeline
passes ``daskdiff.model.architecture-cache``); later plans read it and never import Keras.

Conventions
-----------
- The cache key (:func:`architecture_key`) is what decides the facts: the
  ``keras.applications`` name and the installed Keras version, or the SHA-256 of a ``.keras``
  file's bytes (a rewritten file is a new key, never the old file's facts) and the Keras
  version, and :data:`FACTS_VERSION`. Weights do not change shapes and are not in it.
- Entries are written whole or not at all (:func:`daskdiff.io.atomic.atomic_write`); an entry
  that cannot be read or lacks a fact is ignored and measured again; a cache folder that
  cannot be written only costs the build next time.
- Shapes are per image, channels last, with the batch axis dropped (:func:`measure`); the
  pseudo-layers' shape is the input's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.fingerprints import file_identity
from .build import (ModelSpec, PSEUDO_LAYERS, build_model, check_model_file, check_model_name, forward_flops, input_size, layer_names,
                    layer_output, select_names, weight_bytes)
from .keras_config import package_version

FACTS_VERSION = 1
"""Bumped when what an entry holds, or how it is measured, changes: older entries are then ignored."""

_FACTS = ("model_name", "layers", "shapes", "input_size", "last_layer", "forward_flops", "weight_bytes")
_LOG = logging.getLogger(__name__)


def architecture(spec: ModelSpec) -> Any:
    """The model of ``spec`` without loading weights (for shapes and layer names only)."""
    from .quiet import import_tensorflow_quietly

    check_model_name(spec.name)
    import_tensorflow_quietly()
    import keras

    if spec.is_application:
        return getattr(keras.applications, spec.name)(weights=None, include_top=True, classifier_activation=None)
    return build_model(ModelSpec(name=spec.name, weights="file", storage_options=spec.storage_options))


def architecture_key(spec: ModelSpec) -> str:
    """The cache key of ``spec``'s architecture (32 hex digits; see the module's conventions)."""
    check_model_name(spec.name)
    check_model_file(spec)
    what = spec.name if spec.is_application else file_identity(spec.name, "model file", spec.storage_options, "keras_sha256")
    parts = {"architecture": what, "keras": package_version("keras"), "facts": FACTS_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def measure(model: Any) -> dict[str, Any]:
    """Every fact :func:`model_layers` gives, for all of ``model``'s layers and the pseudo-layers."""
    names = layer_names(model)
    shapes = {}
    for name in [*PSEUDO_LAYERS, *names]:
        shape = layer_output(model, name).shape[1:]
        shapes[name] = [None if s is None else int(s) for s in shape]
    return {"model_name": model.name, "layers": names, "shapes": shapes, "input_size": list(input_size(model)),
            "last_layer": names[-1], "forward_flops": forward_flops(model), "weight_bytes": weight_bytes(model)}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            facts = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or any(k not in facts for k in _FACTS) or facts.get("facts") != FACTS_VERSION:
        return None
    return facts


def architecture_facts(spec: ModelSpec, cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """:func:`measure` of ``spec``'s architecture, from ``cache`` (a folder) when it holds them,
    else by building it (and then kept there). ``cache`` None: always built.

    The returned dict says ``"cached": True`` when read from the cache.
    """
    path = Path(cache) / f"{architecture_key(spec)}.json" if cache is not None else None
    if path is not None and (facts := _read(path)) is not None:
        return {**facts, "cached": True}
    facts = {**measure(architecture(spec)), "facts": FACTS_VERSION, "model": spec.name}
    if path is not None:
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(facts, indent=1)))
        except OSError as err:  # a read-only or full cache: the next plan builds the model again
            _LOG.warning("could not keep the architecture's facts in %s: %s", path, err)
    return {**facts, "cached": False}


def model_layers(spec: ModelSpec, cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Layer names, unit shapes and input size of ``spec``'s architecture (weights not loaded).

    Used before a job starts, to validate layer names and plan storage: read from ``cache``
    (:func:`architecture_facts`) without importing Keras where the architecture was measured
    before, else built (~3 s and ~2.4 GB for VGG16). ``"cached"`` says which.

    Raises
    ------
    daskdiff.errors.InputError
        An unknown or repeated layer name; a selected layer without a fixed output shape.
    """
    facts = architecture_facts(spec, cache)
    layers = select_names(facts["layers"], spec.layers, facts["model_name"])
    shapes = {}
    for name in layers:
        shape = facts["shapes"][name]
        if any(s is None for s in shape):
            raise InputError(f"layer {name!r} has an undefined output shape {tuple(shape)}; give the model a fixed input size")
        shapes[name] = tuple(int(s) for s in shape)
    return {
        "layers": layers,
        "shapes": shapes,
        "input_size": tuple(facts["input_size"]),
        "last_layer": facts["last_layer"],
        "forward_flops": int(facts["forward_flops"]),
        "weight_bytes": int(facts["weight_bytes"]),
        "cached": facts["cached"],
    }
