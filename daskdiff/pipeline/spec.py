"""Pipeline layer: the job spec, pydantic models of the YAML a user submits, checked before anything runs.

:class:`JobSpec` and its sections (the ``cluster`` section is :mod:`~daskdiff.pipeline.spec_cluster`'s);
reading and validating a spec file is :mod:`~daskdiff.pipeline.spec_file`'s (:func:`~daskdiff.pipeline.spec_file.load_spec`).
Every key is documented in ``docs/spec.md`` and shown in ``jobs/*.yaml``. Relative paths in a spec
(image sets, output, weights files) are relative to the folder of the spec file (:func:`resolve_path`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import ConfigDict, Discriminator, Field, Tag, field_serializer, field_validator, model_validator

from ..core.differentiation import MEDIAN_OVER, NORMALIZATIONS
from ..core.distances import METRICS
from ..core.sampling import check_mode
from ..core.substrates import SUBSTRATES
from ..core.units import STORE_MODES
from ..errors import InputError, shorten
from ..io.images import RESIZE_FILTERS
from ..io.location import redact
from ..model.build import PREDICTIONS, PREPROCESS_MODES, check_model_name
from .spec_cluster import ClusterSection
from .spec_types import PositiveWhole, StimulusSection, Strict, Whole, whole_number


def _one_of(names: Any) -> Any:
    """A ``Literal`` of a registry's names: the spec's choices are the registry's keys, never a copy."""
    return Literal[tuple(names)]


class SpecError(InputError):
    """A job spec that cannot be run; the message names the file, the key and the fix."""


class ModelSection(Strict):
    name: str = "VGG16"
    weights: str = "imagenet"
    seed: Whole = Field(0, ge=0)
    fallback_weights: Literal["random"] | None = None
    layers: list[str] | None = None
    predictions: _one_of(PREDICTIONS) = "softmax"
    preprocess: _one_of(PREPROCESS_MODES) | None = None
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    """The forward pass's compute dtype: ``float32`` (default), or Keras mixed precision in
    ``bfloat16``/``float16`` (weights in float32; activations stored as float32). See ``docs/backends.md``
    (*Precision*) for its measured effect on differentiation."""

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("is an empty list; name at least one layer, or omit model.layers for every layer")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)


class PathSet(Strict):
    path: str
    fps: float | None = Field(None, gt=0)
    """Frame rate (Hz) of a movie given as a folder of frames that records none; for a movie
    folder with ``movie.json`` or a movie file it must agree with the recorded rate. A set with
    a frame rate is a *movie*: its frames are kept in time order (sorted names)."""


class GeneratedSet(Strict):
    model_config = ConfigDict(extra="allow", frozen=True)
    generate: str

    @model_validator(mode="after")
    def _params(self) -> "GeneratedSet":
        from PIL import Image

        from ..stimuli.registry import check_generator_types, planned_pixels

        params = self.params()
        check_generator_types(self.generate, params)
        count = params.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and count < 2:
            raise ValueError(f"count: {count} image(s); differentiation needs at least 2 images per set, e.g. count: 8")
        pixels, limit = planned_pixels(self.generate, params), Image.MAX_IMAGE_PIXELS
        if pixels is not None and limit is not None and pixels > limit:
            raise ValueError(
                f"size: {params['size']} makes images of {pixels:,} pixels, more than the {limit:,} daskdiff reads (Pillow's "
                f"decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS), so every image would be skipped; the network sees "
                f"its input size (224 x 224 for VGG16) anyway: give size: 224 (at most {math.isqrt(limit)})"
            )
        return self

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


MEASURES = ("images", "spectral")
"""What a job measures: ``images``, the median distance between a set's images (the default);
``spectral``, the spectral differentiation of a movie over time (Mayner et al., 2022)."""


class SpectralSection(Strict):
    """Options of spectral differentiation (:func:`daskdiff.spectral_differentiation`)."""

    state_length: float = Field(1.0, gt=0)
    """Seconds per window (state); ``state_length * fps`` must be a whole number of frames."""
    metric: Literal["euclidean", "cityblock", "chebyshev"] = "euclidean"
    window: Union[str, float, list[Union[str, float]], None] = None
    """None (rectangular, the published measure) or a ``scipy.signal.get_window`` spec, e.g.
    ``[tukey, 0.25]`` (with ``overlap: 0.125``) or ``[kaiser, 14]`` (with ``overlap: 0.5``)."""
    overlap: float = Field(0.0, ge=0, lt=1)
    log_frequency: bool = False

    @field_validator("window")
    @classmethod
    def _window(cls, v: Any) -> Any:
        from ..core.spectral import window_values as _window_values

        _window_values(tuple(v) if isinstance(v, list) else v, 16)  # InputError -> ValueError below
        return v

    def window_arg(self) -> Any:
        """The window as :func:`scipy.signal.get_window` takes it (a list becomes a tuple)."""
        return tuple(self.window) if isinstance(self.window, list) else self.window


