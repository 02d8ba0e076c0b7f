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

The figures live by what they show: :mod:`~daskdiff.plot.differentiation` (from the results
file), :mod:`~daskdiff.plot.predictions` (the prediction layer and top-1 classes),
:mod:`~daskdiff.plot.filters` (mean filter activations), :mod:`~daskdiff.plot.comparison`
(network versus neural groups, from :func:`daskdiff.comparison.compare`), :mod:`~daskdiff.plot.sampling`
(one job run with several sampling modes), :mod:`~daskdiff.plot.controls` (each
movie's scrambled control), on the shared pieces of
:mod:`~daskdiff.plot.common`. This package names them all: ``import daskdiff.plot as dp``.
"""

from .common import Activations, save_figure, set_colors
from .comparison import comparison_heatmap, comparison_scatter, plot_comparison, plot_comparison_scatter
from .controls import movie_controls
from .differentiation import (
    SPECTRAL_VARIABLE,
    differentiation_by_layer,
    n_units_comparison,
    noise_reference,
    pair_distances,
    plot_n_units,
    plot_pair_distances,
    plot_ratio,
    plot_results,
    plot_sampling_noise,
    plot_set_differences,
    ratio_to_reference,
    sampling_noise,
    set_differences,
    units_used_text,
)
from .filters import (
    default_histogram_layer,
    filter_heatmap,
    filter_histogram,
    plot_filter_heatmaps,
    plot_filter_histograms,
    zscore_stats,
)
from .sampling import MODE_STYLES, mode_means, plot_sampling_modes
from .predictions import (
    class_labels,
    plot_images,
    plot_predictions,
    plot_top1,
    prediction_heatmap,
    top1_predictions,
    top1_table,
    top_classes,
)

__all__ = [
    "MODE_STYLES",
    "SPECTRAL_VARIABLE",
    "Activations",
    "class_labels",
    "comparison_heatmap",
    "comparison_scatter",
    "default_histogram_layer",
    "differentiation_by_layer",
    "filter_heatmap",
    "filter_histogram",
    "mode_means",
    "n_units_comparison",
    "noise_reference",
    "pair_distances",
    "plot_comparison",
    "plot_comparison_scatter",
    "plot_filter_heatmaps",
    "plot_filter_histograms",
    "plot_images",
    "plot_n_units",
    "plot_pair_distances",
    "plot_predictions",
    "plot_ratio",
    "plot_results",
    "plot_sampling_modes",
    "plot_sampling_noise",
    "plot_set_differences",
    "plot_top1",
    "prediction_heatmap",
    "ratio_to_reference",
    "sampling_noise",
    "save_figure",
    "set_colors",
    "set_differences",
    "units_used_text",
    "movie_controls",
    "top1_predictions",
    "top1_table",
    "top_classes",
    "zscore_stats",
]
