"""Top layer: bootstrap confidence intervals, over images, for differences of differentiation between sets.

Two layers, as elsewhere in the package:

- numeric core (plain numpy, leading axes are batch axes):
  :func:`daskdiff.core.bootstrap.resampled_differentiation` and
  :func:`daskdiff.core.bootstrap.bootstrap_difference`;
- labelled layer, here: :func:`set_difference` takes a results Dataset (its ``rdm`` variable),
  calls the core on the arrays and rebuilds the ``substrate``/``n_units``/``layer`` labels.
  :func:`set_names`, :func:`require_rdm` and :func:`select_set` check and read the sets of a
  results Dataset (the plots use them too).

The bootstrap resamples *images* (rows and columns of each set's RDM, with replacement), so its
interval answers "would another draw of images from the same population give a different
answer?". It says nothing about unit sampling noise, which the ``repeat`` axis of the results
already shows.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import xarray as xr

from .core.bootstrap import bootstrap_difference, BootstrapDifference
from .core.differentiation import MedianOver
from .errors import InputError
from .io.results_attrs import n_units_value, with_int_n_units


RDM_DIMS = ("image_i", "image_j")
"""The image dimensions of the results' ``rdm`` variable (rows, columns)."""

Labelled = TypeVar("Labelled", xr.Dataset, xr.DataArray)


def require_rdm(ds: xr.Dataset) -> xr.DataArray:
    """The ``rdm`` variable of a results Dataset; InputError saying how to get it when it is absent."""
    if "rdm" not in ds:
        raise InputError(
            "this results Dataset has no 'rdm' variable (the job keeps it only when every set has at most "
            "analysis.rdm_max_images images); raise rdm_max_images in the job spec and re-run the job"
        )
    return ds["rdm"]


def select_set(obj: Labelled, image_set: str, n_images: xr.DataArray | None, dims: Sequence[str]) -> Labelled:
    """``obj.sel(image_set=image_set)`` with its ``dims`` cut to the set's own images.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        Results (or one of their variables) with an ``image_set`` dimension.
    image_set : str
        The set.
    n_images : xarray.DataArray or None
        The results' ``n_images`` (dimension ``image_set``); None: cut nothing.
    dims : sequence of str
        The image dimensions to cut, e.g. ``('image',)`` or :data:`RDM_DIMS`.

    Notes
    -----
    A results Dataset pads the image dimensions of every set to the largest set's number of
    images (see :mod:`daskdiff.io.results`); the first ``n_images`` positions are the set's.
    """
    one = obj.sel(image_set=image_set)
    if n_images is None:
        return one
    n = int(n_images.sel(image_set=image_set))
    return one.isel({dim: slice(0, n) for dim in dims})


def set_names(ds: xr.Dataset, sets: Sequence[str] | None = None) -> list[str]:
    """The image sets of a results Dataset in its order, or ``sets``, once each is checked to be one of them."""
    names = [str(s) for s in ds["image_set"].values]
    if sets is None:
        return names
    unknown = [s for s in sets if s not in names]
    if unknown:
        what = f"image set {unknown[0]!r} is" if len(unknown) == 1 else f"image sets {unknown} are"
        raise InputError(f"{what} not in these results; the sets are {names}")
    return [str(s) for s in sets]


def _labelled_difference(result: BootstrapDifference, lead: xr.DataArray, keep_samples: bool) -> xr.Dataset:
    """The core's result as a Dataset over ``lead``'s dims and coords (``image_set`` dropped)."""
    dims, coords = lead.dims, {k: v for k, v in lead.coords.items() if k != "image_set"}
    out = xr.Dataset(
        {
            "difference": (dims, result.difference),
            "ci_low": (dims, result.low),
            "ci_high": (dims, result.high),
        },
        coords=coords,
    )
    if keep_samples:
        out["samples"] = (("bootstrap",) + dims, result.samples)
    return out


def set_difference(
    ds: xr.Dataset,
    set_a: str,
    set_b: str,
    *,
    substrate: str | None = None,
    n_units: int | str | None = None,
    n_boot: int = 1000,
    seed: int | None = 0,
    ci: float = 0.95,
    median_over: MedianOver | None = None,
    keep_samples: bool = False,
) -> xr.Dataset:
    """Difference of differentiation between two sets per layer, with bootstrap CIs over images.

    Parameters
    ----------
    ds : xarray.Dataset
        A results Dataset (``differentiation.nc``) with the ``rdm`` variable.
    set_a, set_b : str
        Image sets; the difference is ``set_a - set_b``.
    substrate : str, optional
    n_units : int or str, optional
        Select one (``n_units`` as the results' coordinate, -1 or ``'all'`` for all units);
        by default all, each with the same image resamples.
    n_boot, seed, ci
        As in :func:`bootstrap_difference`.
    median_over : {'condensed', 'square'}, optional
        Defaults to the job's (``ds.attrs['median_over']``), else 'condensed'.
    keep_samples : bool
        Also return the bootstrap differences (``samples``, dimension ``bootstrap``).

    Returns
    -------
    xarray.Dataset
        ``difference``, ``ci_low``, ``ci_high`` over the remaining ``substrate``, ``n_units``
        and ``layer`` dimensions.

    Notes
    -----
    The results file keeps one RDM per set and layer: the *mean over the sampling repeats* of
    each repeat's RDM. So

    - the observed difference is the difference of the medians of the mean RDMs. It is close
      to, but not the same as, the difference of the ``differentiation`` means over repeats
      (a median of means is not a mean of medians);
    - the interval covers image sampling only. Averaging over repeats has already removed
      most unit sampling noise; the spread over ``repeat`` in ``differentiation`` shows that
      part, and for all units (``n_units=-1``) there is none.
    """
    ds = with_int_n_units(ds)
    rdm = require_rdm(ds)
    set_names(ds, [set_a, set_b])
    median_over = median_over or str(ds.attrs.get("median_over", "condensed"))
    if substrate is not None:
        rdm = rdm.sel(substrate=[substrate])
    if n_units is not None:
        rdm = rdm.sel(n_units=[n_units_value(n_units)])
    a, b = (select_set(rdm, name, ds.get("n_images"), RDM_DIMS).values for name in (set_a, set_b))
    result = bootstrap_difference(a, b, n_boot=n_boot, seed=seed, ci=ci, median_over=median_over)
    lead = rdm.sel(image_set=set_a).isel(image_i=0, image_j=0, drop=True)
    out = _labelled_difference(result, lead, keep_samples)
    if substrate is not None:
        out = out.squeeze("substrate")
    if n_units is not None:
        out = out.squeeze("n_units")
    out["difference"].attrs.update(
        long_name=f"differentiation of {set_a!r} minus {set_b!r}",
        description=f"difference of the medians ({median_over}) of the mean RDMs over repeats",
    )
    out.attrs.update(
        set_a=set_a, set_b=set_b, n_boot=n_boot, seed="none" if seed is None else seed, ci=ci, median_over=median_over,
        method="percentile bootstrap over images (rows and columns of each set's mean RDM); pairs of copies of one image left out",
    )
    return out
