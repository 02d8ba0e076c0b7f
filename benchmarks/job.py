"""A whole job at the machine's limit: ``daskdiff run`` against its floors and the pipeline a user
would pick instead, on the same images, in one run. Prints wall time, peak memory of each
process tree and bytes written, and the ratios against the targets of issue 23.

    python benchmarks/job.py                       # 2 sets x 43 images, [200, 10000, all], 100 repeats
    python benchmarks/job.py --images 4 --repeats 3 --no-peer   # a quick check (~2 min)
    python benchmarks/job.py --large 1000          # also a 1,000-image set, [200, 10000]
    python benchmarks/job.py --runs none           # only the job that writes no units (store: none)
    python benchmarks/job.py --runs --large 1000   # only the 1,000-image run

What is run (each a fresh process tree, one after the other)
-----------------------------------------------------------
- *Images*: each set is ``--images`` lossless 224 x 224 PNGs written once before timing (white
  noise with a seed per set: the same files for every row).
- *Forward floor*: one Python process that imports Keras, builds VGG16 (random weights), loads
  the PNGs with ``keras.utils.load_img`` and runs ``predict_on_batch`` in batches of 16, with
  TensorFlow's default kernels, as daskdiff's workers run them (TensorFlow 2.21 has oneDNN's off
  here: 27.4 s for the seed images, 25.4 s with ``TF_ENABLE_ONEDNN_OPTS=1``).
- *Arithmetic floor*: one plain numpy process doing exactly the Gram products and medians the
  job's plan needs (every set, substrate, layer, ``n_units`` and repeat; an exact ``n_units``
  once), each on a float64 ``(n_images, k)`` matrix already in memory: ``x @ x.T`` (BLAS syrk),
  the squared distances, their square root and the median of the strict upper triangle. No
  gather, no normalisation, no I/O: the least arithmetic any pipeline needs.
- *Peer*: THINGSvision 2.7.3 (Keras source, VGG16 random weights) writing one ``.npy`` per layer
  and set, then rsatoolbox 0.3.2 ``calc_rdm`` per repeat in one process, as their docs show
  (z-score, ``euclidean``; the square root of rsatoolbox's squared distance per channel is the
  per-unit Euclidean distance). It runs in its own virtual environment, created by this script on
  first use (``--peer-venv``; ``pip install thingsvision==2.7.3 rsatoolbox==0.3.2
  "tensorflow<2.16"``, ~3 GB with torch; Keras 2 there). If that fails the row is skipped and
  the commands to make it by hand are printed.
- *daskdiff*: ``daskdiff run SPEC --no-progress`` (VGG16 seeded random weights, substrates
  ``units`` + ``filter_mean``, z-score, ``per_unit``, daskdiff's default LocalCluster, or ``--workers``/``--threads``), once
  per ``--runs`` entry (``store[/handoff]``).

What is printed
---------------
Per row: wall time; peak PSS of the whole process tree (the sum of ``Pss`` in
``/proc/PID/smaps_rollup`` over the root and its descendants, sampled every 0.25 s: shared
pages are split between the processes that map them, so the sum is what the tree holds); bytes
written (the files the row left in its output folder). For ``daskdiff run`` also its stage
times, bytes read by the workers over what the shards store, and peak RSS per worker. Then the
ratios against the targets: daskdiff >= 3x faster than the peer with a smaller tree; <= 1.5x the
forward floor with ``store: none`` and <= 2x with the default store; the large job <= 1.3x
(forward + arithmetic floor). The load average is printed at the start and the end: figures from
a loaded machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

FLOOR = r"""
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
print(f"forward floor: {len(paths)} images in {time.perf_counter() - t0:.1f} s")
"""

ARITHMETIC = r"""
import json, sys, time
import numpy as np
plan = json.loads(sys.argv[1])  # [[n_images, k, evaluations], ...]
rng = np.random.default_rng(0)
busy = 0.0
for n, k, evaluations in plan:
    x = rng.standard_normal((n, k))  # already in memory: not timed
    i, j = np.triu_indices(n, k=1)
    t = time.perf_counter()
    for _ in range(evaluations):
        g = x @ x.T
        sq = np.diagonal(g).copy()
        d = sq[:, None] + sq[None, :] - 2 * g
        np.maximum(d, 0, out=d)
        np.median(np.sqrt(d[i, j]))
    busy += time.perf_counter() - t
    del x
