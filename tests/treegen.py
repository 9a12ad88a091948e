"""Build a directory tree that is hard to clone right (deterministic for a seed).

    make_hard_tree(root, big_mib=64, n_small=2000, seed=0)

Contents, by top-level directory:

- big/      one large random file (``big_mib`` MiB)
- small/    ``n_small`` small files (0 B .. 16 KiB, incl. 511/512/513/10240 B boundaries)
- sparse/   sparse files (sizes for the default ``sparse_mib=256``): 256 MiB with
            three small data extents, 64 MiB all hole, 1 MiB data then a 31 MiB hole
- links/    hard links (3 names for one inode, across directories; a setuid
            pair; a link to a sparse file)
- symlinks/ relative, absolute (existing and dangling), dangling, to a directory,
            a loop, self-referencing, a 1000-byte target, a non-UTF-8 target
- special/  a fifo, a char device (1,3 like /dev/null), a block device (7,0)
- owners/   files, a directory and a symlink owned by uids/gids unknown to the
            system (54321.., 1000000, 2000000)
- modes/    setuid, setgid, both, 07777, 0000 files; sticky, setgid and
            read-only (0555) directories with content
- names/    unicode, emoji, newline/tab/backslash/leading-dash names, a 255-byte
            ASCII name, a 255-byte UTF-8 name, non-UTF-8 names (file and dir)
- deep/     a ~1.6 KB deep path (64 levels) with a file at the bottom
- empty/    empty directories (nested, odd mode and owner)
- times/    explicit mtimes: 0, 2**31-1, sub-second; with ``odd_times`` also
            pre-1970 and after 2106 (GNU tar restores both but warns on stderr)

Every entry gets an explicit whole-second mtime (directories after their
content, symlinks with lutimes).  Device nodes and foreign owners need root;
with ``privileged=False`` (the default when not root) they are left out.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

MiB = 1 << 20
BASE_TIME = 1_500_000_000          # 2017-07-14
FOREIGN_UID, FOREIGN_GID = 54321, 54320


def _write(path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _write_extents(path, size: int, extents: list[tuple[int, bytes]]) -> None:
    """A file of apparent ``size`` holding only ``extents`` (offset, data): the rest are holes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for offset, data in extents:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def make_hard_tree(root, *, big_mib: int = 64, n_small: int = 2000, seed: int = 0,
                   sparse_mib: int = 256, odd_times: bool = True,
                   privileged: bool | None = None) -> Path:
    """Create the tree under ``root`` (created if missing, must be empty); return it as a Path.

    ``sparse_mib`` (>= 8) is the apparent size of the largest sparse file; it is
    read in full by digests, so small trees for quick tests use a small value.
    """
    if sparse_mib < 8:
        raise ValueError("sparse_mib must be at least 8")
    if privileged is None:
        privileged = os.geteuid() == 0
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    broot = os.fsencode(root)

    def p(*parts) -> bytes:
        return os.path.join(broot, *(os.fsencode(x) for x in parts))

    def mkdir(*parts, mode: int = 0o755) -> bytes:
        path = p(*parts)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        return path

    explicit_times: dict[bytes, int] = {}   # path -> mtime_ns set at the end

    # big/
    mkdir("big")
    big = bytearray()
    for i in range(big_mib):
        big += random.Random(seed * 1_000_003 + i).randbytes(MiB)
    _write(p("big", "big.bin"), bytes(big))
    del big

    # small/
    boundaries = [0, 1, 511, 512, 513, 10240]
    per_dir = 100
    for i in range(n_small):
        d = f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            mkdir("small", d, mode=rng.choice([0o755, 0o750, 0o700]))
        size = boundaries[i] if i < len(boundaries) else rng.randrange(0, 16385)
        mode = rng.choice([0o644, 0o644, 0o600, 0o755, 0o444, 0o640])
        _write(p("small", d, f"f{i:05d}"), rng.randbytes(size), mode)

    # sparse/
    mkdir("sparse")
    _write_extents(p("sparse", "holes.img"), sparse_mib * MiB,
                   [(0, rng.randbytes(4096)), (sparse_mib * MiB * 2 // 5 + 123, rng.randbytes(65536)),
                    (sparse_mib * MiB - 3, b"end")])
    _write_extents(p("sparse", "allhole.img"), sparse_mib // 4 * MiB, [])
    _write_extents(p("sparse", "tail-hole.img"), sparse_mib // 8 * MiB, [(0, rng.randbytes(MiB))])

    # links/ (hard links)
    mkdir("links", "sub")
    _write(p("links", "a"), rng.randbytes(3000))
    os.link(p("links", "a"), p("links", "b"))
    os.link(p("links", "a"), p("links", "sub", "c"))
    _write(p("links", "suid"), rng.randbytes(100))
    os.link(p("links", "suid"), p("links", "suid2"))
    os.link(p("sparse", "holes.img"), p("links", "holes-link.img"))

    # symlinks/
    mkdir("symlinks")
    for name, target in [
        ("rel", "../small/d000/f00007"),
        ("abs-existing", "/dev/null"),
        ("abs-dangling", "/nonexistent/kadeploy/abs-target"),
        ("dangling", "does/not/exist"),
        ("to-dir", "../small"),
        ("loop-a", "loop-b"),
        ("loop-b", "loop-a"),
        ("self", "self"),
        ("long-target", "x/" * 499 + "y"),
    ]:
        os.symlink(target, p("symlinks", name))
    os.symlink(b"caf\xe9-\xff", p("symlinks", "non-utf8-target"))

    # special/
    mkdir("special")
    os.mkfifo(p("special", "fifo"), 0o640)
    if privileged:
        os.mknod(p("special", "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(p("special", "loop0"), 0o660 | stat.S_IFBLK, os.makedev(7, 0))

    # owners/ (chown before chmod: chown clears setuid/setgid)
    mkdir("owners", "foreign-dir")
    _write(p("owners", "foreign"), b"owned by nobody we know\n", 0o640)
    _write(p("owners", "big-ids"), b"large ids\n", 0o644)
    _write(p("owners", "root-setgid-foreign"), b"#!/bin/sh\n", 0o755)
    os.symlink("foreign", p("owners", "foreign-link"))
    if privileged:
        os.chown(p("owners", "foreign"), FOREIGN_UID, FOREIGN_GID)
        os.chown(p("owners", "foreign-dir"), FOREIGN_UID + 1, FOREIGN_GID + 3)
        os.chown(p("owners", "big-ids"), 1_000_000, 2_000_000)
        os.chown(p("owners", "root-setgid-foreign"), 0, FOREIGN_GID)
        os.chown(p("owners", "foreign-link"), FOREIGN_UID + 2, FOREIGN_GID + 2, follow_symlinks=False)
        os.chown(p("links", "suid"), FOREIGN_UID, FOREIGN_GID)
    os.chmod(p("owners", "root-setgid-foreign"), 0o2755)
    os.chmod(p("links", "suid"), 0o4755)

    # modes/
    mkdir("modes")
    for name, mode in [("setuid", 0o4755), ("setgid", 0o2755), ("both", 0o6711),
                       ("all-bits", 0o7777), ("none", 0o000), ("sticky-file", 0o1644)]:
        _write(p("modes", name), name.encode() + b"\n", mode)
    mkdir("modes", "sticky-dir", mode=0o1777)
    mkdir("modes", "setgid-dir", mode=0o2775)
    mkdir("modes", "sticky-setgid-dir", mode=0o3775)
    _write(p("modes", "setgid-dir", "inside"), b"x", 0o644)
    os.makedirs(p("modes", "read-only-dir"))
    _write(p("modes", "read-only-dir", "inside"), b"can you write me?\n", 0o444)
    os.chmod(p("modes", "read-only-dir"), 0o555)
    mkdir("modes", "private-dir", mode=0o700)

    # names/
    mkdir("names")
    for name in ["héllo wörld.txt", "日本語のファイル", "emoji 📦🚀.txt", "new\nline", "tab\tname",
                 "back\\slash", "-rf", " leading space", "trailing space ", "quote'\"`$(x)",
                 "n" * 255, "é" * 127 + "x"]:
        assert len(name.encode()) <= 255
        _write(p("names", name), name.encode() + b"\n")
    _write(os.path.join(p("names"), b"latin1-caf\xe9.txt"), b"not utf-8\n")
    _write(os.path.join(p("names"), b"\xff\xfe\xfd"), b"")
    os.mkdir(os.path.join(p("names"), b"dir-\xe9"))
    _write(os.path.join(p("names"), b"dir-\xe9", b"inner-\xe0"), b"inner\n")

    # deep/
    parts = ["deep"] + [f"level_{i:02d}_" + "abcdefghijklmnop" for i in range(64)]
    mkdir(*parts)
    _write(p(*parts, "bottom.txt"), b"deep down\n")

    # empty/
    mkdir("empty", "a")
    mkdir("empty", "b", "c", "d")
    mkdir("empty", "odd", mode=0o1700)
    if privileged:
        os.chown(p("empty", "odd"), FOREIGN_UID, FOREIGN_GID)
        os.chmod(p("empty", "odd"), 0o1700)

    # times/
    mkdir("times")
    times = {"epoch": 0, "y2038": 2**31 - 1, "subsecond": BASE_TIME + 0.987654321}
    if odd_times:
        times |= {"pre-1970": -86400 * 400, "after-2106": 2**32 + 7}
    for name, t in times.items():
        _write(p("times", name), name.encode() + b"\n")
        explicit_times[p("times", name)] = int(round(t * 1e9))

    # Explicit mtimes for everything, bottom-up so directories come after their content.
    walk = sorted(os.walk(broot), key=lambda w: (-w[0].count(b"/"), w[0]))   # deepest first
    for dirpath, dirnames, filenames in walk:
        for name in sorted(filenames) + sorted(dirnames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                continue                     # set when the walk reaches the directory itself
            ns = explicit_times.get(full, (BASE_TIME + rng.randrange(0, 10**7)) * 10**9)
            os.utime(full, ns=(ns, ns), follow_symlinks=False)
        ns = (BASE_TIME + rng.randrange(0, 10**7)) * 10**9
        os.utime(dirpath, ns=(ns, ns))
    return root
