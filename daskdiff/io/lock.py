"""Storage layer: one owner per output folder (``<output>/.daskdiff-lock``).

A job holds an exclusive ``flock`` on the lock file from before it deletes or writes anything in
its output folder until it ends. The kernel releases the lock when the holder dies, however it
dies (SIGKILL included), so a lock is never stale, and a re-run after a crash simply takes it.
The file itself stays (removing a lock file while others may be opening it would let two runs
hold locks on different files); it holds the current or last holder's host, pid, start time and
command, which a second run quotes when it refuses to start.

``flock`` is advisory and per machine on most local filesystems; on NFS (v4, Linux >= 2.6.12) it
is carried out as a POSIX lock on the server and so also excludes runs on other machines. On a
filesystem without any locking, :class:`OutputLock` raises rather than run unprotected.

The lock file is opened without following a link and must be a regular file with one name
(:func:`daskdiff.io.confined.open_own_file`): a link, FIFO or hard link planted there (in a shared,
group-writable results folder) is refused, naming it, and what it points to is never rewritten.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import sys
from pathlib import Path

from .confined import open_own_file, OutputFolderError
from .layout import LOCK_FILE


class OutputFolderBusyError(OutputFolderError):
    """Another daskdiff run holds the output folder; the message names it."""


class OutputLock:
    """The exclusive lock of an output folder, held from :meth:`acquire` to :meth:`release`.

    Parameters
    ----------
    output : Path
        The output folder (it must exist).
    command : str, optional
        What to record as the holder's command (default: this process's ``sys.argv``).
    """

    def __init__(self, output: str | os.PathLike, command: str | None = None):
        self.path = Path(output) / LOCK_FILE
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock, or raise :class:`OutputFolderBusyError` naming its holder."""
        import fcntl

        fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT)  # never a link, a FIFO or a hard link: it is rewritten
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputFolderBusyError(
                    f"output folder {self.path.parent} is in use by another daskdiff run ({holder}); "
                    "wait for it to finish or stop it (re-running the same command later resumes), "
                    "or choose another --output"
                ) from None
            raise OutputFolderError(
                f"cannot lock output folder {self.path.parent} ({err.strerror}): its filesystem does not support "
                "file locks, so daskdiff cannot keep two runs from writing it at once; choose an --output on "
                "a local or NFSv4 filesystem"
            ) from None
        record = json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": self.command,
        })
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the file releases it; safe to call twice)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The holder recorded in the lock file, in words."""
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        return f"pid {data['pid']} on {data['host']}, started {data['started']}: {data['command'][:200]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
