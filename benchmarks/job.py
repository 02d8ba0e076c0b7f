"""A whole job against its floor: ``daskdiff run`` on the seeds' experiment shape vs the same
forward passes in one plain Keras process. Prints figures and ratios measured in one run.

    python benchmarks/job.py                 # 2 sets x 43 images, [200, 10000, all], 100 repeats
    python benchmarks/job.py --sets 4        # the 4-set shape of the seeds
    python benchmarks/job.py --large 1000    # also a 1,000-image set, [200, 10000]
    python benchmarks/job.py --runs none     # only the job that writes no units (store: none)
    python benchmarks/job.py --runs --large 1000   # only the 1,000-image run

What is run
-----------
- *Images*: each set is 43 lossless 224 x 224 PNGs written once before timing (white noise with a
  seed per set: the same files for the floor and the job).
- *Floor*: a fresh Python process that imports Keras, builds VGG16 (random weights: no download),
  loads the images with ``keras.utils.load_img`` and runs ``predict_on_batch`` over them in
  batches of 16. Its wall time, whole process included, is the floor.
- *Job*: ``daskdiff run SPEC --no-progress`` as a whole process: VGG16 with seeded random
  weights, ``n_units [200, 10000, all]``, 100 repeats, substrates ``units`` + ``filter_mean``,
  z-score, ``per_unit``, a LocalCluster of 2 one-thread workers (the default on 2 cores).

What is printed
---------------
Both wall times and their ratio (target <= 1.5); the job's stage times (as the job prints them);
bytes of shards written per image; bytes read per image by the worker processes (``rchar`` of
``/proc/PID/io``, less what a bare import of the same modules reads) and that over the stored
bytes (target <= 1.05: differentiation reads each stored value once; the workers' reads also
include the PNGs they decode and the shards' labels);
peak RSS (``VmHWM``) of each worker process.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

FLOOR = r'''
import sys, time, os
t0 = time.perf_counter()
import numpy as np
import keras
from keras.applications.vgg16 import VGG16, preprocess_input
model = VGG16(weights=None)
paths = sys.argv[1:]
for start in range(0, len(paths), 16):
    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in paths[start:start + 16]])
    model.predict_on_batch(preprocess_input(batch))
print(f"floor: {len(paths)} images in {time.perf_counter() - t0:.1f} s")
'''


class ProcessTree:
    """Poll a process and its descendants: last ``rchar``/``wchar`` and peak RSS of each."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root, self.interval = root, interval
        self.stats: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(d))
        return kids

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = self._children()
            todo, tree = [self.root], []
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += kids.get(pid, [])
            for pid in tree:
                try:
                    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                new = {"rchar": int(io["rchar"]), "wchar": int(io["wchar"]), "hwm": int(hwm.group(1)) * 1024 if hwm else 0}
                old = self.stats.get(pid, {})
                self.stats[pid] = {k: max(v, old.get(k, 0)) for k, v in new.items()}  # an exited process reads as 0
                self.stats[pid]["cmd"] = cmd or old.get("cmd", "")
            self._stop.wait(self.interval)

    def stop(self) -> dict[int, dict]:
        self._stop.set()
        self._thread.join()
        return self.stats


