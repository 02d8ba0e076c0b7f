"""Top layer: the mean RDMs of a results file as ``rsatoolbox.rdm.RDMs``, for rsatoolbox's comparisons and inference.

rsatoolbox is an optional dependency (``pip install 'daskdiff[rsa]'``); nothing else in daskdiff
imports it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from .errors import InputError
from .io.results_attrs import n_units_value, with_int_n_units
from .stats import RDM_DIMS, require_rdm, select_set, set_names

__all__ = ["to_rsatoolbox"]

_RDM_KEYS = ("substrate", "n_units", "layer")
"""The results' dimensions that tell a set's RDMs apart: each RDM's ``rdm_descriptors``."""


class RsatoolboxMissingError(InputError):
    """rsatoolbox is not installed."""


def _rsatoolbox_rdm() -> Any:
    try:
        import rsatoolbox.rdm
    except ImportError:
        raise RsatoolboxMissingError("to_rsatoolbox needs rsatoolbox: pip install 'daskdiff[rsa]' (or pip install rsatoolbox)") from None
    return rsatoolbox.rdm


def to_rsatoolbox(
    results: xr.Dataset,
    image_set: str | None = None,
    *,
    substrate: str | Sequence[str] | None = None,
    n_units: Any = None,
    layer: str | Sequence[str] | None = None,
) -> Any:
    """The mean RDMs of one image set as an ``rsatoolbox.rdm.RDMs``, one RDM per (substrate, n_units, layer).

    Parameters
    ----------
    results : xarray.Dataset
        A results Dataset (``daskdiff.open_results``) with its ``rdm`` variable (kept when every
        set has at most ``analysis.rdm_max_images`` images).
    image_set : str, optional
        The set whose images are the RDMs' patterns; may be left out when the results hold one
        set. The sets' images differ, so each set is its own ``RDMs``:
        ``{s: to_rsatoolbox(ds, s) for s in ds.image_set.values}``.
    substrate, n_units, layer : optional
        Keep only these (one value or a list; ``n_units`` as the results' coordinate, -1 or
        ``'all'`` for all units); default: all.

    Returns
    -------
    rsatoolbox.rdm.RDMs
        ``dissimilarities``: each RDM's strict upper triangle, row by row (rsatoolbox's and
        scipy's condensed order), of the results' ``rdm``: the mean over the defined sampling
        repeats of the job's distances (NaN where no repeat was defined), padding of smaller
        sets left out. ``dissimilarity_measure``: the job's metric and normalisation.
        ``rdm_descriptors``: ``substrate``, ``n_units`` (int, -1 = all), ``layer``,
        ``layer_index`` and ``units_used`` of each RDM, in the results' order (substrate, then
        n_units, then layer). ``pattern_descriptors``: ``image`` (the file relative to its set's
        folder, the results' ``image_name``) and ``index`` (position in the set).
        ``descriptors``: ``image_set`` and the job's ``metric``, ``normalize``, ``per_unit``,
        ``model`` and ``weights``.

    Notes
    -----
    The distances are daskdiff's, not rsatoolbox's: e.g. daskdiff's ``euclidean`` is the plain
    (not squared) Euclidean distance of the normalised activations, divided by
    ``sqrt(units)`` when ``per_unit``; rsatoolbox's ``calc_rdm(method='euclidean')`` is squared
    and divided by the number of channels.
    """
    rdm_module = _rsatoolbox_rdm()
    results = with_int_n_units(results)
    rdm = require_rdm(results)
    names = set_names(results)
    if image_set is None:
        if len(names) != 1:
            raise InputError(f"these results hold {len(names)} image sets {names}: name one, e.g. to_rsatoolbox(ds, "
                             f"image_set={names[0]!r}), or take each: {{s: to_rsatoolbox(ds, s) for s in ds.image_set.values}}")
        image_set = names[0]
    set_names(results, [image_set])
    picks = {"substrate": substrate, "n_units": None if n_units is None else [n_units_value(n) for n in np.atleast_1d(n_units)],
             "layer": layer}
    rdm = rdm.sel({k: list(np.atleast_1d(v)) for k, v in picks.items() if v is not None})
    one = select_set(rdm, image_set, results["n_images"], RDM_DIMS).transpose(*_RDM_KEYS, *RDM_DIMS)
    stacked = one.stack(rdm=_RDM_KEYS).transpose("rdm", *RDM_DIMS)
    n = stacked.sizes["image_i"]
    i, j = np.triu_indices(n, k=1)
    dissimilarities = stacked.values[:, i, j]
    rdms = stacked["rdm"]
    layers = [str(v) for v in results["layer"].values]  # in network order
    used = results["units_used"] if "units_used" in results else None
    rdm_descriptors: dict[str, list[Any]] = {
        "substrate": [str(s) for s in rdms["substrate"].values],
        "n_units": [int(v) for v in rdms["n_units"].values],
        "layer": [str(v) for v in rdms["layer"].values],
        "layer_index": [layers.index(str(v)) for v in rdms["layer"].values],
    }
    if used is not None:
        rdm_descriptors["units_used"] = [int(used.sel(substrate=s, n_units=u, layer=la))
                                         for s, u, la in zip(rdm_descriptors["substrate"], rdm_descriptors["n_units"], rdm_descriptors["layer"])]
    images = (results["image_name"].sel(image_set=image_set).values[:n] if "image_name" in results.coords
              else np.asarray([f"image {k}" for k in range(n)]))
    attrs = results.attrs
    normalize = str(attrs.get("normalize", ""))
    measure = f"daskdiff {attrs.get('metric', '')}" + (f", {normalize}-normalised" if normalize and normalize != "none" else "")
    measure += ", per unit (divided by sqrt(units))" if int(attrs.get("per_unit", 0)) else ""
    descriptors = {"image_set": image_set, **{k: attrs[k] for k in ("metric", "normalize", "per_unit", "model", "weights") if k in attrs}}
    return rdm_module.RDMs(
        dissimilarities,
        dissimilarity_measure=measure,
        descriptors=descriptors,
        rdm_descriptors=rdm_descriptors,
        pattern_descriptors={"image": [str(v) for v in images], "index": list(range(n))},
    )
