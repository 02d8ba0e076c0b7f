"""Pipeline layer: Dask clusters, where work runs. Knows nothing of what a task computes.

- :func:`connect` gives a ``distributed.Client`` for where the job runs (a
  :class:`~daskdiff.pipeline.target.Target`: a spec's ``cluster`` section, a scheduler address or
  scheduler file, or ``DASK_SCHEDULER_ADDRESS``, as ``distributed.Client()`` reads it); otherwise
  it starts a ``LocalCluster`` of worker processes with one thread each, bound to 127.0.0.1, or
  dask-cuda's or SLURM's cluster (:mod:`daskdiff.pipeline.slurm`). A Dask scheduler runs any code
  a client sends it: never expose one to a network you do not trust, and use TLS
  (``cluster.security``, :mod:`daskdiff.pipeline.tls`) between machines. Clusters daskdiff
  starts itself (local, local_cuda, slurm) listen on ``tls://`` when the spec has a
  ``cluster.security`` section, with the scheduler and worker certificates it names.
- :func:`refuse_unreachable` fails at once where nothing listens at a scheduler's address (a
  wrong port), before a job writes anything; ``distributed.Client`` would retry for minutes.
- Failures to reach a scheduler (a wrong address, a scheduler file that never appears, a TLS
  handshake refused) and a scheduler lost mid-job are raised as one-line
  :class:`~daskdiff.errors.InputError`/:class:`~daskdiff.errors.JobError`\\ s that name the
  address or file, the spec key, and what to check.
- :class:`EarlyCluster` starts a ``LocalCluster`` in a thread while the job is still planned.
- Every worker is set up before its first task by :class:`daskdiff.pipeline.workers.WorkerSetup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import dask
from distributed import Client, LocalCluster, Nanny
from distributed.comm import get_address_host_port
from distributed.comm.core import CommClosedError
from distributed.security import Security

from ..errors import InputError, JobError
from ..io.reading import TEXT_FILE_MAX_BYTES, NotReadableError, read_regular
from ..logs import reporter, warn
from . import config
from .forkserver import start_method
from .health import MemoryNeeds, WorkerWatch
from .machine import default_workers
from .slurm import start_local_cuda, start_slurm, wait_for_slurm
from .target import Target
from .tls import check_certificates, plain_tcp_warning, security_from
from .workers import WORKER_MALLOC_ENV

_echo = reporter(__name__)  # the default echo: this module's logger (see daskdiff.logs)

# ---------------------------------------------------------------- reaching a scheduler

def _read_address(path: str) -> Any:
    """The ``address`` of a scheduler file as written (NotReadableError, or ValueError/KeyError/
    TypeError for a file that is not, or not yet, a JSON scheduler file)."""
    return json.loads(read_regular(path, limit=TEXT_FILE_MAX_BYTES, what="scheduler file"))["address"]


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
            address = _read_address(path)
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


def _no_answer(timeout: float) -> str:
    return f"no Dask scheduler answered within {timeout:g} s (cluster.start_timeout)"


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
            why = _no_answer(timeout)
        else:
            why = f"the connection failed ({type(err).__name__}: {text})"
        stale = "; a scheduler file left by a scheduler that has stopped names an address that is gone" if sfile else ""
        raise JobError(f"{named}: {why}; {_connect_hint(security)}{stale}") from None


def _address_now(path: str) -> str | None:
    """The address a scheduler file names now, or None (not there yet, or not readable: left to
    :func:`_address_from_file`, which waits for it and says what is wrong)."""
    try:
        address = _read_address(path)
    except (NotReadableError, ValueError, KeyError, TypeError):
        return None
    return address if isinstance(address, str) and address else None


def refuse_unreachable(target: Target) -> None:
    """Fail at once where nothing listens at the address of a scheduler started elsewhere.

    ``distributed.Client`` retries a refused connection until its timeout
    (``cluster.start_timeout``, minutes); a refused connection means a host that answered with
    no scheduler on that port, which waiting does not mend. So, before anything is written,
    one TCP connection is tried: refused, or a host name that does not resolve, raises at once;
    no answer within ``cluster.start_timeout`` raises then, as :func:`open_client` would. Anything
    else (an answer, an unreachable network) is left to :func:`connect`. A scheduler file is read
    if it is there already (a stale one names a port no longer served); one still to appear is
    waited for by :func:`connect`.

    Raises
    ------
    JobError
        Nothing listens at the address, its host is unknown, or it does not answer: names the
        address, where it came from, and what to check.
    """
    if not target.external:
        return
    address = _address_now(target.scheduler_file) if target.scheduler_file else target.address
    if not address:
        return
    try:
        host, port = get_address_host_port(address)
    except (ValueError, TypeError):  # not a host:port address: open_client says what is wrong with it
        return
    named = f"{target.source} {target.scheduler_file} names {address}" if target.scheduler_file else f"{target.source} {address}"
    stale = "; a scheduler file left by a scheduler that has stopped names an address that is gone" if target.scheduler_file else ""
    hint = _connect_hint(target.section.security)
    try:
        socket.create_connection((host, port), timeout=target.section.start_timeout).close()
    except ConnectionRefusedError:
        raise JobError(f"{named}: nothing listens on port {port} of {host} (connection refused); {hint}{stale}") from None
    except socket.gaierror as err:
        raise JobError(f"{named}: host {host!r} is not known here ({err.strerror}); check the host name{stale}") from None
    except TimeoutError:
        raise JobError(f"{named}: {_no_answer(target.section.start_timeout)}; {hint}{stale}") from None
    except OSError:  # an unreachable network: connect retries it for cluster.start_timeout, and says so
        return


NO_DASHBOARD = "no dashboard (the scheduler runs without one: start it without --no-dashboard, with bokeh installed)"


def _dashboard(client: Client) -> str:
    """``dashboard LINK``, or why there is none.

    A scheduler always serves HTTP (``/health``), and lists it as its "dashboard" service even when
    started with ``--no-dashboard`` or without bokeh; so the link is asked for once (no proxy,
    2 s): a 404 means no dashboard. A link that cannot be reached from here (a firewall) is still
    printed, for a tunnel.
    """
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
    closes what started. Only a ``LocalCluster`` starts early
    (:attr:`Target.starts_locally <daskdiff.pipeline.target.Target.starts_locally>`): a batch
    system's jobs are requested only once the whole estimate is printed and within its bounds.
    """

    def __init__(self, section: Any, n_workers: int | None) -> None:
        quiet_cancel_before_start()
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

    def close(self, *, abandoned: bool = False) -> None:
        """Close the cluster unless :func:`connect` took it (``abandoned``: as
        :func:`_close_cluster` after Ctrl-C or an error)."""
        if self._taken:
            return
        self._thread.join()
        self._taken = True
        if self._cluster is not None:
            _close_cluster(self._cluster, abandoned=abandoned)


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
    target: Target | None = None,
) -> Iterator[Client]:
    """A client for the job; a cluster started here is closed on exit.

    ``early``: the local cluster :class:`EarlyCluster` started while the job was planned (what
    this call would start otherwise: a ``LocalCluster``). ``needs``: what a worker of the
    job needs; with it, workers that its nannies kill for memory as they start end the wait for
    them at once (:class:`~daskdiff.pipeline.health.WorkerWatch`), not at ``start_timeout``.

    Where the job runs is ``target`` (a job decides it once), else :meth:`Target.of
    <daskdiff.pipeline.target.Target.of>` the section and the overrides: ``scheduler`` / ``scheduler_file`` arguments (the CLI), then the spec's
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
    quiet_cancel_before_start()
    security = security_from(section.security)
    target = target or Target.of(section, scheduler=scheduler, scheduler_file=scheduler_file, n_workers=n_workers)
    address, sfile, source = target.address, target.scheduler_file, target.source
    if target.external and not (address or sfile):
        raise InputError("cluster.kind 'address' needs cluster.address or cluster.scheduler_file (or --scheduler)")
    if target.external:
        if security is not None:
            check_certificates(section.security, security, ("client",))
        if sfile:
            address = _address_from_file(sfile, source, section.start_timeout, echo)
        client = open_client(address, source, security, section.start_timeout, sfile)
        try:
            echo(f"connected to scheduler {client.scheduler.address}; {_dashboard(client)}")
            if (warning := plain_tcp_warning(address, source)) is not None:
                warn(echo, warning)
            with _watching(client, needs, echo) as watch:
                _wait_for_workers(client, 1, section.start_timeout, f"the scheduler at {address}",
                                  f"start one with 'dask worker {address} --nthreads 1'", watch)
            with _lost_scheduler_is_one_line(client, address):
                yield client
        finally:
            client.close()
        return

    cluster = early.take() if early is not None else _start_checked(section, n_workers, security)
    abandoned = False
    try:
        with Client(cluster, security=security) as client:
            address = cluster.scheduler_address
            if target.kind == "slurm":
                wait_for_slurm(client, cluster, section)
            else:
                hint = "the worker processes did not start: check memory (cluster.memory_limit) and the messages above"
                with _watching(client, needs, echo) as watch:
                    _wait_for_workers(client, max(1, len(cluster.workers)), section.start_timeout, f"the {type(cluster).__name__} at {address}",
                                      hint, watch)
            echo(f"started {type(cluster).__name__} with {len(client.scheduler_info()['workers'])} worker(s) at {address}; {_dashboard(client)}")
            with _lost_scheduler_is_one_line(client, address):
                yield client
    except BaseException:  # Ctrl-C, SIGTERM, an error: the job is over, its workers are stopped within seconds
        abandoned = True
        raise
    finally:
        _close_cluster(cluster, abandoned=abandoned)


def _watching(client: Client, needs: MemoryNeeds | None, echo: Callable) -> contextlib.AbstractContextManager:
    """A :class:`~daskdiff.pipeline.health.WorkerWatch` of ``client``'s workers (a null context without ``needs``)."""
    return WorkerWatch(client, needs, echo) if needs is not None else contextlib.nullcontext()


