"""daskdiff.stimuli.select: class selection of an image set, on models whose outputs the tests control.

The models here are ``GlobalAveragePooling2D -> Dense``: their logits are an affine function of
the image's mean colour, so the expected probabilities are computed in numpy, independently of
Keras and of the package.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daskdiff.core.ranking import class_mass
from daskdiff.stimuli.select import class_indices, model_spec, select_images, SELECTION_TABLE, top_k
from daskdiff.cli import main

SIZE = 8
"""Input side of the test models."""

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
"""ImageNet mean that keras.applications' 'caffe' preprocessing subtracts, in BGR order."""


def colour_model(path, weights, bias, *, preprocess="none") -> str:
    """Save a model whose logits are ``mean_rgb @ weights + bias`` (mean of 0-255 pixels).

    ``weights`` is ``(3, n_classes)`` over R, G, B. With ``preprocess='caffe'`` the model sees
    BGR pixels minus the ImageNet mean, and its Dense layer is set so that the logits are the
    same function of the raw RGB mean colour.
    """
    import keras

    weights = np.asarray(weights, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if preprocess == "caffe":  # z = W'.(m[::-1] - M) + b'  ==  W.m + b
        dense_w, dense_b = weights[::-1], bias + weights[::-1].T @ CAFFE_MEAN_BGR
    elif preprocess == "none":
        dense_w, dense_b = weights, bias
    else:
        raise ValueError(preprocess)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D(name="mean_colour")(inputs)
    outputs = keras.layers.Dense(weights.shape[1], name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("predictions").set_weights([dense_w.astype("float32"), dense_b.astype("float32")])
    model.save(path)
    return str(path)


def reference_probabilities(images, weights, bias) -> np.ndarray:
    """softmax(mean colour @ weights + bias), float64, from uint8 images (n, h, w, 3)."""
    mean = np.asarray(images, dtype=np.float64).reshape(len(images), -1, 3).mean(axis=1)
    z = mean @ np.asarray(weights, np.float64) + np.asarray(bias, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def textured(colour, seed, size=SIZE, spread=20) -> np.ndarray:
    """A ``size`` x ``size`` image: ``colour`` plus uniform noise in [-spread, spread]."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-spread, spread + 1, size=(size, size, 3))
    return np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)


def write_pngs(folder: Path, named: dict[str, np.ndarray]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, image in named.items():
        paths[name] = str(folder / f"{name}.png")
        Image.fromarray(image).save(paths[name])
    return paths


def read_table(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# 6 classes; class 0 is "red" (R - G - B), 1 "green", 2 "blue"; 3..5 weak and distinct (no ties).
WEIGHTS = np.array(
    [
        [0.05, -0.05, -0.05, 0.004, -0.003, 0.001],
        [-0.05, 0.05, -0.05, -0.002, 0.003, 0.002],
        [-0.05, -0.05, 0.05, 0.001, 0.002, -0.004],
    ]
)
BIAS = np.array([2.0, 2.0, 2.0, 0.3, 0.1, -0.2])

COLOURS = {
    "red": (230, 30, 30),
    "dark_red": (140, 40, 40),
    "brown": (150, 70, 60),  # p(class 0) about 0.83: kept at 0.5, not at 0.9
    "pinkish": (200, 120, 110),
    "green": (30, 220, 40),
    "blue": (40, 40, 210),
    "grey": (128, 128, 128),
}


COSTLY_FIXTURES = {"selection_case": "keras"}  # its tests get the marker keras (tests/conftest.py)


@pytest.fixture
def selection_case(tmp_path):
    images = {name: textured(colour, seed) for seed, (name, colour) in enumerate(COLOURS.items())}
    paths = write_pngs(tmp_path / "src", images)
    model = colour_model(tmp_path / "colour.keras", WEIGHTS, BIAS)
    expected = dict(zip(images, reference_probabilities(np.stack(list(images.values())), WEIGHTS, BIAS)))
    return paths, model, expected


# ---------------------------------------------------------------------------------------------
# numeric core and class names
# ---------------------------------------------------------------------------------------------


def test_top_k_matches_sorting_and_breaks_ties_by_index():
    p = np.array([[0.1, 0.3, 0.3, 0.2, 0.05, 0.05], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]])
    idx, val = top_k(p, 5)
    assert idx.tolist() == [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4]]
    np.testing.assert_array_equal(val, np.take_along_axis(p, idx, axis=1))
    assert top_k(p[:, :3], 5)[0].shape == (2, 3)  # fewer classes than k
    np.testing.assert_allclose(class_mass(p, (1, 2)), [0.6, 0.2])


LABELS = ["tabby", "tiger_cat", "German_short-haired_pointer", "lynx", "class_0004"]


@pytest.mark.parametrize(
    "given, expected",
    [
        ("tabby", (0,)),
        (1, (1,)),
        ("3", (3,)),
        ("1-3", (1, 2, 3)),
        ("lynx, tabby", (0, 3)),
        (["0-1", "tiger_cat", 4], (0, 1, 4)),
        ("German_short-haired_pointer", (2,)),  # a name with '-' is a name, not a range
    ],
)
def test_class_indices(given, expected):
    assert class_indices(given, LABELS) == expected


@pytest.mark.parametrize(
    "given, match",
    [
        ("tabbby", r"unknown class 'tabbby'.*close matches: \['tabby'\]"),
        (7, "out of range 0..4"),
        ("3-1", "reversed"),
        ("2-9", "out of range"),
        ("", "names no class"),
        (2.5, "class name, index or range"),
    ],
)
def test_class_indices_errors(given, match):
    with pytest.raises(ValueError, match=match):
        class_indices(given, LABELS)


def test_model_spec_defaults():
    assert model_spec().weights == "imagenet"
    assert model_spec("m.keras").weights == "file"
    assert model_spec("VGG16", "random", seed=3).seed == 3


# ---------------------------------------------------------------------------------------------
# select_images
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_prob", [0.5, 0.9])
def test_selection_keeps_exactly_the_images_above_threshold(tmp_path, selection_case, min_prob):
    paths, model, expected = selection_case
    want = {name for name, p in expected.items() if p[0] >= min_prob}
    assert all(abs(p[0] - min_prob) > 1e-3 for p in expected.values())  # no borderline case
    assert {"red", "dark_red"} <= want < set(paths)  # the threshold really separates the set
    assert ("brown" in want) == (min_prob < 0.8)

    out = tmp_path / "out"
    result = select_images(str(tmp_path / "src"), out, model_spec(model), classes=0, min_prob=min_prob, batch_size=4)

    assert result.kept == sorted(str(out / f"{name}.png") for name in want)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.png" for n in want] + [SELECTION_TABLE])
    for name in want:  # copies keep the bytes
        assert (out / f"{name}.png").read_bytes() == Path(paths[name]).read_bytes()

    rows = read_table(result.table)
    assert [r["path"] for r in rows] == sorted(paths.values())  # every image, kept or not
    for row in rows:
        name = Path(row["path"]).stem
        p = expected[name]
        assert row["status"] == ("kept" if name in want else "below_threshold")
        assert row["file"] == (f"{name}.png" if name in want else "")
        assert float(row["probability"]) == pytest.approx(p[0], abs=1e-5)
        order = np.argsort(-p, kind="stable")[:5]
        assert [int(row[f"top{r}_index"]) for r in range(1, 6)] == order.tolist()
        assert [row[f"top{r}_label"] for r in range(1, 6)] == [f"class_{c:04d}" for c in order]
        np.testing.assert_allclose([float(row[f"top{r}_prob"]) for r in range(1, 6)], p[order], atol=1e-5)
    assert "top6_index" not in rows[0]
    assert result.n_images == len(paths) and result.n_skipped == 0


def test_selection_of_a_class_group_by_name_with_undecodable_file(tmp_path, selection_case):
    paths, model, expected = selection_case
    (tmp_path / "src" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = select_images([*paths.values(), str(tmp_path / "src" / "broken.png")], out, model_spec(model),
                           classes="class_0000,class_0002", min_prob=0.5)
    want = {name for name, p in expected.items() if p[0] + p[2] >= 0.5}
    assert {Path(p).stem for p in result.kept} == want
    assert result.classes == (0, 2)
    rows = {Path(r["path"]).name: r for r in read_table(result.table)}
    assert rows["broken.png"]["status"] == "not_decoded" and "not an image" in rows["broken.png"]["reason"]
    assert result.n_skipped == 1 and result.n_images == len(paths) + 1


def test_selection_refuses_bad_input(tmp_path, selection_case):
    paths, model, _ = selection_case
    spec = model_spec(model)
    with pytest.raises(ValueError, match=r"min_prob must be a probability in \[0, 1\]"):
        select_images(paths["red"], tmp_path / "o", spec, classes=0, min_prob=1.5)
    with pytest.raises(ValueError, match="out of range 0..5"):
        select_images(paths["red"], tmp_path / "o", spec, classes=6)
    twin = tmp_path / "other" / "red.png"
    twin.parent.mkdir()
    twin.write_bytes(Path(paths["red"]).read_bytes())
    with pytest.raises(ValueError, match=r"share the file name\(s\) \['red.png'\]"):
        select_images([paths["red"], str(twin)], tmp_path / "o", spec, classes=0)
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_select_cli(tmp_path, selection_case, capsys):
    paths, model, expected = selection_case
    n_kept = sum(p[0] >= 0.5 for p in expected.values())
    code = main(["images", "select", str(tmp_path / "src"), str(tmp_path / "out"), "--model", model, "--class", "0", "--min-prob", "0.5"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"kept {n_kept} of {len(paths)} image(s)" in out and SELECTION_TABLE in out
    assert len(read_table(tmp_path / "out" / SELECTION_TABLE)) == len(paths)

    code = main(["images", "select", str(tmp_path / "src"), str(tmp_path / "out2"), "--model", model, "--class", "tabby"])
    assert code == 2
    assert "unknown class 'tabby'" in capsys.readouterr().err


def test_select_generator_in_a_job_spec(tmp_path, selection_case):
    from daskdiff.stimuli.registry import generate
    from daskdiff.pipeline.spec_file import parse_spec

    paths, model, expected = selection_case
    spec = parse_spec({"name": "t", "image_sets": {"reds": {"generate": "select", "source": "src", "classes": 0, "min_prob": 0.5, "model": model}}})
    params = spec.image_sets["reds"].params()
    written = generate("select", tmp_path / "reds", **{**params, "source": str(tmp_path / "src")})
    assert {Path(p).stem for p in written} == {n for n, p in expected.items() if p[0] >= 0.5}
