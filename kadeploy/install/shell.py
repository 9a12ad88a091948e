"""The system's tools, as an install runs them: a failure is one line, the
tool's own last word on stderr."""
from __future__ import annotations

import subprocess
from typing import List, Optional


class StepFailed(RuntimeError):
    """The current step failed; the message is its one-line reason."""


def run(argv: List[str], what: str, env: Optional[dict] = None, input: Optional[str] = None) -> str:
    """Run a command; StepFailed with its last line of stderr when it fails."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, input=input)
    except FileNotFoundError:
        raise StepFailed(f"{argv[0]} is not installed")
    if r.returncode != 0:
        lines = [l.strip() for l in (r.stderr or r.stdout).strip().splitlines()
                 if l.strip() and "dmesg(1)" not in l]
        raise StepFailed(f"{what} failed (exit status {r.returncode})" + (f": {lines[-1]}" if lines else ""))
    return r.stdout
