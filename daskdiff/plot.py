"""Top layer: figures of a job's results and activations (used by ``daskdiff plot``, the job and the notebooks).

Two kinds of function:

- panel functions, ``name(ds, ax, *, ...)``, draw one panel into a matplotlib ``Axes`` that the
  caller owns;
- figure functions, ``plot_name(...) -> Figure``, lay several panels out and label the figure.

Inputs are the results Dataset (``differentiation.nc``, see :mod:`daskdiff.io.results`) or one
set's activations (:func:`daskdiff.io.shards.open_activations`); figure functions over
activations take a mapping ``{set name: activations Dataset}`` in the results' set order.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot: library code never
switches or reads the global backend, never calls ``plt.show``, and leaves no figure open in
pyplot's registry. :func:`save_figure` renders PNGs with Agg; in a notebook, run
``%matplotlib inline`` once and a returned figure displays (once) as the cell's output.

Every panel over layers puts the layers on the x axis in network order, by name; every legend
sits outside the data area, to the right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .core.differentiation import rdm_median
from .errors import InputError
from .io.layout import variable_name
from .io.results import open_results
from .stats import RDM_DIMS, require_rdm, select_set, set_difference, set_names

Activations = Mapping[str, xr.Dataset]

_SET_CMAP = "tab10"
_N_UNITS_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
"""Line styles of every n_units but the last (largest), which is solid, as in the second seed."""


# --------------------------------------------------------------------------- shared helpers


def _layers(ds: xr.Dataset) -> list[str]:
    return [str(v) for v in ds["layer"].values]


def set_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per image set, by position (the results' set order), the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps[_SET_CMAP]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _n_units_styles(levels: Sequence[str]) -> dict[str, Any]:
    """Dashed/dotted for the smaller n_units, solid for the largest (the seed's 200 vs 10000)."""
    levels = [str(n) for n in levels]
    styles = {n: _N_UNITS_STYLES[i % len(_N_UNITS_STYLES)] for i, n in enumerate(levels[:-1])}
    styles[levels[-1]] = "-"
    return styles


def _layer_axis(ax: Any, layers: Sequence[str]) -> np.ndarray:
    """Layer names as x tick labels, in network order, rotated so 20+ names stay readable."""
    x = np.arange(len(layers))
    ax.set_xticks(x, [str(v) for v in layers], rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_xlabel("layer (network order)")
    return x


def _legend_outside(ax: Any, handles: Sequence[Any] | None = None, **kwargs: Any) -> Any:
    """A legend to the right of the axes, outside the data area."""
    options = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=8)
    options.update(kwargs)
    if handles is not None:
        options["handles"] = list(handles)
    return ax.legend(**options)


def _figure(n_panels: int, ncols: int, panel: tuple[float, float], **subplots: Any) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with ``n_panels`` axes (extra grid cells hidden)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = int(np.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _warning(ds: xr.Dataset) -> str | None:
    """The results' warning, or a note that activations come from random weights."""
    if ds.attrs.get("warning"):
        return str(ds.attrs["warning"])
    weights = str(ds.attrs.get("weights", ""))
    if weights.startswith("random"):
        return f"weights: {weights}; results describe an untrained network"
    return None


def _suptitle(fig: Figure, title: str, ds: xr.Dataset) -> None:
    warning = _warning(ds)
    fig.suptitle(title + ("\n" + warning if warning else ""), fontsize=10, color="firebrick" if warning else "black")


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


def _sd_over_repeats(da: xr.DataArray) -> xr.DataArray:
    mean = _mean_over_repeats(da)
    count = da.notnull().sum("repeat")
    var = ((da - mean) ** 2).fillna(0).sum("repeat") / count.where(count > 0)
    return np.sqrt(var)


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


def _stored_layers(acts: xr.Dataset, substrate: str) -> list[str]:
    """The layers whose ``substrate`` variable (:func:`daskdiff.io.layout.variable_name`) ``acts`` holds, in stored order."""
    prefix = variable_name(substrate, "")
    return [str(v)[len(prefix) :] for v in acts.data_vars if str(v).startswith(prefix)]


def _image_names(paths: Sequence[Any]) -> list[str]:
    return [Path(str(p)).name for p in paths]


def _set_slice(ds: xr.Dataset, image_set: str | None) -> xr.Dataset:
    """Per-image variables of one set: from a results Dataset (padding dropped) or activations."""
    if "image_set" in ds.dims:
        if image_set is None:
            raise InputError(f"name the set: image_set=..., one of {set_names(ds)}")
        one = select_set(ds, image_set, ds.get("n_images"), ("image",))
        return one.rename({"image_path": "path"}) if "image_path" in one else one
    return ds


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Render ``fig`` to a PNG at ``path`` (Agg, written atomically); returns the path."""
    from .io.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))
    return Path(path)


# --------------------------------------------------------------------------- 1. by layer


SPECTRAL_VARIABLE = "normalized_spectral_differentiation"
"""The spectral results variable :func:`plot_results` draws (comparable across n_units)."""


def differentiation_by_layer(ds: xr.Dataset, ax: Any, *, substrate: str, n_units: str, sets: Sequence[str] | None = None, legend: bool = False,
                             variable: str = "differentiation") -> None:
    """Mean +- SD over repeats per layer, one line per image set, layers in network order.

    For ``n_units='all'`` (exact, one value) there is no error bar. ``legend=True`` puts a
    legend of the sets outside the axes (:func:`plot_results` draws one for the whole figure).
    ``variable``: ``differentiation`` (images) or a spectral variable of a movie job, e.g.
    :data:`SPECTRAL_VARIABLE`.
    """
    da = ds[variable].sel(substrate=substrate, n_units=str(n_units))
    colors = set_colors(set_names(ds))
    x = _layer_axis(ax, _layers(ds))
    for name in set_names(ds, sets):
        values = da.sel(image_set=name)
        mean = _mean_over_repeats(values)
        sd = _sd_over_repeats(values) if str(n_units) != "all" else None
        ax.errorbar(x, mean.values, yerr=None if sd is None else sd.values, marker="o", ms=3, capsize=2, color=colors[name], label=name)
    what = "differentiation" if variable == "differentiation" else variable.replace("_", " ").replace("normalized ", "normalized\n")
    ax.set_ylabel(f"{what}\n(mean ± SD over repeats)")
    ax.set_title(f"{substrate}, n_units={n_units}" + ("" if variable == "differentiation" else " (spectral)"), fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        _legend_outside(ax, title="image set")


def plot_results(ds: xr.Dataset | str | Path, path: str | Path | None = None, *, dpi: int = 120) -> Path | Figure:
    """Differentiation by layer: one panel per (substrate, n_units), SD error bars over repeats;
    with spectral differentiation in the results, a panel per (substrate, n_units) of
    :data:`SPECTRAL_VARIABLE` too (and none of the image measure when it was not measured).

    Writes a PNG to ``path`` (atomically) and returns the path, or returns the figure when
    ``path`` is None.
    """
    if not isinstance(ds, xr.Dataset):
        with open_results(ds) as opened:
            ds = opened.load()
    variables = [v for v in ("differentiation", SPECTRAL_VARIABLE)
                 if v in ds and (v != "differentiation" or ds[v].attrs.get("measured", 1))]
    panels = [(v, str(s), str(n)) for v in variables for s in ds["substrate"].values for n in ds["n_units"].values]
    fig, axes = _figure(len(panels), 3, (5.5, 4.2))
    for ax, (v, s, n) in zip(axes, panels):
        differentiation_by_layer(ds, ax, substrate=s, n_units=n, variable=v)
    handles, labels = axes[0].get_legend_handles_labels()
    _suptitle(fig, str(ds.attrs.get("title", "differentiation by layer")), ds)
    fig.legend(handles, labels, loc="outside right center", title="image set", frameon=False)
    if path is None:
        return fig
    return save_figure(fig, path, dpi=dpi)


# --------------------------------------------------------------------------- 2. sampling noise


def sampling_noise(ds: xr.Dataset, ax: Any, *, substrate: str, n_units: str, sets: Sequence[str] | None = None, exact: bool = True) -> None:
    """Distribution of differentiation over sampling repeats: a box per (layer, set).

    Boxes of the sets sit side by side in each layer's slot (median line, quartile box,
    whiskers at 1.5 IQR, outlying repeats as dots). With ``exact=True`` and an ``'all'``
    level in the results, the exact value (every unit) is a black diamond on each box: a
    sampled distribution centred away from it is a bias of sub-sampling, not noise.
    """
    n_units = str(n_units)
    da = ds["differentiation"].sel(substrate=substrate, n_units=n_units)
    if int(da.notnull().sum("repeat").max()) <= 1:
        sampled = [str(n) for n in ds["n_units"].values if int(ds["differentiation"].sel(substrate=substrate, n_units=n).notnull().sum("repeat").max()) > 1]
        raise InputError(f"n_units={n_units!r} has at most one value per layer (exact, or one repeat): no sampling distribution; choose one of {sampled}")
    names = set_names(ds, sets)
    colors = set_colors(set_names(ds))
    x = _layer_axis(ax, _layers(ds))
    width = 0.8 / len(names)
    show_exact = exact and "all" in [str(n) for n in ds["n_units"].values] and n_units != "all"
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
            values = ds["differentiation"].sel(substrate=substrate, n_units="all", image_set=name).isel(repeat=0).values
            ax.plot(pos, values, ls="none", marker="D", ms=2.5, color="black")
    handles: list[Any] = [Patch(facecolor=colors[n], alpha=0.55, label=n) for n in names]
    if show_exact:
        handles.append(Line2D([], [], ls="none", marker="D", ms=3, color="black", label="all units (exact)"))
    n_rep = int(da.notnull().sum("repeat").max())
    ax.set_ylabel("differentiation\n(one value per repeat)")
    ax.set_title(f"sampling noise: {substrate}, n_units={n_units}, {n_rep} repeats of random units", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    _legend_outside(ax, handles, title="image set")


def plot_sampling_noise(ds: xr.Dataset, *, substrates: Sequence[str] | None = None, sets: Sequence[str] | None = None) -> Figure:
    """:func:`sampling_noise` for every sampled n_units (one row each) of each substrate."""
    substrates = [str(s) for s in (substrates or ds["substrate"].values)]
    panels = [
        (s, str(n)) for s in substrates for n in ds["n_units"].values
        if int(ds["differentiation"].sel(substrate=s, n_units=n).notnull().sum("repeat").max()) > 1
    ]
    if not panels:
        raise InputError("no n_units level of these results has more than one repeat: there is no sampling distribution to show")
    fig, axes = _figure(len(panels), 1, (max(8.0, 0.55 * ds.sizes["layer"] + 2.5), 3.4))
    for ax, (s, n) in zip(axes, panels):
        sampling_noise(ds, ax, substrate=s, n_units=n, sets=sets)
    _suptitle(fig, "differentiation over sampling repeats", ds)
    return fig


# --------------------------------------------------------------------------- 3. n_units


def n_units_comparison(ds: xr.Dataset, ax: Any, *, substrate: str, sets: Sequence[str] | None = None, n_units: Sequence[str] | None = None) -> None:
    """Mean differentiation over repeats per layer: colour = image set, line style = n_units.

    The largest n_units is solid, the smaller ones dashed or dotted (the second seed's
    '200 dashed, 10000 solid').
    """
    levels = [str(n) for n in (n_units or ds["n_units"].values)]
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
    handles += [Line2D([], [], color="black", ls=styles[n], lw=1.3, label=f"n_units={n}") for n in levels]
    ax.set_ylabel("differentiation\n(mean over repeats)")
    ax.set_title(f"{substrate}: differentiation by number of units", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_outside(ax, handles, title="set / n_units")


def plot_n_units(ds: xr.Dataset, *, sets: Sequence[str] | None = None) -> Figure:
    """:func:`n_units_comparison`, one panel per substrate."""
    substrates = [str(s) for s in ds["substrate"].values]
    fig, axes = _figure(len(substrates), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.8))
    for ax, s in zip(axes, substrates):
        n_units_comparison(ds, ax, substrate=s, sets=sets)
    _suptitle(fig, "differentiation for different numbers of sampled units", ds)
    return fig


# --------------------------------------------------------------------------- 4. ratio


def ratio_to_reference(
    ds: xr.Dataset, ax: Any, *, substrate: str, reference: str | None = None, n_units: Sequence[str] | None = None,
    sets: Sequence[str] | None = None, log: bool = True, min_reference: float = 1e-3,
) -> None:
    """Mean differentiation of each set divided by the reference set's, per layer and n_units.

    ``reference`` defaults to ``'noise'`` when the results have that set. The ratio is of the
    means over repeats. Where the reference's mean is undefined, or below ``min_reference``
    times its median over layers (0 up to round-off: a ratio there would only measure the
    round-off), there is no ratio (a gap) and the title names the layers. ``log=True`` draws
    the ratio on a log axis, where 2x and 1/2x are equally far from 1.
    """
    ref = _reference(ds, reference)
    levels = [str(n) for n in (n_units or ds["n_units"].values)]
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
    handles += [Line2D([], [], color="black", ls=styles[n], lw=1.3, label=f"n_units={n}") for n in levels]
    handles.append(Line2D([], [], color="grey", lw=1, label=f"= {ref}"))
    ax.set_ylabel(f"differentiation / that of {ref!r}")
    title = f"{substrate}: differentiation relative to {ref!r}"
    if no_ref:
        title += f"\n(no ratio where {ref!r} is about 0 or undefined: {', '.join(no_ref)})"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _legend_outside(ax, handles, title="set / n_units")


def plot_ratio(ds: xr.Dataset, *, reference: str | None = None, sets: Sequence[str] | None = None) -> Figure:
    """:func:`ratio_to_reference`, one panel per substrate."""
    substrates = [str(s) for s in ds["substrate"].values]
    fig, axes = _figure(len(substrates), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.8))
    for ax, s in zip(axes, substrates):
        ratio_to_reference(ds, ax, substrate=s, reference=reference, sets=sets)
    _suptitle(fig, f"differentiation relative to the {_reference(ds, reference)!r} set", ds)
    return fig


# --------------------------------------------------------------------------- 5. pair distances


def _set_rdm(ds: xr.Dataset, image_set: str, substrate: str, n_units: str) -> xr.DataArray:
    rdm = select_set(require_rdm(ds), image_set, ds["n_images"], RDM_DIMS)
    return rdm.sel(substrate=substrate, n_units=str(n_units)).transpose("layer", *RDM_DIMS)


def pair_distances(ds: xr.Dataset, ax: Any, *, image_set: str, substrate: str, n_units: str) -> None:
    """Distance of every image pair across layers (thin lines) and their median (thick black).

    Distances are the job's mean RDM over repeats; the median is over each pair once (or the
    full square when the job's ``median_over`` is 'square'), so the black line is the
    differentiation of the mean RDM.
    """
    rdm = _set_rdm(ds, image_set, substrate, str(n_units)).values
    x = _layer_axis(ax, _layers(ds))
    i, j = np.triu_indices(rdm.shape[-1], k=1)
    color = set_colors(set_names(ds))[image_set]
    lines = ax.plot(x, rdm[:, i, j], lw=0.7, alpha=0.45, color=color)
    lines[0].set_label(f"one image pair ({len(i)} pairs)")
    ax.plot(x, rdm_median(rdm, str(ds.attrs.get("median_over", "condensed"))), lw=3, color="black", label="median over pairs")
    ax.set_ylabel("pair distance\n(mean over repeats)")
    ax.set_title(f"{image_set}: {substrate}, n_units={n_units}", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend_outside(ax)


def plot_pair_distances(ds: xr.Dataset, *, substrate: str | None = None, n_units: str | None = None, sets: Sequence[str] | None = None) -> Figure:
    """:func:`pair_distances`, one panel per set, same y axis (default: first substrate and n_units)."""
    substrate = substrate or str(ds["substrate"].values[0])
    n_units = str(n_units or ds["n_units"].values[0])
    names = set_names(ds, sets)
    fig, axes = _figure(len(names), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.2), sharey=True)
    for ax, name in zip(axes, names):
        pair_distances(ds, ax, image_set=name, substrate=substrate, n_units=n_units)
    axes[0].autoscale(axis="y")  # each panel fixed its bottom at 0 before the next one had data
    axes[0].set_ylim(bottom=0)
    _suptitle(fig, f"{_distance_label(ds)} between image pairs across layers ({substrate}, n_units={n_units})", ds)
    return fig


# --------------------------------------------------------------------------- 6. predictions


def _prediction_layer(acts: xr.Dataset, layer: str | None) -> str:
    stored = _stored_layers(acts, "units")
    if layer is None:
        if not stored:
            raise InputError("these activations store no units__<layer> variable")
        return stored[-1]
    if layer not in stored:
        raise InputError(f"layer {layer!r} has no stored units; stored layers are {stored}")
    return layer


def class_labels(acts: Mapping[str, xr.Dataset] | xr.Dataset) -> dict[int, str]:
    """Class index -> label, for every class in some image's top 5 (from the shards' coords)."""
    datasets = [acts] if isinstance(acts, xr.Dataset) else list(acts.values())
    out: dict[int, str] = {}
    for a in datasets:
        for c, lab in zip(np.ravel(a["top5_class"].values), np.ravel(a["top5_label"].values)):
            out[int(c)] = str(lab)
    return out


def top_classes(acts: Mapping[str, xr.Dataset], k: int = 3) -> list[int]:
    """Sorted union, over the sets, of the classes among some image's top ``k``."""
    return sorted({int(c) for a in acts.values() for c in np.ravel(a["top5_class"].values[:, :k])})


