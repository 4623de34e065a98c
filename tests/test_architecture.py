"""The package's shape: no import cycle inside src/tasktune, and no module using another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(sources: dict[str, tuple[str, bool]]) -> tuple[dict[str, set[str]], list[str]]:
    """From {module: (source, is_package)}: the import graph between these modules, and every use of a private name
    (`_x`) that one module takes from another (`from m import _x`, or `m._x` on an imported module)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    private: list[str] = []
    for mod, (text, is_package) in sources.items():
        tree = ast.parse(text)
        package = mod if is_package else mod.rpartition(".")[0]
        aliases: dict[str, str] = {}  # local name -> module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base
                    if target in sources and target != mod:
                        graph[mod].add(target)
                    if f"{base}.{a.name}" in sources:
                        aliases[a.asname or a.name] = f"{base}.{a.name}"
                    if base in sources and a.name.startswith("_") and not a.name.startswith("__"):
                        private.append(f"{mod}: from {base} import {a.name} (line {node.lineno})")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in sources and a.name != mod:
                        graph[mod].add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):  # fmt: skip
                private.append(f"{mod}: {aliases[node.value.id]}.{node.attr} (line {node.lineno})")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p, SRC): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for p in (SRC / "tasktune").rglob("*.py")}  # fmt: skip


def test_no_import_cycle_inside_the_package():
    graph, _ = scan(package_sources())
    assert len(graph) > 30  # the scan saw the package
    assert sum(map(len, graph.values())) > 50  # ... and its imports
    assert cycles(graph) == []


def test_no_module_uses_another_modules_private_names():
    _, private = scan(package_sources())
    assert private == []


@pytest.mark.parametrize(
    "planted, expect_cycle, expect_private",
    [
        ({"p.a": ("from p.b import f", False), "p.b": ("def f(): from p.a import g", False)}, True, False),
        ({"p.a": ("from p import b\nb._hidden()", False), "p.b": ("", False), "p": ("", True)}, False, True),
        ({"p.a": ("from .b import _hidden", False), "p.b": ("", False), "p": ("", True)}, False, True),
        ({"p.a": ("from p.b import f", False), "p.b": ("", False)}, False, False),
    ],
)
def test_the_scan_catches_planted_cycles_and_private_imports(planted, expect_cycle, expect_private):
    graph, private = scan(planted)
    assert bool(cycles(graph)) is expect_cycle
    assert bool(private) is expect_private
