"""Independent references the numeric tests compare with (restated from the seed notebooks)."""

from __future__ import annotations

import numpy as np


def normalised_by_hand(x: np.ndarray, normalize: str) -> np.ndarray:
    """``x`` normalised over all its entries, as the seed notebooks do (float64)."""
    x = x.astype(np.float64)
    if normalize == "zscore":
        return (x - x.mean()) / x.std()
    if normalize == "mean":
        return x / x.mean()
    if normalize == "max":
        return x / np.abs(x).max()
    return x
