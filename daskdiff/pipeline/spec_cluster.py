"""Pipeline layer, job spec: its ``cluster`` section (where the job runs: a local cluster, a
scheduler's address, SLURM through dask-jobqueue, or dask-cuda) and the TLS files of
``cluster.security``, validated before anything starts."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ..errors import shorten
from .spec_types import PositiveWhole, Strict


ROLE_CERTIFICATES = {"scheduler": ("tls_scheduler_cert", "tls_scheduler_key"), "worker": ("tls_worker_cert", "tls_worker_key")}
"""The optional certificate/key pairs of the scheduler and workers that daskdiff itself starts."""


class SecuritySection(Strict):
    """TLS files (PEM). ``tls_ca_file`` signs every certificate; the client pair is daskdiff's own.

    The scheduler and worker pairs are used only where daskdiff starts the scheduler and workers
    (``kind`` ``local``, ``local_cuda``, ``slurm``); each pair defaults to the client's, as one
    certificate signed by the CA may serve every role (Dask checks the CA, not host names).
    """

    tls_ca_file: str
    tls_client_cert: str
    tls_client_key: str
    tls_scheduler_cert: str | None = None
    tls_scheduler_key: str | None = None
    tls_worker_cert: str | None = None
    tls_worker_key: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> "SecuritySection":
        for cert, key in ROLE_CERTIFICATES.values():
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                given, missing = (cert, key) if getattr(self, key) is None else (key, cert)
                raise ValueError(f"{given} is given without {missing}: give both, or neither to use tls_client_cert/tls_client_key for this role")
        return self

    def role_files(self, role: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((cert key, cert path), (key key, key path))`` used for ``role`` (falling back to the client's)."""
        if role != "client":
            cert, key = ROLE_CERTIFICATES[role]
            if getattr(self, cert) is not None:
                return (cert, getattr(self, cert)), (key, getattr(self, key))
        return ("tls_client_cert", self.tls_client_cert), ("tls_client_key", self.tls_client_key)


SLURM_RESERVED = {
    "security": "give cluster.security (daskdiff passes it on, and sets the protocol)",
    "protocol": "give cluster.security for tls:// (daskdiff sets the protocol)",
    "n_workers": "give cluster.jobs (the SLURM jobs to start)",
    "host": "give it in cluster.slurm.scheduler_options: {host: ...}",
    "dashboard_address": "give it in cluster.slurm.scheduler_options: {dashboard_address: ...}",
    "extra": "dask-jobqueue renamed it: give cluster.slurm.worker_extra_args",
    "job_extra": "dask-jobqueue renamed it: give cluster.slurm.job_extra_directives",
    "env_extra": "dask-jobqueue renamed it: give cluster.slurm.job_script_prologue",
    "header_skip": "dask-jobqueue renamed it: give cluster.slurm.job_directives_skip",
    "project": "dask-jobqueue renamed it: give cluster.slurm.account",
}
"""``SLURMCluster`` arguments a spec may not give, and what to give instead."""

_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^(UNLIMITED|INFINITE)$", re.I)
"""SLURM's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) and no limit."""


