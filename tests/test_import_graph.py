"""The package layering, checked on the import graph (every import, function-level ones too).

- no import cycle among the modules of `distill`, `losses`, `teachers` and `students`;
- the core (`distill.*`) never imports a plug-in package (`losses`, `teachers`, `students`)
  by name: configs reach them by dotted path;
- the engine (`distill.engine.*`) never imports `distill.recipe`, which builds on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "losses", "teachers", "students")
PLUGINS = ("losses", "teachers", "students")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `PACKAGES` under `root`."""
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    return mods


def _targets(module: str, is_pkg: bool, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """What `node` imports: `from pkg import sub` is the submodule, not the package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative import
        here = module.split(".") if is_pkg else module.split(".")[:-1]
        here = here[: len(here) - node.level + 1]
        base = ".".join(here + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of `mods` it imports (the longest known prefix of each name)."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(name, path.name == "__init__.py", node, mods):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if mod.split(".")[0] == "distill" and dep.split(".")[0] in PLUGINS:
                bad.append(f"core -> plug-in: {mod} imports {dep}")
            if mod.startswith("distill.engine") and dep == "distill.recipe":
                bad.append(f"engine -> recipe: {mod} imports {dep}")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph(module_files())


def test_graph_sees_the_packages(graph):
    # the walk finds real edges, function-level imports included
    assert "distill.modeling.audio_llm" in graph
    assert "distill.modeling.audio_encoder" in graph["distill.modeling.audio_llm"]
    assert "distill.contracts" in graph["losses.token_kl"]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_core_never_imports_plugins_and_engine_never_imports_recipe(graph):
    assert layering_violations(graph) == []


def test_checks_catch_what_they_guard():
    """The checkers themselves: a cycle, a core -> plug-in and an engine -> recipe arrow."""
    g = {
        "distill.a": {"distill.b"},
        "distill.b": {"distill.c"},
        "distill.c": {"distill.a"},
        "distill.engine.loop": {"distill.recipe"},
        "distill.recipe": {"losses.ce"},
        "losses.ce": set(),
    }
    assert cycles(g) == [["distill.a", "distill.b", "distill.c"]]
    assert layering_violations(g) == [
        "engine -> recipe: distill.engine.loop imports distill.recipe",
        "core -> plug-in: distill.recipe imports losses.ce",
    ]


def test_relative_imports_resolve(tmp_path):
    pkg = tmp_path / "distill"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import x\n")
    (pkg / "sub" / "x.py").write_text("from ..y import thing\n")
    (pkg / "y.py").write_text("def f():\n    from distill.sub import x\n")
    for other in PLUGINS:
        (tmp_path / other).mkdir()
    g = import_graph(module_files(tmp_path))
    assert g["distill.sub"] == {"distill.sub.x"}
    assert g["distill.sub.x"] == {"distill.y"}
    assert g["distill.y"] == {"distill.sub.x"}  # the submodule, not the package
    assert cycles(g) == [["distill.sub.x", "distill.y"]]
