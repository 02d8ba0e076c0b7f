"""Issue 22, a newcomer's first hour: mistakes a new user makes in a spec are refused by the dry run
as by the run, in one line naming the key and the fix, before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from daskdiff import cli

RUNS = pytest.mark.keras  # `daskdiff run` imports TensorFlow as it starts (its log lines are filtered)


def _spec(tmp_path, image_sets, **analysis):
    data = {"name": "first-hour", "image_sets": image_sets, "output": "out"}
    if analysis:
        data["analysis"] = analysis
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _gif(path, frames=8, ms=100):
    images = [Image.fromarray(np.full((16, 16, 3), 20 * k, np.uint8)) for k in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms, loop=0)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("daskdiff run: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@RUNS
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_single_still_image_as_a_set_is_refused_naming_the_set(tmp_path, capsys, dry):
    """Item 7: ``image_sets: {a: one.png}`` was taken for a movie file and failed, after the model
    was loaded, asking for ``fps=`` (not the spec's syntax). It is one image: the set is refused at
    once, by the dry run as by the run, with what to give instead; nothing is written."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one.png")
    job = _spec(tmp_path, {"a": "one.png", "b": {"generate": "noise", "count": 3, "size": 16}})
    assert cli.main(["run", str(job), *(["--dry-run"] if dry else []), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "image_sets.a: one.png is one still image, and a set needs at least 2 images" in line
    assert "a glob (./*.png)" in line and "fps" not in line
    assert not (tmp_path / "out").exists()


@RUNS
def test_an_animated_image_file_is_still_a_movie(tmp_path, capsys):
    """The check above looks at the file's frames, not its suffix: an animated GIF is a set of its frames."""
    _gif(tmp_path / "clip.gif")
    job = _spec(tmp_path, {"clip": "clip.gif", "b": {"generate": "noise", "count": 3, "size": 16}})
    assert cli.main(["run", str(job), "--dry-run"]) == 0, capsys.readouterr().err
    assert "image set 'clip': not generated in a dry run" in capsys.readouterr().out


@RUNS
def test_a_window_that_is_no_whole_number_of_frames_is_refused_by_the_dry_run(tmp_path, capsys):
    """Item 3: a movie whose frame rate is known (``fps: 10``) but not yet its frames: 0.15 s is 1.5
    frames at 10 fps; the dry run passed it and the run refused it minutes later. Now the dry run
    refuses it, naming the key and a state_length that fits."""
    _gif(tmp_path / "clip.gif")
    job = _spec(tmp_path, {"clip": {"path": "clip.gif", "fps": 10}}, measures=["spectral"], spectral={"state_length": 0.15})
    assert cli.main(["run", str(job), "--dry-run"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("daskdiff run: error: analysis.spectral.state_length: movie 'clip' at 10 fps:")
    assert "state_length=0.2" in line


def test_undefined_repeats_are_named_by_set_layer_and_n_units():
    """Item 6: '174 repeat(s) had a normaliser of zero' did not say where. The line names the cells,
    most first (a hand-made n_undefined: 81 at noise/predictions, 3 at photos/fc2), and counts the rest."""
    import xarray as xr

    from daskdiff.pipeline.record import undefined_note

    counts = np.zeros((2, 1, 2, 3), int)
    counts[1, 0, 0, 2], counts[0, 0, 1, 1] = 81, 3
    coords = {"image_set": ["photos", "noise"], "substrate": ["units"], "n_units": ["200", "all"],
              "layer": ["block1_conv1", "fc2", "predictions"]}
    n_undefined = xr.DataArray(counts, dims=tuple(coords), coords=coords)
    note = undefined_note(n_undefined, 100)
    assert note.startswith("84 repeat(s) had a normaliser of zero")
    assert note.endswith("(noise/units/predictions at n_units 200: 81 of 100; photos/units/fc2 at n_units all: 3 of 100)")
    assert undefined_note(n_undefined, 100, most=1).endswith("81 of 100; and 1 more cell(s))")
    assert undefined_note(n_undefined * 0, 100) is None


def test_a_changed_spec_names_the_keys_not_the_section():
    """Item 9: the refusal of another spec's folder said 'changed: [analysis]'; it names the keys."""
    from daskdiff.pipeline.output import changed_keys

    old = {"name": "j", "analysis": {"repeats": 100, "n_units": [200, "all"], "spectral": {"overlap": 0.0}}, "output": "o"}
    new = {"name": "j", "analysis": {"repeats": 7, "n_units": [200], "spectral": {"overlap": 0.0}}, "output": "o", "extra": 1}
    assert changed_keys(old, new) == ["analysis.n_units", "analysis.repeats", "extra"]
    assert changed_keys(old, old) == []


def test_a_window_for_movies_of_several_rates_fits_them_all():
    """Item 4: with movies at 25 and 30 fps, 0.5 s is 12.5 frames at 25 fps; the fix suggested was
    0.52 s for that movie, then another for the next. The window suggested fits both (a multiple of
    0.2 s: 5 and 6 frames); for rates with no common period under 10 s it says none exists."""
    from daskdiff.pipeline.movies import check_spectral
    from daskdiff.pipeline.spec import SpecError
    from daskdiff.pipeline.spec_file import parse_spec

    def spec(state_length):
        return parse_spec({"name": "m", "image_sets": {"a": "a", "b": "b"}, "output": "o",
                           "analysis": {"measures": ["spectral"], "spectral": {"state_length": state_length}}})

    counts = {"a": 300, "b": 300}
    with pytest.raises(SpecError, match=r"for every movie of the job \(25, 30 fps\) choose a multiple of 0\.2 s, e\.g\. state_length=0\.4$"):
        check_spectral(spec(0.5), counts, {"a": 30.0, "b": 25.0})
    for fits in (0.2, 0.4, 1.0):  # the suggestion's rule, checked by frames: whole at both rates
        assert abs(fits * 25 - round(fits * 25)) < 1e-9 and abs(fits * 30 - round(fits * 30)) < 1e-9
        check_spectral(spec(fits), counts, {"a": 30.0, "b": 25.0})
    with pytest.raises(SpecError, match=r"no state_length up to 10 s is a whole number of frames at all of them"):
        check_spectral(spec(0.5), counts, {"a": 30.0, "b": 29.97})
