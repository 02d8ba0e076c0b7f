"""Pipeline layer: Dask clusters, where work runs. Knows nothing of what a task computes.

- :func:`connect` gives a ``distributed.Client`` for a spec's ``cluster`` section, a scheduler
  address or scheduler file, or ``DASK_SCHEDULER_ADDRESS`` (as ``distributed.Client()`` does);
  otherwise it starts a ``LocalCluster`` of worker processes with one thread each, bound to
  127.0.0.1. A Dask scheduler runs any code a client sends it: never expose one to a network
  you do not trust, and use TLS (``cluster.security``) between machines.
- :class:`WorkerSetup` prepares every worker process before its first task: HDF5 file locking
  off (each task writes whole files of its own), quieter TensorFlow logs, and on a GPU worker
  exactly one visible GPU with memory growth, set before any TensorFlow op runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import dask
from distributed import Client, LocalCluster, WorkerPlugin
from distributed.security import Security
from ..errors import InputError

log = logging.getLogger(__name__)

WORKER_ENV = {"HDF5_USE_FILE_LOCKING": "FALSE", "TF_CPP_MIN_LOG_LEVEL": "2"}


def configure_gpu() -> str:
    """Make the first visible GPU this process's only one, with memory growth. Returns a note.

    dask-cuda gives each worker its own ``CUDA_VISIBLE_DEVICES``, so "first visible" is the
    worker's GPU. With ``KERAS_BACKEND=torch`` (or jax) TensorFlow is not touched.
    """
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return f"backend {os.environ['KERAS_BACKEND']}: GPU placement left to it"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU: running on CPU"
    try:
        tf.config.set_visible_devices(gpus[0], "GPU")
        tf.config.experimental.set_memory_growth(gpus[0], True)
    except RuntimeError as err:  # TensorFlow already initialised in this process
        return f"GPU already initialised, left as is: {err}"
    return f"using {gpus[0].name} with memory growth"


class WorkerSetup(WorkerPlugin):
    """Registered with ``client.register_plugin``; runs on every current and future worker."""

    name = "daskdiff-worker-setup"

    def setup(self, worker: Any) -> None:
        os.environ.update(WORKER_ENV)
        note = configure_gpu()
        log.info("daskdiff worker %s: %s", getattr(worker, "address", "?"), note)


def security_from(section: Any) -> Security | None:
    if section is None:
        return None
    for key in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        path = getattr(section, key)
        if not os.path.isfile(path):
            raise InputError(f"cluster.security.{key}: file {path!r} does not exist")
    return Security(
        tls_ca_file=section.tls_ca_file,
        tls_client_cert=section.tls_client_cert,
        tls_client_key=section.tls_client_key,
        require_encryption=True,
    )


def _bokeh_available() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def connect(
    section: Any,
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    n_workers: int | None = None,
    echo=print,
) -> Iterator[Client]:
    """A client for the job; a cluster started here is closed on exit.

    Precedence: ``scheduler`` / ``scheduler_file`` arguments (the CLI), then the spec's
    ``cluster.kind`` (``address`` with ``cluster.address``/``cluster.scheduler_file``, ``slurm``,
    ``local_cuda``), then ``DASK_SCHEDULER_ADDRESS`` / dask config ``scheduler-address``, then a
    new ``LocalCluster``.
    """
    security = security_from(section.security)
    if scheduler or scheduler_file:  # the command line's choice replaces the spec's, whole
        address, sfile = scheduler, scheduler_file
    elif section.kind == "address":
        address, sfile = section.address, section.scheduler_file
    else:
        address = sfile = None
    if section.kind == "address" and not (address or sfile):
        raise InputError("cluster.kind 'address' needs cluster.address or cluster.scheduler_file (or --scheduler)")
    env_address = dask.config.get("scheduler-address", None)
    if address or sfile or (section.kind == "local" and env_address and not n_workers):
        client = Client(address or (None if sfile else env_address), scheduler_file=sfile, security=security, timeout=section.start_timeout)
        echo(f"connected to scheduler {client.scheduler.address}")
        try:
            client.wait_for_workers(1, timeout=section.start_timeout)
            yield client
        finally:
            client.close()
        return

    cluster = _start_cluster(section, n_workers, security)
    try:
        with Client(cluster, security=security) as client:
            want = len(cluster.workers) if section.kind != "slurm" else 1
            client.wait_for_workers(max(1, want), timeout=section.start_timeout)
            link = f"dashboard {client.dashboard_link}" if _bokeh_available() else "no dashboard (pip install bokeh for one)"
            echo(f"started {type(cluster).__name__} with {len(client.scheduler_info()['workers'])} worker(s); {link}")
            yield client
    finally:
        cluster.close()


def _start_cluster(section: Any, n_workers: int | None, security: Security | None) -> Any:
    n = n_workers or section.n_workers
    if section.kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise InputError("cluster.kind 'slurm' needs dask-jobqueue: pip install 'daskdiff[slurm]'") from None
        cluster = SLURMCluster(**section.slurm, security=security) if security else SLURMCluster(**section.slurm)
        cluster.scale(jobs=section.jobs)
        return cluster
    if section.kind == "local_cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise InputError("cluster.kind 'local_cuda' needs dask-cuda: pip install 'daskdiff[gpu]'") from None
        kwargs = {"n_workers": n} if n else {}
        return LocalCUDACluster(threads_per_worker=1, host="127.0.0.1", resources={"GPU": 1}, security=security, **kwargs)
    return LocalCluster(
        n_workers=n or max(1, min(os.cpu_count() or 1, 4)),
        threads_per_worker=section.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit=section.memory_limit,
        security=security,
    )


def gpu_resource_offered(client: Client) -> bool:
    """Whether any worker advertises a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())
