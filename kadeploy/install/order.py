"""The order of an install's streams and mounts, decided once for both ends. Pure.

A file system is received after the one it is mounted in (/ before /var, /boot
before /boot/efi), so that each tar restores the mount point directories of its
own file system; unmounted sources (raw images of partitions that are not mounted
during the install) come last, in manifest order.

Before a tar is extracted, the file systems it lies in are mounted, and so are the
file systems made on the node with nothing sent into them that lie inside it: a
target with its own /srv receives the source's /srv into it, instead of hiding it
under a mount.
"""
from __future__ import annotations

from typing import List

from .manifest import Manifest, Partition


def _depth(p: Partition) -> int:
    if p.mount is None:
        return 1 << 20
    return 0 if p.mount == "/" else p.mount.rstrip("/").count("/")


def streams(m: Manifest) -> List[Partition]:
    """Partitions that receive a stream, in stream order; their index is the step index."""
    sourced = [p for p in m.partitions if p.source is not None]
    return sorted(sourced, key=_depth)   # stable: manifest order within a depth


def mounts(m: Manifest) -> List[Partition]:
    """Partitions mounted in the new root, parents first."""
    return sorted((p for p in m.partitions if p.mount is not None), key=_depth)


def inside(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent.rstrip("/") + "/")


def made_here(p: Partition) -> bool:
    """Mounted before the streams: its file system is made on the node (an image
    or partclone brings its own, and is mounted after it is written)."""
    return p.source is None or p.source.kind == "tar"


def mounts_before(m: Manifest, p: Partition) -> List[Partition]:
    """What to mount, in order, before the tar of p is extracted."""
    tars = [q for q in m.partitions if q.source is not None and q.source.kind == "tar"]

    def owner(q: Partition) -> Partition:
        """The deepest tar-sourced file system that holds q's mount point."""
        holders = [t for t in tars if t is not q and inside(q.mount, t.mount)]
        return max(holders, key=_depth) if holders else None

    return [q for q in mounts(m) if made_here(q) and (
        inside(p.mount, q.mount) or (q.source is None and owner(q) is p))]


def partclone_tool(fs: str) -> str:
    return "partclone." + {"vfat": "fat", "ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs"}[fs]
