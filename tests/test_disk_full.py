"""A full disk says so: where, what is free, what is needed, and that a re-run resumes.

The filesystem is real: a small tmpfs mounted for the test in a private mount namespace
(``unshare --mount``, as root or, where the kernel allows it, in a user namespace), seen only by
the command run there and gone with it. In CI (``CI=true``, root) a failed mount fails the test;
only elsewhere is it a skip. netCDF reports a full disk at file creation as EACCES
and later as "NetCDF: HDF error"; the user must see neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from daskdiff.io.atomic import DiskFullError, write_netcdf

from conftest import write_images
from jobtools import tiny_spec

BIN = Path(sys.executable).parent


def _mount_command(folder: Path, size: str) -> tuple[list[str] | None, str]:
    """(a command prefix that runs its argument with a tmpfs of ``size`` at ``folder``, or None;
    why not, when None: each way tried and what it said)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size} tmpfs "{folder}" && exec "$@"'
    if shutil.which("unshare") is None:
        return None, "no unshare command (util-linux) on PATH"
    tried = []
    for prefix in (["unshare", "--mount", "sh", "-c"], ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]):
        probe = subprocess.run([*prefix, script, "sh", "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [*prefix, script, "sh"], ""
        tried.append(f"{' '.join(prefix[:-2])}: {' '.join(probe.stderr.split()) or f'exit status {probe.returncode}'}")
    return None, "; ".join(tried)


@pytest.fixture
def small_fs(tmp_path):
    """(folder, run): ``run(cmd)`` runs ``cmd`` with a 1 MiB tmpfs mounted at ``folder``.

    CI runs as root on Linux, where the mount works: there (``CI=true``) a failure to mount fails
    the test, so that these tests cannot go quietly unrun. Elsewhere (a developer's machine with
    neither root nor unprivileged user namespaces) they are skipped, saying why.
    """
    folder = tmp_path / "small"
    prefix, why = _mount_command(folder, "1m")
    if prefix is None:
        message = f"cannot mount a tmpfs here (needs root or unprivileged user namespaces): {why}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run the full-disk tests (run it as root, or allow unshare --mount)")
        pytest.skip(message)

    def run(cmd, **kw):
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, **kw)

    return folder, run


@pytest.mark.cluster
def test_full_disk_during_extraction_is_one_clear_line(tmp_path, tiny_model_path, small_fs):
    folder, run = small_fs
    write_images(tmp_path / "a", 8, seed=1)
    write_images(tmp_path / "b", 8, seed=2)
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, folder / "out",
                     extraction={"batch_size": 1, "shard_size": 1, "retries": 0})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [str(BIN / "daskdiff"), "run", str(job), "--workers", "1", "--no-progress"]
    refused = run(cmd, env=env, timeout=300)  # the estimate sees that the shards cannot fit
    assert refused.returncode == 2 and "free under" in refused.stdout + refused.stderr, refused.stdout[-2000:] + refused.stderr[-2000:]
    out = run([*cmd, "--force"], env=env, timeout=300)  # run anyway: the disk fills up for real
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "disk full: writing " in last and "/out/activations/" in last and "MiB free in" in last, last
    assert "this file needs about" in last and "this job's shards need about" in last and "re-run resumes" in last, last
    assert "Traceback (most recent call last)" not in out.stderr and "internal error" not in out.stderr


def test_full_disk_at_the_results_write_is_a_disk_full_error(tmp_path, small_fs):
    """The results file: netCDF's "NetCDF: HDF error" becomes a DiskFullError naming the file."""
    folder, run = small_fs
    code = (
        "import sys, numpy as np, xarray as xr\n"
        "from daskdiff.io.atomic import DiskFullError, write_netcdf\n"
        "ds = xr.Dataset({'x': (('a', 'b'), np.random.default_rng(0).standard_normal((400, 400)))})\n"
        f"try:\n    write_netcdf(ds, {str(folder / 'differentiation.nc')!r})\n"
        "except DiskFullError as err:\n"
        f"    import os; print('LEFT', os.listdir({str(folder)!r}))\n"
        "    print('DISKFULL', err.path, err.needed, err); sys.exit(3)\n"
    )
    out = run([sys.executable, "-c", code], timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr[-3000:]
    assert f"DISKFULL {folder / 'differentiation.nc'} 1280000 disk full: writing" in out.stdout
    assert "this file needs about 1.2 MiB" in out.stdout
    assert "LEFT []" in out.stdout  # no half-written file or temporary is left


def test_disk_full_error_travels_between_processes():
    """Workers send it to the client pickled: its fields survive."""
    import pickle

    err = DiskFullError("/x/shard-00001.nc", 1234, 5678, "PermissionError: [Errno 13]")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.free, back.needed, str(back)) == (err.path, err.free, err.needed, str(err))


def test_ordinary_write_errors_are_left_alone(tmp_path):
    """A failure on a disk with room is not called a full disk."""
    ds = xr.Dataset({"x": ("a", np.arange(3.0))})
    target = tmp_path / "no-such-folder-parent"
    target.write_text("a file, not a folder")
    with pytest.raises(OSError) as info:
        write_netcdf(ds, target / "r.nc")
    assert not isinstance(info.value, DiskFullError)
