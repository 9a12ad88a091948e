"""The server's side of an install: load and check the manifest and node table
once, name the install producer, give each placed node its payload (the manifest
and its own values), and judge the steps each node reports."""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from typing import List, Optional

from ..errors import EXIT_USAGE, KadeployError
from . import status
from .manifest import Manifest, ManifestError, load_manifest
from .nodes import NodeTable, load_table, node_values

# Place carries the payload; the control protocol's body limit is 64 KiB.
MAX_MANIFEST = 48 * 1024


@dataclass
class ServerInstall:
    path: str
    manifest: Manifest
    table: Optional[NodeTable] = None
    strict: bool = False
    reboot: bool = False

    @classmethod
    def load(cls, path: str, table_path: Optional[str], strict: bool, reboot: bool) -> "ServerInstall":
        try:
            m = load_manifest(path)
            table = load_table(table_path) if table_path else None
        except ManifestError as e:
            raise KadeployError(str(e), exit_code=EXIT_USAGE)
        if len(m.text.encode()) > MAX_MANIFEST:
            raise KadeployError(f"{path}: the manifest is over {MAX_MANIFEST // 1024} KiB",
                                exit_code=EXIT_USAGE)
        if not any(p.source for p in m.partitions):
            raise KadeployError(f"{path}: no partition has a source: nothing to send",
                                exit_code=EXIT_USAGE)
        return cls(path=path, manifest=m, table=table, strict=strict, reboot=reboot)

    def producer(self) -> str:
        argv = [sys.executable, "-m", "kadeploy.install.produce", self.path,
                "--digest", self.manifest.digest]
        return shlex.join(argv + (["--strict"] if self.strict else []))

    def payload(self, index: int, address: str, hostname: str) -> str:
        """What Place carries to the node at `index`."""
        try:
            values = node_values(self.manifest.hostname, self.table, index, address, hostname)
        except KeyError as e:
            return json.dumps({"refused": e.args[0]})
        return json.dumps({"manifest": self.manifest.text, "node": values, "reboot": self.reboot})


def reported_steps(text: Optional[str]) -> List[dict]:
    """The steps a node reported in Done ([] when none, or when they do not parse)."""
    if not text:
        return []
    try:
        return status.load(text)
    except status.StatusError as e:
        return [{"step": "report", "status": "failed", "detail": str(e), "seconds": 0.0,
                 "bytes": None, "verified": None}]


def install_gap(steps: List[dict]) -> Optional[str]:
    """Why a node that says it is done is not installed (None: it is)."""
    if status.all_done(steps):
        return None
    return status.first_failure(steps) or "the node did not report every step of the install"
