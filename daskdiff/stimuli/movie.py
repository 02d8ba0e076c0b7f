"""Stimuli layer: movies as image sets: lossless PNG frames in time order plus a JSON record of the frame rate.

A *movie folder* holds the frames ``<prefix>-000000.png``, ``<prefix>-000001.png``, ... (frame
``k`` is shown from ``k / fps`` to ``(k + 1) / fps`` seconds) and :data:`MOVIE_RECORD`
(``movie.json``), which says::

    {"generator": "gratings", "fps": 30.0, "n_frames": 60, "duration": 2.0,
     "frame_size": [224, 224], "prefix": "grating",
     "frames": ["grating-000000.png", ...], "parameters": {...}, ...}

``parameters`` are the generator's arguments (validated values, JSON types); a generator may
add keys of its own (``source``, ``outside_fraction``, ...). The movie generators write every
frame first (each atomically) and the record last (atomically, after removing an older one),
so a ``movie.json`` always describes frames that are all complete. One folder holds one movie.
:func:`load_movie` reads such a folder back, or any folder of frames, or a movie file.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from .common import check_int, check_prefix
from .frames import frame_durations, open_movie
from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.image_sets import resolve_image_set
from ..io.images import ImageDecodeError, as_rgb_uint8, image_size, load_image
from ..io.png import write_images
from ..io.location import is_remote
from ..io.reading import TEXT_FILE_MAX_BYTES, NotReadableError, local_copy, open_regular, read_regular

MOVIE_RECORD = "movie.json"
"""Name of the JSON record of a movie's frame rate, beside its frames."""

_FRAMES_PER_SECOND_TOLERANCE = 1e-6
"""How far ``duration * fps`` may be from a whole number of frames (rounding of decimal input)."""


def frame_name(prefix: str, k: int) -> str:
    """File name of frame ``k``: ``<prefix>-NNNNNN.png`` (6 digits, so names sort in time order)."""
    return f"{prefix}-{k:06d}.png"


def check_number(name: str, value: object, example: str, *, minimum: float | None = None,
                  positive: bool = False, maximum: float | None = None, below: float | None = None) -> float:
    """A finite real number (not bool) within the given bounds, as float; InputError otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(value)
    bounds = []
    if positive:
        bounds.append("> 0")
        ok = ok and value > 0
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
        ok = ok and value >= minimum
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
        ok = ok and value <= maximum
    if below is not None:
        bounds.append(f"< {below:g}")
        ok = ok and value < below
    if not ok:
        within = f" {' and '.join(bounds)}" if bounds else ""
        raise InputError(f"{name} must be a finite number{within}, got {value!r}; for example {example}")
    return float(value)


def check_fps(fps: object, name: str = "fps") -> float:
    """A frame rate: a finite number > 0, as float (:func:`check_number`); ``name`` names it in the error."""
    return check_number(name, fps, f"{name}=30", positive=True)


def check_length(fps: float, duration: object, n_frames: object, default_duration: float) -> int:
    """Number of frames from ``n_frames`` or ``duration`` (seconds) at ``fps``; at most one is given."""
    if duration is not None and n_frames is not None:
        raise InputError(
            f"give at most one of duration= and n_frames=, got duration={duration!r} and "
            f"n_frames={n_frames!r}; for example duration=2 (seconds) or n_frames=60"
        )
    if n_frames is not None:
        return check_int("n_frames", n_frames, 1, "n_frames=60")
    seconds = default_duration if duration is None else check_number("duration", duration, "duration=2", positive=True)
    exact = seconds * fps
    if not math.isfinite(exact):
        raise InputError(f"duration={seconds:g} s at fps={fps:g} is more frames than can be counted; give n_frames= (e.g. n_frames=60)")
    count = round(exact)
    if count < 1 or abs(exact - count) > _FRAMES_PER_SECOND_TOLERANCE:
        raise InputError(
            f"duration={seconds:g} s at fps={fps:g} is {exact:g} frames, not a whole number >= 1; "
            f"give n_frames={max(1, count)} instead (or a duration that is a multiple of 1/fps)"
        )
    return count


def _json_value(value: Any) -> Any:
    """A parameter as a JSON type: paths as str, tuples as lists, numpy scalars as Python ones."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_movie(
    out_dir: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: float,
    prefix: str,
    generator: str,
    parameters: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Write ``frames`` (``uint8`` RGB, or what :func:`~daskdiff.io.images.as_rgb_uint8` takes)
    as ``<prefix>-NNNNNN.png`` and then :data:`MOVIE_RECORD`; the frames' absolute paths.

    ``extra`` is merged into the record after the frames are written (so a generator may put
    values there that it computes while yielding frames).
    """
    prefix = check_prefix(prefix)
    folder = Path(os.path.abspath(out_dir))
    (folder / MOVIE_RECORD).unlink(missing_ok=True)  # never a record of frames being rewritten
    shapes: list[tuple[int, ...]] = []

    def named() -> Iterator[tuple[str, np.ndarray]]:
        for k, frame in enumerate(frames):
            shapes.append(np.shape(frame)[:2])
            if shapes[-1] != shapes[0]:
                raise InputError(
                    f"movie {generator!r}: frames differ in size (frame {k} is {shapes[-1]}, frame 0 {shapes[0]})"
                )
            yield frame_name(prefix, k), frame

    paths = write_images(folder, named())
    if not paths:
        raise InputError(f"movie {generator!r} has no frames")
    record = {
        "generator": generator,
        "fps": float(fps),
        "n_frames": len(paths),
        "duration": len(paths) / float(fps),
        "frame_size": [int(shapes[0][0]), int(shapes[0][1])],
        "prefix": prefix,
        "frames": [os.path.basename(p) for p in paths],
        "parameters": _json_value(parameters),
        **_json_value(extra or {}),
    }
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    atomic_write(folder / MOVIE_RECORD, lambda tmp: Path(tmp).write_text(text))
    return paths


def read_movie_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The :data:`MOVIE_RECORD` of a movie folder, checked to have a positive ``fps`` and ``frames``."""
    path = Path(folder) / MOVIE_RECORD
    if not os.path.lexists(path):
        raise InputError(f"{path} does not exist: {folder} is not a folder written by a movie generator")
    try:
        record = json.loads(read_regular(path, limit=TEXT_FILE_MAX_BYTES, what="movie record"))
    except NotReadableError as error:
        raise InputError(f"cannot read {path}: {error.reason}") from None
    except ValueError as error:
        raise InputError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("frames"), list):
        raise InputError(f"{path} is not a movie record (no 'frames' list)")
    check_fps(record.get("fps"), name=f"'fps' in {path}")
    return record


