"""A node's data phase: relay from the parent to the consumer and the children,
verify, and survive the loss of the parent.

The relay runs from one source until that source ends. What comes next is the
server's word (ServerLink): the End (the stream's length and digest) means done when
we have it all; a Reattach means our parent is gone and we resume, from the byte we
had, from the parent the server names. A node never decides alone that a short
stream is complete.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set

from kadeploy import relay as relay_mod
from kadeploy.control.netio import ControlChannel, shutdown_close
from kadeploy.core import protocol as P
from kadeploy.core.integrity import ChunkDigester, Verifier
from kadeploy.data import codec, encrypt_stage
from kadeploy.data.commands import describe_status, kill_group, spawn_consumer
from kadeploy.data.pump import StreamTap, make_pipe
from kadeploy.data.sinks import CONSUMER, DIGEST, Sinks
from kadeploy.data.window import Window, WindowFeeder, WindowMissed
from kadeploy.defaults import REPORT_INTERVAL
from kadeploy.errors import NotJoined
from kadeploy.view.progress import ClientBar

log = logging.getLogger("kadeploy.client")


@dataclass
class Outcome:
    ok: bool
    bytes: int
    seconds: float
    error: Optional[str]
    consumer_status: Optional[int]
    backend: str
    verified: Optional[bool] = None
    repairs: int = 0
    content_bytes: Optional[int] = None    # what the consumer got, when the stream is encoded
    decode_seconds: Optional[float] = None


class ServerLink:
    """Reads what the server says during the data phase and sends Progress every
    second until the report; gives the server up after `stall` seconds of silence."""

    def __init__(self, ch: ControlChannel, stall: float, verifier: Optional[Verifier]) -> None:
        self.ch, self.stall, self.verifier = ch, stall, verifier
        self.end: Optional[P.End] = None
        self.reattach: Optional[P.Reattach] = None
        self.lost: Optional[str] = None
        self.finished = False
        self.changed = asyncio.Event()
        self.received: Callable[[], int] = lambda: 0
        self.on_interrupt: Callable[[], None] = lambda: None   # stop reading the current source
        self.on_drop: Callable[[int], None] = lambda node_id: None
        # Until the data phase takes them, adoptions wait here (the server may ask
        # while this node is still connecting to its own parent and children).
        self.adoptions: List[int] = []
        self.dropped: Set[int] = set()      # children the server said are gone
        self.on_adopt: Callable[[int], None] = self.adoptions.append
        self.on_mismatch: Callable[[], None] = lambda: None
        self.reporting = True
        self.bar: Optional[ClientBar] = None
        self._tasks: List[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._heartbeat())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _signal(self) -> None:
        self.changed.set()

    def _give_up(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self.on_interrupt()
        self._signal()

    async def _read(self) -> None:
        while True:
            try:
                msg = await asyncio.wait_for(self.ch.recv(), self.stall)
            except asyncio.TimeoutError:
                return self._give_up(f"lost the server: no word from it for {self.stall:g} s")
            except (ConnectionError, P.ProtocolError, OSError) as e:
                return self._give_up(f"lost the server: {e}")
            if isinstance(msg, P.Digest) and self.verifier is not None:
                self.verifier.add_theirs(msg.index, msg.digest)
                if self.verifier.mismatch:
                    self.on_mismatch()
            elif isinstance(msg, P.End):
                self.end = msg
            elif isinstance(msg, P.Reattach):
                log.warning("re-attaching: %s", msg.reason or "parent lost")
                self.reattach = msg
                self.on_interrupt()
            elif isinstance(msg, P.DropChild):
                self.dropped.add(msg.node_id)
                self.on_drop(msg.node_id)
            elif isinstance(msg, P.Adopt):
                self.on_adopt(msg.node_id)
            elif isinstance(msg, (P.Abort, P.Refuse)):
                return self._give_up(f"server aborted: {msg.reason}")
            elif isinstance(msg, P.Finish):
                self.finished = True
                self._signal()
                return
            self._signal()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            if self.reporting and self.lost is None:
                try:
                    await self.ch.send(P.Progress(bytes=self.received()))
                except (ConnectionError, OSError) as e:
                    self._give_up(f"lost the server: {e}")
                if self.bar is not None:
                    self.bar.tick()

    @property
    def repair_patience(self) -> float:
        """How long to wait for a Reattach: the server notices a loss within its
        stall timeout, or never."""
        return 2 * self.stall + 2

    def take_reattach(self) -> Optional[P.Reattach]:
        step, self.reattach = self.reattach, None
        return step

    async def _changed_within(self, seconds: float) -> None:
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def newer_reattach(self, patience: Optional[float] = None) -> Optional[P.Reattach]:
        """The server's next Reattach (taken), or None once the server is lost, or
        after `patience` seconds without one."""
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        while True:
            if self.reattach is not None:
                return self.take_reattach()
            if self.lost is not None:
                return None
            wait = 0.5 if deadline is None else min(0.5, deadline - loop.time())
            if wait <= 0:
                return None
            await self._changed_within(wait)

    async def next_step(self, total: int) -> Optional[P.Reattach]:
        """After a source ended: a Reattach to follow, or None when there is nothing
        more to wait for (the stream is complete, or cannot be)."""
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            if self.reattach is not None:
                return self.take_reattach()
            if self.lost is not None:
                return None
            if self.end is not None:
                if self.end.bytes == total or not self.end.ok:
                    return None
                # Cut short: the server repairs within its stall timeout, or never.
                deadline = deadline or loop.time() + 2 * self.stall + 1
            if deadline is not None and loop.time() > deadline:
                return None
            await self._changed_within(0.5)


async def reconnect_to_adopter(reconnect, host: str, port: int, offset: int,
                               patience: float) -> socket.socket:
    """The new parent's data connection after a Reattach. A node parent may refuse us
    for a moment (the server's Adopt to it and its Reattach to us race, and it may
    still be connecting itself): retry, backing off, for `patience` seconds."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + patience, 0.005
    while True:
        try:
            return await reconnect(host, port, offset)
        except NotJoined as e:
            if "not a child of this node" not in str(e) or loop.time() > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(2 * pause, 0.2)


