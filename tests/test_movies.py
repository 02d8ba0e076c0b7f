"""Movie generators: drifting gratings, photo pans/zooms, scikit-image's GIF, phase-scrambled controls.

References are written out here independently of the modules: the grating formula pixel by
pixel with ``math.sin``, crops as plain array slices, the GIF read with Pillow's ImageSequence,
and the scramble restated with numpy's complex FFTs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageSequence

from daskdiff.errors import InputError
from daskdiff.stimuli import gif, gratings, movie, pans, registry, scramble


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


def read_frames(paths) -> np.ndarray:
    return np.stack([read_png(p) for p in paths])


def record(folder) -> dict:
    return json.loads((Path(folder) / movie.MOVIE_RECORD).read_text())


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def rng_child(seed: int, i: int) -> np.random.Generator:
    """Child ``i`` of ``SeedSequence(seed)``, as the docstrings say (spawned, not via spawn_key)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(i + 1)[i])


# ---------------------------------------------------------------------------------------------
# drifting gratings
# ---------------------------------------------------------------------------------------------


def hand_grating(r, c, k, *, size, fps, orientation, sf, tf, contrast, phase):
    """The documented formula for one pixel, in plain floats."""
    x = c - (size - 1) / 2
    y = (size - 1) / 2 - r
    theta = math.radians(orientation)
    d = x * math.cos(theta) + y * math.sin(theta)
    return 127.5 * (1 + contrast * math.sin(2 * math.pi * (sf * d / size - tf * k / fps) + math.radians(phase)))


def test_grating_one_pixel_by_hand():
    # size 4, 1 cycle per width, phase 90, frame 0: pixel (0, 0) has x = -1.5, so
    # 127.5 * (1 + cos(2 pi * -1.5 / 4)) = 127.5 * (1 - sqrt(2) / 2) = 37.34...
    values = gratings.grating(0, size=4, spatial_frequency=1, phase=90, temporal_frequency=0)
    assert values[0, 0] == pytest.approx(127.5 * (1 - math.sqrt(2) / 2), abs=1e-12)
    assert values[0, 1] == pytest.approx(127.5 * (1 + math.cos(2 * math.pi * -0.5 / 4)), abs=1e-12)


def test_grating_frames_follow_the_formula(tmp_path):
    p = dict(size=12, fps=12.0, orientation=30.0, sf=3.0, tf=1.5, contrast=0.8, phase=20.0)
    paths = gratings.drifting_gratings(
        tmp_path, size=12, fps=12, orientation=30, spatial_frequency=3, temporal_frequency=1.5,
        contrast=0.8, phase=20, n_frames=5,
    )
    assert [Path(q).name for q in paths] == [f"grating-{k:06d}.png" for k in range(5)]
    frames = read_frames(paths)
    assert frames.shape == (5, 12, 12, 3) and frames.dtype == np.uint8
    assert (frames == frames[..., :1]).all()  # grey: three equal channels
    for k in range(5):
        ref = np.array([[hand_grating(r, c, k, **p) for c in range(12)] for r in range(12)])
        values = gratings.grating(k, size=12, fps=12, orientation=30, spatial_frequency=3,
                                  temporal_frequency=1.5, contrast=0.8, phase=20)
        np.testing.assert_allclose(values, ref, rtol=0, atol=1e-9)
        assert np.array_equal(frames[k, :, :, 0], np.rint(np.clip(values, 0, 255)).astype(np.uint8))
        assert np.abs(frames[k, :, :, 0].astype(int) - np.rint(ref)).max() <= 1


def test_grating_repeats_after_one_temporal_period(tmp_path):
    # 2.5 Hz at 25 fps: one period is 10 frames
    paths = gratings.drifting_gratings(tmp_path, size=16, fps=25, temporal_frequency=2.5, spatial_frequency=3,
                                       orientation=45, n_frames=21)
    data = [Path(q).read_bytes() for q in paths]
    assert all(data[k] == data[k + 10] for k in range(11))
    assert len(set(data[:10])) == 10


