"""Which spec keys change ``JobSpec.result_digest()``: the key that guards an output folder.

A folder whose ``job.json`` holds another digest is refused without ``--overwrite``; a folder
with the same digest is resumed. So every key that can change what the folder holds must change
the digest, and keys about *where* and *how robustly* a job runs must not (a job moved to another
cluster, or given more retries, resumes). The expected lists are the intended contract (the
docstring of ``result_digest`` and the README's spec reference), written out here by hand.
"""

from __future__ import annotations

import copy

import pytest

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
    ("extraction.batch_size", 8),  # float32 rounding of the forward pass (see plan.shard_size)
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
    ("cluster.kind", "address"),
    ("cluster.address", "tcp://10.0.0.1:8786"),
    ("cluster.scheduler_file", "scheduler.json"),
    ("analysis.task_memory", "2GB"),
    ("analysis.device", "host"),  # where the Gram products run: the same results to ~1e-15 relative
    ("analysis.device", "backend"),
    ("cluster.n_workers", 3),
    ("cluster.threads_per_worker", 2),
    ("cluster.memory_limit", "4GB"),
    ("cluster.jobs", 4),
    ("cluster.slurm", {"queue": "gpu"}),
    ("cluster.start_timeout", 30),
    ("cluster.security", {"tls_ca_file": "ca.pem", "tls_client_cert": "c.pem", "tls_client_key": "k.pem"}),
]


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


def test_exif_orientation_counts_only_when_applied():
    """``apply`` changes the results' digest; the default hashes as a spec from before the key
    existed (its dump without it), so folders written then stay valid."""
    import hashlib
    import json

    spec = parse_spec(_with("extraction.strict", False), "test-spec")
    old = spec.model_dump(mode="json", exclude={"cluster": True, "output": True, "name": True,
                                                 "extraction": {"retries", "require_gpu", "exif_orientation", "decoders",
                                                                "handoff"},  # added later still (issue 12)
                                                 "analysis": {"task_memory", "measures", "spectral", "device"},  # keys added later still (issues 15, 12)
                                                 "image_sets": {"__all__": {"fps"}}, "model": {"precision"}})  # (issue 16)
    assert spec.result_digest() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert _digest(_with("extraction.exif_orientation", "apply")) != _digest(BASE)
    assert _digest(_with("model.precision", "bfloat16")) != _digest(BASE) != _digest(_with("model.precision", "float16"))
    assert _digest(_with("extraction.decoders", 4)) == _digest(BASE)  # how images are decoded, not what


def test_movie_keys_count_only_when_used():
    """``analysis.measures``, ``analysis.spectral`` and a path set's ``fps`` (issue 15) leave the
    digest of a spec without them as it was; spectral options count only when spectral is measured."""
    assert _digest(_with("analysis.measures", ["images"])) == _digest(BASE)
    assert _digest(_with("analysis.spectral", {"state_length": 2.0})) == _digest(BASE)
    assert _digest(_with("analysis.measures", ["images", "spectral"])) != _digest(BASE)
    both = _with("analysis.measures", ["images", "spectral"])
    assert _digest({**both, "analysis": {**both["analysis"], "spectral": {"state_length": 2.0}}}) != _digest(both)
    assert _digest(_with("image_sets.photos", {"path": "data/photos", "fps": 30})) != _digest(BASE)
