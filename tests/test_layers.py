"""The package's import graph: imports flow one way, down the layers of dev/DESIGN.md.

Every import counts, at the top of a file or inside a function. A module may import from its own unit
(``chatforge/<unit>/`` or the top-level file ``<unit>.py``) or from a unit on a lower layer; within a
unit there may be no import circle. Imports inside functions are only for heavy optional dependencies
loaded lazily on purpose, marked by a comment with the word "lazy" on the line or the line above.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "chatforge"


def layer_table() -> dict[str, int]:
    """unit -> layer, parsed from the table in dev/DESIGN.md (rows ``| layer | units | ... |``)."""
    text = (REPO / "dev" / "DESIGN.md").read_text()
    ranks: dict[str, int] = {}
    for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*([^|]+)\|", text, flags=re.M):
        for unit in re.findall(r"`([\w.]+)`", m.group(2)):
            ranks[unit] = int(m.group(1))
    assert ranks, "dev/DESIGN.md: no layer table found"
    return ranks


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(dotted: str) -> bool:
    p = REPO.joinpath(*dotted.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported chatforge module, line, inside a function) for every import of chatforge in ``path``."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    inner_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            # `from chatforge.x import y` may name a submodule y
            names = [base] + [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
        else:
            continue
        out += [(n, node.lineno, node.lineno in inner_lines) for n in names if n.split(".")[0] == "chatforge"]
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        g[module_name(path)] = {m for m, _, _ in imports(path) if m != "chatforge"}
    return g


def test_every_unit_has_a_layer():
    ranks = layer_table()
    units = {unit_of(m) for m in graph()}
    missing = sorted(units - set(ranks))
    assert not missing, f"dev/DESIGN.md layer table lacks {missing}"


def test_imports_only_flow_down():
    ranks = layer_table()
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        here = module_name(path)
        for target, line, _ in imports(path):
            if target == "chatforge":
                continue
            a, b = unit_of(here), unit_of(target)
            if a != b and ranks[b] >= ranks[a]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {here} (layer {ranks[a]}) imports {target} (layer {ranks[b]})")
    assert not bad, "imports that run sideways or back up:\n" + "\n".join(bad)


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g.get(m, ())):
            n = n if n in g else n.rsplit(".", 1)[0]
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n in g and not state.get(n):
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if not state.get(m):
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_only_marked_lazy_dependencies():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(f):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    mod = n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
                    near = " ".join(lines[max(0, n.lineno - 2):n.lineno])
                    if (mod or "").startswith("chatforge") or "lazy" not in near.lower():
                        bad.append(f"{path.relative_to(REPO)}:{n.lineno}: import {mod}")
    assert not bad, "imports inside functions (move them to the top, or mark a heavy optional one lazy):\n" + "\n".join(bad)


@pytest.mark.parametrize("command", sorted(importlib.import_module("chatforge.cli").COMMANDS))
def test_every_cli_command_module_imports(command):
    """A renamed module must fail here, not be reported to a user as 'not available yet'."""
    module = importlib.import_module(importlib.import_module("chatforge.cli").COMMANDS[command][0])
    assert callable(getattr(module, "cli", None)), f"{module.__name__} has no cli(argv)"
