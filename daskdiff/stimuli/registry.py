"""Stimuli layer: the registry of image-set generators, above every generator module.

Generators write lossless PNG image sets; each takes an output folder and returns the absolute
paths of the files it wrote, in order. The conventions shared by all of them:

- Images are RGB, 8 bits per channel: arrays of shape ``(rows, cols, 3)`` and dtype ``uint8``.
  Grey images are repeated into the three channels; an alpha channel is dropped (not composited).
- Files are PNG, which is lossless: reading a file back gives exactly the array that was drawn.
- Names are deterministic: ``<prefix>-0000.png``, ``<prefix>-0001.png``, ... in output order,
  except for movies: :func:`~daskdiff.stimuli.frames.movie_frames` names carry the source frame
  index (``<prefix>-000030.png``), and the movie generators (:data:`MOVIE_KINDS`) name frame
  ``k`` ``<prefix>-00000k.png`` (6 digits), so sorted names are in time order.
- Each file is written through :func:`daskdiff.io.atomic.atomic_write` (temporary name in the same
  folder, fsync, rename), so a reader never sees a partial file. Files in the folder that the call
  does not write are left alone.
- Randomness comes only from the ``seed`` argument: image ``i`` draws from
  ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))`` (the ``i``-th
  child of ``SeedSequence(seed).spawn``), so image ``i`` is the same whatever ``count`` is, and
  the same call rewrites byte-identical files. A draw for a whole movie (a ``scrambled`` movie's
  ``spatiotemporal`` or ``fixed`` phases) uses child 0.

The movie generators (:data:`MOVIE_KINDS`: ``gratings``, ``photo_movie``, ``skimage_gif``,
``scrambled``, ``movie``: a movie file copied as frames) write one movie per folder: its frames, then ``movie.json`` with the frame rate
``fps``, ``n_frames``, the frame names, the generator and its parameters
(:mod:`daskdiff.stimuli.movie`; :func:`~daskdiff.stimuli.movie.load_movie` reads one back).
They return the frames' paths only. ``select`` and ``adversarial`` use a model and also write a
CSV table beside their images (:mod:`daskdiff.stimuli.select`, :mod:`daskdiff.stimuli.adversarial`).
What a generator is lives in one record here (:class:`Generator`: its function, whether it makes
a movie, which parameters are paths, how it counts its images, its frame rate), and the pipeline
asks this module rather than looking at a spec's parameters itself: :func:`absolute_params`,
:func:`generator_inputs`, :func:`planned_count`, :func:`planned_fps`. A movie generator's source
given as ``{generate: KIND, ...}`` (``scrambled``'s ``source``) is resolved here too: its paths,
its inputs, its count and rate, and, when generating, the movie itself (:func:`generate`).
Importing this module loads neither Keras, scikit-image nor imageio: spec validation uses it.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

from .adversarial import adversarial_images
from .augment import augmented_copies
from .common import check_choice
from .frames import movie_frames
from .gif import SKIMAGE_GIF_FRAMES, skimage_gif
from .gratings import drifting_gratings
from .noise import white_noise
from .movie import MOVIE_RECORD, MovieSource, check_fps, check_length, movie_copy, planned_frames, read_movie_record
from .pans import photo_movie
from .photos import DEFAULT_PHOTO_COUNT, SAMPLE_PHOTOS, sample_photos
from .scramble import phase_scrambled
from .select import selected_images
from ..errors import InputError, shorten
from ..io.fingerprints import file_sha256, file_stat, object_record
from ..io.image_sets import DuplicateImagesWarning, resolve_image_set
from ..io.location import is_remote
from ..model.build import WEIGHTS_KEYWORDS

GeneratorKind = Literal[
    "noise", "photos", "augment", "frames", "select", "adversarial",
    "gratings", "photo_movie", "skimage_gif", "scrambled", "movie",
]

Count = tuple[int | None, str]
"""``(count, how)``: how many images a generator will write and how that is known (:func:`planned_count`)."""


@dataclass(frozen=True)
class PathParam:
    """A generator parameter that names a file or folder (unless its value names something daskdiff ships).

    Attributes
    ----------
    identity : {'stat', 'image_set', 'sha256'}
        What :func:`generator_inputs` records of the file, so that one replaced under the same
        name is noticed: ``'stat'``, ``(size, mtime_ns, inode)`` of a file or the input record
        of a folder's files (a movie file, an image, a folder of frames); ``'image_set'``, the
        input record of the images the path names as an image set (a folder, glob or list file);
        ``'sha256'``, the file's SHA-256 (a model or weights file).
    keywords : frozenset of str
        Values that name something other than a file: a bundled photo (``chelsea``), a weights
        keyword (``imagenet``).
    suffix : str
        Only a value ending in it is a path (``model: m.keras``; ``model: vgg16`` names an application).
    """

    identity: Literal["stat", "image_set", "sha256"] = "stat"
    keywords: frozenset[str] = frozenset()
    suffix: str = ""

    def holds_path(self, value: object) -> bool:
        """Whether ``value``, given for this parameter, is a path (to resolve and to record)."""
        return isinstance(value, str) and value not in self.keywords and value.endswith(self.suffix)


@dataclass(frozen=True)
class Generator:
    """One kind of generated image set, as job specs name it (``generate: KIND``).

    Attributes
    ----------
    function : callable
        Writes the set: ``function(out_dir=..., **params)`` returns the absolute paths written.
    count : callable
        ``count(params) -> (count, how)``: how many images it will write, without writing any
        (:func:`planned_count`, which checks ``params`` first).
    movie : bool
        Whether it writes a movie: frames in time order and ``movie.json`` with their frame rate.
    paths : mapping of str to PathParam
        Its parameters that name files, made absolute against the spec's folder
        (:func:`absolute_params`) and recorded by what they are (:func:`generator_inputs`).
    sources : frozenset of str
        Its parameters that may hold another movie generator's spec, ``{generate: KIND, ...}``,
        made in a temporary folder when it runs (:func:`generate`).
    fps : callable or None
        ``fps(params) -> float or None``: the frame rate it will record, without writing anything
        (None: not known before it runs); None for a generator whose rate is never known before
        (``skimage_gif``) or that writes no movie.
    """

    function: Callable[..., list[str]]
    count: Callable[[Mapping[str, Any]], Count]
    movie: bool = False
    paths: Mapping[str, PathParam] = field(default_factory=lambda: MappingProxyType({}))
    sources: frozenset[str] = frozenset()
    fps: Callable[[Mapping[str, Any]], float | None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", MappingProxyType(dict(self.paths)))  # read-only, as the record


def _is_spec(value: object) -> bool:
    """Whether ``value`` is a generator spec, ``{generate: KIND, ...}`` (a nested source)."""
    return isinstance(value, dict) and "generate" in value


def _spec_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A nested generator spec's parameters: the mapping less its ``generate`` key."""
    return {k: v for k, v in spec.items() if k != "generate"}


