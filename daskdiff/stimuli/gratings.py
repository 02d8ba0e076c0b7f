"""Stimuli layer: drifting gratings (sinusoidal or square-wave), written as a movie."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Iterator, Literal

import numpy as np

from .common import check_choice, check_int, check_prefix
from .movie import check_fps, check_length, check_number, write_movie

Waveform = Literal["sine", "square"]

WAVEFORMS = ("sine", "square")
"""Grating profiles: ``sine`` (sinusoidal luminance) or ``square`` (the sign of the sine)."""

MEAN_LEVEL = 127.5
"""Mean grey level of a grating (the middle of 0..255)."""


def _spatial_cycles(size: int, orientation: float, spatial_frequency: float) -> np.ndarray:
    """Cycles of the grating at each pixel centre, along the drift direction, at time 0."""
    centre = (size - 1) / 2
    x = np.arange(size, dtype=np.float64) - centre          # columns, rightwards
    y = centre - np.arange(size, dtype=np.float64)          # rows, upwards
    theta = math.radians(orientation)
    distance = y[:, None] * math.sin(theta) + x[None, :] * math.cos(theta)
    return distance * (spatial_frequency / size)


def _temporal_cycles(k: int, temporal_frequency: float, fps: float) -> float:
    """``temporal_frequency * k / fps`` modulo 1, computed exactly on the floats' rational values."""
    return float((Fraction(temporal_frequency) * k / Fraction(fps)) % 1)


def _levels(cycles: np.ndarray, contrast: float, phase: float, waveform: str) -> np.ndarray:
    wave = np.sin(2 * np.pi * cycles + math.radians(phase))
    if waveform == "square":
        wave = np.where(wave >= 0, 1.0, -1.0)
    return MEAN_LEVEL * (1 + contrast * wave)


def _check_grating(size, fps, orientation, spatial_frequency, temporal_frequency, contrast, phase, waveform):
    size = check_int("size", size, 2, "size=224")
    fps = check_fps(fps)
    orientation = check_number("orientation", orientation, "orientation=45 (degrees)")
    spatial_frequency = check_number(
        "spatial_frequency", spatial_frequency,
        f"spatial_frequency={min(4, size / 4):g} (cycles per image width; below size / 2 = {size / 2:g}, the pixel Nyquist limit)",
        minimum=0, below=size / 2,
    )
    temporal_frequency = check_number(
        "temporal_frequency", temporal_frequency,
        f"temporal_frequency={min(2, fps / 4):g} (Hz; below fps / 2 = {fps / 2:g}, else the drift aliases)",
        minimum=0, below=fps / 2,
    )
    contrast = check_number("contrast", contrast, "contrast=1 (Michelson, 0 to 1)", minimum=0, maximum=1)
    phase = check_number("phase", phase, "phase=90 (degrees)")
    waveform = check_choice("waveform", waveform, WAVEFORMS)
    return size, fps, orientation, spatial_frequency, temporal_frequency, contrast, phase, waveform


def grating(
    k: int,
    *,
    size: int = 224,
    fps: float = 30.0,
    orientation: float = 0.0,
    spatial_frequency: float = 4.0,
    temporal_frequency: float = 2.0,
    contrast: float = 1.0,
    phase: float = 0.0,
    waveform: Waveform = "sine",
) -> np.ndarray:
    """Grey levels (float64, 0..255, before rounding) of frame ``k`` of a drifting grating.

    Returns a ``(size, size)`` array; see :func:`drifting_gratings` for the formula. The
    written frames are ``numpy.rint`` of this, clipped to 0..255, in all three channels.
    """
    k = check_int("k", k, 0, "k=0")
    size, fps, orientation, sf, tf, contrast, phase, waveform = _check_grating(
        size, fps, orientation, spatial_frequency, temporal_frequency, contrast, phase, waveform
    )
    cycles = _spatial_cycles(size, orientation, sf) - _temporal_cycles(k, tf, fps)
    return _levels(cycles, contrast, phase, waveform)


