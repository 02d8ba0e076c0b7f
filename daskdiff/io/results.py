"""Storage layer: the results file, from partial task files and shard metadata -> one labelled NetCDF file.

Layout of ``differentiation.nc`` (readable with plain ``xarray.open_dataset``; every variable
and coordinate has a CF ``long_name``, and the numeric ones ``units``, from
:data:`daskdiff.io.results_attrs.VARIABLE_ATTRS`):

- ``differentiation`` (image_set, substrate, n_units, layer, repeat): the median of the
  condensed RDM per repeat; ``n_units`` is an int64 coordinate (200, 10000, ...; ``-1`` means
  all units, CF ``flag_values=-1``, ``flag_meanings='all'``): select with
  ``.sel(n_units=200)`` or ``.sel(n_units=-1)``. For ``-1`` only repeat 0 holds a value
  (exact, no sampling), the rest are NaN.
- ``n_undefined`` (image_set, substrate, n_units, layer): repeats whose normalising statistic was
  0 or not finite (their differentiation is NaN; the job also prints how many).
- ``units_used`` (substrate, n_units, layer): units per repeat after capping at the layer size.
- ``rdm`` (image_set, substrate, n_units, layer, image_i, image_j): mean RDM over the defined
  repeats, when every set has at most ``analysis.rdm_max_images`` images; labelled by the
  coordinates ``image_name_i`` (image_set, image_i) and ``image_name_j`` (image_set, image_j).
- per image (image_set, image): the coordinates ``image`` (position in the set) and
  ``image_name`` (the file relative to its set's folder), ``image_path``, ``top1_label``,
  ``top1_class``, ``top1_prob``, and (…, rank) ``top5_class``/``top5_prob``/``top5_label``
  (``rank`` 1, 2, ...); ``n_images`` (image_set). Sets of different sizes are padded (empty
  name and path, -1, NaN).
- ``skipped_path``, ``skipped_set``, ``skipped_reason`` (skipped): files that could not be
  decoded (strings, also when there are none).
- ``fps`` (image_set): the frame rate of each set that is a movie (NaN for other sets), when a
  job holds a movie. A movie's frames are its ``image`` axis, in time order.
- with ``spectral`` in ``analysis.measures``: ``spectral_differentiation`` (image_set, substrate,
  n_units, layer, repeat), the median distance between the windows' spectral states of each
  repeat's normalised (frames x units) matrix, and ``normalized_spectral_differentiation``, the
  same divided by ``sqrt(units_used)`` (the paper's normalised form); per set (image_set)
  ``spectral_windows`` (whole windows per movie), ``spectral_dropped`` (trailing frames in
  none) and ``spectral_samples_per_window``; the frame rate is ``fps``. Their attributes give
  ``state_length`` (seconds), ``metric``, ``window``, ``overlap``, ``log_frequency`` and
  ``normalize``.
- without ``images`` in ``analysis.measures``, ``differentiation`` is NaN (not measured) and
  its ``measured`` attribute is 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError
from .hdf5 import HDF5_LOCK
from .partials import Partial
from .results_attrs import describe, with_int_n_units


def set_metadata(shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-image coordinates and skipped files of one set, from its shards' metadata in shard
    order (:func:`daskdiff.io.shards.shard_metadata`, which extraction tasks return), and the
    ``(keras_backend, keras_backend_version)`` each shard was extracted with (``backends``)."""
    cols = ("top1_label", "top1_class", "top1_prob", "top5_class", "top5_prob", "top5_label")
    meta: dict[str, Any] = {k: (np.concatenate([m[k] for m in shards]) if shards else np.zeros(0)) for k in cols}
    meta.update(
        paths=[p for m in shards for p in m["paths"]],
        skipped=[s for m in shards for s in m["skipped"]],
        attrs=shards[-1]["attrs"] if shards else {},
        backends=[(m["attrs"].get("keras_backend"), m["attrs"].get("keras_backend_version")) for m in shards],
    )
    return meta


