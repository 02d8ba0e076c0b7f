"""daskdiff.stimuli.adversarial: PGD adversarial images, checked on the saved PNGs, on models the tests control.

The test models' logits are an affine function of the image's mean colour (see
``test_select.colour_model``), so the decision on any image is recomputed here in numpy from
the PNG's pixels, independently of Keras and of the package.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from daskdiff.stimuli.adversarial import ADVERSARIAL_TABLE, attack_images, gradient_function, PGD, projected_gradient_descent
from daskdiff.stimuli.select import model_spec
from daskdiff.cli import main
from daskdiff.io.images import load_image
from daskdiff.model.build import APPLICATIONS, ModelSpec
from daskdiff.model.preprocess import preprocess, preprocess_tensor
from daskdiff.pipeline.spec import SpecError
from daskdiff.pipeline.spec_file import load_spec, parse_spec

from test_select import SIZE, colour_model, reference_probabilities, textured, write_pngs

REPO = Path(__file__).resolve().parents[1]

# Classes 0 ("tabby") and 1 ("tiger cat") form the avoided group; 2 is "other", 3 never wins.
# z0 = 0.4 (R - G);  z1 = 0.4 (R - G) - 1 + (B - 128);  z2 = 0;  z3 = -3  (mean colour R, G, B).
# Away from class 0 alone, B rises and the image becomes class 1; away from {0, 1}, it becomes 2.
WEIGHTS = np.array([[0.4, 0.4, 0.0, 0.0], [-0.4, -0.4, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
BIAS = np.array([0.0, -1.0 - 128.0, 0.0, -3.0])

CATS = {  # mean colour R - G = 10, B = 128: p(0) + p(1) > 0.98
    "cat_a": (138, 128, 128),
    "cat_b": (140, 130, 128),
    "cat_c": (139, 129, 127),
}
NOT_A_CAT = {"dog": (128, 138, 128)}  # R - G = -10: already class 2


def read_table(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


COSTLY_FIXTURES = {"case": "keras"}  # its tests get the marker keras (tests/conftest.py)


@pytest.fixture(params=["none", "caffe"])
def case(request, tmp_path):
    """Source PNGs, a saved colour model (with the given preprocessing) and its ModelSpec."""
    images = {name: textured(colour, seed) for seed, (name, colour) in enumerate({**CATS, **NOT_A_CAT}.items())}
    paths = write_pngs(tmp_path / "src", images)
    model = colour_model(tmp_path / "colour.keras", WEIGHTS, BIAS, preprocess=request.param)
    return paths, model_spec(model, preprocess=request.param), images


# ---------------------------------------------------------------------------------------------
# differentiable preprocessing
# ---------------------------------------------------------------------------------------------


@pytest.mark.keras
@pytest.mark.parametrize(
    "spec",
    [ModelSpec(name=name) for name in APPLICATIONS]
    + [ModelSpec(name="m.keras", weights="file", preprocess=mode) for mode in ("caffe", "tf", "torch", "none")],
    ids=lambda s: s.preprocess or s.name,
)
def test_preprocess_tensor_equals_preprocess_and_is_differentiable(spec):
    """On the running Keras backend, through its gradient function (tests/test_backends.py runs
    this file under each installed backend)."""
    import keras
    from keras import ops

    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 7, 5, 3), dtype=np.uint8)
    y = ops.convert_to_numpy(preprocess_tensor(ops.convert_to_tensor(pixels.astype(np.float32)), spec))
    expected = preprocess(pixels, spec)
    if keras.backend.backend() == "jax":  # XLA divides by a constant as a multiplication by its inverse
        np.testing.assert_allclose(y, expected, rtol=0, atol=4 * np.spacing(np.abs(expected).max()))
    else:
        np.testing.assert_array_equal(y, expected)
    weights = np.arange(1, 4, dtype=np.float32)
    gradient = gradient_function()(lambda x: ops.multiply(preprocess_tensor(x, spec), weights), pixels.astype(np.float32))
    assert gradient.shape == pixels.shape and np.all(np.isfinite(gradient)) and np.any(gradient != 0)


@pytest.mark.keras
def test_caffe_preprocessing_is_bgr_minus_mean_with_permuted_gradient():
    """VGG16's mode written out independently: BGR order, ImageNet mean subtracted, no scaling."""
    from keras import ops

    pixels = np.random.default_rng(1).uniform(0, 255, size=(4, 6, 6, 3)).astype(np.float32)
    spec = ModelSpec(name="VGG16")
    expected = pixels[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    y = ops.convert_to_numpy(preprocess_tensor(ops.convert_to_tensor(pixels), spec))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y, preprocess(pixels, spec))
    weights = np.array([1.0, 2.0, 3.0], dtype=np.float32)  # on B, G, R
    gradient = gradient_function()(lambda x: ops.multiply(preprocess_tensor(x, spec), weights), pixels)
    np.testing.assert_array_equal(gradient, np.broadcast_to([3.0, 2.0, 1.0], pixels.shape))  # on R, G, B


