"""Figures: every plotting function on a synthetic results/activations pair and on a real job's output.

Each figure is checked for what a reader needs: labelled axes, layer names in network order on
the x axis, one line per set, legends outside the data area and inside the figure, a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib._pylab_helpers import Gcf
from matplotlib.figure import Figure
from PIL import Image
from scipy.spatial.distance import pdist, squareform

import daskdiff.plot as dp
from daskdiff.io.shards import open_activations

LAYERS = ["conv1", "pool1", "conv2", "fc1", "predictions"]
SETS = {"photos": 5, "noise": 5, "cats": 4}  # cats is smaller: the results pad it
N_CLASSES = 7


def synthetic_results(image_dir: Path) -> xr.Dataset:
    """A results Dataset with the job's layout (see daskdiff.io.results), made by hand."""
    rng = np.random.default_rng(0)
    names, n_img = list(SETS), list(SETS.values())
    substrates, n_units, repeats = ["units", "filter_mean"], [10, 100, -1], 12
    width = max(n_img)
    diff = np.full((len(names), 2, 3, len(LAYERS), repeats), np.nan)
    level = np.array([1.0, 0.3, 0.6])[:, None, None, None, None] * np.linspace(1.2, 0.6, len(LAYERS))[None, None, None, :, None]
    diff[..., :2, :, :] = (level + rng.normal(scale=0.05, size=(len(names), 2, 2, len(LAYERS), repeats)))
    diff[..., 2, :, 0] = level[..., 0][:, :, 0]
    diff[1, :, :2, -1, :2] = 0.0  # noise is 0 in the prediction layer (where defined)...
    diff[1, :, :2, -1, 2:] = np.nan  # ...and most of its repeats there are undefined
    diff[1, :, 2, -1, 0] = 0.0
    rdm = np.full((len(names), 2, 3, len(LAYERS), width, width), np.nan)
    for s, n in enumerate(n_img):
        for li in range(len(LAYERS)):
            rdm[s, :, :, li, :n, :n] = squareform(pdist(rng.normal(size=(n, 4)) * (1 + s)))
    paths = np.full((len(names), width), "", dtype=object)
    for s, (name, n) in enumerate(SETS.items()):
        for i in range(n):
            p = image_dir / name / f"img-{i}.png"
            if i < n - 1:  # the last image of each set is 'missing' on disk
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, size=(20, 30, 3), dtype=np.uint8)).save(p)
            paths[s, i] = str(p)
    labels = np.array([f"class_{c}" for c in range(N_CLASSES)], dtype=object)
    top5 = rng.integers(0, N_CLASSES, size=(len(names), width, 5))
    return xr.Dataset(
        {
            "differentiation": (("image_set", "substrate", "n_units", "layer", "repeat"), diff),
            "n_undefined": (("image_set", "substrate", "n_units", "layer"), np.zeros((3, 2, 3, len(LAYERS)), int)),
            "n_images": (("image_set",), n_img),
            # conv1 has 8 units: 10 and 100 are capped there; 'all' (-1) uses every unit
            "units_used": (("substrate", "n_units", "layer"), np.array([[[8, 10, 10, 10, 7], [8, 100, 100, 100, 7], [8, 400, 900, 120, 7]]] * 2)),
            "rdm": (("image_set", "substrate", "n_units", "layer", "image_i", "image_j"), rdm),
            "image_path": (("image_set", "image"), paths),
            "top1_label": (("image_set", "image"), labels[top5[..., 0]]),
            "top1_class": (("image_set", "image"), top5[..., 0]),
            "top1_prob": (("image_set", "image"), rng.uniform(0.2, 1, size=(len(names), width))),
            "top5_label": (("image_set", "image", "rank"), labels[top5]),
            "top5_class": (("image_set", "image", "rank"), top5),
            "top5_prob": (("image_set", "image", "rank"), rng.uniform(size=(len(names), width, 5))),
        },
        coords={"image_set": names, "substrate": substrates, "n_units": n_units, "layer": LAYERS,
                "layer_index": ("layer", np.arange(len(LAYERS))), "repeat": np.arange(repeats)},
        attrs={"title": "synthetic results", "metric": "euclidean", "normalize": "zscore", "per_unit": 1,
               "median_over": "condensed", "weights": "file"},
    )