def drifting_gratings(
    out_dir: str | os.PathLike,
    *,
    orientation: float = 0.0,
    spatial_frequency: float = 4.0,
    temporal_frequency: float = 2.0,
    fps: float = 30.0,
    duration: float | None = None,
    n_frames: int | None = None,
    size: int = 224,
    contrast: float = 1.0,
    phase: float = 0.0,
    waveform: Waveform = "sine",
    prefix: str = "grating",
) -> list[str]:
    """Write a drifting grating as a movie: grey RGB PNG frames and ``movie.json``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing. One movie per folder.
    orientation : float, default 0
        Direction of drift in degrees, counter-clockwise from rightwards: 0 is vertical bars
        moving right, 90 horizontal bars moving up, 180 vertical bars moving left. The bars
        are perpendicular to it.
    spatial_frequency : float, default 4
        Cycles per image width (the period is ``size / spatial_frequency`` pixels, the same
        look at every ``size``), >= 0 and below ``size / 2``. With an image spanning ``D``
        degrees of visual field this is ``spatial_frequency / D`` cycles per degree (the
        Allen Brain Observatory used 0.04 cycles/degree). 0 gives a uniform field.
    temporal_frequency : float, default 2
        Cycles per second (Hz) passing a point, >= 0 and below ``fps / 2``. The drift speed
        is ``temporal_frequency / spatial_frequency`` image widths per second.
    fps : float, default 30
        Frames per second.
    duration, n_frames : optional
        Length in seconds (``duration * fps`` must be a whole number) or in frames; at most
        one. Default: 2 seconds.
    size : int, default 224
        Side of the square frames in pixels (>= 2).
    contrast : float, default 1
        Michelson contrast, 0..1: grey levels span ``127.5 * (1 +- contrast)``.
    phase : float, default 0
        Spatial phase in degrees at the image centre at time 0 (90 puts a crest there).
    waveform : {'sine', 'square'}, default 'sine'
        Sinusoidal profile, or its sign (+1 where the sine is >= 0, else -1).
    prefix : str, default 'grating'
        File-name stem: frames are ``<prefix>-000000.png``, ``<prefix>-000001.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the frames, in time order.

    Notes
    -----
    Pixel ``(r, c)`` has centre ``x = c - (size - 1) / 2`` (rightwards) and
    ``y = (size - 1) / 2 - r`` (upwards). With ``theta = radians(orientation)``, frame ``k``
    (time ``t = k / fps``) has grey level ::

        127.5 * (1 + contrast * w(2 pi (f * (x cos(theta) + y sin(theta)) / size - tf * t) + radians(phase)))

    with ``f = spatial_frequency``, ``tf = temporal_frequency``, ``w = sin`` (or its sign),
    rounded half to even and repeated into R, G and B. ``tf * t`` is reduced modulo 1 exactly
    (as fractions of the floats' values), so when ``tf * P / fps`` is a whole number the
    frame ``P`` frames later is byte-identical (e.g. every 15 frames at 2 Hz and 30 fps).
    ``movie.json`` records ``fps``, ``n_frames`` and these parameters. Nothing is random.
    """
    size, fps, orientation, sf, tf, contrast, phase, waveform = _check_grating(
        size, fps, orientation, spatial_frequency, temporal_frequency, contrast, phase, waveform
    )
    count = check_length(fps, duration, n_frames, default_duration=2.0)
    prefix = check_prefix(prefix)
    spatial = _spatial_cycles(size, orientation, sf)

    def frames() -> Iterator[np.ndarray]:
        for k in range(count):
            levels = _levels(spatial - _temporal_cycles(k, tf, fps), contrast, phase, waveform)
            grey = np.rint(np.clip(levels, 0, 255)).astype(np.uint8)
            yield np.repeat(grey[:, :, None], 3, axis=2)

    parameters = dict(
        orientation=orientation, spatial_frequency=sf, temporal_frequency=tf, fps=fps,
        n_frames=count, size=size, contrast=contrast, phase=phase, waveform=waveform,
    )
    units = {"orientation": "degrees, direction of drift", "spatial_frequency": "cycles per image width",
             "temporal_frequency": "Hz", "phase": "degrees"}
    return write_movie(out_dir, frames(), fps=fps, prefix=prefix, generator="gratings",
                       parameters=parameters, extra={"units": units})
