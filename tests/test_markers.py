"""The markers keras, cluster and subprocess (set in tests/conftest.py) and the guard of
``pytest --fast`` / ``--check-markers`` catch what they claim: a pytest run of its own, on a few
tests written to do each costly thing, with and without their markers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess  # the inner pytest runs in a process of its own

HERE = Path(__file__).resolve().parent

INNER = '''
import subprocess, sys
import pytest

COSTLY_FIXTURES = {"colour_model": "keras"}


@pytest.fixture
def colour_model(tmp_path):
    return tmp_path / "never-built.keras"


def test_plain():
    assert sum(range(4)) == 6


def test_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_process_error_caught():
    try:
        subprocess.run([sys.executable, "-c", "pass"])
    except Exception:
        pass


def test_cluster_in_threads():
    from distributed import LocalCluster
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0"):
        pass


def test_keras_import():
    import keras


@pytest.mark.subprocess
def test_marked_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_tiny_model(tiny_model_path):
    pass


def test_module_fixture(colour_model):
    pass
'''


@pytest.fixture
def inner(tmp_path):
    """A project folder with this suite's conftest.py and the tests above; ``run(*args)`` runs pytest there."""
    (tmp_path / "tests").mkdir()
    for name in ("conftest.py", "s3server.py"):  # conftest.py imports the S3 fixtures from s3server.py
        shutil.copy(HERE / name, tmp_path / "tests" / name)
    (tmp_path / "tests" / "test_inner.py").write_text(INNER)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -p no:xdist -p no:randomly\n"
                                         "markers =\n    keras\n    cluster\n    subprocess\n    vgg16\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pytest", "-rA", "--tb=no", "-q", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, COLUMNS="400"))  # summary lines whole

    return run


def _outcomes(out: subprocess.CompletedProcess) -> dict[str, str]:
    """Test name -> PASSED/FAILED/ERROR, from pytest's -rA summary lines."""
    found = {}
    for line in out.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            found[rest.split("::")[1].split(" ")[0]] = word
    return found


def test_markers_come_from_the_fixtures_a_test_uses(inner):
    out = inner("--collect-only", "-m", "keras")
    assert sorted(line.split("::")[1] for line in out.stdout.splitlines() if "::" in line) == [
        "test_module_fixture", "test_tiny_model"], out.stdout + out.stderr
    out = inner("--collect-only", "--fast")
    assert "5/8 tests collected (3 deselected)" in out.stdout, out.stdout + out.stderr  # marked subprocess + 2 keras
    assert "test_marked_process" not in out.stdout


def test_check_markers_fails_each_unmarked_costly_thing_and_names_its_marker(inner):
    out = inner("--check-markers", "-k", "not tiny_model and not module_fixture")
    assert _outcomes(out) == {
        "test_plain": "PASSED",
        "test_marked_process": "PASSED",
        "test_process": "FAILED",
        "test_process_error_caught": "FAILED",  # the test swallowed the refusal: still a failure
        "test_cluster_in_threads": "FAILED",
        "test_keras_import": "FAILED",
    }, out.stdout[-4000:] + out.stderr[-2000:]
    for name, what in [("test_process", "starts a child process (tests/test_inner.py:"),
                       ("test_cluster_in_threads", "starts a Dask cluster (tests/test_inner.py:"),
                       ("test_keras_import", "imports keras (tests/test_inner.py:")]:
        line = next(line for line in out.stdout.splitlines() if line.startswith(f"FAILED tests/test_inner.py::{name} "))
        assert what in line, line


def test_without_the_guard_the_same_tests_pass(inner):
    """The counterpart: what failed above fails because of the guard, not of the tests."""
    out = inner("-k", "process or cluster or plain")
    assert set(_outcomes(out).values()) == {"PASSED"} and len(_outcomes(out)) == 5, out.stdout[-4000:] + out.stderr[-2000:]
