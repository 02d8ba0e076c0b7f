"""Benchmark the numeric core of daskdiff against the seed notebook, scipy and rsatoolbox.

Run from the repository root::

    .venv/bin/python benchmarks/differentiation.py           # full run (about a minute on 2 cores)
    .venv/bin/python benchmarks/differentiation.py --quick   # smoke test (< 20 s)

What is measured, and why
-------------------------
Part 1, the seed workload. The first seed notebook computes, for 43 images, each of the 22
layers of VGG16 (``include_top=True``), 100 sampling repeats of 200 units, the median
Euclidean distance between the images' mean-normalised activation vectors, with a Python
double loop over image pairs (``np.sqrt(sum((a-b)*(a-b)))``, Python's builtin ``sum``). Here:

- the *core* is what one cluster task does for a layer: gather the 100 repeats' sampled
  columns into a ``(100, 43, 200)`` stack and call :func:`daskdiff.differentiation_stack`
  once; it is timed for all 22 layers x 100 repeats. Unit indices come from
  :func:`daskdiff.sample_units` (drawn before timing, and timed separately). The synthetic
  ReLU-like activations are a ``(43, n_stored)`` float32 matrix per layer holding only the
  union of the units the 100 repeats sample: the algorithm never needs the other columns,
  so 43 x 15 million floats are never allocated.
- the *seed* is a straightforward re-implementation of the seed's algorithm, one repeat over
  all 22 layers timed and extrapolated to 100 repeats, in two parts:

  * the *seed loop*, on the same stored matrices as the core: a 200-unit mask per image drawn
    from the stored columns, normalisation by the mean, the Python double loop, the median of
    the full square matrix;
  * the *seed masks*: the seed draws each image's mask at full layer size
    (``np.random.choice(n, 200, replace=False)``, which in numpy's legacy API is a permutation
    of all ``n`` units, into an ``np.zeros(n)`` float mask converted to int, then
    ``np.nonzero``). That cost depends on the layer size only, not on the activations, so it is
    timed on its own, one image's mask at a time, with a ``numpy.random.Generator``
    (``rng.permutation(n)[:200]`` is what the legacy ``choice`` does).

  The seed ran all this on the full activation arrays (60 MB of float32 per image over the 22
  layers) and reported 33 s per repeat; that figure, from another machine, is printed for
  comparison.

The core is checked against a scipy ``pdist`` median of the same stacks. The seed loop's values
differ by design: it draws a different unit mask for every image (distances over different
units) and takes the median over the full square matrix (diagonal zeros and both triangles),
both bugs of the seed.

Part 2, one large distance matrix: 1000 images x 10,000 units (float64, ReLU-like), full
matrix, ``daskdiff.pairwise_distances`` against ``scipy.spatial.distance.pdist`` +
``squareform`` and rsatoolbox's ``calc_rdm`` (if installed; it is not a dependency of
daskdiff: ``pip install rsatoolbox``). rsatoolbox's ``'euclidean'`` is the *squared*
Euclidean distance divided by the number of channels, so it is compared with the core's
``sqeuclidean / n_units``. The correlation metric is timed too.

All times are the median of k runs of ``time.perf_counter`` (k is printed); nothing asserts a
time, since machines are noisy. Every figure and ratio printed comes from one run on one
machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy.spatial.distance import pdist, squareform

import daskdiff

T = TypeVar("T")

VGG16_LAYERS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("block1_conv1", (224, 224, 64)),
    ("block1_conv2", (224, 224, 64)),
    ("block1_pool", (112, 112, 64)),
    ("block2_conv1", (112, 112, 128)),
    ("block2_conv2", (112, 112, 128)),
    ("block2_pool", (56, 56, 128)),
    ("block3_conv1", (56, 56, 256)),
    ("block3_conv2", (56, 56, 256)),
    ("block3_conv3", (56, 56, 256)),
    ("block3_pool", (28, 28, 256)),
    ("block4_conv1", (28, 28, 512)),
    ("block4_conv2", (28, 28, 512)),
    ("block4_conv3", (28, 28, 512)),
    ("block4_pool", (14, 14, 512)),
    ("block5_conv1", (14, 14, 512)),
    ("block5_conv2", (14, 14, 512)),
    ("block5_conv3", (14, 14, 512)),
    ("block5_pool", (7, 7, 512)),
    ("flatten", (25088,)),
    ("fc1", (4096,)),
    ("fc2", (4096,)),
    ("predictions", (1000,)),
)
"""The 22 layers after the input of VGG16 with ``include_top=True``: name, per-image shape."""

QUICK_LAYERS = ("block2_pool", "block4_conv1", "block5_pool", "fc1", "predictions")

N_IMAGES = 43
N_UNITS = 200
SEED = 0
METRIC = "euclidean"
NORMALIZE = "mean"
SEED_REPORTED_S_PER_REPEAT = 33.0
"""The first seed notebook's own timing of one repeat (22 layers, full activation arrays)."""


