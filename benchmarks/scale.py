"""Scale: 1,000 images through the whole job on this machine, with bounded worker memory.

Runs a real job (VGG16, seeded random weights, a LocalCluster of worker processes) on N generated
224x224 noise images, and prints, measured in this one run:

- wall time of each stage and images/s;
- bytes written per image (shard files on disk / images) next to the plan's prediction;
- peak resident memory of every worker process (``ru_maxrss``), which must not grow with N;
- the cost of one differentiation task, the unit that scales with repeats x layers x sets.

    python benchmarks/scale.py                 # 1000 images, n_units [200], 100 repeats
    python benchmarks/scale.py --images 64     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-units", default="200", help="comma-separated, e.g. 200,10000")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--keep", help="keep the output in this folder")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from daskdiff.stimuli.noise import white_noise
    from daskdiff.pipeline.job import run_job
    from daskdiff.pipeline.spec_file import parse_spec

    root = Path(args.keep or tempfile.mkdtemp(prefix="daskdiff-scale-"))
    images = root / "images"
    t0 = time.perf_counter()
    white_noise(images, count=args.images, size=224, seed=0)
    t_gen = time.perf_counter() - t0
    n_units = [int(n) if n != "all" else "all" for n in args.n_units.split(",")]
    spec = parse_spec({
        "name": "scale",
        "model": {"name": "VGG16", "weights": "random", "seed": 0},
        "image_sets": {"noise": str(images)},
        "analysis": {"substrates": ["units", "filter_mean"], "n_units": n_units, "repeats": args.repeats, "repeats_per_task": 25},
        "extraction": {"batch_size": 16, "shard_size": 32},
        "output": str(root / "out"),
    }, "scale")

    stages: dict[str, float] = {}

    def echo(line: str) -> None:
        stages[line[:40]] = time.perf_counter()
        print(f"[{time.perf_counter() - t_start:7.1f} s] {line}", flush=True)

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        t_start = time.perf_counter()
        result = run_job(spec, Path("."), client=client, progress=True, echo=echo)
        wall = time.perf_counter() - t_start
        peaks = client.run(_peak_rss_mb)
    shard_bytes = sum(f.stat().st_size for f in (root / "out" / "activations").rglob("shard-*.nc"))
    partial_bytes = sum(f.stat().st_size for f in (root / "out" / "partial").glob("*.npz"))
    n_tasks = len(list((root / "out" / "partial").glob("*.npz")))
    import xarray as xr

    with xr.open_dataset(result.path) as ds:
        planned = int(ds.attrs["bytes_per_image"])
        n_done = int(ds["n_images"].sum())
    print()
    print(f"images: {n_done} (generated in {t_gen:.1f} s), workers: {args.workers}, cores: {os.cpu_count()}")
    print(f"n_units {n_units}, repeats {args.repeats}, {n_tasks} differentiation tasks")
    print(f"whole job: {wall:.1f} s = {n_done / wall:.2f} images/s end to end")
    print(f"bytes written per image: {shard_bytes / n_done / 1e6:.3f} MB in shards (plan: {planned / 1e6:.3f} MB of float32 values), "
          f"+ {partial_bytes / 1e3:.0f} kB of partial results in all")
    print("peak RSS per worker process: " + ", ".join(f"{v:.0f} MB" for v in peaks.values()))
    print(json.dumps({"images": n_done, "seconds": round(wall, 1), "images_per_s": round(n_done / wall, 2),
                      "shard_MB_per_image": round(shard_bytes / n_done / 1e6, 3), "peak_rss_MB": [round(v) for v in peaks.values()]}))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
