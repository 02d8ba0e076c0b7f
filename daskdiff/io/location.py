"""Storage layer: where a path in a spec points, a local file or an object through fsspec.

Any place a spec names a path (an image set, a model or weights file, the output) may instead
name an fsspec URL (``s3://bucket/prefix/``, ``gs://...``, ``memory://...``). A *local* location
is a plain path or a ``file://`` URL and keeps every code path daskdiff had before object storage;
a *remote* one goes through the filesystem fsspec registers for its protocol.

Credentials and endpoints come the way fsspec and s3fs users expect: the environment
(``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...), fsspec's own configuration, and an optional
``storage_options`` mapping in the spec for what they cannot say. What a spec's
``storage_options`` hold never goes into ``job.json``, the results' attributes or a log line
unredacted: :func:`redact` replaces every value whose key names a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

#: ``scheme://`` at the start of a string: a URL (a Windows drive ``C:\\`` has no ``//``).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

#: Keys of ``storage_options`` (any depth) whose values are secrets: never written or logged.
_SECRET = re.compile(r"(secret|token|password|passwd|credential|key)", re.IGNORECASE)
#: Keys that contain one of the words above but hold no secret.
_NOT_SECRET = frozenset({"key_id_env", "sse_kms_key_id"})

REDACTED = "<redacted>"


def protocol(path: str | os.PathLike) -> str:
    """The fsspec protocol of ``path``: ``"file"`` for a plain path, else the URL's scheme (lower case)."""
    match = _SCHEME.match(os.fspath(path)) if isinstance(path, str) else None
    return match.group(1).lower() if match else "file"


def is_remote(path: str | os.PathLike) -> bool:
    """True where ``path`` is a URL of a protocol other than ``file://`` (``s3://``, ``gs://``, ...)."""
    return protocol(path) != "file"


def local_path(path: str | os.PathLike) -> str:
    """A local location as a plain path: ``file:///a/b`` becomes ``/a/b``; a plain path is returned as is."""
    text = os.fspath(path)
    if protocol(text) == "file" and _SCHEME.match(text):
        return text[len("file://"):]
    return text


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem and the path within it for ``url`` (``fsspec.core.url_to_fs``).

    Parameters
    ----------
    url : str
        An fsspec URL (``s3://bucket/key``) or a local path.
    storage_options : mapping, optional
        Keyword arguments for the filesystem (e.g. ``{"endpoint_url": ...}`` for s3fs), on top of
        what the environment and fsspec's configuration say.

    Returns
    -------
    (fsspec.AbstractFileSystem, str)
    """
    import fsspec.core

    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def redact(options: Any) -> Any:
    """``options`` with every value under a secret-looking key replaced by ``"<redacted>"``.

    Mappings and lists are followed to any depth; keys are matched case-insensitively against
    ``secret``, ``token``, ``password``, ``credential`` and ``key`` (so ``key``, ``secret``,
    ``aws_secret_access_key``, ``session_token`` and ``client_kwargs.aws_session_token`` are hidden),
    except the few named in ``_NOT_SECRET``. Used wherever spec-given ``storage_options`` are written
    or printed.
    """
    if isinstance(options, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET.search(k) and k not in _NOT_SECRET else redact(v))
            for k, v in options.items()
        }
    if isinstance(options, (list, tuple)):
        return type(options)(redact(v) for v in options)
    return options


@dataclass(frozen=True)
class ObjectPath:
    """An object (or a prefix) in an object store, addressed as :class:`pathlib.Path` addresses a
    file: ``/`` joins, ``name``, ``parent``, ``exists()``, ``glob()``, ``str()`` (the URL).

    An output location is a :class:`pathlib.Path` (a local folder) or an ``ObjectPath`` (an
    ``s3://bucket/prefix``): code that builds names (``output / "activations"``) serves both,
    and what reads or writes bytes chooses by type (:func:`daskdiff.io.atomic.atomic_path`
    writes an object whole, then publishes it; :func:`daskdiff.io.store.local_copy` reads one).
    It has no ``__fspath__`` on purpose: handing one to ``open`` or ``os.path`` fails loudly
    instead of writing a local folder named ``s3:``.

    ``options``: the filesystem's ``storage_options`` (endpoint, credentials) where the
    environment does not say them; they travel with the path to Dask workers, never into its
    ``repr`` (:func:`redact`) nor into equality.
    """

    url: str
    options: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", os.fspath(self.url).rstrip("/"))

    def __truediv__(self, part: str | os.PathLike) -> "ObjectPath":
        return ObjectPath(f"{self.url}/{os.fspath(part).strip('/')}", self.options)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        options = f", options={redact(dict(self.options))!r}" if self.options else ""
        return f"ObjectPath({self.url!r}{options})"

    @property
    def name(self) -> str:
        return self.url.rpartition("/")[2]

    @property
    def parent(self) -> "ObjectPath":
        head, _, _ = self.url.rpartition("/")
        return ObjectPath(head if not head.endswith(":/") else self.url, self.options)

    def relative_to(self, other: "ObjectPath") -> PurePosixPath:
        """This path below ``other`` (raises ``ValueError`` if it is not below it)."""
        if self.url == other.url:
            return PurePosixPath(".")
        if not self.url.startswith(other.url + "/"):
            raise ValueError(f"{self.url} is not inside {other.url}")
        return PurePosixPath(self.url[len(other.url) + 1:])

    def filesystem(self) -> tuple[Any, str]:
        """``(fs, path)`` of this location (:func:`filesystem`), listings not cached: another
        process (a worker, another client) may have written since."""
        fs, path = filesystem(self.url, self.options)
        fs.invalidate_cache()
        return fs, path

    def exists(self) -> bool:
        fs, path = self.filesystem()
        return bool(fs.exists(path))

    def is_file(self) -> bool:
        fs, path = self.filesystem()
        return bool(fs.isfile(path))

    def glob(self, pattern: str) -> list["ObjectPath"]:
        """The objects below this prefix whose names match ``pattern`` (one listing), sorted;
        none where the bucket does not exist (as ``Path.glob`` of a missing folder)."""
        fs, path = self.filesystem()
        try:
            found = fs.glob(f"{path}/{pattern}")
        except FileNotFoundError:
            return []
        return sorted(self / str(p)[len(path) + 1:] for p in found if str(p).startswith(path + "/"))

    def __lt__(self, other: "ObjectPath") -> bool:
        return self.url < other.url


def location(path: str | os.PathLike | ObjectPath, storage_options: Mapping[str, Any] | None = None) -> "Path | ObjectPath":
    """A location as daskdiff addresses it: an :class:`ObjectPath` for a remote URL (with
    ``storage_options``), else a local :class:`pathlib.Path` (``file://`` stripped)."""
    if isinstance(path, (Path, ObjectPath)):
        return path
    text = os.fspath(path)
    return ObjectPath(text, storage_options) if is_remote(text) else Path(local_path(text))


def for_task(path: "str | os.PathLike | ObjectPath") -> "str | ObjectPath":
    """A location as a task carries it to a worker: a local path as a string (as always), an
    :class:`ObjectPath` as itself, with its ``storage_options``."""
    return path if isinstance(path, ObjectPath) else os.fspath(path)
