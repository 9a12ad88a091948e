"""Reading dnsmasq's log (``log-dhcp``, on its stderr) into per-node boot steps. Pure.

dnsmasq logs each DHCP exchange over several lines sharing a transaction number
(vendor class, user class, then ``DHCPDISCOVER(eth0) MAC``, ``DHCPOFFER(eth0) IP MAC``,
...), and TFTP transfers by the client's IP address only (``sent FILE to IP``). The
parser keeps which MAC holds which IP so that TFTP steps are named by node, and which
exchange came from iPXE or from a PXE ROM. Lines it does not know are ignored: dnsmasq's
log is for people and may change.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

_PREFIX = re.compile(r"^(?:\w{3} +\d+ [\d:]+ )?dnsmasq(?:-(?P<sub>dhcp|tftp))?(?:\[\d+\])?: (?P<rest>.*)$")
_DHCP = re.compile(r"^(?:(?P<xid>\d+) )?(?P<kind>DHCP[A-Z]+|PXE|BOOTP)\((?P<iface>[^)]*)\) "
                   r"(?:(?P<ip>\d+\.\d+\.\d+\.\d+) )?(?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})\s*(?P<extra>.*)$")
_XID_INFO = re.compile(r"^(?P<xid>\d+) (?P<key>vendor class|user class|bootfile name): (?P<value>.*)$")
_TFTP_SENT = re.compile(r"^sent (?P<file>\S+) to (?P<ip>[\d.]+)$")
_TFTP_ERROR = re.compile(r"^(?:error (?P<code>\d+) (?P<msg>.*) received from (?P<ip>[\d.]+)|"
                         r"file (?P<file>\S+) not found for (?P<ip2>[\d.]+)|"
                         r"failed sending (?P<file2>\S+) to (?P<ip3>[\d.]+))$")

# The vendor class the install system's DHCP client sends (init.sh).
INSTALL_VENDOR_CLASS = "kadeploy-install"

# The steps a node goes through, in order; the HTTP server adds its own after these.
DHCP_STEPS = {"DHCPDISCOVER": "dhcp discover", "DHCPOFFER": "dhcp offer",
              "DHCPREQUEST": "dhcp request", "DHCPACK": "dhcp ack", "DHCPNAK": "dhcp nak",
              "DHCPDECLINE": "dhcp decline", "DHCPRELEASE": "dhcp release",
              "DHCPINFORM": "dhcp inform", "PXE": "pxe proxy", "BOOTP": "bootp"}


@dataclass(frozen=True)
class BootEvent:
    """One step of one node, as seen by dnsmasq or the HTTP server."""
    mac: Optional[str]
    step: str
    ip: Optional[str] = None
    detail: str = ""
    failed: bool = False


@dataclass(frozen=True)
class ServiceLine:
    """A line about dnsmasq itself (start-up, errors), not about a node."""
    text: str
    error: bool


class DnsmasqLogParser:
    def __init__(self) -> None:
        self.mac_of_ip: Dict[str, str] = {}
        self._xid_info: Dict[str, Dict[str, str]] = {}

    def feed(self, line: str) -> List[object]:
        """Events (BootEvent or ServiceLine) that one log line tells."""
        m = _PREFIX.match(line.rstrip("\n"))
        if not m:
            return []
        sub, rest = m.group("sub"), m.group("rest").strip()
        if sub == "tftp":
            return self._tftp(rest)
        if sub == "dhcp":
            return self._dhcp(rest)
        low = rest.lower()
        is_error = any(word in low for word in ("failed", "error", "cannot", "illegal", "bad "))
        if rest.startswith("LOUD WARNING") or rest.startswith("compile time options"):
            return []
        return [ServiceLine(rest, is_error)]

    def _dhcp(self, rest: str) -> List[object]:
        info = _XID_INFO.match(rest)
        if info:
            self._xid_info.setdefault(info.group("xid"), {})[info.group("key")] = info.group("value").strip()
            if len(self._xid_info) > 4096:   # exchanges that never ended; keep memory bounded
                self._xid_info.pop(next(iter(self._xid_info)))
            return []
        m = _DHCP.match(rest)
        if not m:
            if rest.startswith("DHCP") and "failed" in rest.lower():
                return [ServiceLine(rest, True)]
            return []
        kind, mac, ip, extra = m.group("kind"), m.group("mac"), m.group("ip"), m.group("extra").strip()
        xid = self._xid_info.get(m.group("xid") or "", {})
        details = []
        client = xid.get("user class") or xid.get("vendor class")
        if xid.get("user class") == "iPXE":
            details.append("from iPXE")
        elif client == INSTALL_VENDOR_CLASS:
            details.append("from the install system")
        elif client and client.startswith("PXEClient"):
            details.append("from a PXE ROM (" + _arch(client) + ")")
        if kind == "DHCPACK" and xid.get("bootfile name"):
            details.append("boot " + xid["bootfile name"])
        ignored = extra == "ignored" or extra.startswith("ignored")
        if extra and not ignored:
            details.append(extra)
        if ip and kind in ("DHCPOFFER", "DHCPACK", "PXE"):
            self.mac_of_ip[ip] = mac
        step = DHCP_STEPS.get(kind, kind.lower())
        if ignored:
            return [BootEvent(mac, step + " ignored", ip, "not in the node table", failed=False)]
        return [BootEvent(mac, step, ip, ", ".join(details), failed=kind in ("DHCPNAK", "DHCPDECLINE"))]

    def _tftp(self, rest: str) -> List[object]:
        m = _TFTP_SENT.match(rest)
        if m:
            ip = m.group("ip")
            return [BootEvent(self.mac_of_ip.get(ip), "tftp sent", ip, m.group("file").rsplit("/", 1)[-1])]
        m = _TFTP_ERROR.match(rest)
        if m:
            ip = m.group("ip") or m.group("ip2") or m.group("ip3")
            what = m.group("msg") or (f"{m.group('file')} not found" if m.group("file") else
                                      f"failed sending {m.group('file2')}")
            # iPXE and UEFI PXE abort a first transfer on purpose, to learn the size: a
            # client's error 0 ("not defined") is that, not a failure.
            aborted = m.group("code") == "0"
            return [BootEvent(self.mac_of_ip.get(ip), "tftp " + ("aborted" if aborted else "error"),
                              ip, what, failed=not aborted)]
        if rest.startswith("TFTP root"):
            return [ServiceLine(rest, False)]
        return []


def _arch(vendor_class: str) -> str:
    # PXEClient:Arch:00000:UNDI:002001 -> the client architecture of RFC 4578.
    m = re.search(r"Arch:(\d+)", vendor_class)
    arch = int(m.group(1)) if m else -1
    return {0: "BIOS", 6: "UEFI ia32", 7: "UEFI x86-64", 9: "UEFI x86-64", 11: "UEFI arm64"}.get(
        arch, f"arch {arch}")
