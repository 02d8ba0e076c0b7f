"""Top layer, figures of movies: which movie each scrambled control was made from, by the ``source`` its ``movie.json`` records.

A phase-scrambled control (``generate: scrambled``) is a control of one movie only: the one
whose frames it scrambled. Comparing every movie with the first control found would compare a
movie with another movie's control; :func:`movie_controls` pairs them by the record instead.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..stimuli.movie import MOVIE_RECORD, read_movie_record
from ..stimuli.registry import GENERATORS

__all__ = ["movie_controls"]


def _record(ds: xr.Dataset, name: str) -> dict[str, Any] | None:
    """The ``movie.json`` beside a set's frames (its first image's folder), or None."""
    paths = [str(p) for p in ds["image_path"].sel(image_set=name).values if str(p)]
    if not paths or not os.path.isfile(os.path.join(os.path.dirname(paths[0]), MOVIE_RECORD)):
        return None
    try:
        return read_movie_record(os.path.dirname(paths[0]))
    except InputError:
        return None


def _same(a: Any, b: Any) -> bool:
    """JSON values equal, numbers by value (8 == 8.0), lists and tuples alike."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _made_from(source: Any, folder: str, record: dict[str, Any]) -> bool:
    """Whether a control's ``source`` names the movie in ``folder`` with ``record``: the same
    folder or movie file (a path), or the same generator with the same parameters (a spec): each
    parameter the movie's record holds equals the spec's value, or, where the spec leaves it
    out, the generator's default (defaults of None, derived from other parameters, are not
    compared; nor are spec keys the record does not hold, such as ``duration``)."""
    if isinstance(source, str):
        given = record.get("parameters", {}).get("movie")
        return os.path.normpath(source) in {os.path.normpath(folder), os.path.normpath(str(given)) if given else None}
    if isinstance(source, dict) and source.get("generate") in GENERATORS and source.get("generate") == record.get("generator"):
        parameters = record.get("parameters", {})
        signature = inspect.signature(GENERATORS[source["generate"]].function).parameters
        # what the spec left out is the generator's default, and the movie must have that too;
        # a default of None is derived from other parameters (n_frames from duration): not compared
        implied = {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty and p.default is not None}
        wanted = {**implied, **{k: v for k, v in source.items() if k != "generate"}}
        return all(_same(wanted[key], value) for key, value in parameters.items() if key in wanted)
    return False


def movie_controls(ds: xr.Dataset) -> dict[str, str | None]:
    """Each movie of a results Dataset and its scrambled control (None: none was made from it).

    Movies are the sets with a finite ``fps``; a control is a movie whose ``movie.json`` says
    ``generator: scrambled``, and it belongs to the movie its ``parameters.source`` names (see
    :func:`_made_from`). Controls are not keys. The records are read beside the frames
    (``image_path``), so the output folder must still hold them.
    """
    names = [str(s) for s in ds["image_set"].values]
    fps = ds["fps"].values if "fps" in ds else np.full(len(names), np.nan)
    movies = [n for n, f in zip(names, fps) if np.isfinite(f)]
    records = {n: _record(ds, n) for n in movies}
    controls = {n: r for n, r in records.items() if r is not None and r.get("generator") == "scrambled"}
    out: dict[str, str | None] = {}
    for movie in movies:
        if movie in controls:
            continue
        record = records[movie] or {}
        folder = os.path.dirname(str(ds["image_path"].sel(image_set=movie).values[0]))
        found = [c for c, r in controls.items() if _made_from(r.get("parameters", {}).get("source"), folder, record)]
        out[movie] = found[0] if found else None
    return out
