"""daskdiff: how differentiated a neural network's representations are, at cluster scale.

The package's layers, each importing only those below it:

- :mod:`daskdiff.errors`: error types (imports nothing);
- :mod:`daskdiff.logs`: where progress and warning lines go (the ``daskdiff`` loggers);
- :mod:`daskdiff.core`: the numeric core, numpy and scipy only (distances, differentiation,
  spectral differentiation over time, a movie's stimulus differentiation, unit sampling, substrates, the unit plan, ranking,
  bootstrap);
- :mod:`daskdiff.io`: files (the one atomic writer, the output layout, shards, partial results,
  the results file, image decoding and PNG writing);
- :mod:`daskdiff.model`: Keras models and weights, preprocessing, the extraction graph;
- :mod:`daskdiff.stimuli`: image-set generators and their registry;
- :mod:`daskdiff.pipeline`: job specs, clusters, tasks, planning and running a job on Dask;
- on top: :mod:`daskdiff.stats`, :mod:`daskdiff.comparison` (network versus recorded neurons),
  :mod:`daskdiff.plot`, :mod:`daskdiff.info`, :mod:`daskdiff.cli`.

The numeric core (pure numpy) is importable from the top level::

    import daskdiff
    d = daskdiff.pairwise_distances(x, metric="euclidean")
    v = daskdiff.differentiation(x, normalize="zscore", per_unit=True)
    idx = daskdiff.sample_units((56, 56, 256), 200, seed=0, layer="block3_conv1", repeat=0)
    sd = daskdiff.spectral_differentiation(frames_by_units, fs=30, state_length=1)
    stim = daskdiff.stimulus_differentiation(movie, fs=30)  # the movie's own, as Mayner et al. (2022)
"""

from importlib.metadata import PackageNotFoundError, version

from .core.differentiation import differentiation, differentiation_stack, distances_stack, UndefinedNormalizationError
from .core.distances import METRICS, pairwise_distances, pairwise_distances_stack
from .core.sampling import ALL, sample_units
from .core.spectral import (
    SPECTRAL_METRICS,
    spectral_differentiation,
    spectral_differentiation_stack,
    spectral_frequencies,
    spectral_states,
    spectral_states_stack,
    spectral_windows,
)
from .core.stimulus import stimulus_differentiation
from .core.substrates import reduce as reduce_substrate, SUBSTRATES
from .logs import log_to_terminal

try:
    __version__ = version("daskdiff")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_LAZY = {
    "load_spec": "daskdiff.pipeline.spec_file",
    "run_job": "daskdiff.pipeline.job",
    "open_activations": "daskdiff.io.shards",
    "open_results": "daskdiff.io.results",
    "compare": "daskdiff.comparison",
    "to_rsatoolbox": "daskdiff.rsa",
}


def __getattr__(name: str):
    """Jobs and files on first use, so ``import daskdiff`` (and the core) loads no xarray or Dask."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'daskdiff' has no attribute {name!r}")


__all__ = [
    "ALL",
    "METRICS",
    "SPECTRAL_METRICS",
    "SUBSTRATES",
    "UndefinedNormalizationError",
    "__version__",
    "compare",
    "differentiation",
    "differentiation_stack",
    "distances_stack",
    "load_spec",
    "log_to_terminal",
    "open_activations",
    "open_results",
    "pairwise_distances",
    "pairwise_distances_stack",
    "reduce_substrate",
    "run_job",
    "sample_units",
    "spectral_differentiation",
    "spectral_differentiation_stack",
    "spectral_frequencies",
    "spectral_states",
    "spectral_states_stack",
    "spectral_windows",
    "stimulus_differentiation",
    "to_rsatoolbox",
]
