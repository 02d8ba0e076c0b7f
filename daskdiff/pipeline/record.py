"""Pipeline layer, step 4 of a job: record its results in one NetCDF file, with their provenance.

:func:`record` combines the partial results of a job's run into ``differentiation.nc``
(:func:`daskdiff.io.results.assemble`), with CF global attributes saying what made it: the spec,
the model's identity, package versions, the Keras backend the workers used, and the command.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr

from ..core.units import bytes_per_image
from ..io.atomic import write_netcdf
from ..io.layout import PLOT_FILE, RESULTS_FILE
from ..io.partials import Partial
from ..io.results import assemble
from ..io.results_attrs import describe, n_units_text, n_units_value
from ..logs import reporter, warn
from .plan import JobPlan
from .spec import spec_yaml
from .stimulus import stimulus_variable

_echo = reporter(__name__)


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("daskdiff", "dask", "distributed", "xarray", "numpy", "scipy", "tensorflow", "keras", "netCDF4"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _results_attrs(plan: JobPlan, command: str | None, metadata: dict | None = None) -> dict[str, Any]:
    """The results file's global attributes: CF provenance, the spec, the analysis conventions.

    ``keras_backend`` (and ``keras_backend_version``) are those the shards were extracted with
    (``metadata``'s ``backends``; several, comma-separated, when workers or resumed runs differed),
    ``client_keras_backend`` this process's."""
    spec = plan.spec
    a = spec.analysis
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs = {
        "Conventions": "CF-1.8",
        "title": f"daskdiff differentiation results of job {spec.name!r}",
        "source": f"daskdiff {versions()['daskdiff']}",
        "history": f"{now}: {command or 'daskdiff.run_job'}",
        "job_spec": spec_yaml(spec),
        "package_versions": json.dumps(versions()),
        "seed": a.seed,
        "metric": a.metric,
        "normalize": a.normalize,
        "normalize_scope": "per image set, layer, substrate, n_units and repeat (all entries of the sampled matrix)",
        "per_unit": int(a.per_unit),
        "median_over": a.median_over,
        "sampling_mode": a.sampling,
        "repeats": a.repeats,
        "plan_digest": plan.digest,
        "bytes_per_image": bytes_per_image(plan.storage),
        **plan.model.identity(),
    }
    # the backend that computed the activations is the workers' (their shards say which), not this client's
    attrs["client_keras_backend"] = attrs["keras_backend"]
    found = list(dict.fromkeys(b for meta in (metadata or {}).values() for b in meta.get("backends", []) if b[0]))
    if found:
        attrs["keras_backend"] = ", ".join(dict.fromkeys(b for b, _ in found))
        attrs["keras_backend_version"] = ", ".join(dict.fromkeys(str(v) for _, v in found))
    if plan.notes:
        attrs["warning"] = " | ".join(plan.notes)
    return attrs


def record(plan: JobPlan, metadata: dict, partials: list[Partial], *, keep_rdm: bool, command: str | None = None, echo: Callable = _echo,
           stimulus: dict[str, float] | None = None, pools: dict | None = None, timing: dict[str, float] | None = None,
           ) -> tuple[Path, list[tuple[str, str, str]], list[str]]:
    """Assemble the partial results into ``differentiation.nc`` (written atomically).

    ``stimulus``: each movie's stimulus differentiation (:mod:`~daskdiff.pipeline.stimulus`),
    recorded as ``stimulus_differentiation`` (image_set) when given and not empty.
    ``pools``: ``(substrate, layer)`` -> the summary of a data-dependent sampling mode's pool
    (:func:`~daskdiff.pipeline.activity.pool_summary`), recorded as the variables
    ``active_units`` and ``eligible_units`` (:func:`pool_variables`). ``timing``: global
    attributes of the job's time (``estimate_s``, ``estimate_revised_s``, ``wall_s``:
    :func:`daskdiff.pipeline.job.run_job` says what each is).

    Returns the file's path, the skipped files as ``(set, path, reason)`` and the job's notes
    (the plan's, plus a count of undefined repeats), each also echoed.
    """
    a = plan.spec.analysis
    ds = assemble(
        sets=list(plan.sets), metadata=metadata, substrates=list(a.substrates), n_units=[n_units_value(n) for n in a.n_units],
        layers=plan.layers, repeats=a.repeats, partials=partials, keep_rdm=keep_rdm,
        attrs={**_results_attrs(plan, command, metadata), **(timing or {})}, fps=plan.fps,
        spectral={**a.spectral.model_dump(mode="json"), "normalize": a.normalize} if "spectral" in a.measures else None,
        images="images" in a.measures, conditions=_conditions(plan),
    )
    if stimulus:
        ds["stimulus_differentiation"] = stimulus_variable(list(plan.sets), stimulus, a.stimulus)
    ds = describe(ds.assign(pool_variables(pools or {}, list(a.substrates), plan.layers, a.sampling)))
    plan.manifest.add_files([plan.output / RESULTS_FILE, plan.output / PLOT_FILE])
    path = write_netcdf(ds, plan.output / RESULTS_FILE)
    notes = list(plan.notes)
    if (note := undefined_note(ds["n_undefined"], a.repeats)) is not None:
        warn(echo, "warning: " + note)
        notes.append(note)
    skipped = [(str(s), str(p), str(r)) for s, p, r in zip(ds["skipped_set"].values, ds["skipped_path"].values, ds["skipped_reason"].values)]
    for s, p, r in skipped:
        warn(echo, f"skipped ({s}): {p}: {r}")
    ds.close()
    return path, skipped, notes


def _conditions(plan: JobPlan) -> dict[str, dict[str, dict[str, str]]]:
    """The stimulus tables' conditions of the job's sets: set -> column -> {path: value}."""
    sets = plan.inputs.sets.values() if plan.inputs is not None else ()
    return {s.name: {column: dict(zip(s.paths, values)) for column, values in s.conditions.items()} for s in sets if s.conditions}


def pool_variables(pools: dict, substrates: list[str], layers: list[str], mode: str) -> dict[str, xr.DataArray]:
    """``active_units`` and ``eligible_units`` on ``(substrate, layer)`` (int64) from the pools'
    summaries; none without pools (a sampling mode that does not look at the activations)."""
    if not pools:
        return {}
    meaning = {
        "active_units": "features not constant over all the job's images (every set), from the unit-statistics pass",
        "eligible_units": f"features that sampling {mode!r} draws from (positive weight); n_units above it take them all",
    }
    return {name: xr.DataArray(np.array([[pools[(s, layer)][name] for layer in layers] for s in substrates], dtype=np.int64),
                               dims=("substrate", "layer"), coords={"substrate": substrates, "layer": layers},
                               attrs={"long_name": text, "sampling_mode": mode})
            for name, text in meaning.items()}


def undefined_note(n_undefined: Any, repeats: int, most: int = 5) -> str | None:
    """The line that says which repeats came out undefined (NaN), or None if none did.

    ``n_undefined``: the results file's variable of that name (an xarray DataArray on
    ``image_set``, ``substrate``, ``n_units``, ``layer``: repeats whose normaliser was zero or
    below float32 resolution); the ``most`` cells with the most undefined repeats are named, as
    ``set/substrate/layer at n_units: k of repeats``.
    """
    total = int(n_undefined.sum())
    if not total:
        return None
    cells = n_undefined.stack(cell=n_undefined.dims)
    cells = cells[cells > 0]
    order = sorted(range(cells.sizes["cell"]), key=lambda i: (-int(cells[i]), i))
    named = []
    for i in order[:most]:
        cell = cells.isel(cell=i)
        named.append(f"{cell['image_set'].item()}/{cell['substrate'].item()}/{cell['layer'].item()} at n_units "
                     f"{n_units_text(cell['n_units'].item())}: {int(cell)} of {repeats}")
    more = f"; and {len(order) - most} more cell(s)" if len(order) > most else ""
    return (f"{total} repeat(s) had a normaliser of zero or below float32 resolution of the layer (e.g. only dead "
            f"units or ~0 softmax tails sampled): NaN, counted in n_undefined ({'; '.join(named)}{more})")
