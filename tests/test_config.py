"""daskdiff's tuning in Dask's configuration (issue 21, item 4): the ``daskdiff.*`` keys of the
packaged ``daskdiff/daskdiff.yaml``.

- every key of the file is described in ``docs/configuration.md``, and every key the page names
  is in the file;
- the defaults are the values the code had as constants (so results and estimates are unchanged):
  the estimate's :class:`~daskdiff.core.estimate.Calibration` built from the config equals its
  own defaults, and the other keys equal the old constants;
- each key changes what it controls, observed from the outside (a refusal, an estimate, a
  watch that raises, a buffer reused or not, a task's memory peak), never by reading source;
- a ``DASK_DASKDIFF__...`` environment variable and a YAML file in the user's Dask config folder
  override the packaged default for ``daskdiff run``;
- a value that is not what its key needs is refused naming the key and where to set it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tracemalloc
from dataclasses import astuple, fields, replace
from pathlib import Path
from types import SimpleNamespace

import dask.config
import numpy as np
import pytest
import yaml

from conftest import write_images
from daskdiff.core.estimate import Calibration, JobSize, LayerSize, estimate_work, stack_bytes
from daskdiff.core.units import Sampling, storage_plan
from daskdiff.errors import JobError
from daskdiff.io.location import ObjectPath
from daskdiff.pipeline.output import output_lease
from daskdiff.pipeline import budget, config, health
from daskdiff.pipeline.spec_cluster import ClusterSection
from daskdiff.pipeline.spec_file import parse_spec

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
DASKDIFF = str(Path(sys.executable).parent / "daskdiff")


def _flat(tree: dict, prefix: str) -> dict:
    out = {}
    for name, value in tree.items():
        key = f"{prefix}.{name}"
        out.update(_flat(value, key) if isinstance(value, dict) else {key: value})
    return out


PACKAGED = _flat(yaml.safe_load(config.DEFAULTS_FILE.read_text())["daskdiff"], "daskdiff")  # key -> default
KEYS = list(PACKAGED)

OLD_CONSTANTS = {  # the module constants these keys replace, with their values before issue 21
    "daskdiff.budget.max-tasks": 200_000,  # pipeline/budget.py MAX_TASKS
    "daskdiff.budget.max-cpu-hours": 10_000,  # MAX_CPU_HOURS
    "daskdiff.health.restarts-before-work": 3,  # pipeline/health.py RESTARTS_BEFORE_WORK
    "daskdiff.health.stuck-after": 15.0,  # STUCK_SECONDS
    "daskdiff.health.poll-interval": 1.0,  # POLL_SECONDS
    "daskdiff.task.memory-share": 0.5,  # formerly TASK_MEMORY_SHARE
    "daskdiff.task.min-stack-budget": 8 * 2**20,  # pipeline/tasks.py MIN_STACK_BUDGET
    "daskdiff.task.scratch-max": 2 * 2**30,  # SCRATCH_MAX
    "daskdiff.handoff.memory-share": 0.3,  # formerly HANDOFF_SHARE
    "daskdiff.cluster.close-timeout": 30.0,  # pipeline/cluster.py CLOSE_TIMEOUT
}
READERS = {"max-tasks": lambda k: config.number(k, int), "stuck-after": config.seconds, "poll-interval": config.seconds,
           "close-timeout": config.seconds, "interrupt-timeout": config.seconds, "min-stack-budget": config.nbytes, "scratch-max": config.nbytes}


# ---------------------------------------------------------------- the file, the page, the defaults

def test_every_key_is_documented_with_its_default_and_every_documented_key_exists():
    page = DOC.read_text()
    named = set(re.findall(r"`(daskdiff\.[a-z0-9.-]+)`", page))  # config keys: lower case and '-' (not daskdiff.sample_units)
    rows = dict(re.findall(r"^\| `(daskdiff\.[a-z0-9.-]+)` \| `([^`]+)` \|", page, flags=re.M))  # a table row: key, default
    assert [key for key in KEYS if key not in rows] == []
    assert {key: yaml.safe_load(rows[key]) for key in KEYS} == PACKAGED  # the defaults the page gives are the file's
    assert sorted(named - set(KEYS)) == []
    assert len(KEYS) > 30


def test_the_defaults_are_the_old_constants():
    for key, old in OLD_CONSTANTS.items():
        assert READERS.get(key.rsplit(".", 1)[1], config.number)(key) == old, key
    assert budget.calibration() == Calibration()  # the measured rates, field for field ...
    assert [type(getattr(budget.calibration(), f.name)) for f in fields(Calibration)] == [type(f.default) for f in fields(Calibration)]  # ... types too


def test_the_keys_are_those_the_probes_cover():
    assert sorted(KEYS) == sorted(PROBES)


# ---------------------------------------------------------------- each key, what it changes

def _size() -> JobSize:
    """A job that exercises every cost: a conv layer (coordinates), generated images, a plan to
    draw, the image and spectral measures, the mean RDMs."""
    layers = [LayerSize("conv", (14, 14, 32), {"units": 2000, "filter_mean": 32}), LayerSize("fc", (100,), {"units": 100})]
    spec = parse_spec({"name": "c", "image_sets": {"a": "a", "m": "m"}, "output": "o",
                       "analysis": {"substrates": ["units", "filter_mean"], "n_units": [20, 200], "repeats": 50,
                                    "repeats_per_task": 10, "measures": ["images", "spectral"]}}, "test")
    return budget.job_size(spec, {"a": 300, "m": 120}, {layer.name: layer.shape for layer in layers},
                           {layer.name: dict(layer.stored) for layer in layers}, forward_flops=2e9, path_chars={"a": 30.0},
                           plan_built=False, fps={"m": 30.0}, generated={"a": (64 * 64, 10**6)}, input_values=64 * 64 * 3)


def _estimate_figures():
    est = estimate_work(_size())
    return astuple(replace(est, calibration=None)) + (est.wall_seconds(1), est.wall_seconds(4))


def _refused() -> list[str]:
    """The bounds a job of 2 tasks (1 shard, 1 differentiation task) exceeds."""
    est = estimate_work(JobSize(images={"a": 40}, layers=[LayerSize("l", (100,), {"units": 100})], substrates=["units"],
                                n_units=[10], repeats=100, repeats_per_task=25))
    return budget.problems(est, budget.Limits(None, Path("."), 0, None, None, "", None))


class _Scheduler:
    """What :class:`daskdiff.pipeline.health.WorkerWatch` asks a ``distributed.Client`` for, scripted:
    one worker with a 1 GB limit, paused and holding 0.9 GB outside any task, or not; and the
    memory restarts its nanny reported."""

    status = "running"

    def __init__(self, *, paused: bool = False):
        self.paused, self.restarts, self.asked = paused, [], 0

    def get_events(self, topic):
        return tuple(self.restarts)

    def subscribe_topic(self, topic, handler):
        pass

    def unsubscribe_topic(self, topic):
        pass

    def scheduler_info(self, n_workers=-1):
        self.asked += 1
        metrics = {"memory": 9 * 10**8, "managed_bytes": 0, "task_counts": {}}
        return {"workers": {"tcp://w:1": {"memory_limit": 10**9, "status": "paused" if self.paused else "running",
                                          "metrics": metrics, "last_seen": 0.0}}}


NEEDS = health.MemoryNeeds(10**8, 10**6, "tensorflow", 10**6, 10**9, "cluster.memory_limit 1GB", "cluster.memory_limit")


def _watch_ends_the_job(scheduler: _Scheduler, restarts: int = 0) -> bool:
    with health.WorkerWatch(scheduler, NEEDS, echo=lambda line: None) as watch:
        scheduler.restarts = [(float(i), {"worker": "tcp://w:1", "pid": i, "rss": 10**9}) for i in range(restarts)]
        try:
            watch.poll(0)
        except JobError:
            return True
    return False


def _polls_in_a_row() -> int:
    scheduler = _Scheduler()
    with health.WorkerWatch(scheduler, NEEDS, echo=lambda line: None) as watch:
        watch.poll(0)
        watch.poll(0)
    return scheduler.asked


def _scratch_reused() -> bool:
    from daskdiff.pipeline.tasks import scratch

    return np.shares_memory(scratch((1000,)), scratch((1000,)))


SHAPE = (6, 6, 8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """600 images of one conv layer in one shard: one repeat of 40 units needs ~12 MB (over
    the 8 MiB a task is given at least)."""
    from daskdiff.io.shards import ShardWriter, activation_variables, shard_labels

    folder = tmp_path_factory.mktemp("shards")
    sampling = Sampling(n_units=(40,), repeats=3, seed=2)
    plan = storage_plan({"conv": SHAPE}, ["units"], sampling)
    labels = shard_labels(plan, paths=[f"/im/{i}.png" for i in range(600)], image_set="s", image_index=list(range(600)),
                          logits=np.zeros((600, 3), np.float32), labels=["a", "b", "c"], attrs={})
    with ShardWriter(folder / "shard-00000.nc", plan, chunk_images=100) as writer:
        rng = np.random.default_rng(7)
        writer.append({name: rng.gamma(2.0, 1.0, size=(600, k)).astype(np.float32) for name, (_, k) in activation_variables(plan).items()})
        writer.write_labels(labels)
    return folder, sampling


def _task_peak(shards) -> int:
    """tracemalloc peak of a differentiation task given (almost) no memory budget: it works in the
    least a task is given."""
    from daskdiff.pipeline.tasks import DiffTask, run_diff_task

    folder, sampling = shards
    output = folder / f"out-{len(list(folder.glob('out-*')))}"  # a new one: a task reuses the partial result it finds
    task = DiffTask("s", "units", "conv", SHAPE, (str(folder / "shard-00000.nc"),), str(output), sampling, "euclidean",
                    "zscore", True, "condensed", False, repeats_per_stack=3, memory_budget=1)
    tracemalloc.start()
    try:
        run_diff_task(task)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _task_budget() -> int | None:
    from daskdiff.pipeline.plan import task_memory_budget

    return task_memory_budget(parse_spec({"name": "m", "image_sets": {"a": "x"}, "output": "o"}, "test"), [(8 * 2**30, 2)])


def _handoff_in_memory() -> bool:
    """Whether a job's shards go to differentiation in memory: 4 x 100 x 1000 bytes of values,
    0.4 of the one worker's 1 MB limit."""
    from daskdiff.pipeline.run import _handoff

    layer = SimpleNamespace(extracted=lambda: {"units": 100}, stored=lambda: {"units": 100})
    plan = SimpleNamespace(spec=SimpleNamespace(extraction=SimpleNamespace(store="needed", handoff="auto")),
                           storage={"l": layer}, sets={"a": ["x"] * 1000})
    client = SimpleNamespace(scheduler_info=lambda: {"workers": {"w": {"memory_limit": 10**6, "nthreads": 1}}})
    return _handoff(plan, client)


