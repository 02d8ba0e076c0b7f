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

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError, shorten

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


class StorageOptions(Mapping):
    """A spec's ``storage_options`` as a frozen, hashable mapping whose ``repr`` hides its secrets.

    It travels with the tasks that read inputs (a :class:`~daskdiff.model.build.ModelSpec`, a shard's
    task), so a worker opens an object with the options the client resolved it with; a task's
    ``repr`` in a log or an error shows it redacted (:func:`redact`). Its hash and Dask token are
    those of its JSON form: two equal mappings are one key.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None):
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def _json(self) -> str:
        return json.dumps(self._data, sort_keys=True, default=repr)

    def __hash__(self) -> int:
        return hash(self._json())

    def __dask_tokenize__(self) -> str:
        return hashlib.sha256(self._json().encode()).hexdigest()

    def __repr__(self) -> str:
        return f"StorageOptions({redact(self._data)!r})"

    def __reduce__(self):
        return type(self), (self._data,)


class StorageError(InputError):
    """An object store that cannot be reached or read: one line naming the URL and what to check."""


_S3 = frozenset({"s3", "s3a"})


def bounded_options(url: str, options: Mapping[str, Any] | None, seconds: float) -> dict[str, Any]:
    """``options`` for the client's own requests to ``url``: on S3, botocore's connect and read
    timeouts and its retries bounded (unless ``config_kwargs`` sets them), so that an endpoint
    that does not answer is named within ``seconds`` (``cluster.start_timeout``), not after
    botocore's 60 s x 5 tries, each tried 5 more times by s3fs. One botocore attempt (s3fs retries
    it 5 times) with connect and read timeouts of ``seconds / 24`` each (5 s for the default
    120 s), plus s3fs's back-off (~2 s), for each of the two calls a failed listing makes, stays
    within ``seconds``. Other protocols' options are returned as given."""
    out = dict(options or {})
    if protocol(url) in _S3:
        config = dict(out.get("config_kwargs") or {})
        each = max(1, int(seconds) // 24)
        config.setdefault("connect_timeout", each)
        config.setdefault("read_timeout", each)
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        out["config_kwargs"] = config
    return out


def storage_error(url: str, error: BaseException, what: str = "") -> StorageError:
    """One line for ``error``, raised reaching ``url``: which of a missing bucket or object, refused
    credentials, an endpoint that does not answer or a missing fsspec plugin it is, and what to check.
    ``what`` starts the line (``"image set 'a': "``)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"
    name = type(error).__name__
    text = str(error)
    if isinstance(error, ImportError):
        why = f"{error}; install the filesystem for {protocol(url)}:// (pip install 'daskdiff[s3]' for s3://)"
    elif isinstance(error, FileNotFoundError) and "bucket" in text.lower():
        why = (f"the bucket does not exist at {endpoint}; check the bucket's name in the URL and the endpoint "
               "(AWS_ENDPOINT_URL or storage_options.endpoint_url)")
    elif isinstance(error, PermissionError):
        why = ("access denied; check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
               "storage_options key/secret) and that they may read this bucket")
    elif "Connect" in name or "Timeout" in name or isinstance(error, (ConnectionError, TimeoutError)):
        why = (f"the endpoint does not answer ({shorten(text)}); check the endpoint (AWS_ENDPOINT_URL or "
               "storage_options.endpoint_url) and the network")
    elif isinstance(error, FileNotFoundError):
        why = "no such object or prefix; check the URL (keys are case-sensitive)"
    else:
        why = f"{name}: {shorten(text)}"
    return StorageError(f"{what}cannot read {url}: {why}")


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
