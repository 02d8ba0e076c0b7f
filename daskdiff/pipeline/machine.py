"""Pipeline layer: what this machine gives daskdiff: its cores, its memory and its GPUs.

Read without importing Dask, a Keras backend or any CUDA library, so that the budget
(:mod:`daskdiff.pipeline.budget`) can be checked in milliseconds and a worker can count its
node's GPUs before any backend touches CUDA (:mod:`daskdiff.pipeline.workers`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (SLURM, dask-cuda and containers restrict
    it), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """The workers of a ``LocalCluster`` daskdiff starts when neither ``--workers`` nor
    ``cluster.n_workers`` says: one per core, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def machine_memory() -> int:
    """This machine's memory as Dask's ``distributed.system.MEMORY_LIMIT`` computes it: the
    physical memory, or a lower cgroup (v2 or v1) limit (without importing distributed: 0.7 s)."""
    import psutil

    total = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            total = min(total, int(Path(path).read_text().strip()))
        except (OSError, ValueError):  # absent, or 'max'
            continue
    return total


def node_gpus() -> int:
    """NVIDIA GPUs on this node, counted from their device files (``/dev/nvidia0`` ...), without
    initialising any CUDA library."""
    return len(glob.glob("/dev/nvidia[0-9]*"))