def image_names(paths: Sequence[str]) -> list[str]:
    """The paths of one set relative to their deepest common folder ('/'-separated, so local
    paths and URLs alike): a folder's file names, a recursive glob's sub-paths."""
    parts = [str(p).split("/") for p in paths]
    if not parts:
        return []
    folders = [p[:-1] for p in parts]
    common = 0
    while all(len(f) > common and f[common] == folders[0][common] for f in folders):
        common += 1
    return ["/".join(p[common:]) for p in parts]


def _strings(values: Sequence[str]) -> np.ndarray:
    """Strings as an array NetCDF stores as strings, also when there are none (an empty object
    array would be written as double)."""
    return np.asarray(list(values), dtype=object) if len(values) else np.zeros(0, dtype=str)


def _image_variables(sets: Sequence[str], metadata: dict[str, dict[str, Any]], width: int) -> dict[str, Any]:
    """Per-image paths and top-1/top-5 predictions, padded to ``width`` images (empty, -1, NaN),
    and the skipped files of every set."""
    S = len(sets)

    def padded(key: str, fill: Any, dtype: Any, extra: tuple[int, ...] = ()) -> np.ndarray:
        out = np.full((S, width) + extra, fill, dtype=dtype)
        for s, name in enumerate(sets):
            values = metadata[name][key] if key != "paths" else np.asarray(metadata[name]["paths"], dtype=object)
            if len(values):
                out[s, : len(values)] = values
        return out

    k = max([metadata[s]["top5_class"].shape[1] for s in sets if metadata[s]["top5_class"].ndim == 2] + [5])
    skipped = [(s, p, r) for s in sets for p, r in metadata[s]["skipped"]]
    return {
        "image_path": (("image_set", "image"), padded("paths", "", object)),
        "top1_label": (("image_set", "image"), padded("top1_label", "", object)),
        "top1_class": (("image_set", "image"), padded("top1_class", -1, np.int64)),
        "top1_prob": (("image_set", "image"), padded("top1_prob", np.nan, np.float64)),
        "top5_class": (("image_set", "image", "rank"), padded("top5_class", -1, np.int64, (k,))),
        "top5_prob": (("image_set", "image", "rank"), padded("top5_prob", np.nan, np.float64, (k,))),
        "top5_label": (("image_set", "image", "rank"), padded("top5_label", "", object, (k,))),
        "skipped_set": (("skipped",), _strings([x[0] for x in skipped])),
        "skipped_path": (("skipped",), _strings([x[1] for x in skipped])),
        "skipped_reason": (("skipped",), _strings([x[2] for x in skipped])),
    }


def _image_coords(sets: Sequence[str], metadata: dict[str, dict[str, Any]], width: int, keep_rdm: bool) -> dict[str, Any]:
    """The coordinates that label images: ``image`` (position), ``image_name`` (image_set, image)
    and, with the RDM, ``image_name_i``/``image_name_j`` the same names on its axes; ``rank``."""
    names = np.full((len(sets), width), "", dtype=object)
    for s, name in enumerate(sets):
        found = image_names(metadata[name]["paths"])
        names[s, : len(found)] = found
    coords: dict[str, Any] = {"image": np.arange(width), "image_name": (("image_set", "image"), names)}
    if keep_rdm:
        coords |= {"image_i": np.arange(width), "image_j": np.arange(width),
                   "image_name_i": (("image_set", "image_i"), names), "image_name_j": (("image_set", "image_j"), names)}
    return coords


def _condition_coords(sets: Sequence[str], metadata: dict[str, dict[str, Any]], width: int,
                      conditions: dict[str, dict[str, dict[str, str]]]) -> dict[str, Any]:
    """``condition_<column>(image_set, image)``: each stimulus-table column's text per image,
    matched by path (so skipped files shift nothing); empty where a set has no such column."""
    columns = list(dict.fromkeys(c for s in sets for c in conditions.get(s, {})))
    out = {}
    for column in columns:
        values = np.full((len(sets), width), "", dtype=object)
        for k, name in enumerate(sets):
            by_path = conditions.get(name, {}).get(column, {})
            for i, path in enumerate(metadata[name]["paths"]):
                values[k, i] = by_path.get(path, "")
        out[f"condition_{column}"] = (("image_set", "image"), values)
    return out