@dataclass(frozen=True)
class Config:
    """Sizes and numbers of timed runs (k) of one benchmark run."""

    layers: tuple[tuple[str, tuple[int, ...]], ...]
    n_repeats: int
    k_seed: int
    k_masks: int
    k_core: int
    n_large: int
    n_units_large: int
    k_large: int


FULL = Config(
    layers=VGG16_LAYERS,
    n_repeats=100,
    k_seed=3,
    k_masks=1,
    k_core=5,
    n_large=1000,
    n_units_large=10_000,
    k_large=3,
)
QUICK = Config(
    layers=tuple(layer for layer in VGG16_LAYERS if layer[0] in QUICK_LAYERS),
    n_repeats=10,
    k_seed=1,
    k_masks=1,
    k_core=3,
    n_large=200,
    n_units_large=10_000,
    k_large=3,
)


@dataclass(frozen=True)
class Layer:
    """One layer's stored synthetic activations and its repeats' sampled units."""

    name: str
    n_total: int
    union: np.ndarray  # sorted flat unit indices stored, shape (n_stored,)
    repeats: np.ndarray  # sampled flat unit indices, shape (n_repeats, n_units)
    activations: np.ndarray  # float32, shape (n_images, n_stored)


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    workload: str
    implementation: str
    seconds: float
    k: int | None  # runs the median is over; None for an extrapolated figure
    note: str = ""


# ---------------------------------------------------------------------------------------------
# timing and formatting


def median_time(k: int, fn: Callable[..., T], *args, **kwargs) -> tuple[float, T]:
    """Median wall time of ``k`` calls of ``fn(*args, **kwargs)``, and the last result.

    Wall time is ``time.perf_counter``; the median is robust to a run disturbed by the machine.
    """
    times = []
    result = None
    for _ in range(k):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 100.0:
        return f"{seconds:.2f} s"
    return f"{seconds:,.0f} s"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.1f}x"


def core_vs(other_s: float, core_s: float) -> str:
    """'core Nx faster' (or 'slower') for the time of another implementation and the core's."""
    if other_s >= core_s:
        return f"core {fmt_ratio(other_s / core_s)} faster"
    return f"core {fmt_ratio(core_s / other_s)} slower"


def blas_description() -> str:
    """A one-line description of numpy's BLAS (threadpoolctl if installed, else numpy's config)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        blas = [info for info in threadpool_info() if info.get("user_api") == "blas"]
        # scipy (and others) may load their own BLAS: prefer the one numpy ships with
        blas.sort(key=lambda info: "numpy" not in info.get("filepath", ""))
        if blas:
            info = blas[0]
            return (
                f"{info['internal_api']} {info.get('version', '')} "
                f"({info.get('architecture', '?')}, {info['num_threads']} threads)"
            )
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}"
    except (AttributeError, KeyError):
        return "unknown"


def relu_like(rng: np.random.Generator, n_images: int, n_units: int, scale: float) -> np.ndarray:
    """Synthetic ReLU-like activations: a per-unit mean plus per-image noise, clipped at 0."""
    unit_mean = rng.normal(0.0, 1.0, size=n_units)
    return np.maximum(scale * (unit_mean + rng.normal(0.0, 1.0, size=(n_images, n_units))), 0.0)


# ---------------------------------------------------------------------------------------------
# part 1: the seed workload


def make_layers(config: Config) -> list[Layer]:
    """Sample every repeat's units and store synthetic activations for their union only."""
    layers = []
    depth = {name: index for index, (name, _) in enumerate(VGG16_LAYERS)}
    for name, shape in config.layers:
        n_total = int(np.prod(shape))
        repeats = np.stack(
            [
                daskdiff.sample_units(n_total, N_UNITS, seed=SEED, layer=name, repeat=r)
                for r in range(config.n_repeats)
            ]
        )
        union = np.unique(repeats)
        rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(depth[name],)))
        scale = 10.0 ** (-3.0 * depth[name] / len(VGG16_LAYERS))  # seed: 1000x across layers
        activations = relu_like(rng, N_IMAGES, union.size, scale).astype(np.float32)
        layers.append(Layer(name, n_total, union, repeats, activations))
    return layers


