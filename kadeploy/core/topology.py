"""Where each node sits: deterministic ordering and the tree, as pure functions.

Positions: the server is 0, the nodes 1..n in deployment order. The tree is the
heap layout of an `arity`-ary tree, so parent(p) = (p - 1) // arity: with arity 1 it is
the chain server -> 1 -> 2 -> ... of the original, and any arity >= 1 works (the
original overflowed its arrays above 4).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    address: str       # as the server saw the control connection, or advertised
    data_port: int
    hostname: str = ""
    listed: Optional[int] = None   # index of the --hosts entry its connection matched


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


def is_address(text: str) -> bool:
    return address_key(text)[0] < 2


class HostList:
    """A --hosts list, indexed by address: the first line that names the address a
    connection really comes from, in constant time (a scan of the list for each of
    10,000 nodes was quadratic). An address line matches in any spelling; a name
    matches by the addresses the server resolved it to (`resolved`). What a peer
    says about itself (its host name, --advertise) never counts: anyone can say
    anything."""

    def __init__(self, hosts: Sequence[str], resolved: Optional[Mapping[str, Iterable[str]]] = None) -> None:
        self.hosts = list(hosts)
        self.names = [h for h in self.hosts if not is_address(h)]
        self._address: Dict[Tuple[int, int, str], int] = {}
        for i, entry in enumerate(self.hosts):
            candidates = [entry] if is_address(entry) else (resolved or {}).get(entry, ())
            for a in candidates:
                self._address.setdefault(address_key(a), i)

    def __len__(self) -> int:
        return len(self.hosts)

    def first_match(self, source: str) -> Optional[int]:
        """The index of the first line naming `source`, or None."""
        key = address_key(source)
        return self._address.get(key) if key[0] < 2 else None


def order_nodes(nodes: Sequence[NodeInfo], by_list: bool = False) -> List[NodeInfo]:
    """Deployment order: by address numerically, or in the order of the hosts list
    (each node's `listed` rank); several nodes on one host keep their address order
    by port."""
    def natural(n: NodeInfo):
        return (address_key(n.address), n.data_port, n.node_id)

    if not by_list:
        return sorted(nodes, key=natural)
    return sorted(nodes, key=lambda n: (n.listed if n.listed is not None else 1 << 62, natural(n)))


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
        if self.arity == 1:       # a chain: the walk below would make placing N nodes O(N²)
            return position
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


def render(tree: Tree, names: Dict[int, str], limit: Optional[int] = None) -> List[str]:
    """The tree as indented lines (positions -> names), for logs and the report; with
    `limit`, that many nodes and a line saying how many more (a chain of 10,000 drawn
    whole is a staircase of 100 MB)."""
    lines: List[str] = []
    stack = [(0, 0)]  # iterative: a chain of thousands must not hit the recursion limit
    while stack:
        if limit is not None and len(lines) > limit:
            lines.append(f"... and {tree.n_nodes + 1 - len(lines)} more")
            break
        pos, depth = stack.pop()
        lines.append(f"{'  ' * depth}{names.get(pos, str(pos))}")
        stack.extend((c, depth + 1) for c in reversed(tree.children(pos)))
    return lines
