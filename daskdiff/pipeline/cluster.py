"""Pipeline layer: Dask clusters, where work runs. Knows nothing of what a task computes.

- :func:`connect` gives a ``distributed.Client`` for a spec's ``cluster`` section, a scheduler
  address or scheduler file, or ``DASK_SCHEDULER_ADDRESS`` (as ``distributed.Client()`` does);
  otherwise it starts a ``LocalCluster`` of worker processes with one thread each, bound to
  127.0.0.1. A Dask scheduler runs any code a client sends it: never expose one to a network
  you do not trust, and use TLS (``cluster.security``) between machines. Clusters daskdiff
  starts itself (local, local_cuda, slurm) listen on ``tls://`` when the spec has a
  ``cluster.security`` section, with the scheduler and worker certificates it names.
- Failures to reach a scheduler (a wrong address, a scheduler file that never appears, a TLS
  handshake refused) and a scheduler lost mid-job are raised as one-line
  :class:`~daskdiff.errors.InputError`/:class:`~daskdiff.errors.JobError`\\ s that name the
  address or file, the spec key, and what to check.
- :class:`WorkerSetup` prepares every worker process before its first task: HDF5 file locking
  off (each task writes whole files of its own), quieter TensorFlow logs, and on a GPU worker
  exactly one visible GPU with memory growth, set before any TensorFlow op runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import dask
from distributed import Client, LocalCluster, Nanny, WorkerPlugin
from distributed.security import Security
from ..errors import DeviceError, InputError, JobError
from ..io.reading import TEXT_FILE_MAX_BYTES, NotReadableError, read_regular
from ..logs import reporter
from . import config  # noqa: F401  (daskdiff's defaults in dask.config: daskdiff.worker-ttl)
from .health import MemoryNeeds, WorkerWatch
from .spec import MAX_DECODERS, shorten

log = logging.getLogger(__name__)
_echo = reporter(__name__)  # the default echo: this module's logger (see daskdiff.logs)

WORKER_ENV = {"HDF5_USE_FILE_LOCKING": "FALSE", "TF_CPP_MIN_LOG_LEVEL": "2"}

CLOSE_TIMEOUT = 30.0
"""Seconds a worker process of a cluster daskdiff started may take to exit before it is killed.

distributed's own default (4 s) is shorter than a TensorFlow process needs on a busy machine, so
every LocalCluster run ended with ``Worker process still alive after 4.0 seconds, killing``."""

# ---------------------------------------------------------------- TensorFlow's native start-up lines

_GLOG_LINE = re.compile(r"^([IWEF])\d{4} \d+:\d+:[\d.]+\s+\d+ \S+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = "IWEF"


def _tf_min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _drop_tf_noise(lines: list[str], level: int) -> list[str]:
    """``lines`` written to the native stderr while TensorFlow loaded, less what ``level`` hides.

    TensorFlow >= 2.17 logs through absl before ``absl::InitializeLog()``, which ignores
    ``TF_CPP_MIN_LOG_LEVEL``; this applies it: severities I(0), W(1), E(2) below ``level`` and absl's
    preamble are dropped. The ``failed call to cuInit`` error that follows cudart's "Could not find
    cuda drivers" (a machine without a GPU driver) says nothing more, and goes too at level 2.
    """
    if level <= 0:
        return lines
    no_driver = any("Could not find cuda drivers" in line for line in lines)
    kept = []
    for line in lines:
        if line.rstrip("\n") == _ABSL_PREAMBLE:
            continue
        match = _GLOG_LINE.match(line)
        if match:
            severity = _SEVERITY.index(match.group(1))
            if severity < level or (no_driver and severity < 3 and level >= 2 and "failed call to cuInit" in line):
                continue
        kept.append(line)
    return kept


@contextlib.contextmanager
def _filtered_native_stderr(level: int) -> Iterator[None]:
    """Within the block, file descriptor 2 goes to a temporary file; on exit what
    :func:`_drop_tf_noise` keeps of it is written to the real stderr (so nothing else that another
    thread wrote meanwhile is lost, only delayed)."""
    if level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (or a stderr without flush)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = _drop_tf_noise(tmp.read().decode(errors="replace").splitlines(keepends=True), level)
            if kept:
                os.write(2, "".join(kept).encode())


def import_tensorflow_quietly() -> Any:
    """Import TensorFlow and list its GPUs, without the ~5 native lines it prints despite
    ``TF_CPP_MIN_LOG_LEVEL`` (see :func:`_drop_tf_noise`). Returns the module, or None where
    ``KERAS_BACKEND`` is not ``tensorflow`` (then TensorFlow is not imported)."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return None
    with _filtered_native_stderr(_tf_min_log_level()):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf


