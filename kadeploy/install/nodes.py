"""Per-node values of an install: a node table (CSV with a header row, or TOML
`[[node]]` tables: name, mac, address, and any other column the templates use)
or the manifest's name rule (`node{index:02}`). Pure apart from reading the file.

A registered node is matched to its row by address, then by the host name it
reported; a node the table does not list is not installed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..textfiles import TextError, csv_rows, loads_toml, repeated, text_lines
from .manifest import ManifestError, render_rule

KEY_RE = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclass(frozen=True)
class NodeTable:
    rows: tuple

    def find(self, address: str, hostname: str) -> Optional[Dict[str, str]]:
        for row in self.rows:
            if row.get("address") == address or row.get("ip") == address:
                return row
        for row in self.rows:
            if row.get("name") == hostname:
                return row
        return None


def _check_rows(rows: List[Tuple[int, Dict[str, str]]], source: str, header_line: int) -> NodeTable:
    """rows: (line, row); the keys were written on header_line (CSV) or on the row's line."""
    names = set()
    for line, row in rows:
        for k in row:
            if not re.fullmatch(KEY_RE, k):
                raise ManifestError(f"{source}:{header_line or line}: column {k!r} is not a name "
                                    "(letters, digits, '_')")
        if not row.get("name"):
            raise ManifestError(f"{source}:{line}: a node needs a 'name'")
        if row["name"] in names:
            raise ManifestError(f"{source}:{line}: node {row['name']!r} is listed twice")
        names.add(row["name"])
    if not rows:
        raise ManifestError(f"{source}:1: the node table lists no node")
    return NodeTable(rows=tuple(row for _, row in rows))


def parse_table(text: str, source: str) -> NodeTable:
    try:
        return _parse_toml(text, source) if source.endswith(".toml") else _parse_csv(text, source)
    except TextError as e:
        raise ManifestError(f"{source}:{e.line or 1}: {e.message}") from None


def _parse_toml(text: str, source: str) -> NodeTable:
    data = loads_toml(text)
    if set(data) != {"node"} or not isinstance(data["node"], list):
        raise ManifestError(f"{source}:1: expected only [[node]] tables")
    # TOML gives no positions: the n-th [[node]] header is where the n-th node starts.
    starts = [no for no, line in enumerate(text_lines(text), 1)
              if re.fullmatch(r"\s*\[\[\s*node\s*\]\]\s*(#.*)?", line)]
    rows = []
    for i, n in enumerate(data["node"]):
        line = starts[i] if i < len(starts) else 1
        if not isinstance(n, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                              for v in n.values()):
            raise ManifestError(f"{source}:{line}: a [[node]] holds only strings and numbers")
        rows.append((line, {k: str(v) for k, v in n.items()}))
    return _check_rows(rows, source, 0)


def _parse_csv(text: str, source: str) -> NodeTable:
    lines = csv_rows(text)
    header_line, header = next(lines, (1, []))
    header = [k.strip() for k in header]
    twice = repeated(header)
    if twice is not None:
        raise ManifestError(f"{source}:{header_line}: column {twice!r} is named twice")
    rows = []
    for line, fields in lines:
        if len(fields) != len(header):
            raise ManifestError(f"{source}:{line}: {len(fields)} columns, the header has {len(header)}")
        rows.append((line, {k: v.strip() for k, v in zip(header, fields)}))
    return _check_rows(rows, source, header_line)


def load_table(path: str) -> NodeTable:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}:1: not UTF-8 text") from None
    return parse_table(text, path)


def node_values(rule: str, table: Optional[NodeTable], index: int, address: str,
                hostname: str) -> Dict[str, str]:
    """The values of the node at `index` (its 1-based place in the deployment);
    KeyError when a table is given and does not list it."""
    base = {"index": str(index), "address": address, "reported_hostname": hostname}
    if table is not None:
        row = table.find(address, hostname)
        if row is None:
            raise KeyError(f"not in the node table (address {address}, host name {hostname})")
        return {**base, **row, "hostname": row["name"]}
    name = render_rule(rule, index, address, hostname)
    return {**base, "name": name, "hostname": name}
