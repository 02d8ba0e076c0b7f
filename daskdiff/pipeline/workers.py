"""Pipeline layer: each worker process set up for the job, and what its accelerator does.

- :class:`WorkerSetup` prepares every worker process before its first task: HDF5 file locking
  off (each task writes whole files of its own), quieter TensorFlow logs, and on a GPU worker
  exactly one visible GPU (:func:`give_one_device`) with memory growth (:func:`configure_gpu`),
  set before any backend initialises CUDA. What it finds is kept on the worker
  (:data:`DEVICE_ATTRIBUTE`); the client reads it (:func:`mislabeled_gpu_workers`).
- :func:`device_error` turns an accelerator's failure in a forward pass (out of memory, a lost
  device) into one :class:`~daskdiff.errors.DeviceError` naming the worker, its device, the batch
  size and the fix.
- :func:`decoders` decides a worker's image-decoding processes (``extraction.decoders``).
- :func:`leave_interrupts_to_the_client` makes the worker processes of a cluster daskdiff starts
  on this machine deaf to the terminal's Ctrl-C: the client closes them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import threading
from typing import Any

from distributed import Client, WorkerPlugin
from distributed.core import Status

from ..errors import DeviceError, shorten
from ..model.quiet import import_tensorflow_quietly
from .machine import node_gpus, usable_cores
from .spec import MAX_DECODERS

log = logging.getLogger(__name__)

WORKER_ENV = {"HDF5_USE_FILE_LOCKING": "FALSE", "TF_CPP_MIN_LOG_LEVEL": "2"}
"""Environment of every worker process (:class:`WorkerSetup`)."""

DEVICE_ATTRIBUTE = "daskdiff_device"
"""The worker attribute where :class:`WorkerSetup` records ``{'gpu': bool | None, 'found': str, 'note': str,
'device': str}`` (``device``: how it left the worker one GPU, :func:`give_one_device`)."""


def _worker_index(name: Any) -> int | None:
    """A worker's index from its name: ``3``, ``'3'`` or ``'node-3'`` (``dask worker --nworkers``)."""
    if isinstance(name, int):
        return name
    match = re.search(r"(\d+)$", str(name)) if name is not None else None
    return int(match.group(1)) if match else None


def one_device(visible: str | None, n_gpus: int, worker_name: Any) -> tuple[str | None, str]:
    """The ``CUDA_VISIBLE_DEVICES`` value that leaves a worker exactly one GPU (None: leave it as
    it is), and why, in words.

    - ``CUDA_VISIBLE_DEVICES`` lists several GPUs: the first. dask-cuda's ``LocalCUDACluster``
      gives worker *i* the list rotated to start at GPU *i*, so the first is the worker's own.
    - It is unset on a node of ``n_gpus > 1``: GPU ``index % n_gpus``, the index read from the
      worker's name (LocalCluster names 0, 1, ...; ``dask worker --nworkers`` names ``NAME-i``);
      GPU 0 for a name without one (said, with the fix).
    - Otherwise (one GPU or none visible, ``''``, a CPU node): unchanged.
    """
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if len(ids) <= 1:
            return None, f"CUDA_VISIBLE_DEVICES={visible!r}: {'one GPU' if ids else 'no GPU'} visible already"
        return ids[0], f"CUDA_VISIBLE_DEVICES={visible!r} -> {ids[0]!r} (the first, the worker's own as dask-cuda orders them)"
    if n_gpus <= 1:
        return None, f"{n_gpus} GPU(s) on this node"
    index = _worker_index(worker_name)
    if index is None:
        return "0", (f"{n_gpus} GPUs and a worker name without an index ({worker_name!r}): GPU 0; give each worker "
                     "its own with CUDA_VISIBLE_DEVICES or cluster.kind: local_cuda")
    return str(index % n_gpus), f"{n_gpus} GPUs, worker {worker_name!r} -> GPU {index % n_gpus}"