def synthetic_activations(name: str, n: int, seed: int) -> xr.Dataset:
    """One set's activations with the shard layout (see daskdiff.io.shards)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3, size=(n, N_CLASSES))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :5]
    labels = np.array([f"class_{c}" for c in range(N_CLASSES)], dtype=object)
    return xr.Dataset(
        {
            "units__conv1": (("image", "unit__conv1"), rng.random((n, 12), dtype=np.float32)),
            "filter_mean__conv1": (("image", "filter__conv1"), rng.random((n, 4), dtype=np.float32)),
            "filter_mean__conv2": (("image", "filter__conv2"), rng.random((n, 6), dtype=np.float32)),
            "filter_mean__fc1": (("image", "filter__fc1"), rng.random((n, 9), dtype=np.float32)),
            "units__predictions": (("image", "unit__predictions"), probs.astype(np.float32)),
        },
        coords={
            "path": ("image", [f"/data/{name}/img-{i}.png" for i in range(n)]),
            "image_set": ("image", [name] * n),
            "channel__conv1": ("unit__conv1", np.arange(12) % 4),
            "channel__conv2": ("filter__conv2", np.arange(6)),  # marks conv2 as a conv layer too
            "top1_label": ("image", labels[top[:, 0]]),
            "top1_prob": ("image", np.take_along_axis(probs, top[:, :1], axis=1)[:, 0]),
            "top5_class": (("image", "rank"), top),
            "top5_label": (("image", "rank"), labels[top]),
        },
        attrs={"predictions_layer_values": "softmax", "weights": "random(seed=0, he_normal)"},
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    ds = synthetic_results(tmp_path_factory.mktemp("images"))
    acts = {name: synthetic_activations(name, n, seed) for seed, (name, n) in enumerate(SETS.items())}
    return ds, acts


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_path):
    """A real job's results and activations: the tiny model on three small image sets.

    The last set is smaller (its RDM is padded) and one set is named 'noise' (the default
    reference of the ratio and difference plots), as in the demo.
    """
    from distributed import Client

    from conftest import write_images
    from daskdiff.pipeline.job import run_job
    from jobtools import local_cluster, tiny_spec

    root = tmp_path_factory.mktemp("job")
    write_images(root / "smooth", 6, seed=2, kind="smooth")
    write_images(root / "noise", 6, seed=1)
    write_images(root / "few", 4, seed=3, kind="smooth")
    sets = {name: str(root / name) for name in ("smooth", "noise", "few")}
    spec = tiny_spec(tiny_model_path, sets, root / "out")
    with local_cluster(1) as cluster:
        with Client(cluster) as client:
            result = run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None)
    ds = xr.load_dataset(result.path)
    acts = {name: open_activations(root / "out", name) for name in sets}
    yield ds, acts
    for a in acts.values():
        a.close()


@pytest.fixture(params=["synthetic", pytest.param("job", marks=[pytest.mark.cluster, pytest.mark.keras])])
def data(request):
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- checks


def _new_axes(width=10, height=3.5):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _layer_axis_ok(ax, layers):
    assert [t.get_text() for t in ax.get_xticklabels()] == list(layers)
    assert "layer" in ax.get_xlabel()
    assert ax.get_ylabel()


def _legend_outside(fig, ax, legend=None):
    """The legend lies right of the axes' data area and inside the figure."""
    legend = legend or ax.get_legend()
    assert legend is not None, "no legend"
    fig.draw_without_rendering()
    box, area = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= area.x1 - 0.5, f"legend {box} overlaps the data area {area}"
    assert box.x1 <= fig.bbox.x1 + 0.5 and box.y0 >= fig.bbox.y0 - 0.5, "legend is cut off by the figure edge"


