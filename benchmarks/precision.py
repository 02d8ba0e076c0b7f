"""What 16-bit forward passes do to differentiation: the same job in float32, bfloat16 and float16.

    python benchmarks/precision.py               # the 16 bundled photos at 224 x 224, VGG16 random weights
    python benchmarks/precision.py --images 8 --repeats 50

What is run
-----------
One job spec, run three times with only ``model.precision`` changed (``float32``, ``bfloat16``,
``float16``: Keras mixed precision, weights in float32, activations stored as float32): VGG16
with seeded random weights (no download), the bundled scikit-image photos resized to 224 x 224,
``n_units [200, 10000]``, substrates ``units`` + ``filter_mean``, z-score, ``per_unit``, on a
LocalCluster of one worker. The same units are sampled in every run (same seed), so the runs
differ only in the forward pass's arithmetic.

What is printed
---------------
For each layer, (substrate, n_units): float32's mean differentiation over repeats, and for each
16-bit precision the largest relative difference over repeats ``|d16 - d32| / d32`` and the
relative difference of the mean; then the largest of each over all layers, and each run's wall
time. Figures from one run; not a timed test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("float32", "bfloat16", "float16")


def run(precision: str, root: Path, images: int, repeats: int) -> tuple[Path, float]:
    from distributed import Client, LocalCluster

    from daskdiff.pipeline.job import run_job
    from daskdiff.pipeline.spec import JobSpec

    spec = JobSpec.model_validate({
        "name": f"precision-{precision}",
        "model": {"name": "VGG16", "weights": "random", "seed": 0, "precision": precision},
        "image_sets": {"photos": {"generate": "photos", "count": images, "size": 224}},
        "analysis": {"n_units": [200, 10000], "repeats": repeats, "substrates": ["units", "filter_mean"], "seed": 0},
        "extraction": {"batch_size": 8},
        "output": str(root / precision),
    })
    t0 = time.perf_counter()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        result = run_job(spec, root, client=client, progress=False, echo=lambda *a: None)
    return result.path, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="bundled photos, 1 to 16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import xarray as xr

    with tempfile.TemporaryDirectory(prefix="daskdiff-precision-") as tmp:
        root = Path(tmp)
        paths, seconds = {}, {}
        for p in PRECISIONS:
            paths[p], seconds[p] = run(p, root, args.images, args.repeats)
            print(f"{p}: {seconds[p]:.1f} s", file=sys.stderr)
        data = {p: xr.open_dataset(paths[p])["differentiation"].load() for p in PRECISIONS}
    ref = data["float32"].sel(image_set="photos")
    print(f"VGG16 random weights, {args.images} photos 224x224, {args.repeats} repeats; relative differences to float32")
    header = f"{'layer':<14} {'substrate':<12} {'n_units':>7} {'float32 mean':>12} {'SD/mean':>8}"
    for p in PRECISIONS[1:]:
        header += f" {p + ' max':>14} {p + ' mean':>14}"
    print(header)
    worst = {p: [0.0, 0.0] for p in PRECISIONS[1:]}
    spreads = []
    for layer in ref["layer"].values:
        for substrate in ref["substrate"].values:
            for n in ref["n_units"].values:
                d32 = ref.sel(layer=layer, substrate=substrate, n_units=n).values
                if not np.isfinite(d32).any():
                    continue
                spread = float(np.nanstd(d32) / abs(np.nanmean(d32)))  # the sampling's own spread over repeats
                spreads.append(spread)
                line = f"{layer:<14} {substrate:<12} {n:>7} {np.nanmean(d32):>12.5g} {spread:>8.1e}"
                nonzero = np.isfinite(d32) & (d32 != 0)  # a repeat whose float32 median is 0 has no relative difference
                for p in PRECISIONS[1:]:
                    d16 = data[p].sel(image_set="photos", layer=layer, substrate=substrate, n_units=n).values
                    rel_max = float(np.max(np.abs(d16[nonzero] - d32[nonzero]) / np.abs(d32[nonzero])))
                    rel_mean = float(abs(np.nanmean(d16) - np.nanmean(d32)) / abs(np.nanmean(d32)))
                    worst[p] = [max(worst[p][0], rel_max), max(worst[p][1], rel_mean)]
                    line += f" {rel_max:>14.2e} {rel_mean:>14.2e}"
                print(line)
    for p in PRECISIONS[1:]:
        print(f"{p}: largest relative difference of one repeat {worst[p][0]:.2e}, of a mean over repeats {worst[p][1]:.2e}")
    print(f"float32's own spread over repeats (SD/mean, where n_units samples): median {np.median([v for v in spreads if v > 0]):.1e}")
    print("wall: " + ", ".join(f"{p} {seconds[p]:.1f} s" for p in PRECISIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
