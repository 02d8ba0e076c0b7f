"""One script for a GPU node (issue 16): bare VGG16 throughput by batch and precision, and the
extraction pipeline's throughput from PNG files against it. Prints figures measured in one run.

    KERAS_BACKEND=torch python benchmarks/gpu.py            # on the GPU node (no TensorFlow needed)
    python benchmarks/gpu.py --quick                        # a smoke test on any CPU (minutes)

What is measured
----------------
- *Bare*: ``keras.applications.VGG16(weights=None)`` with daskdiff's seeded random weights,
  ``predict_on_batch`` over float32 arrays already in (host) memory, at batch 64 and 256, in
  ``float32`` and ``bfloat16`` (:func:`daskdiff.model.build.with_precision`); images/s, best of 3
  passes after a warm-up batch.
- *Pipeline*: :func:`daskdiff.model.extract.extract_shard` on 224 x 224 PNG files (decoded by
  ``--decoders`` processes, :func:`daskdiff.model.extract.decoder_pool`), batch 64, float32 and
  bfloat16, for the plans ``n_units [200]`` and the default ``[200, 10000]`` (units +
  filter_mean, 100 repeats); images/s of the second of two shards (the first builds the model).
- *Ratio*: pipeline / bare at the same batch and precision (the issue's target: >= 0.8).
- *Differentiation on the device* (issue 12, ``analysis.device``): one stack of 25 repeats of
  ``N`` images x ``k`` sampled units (z-score, euclidean): host numpy
  (:func:`daskdiff.core.differentiation.distances_stack` on a gathered stack) against
  :func:`daskdiff.core.arrays.distances_on_arrays` on the backend's arrays (the values uploaded
  once, as a task does); seconds per stack, best of 3, and the largest relative difference.

The device is whatever the Keras backend uses (``torch.cuda`` on a GPU node; the CPU otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def bare_rate(model, batch: int, n: int) -> float:
    x = np.random.default_rng(0).normal(size=(batch, 224, 224, 3)).astype(np.float32) * 50
    model.predict_on_batch(x)  # warm-up: compile, allocate
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            np.asarray(model.predict_on_batch(x))  # to the host, as extraction does
        best = min(best, time.perf_counter() - t0)
    return max(1, n // batch) * batch / best


def pipeline_rate(paths: list[str], n_units: list, precision: str, batch: int, decoders: int, out: Path) -> float:
    from daskdiff.core.units import Sampling, storage_plan
    from daskdiff.model.architecture import model_layers
    from daskdiff.model.build import ModelSpec
    from daskdiff.model.extract import ShardTask, extract_shard

    spec = ModelSpec("VGG16", weights="random", seed=0, precision=precision)
    info = model_layers(spec)
    plan = storage_plan(info["shapes"], ["units", "filter_mean"], Sampling(n_units=tuple(n_units), repeats=100, seed=0),
                        full_layers=[info["last_layer"]])
    half = len(paths) // 2
    timings = []
    for shard, chunk in enumerate((paths[:half], paths[half:])):
        task = ShardTask("s", shard, tuple(chunk), 0, str(out), batch_size=batch, decoders=decoders)
        t0 = time.perf_counter()
        extract_shard(task, plan, spec)
        timings.append(time.perf_counter() - t0)
    return (len(paths) - half) / timings[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches and few images: a smoke test on a CPU")
    parser.add_argument("--images", type=int, default=1024, help="images per bare pass and per pipeline run")
    parser.add_argument("--decoders", type=int, default=max(1, min(16, len(os.sched_getaffinity(0)))))
    args = parser.parse_args()
    batches, n = ((4, 8), 16) if args.quick else ((64, 256), args.images)
    import keras

    from daskdiff.model.build import ModelSpec, build_model, with_precision
    from daskdiff.stimuli.noise import white_noise

    print(f"backend {keras.backend.backend()}; device: {_device()}; decoders {args.decoders}")
    base = build_model(ModelSpec("VGG16", weights="random", seed=0))
    bare = {}
    for precision in ("float32", "bfloat16"):
        model = with_precision(base, precision)
        for batch in batches:
            bare[precision, batch] = bare_rate(model, batch, n)
            print(f"bare VGG16 predict_on_batch, batch {batch:>3}, {precision:<8}: {bare[precision, batch]:8.1f} images/s")
    batch = batches[0]
    with tempfile.TemporaryDirectory(prefix="daskdiff-gpu-") as tmp:
        paths = white_noise(Path(tmp) / "png", count=2 * max(n // 2, batch), size=224, seed=0)
        for precision in ("float32", "bfloat16"):
            for n_units in ([200], [200, 10000]):
                rate = pipeline_rate(paths, n_units, precision, batch, args.decoders, Path(tmp) / f"out-{precision}-{len(n_units)}")
                print(f"pipeline extract_shard, n_units {str(n_units):<12} batch {batch}, {precision:<8}: {rate:8.1f} images/s; "
                      f"ratio to bare {rate / bare[precision, batch]:.2f} (target >= 0.8)")
    for n_images, k in ((200, 2000),) if args.quick else ((1000, 10000), (2000, 10000)):
        gram_rates(n_images, k)
    return 0


def gram_rates(n_images: int, k: int, repeats: int = 25) -> None:
    """Print host-numpy and on-device seconds per stack of ``repeats`` (``n_images`` x ``k``)."""
    from daskdiff.core.arrays import distances_on_arrays
    from daskdiff.core.differentiation import distances_stack
    from daskdiff.errors import InputError
    from daskdiff.model.device import arrays_for

    rng = np.random.default_rng(0)
    values = np.maximum(rng.normal(size=(n_images, 4 * k)), 0).astype(np.float32)
    picks = [np.sort(rng.choice(values.shape[1], k, replace=False)) for _ in range(repeats)]

    def host():
        return distances_stack(np.stack([values[:, p] for p in picks]).astype(np.float64), "euclidean", "zscore", True,
                               on_undefined="nan", overwrite_x=True)[0]

    def best(f):
        out, times = None, []
        for _ in range(3):
            t0 = time.perf_counter()
            out = f()
            times.append(time.perf_counter() - t0)
        return out, min(times)

    want, t_host = best(host)
    try:
        arrays = arrays_for("backend")  # the backend's device, GPU or CPU
    except InputError:  # TensorFlow: no array namespace
        arrays = None
    if arrays is None:
        print(f"differentiation, {repeats} x {n_images} x {k}: host numpy {t_host:.3f} s per stack; no array namespace on this backend")
        return
    with arrays.context():
        on = arrays.put(values)
        got, t_dev = best(lambda: distances_on_arrays(on, picks, "euclidean", "zscore", True)[0])
    diff = float(np.nanmax(np.abs(got - want) / np.nanmax(np.abs(want))))
    print(f"differentiation, {repeats} x {n_images} x {k}: host numpy {t_host:.3f} s per stack, {arrays.label} {t_dev:.3f} s "
          f"(x{t_host / t_dev:.1f}); largest difference {diff:.1e} of the largest distance")


def _device() -> str:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        if backend == "jax":
            import jax

            return str(jax.devices()[0])
        import tensorflow as tf

        return ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "CPU"
    except Exception as err:  # the figures still mean something; say what could not be told
        return f"unknown ({type(err).__name__})"


if __name__ == "__main__":
    sys.exit(main())
