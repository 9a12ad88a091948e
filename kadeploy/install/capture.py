"""`kadeploy manifest capture`: a manifest written from the running machine (its
disk, partitions, file systems and mounts), for the admin to read and edit.

Facts come from lsblk --json (the tree of disks and partitions) and blkid (file
systems; lsblk alone needs udev's database), and the mounts from findmnt.
Mounted file systems become tar sources of their mount point; unmounted ones
(an ESP where vfat is not mounted, a file system of another kind) become raw
images of their partition; swap is made anew.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Dict, List, Optional

from .layout import GPT_TYPES, MBR_TYPES
from .formats import toml_str
from .manifest import DEFAULT_EXCLUDES, FILESYSTEMS, Size, parse_manifest
from .newroot import booted_by_uefi

TYPE_BY_CODE = {v.lower(): k for k, v in GPT_TYPES.items()} | \
    {"0x" + v.zfill(2): k for k, v in MBR_TYPES.items()} | {"0xf": "extended", "0x0f": "extended"}


class CaptureError(RuntimeError):
    pass


def _json(argv: List[str]) -> dict:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise CaptureError(f"{' '.join(argv[:2])} failed: {r.stderr.strip() or r.returncode}")
    return json.loads(r.stdout)


def _blkid(dev: str) -> Dict[str, str]:
    r = subprocess.run(["blkid", "--probe", "--output", "export", dev], capture_output=True, text=True)
    return dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)


def _mounts() -> Dict[str, str]:
    """Device (real path) -> its first mount point."""
    data = _json(["findmnt", "--list", "--json", "--output", "SOURCE,TARGET"])
    out: Dict[str, str] = {}
    for fs in data.get("filesystems", []):
        src = fs.get("source") or ""
        if src.startswith("/dev/"):
            out.setdefault(os.path.realpath(src.split("[")[0]), fs["target"])
    return out


def root_disk() -> str:
    r = subprocess.run(["findmnt", "--noheadings", "--output", "SOURCE", "/"], capture_output=True, text=True)
    src = r.stdout.strip().split("[")[0]
    if not src.startswith("/dev/"):
        raise CaptureError(f"the root file system is on {src or 'nothing'}, not a disk: give the disk")
    r = subprocess.run(["lsblk", "--noheadings", "--nodeps", "--output", "PKNAME", src],
                       capture_output=True, text=True)
    parent = r.stdout.strip()
    return f"/dev/{parent}" if parent else src


def capture(device: Optional[str] = None, root: str = "/") -> str:
    """Manifest text for `device` (default: the disk of /); mount points are taken
    relative to `root`, for a machine mounted elsewhere."""
    dev = device or root_disk()
    data = _json(["lsblk", "--json", "--bytes", "--output",
                  "NAME,PATH,SIZE,TYPE,PTTYPE,PARTTYPE,PARTLABEL,START", dev])
    disks = data.get("blockdevices", [])
    if not disks:
        raise CaptureError(f"lsblk knows no disk {dev}")
    disk = disks[0]
    parts = sorted(disk.get("children", []), key=lambda c: int(c.get("start") or 0))
    if not parts:
        raise CaptureError(f"{dev} has no partitions (a kernel without partition parsers? run partx -a {dev})")
    table = "gpt" if _blkid(dev).get("PTTYPE") == "gpt" or disk.get("pttype") == "gpt" else "mbr"
    mounts = _mounts()
    out = ["# Captured by `kadeploy manifest capture` from " + dev + ".",
           "# Edit it (sizes, sources, hooks), then check it: kadeploy manifest check FILE",
           "", "[disk]", f"# device = {toml_str(dev)}   # or by_path = ..., or min_size = \"8GiB\"",
           f"table = {toml_str(table)}"]
    has = set()
    for i, part in enumerate(parts):
        info = _blkid(part["path"])
        code = (info.get("PART_ENTRY_TYPE") or part.get("parttype") or "").lower()
        ptype = TYPE_BY_CODE.get(code, code.upper() if table == "gpt" else code)
        fs = info.get("TYPE")
        fs = fs if fs in FILESYSTEMS else None
        if ptype == "swap" or fs == "swap":
            fs, ptype = "swap", ("swap" if ptype in ("linux", "swap") else ptype)
        has.add(ptype)
        source_dir = mounts.get(os.path.realpath(part["path"])) if fs and fs != "swap" else None
        mount = _relative(source_dir, root)
        # The root grows or shrinks with the target disk; the others keep their sizes.
        size = "fill" if mount == "/" else Size(bytes=int(part["size"])).text()
        out += ["", "[[partition]]", f"name = {toml_str(_name(mount, ptype, fs, i))}",
                f"size = {toml_str(size)}", f"type = {toml_str(ptype)}"]
        if fs:
            out.append(f"fs = {toml_str(fs)}")
        label = info.get("LABEL")
        if label:
            out.append(f"label = {toml_str(label)}")
        if mount:
            out.append(f"mount = {toml_str(mount)}")
            exclude = list(DEFAULT_EXCLUDES) if mount == "/" else []
            out.append(f"source = {{ tar = {toml_str(source_dir)}, exclude = [{', '.join(map(toml_str, exclude))}] }}")
        elif fs != "swap" and ptype not in ("bios-boot", "extended"):
            if ptype == "esp":
                out.append('mount = "/boot/efi"')
            out.append(f"source = {{ image = {toml_str(part['path'])} }}")
    loader = "grub-efi" if "esp" in has and booted_by_uefi() else \
        "grub-bios" if "bios-boot" in has or table == "mbr" else "none"
    out += ["", "[identity]", 'hostname = "node{index:02}"   # or a node table: ka-d-server --nodes-table',
            "", "[boot]", f"loader = {toml_str(loader)}"]
    text = "\n".join(out) + "\n"
    parse_manifest(text, "the captured manifest")   # what we write must check
    return text


def _relative(path: Optional[str], root: str) -> Optional[str]:
    """A mount point as the installed machine sees it; None outside `root`."""
    if path is None:
        return None
    root = os.path.normpath(root)
    if root == "/":
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root):]
    return None


def _name(mount: Optional[str], ptype: str, fs: Optional[str], i: int) -> str:
    if mount == "/":
        return "root"
    if mount:
        n = mount.strip("/").replace("/", "-").replace(".", "-").lower()
        if n and n[0].isalpha():
            return n[:31]
    if ptype in ("esp", "bios-boot", "swap"):
        return {"esp": "esp", "bios-boot": "bios", "swap": "swap"}[ptype] + ("" if i < 9 else str(i + 1))
    return f"part{i + 1}"
