"""The distributed job on real LocalClusters: correctness, determinism, resume, faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import dask.config
import numpy as np
import pytest
import xarray as xr
from distributed import Client
from scipy.spatial.distance import pdist

import daskdiff
from daskdiff.errors import JobError
from daskdiff.pipeline.job import run_job
from daskdiff.io.shards import open_activations

import jobtools
from jobtools import CountModelBuilds, KillOnce, model_builds, tiny_spec

cloudpickle.register_pickle_by_value(jobtools)  # workers do not have the tests folder on sys.path

pytestmark = pytest.mark.cluster


def _cluster(n_workers, **kwargs):
    return jobtools.local_cluster(n_workers, **kwargs)


@pytest.fixture(scope="module")
def client2():
    with _cluster(2) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def sets(image_folders):
    return {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}


def _run(spec, client, **kw):
    return run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None, **kw)


def _layer_shapes(model_path):
    """Each layer's output shape (without the batch axis), read from the saved Keras model itself."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    return {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}


def test_results_match_independent_computation(tmp_path, tiny_model_path, sets, client2):
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out")
    result = _run(spec, client2)
    ds = xr.open_dataset(result.path)
    shapes = _layer_shapes(tiny_model_path)
    assert ds["differentiation"].dims == ("image_set", "substrate", "n_units", "layer", "repeat")
    assert list(ds["layer"].values) == list(shapes)  # every layer, in network order
    assert list(ds["n_units"].values) == [5, -1] and ds["n_units"].dtype == np.int64

    # independent reference: shards reopened with xarray, units re-drawn, scipy pdist
    acts = open_activations(tmp_path / "out", "noisy")
    for layer, repeat in [("conv2", 4), ("fc1", 0)]:
        full_units = acts[f"units__{layer}"]
        idx = daskdiff.sample_units(shapes[layer], 5, seed=3, layer=layer, repeat=repeat)
        x = full_units.sel({f"unit__{layer}": idx}).values.astype(np.float64)
        x = (x - x.mean()) / x.std()
        ref = np.median(pdist(x)) / np.sqrt(5)
        got = float(ds["differentiation"].sel(image_set="noisy", substrate="units", n_units=5, layer=layer, repeat=repeat))
        assert got == pytest.approx(ref, rel=1e-12)
    # 'all' is exact: one value in repeat 0, NaN elsewhere
    fm = acts["filter_mean__conv1"].values.astype(np.float64)
    fm = (fm - fm.mean()) / fm.std()
    n_filters = shapes["conv1"][-1]
    assert n_filters < 5  # so that n_units=5 below asks for more filters than conv1 has
    exact = ds["differentiation"].sel(image_set="noisy", substrate="filter_mean", n_units=-1, layer="conv1")
    assert float(exact.sel(repeat=0)) == pytest.approx(np.median(pdist(fm)) / np.sqrt(n_filters), rel=1e-12)
    assert np.all(np.isnan(exact.values[1:]))
    # n_units=5 > conv1's filters: every repeat uses all of them and equals the exact value
    capped = ds["differentiation"].sel(image_set="noisy", substrate="filter_mean", n_units=5, layer="conv1")
    np.testing.assert_array_equal(capped.values, np.full(6, float(exact.sel(repeat=0))))
    assert int(ds["units_used"].sel(substrate="filter_mean", n_units=5, layer="conv1")) == n_filters
    # mean RDM over repeats, per-image predictions, provenance
    assert ds["rdm"].sel(image_set="smooth").shape[-1] == 7  # padded to the larger set
    assert np.all(np.isnan(ds["rdm"].sel(image_set="smooth").values[..., 6, :]))
    assert list(ds["n_images"].values) == [7, 6]
    assert ds["image_path"].sel(image_set="noisy").values[0].endswith("img-000.png")
    for key in ("Conventions", "title", "source", "history", "job_spec", "package_versions", "seed", "weights",
                "estimate_s", "estimate_revised_s", "wall_s"):
        assert key in ds.attrs
    ds.close()
    acts.close()


def test_model_built_once_per_worker(tmp_path, tiny_model_path, sets):
    with _cluster(2) as cluster, Client(cluster) as client:
        client.register_plugin(CountModelBuilds())
        spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction__shard_size=1)
        _run(spec, client)
        counts = client.run(model_builds)
    assert sorted(counts.values()) == [1, 1], counts  # 13 shards, 2 workers, 2 builds


