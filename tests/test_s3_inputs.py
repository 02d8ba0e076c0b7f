"""Inputs on object storage: image sets, model and weights files as s3:// URLs on moto's real server.

A job whose sets are on S3 equals the same job on local disk, array for array, also on workers
that cannot see the client's folders; the client lists each set with one request; a rewritten
object (same key) is noticed; a missing bucket, refused credentials and an endpoint that does not
answer are one line each; the spec's secrets are written nowhere.
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import Client

from conftest import build_tiny_model, write_images
from jobtools import assert_same_results, local_cluster, tiny_spec

from daskdiff.errors import InputError
from daskdiff.io.fingerprints import object_record
from daskdiff.io.image_sets import resolve_image_set
from daskdiff.io.images import load_image, load_images
from daskdiff.io.reading import NotReadableError, read_object
from daskdiff.io.location import REDACTED, StorageOptions
from daskdiff.model.extract import ShardTask
from daskdiff.pipeline.job import local_sets_elsewhere, run_job
from daskdiff.pipeline.resolve import resolve
from daskdiff.pipeline.spec import spec_yaml
from daskdiff.pipeline.target import Target

SECRET = "sEcReT-s3in-4242"


def _upload(fs, bucket: str, prefix: str, paths: list[str]) -> None:
    for p in paths:
        fs.put_file(p, f"{bucket}/{prefix}/{Path(p).name}")


def _requests(caplog) -> list[str]:
    """The request lines moto's server logged (``"GET /bucket?list-type=2... HTTP/1.1" 200``)."""
    return [re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage()) for r in caplog.records if r.name == "werkzeug"]


# ---------------------------------------------------------------- listing (no cluster)


def test_prefix_glob_and_list_file_are_listed_with_one_request_each(tmp_path, s3fs_fresh, s3_bucket, caplog):
    paths = write_images(tmp_path / "a", 4, seed=5)
    _upload(s3fs_fresh, s3_bucket, "a", paths)
    s3fs_fresh.pipe(f"{s3_bucket}/a/._hidden.png", b"x")
    s3fs_fresh.pipe(f"{s3_bucket}/a/notes.csv", b"x")
    s3fs_fresh.pipe(f"{s3_bucket}/a/deeper/img-9.png", b"x")
    s3fs_fresh.pipe(f"{s3_bucket}/sets/a.txt", "# two of them\n../a/img-001.png\n\n../a/img-000.png\n".encode())
    urls = [f"s3://{s3_bucket}/a/{Path(p).name}" for p in paths]

    for source, want, request in [(f"s3://{s3_bucket}/a/", urls, "GET /{b}?list-type=2"),
                                  (f"s3://{s3_bucket}/a/img-00[12].png", urls[1:3], "GET /{b}?list-type=2"),
                                  (f"s3://{s3_bucket}/sets/a.txt", urls[:2], "GET /{b}/sets/a.txt")]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="werkzeug"):
            assert resolve_image_set(source) == want
        (line,) = _requests(caplog)
        assert request.format(b=s3_bucket) in line


def test_a_rewritten_object_of_the_same_size_is_noticed_within_the_second(s3fs_fresh, s3_bucket):
    url = f"s3://{s3_bucket}/img.png"
    for _ in range(10):  # until both writes fall in one second of LastModified (its resolution)
        s3fs_fresh.pipe(url, b"aaaa")
        first, stamp = object_record(url), s3fs_fresh.info(url, refresh=True)["LastModified"]
        s3fs_fresh.pipe(url, b"bbbb")  # same key, same size
        second = object_record(url)
        if s3fs_fresh.info(url, refresh=True)["LastModified"] == stamp:
            break
    else:
        pytest.fail("no two writes within one second")
    assert first[0] == second[0] == 4 and first[1] != second[1]
    assert object_record(f"s3://{s3_bucket}/missing.png") == (-1, -1)


def test_an_image_object_decodes_as_its_file_and_the_local_refusals_hold(tmp_path, s3fs_fresh, s3_bucket, monkeypatch):
    (path,) = write_images(tmp_path / "a", 1, seed=7)
    url = f"s3://{s3_bucket}/a/{Path(path).name}"
    s3fs_fresh.put_file(path, url)
    s3fs_fresh.pipe(f"{s3_bucket}/empty.png", b"")
    np.testing.assert_array_equal(load_image(url, (20, 24)), load_image(path, (20, 24)))
    images, ok, skipped = load_images([url, f"s3://{s3_bucket}/empty.png", f"s3://{s3_bucket}/a/gone.png",
                                       f"s3://{s3_bucket}/a"], (20, 24))
    assert ok == [0] and [s.reason for s in skipped] == ["empty file (0 bytes)", "object not found", "object not found"]
    size = Path(path).stat().st_size
    assert read_object(url, limit=size) == Path(path).read_bytes()
    with pytest.raises(NotReadableError, match="larger than any image file"):
        read_object(url, limit=size - 1, what="image file")


