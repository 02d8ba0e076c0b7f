"""Stimuli layer: white-noise images (uniform or Gaussian grey levels per pixel and channel)."""

from __future__ import annotations

import os
from typing import Callable, Literal

import numpy as np

from .common import check_choice, check_int, check_prefix, image_rng
from ..io.png import write_images


NoiseKind = Literal["uniform", "gaussian"]


GAUSSIAN_MEAN = 127.5
"""Mean of the ``gaussian`` noise kind, in 8-bit grey levels."""


GAUSSIAN_STD = 50.0
"""Standard deviation of the ``gaussian`` noise kind, in 8-bit grey levels (before clipping)."""


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    values = rng.normal(GAUSSIAN_MEAN, GAUSSIAN_STD, size=shape)
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


NOISE_KINDS: dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "uniform": _uniform_noise,
    "gaussian": _gaussian_noise,
}
"""Noise kind name -> function drawing a ``uint8`` array of a shape from a Generator."""


def white_noise(
    out_dir: str | os.PathLike,
    *,
    count: int = 43,
    size: int = 224,
    seed: int = 0,
    kind: NoiseKind = "uniform",
    prefix: str = "noise",
) -> list[str]:
    """Write ``count`` RGB white-noise images, each ``size`` x ``size``, as PNG files.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing.
    count : int, default 43
        Number of images (>= 1).
    size : int, default 224
        Side of each square image in pixels (>= 1).
    seed : int, default 0
        Non-negative seed; see Notes.
    kind : {'uniform', 'gaussian'}, default 'uniform'
        Distribution of each pixel channel; see Notes.
    prefix : str, default 'noise'
        File-name stem: files are ``<prefix>-0000.png``, ``<prefix>-0001.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the files, image 0 first.

    Notes
    -----
    Image ``i`` is drawn from ``rng = numpy.random.default_rng(numpy.random.SeedSequence(seed,
    spawn_key=(i,)))``, one call for the whole ``(size, size, 3)`` array (rows, columns, RGB):

    - ``'uniform'``: ``rng.integers(0, 256, size=(size, size, 3), dtype=numpy.uint8)``, every
      channel of every pixel independent and uniform on the integers 0..255.
    - ``'gaussian'``: ``numpy.rint(numpy.clip(rng.normal(127.5, 50.0, size=(size, size, 3)),
      0, 255)).astype(numpy.uint8)``: normal with mean 127.5 and standard deviation 50,
      clipped to 0..255 (about 1.1% of values) and rounded half to even.

    Image ``i`` therefore does not depend on ``count``, and the same arguments rewrite
    byte-identical files. The files are PNG, hence lossless: reading one back gives exactly the
    drawn array. Noise saved as JPEG is not white: JPEG quantises each 8 x 8 block's
    cosine-transform coefficients, which adds block structure and correlations between
    neighbouring pixels, and so changes the activations and their differentiation.

    Examples
    --------
    >>> paths = white_noise("stimuli/noise", count=3, size=8, seed=1)  # doctest: +SKIP
    """
    count = check_int("count", count, 1, "count=43")
    size = check_int("size", size, 1, "size=224")
    seed = check_int("seed", seed, 0, "seed=0")
    draw = NOISE_KINDS[check_choice("kind", kind, NOISE_KINDS)]
    prefix = check_prefix(prefix)
    shape = (size, size, 3)
    images = ((f"{prefix}-{i:04d}.png", draw(image_rng(seed, i), shape)) for i in range(count))
    return write_images(out_dir, images)
