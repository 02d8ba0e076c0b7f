"""Top layer, figures of what the network predicts: heat maps of the prediction layer's
outputs from activations (:func:`daskdiff.io.shards.open_activations`), and each image's top-1
class from a results file, as bars, a table or under the image's thumbnail."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..errors import InputError
from ..io.layout import variable_name
from ..stats import select_set, set_names
from .common import Activations, image_names, panel_figure, set_colors, stored_layers, suptitle


def _set_slice(ds: xr.Dataset, image_set: str | None) -> xr.Dataset:
    """Per-image variables of one set: from a results Dataset (padding dropped) or activations."""
    if "image_set" in ds.dims:
        if image_set is None:
            raise InputError(f"name the set: image_set=..., one of {set_names(ds)}")
        one = select_set(ds, image_set, ds.get("n_images"), ("image",))
        return one.rename({"image_path": "path"}) if "image_path" in one else one
    return ds


def _prediction_layer(acts: xr.Dataset, layer: str | None) -> str:
    stored = stored_layers(acts, "units")
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
    names = image_names(acts["path"].values)
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
    suptitle(fig, f"prediction layer ({_prediction_layer(first, layer)}), images x classes", first)
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
    names = image_names(one["path"].values)
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
    fig, axes = panel_figure(len(names), 3, (4.2, height))
    for ax, name in zip(axes, names):
        top1_predictions(ds, ax, image_set=name)
    suptitle(fig, "top-1 predictions per image", ds)
    return fig


def plot_images(ds: xr.Dataset, *, sets: Sequence[str] | None = None, max_images: int = 8, size: int = 128) -> Figure:
    """Thumbnails of each set's images (rows), titled with the top-1 label and probability.

    Images are read from the results' ``image_path``; a file that is gone shows as 'missing'.
    Each row says how many of the set's images it shows ('8 of 30 images'), the first
    ``max_images`` in the set's order.
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
        total = int(ds["n_images"].sel(image_set=name))
        row[0].set_ylabel(f"{name}\n{min(total, n_cols)} of {total} images", fontsize=9)
    suptitle(fig, "images and their top-1 class (probability)", ds)
    return fig


