"""Top layer: network versus mouse: does a network layer rank the stimuli as a group of cortical
recordings does? (Spearman across stimuli, with permutation p-values, bootstrap intervals over
sessions and Holm's adjustment across layers.)

Two layers, as elsewhere in the package: the statistics are plain numpy in
:mod:`daskdiff.core.rank_correlation`; this module reads the two sources (a results file and a
table of neural recordings), matches their stimuli, calls the core per neural group and rebuilds
the labels (:func:`compare`), and turns the result into the CSV table :func:`comparison_table`
(what ``daskdiff compare`` writes and ``daskdiff plot compare.csv`` draws).

The neural table is the published OpenScope layout (Mayner et al. 2022, eNeuro 9(1),
github.com/wmayner/openscope-differentiation): one row per session x stimulus x trial, with the
stimulus name, the groups' columns (area, layer, Cre line, ...), the session and a value (by
default ``normalized differentiation``: spectral differentiation / sqrt(ncells)).
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from .core.rank_correlation import bootstrap_interval, EXACT_LIMIT, holm, permutation_test
from .errors import InputError, shorten
from .io.atomic import atomic_write
from .io.results import open_results
from .io.results_attrs import n_units_value
from .logs import reporter, warn

Measure = Literal["auto", "images", "spectral"]
Unmatched = Literal["error", "warn"]

DEFAULT_VALUE = "normalized differentiation"
"""The neural table's value column of the published tables."""

STATISTICS = ("n_stimuli", "spearman_rho", "p_value", "p_holm", "ci_low", "ci_high")
"""The CSV's columns after the group's, in order."""

NETWORK_COLUMNS = ("layer", "substrate", "n_units")
"""The CSV's first columns: the network's layer, substrate and number of units (-1: all)."""


def _images(ds: xr.Dataset, sets: Sequence[str]) -> str:
    if ds["differentiation"].attrs.get("measured", 1) == 0:
        raise InputError("these results hold no image measure (analysis.measures left 'images' out); use measure='spectral'")
    return "differentiation"


def _spectral(ds: xr.Dataset, sets: Sequence[str]) -> str:
    if "spectral_differentiation" not in ds:
        raise InputError("these results hold no spectral_differentiation (the job's analysis.measures has no 'spectral'); "
                         "use measure='images', or add spectral to analysis.measures and re-run the job")
    fps = ds["fps"].sel(image_set=list(sets)).values if "fps" in ds else np.full(len(sets), np.nan)
    stills = [s for s, f in zip(sets, fps) if not np.isfinite(f)]
    if stills:
        raise InputError(f"sets {stills} are not movies, so they have no spectral differentiation; use measure='images'")
    return "spectral_differentiation"


def _auto(ds: xr.Dataset, sets: Sequence[str]) -> str:
    movies = "spectral_differentiation" in ds and "fps" in ds and bool(np.all(np.isfinite(ds["fps"].sel(image_set=list(sets)).values)))
    return _spectral(ds, sets) if movies else _images(ds, sets)


MEASURES: dict[str, Callable[[xr.Dataset, Sequence[str]], str]] = {"auto": _auto, "images": _images, "spectral": _spectral}
"""``measure`` -> the results variable it compares: ``auto`` takes the spectral measure when the
results hold it and every matched set is a movie, else the image measure (one measure for all
stimuli: ranks across two measures would compare unlike quantities)."""


def network_values(results: xr.Dataset, sets: Sequence[str], measure: Measure = "auto") -> tuple[xr.DataArray, str]:
    """Each set's differentiation, mean over repeats: (substrate, n_units, layer, image_set), and the variable used.

    ``n_units`` becomes int64 with -1 for all units; NaN repeats (undefined, or not drawn for
    ``n_units='all'``) are left out of the mean.
    """
    if measure not in MEASURES:
        raise InputError(f"measure={measure!r} is not one of {sorted(MEASURES)}")
    variable = MEASURES[measure](results, sets)
    values = results[variable].sel(image_set=list(sets)).mean("repeat", skipna=True)
    values = values.assign_coords(n_units=np.asarray([n_units_value(v) for v in values["n_units"].values], dtype=np.int64))
    keep = [d for d in ("substrate", "n_units", "layer", "image_set") if d in values.dims]
    return values.transpose(*keep).load(), variable