# --- how each generator counts its images and knows its frame rate -----------------------------


def _counted(function: Callable[..., list[str]], default: int | None = None) -> Callable[[Mapping[str, Any]], Count]:
    """Its ``count`` parameter (else its default, or ``default`` where the function's is None): exact."""
    def count(params: Mapping[str, Any]) -> Count:
        fallback = inspect.signature(function).parameters["count"].default
        fallback = default if fallback is None else fallback
        return int(params.get("count", fallback) or fallback), "exact"

    return count


def _photos_count(params: Mapping[str, Any]) -> Count:
    """``photos``: as many as its ``names``, else its ``count`` (default :data:`~daskdiff.stimuli.photos.DEFAULT_PHOTO_COUNT`)."""
    if params.get("names") is not None:
        return len(list(params["names"])), "exact"
    return _counted(sample_photos, DEFAULT_PHOTO_COUNT)(params)


def _source_images(exact: Callable[[Mapping[str, Any]], bool]) -> Callable[[Mapping[str, Any]], Count]:
    """``select``/``adversarial``: the images of ``source``, exactly or at most (``'unknown'`` if it cannot be listed)."""
    def count(params: Mapping[str, Any]) -> Count:
        try:
            n = len(resolve_image_set(str(params["source"])))
        except (InputError, OSError):
            return None, "unknown"
        return n, "exact" if exact(params) else "at most"

    return count


