"""Stimuli layer: the short animated GIF bundled inside scikit-image, written as a movie."""

from __future__ import annotations

import os

import numpy as np

from .common import center_square, check_int, check_prefix, resize_square
from .movie import load_movie, write_movie
from ..errors import InputError

SKIMAGE_GIF = "no_time_for_that_tiny.gif"
"""File name of the animated GIF in ``skimage.data.data_dir`` (24 frames of 25 x 14 pixels, 70 ms each)."""

SKIMAGE_GIF_FRAMES = 24
"""Frames of :data:`SKIMAGE_GIF`: :func:`skimage_gif` writes ``SKIMAGE_GIF_FRAMES * loops``."""


def skimage_gif_path() -> str:
    """Absolute path of :data:`SKIMAGE_GIF` inside the installed scikit-image (no download)."""
    import skimage.data

    path = os.path.join(skimage.data.data_dir, SKIMAGE_GIF)
    if not os.path.isfile(path):
        import skimage

        raise InputError(
            f"this scikit-image ({skimage.__version__}) does not ship {SKIMAGE_GIF} in {skimage.data.data_dir}; "
            f"use generate: frames with a GIF of your own, or install scikit-image >= 0.19"
        )
    return path


def skimage_gif(
    out_dir: str | os.PathLike,
    *,
    size: int | None = 224,
    loops: int = 1,
    prefix: str = "gif",
) -> list[str]:
    """Write scikit-image's bundled animated GIF as a movie at its own frame rate.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing. One movie per folder.
    size : int or None, default 224
        Each frame's largest centred square (the GIF is 25 rows by 14 columns: rows
        5..18) resized to ``size`` x ``size`` with Pillow's bicubic filter, as
        :func:`~daskdiff.stimuli.photos.sample_photos` does; None keeps the native 25 x 14.
    loops : int, default 1
        How many times to play it (>= 1); the GIF itself loops forever, and one loop lasts
        only 1.68 s.
    prefix : str, default 'gif'
        File-name stem: frames are ``<prefix>-000000.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the frames, in time order (``24 * loops`` of them).

    Notes
    -----
    The file is :data:`SKIMAGE_GIF` (``skimage.data.data_dir``), installed with scikit-image:
    nothing is downloaded. Its frames are read with imageio (Pillow), as RGB; their rate
    comes from the durations in the file (70 ms each: ``fps`` = 1000 / 70 = 14.2857...), which
    ``movie.json`` records. Nothing is random.
    """
    if size is not None:
        size = check_int("size", size, 1, "size=224 or size=None (native 25 x 14)")
    loops = check_int("loops", loops, 1, "loops=3")
    prefix = check_prefix(prefix)
    path = skimage_gif_path()
    movie = load_movie(path)
    frames = [f if size is None else resize_square(np.ascontiguousarray(center_square(f)), size) for f in movie.frames]
    parameters = dict(size=size, loops=loops)
    return write_movie(out_dir, frames * loops, fps=movie.fps, prefix=prefix, generator="skimage_gif",
                       parameters=parameters, extra={"source": {**movie.source, "file": SKIMAGE_GIF}})
