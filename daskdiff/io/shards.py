"""Storage layer: activation shards, labelled xarray Datasets in NetCDF files (written a batch at a time).

Layout of an output folder (names defined in :mod:`daskdiff.io.layout`)::

    <output>/activations/<image_set>/shard-00000.nc   one file per extraction shard
    <output>/partial/<task key>.npz                   one file per finished differentiation task
    <output>/differentiation.nc                       the results
    <output>/job.json                                 the spec the folder belongs to

A shard holds, for the images it decoded (dimension ``image``):

- ``units__<layer>`` (image, unit__<layer>): the stored units' activations (float32); the
  ``unit__<layer>`` coordinate is the flat unit index (C order, channels last), and conv layers
  carry ``channel__<layer>``, ``y__<layer>``, ``x__<layer>`` coordinates on that dimension;
- ``filter_mean__<layer>`` (image, filter__<layer>): spatial mean of each channel (filter);
- ``location_mean__<layer>`` (image, location__<layer>): channel mean at each position
  (``location = y * width + x``);
- image coordinates ``path``, ``image_set``, ``image_index`` (position in the sorted set),
  ``top1_label``, ``top1_class``, ``top1_prob`` and ``top5_class``/``top5_prob``/``top5_label``
  (image, rank);
- attributes: model, weights, preprocessing, resize, plan digest, skipped files (JSON),
  ``model_fingerprint`` (:func:`daskdiff.model.build.model_fingerprint`: the model file's and
  weights file's content, the preprocessing, ...), and ``inputs_digest``: a digest of the plan,
  of the model fingerprint and of the shard's input record;
- group ``inputs`` (dimension ``input``): what the shard was made from, one entry per image file
  given to its task (decoded or skipped): ``path``, ``size`` (bytes) and ``mtime_ns``
  (modification time, ns) as ``os.stat`` saw them when the task started. A file replaced under
  the same name, added or removed changes the record, so the shard is re-extracted
  (:func:`shard_status`) and everything computed from it is recomputed (partial results record
  the ``inputs_digest`` of every shard they read). Size and mtime, not a content hash: checking
  them costs one ``stat`` per image on every resume, while hashing would re-read every image; a
  file rewritten with the same size *and* the same mtime (``cp -p`` of a same-sized file, or a
  tool that restores mtimes) is not noticed: delete its shard by hand (or use ``--overwrite``).

Every file is written to a temporary name in its folder and renamed into place, so a file that
exists is complete; readers ignore ``*.tmp*`` names. A shard's labels are written through the
same open file as its activations (:meth:`ShardWriter.write_labels`), and a shard counts as
finished only when every variable its plan needs is there with the right shape. Every activation variable (and every numeric
coordinate) is stored with HDF5's Fletcher-32 checksum per chunk: HDF5 verifies each chunk it
reads, and :func:`read_features` turns a mismatch into :class:`CorruptShardError`.

Every netCDF4/xarray call on a shard runs under :data:`daskdiff.io.hdf5.HDF5_LOCK` (the bundled
HDF5 is not thread-safe), so the functions here may be called from any number of threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import xarray as xr

from ..errors import DaskdiffError
from .atomic import flush_and_drop
from .fingerprints import object_record
from .hdf5 import HDF5_LOCK
from .location import is_remote
from .reading import special_kind
from .layout import ACTIVATIONS_DIR, SHARD_GLOB, feature_dim, variable_name
from .location import location, ObjectPath
from .store import local_copy

from ..core.unit_major import transpose_into
from ..core.units import LayerPlan


def _unit_coords(lp: LayerPlan, dim: str) -> dict[str, tuple]:
    idx = lp.units
    coords: dict[str, tuple] = {dim: (dim, idx.astype(np.int32))}
    if len(lp.shape) == 3:
        h, w, c = lp.shape
        coords[f"channel__{lp.name}"] = (dim, (idx % c).astype(np.int16))
        coords[f"x__{lp.name}"] = (dim, ((idx // c) % w).astype(np.int16))
        coords[f"y__{lp.name}"] = (dim, (idx // (c * w)).astype(np.int16))
    return coords


class CorruptShardError(DaskdiffError):
    """A shard's stored values fail HDF5's checksum (or cannot be read): the file is damaged.

    ``path`` is the shard's file. Delete it and re-run: its extraction task writes it again
    (a job does this by itself, once per shard).
    """

    def __init__(self, path: str | os.PathLike, detail: str = ""):
        self.path = str(path)
        self.detail = detail
        super().__init__(
            f"shard {self.path} is corrupt (checksum mismatch or unreadable data{': ' + detail if detail else ''}); "
            "delete it and re-run the job to extract it again"
        )

    def __reduce__(self):  # travels from a worker to the client with its path
        return type(self), (self.path, self.detail)


CHECKSUM = {"fletcher32": True}
"""HDF5 filter settings of every numeric variable of a shard: a Fletcher-32 checksum per chunk."""


CHUNK_BYTES = 64 * 2**20
"""Largest HDF5 chunk of an activation variable: whole images along ``image``, at most this many
bytes (HDF5 refuses chunks over 4 GiB; a full VGG16 block1 layer is 12.8 MB per image)."""


def activation_variables(plan: dict[str, LayerPlan]) -> dict[str, tuple[str, int]]:
    """Variable name -> (feature dimension, values per image) of every activation variable."""
    return {
        variable_name(sub, lp.name): (feature_dim(sub, lp.name), n)
        for lp in plan.values()
        for sub, n in lp.stored().items()
    }


class ShardWriter:
    """Append one shard's activations batch by batch to a new NetCDF file (netCDF4 directly).

    Every activation variable of ``plan`` is created up front as ``(image, feature)`` float32
    with ``image`` unlimited and chunks of whole images (``chunk_images`` rows, fewer where a
    chunk would exceed :data:`CHUNK_BYTES`). Appending a batch therefore writes whole chunks
    straight to the file: a shard is never held in memory, and its file can be written while
    the next batch is computed. :meth:`write_labels` adds the coordinates, attributes and input
    record, through the same open file, once the last batch is in.

    Parameters
    ----------
    path : path
        The file to create (a temporary name: see :func:`atomic_path`).
    plan : dict of str -> LayerPlan
    chunk_images : int
        Images per chunk: the batch size, so that each appended batch fills whole chunks.
    drop_cache : bool
        Flush each appended batch to disk and drop it from the operating system's page cache
        (``fdatasync`` then ``POSIX_FADV_DONTNEED``, where the platform has it). Shards are read
        once, later, by the differentiation stage; caching gigabytes of them would make every
        page the writer fills a freshly allocated one, which on virtual machines that return
        free memory to their host costs several times the copy itself (measured in
        ``benchmarks/extract.py``). The flush waits for the disk, not the CPU: run
        :meth:`append` in a helper thread to overlap it with the next forward pass.
    """

    def __init__(self, path: str | os.PathLike, plan: dict[str, LayerPlan], *, chunk_images: int = 16, drop_cache: bool = True):
        import netCDF4

        self.n_images = 0
        self._vars = {}
        with HDF5_LOCK:
            self._nc = netCDF4.Dataset(path, "w", format="NETCDF4")
            self._nc.createDimension("image", None)
            for name, (dim, n) in activation_variables(plan).items():
                self._nc.createDimension(dim, n)
                rows = max(1, min(chunk_images, CHUNK_BYTES // (4 * n)))
                self._vars[name] = self._nc.createVariable(name, "f4", ("image", dim), fill_value=False, chunksizes=(rows, n), **CHECKSUM)
            # No chunk cache: each batch's chunks go straight to the file. netCDF creates a variable's
            # HDF5 dataset only as define mode ends (sync ends it), and a cache size set before is
            # ignored: its default, 64 MiB per variable, held ~0.8 GB of a VGG16 shard until the labels.
            self._nc.sync()
            for var in self._vars.values():
                var.set_var_chunk_cache(size=0)
        self._fd = os.open(path, os.O_RDONLY) if drop_cache and hasattr(os, "posix_fadvise") else None

    def append(self, features: dict[str, np.ndarray]) -> None:
        """Write the next images' rows: ``features[name]`` is ``(n, values per image)`` float32
        for every activation variable of the plan (extra keys are ignored)."""
        counts = {len(features[name]) for name in self._vars}
        if len(counts) != 1:
            raise ValueError(f"variables of one batch have different numbers of images: {sorted(counts)}")
        n = counts.pop()
        with HDF5_LOCK:
            for name, var in self._vars.items():
                var[self.n_images : self.n_images + n] = features[name]
        self.n_images += n
        if self._fd is not None:
            flush_and_drop(self._fd)

    def write_labels(self, labels: xr.Dataset, inputs: Sequence[tuple[str, int, int]] = ()) -> None:
        """Write :func:`shard_labels` and the input record (:func:`input_record`) into the open file.

        Written with netCDF4 through the handle the activations went through, never by
        re-opening the path: a path can be removed under a writer, and re-opening it would create
        a new file holding labels only. The coordinates are listed in the file's global
        ``coordinates`` attribute, which is how xarray reads them back as coordinates; numeric
        ones get the activations' checksum (HDF5 filters skip variable-length strings).
        """
        with HDF5_LOCK:
            self._write_labels(labels, inputs)

    def _write_labels(self, labels: xr.Dataset, inputs: Sequence[tuple[str, int, int]]) -> None:
        nc = self._nc
        for name, size in labels.sizes.items():
            if name not in nc.dimensions:
                nc.createDimension(name, size)
        others = []
        for name, var in labels.variables.items():
            _write_variable(nc, name, var.dims, var.values)
            if name not in labels.dims:
                others.append(name)
        if others:
            nc.setncattr("coordinates", " ".join(others))
        for key, value in labels.attrs.items():
            nc.setncattr(key, value)
        group = nc.createGroup(INPUTS_GROUP)
        group.createDimension("input", len(inputs))
        _write_variable(group, "path", ("input",), np.asarray([r[0] for r in inputs], dtype=object))
        _write_variable(group, "size", ("input",), np.asarray([r[1] for r in inputs], dtype=np.int64))
        _write_variable(group, "mtime_ns", ("input",), np.asarray([r[2] for r in inputs], dtype=np.int64))

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if self._nc is not None:
            with HDF5_LOCK:
                self._nc.close()
            self._nc = None
        if self._fd is not None:
            flush_and_drop(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_labels(
    plan: dict[str, LayerPlan],
    *,
    paths: Sequence[str],
    image_set: str,
    image_index: Sequence[int],
    logits: np.ndarray,
    labels: Sequence[str],
    attrs: dict[str, Any],
    skipped: Sequence[tuple[str, str]] = (),
) -> xr.Dataset:
    """The labels of one shard: every coordinate and attribute, no activation values.

    (See the module docstring for the layout.) ``logits`` are the class-score layer's
    pre-softmax outputs ``(n_images, classes)``; the top-5 classes come from them. A shard's
    file is :class:`ShardWriter`'s activation variables plus this Dataset
    (:meth:`ShardWriter.write_labels`).
    """
    from ..core.ranking import softmax, top_k

    coords: dict[str, Any] = {
        "path": ("image", np.asarray(paths, dtype=object)),
        "image_set": ("image", np.asarray([image_set] * len(paths), dtype=object)),
        "image_index": ("image", np.asarray(image_index, dtype=np.int64)),
    }
    for lp in plan.values():
        for sub, n in lp.stored().items():
            dim = feature_dim(sub, lp.name)
            if sub == "units":
                coords.update(_unit_coords(lp, dim))
            else:
                coords[dim] = (dim, np.arange(n, dtype=np.int32))
    top, top_prob = top_k(softmax(logits).reshape(len(logits), len(labels)))
    label_arr = np.asarray(labels, dtype=object)
    coords.update(
        top1_class=("image", top[:, 0].astype(np.int32)),
        top1_prob=("image", top_prob[:, 0]),
        top1_label=("image", label_arr[top[:, 0]]),
        top5_class=(("image", "rank"), top.astype(np.int32)),
        top5_prob=(("image", "rank"), top_prob),
        top5_label=(("image", "rank"), label_arr[top]),
    )
    ds = xr.Dataset(coords=coords)
    ds.attrs.update(attrs)
    ds.attrs["skipped_json"] = json.dumps([list(s) for s in skipped])
    return ds


def _write_variable(nc: Any, name: str, dims: tuple, values: np.ndarray) -> None:
    """One variable into an open netCDF4 Dataset or group: strings variable-length, numbers
    with :data:`CHECKSUM`; no fill value (every entry is written)."""
    if values.dtype.kind in "OUS":
        var = nc.createVariable(name, str, dims)
        flat = np.asarray(values, dtype=object).ravel()
        if flat.size:
            var[...] = np.asarray([str(v) for v in flat], dtype=object).reshape(values.shape)
        return
    var = nc.createVariable(name, values.dtype, dims, fill_value=False, **CHECKSUM)
    if values.size:
        var[...] = values


INPUTS_GROUP = "inputs"
"""The shard's group holding its input record (see the module docstring)."""


