"""Model layer: where a worker's differentiation arrays live (``analysis.device``).

The per-repeat gathers and Gram products (:func:`daskdiff.core.arrays.distances_on_arrays`) can
run on the worker's Keras backend's own arrays: torch tensors or jax arrays, on that backend's
device. :func:`arrays_for` picks them for a task:

- ``host``: plain numpy on the host (the numpy path of :mod:`daskdiff.core.distances`);
- ``auto`` (default): the backend's arrays where the backend has a GPU (torch with
  ``torch.cuda.is_available()``, jax whose first device is not a CPU), else ``host``; a CPU-only
  cluster therefore runs exactly what ``host`` runs;
- ``backend``: the backend's arrays on its device, GPU or CPU (torch or jax; TensorFlow has no
  array-API namespace, so a TensorFlow worker refuses it with an error naming the fix).

jax computes in float32 unless 64-bit mode is on: the work runs inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import numpy as np

from ..errors import InputError

DEVICES = ("auto", "host", "backend")


@dataclass(frozen=True)
class Arrays:
    """Where a task's values go: ``put(numpy array)`` -> the backend's array on ``label``'s device;
    ``context()`` wraps the whole computation (jax's 64-bit mode)."""

    label: str
    put: Callable[[np.ndarray], Any]
    context: Callable[[], ContextManager]


def _torch(gpu_only: bool) -> Arrays | None:
    import torch

    if not torch.cuda.is_available():
        if gpu_only:
            return None
        where = torch.device("cpu")
    else:
        where = torch.device("cuda", torch.cuda.current_device())
    return Arrays(f"torch:{where}", lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(where), contextlib.nullcontext)


def _jax(gpu_only: bool) -> Arrays | None:
    import jax

    first = jax.devices()[0]
    if gpu_only and first.platform == "cpu":
        return None

    def put(a: np.ndarray) -> Any:
        return jax.device_put(a, first)

    return Arrays(f"jax:{first.platform}:{first.id}", put, lambda: jax.enable_x64(True))


def arrays_for(choice: str, backend: str | None = None) -> Arrays | None:
    """The arrays a task's differentiation runs on, or None for host numpy (see the module).

    ``backend``: the Keras backend's name (default: this process's, ``keras.backend.backend()``
    where Keras is imported, else ``KERAS_BACKEND``).
    """
    if choice not in DEVICES:
        raise InputError(f"analysis.device must be one of {list(DEVICES)}, got {choice!r}")
    if choice == "host":
        return None
    if backend is None:  # the worker's Keras, without importing it only to ask
        keras = sys.modules.get("keras")
        backend = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    make = {"torch": _torch, "jax": _jax}.get(backend)
    if make is None:
        if choice == "auto":
            return None
        raise InputError(f"analysis.device: backend needs workers on KERAS_BACKEND=torch or jax; this worker runs {backend!r}: "
                         "set analysis.device: auto (or host), or start the workers with KERAS_BACKEND=torch")
    return make(gpu_only=choice == "auto")
