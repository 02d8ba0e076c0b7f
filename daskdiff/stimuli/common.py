"""Stimuli layer: argument checks, pixel helpers and per-image random generators shared by the generators."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import numpy as np
from PIL import Image
from ..errors import InputError, shorten

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_int(name: str, value: object, minimum: int, example: str) -> int:
    """``value`` as an int if it is an integer (not bool) ``>= minimum``; InputError naming ``name``
    and showing ``example`` (e.g. ``'count=8'``) otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(
            f"{name} must be an integer >= {minimum}, got {shorten(repr(value))}; for example {example}"
        )
    return int(value)


def check_prefix(prefix: object) -> str:
    """``prefix`` if it is a file-name stem (letters, digits, '.', '_', '-'; starting with a letter
    or digit), else InputError: generators name their files ``<prefix>-NNNN.png``."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InputError(
            f"prefix must be a file-name stem of letters, digits, '.', '_' or '-' that starts "
            f"with a letter or digit, got {shorten(repr(prefix))}; for example prefix='noise'"
        )
    return prefix


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else InputError listing them."""
    choices = list(choices)
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}, got {shorten(repr(value))}")
    return value  # type: ignore[return-value]


def repeated_names(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted, each once (e.g. output file names that clash)."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image (the extra row/column, if odd, is cut at the end)."""
    rows, cols = image.shape[:2]
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    return image[top : top + side, left : left + side]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` resize of a ``uint8`` RGB image with Pillow's bicubic filter."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: child ``index`` of ``SeedSequence(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