async def follow_reattach(link: ServerLink, reconnect, step: P.Reattach,
                          offset: int) -> socket.socket:
    """The data connection to the parent a Reattach names, from byte `offset`.

    That parent may be lost itself just after the server chose it (two adjacent
    nodes lost together, seen in either order). The server then re-attaches its
    children, us too: a newer Reattach replaces the attempt, and a failed attempt
    waits for one, as long as the server takes to notice a loss. NotJoined when
    none comes."""
    while True:
        attempt = asyncio.ensure_future(
            reconnect_to_adopter(reconnect, step.host, step.port, offset, link.stall))
        newer = asyncio.ensure_future(link.newer_reattach())
        await asyncio.wait({attempt, newer}, return_when=asyncio.FIRST_COMPLETED)
        if newer.done():
            attempt.cancel()
            await _close_if_connected(attempt)
            if newer.result() is None:
                raise NotJoined(link.lost)
            step = newer.result()     # ServerLink logged it
            continue
        newer.cancel()
        try:
            sock = attempt.result()
        except NotJoined as e:
            log.warning("%s; waiting for the server to re-attach this node", e)
            later = await link.newer_reattach(link.repair_patience)
            if later is None:
                raise
            step = later
            continue
        if link.reattach is None:
            return sock
        sock.close()           # the server moved us on while we connected
        step = link.take_reattach()


async def _close_if_connected(attempt: asyncio.Future) -> None:
    await asyncio.wait({attempt})
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


