"""`kadeploy netboot serve`: dnsmasq, the HTTP server and the log of every node's steps.

Start-up checks each thing a boot needs and stops with one clear line when one is
missing (the kernel or initramfs, the iPXE loaders, dnsmasq, the interface, a DHCP
or TFTP port taken by another program), so that a mistake shows at once and not as
nodes hanging in PXE. Then it writes dnsmasq.conf into the state directory (the admin
can read it there, or print it with ``--print-config``), starts dnsmasq as a child in
the foreground, reads its log into per-node steps, restarts it if it dies, and runs
the HTTP server. The installed nodes are saved in the state directory, so a restart
never installs them again.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import EXIT_FAILED, EXIT_OK, EXIT_SOME_FAILED, KadeployError, UsageError
from ..files import write_text_atomically
from . import dnsmasq as dnsmasq_conf
from .dnsmasqlog import BootEvent, DnsmasqLogParser, ServiceLine
from .http import IMAGE_FILES, BootHTTPServer
from .nodetable import NodeTable
from .tracker import NodeRecord, Tracker

log = logging.getLogger("kadeploy.netboot")

IPXE_DIRS = ("/usr/lib/ipxe",)        # Debian's ipxe package
DEFAULT_STATE_DIR = "/var/lib/kadeploy/netboot"
DEFAULT_HTTP_PORT = 8067
STARTUP_TIMEOUT = 5.0                  # seconds dnsmasq may take to say it is serving
MAX_RESTARTS = 3
STATE_FILE = "nodes.json"


@dataclass
class ServeConfig:
    image_dir: Path
    interface: str
    table: NodeTable
    mode: str = "dhcp"
    server_address: Optional[str] = None
    http_port: int = DEFAULT_HTTP_PORT
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    ipxe_dir: Optional[Path] = None
    network: Optional[str] = None
    range_start: Optional[str] = None
    range_end: Optional[str] = None
    router: Optional[str] = None
    unknown: str = "ignore"
    name_rule: str = "node-{mac}"
    install_params: Dict[str, str] = field(default_factory=dict)
    kernel_args: Sequence[str] = ()
    max_transfers: int = 0
    reply_delay: int = 0
    ping_check: bool = False
    exit_when_done: bool = False
    progress_interval: float = 10.0
    install_command: Optional[List[str]] = None   # the install server run beside the kit


# ------------------------------------------------------------------ preflight

def interface_addresses(interface: str) -> tuple:
    """(IPv4 interfaces like '198.18.0.254/24', whether a non-link-local IPv6 exists)."""
    if not os.path.exists(f"/sys/class/net/{interface}"):
        raise UsageError(f"no network interface {interface} here (see ip link)")
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", interface], capture_output=True, text=True).stdout
    v4 = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", out)
    v6 = [a for a in re.findall(r"\binet6 ([0-9a-f:]+)/\d+ scope global", out)]
    return v4, bool(v6)


def udp_port_holders(port: int) -> List[str]:
    """Programs listening on a UDP port here (in this network namespace), from ss."""
    p = subprocess.run(["ss", "-H", "-lunp", f"sport = :{port}"], capture_output=True, text=True)
    holders = []
    for line in p.stdout.splitlines():
        users = re.findall(r'\("([^"]+)",pid=(\d+)', line)
        holders += [f"{name} (pid {pid})" for name, pid in users] or [line.split()[3] if len(line.split()) > 3 else line]
    return holders


def find_ipxe_dir(given: Optional[Path]) -> Path:
    loaders = (dnsmasq_conf.BIOS_LOADER, dnsmasq_conf.UEFI_LOADER)
    for d in ([given] if given else [Path(p) for p in IPXE_DIRS]):
        if all((d / name).is_file() for name in loaders):
            return d
    where = given or IPXE_DIRS[0]
    raise UsageError(f"iPXE loaders {' and '.join(loaders)} not found in {where} (apt-get install ipxe)")


def check_image(image_dir: Path) -> None:
    for name in IMAGE_FILES:
        path = image_dir / name
        if not path.is_file() or path.stat().st_size == 0:
            raise UsageError(f"{path} is missing or empty: build the image first "
                             f"(kadeploy netboot build {image_dir})")


def _readable_by_all(path: Path) -> bool:
    # dnsmasq reads the TFTP root as user nobody: every parent must be searchable.
    for p in [path, *path.parents]:
        if not os.stat(p).st_mode & 0o001:
            return False
    return True


# ------------------------------------------------------------------ the service

class NetbootService:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.parser = DnsmasqLogParser()
        self.tracker = Tracker(cfg.table, unknown=cfg.unknown, name_rule=cfg.name_rule,
                               on_change=self._log_step)
        self.dnsmasq: Optional[subprocess.Popen] = None
        self.http: Optional[BootHTTPServer] = None
        self._service_lines: List[ServiceLine] = []
        self._ready = threading.Event()
        self._stopping = False
        self._state_dirty = False      # steps not yet in nodes.json
        self.conf_path = cfg.state_dir / "dnsmasq.conf"
        self.done = threading.Event()
        self.installer: Optional[subprocess.Popen] = None
        self.installer_status: Optional[int] = None

    # -- set-up

    def prepare(self) -> str:
        """Every check, then the configuration text (written to the state directory)."""
        cfg = self.cfg
        check_image(cfg.image_dir)
        ipxe_dir = find_ipxe_dir(cfg.ipxe_dir)
        if shutil.which("dnsmasq") is None:
            raise UsageError("dnsmasq is missing (apt-get install dnsmasq-base)")
        v4, has_v6 = interface_addresses(cfg.interface)
        if cfg.server_address is None:
            if not v4:
                raise UsageError(f"interface {cfg.interface} has no IPv4 address: give it one, or --address")
            cfg.server_address = v4[0].split("/")[0]
            if cfg.network is None:
                cfg.network = str(ipaddress.IPv4Interface(v4[0]).network)
        elif cfg.network is None:
            match = [a for a in v4 if a.split("/")[0] == cfg.server_address]
            if not match:
                raise UsageError(f"{cfg.server_address} is not an address of {cfg.interface}")
            cfg.network = str(ipaddress.IPv4Interface(match[0]).network)
        if not has_v6:
            log.warning("%s has no global IPv6 address: no router advertisements, so iPXE waits "
                        "about 13 s for IPv6 at every boot", cfg.interface)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        tftp_root = cfg.state_dir / "tftp"
        tftp_root.mkdir(exist_ok=True)
        for name in (dnsmasq_conf.BIOS_LOADER, dnsmasq_conf.UEFI_LOADER):
            shutil.copyfile(ipxe_dir / name, tftp_root / name)
            os.chmod(tftp_root / name, 0o644)
        os.chmod(tftp_root, 0o755)
        if not _readable_by_all(tftp_root):
            raise UsageError(f"dnsmasq (user nobody) cannot read {tftp_root}: choose a --state-dir "
                             "whose parents are searchable by all (chmod o+x)")
        state_file = cfg.state_dir / STATE_FILE
        if state_file.exists():
            try:
                self.tracker.load_json(state_file.read_text())
            except (ValueError, OSError) as e:
                raise UsageError(f"{state_file}: cannot read the saved node states: {e}")
        opts = dnsmasq_conf.DnsmasqOptions(
            interface=cfg.interface, server_address=cfg.server_address, boot_url=f"{self.base_url}/boot.ipxe",
            tftp_root=str(tftp_root), mode=cfg.mode, network=cfg.network, range_start=cfg.range_start,
            range_end=cfg.range_end, router=cfg.router, unknown=cfg.unknown, ra=has_v6,
            leasefile=str(cfg.state_dir / "dnsmasq.leases"), reply_delay=cfg.reply_delay,
            ping_check=cfg.ping_check)
        try:
            text = dnsmasq_conf.render(opts, cfg.table)
        except ValueError as e:
            raise UsageError(str(e))
        self.conf_path.write_text(text)
        return text

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.server_address}:{self.cfg.http_port}"

    def _check_ports(self) -> None:
        ports = {"dhcp": [(67, "DHCP"), (69, "TFTP")], "proxy": [(67, "DHCP"), (4011, "PXE"), (69, "TFTP")]}
        for port, what in ports[self.cfg.mode]:
            holders = udp_port_holders(port)
            if holders:
                raise KadeployError(f"UDP port {port} ({what}) is already taken by {', '.join(holders)}: "
                                    f"stop it first (two DHCP servers on one network fight over the nodes)")

    def start(self) -> None:
        self.prepare()
        self._check_ports()
        self._save_state()      # no node seen yet: the last run's steps are not this run's
        cfg = self.cfg
        try:
            self.http = BootHTTPServer(
                (cfg.server_address, cfg.http_port), image_dir=cfg.image_dir, tracker=self.tracker,
                base_url=self.base_url, install_params=dict(cfg.install_params, server=cfg.install_params.get(
                    "server") or cfg.server_address), kernel_args=cfg.kernel_args,
                max_transfers=cfg.max_transfers, mac_of_ip=self._mac_of_ip, lock=self.lock)
        except OSError as e:
            raise KadeployError(f"HTTP server on {cfg.server_address}:{cfg.http_port}: {e.strerror}")
        threading.Thread(target=self.http.serve_forever, name="netboot-http", daemon=True).start()
        log.info("HTTP on %s: kernel and initrd from %s", self.base_url, cfg.image_dir)
        try:
            self._start_dnsmasq()
        except BaseException:
            self.stop()
            raise
        log.info("dnsmasq serves %s in %s mode; its configuration is %s", cfg.interface, cfg.mode, self.conf_path)
        if cfg.install_command:
            log.info("starting the install server: %s", " ".join(cfg.install_command))
            try:
                self.installer = subprocess.Popen(cfg.install_command, stdin=subprocess.DEVNULL,
                                                  start_new_session=True)
            except OSError as e:
                self.stop()
                raise KadeployError(f"cannot start the install server {cfg.install_command[0]}: {e.strerror}")

    def _mac_of_ip(self, ip: str) -> Optional[str]:
        with self.lock:
            mac = self.parser.mac_of_ip.get(ip)
            if mac is None:   # e.g. proxy mode: the site's server gave the address
                mac = next((r.mac for r in self.tracker.records.values() if r.ip == ip), None)
            return mac

    def _start_dnsmasq(self) -> None:
        self._ready.clear()
        self._service_lines = []
        self.dnsmasq = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", f"--conf-file={self.conf_path}", "--pid-file="],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        threading.Thread(target=self._read_log, args=(self.dnsmasq,), name="dnsmasq-log", daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._ready.wait(0.05):
                return
            if self.dnsmasq.poll() is not None:
                break
        self.dnsmasq.poll()
        errors = [s.text for s in self._service_lines if s.error] or [s.text for s in self._service_lines[-1:]]
        if self.dnsmasq.returncode is None:
            self._kill_dnsmasq()
        raise KadeployError(f"dnsmasq did not start: {errors[-1] if errors else 'no message'}")

    def _read_log(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            with self.lock:
                events = self.parser.feed(line)
                for ev in events:
                    if isinstance(ev, BootEvent):
                        self.tracker.event(ev)
                    elif isinstance(ev, ServiceLine):
                        self._service_lines.append(ev)
                        (log.error if ev.error else log.debug)("dnsmasq: %s", ev.text)
                        if ev.text.startswith("TFTP root"):
                            self._ready.set()   # dnsmasq logs this last, once it serves

    def _log_step(self, rec: NodeRecord, step: str, detail: str) -> None:
        """A node's step (the caller holds the lock)."""
        who = rec.name if rec.known else f"{rec.name} (not in the node table)"
        log.info("%s %s: %s%s", who, rec.mac, step, f" ({detail})" if detail else "")
        # An install is saved at once (a restarted kit must not install the node again);
        # other steps every tick of run(): on a mass boot, rewriting the whole file at
        # each of thousands of steps, under the lock that DHCP and HTTP share, took
        # ~20 ms a step at 1,000 nodes.
        if step == "installed":
            self._save_state()
        else:
            self._state_dirty = True
        if self.cfg.exit_when_done and self._all_done():
            self.done.set()

    def _save_state(self) -> None:
        """Write nodes.json (the caller holds the lock, or no other thread runs yet)."""
        self._state_dirty = False
        write_text_atomically(self.cfg.state_dir / STATE_FILE, self.tracker.to_json())

    def _save_if_changed(self) -> None:
        with self.lock:
            if not self._state_dirty:
                return
            self._state_dirty = False
            text = self.tracker.to_json()
        write_text_atomically(self.cfg.state_dir / STATE_FILE, text)

    def _all_done(self) -> bool:
        """Every table node reported its outcome, and the installed ones asked for their
        local-boot script again (they rebooted from the kit into their disk)."""
        for node in self.cfg.table:
            rec = self.tracker.records.get(node.mac)
            if rec is None:
                return False
            steps = [s for _t, s, _d in rec.steps]
            if rec.state == "failed":
                continue
            if "installed" not in steps:
                return False
            last_install = len(steps) - 1 - steps[::-1].index("installed")
            if not any(s == "ipxe script" and d == "local" for _t, s, d in rec.steps[last_install:]):
                return False
        return True

    def exit_status(self) -> int:
        states = [self.tracker.records[n.mac].state if n.mac in self.tracker.records else "unseen"
                  for n in self.cfg.table]
        failed = sum(1 for s in states if s in ("failed", "unseen"))
        return EXIT_OK if failed == 0 else EXIT_FAILED if failed == len(states) else EXIT_SOME_FAILED

    # -- running

    def run(self, timeout: Optional[float] = None) -> int:
        """Supervise until interrupted, or until every node is done (--exit-when-done)."""
        restarts = 0
        next_progress = time.monotonic() + self.cfg.progress_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done.wait(0.2):
            self._save_if_changed()
            if self.dnsmasq.poll() is not None:
                last = self._service_lines[-1].text if self._service_lines else "no message"
                if restarts >= MAX_RESTARTS:
                    raise KadeployError(f"dnsmasq died {restarts + 1} times (last: {last}); giving up")
                restarts += 1
                log.error("dnsmasq exited with status %s (%s); restarting it", self.dnsmasq.returncode, last)
                time.sleep(1)
                self._start_dnsmasq()
            if self.installer is not None and self.installer_status is None and self.installer.poll() is not None:
                self.installer_status = self.installer.returncode
                if self.installer_status not in (EXIT_OK, EXIT_SOME_FAILED):
                    raise KadeployError(f"the install server exited with status {self.installer_status}: "
                                        "see its messages above")
                log.info("the install server is done (status %d); waiting for the nodes to boot their disks",
                         self.installer_status)
            if time.monotonic() >= next_progress:
                with self.lock:
                    log.info("%s", self.tracker.summary())
                next_progress = time.monotonic() + self.cfg.progress_interval
            if deadline is not None and time.monotonic() > deadline:
                raise KadeployError("timed out before every node was done: " + self.tracker.summary())
        with self.lock:
            log.info("%s", self.tracker.summary())
            status = self.exit_status()
        if self.installer_status is not None and status == EXIT_OK:
            status = self.installer_status
        return status

    def _kill_dnsmasq(self) -> None:
        p = self.dnsmasq
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stop(self) -> None:
        if self.installer is not None and self.installer.poll() is None:
            os.killpg(self.installer.pid, signal.SIGTERM)
            try:
                self.installer.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.installer.pid, signal.SIGKILL)
                self.installer.wait()
        self._kill_dnsmasq()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None
        self._save_if_changed()     # the last steps, once nothing adds any
