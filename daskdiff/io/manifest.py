"""Storage layer: the record of what daskdiff wrote in an output folder, the only paths it deletes.

An output folder may be shared with the user's own files (``output: .`` next to the spec, with
photos beside it). ``--overwrite`` must therefore never remove a folder wholesale: it removes the
files and folders listed in ``<output>/.daskdiff-manifest.json`` and nothing else.

The client records a path *before* the task that writes it is submitted. A run killed at any point
leaves a manifest that lists every file it may have written, so the next ``--overwrite`` can still
remove them. A folder is listed only if daskdiff created it, and it is removed only when it is
empty once daskdiff's own files are gone.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write, owner_alive, temporary_target
from .confined import entry_problem, files_inside, OutputFolderError, read_own_file, remove_inside, resolve_inside
from .layout import LOCK_FILE, MANIFEST_FILE

__all__ = ["check_output_folder", "Manifest", "OutputFolderError", "Writes"]


def check_output_folder(output: Path, inputs: Iterable[str]) -> None:
    """Refuse output folders where daskdiff could damage what it did not write.

    Parameters
    ----------
    output : Path
        The resolved output folder.
    inputs : iterable of str
        Paths of the job's input images (sets read from disk, not sets daskdiff generates).

    Raises
    ------
    OutputFolderError
        `output` is a filesystem root or the user's home folder, or it contains an input image
        (compared by real path, so a link into the output folder counts too).
    """
    real = output.resolve()
    if real == Path(real.anchor) or real == Path.home().resolve():
        raise OutputFolderError(
            f"output folder {output} is {'a filesystem root' if real == Path(real.anchor) else 'your home folder'}; "
            "daskdiff writes activations/, partial/ and images/ there: choose a folder of its own with "
            "--output or output: (e.g. output: results)"
        )
    for path in inputs:
        image = Path(path).resolve()
        if image.is_relative_to(real):
            raise OutputFolderError(
                f"output folder {output} contains the input image {path}; daskdiff keeps its own files "
                "(activations/, partial/, images/) in the output folder and must not mix them with your "
                "images: choose an output folder outside your image sets with --output or output: "
                "(e.g. output: results)"
            )


@dataclass(frozen=True)
class Writes:
    """What a job writes in its output folder, known before it runs (:meth:`Manifest.check_writes`)."""

    files: tuple[Path, ...] = ()
    """Files it writes or replaces: one there that daskdiff did not write is never replaced."""
    folders: tuple[Path, ...] = ()
    """Folders it writes into (made if missing): each must be a folder inside the output folder."""
    own: tuple[Path, ...] = ()
    """Folders that hold only what daskdiff writes (a generated image set's): one that exists must
    be listed as made by daskdiff, and what it holds is daskdiff's."""


class Manifest:
    """The files and folders daskdiff wrote under ``output``, as paths relative to it.

    Each ``add_*`` call rewrites the manifest atomically (write, fsync, rename) before returning,
    so a path is on record before anything writes it. A manifest read from disk must list only
    plain relative paths whose folders lie inside ``output`` once links are resolved; one that
    lists anything else (``../thesis.tex``, an absolute path, a file below a folder replaced by a
    link out of ``output``) was edited or damaged, and is refused before anything is deleted.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = self.output / MANIFEST_FILE
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.found = os.path.lexists(self.path)
        """Whether the folder had a manifest (a folder an older daskdiff wrote has none)."""
        if self.found:
            try:
                data = json.loads(read_own_file(self.path))
                self.files, self.dirs = set(data["files"]), set(data["dirs"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                if isinstance(err, OutputFolderError):
                    raise
                raise OutputFolderError(
                    f"{self.path} is unreadable ({type(err).__name__}: {err}); daskdiff cannot tell its own files "
                    "from yours there: remove the folder's daskdiff files by hand, or choose another --output"
                ) from None
            self._check_entries()

    def _check_entries(self) -> None:
        """Refuse entries daskdiff never writes (see the class docstring), naming the first."""
        folders: dict[str, str] = {}  # folder that must resolve inside -> an entry that needs it
        for rel in sorted(self.files | self.dirs, key=str):
            problem = entry_problem(rel)
            if problem is None and rel in (LOCK_FILE, MANIFEST_FILE):
                problem = "is daskdiff's own lock or manifest, never listed"
            if problem is None and rel in self.files and stat.S_ISDIR(_lstat_mode(self.output / rel)):
                problem = "is a folder, listed as a file"
            if problem is not None:
                raise self._refused(rel, problem)
            folders.setdefault(rel if rel in self.dirs else rel.rpartition("/")[0], rel)
        for folder, rel in sorted(folders.items()):
            try:
                resolve_inside(self.output, self.output / folder)
            except OutputFolderError:
                raise self._refused(rel, f"leads out of the folder (to {os.path.realpath(self.output / rel)})") from None

    def _refused(self, rel: object, problem: str) -> OutputFolderError:
        return OutputFolderError(
            f"{self.path} lists {rel!r}, which {problem}; daskdiff lists only what it wrote inside its output folder, so "
            "the manifest was edited or damaged (or a folder replaced by a link) and nothing is deleted or written through "
            "it: remove that entry or link, or choose another --output"
        )

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the output folder, as the manifest lists it (POSIX separators)."""
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.output)).as_posix()

    def _save(self) -> None:
        text = json.dumps({"files": sorted(self.files), "dirs": sorted(self.dirs)}, indent=0)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def make_dirs(self, folder: str | os.PathLike) -> Path:
        """Create ``folder`` (and missing parents under ``output``), listing those it creates.

        Raises :class:`OutputFolderError` if ``folder`` leads out of ``output`` (a link on its way).
        """
        folder = Path(folder)
        resolve_inside(self.output, folder)
        missing = []
        probe = folder
        while not probe.exists() and probe != self.output and self.output in probe.parents:
            missing.append(probe)
            probe = probe.parent
        if missing:
            self.dirs.update(self.relative(p) for p in missing)
            self._save()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add_files(self, paths: Iterable[str | os.PathLike]) -> None:
        """List ``paths`` as written by daskdiff (they may not exist yet)."""
        new = {self.relative(p) for p in paths} - self.files
        if new:
            self.files |= new
            self._save()

    def check_writes(self, writes: Writes, adopt: bool = False) -> None:
        """Refuse, before anything is written, writes that could touch what daskdiff did not write.

        Every folder of ``writes`` (and every file's folder) must resolve inside the output folder
        and be a folder if it exists; a file of ``writes.files`` that exists must be listed; a
        folder of ``writes.own`` that exists must be listed. ``adopt``: the folder is an older
        daskdiff's run of the same job, which listed nothing: its files count as daskdiff's.

        Raises
        ------
        OutputFolderError
            Naming the first path in the way (and how many others), or the link that leads out.
        """
        for folder in sorted({*writes.folders, *writes.own, *(f.parent for f in writes.files)}):
            resolve_inside(self.output, folder)
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise OutputFolderError(
                    f"{folder} is in the way: daskdiff writes a folder of that name, and never replaces a file of yours: "
                    "move or rename it, or choose another --output (e.g. output: results)"
                )
        if adopt:
            return
        for folder in writes.own:
            if os.path.lexists(folder) and self.relative(folder) not in self.dirs:
                raise OutputFolderError(
                    f"{folder} is in the way: daskdiff would write generated images there, which daskdiff did not create "
                    f"(its manifest {MANIFEST_FILE} does not list it), and never writes into a folder of yours: rename the "
                    "image set or that folder, or choose another --output"
                )
        theirs = [f for f in writes.files if os.path.lexists(f) and self.relative(f) not in self.files]
        if theirs:
            more = f" (and {len(theirs) - 1} other file(s) daskdiff would write)" if len(theirs) > 1 else ""
            raise OutputFolderError(
                f"{theirs[0]}{more} is in the way: daskdiff would write a file of that name, but did not write this one (its "
                f"manifest {MANIFEST_FILE} does not list it), and never replaces a file of yours: move or rename it, or "
                "choose another --output (e.g. output: results)"
            )

    def remove_file(self, path: str | os.PathLike) -> bool:
        """Delete one file daskdiff wrote (a corrupt shard to recompute), never through a link."""
        return remove_inside(self.output, self.relative(path))

    def temporaries(self) -> list[Path]:
        """Temporaries of listed files that a killed writer left (``.<name>.*.tmp``; regular
        files only, found without following a link)."""
        return [self.output / folder / name for folder, names in sorted(_by_folder(self.files).items())
                for name in files_inside(self.output, folder) if temporary_target(name) in names]

    def remove_all(self) -> list[str]:
        """Delete every listed file (and its temporaries), then every listed folder left empty.

        Nothing is deleted through a link (:func:`daskdiff.io.confined.remove_inside`: a listed
        file that is a link is removed itself, never what it points to). Returns the folders
        that were kept because they hold files daskdiff did not write (or temporaries of writers
        that may still be alive: those are never deleted).
        """
        for tmp in self.temporaries():
            if owner_alive(tmp.name) is False:
                remove_inside(self.output, self.relative(tmp))
        for rel in sorted(self.files):
            remove_inside(self.output, rel)
        kept = []
        for rel in sorted(self.dirs, key=lambda d: d.count("/"), reverse=True):
            try:
                remove_inside(self.output, rel, folder=True)
            except OSError:
                kept.append(rel)
        self.files, self.dirs = set(), set()
        remove_inside(self.output, MANIFEST_FILE)
        return kept


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _by_folder(files: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rel in files:
        folder, _, name = rel.rpartition("/")
        out.setdefault(folder, set()).add(name)
    return out
