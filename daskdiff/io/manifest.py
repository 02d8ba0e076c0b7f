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
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from .atomic import atomic_write, owner_alive, temporary_target
from .layout import MANIFEST_FILE


class OutputFolderError(InputError):
    """An output folder daskdiff must not write to, or cannot safely clear; the message says why."""


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


class Manifest:
    """The files and folders daskdiff wrote under ``output``, as paths relative to it.

    Each ``add_*`` call rewrites the manifest atomically (write, fsync, rename) before returning,
    so a path is on record before anything writes it.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = self.output / MANIFEST_FILE
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.files, self.dirs = set(data["files"]), set(data["dirs"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise OutputFolderError(
                    f"{self.path} is unreadable ({type(err).__name__}: {err}); daskdiff cannot tell its own files "
                    "from yours there: remove the folder's daskdiff files by hand, or choose another --output"
                ) from None

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the output folder, as the manifest lists it (POSIX separators)."""
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.output)).as_posix()

    def _save(self) -> None:
        text = json.dumps({"files": sorted(self.files), "dirs": sorted(self.dirs)}, indent=0)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def make_dirs(self, folder: str | os.PathLike) -> Path:
        """Create ``folder`` (and missing parents under ``output``), listing those it creates."""
        folder = Path(folder)
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

    def temporaries(self) -> list[Path]:
        """Temporaries of listed files that a killed writer left (``.<name>.*.tmp``)."""
        found = []
        for folder, names in _by_folder(self.files).items():
            directory = self.output / folder
            if directory.is_dir():
                found += [p for p in directory.glob(".*.tmp") if temporary_target(p.name) in names and p.is_file()]
        return found

    def remove_all(self) -> list[str]:
        """Delete every listed file (and its temporaries), then every listed folder left empty.

        Returns the folders that were kept because they hold files daskdiff did not write (or
        temporaries of writers that may still be alive: those are never deleted).
        """
        for tmp in self.temporaries():
            if owner_alive(tmp.name) is False:
                tmp.unlink(missing_ok=True)
        for rel in sorted(self.files):
            (self.output / rel).unlink(missing_ok=True)
        kept = []
        for rel in sorted(self.dirs, key=lambda d: d.count("/"), reverse=True):
            folder = self.output / rel
            if folder.is_dir():
                try:
                    folder.rmdir()
                except OSError:
                    kept.append(rel)
        self.files, self.dirs = set(), set()
        self.path.unlink(missing_ok=True)
        return kept


def _by_folder(files: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rel in files:
        folder, _, name = rel.rpartition("/")
        out.setdefault(folder, set()).add(name)
    return out
