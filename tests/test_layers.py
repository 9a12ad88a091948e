"""The layout is the architecture: these tests fail when an import crosses it.

Every `import` of a kadeploy module is read from the source (top level and inside
functions alike), so a cycle hidden in a function body counts too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kadeploy"
PURE = "kadeploy.core"
IO_MODULES = {"asyncio", "socket", "subprocess", "select", "selectors", "threading", "os"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Set[str]:
    """Every module `path` imports, as absolute names (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from pkg import sub` imports the submodule when there is one.
            for alias in node.names:
                found.add(f"{mod}.{alias.name}")
    return found


def graph() -> Dict[str, Set[str]]:
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    g: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        g[name] = {m for m in imports_of(path) if m in mods and m != name}
    return g


def find_cycle(g: Dict[str, Set[str]]) -> List[str]:
    """One import cycle (a list of modules, first repeated last), or []."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(g, WHITE)
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        colour[n] = GREY
        stack.append(n)
        for m in sorted(g[n]):
            # A package's __init__ importing its own submodules is not a cycle.
            if n.startswith(m + ".") and colour[m] == GREY:
                continue
            if colour[m] == GREY:
                return stack[stack.index(m):] + [m]
            if colour[m] == WHITE and (c := visit(m)):
                return c
        stack.pop()
        colour[n] = BLACK
        return []

    for n in sorted(g):
        if colour[n] == WHITE and (c := visit(n)):
            return c
    return []


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    # The oracle itself: a cycle through three modules is found, a chain is not.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_pure_core_does_no_io(path):
    imported = imports_of(path)
    io = {m for m in imported if m.split(".")[0] in IO_MODULES}
    assert not io, f"{path.name} is in the pure core but imports {sorted(io)}"
    allowed = (PURE, "kadeploy.version", "kadeploy.defaults", "kadeploy.errors")
    outside = {m for m in imported if m.startswith("kadeploy.")
               and not any(m == a or m.startswith(a + ".") for a in allowed)}
    assert not outside, f"{path.name} is in the pure core but imports {sorted(outside)}"


def test_lab_never_imports_the_cli():
    # The lab's commands take shared options from kadeploy.options; importing
    # kadeploy.cli from the lab made the bench <-> cli cycle.
    g = graph()
    lab = sorted(m for m in g if m == "kadeploy.lab" or m.startswith("kadeploy.lab."))
    assert lab, "no lab modules found"
    offenders = [m for m in lab if "kadeploy.cli" in g[m]]
    assert not offenders, f"lab modules import kadeploy.cli: {offenders}"


def test_lab_is_not_loaded_by_the_two_commands():
    # ka-d-server and ka-d-client start without the benchmark lab (and its imports).
    code = ("import sys, kadeploy.cli\n"
            "from kadeploy.cli import server_command, client_command\n"
            "sys.argv = ['x']\n"
            "print(sorted(m for m in sys.modules if m.startswith('kadeploy.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
