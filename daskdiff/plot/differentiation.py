"""Top layer, figures of differentiation from a results file (``differentiation.nc``,
:mod:`daskdiff.io.results`): by layer (:func:`plot_results`, what ``daskdiff plot`` draws),
over sampling repeats, by number of units, relative to a reference set, per image pair, and
set-to-set differences with bootstrap bands.

Every panel puts the layers on the x axis in network order, by name.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..core.differentiation import rdm_median
from ..errors import InputError
from ..io.results import open_results
from ..io.results_attrs import ALL_UNITS, n_units_text, n_units_value, with_int_n_units
from ..stats import RDM_DIMS, require_rdm, select_set, set_difference, set_names
from .common import legend_outside, panel_figure, save_figure, set_colors, suptitle

_N_UNITS_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
"""Line styles of every n_units but the last (largest), which is solid, as in the second seed."""


# --------------------------------------------------------------------------- shared helpers


def _layers(ds: xr.Dataset) -> list[str]:
    return [str(v) for v in ds["layer"].values]


def _levels(ds: xr.Dataset, n_units: Sequence[Any] | None = None) -> list[int]:
    """The ``n_units`` values asked for (any label: 200, '200', 'all'), else the results', as ints (-1: all)."""
    return [n_units_value(n) for n in (ds["n_units"].values if n_units is None else n_units)]


def _n_units_styles(levels: Sequence[int]) -> dict[int, Any]:
    """Dashed/dotted for the smaller n_units, solid for the largest (the seed's 200 vs 10000)."""
    styles = {n: _N_UNITS_STYLES[i % len(_N_UNITS_STYLES)] for i, n in enumerate(levels[:-1])}
    styles[levels[-1]] = "-"
    return styles


def units_used_text(ds: xr.Dataset, substrate: str, n_units: Any) -> str:
    """How many units a panel's values used, from ``units_used`` (n_units capped at each layer's
    size): '200 units', 'all units (64-4096 per layer)', '200 units (64-200 per layer: fewer where
    the layer has fewer)'."""
    n = n_units_value(n_units)
    used = ds["units_used"].sel(substrate=substrate, n_units=n).values if "units_used" in ds else np.zeros(0)
    low, high = (int(used.min()), int(used.max())) if used.size else (n, n)
    span = f"{low}" if low == high else f"{low}-{high}"
    if n == ALL_UNITS:
        return f"all units ({span} per layer)"
    if low == high == n:
        return f"{n} units"
    return f"{n} units asked, {span} used per layer (capped at the layer's size)"


