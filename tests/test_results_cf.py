"""The results file describes itself (issue 22, item 8), read back by an independent reader:
netCDF4.Dataset, not xarray.

The CF-1.8 rules checked (restated, as no CF checker installs here without the UDUNITS C library):

1. the global ``Conventions`` is ``CF-1.8``;
2. every variable, coordinate variables included, has a ``long_name`` (CF 3.2);
3. every numeric variable has ``units`` (CF 3.1), a UDUNITS string: ``"1"`` for a dimensionless
   number or count, ``"Hz"``, ``"s"``; string variables have none;
4. ``flag_values`` has the variable's own type and ``flag_meanings`` one blank-separated word per
   value (CF 3.5);
5. a data variable's ``coordinates`` attribute names variables that exist and whose dimensions are
   among the variable's (CF 5);
6. a numeric coordinate variable (1-D, named like its dimension) has no missing values (CF 5);
   it is also strictly monotonic except ``n_units``, whose order is the spec's (-1, all units,
   where the spec put ``'all'``): a known departure from CF 5.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from daskdiff.io.atomic import write_netcdf
from daskdiff.io.results import assemble, image_names, open_results
from daskdiff.io.results_attrs import VARIABLE_ATTRS, describe, n_units_text, n_units_value, with_int_n_units
from test_partial import _metadata, _partials

netCDF4 = pytest.importorskip("netCDF4")

UDUNITS = {"1", "s", "Hz"}
SPECTRAL = {"state_length": 1.0, "overlap": 0.0, "metric": "euclidean", "window": None, "log_frequency": False, "normalize": "zscore"}


def _results(tmp_path, *, skipped=(), keep_rdm=True, spectral=True):
    sets, substrates, layers, n_units = {"big": 5, "small": 3}, ["units", "filter_mean"], ["l1", "l2"], [4, -1]
    metadata = _metadata(sets)
    metadata["big"]["paths"] = [f"/data/photos/{i}.png" for i in range(5)]
    metadata["small"]["paths"] = ["/data/other/a/x.png", "/data/other/b/y.png", "/data/other/b/z.png"]
    metadata["small"]["skipped"] = list(skipped)
    ds = assemble(sets=list(sets), metadata=metadata, substrates=substrates, n_units=n_units, layers=layers, repeats=3,
                  partials=_partials(sets, substrates, layers, len(n_units), 3), keep_rdm=keep_rdm,
                  attrs={"Conventions": "CF-1.8", "title": "t"}, fps={"big": 10.0, "small": 10.0} if spectral else None,
                  spectral=SPECTRAL if spectral else None)
    return write_netcdf(ds, tmp_path / "differentiation.nc"), ds


def _check_cf(path):
    """The rules of the module docstring, by netCDF4 alone; returns the file's variables' names."""
    with netCDF4.Dataset(path) as nc:
        assert nc.getncattr("Conventions") == "CF-1.8"
        for name, var in nc.variables.items():
            attrs = var.ncattrs()
            assert "long_name" in attrs and var.getncattr("long_name"), f"{name} has no long_name"
            if var.dtype is str:
                assert "units" not in attrs, f"string variable {name} has units"
            else:
                assert var.getncattr("units") in UDUNITS, f"{name}: units {var.getncattr('units') if 'units' in attrs else None!r}"
            if "flag_values" in attrs:
                flags = np.atleast_1d(var.getncattr("flag_values"))
                assert flags.dtype == var.dtype, name
                assert len(var.getncattr("flag_meanings").split()) == flags.size, name
            for coord in (var.getncattr("coordinates").split() if "coordinates" in attrs else []):
                assert coord in nc.variables and set(nc.variables[coord].dimensions) <= set(var.dimensions), (name, coord)
            if var.dimensions == (name,) and var.dtype is not str:
                values = var[:]
                assert not np.ma.is_masked(values) and np.isfinite(values).all(), name
                if name != "n_units" and values.size > 1:
                    assert (np.diff(values) > 0).all(), f"coordinate {name} is not strictly increasing"
        return set(nc.variables)


def test_every_variable_says_what_it_is_and_in_which_units(tmp_path):
    path, ds = _results(tmp_path, skipped=[("/data/other/c.png", "not an image")])
    names = _check_cf(path)
    assert {"differentiation", "rdm", "n_units", "image", "image_name", "image_i", "image_name_i", "units_used",
            "spectral_samples_per_window", "fps", "rank"} <= names
    with netCDF4.Dataset(path) as nc:
        assert nc["differentiation"].units == "1" and nc["fps"].units == "Hz" and nc["n_undefined"].units == "1"
        # spectral per-set values are variables on image_set, not attributes aligned by position
        assert nc["spectral_samples_per_window"].dimensions == ("image_set",)
        assert list(nc["spectral_samples_per_window"][:]) == [10, 10]
        assert not {"fs", "samples_per_window", "dropped_samples"} & set(nc["spectral_differentiation"].ncattrs())
        assert nc["skipped_path"].dtype is str and list(nc["skipped_path"][:]) == ["/data/other/c.png"]


def test_n_units_is_an_int64_coordinate_with_minus_one_for_all(tmp_path):
    path, _ = _results(tmp_path, spectral=False)
    with netCDF4.Dataset(path) as nc:
        var = nc["n_units"]
        assert var.dtype == np.int64 and var.dimensions == ("n_units",) and list(var[:]) == [4, -1]
        assert int(var.flag_values) == -1 and var.flag_meanings == "all"
        want = nc["differentiation"][:][:, :, 0]  # position 0: n_units 4
    with open_results(path) as ds:
        np.testing.assert_array_equal(ds["differentiation"].sel(n_units=4).values, want)
        assert ds["differentiation"].sel(n_units=-1).shape[ds["differentiation"].dims.index("repeat") - 1] == 3


def test_images_and_rdm_axes_are_labelled_by_file_relative_to_the_set(tmp_path):
    path, _ = _results(tmp_path, spectral=False)
    with netCDF4.Dataset(path) as nc:
        assert nc["image_name"].dimensions == ("image_set", "image") and nc["image_name"].dtype is str
        assert nc["image_name"][0].tolist() == [f"{i}.png" for i in range(5)]
        assert nc["image_name"][1].tolist() == ["a/x.png", "b/y.png", "b/z.png", "", ""]  # deepest common folder: /data/other
        assert nc["image_name_i"][1].tolist() == nc["image_name"][1].tolist()
        assert nc["image_name_j"].dimensions == ("image_set", "image_j")
        assert set(nc["rdm"].coordinates.split()) >= {"image_name_i", "image_name_j"}
        assert list(nc["image"][:]) == list(range(5)) and list(nc["rank"][:]) == [1, 2, 3, 4, 5]


def test_no_skipped_files_are_still_strings(tmp_path):
    """An empty object array is written as double; the skipped_* variables stay strings."""
    path, _ = _results(tmp_path, spectral=False, keep_rdm=False)
    names = _check_cf(path)
    assert "rdm" not in names and "image_name_i" not in names
    with netCDF4.Dataset(path) as nc:
        for name in ("skipped_set", "skipped_path", "skipped_reason"):
            assert nc[name].dtype is str and nc[name].shape == (0,), name


def test_a_results_file_of_before_with_string_n_units_reads_as_integers(tmp_path):
    """Files written before held '4'/'all' as strings: open_results converts them."""
    old = xr.Dataset({"differentiation": (("n_units",), [1.0, 2.0])}, coords={"n_units": np.array(["4", "all"], dtype=object)})
    old.to_netcdf(tmp_path / "old.nc", engine="netcdf4")
    with open_results(tmp_path / "old.nc") as ds:
        assert ds["n_units"].dtype == np.int64 and list(ds["n_units"].values) == [4, -1]
        assert float(ds["differentiation"].sel(n_units=-1)) == 2.0 and ds["n_units"].attrs["flag_meanings"] == "all"
    assert with_int_n_units(old.assign_coords(n_units=[4, -1]))["n_units"].dtype == np.int64


@pytest.mark.parametrize("label, value", [(200, 200), ("200", 200), ("all", -1), ("ALL", -1), (-1, -1), (np.int64(7), 7)])
def test_n_units_labels(label, value):
    assert n_units_value(label) == value
    assert n_units_text(label) == ("all" if value == -1 else str(value))


@pytest.mark.parametrize("label", [0, -2, "x", None, 2.5])
def test_a_bad_n_units_label_is_named(label):
    with pytest.raises(ValueError, match="neither a positive number of units nor 'all'"):
        n_units_value(label)


def test_a_variable_without_attributes_is_refused():
    with pytest.raises(KeyError, match=r"\['mystery'\] have no row"):
        describe(xr.Dataset({"mystery": ("x", [1])}))
    assert set(VARIABLE_ATTRS) >= {"differentiation", "n_units"}


def test_image_names_are_relative_to_the_deepest_common_folder():
    assert image_names(["/a/b/1.png", "/a/b/2.png"]) == ["1.png", "2.png"]
    assert image_names(["/a/b/c/1.png", "/a/d/2.png"]) == ["b/c/1.png", "d/2.png"]
    assert image_names(["s3://bucket/set/1.png", "s3://bucket/set/2.png"]) == ["1.png", "2.png"]
    assert image_names(["/a/1.png"]) == ["1.png"] and image_names([]) == []
