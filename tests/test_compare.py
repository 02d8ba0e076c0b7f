"""Network versus mouse (issue 25, part 2): Spearman across stimuli, its permutation p-value,
bootstrap over sessions and Holm's adjustment, each against scipy or a hand computation; the
labelled comparison on a hand-made results Dataset and the shipped synthetic neural table; bad
input; the CLI end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import xarray as xr

from daskdiff.cli import main
from daskdiff.comparison import compare, comparison_table, read_comparison, write_comparison
from daskdiff.core.rank_correlation import bootstrap_interval, holm, permutation_test, spearman
from daskdiff.errors import InputError

TABLE = Path(__file__).resolve().parent / "data" / "neural_synthetic.csv"
STIMULI = ["natural", "scrambled", "gratings", "noise", "dots", "montage", "mousecam", "snake"]
"""The shipped table's stimuli; its V1 / L2/3 group's mean grows with the position here, its LM / L5 group's does not."""
LAYERS = ["conv1", "conv2", "fc"]


def rho_with(y):
    """Spearman's rho with ``y`` as a statistic of one sample for scipy's permutation_test (vectorised: the
    Pearson correlation of scipy's average ranks); permuting that one sample is the pairings test."""
    ry = st.rankdata(y) - np.mean(st.rankdata(y))

    def statistic(a, axis=-1):
        ra = st.rankdata(a, axis=-1)
        ra = ra - ra.mean(axis=-1, keepdims=True)
        return (ra @ ry) / np.sqrt((ra**2).sum(axis=-1) * (ry**2).sum())

    return statistic


def make_results(sets=STIMULI, *, n_units=("200", "all"), spectral=False, repeats=3) -> xr.Dataset:
    """A results Dataset with the file's dims: conv1 grows with the set's position, conv2 falls, fc is shuffled."""
    k = np.arange(len(sets), dtype=float)
    base = np.stack([k, -k, np.random.default_rng(5).permutation(k)])  # (layer, set)
    noise = np.random.default_rng(1).normal(0, 0.01, size=(len(sets), 2, len(n_units), 3, repeats))
    values = 10 + base.T[:, None, None, :, None] + noise  # (set, substrate, n_units, layer, repeat)
    values[:, :, [str(u) in ("all", "-1") for u in n_units], :, 1:] = np.nan  # 'all': repeat 0 only
    dims = ("image_set", "substrate", "n_units", "layer", "repeat")
    ds = xr.Dataset({"differentiation": (dims, values)},
                    coords={"image_set": list(sets), "substrate": ["units", "filter_mean"], "n_units": list(n_units),
                            "layer": LAYERS, "repeat": np.arange(repeats)})
    if spectral:
        ds["spectral_differentiation"] = (dims, -values)  # reversed ranks: tells which measure was used
        ds["fps"] = ("image_set", np.full(len(sets), 30.0))
    return ds


# ---------------------------------------------------------------- the numeric core


@pytest.mark.parametrize("n", [3, 5, 9])
def test_spearman_matches_scipy_with_ties(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, size=(4, n)).astype(float)  # ties
    y = rng.normal(size=n)
    for row in x:
        expected = st.spearmanr(row, y).statistic if np.ptp(row) > 0 else np.nan
        np.testing.assert_allclose(spearman(row, y), expected, rtol=1e-12, atol=1e-14)
    assert np.isnan(spearman(np.ones(n), y))  # constant: no ranks to correlate


@pytest.mark.parametrize("n", [4, 6, 7])
def test_exact_permutation_p_matches_scipy(n):
    rng = np.random.default_rng(10 + n)
    x = rng.normal(size=(3, n))
    x[2] = np.arange(n) + 0.1 * rng.normal(size=n)  # a strong relation: a small p
    y = np.arange(n, dtype=float)
    y[1] = y[0]  # a tie
    test = permutation_test(x, y)
    assert test.exact and test.n_permutations == np.prod(np.arange(1, n + 1))
    for row, p, rho in zip(x, test.p_value, test.rho):
        ref = st.permutation_test((row,), rho_with(y), permutation_type="pairings", n_resamples=np.inf, vectorized=True)
        np.testing.assert_allclose(p, ref.pvalue, rtol=1e-12)
        np.testing.assert_allclose(rho, st.spearmanr(row, y).statistic, rtol=1e-12)


