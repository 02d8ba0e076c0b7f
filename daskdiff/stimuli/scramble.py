"""Stimuli layer: phase-scrambled movies (Fourier amplitude kept, phases randomised, seeded): the OpenScope control."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Literal, Mapping

import numpy as np

from .common import center_square, check_choice, check_int, check_prefix, resize_square, image_rng
from .movie import Movie, MovieSource, check_fps, load_movie, write_movie
from ..errors import InputError

ScrambleMode = Literal["spatiotemporal", "frame", "fixed"]

SCRAMBLE_MODES = ("spatiotemporal", "frame", "fixed")
"""``spatiotemporal``: one 3-D (t, y, x) phase field; ``frame``: independent 2-D phases per frame;
``fixed``: one 2-D phase field added to every frame. See :func:`phase_scramble`."""

ChannelPhases = Literal["shared", "independent"]

CHANNEL_PHASES = ("shared", "independent")
"""``shared``: the same random phases added to every colour channel; ``independent``: one set each."""

Fit = Literal["clip", "scale"]

FITS = ("clip", "scale")
"""How scrambled values are brought into 0..255: clipped, or scaled towards the mean until they fit."""


def random_phasors(noise: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``exp(1j * angle(rfftn(noise, axes)))``, with 1 at the zero frequency: unit random phase factors.

    The phases of the transform of a real array are odd, ``phi(-f) = -phi(f)``, so multiplying
    another real array's transform by these factors keeps it Hermitian, and its inverse real.
    For Gaussian white ``noise`` the phases are uniform on the circle and independent between
    frequencies (except that each frequency pairs with its mirror image, and self-mirrored ones
    such as Nyquist terms get 0 or pi). The zero-frequency factor is 1, so scrambling keeps the mean.
    """
    spectrum = np.fft.rfftn(noise, axes=axes)
    magnitude = np.abs(spectrum)
    spectrum /= np.where(magnitude > 0, magnitude, 1.0)
    spectrum[tuple(0 if a in axes else slice(None) for a in range(noise.ndim))] = 1.0
    return spectrum


def phase_scramble(
    movie: np.ndarray,
    *,
    seed: int = 0,
    mode: ScrambleMode = "spatiotemporal",
    channels: ChannelPhases = "shared",
) -> np.ndarray:
    """The phase-scrambled movie as float64, before rounding and clipping to 0..255.

    Parameters
    ----------
    movie : array_like
        ``(n_frames, rows, cols, n_channels)`` real values (e.g. ``uint8`` RGB frames).
    seed : int, default 0
        Non-negative seed of the random phases.
    mode : {'spatiotemporal', 'frame', 'fixed'}, default 'spatiotemporal'
        - ``spatiotemporal``: 3-D FFT over ``(t, y, x)`` of each channel; random phases, one
          field for the whole movie, drawn from child 0 of ``SeedSequence(seed)``. Keeps the
          movie's 3-D amplitude spectrum: each spatial frequency's temporal power spectrum,
          so how fast things change; each frame's own 2-D spectrum is not kept. The movie is
          treated as periodic in time (the last frame wraps to the first).
        - ``frame``: 2-D FFT of each frame over ``(y, x)``, random phases drawn independently
          for frame ``t`` from child ``t`` (so frame ``t`` does not depend on the movie's
          length). Keeps every frame's 2-D amplitude spectrum, but consecutive frames become
          unrelated: the movie flickers, its temporal spectrum nearly white.
        - ``fixed``: as ``frame``, but one random phase field (child 0) is added to every
          frame's own phases. Keeps every frame's 2-D amplitude spectrum *and* the 3-D one, and
          the way phases change from frame to frame: motion survives (a pan stays a pan, of an
          unrecognisable texture); only spatial structure is destroyed.
    channels : {'shared', 'independent'}, default 'shared'
        ``shared`` adds the same random phase to every channel at each frequency, so each
        channel keeps its amplitude spectrum and the channels keep their relative phases
        (colour correlations at each frequency): the result has the original's colours, not
        chromatic noise. ``independent`` draws the phases of each channel separately (one
        noise array with a channel axis).

    Returns
    -------
    numpy.ndarray
        float64 array of ``movie``'s shape, real by construction.

    Notes
    -----
    The random phase factors are :func:`random_phasors` of standard normal noise drawn with
    ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))``
    (``rng.standard_normal((n_frames, rows, cols))`` for ``spatiotemporal``,
    ``(rows, cols)`` per frame or once otherwise; ``+ (n_channels,)`` when ``independent``).
    Each channel's transform ``F`` is multiplied by them, ``F * exp(1j * phases)``: its amplitude is
    unchanged and its phase is shifted by a uniform random amount, which makes it uniform and
    independent of the original. The zero-frequency term is left alone, so the mean (of each
    frame, in the 2-D modes) is kept. The transforms are ``numpy.fft.rfftn``/``irfftn``, so
    the output is exactly real; its amplitude spectrum equals the input's to rounding.
    """
    x = np.asarray(movie, dtype=np.float64)
    if x.ndim != 4:
        raise InputError(f"movie must be (n_frames, rows, cols, n_channels), got shape {x.shape}")
    seed = check_int("seed", seed, 0, "seed=0")
    mode = check_choice("mode", mode, SCRAMBLE_MODES)
    channels = check_choice("channels", channels, CHANNEL_PHASES)
    n_frames, rows, cols, n_channels = x.shape
    extra = (n_channels,) if channels == "independent" else ()
    out = np.empty_like(x)

    def per_channel(phasors: np.ndarray) -> np.ndarray:
        return phasors[..., None] if channels == "shared" else phasors

    if mode == "spatiotemporal":
        phasors = random_phasors(image_rng(seed, 0).standard_normal((n_frames, rows, cols) + extra), (0, 1, 2))
        for c in range(n_channels):
            spectrum = np.fft.rfftn(x[..., c], axes=(0, 1, 2))
            spectrum *= phasors if channels == "shared" else phasors[..., c]
            out[..., c] = np.fft.irfftn(spectrum, s=(n_frames, rows, cols), axes=(0, 1, 2))
        return out
    fixed = per_channel(random_phasors(image_rng(seed, 0).standard_normal((rows, cols) + extra), (0, 1))) if mode == "fixed" else None
    for t in range(n_frames):
        phasors = fixed if fixed is not None else per_channel(random_phasors(image_rng(seed, t).standard_normal((rows, cols) + extra), (0, 1)))
        spectrum = np.fft.rfft2(x[t], axes=(0, 1))
        out[t] = np.fft.irfft2(spectrum * phasors, s=(rows, cols), axes=(0, 1))
    return out