def _png_ok(fig, path):
    out = dp.save_figure(fig, path)
    assert out == Path(path) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 150
    assert Gcf.get_num_fig_managers() == 0  # nothing left in pyplot's registry


def _layers(ds):
    return [str(v) for v in ds["layer"].values]


def _sets(ds):
    return [str(v) for v in ds["image_set"].values]


# --------------------------------------------------------------------------- 1. by layer


def test_differentiation_by_layer(data, tmp_path):
    ds, _ = data
    fig, ax = _new_axes()
    dp.differentiation_by_layer(ds, ax, substrate="units", n_units=int(ds["n_units"].values[0]), legend=True)
    _layer_axis_ok(ax, _layers(ds))
    assert len(ax.containers) == len(_sets(ds))  # one errorbar line per set
    assert [t.get_text() for t in ax.get_legend().get_texts()] == _sets(ds)
    _legend_outside(fig, ax)
    y = ax.containers[0].lines[0].get_ydata()
    values = ds["differentiation"].sel(image_set=_sets(ds)[0], substrate="units", n_units=int(ds["n_units"].values[0])).values
    all_defined = np.isfinite(values).all()  # the synthetic set's repeats are all defined; a job's may not be
    np.testing.assert_allclose(y[np.isfinite(values).all(axis=-1)], np.median(values, axis=-1)[np.isfinite(values).all(axis=-1)], rtol=1e-12)
    if all_defined:  # the bars span the 10th to the 90th percentile of the repeats (numpy's default, linear)
        segments = ax.containers[0].lines[2][0].get_segments()
        np.testing.assert_allclose([seg[:, 1] for seg in segments], np.quantile(values, [0.1, 0.9], axis=-1).T, rtol=1e-12)
    _png_ok(fig, tmp_path / "by_layer.png")


def test_plot_results_path_and_figure(data, tmp_path):
    ds, _ = data
    fig = dp.plot_results(ds)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == ds.sizes["substrate"] * ds.sizes["n_units"]
    for ax in panels:
        _layer_axis_ok(ax, _layers(ds))
    assert len(fig.legends) == 1
    fig.draw_without_rendering()
    legend_box = fig.legends[0].get_window_extent()
    assert all(legend_box.x0 >= ax.get_window_extent().x1 for ax in panels)
    path = dp.plot_results(ds, tmp_path / "results.png")
    assert path == tmp_path / "results.png" and path.stat().st_size > 10_000


def test_by_layer_panels_fill_their_grid_spread_never_below_zero_nan_counted_units_said(synthetic):
    """Issue 22, item 10: 4 panels sat on a 2 x 3 grid; SD bars went below 0; 81 undefined repeats
    of 100 were drawn as a plain 0.0; 'n_units=200' was written over a layer of 64 channels."""
    ds, _ = synthetic
    four = ds.sel(n_units=[10, -1])  # 2 substrates x 2 n_units
    fig = dp.plot_results(four)
    assert len(fig.axes) == 4 and fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 2)
    assert len(dp.plot_results(ds).axes) == 6
    # one set's repeats: eleven 0s and one 1: mean - SD is below 0, its 10th percentile is 0
    skewed = ds.copy(deep=True)
    skewed["differentiation"].loc[dict(image_set="photos", substrate="units", n_units=10, layer="conv1")] = [0.0] * 11 + [1.0]
    values = skewed["differentiation"].sel(image_set="photos", substrate="units", n_units=10, layer="conv1").values
    assert values.mean() - values.std() < 0
    fig, ax = _new_axes()
    dp.differentiation_by_layer(skewed, ax, substrate="units", n_units=10)
    for bars in ax.containers:
        low = [seg[:, 1].min() for seg in bars.lines[2][0].get_segments()]
        assert min(low) >= 0
    # noise at predictions: 10 of 12 repeats undefined (NaN), counted in the set's colour
    counts = [t for t in ax.texts if t.get_gid() == "nan-count"]
    assert [t.get_text() for t in counts] == ["10 NaN"]
    assert counts[0].get_color() == dp.set_colors(_sets(ds))["noise"] and counts[0].xy[0] == LAYERS.index("predictions")
    # conv1 has 8 units, predictions 7: the title says what was used
    assert ax.get_title() == "units, 10 units asked, 7-10 used per layer (capped at the layer's size)"
    dp.differentiation_by_layer(ds, ax, substrate="units", n_units=-1)
    assert ax.get_title() == "units, all units (7-900 per layer)"
    assert not [t for t in ax.texts if t.get_gid() == "nan-count" and t.get_text() != "10 NaN"]