def time_sampling(config: Config) -> float:
    """Time drawing every layer's and repeat's unit indices with daskdiff.sample_units."""
    start = time.perf_counter()
    for name, shape in config.layers:
        for r in range(config.n_repeats):
            daskdiff.sample_units(int(np.prod(shape)), N_UNITS, seed=SEED, layer=name, repeat=r)
    return time.perf_counter() - start


def gather_stack(layer: Layer) -> np.ndarray:
    """The repeats' sampled columns as a ``(n_repeats, n_images, n_units)`` stack."""
    positions = np.searchsorted(layer.union, layer.repeats)
    return np.take(layer.activations, positions, axis=1).transpose(1, 0, 2)


def core_all_layers(layers: Sequence[Layer]) -> dict[str, np.ndarray]:
    """What the cluster tasks compute: gather + differentiation_stack, every layer."""
    return {
        layer.name: daskdiff.differentiation_stack(gather_stack(layer), METRIC, normalize=NORMALIZE)
        for layer in layers
    }


def scipy_reference(stack: np.ndarray) -> np.ndarray:
    """Independent reference: median of scipy's condensed distances, repeat by repeat."""
    out = []
    for matrix in stack.astype(np.float64):
        out.append(np.median(pdist(matrix / matrix.mean(), METRIC)))
    return np.array(out)


def seed_sample(rng: np.random.Generator, activations: np.ndarray, n_units: int) -> np.ndarray:
    """The seed's sampling: a different random mask of ``n_units`` units for every image."""
    n_images, n_stored = activations.shape
    masks = [np.sort(rng.choice(n_stored, n_units, replace=False)) for _ in range(n_images)]
    return np.stack([activations[i, mask] for i, mask in enumerate(masks)])


def seed_compute_rdm(sampled: Sequence[np.ndarray]) -> np.ndarray:
    """The seed's ``compute_rdm(activations, norm=True)``, line for line.

    Only ``layer_activations`` is renamed ``a``; the distance is the seed's
    ``np.sqrt(sum((a-b)*(a-b)))`` with Python's builtin ``sum`` over a numpy array.
    """
    n = sampled[0].shape[0]
    diff_mats = np.zeros((len(sampled), n, n))
    for i, acts in enumerate(sampled):
        a = acts / acts.mean()
        for j in range(n):
            for k in range(j + 1, n):
                diff_mats[i][j][k] = np.sqrt(sum((a[j] - a[k]) * (a[j] - a[k])))
                diff_mats[i][k][j] = diff_mats[i][j][k]
    return diff_mats


def seed_full_size_mask(rng: np.random.Generator, n_total: int, n_units: int) -> np.ndarray:
    """One image's mask as the seed builds it, at full layer size; returns its flat indices.

    The seed's ``np.random.choice(n_total, n_units, replace=False)`` (legacy API) is
    ``permutation(n_total)[:n_units]``; its mask is a float array of the layer's size, copied
    to int, then scanned by ``np.nonzero``. A lower bound of the seed's cost: it also copies
    every image's mask into one array for all 43 images.
    """
    mask = np.zeros(n_total)
    mask[rng.permutation(n_total)[:n_units]] = 1
    return np.nonzero(np.array(mask, dtype=int))[0]


def seed_masks_one_repeat(layers: Sequence[Layer], rng: np.random.Generator) -> None:
    """The seed's mask construction for one repeat: every layer, every image."""
    for layer in layers:
        for _ in range(N_IMAGES):
            seed_full_size_mask(rng, layer.n_total, N_UNITS)


def seed_one_repeat(layers: Sequence[Layer], rng: np.random.Generator) -> np.ndarray:
    """The seed's ``get_median_differentiation_from_activations``: one repeat, every layer."""
    sampled = [seed_sample(rng, layer.activations, N_UNITS) for layer in layers]
    return np.median(seed_compute_rdm(sampled), axis=(1, 2))


