"""Bad input that damages or exhausts: corrupt partials, link duplicates, YAML bombs, spec holes, SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from distributed import Client

from daskdiff.io.image_sets import DuplicateImagesWarning, ImageSetError, check_min_images, resolve_image_set
from daskdiff.io.layout import PARTIAL_DIR, RESULTS_FILE
from daskdiff.io.partials import load_partial, reuse_partial, write_partial
from daskdiff.pipeline.job import run_job
from daskdiff.errors import JobError
from daskdiff.pipeline.spec import SpecError
from daskdiff.pipeline.spec_file import load_spec, parse_spec

from conftest import write_images
from jobtools import local_cluster, tiny_spec


def _spec_data(tmp_path, **extra):
    folder = tmp_path / "imgs"
    if not folder.exists():
        write_images(folder, 3, seed=0)
    data = {"name": "t", "model": {"name": "tiny.keras", "weights": "file"}, "image_sets": {"a": str(folder)}}
    data.update(extra)
    return data


# 1. corrupt partial results ----------------------------------------------------------------

def _results(path):
    with xr.open_dataset(path) as ds:
        return {k: ds[k].values.copy() for k in ds.data_vars}


@pytest.mark.cluster
def test_corrupt_partials_are_recomputed(tmp_path, tiny_model_path):
    sets = {"noisy": str(Path(write_images(tmp_path / "noisy", 7, seed=1)[0]).parent),
            "smooth": str(Path(write_images(tmp_path / "smooth", 6, seed=2, kind="smooth")[0]).parent)}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out")
    with local_cluster(1) as cluster, Client(cluster) as client:
        run = lambda: run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)  # noqa: E731
        clean = _results(run().path)
        partials = sorted((tmp_path / "out" / PARTIAL_DIR).glob("*.npz"))
        good = {p: load_partial(p) for p in partials[:3]}
        truncated, flipped, other_shape = partials[:3]
        data = truncated.read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        data = bytearray(flipped.read_bytes())
        data[len(data) // 2] ^= 0x10  # inside the stored arrays: the zip CRC no longer matches
        flipped.write_bytes(bytes(data))
        write_partial(other_shape, {k: v[:1] if v.ndim else v for k, v in good[other_shape].items()})
        (tmp_path / "out" / RESULTS_FILE).unlink()
        again = _results(run().path)
        # a truncated job.json: named, with what to do, and nothing else in the folder touched
        job = tmp_path / "out" / "job.json"
        record = job.read_text()
        job.write_text(record[: len(record) // 2])
        before = sorted((tmp_path / "out").rglob("*"))
        with pytest.raises(JobError, match=rf"^{job} is unreadable \(.*line \d+ column \d+.*\); delete it to start this output folder afresh"):
            run()
        assert sorted((tmp_path / "out").rglob("*")) == before
    assert clean.keys() == again.keys()
    for key in clean:
        np.testing.assert_array_equal(again[key], clean[key])  # bit-identical (NaN where NaN)
    for p, arrays in good.items():  # each damaged file was replaced by the sound one
        reread = load_partial(p)
        assert reread.keys() == arrays.keys()
        for k in arrays:
            np.testing.assert_array_equal(reread[k], arrays[k])


def test_reuse_partial_names_and_removes_a_corrupt_file(tmp_path, caplog):
    path = tmp_path / "a--units--conv1.npz"
    write_partial(path, {"differentiation": np.zeros((2, 3))})
    path.write_bytes(path.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="daskdiff.io.partials"):
        arrays, warning = reuse_partial(path, {"differentiation": (2, 3)})
    assert arrays is None and warning.startswith(f"partial result {path} is corrupt: cannot be read")
    assert str(path) in caplog.text and "corrupt" in caplog.text
    assert not path.exists()
    write_partial(path, {"differentiation": np.zeros((2, 4))})
    with caplog.at_level(logging.WARNING, logger="daskdiff.io.partials"):
        assert reuse_partial(path, {"differentiation": (2, 3)})[0] is None
    assert "shape (2, 4), expected (2, 3)" in caplog.text
    write_partial(path, {"differentiation": np.arange(6.0).reshape(2, 3)})
    arrays, warning = reuse_partial(path, {"differentiation": (2, None)})
    np.testing.assert_array_equal(arrays["differentiation"], np.arange(6.0).reshape(2, 3))
    assert warning is None


# 2. duplicate images through links -----------------------------------------------------------

def test_symlink_loop_is_deduplicated_by_real_path(tmp_path):
    real = write_images(tmp_path / "set", 3, seed=0)
    os.symlink(tmp_path / "set", tmp_path / "set" / "loop")  # set/loop/loop/... under **
    expanded = [p for p in __import__("glob").glob(str(tmp_path / "set" / "**" / "*.png"), recursive=True)]
    assert len(expanded) > 3  # the loop multiplies the paths
    with pytest.warns(DuplicateImagesWarning, match=rf"image set 'x': dropped {len(expanded) - 3} duplicate path\(s\) of the same file\(s\)"):
        got = resolve_image_set(str(tmp_path / "set" / "**" / "*.png"), name="x")
    assert got == sorted(real)


def test_list_file_naming_a_file_twice(tmp_path):
    real = write_images(tmp_path / "set", 2, seed=0)
    listing = tmp_path / "list.txt"
    os.symlink(real[0], tmp_path / "set" / "link.png")
    listing.write_text(f"{real[0]}\nset/link.png\n{real[1]}\n")
    with pytest.warns(DuplicateImagesWarning, match="dropped 1 duplicate"):
        assert resolve_image_set(listing) == real


def test_min_images(tmp_path):
    write_images(tmp_path / "one", 1, seed=0)
    with pytest.raises(ImageSetError, match=r"image set 'one': resolves to 1 file\(s\).*at least 2"):
        check_min_images(resolve_image_set(tmp_path / "one"), "one")
    two = write_images(tmp_path / "two", 2, seed=0)
    assert check_min_images(resolve_image_set(tmp_path / "two"), "two") == two


# 3. YAML bombs and bounded messages ---------------------------------------------------------

BOMB = "\n".join(["name: bomb", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
                 + ["image_sets: {x: *a9}", "cluster: {kind: slurm, slurm: {extra: *a9}}"])


def test_alias_bomb_refused_before_anything_is_built(tmp_path, monkeypatch):
    """Refused at its first anchor, while the YAML is composed: not one value is constructed and the
    spec never reaches validation, so nothing expands (work counted, not timed)."""
    import daskdiff.pipeline.spec_file

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1000
    constructed = []
    construct = yaml.SafeLoader.construct_object  # the spec's loader inherits it

    def counted(self, node, deep=False):
        constructed.append(node)
        return construct(self, node, deep)

    monkeypatch.setattr(yaml.SafeLoader, "construct_object", counted)
    monkeypatch.setattr(daskdiff.pipeline.spec_file, "parse_spec", lambda *a, **k: pytest.fail("the bomb was loaded and reached validation"))
    with pytest.raises(SpecError, match=r"bomb\.yaml.*YAML anchors/aliases \(&, \*\) are not allowed in job specs.*line 2"):
        load_spec(path)
    assert constructed == []


def test_alias_inside_slurm_refused(tmp_path):
    data = _spec_data(tmp_path)
    text = yaml.safe_dump(data) + "x: &x [1, 2]\ncluster: {kind: slurm, slurm: {job_extra_directives: *x}}\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="anchors/aliases"):
        load_spec(path)


def test_deep_or_huge_values_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(yaml.safe_dump(_spec_data(tmp_path)) + "cluster: {kind: slurm, slurm: {x: " + "[" * 5000 + "]" * 5000 + "}}\n")
    with pytest.raises(SpecError, match="deep.yaml.*nested deeper than"):
        load_spec(path)
    deep: list = []
    for _ in range(10):
        deep = [deep]
    with pytest.raises(SpecError, match="cluster.slurm: is nested deeper"):
        parse_spec(_spec_data(tmp_path, cluster={"kind": "slurm", "slurm": {"x": deep}}))
    with pytest.raises(SpecError, match="cluster.slurm: holds .* characters") as info:
        parse_spec(_spec_data(tmp_path, cluster={"kind": "slurm", "slurm": {"job_name": "x" * 10_000_000}}))
    assert len(str(info.value)) < 2000


def test_error_messages_quote_bounded_input(tmp_path):
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_data(tmp_path, analysis={"metric": "m" * 10_000_000}))
    assert "analysis.metric" in str(info.value) and "(10000002 characters)" in str(info.value)  # repr: 2 quotes
    assert len(str(info.value)) < 2000


# 4. small spec holes ------------------------------------------------------------------------

def test_empty_layers_refused(tmp_path):
    with pytest.raises(SpecError, match="model.layers: is an empty list.*omit model.layers"):
        parse_spec({**_spec_data(tmp_path), "model": {"name": "tiny.keras", "weights": "file", "layers": []}})


@pytest.mark.parametrize("name", ["", "x" * 10_000_000, "two\nlines"])
def test_bad_name_refused(tmp_path, name):
    with pytest.raises(SpecError, match="name: must be 1 to 200 printable characters") as info:
        parse_spec(_spec_data(tmp_path, name=name))
    assert len(str(info.value)) < 2000


def test_generated_set_of_one_refused(tmp_path):
    with pytest.raises(SpecError, match=r"image_sets.g.*count: 1 image\(s\).*at least 2"):
        parse_spec(_spec_data(tmp_path, image_sets={"g": {"generate": "noise", "count": 1}}))
    assert parse_spec(_spec_data(tmp_path, image_sets={"g": {"generate": "noise", "count": 2}}))


# 5. SIGTERM ---------------------------------------------------------------------------------

@pytest.mark.cluster
def test_sigterm_then_resume(tmp_path, tiny_model_path):
    write_images(tmp_path / "noisy", 30, seed=1)
    write_images(tmp_path / "smooth", 30, seed=2, kind="smooth")
    data = {"name": "sig", "model": {"name": tiny_model_path, "weights": "file"},
            "image_sets": {"noisy": "noisy", "smooth": "smooth"},
            "analysis": {"n_units": [5], "repeats": 3, "substrates": ["units"]},
            "extraction": {"batch_size": 1, "shard_size": 1}, "output": "out"}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    cmd = [str(Path(sys.executable).parent / "daskdiff"), "run", str(job), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out" / "activations").glob("*/shard-*.nc")):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before extracting"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); re-run the same command to resume" in err
    assert not (tmp_path / "out" / RESULTS_FILE).exists()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming:" in again.stdout
    assert (tmp_path / "out" / RESULTS_FILE).exists()


def test_a_one_file_set_is_refused_before_any_cluster(tmp_path, monkeypatch):
    import daskdiff.pipeline.cluster
    from daskdiff.pipeline.job import run_job
    from daskdiff.pipeline.spec_file import parse_spec

    monkeypatch.setattr(daskdiff.pipeline.cluster, "connect", lambda *a, **k: pytest.fail("a cluster was started"))
    write_images(tmp_path / "one", 1, seed=0)
    write_images(tmp_path / "two", 2, seed=1)
    spec = parse_spec({"name": "x", "image_sets": {"two": str(tmp_path / "two"), "one": str(tmp_path / "one")},
                       "output": str(tmp_path / "out")}, "test")
    with pytest.raises(ImageSetError, match=r"image set 'one': resolves to 1 file\(s\)"):
        run_job(spec, tmp_path, progress=False, echo=lambda *a: None)
    assert not (tmp_path / "out" / "activations").exists()


@pytest.mark.keras
def test_the_job_says_which_link_duplicates_it_dropped(tmp_path):
    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.spec_file import parse_spec

    folder = tmp_path / "imgs"
    write_images(folder, 3, seed=0)
    (folder / "again.png").symlink_to(folder / "img-000.png")
    lines = []
    spec = parse_spec({"name": "x", "model": {"name": "VGG16", "weights": "random"}, "image_sets": {"a": str(folder)},
                       "output": str(tmp_path / "out")}, "test")
    plan = plan_job(spec, tmp_path, echo=lines.append)
    assert len(plan.sets["a"]) == 3
    assert any("image set 'a': dropped 1 duplicate path(s)" in line for line in lines), lines


def test_store_none_with_handoff_disk_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(SpecError, match=r"extraction.store: none writes no units.*handoff: disk has nothing to read; set handoff: auto"):
        parse_spec(_spec_data(tmp_path, extraction={"store": "none", "handoff": "disk"}))
    assert parse_spec(_spec_data(tmp_path, extraction={"store": "none"})).extraction.store == "none"  # the default handoff gives way
