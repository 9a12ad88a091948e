"""A boot network for the netboot tests: a namespace with a bridge, taps and qemu machines.

    namespace kdn-PID-START-SEQ:  br0 198.18.0.254/24, fd42:6b64::fe/64
                                   |-- tap0 -- qemu machine 0 (serial console -> a log file)
                                   |-- tap1 -- qemu machine 1
                                   `-- veth -- another namespace (a DHCP client, a site DHCP server)

Everything runs inside the namespace, so DHCP never leaves it. Teardown kills every
process started here (whole process groups) and anything else left in the namespaces,
then deletes them, even when the test failed. qemu uses KVM only when a probe guest
actually boots with it (``/dev/kvm`` exists on the development machines but hangs).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

from kadeploy.lab import vcluster as vc

SERVER_IP = "198.18.0.254"
SERVER_IP6 = "fd42:6b64::fe"
PREFIX = "kdn"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
_seq = itertools.count()


def _run(argv: Sequence[str], **kw) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def cleanup_stale() -> None:
    """Namespaces of dead kdn runs (their creator's pid and start time are in the name)."""
    vc.cleanup_stale(PREFIX)


class BootNetwork:
    def __init__(self) -> None:
        pid = os.getpid()
        self.tag = f"{PREFIX}-{pid}-{vc._proc_starttime(pid)}-{next(_seq)}"
        self.ns = f"{self.tag}-sw"          # the -sw suffix lets vcluster.cleanup_stale find it
        self.extra_ns: List[str] = []
        self.procs: List[subprocess.Popen] = []
        self.taps = 0

    def __enter__(self) -> "BootNetwork":
        try:
            _run(["ip", "netns", "add", self.ns])
            for cmd in (["link", "set", "lo", "up"],
                        ["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
                        ["addr", "add", f"{SERVER_IP}/24", "dev", "br0"],
                        ["addr", "add", f"{SERVER_IP6}/64", "dev", "br0", "nodad"],
                        ["link", "set", "br0", "up"]):
                _run(["ip", "-n", self.ns, *cmd])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def argv(self, argv: Sequence[str], ns: Optional[str] = None) -> List[str]:
        return ["ip", "netns", "exec", ns or self.ns, *argv]

    def popen(self, argv: Sequence[str], ns: Optional[str] = None, **kw) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.argv(argv, ns), **kw)
        self.procs.append(p)
        return p

    def run(self, argv: Sequence[str], ns: Optional[str] = None, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(argv, ns), **kw)

    def add_tap(self) -> str:
        name = f"tap{self.taps}"
        self.taps += 1
        _run(["ip", "-n", self.ns, "tuntap", "add", "dev", name, "mode", "tap"])
        _run(["ip", "-n", self.ns, "link", "set", name, "master", "br0", "up"])
        return name

    def add_peer(self, mac: str, address: Optional[str] = None) -> str:
        """Another namespace plugged into the bridge by a veth; returns its name."""
        n = len(self.extra_ns)
        ns = f"{self.tag}-n{n}"
        _run(["ip", "netns", "add", ns])
        self.extra_ns.append(ns)
        _run(["ip", "-n", self.ns, "link", "add", f"v{n}", "type", "veth", "peer", "name", "eth0",
              "address", mac, "netns", ns])
        _run(["ip", "-n", self.ns, "link", "set", f"v{n}", "master", "br0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if address:
            _run(["ip", "-n", ns, "addr", "add", address, "dev", "eth0"])
        return ns

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)   # a loaded machine may take a while to reap a big qemu
        names = [self.ns, *self.extra_ns]
        problems = vc._kill_netns_processes(names) + vc._delete_netns(names)
        if problems:
            raise RuntimeError("; ".join(problems))


# ------------------------------------------------------------------ qemu

_accel_cache: dict = {}


def qemu_accel(kernel: Path) -> str:
    """'kvm' if a probe guest boots under KVM within 20 s, else 'tcg'. KADEPLOY_QEMU_ACCEL
    forces one."""
    forced = os.environ.get("KADEPLOY_QEMU_ACCEL")
    if forced:
        return forced
    if "accel" in _accel_cache:
        return _accel_cache["accel"]
    accel = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        # A kernel without a root panics at once: with a working KVM that takes a second.
        p = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-display", "none",
                              "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
                              "-append", "console=ttyS0 panic=-1"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=20)
            if "Kernel panic" in out or "VFS" in out:
                accel = "kvm"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    _accel_cache["accel"] = accel
    return accel


class Machine:
    """One qemu machine on a tap of the boot network, with an empty disk."""

    def __init__(self, net: BootNetwork, workdir: Path, name: str, mac: str, *, firmware: str = "bios",
                 disk_size: str = "4G", memory: int = 2048, accel: str = "tcg"):
        self.net, self.name, self.mac, self.firmware = net, name, mac, firmware
        self.workdir = workdir
        self.disk = workdir / f"{name}.disk"
        self.serial = workdir / f"{name}.serial.log"
        self.tap = net.add_tap()
        _run(["truncate", "-s", disk_size, str(self.disk)])   # sparse and empty
        argv = ["qemu-system-x86_64", "-accel", accel, "-m", str(memory), "-smp", "1",
                "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial}",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no"]
        if firmware == "uefi":
            vars_copy = workdir / f"{name}.OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                     # OVMF follows bootindex (not -boot): the network first, then the disk,
                     # as a cluster's machines are set up for the kit
                     "-drive", f"file={self.disk},if=none,id=d0,format=raw",
                     "-device", "virtio-blk-pci,drive=d0,bootindex=2",
                     # no option ROM: OVMF's own PXE asks for ipxe.efi by TFTP
                     "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"]
        else:
            argv += ["-drive", f"file={self.disk},if=virtio,format=raw", "-boot", "order=nc"]
            # SeaBIOS with qemu's iPXE option ROM of the e1000; graphics=off makes SeaBIOS
            # (and so iPXE) write to the serial console too
            argv += ["-machine", "graphics=off", "-device", f"e1000,netdev=n0,mac={mac}"]
        self.argv = argv
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = self.net.popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Seconds since start when the serial console first matched ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rx.search(self.console()):
                return time.monotonic() - self.started
            if self.proc is not None and self.proc.poll() is not None:
                if rx.search(self.console()):
                    return time.monotonic() - self.started
                raise AssertionError(f"{self.name}: qemu exited ({self.proc.returncode}) before "
                                     f"{pattern!r}; console tail:\n{self.console()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: no {pattern!r} on the console within {timeout:.0f} s; "
                             f"console tail:\n{self.console()[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name}: still running after {timeout:.0f} s; console tail:\n"
                                 f"{self.console()[-3000:]}")
