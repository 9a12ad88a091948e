"""ka-d-server: the tree, the producer, the stream, repairs, the verdicts.

The control plane runs on asyncio; the stream itself runs in the relay, in a thread
that holds no lock the loop needs. Life of a deployment:
  register  -> (kadeploy.control.registry) clients say Hello until -n are in, a client says Go,
               or --wait-timeout;
  place     -> registration closes, nodes are ordered and each is told its place;
  connect   -> the server's children open data connections to it;
  stream    -> the producer's stdout is relayed to them (kadeploy.data.server_phase, the
               twin of a node's data phase); nodes send Progress;
  verify    -> beside the data, every chunk's digest goes to every node;
  heal      -> a node lost (connection closed, or silent for --stall-timeout) is cut
               off and its children re-attached to the server's spool (kadeploy.core.repair);
  end       -> the server tells every node the stream's length, digest and whether the
               producer succeeded; nodes answer Done with their verdict;
  finish    -> waiting clients (-w) are released, spaced by -d tenths of a second.
"""
from __future__ import annotations

from kadeploy.asyncio_without_tls import asyncio  # first: asyncio without ssl's start-up
import logging
import socket
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from kadeploy import relay as relay_mod
from kadeploy.control import auth
from kadeploy.control.healing import Healer
from kadeploy.control.listeners import server_listeners
from kadeploy.control.registry import Node, Registry
from kadeploy.control.server_config import ServerConfig
from kadeploy.core import encryption
from kadeploy.core import protocol as P
from kadeploy.core.integrity import CHUNK_SIZE, default_algorithm
from kadeploy.core.states import RECEIVING, NodeState, Verdict
from kadeploy.core.topology import Tree, build_tree, order_nodes, render
from kadeploy.data.server_phase import ServerDataPhase
from kadeploy.defaults import LATE_CHILD_GRACE, TREE_LOG_NODES
from kadeploy.errors import EXIT_FAILED, EXIT_OK, EXIT_SOME_FAILED, KadeployError
from kadeploy.version import PROTOCOL_NAME, PROTOCOL_VERSION, SOFTWARE, __version__
from kadeploy.view.progress import (
    NodeView,
    RateMeter,
    ServerProgress,
    human_bytes,
    human_rate,
)

if TYPE_CHECKING:
    from kadeploy.view.report import Report