def _source_movie(source: object, fps: float | None, n_frames: int | None) -> tuple[Movie, Any]:
    """The movie to scramble and ``source`` as JSON: a path is read, a :class:`MovieSource` made."""
    if isinstance(source, MovieSource):
        with tempfile.TemporaryDirectory(prefix="daskdiff-scramble-") as folder:
            source.write(folder)
            movie = load_movie(folder, fps=fps, n_frames=n_frames)
        params = dict(source.spec)
        kind = params.pop("generate")
        return movie._replace(source={"kind": "generate", "generate": kind, "parameters": params, "fps": movie.fps}), dict(source.spec)
    if isinstance(source, Mapping):
        raise InputError(
            f"source {dict(source)!r} is a movie generator's spec, which daskdiff.stimuli.registry.generate makes: "
            f"call generate('scrambled', out_dir, source={{'generate': KIND, ...}}), or give a folder of frames or a movie file"
        )
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            f"source must be a folder of frames, a movie file or {{generate: KIND, ...}}, got {source!r}"
        )
    return load_movie(source, fps=fps, n_frames=n_frames), os.path.abspath(source)


def phase_scrambled(
    source: str | os.PathLike | Mapping[str, Any] | MovieSource,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    mode: ScrambleMode = "spatiotemporal",
    channels: ChannelPhases = "shared",
    fps: float | None = None,
    n_frames: int | None = None,
    size: int | None = None,
    fit: Fit = "clip",
    prefix: str = "scrambled",
) -> list[str]:
    """Write a phase-scrambled copy of a movie: the control of the OpenScope movies.

    Parameters
    ----------
    source : str, os.PathLike, mapping or MovieSource
        The movie: a folder written by a movie generator (its ``movie.json`` gives the frames
        and the rate), any folder of frames (sorted by name; give ``fps``), a movie file
        (GIF/APNG/WebP, or a video with ``imageio-ffmpeg``; constant frame rate), or a mapping
        ``{generate: KIND, ...}`` naming a movie generator (``gratings``, ``photo_movie``,
        ``skimage_gif``, ``scrambled``, ``movie``) and its parameters, made in a temporary
        folder: through :func:`daskdiff.stimuli.registry.generate`, which hands this function
        such a mapping as a :class:`~daskdiff.stimuli.movie.MovieSource` (called directly,
        this function refuses a bare mapping).
    out_dir : str or os.PathLike
        Folder to write to; created (with parents) if missing. One movie per folder.
    seed : int, default 0
        Non-negative seed of the random phases.
    mode : {'spatiotemporal', 'frame', 'fixed'}, default 'spatiotemporal'
        What is kept; see :func:`phase_scramble`. The default keeps the 3-D (t, y, x)
        amplitude spectrum, hence the temporal power spectrum at every spatial frequency, and
        randomises everything else (objects and coherent motion). Spectral differentiation
        compares temporal power spectra, so a control whose temporal spectrum differed (as
        ``frame`` mode's flicker does) would differ for that reason alone.
    channels : {'shared', 'independent'}, default 'shared'
        Same random phases for R, G and B (keeps the colours), or independent ones.
    fps : float, optional
        Frame rate of a source that records none (a plain folder); must agree with one that does.
    n_frames : int, optional
        Scramble only the first ``n_frames`` frames.
    size : int, optional
        Centre-crop each source frame to its largest square and resize it to ``size`` x
        ``size`` (Pillow bicubic) before scrambling; default: keep the source's frames as they are.
    fit : {'clip', 'scale'}, default 'clip'
        Scrambled values fall outside 0..255 (a natural movie's pixels are bounded, its
        scrambled version's are nearly Gaussian). ``clip`` clips them: the contrast is kept, the
        amplitude spectrum changes a little where values were clipped. ``scale`` multiplies
        every value's deviation from its channel's mean over the movie by the largest
        ``s <= 1`` that fits them all: the amplitude spectrum's shape is kept exactly (every
        coefficient but the mean times ``s``), the contrast drops.
    prefix : str, default 'scrambled'
        File-name stem: frames are ``<prefix>-000000.png``, ...

    Returns
    -------
    list of str
        Absolute paths of the frames, in time order; as many as the source's.

    Notes
    -----
    The frames are ``numpy.rint(numpy.clip(phase_scramble(frames, ...), 0, 255))`` as
    ``uint8`` (after the ``scale`` step, if chosen): scrambling keeps the amplitude spectrum
    exactly, rounding and clipping change it a little. ``movie.json`` records the ``fps``, the
    source, the fraction of values outside 0..255 before fitting (``outside_fraction``; the
    share clipped, with ``fit='clip'``) and the ``scale``. The same arguments rewrite
    byte-identical files; another seed gives other phases.
    """
    seed = check_int("seed", seed, 0, "seed=0")
    mode = check_choice("mode", mode, SCRAMBLE_MODES)
    channels = check_choice("channels", channels, CHANNEL_PHASES)
    fps = None if fps is None else check_fps(fps)
    n_frames = None if n_frames is None else check_int("n_frames", n_frames, 1, "n_frames=250")
    size = None if size is None else check_int("size", size, 1, "size=224 or size=None (the source's size)")
    fit = check_choice("fit", fit, FITS)
    prefix = check_prefix(prefix)
    movie, given = _source_movie(source, fps, n_frames)
    frames = movie.frames
    if size is not None:
        frames = np.stack([resize_square(np.ascontiguousarray(center_square(f)), size) for f in frames])
    values = phase_scramble(frames, seed=seed, mode=mode, channels=channels)
    outside = float(np.mean((values < 0) | (values > 255)))
    scale = _fitting_scale(values) if fit == "scale" else 1.0
    if scale < 1.0:
        mean = values.mean(axis=(0, 1, 2))
        values = mean + (values - mean) * scale
    scrambled = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
    parameters = dict(source=given, seed=seed, mode=mode, channels=channels, fps=fps, n_frames=n_frames, size=size, fit=fit)
    extra = {"source_movie": movie.source, "outside_fraction": outside, "scale": scale}
    return write_movie(out_dir, scrambled, fps=movie.fps, prefix=prefix, generator="scrambled",
                       parameters=parameters, extra=extra)


def _fitting_scale(values: np.ndarray) -> float:
    """The largest ``s <= 1`` with ``mean + (values - mean) * s`` within 0..255 in every channel."""
    mean = values.mean(axis=(0, 1, 2))
    high = values.max(axis=(0, 1, 2)) - mean
    low = mean - values.min(axis=(0, 1, 2))
    limits = [1.0]
    limits += [float((255 - m) / h) for m, h in zip(mean, high) if h > 0]
    limits += [float(m / lo) for m, lo in zip(mean, low) if lo > 0]
    return max(0.0, min(limits))
