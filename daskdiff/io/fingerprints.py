"""Storage layer: what identifies an input file that decides the numbers (a model, a weights file,
a movie), by its content or by what ``os.stat`` says of it.

Conventions
-----------
- :func:`file_sha256` is the SHA-256 of a regular file's bytes (64 hex digits), memoised per
  process under the file's real path and its stat key ``(size, mtime_ns, inode, ctime_ns,
  device)``: a process hashes an unchanged file once, whoever asks (VGG16's 528 MB weights take
  ~0.4 s to hash here), and hashes it again as soon as any of those change. ``ctime`` is set by
  the kernel on every write and rename, and cannot be set back by a user (``touch``, ``cp -p``
  restore ``mtime`` only), so a file rewritten in place is hashed again even when its size and
  modification time are kept.
- :func:`file_stat` is ``(size, mtime_ns, inode)``: a file's identity without reading it, as
  image inputs already have theirs (:func:`daskdiff.io.shards.input_record`) plus the inode, which
  a file replaced by a rename (an editor, ``cp`` to a temporary then ``mv``) changes.
- Only regular files are read: a FIFO, a device or a folder named like one is refused in one
  line, without blocking (the file is opened with ``O_NONBLOCK`` and checked on its descriptor).
- An object on a store (an fsspec URL) is identified without reading it by what the store says of
  it, one ``HEAD`` (:func:`object_identity`): its size and its change markers (S3's ``ETag``, the
  MD5 of its bytes for a plain upload, ``LastModified`` and ``VersionId``; GCS's ``md5Hash``,
  ``generation``). A new upload under the same key changes its ``ETag``/``LastModified`` even when
  the size is kept, so a rewritten object is noticed as a rewritten file is.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from typing import Any

from ..errors import InputError
from .location import filesystem, is_remote, storage_error

_HASHES: dict[str, tuple[tuple[int, ...], str]] = {}
"""Real path -> (stat key, SHA-256) of the last hash this process took of that path."""
_HASH_LOCK = threading.Lock()


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)


def file_sha256(path: str | os.PathLike, what: str = "file") -> str:
    """SHA-256 (hex) of the regular file at ``path``, memoised per process (see the module notes).

    Parameters
    ----------
    path : path
        The file; links are followed.
    what : str
        What the file is, for error messages (``'model file'``, ``'weights file'``).

    Raises
    ------
    InputError
        ``path`` does not exist, cannot be read, is not a regular file, or kept changing while
        it was hashed (three tries).
    """
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as err:
        raise InputError(f"{what} {os.fspath(path)!r} cannot be read ({err.strerror}); give the path of an existing file") from None
    try:
        with _HASH_LOCK:
            for _ in range(3):
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise InputError(f"{what} {os.fspath(path)!r} is not a regular file; give the path of a file")
                key = _stat_key(before)
                hit = _HASHES.get(real)
                if hit is not None and hit[0] == key:
                    return hit[1]
                os.lseek(fd, 0, os.SEEK_SET)
                with os.fdopen(fd, "rb", closefd=False) as f:
                    digest = hashlib.file_digest(f, "sha256")  # into one reused buffer
                if _stat_key(os.fstat(fd)) == key:  # not written to while it was read
                    _HASHES[real] = (key, digest.hexdigest())
                    return _HASHES[real][1]
    finally:
        os.close(fd)
    raise InputError(f"{what} {os.fspath(path)!r} kept changing while it was read; wait until whatever writes it is done, then re-run")


def file_stat(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(size, mtime_ns, inode)`` of ``path`` as ``os.stat`` sees it now (links followed); None
    if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)


_MARKERS = ("ETag", "etag", "VersionId", "LastModified", "md5Hash", "crc32c", "generation", "updated", "mtime", "created")
"""Fields of an fsspec ``info`` that change when an object is written anew (S3, GCS, Azure, local, memory)."""


def object_identity(url: str, storage_options: Any = None, what: str = "file") -> dict[str, Any]:
    """What identifies the object at ``url`` without reading it: ``{"size": ..., <markers>}`` from
    one fresh ``info`` (a ``HEAD`` on S3; the listing cache is skipped), the markers in
    :data:`_MARKERS` as strings. A store that gives none of them is hashed instead
    (``{"size": ..., "sha256": ...}``, the object read once).

    Raises
    ------
    InputError
        The object does not exist, is a prefix, or the store cannot be reached (one line naming the
        URL and what to check, :func:`daskdiff.io.location.storage_error`).
    """
    try:
        fs, path = filesystem(url, storage_options)
        fs.invalidate_cache(path)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise InputError(f"{what} {url!r} is a prefix (a folder), not an object; give the URL of the file")
        markers = {k: str(info[k]) for k in _MARKERS if info.get(k) is not None}
        if not markers:
            markers = {"sha256": hashlib.sha256(fs.cat_file(path)).hexdigest()}
    except InputError:
        raise
    except Exception as error:
        raise storage_error(url, error, f"{what}: ") from None
    return {"size": int(info.get("size") or 0), **markers}


def file_identity(path: str | os.PathLike, what: str, storage_options: Any = None, key: str = "sha256") -> dict[str, Any]:
    """What identifies a model's or weights' file: ``{key: SHA-256 of its bytes}`` for a local file
    (:func:`file_sha256`), ``{"object": object_identity(...)}`` for an fsspec URL."""
    if is_remote(path):
        return {"object": object_identity(os.fspath(path), storage_options, what)}
    return {key: file_sha256(path, what)}


def object_record(url: str, storage_options: Any = None) -> tuple[int, int]:
    """``(size, marker)`` of an object as an input record holds it (:func:`daskdiff.io.shards.input_record`):
    its size and a 60-bit digest of its :func:`object_identity` in place of a file's ``mtime_ns``;
    ``(-1, -1)`` for an object that cannot be read (it is then skipped by extraction)."""
    try:
        identity = object_identity(url, storage_options)
    except InputError:
        return -1, -1
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return identity["size"], int(digest[:15], 16)
