"""Nothing outside the output folder is ever touched, and no file of the user's is replaced (issue 26, items 4-6).

A results folder received from someone else, or shared and group-writable: a manifest edited to
list ``../thesis.tex`` or an absolute path, a folder of daskdiff's replaced by a link out of the
folder, a link, hard link or FIFO planted as the lock file; and ``output: .`` next to the user's
own ``differentiation.nc``/``.png``. Each is refused in one line naming the path and the fix,
before anything is written or deleted; the files outside (and the user's) survive byte for byte.

Refusals run ``daskdiff.cli.main`` as a user's ``daskdiff run`` would, with ``--dry-run`` or
against a scheduler address nothing listens on (the refusal comes before any connection), so no
cluster starts; one test runs whole jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from daskdiff.cli import main
from daskdiff.pipeline.job import plan_job
from daskdiff.pipeline.spec_file import load_spec
from daskdiff.io.atomic import owner_tag
from daskdiff.io.layout import LOCK_FILE, MANIFEST_FILE
from daskdiff.io.lock import OutputLock
from daskdiff.io.manifest import OutputFolderError

from conftest import write_images

NOWHERE = "tcp://127.0.0.1:9"
"""A scheduler address nothing listens on: a run refused while planning never reaches it."""


def _job(project: Path, model: str, data: Path, output: str = "results", start_timeout: int = 10, **sets) -> Path:
    spec = {
        "name": "mine",
        "model": {"name": model, "weights": "file"},
        "image_sets": {"a": str(data / "a"), **sets},
        "analysis": {"substrates": ["filter_mean"], "n_units": ["all"], "repeats": 2, "seed": 1},
        "extraction": {"batch_size": 4, "shard_size": 4},
        "cluster": {"n_workers": 1, "start_timeout": start_timeout},
        "output": output,
    }
    project.mkdir(parents=True, exist_ok=True)
    job = project / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


@pytest.fixture
def data(tmp_path):
    write_images(tmp_path / "data" / "a", 5, seed=4)
    return tmp_path / "data"


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed): a file's hash, a link's target, or 'dir'/'fifo'."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        elif path.is_fifo():
            out[key] = "fifo"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _refused(capsys, *args: str) -> str:
    """Run ``daskdiff run ARGS``; it must fail with exactly one line on stderr, which is returned."""
    code = main(["run", *args, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


def _received_folder(project: Path, entries: list[str], dirs: list[str] = ()) -> Path:
    """A results folder from someone else: another spec's job.json, a shard, and a manifest listing ``entries``."""
    out = project / "results"
    (out / "activations" / "a").mkdir(parents=True)
    (out / "activations" / "a" / "shard-00000.nc").write_bytes(b"their shard")
    (out / "job.json").write_text(json.dumps({"result_digest": "another job", "spec": {"name": "theirs"}}))
    listed = ["job.json", "activations/a/shard-00000.nc", *entries]
    (out / MANIFEST_FILE).write_text(json.dumps({"files": listed, "dirs": ["activations", "activations/a", *dirs]}))
    return out


