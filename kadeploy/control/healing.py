"""Keeping the tree whole while the stream flows.

Every second the server pings every node still at work and gives up those silent
for the stall timeout (frozen, or cut off). A node given up, or whose connection
closed, is cut off: its parent stops feeding it and its children that still need
data take its place under its nearest ancestor that keeps a repair window (or the
server), which re-serves them from their exact offset (the plan is
kadeploy.core.repair's; this is its I/O).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Dict, Optional, Set

from kadeploy.control.registry import Node
from kadeploy.core import protocol as P
from kadeploy.core import repair
from kadeploy.core.states import PLACED_ALIVE, RECEIVING
from kadeploy.data.server_phase import ServerDataPhase
from kadeploy.defaults import PING_INTERVAL

log = logging.getLogger("kadeploy.server")


class Healer:
    def __init__(self, cfg, nodes: Dict[int, Node]) -> None:
        self.cfg, self.nodes = cfg, nodes
        self.parent_of: Dict[int, int] = {}        # node id -> parent id (0: server)
        self.phase: Optional[ServerDataPhase] = None
        self.windowed: Set[int] = set()            # nodes that keep a repair window

    @property
    def placed(self) -> bool:
        return self.phase is not None

    def start(self, parent_of: Dict[int, int], phase: ServerDataPhase,
              windowed: Set[int] = frozenset()) -> None:
        """The tree is placed: from now on lost nodes are cut off and repaired, under
        the nearest ancestor among `windowed` that still receives (else the server)."""
        self.parent_of, self.phase, self.windowed = dict(parent_of), phase, set(windowed)

    async def watch(self) -> None:
        """Every second: a Ping to every node still at work, and nodes silent for the
        stall timeout given up (frozen, or cut off from the network)."""
        stall = self.cfg.stall_timeout
        while True:
            await asyncio.sleep(PING_INTERVAL)
            now = time.monotonic()
            for node in list(self.nodes.values()):
                if node.error is not None or node.finished:
                    continue
                # Nodes that reported still hear from us: with -w they wait for Finish
                # (spaced by -d) and give the server up if it falls silent.
                node.channel.post(P.Ping())
                if node.done is None and self.placed and node.position and now - node.last_heard > stall:
                    self.node_lost(node, f"no word from it for {stall:g} s (frozen, or cut off)")

    def node_lost(self, node: Node, reason: str) -> None:
        """Give a node up, stop its parent feeding it, and re-attach its children."""
        node_id = node.info.node_id
        if node.done is not None or node_id not in self.parent_of:
            return
        node.fail(reason)
        node.channel.abort()
        needs = {i for i, n in self.nodes.items() if n.position and n.state in RECEIVING}
        # Nodes still receiving that keep a window (those with children, unless
        # --spool) can adopt a lost node's children, so the chain heals in place and
        # the server's uplink keeps carrying one stream.
        can_serve = needs & self.windowed
        actions, self.parent_of = repair.plan(node_id, self.parent_of, needs, can_serve)
        for action in actions:
            if isinstance(action, repair.Drop):
                self._drop(action.parent, action.child)
            elif action.new_parent == repair.SERVER:
                self._reattach(self.nodes[action.child], f"parent {node.name} lost: {reason}")
            else:
                self._adopt(self.nodes[action.new_parent], self.nodes[action.child],
                            f"parent {node.name} lost: {reason}")

    def _drop(self, parent: int, child: int) -> None:
        if parent == repair.SERVER:
            self.phase.drop(child)
        elif self.nodes[parent].state in PLACED_ALIVE:
            self.nodes[parent].channel.post(P.DropChild(node_id=child))

    def _adopt(self, parent: Node, child: Node, why: str) -> None:
        """Heal in place: `parent` feeds `child` from its own repair window."""
        log.warning("re-attaching %s under %s: %s", child.name, parent.name, why)
        parent.channel.post(P.Adopt(node_id=child.info.node_id))
        child.channel.post(P.Reattach(host=parent.info.address, port=parent.info.data_port,
                                      reason=why))

    def unrepairable(self, child: Node, why: str) -> None:
        """The window no longer holds what the child needs: it fails, saying so."""
        log.error("cannot repair %s: %s", child.name, why)
        self.give_up(child, f"cannot repair this node: {why}", f"cannot be repaired: {why}")

    def give_up(self, node: Node, told: str, reason: str = "") -> None:
        """node_lost, for a node that still listens: it is told why first."""
        node.channel.post(P.Abort(reason=told))
        self.node_lost(node, reason or told)

    def _reattach(self, child: Node, why: str) -> None:
        if not self.phase.can_repair:
            log.warning("cannot repair %s: no repair window (--no-repair, or it failed)",
                        child.name)
            return
        log.warning("re-attaching %s to the server: %s", child.name, why)
        self.phase.serve(child.info.node_id, child.name,
                         on_missed=lambda why: self.unrepairable(child, why))
        child.channel.post(P.Reattach(host=child.channel.local_address, port=self.cfg.data_port,
                                      reason=why))
