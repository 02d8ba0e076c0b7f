"""Top layer, figures: the pieces every figure shares: set colours, the panel grid, legends,
titles with the results' warning, stored layer and image names, and writing a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..io.atomic import atomic_write
from ..io.layout import variable_name

Activations = Mapping[str, xr.Dataset]
"""What figures over activations take: ``{set name: activations Dataset}`` in the results' set order."""

_SET_CMAP = "tab10"


def set_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per image set, by position (the results' set order), the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps[_SET_CMAP]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def legend_outside(ax: Any, handles: Sequence[Any] | None = None, **kwargs: Any) -> Any:
    """A legend to the right of the axes, outside the data area."""
    options = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=8)
    options.update(kwargs)
    if handles is not None:
        options["handles"] = list(handles)
    return ax.legend(**options)


def panel_grid(n_panels: int, ncols: int) -> tuple[int, int]:
    """``(rows, columns)`` for ``n_panels`` with at most ``ncols`` columns: as few rows as that
    allows, then as few columns as fill them, so that the grid has fewer than one row of empty
    cells (4 panels at most 3 wide: 2 x 2, not 2 x 3)."""
    nrows = max(1, int(np.ceil(n_panels / max(1, ncols))))
    return nrows, max(1, int(np.ceil(n_panels / nrows)))


def panel_figure(n_panels: int, ncols: int, panel: tuple[float, float], **subplots: Any) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with ``n_panels`` axes on :func:`panel_grid`'s grid; the grid's
    cells past the last panel (fewer than a row) hold no axes."""
    nrows, ncols = panel_grid(n_panels, ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots).ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, list(axes[:n_panels])


def _warning(ds: xr.Dataset) -> str | None:
    """The results' warning, or a note that activations come from random weights."""
    if ds.attrs.get("warning"):
        return str(ds.attrs["warning"])
    weights = str(ds.attrs.get("weights", ""))
    if weights.startswith("random"):
        return f"weights: {weights}; results describe an untrained network"
    return None


def suptitle(fig: Figure, title: str, ds: xr.Dataset) -> None:
    """Title ``fig``; with the results' warning (or random weights) on a second line, in red."""
    warning = _warning(ds)
    fig.suptitle(title + ("\n" + warning if warning else ""), fontsize=10, color="firebrick" if warning else "black")


def stored_layers(acts: xr.Dataset, substrate: str) -> list[str]:
    """The layers whose ``substrate`` variable (:func:`daskdiff.io.layout.variable_name`) ``acts`` holds, in stored order."""
    prefix = variable_name(substrate, "")
    return [str(v)[len(prefix) :] for v in acts.data_vars if str(v).startswith(prefix)]


def image_names(paths: Sequence[Any]) -> list[str]:
    """The file names of ``paths`` (tick labels of per-image panels)."""
    return [Path(str(p)).name for p in paths]


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Render ``fig`` to a PNG at ``path`` (Agg, written atomically); returns the path."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))