# ---------------------------------------------------------------- clusters daskdiff starts

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
    """The cluster of ``cluster.kind`` (local, local_cuda, slurm), started; ``n_workers``
    (``--workers``) overrides ``cluster.n_workers``. Its scheduler steals work only where Dask
    config ``daskdiff.work-stealing`` says so, and its worker processes on this machine start
    under :func:`local_workers` (local, local_cuda)."""
    with dask.config.set({"distributed.scheduler.work-stealing": config.flag("daskdiff.work-stealing")}):
        with local_workers(fork=section.kind == "local"):
            return _started(section, n_workers, security)


@contextlib.contextmanager
def local_workers(fork: bool = True) -> Iterator[None]:
    """Dask config under which a ``LocalCluster`` started inside starts its worker processes as
    daskdiff starts its own: with :data:`~daskdiff.pipeline.workers.WORKER_MALLOC_ENV` over Dask's
    ``distributed.nanny.pre-spawn-environ`` where ``daskdiff.worker-malloc`` says so (see
    ``daskdiff/daskdiff.yaml``), and, with ``fork``, forked from a process that imported Keras once
    where :func:`~daskdiff.pipeline.forkserver.start_method` says they can be. A worker its nanny
    restarts later is spawned (Dask reads the start method as each worker starts)."""
    settings = {}
    if config.flag("daskdiff.worker-malloc"):
        settings["distributed.nanny.pre-spawn-environ"] = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    with dask.config.set(settings):
        with dask.config.set({"distributed.worker.multiprocessing-method": start_method()} if fork else {}):
            yield