RESULT_DIMS = ("image_set", "substrate", "n_units", "layer", "repeat", "image_i", "image_j")
"""The order of the results' dimensions (those of the per-image variables excepted)."""


def combine_partials(partials: Sequence[Partial], *, sets: Sequence[str], substrates: Sequence[str],
                     layers: Sequence[str], n_units: Sequence[int]) -> xr.Dataset:
    """The partial results as one Dataset over sets, substrates and layers, in the orders given.

    Each partial's :meth:`~daskdiff.io.partials.Partial.to_dataset` is placed in a nested grid
    and combined by :func:`xarray.combine_nested`; the RDM sums of sets with fewer images than
    the largest are padded with NaN (an outer join on ``image_i`` and ``image_j``). Dimensions
    are in the order of :data:`RESULT_DIMS`.

    Raises
    ------
    ValueError
        A (set, substrate, layer) without its partial result, naming the first missing.
    """
    by_key = {(p.image_set, p.substrate, p.layer): p for p in partials}
    missing = [key for key in ((s, b, layer) for s in sets for b in substrates for layer in layers) if key not in by_key]
    if missing:
        raise ValueError(f"no partial result for {len(missing)} (set, substrate, layer), e.g. {missing[0]}: "
                         "give one per differentiation task of the plan")
    grid = [[[by_key[s, b, layer].to_dataset(n_units) for layer in layers] for b in substrates] for s in sets]
    combined = xr.combine_nested(grid, concat_dim=["image_set", "substrate", "layer"], data_vars="all", coords="different",
                                 compat="equals", join="outer", combine_attrs="drop")
    return combined.transpose(*RESULT_DIMS, missing_dims="ignore")


