"""Storage layer: bytes in and out of an object store (an :class:`~daskdiff.io.location.ObjectPath`).

An object store has no rename, no folders and no ``flock``; what it has instead is that a PUT is
atomic (an object appears whole, or not at all) and that a PUT can be made conditional
(``If-None-Match: *``, ``If-Match: <ETag>``). daskdiff therefore writes an object by writing a
local temporary file and uploading it whole (:func:`upload`, what
:func:`daskdiff.io.atomic.atomic_path` does for an ``ObjectPath``), so a reader never sees a
partial object and no temporaries are ever left in the store; it reads one by downloading it to a
local temporary file (:func:`local_copy`), so that the NetCDF and ``.npz`` readers, with their
checksums and checks, are the same for both kinds of output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .location import ObjectPath


def upload(local: str | os.PathLike, path: ObjectPath) -> None:
    """Upload file ``local`` whole to ``path`` (one PUT, or a multipart upload that becomes
    visible only once complete): readers see the old object or the new one, never a part."""
    fs, key = path.filesystem()
    fs.put_file(os.fspath(local), key)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike | ObjectPath, *, missing_ok: bool = True) -> Iterator[Path]:
    """A local path holding ``path``'s bytes for the block: a local path itself; an object
    downloaded to a temporary file under the object's own name, removed afterwards. An object
    that does not exist yields a path that does not exist either (the callers' own "not there"
    branch then runs), or raises ``FileNotFoundError`` where ``missing_ok`` is False."""
    if not isinstance(path, ObjectPath):
        yield Path(path)
        return
    folder = tempfile.mkdtemp(prefix="daskdiff-copy-")
    local = Path(folder) / (path.name or "object")
    try:
        fs, key = path.filesystem()
        try:
            fs.get_file(key, os.fspath(local))
        except FileNotFoundError:
            if not missing_ok:
                raise
            local.unlink(missing_ok=True)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_object(path: ObjectPath, limit: int) -> bytes | None:
    """The bytes of a small object (a record daskdiff keeps: manifest, ``job.json``), None if it
    does not exist; one over ``limit`` bytes raises ``ValueError``."""
    fs, key = path.filesystem()
    try:
        size = fs.size(key)
        if size is not None and size > limit:
            raise ValueError(f"{path} holds {size} bytes (a record daskdiff writes is under {limit})")
        return fs.cat_file(key)
    except FileNotFoundError:
        return None


def remove(path: ObjectPath) -> bool:
    """Delete one object (never a prefix: nothing below it is touched); whether it was there."""
    fs, key = path.filesystem()
    try:
        fs.rm_file(key)
    except FileNotFoundError:
        return False
    return True


def listing(prefix: ObjectPath) -> dict[str, dict[str, Any]]:
    """Every object below ``prefix`` (one recursive listing): its key relative to ``prefix``
    -> its info (``size``, ``ETag``, ``LastModified`` for S3). A prefix with no object: ``{}``.

    Raises
    ------
    OSError
        The bucket does not exist (``FileNotFoundError``), the credentials are refused
        (``PermissionError``), the endpoint does not answer (the client's error, as an ``OSError``).
    """
    fs, key = prefix.filesystem()
    try:
        found = fs.find(key, detail=True)
    except OSError:
        raise
    except Exception as err:  # botocore's EndpointConnectionError, NoCredentialsError, ...: not OSErrors
        raise OSError(f"{type(err).__name__}: {err}") from err
    return {name[len(key) + 1:]: info for name, info in found.items() if name.startswith(key + "/")}


def precondition_failed(error: BaseException) -> bool:
    """Whether ``error`` (raised by a conditional write or delete) says its condition did not
    hold (HTTP 412, ``PreconditionFailed``; 409 ``ConditionalRequestConflict``: another
    conditional write to the key is in flight)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        if "pre-condition" in str(error).lower() or "precondition" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False
