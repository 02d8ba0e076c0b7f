"""Storage layer: decoding images, file -> ``uint8`` RGB array, with Pillow and numpy only.

:func:`load_image` decodes one file to a ``(height, width, 3)`` ``uint8`` RGB array and
:func:`load_images` decodes many, collecting the files that cannot be decoded as :class:`Skipped`
instead of failing the whole set; :func:`as_rgb_uint8` brings an array already in memory (a
movie's frame, a generator's drawing) to the same form. Which files make an image set is
:mod:`daskdiff.io.image_sets`'s job; writing arrays as PNG is :mod:`daskdiff.io.png`'s.

With the default ``resize="nearest"`` an ordinary RGB (or grey, palette, CMYK) image decodes to
exactly what ``keras.utils.load_img(path, target_size=(height, width))`` gives, so activations
match a direct Keras call. Transparency, 16-bit and 32-bit integer, and floating-point images are
where the two differ: Keras drops alpha and clips 16-bit values, this module composites alpha over
a background and scales high bit depths (see :func:`load_image`, Notes).
"""

from __future__ import annotations

import functools
import io
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from ..errors import InputError
from .reading import NotReadableError, read_regular, seems_to_be

__all__ = [
    "RESIZE_FILTERS",
    "ImageDecodeError",
    "Skipped",
    "as_rgb_uint8",
    "image_frames",
    "image_size",
    "load_image",
    "load_images",
    "max_image_file_bytes",
]

ResizeName = Literal["nearest", "bilinear", "bicubic", "lanczos"]

RESIZE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
"""Name of a ``resize`` option -> the Pillow filter. ``nearest`` is what Keras' ``load_img`` uses."""


class ImageDecodeError(NotReadableError):
    """One file that cannot be decoded into an image.

    Attributes
    ----------
    path : str
        The file, as it was given.
    reason : str
        A short human reason, e.g. ``'empty file (0 bytes)'``.
    """

    verb = "cannot decode image"


@dataclass(frozen=True)
class Skipped:
    """A file left out of an image set because it could not be decoded."""

    path: str
    reason: str



# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

# warnings.catch_warnings swaps the process-wide filter list on entry and puts the saved one
# back on exit, so two threads interleaving it can leave a filter behind for good. Dask workers
# decode in several threads: every decode that needs the local filter holds this lock.
_WARNINGS_LOCK = threading.Lock()