class AnalysisSection(Strict):
    measures: list[Literal[MEASURES]] = ["images"]
    """``[images]`` (default), ``[spectral]`` or both: see :data:`MEASURES`."""
    spectral: SpectralSection = SpectralSection()
    stimulus: StimulusSection = StimulusSection()
    """A movie's own stimulus differentiation (see :class:`~daskdiff.pipeline.spec_types.StimulusSection`)."""
    substrates: list[_one_of(SUBSTRATES)] = ["units", "filter_mean"]
    n_units: list[Union[int, str]] = [200, 10000]
    repeats: PositiveWhole = 100
    sampling: str = "random"
    normalize: _one_of(NORMALIZATIONS) = "zscore"
    metric: _one_of(METRICS) = "euclidean"
    per_unit: bool = True
    median_over: _one_of(MEDIAN_OVER) = "condensed"
    seed: Whole = Field(0, ge=0)
    repeats_per_task: PositiveWhole = 25
    rdm_max_images: Whole = Field(200, ge=0)
    task_memory: str = "auto"
    """Peak memory of one differentiation task: ``auto`` (a share of a worker thread's memory
    limit) or a size such as ``4GB``; stacks of repeats, then blocks of images, are made to fit."""
    device: Literal["auto", "host", "backend"] = "auto"
    """Where the per-repeat gathers and Gram products run: ``auto`` (the Keras backend's GPU when
    the workers' torch or jax has one, else host numpy), ``host`` or ``backend``
    (:mod:`daskdiff.model.device`). Results agree to ~1e-15 relative, so it is not in the digest."""

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, v: str) -> str:
        return check_mode(v)

    @field_validator("task_memory")
    @classmethod
    def _task_memory(cls, v: str) -> str:
        if v != "auto":
            from dask.utils import parse_bytes

            try:
                if parse_bytes(v) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(f"must be 'auto' or a positive size such as '4GB' or '500MiB'; got {shorten(repr(v))}") from None
        return v

    @field_validator("n_units", mode="before")
    @classmethod
    def _n_units(cls, v: Any) -> Any:
        values = v if isinstance(v, list) else [v]
        for item in values:
            ok_int = isinstance(item, int) and not isinstance(item, bool) and item > 0
            if not (ok_int or item == "all"):
                raise ValueError(f"each value must be a positive integer or 'all', e.g. [200, 10000, all]; got {shorten(repr(item))}")
        return values

    @field_validator("substrates", "n_units", "measures")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v:
            raise ValueError("must list at least one value")
        if len(set(map(str, v))) != len(v):
            raise ValueError(f"lists a value twice: {shorten(str(v))}")
        return v


MAX_DECODERS = 16
"""Most image-decoding processes per worker (``extraction.decoders``): 16 keep a GPU's forward
pass of VGG16 fed (``benchmarks/decode.py``); more only take memory and cores."""


class ExtractionSection(Strict):
    batch_size: PositiveWhole = 4
    shard_size: PositiveWhole = 128
    resize: _one_of(RESIZE_FILTERS) = "nearest"
    store: _one_of(STORE_MODES) = "needed"
    """What shard files store: ``needed`` (the units the analysis samples: every unit with
    ``n_units: all``), ``all`` (every unit of every layer) or ``none`` (no units, except the
    class-score layer's; labels, logits and the ``filter_mean``/``location_mean`` summaries are
    stored). With ``none`` the units reach differentiation from the workers' memory only; resume
    then reuses every finished partial result, and a set with a ``units`` task left is extracted
    again (its forward passes, not its files)."""
    handoff: Literal["auto", "memory", "disk"] = "disk"
    """How a shard's values reach differentiation: ``disk`` (default: the tasks read the shard
    files, which are checksummed: a corrupt shard is recomputed), ``memory`` (Dask keeps them in
    the workers' memory, spilling to its local directory under pressure) or ``auto``: memory when
    the job's extracted values take at most 30 % of the cluster's memory limits. The results are
    the same either way; ``store: none`` always uses memory."""
    strict: bool = False
    exif_orientation: Literal["ignore", "apply"] = "ignore"
    """``ignore`` (Keras' ``load_img`` does) or ``apply``: turn photos upright as their EXIF tag says."""
    retries: Whole = Field(2, ge=0, le=10)
    """Times Dask re-runs a failed extraction task (0 to 10: a task that fails 11 times will not pass)."""
    require_gpu: bool = False
    decoders: Union[Literal["auto"], Whole] = "auto"
    """Processes per worker that decode and resize images while the model runs (1: the worker's
    own prefetch thread): ``auto`` is 1 on a worker without a GPU (its cores run the forward
    pass) and, on a GPU worker, its share of the node's cores (the cores it may use over the GPUs
    on the node, at most :data:`MAX_DECODERS`). A number is at most :data:`MAX_DECODERS`, and a
    worker starts no more of them than the cores it may use
    (:func:`daskdiff.pipeline.workers.decoders`)."""

    @field_validator("decoders", mode="before")
    @classmethod
    def _decoders(cls, v: Any) -> Any:
        v = whole_number(v)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DECODERS):
            return v
        raise ValueError(f"must be 'auto' or a whole number from 1 to {MAX_DECODERS} (image-decoding processes per worker; "
                         "a worker starts no more than the cores it may use)")

    @model_validator(mode="after")
    def _handoff_with_store(self) -> "ExtractionSection":
        if self.store == "none" and self.handoff == "disk" and "handoff" in self.model_fields_set:
            raise ValueError("extraction.store: none writes no units to the shard files, so extraction.handoff: disk has "
                             "nothing to read; set handoff: auto (or memory), or store: needed")
        return self


