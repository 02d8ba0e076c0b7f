"""Stimuli layer: a movie of slow pans and zooms over a photograph bundled with scikit-image."""

from __future__ import annotations

import math
import os
from typing import Iterator, Literal, Sequence

import numpy as np
from PIL import Image

from .common import check_choice, check_int, check_prefix
from .movie import check_fps, check_length, write_movie
from .photos import SAMPLE_PHOTOS, load_photo
from ..errors import InputError

Easing = Literal["cosine", "linear"]

EASINGS = ("cosine", "linear")
"""How the window moves between ``start`` and ``end``: eased in and out, or at constant speed."""


def _check_window(name: str, window: object) -> tuple[float, float, float]:
    example = f"{name}=[0.5, 0.35, 0.6] (centre row, centre column, side: fractions)"
    items = list(window) if isinstance(window, (list, tuple, np.ndarray)) else []
    numbers = [
        float(v) for v in items
        if not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
    ]
    if len(items) != 3 or len(numbers) != 3 or numbers[2] <= 0:
        raise InputError(
            f"{name} must be three finite numbers [row, column, side] (side > 0), got {window!r}; "
            f"for example {example}"
        )
    return numbers[0], numbers[1], numbers[2]


def _box(window: tuple[float, float, float], rows: int, cols: int) -> tuple[float, float, float, float]:
    """Pillow box ``(left, top, right, bottom)`` in pixel-edge coordinates of a window."""
    row, col, side = window
    half = side * min(rows, cols) / 2
    return (col * cols - half, row * rows - half, col * cols + half, row * rows + half)


def _inside(name: str, window: tuple[float, float, float], rows: int, cols: int, photo: str) -> None:
    left, top, right, bottom = _box(window, rows, cols)
    eps = 1e-9 * max(rows, cols)
    if left < -eps or top < -eps or right > cols + eps or bottom > rows + eps:
        raise InputError(
            f"{name}={list(window)} puts the window at columns {left:.1f}..{right:.1f}, rows "
            f"{top:.1f}..{bottom:.1f}, outside photo {photo!r} ({rows} x {cols}); move its "
            f"centre inwards or make its side (a fraction of the shorter side, {min(rows, cols)} px) smaller"
        )


def _eased(u: float, easing: str) -> float:
    return u if easing == "linear" else (1 - math.cos(math.pi * u)) / 2


def window_at(k: int, n_frames: int, start: Sequence[float], end: Sequence[float], easing: str = "cosine") -> tuple[float, float, float]:
    """The crop window ``(row, col, side)`` of frame ``k`` of ``n_frames`` (see :func:`photo_movie`)."""
    e = _eased(k / (n_frames - 1) if n_frames > 1 else 0.0, easing)
    row = start[0] + (end[0] - start[0]) * e
    col = start[1] + (end[1] - start[1]) * e
    side = start[2] * (end[2] / start[2]) ** e
    return row, col, side


def photo_movie(
    out_dir: str | os.PathLike,
    *,
    photo: str = "astronaut",
    start: Sequence[float] = (0.5, 0.35, 0.6),
    end: Sequence[float] = (0.5, 0.65, 0.45),
    fps: float = 30.0,
    duration: float | None = None,
    n_frames: int | None = None,
    size: int = 224,
    easing: Easing = "cosine",
    prefix: str = "frame",
) -> list[str]:
    """Write a movie of a crop window gliding over a photograph: a slow pan and/or zoom.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing. One movie per folder.
    photo : str, default 'astronaut'
        A name from :data:`~daskdiff.stimuli.photos.SAMPLE_PHOTOS` (``chelsea``, ``coffee``, ...).
    start, end : [row, col, side]
        The square crop window of the first and of the last frame: its centre's row as a
        fraction of the photo's height, its centre's column as a fraction of its width, and its
        side as a fraction of the photo's shorter side. Both must lie inside the photo (then
        every frame's window does). The default pans left to right while zooming in a little.
        ``start == end`` gives a still movie.
    fps : float, default 30
        Frames per second.
    duration, n_frames : optional
        Length in seconds (``duration * fps`` a whole number) or in frames; at most one.
        Default: 2 seconds.
    size : int, default 224
        Side of the square frames in pixels.
    easing : {'cosine', 'linear'}, default 'cosine'
        ``cosine`` starts and stops the motion smoothly, ``linear`` moves at constant speed.
    prefix : str, default 'frame'
        File-name stem: frames are ``<prefix>-000000.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the frames, in time order.

    Notes
    -----
    Frame ``k`` of ``n`` takes ``u = k / (n - 1)`` (0 when ``n == 1``), eased to
    ``e = (1 - cos(pi u)) / 2`` (or ``e = u``). Its window's centre moves linearly,
    ``start + (end - start) * e``, and its side geometrically,
    ``side = start_side * (end_side / start_side) ** e``, so a zoom has a constant rate. With
    the photo's ``rows`` x ``cols`` and ``s = side * min(rows, cols)``, the window is the
    box ``(col * cols - s / 2, row * rows - s / 2, col * cols + s / 2, row * rows + s / 2)``
    (left, top, right, bottom, in pixel-edge coordinates: 0 is the photo's left edge), resampled
    to ``size`` x ``size`` by Pillow's ``Image.resize(..., BICUBIC, box=...)``, which
    takes sub-pixel boxes and antialiases when shrinking, so the motion is smooth, not in
    whole-pixel steps. A box of exactly ``size`` whole pixels is an exact crop. Nothing is random.
    """
    if photo not in SAMPLE_PHOTOS:
        raise InputError(f"photo must be a name from SAMPLE_PHOTOS, got {photo!r}; valid names are {list(SAMPLE_PHOTOS)}")
    start, end = _check_window("start", start), _check_window("end", end)
    fps = check_fps(fps)
    count = check_length(fps, duration, n_frames, default_duration=2.0)
    size = check_int("size", size, 1, "size=224")
    easing = check_choice("easing", easing, EASINGS)
    prefix = check_prefix(prefix)
    image = load_photo(photo)
    rows, cols = image.shape[:2]
    _inside("start", start, rows, cols, photo)
    _inside("end", end, rows, cols, photo)
    source = Image.fromarray(image)

    def frames() -> Iterator[np.ndarray]:
        for k in range(count):
            box = _box(window_at(k, count, start, end, easing), rows, cols)
            yield np.asarray(source.resize((size, size), Image.Resampling.BICUBIC, box=box))

    parameters = dict(photo=photo, start=list(start), end=list(end), fps=fps, n_frames=count, size=size, easing=easing)
    return write_movie(out_dir, frames(), fps=fps, prefix=prefix, generator="photo_movie",
                       parameters=parameters, extra={"photo_size": [rows, cols]})
