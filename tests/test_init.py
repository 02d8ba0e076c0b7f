"""``daskdiff init``: a commented job spec for the user's image folders that loads and passes ``--dry-run`` (issue 22).

Run as a user would, through ``daskdiff.cli.main`` on real folders; the spec's defaults are
compared with the pydantic models' own (a spec that names only the image sets), so a template
that copied a default by hand, or dropped one, fails here.
"""

from __future__ import annotations

import pytest
import yaml

from daskdiff.cli import main
from daskdiff.pipeline.spec import JobSpec
from daskdiff.pipeline.spec_file import load_spec, parse_spec

from conftest import write_images


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project folder, the working directory, with two folders of images and one odd name."""
    for name, seed in (("cats", 1), ("dogs", 2), ("my photos", 3), ("2020", 4)):
        write_images(tmp_path / "data" / name, 3, seed=seed)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_writes_a_spec_with_the_models_defaults_and_one_set_per_folder(project, capsys):
    assert main(["init", "data/cats", "-o", "specs/spec.yaml"]) == 2
    assert capsys.readouterr().err == ("daskdiff init: error: cannot write specs/spec.yaml: No such file or directory; give a path "
                                       "in an existing folder you may write to\n")
    (project / "specs").mkdir()
    assert main(["init", "data/cats", "data/dogs", "data/my photos", "data/2020", "-o", "specs/spec.yaml"]) == 0
    assert capsys.readouterr().out == "wrote specs/spec.yaml (4 image set(s)); edit it, then: daskdiff run specs/spec.yaml --dry-run\n"
    spec, base = load_spec(project / "specs" / "spec.yaml")
    sets = {"cats": "../data/cats", "dogs": "../data/dogs", "my_photos": "../data/my photos", "set_2020": "../data/2020"}
    assert base == project / "specs" and {k: v.path for k, v in spec.image_sets.items()} == sets
    defaults = parse_spec({"name": "spec", "image_sets": sets}, "defaults")
    assert spec == defaults and spec.result_digest() == defaults.result_digest()
    text = (project / "specs" / "spec.yaml").read_text()
    assert text.startswith("# A daskdiff job spec, written by `daskdiff init`. Every key, its default and its choices: docs/spec.md.")
    lines = text.splitlines()
    for section in ("model", "analysis", "cluster"):
        at = lines.index(f"{section}:")
        assert lines[at - 1].startswith("# ") and len(lines[at - 1]) > 20, section  # a one-line comment above each
        keys = {line.split(":")[0].strip() for line in lines[at + 1:] if line.startswith("  ") and not line.startswith("    ")}
        assert keys >= set(JobSpec.model_fields[section].annotation.model_fields), section  # every key, written out
    assert "  normalize: zscore  # one of none, mean, zscore, max" in lines


def test_init_never_overwrites_a_file(project, capsys):
    (project / "job.yaml").write_text("name: mine\n")
    assert main(["init", "data/cats"]) == 2
    err = capsys.readouterr().err
    assert err == "daskdiff init: error: job.yaml exists and is not overwritten; use another name (-o other.yaml) or remove it\n"
    assert (project / "job.yaml").read_text() == "name: mine\n"


def test_init_refuses_a_folder_that_is_not_one(project, capsys):
    assert main(["init", "data/cats", "data/horses"]) == 2
    assert capsys.readouterr().err == "daskdiff init: error: data/horses is not a folder; give folders of images, one image set each\n"
    assert not (project / "job.yaml").exists()


def test_init_without_folders_writes_a_spec_that_loads(project, capsys):
    assert main(["init"]) == 0
    spec, _ = load_spec(project / "job.yaml")
    assert list(spec.image_sets) == ["example"] and spec.image_sets["example"].generate == "noise"


def test_the_written_spec_passes_a_dry_run(project, tiny_model_path, capsys):
    assert main(["init", "data/cats", "data/dogs", "--model", tiny_model_path, "--weights", "file"]) == 0
    capsys.readouterr()
    assert yaml.safe_load((project / "job.yaml").read_text())["model"]["weights"] == "file"
    assert main(["run", "job.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing is written and no cluster starts" in out
    assert "image set 'cats': 3 image(s)" in out and "image set 'dogs': 3 image(s)" in out
    assert not (project / "output").exists()
