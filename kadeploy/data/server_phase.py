"""The server's data phase, the twin of a node's (kadeploy.data.node.DataPhase).

It owns everything the server's relay feeds: the data listener and its acceptor, the
sinks by name (each child of the server by node id, the digest tap, the repair spool),
the relay run, and the repair feeds that re-serve a re-attached node from the spool.
The control plane asks it to accept the first level's connections, to stream, to
drop(node) a child and to serve(node) a re-attached one; nothing else reaches in.

    producer --pipe--> relay --splice--> each child's socket
                         +--> SPOOL (a file)     <-- SpoolFeeder --> a re-attached node
                         +--> DIGEST (a pipe)    --> HashTap --> Digest messages
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
from kadeploy.data.commands import describe_status, kill_group, spawn_producer
from kadeploy.data.datalink import ChildAcceptor, accept_children
from kadeploy.data.sinks import DIGEST, SPOOL, Sinks
from kadeploy.data.tap import HashTap, Spool, SpoolFeeder

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
        self.spool: Optional[Spool] = Spool(cfg.spool_dir) if cfg.repair else None
        self.sinks = Sinks()
        self.counters = self.sinks.counters()
        self.hasher: Optional[HashTap] = None

    @property
    def sent(self) -> int:
        """Bytes read from the producer so far."""
        return self.counters[0]

    # ------------------------------------------------------------ connections

    async def accept_children(self, child_ids, *, gone: Callable[[], Set[int]]) -> Set[int]:
        """The first level's data connections; returns the ids that did not connect."""
        conns = await accept_children(self.acceptor, child_ids, timeout=self.cfg.connect_timeout,
                                      gone=gone)
        self.children.update(conns)
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
        return self.spool is not None and self.spool.error is None

    def serve(self, node_id: int, name: str) -> None:
        """Accept a re-attached node's data connection and feed it from the spool, from
        the offset it asks for (it knows what it has, byte for byte)."""
        fut = self.acceptor.expect(node_id)
        fut.add_done_callback(lambda f: self._feed(node_id, name, f))

    def _feed(self, node_id: int, name: str, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        sock, offset = fut.result()
        log.info("serving %s from byte %d of the spool", name, offset)
        self.children[node_id] = sock
        loop = asyncio.get_running_loop()
        SpoolFeeder(self.spool, sock, offset, on_end=lambda err: err and loop.call_soon_threadsafe(
            log.warning, "spool feed to %s ended: %s", name, err)).start()

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
        first_level = dict(self.children)
        for node_id, sock in first_level.items():
            sinks.add(node_id, sock.fileno())
        self.counters = sinks.counters()
        if self.spool is not None:
            self.spool.attach(lambda: sinks.sent(self.counters, SPOOL))
        res: Optional[relay_mod.RelayResult] = None
        try:
            res = await relay_mod.relay_in_thread(
                producer.stdout.fileno(), sinks.fds(), backend=cfg.relay_backend,
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
            producer.stdout.close()
            if res is None or not res.eof:
                kill_group(producer)     # nobody wants the rest of its output
        status = await loop.run_in_executor(None, producer.wait)
        if self.hasher is not None:
            await loop.run_in_executor(None, self.hasher.join)
        for name in (SPOOL, DIGEST):
            if errors.get(name) is not None:
                log.error("the server's own copy of the stream (%s) failed: %s", name, errors[name])
        if self.spool is not None and self.spool.error is not None:
            log.warning("repair spool failed (%s): lost nodes can no longer be repaired",
                        self.spool.error)
        return StreamOutcome(
            bytes=res.bytes_in, producer_status=status, relay=res,
            error=self._stream_error(res, status, errors.get(DIGEST)),
            digest=self.hasher.whole if self.hasher is not None else None,
            broken={n: e for n, e in errors.items() if e is not None and n not in (SPOOL, DIGEST)})

    def _start_digests(self, loop) -> Optional[int]:
        """The digest thread on a pipe that the relay feeds; the pipe's write end."""
        if not self.algorithm:
            return None
        r, w = os.pipe()
        self.hasher = HashTap(r, ChunkDigester(self.algorithm, self.cfg.key), emit_last=True,
                              on_digest=lambda i, d: loop.call_soon_threadsafe(self.on_digest, i, d))
        self.hasher.start()
        return w

    def _stream_error(self, res: relay_mod.RelayResult, status: int,
                      digest_sink_error: Optional[BaseException]) -> Optional[str]:
        hash_error = (self.hasher.error or digest_sink_error) if self.hasher is not None else None
        if res.ended == relay_mod.NO_SINKS:  # first: we killed the producer ourselves then
            return "every child of the server failed; stream abandoned"
        if status != 0:
            return f"producer failed ({describe_status(status)})"
        if not res.eof:
            return f"reading the producer failed: {res.source_error}"
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