def node_gpus() -> int:
    """NVIDIA GPUs on this node, counted from their device files (``/dev/nvidia0`` ...), without
    initialising any CUDA library."""
    import glob

    return len(glob.glob("/dev/nvidia[0-9]*"))


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
    (:func:`daskdiff.pipeline.budget.usable_cores`): more decoders than cores only take memory.
    ``auto`` (None): 1 without a GPU (the cores run the forward pass); with one (as
    :class:`WorkerSetup` found), those cores over the node's GPUs (one worker each), at most
    :data:`daskdiff.pipeline.spec.MAX_DECODERS`.
    """
    from .budget import usable_cores

    if requested is not None:
        return max(1, min(requested, usable_cores()))
    if not _this_worker()[1].get("gpu"):
        return 1
    return max(1, min(MAX_DECODERS, usable_cores() // max(1, node_gpus())))


DEVICE_ATTRIBUTE = "daskdiff_device"
"""The worker attribute where :class:`WorkerSetup` records ``{'gpu': bool | None, 'found': str, 'note': str,
'device': str}`` (``device``: how it left the worker one GPU, :func:`give_one_device`)."""


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


# ---------------------------------------------------------------- TLS

_ROLES = ("client", "scheduler", "worker")


def security_from(section: Any) -> Security | None:
    """The ``Security`` of a ``cluster.security`` section (None without one), encryption required.

    Every file must exist. The scheduler and worker certificates default to the client's (see
    :class:`~daskdiff.pipeline.spec.SecuritySection`); they serve the clusters daskdiff starts.
    """
    if section is None:
        return None
    keys = ["tls_ca_file"] + [k for role in _ROLES for k, _ in section.role_files(role)]
    for key in dict.fromkeys(keys):
        path = getattr(section, key)
        if not os.path.isfile(path):
            raise InputError(f"cluster.security.{key}: file {path!r} does not exist")
    files = {}
    for role in _ROLES:
        (_, cert), (_, key) = section.role_files(role)
        files[f"tls_{role}_cert"], files[f"tls_{role}_key"] = os.path.abspath(cert), os.path.abspath(key)
    return Security(tls_ca_file=os.path.abspath(section.tls_ca_file), require_encryption=True, **files)


def _context(security: Security, role: str, section: Any, listen: bool) -> ssl.SSLContext:
    (cert_key, cert), (key_key, key) = section.role_files(role)
    try:
        args = security.get_listen_args(role) if listen else security.get_connection_args(role)
    except (ssl.SSLError, OSError) as err:
        raise InputError(
            f"cluster.security: cannot load {cert_key} {cert!r} with {key_key} {key!r} and tls_ca_file "
            f"{section.tls_ca_file!r} ({err}); give PEM files, a key that belongs to its certificate, and a PEM CA"
        ) from None
    return args["ssl_context"]


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[str, str] | None:
    """Run a TLS handshake between two contexts in memory; None, or (failing side, reason)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = {"client": client.wrap_bio(c_in, c_out, server_side=False), "server": server.wrap_bio(s_in, s_out, server_side=True)}
    done = set()
    for _ in range(10):
        for name, obj in sides.items():
            if name in done:
                continue
            try:
                obj.do_handshake()
                done.add(name)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as err:
                return name, getattr(err, "verify_message", None) or err.reason or str(err)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return None
    return "client", "the handshake did not complete"


def check_certificates(section: Any, security: Security, roles: tuple[str, ...]) -> None:
    """Fail with one line if a certificate of ``roles`` is not signed by ``tls_ca_file``.

    Each role's certificate is checked, in memory, by a TLS handshake with distributed's own
    contexts against the client's (the client's against itself), before any cluster starts.
    """
    client = _context(security, "client", section, listen=False)
    for role in roles:
        failed = _handshake(client, _context(security, role, section, listen=True))
        if failed is None:
            continue
        side, reason = failed
        judged = role if side == "client" else "client"  # the client judges the server's certificate, and back
        (cert_key, cert), _ = section.role_files(judged)
        uses = f" (used for the {judged} too, as tls_{judged}_cert is not given)" if judged != "client" and cert_key == "tls_client_cert" else ""
        raise InputError(
            f"cluster.security.{cert_key} {cert!r}{uses} is not accepted with tls_ca_file {section.tls_ca_file!r}: {reason}; "
            "give the CA that signed it, or a certificate signed by that CA"
        )


