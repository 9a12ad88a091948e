"""The server's data phase, the twin of a node's (kadeploy.data.node.DataPhase).

It owns everything the server's relay feeds: the data listener and its acceptor, the
sinks by name (each child of the server by node id, the tap, the spool when asked),
the relay run, and the repair feeds that re-serve a re-attached node from the repair
window (in memory, kadeploy.data.window) or, with --spool, from a file.
The control plane asks it to accept the first level's connections, to stream, to
drop(node) a child and to serve(node) a re-attached one; nothing else reaches in.

    producer --pipe--> [EncodePump: --compress] --pipe--> relay --splice--> each child's socket
                         +--> DIGEST (a pipe) --> StreamTap --> Digest messages
                                                      +--> Window <-- WindowFeeder --> a re-attached node
                         +--> SPOOL (a file, only with --spool) <-- SpoolFeeder
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, Optional, Set

from kadeploy import relay as relay_mod
from kadeploy.control.netio import shutdown_close
from kadeploy.core.integrity import ChunkDigester
from kadeploy.data import codec, encrypt_stage
from kadeploy.data.commands import describe_status, kill_group, spawn_producer
from kadeploy.data.datalink import ChildAcceptor, accept_children
from kadeploy.data.linkmeter import LinkMeter
from kadeploy.data.pump import EncodePump
from kadeploy.data.sinks import DIGEST, SPOOL, Sinks
from kadeploy.data.pump import StreamTap, make_pipe
from kadeploy.data.tap import Spool, SpoolFeeder
from kadeploy.data.window import Window, WindowFeeder, WindowMissed

log = logging.getLogger("kadeploy.server")


@dataclass
class StreamOutcome:
    """What the server's stream came to; `error` is None when every byte of a
    producer that exited 0 went out (and was digested, when verifying)."""
    bytes: int
    producer_status: Optional[int]
    relay: relay_mod.RelayResult
    error: Optional[str]
    digest: Optional[str]                      # the whole stream's, when verifying
    broken: Dict[Hashable, BaseException] = field(default_factory=dict)  # child -> error
    content_bytes: Optional[int] = None        # the producer's bytes, when the stream is encoded
    compression: Optional[str] = None          # what --compress did, for the report


class ServerDataPhase:
    def __init__(self, cfg, data_sock: socket.socket, data_key: bytes, algorithm: Optional[str], *,
                 on_digest: Callable[[int, str], None],
                 on_refused: Callable[[str, str], None]) -> None:
        self.cfg, self.algorithm, self.on_digest = cfg, algorithm, on_digest
        self.acceptor = ChildAcceptor(data_sock, data_key, offsets=True,
                                      handshake_timeout=cfg.handshake_timeout,
                                      sockbuf=cfg.sockbuf, on_refused=on_refused)
        # Data sockets the server feeds, by node id: its children, then re-attached nodes.
        self.children: Dict[int, socket.socket] = {}
        # The spool exists before the stream, so a node lost while the first level
        # connects can still have its children re-attached (from byte 0).
        # The window too; it is in memory, so the server never writes into the file
        # systems it sends, unless --spool asks for a file.
        self.spool: Optional[Spool] = Spool(cfg.spool_dir) if cfg.repair and cfg.spool_dir else None
        self.window: Optional[Window] = (Window(cfg.window) if cfg.repair and not cfg.spool_dir
                                         else None)
        self.sinks = Sinks()
        self.counters = self.sinks.counters()
        self.hasher: Optional[StreamTap] = None
        self.compress = codec.parse_spec(getattr(cfg, "compress", codec.NONE))
        self.pump: Optional[EncodePump] = None
        self.stream_key: Optional[bytes] = None    # --encrypt (set by the server)

    @property
    def wire_codec(self) -> Optional[str]:
        """How the nodes decode the stream (Place.codec)."""
        return self.compress.wire

    @property
    def sent(self) -> int:
        """Bytes read from the producer so far."""
        return self.counters[0]

    # ------------------------------------------------------------ connections

    async def accept_children(self, child_ids, *, gone: Callable[[], Set[int]],
                              then: Optional[float] = None) -> Set[int]:
        """The first level's data connections (the relay's sinks); returns the ids that
        did not connect within --connect-timeout or, with `then`, within `then` seconds
        of the first one (the stream never starts with nobody to take it: it would run
        into the window at memory speed, past what a slow first node can catch up on)."""
        conns = await accept_children(self.acceptor, child_ids, gone=gone,
                                      timeout=self.cfg.connect_timeout, then=then)
        self.children.update(conns)
        self._first_level = dict(conns)
        return set(child_ids) - set(conns)

    def drop(self, node_id: int) -> None:
        """Stop feeding a child: the relay (or its feeder) retires the socket."""
        sock = self.children.get(node_id)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def can_repair(self) -> bool:
        if self.window is not None:
            return self.window.error is None
        return self.spool is not None and self.spool.error is None

    def serve(self, node_id: int, name: str,
              on_missed: Callable[[str], None] = lambda why: None) -> asyncio.Future:
        """Accept a re-attached node's data connection and feed it from the window (or
        the spool), from the offset it asks for (it knows what it has, byte for byte).
        on_missed(why): the window no longer holds that offset; the node cannot be
        repaired. Returns the future of that connection."""
        fut = self.acceptor.expect(node_id)
        fut.add_done_callback(lambda f: self._feed(node_id, name, f, on_missed))
        return fut

    def _feed(self, node_id: int, name: str, fut: asyncio.Future, on_missed) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        sock, offset = fut.result()
        loop = asyncio.get_running_loop()

        def ended(err: Optional[BaseException]) -> None:
            if isinstance(err, WindowMissed):
                loop.call_soon_threadsafe(on_missed, str(err))
            elif err is not None:
                loop.call_soon_threadsafe(log.warning, "repair feed to %s ended: %s", name, err)

        self.children[node_id] = sock
        if self.window is not None:
            log.info("serving %s from byte %d of the repair window", name, offset)
            WindowFeeder(self.window, sock, offset, on_end=ended, name=name).start()
        else:
            log.info("serving %s from byte %d of the spool", name, offset)
            SpoolFeeder(self.spool, sock, offset, on_end=ended).start()

    # ----------------------------------------------------------------- stream

    async def stream(self, producer_command: str) -> StreamOutcome:
        """Run the producer and relay its output to every sink until it ends."""
        cfg, loop = self.cfg, asyncio.get_running_loop()
        producer = spawn_producer(producer_command)
        digest_w = self._start_digests(loop)
        sinks = self.sinks
        if self.spool is not None:
            sinks.add(SPOOL, self.spool.fd)
        if digest_w is not None:
            sinks.add(DIGEST, digest_w)
        # Only those accepted before the stream: a late one is fed by a window feeder.
        first_level = dict(getattr(self, "_first_level", {}))
        for node_id, sock in first_level.items():
            sinks.add(node_id, sock.fileno())
        self.counters = sinks.counters()
        if self.spool is not None:
            self.spool.attach(lambda: sinks.sent(self.counters, SPOOL))
        res: Optional[relay_mod.RelayResult] = None
        source = self._start_encoding(producer.stdout.fileno())
        try:
            res = await relay_mod.relay_in_thread(
                source, sinks.fds(), backend=cfg.relay_backend,
                buffer_size=cfg.buffer_size, counters=self.counters)
        finally:
            if digest_w is not None:
                os.close(digest_w)       # EOF for the digest thread
            errors = sinks.errors(res.sink_errors) if res is not None else {}
            if self.spool is not None:
                if errors.get(SPOOL) is not None:
                    self.spool.error = errors[SPOOL]
                self.spool.finished = True
            for node_id, sock in first_level.items():
                if self.children.get(node_id) is sock:
                    del self.children[node_id]
                shutdown_close(sock)
            if res is None or not res.eof:
                kill_group(producer)     # nobody wants the rest of its output
            if self.pump is not None:
                os.close(source)         # an encoder still writing stops (EPIPE)
                await loop.run_in_executor(None, self.pump.join)
            producer.stdout.close()
        status = await loop.run_in_executor(None, producer.wait)
        if self.hasher is not None:
            await loop.run_in_executor(None, self.hasher.join)
        for name in (SPOOL, DIGEST):
            if errors.get(name) is not None:
                log.error("the server's own copy of the stream (%s) failed: %s", name, errors[name])
        if self.spool is not None and self.spool.error is not None:
            log.warning("repair spool failed (%s): lost nodes can no longer be repaired",
                        self.spool.error)
        if self.window is not None and self.window.error is not None:
            log.warning("repair window failed (%s): lost nodes can no longer be repaired",
                        self.window.error)
        return StreamOutcome(
            bytes=res.bytes_in, producer_status=status, relay=res,
            error=self._stream_error(res, status, errors.get(DIGEST)),
            digest=self.hasher.whole if self.hasher is not None else None,
            broken={n: e for n, e in errors.items() if e is not None and n not in (SPOOL, DIGEST)},
            content_bytes=self.pump.content if self.pump is not None else None,
            compression=self._compression_note(res))

    def _start_encoding(self, producer_fd: int) -> int:
        """The relay's source: the producer itself, or the encoder's pipe."""
        meter = LinkMeter(lambda: getattr(self, "_first_level", {}).values())
        stages = codec.encoder_stages(self.compress, workers=codec.default_workers(),
                                      restart_rate=meter.restart, link_busy=meter.busiest)
        stages += encrypt_stage.encoders(self.stream_key)   # compress, then encrypt
        if not stages:
            return producer_fd
        self.pump = EncodePump(producer_fd, codec.Pipeline(stages))
        self.pump.start()
        return self.pump.read_fd

    def _compression_note(self, res: relay_mod.RelayResult) -> Optional[str]:
        if self.pump is None:
            return None
        ratio = res.bytes_in / self.pump.content if self.pump.content else 1.0
        # Name every stage (--encrypt alone is no compression).
        label = "+".join(([str(self.compress)] if self.compress.wire else [])
                         + [s.name for s in self.pump.stages.stages if s.name == "aes-256-gcm"])
        note = f"{label}: {self.pump.content} bytes sent as {res.bytes_in} (ratio {ratio:.3f})"
        policy = getattr(self.pump.stages.stages[0], "policy", None)
        return note + (f"; auto: {policy.why}" if policy is not None else "")

    def _start_digests(self, loop) -> Optional[int]:
        """The tap thread (digests, window) on a pipe that the relay feeds; the pipe's
        write end."""
        if not self.algorithm and self.window is None:
            return None
        r, w = make_pipe()
        digester = ChunkDigester(self.algorithm, self.cfg.key) if self.algorithm else None
        self.hasher = StreamTap(r, digester, window=self.window, emit_last=True,
                                on_digest=lambda i, d: loop.call_soon_threadsafe(self.on_digest, i, d))
        self.hasher.start()
        return w

    def _stream_error(self, res: relay_mod.RelayResult, status: int,
                      digest_sink_error: Optional[BaseException]) -> Optional[str]:
        hash_error = ((self.hasher.error or digest_sink_error)
                      if self.hasher is not None and self.algorithm else None)
        if res.ended == relay_mod.NO_SINKS:  # first: we killed the producer ourselves then
            return "every child of the server failed; stream abandoned"
        if status != 0:
            return f"producer failed ({describe_status(status)})"
        if not res.eof:
            return f"reading the producer failed: {res.source_error}"
        if self.pump is not None and self.pump.error is not None:
            return f"compressing the stream failed: {self.pump.error}"
        if hash_error is not None:
            return f"digesting the stream failed: {hash_error}"
        return None

    def stop_accepting(self) -> None:
        self.acceptor.close()

    def close(self) -> None:
        self.acceptor.close()
        for sock in self.children.values():
            sock.close()
        if self.spool is not None:
            self.spool.close()
