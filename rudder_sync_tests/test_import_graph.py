"""The package's import graph, read with `ast` from rudder_sync/: no cycles, and layers that hold.

An import inside a function hides a cycle from Python (it runs after both modules loaded) but
not from a reader, so the graph here includes them. Left out: imports under `TYPE_CHECKING`
(never run) and under `if __name__ == "__main__":` (they run in the `__main__` module, a module
object of its own, when the file is a command).
"""

from __future__ import annotations

import ast
from pathlib import Path

import rudder_sync

PACKAGE = Path(rudder_sync.__file__).parent
# Lazy imports that close a cycle on purpose, each with why.
ALLOWED_LAZY = {
    # `import rudder_sync` stays light: the Component (and with it the definitions) is imported
    # on first use of `rudder_sync.RudderstackSyncComponent` (`__getattr__`).
    ("rudder_sync", "rudder_sync.component"),
}
# The Dagster assembly: only these may import `rudder_sync.definitions`, which imports everything.
ASSEMBLY = ("rudder_sync.definitions", "rudder_sync.component", "rudder_sync.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _skipped(node: ast.If) -> bool:
    test = ast.unparse(node.test)
    return "TYPE_CHECKING" in test or test in {"__name__ == '__main__'", '__name__ == "__main__"'}


def _imports(tree: ast.AST, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run, at module level only (``lazy`` False) or anywhere."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _skipped(child):
                for branch in child.orelse:
                    visit(branch, nested)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if lazy or not nested:
                    found.append(child)
                continue
            inner = nested or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            )
            visit(child, inner)

    visit(tree, False)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Modules an import statement loads (a package's submodules named in `from p import m`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = module.split(".")
        base = parts[: len(parts) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target, *(f"{target}.{alias.name}" for alias in node.names)]


def import_graph(lazy: bool) -> dict[str, set[str]]:
    """module -> the rudder_sync modules it imports (itself and its parent packages aside)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {
            target
            for node in _imports(tree, lazy)
            for target in _targets(module, is_package, node)
            if target in modules and target != module and not module.startswith(target + ".")
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in import order, the first repeated), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_is_read_from_the_source() -> None:
    """The reader finds the edges it must (else the checks below would pass on an empty graph)."""
    graph = import_graph(lazy=True)
    assert "rudder_sync.assets" in graph["rudder_sync.definitions"]
    assert "rudder_sync.state" in graph["rudder_sync.steps"]
    assert "rudder_sync.warehouse_state.sql" in graph["rudder_sync.warehouse_state.steps"]
    assert "rudder_sync.component" in graph["rudder_sync"]  # lazily, in `__getattr__`
    assert "rudder_sync.component" not in import_graph(lazy=False)["rudder_sync"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_module_level_imports_have_no_cycle() -> None:
    assert find_cycle(import_graph(lazy=False)) is None


def test_no_cycle_even_through_imports_inside_functions() -> None:
    graph = import_graph(lazy=True)
    for importer, imported in ALLOWED_LAZY:
        graph[importer].discard(imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_assembly_imports_the_definitions() -> None:
    """`definitions` imports the assets, which import every step: a module below it that imports
    it (even inside a function) closes a cycle, as the move command once did."""
    graph = import_graph(lazy=True)
    importers = sorted(
        module
        for module, targets in graph.items()
        if "rudder_sync.definitions" in targets
        and not any(module == top or module.startswith(top + ".") for top in ASSEMBLY)
    )
    assert importers == []
