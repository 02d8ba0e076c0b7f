"""Storage layer: image sets: which files a folder, a glob pattern or a list file names, as sorted absolute paths.

An *image set* is named by a folder, a glob pattern or a list file; :func:`resolve_image_set`
turns it into sorted absolute paths, one per real file, and :func:`check_min_images` refuses a
set too small to compare. Nothing is decoded here: :mod:`daskdiff.io.images` decodes the files.
"""

from __future__ import annotations

import glob
import os
import posixpath
import warnings
from typing import Any, Sequence

from ..errors import InputError
from .location import bounded_options, filesystem, is_remote, local_path, storage_error
from .reading import TEXT_FILE_MAX_BYTES, NotReadableError, read_object, read_regular, special_kind

__all__ = [
    "IMAGE_SUFFIXES",
    "LIST_SUFFIXES",
    "DuplicateImagesWarning",
    "ImageSetError",
    "check_min_images",
    "is_movie_url",
    "resolve_image_set",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""Lower-case file suffixes taken from a folder (the match ignores case: ``.JPG`` is taken)."""

LIST_SUFFIXES: frozenset[str] = frozenset({".txt", ".lst"})
"""Suffixes of a list file: one image path per line."""

MOVIE_URL_SUFFIXES: frozenset[str] = IMAGE_SUFFIXES | frozenset(
    {".apng", ".npy", ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ogv", ".wmv", ".flv"}
)
"""Suffixes by which an fsspec URL that is no glob names a movie *file* (:func:`is_movie_url`)."""

_GLOB_CHARACTERS = frozenset("*?[")


class ImageSetError(InputError):
    """An image set that cannot be used at all: missing, empty, or an unreadable list file."""


class DuplicateImagesWarning(UserWarning):
    """An image set named one file through several paths (symlinks, hard-linked folders, a list
    file naming it twice); only the first path, in sorted order, was kept."""


def resolve_image_set(
    source: str | os.PathLike,
    *,
    name: str = "images",
    base_dir: str | os.PathLike | None = None,
    storage_options: Any = None,
    timeout: float = 120,
) -> list[str]:
    """The image files of a set, as sorted absolute paths (or URLs, for a set on an object store).

    Parameters
    ----------
    source : str or path-like
        One of

        - a **folder**: every file directly in it (not in sub-folders) whose suffix, in any case,
          is in :data:`IMAGE_SUFFIXES`; hidden files (name starting with ``.``, such as macOS'
          ``._photo.jpg``) are left out, as a ``*`` glob leaves them out;
        - a **glob pattern**, any path containing ``*``, ``?`` or ``[`` that is not itself an
          existing path, e.g. ``'photos/*.jpg'`` or ``'photos/**/*.png'`` (``**`` is recursive).
          Every match that is not a folder is taken, whatever its suffix: the pattern decides;
        - a **list file** (suffix ``.txt`` or ``.lst``), UTF-8, one path per line. Lines are
          stripped of surrounding white space; blank lines and lines starting with ``#`` are
          ignored; relative paths are relative to the list file's folder.
    name : str, default 'images'
        The set's name, used in error messages only.
    base_dir : str or path-like, optional
        Folder a relative `source` is relative to. Default: the current working directory.
        A leading ``~`` in `source` or in a list file's lines is expanded to the home folder.
    storage_options : mapping, optional
        For a `source` that is an fsspec URL (``s3://bucket/a/``, ``s3://bucket/a/*.png``,
        ``s3://bucket/a.txt``): the filesystem's options, on top of the environment's.
    timeout : float, default 120
        Seconds within which an object store that does not answer is named (``cluster.start_timeout``).

    Returns
    -------
    list of str
        Absolute paths (``os.path.abspath``: ``..`` is collapsed, symlinks are *not* resolved),
        sorted by path string, one per real file: paths that lead to the same file
        (``os.path.realpath``, e.g. through a symlinked folder or a symlink loop under ``**``)
        are kept once, as the first in sorted order, and a :class:`DuplicateImagesWarning`
        says how many were dropped.

    Raises
    ------
    ImageSetError
        The source does not exist, or is a FIFO, device or socket; a folder holds no image file; a
        glob matches no file; a list file is not a regular file, is larger than
        :data:`daskdiff.io.reading.TEXT_FILE_MAX_BYTES`, cannot be read, lists no path, or lists
        only paths that do not exist.
    TypeError
        `source` is not a string or path-like.

    Notes
    -----
    A `source` on an object store is listed with one request (``ls`` of a prefix, ``glob`` of a
    pattern, one GET of a list file; a prefix of more than 1,000 objects takes one more request per
    1,000) and its objects are returned as URLs, sorted, each once (an object has one key: nothing
    is a link). A prefix is listed as a folder is: the image objects directly under it, not hidden.
    A list file's relative lines are relative to its own prefix; the objects it names are not
    checked here (one request each): a missing one is skipped when it is decoded.

    Nothing is decoded here. A listed file that does not exist (when some others do), a broken
    symlink, or a file that is not really an image is returned as given and becomes a
    :class:`~daskdiff.io.images.Skipped` entry in
    :func:`~daskdiff.io.images.load_images`.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"image set {name!r}: source must be a folder, glob pattern or list file path "
            f"(str or os.PathLike), got {type(source).__name__}: {source!r}"
        )
    text = local_path(os.fspath(source))
    if not text.strip():
        raise ImageSetError(
            f"image set {name!r}: source is an empty string; give a folder, a glob pattern such "
            "as 'photos/*.jpg', or a list file (.txt/.lst) with one image path per line"
        )
    if is_remote(text):
        return _remote_set(text, name, bounded_options(text, storage_options, timeout))
    base = os.path.abspath(os.getcwd() if base_dir is None else os.fspath(base_dir))
    path = os.path.abspath(os.path.join(base, os.path.expanduser(text)))

    if os.path.isdir(path):
        files = _folder_files(path, name)
    elif os.path.isfile(path):
        files = _list_file_paths(path, name)
    elif os.path.exists(path) and not _GLOB_CHARACTERS & set(text):
        raise ImageSetError(
            f"image set {name!r}: '{path}' is {special_kind(path)}, not a folder, glob pattern or list file; "
            "give a folder of images, a glob pattern such as 'photos/*.jpg', or a list file (.txt/.lst)"
        )
    elif _GLOB_CHARACTERS & set(text):
        pattern = os.path.expanduser(text)
        if not os.path.isabs(pattern):  # the base folder's own name is not a pattern
            pattern = os.path.join(glob.escape(base), pattern)
        files = _glob_files(pattern, name)
    else:
        raise ImageSetError(
            f"image set {name!r}: '{path}' does not exist (given as {text!r}, relative to "
            f"'{base}'); give an existing folder, a glob pattern such as 'photos/*.jpg', or a "
            "list file (.txt/.lst)"
        )
    return _one_path_per_file(sorted(set(files)), name)


def _one_path_per_file(paths: list[str], name: str) -> list[str]:
    """The first of ``paths`` (sorted) for each real file; warn how many others were dropped."""
    seen: set[str] = set()
    kept = []
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            kept.append(p)
    if len(kept) < len(paths):
        warnings.warn(
            f"image set {name!r}: dropped {len(paths) - len(kept)} duplicate path(s) of the same "
            f"file(s) (symlinks or repeated list entries; {len(kept)} file(s) kept)",
            DuplicateImagesWarning,
            stacklevel=3,
        )
    return kept


def check_min_images(paths: Sequence[str], name: str = "images", minimum: int = 2) -> list[str]:
    """``paths`` if the set has at least ``minimum`` files, else :class:`ImageSetError`.

    Differentiation compares images pairwise, so a set needs at least two; checking the
    resolved paths (from :func:`resolve_image_set`) refuses a one-file set before any work
    starts. Files that later fail to decode are counted by the job itself.
    """
    if len(paths) < minimum:
        shown = f" ({paths[0]})" if paths else ""
        raise ImageSetError(
            f"image set {name!r}: resolves to {len(paths)} file(s){shown}; differentiation needs at "
            f"least {minimum} images: add images to the set or remove it from image_sets"
        )
    return list(paths)


def _folder_files(folder: str, name: str) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except OSError as error:
        raise ImageSetError(
            f"image set {name!r}: cannot list folder '{folder}': {error.strerror}; check its "
            "permissions"
        ) from error
    files = [
        entry.path
        for entry in entries
        if not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        and not os.path.isdir(entry.path)
    ]
    if not files:
        raise ImageSetError(
            f"image set {name!r}: folder '{folder}' holds no image file (accepted suffixes: "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}; sub-folders and hidden files are not "
            "searched); put images in it, or give a glob pattern such as "
            f"'{os.path.join(folder, '**', '*.jpg')}'"
        )
    return files


def _glob_files(pattern: str, name: str) -> list[str]:
    files = [p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p)]
    if not files:
        raise ImageSetError(
            f"image set {name!r}: glob pattern '{pattern}' matches no file; check the folder "
            "and the suffix (the match is case-sensitive on most systems: '*.jpg' does not "
            "match 'A.JPG'), or give the folder itself"
        )
    return [os.path.abspath(p) for p in files]


