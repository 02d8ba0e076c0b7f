"""Substrate reductions against direct hand computation."""

import numpy as np
import pytest

from daskdiff.core.substrates import feature_shape, reduce


def test_conv_reductions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 5, 6))
    np.testing.assert_array_equal(reduce(a, "units"), a.reshape(3, -1))
    for i in range(3):
        for c in range(6):
            assert reduce(a, "filter_mean")[i, c] == pytest.approx(a[i, :, :, c].mean())
        np.testing.assert_allclose(reduce(a, "location_mean")[i], a[i].mean(axis=-1).ravel())


def test_dense_layer_is_one_position():
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(reduce(a, "filter_mean"), a)
    np.testing.assert_allclose(reduce(a, "location_mean"), a.mean(axis=1, keepdims=True))


def test_feature_shapes():
    assert feature_shape((14, 14, 512), "units") == (14, 14, 512)
    assert feature_shape((14, 14, 512), "filter_mean") == (512,)
    assert feature_shape((14, 14, 512), "location_mean") == (14, 14, 1)
    assert feature_shape((4096,), "location_mean") == (1,)


def test_unknown_substrate():
    with pytest.raises(ValueError, match="valid substrates"):
        reduce(np.ones((2, 3)), "pixels")
