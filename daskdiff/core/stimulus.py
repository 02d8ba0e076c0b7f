"""Numeric core: the stimulus differentiation of a movie, as Mayner et al. (2022) published it.

The OpenScope differentiation paper (Mayner, W. G. P., Marshall, W., Billeh, Y. N., et al.,
2022, eNeuro 9(1); reference code: github.com/wmayner/openscope-differentiation,
``stimulus_properties.ipynb`` with ``load.py`` and ``spectral_differentiation.py``) measures how
differentiated a movie itself is, as a mouse's V1 would see it, with the measure it applies to
the neurons, every pixel taken as a "cell":

1. the movie is read as float64 (the reference's ``load_stimulus_movie`` casts the stored uint8
   array with ``.astype(np.float64)`` before anything else); an RGB movie is first reduced to
   luminance (:data:`LUMINANCE_WEIGHTS`; the published movies are grey, so this is ours);
2. each frame is blurred by ``scipy.ndimage.gaussian_filter(frame, sigma=(sy, sx),
   mode="reflect", truncate=4.0)`` whose half width at half maximum is the radius of a median
   V1 receptive field (:func:`receptive_field_sigma`);
3. states are every pixel's power spectrum ``|rfft|**2`` over non-overlapping windows of
   ``state_length`` seconds (:func:`daskdiff.spectral_states`, the same code as for responses);
4. the value is the median Euclidean distance between the windows' states
   (:func:`daskdiff.differentiation` of the states).

Conventions
-----------
- ``movie`` is **time first**: ``(frames, rows, cols)`` grey or ``(frames, rows, cols, 3)`` RGB
  (``(frames, rows, cols, 1)`` is grey too), any real dtype (uint8 0..255 as stored).
- ``field_of_view`` is ``(vertical, horizontal)`` degrees spanned by the frame's ``(rows, cols)``,
  in the order of the array's axes (the paper's screen: 95 deg by 120 deg, frames of 120 by 192 px).
- Whole windows only: trailing frames that fill no window are dropped, as
  :func:`daskdiff.spectral_windows` reports (the reference refuses a movie that does not split
  evenly; the published movies do).
- The blur runs in float64 and returns float64 (``gaussian_filter`` keeps its input's dtype:
  blurring the uint8 array itself would round every blurred pixel to an integer, which the
  published values did not do).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from .differentiation import differentiation
from .spectral import check_spectral_metric, spectral_states, spectral_windows, SpectralMetric

RF_AREA = 250.0
"""Median area of a mouse V1 receptive field, deg^2 (Cux2 V1 RF, de Vries et al., 2020, as the reference takes it)."""

FIELD_OF_VIEW = (95.0, 120.0)
"""Degrees of visual angle spanned by the OpenScope screen, ``(vertical, horizontal)``."""

LUMINANCE_WEIGHTS = (0.2126, 0.7152, 0.0722)
"""R, G, B weights of luminance (ITU-R BT.709, sRGB primaries), applied to the stored values.
They sum to exactly 1.0 in float64, so a grey movie stored as RGB gives the grey values (to
rounding): the published movies are grey and need no weights."""

TRUNCATE = 4.0
"""The Gaussian kernel reaches ``TRUNCATE`` standard deviations each side (the reference's)."""

HWHM_PER_SIGMA = math.sqrt(2.0 * math.log(2.0))
"""Half width at half maximum of a Gaussian, in standard deviations: ``sqrt(2 ln 2)``."""


def _positive(name: str, value: object, example: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{name} must be a positive number, got {name}={value!r}; e.g. {name}={example}")
    return number


def receptive_field_sigma(shape: tuple[int, int], rf_area: float = RF_AREA,
                          field_of_view: tuple[float, float] = FIELD_OF_VIEW) -> tuple[float, float]:
    """The blur's standard deviation in pixels, ``(sigma_rows, sigma_cols)``.

    Parameters
    ----------
    shape : (int, int)
        ``(rows, cols)`` of a frame at its native resolution.
    rf_area : float, default 250
        Receptive field area in deg^2; its radius is ``r = sqrt(rf_area / pi)`` deg.
    field_of_view : (float, float), default (95, 120)
        Degrees spanned by the frame's rows and columns ``(vertical, horizontal)``.

    Returns
    -------
    (float, float)
        ``r * pixels / degrees / sqrt(2 ln 2)`` per axis: the Gaussian whose half width at half
        maximum is the receptive field's radius, in that axis's pixels. For 120 x 192 px frames
        at 95 x 120 deg, ``r = 8.9206`` deg, ``(11.268, 14.273)`` px, so sigma = ``(9.570, 12.122)``.
    """
    area = _positive("rf_area", rf_area, "250 (deg^2)")
    try:
        degrees = tuple(field_of_view)
    except TypeError:
        degrees = ()
    if len(degrees) != 2:
        raise InputError(f"field_of_view must be (vertical, horizontal) degrees, got {field_of_view!r}; e.g. field_of_view=(95, 120)")
    vertical = _positive("field_of_view[0]", degrees[0], "95 (vertical degrees)")
    horizontal = _positive("field_of_view[1]", degrees[1], "120 (horizontal degrees)")
    radius = math.sqrt(area / math.pi)
    rows, cols = shape
    return radius * rows / vertical / HWHM_PER_SIGMA, radius * cols / horizontal / HWHM_PER_SIGMA


def _is_grey(arr: np.ndarray) -> bool:
    """Whether a movie's array is grey (else RGB); an InputError naming the shapes accepted if it is neither."""
    grey = arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 1)
    if not (grey or (arr.ndim == 4 and arr.shape[-1] == 3)) or min(arr.shape[:3], default=0) < 1:
        raise InputError(
            f"movie must be (frames, rows, cols) grey or (frames, rows, cols, 3) RGB, time first, with at least "
            f"one frame, row and column; got shape {arr.shape}. A single frame is frame[None]"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"movie must hold real numbers (uint8 0..255 as stored), got dtype {arr.dtype}")
    return grey


def luminance(movie) -> np.ndarray:
    """A grey or RGB movie as float64 ``(frames, rows, cols)``: grey as it is, RGB weighted by
    :data:`LUMINANCE_WEIGHTS`; an InputError naming the shapes accepted otherwise."""
    arr = np.asarray(movie)
    if _is_grey(arr):
        return arr.reshape(arr.shape[:3]).astype(np.float64)
    return arr.astype(np.float64) @ np.asarray(LUMINANCE_WEIGHTS)


def blur_frames(frames: np.ndarray, sigma: tuple[float, float]) -> np.ndarray:
    """Each frame of ``frames`` (``(frames, rows, cols)``) blurred as the reference does:
    ``gaussian_filter(frame, sigma, mode="reflect", truncate=4.0)``, one frame at a time (no blur
    across time). The result has ``frames``' dtype: give float64 (as :func:`luminance` returns)."""
    from scipy.ndimage import gaussian_filter  # only here: ``import daskdiff`` loads no scipy

    return np.stack([gaussian_filter(frame, sigma=sigma, mode="reflect", truncate=TRUNCATE) for frame in frames])


def stimulus_states(movie, fs: float, *, rf_area: float = RF_AREA, field_of_view: tuple[float, float] = FIELD_OF_VIEW,
                    state_length: float = 1.0) -> np.ndarray:
    """The windows' states of a movie: every blurred pixel's power spectrum, per window.

    Parameters are those of :func:`stimulus_differentiation`. Returns float64 ``(n_windows,
    rows * cols * n_freqs)``, pixel-major in row-major pixel order (column ``pixel * n_freqs +
    freq``; :func:`daskdiff.spectral_states` of the blurred ``(frames, rows * cols)`` matrix).
    One window is converted and blurred at a time, so the memory is the movie, one window in
    float64 and the states (about 4 bytes per pixel and frame). At least two windows are needed.
    """
    arr = np.asarray(movie)
    _is_grey(arr)  # the shape and dtype, checked before anything is computed
    geometry = spectral_windows(len(arr), fs=fs, state_length=state_length)
    n, step = geometry.samples_per_window, geometry.step
    if geometry.n_windows < 2:
        raise InputError(
            f"the movie has {len(arr)} frame(s) at fs={fs!r} Hz, {geometry.n_windows} whole window(s) of {n} frames "
            f"(state_length={state_length!r} s); stimulus differentiation needs at least 2 windows ({2 * n} frames): "
            "give a longer movie or a shorter state_length"
        )
    sigma = receptive_field_sigma(arr.shape[1:3], rf_area, field_of_view)
    blocks = (blur_frames(luminance(arr[start : start + n]), sigma).reshape(n, -1)
              for start in range(0, geometry.used, step))
    return np.concatenate([spectral_states(block, fs=fs, state_length=state_length) for block in blocks])


def stimulus_differentiation(movie, fs: float, rf_area: float = RF_AREA, field_of_view: tuple[float, float] = FIELD_OF_VIEW,
                             state_length: float = 1.0, metric: SpectralMetric = "euclidean") -> float:
    """Stimulus differentiation of a movie (Mayner et al., 2022): the median distance between
    the power spectra of its blurred pixels in 1-s windows.

    Parameters
    ----------
    movie : array_like
        ``(frames, rows, cols)`` grey or ``(frames, rows, cols, 3)`` RGB, **time first**, at its
        native resolution (the published: 120 x 192 px uint8 grey). RGB becomes luminance
        (:data:`LUMINANCE_WEIGHTS`, summing to 1: a grey movie stored as RGB gives the grey value).
    fs : float
        Frame rate in Hz (the OpenScope movies: 30).
    rf_area : float, default 250
        Receptive field area, deg^2: the blur's half width at half maximum is its radius
        ``sqrt(rf_area / pi)`` (:func:`receptive_field_sigma`).
    field_of_view : (float, float), default (95, 120)
        Degrees spanned by the frame's rows and columns (the OpenScope screen).
    state_length : float, default 1.0
        Window length in seconds; ``state_length * fs`` must be a whole number of frames.
    metric : {'euclidean', 'cityblock', 'chebyshev'}, default 'euclidean'
        Distance between two windows' states (the paper's: ``euclidean``, not squared).

    Returns
    -------
    float
        The median of the ``n_windows * (n_windows - 1) / 2`` distances between windows, each
        pair once. In squared units of the frames' values times frames (a constant movie of
        value ``c`` has DC power ``(state_length * fs * c)**2`` per pixel); the published values
        range from 8.37e6 (noise) to 2.27e9.

    Raises
    ------
    InputError
        A movie of another shape, fewer than two whole windows, a window that is no whole number
        of frames, a non-positive ``rf_area`` or field of view, an unknown metric.

    Notes
    -----
    Equal, to rounding, to the reference's procedure (``stimulus_properties.ipynb``): the
    uint8 movie cast to float64, ``gaussian_filter`` on each frame, the pixels joined into
    "cells", ``np.fft.rfft`` over each window, ``|.|**2``, ``scipy.spatial.distance.pdist`` and
    ``np.median``. Trailing frames that fill no whole window are dropped (the reference needs a
    movie that splits evenly).

    See Also
    --------
    stimulus_states, daskdiff.spectral_differentiation
    """
    check_spectral_metric(metric)
    states = stimulus_states(movie, fs, rf_area=rf_area, field_of_view=field_of_view, state_length=state_length)
    return float(differentiation(states, metric=metric))