def _list_file_paths(list_file: str, name: str) -> list[str]:
    suffix = os.path.splitext(list_file)[1].lower()
    if suffix not in LIST_SUFFIXES:
        raise ImageSetError(
            f"image set {name!r}: '{list_file}' is a file but not a list file (suffix "
            f"{suffix or '(none)'!s}, expected one of {', '.join(sorted(LIST_SUFFIXES))}); "
            "give its folder, a glob pattern, or a .txt file listing the images"
        )
    try:
        lines = read_regular(list_file, limit=TEXT_FILE_MAX_BYTES, what="list file").decode("utf-8-sig").splitlines()
    except (NotReadableError, UnicodeDecodeError) as error:
        raise ImageSetError(
            f"image set {name!r}: cannot read list file '{list_file}': {getattr(error, 'reason', error)}; it must "
            "be a readable UTF-8 text file with one image path per line"
        ) from None
    folder = os.path.dirname(list_file)
    entries = [line.strip() for line in lines]
    files = [
        os.path.abspath(os.path.join(folder, os.path.expanduser(entry)))
        for entry in entries
        if entry and not entry.startswith("#")
    ]
    if not files:
        raise ImageSetError(
            f"image set {name!r}: list file '{list_file}' lists no path (only blank lines or "
            "'#' comments); write one image path per line"
        )
    if not any(os.path.lexists(p) for p in files):
        raise ImageSetError(
            f"image set {name!r}: none of the {len(files)} paths in list file '{list_file}' "
            f"exists (first: '{files[0]}'); relative paths are relative to the list file's "
            f"folder '{folder}'"
        )
    return files


