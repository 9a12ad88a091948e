"""ka-d-client: join, take a place in the tree, feed the consumer and the children.

A node's verdict is ok only when everything is verified: the stream was read to its
end, its length is the one the server announced, the producer succeeded, and the
consumer read all of it and exited 0. A child's failure is the child's, not ours: we
go on feeding the others and the consumer.
"""
from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Optional

from . import auth
from . import protocol as P
from . import relay as relay_mod
from .commands import DEFAULT_TARGET, default_consumer, describe_status, kill_group, spawn_consumer
from .errors import EXIT_FAILED, EXIT_OK, KadeployError, NotJoined
from .datalink import accept_children, connect_parent
from .netio import CONTROL_PORT, DATA_PORT, ControlChannel, connect, format_hostport, listen, shutdown_close
from .progress import ClientBar
from .version import __version__

log = logging.getLogger("kadeploy.client")
SOFTWARE = f"kadeploy {__version__}"
PROGRESS_INTERVAL = 1.0


@dataclass
class ClientConfig:
    host: Optional[str] = None
    session: Optional[str] = None
    consumer: Optional[str] = None
    target: Optional[str] = None
    wait_finish: bool = False
    control_port: int = CONTROL_PORT
    data_port: int = DATA_PORT
    bind: Optional[str] = None
    advertise: Optional[str] = None
    relay_backend: Optional[str] = None
    buffer_size: int = relay_mod.DEFAULT_BUFFER_SIZE
    sockbuf: Optional[int] = None
    connect_timeout: float = 30.0
    handshake_timeout: float = 10.0
    discovery_port: int = 4957
    discovery_tries: int = 10
    progress_bar: Optional[bool] = None   # None: when stderr is a terminal
    key: Optional[bytes] = None

    def consumer_command(self) -> str:
        return self.consumer or default_consumer(self.target or DEFAULT_TARGET)


@dataclass
class Outcome:
    ok: bool
    bytes: int
    seconds: float
    error: Optional[str]
    consumer_status: Optional[int]
    backend: str


def find_server(cfg: ClientConfig):
    """(host, control port) from -h, or by discovery with -s."""
    if cfg.host:
        return cfg.host, cfg.control_port
    from .discovery import discover
    log.info("looking for session %r by broadcast", cfg.session)
    host, port = discover(cfg.session, tries=cfg.discovery_tries, port=cfg.discovery_port)
    log.info("found the server of session %r at %s", cfg.session, format_hostport(host, port))
    return host, port


async def go_now(cfg: ClientConfig) -> str:
    """ka-d-client -g: tell the server to start with the clients it has."""
    host, port = await asyncio.get_running_loop().run_in_executor(None, find_server, cfg)
    ch = await _open_control(host, port, cfg)
    try:
        go = P.Go(software=SOFTWARE, session=cfg.session, nonce=auth.new_nonce() if cfg.key else None)
        msg = await request(ch, go, cfg, auth.go_context(go), "go-now")
        if not msg.started:
            raise NotJoined(f"server has already started ({msg.nodes} node(s))")
        return f"server starts with {msg.nodes} node(s)"
    finally:
        ch.close()


async def request(ch: ControlChannel, first: P.Message, cfg: ClientConfig, context: str,
                  what: str) -> P.Message:
    """Send Hello or Go and return the server's answer, after the mutual
    challenge-response when we have a key; NotJoined when it cannot be had."""
    try:
        await ch.send(first)
        msg = await asyncio.wait_for(ch.recv(), cfg.handshake_timeout)
        if isinstance(msg, P.Challenge):
            if cfg.key is None:  # a server only challenges a client that offered a nonce
                raise NotJoined("the server sent a challenge we did not ask for")
            if not auth.check(auth.proof(cfg.key, "server", first.nonce, msg.nonce, context), msg.proof):
                await ch.send(P.Refuse(reason="server proof does not match"))
                raise NotJoined("the server could not prove it knows the key: a different key, "
                                "or not the server you meant")
            await ch.send(P.Auth(proof=auth.proof(cfg.key, "client", first.nonce, msg.nonce, context)))
            msg = await asyncio.wait_for(ch.recv(), cfg.handshake_timeout)
        elif cfg.key is not None and not isinstance(msg, P.Refuse):
            await ch.send(P.Refuse(reason="this client requires a key"))
            raise NotJoined("the server has no key: refusing to join an unauthenticated session")
    except asyncio.TimeoutError:
        raise NotJoined(f"the server did not answer the {what}")
    except (ConnectionError, P.ProtocolError) as e:
        raise NotJoined(f"{what} failed: {e}")
    if isinstance(msg, P.Refuse):
        raise NotJoined(f"server refused: {msg.reason}")
    return msg