def _timed(function: Callable[..., list[str]]) -> Callable[[Mapping[str, Any]], Count]:
    """``gratings``/``photo_movie``: ``n_frames``, or ``duration`` (default 2 s) at ``fps``: exact."""
    def count(params: Mapping[str, Any]) -> Count:
        fps = check_fps(params.get("fps", inspect.signature(function).parameters["fps"].default))
        return check_length(fps, params.get("duration"), params.get("n_frames"), default_duration=2.0), "exact"

    return count


def _gif_count(params: Mapping[str, Any]) -> Count:
    """``skimage_gif``: :data:`~daskdiff.stimuli.gif.SKIMAGE_GIF_FRAMES` frames per loop."""
    loops = params.get("loops", inspect.signature(skimage_gif).parameters["loops"].default)
    return (SKIMAGE_GIF_FRAMES * loops, "exact") if isinstance(loops, int) and not isinstance(loops, bool) else (None, "unknown")


def _source_count(source: object, n_frames: object) -> Count:
    """The frames of a movie made from ``source`` (counted when it is a movie generator's spec),
    at most ``n_frames``."""
    n, how = (planned_count(source["generate"], _spec_params(source))
              if isinstance(source, dict) and source.get("generate") in MOVIE_KINDS else (None, "unknown"))
    if n_frames is not None:
        return (int(n_frames), "at most") if n is None else (min(n, int(n_frames)), how)
    return n, how


def _scrambled_count(params: Mapping[str, Any]) -> Count:
    """``scrambled``: its source's frames, at most ``n_frames``."""
    return _source_count(params.get("source"), params.get("n_frames"))


def _movie_count(params: Mapping[str, Any]) -> Count:
    """``movie``: a ``.npy`` file's frames from its header (exact); another movie file is opened
    and checked here (:func:`~daskdiff.stimuli.movie.planned_frames`: a file that is no movie
    raises :class:`InputError`) but not counted (at most ``n_frames``)."""
    movie, n_frames = params.get("movie"), params.get("n_frames")
    if isinstance(movie, (str, os.PathLike)) and os.path.isfile(movie):
        n = planned_frames(movie, n_frames)
        return (n, "exact") if n is not None else ((int(n_frames), "at most") if n_frames else (None, "unknown"))
    return _source_count(movie, n_frames)


def _unknown(params: Mapping[str, Any]) -> Count:
    """``frames``: the movie decides."""
    return None, "unknown"


def _own_fps(function: Callable[..., list[str]]) -> Callable[[Mapping[str, Any]], float | None]:
    """``fps``, else the function's default."""
    def fps(params: Mapping[str, Any]) -> float | None:
        if params.get("fps") is not None:
            return float(params["fps"])
        default = inspect.signature(function).parameters["fps"].default
        return float(default) if isinstance(default, (int, float)) else None

    return fps


