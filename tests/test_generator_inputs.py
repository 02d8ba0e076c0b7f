"""A generator's input file replaced under the same name is noticed (issue 26, item 2).

A generated set is reused only when its generator, its parameters and its input files are what
they were: a movie file (``{path: clip.gif}``, or nested in ``scrambled``'s ``{generate: movie}``
source), an ``augment`` source image, a ``select`` source folder and its model file. Each case:
a job, the file replaced under the same name, the job again; the results equal a clean run in a
fresh folder, and the set was generated again, not reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client
from PIL import Image

from daskdiff.pipeline.job import run_job

from conftest import build_tiny_model, write_images
from jobtools import assert_same_results, local_cluster, tiny_spec

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    with local_cluster(1) as cluster, Client(cluster) as c:
        yield c


def write_gif(path: Path, seed: int, n_frames: int = 8) -> None:
    """An animated GIF of ``n_frames`` random 32 x 32 frames at 10 fps."""
    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _movie_file(tmp_path):
    write_gif(tmp_path / "clip.gif", seed=1)
    return {"path": str(tmp_path / "clip.gif")}, lambda: write_gif(tmp_path / "clip.gif", seed=2)


def _scrambled_movie_file(tmp_path):
    write_gif(tmp_path / "clip.gif", seed=3)
    entry = {"generate": "scrambled", "source": {"generate": "movie", "movie": str(tmp_path / "clip.gif")}, "seed": 1}
    return entry, lambda: write_gif(tmp_path / "clip.gif", seed=4)


def _augment_source(tmp_path):
    photo = write_images(tmp_path / "photo", 1, seed=5, size=(48, 40))[0]
    return ({"generate": "augment", "source": photo, "count": 4, "size": 32},
            lambda: Image.fromarray(np.random.default_rng(6).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photo))


def _select_source(tmp_path):
    paths = write_images(tmp_path / "pool", 5, seed=7)
    other = write_images(tmp_path / "elsewhere", 1, seed=8)[0]
    entry = {"generate": "select", "source": str(tmp_path / "pool"), "classes": "0-4", "min_prob": 0.0,
             "model": str(tmp_path / "classifier.keras")}
    build_tiny_model(seed=0).save(tmp_path / "classifier.keras")
    return entry, lambda: Path(paths[2]).write_bytes(Path(other).read_bytes())


def _select_model(tmp_path):
    """The classifier retrained and saved over the same path: it keeps other images (class 0 is
    the top class of 6 of these 10 images under seed 14, of 4 others under seed 16)."""
    write_images(tmp_path / "pool", 10, seed=61)
    build_tiny_model(seed=14).save(tmp_path / "classifier.keras")
    entry = {"generate": "select", "source": str(tmp_path / "pool"), "classes": "0", "min_prob": 0.5,
             "model": str(tmp_path / "classifier.keras")}
    return entry, lambda: build_tiny_model(seed=16).save(tmp_path / "classifier.keras")


CASES = {"movie_file": _movie_file, "scrambled_nested_movie_file": _scrambled_movie_file, "augment_source": _augment_source,
         "select_source_folder": _select_source, "select_model_file": _select_model}


def _run(spec, client, lines=None):
    echo = (lambda *a: lines.append(" ".join(map(str, a)))) if lines is not None else (lambda *a: None)
    return xr.load_dataset(run_job(spec, Path("."), client=client, progress=False, echo=echo).path)


@pytest.mark.parametrize("case", CASES)
def test_replaced_generator_input_is_generated_again(tmp_path, tiny_model_path, client, case):
    entry, replace = CASES[case](tmp_path)
    sets = {"made": entry, "plain": str(Path(write_images(tmp_path / "plain", 4, seed=9)[0]).parent)}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out")
    old = _run(spec, client)

    replace()
    lines: list[str] = []
    new = _run(spec, client, lines)
    fresh = _run(tiny_spec(tiny_model_path, sets, tmp_path / "fresh"), client)

    assert_same_results(new, fresh)
    assert not np.array_equal(new["differentiation"].sel(image_set="made").values, old["differentiation"].sel(image_set="made").values)
    assert not any("reusing" in line and "'made'" in line for line in lines), lines
    assert any(line.startswith("image set 'made': generated ") for line in lines), lines

    again: list[str] = []  # nothing changed since: reused
    _run(spec, client, again)
    assert any(line.startswith("image set 'made': reusing ") for line in again), again
