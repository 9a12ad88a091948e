"""treedigest: a real tar round trip of the hard tree is equal; every kind of change is named."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from treegen import make_hard_tree

from kadeploy.lab.treedigest import (
    compare_trees,
    diff_manifests,
    manifest_digest,
    tree_digest,
    tree_manifest,
)

TAR_CREATE = ["tar", "--create", "--numeric-owner", "--sparse", "--file", "-"]
TAR_EXTRACT = ["tar", "--extract", "--numeric-owner", "--same-permissions", "--same-owner",
               "--sparse", "--read-full-records", "--file", "-"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, owners)")


def tar_copy(src: Path, dst: Path, create_opts=TAR_CREATE) -> None:
    """``(cd src; tar -c .) | (cd dst; tar -x)``, as a kadeploy client would extract."""
    dst.mkdir(parents=True, exist_ok=True)
    producer = subprocess.Popen([*create_opts, "-C", str(src), "."], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    consumer = subprocess.run([*TAR_EXTRACT, "-C", str(dst)], stdin=producer.stdout,
                              capture_output=True)
    producer.stdout.close()
    perr = producer.stderr.read()
    producer.stderr.close()
    assert producer.wait() == 0, perr.decode(errors="replace")
    assert consumer.returncode == 0, consumer.stderr.decode(errors="replace")


# ---------------------------------------------------------------- round trip

@needs_root
def test_tar_round_trip_of_hard_tree_is_identical(hard_tree, scratch):
    clone = scratch / "clone"
    tar_copy(hard_tree, clone)
    diff = compare_trees(hard_tree, clone, sparse=True)
    assert diff == [], "\n".join(diff[:50])
    assert tree_digest(hard_tree) == tree_digest(clone)


@needs_root
def test_hard_tree_has_every_hard_case(hard_tree):
    m = {e.path: e for e in tree_manifest(hard_tree, sparse=True)}
    kinds = {e.kind for e in m.values()}
    assert {"file", "dir", "symlink", "fifo", "chr", "blk"} <= kinds
    assert m[b"special/null"].rdev == (1, 3)
    assert m[b"links/sub/c"].links == (b"links/a", b"links/b", b"links/sub/c")
    assert m[b"sparse/holes.img"].sparse and not m[b"big/big.bin"].sparse
    assert m[b"big/big.bin"].size == 64 << 20
    assert m[b"modes/setuid"].mode == 0o4755 and m[b"modes/sticky-dir"].mode == 0o1777
    assert m[b"owners/foreign"].uid == 54321
    assert m[b"owners/foreign-link"].uid == 54323          # lchown'd symlink
    assert m[b"symlinks/dangling"].target == b"does/not/exist"
    assert b"names/latin1-caf\xe9.txt" in m
    assert b"names/" + b"n" * 255 in m
    assert max(len(p) for p in m) > 1500
    assert m[b"times/pre-1970"].mtime < 0 and m[b"times/after-2106"].mtime > 2**32
    assert sum(1 for e in m.values() if e.kind == "file" and e.path.startswith(b"small/")) == 2000


@needs_root
def test_tar_without_sparse_loses_holes(hard_tree, scratch):
    clone = scratch / "clone"
    tar_copy(hard_tree / "sparse", clone, create_opts=[o for o in TAR_CREATE if o != "--sparse"])
    diff = compare_trees(hard_tree / "sparse", clone, sparse=True)
    assert any(d.startswith("'holes.img': sparse True") for d in diff), diff
    assert compare_trees(hard_tree / "sparse", clone) == []     # same content, by default


def test_generator_is_deterministic(scratch):
    a = make_hard_tree(scratch / "a", big_mib=1, n_small=30, seed=7, sparse_mib=8)
    b = make_hard_tree(scratch / "b", big_mib=1, n_small=30, seed=7, sparse_mib=8)
    c = make_hard_tree(scratch / "c", big_mib=1, n_small=30, seed=8, sparse_mib=8)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    assert diff_manifests(tree_manifest(a), tree_manifest(b)) == []


# ---------------------------------------------------------------- each change is named

@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    """A small hard tree and its manifest; tests mutate tar copies of it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (device nodes, owners, tmpfs)")
    from kadeploy.lab.vcluster import scratch_fs
    with scratch_fs("1g") as d:
        src = make_hard_tree(d / "src", big_mib=1, n_small=50, seed=1, sparse_mib=8)
        yield src, tree_manifest(src)