@pytest.mark.parametrize("orientation, shift", [(0, (0, 1)), (90, (-1, 0)), (180, (0, -1)), (270, (1, 0))])
def test_grating_drifts_in_the_orientation_direction(tmp_path, orientation, shift):
    # 4 cycles over 32 px = 8 px period; 2 Hz at 16 fps = 1/8 cycle per frame: 1 px per frame
    paths = gratings.drifting_gratings(tmp_path, size=32, spatial_frequency=4, temporal_frequency=2, fps=16,
                                       orientation=orientation, n_frames=2, phase=10)
    f0, f1 = read_frames(paths)
    assert np.array_equal(np.roll(f0, shift, axis=(0, 1)), f1)
    assert not np.array_equal(f0, f1)


def test_square_wave_is_the_sign_of_the_sine():
    kw = dict(size=20, spatial_frequency=2.5, orientation=15, contrast=0.6, phase=33)
    square = gratings.grating(3, waveform="square", **kw)
    sine = gratings.grating(3, waveform="sine", **kw)
    np.testing.assert_array_equal(square, np.where(sine >= 127.5, 127.5 * 1.6, 127.5 * 0.4))


def test_grating_record_and_defaults(tmp_path):
    paths = gratings.drifting_gratings(tmp_path, size=10)
    assert len(paths) == 60  # 2 s at 30 fps
    r = record(tmp_path)
    assert r["generator"] == "gratings" and r["fps"] == 30.0 and r["n_frames"] == 60 and r["duration"] == 2.0
    assert r["frames"] == [Path(q).name for q in paths] and r["frame_size"] == [10, 10]
    assert r["parameters"]["spatial_frequency"] == 4.0 and r["units"]["spatial_frequency"] == "cycles per image width"
    assert len(gratings.drifting_gratings(tmp_path / "d", size=10, fps=10, duration=0.5)) == 5
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spatial_frequency=4, size=8), r"spatial_frequency must be .*< 4.*Nyquist"),
        (dict(spatial_frequency=-1), r"spatial_frequency must be a finite number >= 0"),
        (dict(temporal_frequency=15, fps=30), r"temporal_frequency must be .*< 15.*aliases"),
        (dict(contrast=1.5), r"contrast must be a finite number >= 0 and <= 1"),
        (dict(fps=0), r"fps must be a finite number > 0"),
        (dict(orientation="up"), r"orientation must be a finite number"),
        (dict(phase=float("nan")), r"phase must be a finite number"),
        (dict(waveform="triangle"), r"waveform must be one of \['sine', 'square'\]"),
        (dict(duration=1, n_frames=30), r"at most one of duration= and n_frames="),
        (dict(duration=0.51, fps=10), r"not a whole number.*n_frames=5"),
        (dict(n_frames=0), r"n_frames must be an integer >= 1"),
        (dict(size=1), r"size must be an integer >= 2"),
        (dict(prefix="../x"), r"prefix must be a file-name stem"),
    ],
)
def test_grating_parameter_errors_write_nothing(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        gratings.drifting_gratings(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# photo pans and zooms
# ---------------------------------------------------------------------------------------------


def test_photo_movie_frame_zero_is_the_crop_and_a_linear_pan_moves_whole_pixels(tmp_path):
    photo = skimage.data.astronaut()  # 512 x 512
    # side 0.125 * 512 = 64 px = size: an exact crop; centre column 0.375 -> 0.625 = 192 -> 320 px
    paths = pans.photo_movie(tmp_path, photo="astronaut", start=[0.5, 0.375, 0.125], end=[0.5, 0.625, 0.125],
                             n_frames=3, size=64, easing="linear")
    frames = read_frames(paths)
    for k in range(3):
        left = 160 + 64 * k
        assert np.array_equal(frames[k], photo[224:288, left : left + 64]), k


def test_photo_movie_default_frame_zero_and_last_frame(tmp_path):
    photo = skimage.data.chelsea()  # 300 x 451
    paths = pans.photo_movie(tmp_path, photo="chelsea", n_frames=4, size=32)
    frames = read_frames(paths)

    def crop(row, col, side):
        half = side * 300 / 2
        box = (col * 451 - half, row * 300 - half, col * 451 + half, row * 300 + half)
        return np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.BICUBIC, box=box))

    assert np.array_equal(frames[0], crop(0.5, 0.35, 0.6))
    assert np.array_equal(frames[-1], crop(0.5, 0.65, 0.45))
    # frame 1 of 4: u = 1/3, cosine easing e = (1 - cos(pi/3)) / 2 = 1/4; side geometric
    e = 0.25
    assert np.array_equal(frames[1], crop(0.5, 0.35 + 0.3 * e, 0.6 * (0.45 / 0.6) ** e))
    r = record(tmp_path)
    assert r["generator"] == "photo_movie" and r["fps"] == 30.0 and r["photo_size"] == [300, 451]


