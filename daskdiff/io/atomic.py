"""Storage layer: the one atomic writer (write, fsync, rename; on an object store, write, then
upload whole), used by everything that writes a file."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import JobError
from .confined import remove_inside
from .hdf5 import HDF5_LOCK
from .location import ObjectPath
from .store import upload

if TYPE_CHECKING:
    import xarray as xr

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (os.umask can only be read by setting it)

FULL_BELOW = 4 * 2**20
"""A failed write with less than this much space left on its filesystem counts as a full disk
(netCDF/HDF5 report a full disk as ``EACCES`` at file creation and as "NetCDF: HDF error" later)."""


class DiskFullError(JobError):
    """A write failed because its filesystem is full; the message says where, what is free and
    what to do. ``path`` is the file that could not be written."""

    def __init__(self, path: str | os.PathLike, free: int, needed: int | None = None, cause: str = ""):
        self.path, self.free, self.needed, self.cause = str(path), free, needed, cause
        need = f"; this file needs about {_size(needed)}" if needed else ""
        super().__init__(
            f"disk full: writing {self.path} failed ({cause}) with {_size(free)} free in {os.path.dirname(self.path)}{need}; "
            "free space there or choose another --output (a re-run resumes where this one stopped)"
        )

    def __reduce__(self):  # travels from a worker to the client with its fields
        return type(self), (self.path, self.free, self.needed, self.cause)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def disk_full(path: str | os.PathLike, error: BaseException, needed: int | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``error`` (raised writing ``path``) if its filesystem is full."""
    if not isinstance(error, (OSError, RuntimeError)):
        return None
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return None
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or free < FULL_BELOW:
        return DiskFullError(path, free, needed, f"{type(error).__name__}: {error}"[:300])
    return None



def _host() -> str:
    """This machine's name as temporaries carry it: characters other than letters, digits and
    '-' become '_' (a name holds no '.' or '+', which separate its parts)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``<host>+<pid>``: the writer a temporary belongs to (part of its name)."""
    return f"{_host()}+{os.getpid()}"


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<host>[A-Za-z0-9_-]+)\+(?P<pid>\d+)\+)?[A-Za-z0-9_]+\.tmp$")


def temporary_target(name: str) -> str | None:
    """The file name a temporary of :func:`atomic_path` stands for (``.NAME.<owner>+XXXX.tmp``
    -> ``NAME``), or None if ``name`` is not such a temporary."""
    m = _TEMPORARY.match(name)
    return m["name"] if m else None


def owner_alive(name: str) -> bool | None:
    """Whether the process that writes temporary ``name`` is alive: True, False, or None when
    it runs on another machine (only that machine can tell). A temporary without an owner in its
    name (older daskdiff) counts as dead."""
    m = _TEMPORARY.match(name)
    if m is None or m["pid"] is None:
        return False
    if m["host"] != _host():
        return None
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_dead_temporaries(output: str | os.PathLike, paths: list[str]) -> list[str]:
    """Remove those of ``paths`` (temporaries in output folder ``output``) whose writer is known
    dead; returns them.

    Run on each machine of a cluster (``client.run``): a writer on another machine is never
    judged here, and a live writer's file is never touched. Nothing is removed through a link
    (:func:`daskdiff.io.confined.remove_inside`).
    """
    removed = []
    for p in paths:
        if owner_alive(os.path.basename(p)) is False and remove_inside(output, Path(p).relative_to(output).as_posix()):
            removed.append(p)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike | ObjectPath, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success make it durable and rename it.

    The temporary name starts with '.' and contains '.tmp', so globs of finished files never
    see it, and names its writer, ``.NAME.<host>+<pid>+XXXX.tmp`` (:func:`owner_tag`), so that a
    later run deletes it only once that process is dead (:func:`remove_dead_temporaries`). When the block finishes the file is flushed to disk (``fsync``: a crash after the
    rename can then not leave a renamed but empty file) and renamed to ``path`` (``os.replace``,
    atomic on POSIX); if the block raises, the temporary file is removed and ``path`` is left as
    it was. A write that fails on a full filesystem raises :class:`DiskFullError` instead (saying
    where, what is free and, given ``needed`` bytes, what the file needs).

    ``path`` an :class:`~daskdiff.io.location.ObjectPath` (an object store has no rename): the
    temporary is a local file, uploaded whole when the block finishes
    (:func:`daskdiff.io.store.upload`: readers see the old object or the new one, never a part);
    nothing is uploaded if the block raises, and no temporary is ever left in the store.
    """
    if isinstance(path, ObjectPath):
        folder = tempfile.mkdtemp(prefix="daskdiff-upload-")
        try:
            tmp = Path(folder) / (path.name or "object")
            yield tmp
            upload(tmp, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}+", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (disk_full(path, err, needed) or err) from err
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; finished files get the usual mode
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        full = disk_full(path, err, needed)  # judged before the temporary's space is given back
        Path(tmp).unlink(missing_ok=True)
        if full is not None:
            raise full from err
        raise


def atomic_write(path: str | os.PathLike | ObjectPath, write: Any, needed: int | None = None) -> Path | ObjectPath:
    """Call ``write(tmp_path)`` inside :func:`atomic_path`; returns ``path``."""
    with atomic_path(path, needed) as tmp:
        write(str(tmp))
    return path if isinstance(path, ObjectPath) else Path(path)


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike | ObjectPath) -> Path | ObjectPath:
    """Write ``ds`` to ``path`` atomically (NetCDF4/HDF5 via the netCDF4 library, under
    :data:`daskdiff.io.hdf5.HDF5_LOCK`)."""
    def write(tmp: str) -> None:
        with HDF5_LOCK:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")

    return atomic_write(path, write, needed=int(ds.nbytes))


def flush_and_drop(fd: int) -> None:
    """Write the file's dirty pages to disk and drop its pages from the page cache (Linux)."""
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
