"""Generated image sets, written as lossless PNG files: noise, bundled photographs, crops, frames.

Two more kinds use a model and live in their own modules, imported only when called:
``select`` (:func:`selected_images`: copies, with their own names and formats, of the images a
model puts in given classes; :mod:`daskdiff.classify`) and ``adversarial``
(:func:`adversarial_images`: ``<source stem>.png``; :mod:`daskdiff.attack`). Each also writes
a CSV table beside its images.

Every writer takes an output folder and returns the absolute paths of the files it wrote, in
order. The conventions shared by all of them:

- Images are RGB, 8 bits per channel: arrays of shape ``(rows, cols, 3)`` and dtype ``uint8``.
  Grey images are repeated into the three channels; an alpha channel is dropped (not composited).
- Files are PNG, which is lossless: reading a file back gives exactly the array that was drawn.
- Names are deterministic: ``<prefix>-0000.png``, ``<prefix>-0001.png``, ... in output order,
  except :func:`movie_frames`, whose names carry the source frame index (``<prefix>-000030.png``).
- Each file is written to a temporary name in the same folder (``.<name>.tmp-<pid>``) and then
  renamed over its final name with :func:`os.replace`, so a reader never sees a partial file.
  Files in the folder that the call does not write are left alone.
- Randomness comes only from the ``seed`` argument: image ``i`` draws from
  ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))`` (the ``i``-th
  child of ``SeedSequence(seed).spawn``), so image ``i`` is the same whatever ``count`` is, and
  the same call rewrites byte-identical files.

:func:`generate` dispatches on a kind name (``GENERATORS``) for job specs.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import imageio.v3 as iio
import numpy as np
import skimage.data
from imageio.plugins.pillow import PillowPlugin
from PIL import Image

NoiseKind = Literal["uniform", "gaussian"]
GeneratorKind = Literal["noise", "photos", "augment", "frames", "select", "adversarial"]

GAUSSIAN_MEAN = 127.5
"""Mean of the ``gaussian`` noise kind, in 8-bit grey levels."""

GAUSSIAN_STD = 50.0
"""Standard deviation of the ``gaussian`` noise kind, in 8-bit grey levels (before clipping)."""

DEFAULT_PHOTO_COUNT = 8
"""How many photographs :func:`sample_photos` writes when given neither ``count`` nor ``names``."""

CROP_SCALE = (0.6, 1.0)
"""Range of crop side / shorter image side drawn (uniformly) by :func:`augmented_copies`."""

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r}; for example {example}"
        )
    return int(value)


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"prefix must be a file-name stem of letters, digits, '.', '_' or '-' that starts "
            f"with a letter or digit, got {prefix!r}; for example prefix='noise'"
        )
    return prefix


def _check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Pixels and files
# --------------------------------------------------------------------------------------------


def as_rgb_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An image as a C-contiguous ``(rows, cols, 3)`` ``uint8`` RGB array.

    Parameters
    ----------
    image : array_like
        ``(rows, cols)`` grey, ``(rows, cols, 1)`` grey, ``(rows, cols, 2)`` grey + alpha,
        ``(rows, cols, 3)`` RGB or ``(rows, cols, 4)`` RGBA.
    what : str
        How to name the image in error messages.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` ``uint8``.

    Notes
    -----
    Grey is repeated into the three channels; alpha is dropped, not composited over a
    background. Values are mapped to 0..255 by dtype: ``uint8`` unchanged; ``bool`` to 0/255;
    other unsigned integers scaled by ``255 / dtype max`` and rounded (``uint16 / 257``);
    floats must lie in [0, 1] and are multiplied by 255 and rounded (half to even).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., np.newaxis], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"{what} has shape {np.shape(image)}; expected (rows, cols) grey, (rows, cols, 3) "
            f"RGB or (rows, cols, 4) RGBA"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype != np.uint8 and np.issubdtype(array.dtype, np.unsignedinteger):
        scale = 255.0 / np.iinfo(array.dtype).max
        array = np.rint(array * scale).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        n_bad = int(np.count_nonzero(~((array >= 0) & (array <= 1))))  # NaN counts as bad
        if n_bad:
            raise ValueError(
                f"{what} is floating point with {n_bad} values outside [0, 1] or NaN; "
                f"rescale it to [0, 1] or convert it to uint8 first"
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(
            f"{what} has dtype {array.dtype}; expected uint8, another unsigned integer type, "
            f"bool, or floats in [0, 1]"
        )
    return np.ascontiguousarray(array)


def _center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image (the extra row/column, if odd, is cut at the end)."""
    rows, cols = image.shape[:2]
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    return image[top : top + side, left : left + side]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` resize of a ``uint8`` RGB image with Pillow's bicubic filter."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def _write_png(image: np.ndarray, path: Path) -> None:
    """Write one RGB ``uint8`` image durably and atomically (:func:`daskdiff.storage.atomic_write`)."""
    from .storage import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:
            Image.fromarray(image).save(file, format="PNG")

    atomic_write(path, write)


def _write_images(
    out_dir: str | os.PathLike, named: Iterable[tuple[str, np.ndarray]]
) -> list[str]:
    """Create ``out_dir`` and write each ``(file name, image)`` as PNG; the absolute paths."""
    folder = Path(os.path.abspath(out_dir))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in named:
        path = folder / name
        _write_png(as_rgb_uint8(image, what=name), path)
        written.append(str(path))
    return written


def _rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: child ``index`` of ``SeedSequence(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


# --------------------------------------------------------------------------------------------
# White noise
# --------------------------------------------------------------------------------------------


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
    count = _check_int("count", count, 1, "count=43")
    size = _check_int("size", size, 1, "size=224")
    seed = _check_int("seed", seed, 0, "seed=0")
    draw = NOISE_KINDS[_check_choice("kind", kind, NOISE_KINDS)]
    prefix = _check_prefix(prefix)
    shape = (size, size, 3)
    images = ((f"{prefix}-{i:04d}.png", draw(_rng(seed, i), shape)) for i in range(count))
    return _write_images(out_dir, images)


# --------------------------------------------------------------------------------------------
# Photographs bundled with scikit-image
# --------------------------------------------------------------------------------------------


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    return getattr(skimage.data, name)


def _motorcycle_left() -> np.ndarray:
    return skimage.data.stereo_motorcycle()[0]


_PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    # colour, most varied first
    "astronaut": _skimage_loader("astronaut"),
    "chelsea": _skimage_loader("chelsea"),
    "coffee": _skimage_loader("coffee"),
    "rocket": _skimage_loader("rocket"),
    "motorcycle_left": _motorcycle_left,
    "immunohistochemistry": _skimage_loader("immunohistochemistry"),
    "hubble_deep_field": _skimage_loader("hubble_deep_field"),
    "retina": _skimage_loader("retina"),
    # grey
    "camera": _skimage_loader("camera"),
    "moon": _skimage_loader("moon"),
    "coins": _skimage_loader("coins"),
    "clock": _skimage_loader("clock"),
    "grass": _skimage_loader("grass"),
    "gravel": _skimage_loader("gravel"),
    "brick": _skimage_loader("brick"),
    "microaneurysms": _skimage_loader("microaneurysms"),
}

SAMPLE_PHOTOS: tuple[str, ...] = tuple(_PHOTO_LOADERS)
"""Natural photographs shipped inside scikit-image's package (no download), colour ones first.

The first eight are colour and varied in content (portrait, cat, cup, rocket launch, motorcycle,
micrograph, deep-sky field, retina); the rest are grey. Each loads from the installed package
with no network access and without the optional ``pooch``. ``'motorcycle_left'`` is the left
image of ``skimage.data.stereo_motorcycle()``; every other name is the ``skimage.data``
function of that name. Left out: synthetic or non-photographic images (``text``, ``page``,
``logo``, ``checkerboard``, ``colorwheel``, the binary ``horse``, ``cell``, a holographic phase
image), duplicates (``cat`` is ``chelsea``; ``motorcycle_right``) and data sets that
scikit-image downloads on first use.
"""


def load_photo(name: str) -> np.ndarray:
    """One of :data:`SAMPLE_PHOTOS` as a ``(rows, cols, 3)`` ``uint8`` RGB array, native size.

    Parameters
    ----------
    name : str
        A name in :data:`SAMPLE_PHOTOS`.

    Returns
    -------
    numpy.ndarray
        The photograph; grey ones repeated into three channels (see :func:`as_rgb_uint8`).
    """
    if name not in _PHOTO_LOADERS:
        raise ValueError(f"unknown photo {name!r}; valid names are {list(SAMPLE_PHOTOS)}")
    return as_rgb_uint8(_PHOTO_LOADERS[name](), what=f"photo {name!r}")


def sample_photos(
    out_dir: str | os.PathLike,
    *,
    count: int | None = None,
    names: Iterable[str] | None = None,
    size: int | None = None,
    prefix: str = "photo",
) -> list[str]:
    """Write photographs bundled with scikit-image as RGB PNG files.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing.
    count : int, optional
        Write the first ``count`` names of :data:`SAMPLE_PHOTOS` (1 to
        ``len(SAMPLE_PHOTOS)``). Defaults to ``DEFAULT_PHOTO_COUNT`` (8, the colour photographs)
        when ``names`` is not given, else to ``len(names)``; giving both with
        ``count != len(names)`` is an error.
    names : iterable of str, optional
        Distinct names from :data:`SAMPLE_PHOTOS`, written in the given order.
    size : int, optional
        If given, each photograph is centre-cropped to its largest square and resized to
        ``size`` x ``size`` with Pillow's bicubic filter; if None, the native size is kept (so
        sizes differ between files).
    prefix : str, default 'photo'
        File-name stem: files are ``<prefix>-0000.png``, ``<prefix>-0001.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the files, in the order of the names.

    Notes
    -----
    Grey photographs are repeated into three channels and alpha is dropped, so every file is
    8-bit RGB. With ``size=None`` the pixels are exactly those scikit-image returns. Nothing is
    random and nothing is downloaded.
    """
    if names is None:
        count = DEFAULT_PHOTO_COUNT if count is None else count
        count = _check_int("count", count, 1, f"count={DEFAULT_PHOTO_COUNT}")
        if count > len(SAMPLE_PHOTOS):
            raise ValueError(
                f"count must be at most {len(SAMPLE_PHOTOS)} (the number of SAMPLE_PHOTOS), "
                f"got {count}; pass names=... to choose photographs, or a count <= "
                f"{len(SAMPLE_PHOTOS)}"
            )
        chosen = list(SAMPLE_PHOTOS[:count])
    else:
        chosen = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in chosen if name not in _PHOTO_LOADERS]
        if unknown or not chosen:
            raise ValueError(
                f"names must be a non-empty list of names from SAMPLE_PHOTOS, got unknown "
                f"{unknown or chosen!r}; valid names are {list(SAMPLE_PHOTOS)}"
            )
        repeated = sorted({name for name in chosen if chosen.count(name) > 1})
        if repeated:
            raise ValueError(f"names must be distinct, got {repeated} more than once")
        if count is not None and count != len(chosen):
            raise ValueError(
                f"count={count!r} disagrees with the {len(chosen)} names given; "
                f"leave count out when passing names"
            )
    if size is not None:
        size = _check_int("size", size, 1, "size=224 or size=None (native size)")
    prefix = _check_prefix(prefix)

    def photos() -> Iterator[tuple[str, np.ndarray]]:
        for i, name in enumerate(chosen):
            image = load_photo(name)
            if size is not None:
                image = _resize(_center_square(image), size)
            yield f"{prefix}-{i:04d}.png", image

    return _write_images(out_dir, photos())


# --------------------------------------------------------------------------------------------
# Augmented copies of one image
# --------------------------------------------------------------------------------------------


def _load_source(source: str | os.PathLike) -> np.ndarray:
    """A SAMPLE_PHOTOS name (a str) or an image file path, as RGB ``uint8``."""
    if isinstance(source, str) and source in _PHOTO_LOADERS:
        return load_photo(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"source must be an image file path or a name from SAMPLE_PHOTOS, got {source!r}"
        )
    path = os.path.abspath(source)
    if not os.path.isfile(path):
        raise ValueError(
            f"source {str(source)!r} is neither a name from SAMPLE_PHOTOS nor an existing file "
            f"(looked for {path!r}); valid names are {list(SAMPLE_PHOTOS)}"
        )
    return as_rgb_uint8(iio.imread(path, index=0), what=f"source {path!r}")


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
    count = _check_int("count", count, 1, "count=8")
    size = _check_int("size", size, 1, "size=224")
    seed = _check_int("seed", seed, 0, "seed=0")
    prefix = _check_prefix(prefix)
    image = _load_source(source)

    def copies() -> Iterator[tuple[str, np.ndarray]]:
        for i in range(count):
            crop = _center_square(image) if i == 0 else _random_crop(image, _rng(seed, i))
            yield f"{prefix}-{i:04d}.png", _resize(np.ascontiguousarray(crop), size)

    return _write_images(out_dir, copies())


# --------------------------------------------------------------------------------------------
# Frames of a movie
# --------------------------------------------------------------------------------------------


def _frame_durations(reader: object, path: str) -> Iterable[Fraction]:
    """Seconds each frame is shown, in order, from the file's metadata (exact fractions).

    Pillow (GIF, APNG, WebP) gives every frame's duration in milliseconds; other plugins
    (ffmpeg, pyav) a constant frame rate ``fps``, returned as an endless constant iterator.
    """
    if isinstance(reader, PillowPlugin):
        n_frames = reader.properties().n_images or 1
        milliseconds = [reader.metadata(index=k).get("duration") for k in range(n_frames)]
        if all(isinstance(ms, (int, float)) and 0 < ms < float("inf") for ms in milliseconds):
            return [Fraction(ms) / 1000 for ms in milliseconds]
    else:
        rate = reader.metadata().get("fps")
        if isinstance(rate, (int, float)) and 0 < rate < float("inf"):
            return itertools.repeat(1 / Fraction(rate))
    raise ValueError(
        f"{path!r} has no frame rate in its metadata (no positive frame durations or 'fps'), "
        f"so fps= cannot be used on it; use every=N to keep every N-th frame instead"
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
        raise ValueError(
            f"give exactly one of every= and fps=, got every={every!r} and fps={fps!r}; "
            f"for example every=30 (keep every 30th frame) or fps=1 (one frame per second)"
        )
    if every is not None:
        every = _check_int("every", every, 1, "every=30")
    elif (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.integer, np.floating))
        or not 0 < fps < float("inf")
    ):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}; for example fps=1")
    prefix = _check_prefix(prefix)
    if not isinstance(movie, (str, os.PathLike)):
        raise ValueError(f"movie must be a file path, got {movie!r}")
    path = os.path.abspath(movie)
    if not os.path.isfile(path):
        raise ValueError(f"movie file not found: {path!r} (from movie={str(movie)!r})")

    try:
        reader = iio.imopen(path, "r")
    except OSError as error:
        raise ValueError(
            f"no installed imageio plugin can read {path!r}; for video files (mp4, avi, mov, "
            f"...) run 'pip install imageio-ffmpeg'. imageio said: {error}"
        ) from error
    with reader:
        frames = reader.iter()
        if every is not None:
            kept = ((k, frame) for k, frame in enumerate(frames) if k % every == 0)
        else:
            kept = _nearest_to_times(frames, _frame_durations(reader, path), Fraction(fps))
        images = ((f"{prefix}-{k:06d}.png", frame) for k, frame in kept)
        return _write_images(out_dir, images)


# --------------------------------------------------------------------------------------------
# Sets made with a model: selection by class, adversarial images (Keras imported on call)
# --------------------------------------------------------------------------------------------


def selected_images(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: str | int | list,
    min_prob: float = 0.5,
    model: str = "VGG16",
    weights: str | None = None,
    seed: int = 0,
    preprocess: str | None = None,
    batch_size: int = 16,
    resize: str = "nearest",
) -> list[str]:
    """Copy the images of ``source`` that a model puts in ``classes`` with p >= ``min_prob``.

    The job-spec form of :func:`daskdiff.classify.select_images` (see it for the parameters and
    the ``selection.csv`` table written beside the copies); the model is given by plain
    keywords (:func:`daskdiff.classify.model_spec`: ``weights=None`` is ``'imagenet'`` for a
    keras.applications name, the file's own weights for a ``.keras`` path). Returns the copies'
    absolute paths, sorted.
    """
    from .classify import model_spec, select_images

    spec = model_spec(model, weights, seed, preprocess)
    selection = select_images(source, out_dir, spec, classes=classes, min_prob=min_prob, batch_size=batch_size, resize=resize)
    return selection.kept


def adversarial_images(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    eps: int = 8,
    step: float = 1,
    iters: int = 10,
    avoid: str | int | list | None = None,
    target: str | int | None = None,
    keep_failures: bool = True,
    model: str = "VGG16",
    weights: str | None = None,
    seed: int = 0,
    preprocess: str | None = None,
    batch_size: int = 16,
    resize: str = "nearest",
) -> list[str]:
    """Write adversarial PNG versions of the images of ``source`` (default: away from cats).

    The job-spec form of :func:`daskdiff.attack.attack_images` (see it for the parameters, the
    success check on the reloaded PNGs and the ``adversarial.csv`` table); the model is given
    by plain keywords as in :func:`selected_images`. Returns the absolute paths of the PNGs in
    ``out_dir``, sorted (failures included unless ``keep_failures=False``).
    """
    from .attack import attack_images
    from .classify import model_spec

    spec = model_spec(model, weights, seed, preprocess)
    report = attack_images(
        source, out_dir, spec, eps=eps, step=step, iters=iters, avoid=avoid, target=target,
        keep_failures=keep_failures, batch_size=batch_size, resize=resize,
    )
    return report.written


# --------------------------------------------------------------------------------------------
# Dispatch for job specs
# --------------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[..., list[str]]] = {
    "noise": white_noise,
    "photos": sample_photos,
    "augment": augmented_copies,
    "frames": movie_frames,
    "select": selected_images,
    "adversarial": adversarial_images,
}
"""Generator kind name (as written in job specs) -> function writing that kind of image set."""


def generate(kind: GeneratorKind, out_dir: str | os.PathLike, /, **params: object) -> list[str]:
    """Write an image set of a named kind: ``generate('noise', d, count=3)`` calls ``white_noise``.

    Parameters
    ----------
    kind : {'noise', 'photos', 'augment', 'frames', 'select', 'adversarial'}
        A key of :data:`GENERATORS`. Positional-only, like ``out_dir``, so that ``params`` can
        hold the generator's own ``kind`` (``generate('noise', d, kind='gaussian')``).
    out_dir : str or os.PathLike
        Folder to write to.
    **params
        Keyword arguments of that generator, e.g. ``source='chelsea'`` for ``'augment'`` or
        ``movie='clip.gif', every=10`` for ``'frames'``.

    Returns
    -------
    list of str
        Absolute paths of the files written, as the generator returns them.

    Raises
    ------
    ValueError
        For an unknown ``kind``; for parameters the generator does not take, or a missing
        required one (naming the generator and its valid parameters); and for bad values, as
        each generator documents.
    """
    function = check_generator_params(kind, params, out_dir=out_dir)
    return function(out_dir=out_dir, **params)


def check_generator_params(kind: str, params: dict, out_dir: object = ".") -> Callable[..., list[str]]:
    """The generator function of ``kind`` if ``params`` fit its signature, else ValueError.

    Used by :func:`generate` and by job-spec validation (nothing is written).
    """
    function = GENERATORS[_check_choice("kind", kind, GENERATORS)]
    signature = inspect.signature(function)
    valid = [name for name in signature.parameters if name != "out_dir"]
    try:
        signature.bind(out_dir=out_dir, **params)
    except TypeError as error:
        unknown = sorted(set(params) - set(valid))
        problem = f"unknown parameter(s) {unknown}" if unknown else str(error)
        raise ValueError(
            f"generator {kind!r} ({function.__name__}): {problem}; its parameters are {valid}"
        ) from None
    return function
