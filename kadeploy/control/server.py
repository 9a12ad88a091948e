"""ka-d-server: the tree, the producer, the stream, repairs, the verdicts.

The control plane runs on asyncio; the stream itself runs in the relay, in a thread
that holds no lock the loop needs. Life of a deployment:
  register  -> (kadeploy.control.registry) clients say Hello until -n are in, a client says Go,
               or --wait-timeout;
  place     -> registration closes, nodes are ordered and each is told its place;
  connect   -> the server's children open data connections to it;
  stream    -> the producer's stdout is relayed to them; nodes send Progress;
  verify    -> beside the data, every chunk's digest goes to every node (kadeploy.data.tap);
  heal      -> a node lost (connection closed, or silent for --stall-timeout) is cut
               off and its children re-attached to the server's spool (kadeploy.core.repair);
  end       -> the server tells every node the stream's length, digest and whether the
               producer succeeded; nodes answer Done with their verdict;
  finish    -> waiting clients (-w) are released, spaced by -d tenths of a second.
"""
from __future__ import annotations

import array
import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from kadeploy import relay as relay_mod
from kadeploy.control import auth
from kadeploy.control.healing import Healer
from kadeploy.control.netio import listen, shutdown_close
from kadeploy.control.registry import Node, Registry
from kadeploy.core import protocol as P
from kadeploy.core.integrity import CHUNK_SIZE, ChunkDigester, default_algorithm
from kadeploy.core.topology import Tree, build_tree, order_nodes, render
from kadeploy.data.commands import (
    DEFAULT_PRODUCER,
    describe_status,
    kill_group,
    spawn_producer,
)
from kadeploy.data.datalink import ChildAcceptor, accept_children
from kadeploy.data.tap import HashTap, Spool
from kadeploy.defaults import CONTROL_PORT, DATA_PORT
from kadeploy.errors import EXIT_FAILED, EXIT_OK, EXIT_SOME_FAILED, KadeployError
from kadeploy.version import PROTOCOL_NAME, PROTOCOL_VERSION, SOFTWARE, __version__
from kadeploy.view.progress import (
    NodeView,
    RateMeter,
    ServerProgress,
    human_bytes,
    human_rate,
)
from kadeploy.view.report import NodeReport, Report

log = logging.getLogger("kadeploy.server")