def _cuda_started() -> list[str]:
    """The backends in this process that have already initialised CUDA (then a new
    ``CUDA_VISIBLE_DEVICES`` no longer applies to them)."""
    started = []
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.cuda, "is_initialized", lambda: False)():
        started.append("torch")
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and getattr(bridge, "_backends", None):
        started.append("jax")
    return started


def give_one_device(worker_name: Any) -> str:
    """Make this worker process see exactly one GPU, before any backend's first op; returns a note.

    Sets ``CUDA_VISIBLE_DEVICES`` (:func:`one_device`), which TensorFlow, torch and JAX read when
    they first initialise CUDA, and ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that JAX allocates
    as it goes (TensorFlow's memory growth, set by :func:`configure_gpu`; torch does so anyway).
    A backend that has already initialised CUDA keeps what it saw: the note says so, and for
    torch the chosen device is made current (``torch.cuda.set_device``).
    """
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    choice, why = one_device(old, node_gpus(), worker_name)
    if choice is None:
        return why
    started = _cuda_started()
    os.environ["CUDA_VISIBLE_DEVICES"] = choice
    if not started:
        return why + " (set before any backend initialised CUDA)"
    if "torch" in started:
        import torch

        ids = [v.strip() for v in old.split(",")] if old else [str(i) for i in range(torch.cuda.device_count())]
        torch.cuda.set_device(ids.index(choice))
    return why + f" (but {' and '.join(started)} had initialised CUDA already: restart the worker for the setting to hold)"


def configure_gpu() -> str:
    """Make the first visible GPU this process's only one, with memory growth. Returns a note.

    dask-cuda gives each worker its own ``CUDA_VISIBLE_DEVICES``, so "first visible" is the
    worker's GPU. With ``KERAS_BACKEND=torch`` (or jax) TensorFlow is not touched.
    """
    tf = import_tensorflow_quietly()
    if tf is None:
        return f"backend {os.environ['KERAS_BACKEND']}: GPU placement left to it"
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU: running on CPU"
    try:
        tf.config.set_visible_devices(gpus[0], "GPU")
        tf.config.experimental.set_memory_growth(gpus[0], True)
    except RuntimeError as err:  # TensorFlow already initialised in this process
        return f"GPU already initialised, left as is: {err}"
    return f"using {gpus[0].name} with memory growth"


def worker_device() -> tuple[bool | None, str]:
    """``(has a GPU, what was found)`` in this process, as the Keras backend sees it.

    TensorFlow: ``tf.config.list_physical_devices('GPU')``; ``KERAS_BACKEND=torch``:
    ``torch.cuda.is_available()``; ``jax``: ``jax.devices()``. None where it cannot be told.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        if backend == "tensorflow":
            gpus = import_tensorflow_quietly().config.list_physical_devices("GPU")
            return bool(gpus), f"TensorFlow lists {len(gpus)} GPU(s)"
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available()), f"torch.cuda.is_available() is {torch.cuda.is_available()}"
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return bool(gpus), f"jax lists {len(gpus)} GPU(s)"
    except Exception as err:  # a backend that cannot load here: not a reason to fail the worker
        return None, f"backend {backend} could not be asked ({type(err).__name__}: {err})"
    return None, f"backend {backend}: not checked"


_MEMORY_FAILURES = ("out of memory", "resource_exhausted", "resource exhausted", "oom when allocating")
_DEVICE_FAILURES = ("cuda error", "cudnn", "cublas_status", "device-side assert", "illegal memory access",
                    "unspecified launch failure", "ecc error", "gpu is lost", "device lost", "fell off the bus")


def device_failure(err: BaseException) -> str | None:
    """What went wrong with the accelerator in ``err``, in words, or None if it is not such a failure.

    Read from the exception's type and message as each backend raises them: TensorFlow's
    ``ResourceExhaustedError`` (``OOM when allocating``), torch's ``OutOfMemoryError`` (``CUDA out
    of memory``) and ``CUDA error: ...``, JAX's ``XlaRuntimeError: RESOURCE_EXHAUSTED``.
    """
    kind = type(err).__name__.lower()
    text = f"{kind} {err}".lower()
    if "outofmemory" in kind or "resourceexhausted" in kind or any(m in text for m in _MEMORY_FAILURES):
        return "out of memory"
    if any(m in text for m in _DEVICE_FAILURES):
        return "device failure"
    return None


def _this_worker() -> tuple[str, dict]:
    """This worker's address and what :class:`WorkerSetup` found of its device (``'this process'``
    and ``{}`` outside a worker)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return "this process", {}
    return getattr(worker, "address", "?"), getattr(worker, DEVICE_ATTRIBUTE, {})


