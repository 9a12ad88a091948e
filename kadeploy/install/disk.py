"""The target disk: which one (a device, a by-path name, or the rule "first
non-removable disk of at least N"), whether it may be written, and its partitions'
device nodes once the table is written.

Reads /sys/block, /proc/self/mountinfo and /proc/swaps. Detects rather than assumes:
a kernel without partition table parsers (partitions appear only through `partx`),
a /dev without udev (no /dev/disk/by-*), device nodes that devtmpfs did not make.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .layout import Placed
from .manifest import Disk

SYS_BLOCK = "/sys/block"
BY_PATH = "/dev/disk/by-path"


class DiskError(RuntimeError):
    """One line: why this disk cannot be installed."""


@dataclass(frozen=True)
class BlockDisk:
    name: str            # sda, nvme0n1, loop3
    path: str            # /dev/sda
    size: int            # bytes
    removable: bool
    read_only: bool
    sector_size: int
    physical: bool       # backed by hardware (has a `device` in sysfs), not loop/ram/zram


def _read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def describe(name: str, sys_block: str = SYS_BLOCK) -> BlockDisk:
    base = os.path.join(sys_block, name)
    sectors = int(_read(os.path.join(base, "size"), "0"))   # always in 512-byte units
    return BlockDisk(name=name, path=f"/dev/{name}", size=sectors * 512,
                     removable=_read(os.path.join(base, "removable"), "0") == "1",
                     read_only=_read(os.path.join(base, "ro"), "0") == "1",
                     sector_size=int(_read(os.path.join(base, "queue", "logical_block_size"), "512")),
                     physical=os.path.exists(os.path.join(base, "device")))


def list_disks(sys_block: str = SYS_BLOCK) -> List[BlockDisk]:
    return [describe(n, sys_block) for n in sorted(os.listdir(sys_block))]


def choose_by_rule(disks: Sequence[BlockDisk], min_size: int) -> Optional[BlockDisk]:
    """The first (by name) hardware disk, not removable, not read-only, of at least min_size."""
    for d in sorted(disks, key=lambda d: d.name):
        if d.physical and not d.removable and not d.read_only and d.size >= min_size \
                and not d.name.startswith(("sr", "fd", "zram", "ram", "loop")):
            return d
    return None


def resolve(spec: Disk, override: Optional[str] = None) -> str:
    """The device node of the target disk."""
    if override:
        return override
    if spec.device:
        return spec.device
    if spec.by_path:
        link = os.path.join(BY_PATH, spec.by_path)
        if not os.path.exists(link):
            raise DiskError(f"no disk {link} (is udev running? give the disk with --disk)")
        return os.path.realpath(link)
    found = choose_by_rule(list_disks(), spec.min_size)
    if found is None:
        raise DiskError(f"no non-removable disk of at least {spec.min_size >> 30} GiB "
                        "(give the disk with --disk)")
    return found.path


def _sys_name(dev: str) -> str:
    """/dev/sda -> sda, following symlinks; DiskError when it is no block device."""
    real = os.path.realpath(dev)
    try:
        st = os.stat(real)
    except OSError as e:
        raise DiskError(f"{dev}: {e.strerror}")
    if not stat.S_ISBLK(st.st_mode):
        raise DiskError(f"{dev} is not a block device")
    link = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return os.path.basename(os.path.realpath(link))


def _dev_numbers(name: str) -> str:
    return _read(os.path.join("/sys/class/block", name, "dev"))


def partition_names(name: str) -> Dict[int, str]:
    """Partition number -> kernel name (sda1, nvme0n1p1, loop3p1) of a disk."""
    base = os.path.join(SYS_BLOCK, name)
    out = {}
    for entry in os.listdir(base):
        number = _read(os.path.join(base, entry, "partition"))
        if number.isdigit():
            out[int(number)] = entry
    return out


def _mounted_devices() -> Dict[str, str]:
    """maj:min -> mount point, of everything mounted here; swaps too."""
    out = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4:
            out.setdefault(fields[2], fields[4].replace("\\040", " "))
    for line in _read("/proc/swaps").splitlines()[1:]:
        dev = line.split()[0] if line.split() else ""
        try:
            st = os.stat(dev)
            out.setdefault(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", "swap")
        except OSError:
            pass
    return out


def check_target(dev: str, need_bytes: int, force: bool = False) -> BlockDisk:
    """The disk, if it may be installed: a whole disk, writable, large enough, not
    holding the running root, and (unless forced) nothing of it mounted or in use."""
    name = _sys_name(dev)
    if not os.path.isdir(os.path.join(SYS_BLOCK, name)):
        raise DiskError(f"{dev} is a partition, not a whole disk")
    disk = describe(name)
    if disk.read_only:
        raise DiskError(f"{dev} is read-only")
    if disk.size < need_bytes:
        raise DiskError(f"{dev} has {disk.size >> 20} MiB, the layout needs {-(-need_bytes >> 20)} MiB")
    mounted = _mounted_devices()
    for part in [name, *partition_names(name).values()]:
        where = mounted.get(_dev_numbers(part))
        if where == "/":
            raise DiskError(f"{dev} holds the running root file system (/dev/{part})")
        if where is not None and not force:
            raise DiskError(f"{dev} is in use: /dev/{part} is mounted on {where} (--force to install anyway)")
        holders = os.path.join("/sys/class/block", part, "holders")
        if os.path.isdir(holders) and os.listdir(holders) and not force:
            raise DiskError(f"{dev} is in use: /dev/{part} is held by {', '.join(os.listdir(holders))}")
    return disk


def _run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def partition_devices(disk: BlockDisk, placed: Sequence[Placed], timeout: float = 10.0) -> Dict[str, str]:
    """Partition name (manifest) -> device node, each checked against its planned
    start and size: a partition the kernel does not show as planned is an error."""
    want = {p.number: p for p in placed}
    deadline = time.monotonic() + timeout
    tried_partx = False
    while True:
        if shutil.which("udevadm"):
            _run(["udevadm", "settle", "--timeout=5"])
        names = partition_names(disk.name)
        good = {n: names[n] for n in want if n in names and _matches(disk.name, names[n], want[n])}
        if len(good) == len(want):
            break
        if not tried_partx:
            # No partition parser in this kernel, or a stale view: partx reads the
            # table itself and tells the kernel (BLKPG).
            tried_partx = True
            _run(["partx", "--delete", disk.path])
            r = _run(["partx", "--add", disk.path])
            if r.returncode != 0 and not partition_names(disk.name):
                raise DiskError(f"the kernel shows no partitions of {disk.path} and partx failed: "
                                f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        if time.monotonic() > deadline:
            missing = sorted(set(want) - set(good))
            raise DiskError(f"partition(s) {', '.join(map(str, missing))} of {disk.path} did not "
                            "appear as planned")
        time.sleep(0.2)
    out = {}
    for number, kname in good.items():
        node = f"/dev/{kname}"
        _ensure_node(node, kname)
        out[want[number].name] = node
    return out


def _matches(disk_name: str, part_name: str, p: Placed) -> bool:
    base = os.path.join(SYS_BLOCK, disk_name, part_name)
    # sysfs counts in 512-byte sectors whatever the logical sector size.
    start, size = int(_read(os.path.join(base, "start"), "-1")), int(_read(os.path.join(base, "size"), "-1"))
    ratio = int(_read(os.path.join(SYS_BLOCK, disk_name, "queue", "logical_block_size"), "512")) // 512
    if p.type_code in ("5", "f"):       # the kernel shows an extended partition as 1 or 2 sectors
        return start == p.start * ratio
    return start == p.start * ratio and size == p.sectors * ratio


def _ensure_node(node: str, kname: str) -> None:
    """devtmpfs makes partition nodes; where it did not, make one from sysfs."""
    for _ in range(25):
        if os.path.exists(node):
            return
        time.sleep(0.1)
    major, minor = map(int, _dev_numbers(kname).split(":"))
    os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(major, minor))
