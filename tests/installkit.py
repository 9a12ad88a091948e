"""Loop disks for the install tests: the golden machine on a GPT loop disk, empty
target disks, and comparisons of installed file systems with their sources.

Everything made here is named kdi-* and undone in `finally` blocks, even when a
test fails: mounts, partition devices (partx), loop devices, image files.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Dict, Iterator, List

import golden
import loopdisks
from kadeploy.lab.treedigest import diff_manifests, tree_manifest

MiB = 1 << 20
# The golden disk: GPT, BIOS boot, ESP (vfat), root ext4, /var xfs (300 MiB is
# xfs's minimum), swap.
GOLDEN_LAYOUT = [("bios", 1, "21686148-6449-6E6F-744E-656564454649"),
                 ("esp", 32, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
                 ("root", 1024, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
                 ("var", 320, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
                 ("swap", 32, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F")]
GOLDEN_DISK_MIB = 1420
TARGET_DISK_MIB = 1500


def sh(*argv: str, input: str = None) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


@contextlib.contextmanager
def loop_disk(directory: str, name: str, mib: int) -> Iterator[str]:
    """A sparse image file on a loop device; detached (partitions first) at the end."""
    path = loopdisks.image_path(directory, name)
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    dev = sh("losetup", "--find", "--show", path).strip()
    try:
        yield dev
    finally:
        subprocess.run(["partx", "--delete", dev], capture_output=True)
        subprocess.run(["losetup", "--detach", dev], capture_output=True)
        os.unlink(path)


def partition_nodes(dev: str) -> List[str]:
    """Partition devices of a loop disk; this kernel parses no tables, so partx adds them."""
    subprocess.run(["partx", "--delete", dev], capture_output=True)
    sh("partx", "--add", dev)
    base = os.path.basename(dev)
    parts = sorted((e for e in os.listdir(f"/sys/block/{base}") if e.startswith(base + "p")),
                   key=lambda e: int(e[len(base) + 1:]))
    nodes = [f"/dev/{p}" for p in parts]
    for n in nodes:
        for _ in range(50):
            if os.path.exists(n):
                break
            time.sleep(0.1)
    return nodes


@contextlib.contextmanager
def mounted(dev: str, where: str, *opts: str) -> Iterator[str]:
    os.makedirs(where, exist_ok=True)
    sh("mount", *opts, dev, where)
    try:
        yield where
    finally:
        subprocess.run(["umount", where], capture_output=True)


class GoldenDisk:
    """The golden machine: `parts[name]` are its partition devices, `root` the
    mounted tree (with /var mounted in it) that the server sends."""

    def __init__(self, dev: str, parts: Dict[str, str], root: str) -> None:
        self.dev, self.parts, self.root = dev, parts, root


@contextlib.contextmanager
def golden_disk(directory: str) -> Iterator[GoldenDisk]:
    tarball = golden.ensure_cached()
    with contextlib.ExitStack() as stack:
        dev = stack.enter_context(loop_disk(directory, "golden", GOLDEN_DISK_MIB))
        script = "label: gpt\n" + "".join(f"size={mib}MiB, type={guid}\n" for _, mib, guid in GOLDEN_LAYOUT)
        sh("sfdisk", "--quiet", dev, input=script)
        nodes = partition_nodes(dev)
        parts = {name: node for (name, _, _), node in zip(GOLDEN_LAYOUT, nodes)}
        sh("mkfs.vfat", "-n", "GOLDESP", parts["esp"])
        # vfat cannot be mounted here: mtools writes the ESP's files.
        sh("mmd", "-i", parts["esp"], "::/EFI")
        sh("mmd", "-i", parts["esp"], "::/EFI/kdi")
        note = os.path.join(directory, "kdi-esp-note.txt")
        with open(note, "w") as f:
            f.write("golden ESP\n")
        sh("mcopy", "-i", parts["esp"], note, "::/EFI/kdi/note.txt")
        sh("mkfs.ext4", "-q", "-L", "goldroot", parts["root"])
        sh("mkfs.xfs", "-q", "-L", "goldvar", parts["var"])
        sh("mkswap", "-L", "goldswap", parts["swap"])
        root = os.path.join(directory, "kdi-golden-root")
        stack.enter_context(mounted(parts["root"], root))
        os.makedirs(os.path.join(root, "var"), exist_ok=True)
        stack.callback(lambda: subprocess.run(["umount", os.path.join(root, "var")], capture_output=True))
        sh("mount", parts["var"], os.path.join(root, "var"))
        sh("tar", "--extract", "--numeric-owner", "--same-permissions", "--xattrs", "--acls",
           "--sparse", "--file", tarball, "--directory", root)
        # The golden machine's own settings: its kernel talks on the serial console.
        with open(os.path.join(root, "etc/default/grub"), "a") as f:
            f.write('\nGRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\nGRUB_TERMINAL=serial\n'
                    'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\nGRUB_TIMEOUT=0\n')
        sh("sync")
        yield GoldenDisk(dev, parts, root)


def manifest_text(golden_disk: GoldenDisk, hooks: List[str] = (), loader: str = "grub-bios",
                  root_size: str = "fill", extra: str = "", esp_source: str = "image") -> str:
    g = golden_disk
    hook_lines = "".join(f"\n[[hook]]\nrun = '''{h}'''\n" for h in hooks)
    return f"""# The install of the golden machine's disk (tests/installkit.py).
[disk]
table = "gpt"

[[partition]]
name = "bios"
size = "1MiB"
type = "bios-boot"

[[partition]]
name = "esp"
size = "32MiB"
type = "esp"
fs = "vfat"
mount = "/boot/efi"
source = {{ {esp_source} = "{g.parts['esp']}" }}

[[partition]]
name = "root"
size = "{root_size}"
fs = "ext4"
label = "root"
mount = "/"
source = {{ tar = "{g.root}" }}

[[partition]]
name = "var"
size = "320MiB"
fs = "xfs"
mount = "/var"
source = {{ tar = "{g.root}/var", exclude = ["/tmp"] }}

[[partition]]
name = "swap"
size = "32MiB"
type = "swap"

[identity]
hostname = "node{{index:02}}"
{hook_lines}
[boot]
loader = "{loader}"
{extra}"""


# What an install changes on purpose: the node's identity and its boot loader.
IDENTITY_PATHS = (b"etc/hostname", b"etc/hosts", b"etc/fstab", b"etc/machine-id",
                  b"etc/ssh/ssh_host_", b"boot/grub/", b"etc/kdi-hook", b"etc/kdi-role",
                  b"boot/efi")
# The manifest's default excludes: sent as empty directories.
ROOT_EXCLUDES = (b"dev/", b"proc/", b"sys/", b"run/", b"tmp/")


def fs_differences(src: str, dst: str, changed=IDENTITY_PATHS, excluded=ROOT_EXCLUDES) -> List[str]:
    """Differences of content and metadata between two file systems, leaving out
    what the source's excludes hold, the identity files and the mtimes of the
    directories that hold them."""
    a, b = tree_manifest(src), tree_manifest(dst)
    a = [e for e in a if not any(e.path.startswith(x) for x in excluded)]

    def keep(e):
        return not any(e.path.startswith(p) for p in changed)

    parents = {os.path.dirname(p.rstrip(b"/")) or b"." for p in changed}
    parents |= {b"boot/grub"}

    def relax(e):
        return e._replace(mtime=None) if e.path in parents else e

    a = [relax(e) for e in a if keep(e)]
    b = [relax(e) for e in b if keep(e)]
    return diff_manifests(a, b, names=("source", "installed"))
