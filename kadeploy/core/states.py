"""The states of a deployment's parts, as enums.

Each member's value is the word that the logs, the progress display and the JSON
report show, so an enum member prints, formats and serialises as that word
(``f"{NodeState.DONE}"`` is ``done``) and compares equal to it.
"""
from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """An enum whose members are their own words: str(), format() and JSON give the value."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class NodeState(Word):
    """A node as the server sees it, from its Hello to its report."""
    REGISTERED = "registered"   # said Hello; the tree is not built yet
    CONNECTING = "connecting"   # told its place; no byte reported yet
    STREAMING = "streaming"     # reported bytes received
    DONE = "done"               # reported success
    FAILED = "failed"           # reported failure, or lost


# Placed and still receiving: such a node is sent the digests, and re-attached when
# its parent is lost.
RECEIVING = frozenset({NodeState.CONNECTING, NodeState.STREAMING})
# Placed and not failed: such a node may still be feeding children.
PLACED_ALIVE = RECEIVING | {NodeState.DONE}


class Verdict(Word):
    """A node's line in the final report."""
    OK = "ok"
    FAILED = "failed"
