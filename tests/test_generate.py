"""daskdiff.stimuli generators: noise, bundled photographs, crops and movie frames written as PNG files."""

from __future__ import annotations

import os
import socket
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import stats

from daskdiff.stimuli import augment, frames, noise, photos, registry


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        return np.asarray(image)


def read_bytes(paths) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths]


def drawn_noise(seed: int, i: int, size: int, kind: str) -> np.ndarray:
    """The docstring's formula, written out independently of the module."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(i + 1)[i])
    if kind == "uniform":
        return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return np.rint(np.clip(rng.normal(127.5, 50.0, size=(size, size, 3)), 0, 255)).astype(np.uint8)


def write_gif(path, values, durations, mode="RGB", size=(32, 24)) -> None:
    """Animated GIF whose frame k is filled with values[k] and shown durations[k] ms."""
    channels = {"RGB": (3,), "L": ()}[mode]
    frames = [
        Image.fromarray(np.full((size[1], size[0], *channels), v, dtype=np.uint8)) for v in values
    ]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)


@pytest.fixture()
def gif10(tmp_path) -> Path:
    """10 frames of 32 x 24, frame k filled with 10 * k, 100 ms each: 10 frames per second."""
    path = tmp_path / "movie.gif"
    write_gif(path, [10 * k for k in range(10)], 100)
    return path


def no_temporary_files(folder) -> bool:
    return not [name for name in os.listdir(folder) if name.startswith(".") or "tmp" in name]


# ---------------------------------------------------------------------------------------------
# white_noise
# ---------------------------------------------------------------------------------------------


def test_noise_names_paths_and_reproducible_bytes(tmp_path):
    first = noise.white_noise(tmp_path / "a" / "nested", count=3, size=16, seed=7)
    assert [Path(p).name for p in first] == ["noise-0000.png", "noise-0001.png", "noise-0002.png"]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in first)
    again = noise.white_noise(tmp_path / "b", count=3, size=16, seed=7)
    assert read_bytes(first) == read_bytes(again)
    rewritten = noise.white_noise(tmp_path / "a" / "nested", count=3, size=16, seed=7)
    assert rewritten == first and read_bytes(rewritten) == read_bytes(again)
    other = noise.white_noise(tmp_path / "c", count=3, size=16, seed=8)
    assert all(x != y for x, y in zip(read_bytes(first), read_bytes(other)))
    assert no_temporary_files(tmp_path / "a" / "nested")


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("seed", [0, 123456789])
def test_noise_is_lossless_and_follows_documented_formula(tmp_path, kind, seed):
    paths = noise.white_noise(tmp_path, count=4, size=24, seed=seed, kind=kind, prefix="n")
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(read_png(path), drawn_noise(seed, i, 24, kind))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**63),
    counts=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    kind=st.sampled_from(["uniform", "gaussian"]),
)
def test_noise_image_i_does_not_depend_on_count(seed, counts, kind):
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        small = noise.white_noise(a, count=min(counts), size=8, seed=seed, kind=kind)
        large = noise.white_noise(b, count=max(counts), size=8, seed=seed, kind=kind)
        assert read_bytes(small) == read_bytes(large)[: len(small)]


def test_uniform_noise_statistics(tmp_path):
    pixels = np.stack([read_png(p) for p in noise.white_noise(tmp_path, count=4, size=64)])
    assert abs(pixels.mean() - 127.5) < 2
    assert pixels.min() == 0 and pixels.max() == 255
    counts = np.bincount(pixels.ravel(), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3
    # channels and neighbouring pixels uncorrelated (white)
    flat = pixels.astype(float)
    assert abs(np.corrcoef(flat[..., 0].ravel(), flat[..., 1].ravel())[0, 1]) < 0.03
    assert abs(np.corrcoef(flat[:, :, :-1].ravel(), flat[:, :, 1:].ravel())[0, 1]) < 0.03


def test_gaussian_noise_differs_from_uniform(tmp_path):
    uniform = np.stack([read_png(p) for p in noise.white_noise(tmp_path / "u", count=4, size=64)])
    gaussian = np.stack(
        [read_png(p) for p in noise.white_noise(tmp_path / "g", count=4, size=64, kind="gaussian")]
    )
    assert not np.array_equal(uniform, gaussian)
    assert abs(gaussian.mean() - 127.5) < 2
    assert 47 < gaussian.std() < 51  # 50 before clipping the ~1% of tails
    assert 72 < uniform.std() < 76  # sqrt((256**2 - 1) / 12) = 73.9
    assert np.mean((gaussian == 0) | (gaussian == 255)) < 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "pink"}, r"kind must be one of \['uniform', 'gaussian'\], got 'pink'"),
        ({"count": 0}, r"count must be an integer >= 1, got 0"),
        ({"count": 2.5}, r"count .* got 2.5"),
        ({"size": True}, r"size .* got True"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"prefix": "a/b"}, r"prefix .* got 'a/b'"),
        ({"prefix": ".hidden"}, r"prefix .* got '.hidden'"),
    ],
)
def test_noise_rejects_bad_arguments_without_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise.white_noise(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# sample_photos
# ---------------------------------------------------------------------------------------------


def test_sample_photos_native_size_equals_skimage_pixels(tmp_path):
    paths = photos.sample_photos(tmp_path)
    assert [Path(p).name for p in paths] == [f"photo-{i:04d}.png" for i in range(8)]
    first = photos.SAMPLE_PHOTOS[0]
    np.testing.assert_array_equal(read_png(paths[0]), getattr(skimage.data, first)())
    colour = [not np.array_equal(read_png(p)[..., 0], read_png(p)[..., 1]) for p in paths]
    assert all(colour)  # the first 8 are colour photographs


def test_sample_photos_grey_becomes_three_equal_channels(tmp_path):
    (path,) = photos.sample_photos(tmp_path, names=["camera"])
    pixels = read_png(path)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], skimage.data.camera())


def test_every_sample_photo_loads_offline_and_resizes(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_photos tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    paths = photos.sample_photos(tmp_path, count=len(photos.SAMPLE_PHOTOS), size=32)
    assert len(paths) == len(photos.SAMPLE_PHOTOS) == len(set(photos.SAMPLE_PHOTOS))
    images = [read_png(p) for p in paths]
    assert all(image.shape == (32, 32, 3) and image.dtype == np.uint8 for image in images)
    assert len({image.tobytes() for image in images}) == len(images)


def test_sample_photos_size_is_centre_square_bicubic(tmp_path):
    (path,) = photos.sample_photos(tmp_path, names=["chelsea"], size=50)
    cat = Image.fromarray(skimage.data.chelsea())  # 451 wide, 300 high
    expected = cat.crop((75, 0, 375, 300)).resize((50, 50), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(read_png(path), np.asarray(expected))


def test_sample_photos_errors(tmp_path):
    n = len(photos.SAMPLE_PHOTOS)
    with pytest.raises(ValueError, match=rf"count must be at most {n}.*got {n + 1}"):
        photos.sample_photos(tmp_path, count=n + 1)
    with pytest.raises(ValueError, match=r"\['nope'\].*valid names are \['astronaut', 'chelsea'"):
        photos.sample_photos(tmp_path, names=["chelsea", "nope"])
    with pytest.raises(ValueError, match=r"distinct.*\['coffee'\]"):
        photos.sample_photos(tmp_path, names=["coffee", "coffee"])
    with pytest.raises(ValueError, match=r"count=3 disagrees with the 1 names"):
        photos.sample_photos(tmp_path, names=["coffee"], count=3)
    with pytest.raises(ValueError, match=r"size .* got 0"):
        photos.sample_photos(tmp_path, size=0)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# augmented_copies
# ---------------------------------------------------------------------------------------------


def test_augmented_copies_deterministic_and_count_independent(tmp_path):
    first = augment.augmented_copies("chelsea", tmp_path / "a", count=6, size=40, seed=3)
    again = augment.augmented_copies("chelsea", tmp_path / "b", count=4, size=40, seed=3)
    assert [Path(p).name for p in first] == [f"variant-{i:04d}.png" for i in range(6)]
    assert read_bytes(first)[:4] == read_bytes(again)
    other = augment.augmented_copies("chelsea", tmp_path / "c", count=6, size=40, seed=4)
    assert read_bytes(other)[0] == read_bytes(first)[0]  # image 0: centre square, no seed
    assert read_bytes(other)[1:] != read_bytes(first)[1:]
    images = [read_png(p) for p in first]
    assert all(image.shape == (40, 40, 3) for image in images)
    assert len({image.tobytes() for image in images}) == 6
    assert no_temporary_files(tmp_path / "a")


def test_augmented_copies_image_zero_and_crops_follow_documented_draws(tmp_path):
    cat = skimage.data.chelsea()
    paths = augment.augmented_copies("chelsea", tmp_path, count=5, size=30, seed=11)
    centre = Image.fromarray(cat[:, 75:375]).resize((30, 30), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(read_png(paths[0]), np.asarray(centre))
    for i in range(1, 5):
        rng = np.random.default_rng(np.random.SeedSequence(11).spawn(i + 1)[i])
        side = round(rng.uniform(0.6, 1.0) * 300)
        top, left = rng.integers(0, 300 - side + 1), rng.integers(0, 451 - side + 1)
        crop = cat[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = np.ascontiguousarray(crop[:, ::-1])
        expected = Image.fromarray(crop).resize((30, 30), Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(read_png(paths[i]), np.asarray(expected))


def test_augmented_copies_from_a_file_equals_by_name(tmp_path):
    source = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(source)
    from_file = augment.augmented_copies(source, tmp_path / "f", count=3, size=24, seed=0)
    by_name = augment.augmented_copies("chelsea", tmp_path / "n", count=3, size=24, seed=0)
    assert read_bytes(from_file) == read_bytes(by_name)


def test_augmented_copies_unknown_source(tmp_path):
    with pytest.raises(ValueError, match=r"'no-such\.png' is neither .*valid names are"):
        augment.augmented_copies("no-such.png", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# movie_frames
# ---------------------------------------------------------------------------------------------


def test_movie_frames_every(tmp_path, gif10):
    paths = frames.movie_frames(gif10, tmp_path / "out", every=3)
    assert [Path(p).name for p in paths] == [f"frame-{k:06d}.png" for k in (0, 3, 6, 9)]
    for k, path in zip((0, 3, 6, 9), paths):
        pixels = read_png(path)
        assert pixels.shape == (24, 32, 3)
        assert np.all(pixels == 10 * k)
    assert no_temporary_files(tmp_path / "out")


def test_movie_frames_fps(tmp_path, gif10):
    paths = frames.movie_frames(gif10, tmp_path / "out", fps=5, prefix="f")
    assert [Path(p).name for p in paths] == [f"f-{k:06d}.png" for k in (0, 2, 4, 6, 8)]
    assert [int(read_png(p)[0, 0, 0]) for p in paths] == [0, 20, 40, 60, 80]
    # faster than the movie: every frame once, no duplicates
    assert len(frames.movie_frames(gif10, tmp_path / "fast", fps=25)) == 10


def nearest_frames_reference(durations_ms, fps) -> list[int]:
    """Brute force: for each t = j / fps before the end, the argmin of |start - t|."""
    starts = [Fraction(sum(durations_ms[:k]), 1000) for k in range(len(durations_ms))]
    end, step = Fraction(sum(durations_ms), 1000), 1 / Fraction(fps)
    chosen, t = [], Fraction(0)
    while t < end:
        distances = [abs(s - t) for s in starts]
        chosen.append(distances.index(min(distances)))  # first minimum: the earlier frame
        t += step
    return sorted(set(chosen))


@settings(max_examples=25, deadline=None)
@given(
    durations=st.lists(st.integers(2, 20).map(lambda cs: 10 * cs), min_size=1, max_size=8),
    fps=st.one_of(st.integers(1, 60), st.floats(0.5, 60.0)),
)
def test_movie_frames_fps_picks_nearest_frames_with_uneven_durations(durations, fps):
    with tempfile.TemporaryDirectory() as folder:
        movie = os.path.join(folder, "uneven.gif")
        write_gif(movie, [20 * k for k in range(len(durations))], durations, size=(4, 4))
        paths = frames.movie_frames(movie, os.path.join(folder, "out"), fps=fps)
        kept = [int(Path(p).stem.split("-")[1]) for p in paths]
        assert kept == nearest_frames_reference(durations, fps)
        assert [int(read_png(p)[0, 0, 0]) for p in paths] == [20 * k for k in kept]


def test_movie_frames_grey_and_alpha_become_rgb(tmp_path):
    grey_gif = tmp_path / "grey.gif"
    write_gif(grey_gif, [0, 50, 100], 100, mode="L")
    for k, path in enumerate(frames.movie_frames(grey_gif, tmp_path / "g", every=1)):
        assert np.all(read_png(path) == 50 * k)  # read_png checks mode RGB
    grey_apng = tmp_path / "grey.png"  # Pillow hands these frames over as 2-d arrays
    pictures = [Image.fromarray(np.full((6, 5), v, dtype=np.uint8)) for v in (7, 70)]
    pictures[0].save(grey_apng, save_all=True, append_images=pictures[1:], duration=100)
    paths = frames.movie_frames(grey_apng, tmp_path / "a", fps=10)
    assert [read_png(p)[0, 0].tolist() for p in paths] == [[7, 7, 7], [70, 70, 70]]
    rgba_apng = tmp_path / "rgba.png"
    pictures = [Image.fromarray(np.full((6, 5, 4), (1, 2, 3, v), dtype=np.uint8)) for v in (255, 9)]
    pictures[0].save(rgba_apng, save_all=True, append_images=pictures[1:], duration=100)
    for path in frames.movie_frames(rgba_apng, tmp_path / "r", every=1):
        assert np.all(read_png(path) == (1, 2, 3))


def test_movie_frames_argument_errors(tmp_path, gif10):
    with pytest.raises(ValueError, match=r"exactly one of every= and fps=.*every=3 and fps=5"):
        frames.movie_frames(gif10, tmp_path / "out", every=3, fps=5)
    with pytest.raises(ValueError, match=r"exactly one .*every=None and fps=None"):
        frames.movie_frames(gif10, tmp_path / "out")
    with pytest.raises(ValueError, match=r"every must be an integer >= 1, got 0"):
        frames.movie_frames(gif10, tmp_path / "out", every=0)
    with pytest.raises(ValueError, match=r"fps must be a positive finite number, got -1"):
        frames.movie_frames(gif10, tmp_path / "out", fps=-1)
    missing = tmp_path / "missing.gif"
    with pytest.raises(ValueError, match=rf"not found: '{missing}'"):
        frames.movie_frames(missing, tmp_path / "out", every=1)
    assert not (tmp_path / "out").exists()


def test_movie_frames_fps_needs_a_frame_rate(tmp_path):
    still = tmp_path / "still.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(still)
    with pytest.raises(ValueError, match=r"still\.png' has no frame rate.*use every=N"):
        frames.movie_frames(still, tmp_path / "out", fps=2)
    assert not (tmp_path / "out").exists()
    (path,) = frames.movie_frames(still, tmp_path / "out", every=1)
    assert Path(path).name == "frame-000000.png"


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin is deprecated:DeprecationWarning")
def test_movie_frames_unreadable_format_suggests_imageio_ffmpeg(tmp_path):
    """A video that needs ffmpeg says to install imageio-ffmpeg; a file that is no video at all never does."""
    import struct

    video = tmp_path / "clip.mp4"
    video.write_bytes(struct.pack(">I", 24) + b"ftypisom" + bytes(200))  # an MP4's first box
    with pytest.raises(ValueError, match=r"clip\.mp4' is an MP4/QuickTime video, which no installed imageio plugin "
                                         r"reads: run 'pip install imageio-ffmpeg'"):
        frames.movie_frames(video, tmp_path / "out", every=1)
    fake = tmp_path / "clip.xyz"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"clip\.xyz' is not a movie file: it seems to be unknown binary data") as caught:
        frames.movie_frames(fake, tmp_path / "out", every=1)
    assert "ffmpeg" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# generate (dispatch) and atomic writes
# ---------------------------------------------------------------------------------------------


def test_generate_dispatches_to_each_generator(tmp_path, gif10):
    dispatched = registry.generate("noise", tmp_path / "n", count=2, size=8, seed=5, kind="gaussian")
    direct = noise.white_noise(tmp_path / "n2", count=2, size=8, seed=5, kind="gaussian")
    assert read_bytes(dispatched) == read_bytes(direct)
    assert len(registry.generate("photos", tmp_path / "p", names=["coins"], size=8)) == 1
    assert len(registry.generate("augment", tmp_path / "a", source="coffee", count=2, size=8)) == 2
    assert len(registry.generate("frames", tmp_path / "f", movie=str(gif10), every=5)) == 2
    assert set(registry.GENERATORS) == {
        "noise", "photos", "augment", "frames", "select", "adversarial",
        "gratings", "photo_movie", "skimage_gif", "scrambled", "movie",  # the movies: tests/test_movies.py
    }


def test_generate_rejects_unknown_kind_and_parameters(tmp_path):
    with pytest.raises(ValueError, match=r"kind must be one of \['noise', 'photos', 'augment', "):
        registry.generate("nosie", tmp_path)
    with pytest.raises(
        ValueError,
        match=r"'noise' \(white_noise\): unknown parameter\(s\) \['colour'\].*"
        r"\['count', 'size', 'seed', 'kind', 'prefix'\]",
    ):
        registry.generate("noise", tmp_path, colour=True)
    with pytest.raises(ValueError, match=r"'augment'.*missing .*'source'.*\['source', 'count'"):
        registry.generate("augment", tmp_path, count=2)
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'pink'"):
        registry.generate("noise", tmp_path, kind="pink")  # values still checked by the generator
    with pytest.raises(ValueError, match=r"'photos'.*out_dir"):
        registry.generate("photos", tmp_path, out_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_neither_temporary_nor_partial_file(tmp_path, monkeypatch):
    noise.white_noise(tmp_path, count=1, size=8)
    before = (tmp_path / "noise-0000.png").read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        noise.white_noise(tmp_path, count=1, size=8, seed=1)
    assert os.listdir(tmp_path) == ["noise-0000.png"]
    assert (tmp_path / "noise-0000.png").read_bytes() == before
