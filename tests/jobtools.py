"""Helpers for job tests: small specs on the tiny model, comparing two results files, and a worker-killing plugin."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import netCDF4
import numpy as np
from distributed import LocalCluster, WorkerPlugin

from daskdiff.pipeline.cluster import local_workers
from daskdiff.pipeline.spec_file import parse_spec


def local_cluster(n_workers: int = 1, **kwargs) -> LocalCluster:
    """A ``LocalCluster`` of ``n_workers`` processes of one thread on loopback, started as daskdiff
    starts its own (``daskdiff.pipeline.cluster.local_workers``): forked from the process that
    imported Keras once where they can be. With ``env`` (variables set in each worker after it
    starts, too late for a backend imported before the fork) they are spawned."""
    kwargs = {"threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **kwargs}
    with local_workers(fork="env" not in kwargs):
        return LocalCluster(n_workers=n_workers, **kwargs)


def tiny_spec(model_path, sets, output, **overrides):
    data = {
        "name": "tiny",
        "model": {"name": model_path, "weights": "file"},
        "image_sets": {name: folder for name, folder in sets.items()},
        "analysis": {
            "substrates": ["units", "filter_mean"],
            "n_units": [5, "all"],
            "repeats": 6,
            "repeats_per_task": 4,
            "normalize": "zscore",
            "per_unit": True,
            "seed": 3,
        },
        "extraction": {"batch_size": 4, "shard_size": 3},
        "output": str(output),
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return parse_spec(data, "test-spec")


def run_quietly(spec, client, **kw):
    """``run_job`` of ``spec`` on ``client``, without progress bars or echoed lines."""
    from daskdiff.pipeline.job import run_job

    return run_job(spec, Path("."), client=client, progress=False, echo=lambda *a: None, **kw)


def set_folders(image_folders) -> dict[str, str]:
    """The ``image_folders`` fixture's sets as a spec names them: set -> its folder."""
    return {name: str(Path(paths[0]).parent) for name, paths in image_folders.items()}


def assert_same_results(got, want) -> None:
    """Every array of two results files (xarray Datasets) equal, NaN where NaN; image paths
    compared by file name, so that sets generated into two output folders compare too."""
    assert set(got.variables) == set(want.variables)
    name_of = np.vectorize(lambda p: Path(p).name if p else p, otypes=[object])
    for name in want.variables:
        a, b = got[name].values, want[name].values
        if name == "image_path":
            a, b = name_of(a), name_of(b)
        np.testing.assert_array_equal(a, b, err_msg=name)


def flip_chunk(path, name, rows=slice(0, 1)):
    """Flip bits of 8 bytes in the middle of the stored bytes of ``name[rows]``, found by their
    value in the file (at every place they occur: a flatten layer repeats the conv layer before it).

    XOR 0x5A, not 0xFF: Fletcher-32 sums 16-bit words modulo 65535, so it cannot tell a 0x0000
    word (a ReLU zero) from 0xFFFF."""
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        needle = np.ascontiguousarray(nc[name][rows], dtype="<f4").tobytes()
    data = bytearray(Path(path).read_bytes())
    at = data.find(needle)
    assert at >= 0, "the chunk's bytes are not in the file"
    while at >= 0:
        mid = at + len(needle) // 2
        data[mid : mid + 8] = bytes(b ^ 0x5A for b in data[mid : mid + 8])
        at = data.find(needle, at + 1)
    Path(path).write_bytes(bytes(data))


