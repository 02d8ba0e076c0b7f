"""Top layer, figures: network versus mouse: a heat map of Spearman's rho per network layer and
neural group (significant cells marked), and the values behind one cell, stimulus by stimulus."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from ..comparison import comparison_table, group_columns
from .common import panel_figure


def _table(comparison: pd.DataFrame | xr.Dataset) -> pd.DataFrame:
    return comparison_table(comparison) if isinstance(comparison, xr.Dataset) else comparison


def _units_label(n_units: Any) -> str:
    return "all units" if str(n_units) in ("-1", "all") else f"{n_units} units"


def comparison_heatmap(comparison: pd.DataFrame | xr.Dataset, ax: Any, *, substrate: str, n_units: int,
                       alpha: float = 0.05, colorbar: bool = True) -> Any:
    """Rho of every network layer (rows, network order) and neural group (columns) of one
    (substrate, n_units); a cell whose Holm-adjusted p is below ``alpha`` is marked ``*``.

    ``comparison`` is the table :func:`daskdiff.comparison.comparison_table` makes (or the CSV
    ``daskdiff compare`` wrote, read back) or the Dataset of :func:`daskdiff.comparison.compare`.
    Returns the image (for a colour bar).
    """
    frame = _table(comparison)
    one = frame[(frame["substrate"].astype(str) == str(substrate)) & (frame["n_units"].astype(str) == str(n_units))]
    groups = group_columns(frame)
    label = one[groups].astype(str).agg(" / ".join, axis=1)
    layers = list(dict.fromkeys(one["layer"]))
    columns = list(dict.fromkeys(label))
    rho = one.assign(group=label).pivot(index="layer", columns="group", values="spearman_rho").reindex(index=layers, columns=columns)
    p = one.assign(group=label).pivot(index="layer", columns="group", values="p_holm").reindex(index=layers, columns=columns)
    image = ax.imshow(rho.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(rho.to_numpy(dtype=float)):
        if np.isfinite(value):
            star = "*" if p.iloc[i, j] < alpha else ""
            ax.text(j, i, f"{value:.2f}{star}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set_xlabel(" / ".join(groups))
    ax.set_ylabel("network layer")
    ax.set_title(f"{substrate}, {_units_label(n_units)}", fontsize=9)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="Spearman rho", shrink=0.8)
    return image


def plot_comparison(comparison: pd.DataFrame | xr.Dataset, *, alpha: float = 0.05) -> Figure:
    """One heat map (:func:`comparison_heatmap`) per (substrate, n_units) of a comparison."""
    frame = _table(comparison)
    panels = list(dict.fromkeys(zip(frame["substrate"], frame["n_units"])))
    n_layers = frame["layer"].nunique()
    n_groups = len(frame.drop_duplicates(group_columns(frame)))
    fig, axes = panel_figure(len(panels), 2, (2.2 + 0.7 * n_groups, 1.6 + 0.35 * n_layers))
    for ax, (substrate, n_units) in zip(axes, panels):
        comparison_heatmap(frame, ax, substrate=substrate, n_units=n_units, alpha=alpha)
    n = frame["n_stimuli"].max()
    fig.suptitle(f"network versus neural groups: Spearman rho across {n} stimuli (* Holm-adjusted p < {alpha:g} across layers)",
                 fontsize=10)
    return fig


def comparison_scatter(ds: xr.Dataset, ax: Any, *, layer: str, group: str, substrate: str | None = None,
                       n_units: int | None = None) -> Any:
    """The values behind one cell of a :func:`daskdiff.comparison.compare` Dataset: the network's
    value (x) against the group's mean over sessions (y), one point per stimulus, named."""
    pick = {"layer": layer}
    pick["substrate"] = substrate if substrate is not None else str(ds["substrate"].values[0])
    pick["n_units"] = n_units if n_units is not None else int(ds["n_units"].values[0])
    x = ds["network_value"].sel(pick).values
    y = ds["neural_value"].sel(group=group).values
    ax.scatter(x, y, color="0.2", s=18)
    for name, xi, yi in zip(ds["stimulus"].values, x, y):
        ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    cell = ds.sel(pick).sel(group=group)
    ax.set_xlabel(f"{layer}: {ds.attrs.get('network_variable', 'value')}\n(mean over repeats)", fontsize=8)
    ax.set_ylabel(f"{group}: {ds.attrs.get('value', 'value')}", fontsize=8)
    ax.set_title(f"rho = {float(cell['spearman_rho']):.2f}, p = {float(cell['p_value']):.3g} "
                 f"({int(cell['n_stimuli'])} stimuli)", fontsize=9)
    return ax


def plot_comparison_scatter(ds: xr.Dataset, *, layer: str, groups: list[str] | None = None, substrate: str | None = None,
                            n_units: int | None = None) -> Figure:
    """:func:`comparison_scatter` of one network layer against each neural group (default: all), side by side."""
    groups = list(ds["group"].values) if groups is None else groups
    fig, axes = panel_figure(len(groups), 3, (4.0, 3.2))
    for ax, group in zip(axes, groups):
        comparison_scatter(ds, ax, layer=layer, group=str(group), substrate=substrate, n_units=n_units)
    fig.suptitle(f"network layer {layer} against each neural group, one point per stimulus", fontsize=10)
    return fig
