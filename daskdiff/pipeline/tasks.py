"""Pipeline layer: differentiation tasks, one (image set, substrate, layer) each.

A task reads its one stored variable once, from every shard of its set (or takes it from
the workers' memory, see :func:`run_diff_task`), and derives every ``n_units`` and every repeat
from that one load: each repeat's units are re-drawn with :func:`daskdiff.sample_units` (the same
units for every image and every set) and evaluated in stacks of ``repeats_per_task`` repeats
(:func:`daskdiff.distances_stack`), which bounds the float64 working memory. ``n_units`` that
cover the whole layer (``'all'``, or at least its size) are exact: computed once, not per repeat.
The task writes one small ``.npz`` partial result atomically (a re-run rewrites the same file)
and returns the same arrays, so the client never reads partial files back.

Normalisation statistics are taken per repeat matrix: over all entries of one set's sampled
activations of one layer in one repeat (what both seed notebooks do). A set's result therefore
does not depend on which other sets are in the job. A statistic below float32 resolution of the
layer (``FLOAT32_FLOOR`` x the largest |value| stored for the layer in that set) counts as zero:
that repeat is undefined (NaN, counted), not rounding noise blown up to distances of order 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.layout import partial_key, partial_path
from ..io.partials import Partial, reuse_partial, sources_digest, write_partial

from ..core.arrays import GRAM_METRICS, distances_on_arrays
from ..core.blocked import differentiation_blocked
from ..core.differentiation import distances_stack, normalize_stack, rdm_median
from ..core.spectral import spectral_differentiation_stack
from ..core.distances import rdm_stack_repeats
from ..core.estimate import stack_bytes
from ..core.exact import EXACT_METRICS, exact_distances
from ..core.partial_layout import SOURCE, PartialLayout
from ..core.unit_major import (UNIT_MAJOR_METRICS, UnitMajor, every_row, from_unit_rows, layer_statistic, unit_major,
                               unit_major_distances, worth_unit_major)
from ..core.units import NUnits, Sampling, units_for
from ..core.sampling import ALL, UnitPool
from ..core.substrates import feature_shape
from ..io.shards import read_features
from ..model.device import arrays_for
from . import config

FLOAT32_FLOOR = 1e-6
"""Normalisers at most this fraction of the layer's largest |value| are treated as zero."""


@dataclass(frozen=True)
class SpectralOptions:
    """What a task needs for spectral differentiation of its set (a movie at ``fs`` frames/s):
    ``analysis.spectral`` with the set's frame rate (see :func:`spectral_stack`)."""

    fs: float
    state_length: float
    metric: str = "euclidean"
    window: Any = None
    """None or a :func:`scipy.signal.get_window` spec (a tuple, a name or a number)."""
    overlap: float = 0.0
    log_frequency: bool = False