def is_movie_url(path: str | os.PathLike) -> bool:
    """Whether an image set's ``path`` names a movie file on an object store: an fsspec URL with no
    glob character, not ending in ``/``, whose suffix is in :data:`MOVIE_URL_SUFFIXES` (told by its
    name alone, without a request; a local movie file is told by what the disk says)."""
    path = os.fspath(path)
    return (is_remote(path) and not path.endswith("/") and not _GLOB_CHARACTERS & set(path)
            and os.path.splitext(path)[1].lower() in MOVIE_URL_SUFFIXES)


def _remote_set(url: str, name: str, options: dict) -> list[str]:
    """:func:`resolve_image_set` for an fsspec URL: one listing (or one GET of a list file)."""
    what = f"image set {name!r}: "
    try:
        fs, path = filesystem(url, options)
        fs.invalidate_cache()  # a long-lived client (a notebook) lists what is there now
        if _GLOB_CHARACTERS & set(path):
            found = fs.glob(path, detail=True)
            files = [p for p, info in found.items() if info.get("type") != "directory"]
            if not files:
                raise ImageSetError(f"{what}glob pattern '{url}' matches no object; check the prefix and the suffix "
                                    "(the match is case-sensitive), or give the prefix itself ending in '/'")
        elif os.path.splitext(path)[1].lower() in LIST_SUFFIXES:
            files = _remote_list(url, fs, path, name, options)
        else:
            entries = fs.ls(path.rstrip("/"), detail=True)
            if len(entries) == 1 and entries[0].get("type") != "directory" and entries[0]["name"] == path.rstrip("/"):
                raise ImageSetError(f"{what}'{url}' is one object, not a prefix, glob pattern or list file; give its "
                                    f"prefix ('{posixpath.dirname(url)}/'), a glob, or a list file (.txt/.lst); a movie "
                                    f"file is told by its suffix ({', '.join(sorted(MOVIE_URL_SUFFIXES - IMAGE_SUFFIXES))} or an image's)")
            files = [e["name"] for e in entries if e.get("type") != "directory"
                     and not posixpath.basename(e["name"]).startswith(".")
                     and os.path.splitext(e["name"])[1].lower() in IMAGE_SUFFIXES]
            if not files:
                raise ImageSetError(f"{what}prefix '{url}' holds no image object (accepted suffixes: "
                                    f"{', '.join(sorted(IMAGE_SUFFIXES))}; deeper prefixes are not searched); give a "
                                    f"glob such as '{url.rstrip('/')}/**/*.jpg'")
    except ImageSetError:
        raise
    except Exception as error:
        raise ImageSetError(str(storage_error(url, error, what))) from None
    return sorted({f if "://" in f else fs.unstrip_protocol(f) for f in files})


def _remote_list(url: str, fs: Any, path: str, name: str, options: dict) -> list[str]:
    """The URLs a list file on an object store names: its lines, relative ones joined to its prefix."""
    try:
        text = read_object(url, limit=TEXT_FILE_MAX_BYTES, what="list file", storage_options=options).decode("utf-8-sig")
    except (NotReadableError, UnicodeDecodeError) as error:
        raise ImageSetError(f"image set {name!r}: cannot read list file '{url}': {getattr(error, 'reason', error)}; it must "
                            "be a UTF-8 text object with one image path per line") from None
    folder = posixpath.dirname(path)
    entries = [line.strip() for line in text.splitlines()]
    files = [e if "://" in e else fs.unstrip_protocol(posixpath.normpath(posixpath.join(folder, e)))
             for e in entries if e and not e.startswith("#")]
    if not files:
        raise ImageSetError(f"image set {name!r}: list file '{url}' lists no path (only blank lines or '#' comments); "
                            "write one image path per line")
    return files
