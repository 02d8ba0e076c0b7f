"""The workers of a LocalCluster daskdiff starts are forked from a server that imported Keras once
(daskdiff.pipeline.forkserver), and each is the worker Dask would have spawned: the same
environment, Keras imported, and spawned instead wherever the server's environment is no longer
this process's.

Each case runs in a fresh Python process (PROBE), whose forkserver is its own: the one of the
test process was started by whichever test started a cluster first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.keras, pytest.mark.cluster, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks only on Linux")]

PROBE = r"""
import json, os, sys
import dask
from distributed import Client
from daskdiff.pipeline import forkserver
from daskdiff.pipeline.cluster import _start_cluster, local_workers
from daskdiff.pipeline.spec_cluster import ClusterSection

def forward():
    import keras, numpy as np
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(8)])
    return model.predict(np.linspace(-1, 1, 4 * 64, dtype="float32").reshape(4, 64), verbose=0).tolist()

def workers(**config):
    with dask.config.set(config):
        cluster = _start_cluster(ClusterSection(n_workers=2), 2, None)
    with Client(cluster) as client:
        client.wait_for_workers(2)
        seen = client.run(lambda: {"parent": os.getppid(), "environ": dict(os.environ), "keras": "keras" in sys.modules,
                                   "forward": forward()})
    cluster.close()
    return list(seen.values())

def own_cluster_workers():  # a LocalCluster of one's own, started as daskdiff starts its own
    from distributed import LocalCluster
    with local_workers():
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with cluster, Client(cluster) as client:
        return list(client.run(lambda: {"parent": os.getppid(), "keras": "keras" in sys.modules}).values())

cases = {"forked": workers(), "spawned": workers(**{"daskdiff.worker-forkserver": False})}
os.environ["PYTEST_CURRENT_TEST"] = "tests/test_other.py::test_next (call)"  # as pytest sets it at every test's phase
cases["own cluster, pytest's variable changed"] = own_cluster_workers()
from daskdiff.model.quiet import import_tensorflow_quietly
import_tensorflow_quietly()  # here as in the workers, without TensorFlow's native lines on a machine without CUDA
cases["here"] = forward()
os.environ["DASKDIFF_PROBE_VARIABLE"] = "set after the server started"
cases["after a change"] = workers()
print(json.dumps({"client": os.getpid(), "server": forkserver._running_server().pid, "cases": cases}))
"""


@pytest.fixture(scope="module")
def probed():
    env = {k: v for k, v in os.environ.items() if k != "DASKDIFF_PROBE_VARIABLE"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


def test_workers_are_forked_from_the_server_with_keras_imported(probed):
    seen, _ = probed
    forked = seen["cases"]["forked"]
    assert seen["server"] not in (None, seen["client"])
    assert [w["parent"] for w in forked] == [seen["server"]] * 2
    assert all(w["keras"] for w in forked)


def test_a_forked_worker_has_the_environment_a_spawned_one_has(probed):
    seen, _ = probed
    spawned, forked = seen["cases"]["spawned"], seen["cases"]["forked"]
    assert [w["parent"] for w in spawned] == [seen["client"]] * 2  # Dask's own start: the reference
    assert all(w["keras"] for w in spawned)
    assert forked[0]["environ"] == spawned[0]["environ"]
    assert forked[1]["environ"] == spawned[1]["environ"]
    assert spawned[0]["environ"]["MALLOC_ARENA_MAX"] == "1"  # daskdiff's pre-spawn settings reached both


def test_a_forked_worker_computes_what_a_spawned_one_and_a_plain_process_compute(probed):
    seen, _ = probed
    here = seen["cases"]["here"]  # the same seeded model and batch in the probe's own process
    assert [w["forward"] for w in seen["cases"]["forked"]] == [here] * 2  # bit for bit (JSON keeps float32 values exactly)
    assert [w["forward"] for w in seen["cases"]["spawned"]] == [here] * 2


def test_a_variable_changed_after_the_server_started_gets_spawned_workers_that_see_it(probed):
    seen, _ = probed
    after = seen["cases"]["after a change"]
    assert [w["environ"].get("DASKDIFF_PROBE_VARIABLE") for w in after] == ["set after the server started"] * 2
    assert [w["parent"] for w in after] == [seen["client"]] * 2


def test_a_cluster_started_under_local_workers_is_forked_whatever_test_pytest_is_running(probed):
    """pytest's PYTEST_CURRENT_TEST changes at every test: it is left out of the comparison (the
    tests' own clusters are started so, tests/jobtools.py)."""
    seen, _ = probed
    own = seen["cases"]["own cluster, pytest's variable changed"]
    assert [w["parent"] for w in own] == [seen["server"]]
    assert own[0]["keras"]


def test_forked_workers_say_nothing_more_than_spawned_ones(probed):
    _, stderr = probed
    assert "cuInit" not in stderr, stderr[-3000:]  # TensorFlow's no-driver error, printed as a forked worker first lists devices
