"""Registration: who may join a deployment, and what each node says until its report.

Every control connection starts here: a Hello (or a Go from ka-d-client -g) checked
against the session, the hosts list, the key (mutual challenge-response, see
kadeploy.control.auth) and whether registration is still open. Whatever is turned away is
counted by category for the report and logged on one line; the deployment goes on.
After the start, a lost node is handed to the server (`on_lost`) to be repaired.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from kadeploy.control import auth
from kadeploy.control.hostlist import ResolvedHosts
from kadeploy.control.netio import ControlChannel
from kadeploy.core import protocol as P
from kadeploy.core.addresses import format_hostport
from kadeploy.core.handshake import CONTROL, Answerer, HandshakeFailed
from kadeploy.core.states import NodeState
from kadeploy.core.topology import NodeInfo
from kadeploy.version import SOFTWARE
from kadeploy.view.progress import RateMeter

log = logging.getLogger("kadeploy.server")


@dataclass
class Node:
    info: NodeInfo
    channel: ControlChannel
    position: int = 0
    bytes: int = 0
    done: Optional[P.Done] = None
    error: Optional[str] = None
    finished: bool = False
    reported: asyncio.Event = field(default_factory=asyncio.Event)
    meter: RateMeter = field(default_factory=RateMeter)
    failed_at: Optional[float] = None   # monotonic time the failure was known
    last_heard: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> NodeState:
        if self.error is not None or (self.done is not None and not self.done.ok):
            return NodeState.FAILED
        if self.done is not None:
            return NodeState.DONE
        if not self.position:
            return NodeState.REGISTERED
        return NodeState.STREAMING if self.bytes else NodeState.CONNECTING

    @property
    def name(self) -> str:
        host = self.info.hostname or self.info.address
        return f"{host} ({format_hostport(self.info.address, self.info.data_port)})"

    def fail(self, reason: str) -> None:
        if self.done is None and self.error is None:
            self.error = reason
            self.failed_at = time.monotonic()
            log.error("node %s failed: %s", self.name, reason)
        self.reported.set()

    @property
    def ok(self) -> bool:
        return self.error is None and self.done is not None and self.done.ok


class Rejection(Exception):
    """A connection turned away: category (counted in the report) and reason."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category, self.reason = category, reason


