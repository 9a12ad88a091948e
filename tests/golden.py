"""The golden machine of the install tests: a real Debian (kernel, systemd, grub,
openssh-server) built by debootstrap, cached as a tar under /var/cache/kadeploy-tests
keyed by its package list, and laid out on a loop disk with GPT: an ESP (vfat, written
with mtools since vfat cannot be mounted here), root ext4, /var on xfs, and swap.

Run as a script to fill the cache ahead of the tests: `python tests/golden.py`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

CACHE_DIR = "/var/cache/kadeploy-tests"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# The cloud kernel is a third of the generic one and has virtio for the qemu boot;
# grub-efi-amd64-bin beside grub-pc lets one manifest (loader "grub") install BIOS and
# UEFI machines.
PACKAGES = ("linux-image-cloud-amd64", "systemd-sysv", "udev", "grub-pc", "grub-efi-amd64-bin",
            "openssh-server", "initramfs-tools", "xfsprogs", "e2fsprogs")
# Trimmed after the build: the tests copy every byte of the tree, three times.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
        "var/cache/apt/archives", "var/lib/apt/lists")


def cache_key() -> str:
    text = "\n".join([SUITE, MIRROR, "minbase", *PACKAGES, *TRIM])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> str:
    return os.path.join(CACHE_DIR, f"kdi-debian-{SUITE}-{cache_key()}.tar")


def build_tree(root: str) -> None:
    """debootstrap into root (an empty directory on a real file system)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                    SUITE, root, MIRROR], check=True, env=env, stdout=subprocess.DEVNULL)
    for rel in TRIM:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            shutil.rmtree(path)
            os.mkdir(path)


def ensure_cached() -> str:
    """The cached tar of the golden tree; built once (about 80 s), then reused."""
    path = cache_path()
    if os.path.exists(path):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kdi-golden-", dir=CACHE_DIR)
    try:
        root = os.path.join(work, "root")
        os.mkdir(root)
        build_tree(root)
        tmp = path + f".{os.getpid()}.part"
        subprocess.run(["tar", "--create", "--numeric-owner", "--xattrs", "--acls", "--sparse",
                        "--file", tmp, "-C", root, "."], check=True)
        os.replace(tmp, path)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", work])
    return path


if __name__ == "__main__":
    print(ensure_cached())
    sys.exit(0)
