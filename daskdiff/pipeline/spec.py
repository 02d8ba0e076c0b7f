"""Pipeline layer: job specs, a YAML file validated with pydantic before anything runs.

Every key is documented in the README and shown in ``jobs/*.yaml``. Relative paths in a spec
(image sets, output, weights files) are relative to the folder of the spec file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from ..core.differentiation import MEDIAN_OVER, NORMALIZATIONS
from ..core.distances import METRICS
from ..core.sampling import check_mode
from ..core.substrates import SUBSTRATES
from ..core.units import STORE_MODES
from ..errors import MAX_QUOTED, InputError, shorten
from ..io.images import RESIZE_FILTERS
from ..model.build import PREDICTIONS, PREPROCESS_MODES


def _one_of(names: Any) -> Any:
    """A ``Literal`` of a registry's names: the spec's choices are the registry's keys, never a copy."""
    return Literal[tuple(names)]


class SpecError(InputError):
    """A job spec that cannot be run; the message names the file, the key and the fix."""


def _whole_number(value: Any) -> Any:
    """A float that is a whole number (``1.0e+9``, as YAML reads it) as the int it is; any other
    value as given, for strict validation to refuse (``"5"``, ``true``, ``2.5``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole_number)]
"""An integer of the spec: an int, or a float that is a whole number; never a string or a bool."""
PositiveWhole = Annotated[Whole, Field(gt=0)]


class _Strict(BaseModel):
    """A spec section: unknown keys refused, values frozen, and types strict: ``repeats: "5"``,
    ``repeats: true`` or ``per_unit: "yes"`` are refused, not coerced (an integer is still a
    valid float: ``state_length: 1``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelSection(_Strict):
    name: str = "VGG16"
    weights: str = "imagenet"
    seed: Whole = Field(0, ge=0)
    fallback_weights: Literal["random"] | None = None
    layers: list[str] | None = None
    predictions: _one_of(PREDICTIONS) = "softmax"
    preprocess: _one_of(PREPROCESS_MODES) | None = None
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    """The forward pass's compute dtype: ``float32`` (default), or Keras mixed precision in
    ``bfloat16``/``float16`` (weights in float32; activations stored as float32). See the README's
    measured effect on differentiation."""

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("is an empty list; name at least one layer, or omit model.layers for every layer")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from ..model.build import check_model_name

        return check_model_name(v)


class PathSet(_Strict):
    path: str
    fps: float | None = Field(None, gt=0)
    """Frame rate (Hz) of a movie given as a folder of frames that records none; for a movie
    folder with ``movie.json`` or a movie file it must agree with the recorded rate. A set with
    a frame rate is a *movie*: its frames are kept in time order (sorted names)."""


class GeneratedSet(_Strict):
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


class SpectralSection(_Strict):
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
        from ..core.spectral import _window_values

        _window_values(tuple(v) if isinstance(v, list) else v, 16)  # InputError -> ValueError below
        return v

    def window_arg(self) -> Any:
        """The window as :func:`scipy.signal.get_window` takes it (a list becomes a tuple)."""
        return tuple(self.window) if isinstance(self.window, list) else self.window


class AnalysisSection(_Strict):
    measures: list[Literal[MEASURES]] = ["images"]
    """``[images]`` (default), ``[spectral]`` or both: see :data:`MEASURES`."""
    spectral: SpectralSection = SpectralSection()
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


class ExtractionSection(_Strict):
    batch_size: PositiveWhole = 16
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
        v = _whole_number(v)
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


ROLE_CERTIFICATES = {"scheduler": ("tls_scheduler_cert", "tls_scheduler_key"), "worker": ("tls_worker_cert", "tls_worker_key")}
"""The optional certificate/key pairs of the scheduler and workers that daskdiff itself starts."""


class SecuritySection(_Strict):
    """TLS files (PEM). ``tls_ca_file`` signs every certificate; the client pair is daskdiff's own.

    The scheduler and worker pairs are used only where daskdiff starts the scheduler and workers
    (``kind`` ``local``, ``local_cuda``, ``slurm``); each pair defaults to the client's, as one
    certificate signed by the CA may serve every role (Dask checks the CA, not host names).
    """

    tls_ca_file: str
    tls_client_cert: str
    tls_client_key: str
    tls_scheduler_cert: str | None = None
    tls_scheduler_key: str | None = None
    tls_worker_cert: str | None = None
    tls_worker_key: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> "SecuritySection":
        for cert, key in ROLE_CERTIFICATES.values():
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                given, missing = (cert, key) if getattr(self, key) is None else (key, cert)
                raise ValueError(f"{given} is given without {missing}: give both, or neither to use tls_client_cert/tls_client_key for this role")
        return self

    def role_files(self, role: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((cert key, cert path), (key key, key path))`` used for ``role`` (falling back to the client's)."""
        if role != "client":
            cert, key = ROLE_CERTIFICATES[role]
            if getattr(self, cert) is not None:
                return (cert, getattr(self, cert)), (key, getattr(self, key))
        return ("tls_client_cert", self.tls_client_cert), ("tls_client_key", self.tls_client_key)


SLURM_RESERVED = {
    "security": "give cluster.security (daskdiff passes it on, and sets the protocol)",
    "protocol": "give cluster.security for tls:// (daskdiff sets the protocol)",
    "n_workers": "give cluster.jobs (the SLURM jobs to start)",
    "host": "give it in cluster.slurm.scheduler_options: {host: ...}",
    "dashboard_address": "give it in cluster.slurm.scheduler_options: {dashboard_address: ...}",
    "extra": "dask-jobqueue renamed it: give cluster.slurm.worker_extra_args",
    "job_extra": "dask-jobqueue renamed it: give cluster.slurm.job_extra_directives",
    "env_extra": "dask-jobqueue renamed it: give cluster.slurm.job_script_prologue",
    "header_skip": "dask-jobqueue renamed it: give cluster.slurm.job_directives_skip",
    "project": "dask-jobqueue renamed it: give cluster.slurm.account",
}
"""``SLURMCluster`` arguments a spec may not give, and what to give instead."""

_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^(UNLIMITED|INFINITE)$", re.I)
"""SLURM's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) and no limit."""


class SlurmSection(_Strict):
    """The ``dask_jobqueue.SLURMCluster`` arguments of ``cluster.slurm``; None: Dask config's.

    Every key left out takes its value from Dask config ``jobqueue.<config_name>.*`` (as
    dask-jobqueue itself does: ``~/.config/dask/jobqueue.yaml``, ``DASK_JOBQUEUE__SLURM__QUEUE``),
    so only the keys set here are passed on, on top of that configuration.
    """

    cores: PositiveWhole | None = None
    """Cores per SLURM job (``--cpus-per-task``); shared by its ``processes`` as worker threads."""
    memory: str | None = None
    """Memory per SLURM job, e.g. ``16GB`` (``--mem``); shared by its ``processes``."""
    processes: PositiveWhole | None = None
    """Dask worker processes per SLURM job (dask-jobqueue default: about sqrt(cores))."""
    queue: str | None = None
    """SLURM partition (``-p``)."""
    account: str | None = None
    """SLURM account (``-A``)."""
    walltime: str | None = None
    """Time limit of each SLURM job (``-t``), a quoted string such as ``'04:00:00'`` or ``'1-00:00:00'``."""
    job_cpu: PositiveWhole | None = None
    job_mem: str | None = None
    job_name: str | None = None
    job_extra_directives: list[str] | None = None
    """Extra ``#SBATCH`` lines, without ``#SBATCH``: e.g. ``['--gres=gpu:1']``."""
    job_directives_skip: list[str] | None = None
    job_script_prologue: list[str] | None = None
    """Shell lines run before the worker starts, e.g. ``['module load cuda']``."""
    worker_extra_args: list[str] | None = None
    """Extra ``dask worker`` arguments, e.g. ``['--resources', 'GPU=1']``."""
    worker_command: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    shared_temp_directory: str | None = None
    interface: str | None = None
    python: str | None = None
    shebang: str | None = None
    death_timeout: PositiveWhole | None = None
    nanny: bool | None = None
    scheduler_options: dict[str, Any] | None = None
    """Options of the scheduler daskdiff starts, e.g. ``{host: 0.0.0.0, dashboard_address: ':8787'}``."""
    config_name: str | None = None
    """The Dask config section to default from: ``jobqueue.<config_name>`` (default ``slurm``)."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in SLURM_RESERVED:
                    raise ValueError(f"cluster.slurm.{key} is not allowed here: {SLURM_RESERVED[key]}")
                if key not in cls.model_fields:
                    raise ValueError(f"cluster.slurm.{shorten(str(key), 60)} is not a SLURMCluster option daskdiff passes on; "
                                     f"the keys are: {', '.join(cls.model_fields)}")
        return data

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            hours, rest = divmod(v, 3600)
            raise ValueError(
                f"is the integer {v}: YAML reads an unquoted H:MM:SS as seconds in base 60 (1:00:00 is 3600), which SLURM "
                f"would take as {v} minutes; quote it: walltime: '{hours:02d}:{rest // 60:02d}:{rest % 60:02d}'"
            )
        if isinstance(v, str) and not _WALLTIME.match(v):
            raise ValueError(f"{shorten(repr(v))} is not a SLURM time: give a quoted 'HH:MM:SS', 'MM', 'D-HH' or 'D-HH:MM:SS', e.g. '04:00:00'")
        return v

    @field_validator("memory", "job_mem")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            from dask.utils import parse_bytes

            try:
                if parse_bytes(v) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(f"{shorten(repr(v))} is not a size: give one such as '16GB' or '64GiB'") from None
        return v

    def kwargs(self) -> dict[str, Any]:
        """The keys set in the spec, as ``SLURMCluster`` keyword arguments."""
        return self.model_dump(exclude_none=True)

    def resolved(self, key: str) -> tuple[Any, str]:
        """``(value, where from)`` of ``key``: the spec's, else Dask config's (``jobqueue.<name>.<key>``), else None."""
        value = getattr(self, key)
        if value is not None:
            return value, f"cluster.slurm.{key}"
        import dask

        name = f"jobqueue.{self.config_name or 'slurm'}.{key.replace('_', '-')}"
        return dask.config.get(name, None), f"Dask config {name}"


class ClusterSection(_Strict):
    kind: Literal["local", "address", "slurm", "local_cuda"] = "local"
    n_workers: PositiveWhole | None = None
    """Worker processes of a ``local`` cluster (default: the cores, at most 4); their threads
    must fit this machine's cores (:func:`daskdiff.pipeline.budget.check_local_cluster`)."""
    threads_per_worker: PositiveWhole = 1
    memory_limit: Union[str, Annotated[float, Field(gt=0)]] = "auto"
    """Memory limit of each ``local`` worker, as Dask's ``LocalCluster(memory_limit=...)`` takes
    it: ``auto`` (this machine's memory shared by the cores), a size (``4GB``, ``500MiB``,
    ``4e9``) or a fraction up to 1 of this machine's memory (``0.25``)."""
    address: str | None = None
    scheduler_file: str | None = None
    jobs: PositiveWhole = Field(1, le=1000)
    """SLURM jobs to start (``kind: slurm``), at most 1,000: give each job more ``cores`` and ``processes`` instead."""
    slurm: SlurmSection = SlurmSection()
    security: SecuritySection | None = None
    start_timeout: PositiveWhole = Field(120, le=86400)
    """Seconds to wait for the first workers (at most a day: SLURM jobs may queue for hours)."""

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, v: str | float) -> str | float:
        if isinstance(v, str) and v != "auto":
            from dask.utils import parse_bytes

            try:
                if (float(v) if _is_number(v) else parse_bytes(v)) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError("must be 'auto', a positive size such as '4GB' or '500MiB', or a fraction of this machine's "
                                 "memory such as 0.25") from None
        return v

    @model_validator(mode="after")
    def _role_certificates_need_a_started_cluster(self) -> "ClusterSection":
        if self.kind == "address" and self.security is not None:
            given = [k for pair in ROLE_CERTIFICATES.values() for k in pair if getattr(self.security, k) is not None]
            if given:
                raise ValueError(
                    f"security.{given[0]}: with kind 'address' the scheduler and workers are started elsewhere, with their own "
                    "certificates; remove the tls_scheduler_*/tls_worker_* keys (they serve kind local, local_cuda and slurm)"
                )
        return self

    @model_validator(mode="after")
    def _slurm_job_size(self) -> "ClusterSection":
        """With ``kind: slurm``, cores and memory must come from the spec or Dask config."""
        if self.kind != "slurm":
            return self
        missing = [key for key in ("cores", "memory") if self.slurm.resolved(key)[0] is None]
        if missing:
            name = self.slurm.config_name or "slurm"
            raise ValueError(
                " and ".join(f"cluster.slurm.{key}" for key in missing) + " missing: a SLURM job needs its size, e.g. cluster.slurm: "
                f"{{cores: 8, memory: 32GB}} (or Dask config {' / '.join(f'jobqueue.{name}.{k}' for k in missing)})"
            )
        cores, _ = self.slurm.resolved("cores")
        processes, where = self.slurm.resolved("processes")
        if processes is not None and isinstance(cores, int) and processes > cores:
            raise ValueError(f"cluster.slurm.processes {processes} ({where}) is more than cluster.slurm.cores {cores}: each worker process needs a core")
        return self

    @field_validator("slurm", mode="before")
    @classmethod
    def _slurm(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        size = len(json.dumps(v, default=str))
        if size > MAX_SLURM_CHARS:
            raise ValueError(f"holds {size} characters of options; at most {MAX_SLURM_CHARS} (dask-jobqueue SLURMCluster keyword arguments)")
        if _depth(v) > MAX_SLURM_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_SLURM_DEPTH} levels; give SLURMCluster keyword arguments (strings, numbers, lists of strings)")
        return v


def _is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (Dask takes ``'0.5'`` as a fraction, not a size)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


MAX_SLURM_CHARS = 65536
MAX_SLURM_DEPTH = 4
MAX_NAME_CHARS = 200


def _depth(value: Any) -> int:
    """Nesting depth of lists/dicts in ``value`` (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max(map(_depth, value), default=0)
    return 0


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


class JobSpec(_Strict):
    name: str
    model: ModelSection = ModelSection()
    image_sets: dict[str, ImageSetEntry]
    analysis: AnalysisSection = AnalysisSection()
    extraction: ExtractionSection = ExtractionSection()
    output: str = "output"
    cluster: ClusterSection = ClusterSection()

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
        """SHA-256 of everything results depend on (not cluster, output, name, retries, decoders,
        handoff, or ``analysis.task_memory`` and ``analysis.device``, which move a repeat's median by
        ~1e-15 relative at most)."""
        data = self.model_dump(mode="json", exclude={"cluster": True, "output": True, "name": True,
                                                    "extraction": {"retries", "require_gpu", "decoders", "handoff"},
                                                    "analysis": {"task_memory", "device"}})
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


MAX_PROBLEMS = 20
"""Most problems a refused spec lists (a spec of thousands of wrong values says how many more)."""


def _format_errors(err: ValidationError, source: str) -> str:
    """The problems of a spec: one line for one problem, else a line naming the file and one per
    problem (at most :data:`MAX_PROBLEMS`), each ``key: what is wrong (got value)``."""
    lines = [f"{source}: the job spec is not valid ({err.error_count()} problem(s)); nothing was run:"]
    for e in err.errors()[:MAX_PROBLEMS]:
        loc = shorten(".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")))
        msg = shorten(e["msg"].removeprefix("Value error, "), 4 * MAX_QUOTED)
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against the README's spec reference)"
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {shorten(repr(got))})"
        lines.append(f"  - {loc}: {msg}{shown}")
    if err.error_count() > MAX_PROBLEMS:
        lines.append(f"  ... and {err.error_count() - MAX_PROBLEMS} more")
    if len(lines) == 2:
        return f"{source}: the job spec is not valid, nothing was run: {lines[1].removeprefix('  - ')}"
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> JobSpec:
    """Validate a spec already loaded from YAML; raises SpecError naming keys and choices."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec must be a YAML mapping (name:, image_sets:, ...), got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings/lists a job spec may have (a real spec needs 4)."""


MAX_SPEC_BYTES = 256 * 1024
"""Largest job spec file read: a spec naming every layer of a 1,000-layer model and a
thousand image sets takes ~100 KB, and ``cluster.slurm`` is bounded to 64 KiB; the pure-Python
YAML parser takes ~0.3 s and ~50 MB per 256 KiB (1.5 s per MiB, and ~1 GB for 5 MB)."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the spec gives a key twice (YAML would keep the last value without a word)."""


class _SpecLoader(yaml.SafeLoader):
    """The safe loader without anchors/aliases (no "billion laughs"), with bounded nesting, and
    refusing a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # '<<: {...}' merged first, as the base class does
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if line != key_node.start_mark.line + 1:
                    raise DuplicateKeyError(
                        f"key {shorten(repr(key))} is given twice in one mapping (lines {line} and "
                        f"{key_node.start_mark.line + 1}); YAML would keep only the second: remove one, or merge them"
                    )
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(f"YAML anchors/aliases (&, *) are not allowed in job specs {event.start_mark}; write each value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels {event.start_mark}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_spec_text(path: Path) -> str:
    """The text of the job spec file ``path``: a regular file of at most :data:`MAX_SPEC_BYTES`,
    UTF-8 (a byte-order mark is dropped); SpecError naming the file and the fix otherwise.

    The file is opened without blocking and checked to be regular before a byte is read, so a
    FIFO or device named as the spec cannot hang or flood the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpecError(f"job spec {path} does not exist; see jobs/demo.yaml for an example") from None
    except IsADirectoryError:
        fd = None
    except OSError as err:
        raise SpecError(f"job spec {path} cannot be opened ({err.strerror}); check its permissions") from None
    try:
        mode = os.stat(path).st_mode if fd is None else os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SpecError(f"job spec {path} is a folder, not a YAML file; give the spec file itself, e.g. {path / 'job.yaml'}")
        if not stat.S_ISREG(mode):
            raise SpecError(f"job spec {path} is not a regular file (a FIFO, socket or device); give a YAML file")
        chunks: list[bytes] = []
        while (got := sum(map(len, chunks))) <= MAX_SPEC_BYTES and (chunk := os.read(fd, MAX_SPEC_BYTES + 1 - got)):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        if fd is not None:
            os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"job spec {path} is larger than {MAX_SPEC_BYTES // 1024} KiB, far more than a job needs; "
                        "list many images in a list file (image_sets: {name: images.txt}), not in the spec")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SpecError(f"job spec {path} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                        "save it as UTF-8 (most editors: Save As, encoding UTF-8)") from None


def load_spec(path: str | Path) -> tuple[JobSpec, Path]:
    """Read and validate a YAML job spec (safe loader). Returns (spec, folder of the file).

    The file must be a regular UTF-8 file of at most :data:`MAX_SPEC_BYTES` (:func:`read_spec_text`).
    Anchors and aliases (``&a``, ``*a``, ``<<: *a``) are refused: a few hundred bytes of nested
    aliases would otherwise expand to gigabytes. Nesting is bounded by :data:`MAX_YAML_DEPTH`. A
    key given twice in one mapping is refused, naming both lines.
    """
    path = Path(path)
    text = read_spec_text(path)
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except DuplicateKeyError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {shorten(str(err), 4 * MAX_QUOTED)}") from None
    return parse_spec(data, str(path)), path.resolve().parent


def resolve_path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def spec_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
