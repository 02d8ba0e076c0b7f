"""Resume never reuses another model's work (issue 26, item 1).

A model file rewritten at the same path, or the same spec re-run with ``--weights OTHER``, must
re-extract every shard and recompute every partial result, and say why; the results are those of
a clean run on the new model in a fresh folder. A model file that changes while a job runs is
refused rather than silently used. Real files on disk, real jobs on a LocalCluster of worker
processes (a long-lived worker: it must not serve the old model from its cache).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client

from daskdiff.errors import JobError
from daskdiff.model.build import ModelChangedError, ModelSpec, build_model, cached_model, model_fingerprint, with_fingerprint
from daskdiff.pipeline.job import run_job

from conftest import build_tiny_model, write_images
from jobtools import assert_same_results, local_cluster, tiny_spec

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    with local_cluster(1) as cluster, Client(cluster) as c:
        yield c


def _run(spec, client, lines=None, **kw):
    echo = (lambda *a: lines.append(" ".join(map(str, a)))) if lines is not None else (lambda *a: None)
    return xr.load_dataset(run_job(spec, Path("."), client=client, progress=False, echo=echo, **kw).path)


def _sets(tmp_path):
    write_images(tmp_path / "a", 7, seed=41)
    write_images(tmp_path / "b", 5, seed=42, kind="smooth")
    return {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}


def _n_shards(out: Path) -> int:
    return len(list(out.glob("activations/*/shard-*.nc")))


def _shard_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("*/**/*")) if p.suffix in (".nc", ".npz")}


@pytest.mark.keras
def test_model_file_rewritten_in_place_is_extracted_again(tmp_path, client):
    model = tmp_path / "model.keras"
    build_tiny_model(seed=5).save(model)
    sets = _sets(tmp_path)
    spec = tiny_spec(str(model), sets, tmp_path / "out")
    old = _run(spec, client)

    build_tiny_model(seed=6).save(model)  # retrained, saved over the same path
    lines: list[str] = []
    new = _run(spec, client, lines)
    fresh = _run(tiny_spec(str(model), sets, tmp_path / "fresh"), client)

    assert_same_results(new, fresh)
    assert not np.array_equal(new["differentiation"].values, old["differentiation"].values)
    said = [line for line in lines if "extracted again because it was extracted with another model" in line]
    assert len(said) == _n_shards(tmp_path / "out") == 4, lines  # every shard (4 images each: 2 of set a, 2 of set b)
    assert all(str(model) in line for line in said), said  # the weights it was extracted with: the file, and its old hash


def test_weights_override_is_extracted_again_and_then_reused(tmp_path, tiny_model_path, client):
    first, other = tmp_path / "first.weights.h5", tmp_path / "other.weights.h5"
    build_tiny_model(seed=7).save_weights(first)
    build_tiny_model(seed=8).save_weights(other)
    sets = _sets(tmp_path)
    model = {"name": tiny_model_path, "weights": str(first)}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", model=model)
    old = _run(spec, client)

    lines: list[str] = []
    new = _run(spec, client, lines, weights=str(other))  # `daskdiff run spec.yaml --weights other.weights.h5`
    fresh = _run(tiny_spec(tiny_model_path, sets, tmp_path / "fresh", model={**model, "weights": str(other)}), client)
    assert_same_results(new, fresh)
    assert not np.array_equal(new["differentiation"].values, old["differentiation"].values)
    said = [line for line in lines if "extracted with another model" in line]
    assert len(said) == _n_shards(tmp_path / "out") and all(str(first) in line for line in said), lines

    # the same override again: everything is reused, nothing is rewritten
    before = _shard_mtimes(tmp_path / "out")
    again_lines: list[str] = []
    again = _run(spec, client, again_lines, weights=str(other))
    assert _shard_mtimes(tmp_path / "out") == before
    assert not any("extracted again" in line for line in again_lines), again_lines
    assert_same_results(again, fresh)


@pytest.mark.keras
def test_model_file_changed_during_the_run_is_refused(tmp_path, client):
    model = tmp_path / "model.keras"
    build_tiny_model(seed=9).save(model)
    write_images(tmp_path / "a", 4, seed=43)
    spec = tiny_spec(str(model), {"a": str(tmp_path / "a")}, tmp_path / "out", extraction__retries=0)

    def echo(line):  # the plan is made (the model fingerprinted); the user saves a retrained model now
        if line.startswith("planned "):
            build_tiny_model(seed=10).save(model)

    with pytest.raises(JobError, match=r"ModelChangedError: the model changed during the run: the content of '.*model\.keras' is not "
                                       r"what the job started with \(model fingerprint [0-9a-f]{16}, now [0-9a-f]{16}\); re-run"):
        run_job(spec, Path("."), client=client, progress=False, echo=echo)
    assert not list((tmp_path / "out" / "activations" / "a").glob("shard-*.nc"))  # nothing extracted with the wrong model


@pytest.mark.keras
def test_a_long_lived_process_builds_a_rewritten_model_again(tmp_path):
    """A notebook (or a worker) asks for the same spec before and after the file is rewritten."""
    import keras

    path = tmp_path / "model.keras"
    build_tiny_model(seed=11).save(path)
    spec = ModelSpec(name=str(path), weights="file")
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    before = np.asarray(cached_model(spec).predict_on_batch(x))
    build_tiny_model(seed=12).save(path)
    after = np.asarray(cached_model(spec).predict_on_batch(x))
    direct = keras.saving.load_model(path, compile=False)
    direct.layers[-1].activation = keras.activations.linear  # logits, as daskdiff builds it
    np.testing.assert_allclose(after, np.asarray(direct.predict_on_batch(x)), rtol=1e-6)
    assert not np.allclose(before, after)


def test_fingerprint_is_the_content_not_the_path(tmp_path, tiny_model_path):
    copy = tmp_path / "elsewhere.keras"
    shutil.copyfile(tiny_model_path, copy)
    same = model_fingerprint(ModelSpec(name=str(copy), weights="file"))
    assert same == model_fingerprint(ModelSpec(name=tiny_model_path, weights="file"))
    assert same != model_fingerprint(ModelSpec(name=str(copy), weights="file", preprocess="tf"))
    assert model_fingerprint(ModelSpec(weights="random", seed=1)) != model_fingerprint(ModelSpec(weights="random", seed=2))
    spec = with_fingerprint(ModelSpec(name=str(copy), weights="file"))
    build_tiny_model(seed=13).save(copy)
    with pytest.raises(ModelChangedError, match=rf"the content of '{copy}' is not what the job started with"):
        build_model(spec)


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(tmp_path):
    """Within one long-lived process (a worker, a notebook), the memoised hash of a weights file
    is not fooled by a rewrite that keeps its size and restores its modification time (``cp -p``)."""
    import hashlib
    import os

    from daskdiff.io.fingerprints import file_sha256

    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"a" * 4096)
    first = file_sha256(path)
    st = os.stat(path)
    path.write_bytes(b"b" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert first == hashlib.sha256(b"a" * 4096).hexdigest()
    assert file_sha256(path) == hashlib.sha256(b"b" * 4096).hexdigest()
