"""Digest of a directory tree's content and metadata, to prove a clone equals its source.

One :class:`Entry` per path (the root is ``b"."``), sorted by relative path as
bytes, so non-UTF-8 names are fine.  Recorded per entry:

- kind: file, dir, symlink, fifo, chr, blk, sock
- mode: permission bits including setuid, setgid and sticky (``S_IMODE``);
  symlinks are always 0o777 on Linux and are recorded as such
- uid, gid (numeric)
- mtime in whole seconds (floor of ``st_mtime_ns``); atime and ctime are never
  recorded, since reading the tree or restoring it changes them
- regular files: size, SHA-256 of the content (streamed), and optionally
  whether the file is sparse (``sparse=True``)
- symlinks: the target bytes (dangling targets too, never followed)
- chr/blk devices: (major, minor)
- hard links: every non-directory whose inode is reached by several paths of
  the tree records all those paths (relative, sorted), not inode numbers;
  links to the inode from outside the tree are ignored

Not recorded: directory sizes (file-system specific), xattrs, ACLs, file
flags, sub-second times.

What GNU tar 1.34 restores (checked with ``tar -c --numeric-owner --sparse`` |
``tar -x --numeric-owner --same-permissions --same-owner --sparse`` as root, default
gnu format): mode incl. setuid/setgid/sticky, numeric owner of everything
including symlinks (lchown), mtime in whole seconds (sub-seconds are dropped
by the gnu/ustar formats; --format=posix keeps them) of regular files,
directories (set after their content), symlinks (lutimes), fifos and device
nodes, pre-1970 and post-2106 mtimes (with a warning on stderr), the root
``./`` entry's mode/owner/mtime when archived as ``-C src .``, hard links
among archived paths, holes with ``--sparse`` on both sides.  Options exist
to ignore what a given comparison cannot expect to match: ``include_root``,
``mtime``, ``owner``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Iterable, NamedTuple

__all__ = ["Entry", "tree_manifest", "tree_digest", "manifest_digest", "diff_manifests",
           "compare_trees"]

_CHUNK = 1 << 20
_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock",
}
# A file counts as sparse when at least this many bytes of it are unallocated.
# Large enough to ignore block rounding and inline data, small enough for real holes.
SPARSE_MIN_HOLE = 64 * 1024


class Entry(NamedTuple):
    path: bytes                          # relative to the root, b"." for the root
    kind: str
    mode: int | None = None              # S_IMODE bits; None when not compared
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None             # seconds
    size: int | None = None              # regular files only
    sha256: str | None = None            # regular files only
    target: bytes | None = None          # symlinks only
    rdev: tuple[int, int] | None = None  # chr/blk only
    links: tuple[bytes, ...] | None = None   # all tree paths sharing this inode, if > 1
    sparse: bool | None = None           # regular files, only with sparse=True


def _file_sha256(path: bytes) -> str:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:              # O_NOATIME needs ownership or CAP_FOWNER
        fd = os.open(path, flags)
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.hexdigest()


def _walk(root: bytes) -> Iterable[tuple[bytes, os.stat_result]]:
    """(relative path, lstat) for the root and everything under it, never following symlinks."""
    yield b".", os.lstat(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for de in it:
                sub = rel + b"/" + de.name if rel else de.name
                st = de.stat(follow_symlinks=False)
                yield sub, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(sub)


def tree_manifest(path: str | os.PathLike, *, include_root: bool = True, mtime: bool = True,
                  owner: bool = True, sparse: bool = False) -> list[Entry]:
    """The sorted list of :class:`Entry` describing the tree at ``path``.

    ``include_root=False`` keeps the root entry but drops its mode, owner and
    mtime (the directory a clone lands in often differs).  ``mtime=False`` and
    ``owner=False`` drop those fields everywhere.  ``sparse=True`` records
    whether each regular file has at least SPARSE_MIN_HOLE unallocated bytes
    (file-system dependent: only compare trees on similar file systems).
    """
    root = os.fsencode(path)
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise NotADirectoryError(f"{os.fsdecode(root)!r} is not a directory")
    raw = sorted(_walk(root), key=lambda e: (e[0] != b".", e[0]))     # root first
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in raw:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)

    entries = []
    hashes: dict[tuple[int, int], str] = {}     # hard links are read once
    for rel, st in raw:
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), f"unknown-{stat.S_IFMT(st.st_mode):o}")
        full = os.path.join(root, rel) if rel != b"." else root
        meta = include_root or rel != b"."
        e = Entry(
            path=rel, kind=kind,
            mode=stat.S_IMODE(st.st_mode) if meta else None,
            uid=st.st_uid if meta and owner else None,
            gid=st.st_gid if meta and owner else None,
            mtime=st.st_mtime_ns // 1_000_000_000 if meta and mtime else None,
        )
        if kind == "file":
            key = (st.st_dev, st.st_ino)
            if key not in hashes:
                hashes[key] = _file_sha256(full)
            e = e._replace(size=st.st_size, sha256=hashes[key])
            if sparse:
                e = e._replace(sparse=st.st_blocks * 512 + SPARSE_MIN_HOLE <= st.st_size)
        elif kind == "symlink":
            e = e._replace(target=os.readlink(full))
        elif kind in ("chr", "blk"):
            e = e._replace(rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
        group = inodes.get((st.st_dev, st.st_ino)) if kind != "dir" else None
        if group and len(group) > 1:
            e = e._replace(links=tuple(group))
        entries.append(e)
    return entries


def manifest_digest(entries: Iterable[Entry]) -> str:
    """SHA-256 hex digest of a manifest."""
    # repr() of tuples of bytes/str/int/bool/None is stable across Python versions.
    return hashlib.sha256("\n".join(repr(tuple(e)) for e in entries).encode()).hexdigest()


def tree_digest(path: str | os.PathLike, **options) -> str:
    """SHA-256 hex digest of :func:`tree_manifest` (same options)."""
    return manifest_digest(tree_manifest(path, **options))


def _show_path(p: bytes) -> str:
    return repr(p.decode("utf-8", "backslashreplace"))


def _show(field: str, v) -> str:
    if v is None:
        return "-"
    if field == "mode":
        return f"{v:04o}"
    if field == "target":
        return _show_path(v)
    if field == "links":
        return "[" + ", ".join(_show_path(p) for p in v) + "]"
    if field == "rdev":
        return f"{v[0]},{v[1]}"
    if field == "sha256":
        return "sha256:" + v[:16]
    return str(v)


def diff_manifests(a: list[Entry], b: list[Entry], *, names: tuple[str, str] = ("a", "b")) -> list[str]:
    """Human-readable differences between two manifests, one line each, sorted by path.

    An empty list means the trees are equal.
    """
    na, nb = names
    amap = {e.path: e for e in a}
    bmap = {e.path: e for e in b}
    out = []
    for path in sorted(amap.keys() | bmap.keys()):
        ea, eb = amap.get(path), bmap.get(path)
        shown = _show_path(path)
        if eb is None:
            out.append(f"{shown}: only in {na} ({ea.kind})")
        elif ea is None:
            out.append(f"{shown}: only in {nb} ({eb.kind})")
        elif ea.kind != eb.kind:
            out.append(f"{shown}: kind {ea.kind} in {na} != {eb.kind} in {nb}")
        else:
            for name in Entry._fields[2:]:
                va, vb = getattr(ea, name), getattr(eb, name)
                if va != vb:
                    what = "content" if name == "sha256" else name
                    out.append(f"{shown}: {what} {_show(name, va)} in {na} != {_show(name, vb)} in {nb}")
    return out


def compare_trees(a: str | os.PathLike, b: str | os.PathLike, **options) -> list[str]:
    """diff_manifests of two trees, labelled with their paths (options as tree_manifest)."""
    return diff_manifests(tree_manifest(a, **options), tree_manifest(b, **options),
                          names=(os.fsdecode(a), os.fsdecode(b)))
