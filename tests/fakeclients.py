"""Lightweight protocol-level clients: many of them in one asyncio loop load the
server's control plane (registration, placing, reports) without any relaying."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import List, Optional

from kadeploy import auth
from kadeploy import protocol as P
from kadeploy.datalink import connect_parent
from kadeploy.netio import ControlChannel, connect


@dataclass
class FakeResult:
    data_port: int
    place: Optional[P.Place] = None
    end: Optional[P.End] = None
    received: int = 0
    error: Optional[str] = None


async def fake_client(host: str, port: int, data_port: int) -> FakeResult:
    res = FakeResult(data_port)
    sock = await connect(host, port, 60, "server", retry_refused=True)
    reader, writer = await asyncio.open_connection(sock=sock)
    ch = ControlChannel(reader, writer, P.CLIENT)
    try:
        await ch.send(P.Hello(software="fake", hostname=f"fake{data_port}", data_port=data_port))
        welcome = await ch.recv()
        res.place = await ch.recv()
        if not isinstance(res.place, P.Place):
            res.error = f"got {res.place!r}"
            return res
        if res.place.depth == 1:   # a child of the server: take the real stream
            res.received = await _drain_from(res.place, welcome.node_id)
        res.end = await ch.recv()
        await ch.send(P.Done(ok=True, bytes=res.end.bytes, seconds=0.0, backend="fake"))
    except Exception as e:  # recorded, so that the test names what went wrong
        res.error = f"{type(e).__name__}: {e}"
    finally:
        ch.close()
    return res


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
