"""Bad job specs as a user writes them, refused in one line by ``daskdiff run`` (and ``--dry-run``).

Each test writes a spec file and runs the command line (:func:`daskdiff.cli.main`): the error is one
line on stderr naming the file or key, the fix, no traceback, exit status 2, and nothing is
written. Also: what a spec can make big is counted in the estimate or bounded by validation.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import yaml
from distributed import Client

from daskdiff import cli
from daskdiff.pipeline.budget import BudgetError, Limits
from daskdiff.pipeline.machine import machine_memory, usable_cores
from daskdiff.pipeline.job import dry_run, plan_job, run_job
from daskdiff.pipeline.spec_file import MAX_SPEC_BYTES, load_spec, parse_spec
from daskdiff.stimuli.registry import generate

from conftest import write_images
from jobtools import local_cluster, tiny_spec


def _spec(tmp_path, model_path: str = "tiny.keras", **sections) -> dict:
    folder = tmp_path / "imgs"
    if not folder.exists():
        write_images(folder, 3, seed=0)
    data = {"name": "t", "model": {"name": model_path, "weights": "file"}, "image_sets": {"a": str(folder)},
            "output": str(tmp_path / "out")}
    data.update(sections)
    return data


def _refused(tmp_path, capsys, text: str | bytes, *args: str, name: str = "job.yaml") -> str:
    """Run ``daskdiff run FILE *args`` on a spec written as ``text``; the one line it printed on
    stderr, after checking the exit status (2), that there is no traceback, and that nothing was written."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert cli.main(["run", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    assert lines[0].startswith("daskdiff run: error: ")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written (no output folder, no generated images)
    return lines[0]


# -- issue 26 item 3: a key given twice ------------------------------------------------------

DUPLICATES = [  # line 1 is the tiny model
    ("name: t\nimage_sets:\n  cats: {cats}\n  dogs: {dogs}\n  cats: {dogs}\n", "'cats'", 4, 6),
    ("name: t\nimage_sets: {{cats: {cats}}}\nanalysis: {{repeats: 7}}\noutput: out\nanalysis: {{n_units: [3]}}\n", "'analysis'", 4, 6),
    ("name: t\nimage_sets: {{cats: {cats}}}\nanalysis:\n  repeats: 7\n  repeats: 8\n", "'repeats'", 5, 6),
]


@pytest.mark.parametrize("text, key, first, second", DUPLICATES)
@pytest.mark.parametrize("dry", [True, False])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, capsys, tiny_model_path, text, key, first, second, dry):
    cats, dogs = (str(Path(write_images(tmp_path / n, 3, seed=i)[0]).parent) for i, n in enumerate(("cats", "dogs")))
    model = f"model: {{name: '{tiny_model_path}', weights: file}}\n"
    line = _refused(tmp_path, capsys, model + text.format(cats=cats, dogs=dogs), *(["--dry-run"] if dry else []))
    assert f"key {key} is given twice in one mapping (lines {first} and {second})" in line
    assert "job.yaml" in line and "remove one" in line


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    data = _spec(tmp_path, analysis={"seed": 1}, model={"name": "tiny.keras", "weights": "file", "seed": 2})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    spec, _ = load_spec(path)
    assert (spec.analysis.seed, spec.model.seed) == (1, 2)


# -- item 10: a spec of megabytes; messages quote at most 200 characters of a value ---------

