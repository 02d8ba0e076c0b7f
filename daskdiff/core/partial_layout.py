"""Numeric core: the layout of a partial result, the arrays one differentiation task returns.

One task computes one (image set, substrate, layer) for every ``n_units`` of the plan and every
repeat. :class:`PartialLayout` states its arrays once: their names, dimensions, shapes, dtypes,
fill values and bytes. The task fills them (:func:`daskdiff.pipeline.tasks.run_diff_task`), the
partial file stores them (:mod:`daskdiff.io.partials`, which labels them with xarray), the
results file is combined from them (:func:`daskdiff.io.results.assemble`) and the estimate
counts their bytes (:func:`daskdiff.core.estimate.estimate_work`).

The arrays, in the order a partial file stores them:

=============================  =============================  ========  =====================================
name                           dims                           dtype     holds
=============================  =============================  ========  =====================================
``differentiation``            (n_units, repeat)              float64   the image measure's median per repeat
``undefined``                  (n_units, repeat)              bool      repeats whose normaliser was undefined
``units_used``                 (n_units,)                     int64     units per repeat
``spectral_differentiation``   (n_units, repeat)              float64   with ``spectral``: per repeat
``rdm_sum``                    (n_units, image_i, image_j)    float64   with ``keep_rdm``: sum over defined repeats
``rdm_count``                  (n_units,)                     int64     with ``keep_rdm``: repeats summed
``source``                     ()                             <U32      with ``source``: the shards' digest
=============================  =============================  ========  =====================================

Axis 0 holds the plan's ``n_units`` in order; the ``repeat`` axis is the job's ``repeats``, NaN
(or False) past the repeats an ``n_units`` has (``'all'`` has one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SOURCE = "source"
"""The array naming what a partial result was computed from (a digest of its shards' inputs)."""

DIGEST_CHARS = 32
"""Hex digits of the :data:`SOURCE` digest."""


@dataclass(frozen=True)
class PartialField:
    """One array of a partial result: its name, dimension names, dtype and initial value."""

    name: str
    dims: tuple[str, ...]
    dtype: np.dtype
    fill: Any


_FLOAT, _BOOL, _INT = np.dtype(np.float64), np.dtype(bool), np.dtype(np.int64)
_PER_REPEAT = ("n_units", "repeat")


@dataclass(frozen=True)
class PartialLayout:
    """The arrays of one differentiation task's partial result (see the module docstring).

    Parameters
    ----------
    n_units : int
        How many ``n_units`` the plan has (axis 0 of every array but ``source``).
    repeats : int
        The job's ``repeats`` (the ``repeat`` axis).
    n_images : int, optional
        Images of the set (``image_i`` and ``image_j``); None where not known yet (a shape of
        :meth:`shapes` then says ``None``: any length).
    keep_rdm : bool
        Whether the mean RDM is kept (``rdm_sum``, ``rdm_count``).
    spectral : bool
        Whether spectral differentiation is computed (``spectral_differentiation``).
    source : bool
        Whether the partial names the shards it was computed from (``source``).
    """

    n_units: int
    repeats: int
    n_images: int | None = None
    keep_rdm: bool = False
    spectral: bool = False
    source: bool = False

    @property
    def fields(self) -> tuple[PartialField, ...]:
        """The arrays, in the order a partial file stores them."""
        fields = [PartialField("differentiation", _PER_REPEAT, _FLOAT, np.nan),
                  PartialField("undefined", _PER_REPEAT, _BOOL, False),
                  PartialField("units_used", ("n_units",), _INT, 0)]
        if self.spectral:
            fields.append(PartialField("spectral_differentiation", _PER_REPEAT, _FLOAT, np.nan))
        if self.keep_rdm:
            fields += [PartialField("rdm_sum", ("n_units", "image_i", "image_j"), _FLOAT, 0.0),
                       PartialField("rdm_count", ("n_units",), _INT, 0)]
        if self.source:
            fields.append(PartialField(SOURCE, (), np.dtype(f"<U{DIGEST_CHARS}"), ""))
        return tuple(fields)

    @property
    def sizes(self) -> dict[str, int | None]:
        """Dimension name -> length (None: not known)."""
        return {"n_units": self.n_units, "repeat": self.repeats, "image_i": self.n_images, "image_j": self.n_images}

    def shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Array name -> shape (``None`` for a length not known), what a reused file must hold."""
        sizes = self.sizes
        return {f.name: tuple(sizes[d] for d in f.dims) for f in self.fields}

    def empty(self) -> dict[str, np.ndarray]:
        """New arrays, each filled with its initial value (NaN, False, 0, ''); needs ``n_images``
        when ``keep_rdm``."""
        return {name: np.full(self._known(shape, name), f.fill, dtype=f.dtype)
                for (name, shape), f in zip(self.shapes().items(), self.fields)}

    def nbytes(self) -> int:
        """Bytes of the arrays' data (no headers); needs ``n_images`` when ``keep_rdm``."""
        return sum(math.prod(self._known(shape, name)) * f.dtype.itemsize
                   for (name, shape), f in zip(self.shapes().items(), self.fields))

    def set_row(self, arrays: dict[str, np.ndarray], i: int, row: dict[str, Any]) -> None:
        """Write one ``n_units``' values (``row``: array name -> its values) into row ``i`` of ``arrays``.

        An array with a ``repeat`` axis takes the row's values in its first repeats (an
        ``n_units`` with fewer repeats than the job leaves the rest as :meth:`empty` filled
        them); the others take the value whole.
        """
        dims = {f.name: f.dims for f in self.fields}
        for name, value in row.items():
            if "repeat" in dims[name]:
                arrays[name][i, : len(value)] = value
            else:
                arrays[name][i] = value

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> "PartialLayout":
        """The layout of the arrays of a partial result (as :meth:`empty` made them, or a file holds)."""
        n_units, repeats = arrays["differentiation"].shape
        rdm = arrays.get("rdm_sum")
        return cls(n_units, repeats, None if rdm is None else rdm.shape[-1], keep_rdm=rdm is not None,
                   spectral="spectral_differentiation" in arrays, source=SOURCE in arrays)

    @staticmethod
    def _known(shape: tuple[int | None, ...], name: str) -> tuple[int, ...]:
        if None in shape:
            raise ValueError(f"the shape of partial array {name!r} is not known: give PartialLayout(n_images=...)")
        return shape  # type: ignore[return-value]