def test_an_old_results_file_with_string_n_units_still_plots(tmp_path, synthetic):
    ds, _ = synthetic
    old = ds.assign_coords(n_units=np.array(["10", "100", "all"], dtype=object))
    fig = dp.plot_results(old)
    assert [ax.get_title() for ax in fig.axes][2] == "units, all units (7-900 per layer)"


def test_plot_results_from_file(tmp_path, synthetic):
    ds, _ = synthetic
    ds.to_netcdf(tmp_path / "differentiation.nc")
    assert dp.plot_results(str(tmp_path / "differentiation.nc"), tmp_path / "fig.png").exists()


# --------------------------------------------------------------------------- 2. sampling noise


def test_sampling_noise(data, tmp_path):
    ds, _ = data
    n = int(ds["n_units"].values[0])
    fig, ax = _new_axes(14)
    dp.sampling_noise(ds, ax, substrate="units", n_units=n)
    _layer_axis_ok(ax, _layers(ds))
    assert len(ax.patches) == len(_sets(ds)) * len(_layers(ds))  # one box per (set, layer)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    has_all = -1 in ds["n_units"].values
    assert texts == _sets(ds) + (["all units (exact)"] if has_all else [])
    _legend_outside(fig, ax)
    if has_all:
        with pytest.raises(ValueError, match="no sampling distribution; choose one of"):
            dp.sampling_noise(ds, ax, substrate="units", n_units=-1)
    fig = dp.plot_sampling_noise(ds)
    sampled = [n for n in ds["n_units"].values if n != -1]
    assert len(fig.axes) == ds.sizes["substrate"] * len(sampled)
    _png_ok(fig, tmp_path / "noise.png")


# --------------------------------------------------------------------------- 3. n_units


def test_n_units_comparison(data, tmp_path):
    ds, _ = data
    fig, ax = _new_axes()
    dp.n_units_comparison(ds, ax, substrate="units")
    _layer_axis_ok(ax, _layers(ds))
    levels = [int(n) for n in ds["n_units"].values]
    assert len(ax.lines) == len(_sets(ds)) * len(levels)
    styles = {line.get_linestyle() for line in ax.lines[-len(levels):]}
    assert len(styles) == len(levels) and ax.lines[len(levels) - 1].get_linestyle() == "-"  # largest is solid
    assert [t.get_text() for t in ax.get_legend().get_texts()] == _sets(ds) + [dp.units_used_text(ds, "units", n) for n in levels]
    _legend_outside(fig, ax)
    _png_ok(dp.plot_n_units(ds), tmp_path / "n_units.png")


# --------------------------------------------------------------------------- 4. ratio


def test_ratio_to_reference(data, tmp_path):
    ds, _ = data
    fig, ax = _new_axes()
    dp.ratio_to_reference(ds, ax, substrate="units")
    _layer_axis_ok(ax, _layers(ds))
    others = [s for s in _sets(ds) if s != "noise"]
    levels = [int(n) for n in ds["n_units"].values]
    data_lines = [line for line in ax.lines if len(line.get_xdata()) == len(_layers(ds))]
    assert len(data_lines) == len(others) * len(levels)
    assert "'noise'" in ax.get_ylabel()
    # by hand: ratio of the means over defined repeats; a gap where the reference is about 0
    # (at most 1e-3 times its median over layers) and the title names those layers
    mean = ds["differentiation"].sel(substrate="units").mean("repeat", skipna=True)
    ref = mean.sel(image_set="noise").values
    usable = ref > 1e-3 * np.nanmedian(ref, axis=-1, keepdims=True)
    expected = [
        np.divide(mean.sel(image_set=s).values[j], ref[j], out=np.full(len(ref[j]), np.nan), where=usable[j])
        for s in others
        for j in range(len(levels))
    ]
    for line, want in zip(data_lines, expected):
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12, equal_nan=True)
    gaps = [layer for layer, ok in zip(_layers(ds), usable.all(axis=0)) if not ok]
    if gaps:
        assert ax.get_title().endswith(f"about 0 or undefined: {', '.join(gaps)})")
    else:
        assert "no ratio" not in ax.get_title()
    _legend_outside(fig, ax)
    _png_ok(dp.plot_ratio(ds), tmp_path / "ratio.png")


