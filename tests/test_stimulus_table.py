"""A stimulus table (CSV: a path column and condition columns) as an image set (issue 22, "also
expected"): read in the table's order, bad tables refused in one line naming the CSV and its
line, the conditions carried into the results as coordinates; a job on a table gives the numbers
of the same images given as a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from daskdiff.io.stimulus_table import StimulusTableError, read_stimulus_table
from daskdiff.io.results import assemble
from conftest import write_images
from test_partial import _metadata, _partials
from test_results_cf import _check_cf


def _table(folder: Path, text: str, name="stimuli.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "imgs", 4, seed=5)


def test_a_table_gives_its_images_in_its_order_with_their_conditions(tmp_path, images):
    _table(tmp_path, "path,category,size\nimgs/img-002.png,cat,3\n\nimgs/img-000.png,dog, 10\n" + f"{images[1]},cat,1\n")
    table = read_stimulus_table("stimuli.csv", name="mine", base_dir=tmp_path)
    assert table.paths == (images[2], images[0], images[1])  # the table's order; relative to the CSV's folder, or absolute
    assert table.conditions == {"category": ("cat", "dog", "cat"), "size": ("3", "10", "1")}


@pytest.mark.parametrize("text, message", [
    ("file,category\nimgs/img-000.png,a\n", r"has no 'path' column \(its columns: \['file', 'category'\]\); name the column"),
    ("path,category\nimgs/img-000.png,a\nimgs/nope.png,b\n", r", line 3: image 'imgs/nope.png' does not exist"),
    ("path,category\nimgs/img-000.png,a\nimgs/../imgs/img-000.png,b\n", r", line 3: image 'imgs/../imgs/img-000.png' is the file of line 2 again"),
    ("path,category\nimgs/img-000.png,a\n,b\n", r", line 3: the 'path' cell is empty"),
    ("path,category\nimgs/img-000.png,a\nimgs/img-001.png\n", r", line 3: 1 cells for 2 columns"),
    ("path,my size\nimgs/img-000.png,a\nimgs/img-001.png,b\n", r"column 'my size' is not a unique name"),
    ("path\nimgs/img-000.png\n", r"lists 1 image\(s\); differentiation needs at least 2"),
])
def test_a_bad_table_is_one_line_naming_the_csv_and_the_line(tmp_path, images, text, message):
    csv = _table(tmp_path, text)
    with pytest.raises(StimulusTableError, match=f"^image set 'mine': stimulus table {csv}" + ".*" + message) as info:
        read_stimulus_table(csv, name="mine")
    assert "\n" not in str(info.value)


def test_a_missing_table_is_named(tmp_path):
    with pytest.raises(StimulusTableError, match=rf"stimulus table {tmp_path}/gone.csv does not exist \(given as 'gone.csv'"):
        read_stimulus_table("gone.csv", name="mine", base_dir=tmp_path)


def test_conditions_become_coordinates_matched_by_path():
    """Set 'small' has the table; its second image was skipped (not decodable), so the results
    hold 2 of its 3 rows: the conditions follow the paths, not the positions."""
    sets = {"big": 5, "small": 2}
    metadata = _metadata(sets)
    metadata["small"]["paths"] = ["small/0.png", "small/2.png"]
    conditions = {"small": {"category": {"small/0.png": "cat", "small/1.png": "dog", "small/2.png": "bird"}}}
    ds = assemble(sets=list(sets), metadata=metadata, substrates=["units"], n_units=[3], layers=["l1"], repeats=2,
                  partials=_partials(sets, ["units"], ["l1"], 1, 2), keep_rdm=True, attrs={}, conditions=conditions)
    coord = ds.coords["condition_category"]
    assert coord.dims == ("image_set", "image")
    assert coord.sel(image_set="small").values.tolist() == ["cat", "bird", "", "", ""]
    assert coord.sel(image_set="big").values.tolist() == [""] * 5  # no table: empty
    assert "condition 'category'" in coord.attrs["long_name"]


@pytest.mark.cluster
def test_a_job_on_a_table_equals_the_job_on_the_folder(tmp_path, tiny_model_path, image_folders):
    """One job, the same images twice: as their folder, and as a table (in the folder's sorted
    order) with a condition column: every number of the two sets is the same."""
    from distributed import Client

    from daskdiff.pipeline.job import run_job
    from jobtools import local_cluster, tiny_spec

    folder = Path(image_folders["noisy"][0]).parent
    rows = "".join(f"{Path(p).name},{'odd' if i % 2 else 'even'}\n" for i, p in enumerate(image_folders["noisy"]))
    _table(folder, "path,parity\n" + rows, name="table.csv")
    spec = tiny_spec(tiny_model_path, {"folder": str(folder), "table": str(folder / "table.csv")}, tmp_path / "out",
                     analysis__substrates=["units"], analysis__repeats=3)
    with (local_cluster(1) as cluster,
          Client(cluster) as client):
        result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
    assert "condition_parity" in _check_cf(result.path)  # the CF rules, read by netCDF4
    with xr.open_dataset(result.path) as ds:
        for name in ("differentiation", "rdm", "n_undefined", "top1_prob"):
            np.testing.assert_array_equal(ds[name].sel(image_set="table").values, ds[name].sel(image_set="folder").values, err_msg=name)
        assert ds["condition_parity"].sel(image_set="table").values.tolist() == ["even", "odd"] * 3 + ["even"]
        assert ds["condition_parity"].sel(image_set="folder").values.tolist() == [""] * 7
        assert ds["image_name"].sel(image_set="table").values.tolist() == [Path(p).name for p in image_folders["noisy"]]
