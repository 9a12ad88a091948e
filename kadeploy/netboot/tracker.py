"""Every node's boot steps and state, and what it boots next. Pure: no I/O.

Fed by the dnsmasq log (DHCP, TFTP) and the HTTP server (iPXE script, kernel,
initramfs, and the reports /init sends: network, installing, installed, failed). A
node's state decides its iPXE script: ``installed`` nodes boot their disk, every other
known node installs, and a node outside the table is ignored or, with the ``install``
policy, named by a rule and installed. ``to_json`` is the kit's state file: the
installed set, read back so a restarted kit does not install a node again, and every
node's current boot step, which the install server shows in its progress
(kadeploy.netboot.progress reads it).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .dnsmasqlog import BootEvent
from .nodetable import NodeEntry, NodeTable, normalize_mac

# States a node's reports may set (from /init, over HTTP).
REPORTED_STATES = ("network", "installing", "installed", "failed")
DEFAULT_NAME_RULE = "node-{mac}"


@dataclass
class NodeRecord:
    mac: str
    name: str
    known: bool
    state: str = "seen"
    ip: Optional[str] = None
    first_seen: float = 0.0
    steps: List[Tuple[float, str, str]] = field(default_factory=list)  # (time, step, detail)
    boots: int = 0            # install-system boots (kernel fetched)

    @property
    def failed(self) -> bool:
        return self.state == "failed" or self.state.endswith(" failed")

    def step_times(self) -> Dict[str, float]:
        """Seconds from the first DHCP request to the first time of each step."""
        out: Dict[str, float] = {}
        for t, step, _detail in self.steps:
            out.setdefault(step, round(t - self.first_seen, 2))
        return out


class Tracker:
    def __init__(self, table: NodeTable, *, unknown: str = "ignore", name_rule: str = DEFAULT_NAME_RULE,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[NodeRecord, str, str], None] = lambda rec, step, detail: None):
        self.table = table
        self.unknown = unknown
        self.name_rule = name_rule
        self.clock = clock
        self.on_change = on_change
        self.records: Dict[str, NodeRecord] = {}
        self.installed: Dict[str, float] = {}     # mac -> when its install was reported done
        self._unknown_index = 0

    # -- who is who

    def entry(self, mac: str) -> Optional[NodeEntry]:
        return self.table.get(mac)

    def record(self, mac: str) -> NodeRecord:
        mac = normalize_mac(mac) or mac
        rec = self.records.get(mac)
        if rec is None:
            entry = self.table.get(mac)
            if entry is not None:
                name, known = entry.name, True
            else:
                self._unknown_index += 1
                name = self.name_rule.format(mac=mac.replace(":", ""), index=self._unknown_index)
                known = False
            rec = NodeRecord(mac=mac, name=name, known=known, first_seen=self.clock())
            if mac in self.installed:
                rec.state = "installed"
            self.records[mac] = rec
        return rec

    # -- what happened

    def event(self, ev: BootEvent) -> Optional[NodeRecord]:
        if ev.mac is None:
            return None
        return self.step(ev.mac, ev.step, ev.detail, ip=ev.ip, failed=ev.failed)

    def step(self, mac: str, step: str, detail: str = "", *, ip: Optional[str] = None,
             failed: bool = False) -> NodeRecord:
        rec = self.record(mac)
        rec.steps.append((self.clock(), step, detail))
        if ip:
            rec.ip = ip
        if step == "kernel":
            rec.boots += 1
        if step in REPORTED_STATES:
            rec.state = step
            if step == "installed":
                self.installed[rec.mac] = self.clock()
            elif step in ("installing", "failed"):
                self.installed.pop(rec.mac, None)
        elif failed:
            rec.state = f"{step} failed"
        elif rec.state not in ("installed",) or step == "local boot":
            rec.state = step
        self.on_change(rec, step, detail)
        return rec

    # -- what to boot

    def boot_choice(self, mac: str) -> str:
        """``install``, ``local`` or ``ignore`` for the node with this MAC."""
        mac = normalize_mac(mac) or mac
        if mac in self.installed:
            return "local"
        if self.table.get(mac) is not None or self.unknown == "install":
            return "install"
        return "ignore"

    # -- persistence and views

    def to_json(self) -> str:
        nodes = [{"name": r.name, "mac": r.mac, "ip": r.ip, "known": r.known, "boot": self.boot_choice(r.mac),
                  "step": r.state, "detail": r.steps[-1][2] if r.steps else "", "failed": r.failed,
                  "first_seen": r.first_seen, "updated": r.steps[-1][0] if r.steps else r.first_seen}
                 for r in self.rows()]
        return json.dumps({"installed": self.installed, "nodes": nodes}, indent=1, sort_keys=True) + "\n"

    def load_json(self, text: str) -> None:
        data = json.loads(text)
        self.installed = {normalize_mac(m) or m: float(t) for m, t in data.get("installed", {}).items()}

    def rows(self) -> List[NodeRecord]:
        """Every node seen, table nodes first in table order, then the others by first sight."""
        order = {n.mac: i for i, n in enumerate(self.table)}
        return sorted(self.records.values(), key=lambda r: (order.get(r.mac, len(order)), r.first_seen))

    def summary(self) -> str:
        counts: Dict[str, int] = {}
        for rec in self.records.values():
            counts[rec.state] = counts.get(rec.state, 0) + 1
        waiting = sum(1 for n in self.table if n.mac not in self.records)
        parts = [f"{n} {state}" for state, n in sorted(counts.items())]
        if waiting:
            parts.append(f"{waiting} not seen yet")
        return "nodes: " + (", ".join(parts) or "none seen")
