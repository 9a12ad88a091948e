"""The netboot kit's nodes in the install server's progress display.

`kadeploy netboot serve` keeps every node's boot step in its tracker, the one source
of truth, and saves it on each step, atomically, in its state file (nodes.json). The
install server the kit starts is given that file (``ka-d-server --boot-states``); at
each refresh of its progress it reads the file and adds a row for every node the kit
boots that has not registered yet, with its boot step (dhcp ack, ipxe script, kernel,
initrd, network, installing...). Once the node registers, the server's own row (its
data progress) takes over. Parsing and matching are pure; `BootStates.read` is the
only I/O.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from kadeploy.view.progress import NodeView

# The state of a row that the server knows only from the kit.
BOOTING = "booting"


@dataclass(frozen=True)
class BootNode:
    """One node as the kit last saw it."""
    name: str
    mac: str
    ip: Optional[str]
    step: str
    detail: str
    failed: bool


def parse(text: str) -> List[BootNode]:
    """The nodes the kit boots (not those it ignores), from its state file's text;
    ValueError when the text is not such a file."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("nodes", []), list):
        raise ValueError("not a netboot state file (no list of nodes)")
    out = []
    for n in data.get("nodes", []):
        try:
            if n["boot"] == "ignore":
                continue
            out.append(BootNode(name=str(n["name"]), mac=str(n["mac"]), ip=n.get("ip") or None,
                                step=str(n["step"]), detail=str(n.get("detail") or ""),
                                failed=bool(n.get("failed"))))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a node entry lacks {e}")
    return out


def booting_rows(nodes: Iterable[BootNode], registered: Iterable[Tuple[str, str]]) -> List[NodeView]:
    """Rows for the nodes that have not registered with the server yet. `registered`
    holds the (host name, address) of each registered node: a node counts as
    registered under its table name (the install system takes it as its host name)
    or under the address its DHCP lease gave it."""
    names, addresses = set(), set()
    for hostname, address in registered:
        names.add(hostname)
        addresses.add(address)
    return [NodeView(position=0, name=n.name, parent="-", state=BOOTING, bytes=0, rate=0.0,
                     error=n.detail if n.failed else "", step=n.step)
            for n in nodes if n.name not in names and (n.ip is None or n.ip not in addresses)]


class BootStates:
    """The kit's state file, read at each refresh of the server's progress. A file not
    there yet or not readable shows no booting nodes, with one warning per new reason."""

    def __init__(self, path: str, log: Optional[logging.Logger] = None) -> None:
        self.path = path
        self.log = log or logging.getLogger("kadeploy.server")
        self._last_problem: Optional[str] = None

    def read(self) -> List[BootNode]:
        try:
            with open(self.path, encoding="utf-8") as f:
                nodes = parse(f.read())
        except OSError as e:
            return self._problem(f"cannot read {self.path}: {e.strerror}")
        except ValueError as e:
            return self._problem(f"{self.path}: {e}")
        self._last_problem = None
        return nodes

    def _problem(self, why: str) -> List[BootNode]:
        if why != self._last_problem:
            self.log.warning("boot states: %s; the progress shows only registered nodes", why)
            self._last_problem = why
        return []

    def rows(self, registered: Iterable[Tuple[str, str]]) -> List[NodeView]:
        return booting_rows(self.read(), registered)
