"""Pipeline layer: the clusters daskdiff starts through optional packages: SLURM jobs
(dask-jobqueue, ``cluster.kind: slurm``) and dask-cuda's ``LocalCUDACluster`` (``local_cuda``).

- :func:`start_slurm` submits the workers' jobs; :func:`wait_for_slurm` waits for the first
  worker, and raises at once, in one line naming the spec keys, a job that ``sbatch`` refused.
- :func:`start_local_cuda` starts one worker per GPU, or says in one line why it cannot (no
  dask-cuda, no NVIDIA driver).

Both packages are imported only here, when such a cluster is asked for, with Python's SIGINT
handler kept (:func:`_import_keeping_sigint`).
"""

from __future__ import annotations

import importlib
import re
import signal
import threading
import time
from typing import Any

from distributed import Client

from ..errors import InputError, JobError, shorten


def _import_keeping_sigint(module: str) -> Any:
    """Import ``module``; then put back the SIGINT handler it replaced.

    ``dask_jobqueue.runner``, imported by ``dask_jobqueue``, installs ``lambda *_: sys.exit()``
    for SIGINT at import, so Ctrl-C would end a SLURM job with status 0 and no message; with
    Python's handler back, Ctrl-C raises ``KeyboardInterrupt`` as on every other cluster kind.
    """
    if threading.current_thread() is not threading.main_thread():
        return importlib.import_module(module)
    before = signal.getsignal(signal.SIGINT)
    try:
        return importlib.import_module(module)
    finally:
        now = signal.getsignal(signal.SIGINT)
        if now is not before or getattr(now, "__module__", "") == "dask_jobqueue.runner":
            keep = before if getattr(before, "__module__", "") != "dask_jobqueue.runner" else signal.default_int_handler
            signal.signal(signal.SIGINT, keep)


# ---------------------------------------------------------------- SLURM: sbatch refusals, jobs still queued

SBATCH_KEYS = (
    ("partition", ("queue",)),
    ("account", ("account",)),
    ("memory", ("memory", "job_mem")),
    ("time limit", ("walltime",)),
    ("cpu", ("cores", "job_cpu")),
    ("processor", ("cores", "job_cpu")),
    ("gres", ("job_extra_directives",)),
)
"""Words of an ``sbatch: error:`` line, and the ``cluster.slurm`` keys that set what it refuses."""


def _recording_job_class(failures: list[str]) -> type:
    """A ``SLURMJob`` whose failed submission is appended to ``failures`` (one line), not raised.

    Raised, the failure would be logged from dask-jobqueue's event loop as ~140 lines of
    traceback, and the job would stay ``Status.created`` (an ``AssertionError`` at its start,
    another when the cluster closes) while daskdiff waited out ``start_timeout``. Recorded, it is
    raised at once on the client (:func:`wait_for_slurm`); the job that never existed is marked
    running so that the cluster closes without it (it has no job id: nothing to ``scancel``).
    """
    from dask_jobqueue.slurm import SLURMJob
    from distributed.core import Status

    class RecordingSLURMJob(SLURMJob):
        async def start(self) -> None:
            try:
                await super().start()
            except (RuntimeError, OSError, ValueError) as err:
                failures.append(_sbatch_error(err))
                self.status = Status.running

    return RecordingSLURMJob


def _sbatch_error(err: BaseException) -> str:
    """The ``sbatch: error:`` lines of a failed submission (or its one-line cause)."""
    if isinstance(err, FileNotFoundError):
        return f"{err.filename or 'sbatch'} not found: run daskdiff where SLURM's sbatch is on PATH (a login node)"
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("sbatch:")]
    if not lines:
        match = re.search(r"stderr:\n(.*)", text, re.S)
        lines = [line.strip() for line in (match.group(1) if match else text).splitlines() if line.strip()][-2:]
    return "; ".join(lines) or type(err).__name__


def _slurm_keys_for(message: str, slurm: Any) -> str:
    keys = [key for word, ks in SBATCH_KEYS if word in message.lower() for key in ks]
    keys = list(dict.fromkeys(keys or ["queue", "account", "memory", "walltime", "cores", "job_extra_directives"]))
    named = []
    for key in keys:
        value, where = slurm.resolved(key)
        named.append(f"cluster.slurm.{key}" + (f" {value!r}" + ("" if where.startswith("cluster.") else f" (from {where})") if value is not None else ""))
    return ", ".join(named)


def wait_for_slurm(client: Client, cluster: Any, section: Any) -> None:
    """Wait for the first SLURM worker; an ``sbatch`` refusal is raised at once, a queued job at ``start_timeout``.

    Raises
    ------
    JobError
        ``sbatch`` refused the job (its ``sbatch: error:`` line, and the spec keys that set what
        it refused), or no SLURM job started a worker within ``cluster.start_timeout``.
    """
    failures = getattr(cluster, "daskdiff_submit_failures", [])
    deadline = time.monotonic() + section.start_timeout
    while True:
        if failures:
            raise JobError(f"cluster.kind slurm: sbatch refused the job: {failures[0]}; check {_slurm_keys_for(failures[0], section.slurm)} "
                           "(sinfo lists partitions and their limits)")
        if client.scheduler_info(n_workers=-1).get("workers"):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ids = [str(job.job_id) for job in cluster.workers.values() if getattr(job, "job_id", None)]
    queue, where = section.slurm.resolved("queue")
    partition = f"partition {queue!r} ({where})" if queue else "the default partition (cluster.slurm.queue not set)"
    if ids:
        raise JobError(f"cluster.kind slurm: SLURM job {', '.join(ids)} in {partition} started no worker within {section.start_timeout} s "
                       f"(cluster.start_timeout); it is still queued or failed at start: see 'squeue -j {','.join(ids)}' (the REASON "
                       f"column) and the job's log, or raise cluster.start_timeout")
    raise JobError(f"cluster.kind slurm: sbatch gave no job id within {section.start_timeout} s (cluster.start_timeout); check that "
                   "sbatch works on this machine (sbatch --version) and that SLURM's controller answers (sinfo)")


