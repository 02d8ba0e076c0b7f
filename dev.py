#!/usr/bin/env python3
"""Set-up and run, on a fresh machine with Python 3 and nothing else.

    python3 dev.py demo    # create/reuse .venv, install daskdiff (what the demo needs), run jobs/demo.yaml offline
    python3 dev.py test    # create/reuse .venv, install daskdiff[test], run the whole test suite (2 processes)
    python3 dev.py fast    # the same install; only the tests that need no Keras model, cluster or
                           # subprocess, in one process: what to run between edits (~45 s on 2 cores)

``demo`` installs daskdiff and its dependencies only; ``test`` and ``fast`` add the ``[test]``
extra (pytest, and the other Keras backends torch and jax, several GB). All are idempotent: the
virtual environment is created once, and each install is redone only when pyproject.toml changes
(one stamp file per install; the ``[test]`` one serves the demo too). Extra arguments go to the
command (pytest or ``daskdiff run``). Set DASKDIFF_VENV to use another virtual-environment folder.

``fast`` is ``pytest --fast`` (tests/conftest.py): it leaves out the tests marked keras, cluster or
subprocess (markers set from the fixtures a test uses), and fails a test that imports Keras,
starts a Dask cluster or a child process without its marker, so that it stays fast.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DASKDIFF_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = {"demo": "", "test": "test", "fast": "test"}
"""The extra of daskdiff each command installs ('' for daskdiff alone)."""


def stamp(extra: str) -> Path:
    """The file recording the pyproject.toml digest that daskdiff[extra] was installed from."""
    return VENV / (f".daskdiff-installed-{extra}" if extra else ".daskdiff-installed")


def ensure_environment(extra: str) -> None:
    """Create the virtual environment if needed, and install daskdiff (with ``extra``) unless a
    stamp says it is installed from this pyproject.toml; daskdiff[test] holds daskdiff too."""
    if sys.version_info < (3, 10):
        sys.exit(f"daskdiff needs Python >= 3.10; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"[dev] creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    enough = [stamp(extra)] + ([stamp("test")] if not extra else [])
    if any(s.exists() and s.read_text().strip() == want for s in enough):
        return
    what = f"daskdiff[{extra}]" if extra else "daskdiff"
    size = "minutes: TensorFlow, torch and jax" if extra else "minutes: TensorFlow alone takes 1.9 GB"
    print(f"[dev] installing {what} into the virtual environment ({size})", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["install", "--upgrade", "pip"], check=True)
    subprocess.run(pip + ["install", "-e", f"{ROOT}[{extra}]" if extra else str(ROOT)], check=True)
    stamp(extra).write_text(want + "\n")


def _parallel(args: list[str]) -> list[str]:
    """pytest-xdist's ``-n 2 --dist loadfile`` (two test processes, each a whole test file at a
    time, so module fixtures are built once): the suite on CI's 2 cores in ~13 minutes instead of
    ~21, its tests mostly waiting on subprocesses, imports and clusters. Not added when the
    arguments choose already (``-n 0`` runs in one process)."""
    if any(a.startswith(("-n", "--numprocesses", "--dist")) for a in args):
        return []
    return ["-n", "2", "--dist", "loadfile"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "fast"):
        print(__doc__)
        return 2
    ensure_environment(EXTRAS[argv[0]])
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if argv[0] == "demo":
        cmd = [str(BIN / "daskdiff"), "run", str(ROOT / "jobs" / "demo.yaml"), *argv[1:]]
    elif argv[0] == "test":
        cmd = [str(PYTHON), "-m", "pytest", *_parallel(argv[1:]), *argv[1:]]
    else:  # one process: two would each import and collect again, for more CPU than they save
        cmd = [str(PYTHON), "-m", "pytest", "--fast", *argv[1:]]
    print("[dev] " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
