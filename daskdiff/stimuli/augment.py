"""Stimuli layer: augmented copies of one image (random crops and flips), a low-diversity set."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from .common import check_int, check_prefix, center_square, resize_square, image_rng
from ..io.images import as_rgb_uint8
from ..io.png import write_images
from .photos import SAMPLE_PHOTOS, load_photo
from ..errors import InputError
from ..io.reading import read_head, seems_to_be


CROP_SCALE = (0.6, 1.0)
"""Range of crop side / shorter image side drawn (uniformly) by :func:`augmented_copies`."""


def _load_source(source: str | os.PathLike) -> np.ndarray:
    """A SAMPLE_PHOTOS name (a str) or an image file path, as RGB ``uint8``."""
    if isinstance(source, str) and source in SAMPLE_PHOTOS:
        return load_photo(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            f"source must be an image file path or a name from SAMPLE_PHOTOS, got {source!r}"
        )
    path = os.path.abspath(source)
    if not os.path.isfile(path):
        raise InputError(
            f"source {str(source)!r} is neither a name from SAMPLE_PHOTOS nor an existing file "
            f"(looked for {path!r}); valid names are {list(SAMPLE_PHOTOS)}"
        )
    import imageio.v3 as iio

    try:
        image = iio.imread(path, index=0)
    except (OSError, SyntaxError, EOFError) as error:
        raise InputError(f"source {path!r} is not an image imageio can read: it seems to be {seems_to_be(read_head(path))} "
                         f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    return as_rgb_uint8(image, what=f"source {path!r}")


def _random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random square crop (side = scale x shorter side) at a random position, maybe mirrored."""
    rows, cols = image.shape[:2]
    scale = rng.uniform(*CROP_SCALE)
    side = max(1, int(round(scale * min(rows, cols))))
    top = int(rng.integers(0, rows - side + 1))
    left = int(rng.integers(0, cols - side + 1))
    crop = image[top : top + side, left : left + side]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def augmented_copies(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    count: int = 8,
    size: int = 224,
    seed: int = 0,
    prefix: str = "variant",
) -> list[str]:
    """Write ``count`` random crops of one image: a deliberately low-diversity image set.

    Parameters
    ----------
    source : str or os.PathLike
        A name from :data:`SAMPLE_PHOTOS` (such as ``'chelsea'``), or the path of an image file
        (its first frame is used). A ``str`` equal to a photo name is taken as the name: write
        ``'./chelsea'`` for a file of that name.
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing.
    count : int, default 8
        Number of images (>= 1).
    size : int, default 224
        Side of each square output image in pixels (>= 1).
    seed : int, default 0
        Non-negative seed; see Notes.
    prefix : str, default 'variant'
        File-name stem: files are ``<prefix>-0000.png``, ``<prefix>-0001.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the files, image 0 first.

    Notes
    -----
    Image 0 is the largest centred square of the source, not mirrored. Image ``i >= 1`` draws,
    from ``rng = numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))``
    and in this order: ``scale = rng.uniform(0.6, 1.0)``; the crop side
    ``round(scale * min(rows, cols))``; its top row ``rng.integers(0, rows - side + 1)``; its
    left column ``rng.integers(0, cols - side + 1)``; and a left-right mirror if
    ``rng.random() < 0.5``. Every crop is resized to ``size`` x ``size`` with Pillow's bicubic
    filter. Image ``i`` does not depend on ``count``; the same arguments rewrite
    byte-identical files.
    """
    count = check_int("count", count, 1, "count=8")
    size = check_int("size", size, 1, "size=224")
    seed = check_int("seed", seed, 0, "seed=0")
    prefix = check_prefix(prefix)
    image = _load_source(source)

    def copies() -> Iterator[tuple[str, np.ndarray]]:
        for i in range(count):
            crop = center_square(image) if i == 0 else _random_crop(image, image_rng(seed, i))
            yield f"{prefix}-{i:04d}.png", resize_square(np.ascontiguousarray(crop), size)

    return write_images(out_dir, copies())
