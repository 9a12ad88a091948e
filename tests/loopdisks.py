"""Loop devices the tests attach, and the sweep that detaches the ones a run left.

Every image a test puts on a loop device is named kdi-NAME.PID.img (PID: the pytest
process), so a loop device tells which run attached it. A run killed before its
`finally` blocks ran (SIGKILL, a lost machine) leaves its devices attached and their
partitions mounted; the next run detaches those of dead runs at its start, and every
run detaches what is still attached of its own at its end (and says so: a leak is a
bug in a test's clean-up). Live runs beside it are left alone.
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import Callable, List, Tuple

_IMAGE = re.compile(r"/kdi-[^/]*\.(\d+)\.img(?: \(deleted\))?$")


def image_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"kdi-{name}.{os.getpid()}.img")


def attached() -> List[Tuple[str, int]]:
    """(device, pid of the run that attached it) of every test image on a loop device."""
    try:
        out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                             capture_output=True, text=True).stdout
    except OSError:
        return []
    found = []
    for line in out.splitlines():
        dev, _, back = line.strip().partition(" ")
        m = _IMAGE.search(back.strip())
        if m:
            found.append((dev, int(m.group(1))))
    return found


def release(dev: str) -> None:
    """Unmount what sits on dev and its partitions (deepest first), drop the
    partitions, detach the device."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f
                  if line.split()[0] == dev or line.split()[0].startswith(dev + "p")]
    for where in sorted(points, key=len, reverse=True):
        if subprocess.run(["umount", where], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", where], capture_output=True)
    subprocess.run(["partx", "--delete", dev], capture_output=True)
    subprocess.run(["losetup", "--detach", dev], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(leftover: Callable[[int], bool]) -> List[str]:
    """Release every test loop device whose run `leftover(pid)` says is done with it."""
    gone = [dev for dev, pid in attached() if leftover(pid)]
    for dev in gone:
        release(dev)
    return gone


def sweep_dead_runs() -> List[str]:
    return sweep(lambda pid: not _alive(pid))


def sweep_own() -> List[str]:
    return sweep(lambda pid: pid == os.getpid())