def test_monte_carlo_permutation_p_agrees_with_scipy_and_is_seeded():
    rng = np.random.default_rng(3)
    n, draws = 11, 4000
    y = rng.normal(size=n)
    x = np.stack([y + rng.normal(0, 1.2, size=n), rng.normal(size=n)])
    test = permutation_test(x, y, n_permutations=draws, seed=7)
    assert not test.exact and test.n_permutations == draws
    for row, p in zip(x, test.p_value):
        ref = st.permutation_test((row,), rho_with(y), permutation_type="pairings", n_resamples=20 * draws,
                                  vectorized=True, rng=0).pvalue
        assert abs(p - ref) < 4 * np.sqrt(ref * (1 - ref) / draws) + 1 / draws, (p, ref)
        assert p >= 1 / (draws + 1)  # the observed order counts: never 0
    np.testing.assert_array_equal(permutation_test(x, y, n_permutations=draws, seed=7).p_value, test.p_value)
    assert not np.array_equal(permutation_test(x, y, n_permutations=draws, seed=8).p_value, test.p_value)


def test_holm_against_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02])
    # NaN is no member of the family: m = 2, so 0.01 * 2 and 0.6 * 1
    np.testing.assert_allclose(holm(np.array([0.01, np.nan, 0.6])), [0.02, np.nan, 0.6])
    # 0.7 * 2 clips at 1, and 0.9 * 1 is raised to the running maximum
    np.testing.assert_allclose(holm(np.array([0.9, 0.7])), [1.0, 1.0])
    stacked = holm(np.array([[0.01, 0.2], [0.04, 0.3]]), axis=0)  # families down the columns: 0.2 * 2 = 0.4 >= 0.3 * 1
    np.testing.assert_allclose(stacked, [[0.02, 0.4], [0.04, 0.4]])


def test_bootstrap_interval_restates_the_procedure_and_depends_only_on_the_seed():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6))
    sessions = x[0] + rng.normal(0, 1.0, size=(5, 6))
    sessions[4, 2] = np.nan  # session 5 did not see stimulus 3
    low, high = bootstrap_interval(x, sessions, n_bootstrap=300, seed=11, confidence=0.9)
    draws = np.random.default_rng(11).integers(0, 5, size=(300, 5))
    by_hand = []
    for d in draws:
        means = np.nanmean(sessions[d], axis=0)
        by_hand.append([st.spearmanr(row, means).statistic for row in x])
    np.testing.assert_allclose(low, np.percentile(by_hand, 5, axis=0), rtol=1e-10)
    np.testing.assert_allclose(high, np.percentile(by_hand, 95, axis=0), rtol=1e-10)
    again = bootstrap_interval(x, sessions, n_bootstrap=300, seed=11, confidence=0.9)
    np.testing.assert_array_equal(again, (low, high))


# ---------------------------------------------------------------- the labelled comparison


@pytest.fixture(scope="module")
def planted():
    return compare(make_results(), TABLE, n_bootstrap=400)


def test_planted_relation_is_found_and_the_null_group_is_not(planted):
    one = planted.sel(substrate="units", n_units=200)
    v1 = one.sel(group="V1 / L2/3")
    np.testing.assert_allclose(v1["spearman_rho"].sel(layer=["conv1", "conv2"]), [1.0, -1.0], rtol=1e-12)
    assert v1["p_holm"].sel(layer="conv1") < 0.001 and v1["p_holm"].sel(layer="conv2") < 0.001
    assert v1["ci_low"].sel(layer="conv1") > 0.8 and v1["ci_high"].sel(layer="conv2") < -0.8
    lm = one.sel(group="LM / L5")
    assert (lm["p_value"] > 0.05).all(), lm["p_value"].values
    assert int(one["permutations"].sel(group="V1 / L2/3")) == 40320  # 8 stimuli: every order enumerated
    assert list(planted["area"].values) == ["LM", "V1"] and list(planted["neural_layer"].values) == ["L5", "L2/3"]
    assert list(planted["n_units"].values) == [200, -1] and planted["n_units"].dtype == np.int64
    assert planted.attrs["network_variable"] == "differentiation" and planted.attrs["unmatched_table"] == []


def test_values_are_means_over_repeats_and_over_sessions_of_trial_means():
    results = make_results(STIMULI[:5])
    table = pd.DataFrame({
        "stimulus": ["natural"] * 3 + ["scrambled"] * 1 + STIMULI[2:5],
        "area": "V1", "layer": "L4", "session": ["a", "a", "b", "a", "a", "a", "a"],
        "normalized differentiation": [1.0, 3.0, 10.0, 4.0, 5.0, 6.0, 7.0],
    })
    out = compare(results, table, n_bootstrap=10)
    # natural: session a's trials average 2, session b's one trial 10 -> (2 + 10) / 2, not (1 + 3 + 10) / 3
    np.testing.assert_allclose(out["neural_value"].sel(group="V1 / L4").values, [6.0, 4.0, 5.0, 6.0, 7.0])
    expected = results["differentiation"].sel(substrate="units", n_units="200").mean("repeat")
    np.testing.assert_allclose(out["network_value"].sel(substrate="units", n_units=200).values, expected.values.T)
    np.testing.assert_allclose(out["network_value"].sel(substrate="units", n_units=-1).values,
                               results["differentiation"].sel(substrate="units", n_units="all", repeat=0).values.T)


