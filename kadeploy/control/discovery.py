"""Finding the server by session name over UDP broadcast, as the original did.

The client broadcasts ``NAME\\0`` to UDP port 4957 once a second, ten times (both in
kadeploy.defaults); a server of that session answers the sender. The original
answered its version string to port 4958; we answer to the request's source port instead (so several clients on one
host all get their answer), with the version and the control port:
``kadeploy <version> <control port>\\0``. The answer's source address is the server.

With a key, the request carries a fresh nonce (``NAME\\0NONCE``) and the answer a
proof over the session, the nonce, the version and the port
(``kadeploy <version> <port> <proof>\\0``, kadeploy.core.handshake.proof): the client
ignores every answer without a valid proof, so a rogue responder can neither send
it to a server of its own nor make it give up. Without a key, any answer is taken.
"""
from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import time
from typing import List, Optional, Tuple

from kadeploy.control import auth
from kadeploy.core.handshake import check, proof, well_formed_nonce
from kadeploy.defaults import DISCOVERY_INTERVAL, DISCOVERY_PORT, DISCOVERY_TRIES
from kadeploy.errors import NotJoined, UsageError
from kadeploy.version import __version__

MAX_SESSION_NAME = 255
_SIOCGIFBRDADDR = 0x8919
_SIOCGIFFLAGS = 0x8913
_IFF_BROADCAST = 0x2
_IFF_UP = 0x1


def check_session_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not raw or len(raw) > MAX_SESSION_NAME or b"\0" in raw:
        raise UsageError(f"session name must be 1 to {MAX_SESSION_NAME} bytes without NUL")
    return raw


def request(name: str, nonce: Optional[str] = None) -> bytes:
    return check_session_name(name) + b"\0" + (nonce.encode() if nonce else b"")


def parse_request(data: bytes) -> Optional[Tuple[str, Optional[str]]]:
    """(session name, nonce or None) that a datagram asks for, or None if it is not a request."""
    name, _, rest = data.partition(b"\0")
    if not name or len(name) > MAX_SESSION_NAME:
        return None
    try:
        nonce = rest.decode("ascii") if rest else None
        if nonce is not None and not well_formed_nonce(nonce):
            return None
        return name.decode("utf-8"), nonce
    except UnicodeDecodeError:
        return None


def _answer_proof(key: bytes, session: str, nonce: str, version: str, port: int) -> str:
    return proof(key, "discovery", nonce, "", f"{session}|{version}|{port}")


def answer(control_port: int, key: Optional[bytes] = None, session: str = "",
           nonce: Optional[str] = None) -> bytes:
    text = f"kadeploy {__version__} {control_port}"
    if key is not None:
        text += " " + _answer_proof(key, session, nonce, __version__, control_port)
    return text.encode() + b"\0"


def parse_answer(data: bytes, key: Optional[bytes] = None, session: str = "",
                 nonce: Optional[str] = None) -> Optional[Tuple[str, int]]:
    """(version, control port) from an answer, or None if it is not one of ours (with
    a key: not one that proves it knows the key, for this request)."""
    parts = data.rstrip(b"\0").split()
    if len(parts) != (4 if key is not None else 3) or parts[0] != b"kadeploy":
        return None
    try:
        port = int(parts[2])
        version = parts[1].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if not 0 < port < 65536:
        return None
    if key is not None and not check(_answer_proof(key, session, nonce, version, port),
                                     parts[3].decode("ascii", "replace")):
        return None
    return version, port


def broadcast_addresses() -> List[str]:
    """255.255.255.255 plus the broadcast address of every interface that has one.

    The limited broadcast needs a route; an interface's own broadcast address works
    even on a node booted with no default route."""
    out = ["255.255.255.255"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, ifname in socket.if_nameindex():
            req = struct.pack("16s16x", ifname.encode()[:15])
            try:
                flags = struct.unpack("16xH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[0]
                if not (flags & _IFF_UP and flags & _IFF_BROADCAST):
                    continue
                res = fcntl.ioctl(s.fileno(), _SIOCGIFBRDADDR, req)
            except OSError:
                continue
            addr = socket.inet_ntoa(res[20:24])
            if addr not in out and addr != "0.0.0.0":
                out.append(addr)
    return out


class Responder(asyncio.DatagramProtocol):
    """Server side: answer requests for our session name (with a key, only keyed
    requests, with the proof)."""

    def __init__(self, session: str, control_port: int, key: Optional[bytes] = None) -> None:
        self.session, self.control_port, self.key = session, control_port, key
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        req = parse_request(data)
        if req is None or req[0] != self.session or (self.key is not None and req[1] is None):
            return
        self.transport.sendto(answer(self.control_port, self.key, self.session, req[1]), addr)


async def start_responder(session: str, control_port: int, port: int = DISCOVERY_PORT,
                          key: Optional[bytes] = None):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", port))
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Responder(session, control_port, key), sock=sock)
    return transport


def discover(session: str, *, tries: int = DISCOVERY_TRIES, interval: float = DISCOVERY_INTERVAL,
             port: int = DISCOVERY_PORT, key: Optional[bytes] = None) -> Tuple[str, int]:
    """(server address, control port) for a session, or NotJoined after `tries` seconds."""
    nonce = auth.new_nonce() if key is not None else None
    req = request(session, nonce)
    unproven = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind(("0.0.0.0", 0))
        sent_any = False
        for _ in range(tries):
            for dest in broadcast_addresses():
                try:
                    s.sendto(req, (dest, port))
                    sent_any = True
                except OSError:
                    continue  # no route for this one; the others may work
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data, (host, _) = s.recvfrom(512)
                except socket.timeout:
                    break
                parsed = parse_answer(data, key, session, nonce)
                if parsed:
                    return host, parsed[1]
                if key is not None and data.startswith(b"kadeploy "):
                    unproven += 1
        where = "" if sent_any else " (no interface could broadcast)"
        if unproven:
            where += f" ({unproven} answer(s) without a valid proof of the key ignored)"
        raise NotJoined(f"no server answered for session {session!r} after {tries} tries{where}")
