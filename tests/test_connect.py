"""Where a job runs: ``connect`` precedence, TLS files of ``cluster.security``, the worker plugin.

Real schedulers throughout: in-process ``LocalCluster``\\ s (one worker thread each) stand for
clusters started elsewhere; which one a client reached is read from the client's scheduler
address, never from daskdiff's own messages alone.
"""

from __future__ import annotations

import os
import re
import sys

import cloudpickle
import dask
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from daskdiff.errors import InputError
from daskdiff.pipeline.cluster import connect
from daskdiff.pipeline.spec_cluster import ClusterSection, SecuritySection
from daskdiff.pipeline.tls import security_from
from daskdiff.pipeline.workers import WorkerSetup

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # functions sent to worker processes

pytestmark = pytest.mark.cluster


def _in_process_cluster(**kwargs):
    protocol = "tls://" if "security" in kwargs else "tcp://"
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol=protocol, host="127.0.0.1", dashboard_address="127.0.0.1:0", **kwargs)


@pytest.fixture(scope="module")
def two_clusters(tmp_path_factory):
    """Clusters 'a' and 'b', each with the scheduler file its scheduler wrote itself."""
    folder = tmp_path_factory.mktemp("schedulers")
    clusters, files = {}, {}
    try:
        for name in ("a", "b"):
            files[name] = str(folder / f"{name}.json")
            clusters[name] = _in_process_cluster(scheduler_kwargs={"scheduler_file": files[name]})
        yield {n: (c.scheduler_address, files[n]) for n, c in clusters.items()}
    finally:
        for c in clusters.values():
            c.close()


@pytest.fixture
def env_address(two_clusters):
    """DASK_SCHEDULER_ADDRESS names cluster 'a' (dask reads it into config ``scheduler-address``)."""
    old = os.environ.get("DASK_SCHEDULER_ADDRESS")
    os.environ["DASK_SCHEDULER_ADDRESS"] = two_clusters["a"][0]
    dask.config.refresh()
    try:
        assert dask.config.get("scheduler-address") == two_clusters["a"][0]
        yield two_clusters["a"][0]
    finally:
        if old is None:
            del os.environ["DASK_SCHEDULER_ADDRESS"]
        else:
            os.environ["DASK_SCHEDULER_ADDRESS"] = old
        dask.config.refresh()


@pytest.fixture
def no_env_address():
    with dask.config.set({"scheduler-address": None}):
        yield


def _reached(section, **flags):
    """Scheduler address the client of ``connect`` reached, and what connect printed."""
    lines = []
    with connect(section, echo=lines.append, **flags) as client:
        address = client.scheduler.address
        assert client.scheduler_info()["workers"], "connected without a worker"
    assert client.status == "closed"
    return address, lines


def _address_section(**kw):
    return ClusterSection(kind="address", start_timeout=30, **kw)


# ---------------------------------------------------------------- precedence

def test_scheduler_flag_beats_spec_address(two_clusters, env_address):
    (a, _), (b, _) = two_clusters["a"], two_clusters["b"]
    got, lines = _reached(_address_section(address=a), scheduler=b)
    assert got == b
    assert len(lines) == 1 and re.fullmatch(rf"connected to scheduler {re.escape(b)}; dashboard http://127\.0\.0\.1:\d+/status", lines[0]), lines


def test_scheduler_file_flag_beats_spec_address(two_clusters, env_address):
    (a, _), (b, b_file) = two_clusters["a"], two_clusters["b"]
    assert _reached(_address_section(address=a), scheduler_file=b_file)[0] == b


def test_scheduler_flag_beats_spec_scheduler_file(two_clusters, no_env_address):
    (_, a_file), (b, _) = two_clusters["a"], two_clusters["b"]
    assert _reached(_address_section(scheduler_file=a_file), scheduler=b)[0] == b


@pytest.mark.parametrize("key", ["address", "scheduler_file"])
def test_spec_address_beats_environment(two_clusters, env_address, key):
    b, b_file = two_clusters["b"]
    section = _address_section(**{key: b if key == "address" else b_file})
    assert _reached(section)[0] == b


def test_environment_used_for_a_local_spec(two_clusters, env_address):
    """kind: local (the default) with DASK_SCHEDULER_ADDRESS set joins that scheduler, which
    outlives the job (a scheduler daskdiff did not start is never closed by it)."""
    got, lines = _reached(ClusterSection(start_timeout=30))
    assert got == env_address
    assert len(lines) == 1 and re.fullmatch(rf"connected to scheduler {re.escape(env_address)}; dashboard http://127\.0\.0\.1:\d+/status", lines[0]), lines
    with Client(env_address, timeout=10) as again:
        assert again.scheduler_info()["workers"]


def test_scheduler_flag_with_a_local_spec(two_clusters, no_env_address):
    b, _ = two_clusters["b"]
    assert _reached(ClusterSection(start_timeout=30), scheduler=b)[0] == b


