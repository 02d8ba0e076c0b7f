"""The package's layer contract, read from the source's syntax: every import, wherever it is.

:mod:`tests.test_architecture` imports each layer with the layers above it blocked, so it sees the
imports that run when a module is imported, and no others. This test parses every module of
``daskdiff/`` with :mod:`ast` and looks at every ``import`` and ``from ... import`` node: at module
level, inside functions and methods (the "local" imports that hid import circles), and under
``if TYPE_CHECKING:``. It checks four rules:

1. **Imports point down the layers** (:data:`LAYERS`): errors/logs < core < io < model < stimuli <
   pipeline < stats/plot/info/cli. A module may import its own layer and the layers below.
   ``daskdiff/__init__.py`` is the public API and stands on the top floor, beside the CLI: it
   imports the numeric core and exposes jobs and files lazily; nothing below it may import it.
2. **No circle between modules**: the graph of module -> module imports has no strongly connected
   component of more than one module.
3. **No module imports another module's ``_private`` name** (``from .x import _helper``, or
   ``x._helper`` through a module imported as ``x``). Dunder names (``__version__``) are public.
4. **No module over** :data:`MAX_LINES` **lines.**

``if TYPE_CHECKING:`` imports count, for every rule. They are not executed, but a module that
names an upper layer's type in its annotations knows that layer as surely as one that calls it:
the type belongs further down, with the code both layers share. A local import counts for the
same reason: when it runs is a detail, what the module depends on is not. What this cannot see:
imports by a computed name (``importlib.import_module(variable)``); the only ones in daskdiff are
the top-level package's lazy API and optional third-party libraries.

A module's package (``daskdiff/io/__init__.py`` for ``daskdiff.io.shards``) is run by Python
before the module, but that is not an import the module makes: only the imports written in a
module are its edges. ``from . import shards`` in ``daskdiff.io`` is an edge to the submodule
``daskdiff.io.shards``; ``from ..io import ShardWriter`` an edge to the package ``daskdiff.io``.

Each violation is reported as ``file:line: statement (where): why``, all of them at once.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "daskdiff"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "logs"),
    ("core",),
    ("io",),
    ("model",),
    ("stimuli",),
    ("pipeline",),
    ("stats", "comparison", "plot", "info", "cli", "rsa"),
]
"""The floors, bottom first: the first part of a module's name below the package picks its floor."""

MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    """One imported module, as one ``import``/``from ... import`` statement of ``source`` names it."""

    source: str  # the importing module, e.g. daskdiff.pipeline.spec
    file: str  # its path, relative to the folder above the package
    line: int
    target: str  # the imported module, e.g. daskdiff.core.spectral
    names: tuple[str, ...]  # the names taken from ``target`` (``from target import a, b``); () for a module
    statement: str
    where: str  # "module level", "in a function", "under TYPE_CHECKING", ...

    def at(self) -> str:
        return f"{self.file}:{self.line}: {self.statement} ({self.where})"


@dataclass(frozen=True)
class Module:
    name: str
    file: Path
    path: str  # relative to the folder above the package, as violations name it
    is_package: bool


