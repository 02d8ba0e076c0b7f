"""The array-API form of one stack's distances (``analysis.device``) on numpy, torch and jax arrays,
against scipy's pdist on matrices normalised by hand, and against the host path's conventions;
and the choice of arrays a worker makes (:func:`daskdiff.model.device.arrays_for`)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from daskdiff.core.arrays import GRAM_METRICS, distances_on_arrays
from daskdiff.core.differentiation import distances_stack
from daskdiff.errors import InputError
from daskdiff.model.device import arrays_for

LIBRARIES = ("numpy", pytest.param("torch", marks=pytest.mark.keras), pytest.param("jax", marks=pytest.mark.keras))


def on(library: str, a: np.ndarray):
    """``a`` as an array of ``library`` (on its CPU) and the context to compute in."""
    if library == "numpy":
        return a, contextlib.nullcontext()
    if library == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(a), contextlib.nullcontext()
    jax = pytest.importorskip("jax")
    return jax.numpy.asarray(a), jax.enable_x64(True)


def _values(offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(7)
    v = np.maximum(rng.normal(size=(13, 90)), 0.0) * rng.exponential(2.0, size=90) + offset
    v[:, rng.random(90) < 0.2] = offset  # dead units, as in ReLU layers
    return v.astype(np.float32)


def _picks(n_features: int, k: int, repeats: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [np.sort(rng.choice(n_features, k, replace=False)) for _ in range(repeats)]


def _by_hand(m: np.ndarray, normalize: str) -> np.ndarray:
    m = m.astype(np.float64)
    if normalize == "mean":
        return m / m.mean()
    if normalize == "zscore":
        return (m - m.mean()) / m.std()
    if normalize == "max":
        return m / np.abs(m).max()
    return m


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("normalize", ["none", "mean", "zscore", "max"])
@pytest.mark.parametrize("metric", GRAM_METRICS)
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_each_repeat_equals_pdist_of_its_normalised_sample(library, metric, normalize, offset):
    """Each repeat's RDM equals scipy's pdist of ``values[:, pick]`` normalised by hand (per_unit
    divided by hand too); a large common offset (cancellation in the Gram form) included."""
    v = _values(offset)
    picks = _picks(v.shape[1], 40, 5)
    arr, context = on(library, v)
    with context:
        d, bad = distances_on_arrays(arr, picks, metric, normalize, per_unit=True)
    assert d.shape == (5, 13, 13) and d.dtype == np.float64 and not bad.any()
    divisor = {"euclidean": np.sqrt(40), "sqeuclidean": 40.0}.get(metric, 1.0)
    for got, pick in zip(d, picks):
        want = squareform(pdist(_by_hand(v[:, pick], normalize), metric)) / divisor
        # cosine and correlation lie in [0, 2]: 1 - cos is only known to ~1e-16 absolute (pdist's too)
        atol = 1e-14 if metric in ("cosine", "correlation") else 1e-12 * np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=atol)
        np.testing.assert_array_equal(got, got.T)
        np.testing.assert_array_equal(np.diag(got), 0.0)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("metric", GRAM_METRICS)
def test_zero_constant_and_undefined_rows_follow_the_host_conventions(library, metric):
    """All-zero rows (cosine), constant rows (correlation) and a constant matrix (z-score
    undefined: NaN and flagged) give what the host numpy path gives, to 1e-13."""
    v = _values()
    v[3] = 0.0
    v[5] = 2.5
    picks = _picks(v.shape[1], 30, 3) + [np.arange(30)]
    constant = np.full_like(v, 4.0)
    for values in (v, constant):
        want, want_bad = distances_stack(np.stack([values[:, p] for p in picks]).astype(np.float64), metric, "zscore",
                                         per_unit=True, on_undefined="nan", min_scale=1e-9)
        arr, context = on(library, values)
        with context:
            got, bad = distances_on_arrays(arr, picks, metric, "zscore", per_unit=True, min_scale=1e-9)
        np.testing.assert_array_equal(bad, want_bad)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13, equal_nan=True)
    assert bad.all()  # the constant matrix


def test_metrics_without_a_gram_form_are_refused():
    with pytest.raises(ValueError, match="cityblock.*no Gram form"):
        distances_on_arrays(_values(), _picks(90, 5, 1), "cityblock")


def test_host_and_tensorflow_choose_host_numpy():
    assert arrays_for("host", "torch") is None
    assert arrays_for("auto", "tensorflow") is None
    with pytest.raises(InputError, match="KERAS_BACKEND=torch or jax.*'tensorflow'.*analysis.device: auto"):
        arrays_for("backend", "tensorflow")
    with pytest.raises(InputError, match="analysis.device must be one of"):
        arrays_for("gpu", "torch")


@pytest.mark.keras
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_auto_takes_the_backend_only_on_a_gpu(backend):
    """On this CPU-only machine ``auto`` stays on host numpy; ``backend`` puts the values on the
    backend's CPU device, and they come back unchanged."""
    lib = pytest.importorskip(backend)
    gpu = lib.cuda.is_available() if backend == "torch" else lib.devices()[0].platform != "cpu"
    auto = arrays_for("auto", backend)
    assert (auto is None) == (not gpu)
    chosen = arrays_for("backend", backend)
    assert chosen.label.startswith(f"{backend}:") and (gpu or "cpu" in chosen.label)
    v = _values()
    with chosen.context():
        put = chosen.put(v)
        assert type(put).__module__.split(".")[0] in (backend, "jaxlib")
        np.testing.assert_array_equal(np.asarray(put), v)
