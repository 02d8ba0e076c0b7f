"""Storage layer: reading a user's file safely: only a regular file is opened for reading, its size is bounded
before a byte is read, and a file that is not what its name says is named for what it seems to be.

A FIFO, a device (``/dev/zero``), a socket or a folder named like an image or a record would make a
plain ``open(path).read()`` wait forever or read without end. :func:`read_regular` refuses them with
:class:`NotReadableError` (whose ``reason`` says what the path is) without ever waiting on them: the
path is checked with ``os.stat`` before it is opened, opened with ``O_NONBLOCK`` (a FIFO's ``open``
returns at once) and checked again with ``os.fstat`` on the opened descriptor, so a file replaced
between the two checks is caught too. :func:`seems_to_be` names the format of a file from its first
bytes, for messages about a file that is not an image or movie at all (an HTML page saved as
``clip.gif``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any, Iterator

from ..errors import InputError
from .location import ObjectPath, filesystem, is_remote, storage_error
from .store import local_copy as object_copy

__all__ = ["TEXT_FILE_MAX_BYTES", "NotReadableError", "VIDEO_CONTAINERS", "file_kind", "open_regular", "read_head", "read_input",
           "local_copy", "read_object", "read_regular", "seems_to_be", "special_kind"]

_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "folder",
    stat.S_IFLNK: "symbolic link",
}

TEXT_FILE_MAX_BYTES = 64 * 2**20
"""The largest list file or JSON record read (64 MiB): a list file of some 300,000 image paths of 200
characters, more images than one set's differentiation can hold (its ``n x n`` distances); a
``movie.json`` naming as many frames."""

_CHUNK = 1 << 24
"""Bytes asked of each ``read`` call after the first (16 MiB), which asks for the file's size: a file
that grows while it is read, or reports no size (``/proc``), is read in chunks up to its limit."""


class NotReadableError(InputError):
    """A path that is not read: not a regular file, larger than its limit, or not readable at all.

    Attributes
    ----------
    path : str
        The path, as given.
    reason : str
        A short human reason, e.g. ``'not a regular file (FIFO)'``.
    """

    verb = "cannot read"
    """How the message starts: ``"<verb> '<path>': <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.verb} '{self.path}': {reason}")

    def __reduce__(self):
        # Rebuild from (path, reason), not from the formatted message, so the error survives
        # pickling (Dask sends a task's exception from the worker to the client).
        return type(self), (self.path, self.reason)