MAX_NAME_CHARS = 200
"""Longest job name, in characters (the name titles the plot)."""


def _set_kind(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return "generate" if "generate" in entry else "path"
    if isinstance(entry, (PathSet, GeneratedSet)):
        return "generate" if isinstance(entry, GeneratedSet) else "path"
    return None


ImageSetEntry = Annotated[
    Union[Annotated[PathSet, Tag("path")], Annotated[GeneratedSet, Tag("generate")]],
    Discriminator(
        _set_kind,
        custom_error_type="image_set",
        custom_error_message="an image set is a folder, glob or list-file path, {path: ...}, or {generate: KIND, ...}",
    ),
]

_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class JobSpec(Strict):
    name: str
    model: ModelSection = ModelSection()
    image_sets: dict[str, ImageSetEntry]
    analysis: AnalysisSection = AnalysisSection()
    extraction: ExtractionSection = ExtractionSection()
    output: str = "output"
    cluster: ClusterSection = ClusterSection()
    storage_options: dict[str, Any] | None = None
    """fsspec filesystem options for the spec's URLs (``s3://...``), on top of the environment's."""

    @field_serializer("storage_options", when_used="json")
    def _secrets_hidden(self, value: dict | None) -> dict | None:
        """Every JSON form of the spec (``job.json``, the results' ``job_spec``) hides the secrets."""
        return None if value is None else redact(value)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not 1 <= len(v) <= MAX_NAME_CHARS or not v.isprintable():
            raise ValueError(f"must be 1 to {MAX_NAME_CHARS} printable characters on one line (it titles the plot), got {len(v)} character(s)")
        return v

    @field_validator("image_sets", mode="before")
    @classmethod
    def _paths_as_mappings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({"path": e} if isinstance(e, str) else e) for k, e in v.items()}
        return v

    @field_validator("image_sets")
    @classmethod
    def _sets(cls, v: dict) -> dict:
        if not v:
            raise ValueError("must name at least one image set, e.g. image_sets: {photos: path/to/folder}")
        for name in v:
            if not _SET_NAME.match(name):
                raise ValueError(f"image set name {shorten(repr(name))} must start with a letter and hold only letters, digits, '_' and '-'")
        return v

    def result_digest(self) -> str:
        """SHA-256 of everything results depend on (not cluster, output, name, storage_options, retries, decoders,
        handoff, or ``analysis.task_memory`` and ``analysis.device``, which move a repeat's median by
        ~1e-15 relative at most, nor ``analysis.stimulus``, which no cached file depends on)."""
        data = self.model_dump(mode="json", exclude={"cluster": True, "output": True, "name": True, "storage_options": True,
                                                    "extraction": {"retries", "require_gpu", "decoders", "handoff"},
                                                    "analysis": {"task_memory", "device", "stimulus"}})
        if data["extraction"]["exif_orientation"] == "ignore":  # keys added later count only when set:
            del data["extraction"]["exif_orientation"]  # folders written before them stay valid
        if data["model"]["precision"] == "float32":
            del data["model"]["precision"]
        for entry in data["image_sets"].values():
            if "fps" in entry and entry["fps"] is None and "generate" not in entry:
                del entry["fps"]
        if "spectral" not in data["analysis"]["measures"]:
            del data["analysis"]["spectral"]  # its options change nothing then
        if data["analysis"]["measures"] == ["images"]:
            del data["analysis"]["measures"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def resolve_path(value: str, base: Path) -> Path:
    """A spec's path ``value`` (``~`` expanded) as it names a file: relative ones from ``base``, the spec file's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def spec_yaml(spec: JobSpec) -> str:
    """The spec as YAML with every key, defaults included, in the models' order (the results record it)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