def prediction_heatmap(
    acts: xr.Dataset, ax: Any, *, classes: Sequence[int] | None = None, labels: Mapping[int, str] | None = None,
    layer: str | None = None, title: str | None = None,
) -> Any:
    """Images x classes of the prediction layer (the last stored ``units__`` layer).

    ``classes`` selects and orders columns (default: all); ``labels`` names them (default:
    :func:`class_labels` of ``acts``; classes without a label show their index). Softmax
    outputs are drawn on a fixed 0-1 scale. Returns the image artist (for a colour bar).
    """
    layer = _prediction_layer(acts, layer)
    values = np.asarray(acts[variable_name("units", layer)].values, dtype=np.float64)
    index = np.arange(values.shape[1]) if classes is None else np.asarray(classes, dtype=np.int64)
    values = values[:, index]
    softmax = str(acts.attrs.get("predictions_layer_values", "")) == "softmax"
    im = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0 if softmax else None, vmax=1 if softmax else None)
    names = _image_names(acts["path"].values)
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.set_ylabel("image")
    if len(index) <= 60:
        labels = class_labels(acts) if labels is None else labels
        ax.set_xticks(np.arange(len(index)), [labels.get(int(c), str(int(c))) for c in index], rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_xlabel("class (top classes of the images shown)")
    else:
        ax.set_xlabel(f"class index ({len(index)} classes)")
    ax.set_title(title or f"{layer} ({'probability' if softmax else 'activation'})", fontsize=9)
    return im


def plot_predictions(acts: Activations, *, classes: Literal["top", "all"] | Sequence[int] = "top", k: int = 3, layer: str | None = None) -> Figure:
    """:func:`prediction_heatmap` per set (rows) on shared columns and one colour bar.

    ``classes='top'``: the union over all sets of each image's top ``k`` classes, so the
    columns are the same in every row; ``'all'``: every class (the seed's full layer).
    """
    if isinstance(classes, str) and classes not in ("top", "all"):
        raise InputError(f"classes must be 'top', 'all' or a list of class indices, got {classes!r}")
    columns = top_classes(acts, k) if classes == "top" else None if classes == "all" else list(classes)
    first = next(iter(acts.values()))
    n_cols = len(columns) if columns is not None else first[variable_name("units", _prediction_layer(first, layer))].shape[1]
    heights = [max(1.0, 0.16 * a.sizes["image"] + 0.4) for a in acts.values()]
    fig = Figure(figsize=(min(16.0, max(7.0, 0.22 * n_cols + 3)), sum(heights) + 1.6), layout="constrained")
    axes = fig.subplots(len(acts), 1, squeeze=False, height_ratios=heights, sharex=True).ravel()
    im = None
    labels = class_labels(acts)
    for ax, (name, a) in zip(axes, acts.items()):
        im = prediction_heatmap(a, ax, classes=columns, labels=labels, layer=layer, title=f"set {name!r}")
    for ax in axes[:-1]:
        ax.set_xlabel("")
    softmax = str(first.attrs.get("predictions_layer_values", "")) == "softmax"
    fig.colorbar(im, ax=list(axes), label="probability" if softmax else "activation", shrink=0.8)
    _suptitle(fig, f"prediction layer ({_prediction_layer(first, layer)}), images x classes", first)
    return fig


def top1_table(ds: xr.Dataset) -> Any:
    """One row per image: set, image file, top-1 label and probability, top-5 labels (pandas)."""
    import pandas as pd

    rows = []
    sets = set_names(ds) if "image_set" in ds.dims else [str(ds["image_set"].values[0])]
    for name in sets:
        one = _set_slice(ds, name if "image_set" in ds.dims else None)
        for p, lab, prob, top5 in zip(one["path"].values, one["top1_label"].values, one["top1_prob"].values, one["top5_label"].values):
            rows.append({"image_set": name, "image": Path(str(p)).name, "top1_label": str(lab), "top1_prob": float(prob), "top5": ", ".join(map(str, top5))})
    return pd.DataFrame(rows)


def top1_predictions(ds: xr.Dataset, ax: Any, *, image_set: str | None = None) -> None:
    """Horizontal bars: each image's top-1 probability, labelled with the top-1 class."""
    one = _set_slice(ds, image_set)
    names = _image_names(one["path"].values)
    probs = np.asarray(one["top1_prob"].values, dtype=np.float64)
    labels = [str(v) for v in one["top1_label"].values]
    y = np.arange(len(names))
    color = set_colors(set_names(ds))[image_set] if image_set is not None and "image_set" in ds.dims else "tab:blue"
    ax.barh(y, probs, color=color, alpha=0.7)
    for yi, p, lab in zip(y, probs, labels):
        ax.text(0.02, yi, f"{lab} ({p:.2f})", va="center", ha="left", fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 probability")
    ax.set_ylabel("image")
    ax.set_title(f"top-1 class: {image_set}" if image_set else "top-1 class", fontsize=9)


def plot_top1(ds: xr.Dataset, *, sets: Sequence[str] | None = None) -> Figure:
    """:func:`top1_predictions` for each set of a results Dataset, side by side."""
    names = set_names(ds, sets)
    height = 0.22 * int(ds["n_images"].max()) + 1.2
    fig, axes = _figure(len(names), 3, (4.2, height))
    for ax, name in zip(axes, names):
        top1_predictions(ds, ax, image_set=name)
    _suptitle(fig, "top-1 predictions per image", ds)
    return fig


def plot_images(ds: xr.Dataset, *, sets: Sequence[str] | None = None, max_images: int = 8, size: int = 128) -> Figure:
    """Thumbnails of each set's images (rows), titled with the top-1 label and probability.

    Images are read from the results' ``image_path``; a file that is gone shows as 'missing'.
    """
    from PIL import Image

    names = set_names(ds, sets)
    n_cols = min(max_images, int(ds["n_images"].max()))
    fig = Figure(figsize=(1.5 * n_cols + 0.6, 1.75 * len(names) + 0.7), layout="constrained")
    axes = fig.subplots(len(names), n_cols, squeeze=False)
    for row, name in zip(axes, names):
        one = _set_slice(ds, name)
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= one.sizes["image"]:
                ax.set_visible(False)
                continue
            path = Path(str(one["path"].values[c]))
            if path.is_file():
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    img.thumbnail((size, size))
                    ax.imshow(np.asarray(img))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_title(f"{one['top1_label'].values[c]} ({float(one['top1_prob'].values[c]):.2f})", fontsize=7)
        row[0].set_ylabel(name, fontsize=9)
    _suptitle(fig, "images and their top-1 class (probability)", ds)
    return fig


# --------------------------------------------------------------------------- 7. filters


def _filter_layers(acts: xr.Dataset) -> list[str]:
    return _stored_layers(acts, "filter_mean")


def _conv_layers(acts: xr.Dataset) -> list[str]:
    """Layers with filter means over a spatial map (conv/pool), else every filter-mean layer.

    A dense layer's 'filters' are its units (no spatial mean): a heat map of thousands of
    them shows little, so figures leave them out unless asked for.
    """
    layers = _filter_layers(acts)
    return [name for name in layers if f"channel__{name}" in acts.coords] or layers


def _filter_values(acts: xr.Dataset, layer: str) -> np.ndarray:
    name = variable_name("filter_mean", layer)
    if name not in acts:
        raise InputError(f"{name!r} is not stored in these activations; layers with filter means are {_filter_layers(acts)}")
    return np.asarray(acts[name].values, dtype=np.float64)


def zscore_stats(values: np.ndarray | Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and SD (ddof=0) over all entries of one matrix, or of several pooled."""
    flat = np.concatenate([np.ravel(v) for v in values]) if isinstance(values, (list, tuple)) else np.ravel(values)
    return float(flat.mean()), float(flat.std())


def filter_heatmap(acts: xr.Dataset, ax: Any, *, layer: str, stats: tuple[float, float] | None = None, vlim: float = 2.5, title: str | None = None) -> Any:
    """Images x filters of one layer's mean filter activation, as z-scores.

    ``z = (x - mean) / sd`` with the mean and SD over all images and filters of this set and
    layer (or ``stats`` from :func:`zscore_stats`, e.g. pooled over sets), on a diverging
    scale clipped at ``+-vlim``. Returns the image artist (for a colour bar).
    """
    x = _filter_values(acts, layer)
    mean, sd = stats if stats is not None else zscore_stats(x)
    z = (x - mean) / sd if sd > 0 and np.isfinite(sd) else np.zeros_like(x)
    # sharp cells while each filter has a few pixels; smoothed when many filters share a pixel
    interpolation = "nearest" if x.shape[1] <= 256 else "antialiased"
    im = ax.imshow(z, aspect="auto", interpolation=interpolation, cmap="RdBu_r", vmin=-vlim, vmax=vlim)
    ax.set_yticks(np.arange(x.shape[0]), _image_names(acts["path"].values), fontsize=6)
    ax.set_xlabel("filter", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{title or layer}: {x.shape[1]} filters", fontsize=8)
    return im


def plot_filter_heatmaps(acts: Activations, *, layers: Sequence[str] | None = None, pooled: bool = False, vlim: float = 2.5) -> Figure:
    """:func:`filter_heatmap` for each layer (rows) and set (columns), one colour bar.

    ``layers`` defaults to the conv and pool layers (all filter-mean layers if none has
    channels).
    ``pooled=False`` z-scores each set and layer on its own statistics (as the second seed
    did); ``pooled=True`` uses each layer's statistics over all sets, so colours compare
    across a row.
    """
    first = next(iter(acts.values()))
    layers = list(layers) if layers is not None else _conv_layers(first)
    per_row = [max(1.0, 0.11 * a.sizes["image"] + 0.5) for a in acts.values()]
    row_h = max(per_row)
    fig = Figure(figsize=(4.2 * len(acts) + 1.6, row_h * len(layers) + 1.0), layout="constrained")
    axes = fig.subplots(len(layers), len(acts), squeeze=False)
    im = None
    for row, layer in zip(axes, layers):
        stats = zscore_stats([_filter_values(a, layer) for a in acts.values()]) if pooled else None
        for ax, (name, a) in zip(row, acts.items()):
            im = filter_heatmap(a, ax, layer=layer, stats=stats, vlim=vlim, title=f"{layer} ({name})")
    for ax in axes[:, 1:].ravel():
        ax.set_yticklabels([])
    for ax in axes[:-1].ravel():
        ax.set_xlabel("")
    scope = "each layer over all sets" if pooled else "each set and layer"
    fig.colorbar(im, ax=list(axes.ravel()), label=f"z-score of mean filter activation ({scope})", shrink=min(1.0, 6 / len(layers) + 0.2), aspect=40)
    _suptitle(fig, "mean filter activation: images (rows) x filters (columns)", first)
    return fig


def default_histogram_layer(acts: xr.Dataset) -> str:
    """The middle one of the layers with channels (conv/pool), else of all filter-mean layers."""
    pick = _conv_layers(acts)
    if not pick:
        raise InputError("these activations store no filter_mean__<layer> variable")
    return pick[len(pick) // 2]


def filter_histogram(acts: xr.Dataset, ax: Any, *, layer: str, images: int | Sequence[int] = 3, bins: int = 20, title: str | None = None) -> None:
    """Histogram of the mean filter activations of a few images of one set, on shared bins."""
    x = _filter_values(acts, layer)
    picks = list(range(min(images, x.shape[0]))) if isinstance(images, (int, np.integer)) else [int(i) for i in images]
    names = _image_names(acts["path"].values)
    edges = np.histogram_bin_edges(x[picks], bins=bins)
    from matplotlib import colormaps

    cmap = colormaps["Dark2"]
    for k, i in enumerate(picks):
        color = cmap(k % cmap.N)
        ax.hist(x[i], bins=edges, histtype="step", lw=1.6, color=color, label=names[i])
    ax.set_xlabel("mean activation of a filter")
    ax.set_ylabel("number of filters")
    ax.set_title(title or f"{layer}: {x.shape[1]} filters", fontsize=9)
    _legend_outside(ax, title="image")


def plot_filter_histograms(acts: Activations, *, layer: str | None = None, images: int | Sequence[int] = 3, bins: int = 20) -> Figure:
    """:func:`filter_histogram` for each set (one panel each), same layer and bins count."""
    first = next(iter(acts.values()))
    layer = layer or default_histogram_layer(first)
    fig, axes = _figure(len(acts), 1, (7.5, 2.6))
    for ax, (name, a) in zip(axes, acts.items()):
        filter_histogram(a, ax, layer=layer, images=images, bins=bins, title=f"set {name!r}: {layer}")
    _suptitle(fig, f"distribution of mean filter activations in {layer}", first)
    return fig


# --------------------------------------------------------------------------- 8. differences


def set_differences(
    ds: xr.Dataset, ax: Any, *, substrate: str, n_units: str, reference: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None, n_boot: int = 1000, seed: int | None = 0, ci: float = 0.95,
) -> None:
    """Difference of differentiation per layer, with bootstrap confidence bands over images.

    ``pairs`` of sets ``(a, b)`` plot ``a - b`` (default: each set minus the reference,
    ``'noise'`` when present). Bands are :func:`daskdiff.stats.set_difference`'s percentile
    intervals from the mean RDMs: image sampling only (see there).
    """
    if pairs is None:
        ref = _reference(ds, reference)
        pairs = [(name, ref) for name in set_names(ds) if name != ref]
    colors = set_colors(set_names(ds))
    x = _layer_axis(ax, _layers(ds))
    for a, b in pairs:
        res = set_difference(ds, a, b, substrate=substrate, n_units=str(n_units), n_boot=n_boot, seed=seed, ci=ci)
        ax.fill_between(x, res["ci_low"].values, res["ci_high"].values, color=colors[a], alpha=0.25, lw=0)
        ax.plot(x, res["difference"].values, marker="o", ms=3, color=colors[a], label=f"{a} − {b}")
    ax.axhline(0.0, color="grey", lw=1)
    ax.set_ylabel("difference of\ndifferentiation")
    ax.set_title(f"{substrate}, n_units={n_units}: {ci:.0%} bootstrap CI over images ({n_boot} resamples)", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_outside(ax, title="sets (band: CI)")


def plot_set_differences(
    ds: xr.Dataset, *, reference: str | None = None, pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 1000, seed: int | None = 0, ci: float = 0.95,
) -> Figure:
    """:func:`set_differences`, one panel per (substrate, n_units)."""
    panels = [(str(s), str(n)) for s in ds["substrate"].values for n in ds["n_units"].values]
    fig, axes = _figure(len(panels), 1, (max(8.0, 0.45 * ds.sizes["layer"] + 3), 3.2))
    for ax, (s, n) in zip(axes, panels):
        set_differences(ds, ax, substrate=s, n_units=n, reference=reference, pairs=pairs, n_boot=n_boot, seed=seed, ci=ci)
    _suptitle(fig, "set-to-set differences of differentiation (bootstrap over images)", ds)
    return fig