def input_record(paths: Sequence[str], storage_options: Any = None) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of each file as ``os.stat`` sees it now; ``(path, -1, -1)`` for
    a file that cannot be stat'ed (it is then skipped by extraction, and recorded as such). An
    object's (an fsspec URL's) is ``(url, size, marker)``, :func:`daskdiff.io.fingerprints.object_record`
    (one ``HEAD`` each, 16 at a time, with ``storage_options``)."""
    if any(is_remote(p) for p in paths):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16, thread_name_prefix="daskdiff-head") as pool:
            heads = dict(zip(paths, pool.map(lambda p: object_record(p, storage_options) if is_remote(p) else None, paths)))
    else:
        heads = {}
    out = []
    for p in paths:
        if heads.get(p) is not None:
            out.append((str(p), *heads[p]))
            continue
        try:
            st = os.stat(p)
        except OSError:
            out.append((str(p), -1, -1))
        else:
            out.append((str(p), int(st.st_size), int(st.st_mtime_ns)))
    return out


def inputs_digest(plan_digest: str, record: Sequence[tuple[str, int, int]], model: str | None = None) -> str:
    """The identity of a shard (32 hex digits): its plan's digest, its input record and the
    fingerprint of the model that extracted it (``model``; None for a shard written without one).

    Partial results record the ``inputs_digest`` of every shard they read
    (:func:`daskdiff.io.partials.sources_digest`), so a change of any of the three recomputes them.
    """
    h = hashlib.sha256(plan_digest.encode())
    h.update(json.dumps([list(r) for r in record]).encode())
    if model is not None:
        h.update(f"\nmodel {model}".encode())
    return h.hexdigest()[:32]


def read_input_record(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """The input record a shard was written with (empty for shards without one)."""
    import netCDF4

    with HDF5_LOCK, netCDF4.Dataset(path, "r") as ds:
        if INPUTS_GROUP not in ds.groups:
            return []
        g = ds.groups[INPUTS_GROUP]
        g.set_auto_mask(False)
        cols = [np.asarray(g.variables[k][:]) for k in ("path", "size", "mtime_ns")]
    return [(str(p), int(s), int(t)) for p, s, t in zip(*cols)]


def describe_changes(old: Sequence[tuple[str, int, int]], new: Sequence[tuple[str, int, int]], limit: int = 3) -> str:
    """How two input records differ, in words: changed, added and removed files (first few)."""
    before = {p: (s, t) for p, s, t in old}
    after = {p: (s, t) for p, s, t in new}
    parts = []
    for what, names in (
        ("changed", [p for p in after if p in before and after[p] != before[p]]),
        ("added", [p for p in after if p not in before]),
        ("removed", [p for p in before if p not in after]),
    ):
        if names:
            shown = ", ".join(os.path.basename(n) for n in names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            parts.append(f"{len(names)} {what} ({shown})")
    return "; ".join(parts) or "the files were reordered"


def open_activations(path: str | os.PathLike, image_set: str | None = None) -> xr.Dataset:
    """Open all shards of an image set lazily as one Dataset along ``image``.

    Parameters
    ----------
    path : path
        A job's output folder (then give ``image_set``), a set's shard folder, or one shard.
    image_set : str, optional
        The set to open from a job's output folder.

    Returns
    -------
    xarray.Dataset
        Dask-backed; images in set order. Skipped files of all shards are in
        ``attrs['skipped_json']``.

    Notes
    -----
    Shards on an object store (``path`` an ``s3://`` URL) are first downloaded whole to a new
    local temporary folder (:func:`download_shards`), which is left for the Dataset to read
    from; the values are then read lazily from there, as from a local folder.
    """
    if isinstance(where := location(path), ObjectPath):
        path, image_set = download_shards(where, image_set), None
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        folder = path / ACTIVATIONS_DIR / image_set if image_set else path
        files = sorted(folder.glob(SHARD_GLOB))
        if not files:
            raise FileNotFoundError(
                f"no shard files ({SHARD_GLOB}) in {folder}; give a job's output folder with "
                "image_set=..., or a folder of shards"
            )
    with HDF5_LOCK:
        ds = xr.open_mfdataset(
            [str(f) for f in files],
            combine="nested",
            concat_dim="image",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            combine_attrs="drop_conflicts",
            engine="netcdf4",
            parallel=False,
            lock=HDF5_LOCK,  # the lazy reads take it too
        )
        skipped = []
        for f in files:
            with xr.open_dataset(f, engine="netcdf4", lock=HDF5_LOCK) as one:
                skipped += json.loads(one.attrs.get("skipped_json", "[]"))
    ds.attrs["skipped_json"] = json.dumps(skipped)
    return ds


def download_shards(where: ObjectPath, image_set: str | None = None) -> Path:
    """Download one shard, or every shard of a set (a job's output prefix and ``image_set``, or
    a set's prefix), to a new local temporary folder; the folder (or the one shard's file)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="daskdiff-shards-"))
    if (one := where.is_file()):
        files = [where]
    else:
        files = (where / ACTIVATIONS_DIR / image_set if image_set else where).glob(SHARD_GLOB)
        if not files:
            raise FileNotFoundError(f"no shard objects ({SHARD_GLOB}) under {where}; give a job's output prefix with "
                                    "image_set=..., or a prefix of shards")
    fs, _ = where.filesystem()
    for f in files:
        fs.get_file(f.filesystem()[1], str(folder / f.name))
    return folder / files[0].name if one else folder


