"""Top layer, figures of mean filter activations (``filter_mean__<layer>`` of
:func:`daskdiff.io.shards.open_activations`): images x filters heat maps as z-scores, and
histograms over the filters of a few images."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..errors import InputError
from ..io.layout import variable_name
from .common import Activations, image_names, legend_outside, panel_figure, stored_layers, suptitle


def _filter_layers(acts: xr.Dataset) -> list[str]:
    return stored_layers(acts, "filter_mean")


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
    ax.set_yticks(np.arange(x.shape[0]), image_names(acts["path"].values), fontsize=6)
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
    suptitle(fig, "mean filter activation: images (rows) x filters (columns)", first)
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
    names = image_names(acts["path"].values)
    edges = np.histogram_bin_edges(x[picks], bins=bins)
    from matplotlib import colormaps

    cmap = colormaps["Dark2"]
    for k, i in enumerate(picks):
        color = cmap(k % cmap.N)
        ax.hist(x[i], bins=edges, histtype="step", lw=1.6, color=color, label=names[i])
    ax.set_xlabel("mean activation of a filter")
    ax.set_ylabel("number of filters")
    ax.set_title(title or f"{layer}: {x.shape[1]} filters", fontsize=9)
    legend_outside(ax, title="image")


def plot_filter_histograms(acts: Activations, *, layer: str | None = None, images: int | Sequence[int] = 3, bins: int = 20) -> Figure:
    """:func:`filter_histogram` for each set (one panel each), same layer and bins count."""
    first = next(iter(acts.values()))
    layer = layer or default_histogram_layer(first)
    fig, axes = panel_figure(len(acts), 1, (7.5, 2.6))
    for ax, (name, a) in zip(axes, acts.items()):
        filter_histogram(a, ax, layer=layer, images=images, bins=bins, title=f"set {name!r}: {layer}")
    suptitle(fig, f"distribution of mean filter activations in {layer}", first)
    return fig