def test_int_n_units_with_minus_one_for_all_gives_the_same_as_string_labels(planted):
    ints = make_results(n_units=(200, -1))
    ints = ints.assign_coords(n_units=np.asarray([200, -1], dtype=np.int64))
    again = compare(ints, TABLE, n_bootstrap=400)
    xr.testing.assert_identical(again, planted)


def test_measure_auto_takes_the_spectral_measure_of_movies_and_the_flag_chooses():
    results = make_results(spectral=True)
    auto = compare(results, TABLE, n_bootstrap=10)
    images = compare(results, TABLE, n_bootstrap=10, measure="images")
    assert auto.attrs["network_variable"] == "spectral_differentiation"
    assert images.attrs["network_variable"] == "differentiation"
    v1 = dict(layer="conv1", group="V1 / L2/3", substrate="units", n_units=200)
    np.testing.assert_allclose([auto["spearman_rho"].sel(v1), images["spearman_rho"].sel(v1)], [-1.0, 1.0], rtol=1e-12)
    with pytest.raises(InputError, match="no spectral_differentiation.*measure='images'"):
        compare(make_results(), TABLE, measure="spectral")


def test_names_matched_through_a_yaml_map_and_unmatched_ones_listed(tmp_path):
    renamed = make_results().assign_coords(image_set=[f"set{i}" for i in range(8)])
    mapping = tmp_path / "map.yaml"
    mapping.write_text("".join(f"set{i}: {name}\n" for i, name in enumerate(STIMULI[:6])))
    with pytest.raises(InputError, match=r"results sets \['set6', 'set7'\].*table stimuli \['mousecam', 'snake'\].*--map"):
        compare(renamed, TABLE, mapping=mapping)
    said = []
    out = compare(renamed, TABLE, mapping=mapping, unmatched="warn", echo=said.append, n_bootstrap=10)
    assert list(out["stimulus"].values) == STIMULI[:6] and list(out["image_set"].values) == [f"set{i}" for i in range(6)]
    assert out.attrs["unmatched_results"] == ["set6", "set7"] and out.attrs["unmatched_table"] == ["mousecam", "snake"]
    assert len(said) == 1 and said[0].startswith("warning: compared on 6 matched stimuli") and "set6" in said[0]
    assert (out["n_stimuli"] == 6).all()


def test_csv_columns_and_rows(planted, tmp_path):
    path = write_comparison(planted, tmp_path / "compare.csv")
    frame = read_comparison(path)
    assert list(frame.columns) == ["layer", "substrate", "n_units", "area", "neural_layer", "n_stimuli", "spearman_rho",
                                   "p_value", "p_holm", "ci_low", "ci_high"]
    assert len(frame) == 3 * 2 * 2 * 2
    row = frame[(frame.layer == "conv1") & (frame.substrate == "units") & (frame.n_units == 200) & (frame.area == "V1")]
    assert row["spearman_rho"].item() == pytest.approx(1.0) and row["n_stimuli"].item() == 8 and row["neural_layer"].item() == "L2/3"
    pd.testing.assert_frame_equal(frame, comparison_table(planted), check_dtype=False)


# ---------------------------------------------------------------- bad input


def table_frame() -> pd.DataFrame:
    return pd.read_csv(TABLE)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns=["session"]), r"has no column\(s\) \['session'\]; its columns are \['stimulus', 'area', 'layer', 'cre line'"),
    (lambda t: t.assign(**{"normalized differentiation": t["normalized differentiation"].where(t.index != 5)}),
     r"column 'normalized differentiation' has 1 missing or non-finite value\(s\) \(first at data row 6\)"),
    (lambda t: t[t.stimulus != "snake"], r"results sets \['snake'\] have no stimulus of that name in the table"),
    (lambda t: t.assign(area=t["area"].where(t.index != 0)), r"column 'area' has 1 missing"),
])
def test_bad_tables_are_one_clear_error(change, message):
    with pytest.raises(InputError, match=message):
        compare(make_results(), change(table_frame()))


