"""The house rule, checked on the source (AST, nothing imported): graft's modules import downward only.

Layers, lowest first (README, "How graft is built"). A module may import modules of its own layer or lower ones,
never higher ones; no import cycle at all (module-level or inside functions); no private name (``_x``) imported
from, or reached in, another graft module; no module over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graft"

#: (module prefix, layer), lowest layer first; the longest matching prefix decides a module's layer.
LAYERS: list[tuple[str, str]] = [
    ("graft.core", "core"),
    ("graft.data", "data"),
    ("graft.models", "models"),
    ("graft.features", "features"),
    ("graft.inference", "inference"),
    # the int8 program is one of the kinds of run that inference loads
    ("graft.int8.backend", "inference"),
    ("graft.int8.archive", "inference"),
    ("graft.int8.program", "inference"),
    ("graft.int8", "int8"),
    ("graft.training", "training"),
    ("graft.insight", "insight"),
    ("graft.deploy", "deploy"),
    ("graft.commands", "commands"),
    ("graft.__main__", "commands"),
    ("graft", "api"),
]
ORDER = ["core", "data", "models", "features", "inference", "int8", "training", "insight", "deploy", "commands", "api"]
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def imports_of(path: Path, known: dict[str, Path]) -> list[tuple[str, int, list[str]]]:
    """(imported graft module, line, names imported from it) for every import in the file, functions included.
    ``from graft.x import y`` names module ``graft.x.y`` when that is a module, else ``graft.x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "graft"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "graft":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, node.lineno, []) if sub in known else (node.module, node.lineno, [a.name]))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {target for target, _, _ in imports_of(p, known) if target in known} - {m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_layers_cover_every_module() -> None:
    assert "graft.training.pipeline" in modules() and "graft.inference.classifier" in modules()
    assert {layer_of(m) for m in modules()} == set(ORDER)


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down() -> None:
    upward = [
        f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
        for m, targets in graph().items()
        for t in targets
        if ORDER.index(layer_of(t)) > ORDER.index(layer_of(m))
    ]
    assert upward == []


def test_the_layer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a core module importing training is reported."""
    fake = {"graft.core.x": {"graft.training.loop"}, "graft.training.loop": set()}
    upward = [(m, t) for m, ts in fake.items() for t in ts if ORDER.index(layer_of(t)) > ORDER.index(layer_of(m))]
    assert upward == [("graft.core.x", "graft.training.loop")]


def test_no_private_name_crosses_a_module() -> None:
    known = modules()
    crossing = []
    for m, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for target, line, names in imports_of(path, known):
            crossing += [f"{m}:{line} imports {n} from {target}" for n in names if n.startswith("_") and n[1] != "_"]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("graft"):
                aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name: a.name for a in node.names if a.name.startswith("graft")}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id) in known
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                crossing.append(f"{m}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert crossing == []


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