def device_error(err: BaseException, batch_size: int, where: str) -> DeviceError | None:
    """The :class:`~daskdiff.errors.DeviceError` of a forward pass that failed with ``err`` on
    this worker (None when ``err`` is not an accelerator's failure, :func:`device_failure`):
    names the worker, its device (as :class:`WorkerSetup` found it) and the batch size, and the fix."""
    if (why := device_failure(err)) is None:
        return None
    address, device = _this_worker()
    fix = (f"lower extraction.batch_size (now {batch_size}), or give each worker one GPU of its own (cluster.kind: local_cuda)"
           if why == "out of memory" else "check the GPU (nvidia-smi) and re-run the same command to resume; the worker may need a restart")
    return DeviceError(f"worker {address} ({device.get('found', 'device unknown')}): {why} in the forward pass of {where}, "
                       f"batches of {batch_size} image(s) ({type(err).__name__}: {shorten(str(err), 300)}); {fix}")


def decoders(requested: int | None = None) -> int:
    """The image-decoding processes of this worker for ``extraction.decoders``.

    A number (``requested``) is capped by the cores this process may use
    (:func:`daskdiff.pipeline.machine.usable_cores`): more decoders than cores only take memory.
    ``auto`` (None): 1 without a GPU (the cores run the forward pass); with one (as
    :class:`WorkerSetup` found), those cores over the node's GPUs (one worker each), at most
    :data:`daskdiff.pipeline.spec.MAX_DECODERS`.
    """
    if requested is not None:
        return max(1, min(requested, usable_cores()))
    if not _this_worker()[1].get("gpu"):
        return 1
    return max(1, min(MAX_DECODERS, usable_cores() // max(1, node_gpus())))


WORKER_MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20),
    "MALLOC_TOP_PAD_": str(64 * 2**20),
}
"""glibc's allocator settings for the worker processes of a cluster daskdiff starts on this
machine, set before each starts (Dask config ``daskdiff.worker-malloc``; glibc reads them once, at
a process's start). Dask's own (``distributed.nanny.pre-spawn-environ``) set
``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes glibc's mmap threshold at 128 KiB: every
tensor and array above it was a fresh ``mmap``, and every batch and task paid again for zeroed
pages (on this 2-core VM ~4 s per GB). Here blocks up to 32 MiB are reused from the heap, up to
128 MiB of free memory stays at its top, and one arena serves every thread (without it TensorFlow's
threads each kept their own, and a worker ~0.9 GB more). Measured on the seed job
(docs/performance.md): 78.3 -> 63.6-68.1 s, the process tree 5.51 -> 5.66 GB. Values and results
do not change; what a worker frees it gives back at the end of extraction
(:func:`give_back_freed_memory`). On by default (Dask config ``daskdiff.worker-malloc``)."""


