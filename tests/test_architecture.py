"""The layering, read from the source (AST), so a violation fails before anything runs:

* no import cycle anywhere among first-party modules, nor between sub-packages (``mrcom_train.rl`` ↔
  ``mrcom_train.datasets``…), counting imports inside functions too (they are still dependencies, only hidden);
* ``mrcom_core`` imports neither ``mrcom_train`` nor ``mrcom_export``; ``mrcom_export`` never imports
  ``mrcom_train``;
* the torch-free side of ``mrcom_export`` (``runtime``, ``vector_env``, ``bundle``, ``manifest``) never
  reaches torch, directly or through any first-party module it loads (package ``__init__`` files included);
* no source file grows past the size at which it stops being one readable place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mrcom_core": ROOT / "mrcom_core", "mrcom_train": ROOT / "mrcom_train", "mrcom_export": ROOT / "export"}
TORCH_FREE = ("mrcom_export.runtime", "mrcom_export.vector_env", "mrcom_export.bundle", "mrcom_export.manifest",
              "mrcom_core.errors", "mrcom_core.io.files")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """First-party modules and third-party top-level names ``name`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{module}.{alias.name}"
                out.add(full if full in MODULES else module)
    return {m if m in MODULES else m.split(".")[0] for m in out}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_the_scan_sees_the_project():
    assert {"mrcom_core.registry", "mrcom_core.steps", "mrcom_export.runtime", "mrcom_train.cli"} <= set(MODULES)
    assert "mrcom_core.steps" in GRAPH["mrcom_core.losses"] and "torch" in GRAPH["mrcom_core.steps"]
    assert "mrcom_train.datasets.dataset" in GRAPH["mrcom_train.datasets.collect"]  # relative imports resolve


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (node → the nodes it imports) as ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    first_party = {n: {m for m in deps if m in MODULES and m != n} for n, deps in GRAPH.items()}
    cycle = _cycle(first_party)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def _unit(name: str) -> str:
    """A module's sub-package (``mrcom_train.rl`` for ``mrcom_train.rl.adapt``), or the module itself at a
    package's top level."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 else name


def test_no_import_cycles_between_subpackages():
    units: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        for dep in deps:
            if dep in MODULES and _unit(dep) != _unit(name) and dep not in _parents(name):
                units.setdefault(_unit(name), set()).add(_unit(dep))
    cycle = _cycle(units)
    assert cycle is None, "sub-package import cycle: " + " → ".join(cycle)
    assert "mrcom_train.rl" in units and "mrcom_train.agents" in units["mrcom_train.rl"]  # the scan sees them


@pytest.mark.parametrize("layer,forbidden", [("mrcom_core", ("mrcom_train", "mrcom_export")),
                                             ("mrcom_export", ("mrcom_train",))])
def test_layers_import_one_way(layer, forbidden):
    bad = {name: sorted(d for d in deps if d.split(".")[0] in forbidden)
           for name, deps in GRAPH.items() if name.split(".")[0] == layer}
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_runtime_side_never_reaches_torch(module):
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        assert "torch" not in GRAPH[name], f"{module} reaches torch through {name}"
        todo += [d for d in GRAPH[name] if d in MODULES] + [p for p in _parents(name) if p in MODULES]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_too_long(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines"
