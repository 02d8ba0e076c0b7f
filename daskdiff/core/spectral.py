"""Numeric core: spectral differentiation of responses over time (Mayner et al., 2022).

The measure of the Allen Institute OpenScope differentiation experiments (Mayner, W. G. P.,
Marshall, W., Billeh, Y. N., et al., 2022, "Measuring stimulus-evoked neurophysiological
differentiation in distinct populations of neurons in mouse visual cortex", eNeuro 9(1);
reference code: github.com/wmayner/openscope-differentiation, ``spectral_differentiation.py``).
It compares the *temporal* structure of a population's responses within one presentation:

1. the time axis is cut into windows of ``state_length * fs`` samples (non-overlapping by
   default); whole windows only, trailing samples are dropped (:func:`spectral_windows` says
   how many);
2. each unit's power spectrum ``|rfft|**2`` is taken in each window: DC kept, no detrending,
   no scaling;
3. the units' spectra are concatenated into one *state* per window, unit-major:
   ``state[unit * n_freqs + freq]``, as the reference joins its (neuron, frequency) axes;
4. the spectral differentiation is the median of the pairwise distances between the windows'
   states (``euclidean``, ``cityblock`` or ``chebyshev``, as :func:`scipy.spatial.distance.pdist`).

Conventions
-----------
- ``x`` has **time first**: shape ``(n_samples, n_units)``; stacks are ``(..., n_samples, n_units)``
  (e.g. one matrix per unit-sampling repeat).
- ``fs`` is the sampling rate in Hz (frames per second of a movie); ``state_length`` is in
  seconds. ``state_length * fs`` must be a whole number of samples (within 1e-9 relative, so
  ``fs=25, state_length=2.2`` is 55 samples although the float product is 55.00000000000001).
- **Dropped samples.** The reference refuses to drop more than 23 samples
  (``TRUNCATION_TOLERANCE``, sized for its 30 Hz recordings). Here any trailing part shorter
  than one window step is dropped and reported by :func:`spectral_windows` (``dropped``);
  states need at least one whole window and a differentiation at least two, else an
  :class:`~daskdiff.errors.InputError` says how many samples a window takes. To apply the
  reference's rule, check ``spectral_windows(...).dropped <= 23`` yourself.
- All arithmetic is float64.

Windowed spectra (the paper's sensitivity analysis) and log-spaced frequency bins are options
of every function here; see :func:`spectral_states`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from ..errors import InputError
from .differentiation import rdm_median
from .distances import pairwise_distances_stack

SpectralMetric = Literal["euclidean", "cityblock", "chebyshev"]

SPECTRAL_METRICS: tuple[str, ...] = ("euclidean", "cityblock", "chebyshev")
"""The distances between states that spectral differentiation offers (those of the paper)."""

WHOLE_SAMPLES_RTOL = 1e-9
"""How close to a whole number ``state_length * fs`` must be (relative) to count as one."""

LOG_GRID_DECIMALS = 8
"""The reference rounds its log-spaced grid to this many decimals (of Hz)."""


class SpectralWindows(NamedTuple):
    """How a time axis of ``n_samples`` samples is cut into windows (see :func:`spectral_windows`)."""

    samples_per_window: int
    """``state_length * fs``: samples per window, the FFT length."""
    step: int
    """Samples from one window's start to the next: ``samples_per_window - int(samples_per_window * overlap)``."""
    n_windows: int
    """How many whole windows fit (0 when ``n_samples < samples_per_window``)."""
    used: int
    """Samples covered by the windows: ``(n_windows - 1) * step + samples_per_window`` (0 if none)."""
    dropped: int
    """Trailing samples that are in no window: ``n_samples - used``."""


