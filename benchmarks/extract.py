"""Benchmark extraction: a bare VGG16 forward pass against daskdiff's whole shard pipeline.

Run from the repository root::

    .venv/bin/python benchmarks/extract.py           # full run (5 to 8 minutes on 2 cores)
    .venv/bin/python benchmarks/extract.py --quick   # smoke test (under a minute)

What is measured, and why
-------------------------
A worker's extraction task, :func:`daskdiff.model.extract.extract_shard`, decodes a shard's image
files with Pillow (in a helper thread, overlapping the forward pass), preprocesses them, runs one
forward pass per batch through an *extraction model* whose outputs gather the plan's sampled
units and take the filter means in the graph, and appends each batch's outputs to the shard's
NetCDF file from a second helper thread (:class:`daskdiff.io.shards.ShardWriter`, flushing each
batch and dropping it from the page cache) while the next batch goes through the model; the
labels follow and the file is renamed into place. The forward pass is the work that cannot be
avoided; the questions are how much the rest costs on top of it, and whether a worker's memory
stays flat as it extracts shard after shard.

1. *Images*: lossless 224 x 224 RGB white-noise PNG files (:func:`daskdiff.stimuli.noise.white_noise`);
   the cost of a forward pass does not depend on what the pixels show.
2. *Bare*: ``keras.applications.VGG16(weights=None)``, the ordinary one-output model with its
   softmax top, given the same He-normal random weights as ``ModelSpec('VGG16',
   weights='random', seed=0)``; ``model.predict(x, batch_size=16, verbose=0)`` on the same
   images, already decoded and preprocessed into a float32 array in memory. This is the ceiling
   the task asks about. A second bare figure loops ``model.predict_on_batch`` over the same
   batches, the call ``extract_shard`` makes: on a 2-core machine ``model.predict`` was seen to
   use only about 1.1 cores in some calls and 2 in others (same CPU time per image), which would
   make the pipeline look faster than its own ceiling; ratios to both are printed.
3. *Pipeline*: ``extract_shard`` on shards of 128 images (the job default), batch size 16,
   everything per image included: PNG decoding, preprocessing, the forward pass through the
   extraction model with its in-graph gathers and means, the NetCDF writes, labelling,
   ``fsync`` and rename. The one-time model build is left out by a warm-up shard. Two storage
   plans are timed, both from :func:`daskdiff.core.units.storage_plan` on ``model_layers(spec)['shapes']``
   with substrates ``units`` and ``filter_mean``, 100 repeats, seed 0, ``mode='random'`` and
   ``predictions`` stored in full: the *default* plan of a job spec (``n_units=[200, 10000]``) and a *small*
   one (``n_units=[200]``). Bytes written per image (shard file sizes / images) are printed
   next to :func:`daskdiff.core.units.bytes_per_image`, which counts the activation values alone.

   Bare and pipeline runs alternate, round by round, so that a disturbance of the machine hits
   both alike. Throughput is wall-clock images / s, **best of k rounds** (the round least
   disturbed by other processes; the median is printed too); the ratios are pipeline best /
   bare best, for each bare figure. CPU seconds per image (``time.process_time``, all threads) are printed as
   a cross-check that other processes barely affect; their ratio is an optimistic bound, since
   CPU time hides steps that run on one of the cores while the other idles.
   *Storage floor*: for each plan, the bytes the pipeline wrote per image are written again
   with plain ``os.write`` from a warm buffer, batch by batch at the bare model's pace, flushed
   and dropped like :class:`ShardWriter` does (:func:`storage_floor`): no model, no NetCDF.
   The CPU this costs is what storing those bytes costs any pipeline on this machine, so
   bare CPU / (bare CPU + floor CPU) is the best ratio a plan can reach here (*ceiling*).
4. *Where the time goes*: one shard of each plan is run step by step, each step timed (wall and
   CPU) on its own and in sequence, without the helper threads: decoding, preprocessing, the
   extraction model's ``predict_on_batch``, the base model's ``predict_on_batch`` on the same
   batches (the forward pass alone, for reference; not part of the pipeline), the
   ``ShardWriter`` appends, the two plan digests ``extract_shard`` computes, labelling and the
   labels' write with ``fsync`` and rename.
5. *Memory*: fresh worker-like processes (this script with ``--child``) receive the plan
   pickled, as a Dask worker does, build the model, and extract 32 images, or 256, with the
   default plan, shard after shard (1 vs 8 shards of 32: the number of images, not the shard
   size, is what must not matter; worker memory with the job's default shards of 128 levels
   off after the first shard, see docs/performance.md). Peak resident memory is
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in the child, which also reports its peak after
   the model build and after each shard, its RSS after each shard (a leak shows there even
   when the model build sets the peak), and Linux's ``VmHWM`` as a cross-check. Linux carries
   ``ru_maxrss`` over ``fork`` and ``exec``, so the children are started by a small launcher
   process that this script starts before it grows (a child started directly would report the
   benchmark's own multi-GB peak). Target: the two peaks within 10% of each other, i.e.
   a worker's memory does not grow with the number of images it extracts. A third child that
   only runs the bare ``model.predict`` on 32 images gives the forward pass's own peak.

Nothing asserts a time: every figure and ratio comes from one run on one machine. The header
prints the load average, and how fast freshly allocated memory is written, first and at once
again: a virtual machine whose balloon driver hands freed memory back to the host re-faults
every fresh allocation (about 1 GB/s on the machine this was written on, against several GB/s
for memory just freed), which inflates the memory-bound steps: the in-graph gathers and the
NetCDF writes. Run it on a quiet machine.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"

import argparse
import json
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daskdiff.model.extract import extract_shard, extractor, LOGITS, ShardTask
from daskdiff.stimuli.noise import white_noise
from daskdiff.io.images import load_images
from daskdiff.core.batches import shard_size
from daskdiff.model.architecture import model_layers
from daskdiff.model.build import cached_model, class_labels, input_size, ModelSpec, preprocess
from daskdiff.core.units import bytes_per_image, LayerPlan, plan_digest, Sampling, storage_plan
from daskdiff.io.atomic import atomic_path, flush_and_drop
from daskdiff.io.layout import shard_path
from daskdiff.io.shards import shard_labels, ShardWriter

SPEC = ModelSpec("VGG16", weights="random", seed=0)
SUBSTRATES = ("units", "filter_mean")
BATCH_SIZE = 16
IMAGE_SIZE = 224
SEED = 0
IMAGE_SET = "bench"
TARGET_RATIO = 0.90
TARGET_MEMORY = 0.10
FORWARD_REFERENCE = "forward, base model alone (reference)"
PREDICT = "model.predict"
PREDICT_ON_BATCH = "model.predict_on_batch"
BARE = (PREDICT, PREDICT_ON_BATCH)
WRITE_STEP = "write activations (ShardWriter.append)"
"""The two ways the bare model is timed (see the module docstring, item 2)."""


@dataclass(frozen=True)
class PlanChoice:
    """A storage plan to time: a label and the sampling it is built from."""

    label: str
    n_units: tuple[int, ...]
    repeats: int

    def summary(self) -> str:
        return f"n_units {list(self.n_units)}, {self.repeats} repeats"


@dataclass(frozen=True)
class Config:
    """Sizes and numbers of rounds of one benchmark run."""

    n_images: int  # per timed round, bare and pipeline alike; a multiple of shard_size
    shard_size: int
    rounds: int
    plans: tuple[PlanChoice, ...]
    memory_plan: PlanChoice
    memory_images: tuple[int, int]
    memory_shard_size: int  # shards of the memory children: 1 vs several shards, not shard size
    memory_bare: bool  # also measure a process that only runs the bare model.predict


DEFAULT_PLAN = PlanChoice("default", (200, 10000), 100)
SMALL_PLAN = PlanChoice("small", (200,), 100)
FULL = Config(
    n_images=128,
    shard_size=128,  # the job spec's default
    rounds=3,
    plans=(DEFAULT_PLAN, SMALL_PLAN),
    memory_plan=DEFAULT_PLAN,
    memory_images=(32, 256),
    memory_shard_size=32,
    memory_bare=True,
)
QUICK = Config(
    n_images=16,
    shard_size=16,
    rounds=1,
    plans=(PlanChoice("small", (200,), 10),),
    memory_plan=PlanChoice("small", (200,), 10),
    memory_images=(16, 32),
    memory_shard_size=16,
    memory_bare=False,
)


@dataclass
class Clock:
    """Wall and CPU seconds (``time.process_time``: every thread of this process)."""

    wall: float = 0.0
    cpu: float = 0.0


@dataclass(frozen=True)
class Throughput:
    """Images of each round and the time each round took."""

    n_images: int
    clocks: tuple[Clock, ...]

    @property
    def best(self) -> float:
        """Images / s of the fastest round."""
        return self.n_images / min(c.wall for c in self.clocks)

    @property
    def median(self) -> float:
        return self.n_images / statistics.median(c.wall for c in self.clocks)

    @property
    def cpu_per_image(self) -> float:
        """Median CPU seconds per image."""
        return statistics.median(c.cpu for c in self.clocks) / self.n_images


# ---------------------------------------------------------------------------------------------
# helpers


def timed(fn: Callable[[], object]) -> Clock:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Clock(time.perf_counter() - wall, time.process_time() - cpu)


@contextmanager
def step(times: dict[str, Clock], name: str) -> Iterator[None]:
    """Add the wall and CPU time of the block to ``times[name]``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    clock = times.setdefault(name, Clock())
    clock.wall += time.perf_counter() - wall
    clock.cpu += time.process_time() - cpu


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def build_plan(choice: PlanChoice, shapes: dict[str, tuple[int, ...]]) -> dict[str, LayerPlan]:
    """The storage plan a job would use for ``choice`` (class-score layer stored in full)."""
    sampling = Sampling(n_units=choice.n_units, repeats=choice.repeats, mode="random", seed=SEED)
    return storage_plan(shapes, SUBSTRATES, sampling, full_layers=["predictions"])