print(f"arithmetic floor: {sum(e for _, _, e in plan)} Gram products and medians in {busy:.1f} s")
print(f"BUSY {busy}")
"""

PEER = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
cfg = json.loads(sys.argv[1])
from thingsvision import get_extractor
from thingsvision.utils.data import DataLoader, ImageDataset
from thingsvision.utils.storing import save_features
extractor = get_extractor(model_name="VGG16", source="keras", device="cpu", pretrained=False)
for name, folder in cfg["sets"].items():
    dataset = ImageDataset(root=folder, out_path=os.path.join(cfg["out"], name), backend=extractor.get_backend(),
                           transforms=extractor.get_transformations())
    batches = DataLoader(dataset=dataset, batch_size=16, backend=extractor.get_backend())
    for layer in cfg["layers"]:
        features = extractor.extract_features(batches=batches, module_name=layer, flatten_acts=False)
        save_features(features, out_path=os.path.join(cfg["out"], name, layer), file_format="npy")
extracted = time.perf_counter() - t0
import rsatoolbox
rng = np.random.default_rng(0)
evaluations = 0
for name in cfg["sets"]:
    for layer in cfg["layers"]:
        acts = np.load(os.path.join(cfg["out"], name, layer, "features.npy"))
        substrates = {"units": acts.reshape(len(acts), -1),
                      "filter_mean": acts.mean(axis=tuple(range(1, acts.ndim - 1))) if acts.ndim > 2 else acts}
        for x in substrates.values():
            for n in cfg["n_units"]:
                exact = n == "all" or n >= x.shape[1]
                for _ in range(1 if exact else cfg["repeats"]):
                    s = x if exact else x[:, np.sort(rng.choice(x.shape[1], n, replace=False))]
                    z = (s - s.mean()) / s.std()
                    rdm = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(z), method="euclidean")
                    np.median(np.sqrt(rdm.dissimilarities))  # per-unit Euclidean: rsatoolbox's is squared / channels
                    evaluations += 1
total = time.perf_counter() - t0
print(f"peer: extracted at {extracted:.1f} s, {evaluations} RDMs and medians by {total:.1f} s")
print(f"EXTRACTED {extracted}")
"""

PEER_PACKAGES = ["thingsvision==2.7.3", "rsatoolbox==0.3.2", "tensorflow<2.16"]

VGG16_LAYERS = {
    "block1_conv1": (224, 224, 64), "block1_conv2": (224, 224, 64), "block1_pool": (112, 112, 64),
    "block2_conv1": (112, 112, 128), "block2_conv2": (112, 112, 128), "block2_pool": (56, 56, 128),
    "block3_conv1": (56, 56, 256), "block3_conv2": (56, 56, 256), "block3_conv3": (56, 56, 256), "block3_pool": (28, 28, 256),
    "block4_conv1": (28, 28, 512), "block4_conv2": (28, 28, 512), "block4_conv3": (28, 28, 512), "block4_pool": (14, 14, 512),
    "block5_conv1": (14, 14, 512), "block5_conv2": (14, 14, 512), "block5_conv3": (14, 14, 512), "block5_pool": (7, 7, 512),
    "flatten": (25088,), "fc1": (4096,), "fc2": (4096,), "predictions": (1000,),
}
"""VGG16's 22 layers (the job analyses them all) and their output shapes without the batch axis."""

SUBSTRATES = ("units", "filter_mean")