# ---------------------------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------------------------


def test_attack_flips_the_cat_group_within_eps_checked_on_reloaded_png(tmp_path, case):
    paths, spec, images = case
    out = tmp_path / "adv"
    report = attack_images(str(tmp_path / "src"), out, spec, eps=8, step=1, iters=10, avoid="0-1")

    rows = {Path(r["path"]).stem: r for r in read_table(report.table)}
    assert sorted(rows) == sorted(images)
    assert report.written == sorted(str(out / f"{name}.png") for name in images)
    for name, row in rows.items():
        png = read_png(out / row["file"])
        source = load_image(paths[name], (SIZE, SIZE))
        distance = int(np.abs(png.astype(int) - source.astype(int)).max())
        assert distance == int(row["linf"]) <= 8
        p_png = reference_probabilities(png[None], WEIGHTS, BIAS)[0]
        p_src = reference_probabilities(source[None], WEIGHTS, BIAS)[0]
        assert int(row["top1_after_index"]) == int(np.argmax(p_png))
        assert float(row["prob_after"]) == pytest.approx(p_png[0] + p_png[1], abs=1e-4)
        assert float(row["prob_before"]) == pytest.approx(p_src[0] + p_src[1], abs=1e-4)
        assert row["status"] == "success" and row["written"] == "True"
        assert int(row["top1_after_index"]) == 2 and row["top1_after_label"] == "class_0002"
    for name in CATS:
        assert float(rows[name]["prob_before"]) > 0.9 and rows[name]["clean_success"] == "False"
        assert float(rows[name]["prob_after"]) < 0.25  # from > 0.9
        assert rows[name]["linf"] == "8"  # the colour model needs the whole budget
    assert rows["dog"]["clean_success"] == "True"
    assert report.success_rate == 1.0
    text = report.details()
    assert "success rate 100.0% (4 of 4" in text and "1 already so before the attack" in text
    assert "max L-inf 8 <= eps 8" in text


def test_avoiding_only_tabby_turns_cats_into_tiger_cats(tmp_path, case):
    """The reason the default avoids the whole group: away from class 0 alone, class 1 wins."""
    paths, spec, _ = case
    cats = [paths[name] for name in CATS]
    alone = attack_images(cats, tmp_path / "alone", spec, eps=8, avoid=0)
    group = attack_images(cats, tmp_path / "group", spec, eps=8, avoid=[0, 1])
    assert [r["top1_after_index"] for r in alone.rows] == [1, 1, 1]
    assert [r["top1_after_index"] for r in group.rows] == [2, 2, 2]
    assert alone.success_rate == group.success_rate == 1.0


def test_too_small_eps_reports_failure(tmp_path, case):
    paths, spec, _ = case
    cats = [paths[name] for name in CATS]
    for eps in (0, 1):
        report = attack_images(cats, tmp_path / f"eps{eps}", spec, eps=eps, iters=10, avoid="0-1")
        assert report.success_rate == 0.0 and report.n_success == 0
        for row in read_table(report.table):
            assert row["status"] == "failure" and row["written"] == "True"
            assert int(row["linf"]) <= eps
            png = read_png(tmp_path / f"eps{eps}" / row["file"])  # a failure is still written
            assert int(np.argmax(reference_probabilities(png[None], WEIGHTS, BIAS)[0])) in (0, 1)
        text = report.details()
        assert "success rate 0.0% (0 of 3" in text and "FAILURE" in text and "3 failure(s), written" in text


def test_failures_can_be_left_out(tmp_path, case):
    paths, spec, _ = case
    report = attack_images([paths["cat_a"], paths["dog"]], tmp_path / "adv", spec, eps=1, avoid="0-1", keep_failures=False)
    assert [r["status"] for r in report.rows] == ["failure", "success"]
    assert report.written == [str(tmp_path / "adv" / "dog.png")]
    assert sorted(p.name for p in (tmp_path / "adv").iterdir()) == [ADVERSARIAL_TABLE, "dog.png"]
    assert "not written" in report.details()


def test_targeted_attack(tmp_path, case):
    paths, spec, _ = case
    report = attack_images([paths["cat_a"]], tmp_path / "adv", spec, eps=8, target="class_0002")
    (row,) = report.rows
    assert report.pgd.target == 2 and report.pgd.avoid is None
    assert row["status"] == "success" and row["top1_after_index"] == 2
    assert row["prob_after"] > row["prob_before"]  # p(target) rose


