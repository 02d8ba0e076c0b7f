"""What a shard costs on an object store (moto's S3 server): NetCDF/HDF5 uploaded whole, as daskdiff
writes it, against Zarr v3 with the sharding codec and CRC32C checksums, written through fsspec.

    python benchmarks/s3_shards.py                 # 64 images x 4 variables (25,096 values each)
    python benchmarks/s3_shards.py --images 256

What is run
-----------
One shard of ``--images`` images with four float32 variables of 10,000, 10,000, 4,096 and 1,000
values per image (a VGG16-like plan), in HDF5 chunks / Zarr inner chunks of 16 images:

- NetCDF: written to a local file by netCDF4 (Fletcher-32 per chunk, as :class:`daskdiff.io.shards.ShardWriter`),
  uploaded in one PUT (``fs.put_file``), read back as a differentiation task reads it: downloaded
  whole, one variable read (:func:`daskdiff.io.store.local_copy`).
- Zarr v3: a group through ``zarr.storage.FsspecStore`` on the same server, each variable one
  Zarr shard object (``ShardingCodec``, inner chunks of 16 images, ``bytes`` + ``crc32c``),
  read back one variable, as a differentiation task would.

What is printed
---------------
For each format: S3 requests (by operation) and bytes sent and received to write the shard, and
to read one variable; wall seconds of each (moto on localhost: no network latency, so request
counts, not seconds, are what a real store would charge and wait for). One run; not a timed test.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import socket
import tempfile
import time

import numpy as np

WIDTHS = {"units__conv5": 10_000, "units__conv4": 10_000, "units__fc1": 4_096, "units__logits": 1_000}


class Requests(logging.Handler):
    """Counts the requests moto's server answers (its werkzeug access log), by method."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def emit(self, record):
        method = str(record.args[0]).split(" ")[0] if record.args else ""
        if method in ("GET", "PUT", "POST", "HEAD", "DELETE"):
            self.calls[method.lstrip("\x1b[0123456789;m")] += 1

    def line(self, what, sent, received, seconds):
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.calls.items()))
        return f"  {what:<30} {sum(self.calls.values()):>4} requests ({ops}); sent {sent / 1e6:6.2f} MB, received {received / 1e6:6.2f} MB; {seconds:.2f} s"


def counting_store(base):
    """A ``zarr.storage.FsspecStore`` class that adds up the bytes it sends and receives."""

    class Counting(base):
        sent = received = 0

        async def get(self, key, prototype, byte_range=None):
            got = await super().get(key, prototype, byte_range)
            Counting.received += len(got) if got is not None else 0
            return got

        async def set(self, key, value):
            Counting.sent += len(value)
            return await super().set(key, value)

    return Counting


def write_netcdf(path, values):
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("image", None)
        for name, v in values.items():
            nc.createDimension(f"f_{name}", v.shape[1])
            var = nc.createVariable(name, "f4", ("image", f"f_{name}"), chunksizes=(16, v.shape[1]), fletcher32=True)
            var[:] = v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    requests = Requests()
    log = logging.getLogger("werkzeug")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(requests)
    from moto.server import ThreadedMotoServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import s3fs
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir("bench")
    rng = np.random.default_rng(0)
    values = {name: rng.standard_normal((args.images, n)).astype(np.float32) for name, n in WIDTHS.items()}
    stored = sum(v.nbytes for v in values.values())
    print(f"one shard: {args.images} images, {len(values)} variables, {stored / 1e6:.2f} MB of values")
    try:
        import netCDF4

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "shard-00000.nc")
            requests.calls.clear()
            t = time.perf_counter()
            write_netcdf(local, values)
            fs.put_file(local, "bench/nc/shard-00000.nc")
            size = os.path.getsize(local)
            print("NetCDF/HDF5, uploaded whole (daskdiff's choice)")
            print(requests.line("write", size, 0, time.perf_counter() - t))
            requests.calls.clear()
            t = time.perf_counter()
            fs.get_file("bench/nc/shard-00000.nc", os.path.join(tmp, "copy.nc"))
            with netCDF4.Dataset(os.path.join(tmp, "copy.nc")) as nc:
                got = nc["units__fc1"][:]
            assert np.array_equal(got, values["units__fc1"])
            print(requests.line("read one variable", 0, size, time.perf_counter() - t))

        Store = counting_store(zarr.storage.FsspecStore)
        store = Store(fs=s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, asynchronous=True),
                      path="bench/zarr/shard-00000.zarr")
        requests.calls.clear()
        t = time.perf_counter()
        group = zarr.open_group(store, mode="w", zarr_format=3)
        for name, v in values.items():
            a = group.create_array(name, shape=v.shape, dtype="float32", chunks=v.shape, compressors=None,
                                   serializer=ShardingCodec(chunk_shape=(16, v.shape[1]), codecs=[BytesCodec(), Crc32cCodec()]))
            a[:] = v
        print("Zarr v3, sharding codec + CRC32C, through fsspec")
        print(requests.line("write", Store.sent, Store.received, time.perf_counter() - t))
        Store.sent = Store.received = 0
        requests.calls.clear()
        t = time.perf_counter()
        got = zarr.open_group(store, mode="r")["units__fc1"][:]
        assert np.array_equal(got, values["units__fc1"])
        print(requests.line("read one variable", Store.sent, Store.received, time.perf_counter() - t))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
