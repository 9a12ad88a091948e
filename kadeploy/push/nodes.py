"""Node sets: parsing, folding and the deployment order, through ClusterShell's NodeSet.

Pure: no I/O except reading an --order FILE. Node names are what the admin typed
(`node[001-512]`, `@rack1` groups from ClusterShell's own configuration); a registered
client is recognised by the address it connects from (a name by what the server
resolves it to), as ka-d-server's
--hosts does.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

from ClusterShell.NodeSet import NodeSet, NodeSetException

from kadeploy.errors import UsageError

ORDERS = ("nodeset", "address")


def parse_nodeset(text: str) -> List[str]:
    """The names of a node set, in NodeSet's order (by name, then by index: racks stay
    together); UsageError with ClusterShell's own message when it does not parse."""
    try:
        names = list(NodeSet(text))
    except NodeSetException as e:
        raise UsageError(f"bad node set {text!r}: {e}")
    if not names:
        raise UsageError(f"node set {text!r} names no node")
    return names


def fold(names: Iterable[str]) -> str:
    """`node[001-120,122-512]`, ready to paste into `clush -w`; empty for no node."""
    return str(NodeSet.fromlist(list(names)))


def read_order_file(path: str, names: Sequence[str]) -> List[str]:
    """An --order FILE: node names or node sets, one a line (# comments); every node
    of the node set must be in it, and nothing else."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except OSError as e:
        raise UsageError(f"cannot read order file {path}: {e.strerror}")
    order: List[str] = []
    seen = set()
    for line in filter(None, lines):
        for n in parse_nodeset(line):
            if n not in seen:
                seen.add(n)
                order.append(n)
    wanted = set(names)
    missing = [n for n in names if n not in seen]
    extra = [n for n in order if n not in wanted]
    if missing:
        raise UsageError(f"order file {path} does not list {fold(missing)}")
    if extra:
        raise UsageError(f"order file {path} lists {fold(extra)}, not in --nodes")
    return order


def split_chains(n: int, chains: int) -> List[range]:
    """Positions 1..n cut into `chains` contiguous runs, as equal as can be: nodes
    next to each other in the order (one rack) stay in one chain."""
    chains = max(1, min(chains, n))
    size, extra = divmod(n, chains)
    runs, start = [], 1
    for i in range(chains):
        length = size + (1 if i < extra else 0)
        runs.append(range(start, start + length))
        start += length
    return runs


class NameIndex:
    """Which node of the node set a registered client is: by host name, by short host
    name, or by address; indexed once, so that 10,000 reports are matched in linear
    time."""

    def __init__(self, names: Sequence[str]) -> None:
        self._exact: Dict[str, str] = {}
        self._short: Dict[str, str] = {}
        for name in names:
            self._exact.setdefault(name, name)
            self._short.setdefault(name.split(".", 1)[0], name)

    def find(self, hostname: str, address: str) -> Optional[str]:
        short = hostname.split(".", 1)[0]
        return (self._exact.get(hostname) or (self._short.get(short) if short else None)
                or self._exact.get(address))


class Chains:
    """K chains side by side under the server, each a run of consecutive positions
    (see split_chains); the same questions as topology.Tree answers, so the server
    places nodes, streams and repairs the same way."""

    def __init__(self, n_nodes: int, chains: int) -> None:
        self.n_nodes = n_nodes
        self.arity = 1
        self.runs = split_chains(n_nodes, chains) if n_nodes else []
        self._heads = [r.start for r in self.runs]
        self._head_of = {}
        for r in self.runs:
            for p in r:
                self._head_of[p] = r.start

    def parent(self, position: int) -> Optional[int]:
        if position == 0:
            return None
        return 0 if position in self._heads else position - 1

    def children(self, position: int) -> List[int]:
        if position == 0:
            return list(self._heads)
        nxt = position + 1
        return [nxt] if nxt <= self.n_nodes and nxt not in self._heads else []

    def depth(self, position: int) -> int:
        return 0 if position == 0 else position - self._head_of[position] + 1

    @property
    def height(self) -> int:
        return max((len(r) for r in self.runs), default=0)
