"""Benchmarks measure kadeploy as an installed copy runs: from byte code.

pip compiles a package's modules when it installs it. A source tree (an editable
install, a worktree on PYTHONPATH) has byte code only where an earlier import wrote it,
and none at all under PYTHONDONTWRITEBYTECODE: then every process a benchmark starts
compiles each kadeploy module it imports (18-49 ms more for a server's imports here,
bench/RESULTS.md), which no installed node pays.
"""
from __future__ import annotations

import compileall
import os

PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_tree(package_dir: str = PACKAGE) -> bool:
    """Write the byte code of every module under `package_dir` that lacks a fresh one;
    False if some could not be written (a read-only tree without it)."""
    return bool(compileall.compile_dir(package_dir, quiet=2))


def as_installed() -> str:
    """Compile this kadeploy's byte code and let the processes started from here on
    (which inherit os.environ) use and write byte code; what a result records."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return "compiled" if compile_tree() else "partly from source (the tree is not writable)"