@pytest.mark.parametrize("mode", ["--dry-run", "run"])
def test_overwrite_refuses_a_manifest_listing_paths_outside_and_deletes_nothing(tmp_path, tiny_model_path, data, capsys, mode):
    """Item 4: the manifest of a received folder lists ../thesis.tex and an absolute path."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data)
    (project / "thesis.tex").write_text("\\chapter{Years of work}\n")
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("someone's data")
    _received_folder(project, ["../thesis.tex", str(victim)])
    before, outside = _tree(project), _tree(victim.parent)
    line = _refused(capsys, str(job), "--overwrite", *(["--dry-run"] if mode == "--dry-run" else ["--scheduler", NOWHERE]))
    assert f"{MANIFEST_FILE} lists " in line and ("'../thesis.tex'" in line or repr(str(victim)) in line), line
    assert "nothing is deleted" in line and "choose another --output" in line
    assert _tree(project) == before and _tree(victim.parent) == outside  # the folder's own files too: nothing at all


def test_overwrite_refuses_a_listed_folder_replaced_by_a_link_out(tmp_path, tiny_model_path, data, capsys):
    """Item 4: ``activations`` (daskdiff's) replaced by a link to the user's data: unlinking
    ``activations/a/shard-00000.nc`` would delete the user's file of that name."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data)
    out = _received_folder(project, [])
    userdata = tmp_path / "userdata"
    (userdata / "a").mkdir(parents=True)
    (userdata / "a" / "shard-00000.nc").write_bytes(b"the user's own measurement")
    for child in sorted((out / "activations").rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    (out / "activations").rmdir()
    (out / "activations").symlink_to(userdata)
    before, theirs = _tree(project), _tree(userdata)
    line = _refused(capsys, str(job), "--overwrite", "--scheduler", NOWHERE)
    assert "activations" in line and f"leads out of the folder (to {userdata.resolve()}" in line, line
    assert _tree(project) == before and _tree(userdata) == theirs


def test_temporaries_are_never_looked_for_outside_the_output_folder(tmp_path, tiny_model_path, data, capsys):
    """The same class of bug without --overwrite: a run removes dead writers' temporaries of the
    files its manifest lists, so ``../thesis.tex`` made it delete ``../.thesis.tex.<host>+<pid>+x.tmp``."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    tmp = project / f".thesis.tex.{owner_tag().rsplit('+', 1)[0]}+{dead.stdout.strip()}+abc123.tmp"
    tmp.write_text("the user's editor's temporary")
    out = project / "results"
    out.mkdir()
    (out / MANIFEST_FILE).write_text(json.dumps({"files": ["../thesis.tex"], "dirs": []}))
    before = _tree(project)
    line = _refused(capsys, str(job), "--scheduler", NOWHERE)
    assert "lists '../thesis.tex', which goes up out of the folder" in line, line
    assert _tree(project) == before


@pytest.mark.subprocess
@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo"])
def test_lock_file_is_never_followed_nor_rewritten(tmp_path, planted):
    """Item 5: a link planted as <output>/.daskdiff-lock made daskdiff truncate and rewrite the
    file it points to; a FIFO there is refused at once (run in a child process, under a timeout)."""
    out = tmp_path / "results"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("a colleague's file\n" * 100)
    lock = out / LOCK_FILE
    {"symlink": lambda: lock.symlink_to(victim), "hardlink": lambda: os.link(victim, lock), "fifo": lambda: os.mkfifo(lock)}[planted]()
    code = textwrap.dedent(f"""
        from daskdiff.io.lock import OutputLock
        from daskdiff.io.manifest import OutputFolderError
        try:
            OutputLock({str(out)!r}).acquire()
        except OutputFolderError as err:
            print(err)
        else:
            print("acquired")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    kind = {"symlink": f"is a symbolic link (to {victim})", "hardlink": "is a hard link", "fifo": "is a FIFO"}[planted]
    assert result.stdout.startswith(f"{lock} {kind}") and "remove it" in result.stdout, result.stdout
    assert victim.read_text() == "a colleague's file\n" * 100


def test_planted_lock_is_refused_by_the_run_and_its_dry_run(tmp_path, tiny_model_path, data, capsys):
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data)
    victim = tmp_path / "victim.txt"
    victim.write_text("a colleague's file")
    (project / "results").mkdir()
    (project / "results" / LOCK_FILE).symlink_to(victim)
    for args in (["--dry-run"], ["--scheduler", NOWHERE]):
        line = _refused(capsys, str(job), *args)
        assert f"{LOCK_FILE} is a symbolic link (to {victim})" in line, line
    assert victim.read_text() == "a colleague's file"


@pytest.mark.parametrize("folder", ["activations", "partial", "images"])
def test_a_folder_daskdiff_writes_into_that_leads_out_is_refused(tmp_path, tiny_model_path, data, capsys, folder):
    """activations/, partial/ or images/ replaced by a link out of the output folder: daskdiff
    would write its shards, partial results or generated images into the folder it leads to."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data, noise={"generate": "noise", "count": 3, "seed": 2})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / "results").mkdir()
    (project / "results" / folder).symlink_to(elsewhere)
    for args in (["--dry-run"], ["--scheduler", NOWHERE]):
        line = _refused(capsys, str(job), *args)
        assert f"{project / 'results' / folder}" in line and f"leads out of the output folder {project / 'results'}" in line, line
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (project / "results").iterdir()) == [folder]


def test_generated_set_in_a_folder_of_the_users_is_refused_by_the_dry_run_too(tmp_path, tiny_model_path, data, capsys):
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data, noise={"generate": "noise", "count": 3, "seed": 2})
    mine = write_images(project / "results" / "images" / "noise", 2, seed=7)
    before = _tree(project)
    for args in (["--dry-run"], ["--scheduler", NOWHERE]):
        line = _refused(capsys, str(job), *args)
        assert f"{project / 'results' / 'images' / 'noise'} is in the way" in line and "which daskdiff did not create" in line, line
    assert _tree(project) == before and len(mine) == 2


@pytest.mark.parametrize("name", ["partial/a--filter_mean--conv1.npz", "activations/a/shard-00001.nc", "job.json"])
def test_a_file_of_the_users_where_daskdiff_writes_is_refused(tmp_path, tiny_model_path, data, capsys, name):
    """Item 6 for the files daskdiff writes below its folders: a partial result, a shard, job.json."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data)
    path = project / "results" / name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"mine": True}))
    before = _tree(project)
    for args in (["--dry-run"], ["--scheduler", NOWHERE]):
        line = _refused(capsys, str(job), *args)
        assert line.startswith(f"daskdiff run: error: {path} is in the way") and "never replaces a file of yours" in line, line
    assert _tree(project) == before


