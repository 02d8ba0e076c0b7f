"""What a Dask worker holds before its first task: the figures behind daskdiff.pipeline.health.WORKER_BASELINE.

Starts LocalCluster workers as daskdiff starts them (one thread, the ``daskdiff.pipeline.warm``
preload that imports Keras) and prints their resident memory (RSS, what Dask's pause and terminate
fractions compare with their memory limit) and peak (VmHWM):

- a bare worker (no preload), and one after the preload (Python, Dask, the Keras backend);
- after building a model (``cached_model``, as an extraction task does) and one forward pass of
  16 images: a tiny conv net (75 KB of weights) and, with ``--vgg16``, VGG16 with random weights
  (553 MB; built once, ~15 s and ~3.6 GB);
- after a whole small job (13 images, the tiny model, every layer): the libraries a task loads
  (xarray, netCDF4/HDF5, PIL, scipy) on top.

The Keras backend is ``KERAS_BACKEND``'s (tensorflow by default)::

    .venv/bin/python benchmarks/worker_baseline.py --vgg16
    KERAS_BACKEND=torch .venv/bin/python benchmarks/worker_baseline.py --vgg16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import psutil
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tiny model and images of the tests


def rss() -> int:
    return psutil.Process().memory_info().rss


def peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def built(name: str, weights: str) -> tuple[int, int, int]:
    """In a worker: build the model as an extraction task does, run 16 images through it."""
    import numpy as np

    from daskdiff.model.build import cached_model, input_size, ModelSpec, weight_bytes

    model = cached_model(ModelSpec(name=name, weights=weights, seed=0))
    h, w = input_size(model)
    model.predict_on_batch(np.zeros((16, h, w, 3), "float32"))
    return rss(), peak(), weight_bytes(model)


def _cluster(preload: bool) -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                        **({"preload": ["daskdiff.pipeline.warm"]} if preload else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vgg16", action="store_true", help="also build VGG16 with random weights (~3.6 GB, ~15 s)")
    args = parser.parse_args()
    from conftest import build_tiny_model, write_images
    from jobtools import tiny_spec

    from daskdiff.pipeline.job import run_job

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"backend {backend}; load average {os.getloadavg()[0]:.2f}")
    with _cluster(False) as cluster, Client(cluster) as client:
        print(f"bare worker:                     {next(iter(client.run(rss).values())) / 1e6:7.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny.keras"
        build_tiny_model().save(tiny)
        models = [("tiny", str(tiny), "file")] + ([("VGG16", "VGG16", "random")] if args.vgg16 else [])
        for label, name, weights in models:
            with _cluster(True) as cluster, Client(cluster) as client:
                start = next(iter(client.run(rss).values()))
                now, top, size = client.submit(built, name, weights, pure=False).result()
                print(f"{label:6s} ({size / 1e6:7.2f} MB of weights): preload {start / 1e6:5.0f} MB, built + forward "
                      f"{now / 1e6:5.0f} MB (peak {top / 1e6:5.0f} MB)")
        sets = {name: str(Path(write_images(Path(tmp) / name, n, seed=n)[0]).parent) for name, n in (("a", 7), ("b", 6))}
        spec = tiny_spec(str(tiny), sets, Path(tmp) / "out")
        with _cluster(True) as cluster, Client(cluster) as client:
            run_job(spec, Path(tmp), client=client, progress=False, echo=lambda *a: None)
            print(f"after a tiny-model job:          {next(iter(client.run(rss).values())) / 1e6:7.0f} MB "
                  f"(peak {next(iter(client.run(peak).values())) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
