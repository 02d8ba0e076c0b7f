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


# issue 22, item 9: the small CLI gaps a new user meets


def test_version_prints_the_package_version(capsys):
    import daskdiff

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"daskdiff {daskdiff.__version__}\n"


@pytest.fixture
def results_folder(tmp_path):
    """An output folder holding a results file (the layout of a job's, made by hand)."""
    from test_plot import synthetic_results

    folder = tmp_path / "output"
    folder.mkdir()
    synthetic_results(tmp_path / "images").to_netcdf(folder / "differentiation.nc")
    return folder


FIGURE_SIGNATURES = {"pdf": b"%PDF-", "svg": b"<?xml", "png": b"\x89PNG\r\n\x1a\n"}


@pytest.mark.parametrize("suffix", ["pdf", "svg", "png", "PDF"])
def test_plot_writes_the_format_its_extension_names(results_folder, tmp_path, capsys, suffix):
    figure = tmp_path / f"fig.{suffix}"
    assert cli.main(["plot", str(results_folder / "differentiation.nc"), "-o", str(figure)]) == 0
    assert capsys.readouterr().out == f"{figure}\n"
    data = figure.read_bytes()
    assert data.startswith(FIGURE_SIGNATURES[suffix.lower()])
    if suffix == "svg":
        assert b"<svg" in data[:2000]


def test_plot_refuses_an_extension_it_cannot_tell_in_one_line(results_folder, tmp_path, capsys):
    assert cli.main(["plot", str(results_folder), "-o", str(tmp_path / "fig.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("daskdiff plot: error: cannot tell the figure format of ")
    assert "name a .png, .pdf, .svg file, e.g. -o differentiation.pdf" in err
    assert not (tmp_path / "fig.jpg").exists()


def test_plot_and_info_find_the_results_file_in_an_output_folder(results_folder, tmp_path, capsys):
    assert cli.main(["plot", str(results_folder), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes().startswith(FIGURE_SIGNATURES["png"])
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["plot", str(empty), "-o", str(tmp_path / "none.png")], ["info", str(empty)]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err == (f"daskdiff {command[0]}: error: folder {empty} holds no differentiation.nc; give the output folder of "
                       "a finished job or its differentiation.nc\n")
    assert not (tmp_path / "none.png").exists()


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width


@pytest.mark.parametrize(
    "argv, says",
    [
        (["run"], ["run a job spec (YAML) on a Dask cluster", "--workers WORKERS number of LocalCluster worker processes"]),
        (["init"], ["write a commented job spec for your image folders", "the spec file to write (never overwritten) (default: job.yaml)"]),
        (["plot"], ["differentiation by layer, one line per image set", "its extension gives the format: .png, .pdf, .svg"]),
        (["images", "noise"], ["lossless white-noise PNGs", "how many images (default: 43)", "(default: uniform)"]),
        (["images", "select"], ["--min-prob MIN_PROB keep images with p(class) >= this (default: 0.5)", "(default: VGG16)"]),
        (["images", "gratings"], ["Write a drifting grating as a movie", "--fps FPS Frames per second. (default: 30.0)",
                                  "--waveform {sine,square}"]),
    ],
)
def test_subcommand_help_describes_it_and_gives_defaults(capsys, argv, says):
    text = _help(capsys, *argv)
    for phrase in says:
        assert phrase in text, (phrase, text)
    assert "(default: None)" not in text and "(default: False)" not in text


def test_images_lists_and_runs_the_movie_generators(tmp_path, capsys):
    import json

    from daskdiff.stimuli.registry import GENERATORS, MOVIE_KINDS

    listed = _help(capsys, "images")
    assert all(f" {kind} " in listed for kind in GENERATORS) and MOVIE_KINDS <= set(GENERATORS)
    grating = tmp_path / "grating"
    assert cli.main(["images", "gratings", str(grating), "--n-frames", "4", "--size", "16", "--fps", "8"]) == 0
    assert capsys.readouterr().out == f"wrote 4 image(s) to {grating}\n"
    record = json.loads((grating / "movie.json").read_text())
    assert (record["fps"], record["n_frames"], record["parameters"]["size"]) == (8.0, 4, 16)
    scrambled = tmp_path / "scrambled"
    assert cli.main(["images", "scrambled", str(grating), str(scrambled), "--seed", "3"]) == 0
    assert json.loads((scrambled / "movie.json").read_text())["n_frames"] == 4
    with pytest.raises(SystemExit) as refused:  # the choices are the generator's Literal
        cli.main(["images", "gratings", str(tmp_path / "bad"), "--waveform", "triangle"])
    assert refused.value.code == 2 and "invalid choice: 'triangle' (choose from 'sine', 'square')" in capsys.readouterr().err
