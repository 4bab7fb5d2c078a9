"""No import cycles in the package: data flows one way (text -> steps -> batch -> backbone -> head -> scores),
and ``kernels/`` imports nothing from fastprm but its one shared contract module.

The graph is read from the source with ``ast``: every import at module level or inside a function counts,
except those under ``if TYPE_CHECKING:`` (annotations only, never run) and those of a package's lazy
``__getattr__`` (a re-export loaded on first use, which the package itself never depends on).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"fastprm": ROOT / "python" / "fastprm", "fastprm.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``module`` imports (a name imported from a package counts as its
    submodule when one of that name exists)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if path.name == "__init__.py" and isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return components


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _graph() -> dict[str, set[str]]:
    """module -> the modules importing it runs: what it imports, and their parent packages (whose
    ``__init__`` runs first), leaving out its own parents (already running when it is imported)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        deps = set()
        for dep in _imports(module, path, modules):
            deps |= {dep, *(_ancestors(dep) & set(modules))}
        graph[module] = deps - _ancestors(module) - {module}
    return graph


def test_the_package_has_no_import_cycles():
    assert _cycles(_graph()) == []


def test_kernels_import_only_the_shared_contract():
    graph = _graph()
    outside = {
        dep
        for module, deps in graph.items()
        if module.startswith("fastprm.kernels")
        for dep in deps
        if not dep.startswith("fastprm.kernels")
    }
    assert len(outside) <= 1, outside


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
