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