@pytest.mark.timeout(30)
def test_a_spec_of_megabytes_is_refused_before_it_is_parsed(tmp_path, capsys):
    names = "".join(f"  - layer_{i:07d}\n" for i in range(5 * 2**20 // 16))
    text = f"name: t\nimage_sets: {{a: imgs}}\nmodel:\n  layers:\n{names}"
    assert len(text) > 5 * 2**20
    line = _refused(tmp_path, capsys, text, "--dry-run")
    assert f"is larger than {MAX_SPEC_BYTES // 1024} KiB" in line and "job.yaml" in line
    assert len(line) < 500


def test_errors_about_a_long_list_of_layers_quote_at_most_200_characters(tmp_path, capsys, tiny_model_path):
    layers = [f"no_such_layer_{i:06d}" for i in range(6000)]  # ~150 KB: under the size bound, so it is parsed
    line = _refused(tmp_path, capsys, yaml.safe_dump(_spec(tmp_path, model={"name": tiny_model_path, "weights": "file", "layers": layers})),
                    "--dry-run")
    assert "unknown layer(s) ['no_such_layer_000000'" in line and "characters)" in line
    assert len(line) < 2000


def test_a_spec_of_thousands_of_wrong_values_lists_twenty(tmp_path, capsys):
    data = _spec(tmp_path, model={"name": "tiny.keras", "weights": "file", "layers": list(range(20_000))})
    capsys.readouterr()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "(20000 problem(s))" in err and "model.layers.19:" in err and "model.layers.20:" not in err
    assert "... and 19980 more" in err and len(err) < 5000


# -- item 13: the spec file itself --------------------------------------------------------------

def test_a_latin1_spec_is_one_line_saying_to_save_it_as_utf8(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "name: caf\u00e9\nimage_sets: {a: imgs}\n".encode("latin-1"), "--dry-run")
    assert "job.yaml is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8" in line


def test_a_utf8_spec_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes("\ufeff".encode() + yaml.safe_dump(_spec(tmp_path, name="caf\u00e9")).encode())
    assert load_spec(path)[0].name == "caf\u00e9"


def test_a_spec_path_that_is_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "job.yaml").mkdir()
    capsys.readouterr()
    assert cli.main(["run", str(tmp_path / "job.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "job.yaml is a folder, not a YAML file" in err


@pytest.mark.timeout(30)
def test_a_spec_path_that_is_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    import os

    os.mkfifo(tmp_path / "job.yaml")
    capsys.readouterr()
    assert cli.main(["run", str(tmp_path / "job.yaml"), "--dry-run"]) == 2
    assert "job.yaml is not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["abc", "-4GB", "0"])
def test_a_bad_memory_limit_is_refused_by_the_dry_run(tmp_path, capsys, tiny_model_path, value):
    line = _refused(tmp_path, capsys, yaml.safe_dump(_spec(tmp_path, tiny_model_path, cluster={"memory_limit": value})), "--dry-run")
    assert "cluster.memory_limit: must be 'auto', a positive size" in line and repr(value) in line


@pytest.mark.parametrize("value", ["auto", "4GB", "500MiB", "4e9", 0.25, "0.5", 8_000_000_000])
def test_memory_limits_dask_takes_are_accepted(tmp_path, value):
    assert parse_spec(_spec(tmp_path, cluster={"memory_limit": value})).cluster.memory_limit == value


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_workers_must_be_a_positive_integer(tmp_path, capsys, value):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path)))
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(path), "--workers", value])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"daskdiff run: error: argument --workers: must be a whole number of at least 1, "
                                            f"e.g. --workers 2; got '{value}'")
    assert not (tmp_path / "out").exists()


STRICT = [
    ({"analysis": {"repeats": "5"}}, "analysis.repeats: Input should be a valid integer (got '5')"),
    ({"analysis": {"repeats": True}}, "analysis.repeats: Input should be a valid integer (got True)"),
    ({"analysis": {"per_unit": "yes"}}, "analysis.per_unit: Input should be a valid boolean (got 'yes')"),
    ({"analysis": {"per_unit": 1}}, "analysis.per_unit: Input should be a valid boolean (got 1)"),
    ({"analysis": {"repeats": 2.5}}, "analysis.repeats: Input should be a valid integer (got 2.5)"),
    ({"extraction": {"batch_size": "16"}}, "extraction.batch_size: Input should be a valid integer (got '16')"),
    ({"model": {"name": "tiny.keras", "weights": "file", "seed": False}}, "model.seed: Input should be a valid integer (got False)"),
    ({"analysis": {"spectral": {"state_length": "1"}}}, "analysis.spectral.state_length: Input should be a valid number (got '1')"),
    ({"image_sets": {"a": {"path": "imgs", "fps": "30"}}}, "image_sets.a.path.fps: Input should be a valid number (got '30')"),
    ({"cluster": {"n_workers": "1"}}, "cluster.n_workers: Input should be a valid integer (got '1')"),
    ({"image_sets": {"g": {"generate": "noise", "count": "5"}}}, "generator 'noise': count: Input should be a valid integer; got '5'"),
    ({"image_sets": {"g": {"generate": "adversarial", "source": "imgs", "keep_failures": "yes"}}},
     "generator 'adversarial': keep_failures: Input should be a valid boolean; got 'yes'"),
]


