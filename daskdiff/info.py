"""Top layer: ``daskdiff info``, a short, human summary of a results file."""

from __future__ import annotations

import json
from pathlib import Path

from .io.results import open_results
from .io.results_attrs import n_units_text


def describe_results(path: str | Path) -> str:
    """Sets, layers, n_units, repeats, skipped images and provenance of a results file."""
    with open_results(path) as ds:
        a = ds.attrs
        lines = [f"{path}: {a.get('title', '')}"]
        if "warning" in a:
            lines.append(f"WARNING: {a['warning']}")
        lines.append(f"model: {a.get('model')}  weights: {a.get('weights')}  preprocessing: {a.get('preprocessing')}")
        lines.append(
            f"metric: {a.get('metric')}  normalize: {a.get('normalize')}  per_unit: {bool(a.get('per_unit'))}  "
            f"median over: {a.get('median_over')}  sampling: {a.get('sampling_mode')}  seed: {a.get('seed')}"
        )
        lines.append(f"substrates: {', '.join(map(str, ds['substrate'].values))}  n_units: {', '.join(map(n_units_text, ds['n_units'].values))}  repeats: {ds.sizes['repeat']}")
        layers = [str(x) for x in ds["layer"].values]
        lines.append(f"layers ({len(layers)}): {layers[0]} ... {layers[-1]}" if len(layers) > 2 else f"layers: {layers}")
        lines.append("")
        lines.append(f"{'image set':<20}{'images':>8}{'skipped':>9}{'mean differentiation (first substrate/n_units)':>50}")
        first = ds["differentiation"].isel(substrate=0, n_units=0)
        for name in ds["image_set"].values:
            n = int(ds["n_images"].sel(image_set=name))
            skipped = int((ds["skipped_set"].values == name).sum()) if ds.sizes.get("skipped", 0) else 0
            mean = float(first.sel(image_set=name).mean(skipna=True)) if first.attrs.get("measured", 1) else float("nan")
            lines.append(f"{str(name):<20}{n:>8}{skipped:>9}{mean:>50.4g}")
        if "fps" in ds or "spectral_differentiation" in ds:
            lines.extend(_spectral_lines(ds))
        undefined = int(ds["n_undefined"].sum())
        if undefined:
            lines.append(f"repeats with an undefined normaliser (NaN): {undefined}")
        for s, p, r in zip(ds["skipped_set"].values, ds["skipped_path"].values, ds["skipped_reason"].values):
            lines.append(f"skipped ({s}): {p}: {r}")
        lines.append("")
        lines.append(f"history: {a.get('history')}")
        versions = json.loads(a.get("package_versions", "{}"))
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)


def _spectral_lines(ds) -> list[str]:
    """The movies (frame rate, windows, dropped frames) and their spectral differentiation."""
    lines = [""]
    sd = ds.get("spectral_differentiation")
    if sd is not None:
        at = sd.attrs
        lines.append(
            f"spectral differentiation: state_length {at.get('state_length'):g} s  metric: {at.get('metric')}  "
            f"window: {at.get('window')}  overlap: {at.get('overlap')}  log_frequency: {bool(at.get('log_frequency'))}  "
            f"normalize: {at.get('normalize')} (before the spectra)"
        )
    lines.append(f"{'movie':<20}{'fps':>8}{'windows':>9}{'dropped':>9}"
                 + (f"{'mean normalized spectral differentiation (first substrate/n_units)':>70}" if sd is not None else ""))
    for name in ds["image_set"].values:
        fps = float(ds["fps"].sel(image_set=name)) if "fps" in ds else float("nan")
        if fps != fps:
            continue
        row = f"{str(name):<20}{fps:>8g}"
        if sd is not None:
            nsd = ds["normalized_spectral_differentiation"].isel(substrate=0, n_units=0).sel(image_set=name)
            row += (f"{int(ds['spectral_windows'].sel(image_set=name)):>9}{int(ds['spectral_dropped'].sel(image_set=name)):>9}"
                    f"{float(nsd.mean(skipna=True)):>70.4g}")
        lines.append(row)
    if "stimulus_differentiation" in ds:
        stim = ds["stimulus_differentiation"]
        movies = [(name, float(v)) for name, v, fps in zip(ds["image_set"].values, stim.values, ds["fps"].values) if fps == fps]
        lines.append(f"stimulus differentiation of each movie's own frames (rf_area {stim.attrs.get('rf_area'):g} deg^2, "
                     f"field of view {' x '.join(f'{d:g}' for d in stim.attrs.get('field_of_view', []))} deg): "
                     + ", ".join(f"{name} {value:.4g}" for name, value in movies))
    return lines
