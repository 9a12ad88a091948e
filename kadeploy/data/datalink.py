"""Data connections: child and parent prove to each other that they belong to this
deployment (kadeploy.core.handshake, keyed by the deployment's data key), then raw bytes flow.

    child  -> parent  DataHello(node_id, nonce)
    parent -> child   Challenge(nonce, proof of the parent)
    child  -> parent  Auth(proof of the child)
    parent -> child   DataWelcome, then the stream

The same on the server (the first level's parent) and on every node. A stranger can
neither take a child's place (it cannot prove) nor feed a child (the child checks the
parent's proof before it reads a byte)."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable, Dict, Iterable, Optional, Set

from kadeploy.control import auth
from kadeploy.control.netio import connect, recv_frame, send_frame, set_sockbuf
from kadeploy.core import protocol as P
from kadeploy.core.addresses import format_hostport, normalize_address
from kadeploy.core.handshake import DATA, Answerer, Asker, HandshakeFailed, well_formed_nonce
from kadeploy.errors import NotJoined

log = logging.getLogger("kadeploy.data")


async def connect_parent(host: str, port: int, node_id: int, key: bytes, *,
                         timeout: float, sockbuf: Optional[int], offset: int = 0) -> socket.socket:
    sock = await connect(host, port, timeout, "parent")
    try:
        set_sockbuf(sock, sockbuf)
        asker = Asker(key, DATA, auth.new_nonce())
        await send_frame(sock, P.DataHello(node_id=node_id, nonce=asker.nonce, offset=offset))
        challenge = _refused_or(await asyncio.wait_for(recv_frame(sock), timeout), P.Challenge)
        try:
            reply = asker.answer(challenge, auth.data_context(node_id, offset))
        except HandshakeFailed as e:
            await send_frame(sock, P.Refuse(reason=e.refuse))
            raise NotJoined(e.reason)
        await send_frame(sock, reply)
        _refused_or(await asyncio.wait_for(recv_frame(sock), timeout), P.DataWelcome)
        return sock
    except (ConnectionError, asyncio.TimeoutError, P.ProtocolError) as e:
        sock.close()
        raise NotJoined(f"data connection to parent {format_hostport(host, port)} failed: "
                        f"{str(e) or 'timed out'}")
    except BaseException:
        sock.close()
        raise


def _refused_or(msg: P.Message, wanted):
    if isinstance(msg, P.Refuse):
        raise NotJoined(f"parent refused the data connection: {msg.reason}")
    return P.expect(msg, wanted)


class ChildAcceptor:
    """Accepts data connections on a listener while it is open: each must be from a
    node we expect (by id) and prove the data key. `offsets` says whether a child may
    resume at an offset other than 0 (only the server can re-serve the stream)."""

    def __init__(self, listener: socket.socket, key: bytes, *, handshake_timeout: float,
                 sockbuf: Optional[int], on_refused: Callable[[str, str], None],
                 offsets: bool = False) -> None:
        self.listener, self.key = listener, key
        self.handshake_timeout, self.sockbuf = handshake_timeout, sockbuf
        self.on_refused, self.offsets = on_refused, offsets
        # admit(node_id, offset): None, or why this node cannot be served from there
        # (said to the child in the Refuse, before any byte flows).
        self.admit: Callable[[int, int], Optional[str]] = lambda node_id, offset: None
        self.expected: Dict[int, asyncio.Future] = {}
        self._handshakes: Set[asyncio.Task] = set()
        self._task: Optional[asyncio.Task] = None

    def expect(self, node_id: int) -> asyncio.Future:
        """A future of (socket, offset) for this child's next data connection."""
        fut = asyncio.get_running_loop().create_future()
        self.expected[node_id] = fut
        if self._task is None:
            self._task = asyncio.ensure_future(self._accept_loop())
        return fut

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._handshakes):
            task.cancel()
        for fut in self.expected.values():
            if not fut.done():
                fut.cancel()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, addr = await loop.sock_accept(self.listener)
            task = asyncio.ensure_future(self._handshake(conn, addr))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, addr) -> None:
        conn.setblocking(False)
        timeout = self.handshake_timeout
        try:
            hello = P.expect(await asyncio.wait_for(recv_frame(conn), timeout), P.DataHello)
            fut = self.expected.get(hello.node_id)
            if fut is None or not well_formed_nonce(hello.nonce):
                raise P.RemoteProtocolError("not a child of this node in this deployment")
            answerer = Answerer(self.key, DATA, hello.nonce, auth.data_context(hello.node_id, hello.offset),
                                auth.new_nonce())
            await send_frame(conn, answerer.challenge())
            reply = P.expect(await asyncio.wait_for(recv_frame(conn), timeout), P.Auth)
            try:
                answerer.verify(reply)
            except HandshakeFailed as e:
                raise P.RemoteProtocolError(e.reason) from None
            # The expectation now, not the one at the hello: a parent that stopped waiting
            # for a slow child and expects it anew must get this connection, not lose it.
            fut = self.expected.get(hello.node_id, fut)
            if fut.done():
                raise P.RemoteProtocolError(f"node {hello.node_id} is already connected")
            if hello.offset < 0 or (hello.offset and not self.offsets):
                raise P.RemoteProtocolError(f"cannot serve the stream from offset {hello.offset}")
            why = self.admit(hello.node_id, hello.offset)
            if why:
                raise P.RemoteProtocolError(why)
            set_sockbuf(conn, self.sockbuf)
            await send_frame(conn, P.DataWelcome())
            fut.set_result((conn, hello.offset))
        except (P.ProtocolError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.on_refused(normalize_address(addr[0]), str(e) or "said nothing in time")
            if isinstance(e, P.ProtocolError):
                try:
                    await send_frame(conn, P.Refuse(reason=str(e)))
                except OSError:
                    pass
            conn.close()


async def accept_children(acceptor: ChildAcceptor, child_ids: Iterable[int], *, timeout: float,
                          gone: Callable[[], Set[int]] = frozenset,
                          then: Optional[float] = None) -> Dict[int, socket.socket]:
    """The expected children's data connections, once all are in, every missing one is
    known to be gone, or `timeout` has passed; with `then`, the others get at most `then`
    seconds more once the first is in."""
    loop = asyncio.get_running_loop()
    expected = {cid: acceptor.expect(cid) for cid in child_ids}
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        missing = [f for cid, f in expected.items() if not f.done() and cid not in gone()]
        if not missing:
            break
        if then is not None and any(f.done() and not f.cancelled() for f in expected.values()):
            deadline, then = min(deadline, loop.time() + then), None
            continue
        await asyncio.wait(missing, timeout=min(left, 0.2))
    return {cid: fut.result()[0] for cid, fut in expected.items() if fut.done() and not fut.cancelled()}
