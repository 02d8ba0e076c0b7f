"""Pipeline layer: where a job runs, decided once from the spec's cluster section and the overrides.

A :class:`Target` says whether daskdiff reaches a scheduler started elsewhere (an address, a
scheduler file, a client it is given) or starts a cluster of its own (a ``LocalCluster``,
dask-cuda's ``LocalCUDACluster``, SLURM jobs). :func:`daskdiff.pipeline.cluster.connect` acts on
it, and :func:`daskdiff.pipeline.budget.limits_at` bounds the job by it: the memory of workers
started elsewhere is not known before connecting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import dask

TargetKind = Literal["local", "local_cuda", "slurm", "address", "scheduler_file", "client"]

EXTERNAL_KINDS = ("address", "scheduler_file", "client")
"""The kinds of :class:`Target` whose scheduler and workers are started elsewhere."""

ENV_SOURCE = "DASK_SCHEDULER_ADDRESS (dask config scheduler-address)"


@dataclass(frozen=True)
class Target:
    """Where a job runs: one value, built by :meth:`of`.

    Attributes
    ----------
    kind : {'local', 'local_cuda', 'slurm', 'address', 'scheduler_file', 'client'}
        ``local``, ``local_cuda``, ``slurm``: a cluster daskdiff starts (``cluster.kind``);
        ``address``: a scheduler's address (``address`` may be None where ``cluster.kind:
        address`` names neither an address nor a file, which :func:`~daskdiff.pipeline.cluster.connect`
        refuses); ``scheduler_file``: the JSON file a scheduler writes its address to;
        ``client``: a ``distributed.Client`` given by the caller (tests, notebooks).
    section : ClusterSection
        The spec's ``cluster`` section (its timeouts, TLS files, SLURM options and worker sizes).
    n_workers : int or None
        ``--workers``, which overrides ``cluster.n_workers`` of a cluster daskdiff starts.
    address, scheduler_file : str or None
        The scheduler's address or file (``kind`` ``address`` / ``scheduler_file``).
    source : str
        What named the scheduler, for messages: ``--scheduler``, ``--scheduler-file``,
        ``cluster.address``, ``cluster.scheduler_file`` or :data:`ENV_SOURCE` ('' for a cluster
        daskdiff starts).
    """

    kind: TargetKind
    section: Any = field(repr=False, compare=False)
    n_workers: int | None = None
    address: str | None = None
    scheduler_file: str | None = None
    source: str = ""

    @classmethod
    def of(cls, section: Any, *, scheduler: str | None = None, scheduler_file: str | None = None,
           n_workers: int | None = None, client: bool = False) -> Target:
        """Where a job with the ``cluster`` section ``section`` runs.

        Precedence: a given client (``client``), then the ``scheduler`` / ``scheduler_file``
        arguments (the CLI's ``--scheduler`` / ``--scheduler-file``), then ``cluster.kind``
        (``address`` with ``cluster.address``, else ``cluster.scheduler_file``), then, for
        ``cluster.kind: local`` without ``n_workers``, ``DASK_SCHEDULER_ADDRESS`` (Dask config
        ``scheduler-address``, as ``distributed.Client()`` reads it); else the cluster of
        ``cluster.kind`` that daskdiff starts.
        """
        if client:
            return cls("client", section, n_workers, source="the client given")
        if scheduler:
            return cls("address", section, n_workers, address=scheduler, source="--scheduler")
        if scheduler_file:
            return cls("scheduler_file", section, n_workers, scheduler_file=scheduler_file, source="--scheduler-file")
        if section.kind == "address":
            if section.address or not section.scheduler_file:
                return cls("address", section, n_workers, address=section.address, source="cluster.address")
            return cls("scheduler_file", section, n_workers, scheduler_file=section.scheduler_file, source="cluster.scheduler_file")
        env_address = dask.config.get("scheduler-address", None)
        if section.kind == "local" and env_address and not n_workers:
            return cls("address", section, n_workers, address=env_address, source=ENV_SOURCE)
        return cls(section.kind, section, n_workers)

    @property
    def external(self) -> bool:
        """Whether the scheduler and workers are started elsewhere (not by daskdiff): their
        memory is then not known before connecting."""
        return self.kind in EXTERNAL_KINDS

    @property
    def starts_locally(self) -> bool:
        """Whether daskdiff starts a ``LocalCluster`` on this machine (which may start while the
        job is planned: :class:`~daskdiff.pipeline.cluster.EarlyCluster`), rather than reach a
        scheduler, start dask-cuda's cluster or submit batch jobs."""
        return self.kind == "local"