def shard_tasks(paths: Sequence[str], output: Path, size: int) -> list[ShardTask]:
    """Shards of ``size`` images, as a job makes them (size rounded up to the batch size)."""
    size = shard_size(size, BATCH_SIZE)
    return [
        ShardTask(IMAGE_SET, shard, tuple(paths[start : start + size]), start, str(output), BATCH_SIZE)
        for shard, start in enumerate(range(0, len(paths), size))
    ]


def first_touch_speed(n_bytes: int = 1 << 30) -> tuple[float, float]:
    """GB/s of writing ``n_bytes`` of freshly allocated memory, twice (the second reuses pages)."""
    speeds = []
    for _ in range(2):
        start = time.perf_counter()
        block = np.empty(n_bytes, dtype=np.uint8)
        block.fill(1)
        speeds.append(n_bytes / (time.perf_counter() - start) / 1e9)
        del block
    return speeds[0], speeds[1]


def machine_line() -> str:
    import keras
    import tensorflow as tf

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average (1, 5, 15 min): {one:.2f}, {five:.2f}, {fifteen:.2f}"


# ---------------------------------------------------------------------------------------------
# throughput: bare forward pass and pipeline


def bare_model():
    """keras.applications.VGG16 with its softmax top and the spec's random weights."""
    import keras

    model = keras.applications.VGG16(weights=None)
    model.set_weights(cached_model(SPEC).get_weights())
    return model


