"""Where each node sits: deterministic ordering and the tree, as pure functions.

Positions: the server is 0, the nodes 1..n in deployment order. The tree is the
heap layout of an `arity`-ary tree, so parent(p) = (p - 1) // arity: with arity 1 it is
the chain server -> 1 -> 2 -> ... of the original, and any arity >= 1 works (the
original overflowed its arrays above 4).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    address: str       # as the server saw the control connection, or advertised
    data_port: int
    hostname: str = ""


def address_key(address: str) -> Tuple[int, int, str]:
    """Numeric order: every IPv4 address before every IPv6 one, each by its value.

    A name that is not an address sorts after both, by text."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return (2, 0, address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (0 if ip.version == 4 else 1, int(ip), "")


def host_matches(entry: str, node: NodeInfo) -> bool:
    """Does a --hosts line name this node (by address, in any spelling, or hostname)?"""
    if entry == node.hostname or entry.split(".", 1)[0] == node.hostname.split(".", 1)[0] != "":
        return True
    return address_key(entry) == address_key(node.address) and address_key(entry)[0] < 2


class HostList:
    """A hosts list, indexed: the first line that names a node (as host_matches
    says) in constant time, where a scan of the list for each of 10,000 nodes was
    quadratic."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)
        self._name: Dict[str, int] = {}
        self._short: Dict[str, int] = {}
        self._address: Dict[Tuple[int, int, str], int] = {}
        for i, entry in enumerate(self.hosts):
            self._name.setdefault(entry, i)
            self._short.setdefault(entry.split(".", 1)[0], i)
            key = address_key(entry)
            if key[0] < 2:
                self._address.setdefault(key, i)

    def __len__(self) -> int:
        return len(self.hosts)

    def first_match(self, node: NodeInfo) -> Optional[int]:
        found = [self._name.get(node.hostname), self._address.get(address_key(node.address))]
        short = node.hostname.split(".", 1)[0]
        if short:
            found.append(self._short.get(short))
        return min((i for i in found if i is not None), default=None)


def order_nodes(nodes: Sequence[NodeInfo], hosts: Optional[Sequence[str]] = None) -> List[NodeInfo]:
    """Deployment order: by address numerically, or in the order of a hosts list.

    With a hosts list every node must match an entry (the server refuses the others
    at registration); several nodes on one host keep their address order by port."""
    def natural(n: NodeInfo):
        return (address_key(n.address), n.data_port, n.node_id)

    if hosts is None:
        return sorted(nodes, key=natural)
    index = hosts if isinstance(hosts, HostList) else HostList(hosts)

    def listed(n: NodeInfo):
        i = index.first_match(n)
        return (len(index) if i is None else i, natural(n))

    return sorted(nodes, key=listed)


@dataclass(frozen=True)
class Tree:
    arity: int
    n_nodes: int

    def parent(self, position: int) -> Optional[int]:
        return None if position == 0 else (position - 1) // self.arity

    def children(self, position: int) -> List[int]:
        first = position * self.arity + 1
        return list(range(first, min(first + self.arity, self.n_nodes + 1)))

    def depth(self, position: int) -> int:
        d = 0
        while position:
            position = (position - 1) // self.arity
            d += 1
        return d

    @property
    def height(self) -> int:
        return self.depth(self.n_nodes)


def build_tree(n_nodes: int, arity: int) -> Tree:
    if arity < 1:
        raise ValueError("arity must be at least 1")
    if n_nodes < 0:
        raise ValueError("the number of nodes cannot be negative")
    return Tree(arity=arity, n_nodes=n_nodes)


def render(tree: Tree, names: Dict[int, str]) -> List[str]:
    """The tree as indented lines (positions -> names), for logs and the report."""
    lines: List[str] = []
    stack = [(0, 0)]  # iterative: a chain of thousands must not hit the recursion limit
    while stack:
        pos, depth = stack.pop()
        lines.append(f"{'  ' * depth}{names.get(pos, str(pos))}")
        stack.extend((c, depth + 1) for c in reversed(tree.children(pos)))
    return lines
