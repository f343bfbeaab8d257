"""The layers, read from the source: the core (``metarl/``) imports nothing from ``metarl.agents`` (the folder
``agents/``) or ``metarl.envs`` (``envs/``), and no
module of the three packages is part of an import cycle, counting imports inside functions (those hide a cycle
rather than remove it). Imports under ``if TYPE_CHECKING:`` are left out: they never run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"metarl": "metarl", "metarl.agents": "agents", "metarl.envs": "envs"}
"""Each installed package and the folder it is built from (pyproject's ``package-dir``)."""
ABOVE_THE_CORE = ("metarl.agents", "metarl.envs")


def module_name(path: Path) -> str:
    """The installed name of the module at ``path`` (``agents/rl2.py`` is ``metarl.agents.rl2``)."""
    folder, *parts = path.relative_to(ROOT).with_suffix("").parts
    package = next(name for name, source in PACKAGES.items() if source == folder)
    return ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def is_above_the_core(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in ABOVE_THE_CORE)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The suite's modules that ``path`` imports anywhere in its body (an ``import a.b.c`` or ``from a.b import c``
    counts as importing the longest of ``a.b.c`` / ``a.b`` that is a module)."""
    tree = ast.parse(path.read_text())
    skipped = {id(child) for node in ast.walk(tree) if _is_type_checking_block(node) for child in ast.walk(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate:
                found.add(candidate)
                break
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [path for folder in PACKAGES.values() for path in sorted((ROOT / folder).rglob("*.py"))]
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) - {module_name(path)} for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module (Tarjan's algorithm), a
    package's ``__init__`` importing its own submodules aside."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def edges(module: str) -> set[str]:
        # a package's __init__ importing its submodules, and a submodule's import of its package, are how packages
        # work; only module-to-module cycles are wiring faults
        return {
            other for other in graph[module] if not (other.startswith(module + ".") or module.startswith(other + "."))
        }

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in edges(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def test_the_core_imports_nothing_above_it():
    graph = import_graph()
    upward = {
        module: sorted(other for other in imported if is_above_the_core(other))
        for module, imported in graph.items()
        if not is_above_the_core(module)
    }
    assert "metarl.trainer" in upward and "metarl.agents.rl2" not in upward
    assert {module: imported for module, imported in upward.items() if imported} == {}


def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_see_imports_inside_functions_and_find_a_planted_cycle():
    """The reader counts a function-level import, and the cycle finder reports a two-module cycle."""
    graph = import_graph()
    assert "metarl.from_scratch" in graph["metarl.cli"]  # imported inside _from_scratch
    planted = {**graph, "metarl.tasks": graph["metarl.tasks"] | {"metarl.vector"}}
    assert ["metarl.tasks", "metarl.vector"] in cycles(planted)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_read(package):
    assert package in import_graph()
    assert any(module.startswith(package + ".") for module in import_graph())