def find_modules(root: Path, package: str) -> dict[str, Module]:
    """Every ``.py`` file of the package under ``root`` (the folder holding the package), by module name."""
    modules = {}
    for file in sorted((root / package).rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Module(".".join(parts), file, str(file.relative_to(root)), is_package)
    return modules


def _resolve(name: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of ``modules`` (``import a.b.c``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


class _Reader(ast.NodeVisitor):
    """Collects a module's imports of modules in ``modules``, and its ``alias._private`` uses."""

    def __init__(self, module: Module, modules: dict[str, Module]) -> None:
        self.module, self.modules, self.file = module, modules, module.path
        self.context: list[str] = []
        self.imports: list[Import] = []
        self.aliases: dict[str, Import] = {}  # a local name bound to an imported module
        self.private_uses: list[tuple[Import, int, str, str]] = []  # (module import, line, alias, name)

    def _where(self) -> str:
        return ", ".join(dict.fromkeys(self.context)) or "module level"

    def _scoped(self, node: ast.AST, label: str) -> None:
        self.context.append(label)
        self.generic_visit(node)
        self.context.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, "in a function")

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self.visit(test)
            self.context.append("under TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self.context.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, node: ast.stmt, target: str, names: tuple[str, ...]) -> Import:
        found = Import(self.module.name, self.file, node.lineno, target, names, ast.unparse(node), self._where())
        self.imports.append(found)
        return found

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = _resolve(alias.name, self.modules)
            if target is None:
                continue
            found = self._add(node, target, ())
            if alias.asname:  # ``import a.b as x``: x is a.b; plain ``import a.b`` binds a
                self.aliases[alias.asname] = found
            elif "." not in alias.name:
                self.aliases[alias.name] = found

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            here = self.module.name.split(".")
            package = here if self.module.is_package else here[:-1]
            if node.level - 1 > len(package) - 1:
                return
            base = package[: len(package) - (node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        if base_name not in self.modules:
            return  # another library (or a module that does not exist: importing it fails anyway)
        from_base: list[str] = []
        for alias in node.names:
            sub = f"{base_name}.{alias.name}"
            if sub in self.modules:  # ``from . import shards``: the submodule itself
                self.aliases[alias.asname or alias.name] = self._add(node, sub, ())
            else:
                from_base.append(alias.name)
        if from_base:
            self._add(node, base_name, tuple(from_base))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and _is_private(node.attr):
            self.private_uses.append((self.aliases[node.value.id], node.lineno, node.value.id, node.attr))
        self.generic_visit(node)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def read_package(root: Path, package: str) -> tuple[dict[str, Module], list[Import], list[str]]:
    """(modules, every import of one of them by one of them, private attribute uses as violations)."""
    modules = find_modules(root, package)
    imports: list[Import] = []
    private_uses: list[str] = []
    for module in modules.values():
        reader = _Reader(module, modules)
        reader.visit(ast.parse(module.file.read_text(encoding="utf-8"), filename=module.path))
        imports += reader.imports
        for imp, line, alias, attr in reader.private_uses:
            if imp.target != module.name:
                private_uses.append(f"{module.path}:{line}: {alias}.{attr} (module {alias} bound at line {imp.line}): "
                                    f"uses {imp.target}'s private name {attr!r}; "
                                    f"make it public in {imp.target}, or move what both need down a layer")
    return modules, imports, private_uses


def rank(module: str, package: str, layers: list[tuple[str, ...]]) -> int | None:
    """The floor of ``module`` (0 = bottom); the package itself is on the top floor; None: none."""
    parts = module.split(".")
    if parts == [package]:
        return len(layers) - 1
    for i, floor in enumerate(layers):
        if parts[1] in floor:
            return i
    return None


def _floor(i: int, layers: list[tuple[str, ...]]) -> str:
    return "/".join(layers[i])


def upward_imports(package: str, modules: dict[str, Module], imports: list[Import],
                   layers: list[tuple[str, ...]]) -> list[str]:
    """Rule 1: an import of a module on a higher floor (or of a module on no floor)."""
    problems = []
    for name in modules:
        if rank(name, package, layers) is None:
            problems.append(f"{modules[name].path}: module {name} is on no floor: add {name.split('.')[1]!r} to LAYERS "
                            "(tests/test_layers.py) where it belongs")
    for imp in imports:
        low, high = rank(imp.source, package, layers), rank(imp.target, package, layers)
        if low is None or high is None or high <= low:
            continue
        target = "the top-level package (the public API)" if imp.target == package else imp.target
        problems.append(f"{imp.at()}: {imp.source} (layer {_floor(low, layers)}) imports {target} (layer "
                        f"{_floor(high, layers)}, above it); move what it needs down to {_floor(low, layers)} or below")
    return problems


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> successors), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def import_circles(imports: list[Import]) -> list[str]:
    """Rule 2: each group of modules that import each other, with the imports that close it."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    problems = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        edges = [imp for imp in imports if imp.source in members and imp.target in members and imp.source != imp.target]
        lines = "".join(f"\n    {imp.at()}: {imp.source} -> {imp.target}" for imp in sorted(edges, key=lambda i: (i.file, i.line)))
        problems.append(f"import circle between {len(component)} modules ({', '.join(component)}); "
                        f"move the shared piece down so that one direction goes away:{lines}")
    return problems


def private_imports(imports: list[Import]) -> list[str]:
    """Rule 3, for ``from x import _name`` (the ``x._name`` uses come from :func:`read_package`)."""
    problems = []
    for imp in imports:
        private = [name for name in imp.names if _is_private(name)]
        if private and imp.target != imp.source:
            problems.append(f"{imp.at()}: imports {imp.target}'s private name(s) {', '.join(private)}; make them public in "
                            f"{imp.target} (they are part of its interface now), or move them where both modules can use them")
    return problems


def long_modules(modules: dict[str, Module], max_lines: int) -> list[str]:
    """Rule 4."""
    problems = []
    for module in modules.values():
        n = len(module.file.read_text(encoding="utf-8").splitlines())
        if n > max_lines:
            problems.append(f"{module.path}: {n} lines, more than {max_lines}: split it by concern")
    return problems


def check(root: Path, package: str, layers: list[tuple[str, ...]] = LAYERS, max_lines: int = MAX_LINES) -> dict[str, list[str]]:
    """Every violation of the four rules in ``root/package``, by rule."""
    modules, imports, private_uses = read_package(root, package)
    return {
        "upward": upward_imports(package, modules, imports, layers),
        "circle": import_circles(imports),
        "private": private_imports(imports) + private_uses,
        "long": long_modules(modules, max_lines),
    }


def _report(problems: list[str], rule: str) -> str:
    return f"{len(problems)} violation(s) of the layer contract ({rule}):\n" + "\n".join(problems)


# ------------------------------------------------------------------ the contract, on daskdiff

@pytest.fixture(scope="module")
def violations() -> dict[str, list[str]]:
    return check(ROOT, PACKAGE)


def test_the_checker_reads_the_package():
    """The checker sees daskdiff's imports, local ones included (else every rule would pass vacuously)."""
    modules, imports, _ = read_package(ROOT, PACKAGE)
    assert {"daskdiff", "daskdiff.errors", "daskdiff.core.distances", "daskdiff.pipeline.job", "daskdiff.cli"} <= set(modules)
    assert any(i.source == "daskdiff.cli" and i.target.startswith("daskdiff.pipeline") for i in imports)
    assert any(i.where == "in a function" for i in imports)


def test_imports_point_down_the_layers(violations):
    assert not violations["upward"], _report(violations["upward"], "imports must point down: " + " < ".join(map("/".join, LAYERS)))


def test_no_import_circles(violations):
    assert not violations["circle"], _report(violations["circle"], "no circle between modules")


def test_no_module_imports_another_modules_private_name(violations):
    assert not violations["private"], _report(violations["private"], "no _private name across modules")


def test_no_module_over_the_line_limit(violations):
    assert not violations["long"], _report(violations["long"], f"no module over {MAX_LINES} lines")


# ------------------------------------------------------------------ the checker catches each kind

SYNTHETIC = {
    "__init__.py": "from .core import a\n",
    "errors.py": "class E(Exception):\n    pass\n",
    "core/__init__.py": "",
    "core/a.py": (
        "from ..errors import E\n"
        "\n"
        "def late():\n"
        "    from ..pipeline import job  # a local import, pointing up\n"
        "    return job\n"
    ),
    "core/b.py": "from . import c\n\ndef _helper():\n    return c\n",
    "core/c.py": (
        "def back():\n"
        "    from .b import _helper  # closes b <-> c, and a private name\n"
        "    return _helper()\n"
    ),
    "io/__init__.py": "",
    "io/x.py": (
        "from typing import TYPE_CHECKING\n"
        "\n"
        "from ..core import b\n"
        "\n"
        "if TYPE_CHECKING:\n"
        "    from ..model.m import Thing  # not executed, but it knows the layer above\n"
        "\n"
        "def use():\n"
        "    return b._helper()  # a private name through the module\n"
    ),
    "model/__init__.py": "",
    "model/m.py": "from ..io import x\nfrom .. import errors\n\nclass Thing:\n    pass\n",
    "pipeline/__init__.py": "",
    "pipeline/job.py": "import pkg.model.m as m\nfrom ..core import b\n",
    "plot.py": "".join(f"x{i} = {i}\n" for i in range(601)),
    "stats.py": "from . import plot\nfrom .pipeline import job\nimport pkg\n",
}


def _write(root: Path, files: dict[str, str], package: str = "pkg") -> Path:
    for name, text in files.items():
        path = root / package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    found = check(_write(tmp_path, SYNTHETIC), "pkg")
    upward, circles, private, long = found["upward"], found["circle"], found["private"], found["long"]
    # 1. a local import pointing up, and an import under TYPE_CHECKING pointing up; the rest points down
    assert any(p.startswith("pkg/core/a.py:4: from ..pipeline import job (in a function): pkg.core.a (layer core) imports "
                            "pkg.pipeline.job (layer pipeline, above it)") for p in upward), upward
    assert any(p.startswith("pkg/io/x.py:6: from ..model.m import Thing (under TYPE_CHECKING): pkg.io.x (layer io) imports "
                            "pkg.model.m (layer model") for p in upward), upward
    assert len(upward) == 2, upward
    # 2. b <-> c, closed by a local import; and io.x <-> model.m, closed by a TYPE_CHECKING import
    assert len(circles) == 2, circles
    bc = next(p for p in circles if "pkg.core.b" in p)
    assert bc.startswith("import circle between 2 modules (pkg.core.b, pkg.core.c)")
    assert "pkg/core/b.py:1: from . import c (module level): pkg.core.b -> pkg.core.c" in bc
    assert "pkg/core/c.py:2: from .b import _helper (in a function): pkg.core.c -> pkg.core.b" in bc
    assert any("(pkg.io.x, pkg.model.m)" in p for p in circles), circles
    # 3. a private name imported, and one used through its module
    assert len(private) == 2, private
    assert any(p.startswith("pkg/core/c.py:2: from .b import _helper (in a function): imports pkg.core.b's private name(s) _helper;")
               for p in private), private
    assert any(p.startswith("pkg/io/x.py:9: b._helper (module b bound at line 3): uses pkg.core.b's private name '_helper'")
               for p in private), private
    # 4. the long module, and only it
    assert long == ["pkg/plot.py: 601 lines, more than 600: split it by concern"]


def test_the_checker_passes_a_package_that_keeps_the_rules(tmp_path):
    files = {name: text for name, text in SYNTHETIC.items() if name not in ("plot.py", "core/c.py", "io/x.py")}
    files["core/a.py"] = "from ..errors import E\n"
    files["core/b.py"] = "from . import c\n\ndef helper():\n    return c\n"
    files["core/c.py"] = "VALUE = 1\n"
    files["pipeline/job.py"] = "import pkg.model.m as m\nfrom ..core.b import helper\n"
    files["stats.py"] = "from .pipeline.job import helper\nimport pkg\nfrom . import __version__\n"
    files["__init__.py"] = "__version__ = '1'\nfrom .core import a\n"
    found = check(_write(tmp_path, files), "pkg")
    assert found == {"upward": [], "circle": [], "private": [], "long": []}


def test_a_module_on_no_floor_is_reported(tmp_path):
    found = check(_write(tmp_path, {"__init__.py": "", "errors.py": "", "extras/__init__.py": "", "extras/y.py": ""}), "pkg")
    assert [p.split(": ", 1)[1] for p in found["upward"]] == [
        "module pkg.extras is on no floor: add 'extras' to LAYERS (tests/test_layers.py) where it belongs",
        "module pkg.extras.y is on no floor: add 'extras' to LAYERS (tests/test_layers.py) where it belongs",
    ]