@pytest.mark.parametrize("section, message", STRICT)
def test_values_of_the_wrong_type_are_refused_not_coerced(tmp_path, capsys, tiny_model_path, section, message):
    if "model" in section:
        section = {"model": {**section["model"], "name": tiny_model_path}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, tiny_model_path, **section)))
    capsys.readouterr()
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and not (tmp_path / "out").exists()


def test_whole_numbers_and_integers_where_floats_go_are_still_valid(tmp_path):
    spec = parse_spec(_spec(tmp_path, analysis={"repeats": 1.0e9, "spectral": {"state_length": 1}},
                            image_sets={"a": {"path": "imgs", "fps": 30}}))
    assert spec.analysis.repeats == 10**9 and type(spec.analysis.repeats) is int
    assert spec.analysis.spectral.state_length == 1.0 and spec.image_sets["a"].fps == 30.0


def test_every_shipped_job_spec_is_valid():
    jobs = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))
    assert jobs
    for job in jobs:
        load_spec(job)


# -- item 12: bounds -------------------------------------------------------------------------------

@pytest.mark.parametrize("dry", [True, False])
def test_a_generated_set_too_large_to_decode_is_refused_before_anything(tmp_path, capsys, tiny_model_path, dry):
    text = yaml.safe_dump(_spec(tmp_path, tiny_model_path, image_sets={"g": {"generate": "noise", "size": 60000}}))
    line = _refused(tmp_path, capsys, text, *(["--dry-run"] if dry else []))
    assert "image_sets.g" in line and "size: 60000 makes images of 3,600,000,000 pixels" in line and "give size: 224" in line


def test_generated_images_are_counted_in_the_estimate(tmp_path, tiny_model_path):
    spec = parse_spec(_spec(tmp_path, tiny_model_path, image_sets={"g": {"generate": "noise", "size": 64, "count": 5}}))
    plan = dry_run(spec, Path("."), echo=lambda *a: None)
    written = generate("noise", tmp_path / "real", size=64, count=5)
    real = sum(Path(p).stat().st_size for p in written)
    assert real <= plan.estimate.generated_bytes <= 1.2 * real
    assert plan.estimate.disk_bytes >= plan.estimate.generated_bytes + plan.estimate.shard_bytes


def test_generated_images_over_the_free_disk_are_refused_by_the_dry_run(tmp_path, capsys, tiny_model_path):
    text = yaml.safe_dump(_spec(tmp_path, tiny_model_path, image_sets={"g": {"generate": "noise", "size": 9000, "count": 1_000_000}}))
    line_out = _refused_multi(tmp_path, capsys, text, "--dry-run")
    assert "generated images 2.43e+05 GB" in line_out or "generated images 243 TB" in line_out
    assert "a smaller size or count of the generated image_sets" in line_out


