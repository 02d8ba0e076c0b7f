"""A wrong ``--scheduler`` port (issue 22, item 9): a refused connection on a reachable host fails
at once with one line naming the address and what to check, and before the output folder is
touched; ``distributed.Client`` alone would retry it for ``cluster.start_timeout``."""

from __future__ import annotations

import json
import socket
import time

import pytest
import yaml

from daskdiff.cli import main
from daskdiff.errors import JobError
from daskdiff.pipeline.cluster import refuse_unreachable
from daskdiff.pipeline.spec_cluster import ClusterSection
from daskdiff.pipeline.target import Target


def _refused_address() -> str:
    """A port on 127.0.0.1 that refuses connections: bound, never listened on (so no other
    process of the machine can take it meanwhile)."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    _refused_address.held = held  # kept open for the test's lifetime
    return f"tcp://127.0.0.1:{held.getsockname()[1]}"


def test_a_refused_port_is_refused_at_once_naming_it():
    address = _refused_address()
    start = time.monotonic()
    with pytest.raises(JobError, match=rf"^--scheduler {address}: nothing listens on port \d+ of 127\.0\.0\.1 \(connection refused\); "
                                       "check that the scheduler is running, that host and port are right"):
        refuse_unreachable(Target.of(ClusterSection(start_timeout=300), scheduler=address))
    assert time.monotonic() - start < 5


def test_a_stale_scheduler_file_is_refused_at_once_naming_file_and_address(tmp_path):
    address = _refused_address()
    sfile = tmp_path / "scheduler.json"
    sfile.write_text(json.dumps({"address": address}))
    with pytest.raises(JobError, match=rf"^--scheduler-file {sfile} names {address}: nothing listens .* a scheduler file left by a scheduler that has stopped"):
        refuse_unreachable(Target.of(ClusterSection(start_timeout=300), scheduler_file=str(sfile)))


def test_a_listening_port_and_a_missing_scheduler_file_are_left_to_connect(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        refuse_unreachable(Target.of(ClusterSection(), scheduler=f"tcp://127.0.0.1:{server.getsockname()[1]}"))
    refuse_unreachable(Target.of(ClusterSection(), scheduler_file=str(tmp_path / "not-yet.json")))  # waited for by connect


@pytest.mark.keras
def test_daskdiff_run_with_a_wrong_port_fails_in_seconds_and_writes_nothing(tmp_path, tiny_model_path, capsys):
    """As a user runs it: a spec with a generated image set (which a run writes into the output
    folder before its tasks) and a long start_timeout; one line on stderr, no output folder."""
    output = tmp_path / "out"
    spec = {"name": "wrong-port", "model": {"name": tiny_model_path, "weights": "file"},
            "image_sets": {"noise": {"generate": "noise", "count": 3, "size": 32}},
            "analysis": {"n_units": [5], "repeats": 2}, "output": str(output), "cluster": {"start_timeout": 300}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    address = _refused_address()
    start = time.monotonic()
    code = main(["run", str(job), "--scheduler", address, "--no-progress"])
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"daskdiff run: error: --scheduler {address}: nothing listens on port"), err
    assert took < 30, f"{took:.1f} s"
    assert not output.exists()
