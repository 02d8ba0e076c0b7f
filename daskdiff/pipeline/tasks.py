"""Pipeline layer: differentiation tasks, one (image set, substrate, n_units, layer, chunk of repeats).

A task reads only one stored variable of one set, re-draws each repeat's units with
:func:`daskdiff.sample_units` (the same units for every image and every set), evaluates the
repeats as one stack (:func:`daskdiff.distances_stack`) and writes a small ``.npz`` partial
result atomically, so a re-run (a dead worker, a resumed job) rewrites the same file.

Normalisation statistics are taken per task matrix: over all entries of one set's sampled
activations of one layer in one repeat (what both seed notebooks do). A set's result therefore
does not depend on which other sets are in the job. A statistic below float32 resolution of the
layer (``FLOAT32_FLOOR`` x the largest |value| stored for the layer in that set) counts as zero:
that repeat is undefined (NaN, counted), not rounding noise blown up to distances of order 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.layout import partial_path
from ..io.partials import PartialResult, write_partial

from ..core.differentiation import distances_stack, rdm_median
from ..core.units import NUnits, Sampling, units_for
from ..core.sampling import ALL
from ..core.substrates import feature_shape
from ..io.shards import read_features

FLOAT32_FLOOR = 1e-6
"""Normalisers at most this fraction of the layer's largest |value| are treated as zero."""


@dataclass(frozen=True)
class DiffTask:
    image_set: str
    substrate: str
    n_units: NUnits
    layer: str
    shape: tuple[int, ...]
    start: int
    stop: int
    files: tuple[str, ...]
    output: str
    sampling: Sampling
    metric: str
    normalize: str
    per_unit: bool
    median_over: str
    keep_rdm: bool

    @property
    def key(self) -> str:
        return f"{self.image_set}--{self.substrate}--{self.n_units}--{self.layer}--r{self.start:05d}-{self.stop:05d}"

    @property
    def path(self) -> Path:
        return partial_path(self.output, self.key)

    @property
    def partial(self) -> PartialResult:
        """Where this task's result is and which part of the results it fills."""
        return PartialResult(self.image_set, self.substrate, str(self.n_units), self.layer, self.start, self.stop, self.path)


def sampled_stack(values: np.ndarray, index: np.ndarray, task: DiffTask) -> tuple[np.ndarray, int]:
    """Gather each repeat's units from the stored values: ``(n_repeats, n_images, k)`` float64.

    ``index`` holds the stored flat feature indices (sorted); every sampled unit must be among
    them, or the shards were written for another plan.
    """
    stacks = []
    for repeat in range(task.start, task.stop):
        units = units_for(task.shape, task.substrate, task.n_units, task.sampling, task.layer, repeat)
        pos = np.searchsorted(index, units)
        if np.any(pos >= len(index)) or np.any(index[np.minimum(pos, len(index) - 1)] != units):
            raise ValueError(
                f"{task.key}: the shards of set {task.image_set!r} do not store every unit this "
                "repeat samples; they were written for another plan: re-run with --overwrite"
            )
        stacks.append(values[:, pos])
    return np.stack(stacks).astype(np.float64), stacks[0].shape[1]


def run_diff_task(task: DiffTask) -> str:
    """Compute one task and write its partial result; returns the file's path.

    The ``.npz`` holds ``differentiation`` (n_repeats,), ``undefined`` (n_repeats,) bool,
    ``units_used`` (int) and, when ``keep_rdm``, ``rdm_sum`` (n_images, n_images): the sum over
    the task's defined repeats, for the mean RDM.
    """
    values, index = read_features(task.files, task.substrate, task.layer)
    n_features = int(np.prod(feature_shape(task.shape, task.substrate)))
    exact = task.n_units == ALL or (isinstance(task.n_units, int) and task.n_units >= n_features)
    # n_units >= the layer's size gives every repeat the same (all) units: compute one, copy it
    one = DiffTask(**{**task.__dict__, "stop": task.start + 1}) if exact else task
    stack, k = sampled_stack(values, index, one)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    d, undefined = distances_stack(
        stack, task.metric, task.normalize, task.per_unit,
        name=f"layer {task.layer!r} ({task.substrate}, set {task.image_set!r})", on_undefined="nan",
        min_scale=FLOAT32_FLOOR * peak,
    )
    medians = rdm_median(d, task.median_over)
    medians[undefined] = np.nan
    n = task.stop - task.start
    if exact and n > 1:
        d, medians, undefined = (np.repeat(a, n, axis=0) for a in (d, medians, undefined))
    arrays = {"differentiation": medians, "undefined": undefined, "units_used": np.int64(k)}
    if task.keep_rdm:
        arrays["rdm_sum"] = d[~undefined].sum(axis=0)

    write_partial(task.path, arrays)
    return str(task.path)