@contextlib.contextmanager
def parent_mtime_kept(path: Path):
    """Restore the parent directory's mtime after adding/removing an entry in it."""
    st = os.lstat(path.parent)
    yield
    os.utime(path.parent, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rewrite_keeping_meta(path: Path, data: bytes) -> None:
    st = os.lstat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flip_byte(root):
    p = root / "big/big.bin"
    with open(p, "rb") as f:
        f.seek(12345)
        b = f.read(1)
    st = os.lstat(p)
    with open(p, "r+b") as f:
        f.seek(12345)
        f.write(bytes([b[0] ^ 1]))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def fill_hole(root):
    p = root / "sparse/holes.img"
    st = os.lstat(p)
    with open(p, "r+b") as f:
        f.seek(1 << 20)                   # inside the first hole
        f.write(b"\x01")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def change_mode(root):
    os.chmod(root / "modes/setuid", 0o755)


def change_sticky(root):
    os.chmod(root / "modes/sticky-dir", 0o777)


def change_owner(root):
    os.chown(root / "owners/foreign", 54322, -1)


def change_group(root):
    os.chown(root / "owners/foreign-dir", -1, 1)


def change_symlink_owner(root):
    os.chown(root / "owners/foreign-link", 0, -1, follow_symlinks=False)


def change_file_mtime(root):
    p = root / "small/d000/f00010"
    st = os.lstat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def change_dir_mtime(root):
    os.utime(root / "empty/b/c", (1, 1))


def change_symlink_mtime(root):
    os.utime(root / "symlinks/rel", (1, 1), follow_symlinks=False)


def change_symlink_target(root):
    p = root / "symlinks/dangling"
    st = os.lstat(p)
    with parent_mtime_kept(p):
        p.unlink()
        os.symlink("does/not/exist/either", p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def break_hardlink(root):
    p = root / "links/b"
    with parent_mtime_kept(p):
        st = os.lstat(p)
        tmp = root / "links/b.tmp"
        shutil.copy2(p, tmp)
        os.replace(tmp, p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def remove_fifo(root):
    with parent_mtime_kept(root / "special/fifo"):
        os.unlink(root / "special/fifo")


def fifo_to_file(root):
    p = root / "special/fifo"
    st = os.lstat(p)
    with parent_mtime_kept(p):
        os.unlink(p)
        p.touch(mode=0o640)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def change_device(root):
    p = root / "special/null"
    st = os.lstat(p)
    with parent_mtime_kept(p):
        os.unlink(p)
        os.mknod(p, st.st_mode, os.makedev(1, 5))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def add_file(root):
    p = root / "names/extra"
    with parent_mtime_kept(p):
        p.write_bytes(b"")


def change_non_utf8_name_content(root):
    _rewrite_keeping_meta(Path(os.fsdecode(os.fsencode(root) + b"/names/latin1-caf\xe9.txt")), b"N")


MUTATIONS = [
    (flip_byte, ["'big/big.bin': content"]),
    (fill_hole, ["'links/holes-link.img': content", "'sparse/holes.img': content"]),
    (change_mode, ["'modes/setuid': mode 4755 in source != 0755 in clone"]),
    (change_sticky, ["'modes/sticky-dir': mode 1777 in source != 0777 in clone"]),
    (change_owner, ["'owners/foreign': uid 54321 in source != 54322 in clone"]),
    (change_group, ["'owners/foreign-dir': gid"]),
    (change_symlink_owner, ["'owners/foreign-link': uid 54323 in source != 0 in clone"]),
    (change_file_mtime, ["'small/d000/f00010': mtime"]),
    (change_dir_mtime, ["'empty/b/c': mtime"]),
    (change_symlink_mtime, ["'symlinks/rel': mtime"]),
    (change_symlink_target, ["'symlinks/dangling': target 'does/not/exist' in source != "
                             "'does/not/exist/either' in clone"]),
    (break_hardlink, ["'links/a': links ['links/a', 'links/b', 'links/sub/c'] in source != "
                      "['links/a', 'links/sub/c'] in clone",
                      "'links/b': links ['links/a', 'links/b', 'links/sub/c'] in source != - in clone",
                      "'links/sub/c': links"]),
    (remove_fifo, ["'special/fifo': only in source (fifo)"]),
    (fifo_to_file, ["'special/fifo': kind fifo in source != file in clone"]),
    (change_device, ["'special/null': rdev 1,3 in source != 1,5 in clone"]),
    (add_file, ["'names/extra': only in clone (file)"]),
    (change_non_utf8_name_content, ["'names/latin1-caf\\\\xe9.txt': content"]),
]


@pytest.mark.parametrize("mutate, expected", MUTATIONS, ids=[m.__name__ for m, _ in MUTATIONS])
def test_each_change_is_detected_and_named(small_tree, scratch, mutate, expected):
    src, manifest = small_tree
    clone = scratch / "clone"
    tar_copy(src, clone)
    mutate(clone)
    changed = tree_manifest(clone)
    diff = diff_manifests(manifest, changed, names=("source", "clone"))
    assert len(diff) == len(expected), "\n".join(diff)
    for want, line in zip(expected, diff):
        assert line.startswith(want), f"{line!r} does not start with {want!r}"
    assert manifest_digest(changed) != manifest_digest(manifest)


def test_what_is_not_compared(small_tree, scratch):
    src, manifest = small_tree
    clone = scratch / "clone"
    tar_copy(src, clone)
    p = clone / "small/d000/f00011"
    st = os.lstat(p)
    os.utime(p, ns=(1, st.st_mtime_ns + 999_999))   # atime and sub-second mtime
    os.chmod(p, st.st_mode)                          # ctime
    assert tree_manifest(clone) == manifest

    os.chmod(clone, 0o700)
    os.utime(clone, (1, 1))
    assert diff_manifests(manifest, tree_manifest(clone)) == ["'.': mode 0755 in a != 0700 in b",
                                                              "'.': mtime " + str(manifest[0].mtime)
                                                              + " in a != 1 in b"]
    assert tree_manifest(clone, include_root=False) == tree_manifest(src, include_root=False)
    os.chown(clone / "owners/foreign", 1, 1)
    os.utime(clone / "big/big.bin", (1, 1))
    assert tree_digest(clone, include_root=False, owner=False, mtime=False) == \
        tree_digest(src, include_root=False, owner=False, mtime=False)