def _size_words(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _check_mode(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotReadableError(path, f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special file')})")


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is when it is not a regular file, for messages: ``'a FIFO'``,
    ``'a character device'``, ``'a socket'``, ``'a block device'``, ``'a folder'``, ``'a symbolic link'``
    (from ``os.lstat``), else ``'a special file'``."""
    return f"a {_KINDS.get(stat.S_IFMT(mode), 'special file')}"


def special_kind(path: str | os.PathLike) -> str | None:
    """What a path is when it is not a regular file (links followed), for messages: ``'a FIFO'``,
    ``'a character device'``, ``'a socket'``, ``'a block device'``, ``'a folder'``, ``'a special
    file'``; None for a regular file. ``os.stat`` only: nothing is opened."""
    mode = os.stat(path).st_mode
    return None if stat.S_ISREG(mode) else file_kind(mode)


def _check_size(path: str, size: int, limit: int | None, what: str) -> None:
    if limit is not None and size > limit:
        raise NotReadableError(path, f"{_size_words(size)}, larger than any {what} ({_size_words(limit)} at most)")


def open_regular(path: str | os.PathLike, *, limit: int | None = None, what: str = "file") -> int:
    """A read-only descriptor of ``path`` if it is a regular file of at most ``limit`` bytes.

    Parameters
    ----------
    path : str or path-like
        The file; a symlink is followed (to a regular file it is fine).
    limit : int, optional
        Most bytes the file may hold (None: any size).
    what : str, default 'file'
        What the file should be, for the reason of a file over `limit` (``'image file'``).

    Returns
    -------
    int
        A descriptor opened ``O_RDONLY``, blocking (the caller closes it).

    Raises
    ------
    NotReadableError
        The path does not exist (``reason`` says whether it is a broken symlink), is not a regular file
        (``'not a regular file (FIFO)'``, ``(character device)``, ``(socket)``, ``(folder)``), is larger
        than `limit`, or cannot be opened (permission denied, ...). A FIFO or device is never opened
        for a blocking read: the path is checked with ``os.stat`` first, opened with ``O_NONBLOCK``,
        and its descriptor checked again with ``os.fstat``.
    """
    path = os.fspath(path)
    try:
        _check_mode(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotReadableError(path, f"broken symlink (its target '{os.readlink(path)}' does not exist)") from None
        raise NotReadableError(path, "file not found") from None
    except PermissionError:
        raise NotReadableError(path, "permission denied (check the file's permissions)") from None
    except OSError as error:
        raise NotReadableError(path, f"cannot open: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        _check_mode(path, info.st_mode)  # replaced by a FIFO or device after the os.stat above
        _check_size(path, info.st_size, limit, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, *, limit: int | None = None, what: str = "file") -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (:func:`open_regular`).

    The file's size (``os.fstat``) is read in one call, into one buffer; what a file that grows
    meanwhile (or reports no size) holds beyond is read in chunks, and the read stops one byte
    past `limit`, so it never costs more than `limit` bytes of memory.

    Raises
    ------
    NotReadableError
        As :func:`open_regular`, or the file grew past `limit`, or a read failed.
    """
    fd = open_regular(path, limit=limit, what=what)
    cap = float("inf") if limit is None else limit
    chunks: list[bytes] = []
    total = 0
    try:
        size = os.fstat(fd).st_size
        want = size + 1 if size else _CHUNK  # the whole file in one read, and one byte to see its end
        while chunk := os.read(fd, int(min(want, cap + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise NotReadableError(path, f"grew past {_size_words(limit)} while it was read, more than any {what}")
            want = _CHUNK
    except OSError as error:
        raise NotReadableError(path, f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_object(url: str, *, limit: int | None = None, what: str = "file", storage_options=None) -> bytes:
    """The bytes of the object at ``url`` (an fsspec URL), of at most ``limit`` bytes: the object
    store's counterpart of :func:`read_regular`.

    One request: a ranged GET of the first ``limit + 1`` bytes (the whole object when ``limit`` is
    None), so an object over ``limit`` costs ``limit + 1`` bytes at most and is refused. An object
    is never a FIFO or a device; a prefix (a "folder") is refused as one.

    Raises
    ------
    NotReadableError
        No such object, a prefix, larger than ``limit``, or the store refused or did not answer
        (``reason`` says which, and what to check).
    """
    try:
        fs, path = filesystem(url, storage_options)
        try:
            data = fs.cat_file(path) if limit is None else fs.cat_file(path, start=0, end=limit + 1)
        except FileNotFoundError:
            raise NotReadableError(url, "object not found") from None
        except IsADirectoryError:
            raise NotReadableError(url, "not a regular file (folder)") from None
        except OSError:
            if limit is None or fs.info(path).get("size") != 0:
                raise
            data = b""  # S3 refuses any byte range of an empty object
    except NotReadableError:
        raise
    except Exception as error:  # botocore's and aiohttp's errors are no OSError
        raise NotReadableError(url, str(storage_error(url, error)).split(": ", 1)[1]) from None
    if limit is not None and len(data) > limit:
        raise NotReadableError(url, f"more than {_size_words(limit)}, larger than any {what} ({_size_words(limit)} at most)")
    return data


def read_input(path: str | os.PathLike, *, limit: int | None = None, what: str = "file", storage_options=None) -> bytes:
    """:func:`read_object` for an fsspec URL (``s3://...``), :func:`read_regular` for a local path."""
    if is_remote(path):
        return read_object(os.fspath(path), limit=limit, what=what, storage_options=storage_options)
    return read_regular(path, limit=limit, what=what)


@contextlib.contextmanager
def local_copy(url: str, storage_options: Any, what: str) -> Iterator[str]:
    """A temporary local copy of the object at ``url``, for readers that take only a file (Keras
    loads models and weights from files), under the object's own name (Keras reads the format from
    its suffix); removed on exit. A store that cannot be read raises a one-line
    :class:`~daskdiff.io.location.StorageError` naming ``what`` and the URL. A local path is
    given back as it is."""
    if not is_remote(url):
        yield os.fspath(url)
        return
    copy = contextlib.ExitStack()
    try:
        local = copy.enter_context(object_copy(ObjectPath(url, storage_options), missing_ok=False))
    except Exception as error:
        raise storage_error(url, error, f"{what}: ") from None
    with copy:
        yield os.fspath(local)


VIDEO_CONTAINERS = ("an MP4/QuickTime video", "an AVI video", "a Matroska/WebM video", "an MPEG video", "an MPEG-TS video",
                    "a Flash video", "an Ogg video", "a Windows Media (ASF) video")
"""What :func:`seems_to_be` calls a video that only a video plugin (``imageio-ffmpeg`` or ``av``) reads."""

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"BM", "a BMP image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (4, b"ftyp", "an MP4/QuickTime video"),
    (4, b"moov", "an MP4/QuickTime video"),
    (4, b"mdat", "an MP4/QuickTime video"),
    (4, b"wide", "an MP4/QuickTime video"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "a Windows Media (ASF) video"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (0, b"\x00\x00\x01\xba", "an MPEG video"),
    (0, b"\x00\x00\x01\xb3", "an MPEG video"),
    (0, b"FLV", "a Flash video"),
    (0, b"OggS", "an Ogg video"),
    (0, b"\x93NUMPY", "a numpy array (.npy)"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or .npz, .docx, .keras)"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5/NetCDF file"),
    (0, b"CDF\x01", "a NetCDF file"),
)
_RIFF = {b"AVI ": "an AVI video", b"WEBP": "a WebP image", b"WAVE": "a WAV sound"}


def seems_to_be(head: bytes) -> str:
    """What a file seems to be from its first bytes (a few hundred suffice), with its article:
    ``'an HTML page'``, ``'an MP4/QuickTime video'``, ``'a PNG image'``, ``'a text file'``, ... or
    ``'unknown binary data'``.

    Only the signatures of common formats are known; a name in :data:`VIDEO_CONTAINERS` is a video
    that needs a video plugin; a name ending in ``image`` is a raster image format.
    """
    if not head:
        return "an empty file"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return _RIFF.get(head[8:12], "a RIFF file")
    if head[:1] == b"\x47" and head[188:189] == b"\x47":  # two 188-byte transport packets
        return "an MPEG-TS video"
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a character cut at the end of `head`
            return "unknown binary data"
        text = head[: error.start].decode("utf-8")
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:512]:
        return "an HTML page"
    if "<svg" in lowered[:512]:
        return "an SVG drawing (text, not a raster image)"
    if lowered.startswith("<?xml"):
        return "an XML document"
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a text file"
    return "unknown binary data"


def read_head(path: str | os.PathLike, n: int = 512) -> bytes:
    """The first ``n`` bytes of ``path``, a regular file (:func:`open_regular`); for :func:`seems_to_be`."""
    fd = open_regular(path)
    try:
        return os.read(fd, n)
    except OSError as error:
        raise NotReadableError(path, f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)