def give_back_freed_memory() -> None:
    """Give the memory this process has freed, but its C allocator keeps, back to the system
    (glibc's ``malloc_trim(0)``); nothing where the C library is not glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class WorkerSetup(WorkerPlugin):
    """Registered with ``client.register_plugin``; runs on every current and future worker.

    What it finds (a GPU or not, and the note of :func:`configure_gpu`) is kept on the worker
    (:data:`DEVICE_ATTRIBUTE`), where the client reads it: see :func:`mislabeled_gpu_workers`.
    """

    name = "daskdiff-worker-setup"

    def setup(self, worker: Any) -> None:
        if getattr(worker, DEVICE_ATTRIBUTE, None) is not None:  # done once per process (also by the preload)
            return
        os.environ.update(WORKER_ENV)
        device = give_one_device(getattr(worker, "name", None))
        note = configure_gpu()
        gpu, found = worker_device()
        setattr(worker, DEVICE_ATTRIBUTE, {"gpu": gpu, "found": found, "note": note, "device": device})
        log.info("daskdiff worker %s: %s; %s", getattr(worker, "address", "?"), device, note)


class _NoNewsWhileClosing(logging.Filter):
    """Drops records whose message holds ``phrase`` while ``worker`` is closing, which the client
    asked for: what a close interrupts is no news then."""

    def __init__(self, worker: Any, phrase: str) -> None:
        super().__init__()
        self.worker = worker
        self.phrase = phrase

    def filter(self, record: logging.LogRecord) -> bool:
        closing = getattr(self.worker, "status", None) in (Status.closing, Status.closing_gracefully, Status.closed)
        return not (closing and self.phrase in record.getMessage())


QUIET_WHILE_CLOSING = {
    "distributed.worker.state_machine": "ended with CancelledError",
    "distributed.worker": "Failed to communicate with scheduler during heartbeat",
}
"""Logger -> the phrase of its record that a closing worker does not print
(:func:`leave_interrupts_to_the_client`): distributed's warning that a task its close cancelled
``ended with CancelledError``, and the traceback of a heartbeat caught by the close of the
worker's own connection pool (``CommClosedError: ConnectionPool closing``)."""


def leave_interrupts_to_the_client(worker: Any) -> bool:
    """Make this worker process ignore SIGINT, and not warn of what its closing interrupts
    (:data:`QUIET_WHILE_CLOSING`).

    The worker processes of a ``LocalCluster`` share the terminal's process group with the
    ``daskdiff`` client, so Ctrl-C (SIGINT to the whole group) reaches each of them too: their
    event loops would end in ``KeyboardInterrupt`` tracebacks and ``CancelledError`` warnings
    while the client is still closing them. Ignored here (the preload
    :mod:`daskdiff.pipeline.warm`, as each worker starts), Ctrl-C interrupts only the client,
    which closes the cluster (:func:`daskdiff.pipeline.cluster.connect`). Processes this worker
    starts later (image decoders) inherit the setting. Returns whether SIGINT is now ignored
    (not from another thread than the main one, where Python cannot set a handler).

    Only for processes that daskdiff starts and closes itself: a worker started with ``dask
    worker`` in a terminal keeps its own Ctrl-C.
    """
    for name, phrase in QUIET_WHILE_CLOSING.items():
        logging.getLogger(name).addFilter(_NoNewsWhileClosing(worker, phrase))
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return True


def gpu_resource_offered(client: Client) -> bool:
    """Whether any worker advertises a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())


def _device_of(dask_worker: Any) -> dict | None:
    return getattr(dask_worker, DEVICE_ATTRIBUTE, None)


def mislabeled_gpu_workers(client: Client) -> tuple[dict[str, str], int]:
    """Workers that offer a ``GPU`` resource but have no GPU, and how many offer one.

    Returns ``({address: what the worker found}, number of workers offering GPU)``. The device
    is what :class:`WorkerSetup` found on each worker (registered first); a worker that could
    not tell (another backend that failed to load) is not counted as mislabeled.
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    labeled = [a for a, w in workers.items() if w.get("resources", {}).get("GPU", 0) > 0]
    if not labeled:
        return {}, 0
    try:
        devices = client.run(_device_of, workers=labeled, on_error="return")
    except Exception:  # workers gone meanwhile: nothing to say about them
        return {}, len(labeled)
    wrong = {a: d["found"] for a, d in devices.items() if isinstance(d, dict) and d.get("gpu") is False}
    return wrong, len(labeled)