def test_same_result_whatever_workers_and_shards(tmp_path, tiny_model_path, sets, client2):
    a = _run(tiny_spec(tiny_model_path, sets, tmp_path / "a", extraction__shard_size=2), client2)
    with _cluster(1) as cluster, Client(cluster) as client1:
        # and with 2 decoding processes under the (daemonic) worker process: the same images
        b = _run(tiny_spec(tiny_model_path, sets, tmp_path / "b", extraction__shard_size=50, extraction__decoders=2), client1)
    with xr.open_dataset(a.path) as da, xr.open_dataset(b.path) as db:
        np.testing.assert_allclose(da["differentiation"], db["differentiation"], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(da["rdm"], db["rdm"], rtol=1e-12, equal_nan=True)


def test_resume_and_changed_spec(tmp_path, tiny_model_path, sets, client2):
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out")
    first = _run(spec, client2)
    reference = xr.load_dataset(first.path)
    # lose a shard and some finished tasks, as an interrupted run would
    (tmp_path / "out" / "activations" / "noisy" / "shard-00001.nc").unlink()
    partials = sorted((tmp_path / "out" / "partial").glob("*.npz"))
    for p in partials[::3]:
        p.unlink()
    (tmp_path / "out" / "partial" / ".stale.npz.abc.tmp").write_bytes(b"half")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "partial").glob("*.npz")}
    second = _run(spec, client2)
    again = xr.load_dataset(second.path)
    np.testing.assert_array_equal(reference["differentiation"].values, again["differentiation"].values)
    untouched = [p for p, t in before.items() if p.stat().st_mtime_ns == t]
    assert len(untouched) == len(before)  # finished tasks were reused, not recomputed
    # a different spec against the same folder is refused, then allowed with overwrite
    changed = tiny_spec(tiny_model_path, sets, tmp_path / "out", analysis__repeats=7)
    with pytest.raises(JobError, match=r"different job spec \(changed: \[.analysis.repeats.\]\).*--overwrite"):
        _run(changed, client2)
    third = _run(changed, client2, overwrite=True)
    with xr.open_dataset(third.path) as ds:
        assert ds.sizes["repeat"] == 7


@pytest.mark.parametrize("stage, match, store", [("extraction", "extract-", "needed"), ("differentiation", "--units--", "needed"),
                                                 ("differentiation", "--units--", "none")])
def test_worker_killed_mid_stage(tmp_path, tiny_model_path, sets, client2, stage, match, store):
    """With ``store: none`` the killed worker held its sets' only copy of the units: Dask
    extracts them again from the task graph, and the results are the same."""
    reference = _run(tiny_spec(tiny_model_path, sets, tmp_path / "ref"), client2)
    marker = tmp_path / f"killed-{stage}"
    with _cluster(2) as cluster, Client(cluster) as client:
        client.register_plugin(KillOnce(match, str(marker), delay=0.01))
        result = _run(tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction__store=store), client)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    with xr.open_dataset(reference.path) as a, xr.open_dataset(result.path) as b:
        np.testing.assert_allclose(a["differentiation"], b["differentiation"], rtol=1e-12, equal_nan=True)


def _numeric(ds):
    return {k: v.values for k, v in ds.data_vars.items() if v.dtype.kind in "fiub"}


def test_values_in_memory_or_from_files_give_the_same_bits(tmp_path, tiny_model_path, sets, client2):
    """``handoff: disk`` reads the shard files; ``memory`` takes the values from the workers;
    ``store: none`` writes no units at all, so its differentiation can only have come from memory."""
    runs = {mode: _run(tiny_spec(tiny_model_path, sets, tmp_path / mode, **kw), client2)
            for mode, kw in {"disk": {}, "memory": {"extraction__handoff": "memory"},
                             "none": {"extraction__store": "none"}}.items()}
    ref = _numeric(xr.load_dataset(runs["disk"].path))
    for mode in ("memory", "none"):
        got = _numeric(xr.load_dataset(runs[mode].path))
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{mode}: {k}")
    last = list(_layer_shapes(tiny_model_path))[-1]
    with open_activations(tmp_path / "none", "noisy") as acts:
        assert [v for v in acts.data_vars if v.startswith("units__")] == [f"units__{last}"]  # the class scores, for the notebooks
        assert "filter_mean__conv1" in acts.data_vars and "top1_class" in acts
    with open_activations(tmp_path / "disk", "noisy") as acts:
        assert "units__conv1" in acts.data_vars


