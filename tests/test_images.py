"""Image sets and decoding: a corpus of bad and unusual inputs generated in tmp_path."""

import os
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from daskdiff.io.image_sets import IMAGE_SUFFIXES, ImageSetError, resolve_image_set
from daskdiff.io.images import ImageDecodeError, load_image, load_images, Skipped


def _pattern(height, width, seed=0):
    """A smooth RGB test picture with some texture (JPEG-friendly, resize-sensitive)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _save(array_or_image, path, **kwargs):
    image = array_or_image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


# --- decoding failures -----------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg.*empty file \(0 bytes\)") as info:
        load_image(path)
    assert info.value.path == str(path) and info.value.reason == "empty file (0 bytes)"


def test_truncated_jpeg(tmp_path):
    path = _save(_pattern(217, 300), tmp_path / "cut.jpg", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*truncated or corrupt"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg.*not an image file"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"absent\.png.*file not found"):
        load_image(tmp_path / "absent.png")


def test_broken_symlink(tmp_path):
    link = tmp_path / "link.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    with pytest.raises(ImageDecodeError, match=r"link\.jpg.*broken symlink.*gone\.jpg"):
        load_image(link)
    # the set keeps the link as given; decoding is where it fails
    assert resolve_image_set(tmp_path) == [str(link)]


@pytest.mark.parametrize("side", [40, 100], ids=["warning-range", "error-range"])
def test_decompression_bomb(tmp_path, monkeypatch, side):
    path = _save(_pattern(side, side), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px > limit, 10000 px > 2 * limit
    filters_before = list(warnings.filters)
    with pytest.raises(ImageDecodeError, match=r"bomb\.png.*decompression bomb.*MAX_IMAGE_PIXELS"):
        load_image(path)
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_error_pickles_with_path_and_reason():
    error = pickle.loads(pickle.dumps(ImageDecodeError("/a/b.jpg", "not an image file")))
    assert (error.path, error.reason) == ("/a/b.jpg", "not an image file")
    assert str(error) == "cannot decode image '/a/b.jpg': not an image file"


# --- modes and conventions -------------------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 65535], [32896, 1000]], dtype=np.uint16)
    path = _save(values, tmp_path / "deep.png")
    with Image.open(path) as image:
        assert image.mode == "I;16"
    out = load_image(path, size=(2, 2))
    expected = np.array([[0, 255], [128, 4]], dtype=np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=-1))


def test_32bit_integer_and_float_tiff(tmp_path):
    ints = _save(Image.fromarray(np.array([[0, 65535]], dtype=np.int32)), tmp_path / "i.tif")
    floats = _save(Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32)), tmp_path / "f.tif")
    wide = _save(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), tmp_path / "wide.tif")
    np.testing.assert_array_equal(load_image(ints, size=(1, 2))[..., 0], [[0, 255]])
    np.testing.assert_array_equal(load_image(floats, size=(1, 2))[..., 1], [[0, 128]])
    with pytest.raises(ImageDecodeError, match=r"wide\.tif.*0\.\.70000"):
        load_image(wide)


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        expected = np.asarray(image.convert("RGB").resize((50, 40), Image.Resampling.NEAREST))
    out = load_image(path, size=(40, 50))
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60  # red stays red


def test_rgba_png_composited_over_background(tmp_path):
    rgba = np.array(
        [[[10, 20, 30, 0], [10, 20, 30, 255]], [[0, 0, 0, 128], [200, 100, 50, 255]]],
        dtype=np.uint8,
    )
    path = _save(rgba, tmp_path / "alpha.png")
    out = load_image(path, size=(2, 2))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent -> white
    np.testing.assert_array_equal(out[0, 1], [10, 20, 30])  # opaque keeps its colour
    np.testing.assert_array_equal(out[1, 0], [127, 127, 127])  # round(255 * 127 / 255)
    np.testing.assert_array_equal(out[1, 1], [200, 100, 50])
    black = load_image(path, size=(2, 2), background=(0, 0, 0))
    np.testing.assert_array_equal(black[0, 0], [0, 0, 0])


def test_palette_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour).quantize(4) for colour in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as image:
        assert image.mode == "P" and image.n_frames == 2
    out = load_image(path, size=(16, 16))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_palette_png_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = _save(image, tmp_path / "pal.png", transparency=0)
    with Image.open(path) as reopened:
        assert reopened.mode == "P" and reopened.has_transparency_data
    out = load_image(path, size=(1, 2), background=(7, 8, 9))
    np.testing.assert_array_equal(out[0], [[7, 8, 9], [0, 0, 255]])


def test_grayscale(tmp_path):
    path = _save(np.full((5, 7), 77, dtype=np.uint8), tmp_path / "grey.png")
    out = load_image(path, size=(5, 7))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.all(out == 77)


def test_one_pixel_image_is_resized(tmp_path):
    path = _save(np.array([[[12, 34, 56]]], dtype=np.uint8), tmp_path / "dot.png")
    out = load_image(path)
    assert out.shape == (224, 224, 3)
    assert np.all(out == [12, 34, 56])


def test_path_with_spaces_and_non_ascii(tmp_path):
    path = _save(_pattern(10, 12), tmp_path / "dir with spaces" / "kätzchen 猫.png")
    np.testing.assert_array_equal(load_image(path, size=(10, 12)), _pattern(10, 12))
    assert resolve_image_set(path.parent) == [str(path)]


@pytest.mark.keras
@pytest.mark.parametrize("kind", ["rgb-jpeg", "rgb-png", "grey-png", "palette-gif", "cmyk-jpeg"])
def test_default_equals_keras_load_img(tmp_path, kind):
    from keras.utils import load_img

    picture = _pattern(217, 300)  # odd size, not a divisor of 224
    sources = {
        "rgb-jpeg": (picture, "x.jpg"),
        "rgb-png": (picture, "x.png"),
        "grey-png": (picture[..., 0], "x.png"),
        "palette-gif": (Image.fromarray(picture).quantize(64), "x.gif"),
        "cmyk-jpeg": (Image.fromarray(picture).convert("CMYK"), "x.jpg"),
    }
    image, name = sources[kind]
    path = _save(image, tmp_path / name)
    expected = np.asarray(load_img(path, target_size=(224, 224)), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(str(path), (224, 224)), expected)


def test_bilinear_differs_from_nearest(tmp_path):
    path = _save(_pattern(217, 300), tmp_path / "x.png")
    nearest = load_image(path, size=(100, 120))
    bilinear = load_image(path, size=(100, 120), resize="bilinear")
    assert bilinear.shape == nearest.shape == (100, 120, 3)
    assert not np.array_equal(bilinear, nearest)


def test_unknown_resize_rejected_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"'cubic'.*'nearest', 'bilinear', 'bicubic', 'lanczos'"):
        load_images([tmp_path / "does-not-exist.png"], resize="cubic")


def test_bad_size_and_background(tmp_path):
    with pytest.raises(ValueError, match=r"size=\(224, 224\).*\(0, 224\)"):
        load_images([], size=(0, 224))
    with pytest.raises(TypeError, match=r"\(height, width\)"):
        load_image(tmp_path / "x.png", size=224)
    with pytest.raises(ValueError, match=r"background.*0\.\.255.*\(300, 0, 0\)"):
        load_image(tmp_path / "x.png", background=(300, 0, 0))
    with pytest.raises(TypeError, match=r"load_images\(\[path\]\)"):
        load_images(str(tmp_path / "x.png"))


# --- many files ------------------------------------------------------------------------------


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a_empty.jpg").write_bytes(b"")
    (folder / "b_text.png").write_text("hello")
    jpeg = _save(_pattern(64, 64), folder / "c_cut.jpg")
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    return sorted(str(p) for p in folder.iterdir())


def test_set_where_every_file_is_bad(tmp_path):
    paths = _bad_files(tmp_path / "bad")
    images, indices, skipped = load_images(paths)
    assert images.shape == (0, 224, 224, 3) and images.dtype == np.uint8
    assert indices == []
    assert [s.path for s in skipped] == paths
    assert [s.reason.split(":")[0] for s in skipped] == [
        "empty file (0 bytes)",
        "not an image file (Pillow cannot identify its format)",
        "truncated or corrupt image",
    ]
    with pytest.raises(ImageDecodeError, match=r"a_empty\.jpg.*empty file"):
        load_images(paths, strict=True)


def test_valid_images_kept_next_to_bad_ones(tmp_path):
    good_a = _save(_pattern(30, 40, seed=1), tmp_path / "good_a.png")
    good_b = _save(_pattern(30, 40, seed=2), tmp_path / "good_b.png")
    bad = _bad_files(tmp_path / "bad")
    paths = [bad[0], good_a, bad[1], bad[2], good_b]
    images, indices, skipped = load_images(paths, size=(30, 40))
    assert indices == [1, 4]
    np.testing.assert_array_equal(images[0], _pattern(30, 40, seed=1))
    np.testing.assert_array_equal(images[1], _pattern(30, 40, seed=2))
    assert skipped == [Skipped(p, s.reason) for p, s in zip(bad, skipped)]
    assert all(isinstance(s.reason, str) and s.reason for s in skipped)


# --- image sets ------------------------------------------------------------------------------


def test_folder_ignores_other_suffixes_and_is_sorted_absolute(tmp_path, monkeypatch):
    folder = tmp_path / "set"
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.jpg", "sub/d.png"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    expected = [str(folder / n) for n in ["a.JPG", "b.png", "c.webp"]]
    assert resolve_image_set("set") == expected
    assert resolve_image_set("set", base_dir=tmp_path) == expected
    assert resolve_image_set(folder) == expected
    assert {".jpg", ".png", ".tiff", ".webp", ".pgm"} <= IMAGE_SUFFIXES


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ImageSetError, match=r"'train'.*empty.*no image file.*\.jpeg, \.jpg"):
        resolve_image_set(tmp_path / "empty", name="train")


def test_missing_folder(tmp_path):
    with pytest.raises(ImageSetError, match=r"'test'.*nowhere.*does not exist"):
        resolve_image_set("nowhere", name="test", base_dir=tmp_path)


def test_glob(tmp_path):
    _save(_pattern(4, 4), tmp_path / "p" / "x.png")
    _save(_pattern(4, 4), tmp_path / "p" / "deep" / "y.png")
    assert resolve_image_set("p/*.png", base_dir=tmp_path) == [str(tmp_path / "p" / "x.png")]
    assert resolve_image_set("p/**/*.png", base_dir=tmp_path) == [
        str(tmp_path / "p" / "deep" / "y.png"),
        str(tmp_path / "p" / "x.png"),
    ]
    with pytest.raises(ImageSetError, match=r"glob pattern .*\*\.jpg' matches no file"):
        resolve_image_set("p/*.jpg", base_dir=tmp_path)


def test_list_file_with_relative_paths_and_comments(tmp_path):
    a = _save(_pattern(4, 4), tmp_path / "imgs" / "a.png")
    b = _save(_pattern(4, 4), tmp_path / "imgs" / "b.png")
    list_file = tmp_path / "lists" / "set.txt"
    list_file.parent.mkdir()
    list_file.write_text(
        f"# my stimuli\n\n../imgs/b.png\n  ../imgs/a.png  \n{a}\n../imgs/missing.png\n"
    )
    paths = resolve_image_set("lists/set.txt", base_dir=tmp_path)
    missing = str(tmp_path / "imgs" / "missing.png")
    assert paths == [str(a), str(b), missing]
    _, indices, skipped = load_images(paths, size=(4, 4))
    assert indices == [0, 1] and skipped == [Skipped(missing, "file not found")]


def test_list_file_errors(tmp_path):
    empty = tmp_path / "empty.lst"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ImageSetError, match=r"empty\.lst.*lists no path"):
        resolve_image_set(empty)
    gone = tmp_path / "gone.txt"
    gone.write_text("a.png\nb.png\n")
    with pytest.raises(ImageSetError, match=r"none of the 2 paths in list file .*gone\.txt"):
        resolve_image_set(gone)
    image = _save(_pattern(4, 4), tmp_path / "one.png")
    with pytest.raises(ImageSetError, match=r"one\.png.*not a list file"):
        resolve_image_set(image)


def test_glob_below_a_folder_whose_name_looks_like_a_pattern(tmp_path):
    base = tmp_path / "run[1]"
    image = _save(_pattern(4, 4), base / "x.png")
    assert resolve_image_set("*.png", base_dir=base) == [str(image)]


def test_threads_leave_warning_filters_alone(tmp_path):
    # Pillow releases the GIL while decoding, so unguarded catch_warnings() in 8 threads
    # interleaves and leaves a filter behind (it did in 10 runs out of 10 without the lock).
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (300, 300, 3), dtype=np.uint8) for _ in range(16)]
    paths = [_save(p, tmp_path / f"{i}.png") for i, p in enumerate(pictures)]
    filters_before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(lambda p: load_image(p, size=(300, 300)), paths * 2))
    assert warnings.filters == filters_before
    np.testing.assert_array_equal(images[17], pictures[1])


def _sideways_photo(path, orientation):
    """A photo stored sideways with EXIF Orientation ``orientation`` (lossless PNG, eXIf chunk)."""
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)  # 20 rows, 40 columns
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    return stored


@pytest.mark.keras
@pytest.mark.parametrize("orientation, upright", [
    (6, lambda a: np.rot90(a, k=-1)),  # "rotate 90 CW to display"
    (8, lambda a: np.rot90(a, k=1)),   # "rotate 90 CCW to display"
    (3, lambda a: a[::-1, ::-1]),      # upside down
    (2, lambda a: a[:, ::-1]),         # mirrored
])
def test_exif_orientation_applied_only_when_asked(tmp_path, orientation, upright):
    import keras

    path = tmp_path / f"o{orientation}.png"
    stored = _sideways_photo(path, orientation)
    want = upright(stored)
    got = load_image(path, want.shape[:2], exif_orientation=True)
    np.testing.assert_array_equal(got, want)
    # the default ignores the tag, exactly as Keras does
    keras_way = np.asarray(keras.utils.load_img(path, target_size=stored.shape[:2]), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(path, stored.shape[:2]), keras_way)
    np.testing.assert_array_equal(keras_way, stored)
    images, ok, _ = load_images([path, path], want.shape[:2], exif_orientation=True)
    assert ok == [0, 1] and np.array_equal(images[1], want)


@pytest.mark.subprocess
def test_decoding_on_a_process_pool_gives_the_same_batch(tmp_path):
    """load_images(pool=...): every image, skipped file and index as one process gives, in input
    order; with strict, the first bad file in input order is the error."""
    from daskdiff.model.extract import decoder_pool

    paths = []
    for k in range(9):
        path = tmp_path / f"{k}.png"
        if k in (2, 6):
            path.write_bytes(b"not a png")
        else:
            _save(_pattern(40 + k, 30 + 2 * k, seed=k), path)
        paths.append(str(path))
    alone = load_images(paths, (24, 24), resize="bilinear")
    pool = decoder_pool(3)
    threaded = load_images(paths, (24, 24), resize="bilinear", pool=pool)
    with pytest.raises(ImageDecodeError) as caught:
        load_images(paths, (24, 24), strict=True, pool=pool)
    np.testing.assert_array_equal(threaded[0], alone[0])
    assert threaded[1] == alone[1] == [0, 1, 3, 4, 5, 7, 8]
    assert threaded[2] == alone[2] and [s.path for s in alone[2]] == [paths[2], paths[6]]
    assert caught.value.path == paths[2]
