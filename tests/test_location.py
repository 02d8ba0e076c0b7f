"""Where a spec's path points: local paths keep their meaning, URLs go to fsspec, secrets are redacted."""

import fsspec
import pytest

from daskdiff.io.location import REDACTED, filesystem, is_remote, local_path, protocol, redact


@pytest.mark.parametrize(
    "path, proto",
    [("images/cats", "file"), ("/abs/x.png", "file"), ("file:///abs/x", "file"), ("s3://b/k/", "s3"),
     ("S3://b/k", "s3"), ("gs://b", "gs"), ("memory://x", "memory"), ("C:\\data", "file"), ("a:b", "file")],
)
def test_protocol(path, proto):
    assert protocol(path) == proto
    assert is_remote(path) is (proto != "file")


def test_local_path_strips_file_scheme_only():
    assert local_path("file:///abs/x") == "/abs/x"
    assert local_path("rel/x") == "rel/x"
    assert local_path("s3://b/k") == "s3://b/k"


def test_filesystem_memory_round_trip():
    fs, path = filesystem("memory://daskdiff-location-test/a.bin")
    fs.pipe(path, b"abc")
    assert fsspec.open("memory://daskdiff-location-test/a.bin", "rb").open().read() == b"abc"


def test_redact_hides_secrets_at_any_depth_and_keeps_the_rest():
    options = {"key": "AKIA", "secret": "s", "anon": False, "endpoint_url": "http://x",
               "client_kwargs": {"aws_session_token": "t", "region_name": "eu"}, "profile": "p"}
    out = redact(options)
    assert out == {"key": REDACTED, "secret": REDACTED, "anon": False, "endpoint_url": "http://x",
                   "client_kwargs": {"aws_session_token": REDACTED, "region_name": "eu"}, "profile": "p"}
    assert options["key"] == "AKIA"  # the caller's mapping is left as it was
