"""How fast a worker decodes and resizes images, by decoding processes (and threads): can it keep a GPU fed?

    python benchmarks/decode.py              # 256 PNGs of each kind, 1..(cores) threads
    python benchmarks/decode.py --images 512

What is run
-----------
``daskdiff.io.images.load_images`` (the extraction's decoder: Pillow decode, RGB, resize to
224 x 224 nearest, into one uint8 batch) over batches of 64, on 1, 2, ... up to this machine's
cores decoding processes (``extraction.decoders``, :func:`daskdiff.model.extract.decoder_pool`),
and for comparison on as many threads, best of 3 rounds, files in the page cache. Two kinds of PNG: 224 x 224 white noise (lossless, incompressible: the slowest PNG to
inflate) and 512 x 512 photos (the bundled scikit-image astronaut, shifted), resized.

What is printed
---------------
Images per second for each kind and process (thread) count, and the speed-up over one. Figures
from one run; not a timed test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def write_pngs(folder: Path, n: int) -> dict[str, list[str]]:
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = skimage.data.astronaut()
    kinds = {"noise 224x224": [], "photo 512x512 -> 224": []}
    for k in range(n):
        noise = folder / f"noise-{k:04d}.png"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(noise)
        kinds["noise 224x224"].append(str(noise))
        crop = folder / f"photo-{k:04d}.png"
        Image.fromarray(np.roll(photo, (k * 7, k * 3), axis=(0, 1))).save(crop)  # 512 x 512, shifted
        kinds["photo 512x512 -> 224"].append(str(crop))
    return kinds


def rate(paths: list[str], n: int, kind: str, batch: int = 64) -> float:
    from daskdiff.io.images import load_images
    from daskdiff.model.extract import decoder_pool

    pool = ThreadPoolExecutor(n) if kind == "threads" and n > 1 else decoder_pool(n) if n > 1 else None
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for start in range(0, len(paths), batch):
            load_images(paths[start : start + batch], (224, 224), pool=pool)
        best = min(best, time.perf_counter() - t0)
    if kind == "threads" and pool is not None:
        pool.shutdown()
    return len(paths) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = sorted({1, 2, 4, 8, 16, cores} & set(range(1, cores + 1)))
    with tempfile.TemporaryDirectory(prefix="daskdiff-decode-") as tmp:
        kinds = write_pngs(Path(tmp), args.images)
        print(f"{cores} core(s); images/s decoding and resizing to 224x224 (best of 3)")
        print(f"{'kind':<22} {'by':<10}" + "".join(f" {t:>12}" for t in counts))
        for kind, paths in kinds.items():
            for by in ("processes", "threads"):
                rates = [rate(paths, t, by) for t in counts]
                print(f"{kind:<22} {by:<10}" + "".join(f" {r:>10.0f}/s" for r in rates)
                      + f"   x{rates[-1] / rates[0]:.2f} at {counts[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