# ---------------------------------------------------------------- reaching a scheduler

def _where(section: Any, scheduler: str | None, scheduler_file: str | None) -> tuple[str | None, str | None, str]:
    """(address, scheduler file, what named it) for an external scheduler; (None, None, '') for none."""
    if scheduler:
        return scheduler, None, "--scheduler"
    if scheduler_file:
        return None, scheduler_file, "--scheduler-file"
    if section.kind == "address":
        if section.address:
            return section.address, None, "cluster.address"
        return None, section.scheduler_file, "cluster.scheduler_file"
    return None, None, ""


def _address_from_file(path: str, source: str, timeout: float, echo: Callable) -> str:
    """The ``address`` of a scheduler file, waiting up to ``timeout`` s for it to appear.

    A scheduler started at the same time (a batch script) writes its file a moment later, so a
    missing file is waited for, with a note, rather than refused at once; distributed itself
    waits forever.
    """
    deadline = time.monotonic() + timeout
    if not os.path.exists(path):
        echo(f"waiting up to {timeout:g} s for scheduler file {path} ({source}) to appear")
    while True:
        problem = None
        try:
            address = json.loads(read_regular(path, limit=TEXT_FILE_MAX_BYTES, what="scheduler file"))["address"]
            if isinstance(address, str) and address:
                return address
            problem = "its 'address' is empty"
        except NotReadableError as err:
            if not os.path.lexists(path) or err.reason.startswith("broken symlink"):
                problem = "it does not exist"
            else:  # a FIFO, a device, a folder, too large, permission denied: waiting will not help
                raise InputError(f"{source} {path}: cannot read it ({err.reason}); give the JSON file that "
                                 "'dask scheduler --scheduler-file' writes") from None
        except (ValueError, KeyError, TypeError):  # being written, or not a scheduler file
            problem = "it is not a JSON scheduler file with an 'address'"
        if time.monotonic() > deadline:
            raise InputError(
                f"{source} {path}: {problem} after {timeout:g} s (cluster.start_timeout); check the path, and that "
                "'dask scheduler --scheduler-file' with this path is running and can write there"
            )
        time.sleep(0.1)


def _connect_hint(security: Security | None) -> str:
    tls = "; it must use TLS, as cluster.security is set" if security else "; if it uses TLS, give its tls:// address and cluster.security"
    return f"check that the scheduler is running, that host and port are right (dask scheduler prints its address) and that this machine can reach it{tls}"


def open_client(address: str, source: str, security: Security | None = None, timeout: float = 30, sfile: str | None = None) -> Client:
    """``Client(address)``, or one line saying which address failed, why, and what to check.

    ``source`` names where the address came from (``--scheduler``, ``cluster.address``, ...) and
    ``sfile`` the scheduler file it was read from, if any; both appear in the message.
    """
    named = f"{source} {sfile} names {address}" if sfile else f"{source} {address}"
    if security is not None and not address.startswith("tls://"):
        raise InputError(f"{named}: the spec has cluster.security, so the scheduler must be a TLS one: give its tls:// address")
    if security is None and address.startswith("tls://"):
        raise InputError(f"{named} is a TLS address: add cluster.security (tls_ca_file, tls_client_cert, tls_client_key) to the spec")
    try:
        return Client(address, security=security, timeout=timeout)
    except ValueError as err:
        raise InputError(f"{named} is not a scheduler address ({err}); give one such as tcp://HOST:8786") from None
    except OSError as err:
        text = str(err)
        if "TLS certificate" in text or "SSL" in text or "CERTIFICATE" in text:
            raise JobError(
                f"{named}: the TLS handshake with the scheduler failed ({text.split('. ')[0]}); check that cluster.security.tls_ca_file "
                "is the CA that signed the scheduler's certificate, and that the scheduler's --tls-ca-file signed tls_client_cert"
            ) from None
        if "Timed out" in text:
            why = f"no Dask scheduler answered within {timeout:g} s (cluster.start_timeout)"
        else:
            why = f"the connection failed ({type(err).__name__}: {text})"
        stale = "; a scheduler file left by a scheduler that has stopped names an address that is gone" if sfile else ""
        raise JobError(f"{named}: {why}; {_connect_hint(security)}{stale}") from None


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) resolves only to loopback addresses of this machine."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):  # a name that does not resolve here
        return False
    try:
        return bool(found) and all(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip in found)
    except ValueError:
        return False


