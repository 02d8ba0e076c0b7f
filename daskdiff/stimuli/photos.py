"""Stimuli layer: natural photographs bundled with scikit-image, centre-cropped and resized."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import numpy as np

from .common import check_int, check_prefix, center_square, repeated_names, resize_square
from ..io.images import as_rgb_uint8
from ..io.png import write_images
from ..errors import InputError


DEFAULT_PHOTO_COUNT = 8
"""How many photographs :func:`sample_photos` writes when given neither ``count`` nor ``names``."""


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle_left() -> np.ndarray:
    import skimage.data

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
        raise InputError(f"unknown photo {name!r}; valid names are {list(SAMPLE_PHOTOS)}")
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
        count = check_int("count", count, 1, f"count={DEFAULT_PHOTO_COUNT}")
        if count > len(SAMPLE_PHOTOS):
            raise InputError(
                f"count must be at most {len(SAMPLE_PHOTOS)} (the number of SAMPLE_PHOTOS), "
                f"got {count}; pass names=... to choose photographs, or a count <= "
                f"{len(SAMPLE_PHOTOS)}"
            )
        chosen = list(SAMPLE_PHOTOS[:count])
    else:
        chosen = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in chosen if name not in _PHOTO_LOADERS]
        if unknown or not chosen:
            raise InputError(
                f"names must be a non-empty list of names from SAMPLE_PHOTOS, got unknown "
                f"{unknown or chosen!r}; valid names are {list(SAMPLE_PHOTOS)}"
            )
        repeated = repeated_names(chosen)
        if repeated:
            raise InputError(f"names must be distinct, got {repeated} more than once")
        if count is not None and count != len(chosen):
            raise InputError(
                f"count={count!r} disagrees with the {len(chosen)} names given; "
                f"leave count out when passing names"
            )
    if size is not None:
        size = check_int("size", size, 1, "size=224 or size=None (native size)")
    prefix = check_prefix(prefix)

    def photos() -> Iterator[tuple[str, np.ndarray]]:
        for i, name in enumerate(chosen):
            image = load_photo(name)
            if size is not None:
                image = resize_square(center_square(image), size)
            yield f"{prefix}-{i:04d}.png", image

    return write_images(out_dir, photos())