def samples_per_window(fs: float, state_length: float) -> int:
    """``state_length * fs`` as a whole number of samples, or an InputError naming both values.

    Parameters
    ----------
    fs : float
        Sampling rate in Hz, > 0.
    state_length : float
        Window length in seconds, > 0.

    Returns
    -------
    int
        At least 1.
    """
    try:
        rate, length = float(fs), float(state_length)
    except (TypeError, ValueError):
        raise InputError(f"fs and state_length must be numbers, got fs={fs!r}, state_length={state_length!r}") from None
    if not (np.isfinite(rate) and rate > 0):
        raise InputError(f"fs (the sampling rate in Hz) must be a positive number, got fs={fs!r}")
    if not (np.isfinite(length) and length > 0):
        raise InputError(f"state_length (seconds) must be a positive number, got state_length={state_length!r}")
    product = rate * length
    whole = round(product)
    if whole < 1 or abs(product - whole) > WHOLE_SAMPLES_RTOL * max(1.0, product):
        hint = max(1, whole) / rate
        raise InputError(
            f"state_length * fs must be a whole number of samples (at least 1), got "
            f"state_length={state_length!r} s * fs={fs!r} Hz = {product!r} samples; choose a "
            f"multiple of 1/fs = {1 / rate!r} s, e.g. state_length={hint!r}"
        )
    return int(whole)


def _check_overlap(overlap: float, nperseg: int) -> int:
    """``int(nperseg * overlap)`` (scipy's ``noverlap``) for 0 <= overlap < 1."""
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise InputError(f"overlap must be a number in [0, 1), got overlap={overlap!r}") from None
    noverlap = int(nperseg * value) if np.isfinite(value) else -1
    if not (0.0 <= value < 1.0) or not (0 <= noverlap < nperseg):
        raise InputError(
            f"overlap is the fraction of a window shared with the next one and must be in [0, 1), "
            f"got overlap={overlap!r} (windows of {nperseg} samples)"
        )
    return noverlap


def spectral_windows(n_samples: int, *, fs: float, state_length: float, overlap: float = 0.0) -> SpectralWindows:
    """How ``n_samples`` samples are cut into windows, and how many trailing samples are dropped.

    Parameters
    ----------
    n_samples : int
        Length of the time axis (e.g. frames of a movie).
    fs : float
        Sampling rate in Hz.
    state_length : float
        Window length in seconds; ``state_length * fs`` must be a whole number of samples.
    overlap : float, default 0
        Fraction of a window shared with the next, in [0, 1): the windows start every
        ``samples_per_window - int(samples_per_window * overlap)`` samples, as
        :func:`scipy.signal.spectrogram` with ``noverlap=int(nperseg * overlap)``.

    Returns
    -------
    SpectralWindows
        ``(samples_per_window, step, n_windows, used, dropped)``. Never raises for a short axis:
        ``n_windows`` is then 0 and every sample is ``dropped``.

    Examples
    --------
    >>> spectral_windows(317, fs=30, state_length=1)
    SpectralWindows(samples_per_window=30, step=30, n_windows=10, used=300, dropped=17)
    """
    nperseg = samples_per_window(fs, state_length)
    step = nperseg - _check_overlap(overlap, nperseg)
    n = int(n_samples)
    if n < 0:
        raise InputError(f"n_samples must be >= 0, got {n_samples!r}")
    n_windows = 0 if n < nperseg else (n - nperseg) // step + 1
    used = 0 if n_windows == 0 else (n_windows - 1) * step + nperseg
    return SpectralWindows(nperseg, step, n_windows, used, n - used)


def _log_grid(frequencies: np.ndarray) -> np.ndarray:
    """The reference's log-spaced grid: ``logspace(0, log10(f_max), n)`` in Hz, rounded to 8 decimals."""
    f_max = float(frequencies[-1])
    if not f_max >= 1.0:
        raise InputError(
            f"log_frequency=True needs a highest frequency (fs / 2) of at least 1 Hz, as the "
            f"reference's log-spaced grid starts at 1 Hz; got {f_max!r} Hz"
        )
    grid = np.logspace(0.0, np.log10(f_max), num=len(frequencies)).round(LOG_GRID_DECIMALS)
    grid[-1] = f_max  # the rounding's purpose: end exactly at f_max, so no power is lost
    return np.minimum(grid, f_max)


