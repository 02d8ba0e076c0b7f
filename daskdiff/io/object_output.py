"""Storage layer: an output location on an object store: its manifest and its lease.

An output prefix (``s3://bucket/prefix``) keeps the layout of a local output folder
(:mod:`daskdiff.io.layout`), with two records of its own:

- the manifest ``<prefix>/.daskdiff-manifest.json`` (:class:`ObjectManifest`): the keys daskdiff
  wrote, listed *before* they are written, the only keys ``--overwrite`` deletes;
- the lease ``<prefix>/.daskdiff-lock`` (:class:`ObjectLease`), which stands for the local
  folder's ``flock``: one run per output prefix.

The lease is an object created with a conditional write (``PutObject`` with ``If-None-Match:
*``): of two clients that race to create it, S3 lets exactly one succeed; the other gets
``412 Precondition Failed`` and is refused, naming the holder. The holder rewrites it every
``ttl / 3`` seconds with ``If-Match: <its ETag>``; a lease whose age (the store's own clock:
the response's ``Date`` minus the object's ``Last-Modified``, so the clients' clocks do not
matter) passes its ``ttl`` belongs to a dead run and is taken over, again with ``If-Match`` on the
ETag read, so that of two clients taking over one stale lease exactly one wins. A holder whose
refresh fails its condition has lost the lease (it was taken over after it had not refreshed for
a whole ``ttl``): it writes no further record (:meth:`ObjectLease.check`).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import os
import socket
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .confined import entry_problem, OutputFolderError
from .layout import LOCK_FILE, MANIFEST_FILE
from .location import location, ObjectPath
from .lock import OutputFolderBusyError
from .reading import TEXT_FILE_MAX_BYTES
from .store import precondition_failed, read_object, remove

LEASE_TTL = 60.0
"""Seconds a lease lives without a refresh (Dask config ``daskdiff.lease.ttl`` sets a run's)."""


class ObjectManifest:
    """The keys daskdiff wrote under an output prefix (see the module docstring), relative to it.

    The same interface as the local :class:`~daskdiff.io.manifest.Manifest` where a job uses it:
    ``add_files`` (rewrites the manifest object whole before returning), ``relative``,
    ``make_dirs`` (an object store has no folders: nothing to make), ``temporaries`` (uploads
    leave none), ``remove_file``, ``remove_all``. ``lease``: checked before every rewrite, so a
    run that lost its lease writes no further record.
    """

    def __init__(self, output: ObjectPath, lease: "ObjectLease | None" = None):
        self.output = output
        self.path = output / MANIFEST_FILE
        self.lease = lease
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        try:
            data = read_object(self.path, TEXT_FILE_MAX_BYTES)
            self.found = data is not None
            if data is not None:
                record = json.loads(data)
                self.files = set(record["files"])
        except (ValueError, KeyError, TypeError) as err:
            raise OutputFolderError(
                f"{self.path} is unreadable ({type(err).__name__}: {err}); daskdiff cannot tell its own objects from "
                "yours there: delete the prefix's daskdiff objects by hand, or choose another --output"
            ) from None
        for rel in sorted(self.files):
            if (problem := entry_problem(rel)) is not None or rel in (LOCK_FILE, MANIFEST_FILE):
                raise OutputFolderError(
                    f"{self.path} lists {rel!r}, which {problem or 'is daskdiff own lease or manifest'}; daskdiff lists only "
                    "what it wrote below its output prefix, so the manifest was edited or damaged and nothing is deleted "
                    "through it: remove that entry, or choose another --output"
                )

    def relative(self, path: str | os.PathLike | ObjectPath) -> str:
        """``path``'s key relative to the output prefix."""
        return location(path).relative_to(self.output).as_posix()

    def _save(self) -> None:
        if self.lease is not None:
            self.lease.check()
        text = json.dumps({"files": sorted(self.files), "dirs": []}, indent=0)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def make_dirs(self, folder: ObjectPath) -> ObjectPath:
        return folder

    def add_files(self, paths: Iterable[str | os.PathLike | ObjectPath]) -> None:
        """List ``paths`` as written by daskdiff (they may not exist yet); the lease is checked
        even when nothing is new (the results file is listed again on a resumed run)."""
        new = {self.relative(p) for p in paths} - self.files
        if new:
            self.files |= new
            self._save()
        elif self.lease is not None:
            self.lease.check()

    def temporaries(self) -> list:
        return []

    def theirs(self, files: Iterable[ObjectPath], existing: Iterable[str]) -> list[ObjectPath]:
        """Those of ``files`` that exist (their keys among ``existing``, relative) and that
        daskdiff did not write (not listed): never replaced."""
        existing = set(existing)
        return [f for f in files if (rel := self.relative(f)) in existing and rel not in self.files]

    def remove_file(self, path: str | ObjectPath) -> bool:
        """Delete one listed object (a corrupt shard to recompute)."""
        rel = self.relative(path)
        if rel not in self.files:
            raise OutputFolderError(f"{path} is not listed in {self.path}; daskdiff deletes only what it wrote")
        return remove(self.output / rel)

    def remove_all(self) -> list[str]:
        """Delete every listed object, one by one (never a prefix: an object of yours below the
        output prefix survives), then the manifest; returns ``[]`` (no folders to keep)."""
        for rel in sorted(self.files):
            remove(self.output / rel)
        self.files = set()
        remove(self.path)
        return []


class ObjectLease:
    """The lease of an output prefix, held from :meth:`acquire` to :meth:`release` (see the
    module docstring); the object-store counterpart of :class:`~daskdiff.io.lock.OutputLock`.

    Parameters
    ----------
    output : ObjectPath
        The output prefix (S3: the conditional writes are S3's).
    command : str, optional
        What to record as the holder's command (default: this process's ``sys.argv``).
    ttl : float
        Seconds the lease lives without a refresh; it is refreshed every ``ttl / 3``.
    """

    def __init__(self, output: ObjectPath, command: str | None = None, ttl: float = LEASE_TTL):
        self.path = output / LOCK_FILE
        self.command = command if command is not None else " ".join(sys.argv)
        self.ttl = float(ttl)
        self.etag: str | None = None
        self.took_over: str | None = None
        """The holder of the stale lease this run took over, in words (None: it was free)."""
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "command": self.command, "ttl": self.ttl}

    def _s3(self) -> tuple[Any, str, str]:
        fs, key = self.path.filesystem()
        if not hasattr(fs, "call_s3"):
            raise OutputFolderError(
                f"output {self.path.parent} is on {type(fs).__name__}: daskdiff keeps one run per output prefix with S3's "
                "conditional writes, and supports s3:// outputs only; choose an s3:// or a local --output"
            )
        bucket, name, _ = fs.split_path(key)
        return fs, bucket, name

    def _put(self, **condition: str) -> str:
        fs, bucket, key = self._s3()
        self._record["written"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")  # a new ETag each write
        body = json.dumps(self._record).encode()
        return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, ContentType="application/json", **condition)["ETag"]

    def _read(self) -> tuple[dict, str, float] | None:
        """``(record, etag, age in s by the store's clock)`` of the lease, None if there is none."""
        fs, bucket, key = self._s3()
        try:
            got = fs.call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        body = got["Body"]
        data = _read_body(fs, body)
        now = email.utils.parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - got["LastModified"]).total_seconds()
        try:
            record = json.loads(data)
        except ValueError:
            record = {}
        return record if isinstance(record, dict) else {}, got["ETag"], age

    def acquire(self) -> "ObjectLease":
        """Take the lease: create it, or take over one that expired; else raise
        :class:`~daskdiff.io.lock.OutputFolderBusyError` naming its holder."""
        for _ in range(3):  # the lease may vanish or change between a refused create and the read
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except OSError as err:
                if not precondition_failed(err):
                    raise
            found = self._read()
            if found is None:
                continue
            record, etag, age = found
            holder = _holder(record)
            if age <= float(record.get("ttl", LEASE_TTL)):
                raise OutputFolderBusyError(
                    f"output {self.path.parent} is in use by another daskdiff run ({holder}; its lease was refreshed "
                    f"{age:.0f} s ago); wait for it to finish or stop it (re-running the same command later resumes), "
                    "or choose another --output"
                )
            try:
                self.etag = self._put(IfMatch=etag)
                self.took_over = f"{holder}; not refreshed for {age:.0f} s"
                break
            except OSError as err:
                if not precondition_failed(err):
                    raise
        else:
            raise OutputFolderBusyError(f"output {self.path.parent}: its lease {self.path} keeps changing (other runs "
                                        "are starting on it); try again, or choose another --output")
        self._thread = threading.Thread(target=self._refresh, name="daskdiff-lease", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except OSError as err:
                if precondition_failed(err):
                    found = self._read()
                    self.lost = (f"this run lost its lease on {self.path.parent} (not refreshed within {self.ttl:.0f} s): "
                                 f"{_holder(found[0]) if found else 'nobody'} holds it now")
                    return
                # the store did not answer: try again at the next refresh; the lease lives ttl

    def check(self) -> None:
        """Raise :class:`~daskdiff.io.lock.OutputFolderBusyError` if the lease was lost."""
        if self.lost is not None:
            raise OutputFolderBusyError(self.lost + "; this run writes nothing more there: re-run the command to resume")

    def release(self) -> None:
        """Stop refreshing and delete the lease if it is still this run's (safe to call twice)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.lost is None:
            fs, bucket, key = self._s3()
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag)
            except OSError:
                pass  # not ours any more, or the store does not answer: it expires by itself

    def __enter__(self) -> "ObjectLease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_body(fs: Any, body: Any) -> bytes:
    """The bytes of an aiobotocore streaming body, read on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read)


def _holder(record: dict) -> str:
    try:
        return f"pid {record['pid']} on {record['host']}, started {record['started']}: {str(record['command'])[:200]}"
    except KeyError:
        return "holder unknown"