async def _open_control(host: str, port: int, cfg: ClientConfig) -> ControlChannel:
    sock = await connect(host, port, cfg.connect_timeout, "server", retry_refused=True)
    reader, writer = await asyncio.open_connection(sock=sock)
    return ControlChannel(reader, writer, P.CLIENT)


class Client:
    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        if not cfg.consumer:
            target = cfg.target or DEFAULT_TARGET
            if not os.path.isdir(target):
                raise KadeployError(f"target directory {target} does not exist", exit_code=64)
        self.listener = listen(cfg.data_port, cfg.bind, fallback_to_any_port=True)
        self.data_port = self.listener.getsockname()[1]
        if self.data_port != cfg.data_port:
            log.info("data port %d is in use here; listening on %d", cfg.data_port, self.data_port)

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            host, port = await loop.run_in_executor(None, find_server, self.cfg)
            ch = await _open_control(host, port, self.cfg)
            try:
                return await self._session(ch)
            finally:
                ch.close()
        finally:
            self.listener.close()

    async def _session(self, ch: ControlChannel) -> Outcome:
        cfg = self.cfg
        hello = P.Hello(software=SOFTWARE, hostname=socket.gethostname(), data_port=self.data_port,
                        session=cfg.session, advertise=cfg.advertise,
                        nonce=auth.new_nonce() if cfg.key else None)
        node_id = (await request(ch, hello, cfg, auth.hello_context(hello), "registration")).node_id
        log.info("registered as node %d; waiting for the deployment to start", node_id)
        try:
            place = await ch.recv()  # no timeout: the server waits for the others
        except (ConnectionError, P.ProtocolError) as e:
            raise NotJoined(f"lost the server before the start: {e}")
        if isinstance(place, (P.Refuse, P.Abort)):
            raise NotJoined(f"server gave up: {place.reason}")
        log.info("position %d of %d, depth %d; parent %s; %d child(ren)", place.position,
                 place.n_nodes, place.depth, format_hostport(place.parent_host, place.parent_port),
                 len(place.children))
        outcome = await self._deploy(ch, node_id, place)
        try:
            await ch.send(P.Done(ok=outcome.ok, bytes=outcome.bytes, seconds=outcome.seconds,
                                 consumer_status=outcome.consumer_status, error=outcome.error,
                                 backend=outcome.backend))
            if cfg.wait_finish:
                log.info("waiting for the server's finish")
                while not isinstance(await ch.recv(), P.Finish):
                    pass
        except (ConnectionError, P.ProtocolError) as e:
            if outcome.ok:
                outcome.ok = False
                outcome.error = f"lost the server before the end: {e}"
        return outcome

    async def _deploy(self, ch: ControlChannel, node_id: int, place: P.Place) -> Outcome:
        cfg = self.cfg
        data_key = auth.data_key(cfg.key, place.token)
        parent, children = await asyncio.gather(
            connect_parent(place.parent_host, place.parent_port, node_id, data_key,
                           timeout=cfg.connect_timeout, sockbuf=cfg.sockbuf),
            accept_children(self.listener, place.children, data_key,
                            timeout=cfg.connect_timeout, handshake_timeout=cfg.handshake_timeout,
                            sockbuf=cfg.sockbuf, on_refused=_log_refused),
            return_exceptions=True)
        if isinstance(children, BaseException):
            raise children
        for cid in place.children:
            if cid not in children:
                log.warning("child node %d did not connect within %g s", cid, cfg.connect_timeout)
        if isinstance(parent, BaseException):
            for s in children.values():
                s.close()   # our children see the stream end early and say so
            if not isinstance(parent, NotJoined):
                raise parent
            return Outcome(ok=False, bytes=0, seconds=0.0, error=str(parent),
                           consumer_status=None, backend="")
        consumer = spawn_consumer(cfg.consumer_command(),
                                  cwd=cfg.target if cfg.consumer and cfg.target else None)
        counters = array.array("Q", [0] * (2 + len(children)))
        stop_r, stop_w = os.pipe()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        end: Optional[P.End] = None
        sinks = [consumer.stdin.fileno()] + [s.fileno() for s in children.values()]
        job = loop.run_in_executor(None, lambda: relay_mod.relay(
            parent.fileno(), sinks, backend=cfg.relay_backend, buffer_size=cfg.buffer_size,
            stop_fd=stop_r, counters=counters))
        bar = ClientBar(counters, f"node {place.position}/{place.n_nodes}", enabled=cfg.progress_bar)
        listen_task = asyncio.ensure_future(self._listen_server(ch, counters, bar))
        res = None
        try:
            res = await asyncio.shield(job)
        except asyncio.CancelledError:
            os.write(stop_w, b"x")
            await job
            raise
        finally:
            os.close(stop_r)
            os.close(stop_w)
            consumer.stdin.close()      # EOF for the consumer
            for s in children.values():
                shutdown_close(s)
            parent.close()
            if res is None:
                kill_group(consumer)
                listen_task.cancel()
        seconds = time.monotonic() - started
        status = await loop.run_in_executor(None, consumer.wait)
        # The server's End may still be on its way; anything else ends our wait too.
        end, lost = await listen_task
        for child_id, err in zip(children, res.sink_errors[1:]):
            if err is not None:
                log.warning("child node %d dropped: %s", child_id, err.strerror or err)
        error = _verdict(res, end, lost, status)
        if error:
            log.error("%s", error)
        else:
            log.info("done: %d bytes in %.2f s", res.bytes_in, seconds)
        return Outcome(ok=error is None, bytes=res.bytes_in, seconds=seconds, error=error,
                       consumer_status=status, backend=res.backend)

    async def _listen_server(self, ch: ControlChannel, counters, bar: ClientBar) -> tuple:
        """Send Progress until the server's End; returns (End or None, why it is missing)."""
        recv = asyncio.ensure_future(ch.recv())
        try:
            while True:
                done, _ = await asyncio.wait({recv}, timeout=PROGRESS_INTERVAL)
                if recv in done:
                    msg = recv.result()
                    if isinstance(msg, P.End):
                        return msg, None
                    if isinstance(msg, P.Abort):
                        return None, f"server aborted: {msg.reason}"
                    recv = asyncio.ensure_future(ch.recv())
                    continue
                await ch.send(P.Progress(bytes=counters[0]))
                bar.tick()
        except (ConnectionError, P.ProtocolError, OSError) as e:
            return None, f"lost the server: {e}"
        finally:
            recv.cancel()
            bar.close()


def _verdict(res: relay_mod.RelayResult, end: Optional[P.End], lost: Optional[str],
             status: int) -> Optional[str]:
    """None when the copy is verified good, else the first reason it is not."""
    if res.ended == relay_mod.SOURCE_ERROR:
        return f"stream from parent broke after {res.bytes_in} bytes: {res.source_error}"
    if end is None:
        return lost or "the server never said how long the stream was"
    if not end.ok:
        return f"the server's stream failed: {end.error}"
    consumer_err = res.sink_errors[0]
    if consumer_err is not None:
        return (f"consumer stopped reading after {res.sink_bytes[0]} of {end.bytes} bytes "
                f"({describe_status(status)})")
    if res.bytes_in != end.bytes:
        return f"stream cut: received {res.bytes_in} of {end.bytes} bytes"
    if status != 0:
        return f"consumer failed ({describe_status(status)})"
    return None




def _log_refused(addr: str, why: str) -> None:
    log.warning("rejected data connection from %s: %s", addr, why)


def exit_status(outcome: Outcome) -> int:
    return EXIT_OK if outcome.ok else EXIT_FAILED