def _daskdiff(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [str(Path(sys.executable).parent / "daskdiff"), "run", str(project / "job.yaml"), "--no-progress", *args]
    return subprocess.run(cmd, env=env, cwd=project, capture_output=True, text=True, timeout=timeout)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("daskdiff run:")]


def test_a_fifo_as_manifest_is_refused_without_hanging(tmp_path, tiny_model_path, data):
    """The manifest is read without following a link and must be a plain file: a FIFO there
    blocked the read forever (a ``daskdiff run`` process, under a timeout)."""
    project = tmp_path / "project"
    _job(project, tiny_model_path, data)
    (project / "results").mkdir()
    os.mkfifo(project / "results" / MANIFEST_FILE)
    refused = _daskdiff(project, "--dry-run", timeout=120)
    assert refused.returncode == 2 and len(_error_lines(refused)) == 1, refused.stderr[-3000:]
    assert f"{MANIFEST_FILE} is a FIFO" in _error_lines(refused)[0]


@pytest.mark.cluster
def test_output_dot_never_replaces_the_users_results_and_resumes_its_own(tmp_path, tiny_model_path, data, capsys):
    """Item 6: ``output: .`` in a folder holding the user's own differentiation.nc and .png (their
    figure from the seed notebooks). The run and its dry run refuse, naming the file; once the
    user moves them, the job runs whole; a re-run resumes; so does a re-run in a folder an older
    daskdiff wrote (no manifest)."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data, output=".", start_timeout=120)
    (project / "differentiation.nc").write_bytes(b"\x89HDF\r\n the user's results")
    (project / "differentiation.png").write_bytes(b"\x89PNG\r\n the user's figure")
    before = _tree(project)
    for args in (["--dry-run"], []):
        refused = _daskdiff(project, *args)
        lines = _error_lines(refused)
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
        assert lines[0] == (
            f"daskdiff run: error: {project / 'differentiation.nc'} (and 1 other file(s) daskdiff would write) is in the way: "
            f"daskdiff would write a file of that name, but did not write this one (its manifest {MANIFEST_FILE} does not "
            "list it), and never replaces a file of yours: move or rename it, or choose another --output (e.g. output: results)"
        )
        assert "Traceback" not in refused.stderr
    assert _tree(project) == before

    (project / "mine").mkdir()
    for name in ("differentiation.nc", "differentiation.png"):
        (project / name).rename(project / "mine" / name)
    assert main(["run", str(job), "--no-progress"]) == 0
    capsys.readouterr()
    listed = json.loads((project / MANIFEST_FILE).read_text())["files"]
    assert {"differentiation.nc", "differentiation.png", "job.json"} <= set(listed)
    assert (project / "mine" / "differentiation.png").read_bytes() == b"\x89PNG\r\n the user's figure"

    (project / MANIFEST_FILE).unlink()  # as an older daskdiff left the folder
    assert main(["run", str(job), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resuming: 2 of 2 shard file\(s\) and (\d+) of \1 partial result\(s\) already on disk", out), out
    assert set(listed) <= set(json.loads((project / MANIFEST_FILE).read_text())["files"])


def test_manifest_entries_are_checked_when_it_is_read(tmp_path):
    """The library's own check: each entry a plain relative path whose folder is inside."""
    from daskdiff.io.manifest import Manifest

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "up").mkdir()
    (out / "linked").symlink_to(tmp_path / "up")
    (out / "inner").mkdir()
    (out / "alias").symlink_to(out / "inner")  # a link that stays inside is harmless
    for entry, problem in [("../x", "goes up out of the folder"), ("/etc/passwd", "is an absolute path"),
                           ("a//b", "is not a plain relative path"), (LOCK_FILE, "is daskdiff's own lock"),
                           ("linked/x.nc", "leads out of the folder"), ("inner", "is a folder, listed as a file")]:
        (out / MANIFEST_FILE).write_text(json.dumps({"files": [entry], "dirs": []}))
        with pytest.raises(OutputFolderError, match=problem):
            Manifest(out)
    (out / MANIFEST_FILE).write_text(json.dumps({"files": ["alias/x.nc"], "dirs": []}))
    os.link(out / MANIFEST_FILE, tmp_path / "snapshot.json")  # a hard-linked copy (cp -al): read, and replaced by rename
    (out / "inner" / "x.nc").write_text("daskdiff's")
    Manifest(out).remove_all()
    assert (tmp_path / "snapshot.json").exists()
    assert not (out / "inner" / "x.nc").exists() and (out / "inner").is_dir()  # reached through the inside link


