"""The CLI: a daskdiff error is one line (exit 2); anything else is a bug, shown with its traceback (exit 1)."""

from __future__ import annotations

import pytest

from daskdiff import cli


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nothing.nc"
    assert cli.main(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"daskdiff info: error: results file {missing} does not exist; a job writes it as <output>/differentiation.nc"


def test_a_file_that_is_not_results_is_named(tmp_path, capsys):
    (tmp_path / "x.nc").write_bytes(b"not netcdf")
    assert cli.main(["plot", str(tmp_path / "x.nc"), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x.nc'} is not a readable NetCDF file" in err and "Traceback" not in err


@pytest.mark.parametrize("bug", [KeyError("layer"), ValueError("internal"), FileNotFoundError("internal")])
def test_an_internal_error_shows_its_traceback_and_asks_for_a_report(monkeypatch, tmp_path, capsys, bug):
    def broken(path):
        raise bug

    monkeypatch.setattr("daskdiff.info.describe_results", broken)
    assert cli.main(["info", str(tmp_path / "r.nc")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(bug).__name__}" in err
    assert "a bug in daskdiff, not in your input); please report it" in err


def test_a_job_error_caused_by_a_bug_shows_the_bug(monkeypatch, tmp_path, capsys):
    from daskdiff.errors import JobError

    def failing(path):
        try:
            {}["missing"]
        except KeyError as err:
            raise JobError("differentiation failed for task x after 2 retries: KeyError: 'missing'") from err

    monkeypatch.setattr("daskdiff.info.describe_results", failing)
    assert cli.main(["info", "r.nc"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and 'KeyError' in err and err.rstrip().endswith("after 2 retries: KeyError: 'missing'")


# issue 22, item 2: sampling no layer can meet is a user's mistake, refused in one line while planning


@pytest.mark.parametrize("mode", ["--dry-run", "run"])
@pytest.mark.parametrize(
    "sampling, n_units, says",
    [
        ("equal", 2, "each of the 4 channels of layer 'conv1', so n_units must be at least 4, got 2: give analysis.n_units of at "
                     "least 4 (or all), or analysis.sampling: random"),
        ("channel=9999", 5, "sampling 'channel=9999': layer 'conv1' has channels 0..3: give analysis.sampling 'channel=K' with "
                            "K from 0 to 3, or analysis.sampling: random"),
    ],
)
def test_sampling_no_layer_can_meet_is_one_line_before_any_cluster(tmp_path, tiny_model_path, capsys, monkeypatch,
                                                                   sampling, n_units, says, mode):
    """The tiny model's first layer has 4 channels: ``equal`` needs 4 units, ``channel=K`` a K below 4."""
    import yaml
    from distributed.deploy.spec import SpecCluster

    from conftest import write_images

    started = []

    def no_cluster(self, *args, **kwargs):  # where every Dask cluster is made (LocalCluster too)
        started.append(type(self).__name__)
        raise RuntimeError("a cluster was started")

    monkeypatch.setattr(SpecCluster, "__init__", no_cluster)
    for name, seed in (("cats", 1), ("dogs", 2)):
        write_images(tmp_path / name, 3, seed=seed)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "mine", "model": {"name": tiny_model_path, "weights": "file"},
        "image_sets": {"cats": "cats", "dogs": "dogs"},
        "analysis": {"sampling": sampling, "n_units": [n_units], "repeats": 2}, "output": "out",
    }))
    assert cli.main(["run", str(job), *([mode] if mode == "--dry-run" else ["--no-progress"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("daskdiff run: error: ") and says in err, err
    assert started == [] and not (tmp_path / "out").exists()
