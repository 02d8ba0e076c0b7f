"""Pipeline layer: a worker preload that sets the worker up and imports Keras as it starts.

The ``LocalCluster`` daskdiff starts passes it to each worker (``preload``), so that the set-up
(:class:`daskdiff.pipeline.workers.WorkerSetup`: the environment, the one GPU the worker may
use, chosen before any framework touches CUDA) and importing TensorFlow, torch or jax (seconds)
happen while the client is still planning the job (:class:`daskdiff.pipeline.cluster.EarlyCluster`),
not in the first extraction task. The plugin the client registers later finds the set-up done.
A failed import is left to the first task that needs Keras, which reports it naming the task.
Each worker also leaves the terminal's Ctrl-C to the client, which closes it
(:func:`daskdiff.pipeline.workers.leave_interrupts_to_the_client`).
"""

from __future__ import annotations

import contextlib
from typing import Any


def dask_setup(worker: Any) -> None:
    """Leave Ctrl-C to the client, set the worker up, then import Keras (Dask calls this once, as
    the worker starts)."""
    from .workers import leave_interrupts_to_the_client, WorkerSetup

    leave_interrupts_to_the_client(worker)
    WorkerSetup().setup(worker)
    with contextlib.suppress(Exception):  # a failed import: the first task that needs Keras raises it, naming the task
        import keras  # noqa: F401
