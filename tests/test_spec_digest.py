"""Which spec keys change ``JobSpec.result_digest()``: the key that guards an output folder.

A folder whose ``job.json`` holds another digest is refused without ``--overwrite``; a folder
with the same digest is resumed. The rule, restated here from the README's spec reference and
docs/promises.md, not from the implementation:

- every key that can change what the folder holds changes the digest (the model and its
  weights, preprocessing, predictions and precision; each image set; every analysis choice,
  ``repeats_per_task`` included, since the mean RDM sums stacks in that grouping; the extraction
  options that change values or files: ``batch_size``, ``resize``, ``store``, ``strict``,
  ``exif_orientation``, ``shard_size``);
- keys about *where* and *how robustly* a job runs do not (``name``, ``output``, the whole
  ``cluster`` section, ``retries``, ``require_gpu``, ``decoders``, ``handoff``, ``task_memory``,
  ``device``): a job moved to another cluster, or given more retries, resumes; nor does
  ``analysis.stimulus``, whose value every run recomputes from the frames (no cached file holds it);
- keys added after folders were written count only when set to a value that changes results
  (``exif_orientation: apply``, ``precision`` other than float32, the spectral measure and its
  options, a path set's ``fps``): a folder written by an older daskdiff keeps its digest. That is
  checked against digests daskdiff wrote before those keys existed (:data:`WRITTEN_BY_90051FE`),
  not against a recomputation.

Each rule is checked by behaviour (change a key, compare digests), and
:func:`test_every_spec_key_is_classified` holds the lists to the spec model's fields, so a new
key must be placed in one of them.
"""

from __future__ import annotations

import copy
import typing

import pydantic
import pytest

from daskdiff.pipeline.spec import JobSpec
from daskdiff.pipeline.spec_file import parse_spec

BASE = {
    "name": "digest",
    "model": {"name": "VGG16", "weights": "imagenet", "seed": 0},
    "image_sets": {"photos": "data/photos", "noise": {"generate": "noise", "count": 3}},
    "analysis": {"substrates": ["units", "filter_mean"], "n_units": [200, "all"], "repeats": 10},
    "extraction": {"batch_size": 16, "shard_size": 128},
    "output": "out",
}


def _digest(data: dict) -> str:
    return parse_spec(data, "test-spec").result_digest()


def _with(path: str, value) -> dict:
    """BASE with the dotted key ``path`` set to ``value`` (sections created as needed)."""
    data = copy.deepcopy(BASE)
    *sections, key = path.split(".")
    node = data
    for s in sections:
        node = node.setdefault(s, {})
    node[key] = value
    return data


CHANGES_RESULTS = [
    ("model.name", "VGG19"),
    ("model.weights", "random"),
    ("model.seed", 1),
    ("model.fallback_weights", "random"),
    ("model.layers", ["fc2"]),
    ("model.predictions", "logits"),
    ("model.preprocess", "tf"),
    ("image_sets.photos", "data/other"),
    ("image_sets.extra", "data/extra"),
    ("image_sets.noise", {"generate": "noise", "count": 4}),
    ("analysis.substrates", ["units"]),
    ("analysis.n_units", [200]),
    ("analysis.repeats", 11),
    ("analysis.sampling", "channel=0"),
    ("analysis.normalize", "none"),
    ("analysis.metric", "cityblock"),
    ("analysis.per_unit", False),
    ("analysis.median_over", "square"),
    ("analysis.seed", 1),
    ("analysis.rdm_max_images", 0),  # whether the results hold an `rdm` variable
    ("analysis.repeats_per_task", 5),  # the mean RDM sums the repeats' stacks in this grouping
    ("extraction.batch_size", 8),  # float32 rounding of the forward pass (see core.batches.shard_size)
    ("extraction.resize", "bilinear"),
    ("extraction.store", "all"),
    ("extraction.store", "none"),
    ("extraction.strict", True),  # an undecodable file fails the job instead of being skipped
    # Shard files are named by position (shard-NNNNN.nc) and every one in the folder is read:
    # resuming with another shard size would mix old shards with new ones, so it must not resume.
    ("extraction.shard_size", 64),
]

KEEPS_RESULTS = [
    ("name", "renamed"),
    ("output", "elsewhere"),
    ("extraction.retries", 5),
    ("extraction.require_gpu", True),
    ("extraction.handoff", "auto"),
    ("extraction.handoff", "memory"),
    ("extraction.decoders", 4),  # how images are decoded, not what
    ("cluster.kind", "address"),
    ("cluster.address", "tcp://10.0.0.1:8786"),
    ("cluster.scheduler_file", "scheduler.json"),
    ("analysis.task_memory", "2GB"),
    ("analysis.device", "host"),  # where the Gram products run: the same results to ~1e-15 relative
    ("analysis.device", "backend"),
    # a movie's stimulus differentiation: recomputed from the frames by every run, no cached file depends on it
    ("analysis.stimulus", {"enabled": False}),
    ("analysis.stimulus.rf_area", 100.0),
    ("analysis.stimulus.field_of_view", [60.0, 90.0]),
    ("analysis.stimulus.state_length", 2.0),
    ("cluster.n_workers", 3),
    ("cluster.threads_per_worker", 2),
    ("cluster.memory_limit", "4GB"),
    ("cluster.jobs", 4),
    ("cluster.slurm", {"queue": "gpu"}),
    ("cluster.start_timeout", 30),
    ("cluster.security", {"tls_ca_file": "ca.pem", "tls_client_cert": "c.pem", "tls_client_key": "k.pem"}),
]

