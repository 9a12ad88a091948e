"""Thin socket helpers shared by the server and the client (asyncio, raw sockets)."""
from __future__ import annotations

import asyncio
import socket
from typing import Optional

from kadeploy.control import early
from kadeploy.core import protocol
from kadeploy.core.addresses import format_hostport, normalize_address
from kadeploy.errors import NotJoined


def set_sockbuf(sock: socket.socket, size: Optional[int]) -> None:
    """Fixed socket buffers, only when asked: setting them turns off kernel autotuning."""
    if size:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


async def connect(host: str, port: int, timeout: float, what: str, *,
                  retry_refused: bool = False) -> socket.socket:
    """A connected non-blocking TCP socket, or NotJoined with a one-line reason.

    With retry_refused, a refused connection is tried again until `timeout` has
    passed: nodes often boot before the server is started. A refusal is immediate (a
    RST), and nothing tells us when the port opens, so the retries start at once and
    back off only to CONNECT_RETRY_CAP (early.retry_pauses, which the early client's
    blocking connect shares): a client joins at most that long after the server
    listens, at the cost of a few dozen refused SYNs a second while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pauses = early.retry_pauses()
    while True:
        try:
            return await _connect_once(host, port, timeout, what)
        except NotJoined as e:
            if not (retry_refused and e.refused and loop.time() < deadline):
                raise
        await asyncio.sleep(next(pauses))


def _not_joined(why: early.Unreachable) -> NotJoined:
    err = NotJoined(str(why))
    err.refused = why.refused
    return err


async def _connect_once(host: str, port: int, timeout: float, what: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise _not_joined(early.resolve_failure(what, host, e)) from None
    last: Optional[OSError] = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except asyncio.TimeoutError:
            sock.close()
            last = early.timed_out(timeout)
        except OSError as e:
            sock.close()
            last = e
    raise _not_joined(early.connect_failure(what, host, port, last))


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes (no more: raw stream bytes may follow); EOF -> ConnectionError."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


async def recv_frame(sock: socket.socket) -> protocol.Message:
    """One frame read byte-exact from a raw socket (used on data connections)."""
    code, length = protocol.parse_header(await recv_exactly(sock, protocol.HEADER_SIZE))
    return protocol.parse_body(code, await recv_exactly(sock, length))


async def send_frame(sock: socket.socket, msg: protocol.Message) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, protocol.encode(msg))


class ControlChannel:
    """A control connection: asyncio streams plus the protocol state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str):
        self.reader, self.writer = reader, writer
        self.conn = protocol.ControlConnection(role)
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.peer_address = normalize_address(peer[0])
        self.local_address = normalize_address(local[0])

    async def recv(self) -> protocol.Message:
        """The next message; ConnectionError on EOF, ProtocolError on garbage (on a
        client, naming the server: the server names its nodes itself)."""
        while True:
            try:
                msg = self.conn.next_event()
            except protocol.RemoteProtocolError as e:
                if self.conn.our_role != protocol.CLIENT:
                    raise
                raise protocol.RemoteProtocolError(f"{e} (from the server at {self.peer_address})") from None
            if msg is not None:
                return msg
            if self.conn.peer_closed:
                raise ConnectionError("connection closed by peer")
            data = await self.reader.read(65536)
            self.conn.receive_data(data)

    def authenticate(self, session, asker: bool) -> None:
        """After a keyed handshake (kadeploy.core.handshake.SessionKeys): every frame
        from now on is authenticated."""
        self.conn.authenticate(*session.for_side(asker))

    async def send(self, msg: protocol.Message) -> None:
        self.writer.write(self.conn.send(msg))
        await self.writer.drain()

    def post(self, msg: protocol.Message) -> bool:
        """Queue a message without waiting for it to drain, so that one slow or frozen
        peer cannot hold up a broadcast; False when the peer is gone."""
        if self.writer.is_closing():
            return False
        try:
            self.writer.write(self.conn.send(msg))
            return True
        except (ConnectionError, OSError, protocol.LocalProtocolError):
            return False

    def abort(self) -> None:
        """Drop the connection at once (a peer given up for dead)."""
        self.writer.transport.abort()

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # the transport may already be gone
            pass


def shutdown_close(sock: socket.socket) -> None:
    """Send EOF after what is queued, then close (a child reads to the end)."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