class ProcessTree:
    """Poll a process and its descendants: the peak of the tree's summed PSS, and per process the
    last ``rchar``/``wchar`` and peak RSS."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root, self.interval = root, interval
        self.stats: dict[int, dict] = {}
        self.peak_pss = 0
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
            todo, tree = [(self.root, None)], []
            while todo:
                pid, parent = todo.pop()
                tree.append((pid, parent))
                todo += [(kid, pid) for kid in kids.get(pid, [])]
            pss = 0
            for pid, parent in tree:
                try:
                    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                    status = Path(f"/proc/{pid}/status").read_text()
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
                pss += int(found.group(1)) * 1024 if found else 0
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                new = {"rchar": int(io["rchar"]), "wchar": int(io["wchar"]), "hwm": int(hwm.group(1)) * 1024 if hwm else 0}
                old = self.stats.get(pid, {})
                self.stats[pid] = {k: max(v, old.get(k, 0)) for k, v in new.items()}  # an exited process reads as 0
                self.stats[pid]["cmd"] = cmd or old.get("cmd", "")
                self.stats[pid]["parent"] = parent
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def stop(self) -> dict[int, dict]:
        self._stop.set()
        self._thread.join()
        return self.stats


def measured(argv: list[str], output: Path | None = None, env: dict | None = None) -> dict:
    """Run ``argv`` as a process tree; its wall time, stdout, peak PSS and the bytes of the files
    under ``output`` afterwards. Exits with the tail of stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})))
    tree = ProcessTree(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stats = tree.stop()
    if proc.returncode:
        sys.exit(f"{' '.join(argv[:3])} failed:\n{stderr[-3000:]}")
    written = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) if output and output.exists() else 0
    return {"wall": wall, "stdout": stdout, "pss": tree.peak_pss, "written": written, "stats": stats, "pid": proc.pid}


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


def arithmetic_plan(sets: dict[str, list[str]], n_units: list, repeats: int) -> list[list[int]]:
    """``[n_images, k, evaluations]`` for every (set, substrate, layer, n_units) of the job."""
    from daskdiff.core.sampling import sample_size
    from daskdiff.core.substrates import feature_shape

    plan = []
    for paths in sets.values():
        for shape in VGG16_LAYERS.values():
            for substrate in SUBSTRATES:
                fshape = feature_shape(shape, substrate)
                total = int(__import__("math").prod(fshape))
                for n in n_units:
                    exact = n == "all" or n >= total
                    plan.append([len(paths), total if exact else sample_size(fshape, n), 1 if exact else repeats])
    return plan


def run_floor(paths: list[str]) -> dict:
    row = measured([sys.executable, "-c", FLOOR, *paths])
    print(f"{row['stdout'].strip()} (wall {row['wall']:.1f} s, peak PSS {row['pss'] / 1e9:.2f} GB)")
    return row


def run_arithmetic(sets: dict[str, list[str]], n_units: list, repeats: int) -> dict:
    row = measured([sys.executable, "-c", ARITHMETIC, json.dumps(arithmetic_plan(sets, n_units, repeats))])
    row["busy"] = float(re.search(r"BUSY (\S+)", row["stdout"]).group(1))
    print(f"{re.search(r'^arithmetic floor: .*$', row['stdout'], re.M).group(0)} (process wall {row['wall']:.1f} s, peak PSS {row['pss'] / 1e9:.2f} GB)")
    return row


def peer_python(venv: Path) -> Path | None:
    """The peer's interpreter, its virtual environment made first if it is not there; None (and
    what to run by hand printed) if that fails."""
    python = venv / "bin" / "python"
    ready = venv / ".daskdiff-bench-ready"
    if ready.exists():
        return python
    by_hand = f"{sys.executable} -m venv {venv} && {python} -m pip install " + " ".join(f"'{p}'" for p in PEER_PACKAGES)
    print(f"peer: making its virtual environment {venv} (once; ~3 GB) ...", flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES]]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True)
        if out.returncode:
            print(f"peer: skipped: {' '.join(step[:4])} failed ({out.stderr.strip().splitlines()[-1:]}); to make it by hand:\n  {by_hand}")
            return None
    ready.touch()
    return python


def run_peer(python: Path, folder: Path, sets: dict[str, list[str]], n_units: list, repeats: int) -> dict:
    out = folder / "peer"
    cfg = {"sets": {s: str(Path(p[0]).parent) for s, p in sets.items()}, "layers": list(VGG16_LAYERS), "n_units": n_units,
           "repeats": repeats, "out": str(out)}
    row = measured([str(python), "-c", PEER, json.dumps(cfg)], out, env={"KERAS_BACKEND": "tensorflow"})
    row["extracted"] = float(re.search(r"EXTRACTED (\S+)", row["stdout"]).group(1))
    said = re.search(r"^peer: .*$", row["stdout"], re.M)
    print(f"{said.group(0) if said else 'peer:'} (wall {row['wall']:.1f} s, peak PSS {row['pss'] / 1e9:.2f} GB, "
          f"written {row['written'] / 1e9:.2f} GB)")
    return row