def _log_map(frequencies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, M)``: the log-spaced spectrum of a linear one ``S`` is ``S @ M``.

    As the reference: the cumulative spectrum ``C(f_k) = sum_{j<=k} S_j`` is interpolated
    linearly at the grid and differenced, i.e. DC is a point mass at 0 Hz and bin ``j >= 1`` is
    spread uniformly over ``[f_{j-1}, f_j]``; log bin ``m`` gets the power between grid points
    ``m - 1`` and ``m`` (the first, all power up to 1 Hz). Each row of ``M`` sums to 1.
    """
    grid = _log_grid(frequencies)
    df = frequencies[1] - frequencies[0]
    below = np.ones((len(frequencies), len(grid)))  # fraction of bin j's power at or below grid[m]
    below[1:] = np.clip((grid[None, :] - frequencies[:-1, None]) / df, 0.0, 1.0)
    return grid, np.diff(below, axis=1, prepend=0.0)


def spectral_frequencies(*, fs: float, state_length: float, log_frequency: bool = False) -> np.ndarray:
    """The frequency (Hz) of each of the ``n_freqs`` bins of a state, per unit.

    ``numpy.fft.rfftfreq(state_length * fs, 1 / fs)``: ``n_freqs = samples_per_window // 2 + 1``
    bins from 0 Hz (DC) to ``fs / 2`` (or just below it for an odd window). With
    ``log_frequency=True``, the reference's grid ``logspace(0, log10(f_max), n_freqs)`` rounded
    to 8 decimals (the last point exactly ``f_max``): it starts at 1 Hz, not 0 (see
    :func:`spectral_states`).
    """
    nperseg = samples_per_window(fs, state_length)
    frequencies = np.fft.rfftfreq(nperseg, 1.0 / float(fs))
    return _log_grid(frequencies) if log_frequency else frequencies


def window_values(window, nperseg: int) -> np.ndarray | None:
    """The taper of ``nperseg`` values for a ``scipy.signal.get_window`` spec (None: rectangular, not applied).

    Raises
    ------
    InputError
        ``window`` is not a spec ``get_window`` takes, or does not give ``nperseg`` finite values
        (job-spec validation calls this to refuse a bad window before any work).
    """
    if window is None:
        return None
    from scipy.signal import get_window  # only here: the plain path needs no scipy.signal

    try:
        values = np.asarray(get_window(window, nperseg), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"window={window!r} is not a scipy.signal.get_window spec ({err}); use e.g. "
            "('tukey', 0.25), ('kaiser', 14), 'hann', or None for rectangular windows"
        ) from None
    if values.shape != (nperseg,) or not np.all(np.isfinite(values)):
        raise InputError(f"window={window!r} does not give {nperseg} finite values")
    return values


def _as_signals(x, name: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] < 1:
        raise InputError(
            f"{name} must have shape (n_samples, n_units), time first (or (..., n_samples, n_units) "
            f"for a stack), with at least one unit; got shape {arr.shape}. A single trace is "
            "x.reshape(-1, 1)"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values; spectra would be undefined")
    return arr


def _one_matrix(x, stack_function: str) -> np.ndarray:
    """``x`` as an array if it is 2-D, else an InputError pointing to ``stack_function``."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InputError(
            f"x must be 2-D (n_samples, n_units), time first, got shape {arr.shape}; a single "
            f"trace is x.reshape(-1, 1), a stack of matrices goes to {stack_function}"
        )
    return arr


def spectral_states_stack(
    x,
    *,
    fs: float,
    state_length: float,
    window=None,
    overlap: float = 0.0,
    log_frequency: bool = False,
    min_windows: int = 1,
) -> np.ndarray:
    """The states of every matrix of a stack ``(..., n_samples, n_units)``: one FFT for all.

    Returns ``(..., n_windows, n_units * n_freqs)`` float64; see :func:`spectral_states` for
    the parameters and conventions. ``min_windows``: fewer whole windows raise an InputError.
    """
    arr = _as_signals(x)
    geometry = spectral_windows(arr.shape[-2], fs=fs, state_length=state_length, overlap=overlap)
    nperseg, step, n_windows = geometry.samples_per_window, geometry.step, geometry.n_windows
    if n_windows < min_windows:
        raise InputError(
            f"{arr.shape[-2]} samples give {n_windows} whole window(s) of {nperseg} samples "
            f"(state_length={state_length!r} s * fs={fs!r} Hz, overlap={overlap!r}); at least "
            f"{min_windows} needed, i.e. at least {(min_windows - 1) * step + nperseg} samples"
        )
    taper = window_values(window, nperseg)
    # (..., n - nperseg + 1, n_units, nperseg): every start; keep every step-th
    segments = np.lib.stride_tricks.sliding_window_view(arr, nperseg, axis=-2)
    # a C-ordered copy, so the FFT runs over contiguous samples (several times faster)
    segments = np.ascontiguousarray(segments[..., : geometry.used - nperseg + 1 : step, :, :])
    if taper is not None:
        segments *= taper
    spectra = np.fft.rfft(segments, axis=-1)  # (..., n_windows, n_units, n_freqs)
    power = spectra.real**2 + spectra.imag**2
    if log_frequency:
        _, log_map = _log_map(np.fft.rfftfreq(nperseg, 1.0 / float(fs)))
        power = power @ log_map
    return power.reshape(power.shape[:-2] + (-1,))