def assemble(
    *,
    sets: Sequence[str],
    metadata: dict[str, dict[str, Any]],
    substrates: Sequence[str],
    n_units: Sequence[int],
    layers: Sequence[str],
    repeats: int,
    partials: Sequence[Partial],
    keep_rdm: bool,
    attrs: dict[str, Any],
    fps: dict[str, float] | None = None,
    spectral: dict[str, Any] | None = None,
    images: bool = True,
    conditions: dict[str, dict[str, dict[str, str]]] | None = None,
) -> xr.Dataset:
    """Build the results Dataset (see the module docstring) from the tasks' partial results.

    ``n_units`` are the coordinate's integers (:func:`~daskdiff.io.results_attrs.n_units_value`:
    -1 for all units) in the order the tasks' arrays hold them (axis 0); ``repeats``
    the job's (the partials' ``repeat`` axis). ``fps``: frame rate of each set that is a movie;
    ``spectral``: the ``analysis.spectral`` options (with ``normalize``) when spectral
    differentiation was computed, else None; ``images``: whether the image measure was;
    ``conditions``: the stimulus tables' columns, set -> column -> {image path: text}, which
    become the coordinates ``condition_<column>(image_set, image)`` (empty text for padding and
    for the sets without that column).

    The partials are combined by :func:`combine_partials`; from them, ``n_undefined`` counts the
    undefined repeats, ``units_used`` is taken from the first set (units are drawn alike for
    every set) and ``rdm`` is ``rdm_sum / rdm_count`` (NaN where no repeat was defined, and in
    the padding of smaller sets).
    """
    parts = combine_partials(partials, sets=sets, substrates=substrates, layers=layers, n_units=n_units)
    n_img = [len(metadata[s]["paths"]) for s in sets]
    width = max(n_img + [0])
    used = parts["units_used"].isel(image_set=0, drop=True)

    def labelled(array: xr.DataArray) -> tuple[tuple[str, ...], np.ndarray]:
        return array.dims, array.data

    data_vars: dict[str, Any] = {
        "differentiation": labelled(parts["differentiation"]),
        "n_undefined": labelled(parts["undefined"].sum("repeat")),
        "units_used": labelled(used),
        "n_images": (("image_set",), np.asarray(n_img, dtype=np.int64)),
    }
    if keep_rdm:
        with np.errstate(invalid="ignore", divide="ignore"):
            data_vars["rdm"] = labelled(parts["rdm_sum"] / parts["rdm_count"])

    data_vars.update(_image_variables(sets, metadata, width))
    spectral_attrs = None
    if fps:
        data_vars["fps"] = (("image_set",), np.asarray([fps.get(name, np.nan) for name in sets], dtype=np.float64))
    if spectral is not None:
        from ..core.spectral import spectral_windows

        geometry = [spectral_windows(n, fs=fps[name], state_length=spectral["state_length"], overlap=spectral["overlap"])
                    for name, n in zip(sets, n_img)]
        sd = parts["spectral_differentiation"]
        with np.errstate(invalid="ignore", divide="ignore"):
            normalized = sd / np.sqrt(used)
        data_vars["spectral_differentiation"] = labelled(sd)
        data_vars["normalized_spectral_differentiation"] = labelled(normalized)
        data_vars["spectral_windows"] = (("image_set",), np.asarray([g.n_windows for g in geometry], dtype=np.int64))
        data_vars["spectral_dropped"] = (("image_set",), np.asarray([g.dropped for g in geometry], dtype=np.int64))
        data_vars["spectral_samples_per_window"] = (("image_set",), np.asarray([g.samples_per_window for g in geometry], dtype=np.int64))
        spectral_attrs = {
            "state_length": float(spectral["state_length"]),
            "metric": spectral["metric"],
            "window": "rectangular (none)" if spectral["window"] is None else str(spectral["window"]),
            "overlap": float(spectral["overlap"]),
            "log_frequency": int(bool(spectral["log_frequency"])),
            "normalize": spectral["normalize"],
            "reference": "Mayner et al. (2022) eNeuro 9(1), github.com/wmayner/openscope-differentiation",
        }
    coords = {
        "image_set": list(sets),
        "substrate": list(substrates),
        "n_units": np.asarray(n_units, dtype=np.int64),
        "layer": list(layers),
        "layer_index": ("layer", np.arange(len(layers))),
        "repeat": np.arange(repeats),
        "rank": np.arange(1, data_vars["top5_class"][1].shape[-1] + 1),
        **_image_coords(sets, metadata, width, keep_rdm),
        **_condition_coords(sets, metadata, width, conditions or {}),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds["differentiation"].attrs.update(
        description="median of the strict upper triangle of each repeat's RDM (or the full square when median_over='square')",
    )
    if not images:
        ds["differentiation"].attrs["measured"] = 0  # analysis.measures left 'images' out: all NaN
    if spectral_attrs is not None:
        ds["spectral_differentiation"].attrs.update(
            description="per repeat: the sampled (frames x units) matrix, normalised as 'normalize' says, cut into "
                        "windows of state_length * fs frames; each unit's |rfft|**2 per window, concatenated; the "
                        "median of pdist between the windows' states",
            **spectral_attrs,
        )
        ds["normalized_spectral_differentiation"].attrs.update(spectral_attrs)
    return describe(ds)


def open_results(path: str | Path) -> xr.Dataset:
    """Open a results file (``differentiation.nc``) lazily; InputError naming it if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {path} does not exist; a job writes it as <output>/differentiation.nc")
    try:
        with HDF5_LOCK:
            ds = xr.open_dataset(path, engine="netcdf4", lock=HDF5_LOCK)  # lazy reads take the lock too
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not a readable NetCDF file ({err}); give the differentiation.nc that a job wrote") from None
    if "differentiation" not in ds:
        ds.close()
        raise InputError(f"{path} holds no 'differentiation' variable: it is not a daskdiff results file")
    return with_int_n_units(ds)