def _fake_s3_refusing(code: str, status: int):
    """An HTTP server answering every request as S3 refuses one (``code``), on a free port."""
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>refused</Message></Error>".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("case", ["no bucket", "refused credentials", "endpoint down"])
def test_bad_object_store_inputs_are_one_line_each_and_write_nothing(tmp_path, s3_server, case):
    spec_options: dict = {}
    server = None
    if case == "no bucket":
        url, wanted = "s3://no-such-bucket-s3in/a/", "the bucket does not exist"
    elif case == "refused credentials":
        server = _fake_s3_refusing("InvalidAccessKeyId", 403)
        spec_options = {"endpoint_url": f"http://127.0.0.1:{server.server_port}", "key": "wrong", "secret": SECRET}
        url, wanted = "s3://some-bucket/a/", "access denied; check the credentials"
    else:
        silent = socket.socket()  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        spec_options = {"endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        url, wanted = "s3://some-bucket/a/", "the endpoint does not answer"
    out = tmp_path / "out"
    spec = tiny_spec("VGG16", {"a": url}, out, storage_options=spec_options or None, cluster={"start_timeout": 24})
    lines: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(InputError) as caught:
            run_job(spec, tmp_path, progress=False, echo=lines.append)
    finally:
        if server is not None:
            server.shutdown()
        if case == "endpoint down":
            silent.close()
    message = str(caught.value)
    assert "\n" not in message and url in message and wanted in message, message
    assert message.startswith("image set 'a': cannot read")
    assert SECRET not in message and not any(SECRET in line for line in lines)
    assert time.monotonic() - started < 24
    assert not out.exists()


# ---------------------------------------------------------------- secrets and the cluster's reach


def test_spec_secrets_are_redacted_wherever_the_spec_is_written(tmp_path):
    options = {"key": "AKIA-s3in", "secret": SECRET, "client_kwargs": {"region_name": "eu-west-1"}}
    spec = tiny_spec("VGG16", {"a": "s3://b/a/"}, tmp_path / "out", storage_options=options)
    plain = tiny_spec("VGG16", {"a": "s3://b/a/"}, tmp_path / "out")
    assert spec.storage_options == options  # the real values, for the filesystems
    dumped = spec.model_dump(mode="json")["storage_options"]
    assert dumped == {"key": REDACTED, "secret": REDACTED, "client_kwargs": {"region_name": "eu-west-1"}}
    assert SECRET not in spec_yaml(spec) and "AKIA-s3in" not in spec_yaml(spec)
    assert spec.result_digest() == plain.result_digest()  # new credentials keep a folder valid
    task = ShardTask("a", 0, ("s3://b/a/x.png",), 0, str(tmp_path), storage_options=StorageOptions(options))
    assert SECRET not in repr(task) and SECRET not in repr(StorageOptions(options))
    assert dict(StorageOptions(options)) == options


def test_a_local_set_with_a_scheduler_elsewhere_is_said_in_one_line(tmp_path, image_folders, s3_bucket):
    sets = {"local": str(Path(image_folders["noisy"][0]).parent), "remote": f"s3://{s3_bucket}/r/"}
    spec = tiny_spec("VGG16", {"local": sets["local"]}, tmp_path / "out")
    inputs = resolve(spec, tmp_path)
    far = Target.of(spec.cluster, scheduler="tcp://10.1.2.3:8786")
    (line,) = local_sets_elsewhere(inputs, far)
    assert "'local'" in line and sets["local"] in line and "tcp://10.1.2.3:8786" in line and "s3://" in line
    assert local_sets_elsewhere(inputs, Target.of(spec.cluster)) == []  # a LocalCluster sees this disk


# ---------------------------------------------------------------- jobs


@pytest.fixture(scope="module")
def module_client(s3_server):
    """One worker process started after the S3 environment is set (the workers inherit it)."""
    with local_cluster(1) as cluster, Client(cluster) as c:
        yield c


COSTLY_FIXTURES = {"module_client": "cluster", "local_reference": "cluster"}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_model_path, module_client):
    """The job on local disk: its image folders and results."""
    root = tmp_path_factory.mktemp("local")
    sets = {"noisy": write_images(root / "noisy", 7, seed=1),
            "smooth": write_images(root / "smooth", 6, seed=2, kind="smooth")}
    spec = tiny_spec(tiny_model_path, {k: str(root / k) for k in sets}, root / "out")
    result = run_job(spec, root, client=module_client, progress=False, echo=lambda *a: None)
    return sets, xr.load_dataset(result.path)


