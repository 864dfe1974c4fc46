"""The package's shape: no import cycles (function-level imports included), few top-level modules, no private reach-ins.

Why a test: a cycle hidden behind a function-level import, a module reaching into another's ``_private``
helpers or machinery piling up at the top of ``poolbench/`` each make the structure harder to see, and
each creeps back one convenient import at a time.  The graph is read from the source (``ast``), so an
import inside a function counts like one at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "poolbench"
#: The plugin-facing core and the CLI entry: what may stay at the top of poolbench/.
MAX_TOP_LEVEL_MODULES = 16


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]):
    """(importer, imported module, imported name or None) for every poolbench-internal import."""
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, path.name == "__init__.py", node)
                if not target.startswith("poolbench"):
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    yield module, submodule if submodule in modules else target, alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        yield module, alias.name, None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(start):
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    edges = {module: set() for module in modules}
    private = []
    for importer, imported, name in _imports(modules):
        if imported in edges and imported != importer:
            edges[importer].add(imported)
        if name and name.startswith("_") and not name.startswith("__"):
            private.append(f"{importer} imports {imported}.{name}")
    return edges, private


def test_no_import_cycles_even_through_function_level_imports(graph):
    edges, _ = graph
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    """Guards the test above: a two-module cycle and a three-module one are both reported."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert _cycles(edges) == [["a", "b"], ["c", "d", "e"]] or sorted(_cycles(edges)) == [["a", "b"], ["c", "d", "e"]]


def test_no_module_imports_another_modules_private_names(graph):
    _, private = graph
    assert private == []


def test_machinery_lives_in_packages_by_job():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for package in ("commands", "flops", "gate", "measure", "models", "report", "run", "verify"):
        assert (PACKAGE / package / "__init__.py").is_file(), package


def test_every_folder_of_python_modules_is_a_regular_package():
    """A folder without ``__init__.py`` is a namespace package, which setup.py's package discovery leaves out
    of the wheel: an installed poolbench would then miss that whole job."""
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(str(f) for f in folders if not (f / "__init__.py").is_file()) == []


def test_in_tree_plugins_are_imported_from_this_checkout():
    """``poolbench.impls`` is the impls/ folder beside the imported poolbench, never another checkout's
    (an editable install of one tree must not feed its plugins to a second tree run with PYTHONPATH)."""
    import poolbench
    import poolbench.impls

    assert [Path(p) for p in poolbench.impls.__path__] == [PACKAGE.parent / "impls"]
    assert Path(poolbench.__file__).resolve().parent == PACKAGE


def test_every_public_name_a_module_declares_exists():
    """``__all__`` is each module's public face: a name moved or renamed away must leave it too
    (``from poolbench.run.runner import *`` failed on a stale entry after the runner lost ``run``)."""
    import importlib

    stale = []
    for module_name in sorted(name for name in _modules() if not name.endswith("__main__")):  # runs the CLI
        module = importlib.import_module(module_name)
        stale += [f"{module_name}.{name}" for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
    assert stale == []