def _layer_axis(ax: Any, layers: Sequence[str]) -> np.ndarray:
    """Layer names as x tick labels, in network order, rotated so 20+ names stay readable."""
    x = np.arange(len(layers))
    ax.set_xticks(x, [str(v) for v in layers], rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_xlabel("layer (network order)")
    return x


def _distance_label(ds: xr.Dataset) -> str:
    metric = ds.attrs.get("metric", "")
    normalize = ds.attrs.get("normalize", "")
    per_unit = ", per unit" if int(ds.attrs.get("per_unit", 0)) else ""
    detail = ", ".join(p for p in (f"{normalize}-normalised" if normalize and normalize != "none" else "", metric) if p)
    return f"distance ({detail}{per_unit})" if detail or per_unit else "distance"


def _mean_over_repeats(da: xr.DataArray) -> xr.DataArray:
    """Mean over repeats of defined (non-NaN) values; NaN where none is defined."""
    count = da.notnull().sum("repeat")
    return (da.fillna(0).sum("repeat") / count.where(count > 0)).rename(da.name)


def _log_axis(ax: Any) -> None:
    """Log y axis with plain-number tick labels (0.5, 1, 2, 10, not 10^0).

    When the view holds fewer than three powers of ten, the minor ticks at 2, 3 and 5 times a
    power are labelled too, so there are always a few numbers to read.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    powers = int(np.floor(np.log10(high)) - np.ceil(np.log10(low))) + 1
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    some = FuncFormatter(lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v))) in (2, 3, 5) else "")
    ax.yaxis.set_minor_formatter(some if powers < 3 else NullFormatter())


def noise_reference(ds: xr.Dataset) -> tuple[str | None, str | None]:
    """The set other sets are compared with by default, and why: ``(set, reason)``.

    The first set the job generated as noise (``generate: noise`` in the spec the results record
    in ``attrs['job_spec']``), else the first whose name contains ``noise``, else ``(None, None)``.
    """
    import yaml

    names = set_names(ds)
    try:
        spec = yaml.safe_load(ds.attrs.get("job_spec") or "")
    except yaml.YAMLError:
        spec = None
    entries = spec.get("image_sets") if isinstance(spec, dict) else None
    entries = entries if isinstance(entries, dict) else {}
    generated = [n for n in names if isinstance(entries.get(n), dict) and entries[n].get("generate") == "noise"]
    if generated:
        return generated[0], "generated as noise: generate: noise in the job's spec"
    named = [n for n in names if "noise" in n.lower()]
    if named:
        return named[0], "its name contains 'noise'"
    return None, None


def _reference(ds: xr.Dataset, reference: str | None) -> str:
    names = set_names(ds)
    if reference is None:
        found, _ = noise_reference(ds)
        if found is not None:
            return found
        raise InputError(f"these results have no set generated as noise or named like it; name the reference set, "
                         f"e.g. reference={names[0]!r} (the sets are {names})")
    if reference not in names:
        raise InputError(f"reference set {reference!r} is not in these results; the sets are {names}")
    return reference


# --------------------------------------------------------------------------- 1. by layer


SPECTRAL_VARIABLE = "normalized_spectral_differentiation"
"""The spectral results variable :func:`plot_results` draws (comparable across n_units)."""


SPREAD = (0.1, 0.9)
"""Quantiles of the repeats that :func:`differentiation_by_layer`'s bars span (never below the
smallest repeat, so never below 0 for a distance)."""


def differentiation_by_layer(ds: xr.Dataset, ax: Any, *, substrate: str, n_units: Any, sets: Sequence[str] | None = None, legend: bool = False,
                             variable: str = "differentiation") -> None:
    """Median over repeats per layer, bars from the 10th to the 90th percentile of the repeats
    (:data:`SPREAD`), one line per image set, layers in network order.

    For ``n_units`` all (``-1``, exact, one value) there is no bar. Repeats that came out
    undefined (NaN: a normaliser of zero) are counted under their layer ('3 NaN', in the set's
    colour), so a layer drawn from few repeats, or none, says so. The title says how many units
    were used (:func:`units_used_text`). ``legend=True`` puts a legend of the sets outside the
    axes (:func:`plot_results` draws one for the whole figure). ``variable``:
    ``differentiation`` (images) or a spectral variable of a movie job, e.g. :data:`SPECTRAL_VARIABLE`.
    """
    ds = with_int_n_units(ds)
    n = n_units_value(n_units)
    da = ds[variable].sel(substrate=substrate, n_units=n)
    expected = 1 if n == ALL_UNITS else ds.sizes["repeat"]
    colors = set_colors(set_names(ds))
    names = set_names(ds, sets)
    x = _layer_axis(ax, _layers(ds))
    for k, name in enumerate(names):
        values = da.sel(image_set=name).transpose("layer", "repeat").values[:, :expected]
        defined = np.isfinite(values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a layer with no defined repeat: NaN
            middle = np.nanmedian(values, axis=1)
            low, high = np.nanquantile(values, SPREAD, axis=1) if expected > 1 else (middle, middle)
        bars = None if expected == 1 else np.vstack([middle - low, high - middle])
        ax.errorbar(x, middle, yerr=bars, marker="o", ms=3, capsize=2, color=colors[name], label=name)
        missing = expected - defined.sum(axis=1)
        for i in np.flatnonzero(missing):
            ax.annotate(f"{missing[i]} NaN", xy=(x[i], 0.02 + 0.06 * k), xycoords=("data", "axes fraction"), ha="center",
                        fontsize=6, color=colors[name], gid="nan-count")
    what = "differentiation" if variable == "differentiation" else variable.replace("_", " ").replace("normalized ", "normalized\n")
    spread = "" if expected == 1 else f"; bars {SPREAD[0]:.0%}-{SPREAD[1]:.0%} of {expected} repeats"
    ax.set_ylabel(f"{what}\n(median{spread})")
    ax.set_title(f"{substrate}, {units_used_text(ds, substrate, n)}" + ("" if variable == "differentiation" else " (spectral)"), fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        legend_outside(ax, title="image set")


def plot_results(ds: xr.Dataset | str | Path, path: str | Path | None = None, *, dpi: int = 120) -> Path | Figure:
    """Differentiation by layer: one panel per (substrate, n_units), bars over repeats
    (:func:`differentiation_by_layer`); with spectral differentiation in the results, a panel
    per (substrate, n_units) of :data:`SPECTRAL_VARIABLE` too (and none of the image measure
    when it was not measured).

    Writes a PNG to ``path`` (atomically) and returns the path, or returns the figure when
    ``path`` is None.
    """
    if not isinstance(ds, xr.Dataset):
        with open_results(ds) as opened:
            ds = opened.load()
    ds = with_int_n_units(ds)
    variables = [v for v in ("differentiation", SPECTRAL_VARIABLE)
                 if v in ds and (v != "differentiation" or ds[v].attrs.get("measured", 1))]
    panels = [(v, str(s), int(n)) for v in variables for s in ds["substrate"].values for n in ds["n_units"].values]
    fig, axes = panel_figure(len(panels), 3, (5.5, 4.2))
    for ax, (v, s, n) in zip(axes, panels):
        differentiation_by_layer(ds, ax, substrate=s, n_units=n, variable=v)
    handles, labels = axes[0].get_legend_handles_labels()
    suptitle(fig, str(ds.attrs.get("title", "differentiation by layer")), ds)
    fig.legend(handles, labels, loc="outside right center", title="image set", frameon=False)
    if path is None:
        return fig
    return save_figure(fig, path, dpi=dpi)


# --------------------------------------------------------------------------- 2. sampling noise


def sampling_noise(ds: xr.Dataset, ax: Any, *, substrate: str, n_units: Any, sets: Sequence[str] | None = None, exact: bool = True) -> None:
    """Distribution of differentiation over sampling repeats: a box per (layer, set).

    Boxes of the sets sit side by side in each layer's slot (median line, quartile box,
    whiskers at 1.5 IQR, outlying repeats as dots). With ``exact=True`` and an all-units
    (``-1``) level in the results, the exact value (every unit) is a black diamond on each box: a
    sampled distribution centred away from it is a bias of sub-sampling, not noise.
    """
    ds = with_int_n_units(ds)
    n_units = n_units_value(n_units)
    da = ds["differentiation"].sel(substrate=substrate, n_units=n_units)
    if int(da.notnull().sum("repeat").max()) <= 1:
        sampled = [int(n) for n in ds["n_units"].values if int(ds["differentiation"].sel(substrate=substrate, n_units=n).notnull().sum("repeat").max()) > 1]
        raise InputError(f"n_units={n_units_text(n_units)!r} has at most one value per layer (exact, or one repeat): no sampling "
                         f"distribution; choose one of {sampled}")
    names = set_names(ds, sets)
    colors = set_colors(set_names(ds))
    x = _layer_axis(ax, _layers(ds))
    width = 0.8 / len(names)
    show_exact = exact and ALL_UNITS in ds["n_units"].values and n_units != ALL_UNITS
    for k, name in enumerate(names):
        pos = x + (k - (len(names) - 1) / 2) * width
        rows = da.sel(image_set=name).transpose("layer", "repeat").values
        data = [r[np.isfinite(r)] for r in rows]
        keep = [i for i, d in enumerate(data) if d.size]
        ax.boxplot(
            [data[i] for i in keep], positions=pos[keep], widths=width * 0.8, patch_artist=True, manage_ticks=False,
            boxprops=dict(facecolor=colors[name], edgecolor=colors[name], alpha=0.55),
            medianprops=dict(color="black", lw=1), whiskerprops=dict(color=colors[name]), capprops=dict(color=colors[name]),
            flierprops=dict(marker=".", markersize=2, markeredgecolor=colors[name]),
        )
        if show_exact:
            values = ds["differentiation"].sel(substrate=substrate, n_units=ALL_UNITS, image_set=name).isel(repeat=0).values
            ax.plot(pos, values, ls="none", marker="D", ms=2.5, color="black")
    handles: list[Any] = [Patch(facecolor=colors[n], alpha=0.55, label=n) for n in names]
    if show_exact:
        handles.append(Line2D([], [], ls="none", marker="D", ms=3, color="black", label="all units (exact)"))
    n_rep = int(da.notnull().sum("repeat").max())
    ax.set_ylabel("differentiation\n(one value per repeat)")
    ax.set_title(f"sampling noise: {substrate}, {units_used_text(ds, substrate, n_units)}, {n_rep} repeats of random units", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax, handles, title="image set")


def plot_sampling_noise(ds: xr.Dataset, *, substrates: Sequence[str] | None = None, sets: Sequence[str] | None = None) -> Figure:
    """:func:`sampling_noise` for every sampled n_units (one row each) of each substrate."""
    ds = with_int_n_units(ds)
    substrates = [str(s) for s in (substrates or ds["substrate"].values)]
    panels = [
        (s, int(n)) for s in substrates for n in ds["n_units"].values
        if int(ds["differentiation"].sel(substrate=s, n_units=n).notnull().sum("repeat").max()) > 1
    ]
    if not panels:
        raise InputError("no n_units level of these results has more than one repeat: there is no sampling distribution to show")
    fig, axes = panel_figure(len(panels), 1, (max(8.0, 0.55 * ds.sizes["layer"] + 2.5), 3.4))
    for ax, (s, n) in zip(axes, panels):
        sampling_noise(ds, ax, substrate=s, n_units=n, sets=sets)
    suptitle(fig, "differentiation over sampling repeats", ds)
    return fig


# --------------------------------------------------------------------------- 3. n_units


def n_units_comparison(ds: xr.Dataset, ax: Any, *, substrate: str, sets: Sequence[str] | None = None, n_units: Sequence[Any] | None = None) -> None:
    """Mean differentiation over repeats per layer: colour = image set, line style = n_units.

    The largest n_units is solid, the smaller ones dashed or dotted (the second seed's
    '200 dashed, 10000 solid').
    """
    ds = with_int_n_units(ds)
    levels = _levels(ds, n_units)
    styles = _n_units_styles(levels)
    names = set_names(ds, sets)
    colors = set_colors(set_names(ds))
    x = _layer_axis(ax, _layers(ds))
    da = ds["differentiation"].sel(substrate=substrate)
    for name in names:
        for n in levels:
            mean = _mean_over_repeats(da.sel(image_set=name, n_units=n))
            ax.plot(x, mean.values, ls=styles[n], marker="o", ms=2.5, lw=1.3, color=colors[name])
    handles = [Line2D([], [], color=colors[n], lw=2, label=n) for n in names]
    handles += [Line2D([], [], color="black", ls=styles[n], lw=1.3, label=units_used_text(ds, substrate, n)) for n in levels]
    ax.set_ylabel("differentiation\n(mean over repeats)")
    ax.set_title(f"{substrate}: differentiation by number of units", fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax, handles, title="set / n_units")


def plot_n_units(ds: xr.Dataset, *, sets: Sequence[str] | None = None) -> Figure:
    """:func:`n_units_comparison`, one panel per substrate."""
    substrates = [str(s) for s in ds["substrate"].values]
    fig, axes = panel_figure(len(substrates), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.8))
    for ax, s in zip(axes, substrates):
        n_units_comparison(ds, ax, substrate=s, sets=sets)
    suptitle(fig, "differentiation for different numbers of sampled units", ds)
    return fig


# --------------------------------------------------------------------------- 4. ratio


def ratio_to_reference(
    ds: xr.Dataset, ax: Any, *, substrate: str, reference: str | None = None, n_units: Sequence[Any] | None = None,
    sets: Sequence[str] | None = None, log: bool = True, min_reference: float = 1e-3,
) -> None:
    """Mean differentiation of each set divided by the reference set's, per layer and n_units.

    ``reference`` defaults to ``'noise'`` when the results have that set. The ratio is of the
    means over repeats. Where the reference's mean is undefined, or below ``min_reference``
    times its median over layers (0 up to round-off: a ratio there would only measure the
    round-off), there is no ratio (a gap) and the title names the layers. ``log=True`` draws
    the ratio on a log axis, where 2x and 1/2x are equally far from 1.
    """
    ds = with_int_n_units(ds)
    ref = _reference(ds, reference)
    levels = _levels(ds, n_units)
    styles = _n_units_styles(levels)
    colors = set_colors(set_names(ds))
    names = [n for n in set_names(ds, sets) if n != ref]
    layers = _layers(ds)
    x = _layer_axis(ax, layers)
    mean = _mean_over_repeats(ds["differentiation"].sel(substrate=substrate, n_units=levels))
    ref_mean = mean.sel(image_set=ref)
    usable = ref_mean > min_reference * ref_mean.median("layer")
    ratio = mean / ref_mean.where(usable)
    for name in names:
        for n in levels:
            ax.plot(x, ratio.sel(image_set=name, n_units=n).values, ls=styles[n], marker="o", ms=2.5, lw=1.3, color=colors[name])
    ax.axhline(1.0, color="grey", lw=1)
    positive = ratio.sel(image_set=names).values if names else np.zeros(0)
    if log and np.any(positive[np.isfinite(positive)] > 0):
        _log_axis(ax)
    no_ref = [layers[i] for i in np.flatnonzero(~usable.all("n_units").values)]
    handles = [Line2D([], [], color=colors[n], lw=2, label=n) for n in names]
    handles += [Line2D([], [], color="black", ls=styles[n], lw=1.3, label=units_used_text(ds, substrate, n)) for n in levels]
    handles.append(Line2D([], [], color="grey", lw=1, label=f"= {ref}"))
    ax.set_ylabel(f"differentiation / that of {ref!r}")
    title = f"{substrate}: differentiation relative to {ref!r}"
    if no_ref:
        title += f"\n(no ratio where {ref!r} is about 0 or undefined: {', '.join(no_ref)})"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax, handles, title="set / n_units")


def plot_ratio(ds: xr.Dataset, *, reference: str | None = None, sets: Sequence[str] | None = None) -> Figure:
    """:func:`ratio_to_reference`, one panel per substrate."""
    substrates = [str(s) for s in ds["substrate"].values]
    fig, axes = panel_figure(len(substrates), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.8))
    for ax, s in zip(axes, substrates):
        ratio_to_reference(ds, ax, substrate=s, reference=reference, sets=sets)
    suptitle(fig, f"differentiation relative to the {_reference(ds, reference)!r} set", ds)
    return fig


# --------------------------------------------------------------------------- 5. pair distances


def _set_rdm(ds: xr.Dataset, image_set: str, substrate: str, n_units: Any) -> xr.DataArray:
    rdm = select_set(require_rdm(ds), image_set, ds["n_images"], RDM_DIMS)
    return rdm.sel(substrate=substrate, n_units=n_units_value(n_units)).transpose("layer", *RDM_DIMS)


def pair_distances(ds: xr.Dataset, ax: Any, *, image_set: str, substrate: str, n_units: Any) -> None:
    """Distance of every image pair across layers (thin lines) and their median (thick black).

    Distances are the job's mean RDM over repeats; the median is over each pair once (or the
    full square when the job's ``median_over`` is 'square'), so the black line is the
    differentiation of the mean RDM.
    """
    ds = with_int_n_units(ds)
    rdm = _set_rdm(ds, image_set, substrate, n_units).values
    x = _layer_axis(ax, _layers(ds))
    i, j = np.triu_indices(rdm.shape[-1], k=1)
    color = set_colors(set_names(ds))[image_set]
    lines = ax.plot(x, rdm[:, i, j], lw=0.7, alpha=0.45, color=color)
    lines[0].set_label(f"one image pair ({len(i)} pairs)")
    ax.plot(x, rdm_median(rdm, str(ds.attrs.get("median_over", "condensed"))), lw=3, color="black", label="median over pairs")
    ax.set_ylabel("pair distance\n(mean over repeats)")
    ax.set_title(f"{image_set}: {substrate}, {units_used_text(ds, substrate, n_units)}", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    legend_outside(ax)


def plot_pair_distances(ds: xr.Dataset, *, substrate: str | None = None, n_units: Any = None, sets: Sequence[str] | None = None) -> Figure:
    """:func:`pair_distances`, one panel per set, same y axis (default: first substrate and n_units)."""
    ds = with_int_n_units(ds)
    substrate = substrate or str(ds["substrate"].values[0])
    n_units = n_units_value(ds["n_units"].values[0] if n_units is None else n_units)
    names = set_names(ds, sets)
    fig, axes = panel_figure(len(names), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.2), sharey=True)
    for ax, name in zip(axes, names):
        pair_distances(ds, ax, image_set=name, substrate=substrate, n_units=n_units)
    axes[0].autoscale(axis="y")  # each panel fixed its bottom at 0 before the next one had data
    axes[0].set_ylim(bottom=0)
    suptitle(fig, f"{_distance_label(ds)} between image pairs across layers ({substrate}, {units_used_text(ds, substrate, n_units)})", ds)
    return fig


# --------------------------------------------------------------------------- 6. differences


def set_differences(
    ds: xr.Dataset, ax: Any, *, substrate: str, n_units: Any, reference: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None, n_boot: int = 1000, seed: int | None = 0, ci: float = 0.95,
) -> None:
    """Difference of differentiation per layer, with bootstrap confidence bands over images.

    ``pairs`` of sets ``(a, b)`` plot ``a - b`` (default: each set minus the reference,
    ``'noise'`` when present). Bands are :func:`daskdiff.stats.set_difference`'s percentile
    intervals from the mean RDMs: image sampling only (see there).
    """
    ds = with_int_n_units(ds)
    if pairs is None:
        ref = _reference(ds, reference)
        pairs = [(name, ref) for name in set_names(ds) if name != ref]
    colors = set_colors(set_names(ds))
    x = _layer_axis(ax, _layers(ds))
    for a, b in pairs:
        res = set_difference(ds, a, b, substrate=substrate, n_units=n_units, n_boot=n_boot, seed=seed, ci=ci)
        ax.fill_between(x, res["ci_low"].values, res["ci_high"].values, color=colors[a], alpha=0.25, lw=0)
        ax.plot(x, res["difference"].values, marker="o", ms=3, color=colors[a], label=f"{a} − {b}")
    ax.axhline(0.0, color="grey", lw=1)
    ax.set_ylabel("difference of\ndifferentiation")
    ax.set_title(f"{substrate}, {units_used_text(ds, substrate, n_units)}: {ci:.0%} bootstrap CI over images ({n_boot} resamples)", fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax, title="sets (band: CI)")


def plot_set_differences(
    ds: xr.Dataset, *, reference: str | None = None, pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 1000, seed: int | None = 0, ci: float = 0.95,
) -> Figure:
    """:func:`set_differences`, one panel per (substrate, n_units)."""
    ds = with_int_n_units(ds)
    panels = [(str(s), int(n)) for s in ds["substrate"].values for n in ds["n_units"].values]
    fig, axes = panel_figure(len(panels), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.2))
    for ax, (s, n) in zip(axes, panels):
        set_differences(ds, ax, substrate=s, n_units=n, reference=reference, pairs=pairs, n_boot=n_boot, seed=seed, ci=ci)
    suptitle(fig, "set-to-set differences of differentiation (bootstrap over images)", ds)
    return fig