def _started(section: Any, n_workers: int | None, security: Security | None) -> Any:
    n = n_workers or section.n_workers
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    ttl = {"worker_ttl": worker_ttl()} if worker_ttl() is not None else {}
    if section.kind == "slurm":
        return start_slurm(section, tls, ttl)
    if section.kind == "local_cuda":
        return start_local_cuda(n, tls, ttl)
    return LocalCluster(
        n_workers=n or default_workers(),
        threads_per_worker=section.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit=section.memory_limit,
        preload=["daskdiff.pipeline.warm"],  # Keras imported as each worker starts
        scheduler_kwargs=ttl,
        **tls,
    )


class _CancelBeforeStart(logging.Filter):
    """Drops tornado's traceback of the ``NameError`` that ``distributed.utils.sync``'s ``cancel``
    callback raises when Ctrl-C lands before the coroutine it waits for has started: ``cancel``
    reads that coroutine's future before it is assigned (distributed 2026.7 and 2026.8). Nothing was
    running, so there was nothing to cancel; the interrupt itself goes on as usual."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError) and "sync.<locals>.cancel" in record.getMessage())


def quiet_cancel_before_start() -> None:
    """Install :class:`_CancelBeforeStart` on tornado's ``tornado.application`` logger, once per
    process (:func:`connect` and :class:`EarlyCluster` do, so that Ctrl-C prints one line
    whenever it lands)."""
    log = logging.getLogger("tornado.application")
    if not any(isinstance(f, _CancelBeforeStart) for f in log.filters):
        log.addFilter(_CancelBeforeStart())


@contextlib.contextmanager
def _interrupt_quietly() -> Iterator[None]:
    """Within the block: distributed's nanny logs only errors (not its warning that it killed a
    worker it was told to stop), and a second Ctrl-C is ignored (main thread only) so that the
    bounded close it would cut short ends first."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        nanny.setLevel(level)


