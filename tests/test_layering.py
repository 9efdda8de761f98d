"""The house's import rules, read from the source (every import statement, at module level or inside a function):
the libraries never import ``experiments``; ``runtime`` imports none of the three systems; no launcher imports
another launcher (``demo`` runs each of them and ``plan`` loads their plans by name, so they are the exceptions);
and no package has an import cycle between its modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bfpo", "local_learning", "recurrent", "runtime", "experiments")
LIBRARIES = ("bfpo", "local_learning", "recurrent", "runtime")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, as absolute names (``from a import b`` counts as ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


MODULES = modules()
GRAPH = {name: {m for m in imports_of(path, name) if m in MODULES} for name, path in MODULES.items()}


def launchers() -> set[str]:
    return {name for name, path in MODULES.items()
            if name.startswith("experiments.") and "__main__" in path.read_text() and path.name != "__main__.py"}


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_never_import_experiments(library):
    bad = sorted((n, m) for n, deps in GRAPH.items() if n.split(".")[0] == library
                 for m in deps if m.split(".")[0] == "experiments")
    assert not bad, bad


def test_runtime_imports_none_of_the_systems():
    bad = sorted((n, m) for n, deps in GRAPH.items() if n.startswith("runtime")
                 for m in deps if m.split(".")[0] in ("bfpo", "local_learning", "recurrent"))
    assert not bad, bad


def test_no_launcher_imports_another():
    mains = launchers()
    assert {"experiments.bfpo_train", "experiments.lsrl_stability", "experiments.bench.lsrl_targets"} <= mains
    allowed = {"experiments.demo", "experiments.plan"}
    bad = sorted((n, m) for n, deps in GRAPH.items() if n.startswith("experiments") and n not in allowed
                 for m in deps if m in mains and m != n)
    assert not bad, bad


def test_no_import_cycles():
    """Depth-first search over module imports (a package's ``__init__`` re-exporting its modules excluded: it
    sits above them)."""
    graph = {n: {m for m in deps if m != n and MODULES[m].name != "__init__.py"} for n, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
