"""Pipeline layer: daskdiff's defaults in Dask's configuration (``daskdiff.*`` keys).

The packaged ``daskdiff/daskdiff.yaml`` is merged into ``dask.config`` under what the user configured, as
dask-jobqueue does with ``jobqueue.yaml``: ``~/.config/dask/*.yaml``, ``DASK_DASKDIFF__*``
environment variables and ``dask.config.set`` all override it. Read a value where it is used,
with ``dask.config.get("daskdiff.worker-ttl")``, or with :func:`number`, :func:`nbytes`, :func:`flag` and
:func:`seconds`, which check it and name the key when it is not what it must be. Every key is
described in ``docs/configuration.md``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

DEFAULTS_FILE = Path(__file__).parent.parent / "daskdiff.yaml"

with open(DEFAULTS_FILE) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))


def _bad(key: str, value: object, want: str) -> ValueError:
    env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
    return ValueError(f"Dask config {key} must be {want}, got {value!r}: set it in ~/.config/dask/daskdiff.yaml, "
                      f"with the environment variable {env}, or with dask.config.set({{{key!r}: ...}}) "
                      "(docs/configuration.md lists the keys and their defaults)")


def number(key: str, kind: type = float, *, positive: bool = False) -> int | float:
    """Dask config ``key`` as a finite number of ``kind`` (``int`` or ``float``), at least 0 (more
    than 0 with ``positive``).

    A string such as ``'160e9'`` (YAML reads an exponent without a dot as a string) is taken as
    the number it spells.

    Raises
    ------
    ValueError
        Naming the key, the value and where to set it, for anything else (an ``int`` key given
        ``2.5``, a negative number, ``'fast'``).
    """
    value = dask.config.get(key)
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or x < 0 or (positive and x == 0) or (kind is int and not x.is_integer()):
        want = ("a whole number" if kind is int else "a number") + (" above 0" if positive else " of at least 0")
        raise _bad(key, value, want)
    return kind(x)


def flag(key: str) -> bool:
    """Dask config ``key`` as a boolean: ``true``/``false`` (YAML, ``dask.config.set``), or the
    strings ``True``/``False`` in any case (an environment variable)."""
    value = dask.config.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _bad(key, value, "true or false")


def nbytes(key: str) -> int:
    """Dask config ``key`` as bytes: a number or a size such as ``'8MiB'`` (:func:`dask.utils.parse_bytes`)."""
    value = dask.config.get(key)
    try:
        size = int(parse_bytes(value))
    except (AttributeError, TypeError, ValueError):
        size = -1
    if size < 0:
        raise _bad(key, value, "a size such as 8MiB or 2GB, or a number of bytes")
    return size


def seconds(key: str) -> float:
    """Dask config ``key`` in seconds: a number of seconds or a duration such as ``'15s'`` or
    ``'2 minutes'`` (:func:`dask.utils.parse_timedelta`)."""
    value = dask.config.get(key)
    try:
        duration = parse_timedelta(value, default="seconds")
    except (TypeError, ValueError, KeyError):
        duration = None
    if duration is None or duration < 0:
        raise _bad(key, value, "a duration such as 15s or 2 minutes, or a number of seconds")
    return duration


def cache_folder(key: str, name: str) -> Path | None:
    """Dask config ``key`` as a cache folder: a path (``~`` expanded); None (null) for
    ``$XDG_CACHE_HOME/daskdiff/NAME`` (``~/.cache/daskdiff/NAME``); False for no cache (returns None)."""
    value = dask.config.get(key)
    if value is False:
        return None
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "daskdiff" / name
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise _bad(key, value, "a folder, null (the default folder) or false (no cache)")
    return Path(os.path.expanduser(os.fspath(value)))