def read_shard_header(path: str | os.PathLike, variables: Sequence[str] = ()) -> dict[str, Any]:
    """A shard's attributes, image count and the given small per-image variables (netCDF4
    directly: opening with xarray would index every unit coordinate)."""
    import netCDF4

    with HDF5_LOCK, netCDF4.Dataset(path, "r") as ds:
        ds.set_auto_mask(False)
        out: dict[str, Any] = {"attrs": {k: ds.getncattr(k) for k in ds.ncattrs()}, "n_images": len(ds.dimensions["image"])}
        for name in variables:
            out[name] = np.asarray(ds.variables[name][:])
    return out


SHARD_LABELS = ("path", "top1_label", "top1_class", "top1_prob", "top5_class", "top5_prob", "top5_label")
"""The per-image label variables of a shard that the results file carries."""


def shard_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What the results file needs of one shard: image paths, labels, skipped files, attributes.

    Extraction tasks return it (read back from the finished file), so the client reads no shard.
    """
    head = read_shard_header(path, SHARD_LABELS)
    meta = {k: head[k] for k in SHARD_LABELS if k != "path"}
    meta.update(
        paths=[str(p) for p in head["path"]],
        skipped=[tuple(x) for x in json.loads(head["attrs"].get("skipped_json", "[]"))],
        attrs=head["attrs"],
        n_images=head["n_images"],
    )
    return meta


def _missing_variables(path: str | os.PathLike, plan: dict[str, LayerPlan], n_images: int) -> list[str]:
    """Activation variables of ``plan`` that the shard lacks or holds with another shape."""
    import netCDF4

    want = activation_variables(plan)
    with HDF5_LOCK, netCDF4.Dataset(path, "r") as ds:
        return [name for name, (_, n) in want.items()
                if name not in ds.variables or ds.variables[name].shape != (n_images, n)]


def shard_status(path: str | os.PathLike, plan: dict[str, LayerPlan], digest: str,
                 record: Sequence[tuple[str, int, int]], model: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Whether ``path`` is a finished shard of plan ``digest`` and model ``model`` (its
    fingerprint: :func:`daskdiff.model.build.model_fingerprint`; None: shards written without
    one) made from exactly ``record``.

    Returns ``(metadata, None)`` for a finished shard; otherwise ``(None, why)`` with ``why``
    None when there is no file, else in words why the file must be extracted again: unreadable,
    written for another plan, extracted with another model (its recorded weights and
    fingerprints), an activation variable missing or of another shape, or input images that
    changed since (:func:`describe_changes`). Checksums are verified when the values are read
    (:func:`read_features`), not here: a resume check reads no activations.
    """
    if not os.path.exists(path):
        return None, None
    try:
        if (kind := special_kind(path)) is not None:  # netCDF4 would block on a FIFO
            return None, f"it is {kind}, not a shard file"
        meta = shard_metadata(path)
        attrs = meta["attrs"]
        if attrs.get("plan_digest") != digest:
            return None, "it was written for another plan"
        if model is not None and (old := attrs.get("model_fingerprint")) != model:
            return None, (f"it was extracted with another model (weights {attrs.get('weights', 'unknown')}, model "
                          f"fingerprint {old[:16]}; this run's is {model[:16]})" if old else
                          "it records no model fingerprint (an older daskdiff wrote it): its model cannot be told")
        if attrs.get("inputs_digest") != inputs_digest(digest, record, model):
            old = read_input_record(path)
            return None, "its input images changed: " + describe_changes(old, record) if old else "it records no input images (an older daskdiff wrote it)"
        missing = _missing_variables(path, plan, meta["n_images"])
    except (OSError, KeyError, ValueError, RuntimeError) as err:  # truncated, damaged labels (HDF5: RuntimeError)
        return None, f"it is unreadable ({type(err).__name__}: {err})"
    if missing:
        return None, f"it lacks variable(s) {', '.join(missing[:3])}"
    return meta, None


