"""A real S3 endpoint for the tests: moto's standalone server on 127.0.0.1, as s3fs tests itself.

``s3_server`` starts one ``moto.server.ThreadedMotoServer`` per test session on a free port and
sets the environment that boto3/s3fs and Dask workers started later read (``AWS_ENDPOINT_URL``,
fake credentials, a region). ``s3_bucket`` gives each test a new empty bucket and returns its
name; ``s3fs_fresh`` is an ``s3fs.S3FileSystem`` that skips s3fs's instance and listing caches,
so a test sees what another process wrote.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

#: What every S3 client in a test (this process, a ``daskdiff`` subprocess, a Dask worker) reads.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server that lives for the test session (environment set)."""
    pytest.importorskip("moto.server", reason="moto[server] is in the [test] extra")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3fs_fresh(s3_server):
    """An ``s3fs.S3FileSystem`` on the moto server with no instance or listing cache."""
    import s3fs

    return s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True, use_listings_cache=False
    )


@pytest.fixture
def s3_bucket(s3fs_fresh):
    """A new empty bucket for one test; its name (``s3://<name>/`` is the test's object store)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs_fresh.mkdir(name)
    return name
