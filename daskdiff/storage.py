"""On-disk layout of activations and results: labelled xarray Datasets in NetCDF files.

Layout of an output folder::

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
- attributes: model, weights, preprocessing, resize, plan digest, skipped files (JSON).

Every file is written to a temporary name in its folder and renamed into place, so a file that
exists is complete; readers ignore ``*.tmp*`` names.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .plan import LayerPlan

ACTIVATIONS_DIR = "activations"
SHARD_GLOB = "shard-*.nc"


def variable_name(substrate: str, layer: str) -> str:
    return f"{substrate}__{layer}"


def feature_dim(substrate: str, layer: str) -> str:
    prefix = {"units": "unit", "filter_mean": "filter", "location_mean": "location"}[substrate]
    return f"{prefix}__{layer}"


def shard_path(output: str | os.PathLike, image_set: str, shard: int) -> Path:
    """Deterministic file name of shard ``shard`` of ``image_set``."""
    return Path(output) / ACTIVATIONS_DIR / image_set / f"shard-{shard:05d}.nc"


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path`` (same folder).

    The temporary name starts with '.' and contains '.tmp', so globs of finished files never
    see it; if ``write`` fails the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (NetCDF4/HDF5 via the netCDF4 library)."""
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4"))


def _unit_coords(lp: LayerPlan, dim: str) -> dict[str, tuple]:
    idx = lp.units
    coords: dict[str, tuple] = {dim: (dim, idx.astype(np.int32))}
    if len(lp.shape) == 3:
        h, w, c = lp.shape
        coords[f"channel__{lp.name}"] = (dim, (idx % c).astype(np.int16))
        coords[f"x__{lp.name}"] = (dim, ((idx // c) % w).astype(np.int16))
        coords[f"y__{lp.name}"] = (dim, (idx // (c * w)).astype(np.int16))
    return coords


def activation_dataset(
    features: dict[str, np.ndarray],
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
    """Label one shard's arrays (see the module docstring for the layout).

    ``features`` maps ``variable_name(substrate, layer)`` to ``(n_images, n_features)``
    float32 arrays; ``logits`` are the class-score layer's pre-softmax outputs ``(n, classes)``.
    """
    from .models import softmax, top_k

    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {
        "path": ("image", np.asarray(paths, dtype=object)),
        "image_set": ("image", np.asarray([image_set] * len(paths), dtype=object)),
        "image_index": ("image", np.asarray(image_index, dtype=np.int64)),
    }
    for lp in plan.values():
        if lp.units is not None:
            dim = feature_dim("units", lp.name)
            coords.update(_unit_coords(lp, dim))
            data_vars[variable_name("units", lp.name)] = (("image", dim), features[variable_name("units", lp.name)])
        for sub in ("filter_mean", "location_mean"):
            if getattr(lp, sub):
                dim = feature_dim(sub, lp.name)
                values = features[variable_name(sub, lp.name)]
                coords[dim] = (dim, np.arange(values.shape[1], dtype=np.int32))
                data_vars[variable_name(sub, lp.name)] = (("image", dim), values)
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
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(attrs)
    ds.attrs["skipped_json"] = json.dumps([list(s) for s in skipped])
    return ds


def shard_files(output: str | os.PathLike, image_set: str) -> list[Path]:
    """Finished shard files of a set, in shard order (temporaries are never matched)."""
    return sorted((Path(output) / ACTIVATIONS_DIR / image_set).glob(SHARD_GLOB))


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
    """
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
    )
    skipped = []
    for f in files:
        with xr.open_dataset(f, engine="netcdf4") as one:
            skipped += json.loads(one.attrs.get("skipped_json", "[]"))
    ds.attrs["skipped_json"] = json.dumps(skipped)
    return ds


def read_shard_header(path: str | os.PathLike, variables: Sequence[str] = ()) -> dict[str, Any]:
    """A shard's attributes, image count and the given small per-image variables (netCDF4
    directly: opening with xarray would index every unit coordinate)."""
    import netCDF4

    with netCDF4.Dataset(path, "r") as ds:
        ds.set_auto_mask(False)
        out: dict[str, Any] = {"attrs": {k: ds.getncattr(k) for k in ds.ncattrs()}, "n_images": len(ds.dimensions["image"])}
        for name in variables:
            out[name] = np.asarray(ds.variables[name][:])
    return out


def layer_activations(ds: xr.Dataset, layer: str, substrate: str = "units") -> xr.DataArray:
    """One layer's stored values as an (image, feature) DataArray with plain dim names."""
    name = variable_name(substrate, layer)
    if name not in ds:
        stored = sorted({v.split("__", 1)[1] for v in ds.data_vars if "__" in v})
        raise KeyError(f"{name!r} is not stored in these activations; stored layers are {stored}")
    da = ds[name]
    return da.rename({feature_dim(substrate, layer): "feature"})


def read_features(files: Sequence[str | os.PathLike], substrate: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one stored variable from every shard of a set into memory.

    Returns ``(values, index)``: ``values`` ``(n_images, n_stored)`` float32 in shard order and
    ``index`` the stored flat feature indices (sorted). Only this variable is read.
    """
    import netCDF4

    name, dim = variable_name(substrate, layer), feature_dim(substrate, layer)
    blocks, index = [], None
    for f in files:
        # netCDF4 directly: xarray would build a pandas index over millions of unit labels
        with netCDF4.Dataset(f, "r") as ds:
            ds.set_auto_mask(False)
            if name not in ds.variables:
                raise KeyError(f"{f}: variable {name!r} is missing; the shard was written by another plan (re-run with --overwrite)")
            blocks.append(np.asarray(ds.variables[name][:], dtype=np.float32))
            if index is None:
                index = np.asarray(ds.variables[dim][:], dtype=np.int64)
    if index is None:
        raise ValueError("no shard files to read")
    return np.concatenate(blocks, axis=0), index