def test_n_workers_flag_starts_a_local_cluster_despite_environment(two_clusters, env_address):
    lines = []
    with connect(ClusterSection(start_timeout=60), n_workers=1, echo=lines.append) as client:
        address = client.scheduler.address
        assert len(client.scheduler_info()["workers"]) == 1
    assert address not in {two_clusters["a"][0], two_clusters["b"][0]}
    assert address.startswith("tcp://127.0.0.1:")
    assert len(lines) == 1 and lines[0].startswith("started LocalCluster with 1 worker(s)")
    with pytest.raises(OSError):  # the cluster connect started is gone
        Client(address, timeout=2)


def test_address_kind_without_address_names_the_keys(no_env_address):
    with pytest.raises(InputError, match=r"cluster\.address or cluster\.scheduler_file.*--scheduler"):
        with connect(_address_section(), echo=lambda *a: None):
            pass


# ---------------------------------------------------------------- TLS files

KEYS = ("tls_ca_file", "tls_client_cert", "tls_client_key")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A temporary CA/cert/key (distributed's own, in memory) written to PEM files."""
    security = Security.temporary()
    folder = tmp_path_factory.mktemp("tls")
    files = {}
    for key in KEYS:
        files[key] = str(folder / f"{key}.pem")
        with open(files[key], "w") as f:
            f.write(getattr(security, key))
    return security, files


@pytest.mark.parametrize("missing", KEYS)
def test_missing_security_file_names_key_and_file(tls_files, tmp_path, missing):
    _, files = tls_files
    gone = str(tmp_path / "no-such" / f"{missing}.pem")
    section = SecuritySection(**{**files, missing: gone})
    with pytest.raises(InputError) as err:
        security_from(section)
    assert f"cluster.security.{missing}" in str(err.value) and gone in str(err.value)
    with pytest.raises(InputError, match=f"cluster.security.{missing}"):  # before any connection
        with connect(_address_section(address="tls://127.0.0.1:1", security=section), echo=lambda *a: None):
            pass


def test_security_files_connect_to_a_tls_scheduler(tls_files):
    security, files = tls_files
    assert security_from(None) is None
    made = security_from(SecuritySection(**files))
    assert made.require_encryption and {k: getattr(made, k) for k in KEYS} == files
    with _in_process_cluster(security=security) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        section = _address_section(address=cluster.scheduler_address, security=SecuritySection(**files))
        assert _reached(section)[0] == cluster.scheduler_address
        with pytest.raises(OSError):  # the same scheduler refuses a client without the files
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=2)


# ---------------------------------------------------------------- worker plugin

def _worker_state():
    """Run in a worker process: what WorkerSetup claims to set up."""
    import os
    import sys

    state = {key: os.environ.get(key) for key in ("HDF5_USE_FILE_LOCKING", "TF_CPP_MIN_LOG_LEVEL")}
    state["pid"] = os.getpid()
    state["backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    state["tensorflow_loaded"] = "tensorflow" in sys.modules
    if state["tensorflow_loaded"]:
        import tensorflow as tf

        physical = tf.config.list_physical_devices("GPU")
        visible = tf.config.get_visible_devices("GPU")
        state["gpus"] = (len(physical), len(visible), [tf.config.experimental.get_memory_growth(g) for g in visible])
    return state


def test_worker_setup_prepares_current_and_future_worker_processes(monkeypatch):
    """Worker 1 exists before registration (TensorFlow backend: GPU set up); worker 2 starts
    after it, with KERAS_BACKEND=torch, where TensorFlow must be left alone (and not imported)."""
    for key in ("HDF5_USE_FILE_LOCKING", "TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND"):
        monkeypatch.delenv(key, raising=False)  # workers must not simply inherit them from here
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        before = client.run(_worker_state)
        (state,) = before.values()
        assert state["pid"] != os.getpid()
        assert state["HDF5_USE_FILE_LOCKING"] is None and state["TF_CPP_MIN_LOG_LEVEL"] is None
        assert not state["tensorflow_loaded"]

        client.register_plugin(WorkerSetup())
        cluster.new_spec["options"]["env"] = {"KERAS_BACKEND": "torch"}  # for workers started from now on
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        after = client.run(_worker_state)
    assert len(after) == 2 and set(before) < set(after)
    (later,) = set(after) - set(before)
    assert after[later]["backend"] == "torch" and not after[later]["tensorflow_loaded"]
    (first,) = before
    assert after[first]["backend"] == "tensorflow" and after[first]["tensorflow_loaded"]
    n_physical, n_visible, growth = after[first]["gpus"]
    assert n_visible == min(1, n_physical)  # exactly one GPU where there is one
    assert growth == [True] * n_visible
    for address, state in after.items():
        assert state["HDF5_USE_FILE_LOCKING"] == "FALSE", address
        assert state["TF_CPP_MIN_LOG_LEVEL"] == "2", address
