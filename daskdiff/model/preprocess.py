"""Model layer: preprocessing, 0-255 RGB pixels -> model input, one definition for numpy arrays and backend tensors.

The mode vocabulary (:data:`PREPROCESS_MODES`), the mode check and the choice of the Keras
function live in :func:`preprocess_function` only; :func:`preprocess` (numpy, used by
extraction and classification) and :func:`preprocess_tensor` (a backend tensor, differentiable,
used by the adversarial attack) both call what it returns.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import InputError

PREPROCESS_MODES = ("caffe", "tf", "torch", "none")
"""Input preprocessing modes of ``keras.applications.imagenet_utils.preprocess_input`` (and none)."""


class Preprocessing(Protocol):
    """What preprocessing needs to know of a model: its ``preprocess`` override and its
    keras.applications ``application`` (None for a ``.keras`` file).
    :class:`daskdiff.model.build.ModelSpec` is one; this module does not import it."""

    @property
    def preprocess(self) -> str | None: ...

    @property
    def application(self) -> str | None: ...


def preprocess_function(spec: Preprocessing) -> Callable[[Any], Any] | None:
    """The Keras function that preprocesses ``spec``'s input; None when there is no preprocessing.

    Parameters
    ----------
    spec : Preprocessing
        E.g. a :class:`~daskdiff.model.build.ModelSpec`. ``spec.preprocess`` (one of
        :data:`PREPROCESS_MODES`) overrides the model's own
        preprocessing; when it is None, a keras.applications model uses its application's
        ``preprocess_input`` and a ``.keras`` file none.

    Returns
    -------
    callable or None
        ``keras.applications.<application>.preprocess_input``, or
        ``imagenet_utils.preprocess_input`` with ``mode=spec.preprocess``, or None (mode
        ``'none'``, or a ``.keras`` file without an override).

    Raises
    ------
    InputError
        ``spec.preprocess`` is not one of :data:`PREPROCESS_MODES`.

    Notes
    -----
    Keras's functions take numpy arrays and backend tensors alike: on a tensor they compute
    with ``keras.ops`` (for VGG16's 'caffe' mode, RGB -> BGR by stacking channels 2, 1, 0, then
    adding minus the ImageNet mean), which the backend differentiates.
    """
    import keras

    mode = spec.preprocess
    if mode is None and spec.application is not None:
        return getattr(keras.applications, spec.application).preprocess_input
    if mode in (None, "none"):
        return None
    if mode not in PREPROCESS_MODES:
        raise InputError(f"unknown preprocess {mode!r}; valid values are {list(PREPROCESS_MODES)}")
    return functools.partial(keras.applications.imagenet_utils.preprocess_input, mode=mode)


def preprocess(images: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """float32 model input from uint8 RGB images ``(n, h, w, 3)`` (see :func:`preprocess_function`).

    Keras's function is given a copy (it may work in place), so ``images`` is never modified.
    """
    x = np.asarray(images, dtype=np.float32)
    function = preprocess_function(spec)
    if function is None:
        return x
    return np.asarray(function(x.copy()), dtype=np.float32)


def preprocess_tensor(pixels: Any, spec: Preprocessing) -> Any:
    """:func:`preprocess` on a float tensor of 0-255 RGB pixels, differentiably.

    The same Keras function as :func:`preprocess` (:func:`preprocess_function`), applied to a
    backend tensor instead of a numpy array; the values equal the numpy path's (a test checks
    this for every application and mode; on JAX to a few float32 ulps, as XLA divides by a
    constant as a multiplication by its inverse). Works on TensorFlow, torch and JAX tensors.
    """
    function = preprocess_function(spec)
    if function is None:
        return pixels
    from keras import ops

    # a copy, as for numpy: Keras's tensor path works in place (x /= 127.5, x += mean), which on
    # torch would change the caller's tensor and is refused on a leaf that requires a gradient
    return function(ops.copy(pixels))
