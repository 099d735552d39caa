"""The modules of ``src/celeriac`` import each other without cycles.

The graph is read from the source with ``ast``: imports at module level and
inside functions count (a function-local import is a cycle postponed, not
removed); imports under ``if TYPE_CHECKING:`` do not (they never run). An
edge goes to the module named: ``from . import x`` imports the submodule
``x`` when there is one, else the package's ``__init__``; the implicit import
of a module's parent packages is not an edge (every submodule would otherwise
form a cycle with an ``__init__`` that re-exports it).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "celeriac"

Graph = dict[str, dict[str, int]]
"""module -> {imported module: line of the first such import}"""


def module_name(path: Path, root: Path = SOURCE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _imports_in(orelse)
            continue
        yield from _imports_in(child)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _targets(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]
) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in modules else base


def import_graph(root: Path = SOURCE) -> Graph:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph: Graph = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = graph.setdefault(name, {})
        for node in _imports(tree):
            for target in _targets(node, name, path.name == "__init__.py", modules):
                if target in modules and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's components of more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def shortest_cycle(graph: Graph, start: str, within: set[str]) -> list[str]:
    """The shortest import path from ``start`` back to itself, inside one component."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in within and w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    return [start]


def describe(graph: Graph, component: list[str]) -> str:
    within = set(component)
    lines = []
    for module in component:
        cycle = shortest_cycle(graph, module, within)
        steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
        lines.append("  " + " -> ".join([*steps, cycle[-1]]))
    return f"cycle among {', '.join(component)}:\n" + "\n".join(dict.fromkeys(lines))


def test_no_import_cycles() -> None:
    graph = import_graph()
    components = strongly_connected(graph)
    report = "\n".join(describe(graph, c) for c in components)
    print(report or "no import cycles")
    assert not components, f"import cycles in src/celeriac:\n{report}"


def test_submodules_do_not_import_the_package_itself() -> None:
    """``celeriac/__init__`` re-exports; a submodule importing it would import everything."""
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if "celeriac" in edges)
    assert importers == [], importers


def test_the_graph_sees_what_runs_and_skips_what_does_not(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from . import c\n"
        "A = 1\n"
    )
    (pkg / "b.py").write_text("from .sub import thing\nfrom . import a, A\n")
    (pkg / "c.py").write_text("import pkg.sub.d\n")
    (pkg / "sub" / "__init__.py").write_text("thing = 1\n")
    (pkg / "sub" / "d.py").write_text("from ..c import x\n")
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.c": 5},
        "pkg.b": {"pkg.sub": 1, "pkg.a": 2, "pkg": 2},
        "pkg.c": {"pkg.sub.d": 1},
        "pkg.sub": {},
        "pkg.sub.d": {"pkg.c": 1},
    }
    assert strongly_connected(graph) == [["pkg.c", "pkg.sub.d"]]
    shown = describe(graph, ["pkg.c", "pkg.sub.d"])
    assert "pkg.c (line 1) -> pkg.sub.d (line 1) -> pkg.c" in shown