def test_ratio_explicit_reference_and_errors(synthetic):
    ds, _ = synthetic
    fig, ax = _new_axes()
    dp.ratio_to_reference(ds, ax, substrate="units", reference="cats")
    line = ax.lines[0]
    expected = ds["differentiation"].sel(substrate="units", n_units=10).mean("repeat")
    np.testing.assert_allclose(line.get_ydata(), expected.sel(image_set="photos") / expected.sel(image_set="cats"))
    # the noise set's prediction layer is 0 where defined: no ratio to it there, and the title says so
    fig, ax = _new_axes()
    dp.ratio_to_reference(ds, ax, substrate="units")
    assert ax.get_title().endswith("about 0 or undefined: predictions)")
    assert all(np.isnan(line.get_ydata()[-1]) for line in ax.lines if len(line.get_xdata()) == len(LAYERS))
    no_noise = ds.sel(image_set=["photos", "cats"])
    with pytest.raises(ValueError, match=r"no set generated as noise or named like it; name the reference set, e.g. reference='photos'"):
        dp.ratio_to_reference(no_noise, ax, substrate="units")
    with pytest.raises(ValueError, match="'dogs' is not in these results"):
        dp.plot_ratio(ds, reference="dogs")


def test_default_reference_is_the_set_generated_as_noise(synthetic):
    """As jobs/seed-reproduction.yaml names it: 'white_noise', generated with generate: noise; the
    spec recorded in the results says so. Without a record, a name containing 'noise' counts."""
    ds, _ = synthetic
    renamed = ds.assign_coords(image_set=[{"noise": "white_noise", "cats": "static"}.get(str(n), str(n)) for n in ds["image_set"].values])
    renamed.attrs["job_spec"] = "image_sets:\n  photos: data/photos\n  static: {generate: noise, count: 4}\n  white_noise: data/wn\n"
    assert dp.noise_reference(renamed) == ("static", "generated as noise: generate: noise in the job's spec")
    del renamed.attrs["job_spec"]
    assert dp.noise_reference(renamed) == ("white_noise", "its name contains 'noise'")
    fig, ax = _new_axes()
    dp.ratio_to_reference(renamed, ax, substrate="units")  # no error: the default reference is found
    expected = renamed["differentiation"].sel(substrate="units", n_units=10).mean("repeat")
    np.testing.assert_allclose(ax.lines[0].get_ydata()[:-1], (expected.sel(image_set="photos") / expected.sel(image_set="white_noise")).values[:-1])
    assert dp.noise_reference(renamed.sel(image_set=["photos", "static"])) == (None, None)


# --------------------------------------------------------------------------- 5. pair distances


def test_pair_distances(data, tmp_path):
    ds, _ = data
    name = _sets(ds)[-1]
    n = int(ds["n_images"].sel(image_set=name))
    fig, ax = _new_axes()
    dp.pair_distances(ds, ax, image_set=name, substrate="units", n_units=int(ds["n_units"].values[0]))
    _layer_axis_ok(ax, _layers(ds))
    assert len(ax.lines) == n * (n - 1) // 2 + 1  # one per pair, padding excluded, plus the median
    median = ax.lines[-1]
    assert median.get_linewidth() >= 3 and median.get_color() == "black"
    rdm = ds["rdm"].sel(image_set=name, substrate="units", n_units=int(ds["n_units"].values[0])).values[:, :n, :n]
    np.testing.assert_allclose(median.get_ydata(), [np.median(squareform(r, checks=False)) for r in rdm])
    _legend_outside(fig, ax)
    fig = dp.plot_pair_distances(ds)
    assert len(fig.axes) == len(_sets(ds))
    assert fig.axes[0].get_ylim()[1] >= np.nanmax(ds["rdm"].sel(substrate="units", n_units=int(ds["n_units"].values[0])))
    _png_ok(fig, tmp_path / "pairs.png")
    with pytest.raises(ValueError, match="rdm_max_images"):
        dp.pair_distances(ds.drop_vars("rdm"), ax, image_set=name, substrate="units", n_units="all")