class MovieSource(NamedTuple):
    """A source movie given as a movie generator's spec, ``{generate: KIND, ...}``, to be made when
    it is read: ``spec`` as given, and ``write(folder)``, which writes that movie into ``folder``
    (:func:`daskdiff.stimuli.registry.generate` hands a generator this for such a source)."""

    spec: Mapping[str, Any]
    write: Callable[[str], list[str]]


class Movie(NamedTuple):
    """Frames read by :func:`load_movie`: ``(n_frames, rows, cols, 3)`` ``uint8``, their rate and origin."""

    frames: np.ndarray
    fps: float
    source: dict[str, Any]


class MovieFrames(NamedTuple):
    """A movie being read by :func:`read_movie`: its rate and origin, known before any frame is read,
    and its frames, ``(rows, cols, 3)`` ``uint8`` each, read one at a time as ``frames`` is iterated."""

    frames: Iterator[np.ndarray]
    fps: float
    source: dict[str, Any]


def _same_rate(found: float | None, fps: float | None, where: str) -> float:
    """The frame rate of a source: its own (``found``) or the ``fps`` argument, which must agree."""
    if found is None and fps is None:
        raise InputError(f"{where} records no frame rate; give it one: fps: 30 under the image set in a job spec, "
                         "--fps 30 on the command line, fps=30 in Python")
    if found is not None and fps is not None and not math.isclose(found, fps, rel_tol=1e-9):
        raise InputError(
            f"fps={fps:g} disagrees with the frame rate {found:g} that {where} records; leave fps out"
        )
    return float(found if found is not None else fps)


def _stack(frames: Iterable[np.ndarray], where: str) -> np.ndarray:
    frames = list(frames)
    if not frames:
        raise InputError(f"{where} has no frames")
    sizes = [f.shape[:2] for f in frames]
    if (odd := next((k for k, s in enumerate(sizes) if s != sizes[0]), None)) is not None:
        raise InputError(
            f"{where}: frame {odd} is {sizes[odd][0]} x {sizes[odd][1]} but frame 0 is "
            f"{sizes[0][0]} x {sizes[0][1]}; a movie's frames must all have one size"
        )
    return np.stack(frames)


