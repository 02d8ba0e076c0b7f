"""Storage layer: the layout of an output folder, the one module that names its files and folders.

An output location is a local folder or a prefix in an object store (``s3://bucket/prefix``);
both have the same layout, and a name built here is a :class:`pathlib.Path` or an
:class:`~daskdiff.io.location.ObjectPath` accordingly (:func:`~daskdiff.io.location.location`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .location import location, ObjectPath



ACTIVATIONS_DIR = "activations"


SHARD_GLOB = "shard-*.nc"


PARTIAL_DIR = "partial"


IMAGES_DIR = "images"


RESULTS_FILE = "differentiation.nc"


PLOT_FILE = "differentiation.png"


JOB_FILE = "job.json"


MANIFEST_FILE = ".daskdiff-manifest.json"


LOCK_FILE = ".daskdiff-lock"


def variable_name(substrate: str, layer: str) -> str:
    return f"{substrate}__{layer}"


def feature_dim(substrate: str, layer: str) -> str:
    prefix = {"units": "unit", "filter_mean": "filter", "location_mean": "location"}[substrate]
    return f"{prefix}__{layer}"


def shard_path(output: str | os.PathLike | ObjectPath, image_set: str, shard: int) -> Path | ObjectPath:
    """Deterministic file name of shard ``shard`` of ``image_set``."""
    return location(output) / ACTIVATIONS_DIR / image_set / f"shard-{shard:05d}.nc"


def shard_files(output: str | os.PathLike | ObjectPath, image_set: str) -> list[Path | ObjectPath]:
    """Finished shard files of a set, in shard order (temporaries are never matched)."""
    return sorted((location(output) / ACTIVATIONS_DIR / image_set).glob(SHARD_GLOB))


def partial_key(image_set: str, substrate: str, layer: str) -> str:
    """The name of the differentiation task of (``image_set``, ``substrate``, ``layer``): its
    partial result's file name (:func:`partial_path`) and part of its task key."""
    return f"{image_set}--{substrate}--{layer}"


def partial_path(output: str | os.PathLike | ObjectPath, key: str) -> Path | ObjectPath:
    """Deterministic file name of the partial result of differentiation task ``key``."""
    return location(output) / PARTIAL_DIR / f"{key}.npz"
