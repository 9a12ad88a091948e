"""The rules the parsers of admin-written files (manifests, node tables) must obey,
checked from the outside, and renderers written independently of the product's: shared
by tests/test_fuzz_inputs.py (hypothesis) and fuzz/fuzz_inputs.py (atheris). No
hypothesis here, so that the atheris harness can import it.
"""
from __future__ import annotations

import csv
import io
import ipaddress
import json
import re

from kadeploy.errors import UsageError
from kadeploy.install import nodes
from kadeploy.install.formats import parse_original, parse_sfdisk_dump, partitions_to_toml
from kadeploy.install.manifest import (FILESYSTEMS, LOADERS, MAX_SIZE, NAME_RE, SOURCE_KINDS, TABLES,
                                       TYPE_NAMES, Manifest, ManifestError, parse_manifest, parse_size,
                                       render_rule)
from kadeploy.netboot import nodetable

GUID_RE = re.compile(r"[0-9A-F]{8}-([0-9A-F]{4}-){3}[0-9A-F]{12}")
KEY_RE = re.compile(nodes.KEY_RE)

# name -> (parse(text, source), source, the documented error)
PARSERS = {
    "manifest": (parse_manifest, "fuzz.toml", ManifestError),
    "original": (parse_original, "fuzz.partitions", ManifestError),
    "sfdisk": (parse_sfdisk_dump, "fuzz.dump", ManifestError),
    "install-csv": (nodes.parse_table, "fuzz-nodes.csv", ManifestError),
    "install-toml": (nodes.parse_table, "fuzz-nodes.toml", ManifestError),
    "netboot-csv": (nodetable.parse_csv, "fuzz-nodes.csv", UsageError),
    "netboot-toml": (nodetable.parse_toml, "fuzz-nodes.toml", UsageError),
}


def outcome(kind: str, text: str):
    """The parsed value, or None after checking the error is documented and one line."""
    parse, source, error = PARSERS[kind]
    try:
        value = parse(text, source)
    except error as e:
        check_error(str(e), source)
        return None
    check_value(kind, value)
    return value


def check_error(message: str, source: str) -> None:
    assert len(message.splitlines()) == 1 and "\r" not in message, repr(message)
    assert source in message, message


# ------------------------------------------------------------------ the rules, from outside

def check_size(size) -> None:
    kinds = [size.fill, size.percent != 0, size.bytes != 0]
    assert kinds.count(True) == 1, size
    assert 0 <= size.percent <= 100 and 0 <= size.bytes < MAX_SIZE
    assert parse_size(size.text()) == size, size     # what is shown reads back as the same size


def check_manifest(m: Manifest) -> None:
    d, table = m.disk, m.disk.table
    assert table in TABLES
    assert sum(x is not None for x in (d.device, d.by_path)) + (d.min_size > 0) <= 1
    assert d.device is None or d.device.startswith("/")
    assert m.partitions
    names = [p.name for p in m.partitions]
    assert len(set(names)) == len(names)
    mounts = [p.mount for p in m.partitions if p.mount is not None]
    assert len(set(mounts)) == len(mounts) and (not mounts or "/" in mounts)
    for p in m.partitions:
        assert NAME_RE.fullmatch(p.name)
        check_size(p.size)
        assert p.fs is None or p.fs in FILESYSTEMS
        assert (p.type in TYPE_NAMES or (table == "gpt" and GUID_RE.fullmatch(p.type))
                or (table == "mbr" and re.fullmatch(r"0x[0-9a-f]{2}", p.type))), p.type
        assert p.mount is None or (p.mount.startswith("/") and p.fs not in (None, "swap"))
        assert not p.logical or table == "mbr"
        if p.source is not None:
            assert p.source.kind in SOURCE_KINDS and p.source.path.startswith("/")
            if p.source.kind == "tar":
                assert p.mount is not None and p.fs not in (None, "swap")
            assert all(e.startswith("/") for e in p.source.exclude)
    for logical in (False, True):
        assert sum(p.size.fill for p in m.partitions if p.logical == logical) <= 1
    if table == "mbr":
        assert sum(not p.logical for p in m.partitions) <= 4
        if any(p.logical for p in m.partitions):
            assert any(p.type == "extended" and not p.logical for p in m.partitions)
    else:
        assert not any(p.type == "extended" for p in m.partitions)
    if table == "mbr":
        assert not any(p.type in ("esp", "bios-boot") for p in m.partitions)
    assert m.loader in LOADERS and (m.loader_hook is None or m.loader == "none")
    if m.loader == "grub-efi":
        assert any(p.type == "esp" for p in m.partitions)
    if m.loader == "grub-bios" and table == "gpt":
        assert any(p.type == "bios-boot" for p in m.partitions)
    for index in (1, 7, 123):   # the name rule renders for any node, and briefly
        name = render_rule(m.hostname, index, "198.18.0.9", "reported")
        assert isinstance(name, str) and len(name) < len(m.hostname) + 3 * 64
    assert all(f.path.startswith("/") and 0 <= f.mode <= 0o7777 for f in m.files)
    assert all(h.strip() for h in m.hooks)
    # The manifest's own text is what travels to the nodes: it reads back the same.
    assert parse_manifest(m.text, "again") == m
    check_partitions_render(m)


