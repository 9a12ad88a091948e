"""Addresses as text: one spelling for each address and host:port, without I/O."""
from __future__ import annotations

import ipaddress


def normalize_address(address: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4'; other addresses as they are, without scope."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