def _source_fps(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    """``fps``, else the rate of the movie parameter ``name`` names: the one its generator spec
    will record, or the one its folder's ``movie.json`` records (else None: a movie file's own)."""
    def fps(params: Mapping[str, Any]) -> float | None:
        if params.get("fps") is not None:
            return float(params["fps"])
        source = params.get(name)
        if _is_spec(source):
            return planned_fps(source["generate"], _spec_params(source))
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(os.path.join(source, MOVIE_RECORD)):
            try:
                return float(read_movie_record(source)["fps"])
            except (InputError, KeyError, TypeError, ValueError):
                return None
        return None

    return fps


# --- the registry ------------------------------------------------------------------------------

_FILE_OR_PHOTO = PathParam(keywords=frozenset(SAMPLE_PHOTOS))
"""``source``/``movie``: a file or folder, unless it names a bundled photo."""

_MODEL_FILES = {
    "source": PathParam("image_set", keywords=frozenset(SAMPLE_PHOTOS)),
    "model": PathParam("sha256", suffix=".keras"),
    "weights": PathParam("sha256", keywords=frozenset(WEIGHTS_KEYWORDS)),
}
"""``select``/``adversarial``: the images to classify, and a ``.keras`` model or weights file."""

GENERATORS: Mapping[str, Generator] = MappingProxyType({
    "noise": Generator(white_noise, _counted(white_noise)),
    "photos": Generator(sample_photos, _photos_count),
    "augment": Generator(augmented_copies, _counted(augmented_copies), paths={"source": _FILE_OR_PHOTO}),
    "frames": Generator(movie_frames, _unknown, paths={"movie": _FILE_OR_PHOTO}),
    "select": Generator(selected_images, _source_images(lambda params: False), paths=_MODEL_FILES),
    "adversarial": Generator(adversarial_images, _source_images(lambda params: params.get("keep_failures", True)),
                             paths=_MODEL_FILES),
    "gratings": Generator(drifting_gratings, _timed(drifting_gratings), movie=True, fps=_own_fps(drifting_gratings)),
    "photo_movie": Generator(photo_movie, _timed(photo_movie), movie=True, fps=_own_fps(photo_movie)),
    "skimage_gif": Generator(skimage_gif, _gif_count, movie=True),
    "scrambled": Generator(phase_scrambled, _scrambled_count, movie=True, paths={"source": _FILE_OR_PHOTO},
                           sources=frozenset({"source"}), fps=_source_fps("source")),
    "movie": Generator(movie_copy, _movie_count, movie=True, paths={"movie": _FILE_OR_PHOTO}, fps=_source_fps("movie")),
})
"""Generator kind name (as written in job specs) -> its :class:`Generator` record."""


MOVIE_KINDS: frozenset[str] = frozenset(kind for kind, generator in GENERATORS.items() if generator.movie)
"""The kinds that write a movie: frames in time order plus ``movie.json`` with their frame rate."""


def generate(kind: GeneratorKind, out_dir: str | os.PathLike, /, **params: object) -> list[str]:
    """Write an image set of a named kind: ``generate('noise', d, count=3)`` calls ``white_noise``.

    Parameters
    ----------
    kind : {'noise', 'photos', 'augment', 'frames', 'select', 'adversarial', 'gratings', 'photo_movie', 'skimage_gif', 'scrambled', 'movie'}
        A key of :data:`GENERATORS`. Positional-only, like ``out_dir``, so that ``params`` can
        hold the generator's own ``kind`` (``generate('noise', d, kind='gaussian')``).
    out_dir : str or os.PathLike
        Folder to write to.
    **params
        Keyword arguments of that generator, e.g. ``source='chelsea'`` for ``'augment'`` or
        ``movie='clip.gif', every=10`` for ``'frames'``. A source given as a movie generator's
        spec (``scrambled``'s ``source={'generate': 'gratings', ...}``) is handed to the
        generator as a :class:`~daskdiff.stimuli.movie.MovieSource`, which writes that movie
        (through this function) when the generator asks for it.

    Returns
    -------
    list of str
        Absolute paths of the files written, as the generator returns them.

    Raises
    ------
    ValueError
        For an unknown ``kind``; for parameters the generator does not take, or a missing
        required one (naming the generator and its valid parameters); for a source spec that
        names no movie generator; and for bad values, as each generator documents.
    """
    function = check_generator_params(kind, params, out_dir=out_dir)
    made = {key: MovieSource(value, functools.partial(_write_source_movie, value))
            for key, value in params.items() if key in GENERATORS[kind].sources and isinstance(value, Mapping)}
    return function(out_dir=out_dir, **{**params, **made})


def _write_source_movie(spec: Mapping[str, Any], folder: str | os.PathLike) -> list[str]:
    """Write the movie a source spec ``{generate: KIND, ...}`` describes into ``folder``."""
    params = dict(spec)
    kind = params.pop("generate", None)
    if kind not in MOVIE_KINDS:
        raise InputError(
            f"source as a mapping must be {{generate: KIND, ...}} with KIND one of {sorted(MOVIE_KINDS)}, "
            f"got {dict(spec)!r}; or give a folder of frames or a movie file"
        )
    return generate(kind, folder, **params)


def check_generator_params(kind: str, params: dict, out_dir: object = ".") -> Callable[..., list[str]]:
    """The generator function of ``kind`` if ``params`` fit its signature, else ValueError.

    Used by :func:`generate` and by job-spec validation (nothing is written).
    """
    function = GENERATORS[check_choice("kind", kind, GENERATORS)].function
    signature = inspect.signature(function)
    valid = [name for name in signature.parameters if name != "out_dir"]
    try:
        signature.bind(out_dir=out_dir, **params)
    except TypeError as error:
        unknown = sorted(set(params) - set(valid))
        problem = f"unknown parameter(s) {shorten(str(unknown))}" if unknown else str(error)
        raise InputError(
            f"generator {kind!r} ({function.__name__}): {problem}; its parameters are {valid}"
        ) from None
    return function


def check_generator_types(kind: str, params: dict) -> None:
    """Refuse, as a job spec must, a parameter of the wrong type for ``kind``'s generator.

    Each value is validated strictly against the generator's annotation (pydantic strict mode):
    ``count: "5"``, ``count: true`` or ``keep_failures: "yes"`` are refused, not coerced, here
    rather than when the images are drawn; an int is still a valid float. :func:`generate`
    itself does not check this (API callers may pass numpy integers).

    Raises
    ------
    InputError
        Naming the generator, the parameter, what it should be and the value given.
    """
    import typing

    from pydantic import ConfigDict, TypeAdapter, ValidationError

    function = check_generator_params(kind, params)
    hints = typing.get_type_hints(function, include_extras=True)  # with their bounds (Annotated)
    for name, value in params.items():
        if name not in hints:
            continue
        try:
            TypeAdapter(hints[name], config=ConfigDict(strict=True, arbitrary_types_allowed=True)).validate_python(value)
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            raise InputError(f"generator {kind!r}: {name}: {problem}; got {shorten(repr(value))}") from None


def planned_count(kind: str, params: dict) -> Count:
    """How many images a generator will write, without writing any: ``(count, how)``.

    ``how`` is ``'exact'`` (``noise``, ``augment``, ``photos``: their ``count``, ``names`` or
    default; ``adversarial`` when it keeps failed attacks, the default), ``'at most'`` (``select``:
    the images of its ``source``; ``adversarial`` with ``keep_failures: false``) or ``'unknown'``
    (``frames``: the movie decides; count None). A ``movie`` file is opened and checked here
    (:func:`daskdiff.stimuli.movie.planned_frames`: a file that is no movie raises
    :class:`InputError`); a ``.npy`` movie's count is exact, from its header. Path parameters must
    already be resolved (:func:`absolute_params`). Each kind's rule is its record's ``count``.
    """
    check_generator_params(kind, params)
    return GENERATORS[kind].count(params)


def planned_fps(kind: str, params: Mapping[str, Any]) -> float | None:
    """The frame rate a movie generator will record, without writing anything (None: not known
    before it runs, e.g. a movie file's own rate or scikit-image's GIF; or ``kind`` writes no
    movie). Each kind's rule is its record's ``fps``; path parameters must already be resolved."""
    generator = GENERATORS.get(kind)
    return None if generator is None or generator.fps is None else generator.fps(params)


def absolute_params(kind: str, params: Mapping[str, Any], base: str | os.PathLike) -> dict[str, Any]:
    """``params`` with the generator's path parameters made absolute against ``base`` (the spec's folder).

    A path parameter (:attr:`Generator.paths`) holding a path (:meth:`PathParam.holds_path`: not
    a bundled photo's name, a weights keyword or a model name) is expanded (``~``) and, when
    relative, joined to ``base``, as a string; a nested source spec ``{generate: KIND, ...}``
    (:attr:`Generator.sources`) has its own path parameters resolved the same way. Other values,
    and the parameters of an unknown kind, are kept as they are.
    """
    generator = GENERATORS.get(kind)
    out = dict(params)
    if generator is None:
        return out
    for key, value in params.items():
        if key in generator.sources and _is_spec(value):
            out[key] = absolute_params(str(value["generate"]), value, base)
        elif key in generator.paths and generator.paths[key].holds_path(value) and not is_remote(value):
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else Path(base) / path)
    return out