def test_window_at_formula():
    assert pans.window_at(0, 5, (0.2, 0.3, 0.5), (0.6, 0.7, 0.25)) == (0.2, 0.3, 0.5)
    row, col, side = pans.window_at(4, 5, (0.2, 0.3, 0.5), (0.6, 0.7, 0.25))
    assert (row, col, side) == pytest.approx((0.6, 0.7, 0.25))
    row, col, side = pans.window_at(2, 5, (0.2, 0.3, 0.5), (0.6, 0.7, 0.25), "cosine")
    assert (row, col, side) == pytest.approx((0.4, 0.5, math.sqrt(0.5 * 0.25)))
    assert pans.window_at(0, 1, (0.5, 0.5, 0.5), (0.1, 0.1, 0.1)) == (0.5, 0.5, 0.5)


def test_photo_movie_is_deterministic_and_grey_photos_become_rgb(tmp_path):
    a = pans.photo_movie(tmp_path / "a", photo="camera", n_frames=3, size=16)
    b = pans.photo_movie(tmp_path / "b", photo="camera", n_frames=3, size=16)
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]
    frames = read_frames(a)
    assert (frames == frames[..., :1]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(photo="lena"), r"photo must be a name from SAMPLE_PHOTOS"),
        (dict(start=[0.5, 0.1, 0.6]), r"start=\[0.5, 0.1, 0.6\] puts the window at columns .* outside photo 'astronaut'"),
        (dict(end=[0.5, 0.5, 1.2]), r"end=.* outside photo"),
        (dict(start=[0.5, 0.5]), r"start must be three finite numbers"),
        (dict(end=[0.5, 0.5, 0]), r"end must be three finite numbers .*side > 0"),
        (dict(start="middle"), r"start must be three finite numbers"),
        (dict(easing="bounce"), r"easing must be one of"),
        (dict(size=0), r"size must be an integer >= 1"),
    ],
)
def test_photo_movie_parameter_errors(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        pans.photo_movie(tmp_path / "out", n_frames=2, **kwargs)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# scikit-image's animated GIF
# ---------------------------------------------------------------------------------------------


def gif_frames_by_pillow() -> tuple[np.ndarray, list[int]]:
    with Image.open(os.path.join(skimage.data.data_dir, gif.SKIMAGE_GIF)) as image:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
        image.seek(0)
        durations = []
        for k in range(image.n_frames):
            image.seek(k)
            durations.append(image.info["duration"])
    return np.stack(frames), durations


def test_skimage_gif_native_frames_and_real_frame_rate(tmp_path):
    expected, durations = gif_frames_by_pillow()
    assert expected.shape == (24, 25, 14, 3) and set(durations) == {70}
    paths = gif.skimage_gif(tmp_path, size=None)
    assert np.array_equal(read_frames(paths), expected)
    r = record(tmp_path)
    assert r["fps"] == pytest.approx(1000 / 70, rel=1e-15) and r["n_frames"] == 24
    assert r["duration"] == pytest.approx(24 * 0.07)
    assert r["source"]["file"] == gif.SKIMAGE_GIF


def test_skimage_gif_resized_and_looped(tmp_path):
    expected, _ = gif_frames_by_pillow()
    paths = gif.skimage_gif(tmp_path, size=28, loops=2)
    frames = read_frames(paths)
    assert frames.shape == (48, 28, 28, 3)
    square = expected[3, 5:19]  # rows 5..18: the centred 14 x 14 square of 25 x 14
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(square)).resize((28, 28), Image.Resampling.BICUBIC))
    assert np.array_equal(frames[3], ref) and np.array_equal(frames[27], ref)
    with pytest.raises(InputError, match="loops must be an integer >= 1"):
        gif.skimage_gif(tmp_path / "x", loops=0)