def import_reads() -> int:
    """Bytes a fresh process reads (``rchar``) just importing what a worker imports: the baseline
    subtracted from each worker's reads, which are then the job's own file reads."""
    code = ("import keras, netCDF4, xarray, distributed, daskdiff.pipeline.tasks, daskdiff.model.extract; "
            "print(open('/proc/self/io').read().split('rchar: ')[1].split()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return int(out.stdout.strip().splitlines()[-1])


def write_sets(folder: Path, n_sets: int, count: int) -> dict[str, list[str]]:
    from daskdiff.stimuli.noise import white_noise

    return {f"set{i}": white_noise(folder / f"set{i}", count=count, size=224, seed=i) for i in range(n_sets)}


def run_floor(paths: list[str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FLOOR, *paths], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"floor failed:\n{out.stderr[-3000:]}")
    print(out.stdout.strip() + f" (wall {wall:.1f} s)")
    return wall


def run_job(folder: Path, sets: dict[str, list[str]], n_units: list, name: str, store: str = "needed", handoff: str | None = None) -> dict:
    spec = {
        "name": name,
        "model": {"name": "VGG16", "weights": "random", "seed": 0},
        "image_sets": {s: str(Path(paths[0]).parent) for s, paths in sets.items()},
        "analysis": {"substrates": ["units", "filter_mean"], "n_units": n_units, "repeats": 100,
                     "normalize": "zscore", "per_unit": True, "seed": 0},
        "cluster": {"kind": "local", "n_workers": 2},
        "extraction": {"store": store, **({"handoff": handoff} if handoff else {})},
        "output": str(folder / f"out-{name}"),
    }
    job = folder / f"{name}.yaml"
    job.write_text(yaml.safe_dump(spec))
    daskdiff = Path(sys.executable).parent / "daskdiff"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(daskdiff), "run", str(job), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    tree = ProcessTree(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stats = tree.stop()
    if proc.returncode:
        sys.exit(f"job failed:\n{stderr[-3000:]}")
    n_images = sum(map(len, sets.values()))
    stored = sum(f.stat().st_size for f in (folder / f"out-{name}" / "activations").rglob("shard-*.nc"))
    read = sum(s["rchar"] for pid, s in stats.items() if "spawn_main" in s["cmd"] and "resource_tracker" not in s["cmd"])
    workers = {pid: s for pid, s in stats.items() if "spawn_main" in s["cmd"] and "resource_tracker" not in s["cmd"]}
    if os.environ.get("DASKDIFF_BENCH_DEBUG"):
        for pid, st in stats.items():
            print(f"  pid {pid}: rchar {st['rchar'] / 1e6:.0f} MB, wchar {st['wchar'] / 1e6:.0f} MB, hwm {st['hwm'] / 1e9:.2f} GB: {st['cmd'][:120]}")
    stages = re.search(r"stages \(s from start\): (.*)", stdout)
    read -= len(workers) * import_reads()
    return {"wall": wall, "n_images": n_images, "stored": stored, "read": read, "workers": workers,
            "stages": stages.group(1) if stages else "(not printed)", "client_hwm": stats.get(proc.pid, {}).get("hwm", 0)}


def report(label: str, job: dict, floor: float) -> None:
    n = job["n_images"]
    print(f"\n{label}")
    print(f"  job wall {job['wall']:.1f} s, floor {floor:.1f} s: ratio {job['wall'] / floor:.2f} (target <= 1.5)")
    print(f"  stages (s from start): {job['stages']}")
    print(f"  shards written: {job['stored'] / n / 1e6:.1f} MB per image ({job['stored'] / 1e9:.2f} GB)")
    print(f"  read by the workers (rchar, less imports): {job['read'] / n / 1e6:.1f} MB per image, "
          f"{job['read'] / job['stored']:.2f} x what the shards store (extraction reads its images; differentiation reads the shards "
          "only where their values are not kept in the workers' memory, extraction.handoff)")
    hwm = sorted(s["hwm"] / 1e9 for s in job["workers"].values())
    print(f"  peak RSS per worker: {', '.join(f'{h:.2f} GB' for h in hwm)}; client {job['client_hwm'] / 1e9:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--images", type=int, default=43)
    parser.add_argument("--large", type=int, default=0, help="also run one set of this many images, n_units [200, 10000]")
    parser.add_argument("--runs", nargs="*", default=["needed", "needed/memory", "none"],
                        help="the seed-shaped job's extraction.store[/handoff], one run each "
                             "(default: needed (handoff disk, the default), needed/memory, none; none given: only --large)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daskdiff-bench-job-") as tmp:
        folder = Path(tmp)
        sets = write_sets(folder / "images", args.sets, args.images)
        paths = [p for ps in sets.values() for p in ps]
        print(f"{args.sets} set(s) x {args.images} images, 224x224 white-noise PNGs; {os.cpu_count()} cores")
        floor = run_floor(paths)
        for run in args.runs:
            store, _, handoff = run.partition("/")
            if store not in ("needed", "all", "none") or handoff not in ("", "disk", "memory", "auto"):
                parser.error(f"--runs {run!r}: give store[/handoff], store one of needed, all, none; handoff disk, memory or auto")
            seed = run_job(folder, sets, [200, 10000, "all"], f"seed-{store}-{handoff or 'default'}", store, handoff or None)
            how = f"store: {store}" + (f", handoff: {handoff}" if handoff else "")
            report(f"seed-shaped job, {how}: {args.sets} x {args.images} images, n_units [200, 10000, all], 100 repeats",
                   seed, floor)
        if args.large:
            big = write_sets(folder / "large", 1, args.large)
            big_floor = run_floor(big["set0"])
            large = run_job(folder, big, [200, 10000], "large")
            report(f"large job: 1 x {args.large} images, n_units [200, 10000], 100 repeats", large, big_floor)


if __name__ == "__main__":
    main()
