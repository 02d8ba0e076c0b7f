"""sample_units: determinism from (seed, layer, repeat), modes, caps, memory."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from daskdiff import sample_units


def test_deterministic_and_sorted_distinct():
    a = sample_units(3_211_264, 200, seed=5, layer="block1_conv1", repeat=3)
    b = sample_units(3_211_264, 200, seed=5, layer="block1_conv1", repeat=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and len(a) == 200
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 3_211_264


def test_independent_of_call_order():
    keys = [(layer, r) for layer in ("block1_conv1", "fc2", "predictions") for r in range(5)]
    forward = {k: sample_units(5000, 50, seed=1, layer=k[0], repeat=k[1]) for k in keys}
    backward = {k: sample_units(5000, 50, seed=1, layer=k[0], repeat=k[1]) for k in reversed(keys)}
    for k in keys:
        np.testing.assert_array_equal(forward[k], backward[k])


@pytest.mark.subprocess
def test_same_in_another_process():
    code = (
        "from daskdiff import sample_units;"
        "print(sample_units(100352, 30, seed=9, layer='block5_conv3', repeat=42).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = sample_units(100352, 30, seed=9, layer="block5_conv3", repeat=42).tolist()
    assert out.stdout.strip() == str(here)


def test_seed_layer_and_repeat_all_matter():
    base = sample_units(10**6, 100, seed=0, layer="a", repeat=0)
    for other in (
        sample_units(10**6, 100, seed=1, layer="a", repeat=0),
        sample_units(10**6, 100, seed=0, layer="b", repeat=0),
        sample_units(10**6, 100, seed=0, layer="a", repeat=1),
    ):
        assert not np.array_equal(base, other)


def test_cap_and_all():
    np.testing.assert_array_equal(sample_units(1000, 10_000, seed=0, layer="p", repeat=0), np.arange(1000))
    np.testing.assert_array_equal(sample_units((2, 3, 4), "all", seed=0, layer="p", repeat=0), np.arange(24))
    for mode in ("random", "equal"):  # every unit in order, as int64 whatever the mode that spreads them
        every = sample_units((2, 3, 4), "all", seed=0, layer="p", repeat=0, mode=mode)
        assert every.dtype == np.int64 and every.tolist() == list(range(24))
    assert sample_units((2, 3, 4), "all", seed=0, layer="p", repeat=0, mode="channel=1").tolist() == list(range(1, 24, 4))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "some", True])
def test_bad_n_units(bad):
    with pytest.raises(ValueError, match="positive integer or 'all'"):
        sample_units(100, bad, seed=0, layer="x", repeat=0)


def test_bad_seed_and_mode():
    with pytest.raises(ValueError, match="seed must be"):
        sample_units(100, 5, seed=-1, layer="x", repeat=0)
    with pytest.raises(ValueError, match="valid modes"):
        sample_units(100, 5, seed=0, layer="x", repeat=0, mode="spiral")


def test_equal_mode_same_count_per_channel():
    shape = (14, 14, 512)
    idx = sample_units(shape, 2048, seed=0, layer="block5_conv1", repeat=0, mode="equal")
    channels = idx % 512
    np.testing.assert_array_equal(np.bincount(channels, minlength=512), np.full(512, 4))
    # rounding down to a multiple of the channel count is documented
    idx = sample_units(shape, 1100, seed=0, layer="block5_conv1", repeat=0, mode="equal")
    assert len(idx) == 1024


def test_equal_mode_never_zero_units():
    """The seed's 'equal' gave int(200 / 512) = 0 units per channel; we refuse instead."""
    with pytest.raises(ValueError, match="at least 512"):
        sample_units((14, 14, 512), 200, seed=0, layer="block5_conv1", repeat=0, mode="equal")


def test_equal_mode_on_dense_layer_is_random():
    a = sample_units(4096, 200, seed=0, layer="fc1", repeat=0, mode="equal")
    b = sample_units(4096, 200, seed=0, layer="fc1", repeat=0, mode="random")
    np.testing.assert_array_equal(a, b)


def test_channel_mode():
    idx = sample_units((28, 28, 512), 100, seed=0, layer="block4_conv1", repeat=0, mode="channel=7")
    assert len(idx) == 100 and np.all(idx % 512 == 7)
    with pytest.raises(ValueError, match="channels 0..511"):
        sample_units((28, 28, 512), 100, seed=0, layer="block4_conv1", repeat=0, mode="channel=512")


def test_no_layer_sized_allocation():
    tracemalloc.start()
    try:
        sample_units(3_211_264, 200, seed=0, layer="block1_conv1", repeat=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"sampling 200 units allocated {peak} bytes"
