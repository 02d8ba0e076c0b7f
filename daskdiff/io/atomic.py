"""Storage layer: the one atomic writer (write, fsync, rename), used by everything that writes a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hdf5 import HDF5_LOCK

if TYPE_CHECKING:
    import xarray as xr



@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success make it durable and rename it.

    The temporary name starts with '.' and contains '.tmp', so globs of finished files never
    see it. When the block finishes the file is flushed to disk (``fsync``: a crash after the
    rename can then not leave a renamed but empty file) and renamed to ``path`` (``os.replace``,
    atomic on POSIX); if the block raises, the temporary file is removed and ``path`` is left as
    it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(tmp_path)`` inside :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (NetCDF4/HDF5 via the netCDF4 library, under
    :data:`daskdiff.io.hdf5.HDF5_LOCK`)."""
    def write(tmp: str) -> None:
        with HDF5_LOCK:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")

    return atomic_write(path, write)


def flush_and_drop(fd: int) -> None:
    """Write the file's dirty pages to disk and drop its pages from the page cache (Linux)."""
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
