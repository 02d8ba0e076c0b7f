"""Pipeline layer: reading a job spec file, bounded and strict, into a :class:`~daskdiff.pipeline.spec.JobSpec`.

The file is a regular UTF-8 file of bounded size; its YAML has no anchors or aliases, bounded
nesting and no key given twice; its problems are listed each with its key (at most
:data:`MAX_PROBLEMS`), as one :class:`~daskdiff.pipeline.spec.SpecError`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import MAX_QUOTED, shorten
from .spec import JobSpec, SpecError


MAX_PROBLEMS = 20
"""Most problems a refused spec lists (a spec of thousands of wrong values says how many more)."""


def _format_errors(err: ValidationError, source: str) -> str:
    """The problems of a spec: one line for one problem, else a line naming the file and one per
    problem (at most :data:`MAX_PROBLEMS`), each ``key: what is wrong (got value)``."""
    lines = [f"{source}: the job spec is not valid ({err.error_count()} problem(s)); nothing was run:"]
    for e in err.errors()[:MAX_PROBLEMS]:
        loc = shorten(".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")))
        msg = shorten(e["msg"].removeprefix("Value error, "), 4 * MAX_QUOTED)
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against the spec reference, docs/spec.md)"
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {shorten(repr(got))})"
        lines.append(f"  - {loc}: {msg}{shown}")
    if err.error_count() > MAX_PROBLEMS:
        lines.append(f"  ... and {err.error_count() - MAX_PROBLEMS} more")
    if len(lines) == 2:
        return f"{source}: the job spec is not valid, nothing was run: {lines[1].removeprefix('  - ')}"
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> JobSpec:
    """Validate a spec already loaded from YAML; raises SpecError naming keys and choices."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec must be a YAML mapping (name:, image_sets:, ...), got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings/lists a job spec may have (a real spec needs 4)."""


MAX_SPEC_BYTES = 256 * 1024
"""Largest job spec file read: a spec naming every layer of a 1,000-layer model and a
thousand image sets takes ~100 KB, and ``cluster.slurm`` is bounded to 64 KiB; the pure-Python
YAML parser takes ~0.3 s and ~50 MB per 256 KiB (1.5 s per MiB, and ~1 GB for 5 MB)."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the spec gives a key twice (YAML would keep the last value without a word)."""


class _SpecLoader(yaml.SafeLoader):
    """The safe loader without anchors/aliases (no "billion laughs"), with bounded nesting, and
    refusing a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # '<<: {...}' merged first, as the base class does
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if line != key_node.start_mark.line + 1:
                    raise DuplicateKeyError(
                        f"key {shorten(repr(key))} is given twice in one mapping (lines {line} and "
                        f"{key_node.start_mark.line + 1}); YAML would keep only the second: remove one, or merge them"
                    )
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(f"YAML anchors/aliases (&, *) are not allowed in job specs {event.start_mark}; write each value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels {event.start_mark}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_spec_text(path: Path) -> str:
    """The text of the job spec file ``path``: a regular file of at most :data:`MAX_SPEC_BYTES`,
    UTF-8 (a byte-order mark is dropped); SpecError naming the file and the fix otherwise.

    The file is opened without blocking and checked to be regular before a byte is read, so a
    FIFO or device named as the spec cannot hang or flood the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpecError(f"job spec {path} does not exist; see jobs/demo.yaml for an example") from None
    except IsADirectoryError:
        fd = None
    except OSError as err:
        raise SpecError(f"job spec {path} cannot be opened ({err.strerror}); check its permissions") from None
    try:
        mode = os.stat(path).st_mode if fd is None else os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SpecError(f"job spec {path} is a folder, not a YAML file; give the spec file itself, e.g. {path / 'job.yaml'}")
        if not stat.S_ISREG(mode):
            raise SpecError(f"job spec {path} is not a regular file (a FIFO, socket or device); give a YAML file")
        chunks: list[bytes] = []
        while (got := sum(map(len, chunks))) <= MAX_SPEC_BYTES and (chunk := os.read(fd, MAX_SPEC_BYTES + 1 - got)):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        if fd is not None:
            os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"job spec {path} is larger than {MAX_SPEC_BYTES // 1024} KiB, far more than a job needs; "
                        "list many images in a list file (image_sets: {name: images.txt}), not in the spec")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SpecError(f"job spec {path} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                        "save it as UTF-8 (most editors: Save As, encoding UTF-8)") from None


def load_spec(path: str | Path) -> tuple[JobSpec, Path]:
    """Read and validate a YAML job spec (safe loader). Returns (spec, folder of the file).

    The file must be a regular UTF-8 file of at most :data:`MAX_SPEC_BYTES` (:func:`read_spec_text`).
    Anchors and aliases (``&a``, ``*a``, ``<<: *a``) are refused: a few hundred bytes of nested
    aliases would otherwise expand to gigabytes. Nesting is bounded by :data:`MAX_YAML_DEPTH`. A
    key given twice in one mapping is refused, naming both lines.
    """
    path = Path(path)
    text = read_spec_text(path)
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except DuplicateKeyError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {shorten(str(err), 4 * MAX_QUOTED)}") from None
    return parse_spec(data, str(path)), path.resolve().parent
