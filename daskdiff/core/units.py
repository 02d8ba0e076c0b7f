"""Numeric core: the unit plan, which units each repeat uses, and so which values a shard must store.

Pure numpy. The plan is known before extraction starts (unit samples depend on
``(seed, layer, repeat)`` alone), so a shard stores only the union of the units that the
differentiation stage will read, not the 60.4 MB per image of a full VGG16 pass. The
data-dependent sampling modes (:data:`~daskdiff.core.sampling.DATA_MODES`: ``active``,
``weighted=...``) draw from statistics of the job's activations, known only after extraction:
their layers store every unit.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..errors import JobError
from .sampling import ALL, check_sampling, expected_union, is_data_mode, sample_units, UnitPool
from .substrates import check_substrate, feature_shape

NUnits = int | str

STORE_MODES = ("needed", "all", "none")
"""What a shard stores: the units the plan samples, or every unit of every layer."""


@dataclass(frozen=True)
class Sampling:
    """How units are sampled: the analysis part of a job spec that the plan depends on.

    ``n_units`` holds positive ints and/or ``'all'``; ``'all'`` is exact and has one repeat.
    """

    n_units: tuple[NUnits, ...] = (200,)
    repeats: int = 100
    mode: str = "random"
    seed: int = 0

    def repeats_for(self, n_units: NUnits) -> int:
        return 1 if n_units == ALL else self.repeats


def units_for(
    shape: Sequence[int], substrate: str, n_units: NUnits, sampling: Sampling, layer: str, repeat: int,
    pool: UnitPool | None = None,
) -> np.ndarray:
    """Flat feature indices one repeat uses for one (layer, substrate, n_units): sorted int64.

    Features are the substrate's values (see :func:`daskdiff.core.substrates.feature_shape`); the
    sample is :func:`daskdiff.sample_units` with the job's seed, the layer name and the repeat
    (and, for a data-dependent mode, ``pool``: the job's pool of this layer and substrate).
    """
    fshape = feature_shape(shape, substrate)
    return sample_units(fshape, n_units, seed=sampling.seed, layer=layer, repeat=repeat, mode=sampling.mode, pool=pool)


@dataclass(eq=False)
class LayerPlan:
    """What a shard stores for one layer.

    ``units``: sorted flat unit indices extracted for the ``units`` substrate (every unit when
    ``all_units``), or None when that substrate is not analysed. ``filter_mean`` and
    ``location_mean``: whether those reductions are extracted (always in full: they are small).
    Every extracted variable is stored in the shard file, except the units when ``write_units``
    is False (``extraction.store: none``): differentiation then takes them from the workers'
    memory only.
    """

    name: str
    shape: tuple[int, ...]
    units: np.ndarray | None
    all_units: bool = False
    filter_mean: bool = False
    location_mean: bool = False
    write_units: bool = True
    n_total: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_total = int(np.prod(self.shape))

    def extracted(self) -> dict[str, int]:
        """Substrate -> values extracted per image, for each substrate of this layer."""
        out = {}
        if self.units is not None:
            out["units"] = len(self.units)
        for sub in ("filter_mean", "location_mean"):
            if getattr(self, sub):
                out[sub] = int(np.prod(feature_shape(self.shape, sub)))
        return out

    def stored(self) -> dict[str, int]:
        """Substrate -> values the shard file stores per image: :meth:`extracted`, less the units
        when they are not written."""
        out = self.extracted()
        if not self.write_units:
            out.pop("units", None)
        return out


def storage_plan(
    shapes: dict[str, tuple[int, ...]],
    substrates: Iterable[str],
    sampling: Sampling,
    *,
    store: str = "needed",
    full_layers: Iterable[str] = (),
) -> dict[str, LayerPlan]:
    """What each layer stores, in the order of ``shapes`` (network order).

    Parameters
    ----------
    shapes : dict
        Layer name -> unit shape (channels last).
    substrates : iterable of {'units', 'filter_mean', 'location_mean'}
    sampling : Sampling
    store : {'needed', 'all', 'none'}
        ``needed``: the union over repeats and ``n_units`` of the sampled units (every unit if
        ``'all'`` is among ``n_units``, or if the mode is data-dependent); ``all``: every unit of every layer (60.4 MB per image
        for VGG16), e.g. to try other analyses later; ``none``: what ``needed`` extracts, but the
        shard files store no units (``write_units`` False) except those of ``full_layers``.
    full_layers : iterable of str
        Layers stored in full whatever the plan (the job passes the class-score layer).

    Raises
    ------
    InputError
        A sampling request that cannot hold for some layer (e.g. ``mode='equal'`` with fewer
        units than channels), naming the layer (:func:`check_plan_sampling`).
    """
    check_plan_sampling(shapes, substrates, sampling)
    plan = {}
    full_layers = set(full_layers)
    for name, shape, kind, subs in _layer_kinds(shapes, substrates, sampling, store, full_layers):
        units = None
        if kind == "all":
            units = np.arange(int(np.prod(shape)), dtype=np.int64)
        elif kind == "sampled":
            chunks = [
                units_for(shape, "units", n, sampling, name, r)
                for n in sampling.n_units
                for r in range(sampling.repeats_for(n))
            ]
            units = np.unique(np.concatenate(chunks))
        plan[name] = LayerPlan(
            name=name,
            shape=tuple(shape),
            units=units,
            all_units=kind == "all",
            filter_mean="filter_mean" in subs,
            location_mean="location_mean" in subs,
            write_units=store != "none" or name in full_layers,
        )
    return plan


def check_plan_sampling(shapes: dict[str, tuple[int, ...]], substrates: Iterable[str], sampling: Sampling) -> None:
    """Refuse, without drawing, a sampling that some analysed layer cannot meet.

    Every (layer, substrate, n_units) a job's differentiation tasks will sample is checked with
    :func:`daskdiff.core.sampling.check_sampling`, on the substrate's features
    (:func:`daskdiff.core.substrates.feature_shape`), whatever the shards store. Both
    :func:`storage_plan` and :func:`expected_stored` call it, so a job refuses such a spec while
    it plans, before any cluster starts, and its dry run too.

    Raises
    ------
    InputError
        Naming the first layer that cannot meet it, ``analysis.n_units`` or ``analysis.sampling``
        and the fix (``sampling: equal`` with fewer units than a layer's channels,
        ``sampling: 'channel=K'`` with K beyond a layer's channels).
    """
    subs = [check_substrate(s) for s in substrates]
    for name, shape in shapes.items():
        for sub in subs:
            label = name if sub == "units" else f"{name}, substrate {sub}"
            for n in sampling.n_units:
                check_sampling(feature_shape(shape, sub), n, sampling.mode, layer=label)


def _layer_kinds(shapes: dict[str, tuple[int, ...]], substrates: Iterable[str], sampling: Sampling, store: str,
                 full_layers: Iterable[str]) -> Iterable[tuple[str, tuple[int, ...], str | None, list[str]]]:
    """``(name, shape, units, substrates)`` per layer: which ``units`` a shard stores (``'all'``,
    ``'sampled'``: the union of the plan's draws, or None) and the substrates analysed. A
    data-dependent mode's draws are not known before extraction: its layers store ``'all'``."""
    if store not in STORE_MODES:
        raise ValueError(f"store must be one of {list(STORE_MODES)}, got {store!r}")
    subs = [check_substrate(s) for s in substrates]
    full = set(full_layers)
    for name, shape in shapes.items():
        forced = store == "all" or name in full
        kind = None
        if "units" in subs or forced:
            kind = "all" if forced or ALL in sampling.n_units or is_data_mode(sampling.mode) else "sampled"
        yield name, shape, kind, subs


def expected_stored(
    shapes: dict[str, tuple[int, ...]],
    substrates: Iterable[str],
    sampling: Sampling,
    *,
    store: str = "needed",
    full_layers: Iterable[str] = (),
    written: bool = False,
) -> dict[str, dict[str, int]]:
    """Layer -> substrate -> values extracted per image (``written``: stored in the shard files),
    as :func:`storage_plan` would decide, without drawing a unit.

    Takes the same arguments. Where :func:`storage_plan` stores the union of every repeat's
    sampled units, this gives its expectation (:func:`daskdiff.core.sampling.expected_union`),
    so its cost does not grow with ``sampling.repeats``: the job checks the estimate of a plan
    before it builds the plan, whose cost does (``repeats`` draws per layer and ``n_units``).
    """
    check_plan_sampling(shapes, substrates, sampling)
    out = {}
    full_layers = set(full_layers)
    draws = {n: sampling.repeats_for(n) for n in sampling.n_units}
    for name, shape, kind, subs in _layer_kinds(shapes, substrates, sampling, store, full_layers):
        stored = {}
        if written and store == "none" and name not in full_layers:
            pass  # the units reach differentiation from memory only
        elif kind == "all":
            stored["units"] = int(np.prod(shape))
        elif kind == "sampled":
            stored["units"] = int(round(expected_union(shape, draws, sampling.mode)))
        for sub in ("filter_mean", "location_mean"):
            if sub in subs:
                stored[sub] = int(np.prod(feature_shape(shape, sub)))
        out[name] = stored
    return out


@dataclass(frozen=True)
class StorageRecipe:
    """The small, hashable arguments of :func:`storage_plan`: what tasks carry instead of the plan.

    A plan can hold every unit index of every layer (120 MB for VGG16 with ``n_units: [all]``);
    a recipe is a few hundred bytes, so each task takes it by value and Dask can rerun any task
    anywhere (nothing to lose with a dead worker). Workers build the plan from it once per
    process (:func:`cached_storage_plan`); the draws depend on the seed alone.
    """

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    """Layer name -> unit shape pairs, in network order."""
    substrates: tuple[str, ...]
    sampling: Sampling
    store: str = "needed"
    full_layers: tuple[str, ...] = ()

    def build(self) -> dict[str, LayerPlan]:
        """The plan: :func:`storage_plan` of these arguments."""
        return storage_plan(dict(self.shapes), self.substrates, self.sampling, store=self.store, full_layers=self.full_layers)


_PLANS: dict[StorageRecipe, dict[str, LayerPlan]] = {}
_PLANS_LOCK = threading.Lock()
_PLANS_KEPT = 2
"""Plans a process keeps: those of two jobs that share its workers (each may be large)."""


def cached_storage_plan(recipe: StorageRecipe, digest: str) -> dict[str, LayerPlan]:
    """``recipe.build()``, built once per process (under a lock, so threads wait for one build).

    Raises
    ------
    JobError
        The plan built here has another :func:`plan_digest` than ``digest`` (the client's): this
        process draws other units, so its numpy or daskdiff differs from the client's.
    """
    with _PLANS_LOCK:
        plan = _PLANS.get(recipe)
        if plan is None:
            plan = recipe.build()
            if (here := plan_digest(plan)) != digest:
                raise JobError(
                    f"this worker's storage plan (digest {here[:12]}) is not the client's ({digest[:12]}): it draws other "
                    "units; install the same daskdiff and numpy versions on the workers as on the client"
                )
            while len(_PLANS) >= _PLANS_KEPT:
                _PLANS.pop(next(iter(_PLANS)))
            _PLANS[recipe] = plan
        return plan


def plan_digest(plan: dict[str, LayerPlan]) -> str:
    """SHA-256 of everything a shard's contents depend on in the plan (for resume checks)."""
    digest = hashlib.sha256()
    for name, lp in plan.items():
        unwritten = () if lp.write_units or lp.units is None else ("units not written",)  # older shards keep their digest
        digest.update(repr((name, lp.shape, lp.all_units, lp.filter_mean, lp.location_mean, *unwritten)).encode())
        if lp.units is not None and not lp.all_units:
            digest.update(np.ascontiguousarray(lp.units, dtype=np.int64).tobytes())
    return digest.hexdigest()


def bytes_per_image(plan: dict[str, LayerPlan], itemsize: int = 4, *, extracted: bool = False) -> int:
    """Bytes of activation values one image stores in its shard under ``plan`` (float32 by
    default), or with ``extracted`` the bytes it extracts (what differentiation takes from memory)."""
    return itemsize * sum(sum((lp.extracted() if extracted else lp.stored()).values()) for lp in plan.values())
