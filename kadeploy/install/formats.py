"""The original Ka-deploy's partition description and `sfdisk --dump`, read into
the same manifest model (kadeploy.install.manifest). Pure.

The original's format is one line a partition: `[logical] linux|swap|extended|typeHH
SIZE`, the size in MB or `fill`, `#` starting a comment. Both become manifest text
(then parsed and checked as any manifest), for the admin to add file systems, mount
points and sources to.
"""
from __future__ import annotations

import re
from typing import List, Optional

from .manifest import Manifest, ManifestError, Size, parse_manifest, parse_size

SECTOR_SIZES = tuple(1 << n for n in range(9, 17))   # 512 B to 64 KiB


def toml_str(s: str) -> str:
    """A TOML basic string that reads back as s, whatever s holds (control characters too)."""
    return '"' + "".join(c if c >= " " and c not in '"\\\x7f' else
                         "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" for c in s) + '"'


def partitions_to_toml(table: str, parts: List[dict], device: Optional[str] = None) -> str:
    """Manifest text for a partition list (dicts of Partition fields), to edit further."""
    out = ["# Written by kadeploy from a partition description; add file systems,", "# mount points and sources, then check it with `kadeploy manifest check`.", "", "[disk]"]
    if device:
        out.append(f"device = {toml_str(device)}")
    out.append(f"table = {toml_str(table)}")
    for p in parts:
        out += ["", "[[partition]]"]
        for key in ("name", "size", "type", "fs", "label", "mount"):
            if p.get(key) is not None:
                out.append(f"{key} = {toml_str(str(p[key]))}")
        if p.get("logical"):
            out.append("logical = true")
        if p.get("source"):
            out.append("source = { " + ", ".join(f"{k} = {toml_str(v)}" for k, v in p["source"].items()) + " }")
    return "\n".join(out) + "\n"


def parse_original(text: str, source: str = "partitions") -> Manifest:
    """The original Ka-deploy description: `[logical] linux|swap|extended|typeHH SIZE|fill`."""
    parts: List[dict] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        logical = line[0] == "logical"
        if logical:
            line = line[1:]
        if len(line) != 2:
            raise ManifestError(f"{source}:{no}: expected '[logical] TYPE SIZE', got {raw.strip()!r}")
        kind, size = line
        m = re.fullmatch(r"type([0-9a-fA-F]{1,2})", kind)
        if kind in ("linux", "swap", "extended"):
            ptype = kind
        elif m:
            ptype = f"0x{int(m.group(1), 16):02x}"
        else:
            raise ManifestError(f"{source}:{no}: {kind!r} is not linux, swap, extended or typeHH")
        if size != "fill" and not re.fullmatch(r"[0-9]+", size):
            raise ManifestError(f"{source}:{no}: size {size[:40]!r} is not a number of MB or 'fill'")
        try:
            parse_size(f"{size}MiB" if size != "fill" else size)
        except ValueError as e:
            raise ManifestError(f"{source}:{no}: size {e}") from None
        idx = len(parts) + 1
        parts.append({"name": f"part{idx}", "size": "fill" if size == "fill" else f"{size}MiB",
                      "type": ptype, "fs": "swap" if ptype == "swap" else None,
                      "logical": logical})
    if not parts:
        raise ManifestError(f"{source}:1: no partition described")
    return parse_manifest(partitions_to_toml("mbr", parts), source)


_SFDISK_TYPES = {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "esp",
                 "21686148-6449-6E6F-744E-656564454649": "bios-boot",
                 "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "linux",
                 "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "swap",
                 "0x83": "linux", "0x82": "swap", "0x05": "extended", "0x0f": "extended"}


def parse_sfdisk_dump(text: str, source: str = "sfdisk-dump") -> Manifest:
    """`sfdisk --dump DEVICE` output: label, then `dev : start=, size=, type=` lines."""
    label, device, sector, parts = None, None, 512, []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if ":" in line and "=" in line.split(":", 1)[1]:
            dev, rest = line.split(":", 1)
            fields = dict(re.findall(r"(\w+)\s*=\s*(\"[^\"]*\"|[^,\s]+)", rest))
            if not re.fullmatch(r"[0-9]{1,20}", fields.get("size", "")):
                raise ManifestError(f"{source}:{no}: partition line without a size in sectors: {line[:80]!r}")
            kind = fields.get("type", "83")
            if "-" in kind:
                ptype = kind.upper()
            elif re.fullmatch(r"(0x)?[0-9a-fA-F]{1,2}", kind):
                ptype = f"0x{int(kind, 16):02x}"
            else:
                raise ManifestError(f"{source}:{no}: type={kind[:40]!r} is neither a GUID nor an MBR hex byte")
            ptype = _SFDISK_TYPES.get(ptype, ptype)
            nbytes = int(fields["size"]) * sector
            idx = len(parts) + 1
            parts.append({"name": f"part{idx}", "size": Size(bytes=nbytes).text(), "type": ptype,
                          "label": fields.get("name", "").strip('"') or None,
                          "fs": "swap" if ptype == "swap" else None,
                          "logical": label == "dos" and idx > 4})
            continue
        m = re.fullmatch(r"(\w[\w-]*)\s*:\s*(.*)", line)
        if not m:
            raise ManifestError(f"{source}:{no}: not an sfdisk dump line: {line!r}")
        key, value = m.groups()
        if key == "label":
            label = value.strip()
        elif key == "device":
            device = value.strip()
        elif key == "sector-size":
            if not re.fullmatch(r"[0-9]{3,5}", value.strip()) or int(value) not in SECTOR_SIZES:
                raise ManifestError(f"{source}:{no}: sector-size {value[:40]!r} is not a power of two "
                                    "from 512 to 65536")
            sector = int(value)
    if label not in ("gpt", "dos"):
        raise ManifestError(f"{source}:1: no 'label: gpt' or 'label: dos' line")
    if not parts:
        raise ManifestError(f"{source}:1: no partition in the dump")
    return parse_manifest(partitions_to_toml("gpt" if label == "gpt" else "mbr", parts, device), source)