def spectral_states(
    x,
    *,
    fs: float,
    state_length: float,
    window=None,
    overlap: float = 0.0,
    log_frequency: bool = False,
) -> np.ndarray:
    """The windows' states: every unit's power spectrum in each window, concatenated.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_units)
        Responses, **time first** (one row per sample, e.g. per movie frame).
    fs : float
        Sampling rate in Hz.
    state_length : float
        Window length in seconds; ``samples_per_window = state_length * fs`` must be a whole
        number (an :class:`~daskdiff.errors.InputError` names both values otherwise).
    window : str, tuple, float or None, default None
        ``None``: rectangular windows, the published measure, ``|rfft|**2`` of the raw samples.
        Otherwise a :func:`scipy.signal.get_window` spec (e.g. ``('tukey', 0.25)`` with
        ``overlap=1/8`` or ``('kaiser', 14)`` with ``overlap=1/2``, the paper's sensitivity
        analysis): the power is ``|rfft(taper * samples)|**2``, which is
        :func:`scipy.signal.spectrogram` (``detrend=False, scaling='spectrum', mode='psd',
        return_onesided=True, noverlap=int(samples_per_window * overlap)``) multiplied by
        ``taper.sum()**2`` with scipy's one-sided doubling of the bins other than DC and
        Nyquist undone, as the reference's ``scale_spectra`` does. A boxcar window with
        ``overlap=0`` gives exactly the rectangular states.
    overlap : float, default 0
        Fraction of a window shared with the next, in [0, 1) (with any ``window``, also None).
    log_frequency : bool, default False
        Resample each spectrum onto the reference's log-spaced grid of ``n_freqs`` points,
        ``g = logspace(0, log10(f_max), n_freqs)`` Hz rounded to 8 decimals, with
        ``f_max = fs / 2`` (or the highest bin of an odd window) and the last point exactly
        ``f_max``. The reference passes the first frequency, 0, to ``np.logspace`` as an
        *exponent*, so its grid starts at 10**0 = 1 Hz, not at DC: we keep that grid, so
        results match the published ones (it depends on frequencies being in Hz, and needs
        ``f_max >= 1`` Hz). Power is conserved: as the reference, the cumulative spectrum is
        interpolated linearly at the grid and differenced, so log bin ``m`` holds the power
        between ``g[m-1]`` and ``g[m]`` (DC as a point at 0 Hz, linear bin ``j >= 1`` spread
        uniformly over ``[f_{j-1}, f_j]``), and the first log bin all power up to 1 Hz, DC
        included. Each state still sums to the same total power.

    Returns
    -------
    numpy.ndarray, shape (n_windows, n_units * n_freqs), float64
        Row ``w`` is window ``w`` (samples ``w * step`` to ``w * step + samples_per_window``);
        column ``unit * n_freqs + f`` is unit ``unit``'s power at bin ``f`` (frequencies from
        :func:`spectral_frequencies`), ``n_freqs = samples_per_window // 2 + 1``. The trailing
        ``spectral_windows(n_samples, ...).dropped`` samples are in no window. At least one
        whole window is needed.

    Notes
    -----
    Power is in squared units of ``x``, unscaled: a constant ``c`` has DC power
    ``(samples_per_window * c)**2``; ``A cos(2 pi k t fs / samples_per_window)`` has power
    ``samples_per_window**2 * A**2 / 4`` at bin ``k`` (0 < k < samples_per_window / 2).
    """
    arr = _one_matrix(x, "spectral_states_stack")
    return spectral_states_stack(
        arr, fs=fs, state_length=state_length, window=window, overlap=overlap, log_frequency=log_frequency
    )


