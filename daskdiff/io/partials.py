"""Storage layer: partial results of differentiation tasks (small ``.npz`` files, never pickled)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .atomic import atomic_write



def load_partial(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a partial result (never with pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class PartialResult(NamedTuple):
    """Where one differentiation task's partial result is, and what it holds: repeats
    ``start:stop`` of one (image set, substrate, n_units label, layer)."""

    image_set: str
    substrate: str
    n_units: str
    layer: str
    start: int
    stop: int
    path: Path


def write_partial(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write a partial result atomically as an uncompressed ``.npz`` (no object arrays)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
