"""daskdiff: how differentiated a neural network's representations are, at cluster scale.

The numeric core (pure numpy) is importable from the top level::

    import daskdiff
    d = daskdiff.pairwise_distances(x, metric="euclidean")
    v = daskdiff.differentiation(x, normalize="zscore", per_unit=True)
    idx = daskdiff.sample_units((56, 56, 256), 200, seed=0, layer="block3_conv1", repeat=0)
"""

from importlib.metadata import PackageNotFoundError, version

from .differentiation import (
    UndefinedNormalizationError,
    differentiation,
    differentiation_stack,
    distances_stack,
)
from .distances import METRICS, pairwise_distances, pairwise_distances_stack
from .sampling import ALL, sample_units
from .substrates import SUBSTRATES, reduce as reduce_substrate

try:
    __version__ = version("daskdiff")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ALL",
    "METRICS",
    "SUBSTRATES",
    "UndefinedNormalizationError",
    "__version__",
    "differentiation",
    "differentiation_stack",
    "distances_stack",
    "pairwise_distances",
    "pairwise_distances_stack",
    "reduce_substrate",
    "sample_units",
]
