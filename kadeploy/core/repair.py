"""What to do when a node is lost, as a pure function.

The tree is kept as parent links (node id -> parent node id, 0 for the server). When
a node is lost, its parent stops feeding it, and each of its children that still
needs data is re-attached to the server, which re-serves the stream from any offset
out of its spool; each re-attached child keeps feeding its own subtree, so nobody
else restarts. The server is the one parent that can never lack the bytes a node
needs, which is why repairs attach there rather than to the grandparent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

SERVER = 0


@dataclass(frozen=True)
class Drop:
    parent: int      # SERVER or a node id
    child: int


@dataclass(frozen=True)
class Reattach:
    child: int
    new_parent: int


def plan(lost: int, parent_of: Dict[int, int], needs_data: Set[int]) -> Tuple[List[object], Dict[int, int]]:
    """Actions for losing `lost`, and the parent links afterwards.

    needs_data: nodes still receiving (placed, not lost, not yet complete)."""
    if lost not in parent_of:
        return [], dict(parent_of)
    after = {n: p for n, p in parent_of.items() if n != lost}
    actions: List[object] = [Drop(parent_of[lost], lost)]
    for child in sorted(n for n, p in parent_of.items() if p == lost):
        if child in needs_data:
            actions.append(Reattach(child, SERVER))
        # A complete child has all the stream already, and has passed it on: it
        # needs no action, and hangs under the server from now on.
        after[child] = SERVER
    return actions, after


def reaches_server(node: int, parent_of: Dict[int, int]) -> bool:
    """Does following parent links from `node` end at the server (no cycle, no gap)?"""
    seen = set()
    while node != SERVER:
        if node in seen or node not in parent_of:
            return False
        seen.add(node)
        node = parent_of[node]
    return True
