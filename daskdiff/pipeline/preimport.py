"""Pipeline layer: what the server that forks a ``LocalCluster``'s workers imports, once.

:mod:`daskdiff.pipeline.forkserver` names this module as the server's preload. Importing it sets
the workers' environment (:data:`~daskdiff.pipeline.workers.WORKER_ENV`), then imports Keras and
its backend (:func:`~daskdiff.model.quiet.import_keras_quietly`), Dask's worker and daskdiff's
tasks: what each worker's preload (:mod:`daskdiff.pipeline.warm`) and first task would import.
Nothing here lists a device, initialises CUDA or starts a thread: a process may be forked safely
only then (Dask's ``pre-spawn-environ`` gives the server ``OMP_NUM_THREADS=1`` and the like, so
numpy's BLAS starts no threads of its own either).
"""

from __future__ import annotations

import os

from ..model.quiet import import_keras_quietly
from .workers import WORKER_ENV

os.environ.update(WORKER_ENV)
import_keras_quietly()

import distributed  # noqa: E402,F401  (what each worker process runs)

from . import tasks, warm  # noqa: E402,F401