def run_job(folder: Path, sets: dict[str, list[str]], n_units: list, repeats: int, name: str, store: str = "needed",
            handoff: str | None = None, cluster: dict | None = None) -> dict:
    spec = {
        "name": name,
        "model": {"name": "VGG16", "weights": "random", "seed": 0},
        "image_sets": {s: str(Path(paths[0]).parent) for s, paths in sets.items()},
        "analysis": {"substrates": list(SUBSTRATES), "n_units": n_units, "repeats": repeats,
                     "normalize": "zscore", "per_unit": True, "seed": 0},
        "cluster": cluster or {"kind": "local"},
        "extraction": {"store": store, **({"handoff": handoff} if handoff else {})},
        "output": str(folder / f"out-{name}"),
    }
    job = folder / f"{name}.yaml"
    job.write_text(yaml.safe_dump(spec))
    daskdiff = Path(sys.executable).parent / "daskdiff"
    row = measured([str(daskdiff), "run", str(job), "--no-progress"], folder / f"out-{name}")
    stats = row["stats"]
    servers = {pid for pid, s in stats.items() if "multiprocessing.forkserver" in s["cmd"] and s["parent"] == row["pid"]}
    spawned = {pid for pid, s in stats.items() if "spawn_main" in s["cmd"] and "resource_tracker" not in s["cmd"]}
    workers = {pid: s for pid, s in stats.items() if pid in spawned or s["parent"] in servers}  # forked: the server imported for them
    if os.environ.get("DASKDIFF_BENCH_DEBUG"):
        for pid, st in stats.items():
            print(f"  pid {pid}: rchar {st['rchar'] / 1e6:.0f} MB, wchar {st['wchar'] / 1e6:.0f} MB, hwm {st['hwm'] / 1e9:.2f} GB: {st['cmd'][:120]}")
    stages = re.search(r"stages \(s from start\): (.*)", row["stdout"])
    estimate = re.search(r"~([\d.,]+) (s|min|h) of wall time", row["stdout"])
    tree = re.search(r"process tree: ~([\d.]+) (GB|MB)", row["stdout"])
    row.update(n_images=sum(map(len, sets.values())),
               stored=sum(f.stat().st_size for f in (folder / f"out-{name}" / "activations").rglob("shard-*.nc")),
               read=sum(s["rchar"] for s in workers.values()) - len(spawned & set(workers)) * import_reads(), workers=workers,
               stages=stages.group(1) if stages else "(not printed)", client_hwm=stats.get(row["pid"], {}).get("hwm", 0),
               estimate=estimate.group(0) if estimate else "(not printed)",
               tree=float(tree.group(1)) * (1e9 if tree.group(2) == "GB" else 1e6) if tree else None)
    return row


def report(label: str, job: dict, floor: dict) -> None:
    n = job["n_images"]
    print(f"\n{label}")
    print(f"  wall {job['wall']:.1f} s (printed estimate: {job['estimate']}), peak PSS of the tree {job['pss'] / 1e9:.2f} GB, "
          f"written {job['written'] / 1e9:.2f} GB; forward floor {floor['wall']:.1f} s: ratio {job['wall'] / floor['wall']:.2f}")
    if job["tree"]:
        print(f"  process tree printed ~{job['tree'] / 1e9:.2f} GB: measured peak PSS / printed {job['pss'] / job['tree']:.2f}")
    print(f"  stages (s from start): {job['stages']}")
    if job["stored"]:
        print(f"  shards written: {job['stored'] / n / 1e6:.1f} MB per image; read by the workers (rchar, less imports): "
              f"{job['read'] / n / 1e6:.1f} MB per image, {job['read'] / job['stored']:.2f} x what the shards store")
    hwm = sorted(s["hwm"] / 1e9 for s in job["workers"].values())
    print(f"  peak RSS per worker: {', '.join(f'{h:.2f} GB' for h in hwm)}; client {job['client_hwm'] / 1e9:.2f} GB")


