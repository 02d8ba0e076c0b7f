"""Shared fixtures: a tiny Keras model saved to a file, small generated image folders."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import logging

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _daskdiff_logger_restored():
    """``daskdiff.cli.main`` run in this process configures the ``daskdiff`` logger (a stdout
    handler, a level); each test starts from, and leaves, the library's unconfigured logger."""
    logger = logging.getLogger("daskdiff")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:], logger.level = handlers, level


def build_tiny_model(seed: int = 0):
    """A small conv net with VGG-like layer kinds (conv, pool, flatten, dense, predictions).

    Weights are set from a numpy Generator (not Keras's global RNG) so the model is the same
    in every process.
    """
    import keras

    inputs = keras.Input((32, 32, 3), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(12, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        w.assign((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype("float32") + (0.05 if len(shape) == 1 else 0))
    return model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_tiny_model().save(path)
    return str(path)


def write_images(folder, count, *, seed, size=(40, 36), kind="noise"):
    """Write ``count`` RGB PNGs of random content; returns the sorted paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        if kind == "noise":
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        else:  # smooth gradients with a random tint: low diversity
            yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
            base = (xx * 255 // size[0]).astype(np.uint8)
            arr = np.stack([base, base[::-1], np.full_like(base, rng.integers(0, 40))], axis=-1)
        p = folder / f"img-{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def image_folders(tmp_path):
    """Two small image sets on disk: 'noisy' (7 images) and 'smooth' (6 images)."""
    return {
        "noisy": write_images(tmp_path / "noisy", 7, seed=1),
        "smooth": write_images(tmp_path / "smooth", 6, seed=2, kind="smooth"),
    }
