"""The import graph of src/deepmim, read from the source: no circles, and every folder imports only
the folders below it (docs/ARCHITECTURE.md draws the same picture).

Every import counts: at module level, inside functions, and `__import__` / `importlib.import_module`
calls with a literal name. Importing `a.b.c` also runs the package `a.b`, so it counts as an edge
to `a.b` too (unless `a.b` contains the importer, whose import is already under way).
"""

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# folder -> the folders it may import (its own modules aside). The root package (deepmim/__init__.py,
# __main__.py) sits on top and may import anything.
ALLOWED = {
    "config": set(),
    "checkpoint": {"config"},
    "models": {"config", "checkpoint"},
    "targets": {"config", "checkpoint", "models"},
    "data": {"config", "models"},
    "training": {"config", "checkpoint"},
    "analysis": {"config", "checkpoint", "models", "targets", "data", "training"},
    "tasks": {"config", "checkpoint", "models", "targets", "data", "training", "analysis"},
    "cli": {"config", "checkpoint", "models", "targets", "data", "training", "analysis", "tasks", ""},
}


def module_names(root: Path, package: str) -> Dict[str, Path]:
    """{dotted module name: file} of every .py under root/package (a package is its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> List[str]:
    """Dotted names this module's code imports, wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names]  # the module, or base when a name
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (getattr(node.func, "id", None) == "__import__" or getattr(node.func, "attr", None) == "import_module")
        ):
            names.append(node.args[0].value)
    return names


def import_graph(root: Path, package: str) -> Dict[str, Set[str]]:
    """module -> the modules of `package` whose code runs when it imports what it imports."""
    modules = module_names(root, package)
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            while name and name not in modules:  # `from pkg import name`: name is no module, pkg is
                name = name.rpartition(".")[0]
            if not name or name == module:
                continue
            graph[module].add(name)
            parent = name.rpartition(".")[0]
            while parent and not (module == parent or module.startswith(parent + ".")):
                graph[module].add(parent)  # importing a.b.c runs a.b first
                parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

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
                found.append(_closed_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _closed_path(graph: Dict[str, Set[str]], component: Set[str]) -> List[str]:
    """One circle through a strongly connected component, for the failure message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return path + [start]
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return path + [nxt[0]]
        path.append(fresh[0])
        seen.add(fresh[0])


def folder_of(module: str) -> str:
    """deepmim.models.encoder -> models; deepmim.checkpoint -> checkpoint; deepmim -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else ""


def test_the_package_has_no_import_cycles():
    graph = import_graph(SRC, "deepmim")
    assert len(graph) > 50 and "deepmim.models.deepmim" in graph  # the scan found the package
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_folder_imports_only_the_folders_below_it():
    graph = import_graph(SRC, "deepmim")
    assert {folder_of(m) for m in graph} - {""} == set(ALLOWED), "a folder without a place in ALLOWED"
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if folder_of(m) and folder_of(t) != folder_of(m) and folder_of(t) not in ALLOWED[folder_of(m)]
    )
    assert not wrong, "imports pointing up or sideways:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "statement",
    [
        "from . import b",
        "from .b import thing",
        "import pkg.b",
        "def f():\n    from .b import thing",
        "__import__('pkg.b')",
    ],
)
def test_the_scan_sees_every_kind_of_import_and_reports_the_circle(tmp_path, statement):
    """A circle a -> b -> a in a made-up package, written each way an import can be written."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(statement + "\n")
    (package / "b.py").write_text("from .a import x\n")
    (package / "c.py").write_text("from . import a\n")  # points into the circle, is not part of it
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_importing_a_submodule_runs_its_package(tmp_path):
    """pkg/__init__ importing pkg.sub.x while pkg.sub.x imports pkg.y, whose package is pkg: a circle
    through the package's __init__, the kind `models/__init__` <-> `targets` used to make."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from .x import thing\n")
    (tmp_path / "pkg" / "sub" / "x.py").write_text("from ..y import other\n")
    (tmp_path / "pkg" / "y.py").write_text("from .sub import thing\n")
    found = cycles(import_graph(tmp_path, "pkg"))
    assert len(found) == 1 and set(found[0]) == {"pkg.sub", "pkg.sub.x", "pkg.y"}