def generator_inputs(kind: str, params: Mapping[str, Any], storage_options: Any = None) -> dict[str, Any]:
    """What each input file of a generator is now, by its (dotted) parameter name; ``params``
    resolved (:func:`absolute_params`).

    A generated set records this beside its images (``.generated.json``), so that a movie or
    source replaced under the same name is noticed. By each path parameter's
    :attr:`PathParam.identity`: a model or weights file, its SHA-256 (memoised per process, as
    the job's model is); the ``source`` of ``select``/``adversarial`` (a folder, glob or list
    file of images), the input record of its images (:func:`~daskdiff.io.shards.input_record`:
    path, size, mtime); any other path (a movie file, an image, a folder of frames),
    ``(size, mtime_ns, inode)`` of the file, or the input record of a folder's files; an object
    (an fsspec URL, e.g. a movie on S3), ``[size, marker]`` (:func:`~daskdiff.io.fingerprints.object_record`,
    one ``HEAD`` with ``storage_options``). A nested
    ``{generate: ...}`` source's inputs come under ``source.<name>``. A path that cannot be read
    is None (the generator then names it). Empty for a generator that reads no file.
    """
    return _inputs(kind, params, "", storage_options)


def _inputs(kind: str, params: Mapping[str, Any], prefix: str, storage_options: Any) -> dict[str, Any]:
    from ..io.shards import input_record  # here: xarray is loaded only when a job records inputs

    generator = GENERATORS.get(kind)
    out: dict[str, Any] = {}
    if generator is None:
        return out
    for key, value in params.items():
        name = prefix + key
        if key in generator.sources and _is_spec(value):
            out.update(_inputs(str(value["generate"]), value, name + ".", storage_options))
        elif key not in generator.paths or not generator.paths[key].holds_path(value):
            continue
        elif is_remote(value):
            out[name] = list(object_record(value, storage_options))
        elif generator.paths[key].identity == "sha256":
            out[name] = {"sha256": file_sha256(value, f"{key} file")} if Path(value).is_file() else None
        elif generator.paths[key].identity == "image_set":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DuplicateImagesWarning)
                    out[name] = input_record(resolve_image_set(value))
            except (InputError, OSError):  # the generator names the problem
                out[name] = None
        elif Path(value).is_dir():
            out[name] = input_record(sorted(str(f) for f in Path(value).iterdir() if f.is_file()))
        else:
            out[name] = file_stat(value)
    return out


