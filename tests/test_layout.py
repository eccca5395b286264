"""The core's layout by stage: no import circle, no pair of folders importing each other, old names kept.

The imports are read from the source (every ``import`` and ``from ... import``, at module level and
inside functions), so a circle that only closes at run time is found too.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set

import pytest

from ser_plugins.moved import MOVED

PACKAGE = Path(__file__).resolve().parents[1] / "ser_plugins"
STAGES = ("plugins", "runtime", "data", "training", "results", "launch", "deploy", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: Set[str]) -> Set[str]:
    """The ser_plugins modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    found: Set[str] = set()
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    resolved = set()
    for name in found:
        name = MOVED.get(name, name)
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("ser_plugins") and name != this:
            resolved.add(name)
    return resolved


def graph() -> Dict[str, Set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) for m, p in mods.items()}


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else "core"


def test_no_import_circle():
    assert circles(graph()) == []


def test_no_two_stages_import_each_other():
    edges = graph()
    pairs: Dict[tuple, List[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            a, b = stage_of(source), stage_of(target)
            if a != b and "core" not in (a, b):
                pairs.setdefault((a, b), []).append(f"{source} -> {target}")
    both_ways = {(a, b): (pairs[(a, b)], pairs[(b, a)]) for (a, b) in pairs if (b, a) in pairs and a < b}
    assert both_ways == {}


def test_every_stage_is_a_folder_and_few_files_stay_on_top():
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "errors.py", "model.py", "moved.py", "recipe.py", "task.py", "testing.py"]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_is_the_moved_module(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_the_public_faces_keep_their_names():
    import ser_plugins
    from ser_plugins.launch import Job, JobResult, Launcher  # the launcher contract
    from ser_plugins.testing import check_upstream  # noqa: F401

    assert callable(ser_plugins.create_upstream) and ser_plugins.Upstream.__module__ == "ser_plugins.plugins.contracts"
    assert {Job.__module__, JobResult.__module__, Launcher.__module__} == {"ser_plugins.launch.jobs"}
    from ser_plugins.cli import main

    assert callable(main)
