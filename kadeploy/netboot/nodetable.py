"""The node table of the boot kit: which MAC is which node, at which address.

A CSV file with a header line (``name,mac,address`` and any other columns) or a TOML
file of ``[[node]]`` tables with the same keys. ``address`` may be empty in proxy mode,
where the site's DHCP server chooses it. Bad rows are errors that name the file and
line; duplicate names, MACs or addresses too. Pure: :func:`parse_csv` and
:func:`parse_toml` take text; :func:`load` only reads the file.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from ..errors import UsageError
from ..textfiles import TextError, csv_rows, loads_toml, repeated

MAC_RE = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")
NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class NodeEntry:
    name: str
    mac: str                      # lower case, colon separated
    address: Optional[str] = None
    extra: Mapping[str, str] = field(default_factory=dict, compare=False)


def normalize_mac(text: str) -> Optional[str]:
    """'52-54-00-AB-cd-01' -> '52:54:00:ab:cd:01'; None if it is not a MAC."""
    text = text.strip().lower()
    if not MAC_RE.fullmatch(text):
        return None
    return text.replace("-", ":")


class NodeTable:
    """Nodes by name and by MAC, in the table's order."""

    def __init__(self, nodes: Sequence[NodeEntry] = ()):
        self.nodes: List[NodeEntry] = list(nodes)
        self.by_mac: Dict[str, NodeEntry] = {n.mac: n for n in self.nodes}

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def get(self, mac: str) -> Optional[NodeEntry]:
        return self.by_mac.get(normalize_mac(mac) or "")


def _entry(row: Mapping[str, object], where: str) -> NodeEntry:
    if not isinstance(row, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                            for v in row.values()):
        raise UsageError(f"{where}: a node holds only strings and numbers (name, mac, address, ...)")
    values = {str(k).strip().lower(): ("" if v is None else str(v).strip()) for k, v in row.items() if k}
    name, mac_text, address = values.get("name", ""), values.get("mac", ""), values.get("address", "")
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"{where}: name {name!r} is not a host name (letters, digits, '-')")
    mac = normalize_mac(mac_text)
    if mac is None:
        raise UsageError(f"{where}: mac {mac_text!r} is not a MAC address (like 52:54:00:12:34:56)")
    if address:
        try:
            address = str(ipaddress.IPv4Address(address))
        except ValueError:
            raise UsageError(f"{where}: address {address!r} is not an IPv4 address") from None
    extra = {k: v for k, v in values.items() if k not in ("name", "mac", "address")}
    return NodeEntry(name=name, mac=mac, address=address or None, extra=extra)


def _check_unique(nodes: Sequence[NodeEntry], source: str) -> NodeTable:
    for key in ("name", "mac", "address"):
        seen: Dict[str, int] = {}
        for i, node in enumerate(nodes):
            value = getattr(node, key)
            if value is None:
                continue
            if value in seen:
                raise UsageError(f"{source}: {key} {value} appears twice "
                                 f"({nodes[seen[value]].name} and {node.name})")
            seen[value] = i
    return NodeTable(nodes)


def parse_csv(text: str, source: str = "node table") -> NodeTable:
    try:
        rows = list(csv_rows(text))
    except TextError as e:
        raise UsageError(f"{source}:{e.line}: {e.message}") from None
    header = [h.strip().lower() for h in (rows[0][1] if rows else [])]
    twice = repeated([h for h in header if h])
    if twice is not None:      # names match in any case: Name and name would merge
        raise UsageError(f"{source}:{rows[0][0]}: column {twice!r} is named twice (in any case)")
    missing = [col for col in ("name", "mac") if col not in header]
    if missing:
        raise UsageError(f"{source}: the header line must name the columns name,mac[,address,...]; "
                         f"missing {', '.join(missing)}")
    nodes = []
    for i, (line, fields) in enumerate(rows[1:], 1):
        if len(fields) > len(header):   # fewer is fine: the last columns are empty
            raise UsageError(f"{source}:{line}: row {i}: {len(fields)} columns, "
                             f"the header has {len(header)}")
        nodes.append(_entry(dict(zip(header, fields)), f"{source}:{line}: row {i}"))
    return _check_unique(nodes, source)


def parse_toml(text: str, source: str = "node table") -> NodeTable:
    try:
        data = loads_toml(text)
    except TextError as e:
        raise UsageError(f"{source}:{e.line or 1}: {e.message}") from None
    rows = data.get("node")
    if not isinstance(rows, list) or set(data) - {"node"}:
        raise UsageError(f"{source}: expected only [[node]] tables (name, mac, address)")
    nodes = [_entry(row, f"{source}: node {i}") for i, row in enumerate(rows, 1)]
    return _check_unique(nodes, source)


def load(path: str) -> NodeTable:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read node table {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    return parse_toml(text, path) if path.endswith(".toml") else parse_csv(text, path)