def test_uint8_rounding_with_fractional_step_stays_within_eps(case):
    paths, spec, images = case
    clean = np.stack([images[name] for name in CATS])
    adversarial = projected_gradient_descent(clean, spec, PGD(eps=3, step=0.7, iters=6, avoid=(0, 1)))
    assert adversarial.dtype == np.uint8
    assert np.abs(adversarial.astype(int) - clean.astype(int)).max() <= 3


PROBABILITY_ATOL = 4 * np.spacing(np.float32(255)) * float(np.abs(WEIGHTS).sum(axis=0).max())
"""How far a probability of the table may move when the batch composition changes (shards of 32
images against shards of 1): the forward pass averages pixels of at most 255 in float32, whose
rounding depends on the batch (a few units in the last place of 255); a logit moves by at most
the largest column sum of |WEIGHTS| times that, and a softmax probability, or a sum of them, by
no more than the largest change of a logit. (Measured: 1.5e-9, on a machine where the two differ.)"""


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Two attack tables equal: every column exactly, but the output file's name and the
    probabilities, which agree to :data:`PROBABILITY_ATOL`."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        floats = [k for k in b if k.endswith("prob") or k.startswith("prob_")]
        assert {k: v for k, v in a.items() if k not in floats + ["file"]} == {k: v for k, v in b.items() if k not in floats + ["file"]}
        np.testing.assert_allclose([a[k] for k in floats], [b[k] for k in floats], rtol=0, atol=PROBABILITY_ATOL, err_msg=str(floats))


@pytest.mark.cluster
def test_sharded_on_a_dask_cluster_equals_local(tmp_path, case, capsys):
    from distributed import Client, LocalCluster

    paths, spec, _ = case
    local = attack_images(str(tmp_path / "src"), tmp_path / "local", spec, avoid="0-1", shard_size=32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            remote = attack_images(str(tmp_path / "src"), tmp_path / "remote", spec, avoid="0-1", shard_size=1, client=client)
        argv = ["images", "adversarial", str(tmp_path / "src"), str(tmp_path / "cli"), "--model", spec.name,
                "--preprocess", spec.preprocess, "--avoid", "0-1", "--scheduler", cluster.scheduler_address]
        assert main(argv) == 0
    assert "success rate 100.0% (4 of 4" in capsys.readouterr().out
    assert_same_rows(remote.rows, local.rows)
    assert [Path(p).name for p in local.written] == [Path(p).name for p in remote.written]
    for a, b in zip(local.written, remote.written):
        assert Path(a).read_bytes() == Path(b).read_bytes()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"avoid": "0-1", "eps": -1}, "eps must be a whole number"),
        ({"avoid": "0-1", "eps": 2.5}, "eps must be a whole number"),
        ({"avoid": "0-1", "step": 0}, "step must be a positive number"),
        ({"avoid": "0-1", "iters": -2}, "iters must be an integer"),
        ({"avoid": "0-1", "target": 2}, "not both"),
        ({"target": "0-1"}, "target must be one class"),
        ({"avoid": "281-285"}, "out of range 0..3"),
        ({}, "default avoid='281-285'.*1000-class.*4 classes"),
    ],
)
def test_attack_refuses_bad_parameters(tmp_path, case, kwargs, match):
    paths, spec, _ = case
    with pytest.raises(ValueError, match=match):
        attack_images([paths["cat_a"]], tmp_path / "adv", spec, **kwargs)
    assert not (tmp_path / "adv").exists()


def test_attack_refuses_to_overwrite_its_sources(tmp_path, case):
    paths, spec, _ = case
    with pytest.raises(ValueError, match="would overwrite source image"):
        attack_images(str(tmp_path / "src"), tmp_path / "src", spec, avoid="0-1")


@pytest.mark.keras
def test_other_backends_get_a_clear_error(monkeypatch):
    import keras

    from daskdiff.stimuli import adversarial as attack

    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")  # Keras backends without gradients
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        attack.gradient_function()


# ---------------------------------------------------------------------------------------------
# CLI and job specs
# ---------------------------------------------------------------------------------------------


