"""Model layer: importing TensorFlow without the native lines it prints as it loads.

TensorFlow >= 2.17 writes ~5 lines to the native stderr (file descriptor 2) while it loads,
through absl, before ``absl::InitializeLog()``, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them.
:func:`import_tensorflow_quietly` imports it with file descriptor 2 sent to a temporary file,
and writes back what that level keeps (:func:`_drop_tf_noise`): nothing another thread wrote
meanwhile is lost, only delayed. The CLI imports TensorFlow this way before a model is used,
and every Dask worker daskdiff sets up does (:class:`daskdiff.pipeline.workers.WorkerSetup`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any, Iterator

from .keras_config import backend_name

_GLOG_LINE = re.compile(r"^([IWEF])\d{4} \d+:\d+:[\d.]+\s+\d+ \S+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = "IWEF"
_IMPORTED: list[Any] = []  # TensorFlow, once imported here
_NO_DRIVER: list[bool] = []  # whether TensorFlow said, as it loaded here (or in the process this one was forked from), that this machine has no CUDA driver

TF_DEFAULT_ENV = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}
"""Set before TensorFlow loads, unless the environment says otherwise.

oneDNN's kernels themselves (``TF_ENABLE_ONEDNN_OPTS``) are left as TensorFlow has them: 2.21
turned them off by default on this project's CPUs. With them, VGG16's forward pass in two
one-thread processes side by side took 0.385 s per image instead of 0.487 s, but outputs then
depend on the batch at float32 rounding (1.5e-5 relative against a direct call on another batch;
3e-5 in VGG16's softmax), past the tolerances of the exactness tests.

The system allocator: TensorFlow's oneDNN CPU build otherwise allocates every tensor of 256
KiB or more from its own pool, which never gives memory back: a worker keeps the peak of VGG16's
initialisation and of its largest extraction batch (~1.5 GB) for the rest of the job, through
every differentiation task. With the system allocator that memory returns as tensors are freed. Outputs are the same, bit for bit; a bare
forward pass costs up to ~12 % more on this CPU, while the seed job's extraction stage took the
same time (docs/performance.md)."""


def _tf_min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _drop_tf_noise(lines: list[str], level: int) -> list[str]:
    """``lines`` written to the native stderr while TensorFlow loaded, less what ``level`` hides.

    TensorFlow >= 2.17 logs through absl before ``absl::InitializeLog()``, which ignores
    ``TF_CPP_MIN_LOG_LEVEL``; this applies it: severities I(0), W(1), E(2) below ``level`` and absl's
    preamble are dropped. The ``failed call to cuInit`` error that follows cudart's "Could not find
    cuda drivers" (a machine without a GPU driver) says nothing more, and goes too at level 2, also
    where that line came earlier: TensorFlow prints it as it loads, the cuInit error when a device
    is first listed, which in a worker forked after the import (:mod:`daskdiff.pipeline.preimport`)
    is another capture.
    """
    if level <= 0:
        return lines
    if any("Could not find cuda drivers" in line for line in lines):
        _NO_DRIVER.append(True)
    no_driver = bool(_NO_DRIVER)
    kept = []
    for line in lines:
        if line.rstrip("\n") == _ABSL_PREAMBLE:
            continue
        match = _GLOG_LINE.match(line)
        if match:
            severity = _SEVERITY.index(match.group(1))
            if severity < level or (no_driver and severity < 3 and level >= 2 and "failed call to cuInit" in line):
                continue
        kept.append(line)
    return kept


@contextlib.contextmanager
def _filtered_native_stderr(level: int) -> Iterator[None]:
    """Within the block, file descriptor 2 goes to a temporary file; on exit what
    :func:`_drop_tf_noise` keeps of it is written to the real stderr (so nothing else that another
    thread wrote meanwhile is lost, only delayed)."""
    if level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (or a stderr without flush)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = _drop_tf_noise(tmp.read().decode(errors="replace").splitlines(keepends=True), level)
            if kept:
                os.write(2, "".join(kept).encode())


def _set_tf_defaults() -> None:
    """Set :data:`TF_DEFAULT_ENV` where the environment does not say otherwise (before TensorFlow loads)."""
    for key, value in TF_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)


def import_keras_quietly() -> None:
    """Import Keras, and with it its backend (TensorFlow under :data:`TF_DEFAULT_ENV`, quietly as
    :func:`import_tensorflow_quietly`), but list no device: no CUDA runtime is initialised and no
    thread is started, so that the process may then be forked safely
    (:mod:`daskdiff.pipeline.preimport`). :func:`import_tensorflow_quietly` still lists the devices
    where it is called later. A failed import is left to whoever imports Keras next."""
    if backend_name() == "tensorflow":
        _set_tf_defaults()
    with _filtered_native_stderr(_tf_min_log_level()), contextlib.suppress(Exception):
        import keras  # noqa: F401


def import_tensorflow_quietly() -> Any:
    """Import TensorFlow and list its GPUs, without the ~5 native lines it prints despite
    ``TF_CPP_MIN_LOG_LEVEL`` (see :func:`_drop_tf_noise`), under :data:`TF_DEFAULT_ENV`. Returns the module, or None where
    the Keras backend (:func:`daskdiff.model.keras_config.backend_name`) is not ``tensorflow`` (then TensorFlow is not imported)."""
    if backend_name() != "tensorflow":
        return None
    if _IMPORTED:
        return _IMPORTED[0]
    _set_tf_defaults()
    with _filtered_native_stderr(_tf_min_log_level()):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    _IMPORTED.append(tf)
    return tf