# ---------------------------------------------------------------------------------------------
# phase scrambling: the float function
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_movie() -> np.ndarray:
    """6 frames of 10 x 12, 3 channels: a smooth moving blob plus noise (odd and even sides)."""
    rng = np.random.default_rng(5)
    t, y, x = np.meshgrid(np.arange(6), np.arange(10), np.arange(12), indexing="ij")
    blob = 200 * np.exp(-((x - 3 - t) ** 2 + (y - 5) ** 2) / 8)
    return np.stack([blob + 20, blob[::-1] * 0.5 + 40, 0 * blob + 90], axis=-1) + rng.normal(0, 10, (6, 10, 12, 3))


def amplitude(x, axes):
    return np.abs(np.fft.fftn(x, axes=axes))


def phase_change(before, after, axes):
    return np.angle(np.fft.fftn(after, axes=axes) / np.fft.fftn(before, axes=axes))


@pytest.mark.parametrize("channels", ["shared", "independent"])
@pytest.mark.parametrize("mode, kept", [
    ("spatiotemporal", [(0, 1, 2)]),
    ("frame", [(1, 2)]),
    ("fixed", [(1, 2), (0, 1, 2)]),
])
def test_scramble_keeps_the_amplitude_spectrum(small_movie, mode, kept, channels):
    out = scramble.phase_scramble(small_movie, seed=3, mode=mode, channels=channels)
    assert out.shape == small_movie.shape and out.dtype == np.float64
    for axes in kept:
        a, b = amplitude(small_movie, axes), amplitude(out, axes)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9 * a.max())
    spatial = (1, 2) if mode != "spatiotemporal" else (0, 1, 2)
    np.testing.assert_allclose(out.mean(axis=spatial), small_movie.mean(axis=spatial), rtol=1e-12)  # the mean is kept
    change = phase_change(small_movie, out, spatial)
    big = amplitude(small_movie, spatial) > 1e-6 * amplitude(small_movie, spatial).max()
    moved = np.abs(change[big]) > 0.1
    assert moved.mean() > 0.85, moved.mean()
    # shared: one random phase at each frequency for all three channels
    spread = np.abs(np.angle(np.exp(1j * (change - change[..., :1]))))[big.all(axis=-1)]
    if channels == "shared":
        assert spread.max() < 1e-6
    else:
        assert np.median(spread) > 0.5


def test_scramble_is_the_documented_complex_fft_restated(small_movie):
    """numpy's full complex FFT, phases of the FFT of the seeded Gaussian noise, DC left alone."""
    T, H, W, C = small_movie.shape
    noise = rng_child(11, 0).standard_normal((T, H, W))
    phases = np.angle(np.fft.fftn(noise))
    phases[0, 0, 0] = 0
    ref = np.stack([np.fft.ifftn(np.fft.fftn(small_movie[..., c]) * np.exp(1j * phases)) for c in range(C)], axis=-1)
    assert np.abs(ref.imag).max() < 1e-9 * np.abs(ref.real).max()  # Hermitian: the inverse is real
    out = scramble.phase_scramble(small_movie, seed=11)
    np.testing.assert_allclose(out, ref.real, rtol=0, atol=1e-9)

    # frame mode, independent channels: frame t from child t, noise with a channel axis
    out = scramble.phase_scramble(small_movie, seed=11, mode="frame", channels="independent")
    for t in range(T):
        phases = np.angle(np.fft.fft2(rng_child(11, t).standard_normal((H, W, C)), axes=(0, 1)))
        phases[0, 0, :] = 0
        ref = np.fft.ifft2(np.fft.fft2(small_movie[t], axes=(0, 1)) * np.exp(1j * phases), axes=(0, 1))
        assert np.abs(ref.imag).max() < 1e-9 * np.abs(ref.real).max()
        np.testing.assert_allclose(out[t], ref.real, rtol=0, atol=1e-9)


