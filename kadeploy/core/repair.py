"""What to do when a node is lost, as a pure function: heal the chain in place.

The tree is kept as parent links (node id -> parent node id, 0 for the server). When
a node is lost, its parent stops feeding it, and each of its children takes its
place: it is re-attached under the lost node's parent, or, when that one cannot
serve it, under the nearest ancestor that can (the server always can). The new
parent feeds it from its repair window (kadeploy.data.window), from the exact byte
the child has, and the child goes on feeding its own subtree. So the tree keeps its
shape, nobody below restarts, and the server's uplink still carries one stream.

Who can serve is the caller's knowledge (`can_serve`): a node still in its data
phase with a window. A node lost while it was being repaired is just a lost node
whose parent is its new one; two adjacent nodes lost together are two losses, one
after the other, and the second finds its child already moved up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Dict, List, Set, Tuple

SERVER = 0


@dataclass(frozen=True)
class Drop:
    parent: int      # SERVER or a node id
    child: int


@dataclass(frozen=True)
class Reattach:
    child: int
    new_parent: int  # SERVER or a node id, an ancestor of the lost node


def nearest_server(start: int, parent_of: Dict[int, int], can_serve: AbstractSet[int]) -> int:
    """`start` or the first of its ancestors that can serve; SERVER when none can."""
    node, seen = start, set()
    while node != SERVER and node not in can_serve:
        if node in seen or node not in parent_of:
            return SERVER       # a broken chain of links: the server never lacks a byte
        seen.add(node)
        node = parent_of[node]
    return node


def plan(lost: int, parent_of: Dict[int, int], needs_data: Set[int],
         can_serve: AbstractSet[int] = frozenset()) -> Tuple[List[object], Dict[int, int]]:
    """Actions for losing `lost`, and the parent links afterwards.

    needs_data: nodes still receiving (placed, not lost, not yet complete).
    can_serve: nodes that could feed a re-attached child from their window."""
    if lost not in parent_of:
        return [], dict(parent_of)
    up = parent_of[lost]
    after = {n: p for n, p in parent_of.items() if n != lost}
    serving = set(can_serve) - {lost}
    new_parent = nearest_server(up, after, serving)
    actions: List[object] = [Drop(up, lost)]
    for child in sorted(n for n, p in parent_of.items() if p == lost):
        if child in needs_data:
            actions.append(Reattach(child, new_parent))
        # A complete child has all the stream already, and has passed it on: it
        # needs no action, and hangs where the lost node hung.
        after[child] = new_parent
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


def ancestors(node: int, parent_of: Dict[int, int]) -> List[int]:
    """The parent links from `node` up to the server, nearest first (SERVER last)."""
    out, seen = [], set()
    while node != SERVER and node in parent_of and node not in seen:
        seen.add(node)
        node = parent_of[node]
        out.append(node)
    return out