@dataclass
class ServerConfig:
    n_clients: int = 1
    arity: int = 1
    session: Optional[str] = None
    producer: str = DEFAULT_PRODUCER
    finish_delay: float = 0.0          # seconds between Finish messages (-d is tenths)
    control_port: int = CONTROL_PORT
    data_port: int = DATA_PORT
    bind: Optional[str] = None
    wait_timeout: Optional[float] = None
    hosts: Optional[List[str]] = None
    relay_backend: Optional[str] = None
    buffer_size: int = relay_mod.DEFAULT_BUFFER_SIZE
    sockbuf: Optional[int] = None
    connect_timeout: float = 30.0
    handshake_timeout: float = 10.0
    report_file: Optional[str] = None
    discovery_port: int = 4957
    progress_interval: float = 5.0
    live: Optional[bool] = None        # live table; None: when stderr is a terminal
    expected_size: Optional[int] = None
    key: Optional[bytes] = None
    max_connections: int = 4096
    verify: bool = True                # chunk digests beside the data, checked by every node
    repair: bool = True                # spool the stream; re-attach the orphans of a lost node
    spool_dir: Optional[str] = None    # default: $TMPDIR or /tmp
    stall_timeout: float = 3.0         # a node silent this long is given up


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.cfg = config
        self.registry = Registry(config, on_lost=lambda node, why: self.healer.node_lost(node, why))
        self.nodes = self.registry.nodes
        self.rejected = self.registry.rejected
        self.token = secrets.token_hex(16)
        self.tree: Optional[Tree] = None
        self.data_key = auth.data_key(config.key, self.token)
        self.stream_bytes = 0
        self.producer_status: Optional[int] = None
        self.relay_result: Optional[relay_mod.RelayResult] = None
        self.stream_error: Optional[str] = None
        self.started = time.monotonic()
        self.counters = array.array("Q", [0])
        self.sent_meter = RateMeter()
        self._sink_ids: List[int] = []
        self.by_pos: Dict[int, Node] = {}
        self.healer = Healer(config, self.nodes)
        self.hasher: Optional[HashTap] = None
        self.spool: Optional[Spool] = None
        self.algorithm = default_algorithm(config.key is not None) if config.verify else None

    # ------------------------------------------------------------------- run

    async def run(self) -> Report:
        cfg = self.cfg
        ctrl_sock = listen(cfg.control_port, cfg.bind)
        data_sock = listen(cfg.data_port, cfg.bind)
        srv = await asyncio.start_server(self.registry.handle_control, sock=ctrl_sock)
        responder = None
        watchdog = asyncio.ensure_future(self.healer.watch())
        try:
            if cfg.session:
                responder = await _start_discovery(cfg)
            if cfg.key is None:
                log.warning("no key: anyone who can reach TCP port %d can join this session and "
                            "receive the stream (see --key-file)", cfg.control_port)
            log.info("kadeploy server %s: control port %d, data port %d, waiting for %d client(s)%s",
                     __version__, cfg.control_port, cfg.data_port, cfg.n_clients,
                     f", session {cfg.session!r}" if cfg.session else "")
            await self._wait_for_start()
            self.registry.registration_open = False
            ordered = self._place_order()
            if not ordered:
                raise KadeployError("no client registered" + (
                    f" within {cfg.wait_timeout:g} s" if cfg.wait_timeout else ""))
            self.started = time.monotonic()
            await self._place(ordered)
            progress = ServerProgress(self._snapshot, interval=cfg.progress_interval,
                                      live=cfg.live, total=cfg.expected_size, log=log)
            progress.start()
            try:
                sinks = await self._accept_children(data_sock)
                await self._stream(sinks)
                await self._collect()
            finally:
                await progress.stop()
                if self.healer.acceptor is not None:
                    self.healer.acceptor.close()
            await self._finish()
            return self._report(time.monotonic() - self.started)
        finally:
            watchdog.cancel()
            if responder is not None:
                responder.close()
            srv.close()
            data_sock.close()
            for node in self.nodes.values():
                node.channel.close()
            for sock in self.healer.server_sinks.values():
                sock.close()
            if self.spool is not None:
                self.spool.close()

    async def _wait_for_start(self) -> None:
        try:
            await asyncio.wait_for(self.registry.start_now.wait(), self.cfg.wait_timeout)
        except asyncio.TimeoutError:
            log.warning("wait timeout: starting with %d of %d client(s)",
                        len(self.nodes), self.cfg.n_clients)

    def _place_order(self) -> List[Node]:
        # Nodes that hung up while waiting are not placed.
        alive = [n for n in self.nodes.values() if n.error is None]
        for n in self.nodes.values():
            if n.error is not None:
                n.reported.set()
        order = order_nodes([n.info for n in alive], by_list=self.cfg.hosts is not None)
        return [self.nodes[i.node_id] for i in order]

    async def _place(self, ordered: List[Node]) -> None:
        self.tree = build_tree(len(ordered), self.cfg.arity)
        by_pos = {i + 1: n for i, n in enumerate(ordered)}
        for pos, node in by_pos.items():
            node.position = pos
        names = {0: "server"} | {p: n.name for p, n in by_pos.items()}
        log.info("tree (arity %d, %d node(s)):\n%s", self.cfg.arity, len(ordered),
                 "\n".join(render(self.tree, names)))
        self.by_pos = by_pos
        for pos, node in by_pos.items():
            parent_pos = self.tree.parent(pos)
            if parent_pos == 0:
                host, port = node.channel.local_address, self.cfg.data_port
            else:
                parent = by_pos[parent_pos]
                host, port = parent.info.address, parent.info.data_port
            self.healer.parent_of[node.info.node_id] = by_pos[parent_pos].info.node_id if parent_pos else 0
            msg = P.Place(position=pos, depth=self.tree.depth(pos), n_nodes=len(ordered),
                          arity=self.cfg.arity, parent_host=host, parent_port=port,
                          children=[by_pos[c].info.node_id for c in self.tree.children(pos)],
                          token=self.token, digest=self.algorithm, chunk_size=CHUNK_SIZE,
                          stall_timeout=self.cfg.stall_timeout)
            try:
                await node.channel.send(msg)
            except (ConnectionError, OSError) as e:
                node.fail(f"lost before it was placed: {e}")
        self.healer.placed = True
        for node in ordered:
            node.last_heard = time.monotonic()
            if node.error is not None:
                self.healer.node_lost(node, node.error)

    async def _accept_children(self, data_sock: socket.socket) -> List[socket.socket]:
        """Data connections from the server's own children, checked against the token."""
        child_ids = [self.by_pos[p].info.node_id for p in self.tree.children(0)]

        def refused(addr: str, why: str) -> None:
            self.rejected["data-link"] += 1
            log.warning("rejected data connection from %s: %s", addr, why)

        self.healer.acceptor = ChildAcceptor(data_sock, self.data_key, offsets=True,
                                      handshake_timeout=self.cfg.handshake_timeout,
                                      sockbuf=self.cfg.sockbuf, on_refused=refused)
        conns = await accept_children(
            self.healer.acceptor, child_ids, timeout=self.cfg.connect_timeout,
            gone=lambda: {i for i, n in self.nodes.items() if n.state == "failed"})
        self.healer.server_sinks.update(conns)
        for node_id in child_ids:
            if node_id not in conns:
                self.nodes[node_id].fail(
                    f"did not open its data connection within {self.cfg.connect_timeout:g} s")
        self._sink_ids = list(conns)
        return list(conns.values())

    def _extra_sinks(self) -> List[int]:
        """The server's own sinks beside its children: the repair spool (a file the
        relay writes) and a pipe to the digest thread; their places in `fds` come first."""
        cfg, fds = self.cfg, []
        if cfg.repair:
            self.spool = self.healer.spool = Spool(cfg.spool_dir)
            fds.append(self.spool.fd)
        if self.algorithm:
            loop = asyncio.get_running_loop()
            r, w = os.pipe()
            self.hasher = HashTap(r, ChunkDigester(self.algorithm, cfg.key), emit_last=True,
                                  on_digest=lambda i, d: loop.call_soon_threadsafe(
                                      self._post_all, P.Digest(index=i, digest=d)))
            self.hasher.start()
            fds.append(w)
        return fds

    def _post_all(self, msg: P.Message) -> None:
        for node in self.nodes.values():
            if node.position and node.state in ("connecting", "streaming"):
                node.channel.post(msg)

    async def _stream(self, sinks: List[socket.socket]) -> None:
        cfg = self.cfg
        producer = spawn_producer(cfg.producer)
        extra = self._extra_sinks()
        fds = extra + [s.fileno() for s in sinks]
        self._sink_ids = [0] * len(extra) + self._sink_ids
        counters = self.counters = array.array("Q", [0] * (1 + len(fds)))
        if self.spool is not None:
            self.spool.attach(counters, 0)
        loop = asyncio.get_running_loop()
        res: Optional[relay_mod.RelayResult] = None
        try:
            res = await relay_mod.relay_in_thread(
                producer.stdout.fileno(), fds, backend=cfg.relay_backend,
                buffer_size=cfg.buffer_size, counters=counters)
        finally:
            if self.hasher is not None:
                os.close(extra[-1])      # EOF for the digest thread
            if self.spool is not None:
                if res is not None and res.sink_errors[0] is not None:
                    self.spool.error = res.sink_errors[0]
                self.spool.finished = True
            for node_id, s in list(self.healer.server_sinks.items()):
                if s in sinks:
                    del self.healer.server_sinks[node_id]
                    shutdown_close(s)
            producer.stdout.close()
            if res is None or not res.eof:
                kill_group(producer)  # nobody wants the rest of its output
        self.producer_status = await loop.run_in_executor(None, producer.wait)
        self.relay_result = res
        self.stream_bytes = res.bytes_in
        for node_id, err in zip(self._sink_ids, res.sink_errors):
            if err is not None and node_id == 0:
                log.error("the server's own copy of the stream (spool or digests) failed: %s", err)
            elif err is not None:
                # The node's own report (or its lost connection) gives the verdict.
                log.warning("data connection to %s broke: %s", self.nodes[node_id].name,
                            err.strerror or err)
        whole = None
        if self.hasher is not None:
            await loop.run_in_executor(None, self.hasher.join)
            whole = self.hasher.whole
        if self.spool is not None and self.spool.error is not None:
            log.warning("repair spool failed (%s): lost nodes can no longer be repaired",
                        self.spool.error)
        hash_failed = self.hasher is not None and (
            self.hasher.error is not None or res.sink_errors[len(extra) - 1] is not None)
        ok = res.eof and self.producer_status == 0 and not hash_failed
        error = None
        if res.ended == relay_mod.NO_SINKS:  # first: we killed the producer ourselves then
            error = "every child of the server failed; stream abandoned"
        elif self.producer_status != 0:
            error = f"producer failed ({describe_status(self.producer_status)})"
        elif not res.eof:
            error = f"reading the producer failed: {res.source_error}"
        elif hash_failed:
            error = f"digesting the stream failed: {self.hasher.error or res.sink_errors[len(extra) - 1]}"
        if error:
            log.error("%s", error)
        log.info("stream ended: %d bytes, relay backend %s%s", res.bytes_in, res.backend,
                 f", pipes of {res.pipe_size} bytes (asked {cfg.buffer_size})" if res.pipe_size else "")
        # After every Digest: posts keep their order on each connection.
        self._post_all(P.End(bytes=res.bytes_in, ok=ok, error=error, digest=whole))
        self.stream_error = error

    async def _collect(self) -> None:
        waits = [n.reported.wait() for n in self.nodes.values()]
        if waits:
            await asyncio.gather(*waits)

    async def _finish(self) -> None:
        """Release clients waiting with -w, one by one, -d apart."""
        for node in sorted(self.nodes.values(), key=lambda n: n.position):
            if node.done is None:
                continue
            try:
                await node.channel.send(P.Finish())
                node.finished = True
                log.debug("released %s", node.name)
            except (ConnectionError, OSError, P.ProtocolError):
                pass  # a client without -w has already gone
            if self.cfg.finish_delay:
                await asyncio.sleep(self.cfg.finish_delay)

    def _snapshot(self) -> Tuple[str, List[NodeView]]:
        sent = self.counters[0]
        self.sent_meter.add(sent)
        header = (f"{SOFTWARE}: sent {human_bytes(sent)} at {human_rate(self.sent_meter.rate)}, "
                  f"{time.monotonic() - self.started:.0f} s")
        rows = []
        for node in sorted(self.nodes.values(), key=lambda n: n.position or 1 << 30):
            parent = self.tree.parent(node.position) if node.position and self.tree else None
            rows.append(NodeView(
                position=node.position, name=node.name,
                parent="-" if parent is None else "server" if parent == 0 else str(parent),
                state=node.state, bytes=node.bytes, rate=node.meter.rate,
                error=node.error or (node.done.error if node.done and not node.done.ok else "") or ""))
        return header, rows

    def _report(self, seconds: float) -> Report:
        rows = []
        for node in sorted(self.nodes.values(), key=lambda n: (n.position or 1 << 30, n.info.node_id)):
            d = node.done
            rows.append(NodeReport(
                position=node.position, address=node.info.address, hostname=node.info.hostname,
                data_port=node.info.data_port,
                parent=self.tree.parent(node.position) if node.position and self.tree else None,
                bytes=node.bytes, seconds=d.seconds if d else None,
                status="ok" if node.ok else "failed",
                error=node.error or (d.error if d and not d.ok else None),
                consumer_status=d.consumer_status if d else None,
                backend=d.backend if d else "",
                failed_at=round(node.failed_at - self.started, 3) if node.failed_at else None,
                verified=d.verified if d else None, repairs=d.repairs if d else 0))
        return Report(
            software=SOFTWARE, session=self.cfg.session, arity=self.cfg.arity,
            stream_bytes=self.stream_bytes, seconds=seconds,
            producer_status=self.producer_status, stream_error=self.stream_error,
            backend=self.relay_result.backend if self.relay_result else "",
            pipe_size=self.relay_result.pipe_size if self.relay_result else 0,
            protocol=f"{PROTOCOL_NAME}/{PROTOCOL_VERSION}",
            rejected=dict(self.rejected), nodes=rows,
            started_at=round(time.time() - (time.monotonic() - self.started), 3))


async def _start_discovery(cfg: ServerConfig):
    from kadeploy.control.discovery import start_responder
    try:
        return await start_responder(cfg.session, cfg.control_port, log, port=cfg.discovery_port,
                                     key=cfg.key)
    except OSError as e:
        raise KadeployError(f"cannot listen for discovery on UDP port {cfg.discovery_port}: {e.strerror}")




def exit_status(report: Report) -> int:
    if report.stream_error or not report.nodes:
        return EXIT_FAILED
    failed = sum(1 for n in report.nodes if n.status != "ok")
    if failed == 0:
        return EXIT_OK
    return EXIT_FAILED if failed == len(report.nodes) else EXIT_SOME_FAILED


async def serve(config: ServerConfig) -> Report:
    return await Server(config).run()