def _close_timeout(abandoned: bool = False) -> float:
    """The timeout daskdiff gives its nannies' worker processes when it closes a cluster it started
    (``abandoned``: after Ctrl-C, SIGTERM or an error)."""
    from distributed import Nanny

    from daskdiff.pipeline import cluster

    given = []

    class Worker(Nanny):
        def __init__(self):  # no process: only what closing one is given
            pass

        async def close(self, timeout=None, **kw):
            given.append(timeout)

    class Cluster:
        workers = {0: Worker()}

        def sync(self, f):
            asyncio.run(f())

        def close(self, timeout=None):
            pass

    cluster._close_cluster(Cluster(), abandoned=abandoned)
    return given[0]


def _architecture_cache():
    from daskdiff.pipeline.config import cache_folder

    return cache_folder("daskdiff.model.architecture-cache", "architectures")


def _as_started(monkeypatch, key):
    """Dask config ``key`` as ``_start_cluster`` starts a cluster with it (tests/test_job.py
    starts real ones)."""
    from daskdiff.pipeline import cluster

    monkeypatch.setattr(cluster, "_started", lambda *a: dask.config.get(key))
    return cluster._start_cluster(ClusterSection(kind="local_cuda"), None, None)


def _start_method() -> str:
    """The ``distributed.worker.multiprocessing-method`` a local cluster starts with, under this
    process's ``daskdiff.worker-forkserver``, in a fresh process: the forkserver of this one was
    started by the first test here that started a cluster, in an environment pytest has changed
    since (``PYTEST_CURRENT_TEST``)."""
    code = ("import dask\nfrom daskdiff.pipeline import cluster\nfrom daskdiff.pipeline.spec_cluster import ClusterSection\n"
            "cluster._started = lambda *a: dask.config.get('distributed.worker.multiprocessing-method')\n"
            "print(cluster._start_cluster(ClusterSection(), None, None))\n")
    env = dict(os.environ, DASK_DASKDIFF__WORKER_FORKSERVER=str(dask.config.get("daskdiff.worker-forkserver")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-1]


ON_START = {  # keys whose probe needs monkeypatch: the Dask setting each changes as a cluster starts
    "daskdiff.work-stealing": lambda mp: _as_started(mp, "distributed.scheduler.work-stealing"),
    "daskdiff.worker-malloc": lambda mp: _as_started(mp, "distributed.nanny.pre-spawn-environ").get("MALLOC_ARENA_MAX"),
}


def _worker_ttl():
    from daskdiff.pipeline.cluster import worker_ttl

    return worker_ttl()


#: key -> (a value other than the default, what the key changes, observed: a function of the
#: ``shards`` fixture). Every key of daskdiff.yaml.
PROBES = {
    "daskdiff.worker-ttl": ("5s", lambda _: _worker_ttl()),
    "daskdiff.work-stealing": (True, None),  # the probe needs monkeypatch: ON_START
    "daskdiff.worker-malloc": (False, None),
    "daskdiff.worker-forkserver": (False, lambda _: _start_method()),  # tests/test_forkserver.py: the workers it starts
    "daskdiff.budget.max-tasks": (1, lambda _: _refused()),
    "daskdiff.budget.max-cpu-hours": (1e-9, lambda _: _refused()),
    "daskdiff.health.restarts-before-work": (1, lambda _: _watch_ends_the_job(_Scheduler(), restarts=1)),
    "daskdiff.health.stuck-after": ("0s", lambda _: _watch_ends_the_job(_Scheduler(paused=True))),
    "daskdiff.health.poll-interval": (0, lambda _: _polls_in_a_row()),
    "daskdiff.task.memory-share": (0.25, lambda _: _task_budget()),
    "daskdiff.task.min-stack-budget": ("1GiB", _task_peak),
    "daskdiff.task.scratch-max": (0, lambda _: _scratch_reused()),
    "daskdiff.handoff.memory-share": (0.5, lambda _: _handoff_in_memory()),
    "daskdiff.cluster.close-timeout": ("3s", lambda _: _close_timeout()),
    "daskdiff.cluster.interrupt-timeout": ("10s", lambda _: _close_timeout(abandoned=True)),
    "daskdiff.model.architecture-cache": (False, lambda _: _architecture_cache()),  # tests/test_architecture_cache.py: what it holds
    "daskdiff.lease.ttl": ("5s", lambda _: output_lease(ObjectPath("s3://bucket/prefix")).ttl),  # tests/test_s3_output.py: what ttl does
    **{f"daskdiff.estimate.{f.name.replace('_', '-')}": (f.default * 2, lambda _: _estimate_figures()) for f in fields(Calibration)},
}


@pytest.mark.parametrize("key", [pytest.param(key, marks=pytest.mark.subprocess) if key == "daskdiff.worker-forkserver" else key
                                 for key in sorted(PROBES)])
def test_each_key_changes_what_it_controls(key, shards, monkeypatch):
    other, probe = PROBES[key]
    probe = probe or (lambda _: ON_START[key](monkeypatch))
    default = probe(shards)
    with dask.config.set({key: other}):
        changed = probe(shards)
    assert changed != default, (key, default, changed)


def test_the_changes_go_the_right_way(shards):
    """A few of them, by how much: the bound is the value set, the estimate scales with its rate."""
    with dask.config.set({"daskdiff.budget.max-tasks": 1}):
        assert [p.split(",")[0] for p in _refused()] == ["2 tasks (1 extraction"]
    with dask.config.set({"daskdiff.budget.max-tasks": 2}):
        assert _refused() == []
    base = estimate_work(_size())
    with dask.config.set({"daskdiff.estimate.forward-flops-per-cpu-s": 2 * Calibration().forward_flops_per_cpu_s,
                          "daskdiff.estimate.job-start-s": 0}):
        faster = estimate_work(_size())
    forward = 420 * 2e9 / Calibration().forward_flops_per_cpu_s  # 420 images' forward passes, at the default rate
    assert faster.extraction_seconds == pytest.approx(base.extraction_seconds - forward / 2)
    assert faster.wall_seconds(1) < base.wall_seconds(1) - 30
    free = _task_peak(shards)
    with dask.config.set({"daskdiff.task.min-stack-budget": "1GiB"}):
        stacked = _task_peak(shards)
    assert free < 1.5 * (8 * 2**20 + 600 * 288 * 4) < stacked  # blocks of images in 8 MiB, or ...
    assert stacked > 2 * stack_bytes(1, 600, 40, "euclidean")  # ... a stack of the 3 repeats, ~12 MB each


# ---------------------------------------------------------------- values that are refused

@pytest.mark.parametrize("key, value, want", [
    ("daskdiff.budget.max-tasks", "lots", "a whole number of at least 0"),
    ("daskdiff.budget.max-tasks", 2.5, "a whole number"),
    ("daskdiff.estimate.elements-per-s", 0, "a number above 0"),
    ("daskdiff.estimate.job-start-s", -1, "a number of at least 0"),
    ("daskdiff.health.stuck-after", "soon", "a duration such as 15s"),
    ("daskdiff.task.scratch-max", "big", "a size such as 8MiB"),
])
def test_a_bad_value_is_refused_naming_the_key_and_where_to_set_it(key, value, want):
    readers = {"max-tasks": _refused, "stuck-after": lambda: _watch_ends_the_job(_Scheduler(paused=True)), "scratch-max": _scratch_reused}
    env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
    with dask.config.set({key: value}), pytest.raises(ValueError, match=rf"Dask config {key} must be {want}.*{env}") as info:
        readers.get(key.rsplit(".", 1)[1], budget.calibration)()
    assert "docs/configuration.md" in str(info.value) and "~/.config/dask/daskdiff.yaml" in str(info.value)


def test_the_estimate_accepts_an_exponent_yaml_reads_as_a_string():
    """YAML 1.1 reads ``160e9`` (no dot) as a string: it is taken as the number it spells."""
    assert yaml.safe_load("x: 160e9")["x"] == "160e9"
    with dask.config.set({"daskdiff.estimate.forward-flops-per-cpu-s": "160e9"}):
        assert budget.calibration() == Calibration()


# ---------------------------------------------------------------- overridden from outside

@pytest.mark.subprocess
def test_the_environment_and_a_user_file_override_the_packaged_default(tmp_path):
    """``daskdiff run --dry-run`` of a 2-task job, refused on its lower bound (before any model
    is loaded) by ``DASK_DASKDIFF__BUDGET__MAX_CPU_HOURS=0``; with the task bound (200,000 in
    daskdiff.yaml) lowered to 1 from outside, by an environment variable or by a file in the
    user's Dask config folder, the refusal names that bound too. (``DASK_CONFIG`` stands for
    ``~/.config/dask``: Dask reads the one folder or the other alike.)"""
    write_images(tmp_path / "a", 3, seed=0)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "cfg", "model": {"name": "VGG16", "weights": "random", "layers": ["fc1"]},
                                   "image_sets": {"a": "a"}, "analysis": {"substrates": ["units"]}, "output": "out"}))
    home = tmp_path / "dask-config"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(DASK_CONFIG=str(home), DASK_DASKDIFF__BUDGET__MAX_CPU_HOURS="0")

    def dry_run(**more: str) -> str:
        done = subprocess.run([DASKDIFF, "run", str(job), "--dry-run"], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env={**env, **more})
        assert done.returncode == 2 and "more than 0 CPU-hours (daskdiff.budget.max-cpu-hours)" in done.stderr, done.stderr
        assert "lower bound" in done.stderr and not (tmp_path / "out").exists()
        return done.stderr

    refused = "2 tasks (1 extraction, 1 differentiation), more than 1 (daskdiff.budget.max-tasks)"
    assert "daskdiff.budget.max-tasks" not in dry_run()
    assert refused in dry_run(DASK_DASKDIFF__BUDGET__MAX_TASKS="1")
    (home / "daskdiff.yaml").write_text("daskdiff:\n  budget:\n    max-tasks: 1\n")
    assert refused in dry_run()
