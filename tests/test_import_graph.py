"""The import graph of ``flags`` and ``api`` has no cycle.

Imports are read with ``ast`` (nothing is imported), and counted by where they run:

* module level (including inside ``try``/``if`` at module level): runs at import time;
* function level (inside a ``def`` or ``lambda``; lazy imports): runs when called;
* under ``if TYPE_CHECKING:``: never runs; left out.

A cycle of module-level imports fails. Lazy imports are held to the same rule: a
lazy import only hides a cycle from the interpreter, not from a reader (the old
``flags.client`` <-> ``flags.unleash.client`` pair was one), so a cycle in module
and function-level imports together fails too. The second granularity is the
package: each child of ``flags`` or ``api`` (``flags.store``, ``flags.sync``,
``flags.client``...) is one node; two packages importing each other at module
level (as ``flags.store`` and ``flags.sync`` did) fail, except the cycles listed
in ``KNOWN_PACKAGE_CYCLES``, which name the files that make them.

``from a import b`` is an import of module ``a.b`` when that module exists, else of
``a``. Imports of anything outside the two packages are ignored.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flags", "api")

# Package-level cycles tolerated for now: none. (flags.history <-> flags.store went
# when the SQL half of history moved to flags.store.history; api.schemas <->
# api.service when DatabaseAdmin moved to api.cli.database.) No cycle may appear;
# one inside a listed set would pass, so keep this empty.
KNOWN_PACKAGE_CYCLES: frozenset[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Edge:
    """``source`` imports ``target`` (both dotted module names) at ``line``."""

    source: str
    target: str
    lazy: bool
    line: int


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/<package>``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_edges(module: str, path: Path, modules: Mapping[str, Path]) -> list[Edge]:
    """The imports of ``module`` (at ``path``) that land in ``modules``."""
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def target(name: str) -> str | None:
        return name if name in modules else None

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:  # the body never runs
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    found = target(alias.name)
                    if found:
                        edges.append(Edge(module, found, lazy, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    source = child.module or ""
                for alias in child.names:
                    found = target(f"{source}.{alias.name}") or target(source)
                    if found:
                        edges.append(Edge(module, found, lazy, child.lineno))
            else:
                visit(child, lazy)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return edges


def _adjacency(graph: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    adjacency = {node: sorted(set(targets)) for node, targets in graph.items()}
    for targets in list(adjacency.values()):
        for node in targets:
            adjacency.setdefault(node, [])
    return adjacency


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    adjacency = _adjacency(graph)
    return [_cycle_in(component, adjacency) for component in tangles(graph)]


def tangles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle, each sorted."""
    adjacency = _adjacency(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in adjacency[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in adjacency[node]:
                components.append(sorted(component))

    for node in sorted(adjacency):
        if node not in index:
            connect(node)
    return components


def _cycle_in(component: list[str], adjacency: Mapping[str, list[str]]) -> list[str]:
    """A shortest path from the component's first node back to itself."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in adjacency[node]:
                if nxt == start:
                    return [*paths[node], start]
                if nxt in members and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def package_of(module: str) -> str:
    """The graph node of ``module`` at package granularity: ``flags.sync.sse`` ->
    ``flags.sync``; ``flags.client`` -> ``flags.client``; ``flags`` -> ``flags``."""
    return ".".join(module.split(".")[:2])


def module_graph(edges: Iterable[Edge], *, lazy: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if lazy or not edge.lazy:
            graph.setdefault(edge.source, set()).add(edge.target)
    return graph


def package_graph(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        source, target = package_of(edge.source), package_of(edge.target)
        if not edge.lazy and source != target:
            graph.setdefault(source, set()).add(target)
    return graph


def describe(cycle: list[str], edges: Iterable[Edge]) -> str:
    """``a -> b -> a`` with, for each step, the import that makes it (file:line)."""
    steps = []
    edge_list = list(edges)
    for source, target in pairwise(cycle):
        where = next(
            (
                f"{e.source}:{e.line}{' (lazy)' if e.lazy else ''}"
                for e in edge_list
                if (e.source, e.target) == (source, target)
                or (package_of(e.source), package_of(e.target)) == (source, target)
            ),
            "?",
        )
        steps.append(f"{source} -> {target} [{where}]")
    return "; ".join(steps)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    modules = find_modules(REPO, PACKAGES)
    return [edge for name, path in modules.items() for edge in import_edges(name, path, modules)]


class TestRepository:
    def test_import_graph__module_level_imports__no_cycle(self, edges: list[Edge]) -> None:
        """No cycle of imports that run at import time, module by module."""
        cycles = find_cycles(module_graph(edges, lazy=False))
        assert [describe(c, edges) for c in cycles] == []

    def test_import_graph__with_function_level_imports__no_cycle(self, edges: list[Edge]) -> None:
        """Lazy imports do not close a cycle either."""
        cycles = find_cycles(module_graph(edges, lazy=True))
        assert [describe(c, edges) for c in cycles] == []

    def test_import_graph__packages__no_cycle_but_the_known_ones(self, edges: list[Edge]) -> None:
        """No two packages import each other at module level (beyond the listed ones)."""
        graph = package_graph(edges)
        new = [
            component
            for component in tangles(graph)
            if not any(set(component) <= known for known in KNOWN_PACKAGE_CYCLES)
        ]
        adjacency = _adjacency(graph)
        assert [describe(_cycle_in(c, adjacency), edges) for c in new] == []

    def test_import_graph__walk__sees_the_sdk_and_the_api(self, edges: list[Edge]) -> None:
        """The walk is not vacuous: it sees known edges of both packages."""
        pairs = {(e.source, e.target) for e in edges}
        assert ("flags.client", "flags.compiled") in pairs
        assert ("flags.evaluate", "flags.compiled") in pairs
        assert any(source.startswith("api.") for source, _ in pairs)


def write_package(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return find_modules(root, ["pkg"])


def edges_of(modules: Mapping[str, Path]) -> list[Edge]:
    return [edge for name, path in modules.items() for edge in import_edges(name, path, modules)]


class TestWalker:
    def test_find_cycles__module_level_cycle__found_with_its_path(self, tmp_path: Path) -> None:
        modules = write_package(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from pkg.b import x\n",
                "pkg/b.py": "from . import c\nx = 1\n",
                "pkg/c.py": "import pkg.a\n",
            },
        )
        cycles = find_cycles(module_graph(edges_of(modules), lazy=False))
        assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]

    def test_find_cycles__lazy_import__only_in_the_lazy_graph(self, tmp_path: Path) -> None:
        modules = write_package(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "import pkg.b\n",
                "pkg/b.py": "def f():\n    from pkg import a\n    return a\n",
            },
        )
        edges = edges_of(modules)
        assert find_cycles(module_graph(edges, lazy=False)) == []
        assert find_cycles(module_graph(edges, lazy=True)) == [["pkg.a", "pkg.b", "pkg.a"]]

    def test_import_edges__type_checking_block__ignored(self, tmp_path: Path) -> None:
        modules = write_package(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "import pkg.b\n",
                "pkg/b.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from pkg.a import thing\n"
                ),
            },
        )
        assert find_cycles(module_graph(edges_of(modules), lazy=True)) == []

    def test_package_graph__subpackages_importing_each_other__a_cycle(self, tmp_path: Path) -> None:
        modules = write_package(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/store/__init__.py": "",
                "pkg/store/telemetry.py": "from pkg.sync import Report\n",
                "pkg/sync/__init__.py": "Report = object\n",
                "pkg/sync/broadcast.py": "from pkg.store.telemetry import x\n",
            },
        )
        edges = edges_of(modules)
        assert find_cycles(module_graph(edges, lazy=True)) == []
        assert find_cycles(package_graph(edges)) == [["pkg.store", "pkg.sync", "pkg.store"]]
