"""Figures from a results Dataset (shared by ``daskdiff plot`` and the notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def differentiation_by_layer(ds: xr.Dataset, ax: Any, *, substrate: str, n_units: str) -> None:
    """Mean +- SD over repeats per layer, one line per image set, layers in network order."""
    da = ds["differentiation"].sel(substrate=substrate, n_units=n_units)
    x = np.arange(ds.sizes["layer"])
    for name in ds["image_set"].values:
        values = da.sel(image_set=name)
        mean = values.mean("repeat", skipna=True)
        sd = values.std("repeat", skipna=True) if n_units != "all" else xr.zeros_like(mean)
        ax.errorbar(x, mean, yerr=sd, marker="o", ms=3, capsize=2, label=str(name))
    ax.set_xticks(x)
    ax.set_xticklabels([str(v) for v in ds["layer"].values], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("differentiation")
    ax.set_title(f"{substrate}, n_units={n_units}", fontsize=9)
    ax.grid(alpha=0.3)


def plot_results(ds: xr.Dataset | str | Path, path: str | Path | None = None, *, dpi: int = 120) -> Path | Any:
    """Differentiation by layer: one panel per (substrate, n_units), SD error bars over repeats.

    Writes a PNG to ``path`` (atomically) and returns the path, or returns the figure when
    ``path`` is None.
    """
    from .storage import atomic_write

    if not isinstance(ds, xr.Dataset):
        ds = xr.open_dataset(ds)
    plt = _pyplot()
    panels = [(s, n) for s in ds["substrate"].values for n in ds["n_units"].values]
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (s, n) in zip(axes.flat, panels):
        differentiation_by_layer(ds, ax, substrate=str(s), n_units=str(n))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    warning = ds.attrs.get("warning")
    title = ds.attrs.get("title", "")
    fig.suptitle(title + ("\n" + warning if warning else ""), fontsize=10, color="firebrick" if warning else "black")
    fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.885, 0.5), title="image set", frameon=False)
    if path is None:
        return fig
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
