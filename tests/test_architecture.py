"""The house rule, checked on the source (AST, nothing imported): graft's modules import downward only.

Layers, lowest first (README, "How graft is built"), one per package. A module may import modules of its own layer
or lower ones, never higher ones; no import cycle at all (module-level or inside functions); no private name
(``_x``) imported from, or reached in, another graft module; no module over 500 lines. Imports are every
``import``/``from ... import`` (relative ones resolved, those inside functions included) and every
``importlib.import_module``/``__import__`` of a literal module name; a module that imports a computed name (graft's
``_LAZY`` table) imports each module its string constants name.

:func:`check` is the checker; the self-tests run it on small packages planted in a temporary folder.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graft"

#: (subpackage or module, layer), lowest layer first; the longest matching prefix decides a module's layer, and
#: anything else in the package (``graft/__init__.py``, the top-level re-export modules) is the top layer, api.
LAYERS: list[tuple[str, str]] = [
    ("core", "core"),
    ("data", "data"),
    ("models", "models"),
    ("features", "features"),
    ("inference", "inference"),
    ("int8", "int8"),
    ("training", "training"),
    ("insight", "insight"),
    ("deploy", "deploy"),
    ("commands", "commands"),
    ("__main__", "commands"),
]
ORDER = ["core", "data", "models", "features", "inference", "int8", "training", "insight", "deploy", "commands", "api"]
MAX_LINES = 500


def module_name(path: Path, root: Path, package: str) -> str:
    parts = (package, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE, package: str = "graft") -> dict[str, Path]:
    return {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}


def layer_of(module: str, package: str = "graft") -> str:
    rest = module.removeprefix(package).removeprefix(".")
    matching = [(prefix, layer) for prefix, layer in LAYERS if rest == prefix or rest.startswith(prefix + ".")]
    return max(matching, key=lambda m: len(m[0]))[1] if matching else "api"


@dataclass
class Imports:
    """What one module imports from the package: (module, line, names taken from it; empty for a whole module)."""

    edges: list[tuple[str, int, list[str]]] = field(default_factory=list)
    #: local name -> package module it is bound to (``import graft.x as m``, ``from graft import x``)
    aliases: dict[str, str] = field(default_factory=dict)


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` starts with (``graft.x.f`` -> ``graft.x``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from: ``from ..training.loop`` in ``graft/core/x.py`` is
    ``graft.training.loop``, ``from . import x`` in it is ``graft.core``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def _dynamic_import(node: ast.Call, importers: set[str], importlib_names: set[str]) -> bool:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id in importers
    return isinstance(f, ast.Attribute) and f.attr == "import_module" and getattr(f.value, "id", "") in importlib_names


def _literal_target(node: ast.Call) -> str | None:
    """The module a dynamic import names with literals (``import_module(".loop", package="graft.training")`` too)."""
    if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
        return None
    name = node.args[0].value
    if not name.startswith("."):
        return name
    package = next((k.value for k in node.keywords if k.arg == "package"), None)
    if not isinstance(package, ast.Constant) or not isinstance(package.value, str):
        return None
    level = len(name) - len(name.lstrip("."))
    parts = package.value.split(".")
    return ".".join([*parts[: len(parts) - level + 1], name.lstrip(".")]).rstrip(".")


def imports_of(module: str, path: Path, known: dict[str, Path], package: str) -> Imports:
    """Every import of ``module`` (``path``) that reaches a module of ``package``, functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out = Imports()
    importers, importlib_names, computed = {"__import__"}, set(), False

    def add(name: str, line: int, names: list[str]) -> None:
        target = _resolve(name, known) if name.split(".")[0] == package else None
        if target is not None:
            out.edges.append((target, line, names))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno, [])
                if a.name == "importlib":
                    importlib_names.add(a.asname or a.name)
                if a.asname and a.name in known:
                    out.aliases[a.asname] = a.name
                elif a.name.split(".")[0] == package:
                    out.aliases[a.name.split(".")[0]] = package
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node)
            if base == "importlib":
                importers |= {a.asname or a.name for a in node.names if a.name == "import_module"}
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    add(sub, node.lineno, [])
                    out.aliases[a.asname or a.name] = sub
                else:
                    add(base, node.lineno, [a.name])
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dynamic_import(node, importers, importlib_names):
            target = _literal_target(node)
            if target is None:
                computed = True
            else:
                add(target, node.lineno, [])
    if computed:  # the name is computed: from a table of module names (graft's _LAZY) or the like
        dotted = re.compile(rf"{re.escape(package)}(\.\w+)+")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and dotted.fullmatch(node.value):
                add(node.value, node.lineno, [])
    return out


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else [*inner, node.attr]
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(module: str, path: Path, imports: Imports, known: dict[str, Path]) -> list[str]:
    """``from graft.x import _y`` and ``x._y`` where ``x`` is a graft module bound by an import."""
    found = [
        f"private name: {module}:{line} imports {n} from {target}"
        for target, line, names in imports.edges
        for n in names
        if _private(n)
    ]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain = _dotted(node.value)
        if chain and chain[0] in imports.aliases:
            owner = ".".join([imports.aliases[chain[0]], *chain[1:]])
            if owner in known and owner != module:
                found.append(f"private name: {module}:{node.lineno} uses {'.'.join(chain)}.{node.attr} ({owner})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def check(root: Path, package: str) -> list[str]:
    """Every violation of the layer rules in the package at ``root`` (named ``package``): upward imports, import
    cycles and private names used across modules, one line each."""
    known = modules(root, package)
    imports = {m: imports_of(m, p, known, package) for m, p in known.items()}
    violations = []
    for m, found in imports.items():
        for target, line, _ in found.edges:
            if ORDER.index(layer_of(target, package)) > ORDER.index(layer_of(m, package)):
                violations.append(
                    f"upward import: {m}:{line} ({layer_of(m, package)}) imports {target} ({layer_of(target, package)})"
                )
    graph = {m: {t for t, _, _ in found.edges} - {m} for m, found in imports.items()}
    violations += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for m, found in imports.items():
        violations += private_uses(m, known[m], found, known)
    return violations


# ----------------------------------------------------------------------------------------------------------------
# graft itself


def test_the_layers_cover_every_module() -> None:
    """Every package of graft has its own layer (a new one would otherwise be api, free to import anything)."""
    known = modules()
    assert "graft.training.pipeline" in known and "graft.inference.classifier" in known
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= {prefix for prefix, _ in LAYERS}
    assert {layer for _, layer in LAYERS} | {"api"} == set(ORDER)
    present = {layer for prefix, layer in LAYERS if (PACKAGE / prefix).is_dir() or (PACKAGE / f"{prefix}.py").exists()}
    assert {layer_of(m) for m in known} == present | {"api"}


def test_graft_follows_the_layer_rules() -> None:
    assert check(PACKAGE, "graft") == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size(name: str) -> None:
    lines = modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concern"


#: A function longer than this says why beside its ``def`` (a ``# long:`` comment on the line above).
MAX_FUNCTION_LINES = 80


def test_functions_are_short_or_say_why() -> None:
    long = []
    for m, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and "# long:" not in lines[first - 2]:
                    long.append(f"{m}.{node.name}: {size} lines")
    assert long == []


# ----------------------------------------------------------------------------------------------------------------
# the checker itself, on planted packages


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package ``graft`` under ``tmp_path`` with ``files`` (path -> source) and every ``__init__.py`` they need."""
    root = tmp_path / "graft"
    for rel, source in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(source, encoding="utf-8")
    return root


def planted_violations(tmp_path: Path, files: dict[str, str]) -> list[str]:
    violations = check(plant(tmp_path, files), "graft")
    print("\n".join(violations))  # what the checker says (pytest -s shows it)
    return violations


def test_a_relative_upward_import_is_reported(tmp_path: Path) -> None:
    files = {"core/x.py": "from ..training.loop import fit\n", "training/loop.py": "def fit():\n    pass\n"}
    assert planted_violations(tmp_path, files) == [
        "upward import: graft.core.x:1 (core) imports graft.training.loop (training)"
    ]


def test_a_private_name_from_another_module_is_reported(tmp_path: Path) -> None:
    files = {"core/x.py": "_private = 1\n", "training/loop.py": "from graft.core.x import _private\n"}
    assert planted_violations(tmp_path, files) == [
        "private name: graft.training.loop:1 imports _private from graft.core.x"
    ]


def test_a_cycle_through_a_function_level_import_is_reported(tmp_path: Path) -> None:
    files = {
        "core/a.py": "from graft.core import b\n",
        "core/b.py": "def late():\n    from graft.core import a\n\n    return a\n",
    }
    assert planted_violations(tmp_path, files) == ["import cycle: graft.core.a <-> graft.core.b"]


def test_a_dynamic_upward_import_is_reported(tmp_path: Path) -> None:
    files = {
        "core/x.py": "import importlib\n\n\ndef fit():\n    return importlib.import_module('graft.training.loop')\n",
        "training/loop.py": "",
    }
    assert planted_violations(tmp_path, files) == [
        "upward import: graft.core.x:5 (core) imports graft.training.loop (training)"
    ]


def test_relative_private_names_and_private_attributes_are_reported(tmp_path: Path) -> None:
    files = {
        "core/x.py": "_private = 1\n",
        "core/y.py": "from . import x\nfrom .x import _private\n\nVALUE = x._private + _private\n",
    }
    assert planted_violations(tmp_path, files) == [
        "private name: graft.core.y:2 imports _private from graft.core.x",
        "private name: graft.core.y:4 uses x._private (graft.core.x)",
    ]


def test_a_lazy_table_of_module_names_counts_as_imports(tmp_path: Path) -> None:
    """graft's ``_LAZY``: the module names reach ``import_module`` through a dict; in core that is upward."""
    files = {
        "core/x.py": (
            "import importlib\n\n_LAZY = {'fit': 'graft.training.loop'}\n\n\n"
            "def __getattr__(name):\n    return getattr(importlib.import_module(_LAZY[name]), name)\n"
        ),
        "training/loop.py": "",
    }
    assert planted_violations(tmp_path, files) == [
        "upward import: graft.core.x:3 (core) imports graft.training.loop (training)"
    ]


def test_a_clean_package_has_no_violation(tmp_path: Path) -> None:
    files = {
        "core/x.py": "def fit():\n    pass\n",
        "training/loop.py": "from ..core.x import fit\nfrom graft.core import x\n\nrun = x.fit\n",
    }
    assert planted_violations(tmp_path, files) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
