"""Each node's own identity in its new root, pure text: /etc/hostname and
/etc/hosts, an fstab by the UUIDs of the node's NEW file systems, and the
manifest's own file templates ($name placeholders of string.Template, since
configuration files are full of braces)."""
from __future__ import annotations

import os
import string
from typing import Dict, Iterable, List

from . import order
from .manifest import FileTemplate, Manifest

HOSTS_ADDRESS = "127.0.1.1"   # Debian's convention for the machine's own name


class TemplateError(ValueError):
    """A template names a value this node does not have."""


def hosts_text(old: str, hostname: str) -> str:
    lines = [l for l in old.splitlines() if l.split()[:1] != [HOSTS_ADDRESS]]
    at = next((i + 1 for i, l in enumerate(lines) if l.split()[:1] == ["127.0.0.1"]), 0)
    if not any(l.split()[:1] == ["127.0.0.1"] for l in lines):
        lines.insert(0, "127.0.0.1\tlocalhost")
        at = 1
    lines.insert(at, f"{HOSTS_ADDRESS}\t{hostname}")
    return "\n".join(lines) + "\n"


def fstab_text(m: Manifest, uuids: Dict[str, str]) -> str:
    out = ["# Written by kadeploy: the file systems of this node, by UUID.",
           "# <file system> <mount point> <type> <options> <dump> <pass>"]
    for p in order.mounts(m):
        fsck = 1 if p.mount == "/" else 2 if p.fs in ("ext4", "vfat") else 0
        out.append(f"UUID={uuids[p.name]}\t{p.mount}\t{p.fs}\t{p.mount_options}\t0\t{fsck}")
    for p in m.partitions:
        if p.fs == "swap":
            out.append(f"UUID={uuids[p.name]}\tnone\tswap\tsw\t0\t0")
    return "\n".join(out) + "\n"


def render(template: FileTemplate, values: Dict[str, str]) -> str:
    try:
        return string.Template(template.content).substitute(values)
    except KeyError as e:
        raise TemplateError(f"template {template.path} uses ${e.args[0]}, which this node has "
                            f"not got (it has: {', '.join(sorted(values))})") from None
    except ValueError as e:
        raise TemplateError(f"template {template.path}: {e}") from None


def render_files(files: Iterable[FileTemplate], values: Dict[str, str], root: str) -> List[str]:
    written = []
    for t in files:
        text = render(t, values)
        path = os.path.join(root, t.path.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".kadeploy-new"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, t.mode)
        os.replace(tmp, path)
        written.append(t.path)
    return written
