"""Lightweight protocol-level clients: many of them in one asyncio loop load the
server's control plane (registration, placing, reports) without any relaying."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import List, Optional

from kadeploy.control import auth
from kadeploy.control.netio import ControlChannel, connect
from kadeploy.core import protocol as P
from kadeploy.data.datalink import connect_parent


@dataclass
class FakeResult:
    data_port: int
    place: Optional[P.Place] = None
    end: Optional[P.End] = None
    received: int = 0
    error: Optional[str] = None


async def fake_client(host: str, port: int, data_port: int, *, take_data: bool = True) -> FakeResult:
    """take_data=False: a node that lives on (it reports) but never opens its data
    connection; it waits for the server's verdict, recorded in `error`."""
    res = FakeResult(data_port)
    sock = await connect(host, port, 60, "server", retry_refused=True)
    reader, writer = await asyncio.open_connection(sock=sock)
    ch = ControlChannel(reader, writer, P.CLIENT)
    heartbeat = None
    try:
        await ch.send(P.Hello(software="fake", hostname=f"fake{data_port}", data_port=data_port))
        welcome = await ch.recv()
        res.place = await _next_but_pings(ch)
        if not isinstance(res.place, P.Place):
            res.error = f"got {res.place!r}"
            return res
        heartbeat = asyncio.ensure_future(_heartbeat(ch, res))
        if not take_data:
            while not isinstance(msg := await _next_but_pings(ch), P.Abort):
                pass
            res.error = f"aborted: {msg.reason}"
            return res
        if res.place.depth == 1:   # a child of the server: take the real stream
            res.received = await _drain_from(res.place, welcome.node_id)
        while not isinstance(msg := await _next_but_pings(ch), P.End):
            pass                    # chunk digests
        res.end = msg
        heartbeat.cancel()
        await ch.send(P.Done(ok=True, bytes=res.end.bytes, seconds=0.0, backend="fake"))
    except Exception as e:  # recorded, so that the test names what went wrong
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        ch.close()
    return res


async def _next_but_pings(ch: ControlChannel) -> P.Message:
    while isinstance(msg := await ch.recv(), P.Ping):
        pass
    return msg


async def _heartbeat(ch: ControlChannel, res: FakeResult) -> None:
    """What a real node does: progress every second, so the server knows it lives."""
    while True:
        await asyncio.sleep(1.0)
        await ch.send(P.Progress(bytes=res.received))


async def _drain_from(place: P.Place, node_id: int) -> int:
    loop = asyncio.get_running_loop()
    sock = await connect_parent(place.parent_host, place.parent_port, node_id,
                                auth.data_key(None, place.token), timeout=30, sockbuf=None)
    with sock:
        n = 0
        while chunk := await loop.sock_recv(sock, 1 << 16):
            n += len(chunk)
        return n


async def run_fakes(host: str, port: int, count: int, first_data_port: int = 20000) -> List[FakeResult]:
    return await asyncio.gather(*(fake_client(host, port, first_data_port + i) for i in range(count)))