def verdict(name: str, value: float, target: str, ok: bool) -> None:
    print(f"  {name:<58} {value:7.2f}  target {target:<8} {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--images", type=int, default=43)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--large", type=int, default=0, help="also run one set of this many images, n_units [200, 10000]")
    parser.add_argument("--runs", nargs="*", default=["needed", "none"],
                        help="the seed-shaped job's extraction.store[/handoff], one run each "
                             "(default: needed (the default store), none; none given: only --large)")
    parser.add_argument("--workers", type=int, default=None, help="cluster.n_workers of daskdiff's LocalCluster (default: daskdiff's)")
    parser.add_argument("--threads", type=int, default=None, help="cluster.threads_per_worker (default: daskdiff's)")
    parser.add_argument("--no-peer", action="store_true", help="skip THINGSvision + rsatoolbox")
    parser.add_argument("--peer-venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "daskdiff-bench" / "peer-venv",
                        help="the peer's virtual environment (made on first use)")
    args = parser.parse_args()
    seed_units = [200, 10000, "all"]
    cluster = {"kind": "local", **({"n_workers": args.workers} if args.workers else {}),
               **({"threads_per_worker": args.threads} if args.threads else {})}
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="daskdiff-bench-job-") as tmp:
        folder = Path(tmp)
        results = {}
        if args.runs:
            sets = write_sets(folder / "images", args.sets, args.images)
            paths = [p for ps in sets.values() for p in ps]
            print(f"{args.sets} set(s) x {args.images} images, 224x224 white-noise PNGs; n_units {seed_units}, {args.repeats} repeats")
            floor = results["floor"] = run_floor(paths)
            arith = results["arithmetic"] = run_arithmetic(sets, seed_units, args.repeats)
            python = None if args.no_peer else peer_python(args.peer_venv)
            peer = results["peer"] = run_peer(python, folder, sets, seed_units, args.repeats) if python else None
            for run in args.runs:
                store, _, handoff = run.partition("/")
                if store not in ("needed", "all", "none") or handoff not in ("", "disk", "memory", "auto"):
                    parser.error(f"--runs {run!r}: give store[/handoff], store one of needed, all, none; handoff disk, memory or auto")
                job = results[run] = run_job(folder, sets, seed_units, args.repeats, f"seed-{store}-{handoff or 'default'}", store,
                                             handoff or None, cluster)
                report(f"daskdiff run, store: {store}" + (f", handoff: {handoff}" if handoff else ""), job, floor)
            print(f"\nsummary, seed-shaped job ({args.sets} x {args.images} images, {args.repeats} repeats); arithmetic floor "
                  f"{arith['busy']:.1f} s")
            for run in args.runs:
                job = results[run]
                if peer:
                    verdict(f"[{run}] peer wall / daskdiff wall", peer["wall"] / job["wall"], ">= 3", peer["wall"] >= 3 * job["wall"])
                    verdict(f"[{run}] daskdiff tree PSS / peer tree PSS", job["pss"] / peer["pss"], "< 1", job["pss"] < peer["pss"])
                if job["tree"]:
                    ratio = job["pss"] / job["tree"]
                    verdict(f"[{run}] tree PSS / printed process tree", ratio, "1/1.5-1.5", 1 / 1.5 <= ratio <= 1.5)
                bound = 1.5 if run.startswith("none") else 2.0
                verdict(f"[{run}] daskdiff wall / forward floor", job["wall"] / floor["wall"], f"<= {bound}", job["wall"] <= bound * floor["wall"])
            if not peer:
                print("  (peer not run: no ratios against it)")
        if args.large:
            big = write_sets(folder / "large", 1, args.large)
            big_floor = run_floor(big["set0"])
            big_arith = run_arithmetic(big, [200, 10000], args.repeats)
            large = run_job(folder, big, [200, 10000], args.repeats, "large", cluster=cluster)
            report(f"large job: 1 x {args.large} images, n_units [200, 10000], {args.repeats} repeats", large, big_floor)
            both = big_floor["wall"] + big_arith["busy"]
            verdict("[large] daskdiff wall / (forward + arithmetic floor)", large["wall"] / both, "<= 1.3", large["wall"] <= 1.3 * both)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