def test_a_group_without_some_stimulus_is_compared_on_those_it_has():
    table = table_frame()
    table = table[~((table.area == "LM") & table.stimulus.isin(["dots", "snake"]))]
    out = compare(make_results(), table, n_bootstrap=20, unmatched="warn", echo=lambda line: None)
    assert out["n_stimuli"].values.tolist() == [6, 8]
    assert np.isnan(out["neural_value"].sel(group="LM / L5", stimulus=["dots", "snake"])).all()
    expected = st.spearmanr(out["network_value"].sel(substrate="units", n_units=200, layer="fc").drop_sel(stimulus=["dots", "snake"]),
                            out["neural_value"].sel(group="LM / L5").dropna("stimulus")).statistic
    assert float(out["spearman_rho"].sel(substrate="units", n_units=200, layer="fc", group="LM / L5")) == pytest.approx(expected)


def test_one_stimulus_only_is_an_error():
    with pytest.raises(InputError, match=r"1 stimulus matched \(\['natural'\]\).*needs at least 2"):
        compare(make_results(["natural"]), table_frame().query("stimulus == 'natural'"))


def test_a_stimulus_only_the_table_has_is_an_error():
    with pytest.raises(InputError, match=r"table stimuli \['snake'\] are no set of the results.*--unmatched warn"):
        compare(make_results(STIMULI[:7]), TABLE)


def test_parquet_needs_pyarrow_or_reads(tmp_path):
    path = tmp_path / "table.parquet"
    path.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"reading table.parquet needs pyarrow \(pip install pyarrow\); or save the table as CSV"):
            compare(make_results(), path)
    else:
        table_frame().to_parquet(path)
        assert compare(make_results(), path, n_bootstrap=10)["n_stimuli"].values.tolist() == [8, 8]


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    results = tmp_path / "differentiation.nc"
    make_results().to_netcdf(results)
    table = tmp_path / "neural.csv"
    table_frame().drop(columns=["stimulus"]).to_csv(table, index=False)
    assert main(["compare", str(results), str(table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("daskdiff compare: error: neural table neural.csv has no column(s) ['stimulus']"), err


# ---------------------------------------------------------------- the figure and the CLI


def test_heat_map_marks_the_significant_cells(planted):
    from daskdiff.plot import plot_comparison

    frame = comparison_table(planted)
    fig = plot_comparison(frame, alpha=0.05)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 4  # 2 substrates x 2 n_units
    marks = sum(1 for ax in axes for text in ax.texts if "*" in text.get_text())
    assert marks == int((frame["p_holm"] < 0.05).sum()) and marks >= 8


@pytest.mark.subprocess
def test_cli_compare_and_plot_end_to_end(tmp_path):
    results = tmp_path / "differentiation.nc"
    make_results().to_netcdf(results)
    daskdiff = str(Path(sys.executable).parent / "daskdiff")
    out = tmp_path / "compare.csv"
    done = subprocess.run([daskdiff, "compare", str(results), str(TABLE), "--by", "area", "-o", str(out), "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(out)
    assert list(frame.columns[:5]) == ["layer", "substrate", "n_units", "area", "n_stimuli"]
    expected = comparison_table(compare(make_results(), TABLE, by=["area"], seed=3))
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    figure = tmp_path / "compare.png"
    done = subprocess.run([daskdiff, "plot", str(out), "-o", str(figure)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_groups_draws_do_not_depend_on_the_other_groups(planted):
    """Seeds come from the group's labels: V1 alone gets the interval it gets beside LM (and a
    Monte Carlo p-value too, forced here by allowing fewer permutations than 8!)."""
    alone = compare(make_results(), table_frame().query("area == 'V1'"), n_bootstrap=400)
    xr.testing.assert_identical(alone[["ci_low", "ci_high", "p_value"]], planted[["ci_low", "ci_high", "p_value"]].sel(group=["V1 / L2/3"]))
    few = dict(n_bootstrap=5, n_permutations=500)
    results = make_results(STIMULI + ["extra"])
    table = pd.concat([table_frame(), table_frame().query("stimulus == 'snake'").assign(stimulus="extra")])
    both = compare(results, table, **few)
    assert (both["permutations"] == 500).all()  # 9! orders > max(500, 8!): Monte Carlo
    xr.testing.assert_identical(compare(results, table.query("area == 'V1'"), **few)["p_value"], both["p_value"].sel(group=["V1 / L2/3"]))


def test_compare_help_gives_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("Spearman correlation across stimuli", "(default: normalized differentiation)", "(default: area,layer)",
                   "--map MAP", "{auto,images,spectral}", "(default: compare.csv)"):
        assert phrase in text, (phrase, text)
