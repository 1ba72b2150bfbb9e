"""Every benchmark script imports names that exist."""

from pathlib import Path


def test_every_benchmark_script_imports_names_that_exist():
    """The benchmarks are not run by the suite; a refactor that moves a name must still not break them."""
    import ast
    import importlib

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    checked = 0
    for script in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepmim"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{script.name}: {node.module} has no {alias.name}"
                    checked += 1
    assert checked >= 10