def check_partitions_render(m: Manifest) -> None:
    """partitions_to_toml (the original's and sfdisk's way into a manifest) writes any
    parsed partition list back as text that reads as the same partitions."""
    parts = [{"name": p.name, "size": p.size.text(), "type": p.type, "fs": p.fs, "label": p.label,
              "mount": p.mount, "logical": p.logical} for p in m.partitions]
    again = parse_manifest(partitions_to_toml(m.disk.table, parts, m.disk.device), "rendered")
    strip = lambda p: (p.name, p.size, p.type, p.fs, p.label, p.mount, p.logical)  # noqa: E731
    assert [strip(p) for p in again.partitions] == [strip(p) for p in m.partitions]
    assert again.disk.device == m.disk.device


def check_install_table(t) -> None:
    assert t.rows
    names = [r["name"] for r in t.rows]
    assert all(names) and len(set(names)) == len(names)
    for row in t.rows:
        assert all(KEY_RE.fullmatch(k) and isinstance(v, str) for k, v in row.items()), row


def check_netboot_table(t) -> None:
    for key in ("name", "mac", "address"):
        values = [getattr(n, key) for n in t if getattr(n, key) is not None]
        assert len(set(values)) == len(values)
    for n in t:
        assert nodetable.NAME_RE.fullmatch(n.name)
        assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", n.mac)
        assert n.address is None or str(ipaddress.IPv4Address(n.address)) == n.address
        assert t.get(n.mac) is n or t.get(n.mac).mac == n.mac
    # Rendered back as CSV and as TOML, the table reads the same (a CSV row has every
    # column: one it lacks reads back empty).
    said = lambda table: [(n, {k: v for k, v in n.extra.items() if v}) for n in table]  # noqa: E731
    for text, parse in ((netboot_csv(t), nodetable.parse_csv), (netboot_toml(t), nodetable.parse_toml)):
        assert said(parse(text, "rendered")) == said(t)


def check_value(kind: str, value) -> None:
    if kind in ("manifest", "original", "sfdisk"):
        check_manifest(value)
    elif kind.startswith("install"):
        check_install_table(value)
    else:
        check_netboot_table(value)


# ------------------------------------------------------------------ rendering (test side)

def toml_value(v) -> str:
    """TOML for a Python value, written independently of the product's toml_str."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_value(k)


def toml_tables(doc) -> str:
    """doc: [(header or None, {key: value})] in order."""
    out = []
    for header, table in doc:
        if header:
            out += ["", header]
        out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(out) + "\n"


def csv_text(header, rows) -> str:
    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return f.getvalue()


def netboot_csv(t) -> str:
    extra = sorted({k for n in t for k in n.extra})
    return csv_text(["name", "mac", "address"] + extra,
                    [[n.name, n.mac, n.address or ""] + [n.extra.get(k, "") for k in extra] for n in t])


def netboot_toml(t) -> str:
    if not len(t):
        return "node = []\n"
    return toml_tables([("[[node]]", {"name": n.name, "mac": n.mac, "address": n.address, **n.extra})
                        for n in t])