class SlurmSection(Strict):
    """The ``dask_jobqueue.SLURMCluster`` arguments of ``cluster.slurm``; None: Dask config's.

    Every key left out takes its value from Dask config ``jobqueue.<config_name>.*`` (as
    dask-jobqueue itself does: ``~/.config/dask/jobqueue.yaml``, ``DASK_JOBQUEUE__SLURM__QUEUE``),
    so only the keys set here are passed on, on top of that configuration.
    """

    cores: PositiveWhole | None = None
    """Cores per SLURM job (``--cpus-per-task``); shared by its ``processes`` as worker threads."""
    memory: str | None = None
    """Memory per SLURM job, e.g. ``16GB`` (``--mem``); shared by its ``processes``."""
    processes: PositiveWhole | None = None
    """Dask worker processes per SLURM job (dask-jobqueue default: about sqrt(cores))."""
    queue: str | None = None
    """SLURM partition (``-p``)."""
    account: str | None = None
    """SLURM account (``-A``)."""
    walltime: str | None = None
    """Time limit of each SLURM job (``-t``), a quoted string such as ``'04:00:00'`` or ``'1-00:00:00'``."""
    job_cpu: PositiveWhole | None = None
    job_mem: str | None = None
    job_name: str | None = None
    job_extra_directives: list[str] | None = None
    """Extra ``#SBATCH`` lines, without ``#SBATCH``: e.g. ``['--gres=gpu:1']``."""
    job_directives_skip: list[str] | None = None
    job_script_prologue: list[str] | None = None
    """Shell lines run before the worker starts, e.g. ``['module load cuda']``."""
    worker_extra_args: list[str] | None = None
    """Extra ``dask worker`` arguments, e.g. ``['--resources', 'GPU=1']``."""
    worker_command: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    shared_temp_directory: str | None = None
    interface: str | None = None
    python: str | None = None
    shebang: str | None = None
    death_timeout: PositiveWhole | None = None
    nanny: bool | None = None
    scheduler_options: dict[str, Any] | None = None
    """Options of the scheduler daskdiff starts, e.g. ``{host: 0.0.0.0, dashboard_address: ':8787'}``."""
    config_name: str | None = None
    """The Dask config section to default from: ``jobqueue.<config_name>`` (default ``slurm``)."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in SLURM_RESERVED:
                    raise ValueError(f"cluster.slurm.{key} is not allowed here: {SLURM_RESERVED[key]}")
                if key not in cls.model_fields:
                    raise ValueError(f"cluster.slurm.{shorten(str(key), 60)} is not a SLURMCluster option daskdiff passes on; "
                                     f"the keys are: {', '.join(cls.model_fields)}")
        return data

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            hours, rest = divmod(v, 3600)
            raise ValueError(
                f"is the integer {v}: YAML reads an unquoted H:MM:SS as seconds in base 60 (1:00:00 is 3600), which SLURM "
                f"would take as {v} minutes; quote it: walltime: '{hours:02d}:{rest // 60:02d}:{rest % 60:02d}'"
            )
        if isinstance(v, str) and not _WALLTIME.match(v):
            raise ValueError(f"{shorten(repr(v))} is not a SLURM time: give a quoted 'HH:MM:SS', 'MM', 'D-HH' or 'D-HH:MM:SS', e.g. '04:00:00'")
        return v

    @field_validator("memory", "job_mem")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            from dask.utils import parse_bytes

            try:
                if parse_bytes(v) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(f"{shorten(repr(v))} is not a size: give one such as '16GB' or '64GiB'") from None
        return v

    def kwargs(self) -> dict[str, Any]:
        """The keys set in the spec, as ``SLURMCluster`` keyword arguments."""
        return self.model_dump(exclude_none=True)

    def resolved(self, key: str) -> tuple[Any, str]:
        """``(value, where from)`` of ``key``: the spec's, else Dask config's (``jobqueue.<name>.<key>``), else None."""
        value = getattr(self, key)
        if value is not None:
            return value, f"cluster.slurm.{key}"
        import dask

        name = f"jobqueue.{self.config_name or 'slurm'}.{key.replace('_', '-')}"
        return dask.config.get(name, None), f"Dask config {name}"


class ClusterSection(Strict):
    kind: Literal["local", "address", "slurm", "local_cuda"] = "local"
    n_workers: PositiveWhole | None = None
    """Worker processes of a ``local`` cluster (default: the cores, at most 4); their threads
    must fit this machine's cores (:func:`daskdiff.pipeline.budget.check_local_cluster`)."""
    threads_per_worker: PositiveWhole = 1
    memory_limit: Union[str, Annotated[float, Field(gt=0)]] = "auto"
    """Memory limit of each ``local`` worker, as Dask's ``LocalCluster(memory_limit=...)`` takes
    it: ``auto`` (this machine's memory shared by the cores), a size (``4GB``, ``500MiB``,
    ``4e9``) or a fraction up to 1 of this machine's memory (``0.25``)."""
    address: str | None = None
    scheduler_file: str | None = None
    jobs: PositiveWhole = Field(1, le=1000)
    """SLURM jobs to start (``kind: slurm``), at most 1,000: give each job more ``cores`` and ``processes`` instead."""
    slurm: SlurmSection = SlurmSection()
    security: SecuritySection | None = None
    start_timeout: PositiveWhole = Field(120, le=86400)
    """Seconds to wait for the first workers (at most a day: SLURM jobs may queue for hours)."""

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, v: str | float) -> str | float:
        if isinstance(v, str) and v != "auto":
            from dask.utils import parse_bytes

            try:
                if (float(v) if _is_number(v) else parse_bytes(v)) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError("must be 'auto', a positive size such as '4GB' or '500MiB', or a fraction of this machine's "
                                 "memory such as 0.25") from None
        return v

    @model_validator(mode="after")
    def _role_certificates_need_a_started_cluster(self) -> "ClusterSection":
        if self.kind == "address" and self.security is not None:
            given = [k for pair in ROLE_CERTIFICATES.values() for k in pair if getattr(self.security, k) is not None]
            if given:
                raise ValueError(
                    f"security.{given[0]}: with kind 'address' the scheduler and workers are started elsewhere, with their own "
                    "certificates; remove the tls_scheduler_*/tls_worker_* keys (they serve kind local, local_cuda and slurm)"
                )
        return self

    @model_validator(mode="after")
    def _slurm_job_size(self) -> "ClusterSection":
        """With ``kind: slurm``, cores and memory must come from the spec or Dask config."""
        if self.kind != "slurm":
            return self
        missing = [key for key in ("cores", "memory") if self.slurm.resolved(key)[0] is None]
        if missing:
            name = self.slurm.config_name or "slurm"
            raise ValueError(
                " and ".join(f"cluster.slurm.{key}" for key in missing) + " missing: a SLURM job needs its size, e.g. cluster.slurm: "
                f"{{cores: 8, memory: 32GB}} (or Dask config {' / '.join(f'jobqueue.{name}.{k}' for k in missing)})"
            )
        cores, _ = self.slurm.resolved("cores")
        processes, where = self.slurm.resolved("processes")
        if processes is not None and isinstance(cores, int) and processes > cores:
            raise ValueError(f"cluster.slurm.processes {processes} ({where}) is more than cluster.slurm.cores {cores}: each worker process needs a core")
        return self

    @field_validator("slurm", mode="before")
    @classmethod
    def _slurm(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        size = len(json.dumps(v, default=str))
        if size > MAX_SLURM_CHARS:
            raise ValueError(f"holds {size} characters of options; at most {MAX_SLURM_CHARS} (dask-jobqueue SLURMCluster keyword arguments)")
        if _depth(v) > MAX_SLURM_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_SLURM_DEPTH} levels; give SLURMCluster keyword arguments (strings, numbers, lists of strings)")
        return v


def _is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (Dask takes ``'0.5'`` as a fraction, not a size)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


MAX_SLURM_CHARS = 65536
MAX_SLURM_DEPTH = 4


def _depth(value: Any) -> int:
    """Nesting depth of lists/dicts in ``value`` (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max(map(_depth, value), default=0)
    return 0
