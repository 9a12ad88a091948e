"""The dnsmasq configuration of the boot kit, as text, from a node table and options.

Pure: no I/O. Two DHCP modes:

- ``dhcp``: dnsmasq is the network's DHCP server for a range, with a static lease for
  every node of the table (MAC -> name, address).
- ``proxy``: the site's DHCP server hands out addresses; dnsmasq only answers PXE
  clients with the boot information (proxy-DHCP, ``dhcp-range=NETWORK,proxy``).

In both, a PXE ROM (no iPXE user class, no option 175) gets iPXE by TFTP: BIOS
``undionly.kpxe``, UEFI ``ipxe.efi``; iPXE itself (which sends user class "iPXE" and
option 175) gets the HTTP URL of the boot script, so it never loads itself again.
Nodes not in the table are ignored (``unknown="ignore"``) or answered too
(``unknown="install"``: the HTTP side then decides what they boot). DNS is off.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from .nodetable import NodeTable

MODES = ("dhcp", "proxy")
UNKNOWN_POLICIES = ("ignore", "install")
BIOS_LOADER = "undionly.kpxe"
UEFI_LOADER = "ipxe.efi"
# DHCP option 93 (client architecture): 0 BIOS; 7 and 9 x86-64 UEFI (RFC 4578).
UEFI_ARCHES = (7, 9)


@dataclass(frozen=True)
class DnsmasqOptions:
    interface: str
    server_address: str                 # this machine's IPv4 address on the interface
    boot_url: str                       # the iPXE script iPXE fetches first
    tftp_root: str
    mode: str = "dhcp"
    network: Optional[str] = None       # e.g. 198.18.0.0/24 (default: from server_address/24)
    range_start: Optional[str] = None   # dhcp mode: the dynamic range for unknown nodes
    range_end: Optional[str] = None
    lease_time: str = "1h"
    router: Optional[str] = None
    unknown: str = "ignore"
    ra: bool = True                     # router advertisements: iPXE stops waiting for IPv6
    leasefile: Optional[str] = None
    reply_delay: int = 0                # seconds dnsmasq waits before each reply (pacing)
    ping_check: bool = False            # ping a dynamic address before offering it


def _net(opts: DnsmasqOptions) -> ipaddress.IPv4Network:
    if opts.network:
        return ipaddress.IPv4Network(opts.network, strict=False)
    return ipaddress.IPv4Network(f"{opts.server_address}/24", strict=False)


def default_range(net: ipaddress.IPv4Network) -> Tuple[str, str]:
    """The dynamic range for unknown nodes: the upper half of the network's hosts."""
    hosts = list(net.hosts())
    half = hosts[len(hosts) // 2:]
    return str(half[0]), str(half[-1])


def check(opts: DnsmasqOptions, nodes: NodeTable) -> None:
    """Raise ValueError with one clear line for options that cannot work."""
    if opts.mode not in MODES:
        raise ValueError(f"DHCP mode {opts.mode!r}: choose {' or '.join(MODES)}")
    if opts.unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown-node policy {opts.unknown!r}: choose {' or '.join(UNKNOWN_POLICIES)}")
    net = _net(opts)
    if ipaddress.IPv4Address(opts.server_address) not in net:
        raise ValueError(f"the server address {opts.server_address} is not in {net}")
    if opts.mode == "dhcp":
        for node in nodes:
            if node.address is None:
                raise ValueError(f"node {node.name} has no address: full DHCP mode needs one for every node")
            if ipaddress.IPv4Address(node.address) not in net:
                raise ValueError(f"node {node.name}'s address {node.address} is not in {net}")
            if node.address == opts.server_address:
                raise ValueError(f"node {node.name} has the server's own address {node.address}")


def render(opts: DnsmasqOptions, nodes: NodeTable) -> str:
    """The whole dnsmasq.conf. Raises ValueError (see :func:`check`)."""
    check(opts, nodes)
    net = _net(opts)
    out = [
        "# Written by kadeploy netboot serve; it is rewritten at every start.",
        "# No DNS: only DHCP and TFTP.",
        "port=0",
        f"interface={opts.interface}",
        "# Only this interface, and addresses it gains later (e.g. from router advertisements).",
        "bind-dynamic",
        "log-dhcp",
        "log-facility=-",
        "# Keep the boot file name in its own field, where iPXE reads it.",
        "dhcp-no-override",
    ]
    if opts.leasefile:
        out.append(f"dhcp-leasefile={opts.leasefile}")
    if opts.reply_delay:
        out.append(f"dhcp-reply-delay={opts.reply_delay}")
    if opts.mode == "dhcp":
        out.append("dhcp-authoritative")
        if opts.unknown == "ignore" and not opts.range_start:
            # Only the table's static leases: no pool for strangers.
            out.append(f"dhcp-range={net.network_address},static,{net.netmask},{opts.lease_time}")
        else:
            start, end = (opts.range_start, opts.range_end) if opts.range_start else default_range(net)
            out.append(f"dhcp-range={start},{end},{net.netmask},{opts.lease_time}")
            if not opts.ping_check:
                out += ["# dnsmasq would ping each new dynamic address first and answer no node for",
                        "# ~3 s meanwhile: a rack of new nodes booting at once would time out.",
                        "no-ping"]
        if opts.router:
            out.append(f"dhcp-option=option:router,{opts.router}")
        else:
            out += ["# No default route on the boot network.", "dhcp-option=option:router"]
    else:
        out.append(f"dhcp-range={net.network_address},proxy,{net.netmask}")
    out.append("# The node table: known nodes get their name and, in dhcp mode, their address.")
    for node in nodes:
        if opts.mode == "dhcp":
            out.append(f"dhcp-host={node.mac},{node.address},{node.name},{opts.lease_time}")
        else:
            out.append(f"dhcp-host={node.mac},{node.name}")
    if opts.unknown == "ignore":
        out += ["# Nodes not in the table get no answer.", "dhcp-ignore=tag:!known"]
    out += [
        "# iPXE says who it is (user class iPXE, option 175): it gets the HTTP script,",
        "# a PXE ROM gets iPXE itself by TFTP (BIOS or UEFI by the client architecture).",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",
        "# Only PXE firmware gets a boot file (not the install system, not the installed OS).",
        "dhcp-vendorclass=set:pxe,PXEClient",
        *[f"dhcp-match=set:efi64,option:client-arch,{arch}" for arch in UEFI_ARCHES],
        "enable-tftp",
        f"tftp-root={opts.tftp_root}",
    ]
    if opts.mode == "dhcp":
        out += [
            f"dhcp-boot=tag:pxe,tag:!ipxe,tag:!efi64,{BIOS_LOADER},,{opts.server_address}",
            f"dhcp-boot=tag:pxe,tag:!ipxe,tag:efi64,{UEFI_LOADER},,{opts.server_address}",
            f"dhcp-boot=tag:ipxe,{opts.boot_url}",
        ]
    else:
        # Beside another DHCP server, PXE clients are answered as a boot server. iPXE
        # takes its file name only from a PXE service here (dhcp-boot is not enough:
        # measured with qemu's iPXE, it then finds "nothing to boot").
        out.append("pxe-prompt=\"kadeploy\",0")
        for csa, loader in (("x86PC", BIOS_LOADER), ("BC_EFI", UEFI_LOADER), ("x86-64_EFI", UEFI_LOADER)):
            out += [f"pxe-service=tag:!ipxe,{csa},\"kadeploy: iPXE\",{loader},{opts.server_address}",
                    f"pxe-service=tag:ipxe,{csa},\"kadeploy\",{opts.boot_url}"]
    if opts.ra:
        out += ["enable-ra", f"dhcp-range=::,constructor:{opts.interface},ra-only"]
    return "\n".join(out) + "\n"