COUNTS_WHEN_SET = [  # (key, its default: the digest of a folder written before the key, a value that changes results)
    ("extraction.exif_orientation", "ignore", "apply"),
    ("model.precision", "float32", "bfloat16"),
    ("model.precision", "float32", "float16"),
    ("analysis.measures", ["images"], ["images", "spectral"]),
]

SPECTRAL_OPTIONS = [("state_length", 2.0), ("metric", "cityblock"), ("window", "hann"), ("overlap", 0.5), ("log_frequency", True)]
"""``analysis.spectral``'s keys: they change results only when ``analysis.measures`` holds spectral."""

WRITTEN_BY_90051FE = {
    "base": "0d88456f1394017ee44f1493fec3c0e0e63ca932f501c47b6611909359ee4695",
    "strict": "0adb0289f2e3e8cd8e26d27f0f53395dba1a5856a71ae0ffb5954d8b2cbebded",
}
"""``result_digest()`` of ``BASE`` and of ``BASE`` with ``extraction.strict: true``, as daskdiff at
commit 90051fe computed them (``git archive 90051fe daskdiff``, run on these specs), before
``exif_orientation``, ``decoders``, ``handoff``, ``device``, ``measures``, ``spectral``, a path
set's ``fps`` and ``precision`` existed: what that version wrote into its folders' ``job.json``."""


@pytest.mark.parametrize("path, value", CHANGES_RESULTS, ids=[p for p, _ in CHANGES_RESULTS])
def test_key_that_changes_results_changes_digest(path, value):
    assert _digest(_with(path, value)) != _digest(BASE)


@pytest.mark.parametrize("path, value", KEEPS_RESULTS, ids=[p for p, _ in KEEPS_RESULTS])
def test_key_that_does_not_change_results_keeps_digest(path, value):
    assert _digest(_with(path, value)) == _digest(BASE)


def test_digest_depends_on_values_not_spelling():
    """Defaults written out, a path set as ``{path: ...}``, sections in another order: same digest."""
    explicit = _with("image_sets.photos", {"path": "data/photos"})
    explicit["analysis"] = {**BASE["analysis"], "normalize": "zscore", "metric": "euclidean", "seed": 0}
    explicit["extraction"] = {"store": "needed", **BASE["extraction"], "resize": "nearest"}
    assert _digest(explicit) == _digest(BASE)
    assert _digest(dict(reversed(list(explicit.items())))) == _digest(BASE)


def test_a_folder_written_before_the_newer_keys_keeps_its_digest():
    """Today's digest of the specs that daskdiff 90051fe hashed is the one it wrote: those folders resume."""
    assert _digest(BASE) == WRITTEN_BY_90051FE["base"]
    assert _digest(_with("extraction.strict", True)) == WRITTEN_BY_90051FE["strict"]


@pytest.mark.parametrize("path, default, value", COUNTS_WHEN_SET, ids=[f"{p}={v}" for p, _, v in COUNTS_WHEN_SET])
def test_a_newer_key_counts_only_when_set(path, default, value):
    """Written out at its default, the key keeps the digest older folders hold; set, it changes it."""
    assert _digest(_with(path, default)) == WRITTEN_BY_90051FE["base"]
    assert _digest(_with(path, value)) != WRITTEN_BY_90051FE["base"]


@pytest.mark.parametrize("key, value", SPECTRAL_OPTIONS, ids=[k for k, _ in SPECTRAL_OPTIONS])
def test_spectral_options_count_only_when_spectral_is_measured(key, value):
    images = _with("analysis.measures", ["images"])
    spectral = _with("analysis.measures", ["images", "spectral"])
    set_in = lambda data: {**data, "analysis": {**data["analysis"], "spectral": {key: value}}}  # noqa: E731
    assert _digest(set_in(images)) == _digest(images) == WRITTEN_BY_90051FE["base"]
    assert _digest(set_in(spectral)) != _digest(spectral)


def test_a_path_sets_fps_counts_only_when_given():
    assert _digest(_with("image_sets.photos", {"path": "data/photos", "fps": None})) == WRITTEN_BY_90051FE["base"]
    assert _digest(_with("image_sets.photos", {"path": "data/photos", "fps": 30})) != WRITTEN_BY_90051FE["base"]


def _fields(model: type[pydantic.BaseModel], prefix: str = "") -> list[str]:
    """The dotted names of ``model``'s fields, nested sections walked (a dict of image sets is one field)."""
    names = []
    for name, field in model.model_fields.items():
        sections = [t for t in (typing.get_args(field.annotation) or (field.annotation,))
                    if isinstance(t, type) and issubclass(t, pydantic.BaseModel)]
        names.append(prefix + name)
        for section in sections:
            names += _fields(section, f"{prefix}{name}.")
    return names


def test_every_spec_key_is_classified():
    """Each field of the spec model is named by one of the lists above (or lies inside a section
    named whole, like ``cluster.slurm``), so that a new key is placed in the rule, not forgotten."""
    named = ({p for p, _ in CHANGES_RESULTS + KEEPS_RESULTS} | {p for p, _, _ in COUNTS_WHEN_SET}
             | {f"analysis.spectral.{k}" for k, _ in SPECTRAL_OPTIONS})
    fields = _fields(JobSpec)
    assert len(fields) > 60 and "cluster.slurm.queue" in fields and "analysis.spectral.window" in fields
    unnamed = [f for f in fields if not any(f == n or f.startswith(n + ".") or n.startswith(f + ".") for n in named)]
    assert not unnamed, f"spec keys in no list of tests/test_spec_digest.py: {unnamed}; add each where the digest rule puts it"