def read_table(neural: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The neural table: a DataFrame as given, or read from a CSV or parquet file."""
    if isinstance(neural, pd.DataFrame):
        return neural
    path = Path(neural)
    if not path.is_file():
        raise InputError(f"neural table {shorten(str(path))} does not exist; give a .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise InputError(f"reading {path.name} needs pyarrow (pip install pyarrow); or save the table as CSV")
        return pd.read_parquet(path)
    if suffix != ".csv":
        raise InputError(f"cannot read neural table {path.name}: name a .csv or .parquet file")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path} is not a readable CSV table ({str(err).strip()})") from None


def check_table(table: pd.DataFrame, *, value: str, by: Sequence[str], stimulus: str, session: str, name: str = "the neural table") -> None:
    """InputError when a needed column is absent (naming the present ones), or holds NaN or non-numbers."""
    needed = [stimulus, session, value, *by]
    missing = [c for c in dict.fromkeys(needed) if c not in table.columns]
    if missing:
        raise InputError(f"{name} has no column(s) {missing}; its columns are {list(map(str, table.columns))}; "
                         "name the right ones with --value/--by/--stimulus/--session (value=, by=, stimulus=, session=)")
    if len(table) == 0:
        raise InputError(f"{name} has no rows")
    if not pd.api.types.is_numeric_dtype(table[value]):
        raise InputError(f"{name}'s column {value!r} is not numeric (dtype {table[value].dtype}); name the value column with --value")
    for column in dict.fromkeys(needed):
        bad = table[column].isna().to_numpy()
        if column == value:
            bad = bad | ~np.isfinite(table[column].to_numpy(dtype=np.float64))
        if bad.any():
            rows = np.flatnonzero(bad)
            raise InputError(f"{name}'s column {column!r} has {rows.size} missing or non-finite value(s) (first at data row "
                             f"{rows[0] + 1}); drop or fill those rows first, e.g. table.dropna(subset=[{column!r}])")


def read_map(mapping: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """``{results set: table stimulus}`` from a dict or a YAML file of ``set: stimulus`` lines (None: {})."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        path = Path(mapping)
        if not path.is_file():
            raise InputError(f"stimulus map {shorten(str(path))} does not exist; write a YAML file of 'results set: table stimulus' lines")
        try:
            mapping = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InputError(f"stimulus map {path} is not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(mapping, Mapping):
            raise InputError(f"stimulus map {path} must be a mapping of 'results set: table stimulus' lines, e.g. natural: natural_movie_one")
    return {str(k): str(v) for k, v in mapping.items()}


def match_stimuli(sets: Sequence[str], stimuli: Sequence[str], mapping: Mapping[str, str], *, unmatched: Unmatched = "error",
                  echo: Callable[[str], None] | None = None) -> tuple[list[str], list[str], list[str], list[str]]:
    """Pair the results' sets with the table's stimuli: by name, or through ``mapping`` (set -> stimulus).

    Returns ``(sets, stimuli, unmatched sets, unmatched stimuli)``, the matched pairs in the
    results' set order. A name in one source only is an InputError with ``unmatched='error'``,
    and is said (``echo``) and returned with ``unmatched='warn'``; never silently dropped.
    """
    if unmatched not in ("error", "warn"):
        raise InputError(f"unmatched={unmatched!r} is not one of ['error', 'warn']")
    unknown = [k for k in mapping if k not in sets]
    if unknown:
        raise InputError(f"the stimulus map names sets {unknown} that are not in the results; the results' sets are {list(sets)}")
    wanted = {s: mapping.get(s, s) for s in sets}
    targets = list(wanted.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise InputError(f"the stimulus map sends several results sets to the same stimulus {twice}; map each set to its own")
    present = set(stimuli)
    pairs = [(s, t) for s, t in wanted.items() if t in present]
    only_results = [s for s, t in wanted.items() if t not in present]
    only_table = [t for t in stimuli if t not in set(targets)]
    if only_results or only_table:
        what = (f"results sets {only_results} have no stimulus of that name in the table" if only_results else "") + \
               ("; " if only_results and only_table else "") + \
               (f"table stimuli {only_table} are no set of the results" if only_table else "")
        if unmatched == "error":
            raise InputError(f"stimuli in one source only: {what}; pair names with --map MAP.yaml (lines 'results set: table "
                             f"stimulus'), or pass --unmatched warn (unmatched='warn') to compare the {len(pairs)} matched ones")
        warn(echo or reporter(__name__), f"warning: compared on {len(pairs)} matched stimuli; unmatched: {what}")
    if len(pairs) < 2:
        raise InputError(f"{len(pairs)} stimulus matched ({[t for _, t in pairs]}) between the results' sets {list(sets)} and the "
                         f"table's stimuli {list(stimuli)}; a correlation across stimuli needs at least 2 (and 5 or more to "
                         "reach p < 0.05): match more names, e.g. with --map")
    return [s for s, _ in pairs], [t for _, t in pairs], only_results, only_table


def _group_seed(seed: int, purpose: int, key: tuple[str, ...]) -> np.random.SeedSequence:
    """A seed for one neural group that depends on the group's labels, not its position among the groups."""
    return np.random.SeedSequence(seed, spawn_key=(purpose, zlib.crc32("\x1f".join(key).encode())))


def _coordinate_names(by: Sequence[str]) -> list[str]:
    """The group's coordinate (and CSV column) names: a ``by`` column that clashes with a network column gets ``neural_``."""
    taken = set(NETWORK_COLUMNS) | set(STATISTICS) | {"group", "stimulus", "image_set"}
    return [f"neural_{c}" if c in taken else c for c in by]


def compare(
    results: xr.Dataset | str | Path,
    neural: pd.DataFrame | str | Path,
    *,
    value: str = DEFAULT_VALUE,
    by: Sequence[str] = ("area", "layer"),
    stimulus: str = "stimulus",
    session: str = "session",
    mapping: Mapping[str, str] | str | Path | None = None,
    measure: Measure = "auto",
    unmatched: Unmatched = "error",
    n_permutations: int = 9999,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    echo: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Spearman correlation across stimuli between each network layer and each neural group.

    Parameters
    ----------
    results : xarray.Dataset or path
        A results Dataset, or the ``differentiation.nc`` a job wrote.
    neural : pandas.DataFrame or path
        The neural table (CSV, or parquet with pyarrow): one row per session x stimulus x trial.
    value : str
        The table's column to compare with.
    by : sequence of str
        The table's columns that define a neural group (e.g. area and cortical layer).
    stimulus, session : str
        The table's columns naming the stimulus and the recording session.
    mapping : mapping, path or None
        Results set -> table stimulus, or a YAML file of such lines; sets not named keep their name.
    measure : {'auto', 'images', 'spectral'}
        The network's value per set (see :data:`MEASURES`).
    unmatched : {'error', 'warn'}
        What a stimulus in one source only does: stop, or be listed and left out.
    n_permutations : int
        Monte Carlo draws when the stimuli are too many to enumerate all orders.
    n_bootstrap : int
        Bootstrap resamples of each group's sessions.
    seed : int
        Seeds every random draw (through :class:`numpy.random.SeedSequence`, per group).
    confidence : float
        Level of the bootstrap interval.
    echo : callable, optional
        Receives the warning line about unmatched stimuli (default: the module's logger).

    Returns
    -------
    xarray.Dataset
        ``spearman_rho``, ``p_value``, ``p_holm``, ``ci_low``, ``ci_high`` over (substrate,
        n_units, layer, group); ``n_stimuli``, ``n_sessions`` and ``permutations`` over group;
        the compared values ``network_value`` (substrate, n_units, layer, stimulus) and
        ``neural_value`` (group, stimulus); the group's ``by`` columns as coordinates on
        ``group`` (renamed ``neural_<name>`` where the name is a network column, e.g.
        ``neural_layer``); the matched results set of each stimulus as ``image_set``.

    Notes
    -----
    - Network value of a stimulus: the mean over repeats of the chosen measure (NaN repeats
      left out). Spearman's rho is unchanged by dividing a layer's values by a constant, so the
      normalised spectral measure would give the same rho as the spectral one.
    - Neural value of a group and stimulus: the mean over trials within each session, then the
      mean over the group's sessions (each session weighs the same, whatever its trials).
    - A group that lacks a stimulus is compared on the stimuli it has (``n_stimuli``).
    - p-value: two-sided permutation test of the pairing of stimuli (exact over all orders when
      ``n! <= max(n_permutations, 8!)``, else ``n_permutations`` seeded draws; see
      :func:`daskdiff.core.rank_correlation.permutation_test`). ``p_holm``: Holm's adjustment
      across the network layers, for each (substrate, n_units, group).
    - Interval: percentile bootstrap over the group's sessions, the network values held fixed
      (:func:`daskdiff.core.rank_correlation.bootstrap_interval`).
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise InputError("by names no column; give the table's columns that define a neural group, e.g. --by area,layer "
                         "(by=('area', 'layer'))")
    if isinstance(results, (str, Path)):
        with open_results(results) as ds:
            return compare(ds.load(), neural, value=value, by=by, stimulus=stimulus, session=session, mapping=mapping,
                           measure=measure, unmatched=unmatched, n_permutations=n_permutations, n_bootstrap=n_bootstrap,
                           seed=seed, confidence=confidence, echo=echo)
    name = f"neural table {Path(neural).name}" if isinstance(neural, (str, Path)) else "the neural table"
    table = read_table(neural)
    check_table(table, value=value, by=by, stimulus=stimulus, session=session, name=name)
    table = table.assign(**{c: table[c].astype(str) for c in (stimulus, session, *by)})
    all_sets = [str(s) for s in results["image_set"].values]
    stimuli_in_table = list(dict.fromkeys(table[stimulus]))
    sets, stimuli, only_results, only_table = match_stimuli(all_sets, stimuli_in_table, read_map(mapping),
                                                            unmatched=unmatched, echo=echo)
    network, variable = network_values(results, sets, measure)
    net = network.values  # (substrate, n_units, layer, stimulus)
    lead = net.shape[:-1]

    per_session = table[table[stimulus].isin(stimuli)].groupby([*by, session, stimulus], sort=True)[value].mean()
    groups = list(per_session.groupby(level=list(range(len(by))), sort=True))
    G, n = len(groups), len(stimuli)
    stats = {k: np.full(lead + (G,), np.nan) for k in ("spearman_rho", "p_value", "ci_low", "ci_high")}
    neural_value = np.full((G, n), np.nan)
    n_stimuli, n_sessions, permutations = (np.zeros(G, dtype=np.int64) for _ in range(3))
    labels = []
    for g, (key, series) in enumerate(groups):
        key = tuple(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        labels.append(key)
        matrix = series.droplevel(list(range(len(by)))).unstack(stimulus).reindex(columns=stimuli).to_numpy(dtype=np.float64)
        seen = np.isfinite(matrix).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            neural_value[g] = np.where(seen > 0, np.nansum(matrix, axis=0) / seen, np.nan)  # NaN: no session saw it
        have = np.flatnonzero(np.isfinite(neural_value[g]))
        n_stimuli[g], n_sessions[g] = have.size, matrix.shape[0]
        if have.size < 2:
            continue
        x = net[..., have].reshape(-1, have.size)
        test = permutation_test(x, neural_value[g, have], n_permutations=n_permutations, seed=_group_seed(seed, 0, key))
        low, high = bootstrap_interval(x, matrix[:, have], n_bootstrap=n_bootstrap, seed=_group_seed(seed, 1, key), confidence=confidence)
        permutations[g] = test.n_permutations
        for k, v in (("spearman_rho", test.rho), ("p_value", test.p_value), ("ci_low", low), ("ci_high", high)):
            stats[k][..., g] = v.reshape(lead)
    stats["p_holm"] = holm(stats["p_value"], axis=network.dims.index("layer"))

    dims = network.dims[:-1] + ("group",)
    names = _coordinate_names(by)
    coords: dict[str, Any] = {d: network[d].values for d in network.dims[:-1]}
    coords.update(group=[" / ".join(k) for k in labels], stimulus=stimuli, image_set=("stimulus", sets))
    coords.update({c: ("group", [k[i] for k in labels]) for i, c in enumerate(names)})
    out = xr.Dataset(
        {**{k: (dims, stats[k]) for k in ("spearman_rho", "p_value", "p_holm", "ci_low", "ci_high")},
         "n_stimuli": ("group", n_stimuli), "n_sessions": ("group", n_sessions), "permutations": ("group", permutations),
         "network_value": (network.dims[:-1] + ("stimulus",), net), "neural_value": (("group", "stimulus"), neural_value)},
        coords=coords,
    )
    out["n_units"].attrs.update(flag_values=-1, flag_meanings="all")
    out["p_value"].attrs["description"] = "two-sided permutation p-value of the pairing of stimuli"
    out["p_holm"].attrs["description"] = "Holm-adjusted across the network layers, per (substrate, n_units, group)"
    out["permutations"].attrs["description"] = f"orders of the stimuli evaluated: n! when exact (n! <= max(n_permutations, {EXACT_LIMIT})), else Monte Carlo draws"
    out.attrs.update(
        network_variable=variable, measure=measure, value=value, by=list(by), group_columns=names, stimulus_column=stimulus,
        session_column=session, matched=[f"{s} -> {t}" for s, t in zip(sets, stimuli)], unmatched_results=only_results,
        unmatched_table=only_table, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence,
        method="Spearman rho across stimuli of the network's mean over repeats and the group's mean over sessions of "
               "per-session trial means; permutation p (two-sided); percentile bootstrap over sessions; Holm across layers",
    )
    return out


def comparison_table(ds: xr.Dataset) -> pd.DataFrame:
    """The CSV table of a :func:`compare` Dataset: ``layer, substrate, n_units, <group columns>, n_stimuli, spearman_rho,
    p_value, p_holm, ci_low, ci_high``, one row per (substrate, n_units, layer, group) in that nesting."""
    names = list(ds.attrs["group_columns"])
    rows = ds[["spearman_rho", "p_value", "p_holm", "ci_low", "ci_high"]].to_dataframe().reset_index()
    groups = pd.DataFrame({"group": ds["group"].values, "n_stimuli": ds["n_stimuli"].values,
                           **{c: ds[c].values for c in names}})
    rows = rows.drop(columns=[c for c in rows.columns if c in names]).merge(groups, on="group", how="left")
    return rows[[*NETWORK_COLUMNS, *names, *STATISTICS]]


def write_comparison(ds: xr.Dataset, path: str | Path) -> Path:
    """Write :func:`comparison_table` of ``ds`` as CSV to ``path`` (atomically); returns the path."""
    frame = comparison_table(ds)
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_comparison(path: str | Path) -> pd.DataFrame:
    """A CSV that :func:`write_comparison` wrote; InputError naming what is missing otherwise."""
    frame = read_table(path)
    columns = list(frame.columns)
    missing = [c for c in (*NETWORK_COLUMNS, *STATISTICS) if c not in columns]
    if missing:
        raise InputError(f"{Path(path).name} has no column(s) {missing}: it is not a table 'daskdiff compare' wrote "
                         f"(its columns are {columns})")
    return frame


def group_columns(frame: pd.DataFrame) -> list[str]:
    """The neural group's columns of a comparison table: those between ``n_units`` and ``n_stimuli``."""
    columns = list(frame.columns)
    return columns[columns.index("n_units") + 1: columns.index("n_stimuli")]
