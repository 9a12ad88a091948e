"""Data connections: a child proves membership to its parent, then raw bytes flow.

The same on the server (the first level's parent) and on every node."""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import Callable, Dict, Iterable, Optional

from . import protocol as P
from .errors import NotJoined
from .netio import connect, recv_frame, send_frame, set_sockbuf

log = logging.getLogger("kadeploy.data")


async def connect_parent(host: str, port: int, node_id: int, token: str, *,
                         timeout: float, sockbuf: Optional[int]) -> socket.socket:
    sock = await connect(host, port, timeout, "parent")
    try:
        set_sockbuf(sock, sockbuf)
        await send_frame(sock, P.DataHello(node_id=node_id, token=token))
        reply = await asyncio.wait_for(recv_frame(sock), timeout)
        if isinstance(reply, P.Refuse):
            raise NotJoined(f"parent refused the data connection: {reply.reason}")
        P.expect(reply, P.DataWelcome)
        return sock
    except (ConnectionError, asyncio.TimeoutError, P.ProtocolError) as e:
        sock.close()
        raise NotJoined(f"data connection to parent failed: {e or 'timed out'}")
    except BaseException:
        sock.close()
        raise


async def accept_children(listener: socket.socket, child_ids: Iterable[int], token: str, *,
                          timeout: float, handshake_timeout: float, sockbuf: Optional[int],
                          on_refused: Callable[[str, str], None]) -> Dict[int, socket.socket]:
    """Accept the expected children (by node id, proving the token) until all are in or
    `timeout` passes; anyone else is refused and reported through on_refused(addr, why)."""
    loop = asyncio.get_running_loop()
    expected = {cid: loop.create_future() for cid in child_ids}
    if not expected:
        return {}
    handshakes = set()

    async def handshake(conn: socket.socket, addr) -> None:
        conn.setblocking(False)
        try:
            msg = P.expect(await asyncio.wait_for(recv_frame(conn), handshake_timeout), P.DataHello)
            fut = expected.get(msg.node_id)
            if fut is None or not secrets.compare_digest(msg.token, token):
                raise P.RemoteProtocolError("not a child of this node in this deployment")
            if fut.done():
                raise P.RemoteProtocolError(f"node {msg.node_id} is already connected")
            set_sockbuf(conn, sockbuf)
            await send_frame(conn, P.DataWelcome())
            fut.set_result(conn)
        except (P.ProtocolError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            on_refused(addr[0], str(e) or "said nothing in time")
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
    try:
        await asyncio.wait(list(expected.values()), timeout=timeout)
    finally:
        acceptor.cancel()
        for task in list(handshakes):
            task.cancel()
    return {cid: fut.result() for cid, fut in expected.items() if fut.done() and not fut.cancelled()}