def plain_tcp_warning(address: str, source: str) -> str | None:
    """The warning for a scheduler at ``address`` (named by ``source``) reached over plain TCP
    beyond this machine's loopback interface, or None (``tls://``, ``inproc://``, 127.0.0.1, ``localhost``)."""
    from distributed.comm import get_address_host, parse_address

    try:
        if parse_address(address)[0] != "tcp" or _is_loopback(get_address_host(address)):
            return None
    except ValueError:
        return None
    return (f"warning: {source} {address} is a plain tcp:// connection beyond this machine: the job's code and data cross the "
            "network unencrypted, and whoever can reach that port can run code on the workers; use TLS: start the scheduler "
            "and workers with --protocol tls and --tls-ca-file/--tls-cert/--tls-key, and give its tls:// address and "
            "cluster.security (tls_ca_file, tls_client_cert, tls_client_key) in the spec")


NO_DASHBOARD = "no dashboard (the scheduler runs without one: start it without --no-dashboard, with bokeh installed)"


def _dashboard(client: Client) -> str:
    """``dashboard LINK``, or why there is none.

    A scheduler always serves HTTP (``/health``), and lists it as its "dashboard" service even when
    started with ``--no-dashboard`` or without bokeh; so the link is asked for once (no proxy,
    2 s): a 404 means no dashboard. A link that cannot be reached from here (a firewall) is still
    printed, for a tunnel.
    """
    import urllib.error
    import urllib.request

    try:
        link = client.dashboard_link if "dashboard" in client.scheduler_info(n_workers=0).get("services", {}) else None
    except Exception:  # a scheduler that does not say: no link rather than no job
        link = None
    if not link:
        return NO_DASHBOARD
    try:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(link, timeout=2).close()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return NO_DASHBOARD
    except (OSError, ValueError):
        pass
    return f"dashboard {link}"


def _wait_for_workers(client: Client, n: int, timeout: float, what: str, hint: str, watch: WorkerWatch | None = None) -> None:
    """Wait until the scheduler lists ``n`` workers, running or paused (a paused worker has
    started: ``watch`` judges whether it can work); ``watch`` (:meth:`WorkerWatch.poll`) raises
    meanwhile for workers killed for memory as they start."""
    deadline = time.monotonic() + timeout
    while (have := len(client.scheduler_info(n_workers=-1).get("workers", {}))) < n:
        if time.monotonic() > deadline:
            raise JobError(f"{what} has {have} worker(s) after {timeout:g} s (cluster.start_timeout), {n} needed; {hint}")
        if watch is not None:
            watch.poll(0)
        time.sleep(0.1)


def _scheduler_lost(client: Client, err: BaseException, *, wait: float = 5.0) -> bool:
    """Whether ``err`` means the scheduler went away (not a failure of the job's own work).

    The client says so in its status, or in a ``scheduler-connection-lost`` error. A call that
    was in flight when the scheduler died can fail first with a plain closed-stream error, before
    the client's own connection notices; then the status is watched for up to ``wait`` seconds.
    """
    from distributed.comm.core import CommClosedError

    if client.status not in ("running", "newly-created"):
        return True
    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any("scheduler-connection-lost" in str(e) for e in chain):
        return True
    if not any(isinstance(e, (CommClosedError, ConnectionError)) for e in chain):
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if client.status not in ("running", "newly-created"):
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def _lost_scheduler_is_one_line(client: Client, address: str) -> Iterator[None]:
    """A job that fails because the scheduler went away says so, and that a re-run resumes it."""
    try:
        yield
    except Exception as err:
        if not _scheduler_lost(client, err):
            raise
        for name in ("distributed.client", "distributed.utils"):  # the client's reconnect, cancelled by close()
            logging.getLogger(name).setLevel(logging.CRITICAL)
        raise JobError(
            f"lost the connection to the Dask scheduler at {address} mid-job (it stopped, or the network failed); "
            "the shards and partial results written so far are kept: start the scheduler (and workers) again and "
            "re-run the same command to resume"
        ) from None


# ---------------------------------------------------------------- connect

