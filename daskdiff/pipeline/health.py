"""Pipeline layer: whether a job's workers can work, before the cluster starts and while the job runs.

- Before any cluster starts (and in a dry run), :func:`check_worker_memory` refuses a worker
  memory limit below what a worker holds before its first task (:func:`worker_baseline`: Python,
  Dask, the Keras backend and the model): Dask would pause such a worker for good (no task ever
  runs: a silent hang) or kill and restart it in a loop.
- While the job runs, :class:`WorkerWatch` turns what Dask does to the workers into console
  lines and one-line :class:`~daskdiff.errors.JobError`\\ s: every worker paused by memory it
  holds outside any task, or workers restarted for memory before any task of the job finished,
  end the job naming the memory key and what to set; a worker restarted because it stopped
  answering (no heartbeat within the scheduler's worker TTL, ``daskdiff.worker-ttl`` on clusters
  daskdiff starts) is one warning line, and its tasks run on the other workers.

Conventions
-----------
Memory is a process's resident set size (RSS), as Dask's worker and nanny measure it. A worker
stops starting tasks above ``distributed.worker.memory.pause`` (0.8) of its limit, and its
nanny kills and restarts it above ``distributed.worker.memory.terminate`` (0.95).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import dask

from ..errors import JobError
from ..logs import reporter, warn
from ..model.keras_config import backend_name
from . import config
from .budget import BudgetError, gb, Limits

_echo = reporter(__name__)  # the default echo: this module's logger (see daskdiff.logs)

WORKER_BASELINE: dict[str, tuple[int, float]] = {
    "tensorflow": (1_075_000_000, 1.0),
    "torch": (645_000_000, 1.0),
    "jax": (510_000_000, 1.0),
}
"""Per Keras backend, ``(bytes, factor)``: a worker holds ``bytes + factor x`` the model's weight
bytes before its first task. Measured by ``benchmarks/worker_baseline.py``: the RSS of a
LocalCluster worker started as daskdiff starts it (the preload imports Keras), after building
the model and one forward pass of 16 images, and after a whole tiny-model job (the libraries
that tasks load: xarray, netCDF4, PIL, scipy); Linux x86-64, CPU, TensorFlow 2.21, torch 2.13,
jax 0.10.2, Keras 3.15:

==========  ==========  ===================  ===================  ===========================
backend     preloaded   tiny model, forward  tiny-model job       VGG16 (553 MB random weights)
==========  ==========  ===================  ===================  ===========================
tensorflow  804 MB      837 MB               892 MB               1.44 GB (peak 2.6 GB)
torch       562 MB      584 MB               645 MB               1.14 GB (peak 2.1 GB)
jax         337 MB      460 MB               511 MB               1.03 GB (peak 2.3 GB)
==========  ==========  ===================  ===================  ===========================

