"""A corrupt partial result is recomputed and named on the user's console (issue 26, item 13).

The differentiation task that finds the damaged file runs on a worker, whose log the user does
not see; the warning must reach the console of ``daskdiff run``. A real ``daskdiff run`` process
on a running cluster (``--scheduler``), its stdout as the user sees it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from distributed import Client

from conftest import write_images
from jobtools import local_cluster, tiny_spec

pytestmark = pytest.mark.cluster


def test_corrupt_partial_is_named_on_the_console_and_recomputed(tmp_path, tiny_model_path):
    write_images(tmp_path / "a", 6, seed=51)
    write_images(tmp_path / "b", 5, seed=52, kind="smooth")
    spec = tiny_spec(tiny_model_path, {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, tmp_path / "out")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with local_cluster(1) as cluster, \
            Client(cluster):
        def run() -> str:
            done = subprocess.run([sys.executable, "-m", "daskdiff.cli", "run", str(spec_file), "--scheduler", cluster.scheduler_address,
                                   "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        run()
        clean = xr.load_dataset(tmp_path / "out" / "differentiation.nc")
        victim = tmp_path / "out" / "partial" / "a--units--conv2.npz"
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])  # truncated (a full disk, a killed copy)
        console = run()
    said = [line for line in console.splitlines() if line.startswith(f"warning: partial result {victim} is corrupt: cannot be read")]
    assert len(said) == 1 and said[0].endswith("; removed it, recomputing"), console
    again = xr.load_dataset(tmp_path / "out" / "differentiation.nc")
    for name in clean.variables:
        np.testing.assert_array_equal(again[name].values, clean[name].values, err_msg=name)
    assert victim.stat().st_size == len(data)  # rewritten whole
