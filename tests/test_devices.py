"""One accelerator per worker, and what a failing one says (issue 16, item 2), without a GPU.

The one-device rule is checked where it acts: what :class:`daskdiff.pipeline.workers.WorkerSetup`
sets in real worker processes before any backend op, given the ``CUDA_VISIBLE_DEVICES`` that
dask-cuda gives its workers (a fake multi-GPU environment: the variable is all the backends read).
A GPU that runs out of memory is the real exception class of each backend, raised from the
forward pass of a real job.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from daskdiff.errors import DeviceError, JobError
from daskdiff.pipeline.workers import DEVICE_ATTRIBUTE, WorkerSetup, device_failure, one_device
from jobtools import local_cluster, tiny_spec


@pytest.mark.parametrize("visible, n_gpus, name, expected", [
    ("2,3,0,1", 4, 2, "2"),          # dask-cuda's worker 2: its list starts with its own GPU
    ("GPU-5f2e,GPU-81aa", 0, "x", "GPU-5f2e"),  # UUIDs, as CUDA accepts them
    ("1", 4, 0, None),               # one already
    ("", 4, 0, None),                # none visible: left so
    (None, 4, 5, "1"),               # unset on a 4-GPU node: worker 5 -> GPU 1
    (None, 4, "node-6", "2"),        # dask worker --nworkers names
    (None, 4, "tcp://h:1", "1"),     # an index read off the end of any name
    (None, 1, 3, None),              # one GPU, or
    (None, 0, 3, None),              # a CPU node: nothing to choose
])
def test_one_device_per_worker(visible, n_gpus, name, expected):
    choice, why = one_device(visible, n_gpus, name)
    assert choice == expected, why


def test_a_name_without_an_index_gets_gpu_0_and_the_fix():
    choice, why = one_device(None, 8, "alpha")
    assert choice == "0" and "CUDA_VISIBLE_DEVICES or cluster.kind: local_cuda" in why


@pytest.mark.keras
@pytest.mark.cluster
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_worker_processes_keep_one_of_the_gpus_dask_cuda_gives_them(backend):
    """Worker processes started with dask-cuda's variable for worker 1 of 3 (``'1,2,0'``): after the
    plugin, each sees only GPU 1, set before the backend initialised CUDA, and JAX allocates as it goes."""
    pytest.importorskip(backend)
    env = {"CUDA_VISIBLE_DEVICES": "1,2,0", "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with local_cluster(2, env=env) as cluster, \
            Client(cluster) as client:
        client.register_plugin(WorkerSetup())

        def seen(dask_worker):
            import importlib

            importlib.import_module(backend)  # the backend's import does not initialise CUDA
            return os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), getattr(dask_worker, DEVICE_ATTRIBUTE)

        for visible, prealloc, record in client.run(seen).values():
            assert visible == "1" and prealloc == "false"
            assert record["device"] == "CUDA_VISIBLE_DEVICES='1,2,0' -> '1' (the first, the worker's own as dask-cuda orders them) " \
                                       "(set before any backend initialised CUDA)"
            assert record["gpu"] is False  # no GPU here: the backend finds none, and says so
            assert record["note"] == f"backend {backend}: GPU placement left to it"


def _torch_oom():
    torch = pytest.importorskip("torch")
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.06 GiB. GPU 0 has a total capacity of 139.8 GiB")


def _tensorflow_oom():
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[256,64,224,224] and type float")


def _jax_oom():
    jax = pytest.importorskip("jax")
    return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 3288334336 bytes.")


@pytest.mark.parametrize("make, why", [
    pytest.param(_torch_oom, "out of memory", marks=pytest.mark.keras),
    pytest.param(_tensorflow_oom, "out of memory", marks=pytest.mark.keras),
    pytest.param(_jax_oom, "out of memory", marks=pytest.mark.keras),
    (lambda: RuntimeError("CUDA error: an illegal memory access was encountered"), "device failure"),
    (lambda: RuntimeError("CUDA error: unspecified launch failure"), "device failure"),
    (lambda: ValueError("Input 0 of layer conv1 is incompatible with the layer"), None),
    (lambda: MemoryError("Unable to allocate 3.2 GiB for an array"), None),  # the host's memory: not the device's
])
def test_device_failures_are_told_apart(make, why):
    assert device_failure(make()) == why


@pytest.mark.cluster
def test_a_gpu_out_of_memory_fails_the_job_naming_worker_device_and_batch_size(tmp_path, tiny_model_path, image_folders, monkeypatch):
    """The forward pass raises torch's OutOfMemoryError (as a GPU worker's would): the job stops with
    one error naming the worker, its device and the batch size, and saying to lower it."""
    import daskdiff.model.extract as extract
    from daskdiff.pipeline.job import run_job

    def out_of_memory(*args, **kwargs):
        raise _torch_oom()

    monkeypatch.setattr(extract, "model_input", out_of_memory)  # thread workers: this process's module
    sets = {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}
    spec = tiny_spec(tiny_model_path, sets, tmp_path / "out", extraction__batch_size=3, extraction__retries=0)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with pytest.raises(JobError) as caught:
            run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
        address = next(iter(client.scheduler_info()["workers"]))
    message = str(caught.value)
    assert isinstance(caught.value.__cause__, DeviceError), repr(caught.value.__cause__)
    assert f"worker {address} (TensorFlow lists 0 GPU(s)): out of memory in the forward pass of shard 0 of set" in message
    assert "batches of 3 image(s) (OutOfMemoryError: CUDA out of memory." in message
    assert "lower extraction.batch_size (now 3)" in message
