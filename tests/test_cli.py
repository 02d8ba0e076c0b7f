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