class Registry:
    def __init__(self, cfg, on_lost: Callable[[Node, str], None]) -> None:
        self.cfg = cfg
        self.on_lost = on_lost
        self.nodes: Dict[int, Node] = {}
        self.registration_open = True
        self.start_now = asyncio.Event()
        self._not_coming = 0
        self.rejected: Counter = Counter()
        self.open_connections = 0
        self.hostlist: Optional[ResolvedHosts] = None
        self._next_id = 1

    async def handle_control(self, reader, writer) -> None:
        ch = ControlChannel(reader, writer, P.SERVER)
        node: Optional[Node] = None
        if self.open_connections >= self.cfg.max_connections:
            self._reject(ch, "flood", f"over {self.cfg.max_connections} open connections")
            ch.close()
            return
        self.open_connections += 1
        try:
            try:
                msg = await asyncio.wait_for(ch.recv(), self.cfg.handshake_timeout)
            except asyncio.TimeoutError:
                raise Rejection("silent", f"said nothing within {self.cfg.handshake_timeout:g} s")
            if isinstance(msg, P.Go):
                await self._handle_go(ch, msg)
                return
            node = await self._register(ch, msg)
            await self._follow(node)
        except Rejection as e:
            self._reject(ch, e.category, e.reason)
            await _try_send(ch, P.Refuse(reason=e.reason))
        except P.ProtocolError as e:
            # Bounded: a peer that reads nothing must not keep a lost node from being given up.
            await asyncio.wait_for(_try_send(ch, P.Refuse(reason=str(e))), self.cfg.handshake_timeout)
            if node is None:
                self._reject(ch, "protocol", str(e))
            else:   # a registered node's connection is no longer to be trusted
                self._lost(node, f"broke the protocol: {e}")
        except asyncio.CancelledError:
            return  # the server is shutting down; this connection task just ends
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            if node is None:
                self._reject(ch, "dropped", str(e) or "timed out")
            else:
                self._lost(node, f"lost the control connection: {e or 'closed'}")
        finally:
            self.open_connections -= 1
            if node is None:
                ch.close()

    def _lost(self, node: Node, why: str) -> None:
        if self.registration_open:
            # Left before the start: it no longer counts towards -n.
            del self.nodes[node.info.node_id]
            node.channel.close()
            log.warning("node %s left before the start: %s", node.name, why)
        else:
            self.on_lost(node, why)

    def _reject(self, ch: ControlChannel, category: str, reason: str) -> None:
        """Count and log a connection turned away; the deployment goes on."""
        self.rejected[category] += 1
        log.warning("rejected %s (%s): %s", ch.peer_address, category, reason)

    async def _authenticate(self, ch: ControlChannel, client_nonce: Optional[str], context: str) -> None:
        """With a key, the mutual challenge-response (kadeploy.core.handshake); Rejection if it fails."""
        try:
            answerer = Answerer(self.cfg.key, CONTROL, client_nonce, context, auth.new_nonce())
            challenge = answerer.challenge()
            if challenge is None:
                return
            await ch.send(challenge)
            answerer.verify(await asyncio.wait_for(ch.recv(), self.cfg.handshake_timeout))
            ch.authenticate(answerer.session, asker=False)
        except HandshakeFailed as e:
            raise Rejection("auth", e.reason)

    async def _handle_go(self, ch: ControlChannel, msg: P.Go) -> None:
        if msg.session is not None and self.cfg.session and msg.session != self.cfg.session:
            raise Rejection("session", f"this server runs session {self.cfg.session!r}")
        await self._authenticate(ch, msg.nonce, auth.go_context(msg))
        started = self.registration_open
        if started:
            log.info("go-now from %s with %d node(s) registered", ch.peer_address, len(self.nodes))
            self.start_now.set()
        await ch.send(P.GoAck(started=started, nodes=len(self.nodes),
                              message="starting" if started else "already started"))

    async def _register(self, ch: ControlChannel, msg: P.Hello) -> Node:
        self._check_hello(ch, msg)
        listed = await self._check_listed(ch)
        await self._authenticate(ch, msg.nonce, auth.hello_context(msg))
        self._check_hello(ch, msg)  # registration may have closed meanwhile
        node_id, self._next_id = self._next_id, self._next_id + 1
        info = NodeInfo(node_id=node_id, address=msg.advertise or ch.peer_address,
                        data_port=msg.data_port, hostname=msg.hostname, listed=listed)
        node = Node(info=info, channel=ch)
        self.nodes[node_id] = node
        await ch.send(P.Welcome(node_id=node_id, software=SOFTWARE))
        log.info("registered %s (%d of %d)", node.name, len(self.nodes), self.cfg.n_clients)
        self._start_once_all_in()
        return node

    def not_coming(self, count: int) -> None:
        """`count` of the clients waited for will never register (their launcher said
        they failed to start): the start waits only for the others."""
        self._not_coming = count
        self._start_once_all_in()

    def _start_once_all_in(self) -> None:
        if len(self.nodes) >= self.cfg.n_clients - self._not_coming:
            self.start_now.set()

    def _check_hello(self, ch: ControlChannel, msg: P.Hello) -> None:
        if not self.registration_open:
            raise Rejection("late", "registration is closed: the deployment has already started")
        if self.cfg.session and msg.session not in (None, self.cfg.session):
            raise Rejection("session", f"this server runs session {self.cfg.session!r}, not {msg.session!r}")
        if not 0 < msg.data_port < 65536:
            raise Rejection("protocol", f"invalid data port {msg.data_port}")

    async def _check_listed(self, ch: ControlChannel) -> Optional[int]:
        """With --hosts, the entry naming the address this connection comes from
        (never what the peer says about itself); Rejection when none does."""
        if self.cfg.hosts is None:
            return None
        if self.hostlist is None:
            self.hostlist = ResolvedHosts(self.cfg.hosts)
        listed = await self.hostlist.rank(ch.peer_address)
        if listed is None:
            raise Rejection("hosts", f"this host ({ch.peer_address}) is not in the server's --hosts list")
        return listed

    async def _follow(self, node: Node) -> None:
        """Read what a registered node says until its report (and release, with -w)."""
        while True:
            msg = await node.channel.recv()
            node.last_heard = time.monotonic()
            if isinstance(msg, P.Progress):
                node.bytes = msg.bytes
                node.meter.add(msg.bytes)
            elif isinstance(msg, P.Refuse):
                # Given up like a lost node, so that its children are re-attached.
                self._lost(node, f"refused: {msg.reason}")
                return
            elif isinstance(msg, P.Done):
                node.done, node.bytes = msg, msg.bytes
                if not msg.ok:
                    node.failed_at = time.monotonic()
                if msg.ok:
                    log.info("node %s done: %d bytes in %.1f s", node.name, msg.bytes, msg.seconds)
                else:
                    log.error("node %s failed: %s", node.name, msg.error)
                node.reported.set()
                return


async def _try_send(ch: ControlChannel, msg: P.Message) -> None:
    try:
        await ch.send(msg)
    except Exception:  # the peer may be gone or in a state where nothing more is legal
        pass


