"""Model layer: Keras's settings as Keras will read them, without importing Keras.

Importing Keras imports its backend (TensorFlow: ~1 GB and seconds), which a job's client does
not need once it knows the architecture (:mod:`daskdiff.model.architecture`). These functions
restate the rules of ``keras/src/backend/config.py`` (Keras 3) and defer to Keras itself when
it is already imported in the process, since then its answer is the one that holds.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT_BACKEND = "tensorflow"


def keras_home() -> Path:
    """Keras's folder: ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras`` when the home folder is
    not writable), as Keras decides it when first imported."""
    if "keras" in sys.modules:
        from keras.src.backend import config

        return Path(os.path.expanduser(config.keras_home()))
    if "KERAS_HOME" in os.environ:
        return Path(os.path.expanduser(os.environ["KERAS_HOME"]))
    base = os.path.expanduser("~")
    return Path("/tmp" if not os.access(base, os.W_OK) else base) / ".keras"


def backend_name() -> str:
    """The Keras backend this process runs (or will run once Keras is imported): a non-empty
    ``KERAS_BACKEND``, else the ``backend`` of ``keras.json`` in :func:`keras_home`, else
    ``'tensorflow'``. A ``keras.json`` that is not JSON is ignored, as Keras ignores it."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    try:
        with open(keras_home() / "keras.json") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return DEFAULT_BACKEND
    backend = config.get("backend", DEFAULT_BACKEND) if isinstance(config, dict) else DEFAULT_BACKEND
    return backend or DEFAULT_BACKEND


def package_version(package: str) -> str:
    """The installed version of ``package`` (from its metadata, without importing it); ``'unknown'``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
