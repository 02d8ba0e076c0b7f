"""Storage layer: one process-wide lock around the netCDF-C/HDF5 libraries.

The HDF5 library that netCDF4-python's wheels bundle is built without thread safety
(``H5is_library_threadsafe`` reports false), netCDF-C itself is not thread-safe, and netCDF4-python
releases the GIL around every netCDF-C call. Two threads of one process inside the library at
once (a ``dask worker --nthreads 2`` running two tasks) corrupt its global state: the process dies
of signal 11, 7 or 6 (``free(): invalid pointer``, ``double free or corruption``).

Every open, read, write and close of a NetCDF file that daskdiff makes (shards, the results
file; partial results are ``.npz`` and need no lock) runs under :data:`HDF5_LOCK`. Datasets
that daskdiff opens lazily with xarray (:func:`daskdiff.open_activations`,
:func:`daskdiff.open_results`) are given the same lock (``lock=HDF5_LOCK``), so their later reads
and closes take it too, in whichever process they run.

The lock is re-entrant (a locked function may call another) and is held only around library
calls: decoding, the model's forward pass and the differentiation arithmetic run outside it, in
parallel threads. Code of your own that calls netCDF4 or xarray's netcdf4 engine in threads of
a process that runs daskdiff tasks should hold it as well (``with HDF5_LOCK: ...``).
"""

from __future__ import annotations

import threading
from typing import Any


class ProcessLock:
    """A re-entrant lock, one per process: a pickled copy is the receiving process's own lock.

    It has the interface xarray expects of ``lock=`` (``acquire``, ``release``, a context
    manager), and survives the pickling of lazily loaded arrays sent to Dask workers.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple:
        return _process_lock, ()

    def __repr__(self) -> str:
        return "daskdiff.io.hdf5.HDF5_LOCK"


HDF5_LOCK = ProcessLock()
"""Held by a thread for the duration of each netCDF4/HDF5 call (or group of calls)."""


def _process_lock() -> ProcessLock:
    return HDF5_LOCK