GENERATION_BYTES_PER_PIXEL = 80
"""Peak bytes the generating process holds per pixel of the image it draws: Gaussian noise's
float64 draws and their two float64 temporaries (measured 74 B per pixel at 3000 x 3000), a
grating's float64 phases (43), a crop's resize (16), uniform noise (7), with Pillow's PNG buffers."""

WHOLE_MOVIE_BYTES_PER_PIXEL = {"scrambled": 82}
"""Generators that hold every frame of their movie at once, and the peak bytes per pixel of each
frame (measured at 2000 pixels a side): ``scrambled`` Fourier-transforms the whole movie
(complex128, with its phases). (``skimage_gif`` keeps its 24 resized frames, whatever its
``loops``: 77 bytes per pixel in all at 3000 x 3000, within :data:`GENERATION_BYTES_PER_PIXEL`.)"""


def planned_pixels(kind: str, params: dict) -> int | None:
    """Pixels (rows x cols) of each image a generator will write, when its parameters decide them.

    The generators that take ``size`` draw ``size`` x ``size`` images (the given ``size``, else
    their default); None where the source decides (``size: null`` of ``photos``, ``scrambled``
    and ``skimage_gif``; ``frames``, ``movie``, ``select`` and ``adversarial``) or where ``size``
    is not a positive integer (the generator refuses it).
    """
    parameter = inspect.signature(check_generator_params(kind, params)).parameters.get("size")
    if parameter is None:
        return None
    size = params.get("size", parameter.default)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    return size * size


def generation_peak_bytes(kind: str, pixels: int, count: int) -> int:
    """Peak bytes of the process that generates ``count`` images of ``pixels`` pixels of ``kind``
    (:data:`GENERATION_BYTES_PER_PIXEL`, and :data:`WHOLE_MOVIE_BYTES_PER_PIXEL` per frame for
    the generators that hold their whole movie); not counted: the process's own baseline and,
    for ``augment``/``photo_movie``, the source photo."""
    return int(pixels * (GENERATION_BYTES_PER_PIXEL + count * WHOLE_MOVIE_BYTES_PER_PIXEL.get(kind, 0)))
