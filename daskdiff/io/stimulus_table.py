"""Storage layer: a stimulus table (CSV: a ``path`` column and condition columns) as an image set with per-image conditions.

An image set may be given as a CSV file (suffix ``.csv``), one row per image, as THINGSvision
and Brain-Score users keep their stimuli: a ``path`` column (relative paths are relative to
the CSV's folder) and any other columns, the images' *conditions* (category, size, session ...).
The images keep the table's order; every condition is kept as text, as the CSV holds it, and
reaches the results as the coordinate ``condition_<column>(image_set, image)``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass

from .image_sets import ImageSetError
from .reading import TEXT_FILE_MAX_BYTES, NotReadableError, read_regular

__all__ = ["PATH_COLUMN", "TABLE_SUFFIXES", "StimulusTable", "StimulusTableError", "is_stimulus_table", "read_stimulus_table"]

TABLE_SUFFIXES: frozenset[str] = frozenset({".csv"})
"""Suffixes of a stimulus table (the match ignores case)."""

PATH_COLUMN = "path"
"""The column that names each image's file."""

_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StimulusTableError(ImageSetError):
    """A stimulus table that cannot be used: unreadable, no ``path`` column, a row without its
    file, a file named twice, a bad column name."""


@dataclass(frozen=True)
class StimulusTable:
    """A stimulus table read: absolute ``paths`` in the table's order and ``conditions``,
    column name -> one text value per path (the CSV's cells)."""

    paths: tuple[str, ...]
    conditions: dict[str, tuple[str, ...]]


def is_stimulus_table(source: str | os.PathLike) -> bool:
    """Whether an image set's ``path`` names a stimulus table (by its suffix)."""
    return os.path.splitext(os.fspath(source))[1].lower() in TABLE_SUFFIXES


def read_stimulus_table(source: str | os.PathLike, *, name: str = "images", base_dir: str | os.PathLike | None = None) -> StimulusTable:
    """Read a stimulus table (see the module docstring).

    Parameters
    ----------
    source : str or path-like
        The CSV (UTF-8, a header row first; ``,`` separated, quoted as the ``csv`` module reads).
    name : str
        The set's name, for messages.
    base_dir : str or path-like, optional
        Folder a relative ``source`` is relative to (the spec's folder); default: the current one.

    Raises
    ------
    StimulusTableError
        One line naming the CSV (and the row, counted as a text editor counts lines, the header
        being line 1) and the fix: no such file, not readable as UTF-8, no ``path`` column, a
        column name that is not an identifier, a row with an empty path or a file that does not
        exist, a file named by two rows, or fewer than 2 rows.
    """
    base = os.path.abspath(os.getcwd() if base_dir is None else os.fspath(base_dir))
    table = os.path.abspath(os.path.join(base, os.path.expanduser(os.fspath(source))))
    where = f"image set {name!r}: stimulus table {table}"
    if not os.path.lexists(table):
        raise StimulusTableError(f"{where} does not exist (given as {os.fspath(source)!r}, relative to {base}); give the CSV's path")
    try:
        text = read_regular(table, limit=TEXT_FILE_MAX_BYTES, what="stimulus table").decode("utf-8-sig")
    except (NotReadableError, UnicodeDecodeError) as error:
        raise StimulusTableError(f"{where} cannot be read ({getattr(error, 'reason', error)}); it must be a UTF-8 CSV file") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if PATH_COLUMN not in header:
        raise StimulusTableError(f"{where} has no {PATH_COLUMN!r} column (its columns: {header}); name the column of image "
                                 f"files '{PATH_COLUMN}' in the header row")
    bad = [h for h in header if not _COLUMN_NAME.match(h)] + [h for h in set(header) if header.count(h) > 1]
    if bad:
        raise StimulusTableError(f"{where}: column {bad[0]!r} is not a unique name of letters, digits and _ (it becomes the "
                                 f"results' coordinate condition_<name>); rename it in the header row")
    folder = os.path.dirname(table)
    paths: list[str] = []
    seen: dict[str, int] = {}
    columns = [h for h in header if h != PATH_COLUMN]
    values: dict[str, list[str]] = {c: [] for c in columns}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise StimulusTableError(f"{where}, line {line}: {len(row)} cells for {len(header)} columns; give one cell per column")
        cells = dict(zip(header, row))
        given = cells[PATH_COLUMN].strip()
        if not given:
            raise StimulusTableError(f"{where}, line {line}: the {PATH_COLUMN!r} cell is empty; name the image file")
        path = os.path.abspath(os.path.join(folder, os.path.expanduser(given)))
        if not os.path.isfile(path):
            raise StimulusTableError(f"{where}, line {line}: image {given!r} does not exist ({path}); relative paths are "
                                     f"relative to the table's folder")
        real = os.path.realpath(path)
        if real in seen:
            raise StimulusTableError(f"{where}, line {line}: image {given!r} is the file of line {seen[real]} again; "
                                     "list each image once")
        seen[real] = line
        paths.append(path)
        for c in columns:
            values[c].append(cells[c].strip())
    if len(paths) < 2:
        raise StimulusTableError(f"{where} lists {len(paths)} image(s); differentiation needs at least 2: add rows")
    return StimulusTable(tuple(paths), {c: tuple(v) for c, v in values.items()})
