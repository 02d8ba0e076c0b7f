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
    """The result of one differentiation task: one (image set, substrate, layer), every
    ``n_units`` (axis 0 of each array) and repeat (axis 1); see
    :func:`daskdiff.pipeline.tasks.run_diff_task` for the arrays."""

    image_set: str
    substrate: str
    layer: str
    arrays: dict[str, np.ndarray]


def write_partial(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write a partial result atomically as an uncompressed ``.npz`` (no object arrays)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