In a virtual environment made fresh from this project's ``pyproject.toml`` (as ``dev.py`` and CI
make it; 2026-12-07, dask 2026.7-2026.8) a TensorFlow worker of the tiny-model job held 1.07-1.08 GB
(``tests/test_worker_health.py``'s measured baseline, three runs), against 0.85-0.89 GB in an
older, hand-grown environment with the same package versions: the table's TensorFlow figure is the
fresh environment's, which is what users install. ``bytes`` is the tiny-model job's figure; ``factor`` is VGG16's figure less the tiny model's
over its weights (~1 byte of RSS per byte of weights on every backend; TensorFlow held 2.27 GB
with VGG16, 2.55 bytes per byte, until daskdiff put it under the system allocator,
:data:`daskdiff.model.quiet.TF_DEFAULT_ENV`: 1.44 GB on 2026-12-07, 845 / 877 / 922 MB in the
other columns in the older environment). A
bare Dask worker without Keras holds 71 MB. A GPU build of a backend holds more (CUDA's
libraries), so on a GPU node these figures are lower bounds, as a refusal needs."""


def worker_baseline(weight_bytes: int, backend: str) -> int:
    """Bytes a worker process holds before its first task, with a model of ``weight_bytes`` of
    weights on Keras backend ``backend`` (:data:`WORKER_BASELINE`; the smallest of them for a
    backend not measured)."""
    fixed, factor = WORKER_BASELINE.get(backend, min(WORKER_BASELINE.values()))
    return int(fixed + factor * weight_bytes)


def memory_fractions() -> tuple[float | None, float | None]:
    """Dask's ``(pause, terminate)`` fractions of a worker's memory limit (None where disabled)."""
    pause = dask.config.get("distributed.worker.memory.pause", None)
    terminate = dask.config.get("distributed.worker.memory.terminate", None)
    return (float(pause) if pause else None), (float(terminate) if terminate else None)


def limit_to_set(holds: int, task_memory: int = 0) -> int:
    """The smallest memory limit, rounded up to 0.1 GB, under which a worker that holds ``holds``
    bytes before its first task and ``task_memory`` more in its largest task stays below Dask's
    target fraction (``distributed.worker.memory.target``, 0.6: above it a worker spills the
    results it holds to disk; else the pause fraction, else the terminate fraction)."""
    target = dask.config.get("distributed.worker.memory.target", None)
    pause, terminate = memory_fractions()
    fraction = float(target or pause or terminate or 1.0)
    return math.ceil((holds + task_memory) / fraction / 1e8) * 100_000_000


@dataclass(frozen=True)
class MemoryNeeds:
    """What a worker of a job needs, and which setting gives it its memory: for the messages of
    :func:`check_worker_memory` and :class:`WorkerWatch`."""

    baseline: int
    """Bytes a worker holds before its first task (:func:`worker_baseline`)."""
    weight_bytes: int
    backend: str
    task_memory: int
    """Bytes of the job's largest task (the estimate's)."""
    limit: int | None
    """A worker's memory limit as planned (None: not known here, an external cluster)."""
    source: str
    """Where the limit comes from, in words (:attr:`daskdiff.pipeline.budget.Limits.worker_memory_source`)."""
    key: str
    """The setting to change: ``cluster.memory_limit``, ``cluster.slurm.memory`` or the workers' ``--memory-limit``."""
    processes: int = 1
    """Worker processes that share ``key``'s value (those of a SLURM job)."""

    def what(self) -> str:
        """What the baseline holds, in words."""
        return f"Python, Dask, Keras on {self.backend} and the model's {gb(self.weight_bytes)} of weights"

    def fix(self, holds: int = 0) -> str:
        """What to set, for a worker that holds ``holds`` bytes (at least the baseline) before its first task."""
        need = limit_to_set(max(holds, self.baseline), self.task_memory)
        size = f"{need / 1e9:.1f}GB"
        if self.processes > 1:
            return (f"set {self.key} to at least {need * self.processes / 1e9:.1f}GB ({size} for each of its "
                    f"{self.processes} worker processes), or fewer cluster.slurm.processes")
        if self.key.startswith("cluster."):
            return f"set {self.key} to at least {size}"
        return f"give each worker at least {size} ({self.key})"


def memory_needs(cluster: Any, limits: Limits, weight_bytes: int, task_memory: int) -> MemoryNeeds:
    """The :class:`MemoryNeeds` of a job on ``cluster`` (the spec's section) with ``limits``,
    a model of ``weight_bytes`` of weights and a largest task of ``task_memory`` bytes; the
    backend is the client's Keras backend, which the workers it starts inherit."""
    backend = backend_name()
    processes = 1
    if limits.worker_memory is None:
        key = "dask worker --memory-limit"
    elif cluster.kind == "slurm":
        key, processes = "cluster.slurm.memory", int(cluster.slurm.resolved("processes")[0] or 1)
    else:
        key = "cluster.memory_limit"
    return MemoryNeeds(worker_baseline(weight_bytes, backend), weight_bytes, backend, task_memory, limits.worker_memory,
                       limits.worker_memory_source, key, processes)


def check_worker_memory(needs: MemoryNeeds, *, force: bool = False, echo: Callable = _echo) -> None:
    """Refuse a worker memory limit under which a worker would hold, before its first task, more
    than Dask's pause fraction of it (or, with pausing off, its terminate fraction).

    Raises
    ------
    BudgetError
        One line naming the setting, the limit, the baseline and what to set, unless ``force``
        (then echoed, starting ``--force:``).
    """
    pause, terminate = memory_fractions()
    fraction = pause or terminate
    if not needs.limit or fraction is None or needs.baseline < fraction * needs.limit:
        return
    happens = ("at which Dask pauses a worker (distributed.worker.memory.pause): no task would ever run" if pause
               else "at which Dask's nanny kills and restarts a worker (distributed.worker.memory.terminate), in a loop")
    line = (f"{needs.source} gives each worker {gb(needs.limit)}, but a worker holds ~{gb(needs.baseline)} before its first "
            f"task ({needs.what()}), over the {gb(fraction * needs.limit)} ({fraction:.0%}) {happens}; {needs.fix()}")
    if force:
        warn(echo, f"--force: running although {line}")
        return
    raise BudgetError(f"{line}, or re-run with --force to run it anyway")


