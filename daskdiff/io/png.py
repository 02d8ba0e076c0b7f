"""Storage layer: writing ``uint8`` RGB arrays as lossless PNG files, each atomically.

The one writer of every image file daskdiff makes (the stimulus generators' sets and movie
frames): :func:`write_images` writes ``(file name, image)`` pairs into a folder, each file through
:func:`daskdiff.io.atomic.atomic_write`, so a reader never sees a partial file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .atomic import atomic_write
from .images import as_rgb_uint8


def write_png(image: np.ndarray, path: Path) -> None:
    """Write one RGB ``uint8`` image durably and atomically (:func:`daskdiff.io.atomic.atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:
            Image.fromarray(image).save(file, format="PNG")

    atomic_write(path, write)


def write_images(
    out_dir: str | os.PathLike, named: Iterable[tuple[str, np.ndarray]]
) -> list[str]:
    """Create ``out_dir`` and write each ``(file name, image)`` as PNG; the absolute paths."""
    folder = Path(os.path.abspath(out_dir))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in named:
        path = folder / name
        write_png(as_rgb_uint8(image, what=name), path)
        written.append(str(path))
    return written
