"""Stimuli layer: frames of a movie, every k-th or nearest to given times."""

from __future__ import annotations

import itertools
import os
from fractions import Fraction
from typing import Iterable, Iterator

import numpy as np

from .common import check_int, check_prefix
from ..io.png import write_images
from ..errors import InputError
from ..io.reading import VIDEO_CONTAINERS, NotReadableError, read_head, seems_to_be


def frame_durations(reader: object, path: str) -> Iterable[Fraction]:
    """Seconds each frame is shown, in order, from the file's metadata (exact fractions).

    Pillow (GIF, APNG, WebP) gives every frame's duration in milliseconds; other plugins
    (ffmpeg, pyav) a constant frame rate ``fps``, returned as an endless constant iterator.
    """
    from imageio.plugins.pillow import PillowPlugin

    if isinstance(reader, PillowPlugin):
        n_frames = reader.properties().n_images or 1
        milliseconds = [reader.metadata(index=k).get("duration") for k in range(n_frames)]
        if all(isinstance(ms, (int, float)) and 0 < ms < float("inf") for ms in milliseconds):
            return [Fraction(ms) / 1000 for ms in milliseconds]
    else:
        rate = reader.metadata().get("fps")
        if isinstance(rate, (int, float)) and 0 < rate < float("inf"):
            return itertools.repeat(1 / Fraction(rate))
    raise InputError(
        f"{path!r} has no frame rate in its metadata (no positive frame durations or 'fps'), "
        f"so fps= cannot be used on it; use every=N to keep every N-th frame instead"
    )


def open_movie(path: str) -> object:
    """An imageio v3 reader of a movie file (a context manager).

    Raises
    ------
    InputError
        ``path`` is not a regular file (:func:`daskdiff.io.reading.open_regular`), or no installed
        imageio plugin reads it: the message says what the file seems to be from its first bytes
        (:func:`daskdiff.io.reading.seems_to_be`: an HTML page, a text file, ...) and suggests
        ``imageio-ffmpeg`` only for a video that needs it (MP4, AVI, MKV/WebM, MPEG, ...).
    """
    try:
        kind = seems_to_be(read_head(path))
    except NotReadableError as error:
        raise InputError(f"cannot read movie file {path!r}: {error.reason}") from None
    try:
        import imageio.v3 as iio

        return iio.imopen(path, "r")
    except OSError as error:
        said = str(error).splitlines()[0] if str(error) else type(error).__name__
    if kind.endswith("image"):
        raise InputError(f"cannot read movie file {path!r}: a damaged or unsupported {kind.split(' ', 1)[1]} ({said})")
    if kind in VIDEO_CONTAINERS:
        raise InputError(f"{path!r} is {kind}, which no installed imageio plugin reads: run 'pip install imageio-ffmpeg'")
    raise InputError(
        f"{path!r} is not a movie file: it seems to be {kind}; give an animated GIF, APNG or WebP, a video file, "
        f"a .npy array or a folder of frames"
    )


def _with_last_flag(items: Iterable) -> Iterator[tuple[object, bool]]:
    """Each item with whether it is the last one (looks one item ahead)."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


def _nearest_to_times(
    frames: Iterable[np.ndarray], durations: Iterable[Fraction], fps: Fraction
) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, frame)`` of each frame that is the nearest one to a time ``j / fps``.

    Frame ``k`` starts at the sum of the durations before it. A time ``t = j / fps`` within the
    movie (``t`` < end of the last frame) picks the frame whose start is nearest to ``t``;
    an exact tie goes to the earlier frame. A frame picked by several times is yielded once.
    """
    start = Fraction(0)
    j = 0  # the next time j / fps not yet assigned to a frame
    for (k, (frame, duration)), last in _with_last_flag(enumerate(zip(frames, durations))):
        end = start + duration
        midpoint = start + duration / 2  # halfway to the next frame's start
        first_time = j
        while j / fps <= midpoint or (last and j / fps < end):
            j += 1
        if j > first_time:
            yield k, frame
        start = end


def movie_frames(
    movie: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    every: int | None = None,
    fps: float | None = None,
    prefix: str = "frame",
) -> list[str]:
    """Write frames of a video or animated image as RGB PNG files.

    Parameters
    ----------
    movie : str or os.PathLike
        A file imageio can read as a sequence of frames: animated GIF, APNG or WebP through
        Pillow; MP4, AVI, MOV, ... need the ``imageio-ffmpeg`` plugin
        (``pip install imageio-ffmpeg``).
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing.
    every : int, optional
        Keep frames 0, ``every``, ``2 * every``, ... (an integer >= 1).
    fps : float, optional
        Keep the frames nearest in time to ``t = 0, 1/fps, 2/fps, ...`` (see Notes). Exactly
        one of ``every`` and ``fps`` must be given.
    prefix : str, default 'frame'
        File-name stem: files are ``<prefix>-NNNNNN.png`` where ``NNNNNN`` is the frame's index
        in the source (6 digits, 0 first), so a frame has the same name whatever ``every`` is.

    Returns
    -------
    list of str
        Absolute paths of the files, in frame order.

    Notes
    -----
    Frame times come from the file's metadata: with Pillow, each frame's own duration (so
    animations with uneven timing are handled); otherwise the constant ``fps`` the ffmpeg or
    pyav plugin reports. Frame ``k`` starts at the sum of the durations of frames ``0..k-1``.
    Each time ``t = j / fps`` before the end of the last frame selects the frame whose start is
    nearest to ``t``, an exact tie going to the earlier frame; a frame selected several times
    (``fps`` above the movie's own rate) is written once. Times are compared as exact fractions.
    For a constant rate ``r`` this keeps frames ``round(j * r / fps)``, e.g. frames
    0, 2, 4, ... for ``fps=5`` on a 10 frames-per-second movie.

    Grey frames are repeated into three channels, alpha is dropped, and other dtypes are mapped
    to ``uint8`` as :func:`as_rgb_uint8` describes.
    """
    if (every is None) == (fps is None):
        raise InputError(
            f"give exactly one of every= and fps=, got every={every!r} and fps={fps!r}; "
            f"for example every=30 (keep every 30th frame) or fps=1 (one frame per second)"
        )
    if every is not None:
        every = check_int("every", every, 1, "every=30")
    elif (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.integer, np.floating))
        or not 0 < fps < float("inf")
    ):
        raise InputError(f"fps must be a positive finite number, got {fps!r}; for example fps=1")
    prefix = check_prefix(prefix)
    if not isinstance(movie, (str, os.PathLike)):
        raise InputError(f"movie must be a file path, got {movie!r}")
    path = os.path.abspath(movie)
    if not os.path.isfile(path):
        raise InputError(f"movie file not found: {path!r} (from movie={str(movie)!r})")

    with open_movie(path) as reader:
        frames = reader.iter()
        if every is not None:
            kept = ((k, frame) for k, frame in enumerate(frames) if k % every == 0)
        else:
            kept = _nearest_to_times(frames, frame_durations(reader, path), Fraction(fps))
        images = ((f"{prefix}-{k:06d}.png", frame) for k, frame in kept)
        return write_images(out_dir, images)
