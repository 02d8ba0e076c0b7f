"""Spectral differentiation (Mayner et al. 2022): the core functions against independent references.

The references here are written from the published definition with numpy's FFT, scipy's
``pdist`` and ``scipy.signal.spectrogram``; none of them calls daskdiff's spectral code.
"""

import numpy as np
import pytest
import scipy.signal
from scipy.spatial.distance import pdist

import daskdiff
from daskdiff.errors import InputError

METRICS = ["euclidean", "cityblock", "chebyshev"]
# (fs Hz, state_length s, n_samples): whole windows only, and with trailing samples
GEOMETRIES = [(30, 1, 300), (30, 1, 317), (10, 0.5, 53), (7.5, 2, 91), (30, 0.1, 31), (4, 1.25, 20)]


def reference_states(x, fs, state_length):
    """The reference's steps restated: whole windows by reshape, |rfft|^2, (neuron, freq) joined."""
    nperseg = int(round(fs * state_length))
    n_windows = x.shape[0] // nperseg
    windows = x[: n_windows * nperseg].reshape(n_windows, nperseg, x.shape[1])  # (window, sample, neuron)
    windows = np.moveaxis(windows, 1, 2)  # (window, neuron, sample), as the reference
    power = np.abs(np.fft.rfft(windows, axis=-1)) ** 2
    return power.reshape(n_windows, -1)


def reference_sd(x, fs, state_length, metric):
    return float(np.median(pdist(reference_states(x, fs, state_length), metric)))


def inputs(kind, n_samples, n_units=7, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n_samples, n_units))
    if kind == "sparse":  # ReLU-like: mostly zeros, positive otherwise
        return np.maximum(rng.standard_normal((n_samples, n_units)) - 1.0, 0.0)
    return np.full((n_samples, n_units), 0.37)  # constant


# --- hand-computed cases --------------------------------------------------------------------


def test_a_sinusoid_at_a_bin_and_a_constant_have_their_textbook_power():
    fs, state_length = 16, 1.0  # 16 samples a window, bins of 1 Hz, 9 bins (0..8 Hz)
    n, amplitude, c = 16, 3.0, 0.5
    t = np.arange(2 * n) / fs
    x = np.stack([amplitude * np.cos(2 * np.pi * 3 * t), np.full(2 * n, c), np.cos(np.pi * fs * t)], axis=1)
    states = daskdiff.spectral_states(x, fs=fs, state_length=state_length)
    assert states.shape == (2, 3 * 9)  # (n_windows, n_units * n_freqs)
    unit = states.reshape(2, 3, 9)  # state index = unit * n_freqs + freq
    expected = np.zeros((3, 9))
    expected[0, 3] = n**2 * amplitude**2 / 4  # 3 Hz: N^2 A^2 / 4
    expected[1, 0] = (n * c) ** 2  # DC of a constant: (N c)^2
    expected[2, 8] = n**2  # the Nyquist bin holds all of cos(pi t fs): N^2 A^2
    for w in range(2):
        np.testing.assert_allclose(unit[w], expected, atol=1e-9)
    np.testing.assert_allclose(daskdiff.spectral_frequencies(fs=fs, state_length=state_length), np.arange(9.0))


def test_hand_computed_differentiation_and_its_normalized_form():
    # one unit, constant 1, 2 and 4 in three windows of 4 samples: only DC, (4c)^2 = 16, 64, 256;
    # distances 48, 240, 192 -> median 192
    x = np.repeat([1.0, 2.0, 4.0], 4)[:, None]
    assert daskdiff.spectral_differentiation(x, fs=4, state_length=1) == pytest.approx(192.0, rel=1e-12)
    # two identical units: every Euclidean distance is sqrt(2) times larger; normalized undoes it
    two = np.hstack([x, x])
    assert daskdiff.spectral_differentiation(two, fs=4, state_length=1) == pytest.approx(192.0 * np.sqrt(2), rel=1e-12)
    assert daskdiff.spectral_differentiation(two, fs=4, state_length=1, normalized=True) == pytest.approx(192.0, rel=1e-12)
    assert daskdiff.spectral_differentiation(two, fs=4, state_length=1, metric="cityblock") == pytest.approx(384.0, rel=1e-12)
    assert daskdiff.spectral_differentiation(two, fs=4, state_length=1, metric="chebyshev") == pytest.approx(192.0, rel=1e-12)