class DataPhase:
    """Everything of one node's data phase; `run()` returns its Outcome."""

    def __init__(self, cfg, place: P.Place, link: ServerLink, parent: socket.socket,
                 children: Dict[int, socket.socket], reconnect, acceptor=None,
                 late: List[int] = (), repairs: int = 0) -> None:
        self.cfg, self.place, self.link = cfg, place, link
        self.source = parent
        self.children = children
        self.reconnect = reconnect          # async (host, port, offset) -> socket
        # Our data listener stays open: the server may ask us to adopt a lost node's
        # child (Adopt), which we feed from our repair window.
        self.acceptor = acceptor
        self.window = Window(place.window) if place.window else None
        self.adopted: Dict[int, socket.socket] = {}
        self.feeders: List[WindowFeeder] = []
        self.late = list(late)              # children still connecting: fed from the window
        self.awaited: Dict[int, asyncio.Future] = {}   # their connections, and adopted ones
        self.dropped: set = set()
        self.total = 0
        self.repairs = repairs              # a re-attachment before the data flowed counts too
        self.consumer_error: Optional[str] = None
        self.digest_error: Optional[OSError] = None
        self.backend = ""

    def _interrupt(self) -> None:
        try:
            self.source.shutdown(socket.SHUT_RD)   # the relay sees EOF and drains
        except OSError:
            pass

    def _adopt(self, node_id: int) -> None:
        """Feed node_id from the window when it connects: a lost node's child (the
        server's Adopt), or one of ours that was slow to connect."""
        if self.acceptor is None or self.window is None:
            log.warning("asked to adopt node %d, but this node keeps no repair window", node_id)
            return
        self.acceptor.admit = self._admit
        # A slow child may have connected just after we stopped waiting for it: its
        # connection is then in the future already expected for it.
        fut = self.acceptor.expected.get(node_id)
        if fut is None or fut.cancelled() or node_id in self.children or node_id in self.adopted:
            fut = self.acceptor.expect(node_id)
        fut.add_done_callback(lambda f: self._feed(node_id, f))
        self.awaited[node_id] = fut

    def _admit(self, node_id: int, offset: int) -> Optional[str]:
        """Refuse an adopted child our window cannot serve, saying which option to raise."""
        if self.window is not None and offset < self.window.low:
            return str(WindowMissed(offset, self.window.low, self.window.size))
        return None

    def _feed(self, node_id: int, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        sock, offset = fut.result()
        log.info("adopted node %d: feeding it from byte %d of the repair window", node_id, offset)
        self.adopted[node_id] = sock
        loop = asyncio.get_running_loop()

        def ended(err: Optional[BaseException]) -> None:
            if err is not None and node_id not in self.dropped:
                loop.call_soon_threadsafe(log.warning, "feed to adopted node %d ended: %s", node_id, err)

        feeder = WindowFeeder(self.window, sock, offset, on_end=ended, name=str(node_id))
        self.feeders.append(feeder)
        feeder.start()

    def _drop(self, node_id: int) -> None:
        sock = self.children.get(node_id) or self.adopted.get(node_id)
        if sock is not None and node_id not in self.dropped:
            self.dropped.add(node_id)
            log.warning("dropping child node %d on the server's word", node_id)
            try:
                sock.shutdown(socket.SHUT_RDWR)    # its sink fails; the others go on
            except OSError:
                pass

    async def run(self) -> Outcome:
        cfg, place, link = self.cfg, self.place, self.link
        loop = asyncio.get_running_loop()
        consumer = spawn_consumer(cfg.consumer_command(),
                                  cwd=cfg.target if cfg.consumer and cfg.target else None)
        # The consumer is fed by splice like the children, unless the stream is
        # encoded; the tap thread reads its own copy from one more sink (the one copy
        # that leaves the kernel), digests it, and decodes it for the consumer.
        # Wire -> decrypt (--encrypt) -> decompress -> the consumer.
        stages = encrypt_stage.decoders(place.encrypt, cfg.key, place.token) + codec.decoder_stages(place.codec)
        hasher: Optional[StreamTap] = None
        live = Sinks()
        if not stages:
            live.add(CONSUMER, consumer.stdin.fileno())
        if link.verifier is not None or stages or self.window is not None:
            r, hash_w = make_pipe()
            out_fd = None
            if stages:
                out_fd = os.dup(consumer.stdin.fileno())   # the tap's own: it closes it at the end
                consumer.stdin.close()
            digester = (ChunkDigester(place.digest, cfg.key, place.chunk_size)
                        if link.verifier is not None else None)
            hasher = StreamTap(r, digester, stages=codec.Pipeline(stages) if stages else None,
                             out_fd=out_fd, window=self.window,
                             on_digest=lambda i, d: loop.call_soon_threadsafe(self._our_digest, i, d),
                             on_bad_stream=lambda why: loop.call_soon_threadsafe(self._on_mismatch))
            hasher.start()
            live.add(DIGEST, hash_w)
        self.hasher, self.consumer = hasher, consumer
        for cid, sock in self.children.items():
            live.add(cid, sock.fileno())
        link.on_interrupt, link.on_drop, link.on_adopt = self._interrupt, self._drop, self._adopt
        for node_id in self.late + link.adoptions:   # slow children; the server's word meanwhile
            self._adopt(node_id)
        for node_id in link.dropped:
            self._drop(node_id)
        link.on_mismatch = self._on_mismatch
        started = time.monotonic()
        try:
            while True:
                counters = live.counters()
                link.received = lambda: self.total + counters[0]
                res = await relay_mod.relay_in_thread(
                    self.source.fileno(), live.fds(), backend=cfg.relay_backend,
                    buffer_size=cfg.buffer_size, counters=counters)
                self.total += res.bytes_in
                counters[0] = 0              # now counted in self.total (progress reports)
                self.backend = res.backend
                self._retire(live, res)
                self.source.close()
                step = await link.next_step(self.total)
                if step is None:
                    break
                try:
                    self.source = await follow_reattach(link, self.reconnect, step, self.total)
                except NotJoined as e:
                    link.lost = link.lost or f"re-attaching failed: {e}"
                    break
                self.repairs += 1
                log.info("resumed at byte %d from %s", self.total, step.host)
        except BaseException:
            kill_group(consumer)   # interrupted: the consumer must not go on alone
            if consumer.stdin is not None:
                consumer.stdin.close()
            raise
        finally:
            if hasher is not None:
                os.close(hash_w)          # EOF for the digest thread
            for s in self.children.values():
                shutdown_close(s)
        if hasher is not None:
            await loop.run_in_executor(None, hasher.join)
        # The consumer has every byte but not yet its end of input: the last chunk
        # is checked first, so a corrupted end is never taken for a whole copy.
        end = link.end
        whole = end is not None and end.ok and self.total == end.bytes
        if link.verifier is not None and whole and self._digest_verdict() is not None:
            self._on_mismatch()
        if consumer.stdin is not None:
            consumer.stdin.close()        # EOF for the consumer
        # Children fed from the window (slow or adopted ones) get the whole stream
        # before we go: first their connections, within the connect timeout...
        waiting = [f for cid, f in self.awaited.items() if not f.done() and cid not in self.link.dropped]
        if waiting:
            log.info("waiting for %d child(ren) still to connect", len(waiting))
            await asyncio.wait(waiting, timeout=cfg.connect_timeout)
        # ...then the end of the stream from the window (still reporting meanwhile,
        # or the server would give us up).
        for feeder in list(self.feeders):
            await loop.run_in_executor(None, feeder.join)
        if self.acceptor is not None:
            self.acceptor.close()
        status = await loop.run_in_executor(None, consumer.wait)
        # Only now: a consumer that works on after the stream (an install's boot
        # loader, a disk flush) must not make this node look silent to the server.
        link.reporting = False
        seconds = time.monotonic() - started
        self.digest_problem = self._digest_verdict()
        error = self._verdict(status)
        if error:
            log.error("%s", error)
        else:
            log.info("done: %d bytes in %.2f s%s", self.total, seconds,
                     ", every chunk verified" if link.verifier else "")
        encoded = hasher is not None and hasher.stages is not None
        return Outcome(ok=error is None, bytes=self.total, seconds=seconds, error=error,
                       consumer_status=status, backend=self.backend,
                       verified=None if link.verifier is None else self.digest_problem is None,
                       repairs=self.repairs,
                       content_bytes=hasher.content if encoded else None,
                       decode_seconds=round(hasher.decode_seconds, 6) if encoded else None)

    def _digest_verdict(self) -> Optional[str]:
        """Why the bytes received are not the server's (None: they are, chunk by chunk
        and as a whole); only for a verified stream."""
        link, end = self.link, self.link.end
        if link.verifier is None:
            return None
        if link.verifier.mismatch:
            return link.verifier.mismatch
        if self.digest_error is not None or self.hasher.error is not None:
            return f"verifying failed: {self.digest_error or self.hasher.error}"
        if end is None or not end.ok or self.total != end.bytes:
            return "incomplete stream"
        return link.verifier.final_verdict(self.hasher.digests, self.hasher.whole, end.digest)

    def _our_digest(self, index: int, digest: str) -> None:
        self.link.verifier.add_ours(index, digest)
        if self.link.verifier.mismatch:
            self._on_mismatch()

    def _on_mismatch(self) -> None:
        """Corrupted data: the consumer must not finish with it. Children go on: they
        verify for themselves."""
        kill_group(self.consumer)

    def _retire(self, live: Sinks, res: relay_mod.RelayResult) -> None:
        """Take the sinks that failed out of the next run, and note why."""
        sent = dict(zip(live.names(), res.sink_bytes))
        for name, err in live.retire(res.sink_errors).items():
            if name == CONSUMER:
                self.consumer_error = f"after {sent[CONSUMER] + self.total - res.bytes_in} bytes"
            elif name == DIGEST:
                self.digest_error = err
            elif name not in self.dropped:
                log.warning("child node %s dropped: %s", name, err.strerror or err)

    def _verdict(self, status: int) -> Optional[str]:
        """None when the copy is verified good, else the first reason it is not."""
        link, end = self.link, self.link.end
        if end is None:
            return link.lost or "the server never said how long the stream was"
        if not end.ok:
            return f"the server's stream failed: {end.error}"
        if link.verifier is not None and link.verifier.mismatch:
            return link.verifier.mismatch   # first: the consumer was stopped for it
        tap = self.hasher
        if tap is not None and tap.consumer_error is not None:
            self.consumer_error = f"after {tap.content} bytes"
        if self.consumer_error is not None:
            whole = end.content_bytes if end.content_bytes is not None else end.bytes
            return (f"consumer stopped reading {self.consumer_error} of {whole} "
                    f"({describe_status(status)})")
        if self.total != end.bytes:
            why = f"; {link.lost}" if link.lost else ""
            return f"stream cut: received {self.total} of {end.bytes} bytes{why}"
        if tap is not None and tap.decode_error:
            return tap.decode_error
        if tap is not None and tap.stages is not None and (tap.error or self.digest_error):
            return f"decoding failed: {tap.error or self.digest_error}"
        if tap is not None and tap.stages is not None and tap.content != end.content_bytes:
            return (f"consumer got {tap.content} bytes of content, the server sent "
                    f"{end.content_bytes}")
        if status != 0:
            return f"consumer failed ({describe_status(status)})"
        return self.digest_problem
