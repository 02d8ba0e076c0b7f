"""Where a job runs (:class:`daskdiff.pipeline.target.Target`), and the limits that follow from it.

No cluster starts here: :func:`daskdiff.pipeline.cluster.connect` acting on each target, with real
schedulers, is tested in ``test_connect.py``; these tests hold the precedence table itself.
"""

from __future__ import annotations

import dask
import pytest

from daskdiff.pipeline.budget import limits_at
from daskdiff.pipeline.machine import default_workers
from daskdiff.pipeline.spec_cluster import ClusterSection
from daskdiff.pipeline.target import ENV_SOURCE, Target

ADDRESS = "tcp://10.0.0.1:8786"
SLURM = {"cores": 8, "memory": "32GB", "processes": 2}


@pytest.mark.parametrize(
    ("section", "arguments", "env", "expected"),
    [
        ({}, {}, None, ("local", None, None, "")),
        ({}, {"n_workers": 2}, ADDRESS, ("local", None, None, "")),  # --workers: a LocalCluster, not the env's scheduler
        ({}, {}, ADDRESS, ("address", ADDRESS, None, ENV_SOURCE)),
        ({"kind": "local_cuda"}, {}, ADDRESS, ("local_cuda", None, None, "")),  # the env names a scheduler for kind local only
        ({"kind": "slurm", "slurm": SLURM}, {}, None, ("slurm", None, None, "")),
        ({"kind": "slurm", "slurm": SLURM}, {"scheduler": ADDRESS}, None, ("address", ADDRESS, None, "--scheduler")),
        ({}, {"scheduler_file": "s.json"}, ADDRESS, ("scheduler_file", None, "s.json", "--scheduler-file")),
        ({}, {"scheduler": ADDRESS, "scheduler_file": "s.json"}, None, ("address", ADDRESS, None, "--scheduler")),
        ({"kind": "address", "address": "tcp://b:1"}, {}, None, ("address", "tcp://b:1", None, "cluster.address")),
        ({"kind": "address", "scheduler_file": "c.json"}, {}, None, ("scheduler_file", None, "c.json", "cluster.scheduler_file")),
        ({"kind": "address", "scheduler_file": "c.json"}, {"scheduler": ADDRESS}, None, ("address", ADDRESS, None, "--scheduler")),
        ({"kind": "address"}, {}, None, ("address", None, None, "cluster.address")),  # connect refuses it, naming the keys
        ({}, {"client": True, "scheduler": ADDRESS}, None, ("client", None, None, "the client given")),
    ],
)
def test_where_a_job_runs_follows_the_precedence_of_distributed_and_the_cli(section, arguments, env, expected):
    with dask.config.set({"scheduler-address": env}):
        target = Target.of(ClusterSection(**section), **arguments)
    assert (target.kind, target.address, target.scheduler_file, target.source) == expected
    assert target.n_workers == arguments.get("n_workers")
    assert target.external == (expected[0] in ("address", "scheduler_file", "client"))
    assert target.starts_locally == (expected[0] == "local")


def test_a_target_is_one_frozen_value():
    target = Target.of(ClusterSection(), scheduler=ADDRESS)
    with pytest.raises(AttributeError):
        target.kind = "local"
    assert target == Target.of(ClusterSection(start_timeout=5), scheduler=ADDRESS)  # the section is carried, not compared


def test_limits_know_no_worker_of_a_cluster_started_elsewhere(tmp_path):
    section = ClusterSection(n_workers=1, memory_limit="1GB")
    local = limits_at(Target.of(section), tmp_path)
    assert (local.workers, local.worker_memory) == (1, 10**9)
    for target in (Target.of(section, scheduler=ADDRESS), Target.of(section, client=True)):
        external = limits_at(target, tmp_path)
        assert (external.workers, external.worker_memory, external.worker_memory_source) == (None, None, "external cluster")


def test_limits_of_clusters_daskdiff_starts(tmp_path):
    assert limits_at(Target.of(ClusterSection()), tmp_path).workers == default_workers()
    slurm = limits_at(Target.of(ClusterSection(kind="slurm", slurm=SLURM, jobs=3)), tmp_path)
    assert (slurm.workers, slurm.worker_memory) == (None, 16 * 10**9)  # a job's memory over its processes