def _file_rate(reader: Any, path: str) -> float | None:
    """Frames per second of a movie file, or None if it has none or an uneven one (InputError)."""
    try:
        durations = frame_durations(reader, path)
    except InputError:
        return None
    if isinstance(durations, list):
        if len(set(durations)) > 1:
            raise InputError(
                f"{path!r} shows its frames for uneven durations ({sorted(set(map(float, durations)))} s); "
                f"resample it to a constant rate first, e.g. generate: frames with fps: 25"
            )
        durations = durations[:1]
    return float(1 / Fraction(next(iter(durations))))


def read_movie(source: str | os.PathLike, *, fps: float | None = None, n_frames: int | None = None) -> MovieFrames:
    """The frames of a movie folder, a folder of frames or a movie file, one at a time, with their rate.

    Parameters
    ----------
    source : str or os.PathLike
        - a folder with a :data:`MOVIE_RECORD`: its ``frames``, in order, at its ``fps``;
        - another folder: its image files in sorted order (as
          :func:`~daskdiff.io.image_sets.resolve_image_set` lists them), at ``fps``;
        - a movie file imageio can read (GIF, APNG, WebP; MP4 and others with
          ``imageio-ffmpeg``), at the constant rate of its metadata;
        - a ``.npy`` array, time first (:data:`NPY_MOVIE`), at ``fps``.
    fps : float, optional
        Frame rate of a source that records none; for one that does, it must agree.
    n_frames : int, optional
        Keep only the first ``n_frames`` frames.

    Returns
    -------
    MovieFrames
        ``fps`` and ``source`` (a JSON-able description of where the frames come from), checked
        before any frame is read; ``frames``, an iterator of ``(rows, cols, 3)`` ``uint8`` RGB
        frames (grey repeated, alpha composited over white for image files, dropped for movie
        files, as the readers do), each read when it is reached: a movie of any length costs one
        frame of memory. A frame of another size than the first raises :class:`InputError` when it
        is reached.

    Notes
    -----
    Every file is read only if it is a regular file (:func:`daskdiff.io.reading.open_regular`); a
    ``.npy`` array's shape and dtype come from its header (:func:`npy_movie_header`) and are
    checked before any frame is read.
    """
    if fps is not None:
        fps = check_fps(fps)
    if n_frames is not None:
        n_frames = check_int("n_frames", n_frames, 1, "n_frames=250")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"source must be a folder of frames or a movie file, got {source!r}")
    path = os.path.abspath(source)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, MOVIE_RECORD)):
            record = read_movie_record(path)
            rate = _same_rate(record["fps"], fps, f"{os.path.join(path, MOVIE_RECORD)}")
            files = [os.path.join(path, name) for name in record["frames"]]
        else:
            rate = _same_rate(None, fps, f"folder {path!r} (no {MOVIE_RECORD})")
            files = resolve_image_set(path, name="source")
        return MovieFrames(_folder_frames(files[:n_frames]), rate, {"kind": "folder", "path": path, "fps": rate})
    if not os.path.isfile(path):
        raise InputError(f"movie source not found: {path!r} (from source={os.fspath(source)!r})")
    if path.lower().endswith(NPY_MOVIE):
        return _npy_movie(path, fps, n_frames)
    reader = open_movie(path)
    try:
        rate = _same_rate(_file_rate(reader, path), fps, f"movie file {path!r}")
    except BaseException as error:
        reader.close()
        if isinstance(error, _DECODE_ERRORS) and not isinstance(error, InputError):
            raise InputError(f"cannot read movie file {path!r}: {error}") from None
        raise
    return MovieFrames(_file_frames(reader, path, n_frames), rate, {"kind": "file", "path": path, "fps": rate})


_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError)
"""What imageio's plugins raise on a damaged file (``InputError``, a ``ValueError``, is re-raised as it is)."""


def _folder_frames(files: list[str]) -> Iterator[np.ndarray]:
    """Each frame file decoded at the first one's size, which every frame must have."""
    first = None
    for file in files:
        try:
            size = image_size(file)
        except ImageDecodeError as error:
            raise InputError(f"cannot read frame '{file}': {error.reason}") from None
        if first is not None and size != first[1]:
            raise InputError(
                f"frame {file!r} is {size[0]} x {size[1]} but {first[0]!r} is "
                f"{first[1][0]} x {first[1][1]}; a movie's frames must all have one size"
            )
        first = first or (file, size)
        yield load_image(file, size)


