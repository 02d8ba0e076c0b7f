"""Results of the differentiation core now against another commit's, on the same arrays.

Exports ``--against`` (a commit) with ``git archive`` into a temporary folder, runs one task's
rows (``_n_units_result``: every ``n_units`` of [50, 500, all] x 7 repeats, mean RDM kept) in a
fresh process for each side, for every metric and normalisation on three random layers
(ReLU-like, a large common offset, ~99 % zeros), and prints, per array of the partial result,
the largest relative difference and where it is. ``--activations FILE.npz`` adds real layers
(one array per layer, ``(n_images, *unit_shape)``; ``units`` and ``filter_mean`` substrates,
[200, 10000, all] x 20 repeats, z-score, per unit, Euclidean).

    python benchmarks/exactness.py                      # against main's merge base 34e5ff3
    python benchmarks/exactness.py --against HEAD~3 --activations acts.npz
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIDE = r"""
import sys
import numpy as np
from daskdiff.core.units import Sampling
from daskdiff.pipeline import tasks
from daskdiff.pipeline.tasks import DiffTask, _n_units_result

out, acts = sys.argv[1], sys.argv[2]
results = {}

def run(values, shape, substrate, layer, n_units, repeats, metric, normalize, tag):
    task = DiffTask("a", substrate, layer, shape, (), "/tmp/unused", Sampling(n_units, repeats), metric, normalize, True,
                    "condensed", True)
    values = np.ascontiguousarray(values, dtype=np.float32)
    index = np.arange(values.shape[1], dtype=np.int64)
    peak = max(float(values.max()), -float(values.min()))
    layout = getattr(tasks, "unit_major", None)  # the path the task takes where it has one
    held = layout(values, normalize) if layout is not None else values
    for n in n_units:
        for key, arr in _n_units_result(held, index, task, n, 1e-6 * peak).items():
            results[f"{tag}/{n}/{key}"] = np.asarray(arr)

rng = np.random.default_rng(1)
shape = (12, 12, 32)
m = int(np.prod(shape))
sparse = np.where(rng.random((30, m)) < 0.02, rng.random((30, m)), 0)
sparse[:, : m // 2] = 0
layers = {"relu": np.maximum(rng.standard_normal((43, m)), 0), "offset": 1000 + rng.standard_normal((20, m)), "sparse": sparse}
for name, v in layers.items():
    for metric in ("euclidean", "sqeuclidean", "correlation", "cosine", "cityblock"):
        for normalize in ("zscore", "none", "mean", "max"):
            run(v, shape, "units", "conv", (50, 500, "all"), 7, metric, normalize, f"{name}/{metric}/{normalize}")
if acts:
    data = np.load(acts)
    for layer in data.files:
        a = data[layer]
        subs = {"units": a.reshape(len(a), -1),
                "filter_mean": a.mean(axis=tuple(range(1, a.ndim - 1))) if a.ndim > 2 else a}
        for substrate, v in subs.items():
            run(v, a.shape[1:], substrate, layer, (200, 10000, "all"), 20, "euclidean", "zscore", f"{layer}/{substrate}")
np.savez(out, **results)
"""


def side(root: Path, out: Path, activations: str) -> None:
    done = subprocess.run([sys.executable, "-c", SIDE, str(out), activations], env=dict(os.environ, PYTHONPATH=str(root)),
                          cwd=root, capture_output=True, text=True)  # cwd: ``-c`` puts it first on sys.path
    if done.returncode:
        sys.exit(f"{root}: failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="34e5ff3", help="the commit to compare with (default: main's merge base)")
    parser.add_argument("--activations", default="", help="an .npz of real layers (n_images, *unit_shape)")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="daskdiff-exactness-") as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(here), "archive", args.against, "daskdiff"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        activations = str(Path(args.activations).resolve()) if args.activations else ""
        side(old, Path(tmp) / "old.npz", activations)
        side(here, Path(tmp) / "new.npz", activations)
        a, b = np.load(Path(tmp) / "old.npz"), np.load(Path(tmp) / "new.npz")
        worst: dict[str, tuple[float, str]] = {}
        for key in a.files:
            x, y = a[key].astype(float), b[key].astype(float)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                print(f"{key}: NaN in different places")
            keep = ~np.isnan(x) & ~np.isnan(y)
            rel = float(np.max(np.abs(x[keep] - y[keep]) / np.maximum(np.abs(x[keep]), 1e-300))) if keep.any() else 0.0
            array = key.rsplit("/", 1)[1]
            worst[array] = max(worst.get(array, (0.0, "")), (rel, key))
    print(f"largest relative difference against {args.against}, per array of the partial result:")
    for array, (rel, key) in worst.items():
        print(f"  {array:<16} {rel:.1e}  ({key})")


if __name__ == "__main__":
    main()
