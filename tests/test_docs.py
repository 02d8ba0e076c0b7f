"""The documentation cannot drift: the spec reference (docs/spec.md) is held against the pydantic
models of the job spec, every relative link of README.md and docs/*.md leads to a file (and a
heading) that exists, and the README's test command is the one CI runs."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from daskdiff.pipeline.spec import JobSpec

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SPEC_DOC = ROOT / "docs" / "spec.md"


# ---------------------------------------------------------------- the spec reference


def _members(annotation: Any) -> list[Any]:
    """The types an annotation may hold, through ``Annotated``, ``Optional``/``Union``, ``list``
    and the values of ``dict``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return [t for arg in get_args(annotation) for t in _members(arg)]
    if origin in (list, tuple, dict):
        return [t for arg in get_args(annotation)[-1:] for t in _members(arg)]
    return [annotation]


def _choices(annotation: Any) -> list[str]:
    return [str(v) for t in _members(annotation) if get_origin(t) is Literal for v in get_args(t)]


def _sections(annotation: Any) -> list[type[BaseModel]]:
    return [t for t in _members(annotation) if inspect.isclass(t) and issubclass(t, BaseModel)]


def spec_keys(model: type[BaseModel] = JobSpec, prefix: str = "") -> dict[str, tuple[Any, bool]]:
    """Every key a spec may give: ``{dotted key: (pydantic field, is a section)}``. The entries of
    a mapping of named items (``image_sets``) are ``image_sets.<name>``."""
    keys: dict[str, tuple[Any, bool]] = {}
    for name, field in model.model_fields.items():
        key = prefix + name
        if get_origin(field.annotation) is dict:
            key += ".<name>"
        sections = _sections(field.annotation)
        keys[key] = (field, bool(sections) and key == prefix + name)
        for section in sections:
            keys.update(spec_keys(section, key + "."))
    return keys


def documented_rows(text: str) -> dict[str, tuple[str, str]]:
    """``{key: (default cell, meaning cell)}`` of every table row of docs/spec.md; a key twice fails."""
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([^`]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            assert m[1] not in rows, f"docs/spec.md documents {m[1]} twice"
            rows[m[1]] = (m[2].strip(), m[3].strip())
    return rows


def yaml_text(value: Any) -> str:
    """A default as a spec would write it: ``[200, 10000]``, ``false``, ``1.0``."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()


def default_problem(field: Any, cell: str) -> str | None:
    """What is wrong with a row's default cell for ``field``, or None."""
    if field.is_required():
        return None if cell == "required" else f"is required, documented as {cell!r}"
    default = field.get_default()
    if isinstance(default, BaseModel):
        return None
    if default is None:  # prose that says what None means ("cores (<= 4)", "Dask config"), or `null`
        ok = cell == "`null`" or (cell != "required" and not cell.startswith("`"))
        return None if ok else f"defaults to null (None), documented as {cell!r}"
    want = f"`{yaml_text(default)}`"
    return None if cell == want else f"defaults to {want}, documented as {cell!r}"


def spec_doc_problems(text: str) -> list[str]:
    keys, rows = spec_keys(), documented_rows(text)
    problems = [f"{key}: in the models, not in docs/spec.md" for key, (_, section) in keys.items() if not section and key not in rows]
    problems += [f"{key}: in docs/spec.md, not a key of JobSpec" for key in rows if key not in keys]
    for key, (default, meaning) in rows.items():
        if key not in keys:
            continue
        field, _ = keys[key]
        if (problem := default_problem(field, default)) is not None:
            problems.append(f"{key}: {problem}")
        quoted = re.findall(r"`([^`]+)`", default + " " + meaning)  # `zscore`, or `[units, filter_mean]`
        named = set(quoted) | {word for q in quoted for word in re.findall(r"[\w.-]+", q)}
        problems += [f"{key}: choice {c!r} not named" for c in _choices(field.annotation) if c not in named]
        if not meaning:
            problems.append(f"{key}: no meaning given")
    return problems


def test_spec_reference_matches_the_models():
    assert spec_doc_problems(SPEC_DOC.read_text(encoding="utf-8")) == []


def test_spec_reference_check_sees_drift():
    """The check itself: a row dropped, a default changed, a choice left out and a key the models
    lack are each reported."""
    text = SPEC_DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `analysis.repeats` |"))
    assert spec_doc_problems(text.replace(row + "\n", "")) == ["analysis.repeats: in the models, not in docs/spec.md"]
    assert spec_doc_problems(text.replace(row, row.replace("`100`", "`10`"))) == [
        "analysis.repeats: defaults to `100`, documented as '`10`'"]
    assert spec_doc_problems(text.replace(", `location_mean`", "").replace("also `location_mean`", "also more")) == [
        "analysis.substrates: choice 'location_mean' not named"]
    assert spec_doc_problems(text + "\n| `analysis.repeat` | `1` | a typo |\n") == [
        "analysis.repeat: in docs/spec.md, not a key of JobSpec"]


def test_spec_keys_walk_every_section():
    keys = spec_keys()
    assert {"name", "model.precision", "image_sets.<name>.fps", "image_sets.<name>.generate",
            "analysis.spectral.window", "cluster.slurm.walltime", "cluster.security.tls_ca_file"} <= set(keys)
    assert keys["analysis.spectral"][1] and not keys["analysis.repeats"][1]
    assert yaml_text([200, 10000]) == "[200, 10000]" and yaml_text(False) == "false" and yaml_text(1.0) == "1.0"


# ---------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lower-cased, punctuation dropped, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"^#{1,6} (.+?)\s*#*$", line):
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def _prose(text: str) -> str:
    """The text without fenced code blocks (their lines are no headings and hold no links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``path`` that leads to no file, or to no heading of a Markdown file."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        name = f"{path.relative_to(root)}: ({target})"
        if not dest.exists():
            problems.append(f"{name}: no file {file}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{name}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_lead_somewhere(path):
    assert link_problems(path) == []


def test_link_check_sees_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title `x`, here\n\n## Title `x`, here\n\n[ok](b.md#a-b) [self](#title-x-here-1)\n"
                                   "[gone](c.md) [anchor](b.md#nope) [web](https://example.org/x.md)\n"
                                   "```\n[in code](nowhere.md)\n```\n")
    (tmp_path / "b.md").write_text("# A: b\n")
    assert link_problems(tmp_path / "a.md", tmp_path) == [
        "a.md: (c.md): no file c.md", "a.md: (b.md#nope): no heading #nope in b.md"]


# ---------------------------------------------------------------- the README's commands


def test_readme_test_command_is_what_ci_runs():
    """CI (.ci/run) runs the command the README gives for the tests, and the README is a guide."""
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = shlex.join(next(line.split()[1:] for line in run.splitlines() if line.startswith("exec ")))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert command == "python3 dev.py test" and command in setup
    assert len(readme.splitlines()) <= 350