def _upload_sets(fs, bucket: str, sets: dict) -> dict:
    """The sets on S3: 'noisy' as a prefix, 'smooth' as a list file naming its objects."""
    for name, paths in sets.items():
        _upload(fs, bucket, name, paths)
    fs.pipe(f"{bucket}/smooth.txt", "\n".join(f"smooth/{Path(p).name}" for p in sets["smooth"]).encode())
    return {"noisy": f"s3://{bucket}/noisy/", "smooth": f"s3://{bucket}/smooth.txt"}


def test_model_and_weights_on_s3_and_a_rewritten_weights_object_is_noticed(
        tmp_path, tiny_model_path, local_reference, module_client, s3fs_fresh, s3_bucket):
    sets, want = local_reference
    urls = _upload_sets(s3fs_fresh, s3_bucket, sets)
    s3fs_fresh.put_file(tiny_model_path, f"{s3_bucket}/net/tiny.keras")
    weights = tmp_path / "tiny.weights.h5"
    build_tiny_model(seed=0).save_weights(weights)
    s3fs_fresh.put_file(str(weights), f"{s3_bucket}/net/tiny.weights.h5")
    spec = tiny_spec(f"s3://{s3_bucket}/net/tiny.keras", urls, tmp_path / "out",
                     model={"name": f"s3://{s3_bucket}/net/tiny.keras", "weights": f"s3://{s3_bucket}/net/tiny.weights.h5"})
    first = xr.load_dataset(run_job(spec, tmp_path, client=module_client, progress=False, echo=lambda *a: None).path)
    assert_same_results(first, want)
    assert "s3://" in str(first["image_path"].values.ravel()[0])

    build_tiny_model(seed=1).save_weights(weights)  # other weights, under the same key
    s3fs_fresh.put_file(str(weights), f"{s3_bucket}/net/tiny.weights.h5")
    lines: list[str] = []
    second = xr.load_dataset(run_job(spec, tmp_path, client=module_client, progress=False, echo=lines.append).path)
    assert not np.array_equal(second["differentiation"].values, first["differentiation"].values)
    assert any("extracted again" in line for line in lines), lines


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.cluster
@pytest.mark.subprocess
@pytest.mark.skipif(not _unshare_works(), reason="needs root and `unshare -m` (a mount namespace) to hide the client's folder from the workers")
def test_workers_that_cannot_see_the_clients_images_read_them_from_s3(
        tmp_path, tiny_model_path, local_reference, s3fs_fresh, s3_bucket, caplog):
    """A scheduler and a worker in their own mount namespace, with a tmpfs over the client's image
    folder: the job on S3 equals the local one; the client lists each set with one request and
    asks nothing per image; each worker asks 2 requests per image; the secret is written nowhere."""
    sets, want = local_reference
    hidden = tmp_path / "client"
    for name, paths in sets.items():  # the client's copy of the images, which the workers cannot see
        (hidden / name).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, hidden / name)
    urls = _upload_sets(s3fs_fresh, s3_bucket, sets)
    shared = tmp_path / "shared"
    shared.mkdir()
    scheduler_file = shared / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    script = (f"mount -t tmpfs tmpfs {hidden} && "
              f"{dask} scheduler --host 127.0.0.1 --port 0 --dashboard-address 127.0.0.1:0 --scheduler-file {scheduler_file} & "
              f"{dask} worker --scheduler-file {scheduler_file} --nworkers 1 --nthreads 1 --dashboard-address 127.0.0.1:0 "
              f"--local-directory {shared} & wait")
    log = open(tmp_path / "cluster.log", "w")
    cluster = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with Client(scheduler_file=str(scheduler_file), timeout=120) as c:
            c.wait_for_workers(1, timeout=120)
            assert list(c.run(os.path.exists, str(hidden / "noisy")).values()) == [False]
        assert (hidden / "noisy").is_dir()

        out = shared / "out"
        spec = tiny_spec(tiny_model_path, urls, out, storage_options={"secret": SECRET, "key": "testing"},
                         cluster={"kind": "address", "scheduler_file": str(scheduler_file)})
        lines: list[str] = []
        caplog.clear()  # the uploads
        with caplog.at_level(logging.INFO, logger="werkzeug"):
            result = run_job(spec, tmp_path, progress=False, echo=lines.append)
        requests = _requests(caplog)
    finally:
        os.killpg(cluster.pid, 15)
        cluster.wait(60)
        log.close()
    got = xr.load_dataset(result.path)
    assert_same_results(got, want)

    # the client: one listing of the prefix, one GET of the list file, nothing per image
    assert sum(f"GET /{s3_bucket}?list-type=2" in r for r in requests) == 1
    assert sum(f"GET /{s3_bucket}/smooth.txt" in r for r in requests) == 1
    n_images = sum(map(len, sets.values()))
    per_image = Counter(re.search(r'"(\w+) /', r).group(1) for r in requests
                        if re.search(rf"/{s3_bucket}/(noisy|smooth)/img-\d+\.png", r))
    assert per_image == {"HEAD": n_images, "GET": n_images}, per_image

    written = [p for p in out.rglob("*") if p.is_file()] + [tmp_path / "cluster.log"]
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]
    assert not any(SECRET in line for line in lines + requests)