def start_slurm(section: Any, tls: dict, ttl: dict) -> Any:
    """A ``SLURMCluster`` of ``cluster.jobs`` jobs for the ``cluster`` section ``section``.

    ``tls``: the ``security`` and ``protocol`` of a TLS cluster (workers get ``--protocol tls://``
    and the certificate files), or ``{}``; ``ttl``: the scheduler's ``worker_ttl``, or ``{}``
    (the spec's or Dask config's ``scheduler_options`` win). A job that ``sbatch`` refuses is
    recorded on the cluster, for :func:`wait_for_slurm`.
    """
    try:
        SLURMCluster = _import_keeping_sigint("dask_jobqueue").SLURMCluster
    except ImportError:
        raise InputError("cluster.kind 'slurm' needs dask-jobqueue: pip install 'daskdiff[slurm]'") from None
    failures: list[str] = []
    try:  # workers get --protocol tls:// --tls-ca-file/--tls-cert/--tls-key
        options = {**ttl, **(section.slurm.resolved("scheduler_options")[0] or {})}  # the spec's or config's worker_ttl wins
        cluster = SLURMCluster(job_cls=_recording_job_class(failures), **{**section.slurm.kwargs(), "scheduler_options": options, **tls})
    except (ValueError, TypeError) as err:  # a value from Dask config jobqueue.slurm.* that dask-jobqueue refuses
        raise InputError(f"cluster.slurm: dask-jobqueue refused the SLURMCluster options (with Dask config jobqueue.slurm.* "
                         f"under them): {' '.join(str(err).split())}") from None
    cluster.daskdiff_submit_failures = failures
    cluster.scale(jobs=section.jobs)
    return cluster


# ---------------------------------------------------------------- dask-cuda

def _import_dask_cuda() -> Any:
    """``dask_cuda``, or one line with the real reason it cannot be imported.

    An installed dask-cuda without its CUDA extra (``dask-cuda[cu12]``) fails at import on a
    module of its own dependencies; that message is the one to show, not "needs dask-cuda".
    """
    try:
        return _import_keeping_sigint("dask_cuda")
    except ModuleNotFoundError as err:
        if err.name == "dask_cuda":
            raise InputError("cluster.kind 'local_cuda' needs dask-cuda: pip install 'daskdiff[gpu]' (on CPU machines use cluster.kind: local)") from None
        cause = err
    except Exception as err:  # ImportError, or a CUDA library's own error at import
        cause = err
    why = " ".join(f"{type(cause).__name__}: {cause}".split())
    raise InputError(f"cluster.kind 'local_cuda': dask-cuda is installed but cannot be imported ({shorten(why, 400)}); "
                     "install the consistent set with pip install 'daskdiff[gpu]' (dask-cuda[cu12]), or use cluster.kind: local on CPU machines") from None


def _nvml_problem() -> str | None:
    """None where NVML (the NVIDIA driver's library, which dask-cuda asks) sees a GPU; else why not."""
    try:
        import pynvml
    except Exception as err:
        return f"pynvml (nvidia-ml-py) cannot be imported: {err}"
    try:
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as err:  # pynvml.NVMLError_*: no driver, no library
        return f"NVML: {' '.join(str(err).split()) or type(err).__name__}"
    return None if count else "NVML: 0 devices"


def start_local_cuda(n_workers: int | None, tls: dict, ttl: dict) -> Any:
    """dask-cuda's ``LocalCUDACluster``: ``n_workers`` workers (None: one per GPU), each with one
    thread, its own GPU and a ``GPU`` resource, bound to 127.0.0.1 (``tls`` and ``ttl`` as for
    :func:`start_slurm`).

    Raises
    ------
    InputError
        dask-cuda is not installed or cannot be imported, or NVML sees no GPU.
    JobError
        ``LocalCUDACluster`` failed to start (in one line, not dask-cuda's traceback).
    """
    LocalCUDACluster = _import_dask_cuda().LocalCUDACluster
    problem = _nvml_problem()
    if problem:
        raise InputError(f"cluster.kind 'local_cuda': no NVIDIA GPU/driver found ({problem}); use cluster.kind: local on CPU machines")
    kwargs = {"n_workers": n_workers} if n_workers else {}
    try:
        return LocalCUDACluster(threads_per_worker=1, host="127.0.0.1", resources={"GPU": 1}, scheduler_kwargs=ttl, **tls, **kwargs)
    except Exception as err:  # one line, not dask-cuda's traceback
        why = " ".join(f"{type(err).__name__}: {err}".split())
        if "nvml" in why.lower():
            raise InputError(f"cluster.kind 'local_cuda': no NVIDIA GPU/driver found (NVML: {why}); use cluster.kind: local on CPU machines") from None
        raise JobError(f"cluster.kind 'local_cuda': dask-cuda's LocalCUDACluster did not start ({shorten(why, 400)}); "
                       "check the GPUs with nvidia-smi, or use cluster.kind: local") from None