def spectral_stack(stack: np.ndarray, task: "DiffTask", name: str, min_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Spectral differentiation (not divided by ``sqrt(n_units)``) of each repeat's sampled
    ``(frames x units)`` matrix of ``stack`` ``(repeats, frames, units)``, and the undefined flags.

    Each matrix is first normalised as the image measure normalises it (``task.normalize``, the
    statistics over all its entries, the same ``min_scale`` floor; an undefined one gives NaN),
    then :func:`daskdiff.core.spectral.spectral_differentiation_stack` takes its spectra with
    time along the frames.
    """
    o = task.spectral
    normed, bad = normalize_stack(stack, task.normalize, name=name, on_undefined="nan", min_scale=min_scale)
    normed[bad] = 0.0
    sd = spectral_differentiation_stack(normed, fs=o.fs, state_length=o.state_length, metric=o.metric, window=o.window,
                                        overlap=o.overlap, log_frequency=o.log_frequency)
    sd = np.array(sd, dtype=np.float64, ndmin=1)
    sd[bad] = np.nan
    return sd, bad


@dataclass(frozen=True)
class DiffTask:
    """One differentiation task: every ``n_units`` and repeat of one (set, substrate, layer)."""

    image_set: str
    substrate: str
    layer: str
    shape: tuple[int, ...]
    files: tuple[str, ...]
    output: str
    sampling: Sampling
    metric: str
    normalize: str
    per_unit: bool
    median_over: str
    keep_rdm: bool
    repeats_per_stack: int = 25
    memory_budget: int | None = None
    """Bytes the task may hold at its peak (its loaded values included); None: unbounded. Stacks
    of repeats are shortened to fit, and a repeat that does not fit alone is evaluated over
    blocks of images (:func:`stack_repeats`)."""
    images: bool = True
    """Compute the image measure (``analysis.measures`` holds ``images``); else its arrays stay NaN."""
    spectral: SpectralOptions | None = None
    """Also compute spectral differentiation (the set is a movie), with these options."""
    stored: int | None = None
    """Values per image the shard files store of this task's variable, where the plan knows them
    (so that they can be read straight into the unit-major layout, :func:`task_values`); 0 when
    they store none of it (``extraction.store: none`` writes no units)."""
    device: str = "auto"
    """``analysis.device``: where the gathers and Gram products run (:func:`daskdiff.model.device.arrays_for`)."""
    pool: UnitPool | None = field(default=None, compare=False, repr=False)
    """A data-dependent sampling mode's pool of this (substrate, layer), set by :func:`run_diff_task`."""

    @property
    def written(self) -> bool:
        """Whether the shard files store this task's variable."""
        return self.stored != 0

    @property
    def key(self) -> str:
        return partial_key(self.image_set, self.substrate, self.layer)

    @property
    def path(self) -> Path:
        return partial_path(self.output, self.key)


def positions(index: np.ndarray, task: DiffTask, n_units: NUnits, repeat: int) -> np.ndarray:
    """Where one repeat's sampled units are among the stored features ``index`` (sorted).

    Every sampled unit must be stored, or the shards were written for another plan. When every
    feature is stored (``index`` is ``0 .. n-1``) a unit's position is the unit itself.
    """
    units = units_for(task.shape, task.substrate, n_units, task.sampling, task.layer, repeat, task.pool)
    if len(index) > 0 and index[0] == 0 and index[-1] == len(index) - 1 and (not len(units) or units[-1] < len(index)):
        return units
    pos = np.searchsorted(index, units)
    if np.any(pos >= len(index)) or np.any(index[np.minimum(pos, len(index) - 1)] != units):
        raise ValueError(
            f"{task.key}: the shards of set {task.image_set!r} do not store every unit this "
            "repeat samples; they were written for another plan: re-run with --overwrite"
        )
    return pos


def stack_repeats(n_images: int, k: int, metric: str, wanted: int, budget: int | None, *, images: bool = True,
                  spectral: bool = False) -> int:
    """Repeats per stack within ``budget`` bytes of working memory: ``wanted`` when it fits (or
    there is no budget), fewer when not, 0 when one repeat alone does not fit (then each repeat
    is evaluated over blocks of images, :func:`daskdiff.core.blocked.differentiation_blocked`;
    the spectral measure, which needs every frame of a window, then takes one repeat at a time).

    Memory per stack is :func:`daskdiff.core.estimate.stack_bytes` of the measures computed
    (``images``, ``spectral``). Fewer repeats per stack give the same medians bit for bit (each
    repeat's distances do not depend on its stack); only the mean RDM's sum is added in other
    groupings (~1e-16 relative).
    """
    def need(c: int) -> int:
        return stack_bytes(c, n_images, k, metric, images=images, spectral=spectral)

    if budget is None or need(wanted) <= budget:
        return wanted
    if need(1) > budget:
        return 0
    c = max(1, min(wanted, budget // need(1)))
    while c > 1 and need(c) > budget:
        c -= 1
    return c


_SCRATCH = threading.local()


def scratch(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float64 array of ``shape`` on this thread's reused buffer.

    A task builds stack after stack of the same size: memory allocated afresh for each would be
    paged in again each time (on virtual machines that hand freed memory back to their host, several times the cost
    of filling it). The buffer grows to the largest stack a thread has built, up to Dask config
    ``daskdiff.task.scratch-max`` (2 GiB, read on the worker), and is kept; a larger stack is
    allocated afresh. The array is valid until this thread's next call.
    """
    n = int(np.prod(shape, dtype=np.int64))
    if 8 * n > config.nbytes("daskdiff.task.scratch-max"):
        return np.empty(shape)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < n:
        _SCRATCH.buf = None  # the old buffer goes before the new one is allocated
        buf = _SCRATCH.buf = np.empty(n)
    return buf[:n].reshape(shape)


Values = np.ndarray | UnitMajor
"""A task's stored values: image-major ``(n_images, n_stored)`` float32, or unit-major
(:class:`~daskdiff.core.unit_major.UnitMajor`, made once per task on the host)."""


def _n_images(values: Values) -> int:
    return values.n_images if isinstance(values, UnitMajor) else len(values)


def sampled_stack(values: Values, index: np.ndarray, task: DiffTask, n_units: NUnits, repeats: range) -> tuple[np.ndarray, int]:
    """Gather each repeat's units from the stored values: ``(len(repeats), n_images, k)`` float64
    (positions among the stored features ``index``: :func:`positions`), on this thread's
    :func:`scratch` buffer (valid until the next stack)."""
    picks = [positions(index, task, n_units, repeat) for repeat in repeats]
    k = len(picks[0])
    stack = scratch((len(picks), _n_images(values), k))  # C order, as BLAS gets it: results do not depend on the path
    for out, pos in zip(stack, picks):
        if isinstance(values, UnitMajor):
            out[...] = values.rows(pos).T
        elif every_row(pos, values.shape[1]):
            out[...] = values  # every stored feature (an exact n_units): no gathered float32 copy
        else:
            out[...] = values[:, pos]
    return stack, k


def _every_row(index: np.ndarray, task: DiffTask, n_units: NUnits, values: Values) -> bool:
    """Whether an exact ``n_units``' positions are every stored feature, in order."""
    return every_row(positions(index, task, n_units, 0), len(values.values) if isinstance(values, UnitMajor) else values.shape[1])


def _blocked_median(values: Values, index: np.ndarray, task: DiffTask, n_units: NUnits, repeat: int, name: str,
                    min_scale: float, budget: int) -> float:
    """One repeat's median over blocks of images, in ``budget`` bytes of working memory (NaN where
    its normaliser is undefined): the value of the stacked path to ~1e-15 relative."""
    pos = positions(index, task, n_units, repeat)
    rows = (lambda a, b: values.values[pos, a:b].T) if isinstance(values, UnitMajor) else (lambda a, b: values[a:b, pos])
    return differentiation_blocked(rows, _n_images(values), task.metric, task.normalize, task.per_unit,
                                   task.median_over, name=name, on_undefined="nan", min_scale=min_scale, budget_bytes=budget)


def _n_units_result(values: Values, index: np.ndarray, task: DiffTask, n_units: NUnits, min_scale: float,
                    budget: int | None = None, on_device: Any = None) -> dict[str, np.ndarray]:
    """One ``n_units``' row of the partial result (:meth:`PartialLayout.set_row`): medians,
    undefined flags, units used, (if kept) the RDM sum and its count of defined repeats, and (if
    computed) the spectral differentiation.

    Repeats are evaluated ``repeats_per_stack`` at a time, or fewer (down to one at a time over
    blocks of images) to stay within ``budget`` bytes (:func:`stack_repeats`); an exact
    ``n_units`` is evaluated once and copied to every repeat. The RDM sum adds each stack's sum in repeat order, so it is
    the same whatever the number of images or shards. ``on_device``: ``values`` as the worker's
    backend's array, where the stacks' gathers and Gram products then run
    (:func:`daskdiff.core.arrays.distances_on_arrays`); the blocked and spectral paths stay on the host.
    """
    n_features = int(np.prod(feature_shape(task.shape, task.substrate)))
    exact = n_units == ALL or (isinstance(n_units, int) and n_units >= (n_features if task.pool is None else len(task.pool.units)))
    total = task.sampling.repeats_for(n_units)
    name = f"layer {task.layer!r} ({task.substrate}, set {task.image_set!r})"
    medians, undefined, rdm_sum = [], [], None
    k = len(positions(index, task, n_units, 0))
    wanted = rdm_stack_repeats(_n_images(values), task.repeats_per_stack)  # stacks of large sets' RDMs: fresh memory
    per_stack = stack_repeats(_n_images(values), k, task.metric, wanted, budget, images=task.images,
                              spectral=task.spectral is not None)
    if per_stack == 0 and task.keep_rdm:
        per_stack = 1  # the mean RDM needs the distances: a set small enough to keep it fits anyway

    def evaluate(repeats: range) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
        d, m, bad, sd, stack = None, np.full(len(repeats), np.nan), None, None, None
        if task.images and per_stack == 0:
            m = np.array([_blocked_median(values, index, task, n_units, r, name, min_scale, budget) for r in repeats])
            bad = np.isnan(m)
        elif task.images:
            if on_device is not None:
                picks = [positions(index, task, n_units, r) for r in repeats]
                d, bad = distances_on_arrays(on_device, picks, task.metric, task.normalize, task.per_unit, name=name, min_scale=min_scale)
            elif exact and task.spectral is None and task.metric in EXACT_METRICS and _every_row(index, task, n_units, values):
                # one matrix of every stored value: its distances in blocks of units, with no float64 copy of it
                um = isinstance(values, UnitMajor)  # its per-unit moments give the normaliser: two passes fewer
                statistic = layer_statistic(values, task.normalize) if um else None
                one, flag = exact_distances(values.values if um else values, task.metric, task.normalize, task.per_unit,
                                            units_first=um, name=name, on_undefined="nan", min_scale=min_scale, statistic=statistic)
                d, bad = one[None], np.array([flag])
            elif isinstance(values, UnitMajor) and task.metric in UNIT_MAJOR_METRICS:
                picks = [positions(index, task, n_units, r) for r in repeats]
                d, bad = unit_major_distances(values, picks, task.metric, task.normalize, task.per_unit, name=name,
                                              min_scale=min_scale, out=scratch((len(picks), k, values.n_images)))
            else:
                stack, _ = sampled_stack(values, index, task, n_units, repeats)
                d, bad = distances_stack(stack, task.metric, task.normalize, task.per_unit, name=name, on_undefined="nan",
                                         min_scale=min_scale, overwrite_x=task.spectral is None)  # the spectral measure reads the stack after
            m = rdm_median(d, task.median_over)
            m[bad] = np.nan
        if task.spectral is not None:  # the same sampled matrices, normalised the same way
            parts = [spectral_stack(stack, task, name, min_scale)] if stack is not None else [
                spectral_stack(sampled_stack(values, index, task, n_units, range(r, min(r + max(1, per_stack), repeats.stop)))[0],
                               task, name, min_scale)
                for r in range(repeats.start, repeats.stop, max(1, per_stack))]
            sd = np.concatenate([p[0] for p in parts])
            bad = np.concatenate([p[1] for p in parts]) if bad is None else bad  # one normaliser: the same flags
        return d, m, bad, sd

    once = evaluate(range(0, 1)) if exact else None
    step = per_stack or wanted
    spectral = []
    for start in range(0, total, step):
        chunk = range(start, min(start + step, total))
        d, m, bad, sd = (None if a is None else np.repeat(a, len(chunk), axis=0) for a in once) if exact else evaluate(chunk)
        medians.append(m)
        undefined.append(bad)
        spectral.append(sd)
        if task.keep_rdm:
            part = d[~bad].sum(axis=0)
            rdm_sum = part if rdm_sum is None else rdm_sum + part
    out = {"differentiation": np.concatenate(medians), "undefined": np.concatenate(undefined), "units_used": np.int64(k)}
    if task.keep_rdm:
        out["rdm_sum"] = rdm_sum
        out["rdm_count"] = int((~out["undefined"]).sum())
    if task.spectral is not None:
        out["spectral_differentiation"] = np.concatenate(spectral)
    return out


def partial_layout(task: DiffTask, shards: tuple = ()) -> PartialLayout:
    """The layout of the task's partial result; its number of images is that of ``shards``
    (None, not known, without them)."""
    n_images = sum(m["n_images"] for m in shards) if shards else None
    return PartialLayout(len(task.sampling.n_units), task.sampling.repeats, n_images, keep_rdm=task.keep_rdm,
                         spectral=task.spectral is not None, source=bool(shards))


def task_values(task: DiffTask, kept: list | None, shards: tuple = (),
                units_first: Callable[[int], bool] = lambda n_stored: False) -> tuple[Values, np.ndarray]:
    """The task's ``(values, index)``: from memory when every shard's are kept, else from the files
    (each opened once: ``shards``' metadata give their numbers of images). ``units_first(n_stored)``
    says whether the values are wanted unit-major (:class:`~daskdiff.core.unit_major.UnitMajor`,
    with ``task.normalize``'s statistics): they are then written in that layout as they are read
    (from the files with ``task.stored`` known) or shard by shard from memory, with no
    image-major copy of the whole first."""
    if not kept or any(v is None for v in kept):
        if not task.written:
            raise InputError(
                f"{task.key}: the shards of set {task.image_set!r} store no units (extraction.store: none) and its partial "
                f"result {task.path} could not be reused; remove that file and re-run: the set is then extracted again in memory"
            )
        counts = [m["n_images"] for m in shards] if len(shards) == len(task.files) else None
        if task.stored and units_first(task.stored):
            rows, index = read_features(task.files, task.substrate, task.layer, counts, units_first=True)
            return from_unit_rows(rows, task.normalize), index
        values, index = read_features(task.files, task.substrate, task.layer, counts)
        return (unit_major(values, task.normalize) if units_first(values.shape[1]) else values), index
    arrays = [v[0] for v in kept]
    index = np.arange(arrays[0].shape[1], dtype=np.int64) if kept[0][1] is None else np.asarray(kept[0][1], dtype=np.int64)
    if units_first(arrays[0].shape[1]):
        return unit_major(arrays, task.normalize), index  # shard by shard: no concatenated copy
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)), index


def run_diff_task(task: DiffTask, *shards: Any, values: list | None = None, pool: UnitPool | None = None) -> Partial:
    """Compute one task, write its partial result and return it.

    ``shards``: the set's extraction results, :func:`daskdiff.io.shards.shard_metadata` (Dask
    futures passed as arguments make this task wait for its own set's shards only). ``values``:
    the task's variable in each shard, ``(values, index)`` as extraction kept it in memory
    (:meth:`daskdiff.model.extract._Kept.values`); without them (None, or a shard whose values
    are not kept) the variable is read from the shard files, once (:func:`read_features`). A partial
    result that already exists is read back instead (resume), unless it is corrupt (unreadable,
    or arrays of other shapes) or stale (computed from shards with other ``inputs_digest`` values:
    their images or their model changed, or, with ``pool``, the data-dependent mode's pool of units,
    :func:`daskdiff.core.activity.unit_pool`, changed), when it is recomputed
    (:func:`daskdiff.io.partials.reuse_partial`); a corrupt one's warning line travels back in the
    result's ``warning``, for the client's console.

    The partial holds the arrays of :func:`partial_layout` (see
    :mod:`daskdiff.core.partial_layout`), for the ``n_units`` of the plan in order (axis 0) and
    the job's repeats (NaN past ``repeats_for(n_units)``): ``rdm_sum`` is the sum over defined
    repeats, for the mean RDM, ``rdm_count`` the number of repeats summed; ``source`` is
    :func:`~daskdiff.io.partials.sources_digest` of the shards read; ``spectral_differentiation``
    comes from the same sampled matrices (:func:`spectral_stack`; not divided by
    ``sqrt(n_units)``). Without ``task.images`` the image measure's ``differentiation`` is NaN
    and ``undefined`` comes from the spectral path (one normaliser, so the same flags).
    """
    if pool is not None:
        task = dataclasses.replace(task, pool=pool)
    source = sources_digest([m["attrs"]["inputs_digest"] for m in shards] + ([pool.digest] if pool is not None else [])) if shards else None
    layout = partial_layout(task, shards)
    reused, warning = reuse_partial(task.path, layout.shapes(), source)
    if reused is not None:
        return Partial(task.image_set, task.substrate, task.layer, reused)
    if shards and (n := sum(m["n_images"] for m in shards)) < 2:
        raise InputError(f"image set {task.image_set!r} has {n} decodable image(s); differentiation needs at least 2")
    if task.spectral is not None and (lost := [s for m in shards for s in m["skipped"]]):
        raise InputError(f"movie {task.image_set!r}: {len(lost)} frame(s) could not be decoded ({lost[0][0]}: {lost[0][1]}); "
                         "spectral differentiation needs every frame, in time order: repair or re-export the movie")
    arrays_on = arrays_for(task.device) if task.images and task.metric in GRAM_METRICS else None
    n_features = int(np.prod(feature_shape(task.shape, task.substrate)))
    gathered = sum(len(units_for(task.shape, task.substrate, n, task.sampling, task.layer, 0, task.pool)) * task.sampling.repeats_for(n)
                   for n in task.sampling.n_units if n != ALL and not (isinstance(n, int) and n >= n_features))  # exact ones: once
    values, index = task_values(task, values, shards,  # on the host, when it pays: contiguous gathers (core.unit_major)
                                lambda n_stored: arrays_on is None and worth_unit_major(n_stored, gathered))
    layout = dataclasses.replace(layout, n_images=_n_images(values))
    arrays = layout.empty()
    if source is not None:
        arrays[SOURCE][...] = source
    if isinstance(values, UnitMajor):
        peak = values.peak
    else:
        peak = max(float(values.max()), -float(values.min())) if values.size else 0.0
    least = config.nbytes("daskdiff.task.min-stack-budget")  # whatever the budget (Dask config, read on the worker)
    budget = None if task.memory_budget is None else max(least, task.memory_budget - values.nbytes - index.nbytes)
    with arrays_on.context() if arrays_on is not None else contextlib.nullcontext():
        on_device = arrays_on.put(values) if arrays_on is not None else None  # once per task
        for i, n_units in enumerate(task.sampling.n_units):
            layout.set_row(arrays, i, _n_units_result(values, index, task, n_units, FLOAT32_FLOOR * peak, budget, on_device))
        del on_device
    write_partial(task.path, arrays)
    return Partial(task.image_set, task.substrate, task.layer, arrays, warning)
