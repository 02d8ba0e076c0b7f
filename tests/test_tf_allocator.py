"""TensorFlow gives a tensor's memory back once it is freed (daskdiff.model.quiet.TF_DEFAULT_ENV).

TensorFlow's oneDNN CPU build pools every tensor of 256 KiB or more and never returns the pool:
a worker would carry its largest extraction batch through the whole differentiation stage. The
process that imports TensorFlow through daskdiff must not; a user's own setting must hold.

TensorFlow 2.21 turned oneDNN's optimisations off by default on this project's CPUs (2.20 and
earlier had them on), and without them there is no pool: each probe turns them on
(``TF_ENABLE_ONEDNN_OPTS=1``), as users of oneDNN builds have them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.keras, pytest.mark.subprocess]

PROBE = r"""
import re
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
from daskdiff.model.quiet import import_tensorflow_quietly
tf = import_tensorflow_quietly()
a = tf.ones((512, 512)); tf.matmul(a, a)  # the allocator and the kernels set up
base = rss()
x = tf.random.uniform((100_000_000,)) * 2.0  # 400 MB
held = rss() - base
del x
print(held, rss() - base)
"""


def _held_and_kept(env: dict) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in env.items() if k != "KERAS_BACKEND"} | {"TF_CPP_MIN_LOG_LEVEL": "3",
                                                                                   "TF_ENABLE_ONEDNN_OPTS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    held, kept = map(int, out.stdout.split()[-2:])
    return held, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_freed_tensor_returns_its_memory():
    env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
    held, kept = _held_and_kept(env)
    assert held > 350e6  # the 400 MB tensor was there
    assert kept < 50e6, f"{kept / 1e6:.0f} MB of a freed 400 MB tensor still held"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_users_own_setting_holds():
    held, kept = _held_and_kept(dict(os.environ, TF_ONEDNN_USE_SYSTEM_ALLOCATOR="0"))
    assert held > 350e6
    assert kept > 350e6  # TensorFlow's own pool, as the user asked: it keeps the freed tensor