# ---------------------------------------------------------------- while the job runs

def _restarts_before_work() -> int:
    """Dask config ``daskdiff.health.restarts-before-work``: restarts of workers for memory, before
    any task of the job finished, that end the job (Dask gives up on a task whose workers died
    ``distributed.scheduler.allowed-failures`` times)."""
    return config.number("daskdiff.health.restarts-before-work", int, positive=True)


def _restarts(count: int) -> str:
    return "1 restart" if count == 1 else f"{count} restarts"


_COMM_ERRORS = ("CommClosedError", "StreamClosedError", "KilledWorker")


class WorkerWatch:
    """Watches a job's workers from the client (a context manager around the job's work).

    :meth:`poll` (from the loop that waits for the job's tasks) asks the scheduler, at most every
    ``daskdiff.health.poll-interval`` (Dask config, 1 s), for the workers' state and for restarts
    by their nannies' memory monitors (events ``worker-restart-memory``); a worker the scheduler
    restarts for silence (a ``worker-ttl-timed-out`` event) is reported as it happens.

    Parameters
    ----------
    client : distributed.Client
    needs : MemoryNeeds
        For the messages: the setting that gives workers memory, and what to set.
    echo : callable
        Receives each warning line.
    """

    def __init__(self, client: Any, needs: MemoryNeeds, echo: Callable = _echo) -> None:
        self.client, self.needs, self.echo = client, needs, echo
        self.finished = 0
        self._next_poll = 0.0
        self._known: set = set()
        self._restarts: list[dict] = []
        self._paused: set[str] = set()
        self._stuck_since: float | None = None
        self._last_seen: dict[str, float] = {}
        self._limits: dict[str, int] = {}

    def __enter__(self) -> "WorkerWatch":
        self._known = {self._event_id(event) for event in self._memory_events()}  # restarts before this job's: not its own
        self.client.subscribe_topic("scheduler", self._on_scheduler_event)
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(Exception):  # a client whose scheduler is gone: nothing to unsubscribe from
            self.client.unsubscribe_topic("scheduler")

    # -- what Dask reports

    @staticmethod
    def _event_id(event: tuple) -> tuple:
        stamp, msg = event
        return stamp, msg.get("pid"), msg.get("worker")

    def _memory_events(self) -> tuple:
        return tuple(self.client.get_events("worker-restart-memory"))

    def _on_scheduler_event(self, event: tuple) -> None:
        """A worker the scheduler restarts because it sent no heartbeat within its TTL: one line each."""
        stamp, msg = event
        if not isinstance(msg, dict) or msg.get("action") != "worker-ttl-timed-out":
            return
        for address in msg.get("workers", ()):
            seen = self._last_seen.get(address)
            silent = f"{stamp - seen:.0f} s" if seen is not None and stamp > seen else f"over {msg.get('ttl', 0):g} s"
            warn(self.echo, f"warning: worker {address} stopped answering: no heartbeat for {silent} (the scheduler's worker TTL is "
                      f"{msg.get('ttl', 0):g} s; daskdiff.worker-ttl on clusters daskdiff starts); it is restarted, and its tasks "
                      "run on the other workers")

    # -- the checks

    def poll(self, finished: int) -> None:
        """Check the workers (at most every ``daskdiff.health.poll-interval``); ``finished``: tasks of the job finished so far.

        Raises
        ------
        JobError
            Workers were restarted for memory ``daskdiff.health.restarts-before-work`` times (3)
            before any task finished, or every worker has been paused by memory held outside any
            task for ``daskdiff.health.stuck-after`` (15 s). Both are Dask config keys
            (``docs/configuration.md``).
        """
        self.finished = finished
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + config.seconds("daskdiff.health.poll-interval")
        self._check_restarts()
        self._check_paused(now)

    def _check_restarts(self) -> None:
        for event in self._memory_events():
            if (key := self._event_id(event)) in self._known:
                continue
            self._known.add(key)
            msg = event[1]
            self._restarts.append(msg)
            limit = self._limits.get(msg.get("worker"), self.needs.limit)
            terminate = memory_fractions()[1] or 1.0
            of = f"{terminate:.0%} of its {gb(limit)} memory limit ({self.needs.source})" if limit else "its memory limit"
            warn(self.echo, f"warning: worker {msg.get('worker')} (pid {msg.get('pid')}) held {gb(msg.get('rss', 0))}, over {of}: "
                      "its nanny killed and restarted it")
        if self.finished == 0 and len(self._restarts) >= _restarts_before_work():
            raise self._restart_error()

    def _restart_error(self) -> JobError:
        largest = max(m.get("rss", 0) for m in self._restarts)
        limit = self.needs.limit or max(self._limits.values(), default=0)
        of = f" ({gb(limit)}, {self.needs.source})" if limit else ""
        return JobError(
            f"workers were killed and restarted for exceeding their memory limit{of} before any task of the job finished "
            f"({_restarts(len(self._restarts))} reported, up to {gb(largest)} each; a worker holds ~{gb(self.needs.baseline)} before its first "
            f"task: {self.needs.what()}); {self.needs.fix(largest)}"
        )

    def _check_paused(self, now: float) -> None:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        pause = memory_fractions()[0]
        stuck = {}
        for address, w in workers.items():
            self._last_seen[address] = w.get("last_seen", 0.0)
            limit = int(w.get("memory_limit") or 0)
            self._limits[address] = limit
            metrics = w.get("metrics", {})
            held = int(metrics.get("memory", 0)) - int(metrics.get("managed_bytes", 0))  # what spilling cannot free
            if (pause and limit and w.get("status") == "paused" and not metrics.get("task_counts", {}).get("executing")
                    and held >= pause * limit):
                stuck[address] = (held, limit)
        for address, (held, limit) in stuck.items():
            if address not in self._paused:
                self._paused.add(address)
                warn(self.echo, f"warning: worker {address} is paused: it holds {gb(held)} outside any task, over {pause:.0%} of its "
                          f"{gb(limit)} memory limit (distributed.worker.memory.pause), so Dask gives it no task")
        if not stuck or len(stuck) < len(workers):
            self._stuck_since = None
            return
        self._stuck_since = self._stuck_since or now
        if now - self._stuck_since < config.seconds("daskdiff.health.stuck-after"):
            return
        address, (held, limit) = max(stuck.items(), key=lambda item: item[1][0])
        where = "before its first task" if self.finished == 0 else "outside any task"
        raise JobError(
            f"every worker is paused, so no task can run: worker {address} holds {gb(held)} {where}, over the "
            f"{pause:.0%} of its {gb(limit)} memory limit ({self.needs.source}) at which Dask pauses a worker "
            f"(distributed.worker.memory.pause; a worker holds ~{gb(self.needs.baseline)} before its first task: "
            f"{self.needs.what()}); {self.needs.fix(held)}"
        )

    def explain(self, err: BaseException, wait: float = 5.0) -> JobError | None:
        """The memory error behind ``err`` (a closed connection, a ``KilledWorker``), or None.

        When no task of the job has finished and a worker was restarted for memory (looked for
        up to ``wait`` seconds: the event may come after the error it caused), ``err`` is taken
        for a consequence of too little memory: the error of :meth:`poll` for it.
        """
        chain, seen = [], err
        while seen is not None and len(chain) < 10:
            chain.append(type(seen).__name__)
            seen = seen.__cause__ or seen.__context__
        if self.finished or not any(name in _COMM_ERRORS or name.endswith("ConnectionError") for name in chain):
            return None
        if self.client.status not in ("running", "newly-created"):  # the scheduler is gone: not the workers' memory
            return None
        # A KilledWorker follows allowed-failures restarts, whose events can reach the scheduler
        # after it: wait for them all, so the count said is the count that happened.
        enough = _restarts_before_work() if "KilledWorker" in chain else 1
        deadline = time.monotonic() + wait
        while True:
            try:
                self._check_restarts()
            except JobError as found:
                return found
            except Exception:  # the scheduler is gone too: nothing more to learn
                return self._restart_error() if self._restarts else None
            if len(self._restarts) >= enough or (self._restarts and time.monotonic() > deadline):
                return self._restart_error()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