def test_store_none_resumes_by_extracting_again_in_memory(tmp_path, tiny_model_path, sets, client2):
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction__store="none")
    reference = _numeric(xr.load_dataset(_run(spec, client2).path))
    shards = sorted((tmp_path / "out" / "activations").rglob("shard-*.nc"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    lost = sorted((tmp_path / "out" / "partial").glob("noisy--units--*.npz"))[:2]
    for p in lost:
        p.unlink()
    again = _numeric(xr.load_dataset(_run(spec, client2).path))
    for k in reference:
        np.testing.assert_array_equal(again[k], reference[k], err_msg=k)
    assert all(p.exists() for p in lost)
    assert {p: p.stat().st_mtime_ns for p in shards} == before  # extracted again in memory; the files left alone
    # a partial that cannot be reused, where no units are stored to recompute it from: the error names the fix
    lost[0].write_bytes(b"not an npz")
    with pytest.raises(JobError, match=r"store no units \(extraction.store: none\).*remove that file and re-run"):
        _run(spec, client2)


def test_tls_cluster(tmp_path, tiny_model_path, sets, client2):
    """The same job over TLS gives the same bits as on a plain cluster."""
    from distributed.security import Security

    security = Security.temporary()
    with _cluster(1, security=security) as cluster, Client(cluster, security=security) as client:
        assert client.scheduler.address.startswith("tls://")
        tls = _run(tiny_spec(tiny_model_path, sets, tmp_path / "tls"), client)
    assert not client2.scheduler.address.startswith("tls://")
    plain = _run(tiny_spec(tiny_model_path, sets, tmp_path / "plain"), client2)
    with xr.open_dataset(tls.path) as a, xr.open_dataset(plain.path) as b:
        assert not np.all(np.isnan(a["differentiation"].values))
        np.testing.assert_array_equal(a["differentiation"].values, b["differentiation"].values)
        np.testing.assert_array_equal(a["rdm"].values, b["rdm"].values)


def test_cli_against_separately_started_scheduler(tmp_path, tiny_model_path, sets):
    """`dask scheduler` + `dask worker` started by hand, then `daskdiff run --scheduler`."""
    import yaml

    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    bindir = Path(sys.executable).parent
    sfile = tmp_path / "scheduler.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    scheduler = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)], env=env, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(200):
            if sfile.exists() and sfile.stat().st_size:
                break
            import time

            time.sleep(0.1)
        worker = subprocess.Popen([str(bindir / "dask"), "worker", "--scheduler-file", str(sfile), "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], env=env, stderr=subprocess.DEVNULL)
        out = subprocess.run([str(bindir / "daskdiff"), "run", str(job), "--scheduler-file", str(sfile), "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "connected to scheduler" in out.stdout
        assert "done: 13 images in 2 set(s), 0 skipped" in out.stdout
        info = subprocess.run([str(bindir / "daskdiff"), "info", str(tmp_path / "out" / "differentiation.nc")], capture_output=True, text=True, env=env)
        assert info.returncode == 0 and "noisy" in info.stdout and "filter_mean" in info.stdout
        png = tmp_path / "fig.png"
        plot = subprocess.run([str(bindir / "daskdiff"), "plot", str(tmp_path / "out" / "differentiation.nc"), "-o", str(png)], capture_output=True, text=True, env=env)
        assert plot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)


def test_generated_sets_reused_and_paths_relative_to_spec(tmp_path, tiny_model_path):
    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.spec_file import load_spec

    (tmp_path / "jobs").mkdir()
    from conftest import write_images

    write_images(tmp_path / "data" / "cats", 3, seed=0)
    job = tmp_path / "jobs" / "j.yaml"
    job.write_text(
        f"name: j\nmodel: {{name: {tiny_model_path}, weights: file}}\n"
        "image_sets:\n  noise: {generate: noise, count: 3, size: 32}\n"
        "  variants: {generate: augment, source: ../data/cats/img-000.png, count: 2, size: 32}\n"
        "output: ../out\n"
    )
    spec, base = load_spec(job)
    lines = []
    plan = plan_job(spec, base, echo=lines.append)
    assert plan.output == (tmp_path / "out").resolve()
    assert all(p.startswith(str(tmp_path / "out" / "images")) for p in plan.sets["variants"])
    assert any("generated 3 image(s)" in line for line in lines)
    first = {p: Path(p).stat().st_mtime_ns for s in plan.sets.values() for p in s}
    lines.clear()
    with pytest.raises(JobError, match=r"in use by another daskdiff run \(pid \d+ on "):
        plan_job(spec, base, echo=lines.append)  # the first plan still holds the output folder
    plan.release()
    plan_job(spec, base, echo=lines.append)
    assert sum("reusing" in line for line in lines) == 2
    assert first == {p: Path(p).stat().st_mtime_ns for p in first}



def test_local_workers_start_while_the_job_is_planned(tmp_path, tiny_model_path, sets, client2, monkeypatch):
    """A job that starts its own LocalCluster starts it in a thread once the spec, the sets and
    the layers have passed, before the output folder is locked (and made); the workers import Keras
    as they start (before any task); the job's results equal the same job on a given client. A
    plan that fails after the start (the output folder in use) closes that cluster, leaving no
    worker process behind."""
    import threading

    import psutil

    import daskdiff.pipeline.cluster as cluster_module

    import daskdiff.pipeline.output as output_module

    started, early_at_check = [], []
    real_start, real_check = cluster_module._start_cluster, output_module._check_output

    def recording_check(*args, **kwargs):  # the output folder is locked (and made) here: has the start begun?
        early_at_check.append(any(t.name == "daskdiff-early-cluster" for t in threading.enumerate()) or bool(entered))
        return real_check(*args, **kwargs)

    entered = []

    def recording_start(section, n_workers, security):
        entered.append(threading.current_thread().name)
        cluster = real_start(section, n_workers, security)
        with Client(cluster) as c:  # before any task: has the preload imported Keras?
            keras_in = c.run(lambda: "keras" in sys.modules)
            pids = list(c.run(os.getpid).values())
        started.append({"thread": threading.current_thread().name, "keras": keras_in, "cluster": cluster, "pids": pids})
        return cluster

    monkeypatch.setattr(cluster_module, "_start_cluster", recording_start)
    monkeypatch.setattr(output_module, "_check_output", recording_check)
    own = tiny_spec(tiny_model_path, sets, tmp_path / "own", cluster={"kind": "local", "n_workers": 1})
    lines = []
    result = run_job(own, Path("."), progress=False, echo=lines.append)
    assert len(started) == 1
    first = started[0]
    assert first["thread"] == "daskdiff-early-cluster" and early_at_check == [True]
    assert list(first["keras"].values()) == [True]
    assert first["cluster"].status.name == "closed"
    assert sum(line.startswith("started LocalCluster with 1 worker(s)") for line in lines) == 1
    # the estimate is revised once, after the first shard, and the results record it with the wall time
    revised = [line for line in lines if line.startswith("estimate revised after the first shard: ~")]
    assert len(revised) == 1 and "s/image measured vs" in revised[0] and "on 1 worker thread(s)" in revised[0]
    with xr.open_dataset(result.path) as a:
        assert a.attrs["estimate_s"] > 0 and 0 < a.attrs["wall_s"] <= result.seconds
        assert a.attrs["estimate_revised_s"] >= result.stages["planned"]  # revised after planning, plus what was left
    given = _run(tiny_spec(tiny_model_path, sets, tmp_path / "given"), client2)
    with xr.open_dataset(result.path) as a, xr.open_dataset(given.path) as b:
        np.testing.assert_array_equal(a["differentiation"].values, b["differentiation"].values)

    from daskdiff.pipeline.job import plan_job

    holder = plan_job(tiny_spec(tiny_model_path, sets, tmp_path / "held"), Path("."), echo=lambda *a: None)
    try:
        with pytest.raises(JobError, match="in use by another daskdiff run"):
            run_job(tiny_spec(tiny_model_path, sets, tmp_path / "held", cluster={"kind": "local", "n_workers": 1}), Path("."),
                    progress=False, echo=lambda *a: None)
    finally:
        holder.release()
    assert len(started) == 2 and started[1]["cluster"].status.name == "closed"
    for pid in started[0]["pids"] + started[1]["pids"]:  # no worker process left running
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid



def _rss():
    """For ``client.run``: this worker process's resident memory."""
    import gc

    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.keras
def test_workers_free_their_models_memory_once_every_shard_is_extracted(tmp_path, sets):
    """A cluster the job started (``release``): its workers give their model's memory back for
    the differentiation stage; someone else's cluster keeps the model warm for the next job."""
    import keras

    from daskdiff.pipeline.job import plan_job
    from daskdiff.pipeline.run import run

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs))
    wide = keras.layers.Dense(2**16, name="wide")(x)  # 2048 x 65536 float32 weights: 537 MB
    path = tmp_path / "wide.keras"
    keras.Model(inputs, keras.layers.Dense(3, name="predictions")(wide)).save(path)
    held = {}
    for release in (False, True):
        with _cluster(1) as cluster, Client(cluster) as client:
            spec = tiny_spec(str(path), sets, tmp_path / f"out-{release}", analysis__n_units=[5], analysis__substrates=["units"])
            plan = plan_job(spec, Path("."), echo=lambda *a: None)
            try:
                metadata, _, _ = run(plan, client, attrs={**plan.model.identity(), "daskdiff_version": "test"}, keep_rdm=False,
                                     progress=False, release=release)
            finally:
                plan.release()
            assert sum(len(m["paths"]) for m in metadata.values()) == 13  # every image went through the model
            held[release] = list(client.run(_rss).values())[0]
    assert held[True] < held[False] - 400e6, {k: f"{v / 1e9:.2f} GB" for k, v in held.items()}


def _faults_on_reuse(size: int = 16 * 2**20) -> int:
    """Minor page faults of writing a freshly ``malloc``'ed block of ``size`` bytes in this
    process, right after a block of the same size was written and freed (glibc through ctypes:
    nothing else's pool in between). Reused heap memory faults nowhere; a new ``mmap`` once per page."""
    import ctypes
    import resource

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    first = libc.malloc(size)
    ctypes.memset(first, 1, size)
    libc.free(first)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = libc.malloc(size)
    ctypes.memset(again, 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(again)
    return faults


@pytest.mark.parametrize("tuned", [True, False])
def test_the_workers_of_a_cluster_daskdiff_starts_reuse_the_memory_they_free(tmp_path, tiny_model_path, sets, tuned, monkeypatch):
    """Dask config ``daskdiff.worker-malloc`` true (the default): the worker processes start with
    ``WORKER_MALLOC_ENV``, and a 16 MiB block freed and asked for again is reused, not mapped
    afresh page by page, as under Dask's own ``MALLOC_TRIM_THRESHOLD_=65536`` (false)."""
    from daskdiff.pipeline.cluster import _close_cluster, _start_cluster
    from daskdiff.pipeline.workers import WORKER_MALLOC_ENV

    for name in WORKER_MALLOC_ENV:  # a nanny sets its pre-spawn-environ in this process too (Dask's way)
        monkeypatch.delenv(name, raising=False)
    pages = 16 * 2**20 // 4096
    section = tiny_spec(tiny_model_path, sets, tmp_path / "out", cluster={"kind": "local", "n_workers": 1}).cluster
    with dask.config.set({"daskdiff.worker-malloc": tuned}):
        cluster = _start_cluster(section, None, None)
    try:
        with Client(cluster) as client:
            arenas = list(client.run(os.environ.get, "MALLOC_ARENA_MAX").values())
            faults = list(client.run(_faults_on_reuse).values())
    finally:
        _close_cluster(cluster, abandoned=False)
    if tuned:
        assert arenas == ["1"] and faults[0] < pages // 20, (arenas, faults, pages)
    else:
        assert arenas == [None] and faults[0] > pages // 2, (arenas, faults, pages)


def test_a_cluster_daskdiff_starts_does_not_steal_work(tmp_path, tiny_model_path, sets):
    """Dask config ``daskdiff.work-stealing`` (false): the scheduler of the LocalCluster the job
    starts has no work-stealing extension, so kept values are not copied to idle workers."""
    from daskdiff.pipeline.cluster import _close_cluster, _start_cluster

    section = tiny_spec(tiny_model_path, sets, tmp_path / "out", cluster={"kind": "local", "n_workers": 1}).cluster
    cluster = _start_cluster(section, None, None)
    try:
        assert "stealing" not in cluster.scheduler.extensions
        assert dask.config.get("distributed.scheduler.work-stealing") is True  # Dask's own, outside
    finally:
        _close_cluster(cluster, abandoned=False)