def written_bytes(tasks: Sequence[ShardTask]) -> int:
    return sum(shard_path(t.output, t.image_set, t.shard).stat().st_size for t in tasks)


def bench_throughput(
    config: Config, paths: list[str], plans: dict[str, dict[str, LayerPlan]], work: Path
) -> tuple[dict[str, Throughput], dict[str, float]]:
    """Alternating rounds of the bare model (two ways) and of the pipeline with each plan.

    Returns the throughput of each of :data:`BARE` and of each plan label, and the bytes
    written per image by each plan.
    """
    n = config.n_images
    x = preprocess(load_images(paths[:n], (IMAGE_SIZE, IMAGE_SIZE))[0], SPEC)
    model = bare_model()
    bare = {
        PREDICT: lambda: model.predict(x, batch_size=BATCH_SIZE, verbose=0),
        PREDICT_ON_BATCH: lambda: [model.predict_on_batch(x[i : i + BATCH_SIZE]) for i in range(0, n, BATCH_SIZE)],
    }
    model.predict(x[:BATCH_SIZE], batch_size=BATCH_SIZE, verbose=0)  # warm-up: traces both
    model.predict_on_batch(x[:BATCH_SIZE])
    tasks = {}
    for choice in config.plans:
        tasks[choice.label] = shard_tasks(paths[:n], work / choice.label, config.shard_size)
        warm_up = shard_tasks(paths[n : n + config.shard_size], work / "warm-up", config.shard_size)
        extract_shard(warm_up[0], plans[choice.label], SPEC)  # builds the extraction model
    clocks: dict[str, list[Clock]] = {**{k: [] for k in bare}, **{c.label: [] for c in config.plans}}
    for r in range(config.rounds):
        for name, run_bare in bare.items():
            clocks[name].append(timed(run_bare))
        for choice in config.plans:
            plan = plans[choice.label]
            clocks[choice.label].append(timed(lambda: [extract_shard(t, plan, SPEC) for t in tasks[choice.label]]))
        print(
            f"  round {r + 1}/{config.rounds}, images/s: " + ", ".join(f"{k} {n / v[-1].wall:.2f}" for k, v in clocks.items()),
            flush=True,
        )
    written = {label: written_bytes(t) / n for label, t in tasks.items()}
    return {k: Throughput(n, tuple(v)) for k, v in clocks.items()}, written


