"""A node's install, step by step: check the disk, partition, make the file
systems, mount them under a private root, receive each stream (checking that it is
for the partition about to be written, and its count and digest), give the node its
identity, run the hooks in the new root, install the boot loader (those three in
kadeploy.install.newroot), unmount.

Every step is recorded (kadeploy.install.status) as it ends, so the report says
which step failed on which node. The first failure stops the install: nothing after
it runs, and the node is not reported installed.
"""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import tempfile
import time
from typing import BinaryIO, Dict, List, Optional

from . import layout, order
from . import disk as disk_mod
from .identity import TemplateError
from .manifest import Manifest, Partition
from .newroot import NewRoot
from .shell import StepFailed, run
from .status import StepLog
from .stream import (END_TAG, STEP_TAG, STREAM_TAG, TRAILER_TAG, FrameReader, StreamError,
                     check_step_header, read_record)

BLKZEROOUT = 0x127F


MKFS = {
    "ext4": lambda dev, label, opts: ["mkfs.ext4", "-F", "-q", *(["-L", label] if label else []), *opts, dev],
    "xfs": lambda dev, label, opts: ["mkfs.xfs", "-f", "-q", *(["-L", label] if label else []), *opts, dev],
    "vfat": lambda dev, label, opts: ["mkfs.vfat", *(["-n", label] if label else []), *opts, dev],
    "btrfs": lambda dev, label, opts: ["mkfs.btrfs", "-f", "-q", *(["-L", label] if label else []), *opts, dev],
    "swap": lambda dev, label, opts: ["mkswap", *(["-L", label] if label else []), *opts, dev],
}
TAR_EXTRACT = ["tar", "--extract", "--file", "-", "--numeric-owner", "--same-permissions",
               "--same-owner", "--sparse", "--acls", "--xattrs", "--xattrs-include=*"]


