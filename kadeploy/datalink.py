"""Data connections: child and parent prove to each other that they belong to this
deployment (kadeploy.auth, keyed by the deployment's data key), then raw bytes flow.

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

from . import auth
from . import protocol as P
from .errors import NotJoined
from .netio import connect, normalize_address, recv_frame, send_frame, set_sockbuf

log = logging.getLogger("kadeploy.data")


async def connect_parent(host: str, port: int, node_id: int, key: bytes, *,
                         timeout: float, sockbuf: Optional[int]) -> socket.socket:
    sock = await connect(host, port, timeout, "parent")
    try:
        set_sockbuf(sock, sockbuf)
        ours = auth.new_nonce()
        await send_frame(sock, P.DataHello(node_id=node_id, nonce=ours))
        challenge = _refused_or(await asyncio.wait_for(recv_frame(sock), timeout), P.Challenge)
        if not auth.check(auth.proof(key, "parent", ours, challenge.nonce, str(node_id)),
                          challenge.proof):
            await send_frame(sock, P.Refuse(reason="parent proof does not match"))
            raise NotJoined("the parent could not prove it belongs to this deployment")
        await send_frame(sock, P.Auth(proof=auth.proof(key, "child", ours, challenge.nonce, str(node_id))))
        _refused_or(await asyncio.wait_for(recv_frame(sock), timeout), P.DataWelcome)
        return sock
    except (ConnectionError, asyncio.TimeoutError, P.ProtocolError) as e:
        sock.close()
        raise NotJoined(f"data connection to parent failed: {e or 'timed out'}")
    except BaseException:
        sock.close()
        raise


def _refused_or(msg: P.Message, wanted):
    if isinstance(msg, P.Refuse):
        raise NotJoined(f"parent refused the data connection: {msg.reason}")
    return P.expect(msg, wanted)


async def accept_children(listener: socket.socket, child_ids: Iterable[int], key: bytes, *,
                          timeout: float, handshake_timeout: float, sockbuf: Optional[int],
                          on_refused: Callable[[str, str], None],
                          gone: Callable[[], Set[int]] = frozenset) -> Dict[int, socket.socket]:
    """Accept the expected children (by node id, proving the data key) until all are in or
    `timeout` passes; anyone else is refused and reported through on_refused(addr, why)."""
    loop = asyncio.get_running_loop()
    expected = {cid: loop.create_future() for cid in child_ids}
    if not expected:
        return {}
    handshakes = set()

    async def handshake(conn: socket.socket, addr) -> None:
        conn.setblocking(False)
        try:
            hello = P.expect(await asyncio.wait_for(recv_frame(conn), handshake_timeout), P.DataHello)
            fut = expected.get(hello.node_id)
            if fut is None or not auth.well_formed_nonce(hello.nonce):
                raise P.RemoteProtocolError("not a child of this node in this deployment")
            ours = auth.new_nonce()
            context = str(hello.node_id)
            await send_frame(conn, P.Challenge(
                nonce=ours, proof=auth.proof(key, "parent", hello.nonce, ours, context)))
            reply = P.expect(await asyncio.wait_for(recv_frame(conn), handshake_timeout), P.Auth)
            if not auth.check(auth.proof(key, "child", hello.nonce, ours, context), reply.proof):
                raise P.RemoteProtocolError("not a member of this deployment: proof does not match")
            if fut.done():
                raise P.RemoteProtocolError(f"node {hello.node_id} is already connected")
            set_sockbuf(conn, sockbuf)
            await send_frame(conn, P.DataWelcome())
            fut.set_result(conn)
        except (P.ProtocolError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            on_refused(normalize_address(addr[0]), str(e) or "said nothing in time")
            if isinstance(e, P.ProtocolError):
                try:
                    await send_frame(conn, P.Refuse(reason=str(e)))
                except OSError:
                    pass
            conn.close()

    async def accept_loop() -> None:
        while True:
            conn, addr = await loop.sock_accept(listener)
            task = asyncio.ensure_future(handshake(conn, addr))
            handshakes.add(task)
            task.add_done_callback(handshakes.discard)

    acceptor = asyncio.ensure_future(accept_loop())
    loop_deadline = loop.time() + timeout
    try:
        # Also stop waiting once every missing child is known to be gone.
        while (left := loop_deadline - loop.time()) > 0:
            missing = [f for cid, f in expected.items() if not f.done() and cid not in gone()]
            if not missing:
                break
            await asyncio.wait(missing, timeout=min(left, 0.2))
    finally:
        acceptor.cancel()
        for task in list(handshakes):
            task.cancel()
    return {cid: fut.result() for cid, fut in expected.items() if fut.done() and not fut.cancelled()}
