"""The package's layers only point down: read from every module's ``ast`` (imports inside functions included).

Bottom: ``registry``, ``fileio``, ``version``, ``limits`` (config keys' ranges, declared with the fields),
``plugins`` (imports user modules), ``batch`` (the contract between data and methods), ``losses``, ``patch_swap``,
``config``. Then ``engine`` (utilities), ``models``, ``data``, ``methods``, ``tasks``, ``run`` (orchestration),
``bench`` and ``cli`` at the top. Imports under ``if TYPE_CHECKING:`` are annotations only (never executed) and are
not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "src" / "selfdistill"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module, type_checking: bool = False) -> list[ast.ImportFrom | ast.Import]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:`` (included with
    ``type_checking``)."""
    found: list[ast.ImportFrom | ast.Import] = []

    def visit(node: ast.AST) -> None:
        if (not type_checking and isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """Module → the package's modules it imports (``from . import x`` counts as importing ``x``); with
    ``type_checking``, imports under ``if TYPE_CHECKING:`` count too."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text()), type_checking):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in paths}
                continue
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                deps.add(sub if sub in paths else target)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


GRAPH = import_graph()


def _under(module: str, *packages: str) -> bool:
    return any(module == f"selfdistill.{p}" or module.startswith(f"selfdistill.{p}.") for p in packages)


def test_the_import_graph_has_no_cycle():
    assert cycles(GRAPH) == [], "import cycles (each list is one): read the layers in this file's docstring"


def test_the_checker_sees_cycles_and_function_level_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("import os\ndef f():\n    from . import x\nif TYPE_CHECKING:\n    from . import y\n")
    assert [type(n).__name__ for n in _runtime_imports(tree)] == ["Import", "ImportFrom"]
    assert [type(n).__name__ for n in _runtime_imports(tree, type_checking=True)] == ["Import", "ImportFrom",
                                                                                       "ImportFrom"]


def test_the_data_package_has_no_cycle_even_through_type_checking_imports():
    graph = import_graph(type_checking=True)
    data = {m: {d for d in deps if _under(d, "data")} for m, deps in graph.items() if _under(m, "data")}
    assert cycles(data) == [], "import cycles in selfdistill.data (annotation-only imports included)"


def test_engine_imports_no_method_task_or_orchestration():
    for module, deps in GRAPH.items():
        if _under(module, "engine"):
            bad = [d for d in deps if _under(d, "methods", "tasks", "run", "bench", "cli", "data", "models")]
            assert not bad, f"{module} imports {bad}: the engine holds utilities that know no method or task"


def test_lower_layers_import_nothing_above_them():
    bottom = ("registry", "fileio", "version", "limits", "plugins", "batch", "losses", "patch_swap", "config")
    above = {"models": ("data", "methods", "tasks", "run", "bench", "cli"),
             "data": ("methods", "tasks", "run", "bench", "cli"),
             "methods": ("tasks", "run", "bench", "cli", "data"),
             "tasks": ("run", "bench", "cli"),
             "run": ("bench", "cli")}
    for module, deps in GRAPH.items():
        if _under(module, *bottom):
            allowed = ("registry", "fileio", "version", "limits")
            assert not [d for d in deps if not _under(d, *allowed)], f"{module} is in the bottom layer: {deps}"
        for layer, forbidden in above.items():
            if _under(module, layer):
                bad = [d for d in deps if _under(d, *forbidden)]
                assert not bad, f"{module} ({layer}) imports {bad} from a layer above"


# what a method module may import: the batch contract, losses, the patch swap, the methods' bases, the engine's
# utilities, and config (option errors; born-again generations build their stages' run configs). Also:
# models.features (the `feature_taps` requirement: BYOT, USKD and Zipf read intermediate features of the
# network), and for methods/teacher.py, the base of the teacher-based methods, the model zoo (it builds teachers).
METHOD_IMPORTS = ("batch", "losses", "patch_swap", "config", "registry", "methods.base", "methods.teacher",
                  "engine", "models.features")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _under(m, "methods") and m != "selfdistill.methods"))
def test_method_modules_import_only_what_a_method_may(module):
    allowed = METHOD_IMPORTS + (("models",) if module == "selfdistill.methods.teacher" else ())
    bad = [d for d in GRAPH[module] if not _under(d, *allowed)]
    assert not bad, f"{module} imports {bad}; a method may import only {', '.join(allowed)}"