def _file_frames(reader: Any, path: str, n_frames: int | None) -> Iterator[np.ndarray]:
    """The frames of an open imageio reader (closed at the end), as RGB ``uint8``."""
    with reader:
        frames = reader.iter()
        for k in itertools.count():
            if n_frames is not None and k >= n_frames:
                return
            try:
                frame = next(frames)
            except StopIteration:
                return
            except _DECODE_ERRORS as error:
                raise InputError(f"cannot read frame {k} of movie file {path!r}: {error}") from None
            yield as_rgb_uint8(frame, what=f"frame {k} of {path!r}")


def load_movie(source: str | os.PathLike, *, fps: float | None = None, n_frames: int | None = None) -> Movie:
    """The frames of a movie folder, a folder of frames or a movie file, with their frame rate.

    As :func:`read_movie`, with every frame read into one array.

    Returns
    -------
    Movie
        ``frames`` ``(n, rows, cols, 3)`` ``uint8`` RGB, ``fps``, and ``source``, a JSON-able
        description of where they came from.
    """
    movie = read_movie(source, fps=fps, n_frames=n_frames)
    return Movie(_stack(movie.frames, movie.source["path"]), movie.fps, movie.source)


NPY_MOVIE = ".npy"
"""A movie stored as one numpy array (the OpenScope stimuli, ``data/stim/stimuli/*.npy``)."""


