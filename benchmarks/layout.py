"""One differentiation task's repeats from the image-major values vs the unit-major layout, paired.

For one VGG16-sized layer of 43 images (ReLU-like random values), in one process, alternating:
the task's rows for ``n_units`` [200, 10000, all] x 100 repeats (z-score, per-unit Euclidean)
computed from the image-major ``(n_images, n_stored)`` values as the task did before, and from
the unit-major layout (:mod:`daskdiff.core.unit_major`) including the time to make it; the
per-value costs behind :func:`daskdiff.core.unit_major.worth_unit_major`; and the largest
relative difference between the two paths' medians. CPU time of this process (``process_time``),
BLAS on one thread as a Dask worker runs it, best of ``--rounds``: a shared machine's wall time
would measure the neighbours.

    OPENBLAS_NUM_THREADS=1 python benchmarks/layout.py                  # block3_conv1, 802,816 units
    OPENBLAS_NUM_THREADS=1 python benchmarks/layout.py --shape 224 224 64
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from daskdiff.core.units import Sampling
from daskdiff.core.unit_major import unit_major
from daskdiff.pipeline.tasks import DiffTask, _n_units_result


def best(rounds: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[56, 56, 256])
    parser.add_argument("--images", type=int, default=43)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(args.shape)
    nf = int(np.prod(shape))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; layer {shape} ({nf} units) x {args.images} images")
    values = np.maximum(np.random.default_rng(0).standard_normal((args.images, nf), dtype=np.float32), 0)
    index = np.arange(nf, dtype=np.int64)
    task = DiffTask("a", "units", "layer", shape, (), "/tmp/unused", Sampling((200, 10000, "all"), 100), "euclidean",
                    "zscore", True, "condensed", False)

    def rows(v, peak):
        return [_n_units_result(v, index, task, n, 1e-6 * peak) for n in task.sampling.n_units]

    def image_major():
        return rows(values, max(float(values.max()), -float(values.min())))

    def with_layout():
        um = unit_major(values, "zscore")
        return rows(um, um.peak)

    old_s, old = best(args.rounds, image_major)
    new_s, new = best(args.rounds, with_layout)
    layout_s, um = best(args.rounds, lambda: unit_major(values, "zscore"))
    rng = np.random.default_rng(1)
    pos = np.sort(rng.choice(nf, 10000, replace=False))
    scattered_s, _ = best(args.rounds, lambda: [values[:, pos].astype(np.float64) for _ in range(20)])
    contiguous_s, _ = best(args.rounds, lambda: [um.values.take(pos, axis=0).astype(np.float64) for _ in range(20)])
    diff = max(float(np.nanmax(np.abs(a["differentiation"] - b["differentiation"]) / np.abs(a["differentiation"])))
               for a, b in zip(old, new))
    per_value = 20 * 10000 * args.images
    print(f"task rows [200, 10000, all] x 100 repeats: image-major {old_s:.3f} s, unit-major {new_s:.3f} s "
          f"(of which the layout {layout_s:.3f} s): {old_s / new_s:.2f}x; medians agree to {diff:.1e} relative")
    print(f"per value: scattered image-major gather {1e9 * scattered_s / per_value:.1f} ns, unit-major gather "
          f"{1e9 * contiguous_s / per_value:.1f} ns, making the layout {1e9 * layout_s / (nf * args.images):.1f} ns per stored value")


if __name__ == "__main__":
    main()
