"""Numeric core: class scores -> probabilities, top-k ranking and class mass (pure numpy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np



def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: max subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of each row, most probable first.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(n, n_classes)``.
    k : int
        At most ``n_classes`` (fewer classes give fewer columns).

    Returns
    -------
    indices : numpy.ndarray
        ``(n, min(k, n_classes))`` int64 class indices.
    values : numpy.ndarray
        Their probabilities, same shape.

    Notes
    -----
    Ties go to the lower class index (``argsort(-p, kind='stable')``).
    """
    p = np.asarray(probabilities)
    order = np.argsort(-p, axis=-1, kind="stable")[..., : min(k, p.shape[-1])]
    return order.astype(np.int64), np.take_along_axis(p, order, axis=-1)


def class_mass(probabilities: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Summed probability of ``classes`` in each row of ``probabilities`` ``(n, n_classes)``."""
    return np.asarray(probabilities)[..., list(classes)].sum(axis=-1)