# --- the plain path against the definition ----------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "sparse", "constant"])
@pytest.mark.parametrize("fs, state_length, n_samples", GEOMETRIES)
@pytest.mark.parametrize("metric", METRICS)
def test_matches_an_independent_restatement_of_the_reference(metric, fs, state_length, n_samples, kind):
    x = inputs(kind, n_samples)
    states = daskdiff.spectral_states(x, fs=fs, state_length=state_length)
    ref_states = reference_states(x, fs, state_length)
    np.testing.assert_allclose(states, ref_states, rtol=1e-12, atol=1e-12 * np.abs(ref_states).max())
    got = daskdiff.spectral_differentiation(x, fs=fs, state_length=state_length, metric=metric)
    want = reference_sd(x, fs, state_length, metric)
    if kind == "constant":  # every window alike: 0 up to rounding of the FFT
        assert want <= 1e-9 * np.abs(ref_states).max()
        assert abs(got) <= 1e-9 * np.abs(ref_states).max()
    else:
        assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("metric", METRICS)
def test_a_signal_periodic_within_each_window_gives_zero(metric):
    # period 10 samples, windows of 30: every window is the same (and with overlap 1/2 each
    # window is a circular shift of the first, which leaves |rfft|^2 unchanged)
    rng = np.random.default_rng(1)
    x = np.tile(rng.standard_normal((10, 4)), (12, 1))
    scale = np.abs(daskdiff.spectral_states(x, fs=30, state_length=1)).max()
    for overlap in (0.0, 0.5):
        sd = daskdiff.spectral_differentiation(x, fs=30, state_length=1, metric=metric, overlap=overlap)
        assert abs(sd) <= 1e-9 * scale


# --- windows and dropped samples ---------------------------------------------------------------


def test_dropped_samples_are_counted_and_ignored():
    w = daskdiff.spectral_windows(317, fs=30, state_length=1)
    assert w == (30, 30, 10, 300, 17)
    assert (w.samples_per_window, w.step, w.n_windows, w.used, w.dropped) == (30, 30, 10, 300, 17)
    # overlap 1/2: windows every 15 samples, the last one ends at 19 * 15 + 30 = 315
    assert daskdiff.spectral_windows(317, fs=30, state_length=1, overlap=0.5) == (30, 15, 20, 315, 2)
    assert daskdiff.spectral_windows(29, fs=30, state_length=1) == (30, 30, 0, 0, 29)
    x = inputs("random", 317)
    changed = x.copy()
    changed[300:] = 1e6  # the dropped tail takes no part
    for arr in (x[:300], changed):
        np.testing.assert_array_equal(
            daskdiff.spectral_states(arr, fs=30, state_length=1), daskdiff.spectral_states(x, fs=30, state_length=1)
        )


def test_float_products_that_are_whole_numbers_are_accepted():
    assert 25 * 2.2 != 55  # 55.00000000000001
    assert daskdiff.spectral_windows(111, fs=25, state_length=2.2) == (55, 55, 2, 110, 1)


# --- windowed spectra against scipy.signal.spectrogram ------------------------------------------


def rescaled_spectrogram(x, fs, nperseg, window, overlap):
    """scipy's one-sided power spectrum, back to |rfft(taper * x)|^2 (x is (sample, unit))."""
    taper = scipy.signal.get_window(window, nperseg)
    _, _, s = scipy.signal.spectrogram(
        x.T, fs=fs, window=taper, nperseg=nperseg, noverlap=int(nperseg * overlap), detrend=False,
        return_onesided=True, scaling="spectrum", mode="psd", axis=-1,
    )  # (unit, freq, window); scaling='spectrum' divides by taper.sum()**2
    s = s * taper.sum() ** 2
    # scipy doubles every bin but DC and (for an even length) Nyquist: undo it
    if nperseg % 2:
        s[:, 1:] /= 2
    else:
        s[:, 1:-1] /= 2
    return np.moveaxis(s, -1, 0).reshape(s.shape[-1], -1)  # (window, unit * freq)


@pytest.mark.parametrize(
    "window, overlap, fs, state_length",
    [(("tukey", 0.25), 1 / 8, 30, 1), (("kaiser", 14), 1 / 2, 30, 1), ("hann", 1 / 3, 9, 1), (("kaiser", 14), 0.5, 10, 0.5)],
)
def test_windowed_states_match_scipy_spectrogram(window, overlap, fs, state_length):
    x = inputs("sparse", 131, n_units=5, seed=3)
    nperseg = int(round(fs * state_length))
    want = rescaled_spectrogram(x, fs, nperseg, window, overlap)
    got = daskdiff.spectral_states(x, fs=fs, state_length=state_length, window=window, overlap=overlap)
    assert got.shape == want.shape
    assert got.shape[0] == daskdiff.spectral_windows(131, fs=fs, state_length=state_length, overlap=overlap).n_windows
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    for metric in METRICS:
        sd = daskdiff.spectral_differentiation(x, fs=fs, state_length=state_length, metric=metric, window=window, overlap=overlap)
        assert sd == pytest.approx(float(np.median(pdist(want, metric))), rel=1e-9)


