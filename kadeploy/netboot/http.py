"""The kit's HTTP server: iPXE scripts, the kernel and the initramfs, and node reports.

    GET  /boot.ipxe                   chain to the node's own script
    GET  /node/MAC/boot.ipxe          the node's script (install, local disk, or ignore)
    GET  /vmlinuz, /initrd.img        the install system (big: served by sendfile)
    POST /node/MAC/report?state=S&detail=D   /init's reports (network, installing, installed, failed)

Every request is a step of its node in the tracker (a kernel or initrd request is
named by the client's address, which the DHCP log tied to its MAC). ``max_transfers``
paces a mass boot: at most that many kernel/initrd transfers run at once, the others
wait their turn instead of sharing the link hundreds of ways.
"""
from __future__ import annotations

import http.server
import logging
import os
import re
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Callable, Dict, Optional

from . import ipxe
from .nodetable import normalize_mac
from .tracker import REPORTED_STATES, Tracker

log = logging.getLogger("kadeploy.netboot.http")
IMAGE_FILES = ("vmlinuz", "initrd.img", ipxe.LOCAL_BOOT_EFI)
# The step each file's transfer is logged as.
IMAGE_STEPS = {"vmlinuz": "kernel", "initrd.img": "initrd", ipxe.LOCAL_BOOT_EFI: "local loader"}
_NODE_PATH = re.compile(r"^/node/(?P<mac>[0-9a-fA-F:-]{17})/(?P<what>boot\.ipxe|report)$")


class BootHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, *, image_dir: Path, tracker: Tracker, base_url: str,
                 install_params: Dict[str, str], kernel_args=(), max_transfers: int = 0,
                 mac_of_ip: Callable[[str], Optional[str]] = lambda ip: None,
                 lock: Optional[threading.Lock] = None):
        self.image_dir = image_dir
        self.tracker = tracker
        self.base_url = base_url.rstrip("/")
        self.install_params = install_params
        self.kernel_args = tuple(kernel_args)
        self.transfers = threading.BoundedSemaphore(max_transfers) if max_transfers else None
        self.mac_of_ip = mac_of_ip
        self.lock = lock or threading.Lock()     # the tracker is shared with the dnsmasq reader
        super().__init__(address, BootRequestHandler)

    def handle_error(self, request, client_address):
        # One line, never socketserver's traceback: firmware often drops its
        # keep-alive connections, and a node's failure is already a tracker step.
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError)):
            log.debug("%s: connection dropped (%s)", client_address[0], err)
        else:
            log.warning("%s: HTTP request failed: %s: %s", client_address[0], type(err).__name__, err)

    def script_for(self, mac: str, ip: str) -> str:
        # The client's address is noted: in proxy mode no DHCP lease of ours ties it to
        # the MAC, and the kernel and initrd requests that follow name only the address.
        with self.lock:
            choice = self.tracker.boot_choice(mac)
            rec = self.tracker.record(mac)
            self.tracker.step(mac, "ipxe script", choice, ip=ip)
        if choice == "local":
            return ipxe.local_script(rec.name, self.base_url)
        if choice == "ignore":
            return ipxe.ignore_script(mac)
        params = dict(self.install_params)
        params["node"] = rec.name
        boot = ipxe.InstallBoot(base_url=self.base_url, node_url=f"{self.base_url}/node/{mac.replace(':', '-')}",
                                kernel_args=self.kernel_args, params=params)
        return ipxe.install_script(rec.name, mac, boot)


class BootRequestHandler(http.server.BaseHTTPRequestHandler):
    server: BootHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):   # every request is already a tracker step
        log.debug("%s %s", self.client_address[0], fmt % args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _step(self, mac: Optional[str], step: str, detail: str = "", failed: bool = False) -> None:
        if mac is None:
            log.warning("%s (no DHCP lease known for this address): %s %s", self.client_address[0], step, detail)
            return
        with self.server.lock:
            self.server.tracker.step(mac, step, detail, ip=self.client_address[0], failed=failed)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/boot.ipxe":
            self._send(200, ipxe.chain_script(self.server.base_url).encode())
            return
        m = _NODE_PATH.match(path)
        if m and m.group("what") == "boot.ipxe":
            mac = normalize_mac(m.group("mac"))
            if mac is None:
                self._send(404, b"bad MAC\n")
                return
            self._send(200, self.server.script_for(mac, self.client_address[0]).encode())
            return
        name = path.lstrip("/")
        if name in IMAGE_FILES:
            self._send_image(name)
            return
        self._send(404, b"not found\n")

    do_HEAD = do_GET

    def do_POST(self):
        parts = urllib.parse.urlsplit(self.path)
        m = _NODE_PATH.match(parts.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        if not m or m.group("what") != "report":
            self._send(404, b"not found\n")
            return
        query = urllib.parse.parse_qs(parts.query)
        state = (query.get("state") or [""])[0]
        detail = (query.get("detail") or [""])[0][:500]
        mac = normalize_mac(m.group("mac"))
        if mac is None or state not in REPORTED_STATES:
            self._send(400, f"state must be one of {', '.join(REPORTED_STATES)}\n".encode())
            return
        self._step(mac, state, detail, failed=state == "failed")
        self._send(200, b"ok\n")

    def _send_image(self, name: str) -> None:
        path = self.server.image_dir / name
        mac = self.server.mac_of_ip(self.client_address[0])
        step = IMAGE_STEPS[name]
        sem = self.server.transfers
        if sem is not None and not sem.acquire(blocking=False):
            self._step(mac, f"{step} queued", "waiting for a free transfer slot")
            sem.acquire()
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command == "HEAD":
                    return
                self._step(mac, step, f"{size} bytes")
                sent = 0
                while sent < size:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), sent, size - sent)
                    if n == 0:
                        break
                    sent += n
            if sent < size:
                self._step(mac, f"{step} cut", f"{sent} of {size} bytes", failed=True)
            else:
                self._step(mac, f"{step} sent", f"{size} bytes")
        except (BrokenPipeError, ConnectionResetError) as e:
            self._step(mac, f"{step} cut", str(e), failed=True)
        finally:
            if sem is not None:
                sem.release()
