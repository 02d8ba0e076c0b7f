"""Numeric core: what a job will cost before it runs: tasks, bytes, memory and time.

Pure arithmetic on the sizes of a plan (images per set, layer shapes, values stored per image,
``n_units``, ``repeats``, ...): :func:`estimate_work` takes a :class:`JobSize` and returns a
:class:`WorkEstimate`. Nothing is sampled, read or allocated, so an estimate of ``repeats:
1e9`` costs microseconds; the pipeline checks it against bounds before it builds the plan, whose
own cost grows with ``repeats`` (:mod:`daskdiff.pipeline.budget`).

What is counted, and how well
-----------------------------
- **Tasks**: exact (one extraction task per shard, one differentiation task per set, substrate
  and layer).
- **Bytes on disk**: shards are counted as HDF5 lays them out (float32 stored values in chunks
  of whole images, unit coordinates, per-image labels, per-file and per-variable overheads
  fitted on :class:`daskdiff.io.shards.ShardWriter`'s files: within 3 % of them, 1 % once the stored values dominate). Partial
  results (their arrays as :class:`daskdiff.core.partial_layout.PartialLayout` states them) and
  the results file are their arrays plus a small fixed overhead per array. The values stored
  per image are exact once the storage plan is built, an expectation before
  (:func:`daskdiff.core.units.expected_stored`, within 1 % for layers of more than a few
  thousand units). Images a generator will write (PNGs in ``<output>/images``) are counted at
  3 bytes per pixel (8-bit RGB, which PNG stores in about that for noise, less for smooth
  images) where their size is known before they are drawn (:attr:`JobSize.generated`).
- **Memory of one differentiation task**: the arrays :func:`daskdiff.pipeline.tasks.run_diff_task`
  holds at its peak (see :func:`diff_task_memory`), not the worker's baseline (Python, the
  cached Keras model: ~2 GB for VGG16) nor allocator slack. Checked against ``tracemalloc``
  peaks in the tests, within a factor of 1.5.
- **Memory of one extraction batch** (a lower bound): the ``batch_size`` images decoded as
  float32 input, for the batch being run and :data:`PREFETCH_BATCHES` decoded ahead, and the
  requested layers' outputs (float32, and their gathered copies); not the network's other
  intermediate activations nor the worker's baseline.
- **Memory of the client**: the storage plan, the generating of image sets (:attr:`JobSize.generated`),
  the gathered partial results and the results arrays; not its own ~0.4 GB of Python.
- **Time**: CPU-seconds from the per-unit costs of :class:`Calibration`, measured once on this
  project's 2-core x86_64 VM (docs/performance.md), and a wall time on a number of workers that
  allows for what whole jobs measured beyond those sums (:attr:`Calibration.whole_job_factor`).
  An order of magnitude, not a promise: the model of one differentiation task is within a factor
  of 2-3 of its measured CPU time, a GPU does the forward pass ~50x faster, and other CPUs and
  BLAS builds differ by factors of several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .distances import rdm_stack_repeats
from .exact import BLOCK_UNITS, EXACT_METRICS
from .partial_layout import PartialLayout
from .sampling import ALL, is_data_mode, sample_size
from .substrates import feature_shape
from .unit_major import worth_unit_major

PREFETCH_BATCHES = 2
"""As :data:`daskdiff.model.extract.PREFETCH_BATCHES` (the core cannot import it): batches
decoded ahead of the forward pass."""


@dataclass(frozen=True)
class Calibration:
    """What the estimate's figures are calibrated on: per-unit costs measured on the project's
    2-core x86_64 VM (24 GiB, no GPU) and file overheads fitted on files daskdiff wrote.

    The defaults are those measurements. The pipeline builds one from Dask config
    ``daskdiff.estimate.*`` (each field's name with ``-`` for ``_``; ``docs/configuration.md``),
    so a machine whose forward pass, BLAS or disk differ can be described without editing code.
    Seconds are CPU-seconds of one core unless a field says wall seconds.
    """

    forward_flops_per_cpu_s: float = 160e9
    """Forward-pass floating-point operations per CPU-second: VGG16 (30.9 GFLOP per image by
    :func:`daskdiff.model.build.forward_flops`) took 0.193 CPU-s per image in a
    ``predict_on_batch`` loop, batch 16, TensorFlow 2.21 CPU (``benchmarks/extract.py``: 10.3
    images/s on 2 cores). Other models are scaled by their FLOP count."""
    image_cpu_s: float = 0.009
    """CPU-seconds per image besides the forward pass and the writes: decoding, resizing,
    preprocessing and the in-graph gathers (``extract_shard`` at n_units [200], 0.208 CPU-s per
    image, less the forward pass and 1.65 MB of writes)."""
    write_bytes_per_cpu_s: float = 280e6
    """Shard bytes written per CPU-second (NetCDF chunks, flushed and dropped from the page cache):
    ``extract_shard`` cost 0.112 CPU-s more per image to store 31.7 MB than 1.65 MB."""
    shard_cpu_s: float = 0.1
    """Fixed cost of one shard file: labels, ``fsync``, rename (``docs/scaling.md``)."""
    diff_task_cpu_s: float = 0.015
    """Fixed cost of one differentiation task: opening its shards, writing its partial result."""
    read_bytes_per_s: float = 1e9
    """Stored values a differentiation task reads per second from its shards (checksummed NetCDF)."""
    matmul_flops_per_s: float = 80e9
    """float64 matrix-product operations per second on one core (OpenBLAS, numpy 2.4; Dask's worker
    processes run BLAS with one thread): measured with a 1000 x 4000 Gram matrix."""
    elements_per_s: float = 5e8
    """float64 elements per second of one elementwise numpy pass (subtract, divide, compare) over
    arrays larger than the caches, one core."""
    median_elements_per_s: float = 1e8
    """Elements per second of ``numpy.median`` (a partition of a copy), one core."""
    sample_draw_s: float = 4e-5
    """:func:`daskdiff.sample_units`: seconds per draw (k = 200: 48 us, k = 10,000: 0.8 ms with
    :attr:`sample_unit_s`)."""
    sample_unit_s: float = 8e-8
    """:func:`daskdiff.sample_units`: seconds per unit drawn."""
    generate_cpu_s_per_pixel: float = 0.35e-6
    """CPU-seconds per pixel of a generated image, mostly its PNG compression: white noise 0.32 us,
    gratings 0.12 us, augmented crops 0.5 us (3000 x 3000 images)."""
    whole_job_factor: float = 1.6
    """Wall time of a whole job over its CPU-seconds per worker at the rates above (shared memory
    bandwidth, Dask, model builds, disk waits). With the workers' allocator tuned
    (``daskdiff.worker-malloc``), 2.0 printed 1.99x (seed job), 1.91x (``store: none``) and 1.58x
    (1,000 images) the measured wall time; 1.6 prints ~1.6x, ~1.6x and ~1.3x of those, ~1.5x and ~1.2x
    with Dask's allocator settings (docs/performance.md)."""
    job_start_s: float = 30.0
    """Wall seconds of a job's fixed start: workers start (each imports the Keras backend), build
    their model and trace its graph; the client builds it too the first time it meets an
    architecture. Measured on the quiet 2-core VM (docs/performance.md, "Issue 23 at the seed
    shape"): demo 43 s printed for 33-43 s, seed job 120-139 s for 71-110 s. A job revises its
    estimate on its first shard (:func:`revised_wall_seconds`)."""
    png_bytes_per_pixel: int = 3
    """A generated PNG's bytes per pixel: 8-bit RGB (noise does not compress; smooth images take less)."""
    png_file_bytes: int = 1_000
    """A generated PNG's header and the set's records, per file."""
    shard_file_bytes: int = 27_500
    """A shard file's HDF5 overheads, per file. This and the four ``shard_*`` fields below (per
    activation variable, per coordinate variable: a conv layer's ``units`` has four, unit, channel,
    y, x; per chunk; per image: its labels, path, set, index, top-1 and top-5 classes,
    probabilities and names, plus one byte per character of its path) were fitted by least
    squares on 60 shards of 1-128 images, 2-20 layers, within 3 %."""
    shard_variable_bytes: int = 3_400
    shard_coordinate_bytes: int = 2_600
    shard_chunk_bytes: int = 9
    shard_image_bytes: int = 815
    npz_array_bytes: int = 256
    """Per array of an ``.npz`` partial result: the ``.npy`` header and the zip entries."""
    netcdf_file_bytes: int = 11_000
    """The results file's overheads: per file (with the job spec and versions in its attributes);
    then per variable (23 with their coordinates, 19 without the mean RDM's image_i/j labels; each
    with its CF long_name and units) and per variable-length string (paths, labels, image names)
    plus its characters. Fitted on the results of the tests' tiny jobs (~41 KB of overhead)."""
    netcdf_variable_bytes: int = 1_300
    netcdf_string_bytes: int = 40


# -- passes a differentiation repeat makes (read off daskdiff.core.distances / differentiation)

PASSES_PER_SAMPLED_VALUE = 9
"""Elementwise passes over each sampled value (n_images x k) of a repeat: the gather, stack and
float64 copy, the mean, the standard deviation (2), the shift and the division, the zeroing
of undefined matrices."""

PASSES_PER_DISTANCE = 14
"""Elementwise passes over each entry of a repeat's n x n distance matrix: the Gram product's
output, the norms' sum, the scaling, the clamp, the cancellation test, the triangle and its
mirror, the square root, the finiteness check, the per-unit division, the NaN fill and the
condensed gather."""

SPECTRAL_PASSES = 12
"""Elementwise passes over each sampled value (n_frames x k) of a repeat's spectral differentiation,
besides its FFT (2.5 log2(samples per window) flops per value): the normalised copy (the image
measure's statistics), the windows' contiguous copy, the power from the complex spectra (real
and imaginary squares, their sum) and the states' reshape."""

EXTRA_PASSES = {"cosine": 6, "correlation": 10}
"""More passes over the sampled values for metrics that rescale rows first."""

ROW_LOOP_METRICS = ("cityblock", "chebyshev")
"""Metrics without a Gram form: n^2 k / 2 differences, absolute values and reductions."""

CHUNK_BYTES = 64 * 2**20
"""As :data:`daskdiff.io.shards.CHUNK_BYTES` (the core cannot import it): the largest chunk."""


@dataclass(frozen=True)
class LayerSize:
    """What the estimate needs of one layer: its unit shape (channels last), the values
    extracted per image for each substrate (``{'units': 4096, 'filter_mean': 64}``: what a
    differentiation task works from) and, where they differ, those its shard files store
    (``written``; ``extraction.store: none`` writes no units)."""

    name: str
    shape: tuple[int, ...]
    stored: Mapping[str, int]
    written: Mapping[str, int] | None = None

    @property
    def on_disk(self) -> Mapping[str, int]:
        """The values per image its shard files store."""
        return self.stored if self.written is None else self.written


@dataclass(frozen=True)
class JobSize:
    """The sizes of a job's plan, the input of :func:`estimate_work`.

    ``images``: set -> number of images; ``path_chars``: set -> mean characters of its image
    paths; ``forward_flops``: one image's forward pass (:func:`daskdiff.model.build.forward_flops`);
    ``class_count``: outputs of the class-score layer (for the labels); ``plan_built``: whether
    the stored units are already known (the plan's cost on the client is then spent); the rest
    as the job spec's keys of the same names.
    """

    images: Mapping[str, int]
    layers: Sequence[LayerSize]
    substrates: Sequence[str]
    n_units: Sequence[int | str]
    repeats: int
    repeats_per_task: int
    sampling: str = "random"
    metric: str = "euclidean"
    keep_rdm: bool = True
    shard_size: int = 128
    batch_size: int = 4
    forward_flops: float = 30.9e9
    path_chars: Mapping[str, float] = field(default_factory=dict)
    plan_built: bool = False
    task_memory: int | None = None
    """The working-memory budget of one differentiation task beyond its loaded values (bytes;
    :func:`daskdiff.pipeline.tasks.stack_repeats`), None for unbounded."""
    images_measure: bool = True
    """Whether the image measure (median distance between images) is computed (``analysis.measures``)."""
    spectral: Mapping[str, int] = field(default_factory=dict)
    """Set -> samples per window, for each set whose spectral differentiation is computed (movies)."""
    input_values: int = 0
    """Values of one image as the model takes it (height x width x 3), 0 when not known."""
    generated: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Set -> (pixels of each image, peak bytes of generating the set), for each set a generator
    will write on the client before the job's tasks (not written yet, its image size known)."""
    calibration: Calibration = field(default_factory=Calibration)
    """The rates and overheads to cost the sizes at (the pipeline's come from Dask config
    ``daskdiff.estimate.*``: :func:`daskdiff.pipeline.budget.job_size`)."""


@dataclass(frozen=True)
class WorkEstimate:
    """What a job will cost (see the module docstring for what each figure counts).

    Bytes are bytes; seconds are CPU-seconds (one core), to be divided by the workers that run
    them in parallel.
    """

    images: int
    extraction_tasks: int
    differentiation_tasks: int
    shard_bytes: int
    partial_bytes: int
    results_bytes: int
    task_memory: int
    largest_task: str
    client_memory: int
    plan_seconds: float
    extraction_seconds: float
    differentiation_seconds: float
    longest_task_seconds: float
    generated_bytes: int = 0
    """Bytes of the images generators will write (:attr:`JobSize.generated`)."""
    generation_seconds: float = 0.0
    """CPU-seconds of generating them, on the client."""
    extraction_memory: int = 0
    """Bytes one extraction task holds for its batches at least (see the module docstring)."""
    calibration: Calibration = field(default_factory=Calibration)
    """What the figures were costed at (:attr:`JobSize.calibration`); :meth:`wall_seconds` uses it too."""

    @property
    def tasks(self) -> int:
        return self.extraction_tasks + self.differentiation_tasks

    @property
    def disk_bytes(self) -> int:
        """Everything the job writes in its output folder (generated images, shards, partial results, results)."""
        return self.generated_bytes + self.shard_bytes + self.partial_bytes + self.results_bytes

    @property
    def cpu_seconds(self) -> float:
        return self.plan_seconds + self.generation_seconds + self.extraction_seconds + self.differentiation_seconds

    def wall_seconds(self, workers: int) -> float:
        """Expected wall time on ``workers`` one-thread workers: the CPU-seconds shared among them
        (but never less than the longest task) times :attr:`Calibration.whole_job_factor`, plus the
        planning, the generating of image sets (on the client, before the tasks) and
        :attr:`Calibration.job_start_s`, of the estimate's :attr:`calibration`."""
        work = (self.extraction_seconds + self.differentiation_seconds) / max(1, workers)
        cal = self.calibration
        return self.plan_seconds + self.generation_seconds + cal.job_start_s + cal.whole_job_factor * max(work, self.longest_task_seconds)

    @property
    def image_seconds(self) -> float:
        """CPU-seconds assumed per image of extraction (its share of the shards' fixed costs included)."""
        return self.extraction_seconds / max(1, self.images)


def revised_wall_seconds(est: WorkEstimate, workers: int, *, images_left: int, image_s: float) -> float:
    """Wall seconds left of a job whose extraction tasks measured ``image_s`` wall seconds per image
    (a task's time over its images, on one worker): the ``images_left`` images at that cost shared
    among ``workers``, then the differentiation as :meth:`WorkEstimate.wall_seconds` counts it.
    The differentiation is not scaled by the extraction's measured over assumed cost: a first
    shard's time holds one-off costs (the graph's tracing, a cold disk) and a GPU's forward pass
    says nothing of the arithmetic; on the demo, scaled, it came out 2x too long."""
    w = max(1, workers)
    diff = est.calibration.whole_job_factor * max(est.differentiation_seconds / w, est.longest_task_seconds)
    return images_left * image_s / w + diff


def _n_features(shape: Sequence[int], substrate: str) -> int:
    return math.prod(feature_shape(shape, substrate))


def _is_exact(n_units: int | str, n_features: int) -> bool:
    """As :func:`daskdiff.pipeline.tasks._n_units_result`: computed once, not per repeat."""
    return n_units == ALL or n_units >= n_features


def _per_n(layer: LayerSize, substrate: str, size: JobSize) -> list[tuple[int, int, int, bool]]:
    """For each ``n_units``: (units per repeat k, repeats, evaluations, exact)."""
    fshape = feature_shape(layer.shape, substrate)
    n_features = math.prod(fshape)
    out = []
    for n in size.n_units:
        exact = _is_exact(n, n_features)
        repeats = 1 if n == ALL else size.repeats
        k = n_features if exact else sample_size(fshape, n, size.sampling if substrate == "units" or size.sampling != "equal" else "random")
        out.append((k, repeats, 1 if exact else repeats, exact))
    return out


def partial_layout(size: JobSize, n: int, *, spectral: bool = False) -> PartialLayout:
    """The arrays of one differentiation task's partial result, for a set of ``n`` images (with
    its spectral differentiation when ``spectral``), as a job names its shards' digest in it."""
    return PartialLayout(len(size.n_units), size.repeats, n, keep_rdm=size.keep_rdm, spectral=spectral, source=True)


def partial_file_bytes(layout: PartialLayout, calibration: Calibration | None = None) -> int:
    """Bytes of a partial result's ``.npz`` file: its arrays' data, and ``calibration.npz_array_bytes`` per array."""
    return layout.nbytes() + (calibration or Calibration()).npz_array_bytes * len(layout.fields)


def stack_bytes(c: int, n: int, k: int, metric: str, *, images: bool = True, spectral: bool = False) -> int:
    """Peak bytes of evaluating one stack of ``c`` repeats (n images x k units each).

    ``images``: the image measure's phases are counted (distances, median); ``spectral``: the
    spectral measure's (:func:`daskdiff.pipeline.tasks.spectral_stack`: the float64 stack, its
    normalised copy, the windows' contiguous copy, their complex spectra and the power with its
    temporary, 48 c n k bytes at most: ``n`` frames, windows of 4 or more samples).

    Phases (the largest counts): the gather (the float64 stack, one repeat's gathered float32
    columns and the positions: 8 c n k + 4 n k + 8 c k bytes); the normalisation (in place in
    the stack, its only temporary a chunk of squares of at most 8 MiB; with ``spectral``, which
    reads the stack again, a normalised copy too: 16 c n k); the distances (the normalised
    stack, plus for Gram metrics the Gram buffer, the norms' sum, the cancellation mask, the
    triangle and its mirror: 33 c n^2 bytes; rows rescaled for cosine/correlation add 16-24 c n
    k; a row-loop metric holds two difference temporaries of c n k and two n^2 buffers).
    Re-centring for cancellation, which redoes some matrices, is not counted.
    """
    nk, nn = 8 * c * n * k, c * n * n
    stack = nk if not spectral else 2 * nk  # normalised in place unless the spectral measure reads the stack after
    gather = nk + 4 * n * k + 8 * c * k
    normalise = stack + min(nk, 8 * 2**20)
    if metric in ROW_LOOP_METRICS:
        distances = stack + 2 * nk + 16 * nn
    else:
        extra = {"cosine": 2 * nk, "correlation": 3 * nk}.get(metric, 0)
        distances = stack + extra + 33 * nn
    median = nk + 16 * nn + 8 * n * n
    phases = [gather, normalise] + ([distances, median] if images else []) + ([6 * nk] if spectral else [])
    return max(phases)


def diff_task_memory(n: int, layer: LayerSize, substrate: str, size: JobSize, *, spectral_window: int | None = None) -> int:
    """Peak bytes of the arrays of one differentiation task (``n`` images, one layer, one substrate).

    The maximum of two phases of :func:`daskdiff.pipeline.tasks.run_diff_task`:

    - reading: the values (float32, n x stored, allocated once) and the chunks being copied in
      (two of ``batch_size`` images: what netCDF4 reads and its copy), plus the feature index
      (int32 read, int64 copy);
    - the unit-major layout, where the task makes one (on the host, when its repeats gather
      enough units: :func:`daskdiff.core.unit_major.worth_unit_major`): written as the values
      are read (no second copy), so only its per-unit statistics (16 bytes per stored value);
    - computing: the concatenated values and the index; the partial result's arrays
      (:func:`partial_layout`: ``differentiation`` float64 and ``undefined`` bool, n_units x
      repeats; ``rdm_sum`` n_units x n x n float64 when the mean RDM is kept; ...); and for
      the largest ``n_units`` the working set of one stack of ``repeats_per_task`` repeats
      (:func:`stack_bytes`), the per-repeat medians and flags (two copies at their
      concatenation), the running RDM sum, and for an exact ``n_units`` the one evaluation kept plus its copy per
      repeat (in two float64 blocks of units where :func:`daskdiff.core.exact.exact_distances` serves it).

    Parameters
    ----------
    n : int
        Images of the set.
    layer : LayerSize
    substrate : str
    size : JobSize
        For ``n_units``, ``repeats``, ``repeats_per_task``, ``metric``, ``keep_rdm``,
        ``images_measure``.
    spectral_window : int, optional
        Samples per window when the set's spectral differentiation is computed (a movie). Its
        phase cannot be split over blocks of images (the windows need every frame), so one
        repeat's spectral phase is counted even where ``size.task_memory`` caps the rest.

    Returns
    -------
    int
        Bytes; not counted: the worker's own baseline, allocator slack, BLAS buffers and the
        re-centring that redoes a matrix whose distances cancel.
    """
    stored = layer.stored.get(substrate, 0)
    values = 4 * n * stored
    read = values + 8 * min(n, size.batch_size) * stored + 12 * stored
    spectral = spectral_window is not None
    results = partial_layout(size, n, spectral=spectral).nbytes()
    work, floor = 0, 0
    per_n = _per_n(layer, substrate, size)
    for k, repeats, _, exact in per_n:
        c = 1 if exact else min(rdm_stack_repeats(n, size.repeats_per_task), repeats)
        blocked = exact and not spectral and size.metric in EXACT_METRICS  # in blocks of units, from the float32 values
        one = (2 * 8 * n * min(k, BLOCK_UNITS) + 24 * n * n if blocked else
               stack_bytes(c, n, k, size.metric, images=size.images_measure, spectral=spectral)) + 18 * repeats
        if size.keep_rdm:
            one += 8 * n * n
        if exact:
            one += 8 * n * n + 16 * min(size.repeats_per_task, repeats) * n * n
        work = max(work, one)
        if spectral:
            floor = max(floor, stack_bytes(1, n, k, size.metric, images=False, spectral=True))
    if size.task_memory is not None:  # tasks fit their stacks (or blocks of images) into the budget
        work = max(min(work, size.task_memory), floor)
    statistics = 16 * stored if worth_unit_major(stored, sum(k * repeats for k, repeats, _, exact in per_n if not exact)) else 0
    return max(read, values + 8 * stored + statistics + results + work)


def _repeat_seconds(n: int, k: int, metric: str, cal: Calibration) -> float:
    """CPU-seconds of one repeat: its draw, its passes over n x k values and n x n distances,
    its Gram product (or row loop) and its median."""
    seconds = cal.sample_draw_s + k * cal.sample_unit_s
    seconds += (PASSES_PER_SAMPLED_VALUE + EXTRA_PASSES.get(metric, 0)) * n * k / cal.elements_per_s
    seconds += PASSES_PER_DISTANCE * n * n / cal.elements_per_s
    if metric in ROW_LOOP_METRICS:
        seconds += 3 * n * n * k / 2 / cal.elements_per_s
    else:
        seconds += 2 * n * n * k / cal.matmul_flops_per_s
    return seconds + n * (n - 1) / 2 / cal.median_elements_per_s


def _spectral_seconds(n: int, k: int, samples: int, metric: str, cal: Calibration) -> float:
    """CPU-seconds of one repeat's spectral differentiation: normalising and copying its n x k
    matrix, the real FFT of its windows, their power, and the distances between the states."""
    windows, freqs = max(1, n // samples), samples // 2 + 1
    seconds = (SPECTRAL_PASSES + 2.5 * math.log2(max(2, samples))) * n * k / cal.elements_per_s
    dims = k * freqs
    if metric in ROW_LOOP_METRICS:
        return seconds + 3 * windows * windows * dims / 2 / cal.elements_per_s
    return seconds + 2 * windows * windows * dims / cal.matmul_flops_per_s


def diff_task_seconds(n: int, layer: LayerSize, substrate: str, size: JobSize, *, spectral_window: int | None = None) -> float:
    """CPU-seconds of one differentiation task: its read, then every evaluation of every ``n_units``
    (an exact ``n_units`` once) of the image measure (``size.images_measure``) and of the
    spectral one (a movie's, ``spectral_window`` samples per window)."""
    cal = size.calibration
    seconds = cal.diff_task_cpu_s + 4 * n * layer.stored.get(substrate, 0) / cal.read_bytes_per_s
    for k, _, evaluations, _ in _per_n(layer, substrate, size):
        if size.images_measure:
            seconds += evaluations * _repeat_seconds(n, k, size.metric, cal)
        if spectral_window is not None:
            seconds += evaluations * _spectral_seconds(n, k, spectral_window, size.metric, cal)
    return seconds


def shard_bytes(m: int, layers: Sequence[LayerSize], *, batch_size: int, path_chars: float, calibration: Calibration) -> int:
    """Bytes of one shard file of ``m`` images, with ``calibration``'s ``shard_*`` overheads (the
    module docstring says how they are fitted)."""
    cal = calibration
    total = cal.shard_file_bytes + m * (cal.shard_image_bytes + path_chars)
    for layer in layers:
        conv = len(layer.shape) == 3
        for substrate, values in layer.on_disk.items():
            rows = max(1, min(batch_size, CHUNK_BYTES // max(1, 4 * values)))
            chunks = -(-m // rows)
            total += chunks * (rows * values * 4 + cal.shard_chunk_bytes) + cal.shard_variable_bytes
            if substrate == "units" and conv:
                total += values * (4 + 3 * 2) + 4 * cal.shard_coordinate_bytes  # int32 unit + int16 channel, y, x
            else:
                total += values * 4 + cal.shard_coordinate_bytes
    return int(total)


def _shard_sizes(n_images: int, shard_size: int) -> list[tuple[int, int]]:
    """``(images, number of shards of that many images)``: the full shards, then the rest (if
    any); a count of shards, never a list of them, so that any number of images costs the same."""
    full, rest = divmod(n_images, shard_size)
    return [(shard_size, full)] * bool(full) + [(rest, 1)] * bool(rest)


def extraction_batch_bytes(size: JobSize) -> int:
    """Bytes an extraction task holds for its batches, at least: ``batch_size`` images (no more than
    the largest set has) decoded as float32 input for the batch being run and the
    :data:`PREFETCH_BATCHES` decoded ahead, and the requested layers' whole outputs, float32, with
    their gathered copies. The network's other intermediate activations are not counted."""
    batch = min(size.batch_size, max(size.images.values(), default=0))
    outputs = sum(math.prod(layer.shape) for layer in size.layers)
    return int(batch * (4 * size.input_values * (1 + PREFETCH_BATCHES) + 8 * outputs))


def _plan_cost(size: JobSize) -> tuple[float, int]:
    """(CPU-seconds, peak bytes) of building the storage plan on the client: every repeat's draw of
    every sampled layer, concatenated and made unique (a sort: ~5 copies of the draws' int64s)."""
    if size.plan_built or "units" not in size.substrates or ALL in size.n_units or is_data_mode(size.sampling):
        return 0.0, 0  # nothing to draw (a data-dependent mode's layers store every unit)
    seconds, peak, cal = 0.0, 0, size.calibration
    for layer in size.layers:
        draws = [(sample_size(layer.shape, n, size.sampling), size.repeats) for n in size.n_units]
        values = sum(k * r for k, r in draws)
        seconds += sum(r * (cal.sample_draw_s + k * cal.sample_unit_s) for k, r in draws) + 4 * values / cal.elements_per_s
        peak = max(peak, 5 * 8 * values)
    return seconds, peak


def estimate_work(size: JobSize) -> WorkEstimate:
    """Estimate a job's tasks, bytes, memory and CPU time from the sizes of its plan.

    Parameters
    ----------
    size : JobSize

    Returns
    -------
    WorkEstimate
        See the module docstring for what each figure counts and how accurate it is. Costs
        linear in ``repeats`` are multiplied out, never looped over, so any ``repeats`` costs
        the same to estimate.
    """
    cal = size.calibration
    layers = list(size.layers)
    n_sets, n_sub, n_n, n_layers = len(size.images), len(size.substrates), len(size.n_units), len(layers)
    total_images = sum(size.images.values())
    per_image_values = sum(sum(layer.on_disk.values()) for layer in layers)
    shards = 0
    shard_total = 0
    for name, n in size.images.items():
        for m, times in _shard_sizes(n, size.shard_size):
            shards += times
            shard_total += times * shard_bytes(m, layers, batch_size=size.batch_size, path_chars=size.path_chars.get(name, 60.0), calibration=cal)
    diff_tasks = n_sets * n_sub * n_layers
    width = max(size.images.values(), default=0)

    partial_total = sum(n_sub * n_layers * partial_file_bytes(partial_layout(size, n, spectral=name in size.spectral), cal)
                        for name, n in size.images.items())
    grid = n_sets * n_sub * n_n * n_layers
    results_arrays = 8 * grid * size.repeats + 8 * grid + 8 * n_sub * n_n * n_layers + 8 * n_sets
    if size.keep_rdm:
        results_arrays += 8 * grid * width * width
    labels = n_sets * width * (8 + 8 + 40 + 40) + total_images * (7 * cal.netcdf_string_bytes + 40)
    chars = sum(size.images[s] * size.path_chars.get(s, 60.0) for s in size.images)
    names = total_images * (3 if size.keep_rdm else 1) * cal.netcdf_string_bytes  # image_name (and _i, _j): 2-D labels
    results_total = cal.netcdf_file_bytes + (23 if size.keep_rdm else 19) * cal.netcdf_variable_bytes + results_arrays + labels + names + int(chars)

    task_memory, largest, longest, diff_seconds = 0, "", 0.0, 0.0
    for name, n in size.images.items():
        for substrate in size.substrates:
            for layer in layers:
                window = size.spectral.get(name)
                mem = diff_task_memory(n, layer, substrate, size, spectral_window=window)
                if mem > task_memory:
                    task_memory, largest = mem, f"{name}--{substrate}--{layer.name}"
                seconds = diff_task_seconds(n, layer, substrate, size, spectral_window=window)
                diff_seconds += seconds
                longest = max(longest, seconds)

    plan_seconds, plan_memory = _plan_cost(size)
    stored_units = 8 * sum(layer.stored.get("units", 0) for layer in layers)
    gathered = partial_total  # the partial results, as the client gathers them
    assembled = 8 * grid * size.repeats + (2 * 8 * grid * width * width if size.keep_rdm else 0)
    generating = max((peak for _, peak in size.generated.values()), default=0)
    client = 2 * stored_units + max(plan_memory, generating, gathered + assembled + labels)
    generated_pixels = sum(size.images.get(name, 0) * pixels for name, (pixels, _) in size.generated.items())
    generated_files = sum(size.images.get(name, 0) for name in size.generated)

    shard_bytes_total = shard_total
    extraction = (
        total_images * (size.forward_flops / cal.forward_flops_per_cpu_s + cal.image_cpu_s + 4 * per_image_values / cal.write_bytes_per_cpu_s)
        + shards * cal.shard_cpu_s
    )
    return WorkEstimate(
        images=total_images,
        extraction_tasks=shards,
        differentiation_tasks=diff_tasks,
        shard_bytes=int(shard_bytes_total),
        partial_bytes=int(partial_total),
        results_bytes=int(results_total),
        task_memory=int(task_memory),
        largest_task=largest,
        client_memory=int(client),
        plan_seconds=plan_seconds,
        extraction_seconds=extraction,
        differentiation_seconds=diff_seconds,
        longest_task_seconds=longest,
        generated_bytes=int(cal.png_bytes_per_pixel * generated_pixels + cal.png_file_bytes * generated_files),
        extraction_memory=extraction_batch_bytes(size),
        generation_seconds=cal.generate_cpu_s_per_pixel * generated_pixels,
        calibration=cal,
    )