log = logging.getLogger("kadeploy.server")


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.cfg = config
        self.registry = Registry(config, on_lost=lambda node, why: self.healer.node_lost(node, why))
        self.nodes = self.registry.nodes
        self.rejected = self.registry.rejected
        self.token = auth.new_token()
        self.tree: Optional[Tree] = None
        self.data_key = auth.data_key(config.key, self.token)
        self.stream_bytes = 0
        self.producer_status: Optional[int] = None
        self.relay_result: Optional[relay_mod.RelayResult] = None
        self.stream_error: Optional[str] = None
        self.compression: Optional[str] = None
        self.started = time.monotonic()
        self.sent_meter = RateMeter()
        self.by_pos: Dict[int, Node] = {}
        self.healer = Healer(config, self.nodes)
        self.phase: Optional[ServerDataPhase] = None
        self.algorithm = default_algorithm(config.key is not None) if config.verify else None
        self.boot_states = None
        if config.boot_states:   # only then: the netboot kit's module
            from kadeploy.netboot.progress import BootStates
            self.boot_states = BootStates(config.boot_states, log)

    # ------------------------------------------------------------------- run

    async def run(self, listeners: Optional[Tuple[socket.socket, socket.socket]] = None) -> Report:
        """listeners: the control and data listeners, when the caller bound them
        already (kadeploy.cli, before importing this module)."""
        cfg = self.cfg
        ctrl_sock, data_sock = listeners or server_listeners(cfg)
        srv = await asyncio.start_server(self.registry.handle_control, sock=ctrl_sock)
        responder = None
        watchdog = asyncio.ensure_future(self.healer.watch())
        # From the start: the nodes registering (and, with --boot-states, booting) show too.
        progress = ServerProgress(self._snapshot, interval=cfg.progress_interval,
                                  live=cfg.live, total=cfg.expected_size, log=log)
        progress.start()
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
            self.phase = ServerDataPhase(cfg, data_sock, self.data_key, self.algorithm,
                                         on_digest=lambda i, d: self._post_all(P.Digest(index=i, digest=d)),
                                         on_refused=self._data_link_refused)
            if cfg.encrypt:   # one key per deployment, from the key and this token
                self.phase.stream_key = encryption.stream_key(cfg.key, self.token)
            await self._place(ordered)
            try:
                await self._accept_children()
                await self._stream()
                await self._collect()
            finally:
                await progress.stop()
                self.phase.stop_accepting()
            await self._finish()
            return self._report(time.monotonic() - self.started)
        finally:
            await progress.stop()
            watchdog.cancel()
            if responder is not None:
                responder.close()
            srv.close()
            data_sock.close()
            for node in self.nodes.values():
                node.channel.close()
            if self.phase is not None:
                self.phase.close()

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

    def _build_tree(self, n_nodes: int) -> Tree:
        """The shape nodes are placed in (kadeploy.push places K chains instead)."""
        return build_tree(n_nodes, self.cfg.arity)

    async def _place(self, ordered: List[Node]) -> None:
        self.tree = self._build_tree(len(ordered))
        by_pos = {i + 1: n for i, n in enumerate(ordered)}
        for pos, node in by_pos.items():
            node.position = pos
        names = {0: "server"} | {p: n.name for p, n in by_pos.items()}
        if log.isEnabledFor(logging.INFO):
            log.info("tree (arity %d, %d node(s)):\n%s", self.cfg.arity, len(ordered),
                     "\n".join(render(self.tree, names, limit=TREE_LOG_NODES)))
        self.by_pos = by_pos
        parent_of = {n.info.node_id: by_pos[self.tree.parent(p)].info.node_id if self.tree.parent(p) else 0
                     for p, n in by_pos.items()}
        # Only a node with children ever feeds anyone from its window (a lost node's
        # orphans go to one of its ancestors): a leaf keeps none, and with --no-verify
        # its stream is spliced to its consumer and nothing else reads it.
        keeps_window = self.cfg.repair and not self.cfg.spool_dir
        windowed = {n.info.node_id for p, n in by_pos.items() if keeps_window and self.tree.children(p)}
        for pos, node in by_pos.items():
            parent_pos = self.tree.parent(pos)
            if parent_pos == 0:
                host, port = node.channel.local_address, self.cfg.data_port
            else:
                parent = by_pos[parent_pos]
                host, port = parent.info.address, parent.info.data_port
            msg = P.Place(position=pos, depth=self.tree.depth(pos), n_nodes=len(ordered),
                          arity=self.cfg.arity, parent_host=host, parent_port=port,
                          children=[by_pos[c].info.node_id for c in self.tree.children(pos)],
                          token=self.token, digest=self.algorithm, chunk_size=CHUNK_SIZE,
                          stall_timeout=self.cfg.stall_timeout, codec=self.phase.wire_codec,
                          encrypt=encryption.ALGORITHM if self.cfg.encrypt else None,
                          window=self.cfg.window if node.info.node_id in windowed else 0,
                          install=self.cfg.install.payload(pos, node.info.address, node.info.hostname)
                          if self.cfg.install else None)
            try:
                await node.channel.send(msg)
            except (ConnectionError, OSError) as e:
                node.fail(f"lost before it was placed: {e}")
        self.healer.start(parent_of, self.phase, windowed)
        for node in ordered:
            node.last_heard = time.monotonic()
            if node.error is not None:
                self.healer.node_lost(node, node.error)

    def _data_link_refused(self, addr: str, why: str) -> None:
        self.rejected["data-link"] += 1
        log.warning("rejected data connection from %s: %s", addr, why)

    async def _accept_children(self) -> None:
        """Data connections from the server's own children, checked against the token."""
        child_ids = [self.by_pos[p].info.node_id for p in self.tree.children(0)]
        window = self.phase.window is not None
        missing = await self.phase.accept_children(
            child_ids, gone=lambda: {i for i, n in self.nodes.items() if n.state == NodeState.FAILED},
            then=LATE_CHILD_GRACE if window else None)
        too_late = f"did not open its data connection within {self.cfg.connect_timeout:g} s"
        for node_id in sorted(missing):
            node = self.nodes[node_id]
            if window and node.error is None and len(missing) < len(child_ids):
                # The stream does not wait for it: it starts from the window when it comes.
                log.info("%s is not connected yet: it will start from the repair window", node.name)
                fut = self.phase.serve(node_id, node.name,
                                       on_missed=lambda why, n=node: self.healer.unrepairable(n, why))
                asyncio.get_running_loop().call_later(self.cfg.connect_timeout, self._lost_unless_connected,
                                                      node, fut, too_late)
            elif node.error is None:
                self.healer.give_up(node, too_late)

    def _lost_unless_connected(self, node: Node, connection: asyncio.Future, why: str) -> None:
        if not connection.done():
            self.healer.give_up(node, why)

    def _post_all(self, msg: P.Message) -> None:
        for node in self.nodes.values():
            if node.position and node.state in RECEIVING:
                node.channel.post(msg)

    async def _stream(self) -> None:
        out = await self.phase.stream(self.cfg.producer)
        self.producer_status, self.relay_result, self.stream_bytes = out.producer_status, out.relay, out.bytes
        for node_id, err in out.broken.items():
            # The node's own report (or its lost connection) gives the verdict.
            log.warning("data connection to %s broke: %s", self.nodes[node_id].name,
                        getattr(err, "strerror", None) or err)
        if out.error:
            log.error("%s", out.error)
        res = out.relay
        log.info("stream ended: %d bytes, relay backend %s%s", res.bytes_in, res.backend,
                 f", pipes of {res.pipe_size} bytes (asked {self.cfg.buffer_size})" if res.pipe_size else "")
        # After every Digest: posts keep their order on each connection.
        self._post_all(P.End(bytes=res.bytes_in, ok=out.error is None, error=out.error, digest=out.digest,
                             content_bytes=out.content_bytes))
        self.stream_error = out.error
        self.compression = out.compression
        if out.compression:
            log.info("compression %s", out.compression)

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
        sent = self.phase.sent if self.phase is not None else 0
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
        if self.boot_states is not None:
            rows += self.boot_states.rows((n.info.hostname, n.info.address) for n in self.nodes.values())
        return header, rows

    def _report(self, seconds: float) -> Report:
        # Imported once the nodes are released (_finish), off every deployment's wall
        # clock: the report and its file writing cost the server's start 10-20 ms.
        from kadeploy.view.report import NodeReport, Report
        if self.cfg.install:   # only then: the install modules cost the server's start 9 ms
            from kadeploy.install.serve import install_gap, reported_steps
        rows = []
        for node in sorted(self.nodes.values(), key=lambda n: (n.position or 1 << 30, n.info.node_id)):
            d = node.done
            steps = reported_steps(d.install if d else None) if self.cfg.install else []
            gap = install_gap(steps) if self.cfg.install and node.ok else None
            rows.append(NodeReport(
                position=node.position, address=node.info.address, hostname=node.info.hostname,
                data_port=node.info.data_port,
                parent=self.tree.parent(node.position) if node.position and self.tree else None,
                bytes=node.bytes, seconds=d.seconds if d else None,
                status=Verdict.OK if node.ok and gap is None else Verdict.FAILED,
                error=node.error or (d.error if d and not d.ok else None) or gap,
                consumer_status=d.consumer_status if d else None,
                backend=d.backend if d else "",
                failed_at=round(node.failed_at - self.started, 3) if node.failed_at else None,
                verified=d.verified if d else None, repairs=d.repairs if d else 0, steps=steps,
                content_bytes=d.content_bytes if d else None,
                decode_seconds=d.decode_seconds if d else None))
        return Report(
            software=SOFTWARE, session=self.cfg.session, arity=self.cfg.arity,
            stream_bytes=self.stream_bytes, seconds=seconds,
            producer_status=self.producer_status, stream_error=self.stream_error,
            backend=self.relay_result.backend if self.relay_result else "",
            pipe_size=self.relay_result.pipe_size if self.relay_result else 0,
            protocol=f"{PROTOCOL_NAME}/{PROTOCOL_VERSION}",
            rejected=dict(self.rejected), nodes=rows, compression=self.compression,
            started_at=round(time.time() - (time.monotonic() - self.started), 3))


async def _start_discovery(cfg: ServerConfig):
    from kadeploy.control.discovery import start_responder
    try:
        return await start_responder(cfg.session, cfg.control_port, port=cfg.discovery_port,
                                     key=cfg.key)
    except OSError as e:
        raise KadeployError(f"cannot listen for discovery on UDP port {cfg.discovery_port}: {e.strerror}")




def exit_status(report: Report) -> int:
    if report.stream_error or not report.nodes:
        return EXIT_FAILED
    failed = sum(1 for n in report.nodes if n.status != Verdict.OK)
    if failed == 0:
        return EXIT_OK
    return EXIT_FAILED if failed == len(report.nodes) else EXIT_SOME_FAILED


async def serve(config: ServerConfig, listeners=None) -> Report:
    return await Server(config).run(listeners)