class ClusterStarts:
    """Stands in for ``daskdiff.pipeline.cluster._start_cluster``, the one function every cluster
    daskdiff starts goes through (:func:`~daskdiff.pipeline.cluster.connect`'s and the local
    cluster started early while a job is planned): records each start and returns a stand-in
    cluster that records its close. No process starts.

    A test checks :attr:`started` rather than raising from the stand-in: the early cluster starts
    in a thread that keeps its error for whoever takes the cluster, so a raise there is lost when a
    job fails before taking it. Use :func:`record_cluster_starts`.
    """

    def __init__(self) -> None:
        self.started: list[ClusterStarts.Cluster] = []

    class Cluster:
        def __init__(self) -> None:
            self.workers: dict = {}
            self.closed = False

        def close(self, timeout: float | None = None) -> None:  # as LocalCluster.close
            self.closed = True

    def __call__(self, section, n_workers, security) -> "ClusterStarts.Cluster":
        cluster = ClusterStarts.Cluster()
        self.started.append(cluster)
        return cluster

    @property
    def all_closed(self) -> bool:
        return all(c.closed for c in self.started)


def record_cluster_starts(monkeypatch) -> ClusterStarts:
    """Patch ``_start_cluster`` with a :class:`ClusterStarts` (with pytest's ``monkeypatch``); returns it."""
    import daskdiff.pipeline.cluster

    starts = ClusterStarts()
    monkeypatch.setattr(daskdiff.pipeline.cluster, "_start_cluster", starts)
    return starts


class KillOnce(WorkerPlugin):
    """Kill this worker process (os._exit) shortly after it starts the first task whose key
    contains ``match``; a marker file makes sure only one worker, once, dies."""

    name = "test-kill-once"

    def __init__(self, match: str, marker: str, delay: float = 0.02):
        self.match, self.marker, self.delay = match, marker, delay

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or self.match not in str(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(key).encode())
        os.close(fd)
        threading.Timer(self.delay, os._exit, args=(1,)).start()


class _BuildCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.builds = 0

    def emit(self, record):
        if record.getMessage().startswith("built model"):
            self.builds += 1


class CountModelBuilds(WorkerPlugin):
    """Count, in each worker, the model builds that daskdiff logs (logger ``daskdiff.model.build``)."""

    name = "test-count-model-builds"

    def setup(self, worker):
        log = logging.getLogger("daskdiff.model.build")
        log.setLevel(logging.INFO)
        worker.test_model_builds = _BuildCounter()
        log.addHandler(worker.test_model_builds)


def model_builds(dask_worker):
    """For ``client.run``: how many builds this worker logged since :class:`CountModelBuilds` was registered."""
    return dask_worker.test_model_builds.builds


def make_certificates(folder, names, ca="ca"):
    """An openssl-made CA ``<ca>.pem`` (key ``<ca>.key``) and, for each of ``names``, a certificate
    ``<name>.pem`` and key ``<name>.key`` it signs; returns {name: (cert, key)} and the CA's path.

    Run the ``openssl`` command line, as a site would; EC P-256 keys (fast), X.509 v3 extensions
    that strict verification wants (CA flag, key usage, key identifiers).
    """
    import subprocess
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key_opts = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_pem, ca_key = folder / f"{ca}.pem", folder / f"{ca}.key"
    if not ca_pem.exists():
        subprocess.run(["openssl", "req", "-x509", *key_opts, "-keyout", ca_key, "-out", ca_pem, "-days", "2", "-subj", f"/CN=daskdiff test {ca}",
                        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                       check=True, capture_output=True)
    ext = folder / "leaf.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\n"
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    made = {}
    for name in names:
        pem, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
        subprocess.run(["openssl", "req", *key_opts, "-keyout", key, "-out", csr, "-subj", f"/CN={name}"], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial", "-out", pem, "-days", "2",
                        "-extfile", ext], check=True, capture_output=True)
        made[name] = (str(pem), str(key))
    return made, str(ca_pem)


def worker_processes(pid):
    """The worker processes of the LocalCluster that the ``daskdiff`` client ``pid`` started:
    spawned by its nannies (``spawn_main``), or forked from its forkserver
    (daskdiff.pipeline.forkserver), which is the client's child, the workers its children."""
    import psutil

    client = psutil.Process(pid)
    servers = [p.pid for p in client.children() if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    return [p for p in client.children(recursive=True) if "spawn_main" in " ".join(p.cmdline()) or p.ppid() in servers]
