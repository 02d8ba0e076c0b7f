"""Bootstrap confidence intervals, over images, for differences of differentiation between sets.

Two layers, as elsewhere in the package:

- numeric core (plain numpy, leading axes are batch axes): :func:`resampled_differentiation`
  and :func:`bootstrap_difference`;
- labelled layer: :func:`set_difference` takes a results Dataset (its ``rdm`` variable), calls
  the core on the arrays and rebuilds the ``substrate``/``n_units``/``layer`` labels.

The bootstrap resamples *images* (rows and columns of each set's RDM, with replacement), so its
interval answers "would another draw of images from the same population give a different
answer?". It says nothing about unit sampling noise, which the ``repeat`` axis of the results
already shows.
"""

from __future__ import annotations


import numpy as np
import xarray as xr

from .core.bootstrap import bootstrap_difference
from .core.differentiation import MedianOver
from .errors import InputError


def set_difference(
    ds: xr.Dataset,
    set_a: str,
    set_b: str,
    *,
    substrate: str | None = None,
    n_units: str | None = None,
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
    substrate, n_units : str, optional
        Select one; by default all, each with the same image resamples.
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
      part, and for ``n_units='all'`` there is none.
    """
    if "rdm" not in ds:
        raise InputError(
            "this results Dataset has no 'rdm' variable (the job keeps it only when every set has at most "
            "analysis.rdm_max_images images); raise rdm_max_images in the job spec and re-run the job"
        )
    sets = [str(s) for s in ds["image_set"].values]
    for name in (set_a, set_b):
        if name not in sets:
            raise InputError(f"image set {name!r} is not in these results; the sets are {sets}")
    median_over = median_over or str(ds.attrs.get("median_over", "condensed"))
    rdm = ds["rdm"]
    if substrate is not None:
        rdm = rdm.sel(substrate=[substrate])
    if n_units is not None:
        rdm = rdm.sel(n_units=[str(n_units)])

    def one_set(name: str) -> np.ndarray:
        n = int(ds["n_images"].sel(image_set=name)) if "n_images" in ds else rdm.sizes["image_i"]
        return rdm.sel(image_set=name).isel(image_i=slice(0, n), image_j=slice(0, n)).values

    a, b = one_set(set_a), one_set(set_b)
    lead = rdm.sel(image_set=set_a).isel(image_i=0, image_j=0, drop=True)
    result = bootstrap_difference(a, b, n_boot=n_boot, seed=seed, ci=ci, median_over=median_over)
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
