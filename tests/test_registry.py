"""The generator registry's records: what each generator plans equals what it writes; its path
parameters made absolute and its input files recorded as ``.generated.json`` records hold them."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daskdiff.stimuli import registry
from daskdiff.stimuli.movie import read_movie_record

GRATING = {"generate": "gratings", "size": 16, "n_frames": 6, "fps": 12}


def _params(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "generate"}


@pytest.mark.parametrize("kind, params", [
    ("noise", {"size": 8}),
    ("noise", {"count": 3, "size": 8}),
    ("photos", {"names": ["coins", "camera"], "size": 8}),
    ("photos", {"size": 8}),
    ("augment", {"source": "coffee", "size": 8}),
    ("gratings", {"size": 16, "duration": 0.5}),
    ("gratings", {"size": 16, "n_frames": 4, "fps": 7}),
    ("photo_movie", {"size": 8, "n_frames": 3}),
    ("skimage_gif", {"size": 8, "loops": 2}),
    ("scrambled", {"source": dict(GRATING), "seed": 1}),
    ("scrambled", {"source": dict(GRATING), "n_frames": 4}),
    ("scrambled", {"source": {"generate": "scrambled", "source": dict(GRATING)}, "n_frames": 20}),
])
def test_planned_count_and_rate_are_what_the_generator_writes(tmp_path, kind, params):
    count, how = registry.planned_count(kind, params)
    rate = registry.planned_fps(kind, params)
    paths = registry.generate(kind, tmp_path, **params)
    assert how == "exact" and count == len(paths)
    if kind in registry.MOVIE_KINDS and rate is not None:
        assert read_movie_record(tmp_path)["fps"] == rate
    assert (rate is None) == (kind not in registry.MOVIE_KINDS or kind == "skimage_gif")


def test_planned_count_of_a_movie_file_and_folder(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((5, 4, 4), np.uint8))
    assert registry.planned_count("movie", {"movie": str(tmp_path / "m.npy"), "fps": 3}) == (5, "exact")
    assert registry.planned_count("movie", {"movie": str(tmp_path / "m.npy"), "n_frames": 2}) == (2, "exact")
    registry.generate("gratings", tmp_path / "g", **_params(GRATING))
    folder = {"movie": str(tmp_path / "g")}
    assert registry.planned_count("movie", folder) == (None, "unknown")  # a folder's frames are not counted
    assert registry.planned_count("movie", dict(folder, n_frames=4)) == (4, "at most")
    assert registry.planned_fps("movie", folder) == 12.0  # its movie.json's rate
    assert registry.planned_fps("scrambled", {"source": str(tmp_path / "g")}) == 12.0
    assert registry.planned_fps("scrambled", {"source": str(tmp_path / "m.npy")}) is None  # a file's own rate: not known before


def test_every_declared_path_and_source_is_a_parameter_of_its_generator():
    for kind, generator in registry.GENERATORS.items():
        parameters = inspect.signature(generator.function).parameters
        assert set(generator.paths) | generator.sources <= set(parameters), kind
    assert registry.MOVIE_KINDS == {"gratings", "photo_movie", "skimage_gif", "scrambled", "movie"}


def test_absolute_params_resolves_declared_paths_only(tmp_path):
    base = tmp_path / "spec"
    home = os.path.expanduser("~")
    cases = [
        ("augment", {"source": "photo.png", "count": 2}, {"source": f"{base}/photo.png", "count": 2}),
        ("augment", {"source": "chelsea"}, {"source": "chelsea"}),  # a bundled photo
        ("augment", {"source": "~/photo.png"}, {"source": f"{home}/photo.png"}),
        ("augment", {"source": "/abs/photo.png"}, {"source": "/abs/photo.png"}),
        ("frames", {"movie": "../clip.gif", "every": 2}, {"movie": f"{base}/../clip.gif", "every": 2}),
        ("select", {"source": "pool", "model": "vgg16", "weights": "imagenet", "classes": 0},
         {"source": f"{base}/pool", "model": "vgg16", "weights": "imagenet", "classes": 0}),
        ("adversarial", {"source": "a/*.png", "model": "m.keras", "weights": "w.weights.h5"},
         {"source": f"{base}/a/*.png", "model": f"{base}/m.keras", "weights": f"{base}/w.weights.h5"}),
        ("select", {"source": "pool", "model": "m.keras", "weights": "file"},
         {"source": f"{base}/pool", "model": f"{base}/m.keras", "weights": "file"}),
        ("photo_movie", {"photo": "coffee", "prefix": "p"}, {"photo": "coffee", "prefix": "p"}),
        ("noise", {"prefix": "x", "kind": "gaussian"}, {"prefix": "x", "kind": "gaussian"}),
        ("scrambled", {"source": "frames", "fps": 5}, {"source": f"{base}/frames", "fps": 5}),
        ("scrambled", {"source": {"generate": "movie", "movie": "clip.gif"}, "seed": 1},
         {"source": {"generate": "movie", "movie": f"{base}/clip.gif"}, "seed": 1}),
        ("scrambled", {"source": {"generate": "scrambled", "source": {"generate": "movie", "movie": "c.gif"}}},
         {"source": {"generate": "scrambled", "source": {"generate": "movie", "movie": f"{base}/c.gif"}}}),
    ]
    for kind, params, expected in cases:
        given = json.loads(json.dumps(params))
        assert registry.absolute_params(kind, params, base) == expected, (kind, params)
        assert params == given  # not changed in place


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _record(paths: list[Path]) -> list[list]:
    return [[str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


def test_generator_inputs_record_what_each_input_file_is(tmp_path):
    """In the JSON form a ``.generated.json`` holds, by dotted parameter name: a model file's
    SHA-256, a select source's images, a movie file's (size, mtime_ns, inode), a folder's files."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(2):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(pool / f"{i}.png")
    (tmp_path / "m.keras").write_bytes(b"a model")
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    frames = tmp_path / "frames"
    (frames / "sub").mkdir(parents=True)
    (frames / "b.png").write_bytes(b"b")
    (frames / "a.png").write_bytes(b"a")

    def inputs(kind, params):
        return json.loads(json.dumps(registry.generator_inputs(kind, registry.absolute_params(kind, params, tmp_path))))

    assert inputs("select", {"source": "pool", "model": "m.keras", "weights": "gone.h5", "classes": 0}) == {
        "source": _record([pool / "0.png", pool / "1.png"]),
        "model": {"sha256": hashlib.sha256(b"a model").hexdigest()},
        "weights": None,  # cannot be read: the generator names it
    }
    assert inputs("adversarial", {"source": "nothing", "model": "vgg16"}) == {"source": None}
    assert inputs("frames", {"movie": "clip.gif"}) == {"movie": _stat(tmp_path / "clip.gif")}
    assert inputs("scrambled", {"source": {"generate": "movie", "movie": "frames", "fps": 2}, "seed": 1}) == {
        "source.movie": _record([frames / "a.png", frames / "b.png"]),  # files only, sorted
    }
    assert inputs("augment", {"source": "chelsea"}) == {}
    assert inputs("noise", {"count": 2}) == {}


def test_planned_count_of_a_model_generator_is_its_source_images(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    source = {"source": str(tmp_path), "model": "vgg16"}
    assert registry.planned_count("select", dict(source, classes=0)) == (3, "at most")  # those of the classes
    assert registry.planned_count("adversarial", source) == (3, "exact")  # failed attacks kept, by default
    assert registry.planned_count("adversarial", dict(source, keep_failures=False)) == (3, "at most")
    assert registry.planned_count("adversarial", {"source": str(tmp_path / "none")}) == (None, "unknown")
