"""The order of an install's streams and mounts, decided once for both ends. Pure.

A file system is received after the one it is mounted in (/ before /var, /boot
before /boot/efi), so that each tar restores the mount point directories of its
own file system; unmounted sources (raw images of partitions that are not mounted
during the install) come last, in manifest order.
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


def partclone_tool(fs: str) -> str:
    return "partclone." + {"vfat": "fat", "ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs"}[fs]