def test_scramble_seeds_and_frame_independence(small_movie):
    a = scramble.phase_scramble(small_movie, seed=1)
    assert np.array_equal(a, scramble.phase_scramble(small_movie, seed=1))
    assert np.abs(a - scramble.phase_scramble(small_movie, seed=2)).max() > 1
    # frame mode: frame t depends on (seed, t) only, not on the movie's length
    whole = scramble.phase_scramble(small_movie, seed=4, mode="frame")
    assert np.array_equal(whole[:3], scramble.phase_scramble(small_movie[:3], seed=4, mode="frame"))
    # fixed mode: a still movie stays still; frame mode makes it flicker
    still = np.repeat(small_movie[:1], 4, axis=0)
    fixed = scramble.phase_scramble(still, seed=4, mode="fixed")
    assert np.allclose(fixed, fixed[:1]) and not np.allclose(fixed[0], still[0])
    flicker = scramble.phase_scramble(still, seed=4, mode="frame")
    assert np.abs(flicker[1] - flicker[0]).max() > 1


def test_scramble_rejects_bad_arguments(small_movie):
    with pytest.raises(InputError, match=r"mode must be one of \['spatiotemporal', 'frame', 'fixed'\]"):
        scramble.phase_scramble(small_movie, mode="time")
    with pytest.raises(InputError, match=r"channels must be one of \['shared', 'independent'\]"):
        scramble.phase_scramble(small_movie, channels="rgb")
    with pytest.raises(InputError, match=r"seed must be an integer >= 0"):
        scramble.phase_scramble(small_movie, seed=-1)
    with pytest.raises(InputError, match=r"\(n_frames, rows, cols, n_channels\)"):
        scramble.phase_scramble(small_movie[0])


# ---------------------------------------------------------------------------------------------
# phase scrambling: the generator
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def photo_clip(tmp_path) -> Path:
    folder = tmp_path / "clip"
    pans.photo_movie(folder, photo="coffee", n_frames=5, fps=10, size=24)
    return folder


def test_scrambled_frames_round_trip_the_float_function(tmp_path, photo_clip):
    paths = scramble.phase_scrambled(photo_clip, tmp_path / "s", seed=7)
    assert [Path(p).name for p in paths] == [f"scrambled-{k:06d}.png" for k in range(5)]
    source = read_frames(sorted(photo_clip.glob("*.png")))
    values = scramble.phase_scramble(source, seed=7)
    assert np.array_equal(read_frames(paths), np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    r = record(tmp_path / "s")
    assert r["generator"] == "scrambled" and r["fps"] == 10.0 and r["n_frames"] == 5
    assert r["parameters"]["mode"] == "spatiotemporal" and r["parameters"]["channels"] == "shared"
    assert r["source_movie"]["kind"] == "folder" and r["outside_fraction"] == float(np.mean((values < 0) | (values > 255)))


def test_scrambled_is_reproducible_from_its_seed(tmp_path, photo_clip):
    scramble.phase_scrambled(photo_clip, tmp_path / "a", seed=1, mode="frame")
    scramble.phase_scrambled(photo_clip, tmp_path / "b", seed=1, mode="frame")
    scramble.phase_scrambled(photo_clip, tmp_path / "c", seed=2, mode="frame")
    a, b, c = (folder_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert all(a[name] != c[name] for name in a if name.endswith(".png"))


def test_scrambled_from_a_generator_mapping_equals_from_its_folder(tmp_path, photo_clip):
    spec = {"generate": "photo_movie", "photo": "coffee", "n_frames": 5, "fps": 10, "size": 24}
    registry.generate("scrambled", tmp_path / "m", source=spec, seed=3)  # the registry makes the source movie
    scramble.phase_scrambled(photo_clip, tmp_path / "f", seed=3)
    m, f = folder_bytes(tmp_path / "m"), folder_bytes(tmp_path / "f")
    assert {k: v for k, v in m.items() if k.endswith(".png")} == {k: v for k, v in f.items() if k.endswith(".png")}
    assert record(tmp_path / "m")["source_movie"] == {"kind": "generate", "generate": "photo_movie", "fps": 10.0,
                                                      "parameters": {k: v for k, v in spec.items() if k != "generate"}}
    assert record(tmp_path / "m")["parameters"]["source"] == spec
    with pytest.raises(InputError, match=r"KIND one of \['gratings', 'movie', 'photo_movie', 'scrambled', 'skimage_gif'\]"):
        registry.generate("scrambled", tmp_path / "x", source={"generate": "noise"})
    with pytest.raises(InputError, match=r"generator 'gratings' \(drifting_gratings\): unknown parameter\(s\) \['speed'\]"):
        registry.generate("scrambled", tmp_path / "x", source={"generate": "gratings", "speed": 3})
    with pytest.raises(InputError, match=r"which daskdiff.stimuli.registry.generate makes"):
        scramble.phase_scrambled(spec, tmp_path / "x")  # scramble does not import the registry
    assert not (tmp_path / "x").exists()


def test_scrambled_from_a_plain_folder_and_from_a_gif(tmp_path, photo_clip):
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in sorted(photo_clip.glob("*.png")):
        (plain / p.name).write_bytes(p.read_bytes())
    with pytest.raises(InputError, match=r"records no frame rate; give it one: fps: 30 under the image set"):
        scramble.phase_scrambled(plain, tmp_path / "x")
    scramble.phase_scrambled(plain, tmp_path / "p", fps=10, seed=3)
    scramble.phase_scrambled(photo_clip, tmp_path / "f", seed=3)
    assert folder_bytes(tmp_path / "p")["scrambled-000004.png"] == folder_bytes(tmp_path / "f")["scrambled-000004.png"]
    with pytest.raises(InputError, match=r"fps=12 disagrees with the frame rate 10"):
        scramble.phase_scrambled(photo_clip, tmp_path / "x", fps=12)

    gif_file = os.path.join(skimage.data.data_dir, gif.SKIMAGE_GIF)
    paths = scramble.phase_scrambled(gif_file, tmp_path / "g", size=16, n_frames=10, mode="fixed")
    assert read_frames(paths).shape == (10, 16, 16, 3)
    assert record(tmp_path / "g")["fps"] == pytest.approx(1000 / 70)

    uneven = tmp_path / "uneven.gif"
    images = [Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)) for k in range(3)]
    images[0].save(uneven, save_all=True, append_images=images[1:], duration=[50, 100, 50], loop=0)
    with pytest.raises(InputError, match=r"uneven durations.*generate: frames with fps"):
        scramble.phase_scrambled(uneven, tmp_path / "x")


