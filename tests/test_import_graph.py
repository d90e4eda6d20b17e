"""The package's import graph has no circle, and every module imports on its own.

The graph counts every ``import`` of a ``crisscross`` module anywhere in a file, including the
ones deferred into a function body: a deferred import hides a circle from the interpreter but
not from the reader (``a`` needs ``b`` needs ``a``), and it is how circles crept in before
(``preprocess``: build -> engines -> build, samples -> engines). Imports under
``if TYPE_CHECKING:`` are left out (they never run), and so are those under
``if __name__ == "__main__":`` (they run only when the file is a script, not an imported module).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package `crisscross`
PACKAGE = "crisscross"
SKIP_DIRS = {"tests", "bench", "docs", "build", "dist"}


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (not the tests)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or rel.parts[0].startswith(".") or any(p.endswith(".egg-info") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = ast.unparse(node.test) if isinstance(node, ast.If) else ""
        if "TYPE_CHECKING" in test or test.replace("'", '"') == '__name__ == "__main__"':
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _skipped_nodes(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_sees_a_deferred_import_circle(tmp_path):
    """The check itself: a circle made only of imports inside functions is found."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from crisscross.pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from crisscross.pkg.c import x\n")
    (tmp_path / "pkg" / "c.py").write_text("def g():\n    import crisscross.pkg.a\n")
    (tmp_path / "pkg" / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from crisscross.pkg import a\nfrom . import b\n"
                                           "if __name__ == '__main__':\n    from crisscross.pkg import c\n")
    graph = import_graph(tmp_path)
    assert graph["crisscross.pkg.d"] == {"crisscross.pkg.b"}  # TYPE_CHECKING, __main__ left out; relative resolved
    assert find_cycles(graph) == [["crisscross.pkg.a", "crisscross.pkg.b", "crisscross.pkg.c"]]


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "crisscross.preprocess.build" in graph and "crisscross.train.trainer" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import circles (counting imports inside functions):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_every_module_imports():
    """One fresh interpreter imports every module of the package (an import-time error anywhere)."""
    names = sorted(package_modules())
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


# the modules that formed the circle import each in an interpreter of its own (no hidden order
# dependence); one interpreter per module of the whole package would cost minutes on 2 cores
@pytest.mark.parametrize("module", sorted(m for m in package_modules() if m.startswith("crisscross.preprocess")))
def test_each_preprocess_module_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
