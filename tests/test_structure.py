"""The package's import structure stays true: one direction, no circles.

The packages are layered like the book's stages, and imports only go down:

    shared modules (errors, io, paths, downloads, outdir)
      < tokenizer < data < model < train < finetune < serve < cli < bench < the entry point (app, __main__)

Every ``import`` counts, at the top of a module or inside a function, and so do the lazy exports of a
package's ``__init__`` (a name looked up in a ``_EXPORTS``/``_LAZY`` table is an import of its module).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gptlab"
LAYERS = ["tokenizer", "data", "model", "train", "finetune", "evaluation", "serve", "cli", "bench"]
ENTRY_POINTS = {"gptlab.app", "gptlab.__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _rank(module: str) -> int:
    """The layer of a module: -1 for the shared modules at the bottom, len(LAYERS) for the entry points."""
    if module in ENTRY_POINTS:
        return len(LAYERS)
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the gptlab modules it imports (``from pkg import submodule`` counts as the submodule)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("gptlab"):
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                # `from pkg import submodule` depends on the submodule; `from pkg import name`, on pkg.
                targets += [s for s in subs if s in modules]
                if any(s not in modules for s in subs):
                    targets.append(node.module)
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names if alias.name.startswith("gptlab")]
            elif isinstance(node, ast.Assign) and path.name == "__init__.py" and isinstance(node.value, ast.Dict):
                if any(isinstance(t, ast.Name) and t.id in ("_EXPORTS", "_LAZY") for t in node.targets):
                    targets += [v.value for v in node.value.values
                                if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
        if node_is_relative := [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]:
            raise AssertionError(f"{path}: relative import at line {node_is_relative[0].lineno}; use gptlab.…")
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or round a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_module_imports_a_layer_above_it():
    modules = _modules()
    upward = [f"{a} -> {b}" for a, targets in sorted(_imports(modules).items()) for b in sorted(targets)
              if _rank(b) > _rank(a)]
    assert not upward, "imports that go up a layer:\n  " + "\n  ".join(upward)


def test_no_import_circles():
    circles = _strongly_connected(_imports(_modules()))
    assert not circles, "modules that import each other:\n  " + "\n  ".join(" <-> ".join(c) for c in circles)


def test_the_checker_sees_what_it_must():
    """The two rules catch an upward import and a circle (so a passing result means something)."""
    graph = {"gptlab.model.a": {"gptlab.train.b"}, "gptlab.train.b": {"gptlab.model.a"}}
    assert _strongly_connected(graph) == [["gptlab.model.a", "gptlab.train.b"]]
    assert _rank("gptlab.train.b") > _rank("gptlab.model.a") > _rank("gptlab.errors")
    edges = _imports(_modules())
    assert "gptlab.model.gpt" in edges["gptlab.model"]  # lazy exports are edges
    assert any(t.startswith("gptlab.model") for t in edges["gptlab.train.trainer"])