def _tiny(model: str, data: Path, output: Path):
    from daskdiff.pipeline.spec_file import parse_spec

    return parse_spec({"name": "mine", "model": {"name": model, "weights": "file"}, "image_sets": {"a": str(data / "a")},
                       "analysis": {"substrates": ["filter_mean"], "n_units": ["all"], "repeats": 2, "seed": 1},
                       "extraction": {"batch_size": 4, "shard_size": 4}, "output": str(output)}, "test")


def test_write_probe_leaves_a_file_of_that_name_alone(tmp_path, tiny_model_path, data):
    """The writability probe wrote and deleted ``<output>/.write-test``: a file of the user's of that name was lost."""
    from daskdiff.pipeline.job import plan_job

    out = tmp_path / "results"
    out.mkdir()
    (out / ".write-test").write_text("the user's own probe")
    plan_job(_tiny(tiny_model_path, data, out), tmp_path, echo=lambda *a: None).release()
    assert (out / ".write-test").read_text() == "the user's own probe"


def test_overwrite_removes_a_listed_link_never_what_it_points_to(tmp_path, tiny_model_path, data):
    """A listed file replaced by a link to a file outside: --overwrite removes the link; the
    file it points to, and the user's unlisted file beside daskdiff's, stay."""
    from daskdiff.pipeline.job import plan_job

    out = tmp_path / "results"
    (out / "activations" / "a").mkdir(parents=True)
    (out / "activations" / "a" / "shard-00000.nc").write_bytes(b"daskdiff's shard")
    (out / "activations" / "a" / "notes.txt").write_text("the user's notes")
    victim = tmp_path / "thesis.nc"
    victim.write_bytes(b"the user's results")
    (out / "differentiation.nc").symlink_to(victim)
    (out / "job.json").write_text(json.dumps({"result_digest": "another job", "spec": {}}))
    (out / MANIFEST_FILE).write_text(json.dumps({"files": ["job.json", "differentiation.nc", "activations/a/shard-00000.nc"],
                                                 "dirs": ["activations", "activations/a"]}))
    lines: list[str] = []
    plan_job(_tiny(tiny_model_path, data, out), tmp_path, overwrite=True, echo=lines.append).release()
    assert victim.read_bytes() == b"the user's results"
    assert not os.path.lexists(out / "differentiation.nc") and not (out / "activations" / "a" / "shard-00000.nc").exists()
    assert (out / "activations" / "a" / "notes.txt").read_text() == "the user's notes"
    assert "--overwrite kept folder(s) that hold files daskdiff did not write: activations/a, activations" in lines


def test_a_generated_sets_record_naming_files_elsewhere_is_not_reused(tmp_path, tiny_model_path, data, capsys):
    """A ``.generated.json`` edited to list images outside its set's folder (a received or shared
    results folder) is not reused: those files are never read as the set's images."""
    project = tmp_path / "project"
    job = _job(project, tiny_model_path, data, noise={"generate": "noise", "count": 3, "seed": 2})
    plan_job(*load_spec(job), echo=lambda *a: None).release()  # plans and generates the set; nothing runs
    record = project / "results" / "images" / "noise" / ".generated.json"
    saved = json.loads(record.read_text())
    capsys.readouterr()
    assert main(["run", str(job), "--dry-run", "--no-progress"]) == 0
    assert "'noise': not generated in a dry run" not in capsys.readouterr().out  # its own record: reused
    elsewhere = write_images(tmp_path / "elsewhere", 3, seed=9)
    record.write_text(json.dumps({**saved, "paths": elsewhere}))
    assert main(["run", str(job), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "'noise': not generated in a dry run" in out, out