class Installer:
    def __init__(self, manifest: Manifest, node: Dict[str, str], log: StepLog,
                 disk: Optional[str] = None, force: bool = False) -> None:
        self.m, self.node, self.log = manifest, node, log
        self.disk_override, self.force = disk, force
        self.root: Optional[str] = None
        self.mounted: List[str] = []
        self.devices: Dict[str, str] = {}
        self.disk: Optional[disk_mod.BlockDisk] = None
        self.placed: List[layout.Placed] = []

    # ---------------------------------------------------------------- steps

    def install(self, stream: BinaryIO) -> bool:
        """True when every step succeeded (warnings allowed)."""
        try:
            self.step("disk", self.check_disk)
            self.step("partition", self.partition)
            for p in self.m.partitions:
                if p.fs and (p.source is None or p.source.kind == "tar"):
                    self.step(f"mkfs {p.name}", lambda p=p: self.mkfs(p))
            self.root = tempfile.mkdtemp(prefix="kadeploy-install-")
            self.receive_all(stream)
            new_root = NewRoot(self.m, self.node, self.root, self.devices, self.disk, self.mounted)
            self.step("identity", new_root.identity)
            if self.m.hooks:
                self.step("hooks", new_root.hooks)
            if self.m.loader != "none" or self.m.loader_hook:
                self.step("boot loader", new_root.boot_loader)
            self.step("unmount", self.unmount)
            return True
        except StepFailed:
            return False
        finally:
            self.unmount_quietly()

    def step(self, name: str, fn) -> None:
        started = time.monotonic()
        self.log.begin(name)
        try:
            result = fn() or {}
        except StepFailed as e:
            self.log.end(name, "failed", str(e), seconds=time.monotonic() - started)
            raise
        except (OSError, StreamError, disk_mod.DiskError, layout.LayoutError, TemplateError) as e:
            msg = str(e) if not isinstance(e, OSError) else f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            self.log.end(name, "failed", msg, seconds=time.monotonic() - started)
            raise StepFailed(msg)
        status = "warning" if result.get("warning") else "ok"
        self.log.end(name, status, result.get("warning") or result.get("detail", ""),
                     seconds=time.monotonic() - started, bytes=result.get("bytes"),
                     verified=result.get("verified"))

    def check_disk(self) -> dict:
        dev = disk_mod.resolve(self.m.disk, self.disk_override)
        need = layout.minimum_bytes(self.m.partitions, self.m.disk.table)
        self.disk = disk_mod.check_target(dev, need, self.force)
        self.placed = layout.plan(self.m.partitions, self.m.disk.table, self.disk.size,
                                  self.disk.sector_size)
        return {"detail": f"{dev}, {self.disk.size >> 20} MiB"}

    def partition(self) -> dict:
        d = self.disk
        labels = {p.name: p.label for p in self.m.partitions}
        script = layout.sfdisk_script(self.placed, self.m.disk.table, labels)
        run(["wipefs", "--all", "--quiet", d.path], "wipefs")
        # sfdisk's own re-read may fail or do nothing (no partition parser in the
        # kernel); disk.partition_devices checks what the kernel shows either way.
        r = subprocess.run(["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always",
                            d.path], input=script, capture_output=True, text=True)
        if r.returncode != 0 and "re-read" not in r.stderr.lower():
            raise StepFailed(f"sfdisk failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        self.devices = disk_mod.partition_devices(d, self.placed)
        for dev in self.devices.values():
            run(["wipefs", "--all", "--quiet", dev], "wipefs")
        return {"detail": f"{self.m.disk.table}, {len(self.placed)} partition(s)"}

    def mkfs(self, p: Partition) -> dict:
        run(MKFS[p.fs](self.devices[p.name], p.label, list(p.mkfs_options)), f"mkfs.{p.fs}")
        return {"detail": f"{p.fs} on {self.devices[p.name]}"}

    def _mount(self, p: Partition) -> None:
        where = os.path.join(self.root, p.mount.lstrip("/"))
        os.makedirs(where, exist_ok=True)
        run(["mount", "-t", p.fs, self.devices[p.name], where], f"mount {p.mount}")
        self.mounted.append(where)

    def receive_all(self, stream: BinaryIO) -> None:
        steps = order.streams(self.m)
        self.step("stream", lambda: self.stream_header(stream, steps))
        mounted = set()
        for i, p in enumerate(steps):
            if p.source.kind == "tar":
                for q in order.mounts_before(self.m, p):
                    if q.name not in mounted:
                        self.step(f"mount {q.name}", lambda q=q: self._mount(q) or {"detail": q.mount})
                        mounted.add(q.name)
            self.step(f"receive {p.name}", lambda i=i, p=p: self.receive(stream, i, p))
        done = mounted
        for q in order.mounts(self.m):
            if q.name not in done:
                self.step(f"mount {q.name}", lambda q=q: self.mount_late(q))
                done.add(q.name)
        self.step("stream end", lambda: self.stream_end(stream))

    def stream_header(self, stream: BinaryIO, steps: List[Partition]) -> dict:
        head = read_record(stream, STREAM_TAG, "the stream header")
        if head.get("manifest") != self.m.digest:
            raise StepFailed(f"the stream is for manifest {head.get('manifest')!r}, "
                             f"this node has {self.m.digest!r}")
        if head.get("steps") != [p.name for p in steps]:
            raise StepFailed(f"the stream sends {head.get('steps')}, the manifest wants "
                             f"{[p.name for p in steps]}")
        return {"detail": f"{len(steps)} file system stream(s)"}

    def stream_end(self, stream: BinaryIO) -> dict:
        end = read_record(stream, END_TAG, "the end of the stream")
        if end.get("ok") is not True:
            raise StepFailed("the server's stream failed")
        if stream.read(1):
            raise StepFailed("bytes after the end of the install stream")
        return {"detail": "complete"}

    def mount_late(self, q: Partition) -> dict:
        """A partition written as an image is mounted after its stream; a kernel
        without its file system (no vfat here) leaves it unmounted, with a warning."""
        try:
            self._mount(q)
        except StepFailed as e:
            if q.source is not None and _no_fs_support(q.fs):
                return {"warning": f"not mounted: this kernel has no {q.fs} ({e})"}
            raise
        return {"detail": q.mount}

    def receive(self, stream: BinaryIO, index: int, p: Partition) -> dict:
        header = read_record(stream, STEP_TAG, f"the header of step {index} ({p.name})")
        why = check_step_header(header, self.m.digest, index, p.name, p.source.kind)
        if why:
            raise StepFailed(why)
        frames = FrameReader(stream, f"the stream of {p.name}")
        dev = self.devices[p.name]
        if p.source.kind == "tar":
            where = os.path.join(self.root, p.mount.lstrip("/"))
            self._pipe_into([*TAR_EXTRACT, "--directory", where], frames, "tar")
        elif p.source.kind == "partclone":
            tool = order.partclone_tool(p.fs)
            self._pipe_into([tool, "--restore", "--source", "-", "--output", dev, "--quiet"],
                            frames, tool)
        else:
            self._write_image(dev, header.get("size"), frames)
        trailer = read_record(stream, TRAILER_TAG, f"the trailer of {p.name}")
        if trailer.get("error"):
            raise StepFailed(f"the server could not send it: {trailer['error']}")
        if trailer.get("bytes") != frames.bytes or trailer.get("digest") != frames.digest:
            raise StepFailed(f"received {frames.bytes} bytes with digest {frames.digest[:16]}, "
                             f"the server sent {trailer.get('bytes')} with {str(trailer.get('digest'))[:16]}")
        return {"bytes": frames.bytes, "verified": True, "warning": trailer.get("warning"),
                "detail": f"{frames.bytes} bytes, digest verified"}

    def _pipe_into(self, argv: List[str], frames: FrameReader, what: str) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        broken = None
        try:
            for zero, length, payload in frames:
                if broken is None:
                    try:
                        proc.stdin.write(bytes(length) if zero else payload)
                    except BrokenPipeError as e:
                        broken = e      # read on: the trailer still tells what was sent
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        status = proc.wait()
        if status != 0 or broken:
            raise StepFailed(f"{what} failed (exit status {status})" + (f": {err[-1]}" if err else ""))

    def _write_image(self, dev: str, size, frames: FrameReader) -> None:
        fd = os.open(dev, os.O_WRONLY | os.O_CLOEXEC)
        try:
            capacity = os.lseek(fd, 0, os.SEEK_END)
            if not isinstance(size, int) or size > capacity:
                raise StepFailed(f"the image has {size} bytes, partition {dev} only {capacity}")
            pos = 0
            for zero, length, payload in frames:
                if pos + length > capacity:
                    raise StepFailed(f"the image overruns partition {dev}")
                if zero:
                    _zero_range(fd, pos, length)
                else:
                    os.pwrite(fd, payload, pos)
                pos += length
            os.fsync(fd)
        finally:
            os.close(fd)

    def unmount(self) -> dict:
        while self.mounted:
            where = self.mounted[-1]
            run(["umount", "--recursive", where], f"umount {where}")
            self.mounted.pop()
        run(["sync"], "sync")
        return {"detail": "all file systems unmounted"}

    def unmount_quietly(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", "--recursive", "--lazy", where], capture_output=True)
        self.mounted = []
        if self.root and os.path.isdir(self.root):
            try:
                os.rmdir(self.root)
            except OSError:
                pass


def _fail(msg: str):
    raise StepFailed(msg)


def _no_fs_support(fs: str) -> bool:
    kernel = {"vfat": "vfat", "ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs"}.get(fs, fs)
    return kernel not in _read("/proc/filesystems")


def _zero_range(fd: int, offset: int, length: int) -> None:
    """Zeroes on the device: BLKZEROOUT (cheap on loop devices and SSDs), or write them."""
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
    except OSError:
        os.pwrite(fd, bytes(length), offset)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