class EarlyCluster:
    """A local cluster whose worker processes start in a thread while the client goes on planning.

    :func:`connect` takes it (``early=``) and uses it as the cluster it would have started; a
    failure to start is raised there. :meth:`close` (after a failed plan) waits for the start and
    closes what started. Only a ``LocalCluster`` starts early (:func:`starts_locally`): a batch
    system's jobs are requested only once the whole estimate is printed and within its bounds.
    """

    def __init__(self, section: Any, n_workers: int | None) -> None:
        self.section, self.n_workers = section, n_workers
        self._cluster: Any = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._start, name="daskdiff-early-cluster", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._cluster = _start_checked(self.section, self.n_workers, security_from(self.section.security))
        except BaseException as err:  # raised in the thread that takes the cluster
            self._error = err

    def take(self) -> Any:
        """The started cluster (waits for its start); the taker closes it."""
        self._thread.join()
        self._taken = True
        if self._error is not None:
            raise self._error
        return self._cluster

    def close(self) -> None:
        """Close the cluster unless :func:`connect` took it."""
        if self._taken:
            return
        self._thread.join()
        self._taken = True
        if self._cluster is not None:
            _close_cluster(self._cluster)


def starts_locally(section: Any, *, scheduler: str | None = None, scheduler_file: str | None = None,
                   n_workers: int | None = None) -> bool:
    """Whether :func:`connect` would start a ``LocalCluster`` (``cluster.kind: local``, no scheduler
    address given or configured) rather than reach a scheduler, start dask-cuda's cluster or
    submit batch jobs."""
    from .budget import is_external

    return section.kind == "local" and not is_external(section, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers)


@contextlib.contextmanager
def connect(
    section: Any,
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    n_workers: int | None = None,
    echo: Callable = _echo,
    early: EarlyCluster | None = None,
    needs: MemoryNeeds | None = None,
) -> Iterator[Client]:
    """A client for the job; a cluster started here is closed on exit.

    ``early``: the local cluster :class:`EarlyCluster` started while the job was planned (what
    this call would start otherwise; :func:`starts_locally`). ``needs``: what a worker of the
    job needs; with it, workers that its nannies kill for memory as they start end the wait for
    them at once (:class:`~daskdiff.pipeline.health.WorkerWatch`), not at ``start_timeout``.

    Precedence: ``scheduler`` / ``scheduler_file`` arguments (the CLI), then the spec's
    ``cluster.kind`` (``address`` with ``cluster.address``/``cluster.scheduler_file``, ``slurm``,
    ``local_cuda``), then ``DASK_SCHEDULER_ADDRESS`` / dask config ``scheduler-address``, then a
    new ``LocalCluster``. Every path reports one line to ``echo`` (default: the
    ``daskdiff.pipeline.cluster`` logger, see :mod:`daskdiff.logs`): what was reached or started,
    and its dashboard link.

    Raises
    ------
    InputError
        A bad ``cluster`` section: missing TLS files, certificates the CA does not sign, an
        address that is not one, a scheduler file that does not appear within ``start_timeout``.
    JobError
        No scheduler at the address, a refused TLS handshake, no worker within ``start_timeout``,
        or a scheduler lost mid-job (a re-run resumes).
    """
    security = security_from(section.security)
    address, sfile, source = _where(section, scheduler, scheduler_file)
    if section.kind == "address" and not (address or sfile):
        raise InputError("cluster.kind 'address' needs cluster.address or cluster.scheduler_file (or --scheduler)")
    env_address = dask.config.get("scheduler-address", None)
    if not (address or sfile) and section.kind == "local" and env_address and not n_workers:
        address, source = env_address, "DASK_SCHEDULER_ADDRESS (dask config scheduler-address)"
    if address or sfile:
        if security is not None:
            check_certificates(section.security, security, ("client",))
        if sfile:
            address = _address_from_file(sfile, source, section.start_timeout, echo)
        client = open_client(address, source, security, section.start_timeout, sfile)
        try:
            echo(f"connected to scheduler {client.scheduler.address}; {_dashboard(client)}")
            if (warning := plain_tcp_warning(address, source)) is not None:
                echo(warning)
            with _watching(client, needs, echo) as watch:
                _wait_for_workers(client, 1, section.start_timeout, f"the scheduler at {address}",
                                  f"start one with 'dask worker {address} --nthreads 1'", watch)
            with _lost_scheduler_is_one_line(client, address):
                yield client
        finally:
            client.close()
        return

    cluster = early.take() if early is not None else _start_checked(section, n_workers, security)
    try:
        with Client(cluster, security=security) as client:
            address = cluster.scheduler_address
            if section.kind == "slurm":
                _wait_for_slurm(client, cluster, section)
            else:
                hint = "the worker processes did not start: check memory (cluster.memory_limit) and the messages above"
                with _watching(client, needs, echo) as watch:
                    _wait_for_workers(client, max(1, len(cluster.workers)), section.start_timeout, f"the {type(cluster).__name__} at {address}",
                                      hint, watch)
            echo(f"started {type(cluster).__name__} with {len(client.scheduler_info()['workers'])} worker(s) at {address}; {_dashboard(client)}")
            with _lost_scheduler_is_one_line(client, address):
                yield client
    finally:
        _close_cluster(cluster)