def check_spectral_metric(metric: str) -> str:
    """``metric`` if spectral differentiation offers it, else an InputError listing those it does."""
    if metric not in SPECTRAL_METRICS:
        raise InputError(
            f"unknown metric {metric!r} for spectral differentiation; valid metrics are "
            f"{list(SPECTRAL_METRICS)}, e.g. metric='euclidean'"
        )
    return metric


def spectral_differentiation_stack(
    x,
    *,
    fs: float,
    state_length: float,
    metric: SpectralMetric = "euclidean",
    window=None,
    overlap: float = 0.0,
    log_frequency: bool = False,
    normalized: bool = False,
) -> np.ndarray:
    """Spectral differentiation of every matrix in a stack: the batched form.

    Parameters
    ----------
    x : array_like, shape (..., n_samples, n_units)
        E.g. ``(n_repeats, n_samples, n_units)``: one time-first matrix per unit-sampling
        repeat, all of the same length and number of units.
    fs, state_length, metric, window, overlap, log_frequency, normalized
        As in :func:`spectral_differentiation`.

    Returns
    -------
    numpy.ndarray, shape (...), float64
        Equal to :func:`spectral_differentiation` of each matrix (the same code on a stack of
        one). One real FFT covers the whole stack; the distances are those of
        :func:`daskdiff.pairwise_distances_stack` (a Gram matrix per repeat for ``euclidean``,
        redone on centred states where rounding would matter; direct differences for
        ``cityblock`` and ``chebyshev``).
    """
    check_spectral_metric(metric)
    states = spectral_states_stack(
        x, fs=fs, state_length=state_length, window=window, overlap=overlap,
        log_frequency=log_frequency, min_windows=2,
    )
    value = np.asarray(rdm_median(pairwise_distances_stack(states, metric)), dtype=np.float64)
    if normalized:
        value = value / np.sqrt(np.shape(x)[-1])
    return value


def spectral_differentiation(
    x,
    *,
    fs: float,
    state_length: float,
    metric: SpectralMetric = "euclidean",
    window=None,
    overlap: float = 0.0,
    log_frequency: bool = False,
    normalized: bool = False,
) -> float:
    """Spectral differentiation: the median distance between the windows' states.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_units)
        Responses of one presentation, **time first**.
    fs : float
        Sampling rate in Hz.
    state_length : float
        Window length in seconds (``state_length * fs`` whole samples).
    metric : {'euclidean', 'cityblock', 'chebyshev'}, default 'euclidean'
        Distance between two windows' states, as :func:`scipy.spatial.distance.pdist`
        (``euclidean`` is not squared). Others raise an InputError listing these.
    window, overlap, log_frequency
        How the states are made: see :func:`spectral_states`.
    normalized : bool, default False
        Divide by ``sqrt(n_units)``: the paper's normalized spectral differentiation, so
        populations of different sizes are comparable. This is the paper's divisor for every
        metric (unlike ``per_unit`` of :func:`daskdiff.differentiation`, whose divisor depends
        on the metric).

    Returns
    -------
    float
        The median of the ``n_windows * (n_windows - 1) / 2`` pairwise distances (each pair
        once). At least two whole windows are needed; trailing samples that fill no window are
        dropped (how many: :func:`spectral_windows`).

    Examples
    --------
    >>> t = np.arange(90) / 30.0                       # 3 s at 30 Hz
    >>> x = np.stack([np.sin(2 * np.pi * 2 * t), t], axis=1)
    >>> sd = spectral_differentiation(x, fs=30, state_length=1)
    >>> nsd = spectral_differentiation(x, fs=30, state_length=1, normalized=True)  # sd / sqrt(2)
    """
    arr = _one_matrix(x, "spectral_differentiation_stack")
    return float(
        spectral_differentiation_stack(
            arr, fs=fs, state_length=state_length, metric=metric, window=window, overlap=overlap,
            log_frequency=log_frequency, normalized=normalized,
        )
    )