class NpyHeader(NamedTuple):
    """What a ``.npy`` movie's header says: ``shape`` (time first), ``dtype``, whether the values are
    in Fortran order, and the offset of the first value in the file."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def frame_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def npy_movie_header(path: str | os.PathLike) -> NpyHeader:
    """The header of a ``.npy`` movie, checked, without reading its values.

    Raises
    ------
    InputError
        The file is not a regular file, not a ``.npy`` file, or its header does not describe a movie:
        ``(frames, rows, cols)`` grey or ``(frames, rows, cols, 1 or 3)`` RGB, time first, at least one
        frame, a plain number dtype (no objects, which would need unpickling, nor records); a frame of
        more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (the decompression-bomb limit of images); or a
        file shorter than its header says (truncated).
    """
    from numpy.lib import format as npy

    from PIL import Image

    path = os.fspath(path)
    where = f"movie array {path!r}"
    try:
        fd = open_regular(path)
    except NotReadableError as error:
        raise InputError(f"cannot read {where}: {error.reason}") from None
    with os.fdopen(fd, "rb") as file:
        try:
            version = npy.read_magic(file)
            read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version[0]}.{version[1]}, which holds text field names")
            shape, fortran_order, dtype = read(file)
        except (OSError, ValueError, SyntaxError) as error:
            raise InputError(f"cannot read {where}: not a .npy array file ({error}); save the movie with numpy.save") from None
        header = NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran_order), file.tell())
        size = os.fstat(fd).st_size
    if len(header.shape) not in (3, 4) or (len(header.shape) == 4 and header.shape[-1] not in (1, 3)):
        raise InputError(f"{where} has shape {header.shape}; a movie is (frames, rows, cols) grey "
                         "or (frames, rows, cols, 3) RGB, time first")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise InputError(f"{where} holds {dtype} values; save it as uint8 0-255")
    if min(header.shape) < 1:
        raise InputError(f"{where} has shape {header.shape}: no frames or empty frames")
    pixels = header.shape[1] * header.shape[2]
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        raise InputError(f"{where} has frames of {header.shape[1]} x {header.shape[2]} = {pixels} pixels, more than "
                         f"PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}), the limit on any image; resize the movie")
    expected = header.offset + header.shape[0] * header.frame_bytes
    if size < expected:
        raise InputError(f"{where} is truncated: its header says {header.shape[0]} frame(s) of shape {header.shape[1:]} "
                         f"{dtype} ({expected} bytes with the header), but the file holds {size} bytes; save it again")
    return header


def _npy_movie(path: str, fps: float | None, n_frames: int | None) -> MovieFrames:
    """A ``.npy`` movie: ``(frames, rows, cols)`` grey or ``(frames, rows, cols, 3)`` RGB, uint8
    0-255 (or values :func:`~daskdiff.io.images.as_rgb_uint8` maps: other unsigned integers,
    floats in [0, 1]); it records no frame rate, so ``fps`` must be given. Its header is checked
    (:func:`npy_movie_header`) before any frame is read; frames are then read one at a time."""
    rate = _same_rate(None, fps, f"movie array {path!r} (.npy)")
    header = npy_movie_header(path)
    count = header.shape[0] if n_frames is None else min(n_frames, header.shape[0])
    return MovieFrames(_npy_frames(path, header, count), rate, {"kind": "array", "path": path, "fps": rate})


def _npy_frames(path: str, header: NpyHeader, count: int) -> Iterator[np.ndarray]:
    """Frames ``0..count-1`` of a checked ``.npy`` movie: read with ``os.pread`` one frame at a time (C
    order), or through a read-only memory map (Fortran order, whose frames are not contiguous)."""
    fd = open_regular(path)
    try:
        if header.fortran_order:
            array = np.memmap(path, dtype=header.dtype, mode="r", shape=header.shape, order="F", offset=header.offset)
            frames = (np.array(array[k]) for k in range(count))
        else:
            frames = (np.frombuffer(os.pread(fd, header.frame_bytes, header.offset + k * header.frame_bytes),
                                    dtype=header.dtype).reshape(header.shape[1:]) for k in range(count))
        for k, frame in enumerate(frames):
            if frame.size * frame.itemsize != header.frame_bytes:
                raise InputError(f"movie array {path!r} ended at frame {k} of {header.shape[0]}: it was truncated while read")
            yield as_rgb_uint8(frame, what=f"frame {k} of {path!r}")
    finally:
        os.close(fd)


def planned_frames(path: str | os.PathLike, n_frames: int | None = None) -> int | None:
    """How many frames :func:`movie_copy` will write from a movie file, checked without reading a frame:
    a ``.npy`` array's from its header (:func:`npy_movie_header`), at most ``n_frames``; None for other
    files, whose reader is opened (a file that is no movie is refused here) but whose frames are not counted.

    Raises
    ------
    InputError
        The file cannot be read as a movie (:func:`npy_movie_header`, :func:`daskdiff.stimuli.frames.open_movie`).
    """
    path = os.fspath(path)
    if path.lower().endswith(NPY_MOVIE):
        frames = npy_movie_header(path).shape[0]
        return frames if n_frames is None else min(frames, n_frames)
    open_movie(path).close()
    return None


def movie_copy(
    out_dir: str | os.PathLike,
    *,
    movie: str | os.PathLike,
    fps: float | None = None,
    n_frames: int | None = None,
    prefix: str = "frame",
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write a movie file (or any movie :func:`load_movie` reads) as a movie folder: every frame,
    in order, as lossless PNG, then :data:`MOVIE_RECORD` with its frame rate.

    This is how a job takes a set given as a movie file (``{path: clip.gif}``): the network
    reads the frames from these files, so the set's frames and their order are those of the file.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write to; one movie per folder.
    movie : str or os.PathLike
        A movie file (GIF, APNG, WebP; MP4 and others with ``imageio-ffmpeg``) or a folder; or the
        fsspec URL of a movie file (``s3://bucket/clip.mp4``), downloaded whole to a temporary file
        (:func:`daskdiff.io.reading.local_copy`), read from there as a local file is (its checks and
        bounds), and removed.
    fps : float, optional
        Frame rate of a source that records none; must agree with one that does.
    n_frames : int, optional
        Keep only the first ``n_frames`` frames.
    prefix : str, default 'frame'
        Frame names are ``<prefix>-NNNNNN.png``.
    storage_options : mapping, optional
        fsspec's keyword arguments for a ``movie`` URL (a job passes its spec's); the environment's
        alone when None.

    Returns
    -------
    list of str
        The frames' absolute paths, in time order.
    """
    parameters = {"movie": os.fspath(movie), "fps": fps, "n_frames": n_frames}
    if is_remote(movie):
        with local_copy(os.fspath(movie), storage_options, "movie") as path:
            try:
                loaded = read_movie(path, fps=fps, n_frames=n_frames)
                source = {**loaded.source, "path": os.fspath(movie)} if "path" in loaded.source else loaded.source
                return write_movie(out_dir, loaded.frames, fps=loaded.fps, prefix=prefix, generator="movie",
                                   parameters=parameters, extra={"source": source})
            except InputError as error:  # named by its URL, not by the temporary copy
                raise type(error)(str(error).replace(path, os.fspath(movie))) from None
    loaded = read_movie(movie, fps=fps, n_frames=n_frames)  # one frame in memory at a time
    return write_movie(out_dir, loaded.frames, fps=loaded.fps, prefix=prefix, generator="movie",
                       parameters=parameters, extra={"source": loaded.source})