def _watching(client: Client, needs: MemoryNeeds | None, echo: Callable) -> contextlib.AbstractContextManager:
    """A :class:`~daskdiff.pipeline.health.WorkerWatch` of ``client``'s workers (a null context without ``needs``)."""
    return WorkerWatch(client, needs, echo) if needs is not None else contextlib.nullcontext()


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
    raised at once on the client (:func:`_wait_for_slurm`); the job that never existed is marked
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


def _wait_for_slurm(client: Client, cluster: Any, section: Any) -> None:
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


def _start_checked(section: Any, n_workers: int | None, security: Security | None) -> Any:
    """:func:`_start_cluster`, after checking the scheduler's and workers' certificates (TLS)."""
    if security is not None:
        check_certificates(section.security, security, ("scheduler", "worker"))
    return _start_cluster(section, n_workers, security)


def worker_ttl() -> str | float | None:
    """How long a worker of a cluster daskdiff starts may send no heartbeat before its scheduler
    restarts it: Dask config ``daskdiff.worker-ttl`` (see ``daskdiff/daskdiff.yaml``); None keeps
    Dask's own ``distributed.scheduler.worker-ttl``."""
    return dask.config.get("daskdiff.worker-ttl", None)


def _start_cluster(section: Any, n_workers: int | None, security: Security | None) -> Any:
    n = n_workers or section.n_workers
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    ttl = {"worker_ttl": worker_ttl()} if worker_ttl() is not None else {}
    if section.kind == "slurm":
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
    if section.kind == "local_cuda":
        LocalCUDACluster = _import_dask_cuda().LocalCUDACluster
        problem = _nvml_problem()
        if problem:
            raise InputError(f"cluster.kind 'local_cuda': no NVIDIA GPU/driver found ({problem}); use cluster.kind: local on CPU machines")
        kwargs = {"n_workers": n} if n else {}
        try:
            return LocalCUDACluster(threads_per_worker=1, host="127.0.0.1", resources={"GPU": 1}, scheduler_kwargs=ttl, **tls, **kwargs)
        except Exception as err:  # one line, not dask-cuda's traceback
            why = " ".join(f"{type(err).__name__}: {err}".split())
            if "nvml" in why.lower():
                raise InputError(f"cluster.kind 'local_cuda': no NVIDIA GPU/driver found (NVML: {why}); use cluster.kind: local on CPU machines") from None
            raise JobError(f"cluster.kind 'local_cuda': dask-cuda's LocalCUDACluster did not start ({shorten(why, 400)}); "
                           "check the GPUs with nvidia-smi, or use cluster.kind: local") from None
    return LocalCluster(
        n_workers=n or max(1, min(os.cpu_count() or 1, 4)),
        threads_per_worker=section.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit=section.memory_limit,
        preload=["daskdiff.pipeline.warm"],  # Keras imported as each worker starts
        scheduler_kwargs=ttl,
        **tls,
    )


def _close_cluster(cluster: Any) -> None:
    """Close a cluster daskdiff started, giving each nanny's worker process
    :data:`CLOSE_TIMEOUT` s to exit (rather than distributed's 4) before it is killed."""
    nannies = [w for w in getattr(cluster, "workers", {}).values() if isinstance(w, Nanny)]
    if nannies:
        async def close_all() -> None:
            await asyncio.gather(*(w.close(timeout=CLOSE_TIMEOUT) for w in nannies), return_exceptions=True)

        with contextlib.suppress(Exception):
            cluster.sync(close_all)
    cluster.close()


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