@contextlib.contextmanager
def _open_for_reading(path: str | os.PathLike, name: str) -> Iterator[Any]:
    """A shard opened with netCDF4 under :data:`HDF5_LOCK`, holding variable ``name`` (a shard
    on an object store, a URL, is read from a local copy: :func:`daskdiff.io.store.local_copy`;
    errors name the URL)."""
    import netCDF4

    # netCDF4 directly: xarray would build a pandas index over millions of unit labels.
    # The lock is taken per file, so that other threads' calls can go between two files.
    with local_copy(location(path)) as copy, HDF5_LOCK:
        try:
            if (kind := special_kind(copy)) is not None:  # netCDF4 would block on a FIFO
                raise CorruptShardError(path, f"it is {kind}, not a shard file")
            ds = netCDF4.Dataset(copy, "r")
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as err:  # e.g. truncated: HDF5 cannot read the file's header
            raise CorruptShardError(path, f"cannot open: {err}") from None
        with ds:
            ds.set_auto_mask(False)
            if name not in ds.variables:
                raise KeyError(f"{path}: variable {name!r} is missing; the shard was written by another plan (re-run with --overwrite)")
            yield ds


def read_features(files: Sequence[str | os.PathLike], substrate: str, layer: str,
                  n_images: Sequence[int] | None = None, *, units_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one stored variable from every shard of a set into memory.

    Returns ``(values, index)``: ``values`` ``(n_images, n_stored)`` float32 in shard order
    (``units_first``: ``(n_stored, n_images)``, C order, the unit-major layout of
    :mod:`daskdiff.core.unit_major`, written so as it is read) and ``index`` the stored flat
    feature indices (sorted). Only this variable is read. The result is allocated once and each
    shard is copied into it one HDF5 chunk (a batch of images) at a time, so the peak is the
    values plus about two chunks, not twice the values. ``n_images``: each shard's number of
    images, where the caller knows them (the job does, from the shards' metadata); else each
    file is opened once more first to read its shape (opening a shard reads its labels, ~8 % of
    its bytes).

    Raises
    ------
    CorruptShardError
        A shard's chunks of this variable (or its feature index) fail their checksum, or the
        file opens but its data cannot be read; ``err.path`` names the shard.
    """
    name, dim = variable_name(substrate, layer), feature_dim(substrate, layer)
    if not files:
        raise ValueError("no shard files to read")
    if n_images is None:
        n_images = []
        for f in files:
            with _open_for_reading(f, name) as ds:
                n_images.append(ds.variables[name].shape[0])
    values, index, row, features = None, None, 0, None
    for f, n in zip(files, n_images):
        with _open_for_reading(f, name) as ds:
            var = ds.variables[name]
            shape = tuple(var.shape)
            features = shape[1:] if features is None else features
            if shape[0] != n or shape[1:] != features:
                raise CorruptShardError(f, f"variable {name!r} has shape {shape}, not {n} images of {features} "
                                           "features as the set's other shards and its labels say")
            if values is None:
                values = np.empty(shape[1:] + (sum(n_images),) if units_first else (sum(n_images),) + shape[1:], dtype=np.float32)
            chunking = var.chunking()
            step = chunking[0] if isinstance(chunking, list) else shape[0]  # whole HDF5 chunks: each read once
            try:
                for start in range(0, shape[0], max(1, step)):  # netCDF4 copies what it reads: a chunk at a time
                    stop = min(start + step, shape[0])
                    if units_first:
                        transpose_into(values, var[start:stop], row + start)
                    else:
                        values[row + start : row + stop] = var[start:stop]
                if index is None:
                    index = np.asarray(ds.variables[dim][:], dtype=np.int64)
            except RuntimeError as err:  # netCDF4's "NetCDF: HDF error": a chunk failed its checksum
                raise CorruptShardError(f, f"reading {name!r}: {err}") from None
        row += shape[0]
    return values, index
