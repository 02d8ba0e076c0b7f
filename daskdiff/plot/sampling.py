"""Top layer, the figure that compares sampling modes: differentiation by layer of one job run with
``analysis.sampling`` random, active and weighted (one results file each), per set and number of
units, and its ratio to a reference set (white noise)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import InputError
from ..io.results_attrs import n_units_text
from ..stats import set_names
from .common import legend_outside, set_colors, suptitle

MODE_STYLES = {"random": "-", "active": "--", "weighted=mean": ":", "weighted=variance": "-."}
"""Line style of each sampling mode (colours are the image sets')."""


def mode_means(ds: xr.Dataset, *, substrate: str, n_units: str) -> xr.DataArray | None:
    """Mean differentiation over defined repeats, ``(image_set, layer)``, at ``n_units`` (None if
    the results have no such level)."""
    labels = [n_units_text(v) for v in ds["n_units"].values]
    if str(n_units) not in labels:
        return None
    da = ds["differentiation"].sel(substrate=substrate).isel(n_units=labels.index(str(n_units)))
    count = da.notnull().sum("repeat")
    return da.fillna(0).sum("repeat") / count.where(count > 0)


def plot_sampling_modes(results: Mapping[str, xr.Dataset], *, reference: str | None = None, substrate: str = "units",
                        n_units: Sequence[Any] = (200, 10000), min_reference: float = 1e-3) -> Figure:
    """Differentiation by layer for each sampling mode (line style) and set (colour), one row per
    ``n_units``; with ``reference`` a second column: each set's differentiation over the
    reference set's (log axis), per mode.

    Parameters
    ----------
    results : mapping
        Sampling mode (e.g. the results' ``sampling_mode`` attribute) -> results Dataset; the
        jobs should differ only in ``analysis.sampling``. Layers are those of the first.
    reference : str, optional
        The set the others are divided by (white noise in the seeds); a gap where its mean is
        below ``min_reference`` times its median over layers (a ratio there only measures
        round-off).
    n_units : sequence
        The levels drawn, each where some results have it (``'all'`` allowed); if the results
        have none of them, every level of the first results.
    """
    if not results:
        raise InputError("plot_sampling_modes needs at least one results Dataset (sampling mode -> results)")
    first = next(iter(results.values()))
    layers = [str(v) for v in first["layer"].values]
    sets = set_names(first)
    colors = set_colors(sets)
    levels = [n_units_text(n) for n in n_units]
    means = {n: {m: mode_means(ds.sel(layer=layers), substrate=substrate, n_units=n) for m, ds in results.items()} for n in levels}
    levels = [n for n in levels if any(v is not None for v in means[n].values())]
    if not levels:  # e.g. a small job's n_units: draw every level it has
        levels = [n_units_text(v) for v in first["n_units"].values]
        means = {n: {m: mode_means(ds.sel(layer=layers), substrate=substrate, n_units=n) for m, ds in results.items()} for n in levels}
    ncols = 2 if reference is not None else 1
    fig = Figure(figsize=(6.0 * ncols + 1.8, 3.4 * len(levels)), layout="constrained")
    axes = fig.subplots(len(levels), ncols, squeeze=False)
    x = np.arange(len(layers))
    for row, n in zip(axes, levels):
        for mode, mean in means[n].items():
            if mean is None:
                continue
            ls = MODE_STYLES.get(mode, (0, (1, 1)))
            for name in sets:
                row[0].plot(x, mean.sel(image_set=name).values, ls=ls, marker="o", ms=2.5, lw=1.3, color=colors[name])
            if reference is not None:
                ref = mean.sel(image_set=reference)
                ratio = mean / ref.where(ref > min_reference * ref.median("layer"))
                for name in (s for s in sets if s != reference):
                    row[1].plot(x, ratio.sel(image_set=name).values, ls=ls, marker="o", ms=2.5, lw=1.3, color=colors[name])
        row[0].set_ylabel("differentiation\n(mean over repeats)")
        row[0].set_title(f"{substrate}, n_units={n}", fontsize=9)
        if reference is not None:
            row[1].axhline(1.0, color="grey", lw=1)
            row[1].set_yscale("log")
            row[1].set_ylabel(f"ratio to {reference!r}")
            row[1].set_title(f"relative to {reference!r}, n_units={n}", fontsize=9)
        for ax in row:
            ax.set_xticks(x, layers, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[s], lw=2, label=s) for s in sets]
    handles += [Line2D([], [], color="black", ls=MODE_STYLES.get(m, (0, (1, 1))), label=f"sampling: {m}") for m in results]
    legend_outside(axes[0][-1], handles)
    suptitle(fig, "differentiation by layer, by sampling mode", first)
    return fig
