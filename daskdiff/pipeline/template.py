"""Pipeline layer: a commented job spec for a user's image folders (``daskdiff init``).

The spec's keys and defaults are read from its pydantic models (:class:`~daskdiff.pipeline.spec.JobSpec`
and its sections), never written out by hand here, so the template cannot drift from them; what
this module adds is a one-line comment per section and the image sets.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel

from ..errors import InputError, shorten
from .spec import AnalysisSection, JobSpec, ModelSection
from .spec_cluster import ClusterSection
from .spec_file import parse_spec

SPEC_REFERENCE = "docs/spec.md"
"""Where every key of a job spec is described, with its default and its choices."""

SECTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "model": (ModelSection, "the network whose layers are measured: a keras.applications name or a .keras file, and its weights"),
    "analysis": (AnalysisSection, "how differentiation is measured: units sampled per layer, repeats, normalisation, distance"),
    "cluster": (ClusterSection, "where the job runs: a LocalCluster on this machine by default (docs/clusters.md)"),
}
"""The sections a template writes in full, each with its one-line comment (the others keep their defaults)."""

EXAMPLE_SET = {"example": {"generate": "noise"}}
"""The image set of a template given no folder: generated noise, so that the template runs as written."""


def spec_template(folders: Iterable[str | os.PathLike], spec_path: str | os.PathLike, *, model: str | None = None,
                  weights: str | None = None) -> str:
    """The text of a commented job spec with one image set per folder, checked to load as a spec.

    Parameters
    ----------
    folders : iterable of path-like
        Folders of images; each becomes an image set named after the folder (characters a set name
        cannot hold become ``_``; a name that does not start with a letter gets ``set_`` in front;
        a repeated name gets ``-2``, ``-3``, ...). Paths are written relative to the spec's folder.
        None: one generated example set (:data:`EXAMPLE_SET`).
    spec_path : path-like
        Where the spec will be written: its stem names the job, its folder anchors relative paths.
    model, weights : str, optional
        ``model.name`` and ``model.weights``; files are written relative to the spec's folder.

    Raises
    ------
    InputError
        A folder that does not exist or is not a folder.
    """
    base = Path(os.path.abspath(spec_path)).parent
    sets: dict[str, Any] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise InputError(f"{shorten(str(folder))} is not a folder; give folders of images, one image set each")
        sets[_set_name(Path(os.path.abspath(folder)).name, sets)] = _relative(folder, base)
    chosen = {"name": _relative(model, base) if model and model.endswith(".keras") else model,
              "weights": weights if weights in (None, "imagenet", "random", "file") else _relative(weights, base)}
    lines = [
        f"# A daskdiff job spec, written by `daskdiff init`. Every key, its default and its choices: {SPEC_REFERENCE}.",
        f"# Check it with `daskdiff run {Path(spec_path).name} --dry-run`; relative paths are relative to this file's folder.",
        "",
        _line("name", Path(spec_path).stem, "the job's name: it titles the results and the figure"),
        _line("output", JobSpec.model_fields["output"].default, "the output folder: results, shards, figure"),
        "",
        "# the image sets to compare, NAME: FOLDER (or a glob, a list file, a movie, {generate: KIND, ...})",
        "image_sets:" if sets else "image_sets:  # replace the example with NAME: FOLDER, one line per folder of your images",
        *(_line(name, value, indent=2) for name, value in (sets or EXAMPLE_SET).items()),
    ]
    for key, (section, comment) in SECTIONS.items():
        given = {k: v for k, v in chosen.items() if v is not None} if key == "model" else {}
        lines += ["", f"# {comment}", f"{key}:", *_section_lines(section(**given), 2)]
    lines += ["", f"# extraction (batch and shard sizes, resizing, what is stored) keeps its defaults: {SPEC_REFERENCE}#extraction", ""]
    text = "\n".join(lines)
    parse_spec(yaml.safe_load(text), "the template")  # the written spec loads: any drift from the models fails here
    return text


def write_spec_template(path: str | os.PathLike, folders: Iterable[str | os.PathLike], **options: str | None) -> Path:
    """Write :func:`spec_template` to ``path``, which must not exist; returns the path.

    Raises
    ------
    InputError
        ``path`` exists (a spec is never overwritten) or cannot be written, or a folder is not one.
    """
    if os.path.lexists(path):
        raise InputError(f"{shorten(str(path))} exists and is not overwritten; use another name (-o other.yaml) or remove it")
    text = spec_template(folders, path, **options)
    try:
        with open(path, "x", encoding="utf-8") as handle:  # never replaces a file made meanwhile
            handle.write(text)
    except FileExistsError:
        raise InputError(f"{shorten(str(path))} exists and is not overwritten; use another name (-o other.yaml) or remove it") from None
    except OSError as err:  # no such folder, no permission
        raise InputError(f"cannot write {shorten(str(path))}: {err.strerror}; give a path in an existing folder you may write to") from None
    return Path(path)


def _section_lines(section: BaseModel, indent: int) -> list[str]:
    """``key: default`` lines of a section, a comment with the choices of keys that have fixed ones."""
    lines = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel) and value.model_dump(exclude_none=True):
            lines += [" " * indent + f"{name}:  # {_first_line(type(value).__doc__)}", *_section_lines(value, indent + 2)]
        else:
            dumped = value.model_dump(mode="json", exclude_none=True) if isinstance(value, BaseModel) else value
            lines.append(_line(name, dumped, _choices(field.annotation), indent=indent))
    return lines


def _line(key: str, value: Any, comment: str = "", *, indent: int = 0) -> str:
    """``key: value`` with the value in YAML's flow style (``[200, 10000]``, ``{generate: noise}``, ``null``)."""
    flow = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).removesuffix("\n...\n").strip()
    return " " * indent + f"{key}: {flow}" + (f"  # {comment}" if comment else "")


def _choices(annotation: Any) -> str:
    """``one of a, b, c`` for a Literal annotation (or an Optional one), ``any of ...`` for a list of one."""
    listed = typing.get_origin(annotation) is list
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return ("any of " if listed else "one of ") + ", ".join(map(str, typing.get_args(arg)))
    return ""


def _first_line(text: str | None) -> str:
    """The first line of a docstring, its Sphinx roles as plain names."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", (text or "").strip().split("\n")[0])


def _set_name(folder_name: str, taken: dict[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", folder_name) or "set"
    name = name if name[0].isascii() and name[0].isalpha() else f"set_{name}"
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    return unique


def _relative(path: str | os.PathLike, base: Path) -> str:
    """``path`` relative to ``base`` where it can be (same drive), else absolute."""
    absolute = os.path.abspath(path)
    try:
        return os.path.relpath(absolute, base)
    except ValueError:
        return absolute