def test_a_boxcar_window_without_overlap_is_the_plain_fft():
    x = inputs("random", 317)
    plain = daskdiff.spectral_states(x, fs=30, state_length=1)
    np.testing.assert_array_equal(daskdiff.spectral_states(x, fs=30, state_length=1, window="boxcar"), plain)
    np.testing.assert_allclose(rescaled_spectrogram(x, 30, 30, "boxcar", 0.0), plain, rtol=1e-10, atol=1e-12 * plain.max())


# --- log-spaced frequencies ---------------------------------------------------------------------


def reference_log_states(x, fs, state_length):
    """The reference's to_log_spacing restated: cumulative spectrum interpolated on its grid."""
    nperseg = int(round(fs * state_length))
    freqs = np.fft.rfftfreq(nperseg, 1 / fs)
    grid = np.logspace(0, np.log10(freqs[-1]), num=len(freqs)).round(8)  # 0 as exponent: starts at 1 Hz
    states = reference_states(x, fs, state_length)
    power = states.reshape(states.shape[0], x.shape[1], len(freqs))
    cumulative = np.cumsum(power, axis=-1)
    at_grid = np.apply_along_axis(lambda c: np.interp(grid, freqs, c), -1, cumulative)
    return grid, np.diff(at_grid, axis=-1, prepend=0.0).reshape(states.shape)


@pytest.mark.parametrize("fs, state_length", [(30, 1), (20, 0.5), (16, 1)])
def test_log_frequency_follows_the_reference_grid_and_conserves_power(fs, state_length):
    x = inputs("sparse", 127, n_units=4, seed=5)
    grid, want = reference_log_states(x, fs, state_length)
    np.testing.assert_allclose(daskdiff.spectral_frequencies(fs=fs, state_length=state_length, log_frequency=True), grid, rtol=1e-15)
    assert grid[0] == 1.0  # the reference's quirk: 10**0 Hz, not DC
    got = daskdiff.spectral_states(x, fs=fs, state_length=state_length, log_frequency=True)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    linear = daskdiff.spectral_states(x, fs=fs, state_length=state_length)
    n_freqs = len(grid)
    per_unit = lambda s: s.reshape(s.shape[0], x.shape[1], n_freqs).sum(axis=-1)  # noqa: E731
    np.testing.assert_allclose(per_unit(got), per_unit(linear), rtol=1e-12)  # total power of each unit and window
    assert np.all(got >= -1e-12 * got.max())
    for metric in METRICS:
        sd = daskdiff.spectral_differentiation(x, fs=fs, state_length=state_length, metric=metric, log_frequency=True)
        assert sd == pytest.approx(float(np.median(pdist(want, metric))), rel=1e-9)


def test_log_grid_ends_exactly_at_the_highest_frequency():
    # 7 samples at 10 Hz: f_max = 30/7 Hz; the reference's 8-decimal rounding would put its last
    # grid point above f_max (and its interpolation would refuse it); here it is f_max itself
    f_max = np.fft.rfftfreq(7, 1 / 10)[-1]
    grid = daskdiff.spectral_frequencies(fs=10, state_length=0.7, log_frequency=True)
    assert grid[0] == 1.0 and grid[-1] == f_max and np.all(np.diff(grid) > 0)
    np.testing.assert_allclose(grid[1:-1], np.logspace(0, np.log10(f_max), 4)[1:-1].round(8), rtol=1e-15)
    x = inputs("random", 30, n_units=2)
    logged = daskdiff.spectral_states(x, fs=10, state_length=0.7, log_frequency=True)
    linear = daskdiff.spectral_states(x, fs=10, state_length=0.7)
    np.testing.assert_allclose(logged.reshape(-1, 2, 4).sum(-1), linear.reshape(-1, 2, 4).sum(-1), rtol=1e-12)


def test_log_frequency_with_a_window():
    x = inputs("random", 120, n_units=3)
    windowed = daskdiff.spectral_states(x, fs=30, state_length=1, window=("tukey", 0.25), overlap=1 / 8)
    logged = daskdiff.spectral_states(x, fs=30, state_length=1, window=("tukey", 0.25), overlap=1 / 8, log_frequency=True)
    np.testing.assert_allclose(logged.reshape(-1, 3, 16).sum(-1), windowed.reshape(-1, 3, 16).sum(-1), rtol=1e-12)


