"""Storage layer: what each variable of the results file means: its CF attributes, the ``n_units`` coordinate's encoding.

:data:`VARIABLE_ATTRS` is the one table of ``long_name`` and ``units`` (CF conventions, UDUNITS
strings: ``"1"`` for a dimensionless number or a count, ``"s"``, ``"Hz"``) of every variable and
coordinate the results file can hold; :func:`describe` puts them on a Dataset. A new results
variable gets its row here (a test checks that every variable written has one).

``n_units`` is an int64 coordinate: the number of units sampled per repeat, with
:data:`ALL_UNITS` (``-1``) meaning every unit of the layer (CF ``flag_values``/``flag_meanings``
say so). :func:`n_units_value` turns any label a user or an older results file gives
(``200``, ``"200"``, ``"all"``, ``-1``) into that integer; :func:`with_int_n_units` converts the
string labels (``'200'``, ``'all'``) of files written before into it.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["ALL_UNITS", "VARIABLE_ATTRS", "describe", "n_units_text", "n_units_value", "with_int_n_units"]

ALL_UNITS = -1
"""The ``n_units`` coordinate's value for 'all units of the layer' (exact, no sampling)."""

_DIMENSIONLESS = "1"

VARIABLE_ATTRS: dict[str, dict[str, Any]] = {
    # coordinates
    "image_set": dict(long_name="image set (name given in the job spec)"),
    "substrate": dict(long_name="substrate the units are sampled from (units, or a per-filter statistic)"),
    "n_units": dict(long_name="number of units sampled per repeat (-1: every unit of the layer, exact)", units=_DIMENSIONLESS,
                    flag_values=np.int64(ALL_UNITS), flag_meanings="all"),
    "layer": dict(long_name="network layer (Keras name)"),
    "layer_index": dict(long_name="position of the layer in the network (0: first analysed layer)", units=_DIMENSIONLESS),
    "repeat": dict(long_name="sampling repeat (an independent draw of units)", units=_DIMENSIONLESS),
    "image": dict(long_name="position of the image in its set (time order for a movie)", units=_DIMENSIONLESS),
    "image_i": dict(long_name="row image of the RDM (position in its set)", units=_DIMENSIONLESS),
    "image_j": dict(long_name="column image of the RDM (position in its set)", units=_DIMENSIONLESS),
    "image_name": dict(long_name="image file, relative to its set's folder (empty: padding of a smaller set)"),
    "image_name_i": dict(long_name="row image of the RDM, relative to its set's folder"),
    "image_name_j": dict(long_name="column image of the RDM, relative to its set's folder"),
    "rank": dict(long_name="rank of the class among the top predictions (1: most probable)", units=_DIMENSIONLESS),
    # results
    "differentiation": dict(long_name="differentiation (median pairwise distance between images)", units=_DIMENSIONLESS),
    "n_undefined": dict(long_name="repeats whose normalising statistic was 0 or not finite (differentiation NaN)",
                        units=_DIMENSIONLESS),
    "units_used": dict(long_name="units used per repeat (n_units capped at the layer's size)", units=_DIMENSIONLESS),
    "n_images": dict(long_name="images in the set (those decoded)", units=_DIMENSIONLESS),
    "rdm": dict(long_name="representational dissimilarity matrix, mean over the defined repeats", units=_DIMENSIONLESS),
    "image_path": dict(long_name="image file path as read (empty: padding of a smaller set)"),
    "top1_label": dict(long_name="most probable class: its label"),
    "top1_class": dict(long_name="most probable class: its index (-1: padding)", units=_DIMENSIONLESS),
    "top1_prob": dict(long_name="most probable class: its probability", units=_DIMENSIONLESS),
    "top5_class": dict(long_name="top predicted classes: their indices (-1: padding)", units=_DIMENSIONLESS),
    "top5_prob": dict(long_name="top predicted classes: their probabilities", units=_DIMENSIONLESS),
    "top5_label": dict(long_name="top predicted classes: their labels"),
    "skipped_set": dict(long_name="image set of a file that could not be decoded"),
    "skipped_path": dict(long_name="path of a file that could not be decoded"),
    "skipped_reason": dict(long_name="why the file could not be decoded"),
    "fps": dict(long_name="frame rate of the movie (NaN: the set is no movie)", units="Hz"),
    "spectral_differentiation": dict(long_name="spectral differentiation (median distance between the windows' spectral states)",
                                     units=_DIMENSIONLESS),
    "normalized_spectral_differentiation": dict(long_name="normalized spectral differentiation (divided by sqrt(units_used))",
                                                units=_DIMENSIONLESS),
    "spectral_windows": dict(long_name="whole windows of state_length in the movie", units=_DIMENSIONLESS),
    "spectral_dropped": dict(long_name="trailing frames in no window", units=_DIMENSIONLESS),
    "spectral_samples_per_window": dict(long_name="frames per window (state_length * fps)", units=_DIMENSIONLESS),
    "stimulus_differentiation": dict(long_name="stimulus differentiation of the movie (spectral, of its pixels)", units=_DIMENSIONLESS),
    "active_units": dict(long_name="features not constant over all the job's images", units=_DIMENSIONLESS),
    "eligible_units": dict(long_name="features the sampling mode draws from", units=_DIMENSIONLESS),
}
"""``long_name`` and ``units`` (and flags) of every results variable and coordinate, by name.
String variables have no ``units`` (CF leaves them without); ``"1"`` is dimensionless."""


