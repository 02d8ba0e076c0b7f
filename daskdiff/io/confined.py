"""Storage layer: paths confined to an output folder: checked, read, listed and deleted without following a link out of it.

daskdiff writes and deletes only inside its output folder, but a path there may still lead out:
a folder replaced by a symbolic link (``activations -> /home/user/data``), a manifest entry such
as ``../thesis.tex``, a link or a FIFO planted where daskdiff keeps a file of its own. Folders
daskdiff writes into are checked with :func:`resolve_inside` before a job runs; what it deletes
goes through :func:`remove_inside`, which opens every folder on the way relative to the one
before it (``dir_fd``, ``O_NOFOLLOW``), so that a link swapped in after the check is not
followed either; its own small records are read with :func:`read_regular`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import InputError
from .reading import file_kind, TEXT_FILE_MAX_BYTES

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class OutputFolderError(InputError):
    """An output folder daskdiff must not write to, or cannot safely clear; the message says why."""


def entry_problem(rel: object) -> str | None:
    """Why ``rel`` is not a plain relative path below a folder (``a/b.nc``), or None.

    An absolute path, an empty or ``.`` component and ``..`` are problems: a path daskdiff
    records is always written as ``folder/name``, relative to its output folder.
    """
    if not isinstance(rel, str) or not rel:
        return "is not a path"
    if rel.startswith("/"):
        return "is an absolute path"
    parts = rel.split("/")
    if ".." in parts:
        return "goes up out of the folder ('..')"
    if "" in parts or "." in parts or "\0" in rel:
        return "is not a plain relative path"
    return None


def resolve_inside(output: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The real path of ``path`` (links resolved; a tail that does not exist yet kept as it is),
    which must be ``output``'s real path or below it.

    Raises
    ------
    OutputFolderError
        ``path`` leads out of ``output`` (through a symbolic link or ``..``), naming it, where it
        leads and the fix.
    """
    real_out = Path(os.path.realpath(output))
    real = Path(os.path.realpath(path))
    if real != real_out and not real.is_relative_to(real_out):
        raise OutputFolderError(
            f"{path} leads out of the output folder {output} (to {real}); daskdiff writes and deletes only inside its "
            "output folder and never follows a link out of it: remove that link (or move the folder back), or choose "
            "another --output"
        )
    return real


def regular_problem(info: os.stat_result, rewritten: bool = True) -> str | None:
    """Why a file of daskdiff's own is not one it may use: None for a regular file (with one name
    if it is ``rewritten`` in place: rewriting a hard link would rewrite its other names too;
    a file replaced by a rename, as the atomic writer does, may have several)."""
    if not stat.S_ISREG(info.st_mode):
        return f"is {file_kind(info.st_mode)}"
    if rewritten and info.st_nlink > 1:
        return f"is a hard link ({info.st_nlink} names share its contents, some perhaps outside the folder)"
    return None


def open_own_file(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a file daskdiff keeps in its output folder, never through a link, never
    blocking, closed in children (``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC``); it must be a regular
    file, with one name if ``flags`` open it for writing (:func:`regular_problem`).

    Raises
    ------
    OutputFolderError
        The path is a link, a FIFO, a device, a folder, a hard link, or cannot be opened; naming it and the fix.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            check_own_file(path)  # names the link and where it leads
        raise OutputFolderError(_own_file_message(path, f"cannot be opened ({err.strerror})")) from None
    try:
        problem = regular_problem(os.fstat(fd), rewritten=bool(flags & (os.O_WRONLY | os.O_RDWR)))
    except BaseException:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        raise OutputFolderError(_own_file_message(path, problem))
    return fd


def _own_file_message(path: str | os.PathLike, problem: str) -> str:
    return (f"{path} {problem}; daskdiff keeps a plain file of its own there and never follows or rewrites anything else: "
            "remove it (nothing it points to is touched), or choose another --output")


def read_own_file(path: str | os.PathLike, limit: int = TEXT_FILE_MAX_BYTES) -> bytes:
    """The bytes of one of daskdiff's own records (manifest, ``job.json``): read through
    :func:`open_own_file` (no link, no FIFO), at most ``limit`` bytes."""
    fd = open_own_file(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise OutputFolderError(_own_file_message(path, f"holds {size} bytes (a record daskdiff writes is under {limit})"))
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _open_folder(output: Path, rel_folder: str) -> int:
    """A descriptor of folder ``rel_folder`` of ``output``, opened one component at a time
    from ``output``'s real path, following no link: a link there (put in after the caller's
    check) raises ``OSError`` (``ELOOP``/``ENOTDIR``) instead of being followed."""
    real_out = Path(os.path.realpath(output))
    parts = resolve_inside(output, output / rel_folder).relative_to(real_out).parts if rel_folder else ()
    fd = os.open(real_out, _FOLDER_FLAGS)
    try:
        for part in parts:
            child = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _changed(output: Path, rel: str, err: OSError) -> OutputFolderError:
    return OutputFolderError(
        f"{output / rel} changed while daskdiff was removing it ({err.strerror}: a folder on its way was replaced, "
        "perhaps by a link); nothing through it was deleted: check the output folder, or choose another --output"
    )


def remove_inside(output: str | os.PathLike, rel: str, *, folder: bool = False) -> bool:
    """Delete file (or, with ``folder``, empty folder) ``rel`` of ``output``, never through a link.

    Its folder must resolve inside ``output`` (:func:`resolve_inside`); it is then opened from
    ``output`` without following links and ``rel``'s last component is removed relative to it
    (a link there is itself removed, never what it points to). Returns whether something was
    removed (False: it was not there). A folder that is not empty raises ``OSError``
    (``ENOTEMPTY``), as ``os.rmdir`` does.
    """
    output = Path(output)
    if (problem := entry_problem(rel)) is not None:
        raise OutputFolderError(f"{rel!r} {problem}; daskdiff removes only paths inside its output folder {output}")
    parent, _, name = rel.rpartition("/")
    try:
        fd = _open_folder(output, parent)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _changed(output, rel, err) from None
        raise
    try:
        (os.rmdir if folder else os.unlink)(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
    return True


def files_inside(output: str | os.PathLike, rel_folder: str) -> list[str]:
    """Names of the regular files (not links) in folder ``rel_folder`` of ``output``, listed
    without following a link (none if the folder is not there)."""
    try:
        fd = _open_folder(Path(output), rel_folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    finally:
        os.close(fd)


def check_own_file(path: str | os.PathLike) -> None:
    """Refuse, without opening it, what stands at ``path`` where daskdiff keeps a file of its own
    that it rewrites in place (the lock): anything but a regular file with one name.

    Raises
    ------
    OutputFolderError
        As :func:`open_own_file` would, naming the path and the fix; nothing there: no error.
    """
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a folder on the way may be missing or a file)
        return
    if stat.S_ISLNK(info.st_mode):
        raise OutputFolderError(_own_file_message(path, f"is a symbolic link (to {os.readlink(path)})"))
    if (problem := regular_problem(info)) is not None:
        raise OutputFolderError(_own_file_message(path, problem))