# --- the batched path ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "options",
    [{}, {"window": ("kaiser", 14), "overlap": 0.5}, {"log_frequency": True}, {"normalized": True}],
    ids=["plain", "kaiser", "log", "normalized"],
)
def test_the_stack_equals_the_single_function(metric, options):
    rng = np.random.default_rng(7)
    stack = np.maximum(rng.standard_normal((6, 95, 9)), 0.0)
    got = daskdiff.spectral_differentiation_stack(stack, fs=30, state_length=0.5, metric=metric, **options)
    assert got.shape == (6,) and got.dtype == np.float64
    one = [daskdiff.spectral_differentiation(m, fs=30, state_length=0.5, metric=metric, **options) for m in stack]
    np.testing.assert_allclose(got, one, rtol=1e-12)
    nested = daskdiff.spectral_differentiation_stack(stack.reshape(2, 3, 95, 9), fs=30, state_length=0.5, metric=metric, **options)
    np.testing.assert_allclose(nested.ravel(), got, rtol=1e-12)


def test_normalized_is_the_value_over_sqrt_n_units():
    x = inputs("random", 200, n_units=11)
    for metric in METRICS:
        raw = daskdiff.spectral_differentiation(x, fs=10, state_length=2, metric=metric)
        normed = daskdiff.spectral_differentiation(x, fs=10, state_length=2, metric=metric, normalized=True)
        assert normed == pytest.approx(raw / np.sqrt(11), rel=1e-14)


# --- what a user would expect ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_invariances(metric):
    x = inputs("sparse", 150, n_units=8, seed=2)
    sd = daskdiff.spectral_differentiation(x, fs=30, state_length=1, metric=metric)
    order = np.random.default_rng(0).permutation(8)
    assert daskdiff.spectral_differentiation(x[:, order], fs=30, state_length=1, metric=metric) == pytest.approx(sd, rel=1e-12)
    assert daskdiff.spectral_differentiation(-x, fs=30, state_length=1, metric=metric) == pytest.approx(sd, rel=1e-12)
    # power is quadratic: scaling the responses by 3 scales every state, so SD, by 9
    assert daskdiff.spectral_differentiation(3 * x, fs=30, state_length=1, metric=metric) == pytest.approx(9 * sd, rel=1e-12)
    # float32 in, float64 arithmetic
    x32 = x.astype(np.float32)
    assert daskdiff.spectral_differentiation(x32, fs=30, state_length=1, metric=metric) == pytest.approx(
        daskdiff.spectral_differentiation(x32.astype(np.float64), fs=30, state_length=1, metric=metric), rel=1e-14
    )


# --- errors ---------------------------------------------------------------------------------------------


def test_errors_name_the_values_and_the_fix():
    x = inputs("random", 100)
    with pytest.raises(InputError, match=r"state_length=0\.55 s \* fs=30 Hz = 16\.5.* samples.*e\.g\. state_length="):
        daskdiff.spectral_differentiation(x, fs=30, state_length=0.55)
    with pytest.raises(InputError, match=r"unknown metric 'cosine'.*\['euclidean', 'cityblock', 'chebyshev'\]"):
        daskdiff.spectral_differentiation(x, fs=30, state_length=1, metric="cosine")
    with pytest.raises(InputError, match=r"99 samples give 1 whole window\(s\) of 50 samples.*at least 2 needed, i\.e\. at least 100"):
        daskdiff.spectral_differentiation(x[:99], fs=50, state_length=1)
    assert daskdiff.spectral_states(x[:99], fs=50, state_length=1).shape == (1, 7 * 26)  # states: one window is enough
    with pytest.raises(InputError, match=r"overlap.*\[0, 1\).*overlap=1"):
        daskdiff.spectral_states(x, fs=30, state_length=1, overlap=1)
    with pytest.raises(InputError, match=r"window='nope' is not a scipy\.signal\.get_window spec"):
        daskdiff.spectral_states(x, fs=30, state_length=1, window="nope")
    with pytest.raises(InputError, match=r"log_frequency=True needs a highest frequency .* at least 1 Hz.*0\.5 Hz"):
        daskdiff.spectral_states(x, fs=1, state_length=2, log_frequency=True)
    with pytest.raises(InputError, match=r"time first.*x\.reshape\(-1, 1\)"):
        daskdiff.spectral_differentiation(x[:, 0], fs=30, state_length=1)
    with pytest.raises(InputError, match=r"with at least one unit"):
        daskdiff.spectral_differentiation_stack(np.zeros((2, 100, 0)), fs=30, state_length=1)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        daskdiff.spectral_differentiation(bad, fs=30, state_length=1)
    with pytest.raises(InputError, match=r"fs \(the sampling rate in Hz\) must be a positive number"):
        daskdiff.spectral_windows(100, fs=0, state_length=1)
    with pytest.raises(ValueError):  # InputError is a ValueError
        daskdiff.spectral_windows(100, fs=30, state_length=-1)