def bench_seed_workload(config: Config) -> list[Row]:
    n_layers, n_repeats = len(config.layers), config.n_repeats
    print(
        f"## Part 1: the seed workload ({N_IMAGES} images, {n_layers} VGG16 layers, "
        f"{n_repeats} repeats x {N_UNITS} units, {METRIC}, normalize={NORMALIZE!r})\n"
    )
    layers = make_layers(config)
    stored_mb = sum(layer.activations.nbytes for layer in layers) / 1e6
    full_mb = sum(layer.n_total for layer in layers) * N_IMAGES * 4 / 1e6
    print(
        f"synthetic float32 activations stored: {stored_mb:.1f} MB (sampled units only; "
        f"all units would be {full_mb:,.0f} MB)"
    )

    sampling_s = time_sampling(config)
    print(
        f"unit sampling, {n_layers * n_repeats} calls of daskdiff.sample_units: "
        f"{fmt_time(sampling_s)} (once, not included in the core time below)"
    )

    seed_rng = np.random.default_rng(SEED)
    loop_s, seed_values = median_time(config.k_seed, seed_one_repeat, layers, seed_rng)
    masks_s, _ = median_time(config.k_masks, seed_masks_one_repeat, layers, seed_rng)
    core_s, core_values = median_time(config.k_core, core_all_layers, layers)
    seed_s = loop_s + masks_s
    seed_total = seed_s * n_repeats
    reported_total = SEED_REPORTED_S_PER_REPEAT * n_repeats

    print(f"\nseed re-implementation, one repeat, {n_layers} layers:")
    print(
        f"  seed loop (per-image masks over stored columns, Python double loop): "
        f"{fmt_time(loop_s)}  [median of {config.k_seed}]"
    )
    print(
        f"  seed masks at full layer size ({N_IMAGES} images x {n_layers} layers, "
        f"one image at a time): {fmt_time(masks_s)}  [median of {config.k_masks}]"
    )
    print(
        f"  total: {fmt_time(seed_s)} per repeat; extrapolated to {n_repeats} repeats: "
        f"{fmt_time(seed_total)}"
    )
    print(
        f"core (gather + differentiation_stack), {n_layers} layers x {n_repeats} repeats: "
        f"{fmt_time(core_s)}  [median of {config.k_core}]"
    )
    print(
        f"ratio, seed / core, same machine: {fmt_ratio(seed_total / core_s)}  "
        f"(target >= 3,000x); seed loop alone / core: {fmt_ratio(loop_s * n_repeats / core_s)}"
    )
    print(
        f"note: the seed ran on the full activation arrays (60 MB of float32 per image over the "
        f"22 layers) and reported {SEED_REPORTED_S_PER_REPEAT:.0f} s per repeat;"
    )
    if config.layers == VGG16_LAYERS:
        print(
            f"      against that figure ({fmt_time(reported_total)} for {n_repeats} repeats, "
            f"another machine) the ratio would be {fmt_ratio(reported_total / core_s)}."
        )
    else:
        print("      (the ratio against that figure is printed by the full run only)")

    print(
        "\nsame quantity check (differentiation, mean over repeats; "
        "max |core - scipy| over repeats):"
    )
    header = ("layer", "core", "scipy pdist", "max |diff|", "seed, 1 rep")
    print("  {:<14} {:>10} {:>12} {:>11} {:>12}".format(*header))
    names = [layer.name for layer in layers]
    for name in (names[0], names[len(names) // 2], names[-1]):
        layer = layers[names.index(name)]
        reference = scipy_reference(gather_stack(layer))
        core = core_values[name]
        print(
            f"  {name:<14} {core.mean():>10.4f} {reference.mean():>12.4f} "
            f"{np.max(np.abs(core - reference)):>11.1e} {seed_values[names.index(name)]:>12.4f}"
        )
    print(
        "  The seed loop's values differ by design: it draws a different mask for every image "
        "(distances\n  over different units) and takes the median of the full square matrix "
        "(zeros and both triangles): seed bugs.\n"
    )
    workload = f"seed: {N_IMAGES} img, {n_layers} layers, {n_repeats} x {N_UNITS} units"
    return [
        Row(workload, "seed loop, 1 repeat", loop_s, config.k_seed),
        Row(workload, "seed full-size masks, 1 repeat", masks_s, config.k_masks),
        Row(workload, f"seed, x{n_repeats} (extrapolated)", seed_total, None, "1x"),
        Row(
            workload,
            f"daskdiff core, {n_repeats} repeats",
            core_s,
            config.k_core,
            core_vs(seed_total, core_s),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# part 2: one large distance matrix


def import_rsatoolbox():
    """rsatoolbox if it is installed (it is not a dependency of daskdiff), else None."""
    try:
        import rsatoolbox
    except ImportError:
        return None
    return rsatoolbox


def scipy_square(x: np.ndarray, metric: str) -> np.ndarray:
    return squareform(pdist(x, metric))


def max_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def bench_metric(x: np.ndarray, metric: str, k: int, rsatoolbox) -> list[Row]:
    """Time one metric on ``x``: the core, scipy and (if given) rsatoolbox; check they agree."""
    n, n_units = x.shape
    workload = f"{n} images x {n_units:,} units, {metric}"
    core_s, core_d = median_time(k, daskdiff.pairwise_distances, x, metric)
    scipy_s, scipy_d = median_time(k, scipy_square, x, metric)
    print(
        f"{metric}: daskdiff.pairwise_distances {fmt_time(core_s)}, "
        f"scipy pdist+squareform {fmt_time(scipy_s)} -> {core_vs(scipy_s, core_s)}  "
        f"[median of {k}]"
    )
    print(f"  max relative difference, core vs scipy: {max_relative_error(core_d, scipy_d):.1e}")
    rows = [
        Row(workload, "daskdiff.pairwise_distances", core_s, k),
        Row(workload, "scipy pdist + squareform", scipy_s, k, core_vs(scipy_s, core_s)),
    ]
    if rsatoolbox is None:
        print("  rsatoolbox: skipped: pip install rsatoolbox")
        return rows

    dataset = rsatoolbox.data.Dataset(x)
    rsa_s, rdm = median_time(k, rsatoolbox.rdm.calc_rdm, dataset, method=metric)
    rsa = rdm.dissimilarities.ravel()
    if metric == "euclidean":  # rsatoolbox: squared, divided by the number of channels
        core_sq = daskdiff.pairwise_distances(x, "sqeuclidean")
        error = max_relative_error(squareform(core_sq, checks=False) / n_units, rsa)
        check = f"core sqeuclidean/{n_units} vs rsatoolbox"
    else:
        error = max_relative_error(squareform(core_d, checks=False), rsa)
        check = "core vs rsatoolbox"
    print(
        f"  rsatoolbox calc_rdm(method={metric!r}) {fmt_time(rsa_s)} -> "
        f"{core_vs(rsa_s, core_s)}  [median of {k}; Dataset built before timing]"
    )
    print(f"  max relative difference, {check}: {error:.1e}")
    rows.append(Row(workload, "rsatoolbox calc_rdm", rsa_s, k, core_vs(rsa_s, core_s)))
    return rows


def bench_large_matrix(config: Config) -> list[Row]:
    n, n_units = config.n_large, config.n_units_large
    print(
        f"## Part 2: one full distance matrix, {n} images x {n_units:,} units "
        "(float64, ReLU-like)\n"
    )
    x = relu_like(np.random.default_rng(SEED), n, n_units, 1.0)
    rsatoolbox = import_rsatoolbox()
    rows = [
        row
        for metric in ("euclidean", "correlation")
        for row in bench_metric(x, metric, config.k_large, rsatoolbox)
    ]
    print(
        "  note: rsatoolbox's 'euclidean' is the squared Euclidean distance divided by the "
        "number of channels\n  (units); daskdiff's 'euclidean' is not squared and not divided "
        "(scipy's convention)."
    )
    print(
        "  note: scipy's pdist runs on one core; the core and rsatoolbox use numpy's BLAS "
        "threads.\n"
    )
    return rows


# ---------------------------------------------------------------------------------------------


def print_summary(rows: Sequence[Row], load_at_start: float) -> None:
    print("## Summary (paste into docs/performance.md)\n")
    print(
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), numpy {np.__version__}, "
        f"BLAS: {blas_description()}. Times: median of k runs, `time.perf_counter`; "
        f"1-minute load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} "
        "at the end (other processes distort the figures).\n"
    )
    print("| workload | implementation | time | k | ratio |")
    print("|---|---|---:|---:|---|")
    for row in rows:
        print(
            f"| {row.workload} | {row.implementation} | {fmt_time(row.seconds)} | {row.k or ''} "
            f"| {row.note} |"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{len(QUICK.layers)} layers, {QUICK.n_repeats} repeats, "
        f"N={QUICK.n_large}: a smoke test in seconds",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    load_at_start = os.getloadavg()[0]
    print(f"daskdiff {daskdiff.__version__} benchmark ({'quick' if args.quick else 'full'} run)\n")
    rows = bench_seed_workload(config) + bench_large_matrix(config)
    print_summary(rows, load_at_start)


if __name__ == "__main__":
    main()
