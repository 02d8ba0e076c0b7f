"""Stimulus differentiation (issue 25, part 1) against the published procedure restated by hand.

The reference is Mayner et al. (2022), ``stimulus_properties.ipynb`` of
github.com/wmayner/openscope-differentiation, restated here in our own words, step by step:

1. the stored uint8 movie ``(frames, rows, cols)`` is cast to float64 (their loader does so);
2. each frame is blurred by ``scipy.ndimage.gaussian_filter`` with ``sigma = (sy, sx)``,
   ``mode="reflect"``, ``truncate=4.0``, where sigma is the pixel radius of a 250 deg^2 receptive
   field on a 95 x 120 deg screen divided by ``sqrt(2 ln 2)``;
3. pixels are the cells: the movie becomes ``(frames, pixels)``, cut into whole 1-s windows;
4. each window's ``np.fft.rfft`` over time, squared magnitude, concatenated over pixels;
5. ``np.median(scipy.spatial.distance.pdist(states))``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import pdist

import daskdiff
from daskdiff.core.stimulus import receptive_field_sigma, stimulus_states
from daskdiff.errors import InputError


def _published_procedure(movie_uint8, fs, *, rf_area=250.0, degrees=(95.0, 120.0), state_length=1.0, metric="euclidean",
                         blur_dtype=np.float64):
    """The reference procedure, written out with numpy and scipy only (see the module docstring)."""
    rows, cols = movie_uint8.shape[1:3]
    radius = math.sqrt(rf_area / math.pi)
    sigma = (radius * rows / degrees[0] / math.sqrt(2 * math.log(2)), radius * cols / degrees[1] / math.sqrt(2 * math.log(2)))
    frames = movie_uint8.astype(blur_dtype)
    blurred = np.array([gaussian_filter(f, sigma=sigma, order=0, mode="reflect", truncate=4.0) for f in frames], dtype=np.float64)
    n = int(round(fs * state_length))
    w = len(blurred) // n
    cells = blurred[: w * n].reshape(w, n, rows * cols)  # (window, time, pixel)
    power = np.abs(np.fft.rfft(cells, axis=1)) ** 2  # (window, freq, pixel)
    states = power.transpose(0, 2, 1).reshape(w, -1)  # pixel-major, as join_axes(cell, freq)
    return float(np.median(pdist(states, metric=metric)))


@pytest.mark.parametrize(
    ("shape", "fs", "kw"),
    [
        ((90, 24, 40), 30.0, {}),  # 3 s at 30 Hz
        ((97, 120, 192), 30.0, {}),  # the published frame size; 7 trailing frames dropped
        ((60, 24, 40), 20.0, {"state_length": 0.5, "rf_area": 80.0, "degrees": (60.0, 100.0)}),
        ((90, 24, 40), 30.0, {"metric": "cityblock"}),
    ],
)
def test_equals_the_published_procedure_on_uint8_movies(shape, fs, kw):
    movie = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    ref = _published_procedure(movie, fs, **kw)
    args = {k: v for k, v in kw.items() if k != "degrees"}
    if "degrees" in kw:
        args["field_of_view"] = kw["degrees"]
    assert daskdiff.stimulus_differentiation(movie, fs, **args) == pytest.approx(ref, rel=1e-9)


def test_the_blur_runs_in_float64_as_the_reference_loader_casts():
    """Blurring the uint8 frames themselves (gaussian_filter keeps uint8) rounds each blurred
    pixel, which moves the value: the function must not do that."""
    movie = np.random.default_rng(1).integers(0, 256, (60, 24, 40), dtype=np.uint8)
    got = daskdiff.stimulus_differentiation(movie, 30)
    rounded = _published_procedure(movie, 30, blur_dtype=np.uint8)
    assert got == pytest.approx(_published_procedure(movie, 30), rel=1e-9)
    assert abs(got - rounded) / got > 1e-6


def test_grey_stored_as_rgb_equals_grey_and_colour_is_luminance():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (60, 16, 20), dtype=np.uint8)
    value = daskdiff.stimulus_differentiation(grey, 30)
    assert daskdiff.stimulus_differentiation(np.repeat(grey[..., None], 3, axis=3), 30) == pytest.approx(value, rel=1e-12)
    assert daskdiff.stimulus_differentiation(grey[..., None], 30) == value
    colour = rng.integers(0, 256, (60, 16, 20, 3), dtype=np.uint8)
    y = colour.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])  # BT.709, summing to 1
    assert daskdiff.stimulus_differentiation(colour, 30) == pytest.approx(
        _published_procedure(y, 30), rel=1e-9)


def test_sigma_for_the_openscope_screen_by_hand():
    """192 x 120 px on 120 x 95 deg: the notebook prints r = 8.920620580763856 deg and RF pixels
    x = 14.272993, y = 11.268152; sigma is those over sqrt(2 ln 2) = 1.1774100225."""
    r = math.sqrt(250 / math.pi)
    assert r == pytest.approx(8.920620580763856, rel=1e-15)
    sy, sx = receptive_field_sigma((120, 192))
    assert sy * 1.1774100225154747 == pytest.approx(11.268152, abs=5e-7)
    assert sx * 1.1774100225154747 == pytest.approx(14.272993, abs=5e-7)
    assert (sy, sx) == pytest.approx((r * 120 / 95 / 1.1774100225154747, r * 192 / 120 / 1.1774100225154747), rel=1e-14)
    # the half maximum of the Gaussian is at the receptive field's radius
    assert math.exp(-(r * 192 / 120) ** 2 / (2 * sx**2)) == pytest.approx(0.5, rel=1e-12)


def test_constant_windows_by_hand():
    """Two windows of constant frames c1 then c2 (a blur keeps a constant frame): only DC differs,
    ``n**2 * |c1**2 - c2**2|`` per pixel, so the one distance is ``sqrt(pixels) * n**2 * |c1**2 - c2**2|``."""
    n, rows, cols, c1, c2 = 10, 6, 9, 40.0, 200.0
    movie = np.concatenate([np.full((n, rows, cols), c1), np.full((n, rows, cols), c2)]).astype(np.uint8)
    expected = math.sqrt(rows * cols) * n**2 * abs(c1**2 - c2**2)
    assert daskdiff.stimulus_differentiation(movie, 10) == pytest.approx(expected, rel=1e-12)
    states = stimulus_states(movie, 10)
    assert states.shape == (2, rows * cols * (n // 2 + 1))


@pytest.mark.parametrize(
    ("movie", "kw", "match"),
    [
        (np.zeros((60, 8)), {}, r"\(frames, rows, cols\) grey or \(frames, rows, cols, 3\) RGB.*got shape \(60, 8\)"),
        (np.zeros((60, 8, 8, 2)), {}, r"got shape \(60, 8, 8, 2\)"),
        (np.zeros((0, 8, 8)), {}, r"at least one frame"),
        (np.zeros((59, 8, 8)), {}, r"59 frame\(s\).*1 whole window\(s\) of 30 frames.*at least 2 windows \(60 frames\)"),
        (np.zeros((60, 8, 8)), {"state_length": 0.55}, r"whole number of samples"),
        (np.zeros((60, 8, 8)), {"rf_area": 0}, r"rf_area must be a positive number.*rf_area=250"),
        (np.zeros((60, 8, 8)), {"field_of_view": (95,)}, r"field_of_view must be \(vertical, horizontal\) degrees"),
        (np.zeros((60, 8, 8)), {"field_of_view": (95, -1)}, r"field_of_view\[1\] must be a positive number"),
        (np.zeros((60, 8, 8)), {"metric": "cosine"}, r"unknown metric 'cosine'.*'euclidean'"),
        (np.zeros((60, 8, 8), dtype=complex), {}, r"real numbers"),
    ],
)
def test_bad_inputs_name_the_fix(movie, kw, match):
    with pytest.raises(InputError, match=match):
        daskdiff.stimulus_differentiation(movie, 30, **kw)


def test_a_jobs_movie_task_decodes_frames_at_native_size(tmp_path):
    """The job's task decodes the frame files at their own size (here 20 x 28, not a network's
    input size) and equals the function on the frames read back independently with Pillow;
    frames of different sizes, or too few windows, give NaN and the reason."""
    from PIL import Image

    from daskdiff.pipeline.stimulus import movie_stimulus

    movie = np.random.default_rng(3).integers(0, 256, (40, 20, 28, 3), dtype=np.uint8)
    paths = []
    for k, frame in enumerate(movie):
        paths.append(str(tmp_path / f"frame-{k:03d}.png"))
        Image.fromarray(frame).save(paths[-1])
    read_back = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    options = {"rf_area": 250.0, "field_of_view": (95.0, 120.0), "state_length": 1.0}
    value, why = movie_stimulus(tuple(paths), 20.0, options)
    assert why is None and value == pytest.approx(daskdiff.stimulus_differentiation(read_back, 20.0), rel=1e-12)
    Image.fromarray(movie[0, :10]).save(paths[5])
    value, why = movie_stimulus(tuple(paths), 20.0, options)
    assert math.isnan(value) and "frame 5" in why and "10 x 28 px, frame 0 20 x 28" in why
    Image.fromarray(movie[5]).save(paths[5])
    value, why = movie_stimulus(tuple(paths[:30]), 20.0, options)
    assert math.isnan(value) and "at least 2 windows" in why


def test_results_variable_is_nan_for_sets_that_are_no_movie():
    from daskdiff.pipeline.spec_types import StimulusSection
    from daskdiff.pipeline.stimulus import stimulus_variable

    section = StimulusSection(rf_area=100.0, field_of_view=[60.0, 90.0])
    var = stimulus_variable(["photos", "clip", "control"], {"clip": 2.5e9, "control": 1.5e9}, section)
    assert var.dims == ("image_set",) and np.isnan(var.values[0]) and list(var.values[1:]) == [2.5e9, 1.5e9]
    assert var.attrs["units"] == "1" and var.attrs["rf_area"] == 100.0 and list(var.attrs["field_of_view"]) == [60.0, 90.0]
    assert var.attrs["state_length"] == 1.0 and "stimulus differentiation" in var.attrs["long_name"]
