"""Per-step statuses of one node's install: written by the node's installer as
each step begins and ends, carried to the server in Done, checked there, and shown
in the report one row per node and step."""
from __future__ import annotations

import json
from typing import List, Optional

from ..files import write_json_atomically

STATUSES = ("ok", "warning", "failed", "running")
MAX_STEPS = 200


class StatusError(ValueError):
    """A step list that is not one (from a broken or foreign node)."""


class StepLog:
    """The installer's record, rewritten whole (atomically) after every change, so a
    killed installer still leaves which step it was in."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.steps: List[dict] = []

    def begin(self, name: str) -> None:
        self.steps.append({"step": name, "status": "running", "detail": "", "seconds": 0.0,
                           "bytes": None, "verified": None})
        self._save()

    def end(self, name: str, status: str, detail: str, seconds: float,
            bytes: Optional[int] = None, verified: Optional[bool] = None) -> None:
        row = self.steps[-1]
        assert row["step"] == name
        row.update(status=status, detail=detail, seconds=round(seconds, 3), bytes=bytes,
                   verified=verified)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        write_json_atomically(self.path, self.steps, prefix=".kadeploy-status-")


def load(text: str) -> List[dict]:
    """A checked step list; StatusError otherwise."""
    try:
        steps = json.loads(text)
    except ValueError:
        raise StatusError("the install steps are not JSON") from None
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        raise StatusError("the install steps are not a list")
    types = {"step": (str,), "status": (str,), "detail": (str,), "seconds": (int, float),
             "bytes": (int, type(None)), "verified": (bool, type(None))}
    for row in steps:
        if not isinstance(row, dict) or set(row) != set(types):
            raise StatusError("an install step has the wrong fields")
        for key, accept in types.items():
            v = row[key]
            if not isinstance(v, accept) or (key in ("bytes", "seconds") and isinstance(v, bool)):
                raise StatusError(f"install step field {key!r} has the wrong type")
        if row["status"] not in STATUSES:
            raise StatusError(f"unknown install step status {row['status']!r}")
    return steps


def first_failure(steps: List[dict]) -> Optional[str]:
    """'step NAME: reason' of the first failed (or interrupted) step."""
    for row in steps:
        if row["status"] == "failed":
            return f"step {row['step']}: {row['detail']}"
        if row["status"] == "running":
            return f"step {row['step']}: interrupted"
    return None


def all_done(steps: List[dict]) -> bool:
    return bool(steps) and all(r["status"] in ("ok", "warning") for r in steps) \
        and steps[-1]["step"] == "unmount"
