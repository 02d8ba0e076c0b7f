"""Export of the mean RDMs to rsatoolbox (issue 22, "also expected"): checked against rsatoolbox's
own ``calc_rdm`` on the activations the RDMs were made from, restated here."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import daskdiff
from daskdiff.errors import InputError
from daskdiff.io.partials import Partial
from daskdiff.io.results import assemble
from test_partial import _metadata

rsatoolbox = pytest.importorskip("rsatoolbox")

SETS = {"photos": 5, "small": 3}
SUBSTRATES, LAYERS, N_UNITS, REPEATS = ["units", "filter_mean"], ["conv1", "fc1", "predictions"], [4, -1], 2


def _patterns(set_name, substrate, layer, n_units, n):
    """Made-up activations of one (set, substrate, layer, n_units): n images x 6 channels."""
    seed = [list(SETS).index(set_name), SUBSTRATES.index(substrate), LAYERS.index(layer), N_UNITS.index(n_units)]
    return np.random.default_rng(seed).normal(size=(n, 6))


def _by_rsatoolbox(x):
    """rsatoolbox's RDM of patterns x (its euclidean: squared, divided by the channels), condensed."""
    return rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x), method="euclidean").dissimilarities[0]


def _results():
    """Results whose mean RDMs are rsatoolbox's RDMs of :func:`_patterns` (each repeat the same)."""
    partials = []
    for s, n in SETS.items():
        for b in SUBSTRATES:
            for layer in LAYERS:
                square = np.zeros((len(N_UNITS), n, n))
                for k, u in enumerate(N_UNITS):
                    i, j = np.triu_indices(n, k=1)
                    square[k][i, j] = square[k][j, i] = _by_rsatoolbox(_patterns(s, b, layer, u, n))
                arrays = {"differentiation": np.ones((len(N_UNITS), REPEATS)), "undefined": np.zeros((len(N_UNITS), REPEATS), bool),
                          "units_used": np.array([4, 6 + LAYERS.index(layer)]),
                          "rdm_sum": square * REPEATS, "rdm_count": np.full(len(N_UNITS), REPEATS)}
                partials.append(Partial(s, b, layer, arrays))
    metadata = _metadata(SETS)
    metadata["photos"]["paths"] = [f"/data/photos/cat-{i}.png" for i in range(5)]
    return assemble(sets=list(SETS), metadata=metadata, substrates=SUBSTRATES, n_units=N_UNITS, layers=LAYERS, repeats=REPEATS,
                    partials=partials, keep_rdm=True, attrs={"metric": "euclidean", "normalize": "zscore", "per_unit": 1})


def test_the_mean_rdms_are_rsatoolbox_rdms_with_the_results_labels():
    ds = _results()
    rdms = daskdiff.to_rsatoolbox(ds, "photos")
    assert isinstance(rdms, rsatoolbox.rdm.RDMs)
    assert rdms.n_rdm == len(SUBSTRATES) * len(N_UNITS) * len(LAYERS) and rdms.n_cond == SETS["photos"]
    assert rdms.pattern_descriptors["image"] == [f"cat-{i}.png" for i in range(5)]
    assert rdms.pattern_descriptors["index"] == list(range(5))
    assert rdms.descriptors["image_set"] == "photos" and rdms.descriptors["metric"] == "euclidean"
    order = [(b, u, layer) for b in SUBSTRATES for u in N_UNITS for layer in LAYERS]
    got = list(zip(rdms.rdm_descriptors["substrate"], rdms.rdm_descriptors["n_units"], rdms.rdm_descriptors["layer"]))
    assert got == order
    assert rdms.rdm_descriptors["layer_index"] == [LAYERS.index(layer) for _, _, layer in order]
    assert rdms.rdm_descriptors["units_used"] == [4 if u == 4 else 6 + LAYERS.index(layer) for _, u, layer in order]
    for k, (b, u, layer) in enumerate(order):
        np.testing.assert_allclose(rdms.dissimilarities[k], _by_rsatoolbox(_patterns("photos", b, layer, u, 5)), rtol=1e-12)


def test_a_smaller_set_loses_its_padding_and_selections_keep_their_labels():
    ds = _results()
    rdms = daskdiff.to_rsatoolbox(ds, "small", substrate="units", n_units="all", layer=["fc1", "predictions"])
    assert rdms.n_cond == 3 and rdms.n_rdm == 2 and not np.isnan(rdms.dissimilarities).any()
    assert rdms.rdm_descriptors["n_units"] == [-1, -1] and rdms.rdm_descriptors["layer"] == ["fc1", "predictions"]
    np.testing.assert_allclose(rdms.dissimilarities[1], _by_rsatoolbox(_patterns("small", "units", "predictions", -1, 3)), rtol=1e-12)
    # rsatoolbox's own comparison runs on them
    assert rsatoolbox.rdm.compare(rdms[0], rdms[1], method="spearman").shape == (1, 1)


def test_several_sets_need_one_named_and_missing_rdm_or_rsatoolbox_is_one_line(monkeypatch):
    ds = _results()
    with pytest.raises(InputError, match=r"hold 2 image sets \['photos', 'small'\]: name one, e.g. to_rsatoolbox\(ds, image_set='photos'\)"):
        daskdiff.to_rsatoolbox(ds)
    assert daskdiff.to_rsatoolbox(ds.sel(image_set=["small"])).descriptors["image_set"] == "small"
    with pytest.raises(InputError, match="'dogs' is not in these results"):
        daskdiff.to_rsatoolbox(ds, "dogs")
    with pytest.raises(InputError, match="no 'rdm' variable"):
        daskdiff.to_rsatoolbox(ds.drop_vars("rdm"), "photos")
    monkeypatch.setitem(sys.modules, "rsatoolbox", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "rsatoolbox.rdm", None)
    with pytest.raises(InputError, match=r"^to_rsatoolbox needs rsatoolbox: pip install 'daskdiff\[rsa\]'"):
        daskdiff.to_rsatoolbox(ds, "photos")