# --------------------------------------------------------------------------- 6. predictions


def test_predictions(data, tmp_path):
    ds, acts = data
    first = next(iter(acts.values()))
    layer = [v for v in first.data_vars if v.startswith("units__")][-1]
    fig, ax = _new_axes()
    im = dp.prediction_heatmap(first, ax)
    assert im.get_array().shape == first[layer].shape and im.get_clim() == (0, 1)
    assert [t.get_text() for t in ax.get_yticklabels()] == [Path(str(p)).name for p in first["path"].values]
    fig = dp.plot_predictions(acts)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == len(acts)
    columns = dp.top_classes(acts)
    labels = [t.get_text() for t in heatmaps[-1].get_xticklabels()]
    assert labels == [dp.class_labels(acts)[c] for c in columns]
    assert not any(label.isdigit() for label in labels)  # every column named, whichever set it came from
    assert any(ax.get_ylabel() == "probability" for ax in fig.axes)  # the colour bar
    _png_ok(fig, tmp_path / "predictions.png")
    _png_ok(dp.plot_predictions(acts, classes="all"), tmp_path / "predictions_all.png")


def test_top1(data, tmp_path):
    ds, acts = data
    table = dp.top1_table(ds)
    assert len(table) == int(ds["n_images"].sum())
    assert list(table.columns) == ["image_set", "image", "top1_label", "top1_prob", "top5"]
    assert table["top1_prob"].between(0, 1).all()
    fig, ax = _new_axes(5, 3)
    name = _sets(ds)[-1]
    dp.top1_predictions(ds, ax, image_set=name)
    assert len(ax.patches) == int(ds["n_images"].sel(image_set=name))
    assert ax.get_xlabel() == "top-1 probability" and ax.get_xlim() == (0, 1)
    fig, ax = _new_axes(5, 3)
    dp.top1_predictions(next(iter(acts.values())), ax)  # activations work too
    assert len(dp.top1_table(next(iter(acts.values())))) == next(iter(acts.values())).sizes["image"]
    _png_ok(dp.plot_top1(ds), tmp_path / "top1.png")


def test_images(data, tmp_path):
    ds, _ = data
    fig = dp.plot_images(ds)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == int(ds["n_images"].sum())
    assert all(ax.get_title() for ax in shown)
    _png_ok(fig, tmp_path / "images.png")


def test_missing_images_are_marked(synthetic):
    ds, _ = synthetic
    fig = dp.plot_images(ds)
    marked = [ax for ax in fig.axes if any(t.get_text() == "missing" for t in ax.texts)]
    assert len(marked) == len(SETS)  # the last image of each set was never written
    fig = dp.plot_images(ds, max_images=3)  # fewer than each set holds: each row says how many of how many
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert rows == [f"{name}\n3 of {n} images" for name, n in SETS.items()]


# --------------------------------------------------------------------------- 7. filters


