"""Numeric core: what an image's "state vector" is in a layer: all units, or a reduction of a conv layer.

Activations of one layer come as ``(n_images, *unit_shape)`` with channels last: conv layers
``(n, y, x, channels)``, dense layers ``(n, units)``. A dense layer is treated as a conv layer
with one position, ``(n, 1, 1, units)``, so every substrate is defined for every layer.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

Substrate = Literal["units", "filter_mean", "location_mean"]


def _units(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def _filter_mean(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a
    return a.mean(axis=tuple(range(1, a.ndim - 1)))


def _location_mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=-1).reshape(a.shape[0], -1)


SUBSTRATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "units": _units,
    "filter_mean": _filter_mean,
    "location_mean": _location_mean,
}
"""Substrate name -> function ``(n_images, *unit_shape) -> (n_images, n_features)``."""


def check_substrate(substrate: str) -> str:
    if substrate not in SUBSTRATES:
        raise ValueError(
            f"unknown substrate {substrate!r}; valid substrates are {sorted(SUBSTRATES)}"
        )
    return substrate


def reduce(activations: np.ndarray, substrate: Substrate = "units") -> np.ndarray:
    """Reduce one layer's activations to one feature vector per image.

    Parameters
    ----------
    activations : numpy.ndarray, shape (n_images, *unit_shape)
        Channels last.
    substrate : {'units', 'filter_mean', 'location_mean'}
        ``units``: every unit, flattened in C order (see :mod:`daskdiff.core.sampling`).
        ``filter_mean``: the mean over all spatial positions of each channel (the first seed's
        "mean filter activation"); ``(n, channels)``. For a dense layer, the units themselves.
        ``location_mean``: the mean over channels at each spatial position, flattened;
        ``(n, y * x)``. For a dense layer, one value per image (the mean of its units).

    Returns
    -------
    numpy.ndarray, shape (n_images, n_features)
        Same dtype as the input (means are taken in that dtype).
    """
    a = np.asarray(activations)
    if a.ndim < 2:
        raise ValueError(f"activations must be (n_images, *unit_shape), got shape {a.shape}")
    return SUBSTRATES[check_substrate(substrate)](a)


def feature_shape(unit_shape: Sequence[int], substrate: Substrate) -> tuple[int, ...]:
    """Shape of one image's features for a substrate, channels last (for sampling modes).

    ``units`` keeps the layer's unit shape; ``filter_mean`` is ``(channels,)``;
    ``location_mean`` is ``(y, x, 1)`` (one channel), or ``(1,)`` for a dense layer.
    """
    shape = tuple(int(s) for s in unit_shape)
    check_substrate(substrate)
    if substrate == "units":
        return shape
    if substrate == "filter_mean":
        return (shape[-1],)
    return shape[:-1] + (1,) if len(shape) > 1 else (1,)