def describe(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with :data:`VARIABLE_ATTRS`' attributes on each of its variables and coordinates
    (set in place and returned; attributes already there are kept over the table's).

    Raises
    ------
    KeyError
        A variable without a row in :data:`VARIABLE_ATTRS` (give it one there).
    """
    missing = [str(name) for name in ds.variables if _attrs_of(str(name)) is None]
    if missing:
        raise KeyError(f"results variables {missing} have no row in daskdiff.io.results_attrs.VARIABLE_ATTRS: add one")
    for name, variable in ds.variables.items():
        variable.attrs.update({k: v for k, v in _attrs_of(str(name)).items() if k not in variable.attrs})
    return ds


CONDITION_PREFIX = "condition_"
"""Prefix of the coordinates a stimulus table's condition columns become (text, no units)."""


def _attrs_of(name: str) -> dict[str, Any] | None:
    if name in VARIABLE_ATTRS:
        return VARIABLE_ATTRS[name]
    if name.startswith(CONDITION_PREFIX):
        return dict(long_name=f"condition {name[len(CONDITION_PREFIX):]!r} of the image, from the set's stimulus table "
                              "(text as in the CSV; empty: padding, or a set without this column)")
    return None


def n_units_value(label: Any) -> int:
    """The ``n_units`` coordinate's integer for a label: ``200``, ``"200"`` -> 200; ``"all"``,
    ``-1`` -> :data:`ALL_UNITS`.

    Raises
    ------
    ValueError
        A label that is neither a positive integer nor 'all' (or -1).
    """
    if isinstance(label, str) and label.strip().lower() == "all":
        return ALL_UNITS
    try:
        value = int(label.strip()) if isinstance(label, str) else operator.index(label)
    except (TypeError, ValueError):
        value = 0
    if value == ALL_UNITS or value > 0:
        return value
    raise ValueError(f"n_units {label!r} is neither a positive number of units nor 'all' (-1); e.g. n_units=200 or n_units='all'")


def n_units_text(value: Any) -> str:
    """How to print an ``n_units`` label: ``'all'`` for :data:`ALL_UNITS`, else the number."""
    value = n_units_value(value)
    return "all" if value == ALL_UNITS else str(value)


def with_int_n_units(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with an int64 ``n_units`` coordinate (:func:`n_units_value` of each label; the
    string labels of results files written before become integers); ``ds`` itself if it is one."""
    if "n_units" not in ds.coords or ds["n_units"].dtype == np.int64:
        return ds
    attrs = {**ds["n_units"].attrs, **{k: v for k, v in VARIABLE_ATTRS["n_units"].items() if k != "long_name"}}
    values = np.asarray([n_units_value(v) for v in ds["n_units"].values], dtype=np.int64)
    out = ds.assign_coords(n_units=("n_units", values))
    out["n_units"].attrs.update(attrs)
    return out