def test_filter_heatmaps(data, tmp_path):
    ds, acts = data
    first = next(iter(acts.values()))
    layer = dp.default_histogram_layer(first)
    fig, ax = _new_axes(6, 2)
    im = dp.filter_heatmap(first, ax, layer=layer)
    z = im.get_array()
    assert z.shape == first[f"filter_mean__{layer}"].shape
    assert float(z.mean()) == pytest.approx(0, abs=1e-9) and float(z.std()) == pytest.approx(1, rel=1e-6)
    fig = dp.plot_filter_heatmaps(acts)
    conv = [name for name in [v.split("__", 1)[1] for v in first.data_vars if v.startswith("filter_mean__")] if f"channel__{name}" in first.coords]
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == len(conv) * len(acts)
    assert [ax.get_title().split(" (")[0] for ax in heatmaps[:: len(acts)]] == conv  # rows in network order
    _png_ok(fig, tmp_path / "filters.png")
    pooled = dp.plot_filter_heatmaps(acts, layers=conv[:1], pooled=True)
    values = np.concatenate([ax.images[0].get_array().ravel() for ax in pooled.axes if ax.images])
    assert float(values.mean()) == pytest.approx(0, abs=1e-9)  # z-scored over all sets together


def test_filter_histograms(data, tmp_path):
    _, acts = data
    first = next(iter(acts.values()))
    layer = dp.default_histogram_layer(first)
    fig, ax = _new_axes(7, 2.5)
    dp.filter_histogram(first, ax, layer=layer, images=[0, 1])
    assert len(ax.patches) == 2 and ax.get_xlabel() and ax.get_ylabel()
    edges = [p.get_path().vertices[:, 0] for p in ax.patches]
    assert np.array_equal(np.unique(edges[0]), np.unique(edges[1]))  # shared bins
    _legend_outside(fig, ax)
    fig = dp.plot_filter_histograms(acts)
    assert len(fig.axes) == len(acts)
    _png_ok(fig, tmp_path / "histograms.png")
    with pytest.raises(ValueError, match="layers with filter means are"):
        dp.filter_histogram(first, ax, layer="nope")


# --------------------------------------------------------------------------- 8. differences


def test_set_differences(data, tmp_path):
    ds, _ = data
    fig, ax = _new_axes()
    dp.set_differences(ds, ax, substrate="units", n_units=int(ds["n_units"].values[-1]), n_boot=200)
    _layer_axis_ok(ax, _layers(ds))
    pairs = [s for s in _sets(ds) if s != "noise"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{s} − noise" for s in pairs]
    assert len(ax.collections) == len(pairs)  # one CI band per pair
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    line = ax.lines[0].get_ydata()
    assert band.min() <= np.nanmin(line) and band.max() >= np.nanmax(line)
    _legend_outside(fig, ax)
    fig = dp.plot_set_differences(ds, n_boot=100, pairs=[(_sets(ds)[0], _sets(ds)[-1])])
    assert len(fig.axes) == ds.sizes["substrate"] * ds.sizes["n_units"]
    _png_ok(fig, tmp_path / "differences.png")


# --------------------------------------------------------------------------- 9. movies and their controls


def test_each_movie_is_paired_with_the_control_made_from_it(tmp_path):
    """Issue 22, item 10: movies.ipynb took the one scrambled control for every movie. The pairs
    come from the source each control's movie.json records: a generator's spec (its defaults
    filled in: 'b' differs from 'a' only by a default left out of the spec) or a folder."""
    from daskdiff.stimuli.registry import generate

    small = dict(fps=10, n_frames=4, size=12)
    written = {
        "a": generate("gratings", tmp_path / "a", **small),
        "b": generate("gratings", tmp_path / "b", orientation=90, **small),
        "c": generate("gratings", tmp_path / "c", temporal_frequency=3, **small),
        "a_scrambled": generate("scrambled", tmp_path / "sa", source={"generate": "gratings", **small}, seed=0),
        "b_scrambled": generate("scrambled", tmp_path / "sb", source=str(tmp_path / "b"), seed=0),
    }
    names = list(written) + ["photos"]
    paths = np.array([written[n] for n in written] + [[str(tmp_path / "x.png")] * 4], dtype=object)
    ds = xr.Dataset({"image_path": (("image_set", "image"), paths), "fps": (("image_set",), [10.0] * 5 + [np.nan])},
                    coords={"image_set": names})
    assert dp.movie_controls(ds) == {"a": "a_scrambled", "b": "b_scrambled", "c": None}