def _close_cluster(cluster: Any, *, abandoned: bool = False) -> None:
    """Close a cluster daskdiff started, giving each nanny's worker process
    ``daskdiff.cluster.close-timeout`` (Dask config; 30 s) to exit (rather than distributed's 4)
    before it is killed.

    ``abandoned`` (Ctrl-C, SIGTERM, or an error ended the job, and its user waits for the line
    that says so): ``daskdiff.cluster.interrupt-timeout`` (3 s) instead, quietly
    (:func:`_interrupt_quietly`). A worker still in a task then is killed; every file a task
    writes is written under a temporary name and renamed whole, so nothing half-written is left,
    and the next run removes the temporary files (:func:`daskdiff.pipeline.output.prepare`). A
    nanny caught restarting its worker (killed for memory, in a loop) would hold the full close
    for over a minute.
    """
    timeout = config.seconds("daskdiff.cluster.interrupt-timeout" if abandoned else "daskdiff.cluster.close-timeout")
    nannies = [w for w in getattr(cluster, "workers", {}).values() if isinstance(w, Nanny)]
    with _interrupt_quietly() if abandoned else contextlib.nullcontext():
        if nannies:
            async def close_all() -> None:
                await asyncio.wait_for(asyncio.gather(*(w.close(timeout=timeout) for w in nannies), return_exceptions=True),
                                       timeout + 5)

            with contextlib.suppress(Exception):  # asyncio.TimeoutError too: a nanny caught restarting its worker never returns
                cluster.sync(close_all)
            for pid in _worker_pids(nannies):  # what outlived its nanny's close is killed, never left behind
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            cluster.close(timeout=timeout + 5)


def _worker_pids(nannies: list) -> list[int]:
    """The process ids of the worker processes ``nannies`` still run."""
    pids = []
    for nanny in nannies:
        process = getattr(getattr(nanny, "process", None), "process", None)  # distributed's WorkerProcess -> AsyncProcess
        if process is not None and process.is_alive() and process.pid:
            pids.append(process.pid)
    return pids
