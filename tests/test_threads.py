"""Thread safety of one worker process: NetCDF calls serialised, the compute left in parallel.

netCDF4-python releases the GIL around netCDF-C/HDF5 calls, and the HDF5 it bundles is not
thread-safe: two threads in it at once kill the process (signal 11, 7 or 6), as two tasks of a
``dask worker --nthreads 2`` did. The storage layer holds :data:`daskdiff.io.hdf5.HDF5_LOCK`
around each call. A crash would take pytest down with it, so the many-thread run is a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from daskdiff.io.hdf5 import HDF5_LOCK

MANY_THREADS = r"""
import os, sys, tempfile, threading
import numpy as np
import xarray as xr
from daskdiff.core.units import Sampling, storage_plan
from daskdiff.io.atomic import atomic_path, write_netcdf
from daskdiff.io.results import open_results
from daskdiff.io.shards import ShardWriter, activation_variables, inputs_digest, read_features, shard_labels, shard_status

plan = storage_plan({"conv": (4, 4, 3), "fc": (10,)}, ["units", "filter_mean"], Sampling(n_units=(5,), repeats=3, seed=1))
folder = tempfile.mkdtemp()
errors = []

record = [(f"p{j}", 100, 1) for j in range(6)]

def work(t):
    rng = np.random.default_rng(t)
    try:
        for i in range(int(sys.argv[2])):
            path = os.path.join(folder, f"shard-{t}-{i}.nc")
            feats = {name: rng.standard_normal((6, n)).astype(np.float32) for name, (_, n) in activation_variables(plan).items()}
            with atomic_path(path) as tmp:
                labels = shard_labels(plan, paths=[f"p{j}" for j in range(6)], image_set="s", image_index=range(6),
                                      logits=rng.standard_normal((6, 5)), labels=[f"c{j}" for j in range(5)],
                                      attrs={"plan_digest": "d", "inputs_digest": inputs_digest("d", record)})
                with ShardWriter(tmp, plan, chunk_images=3) as writer:
                    writer.append({k: v[:3] for k, v in feats.items()})
                    writer.append({k: v[3:] for k, v in feats.items()})
                    writer.write_labels(labels, record)
            assert shard_status(path, plan, "d", record)[0]["n_images"] == 6
            values, _ = read_features([path, path], "units", "conv")
            assert np.array_equal(values[:6], feats["units__conv"]) and np.array_equal(values[6:], feats["units__conv"])
            results = os.path.join(folder, f"results-{t}-{i}.nc")
            write_netcdf(xr.Dataset({"differentiation": ("x", rng.standard_normal(4))}), results)
            with open_results(results) as ds:
                ds.load()
    except BaseException as err:
        errors.append(repr(err))

threads = [threading.Thread(target=work, args=(t,)) for t in range(int(sys.argv[1]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors or "ok")
"""


WITHOUT_THE_LOCK = r"""
import daskdiff.io.hdf5


class NoLock:
    def acquire(self, blocking=True, timeout=-1):
        return True

    def release(self):
        pass


daskdiff.io.hdf5.HDF5_LOCK._lock = NoLock()  # the one lock every module holds: now it holds nothing
"""


@pytest.mark.subprocess
def test_netcdf_calls_from_many_threads_of_one_process():
    """Shards written, checked and read, results written and opened, by 4 threads at once."""
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", MANY_THREADS, "4", "12"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", f"exit status {run.returncode} (negative: killed by that signal)\n{run.stdout}\n{run.stderr[-3000:]}"


@pytest.mark.subprocess
def test_the_same_threads_without_the_lock_crash_or_fail():
    """The companion that shows the scenario above can fail: with HDF5_LOCK made a no-op, the same
    4 threads kill their process (signal 11, 7 or 6) or see errors. Measured: 6 of 6 runs died within
    a second, so one run in three tries is asked for; a run that finishes clean is retried."""
    outcomes = []
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", WITHOUT_THE_LOCK + MANY_THREADS, "4", "12"], capture_output=True, text=True, timeout=300)
        outcomes.append((run.returncode, run.stdout.strip()[:300]))
        if run.returncode != 0 or run.stdout.strip() != "ok":
            return
    pytest.fail(f"three runs without the lock finished clean, so the test above could not catch a missing lock: {outcomes}")


def test_lazily_opened_datasets_read_under_the_lock(tmp_path):
    """A lazily opened results file waits for the lock to read; the lock pickles to the receiving
    process's own (Dask sends lazy arrays to workers)."""
    import pickle

    import xarray as xr

    from daskdiff.io.atomic import write_netcdf
    from daskdiff.io.results import open_results

    assert pickle.loads(pickle.dumps(HDF5_LOCK)) is HDF5_LOCK
    path = write_netcdf(xr.Dataset({"differentiation": ("x", np.arange(3.0))}), tmp_path / "r.nc")
    with open_results(path) as ds:
        held, release = threading.Event(), threading.Event()

        def hold():
            with HDF5_LOCK:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(30)
        loader = threading.Thread(target=ds["differentiation"].load)
        loader.start()
        loader.join(0.5)
        assert loader.is_alive(), "the lazy read did not wait for HDF5_LOCK"
        release.set()
        loader.join(30)
        holder.join(30)
        np.testing.assert_array_equal(ds["differentiation"].values, np.arange(3.0))


def _in_thread(fn, timeout=120.0):
    """Run ``fn`` in a new thread; its result, or an AssertionError if it is still blocked after ``timeout`` s."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} waited for the HDF5 lock: the compute must run outside it"
    return out["value"]


def test_forward_pass_and_differentiation_run_while_another_thread_holds_the_lock(image_folders, tiny_model_path):
    from daskdiff.core.differentiation import distances_stack
    from daskdiff.core.units import Sampling, storage_plan
    from daskdiff.model.architecture import model_layers
    from daskdiff.model.build import ModelSpec
    from daskdiff.model.extract import run_extraction

    spec = ModelSpec(name=tiny_model_path, weights="file")
    info = model_layers(spec)
    plan = storage_plan(info["shapes"], ["units"], Sampling(n_units=(5,), repeats=2, seed=1), full_layers=[info["last_layer"]])
    with HDF5_LOCK:  # as a thread writing a shard would
        batches = _in_thread(lambda: list(run_extraction(image_folders["noisy"][:4], spec, plan, batch_size=2)))
        stack = np.stack([batches[0].outputs["units__fc1"], batches[1].outputs["units__fc1"]]).astype(np.float64)
        d, bad = _in_thread(lambda: distances_stack(stack, "euclidean", "zscore", True, name="fc1", on_undefined="nan"))
    assert d.shape == (2, 2, 2) and not bad.any()