def load_image(
    path: str | os.PathLike,
    size: tuple[int, int] | None = (224, 224),
    *,
    resize: ResizeName = "nearest",
    background: tuple[int, int, int] = (255, 255, 255),
    exif_orientation: bool = False,
) -> np.ndarray:
    """Decode one image file into an 8-bit RGB array of a given size.

    Parameters
    ----------
    path : str or path-like
        The image file.
    size : (int, int) or None, default (224, 224)
        ``(height, width)`` of the result, in that order, as Keras' ``target_size``; None: the
        file's own size, no resize (a movie's frames at their native resolution).
    resize : {'nearest', 'bilinear', 'bicubic', 'lanczos'}, default 'nearest'
        Pillow filter used to resize (see :data:`RESIZE_FILTERS`). The aspect ratio is not
        kept: the image is stretched to `size`, as Keras does.
    background : (int, int, int), default (255, 255, 255)
        RGB colour (0..255 each) that transparent pixels are composited over: white by default.
    exif_orientation : bool, default False
        Turn the image upright as its EXIF ``Orientation`` tag says (``PIL.ImageOps.exif_transpose``:
        a camera's portrait photo stored sideways is rotated, a mirrored one flipped), before
        conversion and resizing. Off by default, as Keras' ``load_img`` ignores the tag.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(height, width, 3)``, channels in RGB order, values 0..255.

    Raises
    ------
    ImageDecodeError
        The file cannot be decoded; ``error.reason`` says why (missing file or broken symlink,
        permission denied, empty file, not an image, truncated or corrupt data, decompression
        bomb, unsupported mode or values).
    ValueError, TypeError
        `size`, `resize` or `background` is invalid (raised before the file is read).

    Notes
    -----
    The file is read into memory and opened with Pillow, which decodes it completely here, so a
    truncated file fails here rather than later. Only a regular file is read: a FIFO, a device
    (``/dev/zero``), a socket or a folder named like an image is never opened for a blocking read
    (:func:`daskdiff.io.reading.open_regular`) and fails with ``'not a regular file (FIFO)'``; a
    file larger than :func:`max_image_file_bytes` fails from its size, unread. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is
    never set by this module (if other code sets it, Pillow pads truncated files instead).

    Conventions, applied in this order:

    1. **Frame**: multi-frame files (animated GIF, multi-page TIFF) give their first frame.
       ICC colour profiles are ignored, as Keras ignores them; so is EXIF orientation, unless
       `exif_orientation` is set (then the frame is turned upright first).
    2. **Conversion to 8-bit RGB**, at the file's own size:

       - ``RGB``: as is.
       - ``L``, ``1``, ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``:
         ``Image.convert('RGB')`` (grey is repeated into 3 channels; CMYK is converted
         naively, without a colour profile), exactly as Keras.
       - Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, and ``P`` with a transparent
         palette entry or alpha palette): converted to ``RGBA``, then composited over
         `background` with "over": ``out = round((c * a + b * (255 - a)) / 255)``. A fully
         transparent pixel becomes `background`, an opaque one keeps its colour. (Keras drops
         alpha instead, which shows whatever colour is stored under transparent pixels.)
         Colour-key transparency of ``RGB`` and ``L`` images is ignored, as Keras ignores it.
       - 16-bit integer (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): ``round(v / 257)``, which maps
         0..65535 onto 0..255 (65535 -> 255, 32896 -> 128), repeated into 3 channels. Pillow's
         own ``convert('RGB')``, which Keras uses, clips every value above 255 to 255.
       - 32-bit integer (``I``): read as 16-bit data, ``round(v / 257)``, when all values are in
         0..65535; otherwise the file is not decoded (no range can be assumed).
       - 32-bit float (``F``): values in 0..1 are scaled by 255, values in 0..255 (maximum above
         1) are taken as they are, then rounded; NaN, infinite, negative values or values above
         255 are not decoded. An image in the 0..255 range whose maximum is at most 1 is thus
         read as 0..1: the rule looks at the values because the file does not say.
       - Any other mode is not decoded.
    3. **Resize** to ``(height, width)`` with the `resize` filter (Pillow's ``Image.resize``,
       which takes ``(width, height)``), skipped when the image already has that size or ``size`` is None.

    With the defaults, for a file Keras handles the same way (every mode above except those with
    transparency and the 16-bit, ``I`` and ``F`` modes) the result equals
    ``np.asarray(keras.utils.load_img(path, target_size=size), dtype=np.uint8)`` exactly: Keras
    also opens with Pillow, converts with ``convert('RGB')`` and resizes with nearest neighbour.

    **Decompression bombs.** An image with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow
    warns) or twice that (Pillow raises) is not decoded: both count as failures. The warning is
    turned into an error only inside this function (``warnings.catch_warnings``, under a lock, so
    decoding is serialised within a process); global warning filters and
    ``MAX_IMAGE_PIXELS`` are left alone. Raise ``PIL.Image.MAX_IMAGE_PIXELS`` to accept larger
    images you trust.

    See Also
    --------
    load_images : decode many files, skipping those that fail.
    keras.utils.load_img : the reference for the default behaviour.
    """
    target = None if size is None else _check_size(size)[::-1]  # Pillow's (width, height)
    resample = _check_resize(resize)
    fill = _check_background(background)
    rgb = _decode_rgb(os.fspath(path), fill, exif_orientation)
    if target is not None and rgb.size != target:
        rgb = rgb.resize(target, resample)
    return np.asarray(rgb, dtype=np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(rows, cols)`` of an image file, from its header (the file is read as :func:`load_image`
    reads it: a regular file of bounded size); :class:`ImageDecodeError` if it is not an image."""
    path = os.fspath(path)
    data = _read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size[1], image.size[0]
    except UnidentifiedImageError:
        raise ImageDecodeError(path, _unidentified(data)) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(path, f"truncated or corrupt image: {error}") from None


def image_frames(path: str | os.PathLike) -> int | None:
    """Frames in an image file, from its header: 1 for a still image, more for an animated one
    (GIF, APNG, WebP); None if it is not an image Pillow reads (it may be a movie of another
    kind). Read as :func:`load_image` reads: a regular file of bounded size."""
    path = os.fspath(path)
    try:
        data = _read_bytes(path)
    except ImageDecodeError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(getattr(image, "n_frames", 1))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _decode_or_error(path: Any, *, size: tuple[int, int], resize: Any, background: tuple[int, int, int],
                     exif_orientation: bool) -> np.ndarray | ImageDecodeError:
    """:func:`load_image`, its decode error returned rather than raised (for a process pool's map)."""
    try:
        return load_image(path, size, resize=resize, background=background, exif_orientation=exif_orientation)
    except ImageDecodeError as error:
        return error


def load_images(
    paths: Sequence[str | os.PathLike],
    size: tuple[int, int] = (224, 224),
    *,
    resize: ResizeName = "nearest",
    background: tuple[int, int, int] = (255, 255, 255),
    strict: bool = False,
    exif_orientation: bool = False,
    pool: Any = None,
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """Decode many image files, skipping (or, with `strict`, raising on) those that fail.

    Parameters
    ----------
    paths : sequence of str or path-like
        The files, e.g. from :func:`~daskdiff.io.image_sets.resolve_image_set`.
    size, resize, background, exif_orientation
        As in :func:`load_image`; all are checked before any file is read.
    strict : bool, default False
        Raise the first :class:`ImageDecodeError` instead of skipping the file.
    pool : multiprocessing.pool.Pool or concurrent.futures.Executor, optional
        Decode the files in parallel on this pool (``pool.map``, which keeps input order): the
        result is the same, and with `strict` the error is that of the first failing file in
        input order. Pillow's decoders hold the GIL, so this needs processes to run in parallel
        (:func:`daskdiff.model.extract.decoder_pool`).

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array of shape ``(n_ok, height, width, 3)``, the decoded images in input order;
        ``n_ok`` may be 0.
    indices : list of int
        For each row of `images`, its position in `paths`.
    skipped : list of Skipped
        The files that could not be decoded, in input order, with the path as given and the
        reason.

    Raises
    ------
    ImageDecodeError
        With ``strict=True``, the first file that cannot be decoded.
    ValueError, TypeError
        Invalid `size`, `resize` or `background`, or `paths` given as one string.

    Notes
    -----
    Every image is decoded with exactly the conventions of :func:`load_image`.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(
            f"paths must be a sequence of file paths, not one path ({paths!r}); "
            "wrap it in a list: load_images([path])"
        )
    paths = list(paths)
    height, width = _check_size(size)
    _check_resize(resize)
    _check_background(background)

    images = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    indices: list[int] = []
    skipped: list[Skipped] = []
    decode = functools.partial(_decode_or_error, size=(height, width), resize=resize, background=background,
                               exif_orientation=exif_orientation)  # picklable, for a process pool
    for index, image in enumerate((pool.map if pool is not None else map)(decode, paths)):
        if isinstance(image, ImageDecodeError):
            if strict:
                raise image
            skipped.append(Skipped(path=image.path, reason=image.reason))
        else:
            images[len(indices)] = image
            indices.append(index)
    if len(indices) < len(paths):
        images = images[: len(indices)].copy()
    return images, indices, skipped


# --- argument checks ---------------------------------------------------------------------------


def _check_size(size) -> tuple[int, int]:
    message = f"size must be a pair (height, width) of positive integers, e.g. size=(224, 224); got {size!r}"
    try:
        height, width = size
    except (TypeError, ValueError):
        raise TypeError(message) from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(message)
        if value < 1:
            raise InputError(message)
    return int(height), int(width)


def _check_resize(resize: str) -> Image.Resampling:
    try:
        return RESIZE_FILTERS[resize]
    except (KeyError, TypeError):
        raise InputError(
            f"resize={resize!r} is not a known filter; use one of "
            f"{', '.join(repr(k) for k in RESIZE_FILTERS)} ('nearest' matches "
            "keras.utils.load_img)"
        ) from None


def _check_background(background) -> tuple[int, int, int]:
    try:
        values = tuple(background)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    ):
        raise InputError(
            f"background must be an RGB triple of integers in 0..255, e.g. (255, 255, 255) for "
            f"white; got {background!r}"
        )
    return tuple(int(v) for v in values)


# --- decoding ----------------------------------------------------------------------------------


BYTES_PER_PIXEL = 8
"""The widest pixel Pillow decodes (16-bit RGBA): with :data:`METADATA_BYTES`, what bounds an image file's size."""

METADATA_BYTES = 64 * 2**20
"""Bytes an image file may hold besides its pixels (EXIF, ICC profiles, thumbnails, text chunks):
64 MiB, Pillow's own cap on a PNG's text chunks (``PIL.PngImagePlugin.MAX_TEXT_MEMORY``)."""


def max_image_file_bytes() -> int | None:
    """The largest image file :func:`load_image` reads: ``BYTES_PER_PIXEL x PIL.Image.MAX_IMAGE_PIXELS +
    METADATA_BYTES`` (783 MB with Pillow's default), or None when ``MAX_IMAGE_PIXELS`` is None.

    An image of more than ``MAX_IMAGE_PIXELS`` pixels is refused as a decompression bomb whatever its
    size, so a file larger than this uncompressed worst case is not one image daskdiff would decode;
    it is skipped before a byte of it is read.
    """
    pixels = Image.MAX_IMAGE_PIXELS
    return None if pixels is None else BYTES_PER_PIXEL * int(pixels) + METADATA_BYTES


def _read_bytes(path: str) -> bytes:
    """The bytes of an image file: a regular file of at most :func:`max_image_file_bytes`, never
    a FIFO or device (:func:`daskdiff.io.reading.read_regular`)."""
    try:
        data = read_regular(path, limit=max_image_file_bytes(), what="image file")
    except NotReadableError as error:
        reason = error.reason
        if reason.endswith("(folder)"):
            reason = "is a folder, not an image file"
        elif "larger than" in reason:
            reason += "; raise PIL.Image.MAX_IMAGE_PIXELS if the file is one image you trust"
        raise ImageDecodeError(path, reason) from None
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return data


def _open_loaded(path: str, data: bytes) -> Image.Image:
    """Open and fully decode `data` (first frame) with decompression-bomb warnings as errors."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageDecodeError(
                path,
                f"decompression bomb: {error} (raise PIL.Image.MAX_IMAGE_PIXELS, now "
                f"{Image.MAX_IMAGE_PIXELS}, if you trust the file)",
            ) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(path, _unidentified(data)) from None
        except MemoryError:
            raise
        except Exception as error:  # Pillow's decoders raise many types on corrupt data
            message = str(error) or type(error).__name__
            raise ImageDecodeError(path, f"truncated or corrupt image: {message}") from None
    return image


def _unidentified(data: bytes) -> str:
    """Why Pillow cannot open ``data``: what the file seems to be instead (:func:`daskdiff.io.reading.seems_to_be`)."""
    kind = seems_to_be(data[:512])
    if kind.endswith("image"):
        return f"not an image file (Pillow cannot identify its format): a damaged or unsupported {kind[kind.index(' ') + 1:]}"
    return f"not an image file (Pillow cannot identify its format): it seems to be {kind}"


def _decode_rgb(path: str, background: tuple[int, int, int], exif_orientation: bool = False) -> Image.Image:
    """The file's first frame as an 8-bit RGB image at its own size (upright, if asked, as its
    EXIF orientation says)."""
    image = _open_loaded(path, _read_bytes(path))
    if exif_orientation:
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P" and image.has_transparency_data:
        mode = "RGBA"
    convert = _CONVERTERS.get(mode)
    if convert is None:
        raise ImageDecodeError(
            path,
            f"unsupported image mode {image.mode!r}; save it as 8-bit RGB, grey or RGBA "
            "(e.g. PNG or JPEG)",
        )
    try:
        rgb = convert(image, background)
    except ValueError as error:
        raise ImageDecodeError(path, str(error)) from None
    return rgb


def _plain(image: Image.Image, background) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _composite(image: Image.Image, background) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
    alpha = rgba[..., 3:]
    colour = rgba[..., :3] * alpha + np.asarray(background, np.uint32) * (255 - alpha)
    # (x + 127) // 255 is round(x / 255) for every integer x (x / 255 never ends in .5).
    return Image.fromarray(((colour + 127) // 255).astype(np.uint8))


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1))


def _sixteen_bit(image: Image.Image, background) -> Image.Image:
    values = np.asarray(image).astype(np.uint32)
    return _grey((values + 128) // 257)


def _int32(image: Image.Image, background) -> Image.Image:
    values = np.asarray(image, dtype=np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise InputError(
            f"32-bit integer image with values in {low}..{high}; only 0..65535 (16-bit data) "
            "is understood: save it as 8-bit or 16-bit"
        )
    return _grey((values + 128) // 257)


def _float(image: Image.Image, background) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError("floating-point image with NaN or infinite values; save it as 8-bit")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise InputError(
            f"floating-point image with values in {low:g}..{high:g}; only 0..1 or 0..255 is "
            "understood: rescale it or save it as 8-bit"
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return _grey(np.rint(values * scale))


_CONVERTERS: dict[str, Callable[[Image.Image, tuple[int, int, int]], Image.Image]] = {
    **dict.fromkeys(("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"), _plain),
    **dict.fromkeys(("RGBA", "LA", "PA", "RGBa", "La"), _composite),
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), _sixteen_bit),
    "I": _int32,
    "F": _float,
}
"""Pillow mode -> function giving the 8-bit RGB image (``P`` with transparency uses ``RGBA``)."""


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
        raise InputError(
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
            raise InputError(
                f"{what} is floating point with {n_bad} values outside [0, 1] or NaN; "
                f"rescale it to [0, 1] or convert it to uint8 first"
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(
            f"{what} has dtype {array.dtype}; expected uint8, another unsigned integer type, "
            f"bool, or floats in [0, 1]"
        )
    return np.ascontiguousarray(array)
