"""Per-node values of an install: a node table (CSV with a header row, or TOML
`[[node]]` tables: name, mac, address, and any other column the templates use)
or the manifest's name rule (`node{index:02}`). Pure apart from reading the file.

A registered node is matched to its row by address, then by the host name it
reported; a node the table does not list is not installed.
"""
from __future__ import annotations

import csv
import io
try:
    import tomllib
except ImportError:   # Python < 3.11: the same parser, from PyPI
    import tomli as tomllib
from dataclasses import dataclass
from typing import Dict, List, Optional

from .manifest import ManifestError

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


def _check_rows(rows: List[Dict[str, str]], source: str, first_line: int) -> NodeTable:
    import re
    names = set()
    for i, row in enumerate(rows):
        for k in row:
            if not re.fullmatch(KEY_RE, k):
                raise ManifestError(f"{source}:{first_line}: column {k!r} is not a name "
                                    "(letters, digits, '_')")
        if not row.get("name"):
            raise ManifestError(f"{source}:{first_line + i}: a node needs a 'name'")
        if row["name"] in names:
            raise ManifestError(f"{source}:{first_line + i}: node {row['name']!r} is listed twice")
        names.add(row["name"])
    if not rows:
        raise ManifestError(f"{source}:1: the node table lists no node")
    return NodeTable(rows=tuple(rows))


def parse_table(text: str, source: str) -> NodeTable:
    if source.endswith(".toml"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ManifestError(f"{source}: not valid TOML: {e}") from None
        if set(data) != {"node"} or not isinstance(data["node"], list):
            raise ManifestError(f"{source}:1: expected only [[node]] tables")
        rows = []
        for n in data["node"]:
            if not isinstance(n, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                  for v in n.values()):
                raise ManifestError(f"{source}:1: a [[node]] holds only strings and numbers")
            rows.append({k: str(v) for k, v in n.items()})
        return _check_rows(rows, source, 1)
    reader = csv.DictReader(io.StringIO("\n".join(
        l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#"))))
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise ManifestError(f"{source}:{reader.line_num}: {len(row)} columns, the header has "
                                f"{len(reader.fieldnames)}")
        rows.append({k.strip(): v.strip() for k, v in row.items()})
    return _check_rows(rows, source, 2)


def load_table(path: str) -> NodeTable:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_table(f.read(), path)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None


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
    name = rule.format(index=index, position=index, address=address, hostname=hostname)
    return {**base, "name": name, "hostname": name}