def test_adversarial_cli(tmp_path, case, capsys):
    paths, spec, _ = case
    argv = ["images", "adversarial", str(tmp_path / "src"), str(tmp_path / "adv"), "--model", spec.name,
            "--preprocess", spec.preprocess, "--avoid", "0-1", "--eps", "8", "--iters", "10"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "success rate 100.0% (4 of 4" in out
    assert "cat_a.png: success, L-inf 8" in out
    assert len(read_table(tmp_path / "adv" / ADVERSARIAL_TABLE)) == 4

    assert main([*argv[:3], str(tmp_path / "adv1"), *argv[4:-4], "--eps", "1"]) == 0
    assert "success rate 25.0% (1 of 4" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # argparse: --avoid and --target together
        main([*argv, "--target", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_adversarial_set_in_a_job_spec_validates_without_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # 'cats' does not exist here
    entry = {"generate": "adversarial", "source": "../data/cats", "avoid": "281-285", "eps": 8, "step": 1, "iters": 10,
             "model": "VGG16", "weights": "imagenet"}
    spec = parse_spec({"name": "adv", "image_sets": {"adversarial_cats": entry}})
    assert spec.image_sets["adversarial_cats"].params()["eps"] == 8
    with pytest.raises(SpecError, match=r"unknown parameter\(s\) \['epsilon'\].*'eps'"):
        parse_spec({"name": "adv", "image_sets": {"a": {"generate": "adversarial", "source": "c", "epsilon": 8}}})


def test_adversarial_generator_runs_through_generate(tmp_path, case):
    from daskdiff.stimuli.registry import generate

    paths, spec, _ = case
    written = generate("adversarial", tmp_path / "adv", source=str(tmp_path / "src"), avoid="0-1",
                       model=spec.name, preprocess=spec.preprocess)
    assert [Path(p).name for p in written] == sorted(f"{n}.png" for n in paths)


def test_adversarial_set_is_generated_when_a_job_is_planned(tmp_path, case, monkeypatch):
    """The job resolves ``source`` against the spec's folder and writes the set under output/."""
    from daskdiff.pipeline.job import plan_job

    paths, spec, _ = case
    monkeypatch.chdir(tmp_path / "src")  # not the spec's folder: './src' only exists from tmp_path
    entry = {"generate": "adversarial", "source": "./src", "avoid": "0-1", "model": spec.name, "preprocess": spec.preprocess}
    job = parse_spec({"name": "adv", "model": {"name": spec.name, "weights": "file"}, "image_sets": {"adv": entry}, "output": "out"})
    plan = plan_job(job, tmp_path, echo=lambda *a: None)
    folder = tmp_path / "out" / "images" / "adv"
    assert plan.sets["adv"] == sorted(str(folder / f"{n}.png") for n in paths)
    assert {r["status"] for r in read_table(folder / ADVERSARIAL_TABLE)} == {"success"}


def test_seed_reproduction_spec_validates_without_touching_its_folders(monkeypatch):
    """The seeds' experiment spec is valid; validating it never looks at the (absent) data."""
    import builtins
    import os

    path = REPO / "jobs" / "seed-reproduction.yaml"
    data = yaml.safe_load(path.read_text())
    touched = []

    def spy(function):
        def wrapper(*args, **kwargs):
            if any(("random_images" in str(a)) or ("tabby_cats" in str(a)) for a in args):
                touched.append((function.__name__, args))
            return function(*args, **kwargs)

        return wrapper

    for module, name in [(os, "scandir"), (os, "listdir"), (os, "stat"), (os.path, "exists"), (os.path, "isdir"),
                         (os.path, "isfile"), (os.path, "lexists"), (builtins, "open")]:
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    spec = parse_spec(data, str(path))
    monkeypatch.undo()
    assert touched == []

    assert spec.model.name == "VGG16" and spec.model.weights == "imagenet" and spec.model.fallback_weights is None
    sets = spec.image_sets
    assert list(sets) == ["random_images", "tabby_cats", "white_noise", "adversarial_cats"]
    assert sets["random_images"].path.endswith("random_images") and sets["tabby_cats"].path.endswith("tabby_cats")
    assert sets["white_noise"].generate == "noise"
    assert sets["white_noise"].params() == {"count": 43, "size": 224, "seed": 0}
    adversarial = sets["adversarial_cats"]
    assert adversarial.generate == "adversarial"
    assert adversarial.params()["source"] == sets["tabby_cats"].path
    assert {k: adversarial.params()[k] for k in ("avoid", "eps", "iters")} == {"avoid": "281-285", "eps": 8, "iters": 10}
    a = spec.analysis
    assert (a.substrates, a.n_units, a.repeats, a.normalize, a.metric, a.per_unit, a.seed) == (
        ["units", "filter_mean"], [200, 10000, "all"], 100, "zscore", "euclidean", True, 0)
    assert (spec.extraction.shard_size, spec.extraction.batch_size) == (32, 4)
    assert spec.output == "../output/seed-reproduction" and spec.cluster.kind == "local"
    assert not (path.parent / sets["tabby_cats"].path).exists()  # validation did not need it
    assert load_spec(path)[1] == path.parent