def storage_floor(n_bytes_per_image: int, n_images: int, pace: float, folder: Path) -> Clock:
    """CPU and wall seconds per image of storing ``n_bytes_per_image`` with plain ``os.write``.

    No model, no NetCDF: the same bytes written the way :class:`ShardWriter` writes them (one
    file per shard of ``n_images``, a batch of :data:`BATCH_SIZE` images at a time, each
    batch flushed and dropped from the page cache), at the pipeline's pace (``pace`` seconds of
    sleep between batches stand in for the forward pass: freed memory is handed back to the
    host of a virtual machine within seconds, so the pace changes the cost). Whatever a
    pipeline does, storing these bytes costs it at least about this much.
    """
    batch = np.ones(BATCH_SIZE * n_bytes_per_image // 4, dtype=np.float32)  # warm buffer, reused
    folder.mkdir(parents=True, exist_ok=True)
    total = Clock()
    fd = os.open(folder / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(0, n_images, BATCH_SIZE):
            time.sleep(pace)
            def write() -> None:
                assert os.write(fd, memoryview(batch)) == batch.nbytes
                flush_and_drop(fd)

            clock = timed(write)
            total.wall += clock.wall
            total.cpu += clock.cpu
    finally:
        os.close(fd)
        (folder / "floor.bin").unlink()
    return Clock(total.wall / n_images, total.cpu / n_images)


def print_throughput(config: Config, rates: dict[str, Throughput], written: dict[str, float], plans, floors: dict[str, Clock]) -> None:
    print()
    for name in BARE:
        r = rates[name]
        print(
            f"bare {name}: {r.best:.2f} images/s best of {config.rounds} (median {r.median:.2f}); "
            f"{r.cpu_per_image:.3f} CPU s/image"
        )
    predict, on_batch = rates[PREDICT], rates[PREDICT_ON_BATCH]
    for choice in config.plans:
        r = rates[choice.label]
        print(
            f"pipeline, {choice.label} plan ({choice.summary()}): {r.best:.2f} images/s best "
            f"(median {r.median:.2f}); {r.cpu_per_image:.3f} CPU s/image\n"
            f"  pipeline / bare {PREDICT}: {r.best / predict.best:.2f} (target >= {TARGET_RATIO:.2f}); "
            f"/ bare {PREDICT_ON_BATCH}: {r.best / on_batch.best:.2f}; medians: "
            f"{r.median / predict.median:.2f}, {r.median / on_batch.median:.2f}; CPU time: "
            f"{predict.cpu_per_image / r.cpu_per_image:.2f}\n"
            f"  written {fmt_bytes(written[choice.label])}/image; "
            f"bytes_per_image {fmt_bytes(bytes_per_image(plans[choice.label]))}\n"
            f"  storing {fmt_bytes(written[choice.label])}/image alone (plain writes, no model, no NetCDF; "
            f"storage_floor): {1e3 * floors[choice.label].cpu:.0f} ms CPU, {1e3 * floors[choice.label].wall:.0f} ms wall "
            f"per image; ceiling of the ratio by CPU: {ceiling(on_batch, floors[choice.label]):.2f}"
        )


def ceiling(bare: Throughput, floor: Clock) -> float:
    """Best possible pipeline / bare ratio if the 2 cores were shared perfectly: the bare CPU
    time per image against the bare CPU time plus the floor cost of storing the bytes."""
    return bare.cpu_per_image / (bare.cpu_per_image + floor.cpu)


# ---------------------------------------------------------------------------------------------
# where the time goes


def breakdown(paths: Sequence[str], plan: dict[str, LayerPlan], output: Path) -> tuple[dict[str, Clock], int]:
    """Time each step of one shard in sequence; returns the step times and the file size.

    The steps are those of ``extract_shard`` and ``run_extraction`` with neither the decode
    prefetch thread nor the write thread (each step on its own); the base model's forward pass
    on the same batches is timed for reference.
    """
    base, model = extractor(SPEC, plan)
    times: dict[str, Clock] = {}
    with step(times, "decode PNG (Pillow)"):
        images, ok, skipped = load_images(list(paths), input_size(base))
    with step(times, "preprocess"):
        x = preprocess(images, SPEC)
    path = shard_path(output, IMAGE_SET, 0)
    logits = []
    with atomic_path(path) as tmp:
        with ShardWriter(tmp, plan, chunk_images=BATCH_SIZE) as writer:
            for start in range(0, len(x), BATCH_SIZE):
                batch = x[start : start + BATCH_SIZE]
                with step(times, FORWARD_REFERENCE):
                    base.predict_on_batch(batch)
                with step(times, "forward, extraction model (predict_on_batch)"):
                    out = model.predict_on_batch(batch)
                logits.append(out.pop(LOGITS))
                with step(times, WRITE_STEP):
                    writer.append(out)
            with step(times, "plan_digest (twice per shard)"):
                plan_digest(plan)
                plan_digest(plan)
            with step(times, "label (shard_labels)"):
                labels = shard_labels(
                    plan,
                    paths=[paths[i] for i in ok],
                    image_set=IMAGE_SET,
                    image_index=ok,
                    logits=np.concatenate(logits),
                    labels=class_labels(logits[0].shape[1]),
                    attrs={"plan_digest": "benchmark"},
                    skipped=[(s.path, s.reason) for s in skipped],
                )
            with step(times, "write labels (the fsync and rename follow, untimed)"):
                writer.write_labels(labels)
    return times, path.stat().st_size


def print_breakdown(label: str, times: dict[str, Clock], size: int, n_images: int) -> None:
    total = Clock(
        sum(c.wall for k, c in times.items() if k != FORWARD_REFERENCE),
        sum(c.cpu for k, c in times.items() if k != FORWARD_REFERENCE),
    )
    print(f"\none shard of {n_images} images, {label} plan, steps in sequence:")
    print(f"  {'step':<46} {'wall s':>7} {'CPU s':>7} {'wall ms/image':>14} {'% of wall':>10}")
    for name, clock in [*times.items(), ("total of the pipeline steps", total)]:
        share = "" if name == FORWARD_REFERENCE else f"{100 * clock.wall / total.wall:.1f}%"
        print(f"  {name:<46} {clock.wall:7.2f} {clock.cpu:7.2f} {1e3 * clock.wall / n_images:14.1f} {share:>10}")
    forward = times["forward, extraction model (predict_on_batch)"]
    reference = times[FORWARD_REFERENCE]
    write = times[WRITE_STEP]
    print(
        f"  extraction model - base model: {forward.wall - reference.wall:+.2f} s wall, "
        f"{forward.cpu - reference.cpu:+.2f} s CPU ({100 * (forward.cpu / reference.cpu - 1):+.0f}% CPU); "
        f"NetCDF file {fmt_bytes(size)} written at {size / write.wall / 1e6:.0f} MB/s"
    )


# ---------------------------------------------------------------------------------------------
# memory: worker-like child processes

LAUNCHER = """
import json, subprocess, sys
for line in sys.stdin:
    done = subprocess.run(json.loads(line), capture_output=True, text=True, check=False)
    print(json.dumps([done.returncode, done.stdout, done.stderr]), flush=True)
"""
"""A small process that starts the memory children. Linux keeps a process's ``ru_maxrss``
across ``fork`` and ``exec`` (a child started by this benchmark, a few GB large, would start
with the benchmark's own peak); a child of this launcher starts from the launcher's few MB."""


class Launcher:
    """Runs commands through :data:`LAUNCHER`, started while this process is still small."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, command: list[str]) -> tuple[int, str, str]:
        """(return code, stdout, stderr) of ``command``."""
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return tuple(json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def proc_status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (Linux), e.g. ``VmHWM`` (peak RSS of this
    process's memory map) or ``VmRSS`` (RSS now); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_extract(plan_file: str, image_dir: str, n_images: int, shard: int, output: str) -> dict:
    """Extract ``n_images`` images shard by shard, as a worker does; peak RSS along the way."""
    with open(plan_file, "rb") as f:
        plan = pickle.load(f)
    paths = sorted(str(p) for p in Path(image_dir).glob("*.png"))[:n_images]
    extractor(SPEC, plan)
    after_build = peak_rss_bytes()
    peaks, now = [], []
    start = time.perf_counter()
    for task in shard_tasks(paths, Path(output), shard):
        extract_shard(task, plan, SPEC)
        peaks.append(peak_rss_bytes())
        now.append(proc_status_bytes("VmRSS"))
    seconds = time.perf_counter() - start
    return {
        "peak_rss": peak_rss_bytes(), "vm_hwm": proc_status_bytes("VmHWM"), "after_build": after_build,
        "peaks": peaks, "now": now, "seconds": seconds,
    }


def child_bare(image_dir: str, n_images: int) -> dict:
    """Run the bare model.predict on ``n_images`` decoded images; peak RSS."""
    import keras

    paths = sorted(str(p) for p in Path(image_dir).glob("*.png"))[:n_images]
    model = keras.applications.VGG16(weights=None)
    after_build = peak_rss_bytes()
    x = preprocess(load_images(paths, (IMAGE_SIZE, IMAGE_SIZE))[0], SPEC)
    start = time.perf_counter()
    model.predict(x, batch_size=BATCH_SIZE, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "peak_rss": peak_rss_bytes(), "vm_hwm": proc_status_bytes("VmHWM"), "after_build": after_build,
        "peaks": [], "now": [], "seconds": seconds,
    }


def run_child(launcher: Launcher, *args: str) -> dict:
    """Run this script with ``--child ARGS`` in a fresh Python process; its JSON result."""
    command = [sys.executable, os.path.abspath(__file__), "--child", *args]
    code, stdout, stderr = launcher.run(command)
    if code != 0:
        raise RuntimeError(f"child process {command} failed ({code}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def bench_memory(
    config: Config, plan: dict[str, LayerPlan], image_dir: Path, work: Path, launcher: Launcher
) -> dict[str, dict]:
    """Peak RSS of fresh processes extracting each of ``config.memory_images`` images."""
    plan_file = work / "plan.pkl"
    with open(plan_file, "wb") as f:
        pickle.dump(plan, f)
    results = {}
    for n in config.memory_images:
        output = work / f"memory-{n}"
        results[f"extract {n} images"] = run_child(
            launcher, "extract", str(plan_file), str(image_dir), str(n), str(config.memory_shard_size), str(output)
        )
        shutil.rmtree(output, ignore_errors=True)  # the default plan writes ~1 GB per shard
    if config.memory_bare:
        n = config.memory_images[0]
        results[f"bare model.predict, {n} images"] = run_child(launcher, "bare", str(image_dir), str(n))
    return results


def print_memory(config: Config, results: dict[str, dict]) -> float:
    for name, r in results.items():
        hwm = "" if r["vm_hwm"] is None else f", VmHWM {fmt_bytes(r['vm_hwm'])}"
        print(
            f"{name}: peak RSS {fmt_bytes(r['peak_rss'])}{hwm} (after the model build "
            f"{fmt_bytes(r['after_build'])}; the work took {r['seconds']:.1f} s)"
        )
        if len(r["peaks"]) > 1:
            print("  peak after each shard: " + ", ".join(fmt_bytes(p) for p in r["peaks"]))
        if len(r["now"]) > 1 and None not in r["now"]:
            print("  RSS after each shard:  " + ", ".join(fmt_bytes(p) for p in r["now"]))
    small_n, large_n = config.memory_images
    ratio = results[f"extract {large_n} images"]["peak_rss"] / results[f"extract {small_n} images"]["peak_rss"]
    print(
        f"ratio of peaks, {large_n} / {small_n} images: {ratio:.3f} "
        f"(target {1 - TARGET_MEMORY:.2f} .. {1 + TARGET_MEMORY:.2f})"
    )
    return ratio


# ---------------------------------------------------------------------------------------------
# main


def print_summary(config, rates, written, plans, floors, memory, memory_ratio) -> None:
    predict, on_batch = rates[PREDICT], rates[PREDICT_ON_BATCH]
    small_n, large_n = config.memory_images
    print("\n## Summary (paste into docs/performance.md)\n")
    print(
        f"{machine_line()}; images/s are the best of {config.rounds} alternating rounds of "
        f"{config.n_images} images, shards of {config.shard_size}, batch {BATCH_SIZE}.\n"
    )
    print(
        "| what | images/s | / `predict` | / `predict_on_batch` | CPU s/image | written/image | "
        "bytes_per_image | ceiling (storage floor) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = [(f"VGG16 `{PREDICT}`, arrays in memory", predict, "", "", ""), (f"VGG16 `{PREDICT_ON_BATCH}` loop, arrays in memory", on_batch, "", "", "")]
    rows += [
        (
            f"`extract_shard`, {c.label} plan ({c.summary()})",
            rates[c.label],
            fmt_bytes(written[c.label]),
            fmt_bytes(bytes_per_image(plans[c.label])),
            f"{ceiling(on_batch, floors[c.label]):.2f} ({1e3 * floors[c.label].cpu:.0f} ms CPU/image)",
        )
        for c in config.plans
    ]
    for what, r, per_image, planned, top in rows:
        print(
            f"| {what} | {r.best:.2f} | {r.best / predict.best:.2f} | {r.best / on_batch.best:.2f} | "
            f"{r.cpu_per_image:.3f} | {per_image} | {planned} | {top} |"
        )
    peaks = {n: memory[f"extract {n} images"]["peak_rss"] for n in config.memory_images}
    print(
        f"\nPeak RSS of a worker-like process, {config.memory_plan.label} plan: {fmt_bytes(peaks[small_n])} "
        f"for {small_n} images, {fmt_bytes(peaks[large_n])} for {large_n} (ratio {memory_ratio:.3f})."
    )


def run(config: Config) -> None:
    started = time.perf_counter()
    n_needed = max(config.n_images + config.shard_size, *config.memory_images)
    work = Path(tempfile.mkdtemp(prefix="daskdiff-bench-extract-"))
    launcher = Launcher()  # before this process grows: see LAUNCHER
    try:
        print("# Extraction benchmark: bare VGG16 forward pass vs extract_shard\n")
        print(f"machine: {machine_line()}")
        print(load_line())
        first, again = first_touch_speed()
        print(f"writing 1 GiB of freshly allocated memory: {first:.1f} GB/s; at once again: {again:.1f} GB/s")
        print(f"model: {SPEC}")
        image_dir = work / "images"
        paths = white_noise(image_dir, count=n_needed, size=IMAGE_SIZE, seed=SEED)
        print(f"images: {n_needed} white-noise PNG files, {IMAGE_SIZE}x{IMAGE_SIZE} RGB")
        shapes = model_layers(SPEC)["shapes"]
        plans = {c.label: build_plan(c, shapes) for c in {*config.plans, config.memory_plan}}
        for choice in config.plans:
            print(f"plan {choice.label!r} ({choice.summary()}): bytes_per_image {fmt_bytes(bytes_per_image(plans[choice.label]))}")

        print(
            f"\n## Throughput: {config.n_images} images per round, shards of {config.shard_size}, "
            f"batch {BATCH_SIZE}, {config.rounds} alternating rounds\n"
        )
        rates, written = bench_throughput(config, paths, plans, work)
        pace = BATCH_SIZE / rates[PREDICT_ON_BATCH].best
        floors = {c.label: storage_floor(round(written[c.label]), config.n_images, pace, work / "floor") for c in config.plans}
        print_throughput(config, rates, written, plans, floors)

        print("\n## Where the time goes")
        for choice in config.plans:
            shard = paths[: config.shard_size]
            times, size = breakdown(shard, plans[choice.label], work / f"breakdown-{choice.label}")
            print_breakdown(choice.label, times, size, len(shard))

        print(
            f"\n## Memory: fresh worker-like processes, {config.memory_plan.label} plan, "
            f"shards of {config.memory_shard_size}\n"
        )
        memory = bench_memory(config, plans[config.memory_plan.label], image_dir, work, launcher)
        memory_ratio = print_memory(config, memory)

        print(f"\n{load_line()}; the run took {time.perf_counter() - started:.0f} s")
        print_summary(config, rates, written, plans, floors, memory, memory_ratio)
    finally:
        launcher.close()
        shutil.rmtree(work, ignore_errors=True)


def child_main(args: Sequence[str]) -> None:
    """``--child extract PLAN_FILE IMAGE_DIR N SHARD OUTPUT`` or ``--child bare IMAGE_DIR N``."""
    kind, *rest = args
    if kind == "extract":
        plan_file, image_dir, n, shard, output = rest
        result = child_extract(plan_file, image_dir, int(n), int(shard), output)
    else:
        image_dir, n = rest
        result = child_bare(image_dir, int(n))
    print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 images, one round, a small plan")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
    else:
        run(QUICK if args.quick else FULL)


if __name__ == "__main__":
    main()