def _refused_multi(tmp_path, capsys, text: str, *args: str) -> str:
    """As :func:`_refused` for a refusal of the estimate (a few lines: each bound exceeded)."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert cli.main(["run", str(path), *args]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "too large to run as specified" in captured.err
    assert sorted(tmp_path.rglob("*")) == before
    return captured.out + captured.err


def test_too_many_decoders_is_refused(tmp_path, capsys, tiny_model_path):
    line = _refused(tmp_path, capsys, yaml.safe_dump(_spec(tmp_path, tiny_model_path, extraction={"decoders": 40})), "--dry-run")
    assert "extraction.decoders: must be 'auto' or a whole number from 1 to 16" in line and "(got 40)" in line


@pytest.mark.parametrize("cluster, args, key", [({"n_workers": 1_000_000}, [], "cluster.n_workers"),
                                                ({}, ["--workers", "1000000"], "--workers")])
def test_more_local_workers_than_cores_is_refused_by_the_dry_run(tmp_path, capsys, tiny_model_path, cluster, args, key):
    text = yaml.safe_dump(_spec(tmp_path, tiny_model_path, cluster=cluster))
    line = _refused(tmp_path, capsys, text, "--dry-run", *args)
    cores = usable_cores()
    assert f"{key} 1000000 with 1 thread(s) each is 1000000 threads, more than the {cores} core(s)" in line
    assert f"give {key} {cores} or fewer" in line


def test_local_workers_whose_memory_limits_exceed_the_machine_are_refused(tmp_path, capsys, tiny_model_path):
    limit = str(int(machine_memory() * 0.75))
    text = yaml.safe_dump(_spec(tmp_path, tiny_model_path, cluster={"n_workers": 2, "memory_limit": limit}))
    line = _refused(tmp_path, capsys, text, "--dry-run")
    assert f"cluster.n_workers 2 workers with cluster.memory_limit {limit}" in line and "more than this machine's" in line


@pytest.mark.cluster
def test_a_worker_starts_no_more_decoders_than_its_cores(tmp_path, tiny_model_path):
    sets = {"a": str(Path(write_images(tmp_path / "a", 4, seed=1)[0]).parent)}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction={"batch_size": 2, "shard_size": 4, "decoders": 16})
    with local_cluster(1) as cluster, \
            Client(cluster) as client:
        run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
        children = client.run(lambda: [p.cmdline() for p in psutil.Process().children()])
    (decoders,) = children.values()
    pool = [c for c in decoders if any("spawn_main" in part for part in c)]  # the spawned decoding processes
    assert 1 <= len(pool) <= usable_cores()


HUGE = [  # every number a spec can make huge: refused by validation (one line) or by the estimate (before anything runs)
    ({"analysis": {"repeats": 10**30}}, "lower bound"),
    ({"image_sets": {"g": {"generate": "noise", "count": 10**30}}}, "tasks"),
    ({"image_sets": {"g": {"generate": "gratings", "n_frames": 10**12}}}, "tasks"),
    ({"image_sets": {"g": {"generate": "gratings", "duration": 1.0e308, "fps": 1000}}}, "duration=1e+308 s at fps=1000 is more frames than can be counted"),
    ({"image_sets": {"g": {"generate": "skimage_gif", "loops": 10**9}}}, "tasks"),
    ({"extraction": {"retries": 10**9}}, "extraction.retries: Input should be less than or equal to 10"),
    ({"cluster": {"start_timeout": 10**9}}, "cluster.start_timeout: Input should be less than or equal to 86400"),
    ({"cluster": {"kind": "slurm", "jobs": 10**6, "slurm": {"cores": 1, "memory": "1GB"}}}, "cluster.jobs: Input should be less than or equal to 1000"),
    ({"image_sets": {"g": {"generate": "adversarial", "source": "imgs", "iters": 10**9}}}, "generator 'adversarial': iters: Input should be less than or equal to 1000"),
]


@pytest.mark.parametrize("sections, message", HUGE)
def test_a_huge_number_is_refused_by_the_dry_run_never_an_internal_error(tmp_path, capsys, tiny_model_path, sections, message):
    text = yaml.safe_dump(_spec(tmp_path, tiny_model_path, **sections))
    path = tmp_path / "job.yaml"
    path.write_text(text)
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert message in captured.out + captured.err
    assert sorted(tmp_path.rglob("*")) == before


def test_extraction_batches_over_a_workers_memory_are_refused(tmp_path, tiny_model_path):
    spec = parse_spec(_spec(tmp_path, tiny_model_path, image_sets={"g": {"generate": "noise", "count": 600, "size": 8}},
                            extraction={"batch_size": 600, "shard_size": 600}, analysis={"repeats": 1, "n_units": [1]}))
    limits = Limits(None, tmp_path, 0, None, 40 * 10**6, "a test's 40 MB", 1)
    with pytest.raises(BudgetError, match=r"one extraction task's batches need ~\S+ MB at least .* lower extraction.batch_size") as err:
        plan_job(spec, Path("."), dry_run=True, limits=limits, echo=lambda *a: None)
    assert "one differentiation task (" not in str(err.value)  # the batches, not the differentiation, are over
    small = parse_spec(_spec(tmp_path, tiny_model_path, image_sets={"g": {"generate": "noise", "count": 600, "size": 8}},
                             extraction={"batch_size": 16, "shard_size": 600}, analysis={"repeats": 1, "n_units": [1]}))
    # force: 40 MB is also below a worker's baseline (pipeline.health), which this test is not about
    assert plan_job(small, Path("."), dry_run=True, limits=limits, force=True, echo=lambda *a: None).estimate.extraction_memory < 40 * 10**6