def test_a_movie_file_on_s3_equals_the_local_file_and_a_rewritten_one_is_noticed(
        tmp_path, tiny_model_path, module_client, s3fs_fresh, s3_bucket, caplog):
    """A ``.npy`` movie (with ``fps:``) and a GIF (its own rate) as S3 objects: the job equals the
    one on the local files, array for array (spectral and stimulus differentiation included); the
    client downloads each movie once; a rerun reuses the frames; a rewritten object is generated again."""
    from PIL import Image

    rng = np.random.default_rng(11)
    grey = rng.integers(0, 256, size=(12, 32, 32), dtype=np.uint8)  # 3 windows of 4 frames at 4 fps
    np.save(tmp_path / "clip.npy", grey)
    frames = [Image.fromarray(np.stack([f, f[::-1], f.T], axis=-1)) for f in grey]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
    for name in ("clip.npy", "clip.gif"):
        s3fs_fresh.put_file(str(tmp_path / name), f"{s3_bucket}/movies/{name}")

    def spec(where, output):
        sets = {"array": {"path": f"{where}/clip.npy", "fps": 4.0}, "gif": {"path": f"{where}/clip.gif"}}
        return tiny_spec(tiny_model_path, sets, output, analysis__measures=["images", "spectral"],
                         analysis__spectral={"state_length": 1.0})

    local = xr.load_dataset(run_job(spec(str(tmp_path), tmp_path / "local"), tmp_path, client=module_client,
                                    progress=False, echo=lambda *a: None).path)
    remote_spec = spec(f"s3://{s3_bucket}/movies", tmp_path / "remote")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        remote = xr.load_dataset(run_job(remote_spec, tmp_path, client=module_client, progress=False,
                                         echo=lambda *a: None).path)
    assert_same_results(remote, local)
    assert {"spectral_differentiation", "stimulus_differentiation"} <= set(local.variables)
    assert list(local["fps"].values) == [4.0, 4.0] and list(local["n_images"].values) == [12, 12]
    downloads = [r for r in _requests(caplog) if re.search(rf'"GET /{s3_bucket}/movies/clip\.(npy|gif)', r)]
    assert len(downloads) == 2, downloads  # one GET per movie, on the client

    lines: list[str] = []
    run_job(remote_spec, tmp_path, client=module_client, progress=False, echo=lines.append)
    assert sum("reusing 12 generated image(s)" in line for line in lines) == 2, lines

    np.save(tmp_path / "clip.npy", grey[::-1])  # another movie under the same key
    s3fs_fresh.put_file(str(tmp_path / "clip.npy"), f"{s3_bucket}/movies/clip.npy")
    sets = resolve(remote_spec, tmp_path).sets
    assert sets["array"].paths == () and len(sets["gif"].paths) == 12  # generated again / reused

    s3fs_fresh.put_file(str(tmp_path / "remote" / "images" / "gif" / "frame-000000.png"), f"{s3_bucket}/still.png")
    with pytest.raises(InputError, match=r"image set 'still': resolves to 1 file\(s\)"):  # a still image, as a local one
        run_job(tiny_spec(tiny_model_path, {"still": {"path": f"s3://{s3_bucket}/still.png", "fps": 4.0}}, tmp_path / "still"), tmp_path,
                client=module_client, progress=False, echo=lambda *a: None)
