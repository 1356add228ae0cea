"""The import graph of a rendered package: which module imports which, and the same with each
feature's folder (``features/<name>/``) counted as one unit.

Read by ``tests/test_layout.py`` (the rules of the layout) and ``bench/import_graph.py`` (its
figures: modules, edges, layers, cycles). Only the standard library: it reads the sources
with ``ast`` and never imports them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted within the package ("features.jobs.routes")
    target: str  # imported module, dotted within the package ("db")
    line: int


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(package: Path) -> list[Import]:
    """Every import of one of the package's modules by another (relative or absolute)."""
    known = modules(package)
    name = package.name
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        here = module.split(".") if module else []
        base = here if is_package else here[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    prefix = [*anchor, *(node.module.split(".") if node.module else [])]
                elif node.module and (node.module == name or node.module.startswith(f"{name}.")):
                    prefix = node.module.split(".")[1:]
                else:
                    continue
                for alias in node.names:
                    submodule = ".".join([*prefix, alias.name])
                    targets.append(submodule if submodule in known else ".".join(prefix))
            elif isinstance(node, ast.Import):
                targets = [
                    ".".join(alias.name.split(".")[1:])
                    for alias in node.names
                    if alias.name.split(".")[0] == name
                ]
            for target in targets:
                if target in known and target != module:
                    found.append(Import(module, target, node.lineno))
    return found


def feature_of(module: str) -> str | None:
    """The feature a module belongs to (``features.<name>.*``), or None for the core."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "features" and parts[1] != "registry":
        return parts[1]
    return None


def unit_of(module: str) -> str:
    """A module's unit: its feature's folder, or the module itself in the core."""
    feature = feature_of(module)
    return f"features.{feature}" if feature else module


@dataclass(frozen=True)
class Graph:
    nodes: frozenset[str]
    edges: frozenset[tuple[str, str]]

    def layers(self) -> int:
        """The longest chain of imports, in nodes (1: nothing imports anything)."""
        depth: dict[str, int] = {}

        def longest(node: str, seen: frozenset[str]) -> int:
            if node in depth:
                return depth[node]
            below = [b for a, b in self.edges if a == node and b not in seen]
            depth[node] = 1 + max((longest(b, seen | {b}) for b in below), default=0)
            return depth[node]

        return max((longest(node, frozenset({node})) for node in self.nodes), default=0)

    def cycles(self) -> list[list[str]]:
        """Strongly connected groups of more than one node (Tarjan)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        groups: list[list[str]] = []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            for a, b in sorted(self.edges):
                if a != node:
                    continue
                if b not in index:
                    visit(b)
                    low[node] = min(low[node], low[b])
                elif b in stack:
                    low[node] = min(low[node], index[b])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

        for node in sorted(self.nodes):
            if node not in index:
                visit(node)
        return groups


def graph(package: Path, unit: Callable[[str], str] = lambda module: module) -> Graph:
    """The import graph over ``unit(module)`` (a module by default); packages' own
    ``__init__`` modules without code are left out, as are edges within one unit."""
    known = modules(package)
    nodes = {unit(m) for m, path in known.items() if not _only_a_docstring(path)}
    edges = {
        (unit(i.source), unit(i.target))
        for i in imports(package)
        if unit(i.source) != unit(i.target) and unit(i.target) in nodes
    }
    return Graph(frozenset(nodes), frozenset(edges))


def _only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def describe(package: Path) -> dict[str, object]:
    """The figures of a package: modules, edges and layers, per module and per unit."""
    figures: dict[str, object] = {}
    for name, unit in (("modules", lambda m: m), ("units", unit_of)):
        g = graph(package, unit)
        figures[name] = {
            "nodes": len(g.nodes),
            "edges": len(g.edges),
            "layers": g.layers(),
            "cycles": g.cycles(),
        }
    return figures


def sorted_imports(found: Iterable[Import]) -> list[str]:
    return sorted(f"{i.source} -> {i.target} (line {i.line})" for i in found)
