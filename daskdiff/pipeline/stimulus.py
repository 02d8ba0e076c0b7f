"""Pipeline layer: a movie's own stimulus differentiation in a job (``analysis.stimulus``).

Each movie of a job gets :func:`daskdiff.stimulus_differentiation` of its frames as decoded, at
their native resolution, before the resize to the network's input: one task per movie
(:func:`submit_stimulus`), run on a worker, because the workers are where the frame files are
decoded (they read them for extraction; the client may hold no copy of a frame folder) and a
long movie's frames and states (about 7 bytes per pixel and frame) belong in a worker's memory,
not the client's. The tasks run beside extraction and are recomputed by every run (they write
no file; nothing is cached). :func:`stimulus_variable` labels the values for the results file;
sets that are no movie get NaN.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import xarray as xr

from ..core.stimulus import stimulus_differentiation
from ..errors import InputError
from ..io.images import load_image
from .plan import JobPlan
from .spec_types import StimulusSection


def movie_stimulus(paths: tuple[str, ...], fps: float, options: dict[str, Any],
                   exif_orientation: bool = False) -> tuple[float, str | None]:
    """Task: the stimulus differentiation of one movie from its frame files, and why not.

    Each frame is decoded as extraction decodes it (:func:`daskdiff.io.images.load_image`: RGB,
    transparency over white, EXIF orientation as ``extraction.exif_orientation``) but at the
    file's own size. Returns ``(value, None)``, or ``(NaN, reason)`` where it cannot be computed:
    a frame that does not decode, frames of different sizes (no native resolution), a window
    that is no whole number of frames, fewer than 2 windows.
    """
    try:
        first = load_image(paths[0], None, exif_orientation=exif_orientation)
        frames = np.empty((len(paths), *first.shape), dtype=np.uint8)
        frames[0] = first
        for k, path in enumerate(paths[1:], 1):
            frame = load_image(path, None, exif_orientation=exif_orientation)
            if frame.shape != first.shape:
                return math.nan, (f"frame {k} ({path}) is {frame.shape[0]} x {frame.shape[1]} px, frame 0 "
                                  f"{first.shape[0]} x {first.shape[1]}: frames of different sizes have no native resolution")
            frames[k] = frame
        return stimulus_differentiation(frames, fps, **options), None
    except InputError as err:  # a frame that does not decode (ImageDecodeError is one), too short, a window not whole
        return math.nan, str(err)


def submit_stimulus(plan: JobPlan, client: Any) -> dict[str, Any]:
    """One :func:`movie_stimulus` future per movie of ``plan`` (none when ``analysis.stimulus``
    is not enabled); keys hold the job's token, as every task of the job."""
    section = plan.spec.analysis.stimulus
    if not section.enabled:
        return {}
    exif = plan.spec.extraction.exif_orientation == "apply"
    return {name: client.submit(movie_stimulus, tuple(plan.sets[name]), rate, section.options(), exif,
                                key=f"daskdiff-{plan.token}-stimulus-{name}", retries=plan.spec.extraction.retries)
            for name, rate in plan.fps.items()}


def gather_stimulus(futures: dict[str, Any], echo: Callable) -> dict[str, float]:
    """The values of :func:`submit_stimulus`'s futures; each movie left NaN gets a line saying why."""
    values = {}
    for name, future in futures.items():
        values[name], why = future.result()
        if why is not None:
            echo(f"stimulus differentiation of movie {name!r} is NaN: {why}")
    return values


def stimulus_variable(sets: list[str], values: dict[str, float], section: StimulusSection) -> xr.DataArray:
    """The results' ``stimulus_differentiation`` (image_set): ``values`` per movie, NaN for the
    other sets, with its parameters and CF attributes."""
    data = np.asarray([values.get(name, np.nan) for name in sets], dtype=np.float64)
    return xr.DataArray(data, dims=("image_set",), attrs={
        "long_name": "stimulus differentiation of the movie (median distance between the windows' spectral states of its blurred pixels)",
        "units": "1",
        "description": "frames as decoded at native resolution; RGB to luminance (BT.709 weights); each frame blurred by a "
                       "Gaussian whose half width at half maximum is the radius of a receptive field of rf_area deg^2 on a "
                       "screen of field_of_view degrees (vertical, horizontal), in float64; every pixel's |rfft|**2 over "
                       "windows of state_length s; median Euclidean distance between the windows. NaN: not a movie",
        "rf_area": float(section.rf_area),
        "field_of_view": np.asarray(section.field_of_view, dtype=np.float64),
        "state_length": float(section.state_length),
        "metric": "euclidean",
        "reference": "Mayner et al. (2022) eNeuro 9(1), github.com/wmayner/openscope-differentiation stimulus_properties.ipynb",
    })
