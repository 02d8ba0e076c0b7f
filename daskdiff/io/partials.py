"""Storage layer: partial results of differentiation tasks (:class:`Partial`), as small ``.npz``
files (never pickled) and as labelled Datasets.

Their arrays are those of :class:`daskdiff.core.partial_layout.PartialLayout`, which states their
dimensions, dtypes and bytes."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from ..core.partial_layout import DIGEST_CHARS, SOURCE, PartialLayout
from .atomic import atomic_write
from .location import location, ObjectPath
from .store import local_copy, remove
from .reading import open_regular

log = logging.getLogger(__name__)


def load_partial(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a partial result (never with pickle): a regular file (a FIFO or device is refused
    unread, :func:`daskdiff.io.reading.open_regular`) whose arrays hold no more bytes than the
    file, as an uncompressed ``.npz`` (:func:`write_partial`) does: a zip whose members claim
    more is refused before any is read."""
    with os.fdopen(open_regular(path), "rb") as f, np.load(f, allow_pickle=False) as data:  # f: closed even if not a zip
        claimed = sum(info.file_size for info in data.zip.infolist())
        if claimed > os.fstat(f.fileno()).st_size:
            raise ValueError(f"its arrays claim {claimed} bytes, more than the file holds: not an uncompressed partial result")
        return {k: data[k] for k in data.files}


def _shape_problem(arrays: dict[str, np.ndarray], expected: Mapping[str, tuple]) -> str | None:
    """Why ``arrays`` are not the expected ones (``None`` in a shape matches any length), or None."""
    if set(arrays) != set(expected):
        return f"holds arrays {sorted(arrays)}, expected {sorted(expected)}"
    for key, shape in expected.items():
        got = arrays[key].shape
        if len(got) != len(shape) or any(want is not None and n != want for n, want in zip(got, shape)):
            return f"array {key!r} has shape {got}, expected {tuple('any' if n is None else n for n in shape)}"
    return None


def sources_digest(digests: Sequence[str]) -> str:
    """One digest (:data:`~daskdiff.core.partial_layout.DIGEST_CHARS` hex digits) of the
    ``inputs_digest`` of every shard a task read, in order: a partial's :data:`SOURCE`."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:DIGEST_CHARS]


def reuse_partial(path: str | os.PathLike | ObjectPath, expected: Mapping[str, tuple],
                  source: str | None = None) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """``(arrays, warning)``: the partial result at ``path`` if it exists and is sound, else None
    (recompute it), and the warning line for a corrupt one (else None).

    A partial that cannot be read (truncated, bit-flipped: the zip CRC fails) or whose arrays
    are not those of ``expected`` (name -> shape, ``None`` for any length; e.g. a file left by
    another spec) is corrupt: ``warning`` names the file and the reason (``partial result <path>
    is corrupt: <why>; removed it, recomputing``), for the caller to bring to the user's console
    (a task runs on a worker, whose log the user does not see). One whose :data:`SOURCE` is not
    ``source`` was computed from other shards (their input images or their model changed since,
    which the job reports per shard) and is stale. Either way the file is removed, so the
    caller computes it again, and a line is logged (logger ``daskdiff.io.partials``: WARNING for
    a corrupt file, INFO for a stale one).
    """
    where = location(path)
    with local_copy(where) as copy:  # a partial on an object store: downloaded
        if not copy.exists():
            return None, None
        try:
            arrays = load_partial(copy)
            problem = _shape_problem(arrays, expected)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
            arrays, problem = None, f"cannot be read ({type(error).__name__}: {error})"
    if problem is None and source is not None and str(arrays[SOURCE]) != source:
        problem, kind = "it was computed from shards that have changed since", "stale"
    else:
        kind = "corrupt"
    if problem is None:
        return arrays, None
    line = f"partial result {path} is {kind}: {problem}; removed it, recomputing"
    log.log(logging.WARNING if kind == "corrupt" else logging.INFO, line)
    if isinstance(where, ObjectPath):
        remove(where)
    else:
        where.unlink(missing_ok=True)
    return None, line if kind == "corrupt" else None


@dataclass(frozen=True)
class Partial:
    """The result of one differentiation task: one (image set, substrate, layer), every
    ``n_units`` and repeat, its arrays as :class:`~daskdiff.core.partial_layout.PartialLayout`
    lays them out (:func:`daskdiff.pipeline.tasks.run_diff_task` computes them)."""

    image_set: str
    substrate: str
    layer: str
    arrays: dict[str, np.ndarray]
    warning: str | None = None
    """A corrupt partial result found on disk and recomputed (:func:`reuse_partial`'s line), for
    the client to show; None otherwise."""

    @property
    def layout(self) -> PartialLayout:
        return PartialLayout.of(self.arrays)

    def __sizeof__(self) -> int:
        """Bytes held, its arrays' included: what ``sys.getsizeof`` and so Dask's ``sizeof``
        count for a task's result on a worker (for its memory and spilling)."""
        return object.__sizeof__(self) + sum(a.nbytes for a in self.arrays.values())

    def to_dataset(self, n_units: Sequence[str]) -> xr.Dataset:
        """The arrays labelled, for :func:`xarray.combine_nested` over sets, substrates and layers.

        Each array has dims ``(image_set, substrate, layer)`` (length 1) followed by its own
        (:attr:`~daskdiff.core.partial_layout.PartialField.dims`); coordinates: those three
        names, ``n_units`` (the labels given, in the plan's order), ``repeat`` (0, 1, ...) and,
        with the RDM sum, ``image_i`` and ``image_j`` (0 .. images - 1, so that sets of other
        sizes align, padded with NaN). ``source`` is an attribute. The arrays are views, not
        copies.
        """
        layout = self.layout
        keys = ("image_set", "substrate", "layer")
        data_vars = {f.name: (keys + f.dims, self.arrays[f.name][None, None, None]) for f in layout.fields if f.name != SOURCE}
        coords = {"image_set": [self.image_set], "substrate": [self.substrate], "layer": [self.layer],
                  "n_units": list(n_units), "repeat": np.arange(layout.repeats)}
        if layout.keep_rdm:
            coords |= {"image_i": np.arange(layout.n_images), "image_j": np.arange(layout.n_images)}
        attrs = {SOURCE: str(self.arrays[SOURCE])} if layout.source else {}
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)



def write_partial(path: str | os.PathLike | ObjectPath, arrays: dict[str, np.ndarray]) -> Path | ObjectPath:
    """Write a partial result atomically as an uncompressed ``.npz`` (no object arrays)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