def test_scrambled_scale_fit_keeps_the_spectrum_shape(tmp_path, photo_clip):
    scramble.phase_scrambled(photo_clip, tmp_path / "s", seed=5, fit="scale")
    r = record(tmp_path / "s")
    assert 0 < r["scale"] < 1 and r["outside_fraction"] > 0
    source = read_frames(sorted(photo_clip.glob("*.png")))
    values = scramble.phase_scramble(source, seed=5)
    mean = values.mean(axis=(0, 1, 2))
    fitted = mean + (values - mean) * r["scale"]
    assert fitted.min() > -1e-9 and fitted.max() < 255 + 1e-9
    assert np.array_equal(read_frames(sorted((tmp_path / "s").glob("*.png"))), np.rint(np.clip(fitted, 0, 255)).astype(np.uint8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="3d"), r"mode must be one of"),
        (dict(channels="all"), r"channels must be one of"),
        (dict(fit="wrap"), r"fit must be one of \['clip', 'scale'\]"),
        (dict(seed=1.5), r"seed must be an integer >= 0"),
        (dict(size=0), r"size must be an integer >= 1"),
        (dict(n_frames=0), r"n_frames must be an integer >= 1"),
        (dict(fps=-1), r"fps must be a finite number > 0"),
        (dict(source="no/such/movie.gif"), r"movie source not found"),
        (dict(source=42), r"source must be a folder of frames, a movie file or \{generate: KIND"),
    ],
)
def test_scrambled_parameter_errors(tmp_path, photo_clip, kwargs, match):
    kwargs.setdefault("source", photo_clip)
    with pytest.raises(InputError, match=match):
        scramble.phase_scrambled(out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# movie folders and the registry
# ---------------------------------------------------------------------------------------------


def test_movie_record_is_written_last_and_replaced(tmp_path):
    frames = [np.full((4, 5, 3), v, np.uint8) for v in (0, 100, 200)]
    paths = movie.write_movie(tmp_path, frames, fps=8, prefix="m", generator="test", parameters={"p": (1, 2)})
    assert np.array_equal(read_frames(paths), np.stack(frames))  # PNG round trip is exact
    assert record(tmp_path)["parameters"] == {"p": [1, 2]} and record(tmp_path)["frame_size"] == [4, 5]

    def failing():
        yield frames[0]
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        movie.write_movie(tmp_path, failing(), fps=8, prefix="m", generator="test", parameters={})
    assert not (tmp_path / movie.MOVIE_RECORD).exists()  # no record describing half-rewritten frames
    with pytest.raises(InputError, match="frames differ in size"):
        movie.write_movie(tmp_path, [frames[0], np.zeros((5, 5, 3), np.uint8)], fps=8, prefix="m", generator="test", parameters={})
    loaded = movie.load_movie(tmp_path, fps=8)
    assert loaded.fps == 8 and np.array_equal(loaded.frames, np.stack(frames))  # the odd frame was not written


def test_load_movie_refuses_frames_of_different_sizes(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(InputError, match=r"b.png' is 4 x 6 but .*a.png' is 4 x 4"):
        movie.load_movie(tmp_path, fps=5)


def test_registry_knows_the_movie_generators(tmp_path):
    assert registry.MOVIE_KINDS <= set(registry.GENERATORS)
    assert len(registry.generate("gratings", tmp_path / "g", size=10, n_frames=3)) == 3
    assert len(registry.generate("photo_movie", tmp_path / "p", size=8, n_frames=2)) == 2
    assert len(registry.generate("skimage_gif", tmp_path / "gif", size=8)) == 24
    assert len(registry.generate("scrambled", tmp_path / "s", source=str(tmp_path / "p"))) == 2
    assert len(registry.generate("movie", tmp_path / "m", movie=str(tmp_path / "g"))) == 3
    for kind in registry.MOVIE_KINDS:
        folder = {"gratings": "g", "photo_movie": "p", "skimage_gif": "gif", "scrambled": "s", "movie": "m"}[kind]
        assert record(tmp_path / folder)["generator"] == kind
    with pytest.raises(InputError, match=r"generator 'scrambled' \(phase_scrambled\): unknown parameter\(s\) \['phase'\]"):
        registry.check_generator_params("scrambled", {"source": "x", "phase": 1})
    with pytest.raises(InputError, match=r"generator 'gratings' .*unknown parameter\(s\) \['direction'\]"):
        registry.check_generator_params("gratings", {"direction": 90})


def test_npy_movie_grey_or_rgb_at_the_given_rate(tmp_path):
    """A movie stored as one array, time first (the OpenScope stimuli: data/stim/stimuli/*.npy)."""
    from daskdiff.stimuli.movie import load_movie

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    movie = load_movie(tmp_path / "grey.npy", fps=30, n_frames=4)
    assert movie.fps == 30.0 and movie.frames.shape == (4, 5, 6, 3) and movie.frames.dtype == np.uint8
    np.testing.assert_array_equal(movie.frames, np.repeat(grey[:4, ..., None], 3, axis=-1))
    rgb = rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    np.testing.assert_array_equal(load_movie(tmp_path / "rgb.npy", fps=12.5).frames, rgb)
    with pytest.raises(InputError, match=r"movie array .*grey\.npy' \(\.npy\) records no frame rate; give it one: fps: 30 under the image set"):
        load_movie(tmp_path / "grey.npy")
    np.save(tmp_path / "flat.npy", grey[0])
    with pytest.raises(InputError, match=r"flat\.npy' has shape \(5, 6\); a movie is \(frames, rows, cols\) grey"):
        load_movie(tmp_path / "flat.npy", fps=30)
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    with pytest.raises(InputError, match=r"has shape \(2,\)"):
        load_movie(tmp_path / "text.npy", fps=30)
    np.save(tmp_path / "objects.npy", np.array([{}, {}, {}], dtype=object).reshape(1, 1, 3), allow_pickle=True)
    with pytest.raises(InputError, match=r"objects\.npy' holds object values; save it as uint8"):  # never unpickled
        load_movie(tmp_path / "objects.npy", fps=30)
