"""Pipeline layer: a ``LocalCluster``'s workers forked from one process that imported Keras once.

Dask spawns each worker process of a ``LocalCluster`` afresh (``distributed.worker.
multiprocessing-method: spawn``), and each imports TensorFlow and Keras before its first task:
~7 s of CPU and ~330 MB of private memory per worker (TensorFlow 2.21, this project's 2-core CI
machine), for every worker of every cluster. With Python's ``forkserver`` start method, the
workers are forked instead from one server process that imported them once
(:mod:`daskdiff.pipeline.preimport`): a second cluster in the same process starts in under a
second instead of ~12 s (``docs/performance.md``), and the workers share the imported modules'
memory with the server until they write to it.

:func:`start_method` decides, for each ``LocalCluster`` daskdiff starts, and starts the server
the first time. A forked worker is the worker a spawned one would be only where the server runs
in the environment the worker would be spawned with, so the server is used only while:

- Dask config ``daskdiff.worker-forkserver`` is true (the default);
- the platform is Linux and the node has no GPU: no CUDA runtime may be initialised before a
  fork, and each worker chooses its GPU before its backend first touches CUDA
  (:func:`~daskdiff.pipeline.workers.give_one_device`), so GPU nodes keep spawning;
- ``distributed.worker.multiprocessing-method`` is Dask's ``spawn`` (a user's own choice holds)
  and ``distributed.nanny.environ`` is empty (those variables are set in a worker after it
  starts, too late for a backend the server imported already);
- this process's environment, with Dask's ``distributed.nanny.pre-spawn-environ`` over it as the
  nanny applies it (:func:`spawned_environment`), is the one the server was started with.
  Otherwise (a variable changed since) that cluster's workers are spawned as before. Left out of
  the comparison: :data:`UNCOMPARED` (pytest's name of the running test). Importing
  TensorFlow in this process changes it (TensorFlow 2.21 sets ~10 variables as it loads): a
  client that builds a model to plan a job after its first cluster started gets spawned workers
  for the next one; one that plans from the architecture cache does not import it.

A worker its nanny restarts (killed for memory, frozen) is spawned as before: Dask reads the start
method as each worker starts, and daskdiff sets it only while it starts the cluster. The server
lives as long as this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import sys

import dask
import psutil
from distributed.proctitle import enable_proctitle_on_children

from . import config
from .machine import node_gpus

PRELOAD = "daskdiff.pipeline.preimport"
"""The module the server imports once, before it forks any worker."""

UNCOMPARED = frozenset({"PYTEST_CURRENT_TEST"})
"""Variables left out of the comparison of environments: pytest's names the test and phase that
this process runs and changes at every one. A worker forked from the server sees the value it
had when the server started.
"""

_SERVER: dict = {}
"""The server this module started: ``pid``, and ``environ``, the environment it was started in
(:func:`spawned_environment` as this module computed it, less :data:`UNCOMPARED`)."""


def spawned_environment() -> dict[str, str]:
    """The environment a worker process that a nanny spawned now would start with.

    This process's environment, with Dask config ``distributed.nanny.pre-spawn-environ`` over it
    as distributed's ``Nanny`` applies it: a variable this environment sets already keeps its
    value, a ``None`` in the config sets nothing, and ``PYTHONHASHSEED`` is 6640 unless the config
    gives another value than 0 (so that Python's hashes agree across workers).
    """
    pre_spawn = {key: os.environ.get(key, str(value))
                 for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items() if value is not None}
    if pre_spawn.get("PYTHONHASHSEED") in (None, "0"):
        pre_spawn["PYTHONHASHSEED"] = "6640"
    return {**os.environ, **pre_spawn}


def _compared(environ: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if key not in UNCOMPARED}


def _running_server() -> psutil.Process | None:
    """This process's running forkserver (whoever started it), or None."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            if "multiprocessing.forkserver" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                return child
    return None


def _usable() -> bool:
    """Whether the workers of a ``LocalCluster`` started now may be forked at all (the module's
    list, less the environment's check)."""
    return (config.flag("daskdiff.worker-forkserver") and sys.platform.startswith("linux") and node_gpus() == 0
            and dask.config.get("distributed.worker.multiprocessing-method") == "spawn"
            and not dask.config.get("distributed.nanny.environ", {}))


def start_method() -> str:
    """The ``distributed.worker.multiprocessing-method`` for the ``LocalCluster`` daskdiff is
    about to start, under the Dask config it starts with: ``'forkserver'`` where its workers may
    be forked from the server (see the module's docstring; the first call starts the server),
    else the configured method, unchanged.

    Starting the server sets ``distributed.nanny.pre-spawn-environ`` in this process's environment,
    as the cluster's nannies do anyway as they start their workers.
    """
    configured = dask.config.get("distributed.worker.multiprocessing-method")
    if not _usable():
        return configured
    enable_proctitle_on_children()  # as each nanny does before it starts its worker (a variable naming this process)
    environ = spawned_environment()
    server = _running_server()
    if server is None and not _SERVER:
        os.environ.update(environ)
        multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD])
        multiprocessing.forkserver.ensure_running()
        server = _running_server()
        # Recorded as computed: a variable another thread sets meanwhile (this client importing
        # TensorFlow, which sets its own) reaches the server too, as it reaches every worker that imports it.
        _SERVER.update(pid=server.pid if server is not None else None, environ=_compared(environ))
    if server is not None and server.pid == _SERVER.get("pid") and _compared(environ) == _SERVER["environ"]:
        return "forkserver"
    return configured

