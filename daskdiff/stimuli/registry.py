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
Importing this module loads neither Keras, scikit-image nor imageio: spec validation uses it.
"""

from __future__ import annotations

import inspect
import os
from typing import Callable, Literal

from .adversarial import adversarial_images
from .augment import augmented_copies
from .common import _check_choice
from .frames import movie_frames
from .gif import skimage_gif
from .gratings import drifting_gratings
from .noise import white_noise
from .movie import movie_copy
from .pans import photo_movie
from .photos import sample_photos
from .scramble import phase_scrambled
from .select import selected_images
from ..errors import InputError, shorten

GeneratorKind = Literal[
    "noise", "photos", "augment", "frames", "select", "adversarial",
    "gratings", "photo_movie", "skimage_gif", "scrambled", "movie",
]


GENERATORS: dict[str, Callable[..., list[str]]] = {
    "noise": white_noise,
    "photos": sample_photos,
    "augment": augmented_copies,
    "frames": movie_frames,
    "select": selected_images,
    "adversarial": adversarial_images,
    "gratings": drifting_gratings,
    "photo_movie": photo_movie,
    "skimage_gif": skimage_gif,
    "scrambled": phase_scrambled,
    "movie": movie_copy,
}
"""Generator kind name (as written in job specs) -> function writing that kind of image set."""


MOVIE_KINDS: frozenset[str] = frozenset({"gratings", "photo_movie", "skimage_gif", "scrambled", "movie"})
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


def planned_count(kind: str, params: dict) -> tuple[int | None, str]:
    """How many images a generator will write, without writing any: ``(count, how)``.

    ``how`` is ``'exact'`` (``noise``, ``augment``, ``photos``: their ``count``, ``names`` or
    default; ``adversarial`` when it keeps failed attacks, the default), ``'at most'`` (``select``:
    the images of its ``source``; ``adversarial`` with ``keep_failures: false``) or ``'unknown'``
    (``frames``: the movie decides; count None). A ``movie`` file is opened and checked here
    (:func:`daskdiff.stimuli.movie.planned_frames`: a file that is no movie raises
    :class:`InputError`); a ``.npy`` movie's count is exact, from its header. Path parameters must
    already be resolved.
    """
    function = check_generator_params(kind, params)
    if kind in ("noise", "augment", "photos"):
        if kind == "photos" and params.get("names") is not None:
            return len(list(params["names"])), "exact"
        default = inspect.signature(function).parameters["count"].default
        if kind == "photos" and default is None:
            from .photos import DEFAULT_PHOTO_COUNT

            default = DEFAULT_PHOTO_COUNT
        return int(params.get("count", default) or default), "exact"
    if kind in ("select", "adversarial"):
        from ..io.images import resolve_image_set

        try:
            n = len(resolve_image_set(str(params["source"])))
        except (InputError, OSError):
            return None, "unknown"
        exact = kind == "adversarial" and params.get("keep_failures", True)
        return n, "exact" if exact else "at most"
    if kind in ("gratings", "photo_movie"):
        from .movie import _check_fps, _check_length

        fps = _check_fps(params.get("fps", inspect.signature(function).parameters["fps"].default))
        return _check_length(fps, params.get("duration"), params.get("n_frames"), default_duration=2.0), "exact"
    if kind == "movie" and isinstance(params.get("movie"), (str, os.PathLike)) and os.path.isfile(params["movie"]):
        from .movie import planned_frames

        n = planned_frames(params["movie"], params.get("n_frames"))
        return (n, "exact") if n is not None else ((int(params["n_frames"]), "at most") if params.get("n_frames") else (None, "unknown"))
    if kind == "skimage_gif":
        from .gif import SKIMAGE_GIF_FRAMES

        loops = params.get("loops", inspect.signature(function).parameters["loops"].default)
        return (SKIMAGE_GIF_FRAMES * loops, "exact") if isinstance(loops, int) and not isinstance(loops, bool) else (None, "unknown")
    if kind in ("scrambled", "movie"):
        source = params.get("source", params.get("movie"))
        n, how = (planned_count(source["generate"], {k: v for k, v in source.items() if k != "generate"})
                  if isinstance(source, dict) and source.get("generate") in MOVIE_KINDS else (None, "unknown"))
        if params.get("n_frames") is not None:
            return (int(params["n_frames"]), "at most") if n is None else (min(n, int(params["n_frames"])), how)
        return n, how
    return None, "unknown"


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


def generator_function(kind: str) -> Callable[..., list[str]]:
    """The function that writes image sets of ``kind`` (a key of :data:`GENERATORS`): its
    signature, annotations and numpydoc docstring describe the generator's parameters
    (``daskdiff images KIND --help`` is built from them)."""
    return GENERATORS[kind]
