"""ka-d-client: join, take a place in the tree, feed the consumer and the children.

A node's verdict is ok only when everything is verified: the stream was read to its
end, its length is the one the server announced, the producer succeeded, and the
consumer read all of it and exited 0. A child's failure is the child's, not ours: we
go on feeding the others and the consumer.
"""
from __future__ import annotations

from kadeploy.asyncio_without_tls import asyncio  # first: asyncio without ssl's start-up
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from typing import Optional

from kadeploy.control import auth
from kadeploy.control.early import Registered
from kadeploy.control.listeners import listen
from kadeploy.control.netio import ControlChannel, connect
from kadeploy.control.policy import refuse_place
from kadeploy.core import protocol as P
from kadeploy.core.addresses import format_hostport
from kadeploy.core.handshake import CONTROL, Asker, HandshakeFailed
from kadeploy.data.commands import DEFAULT_TARGET, default_consumer
from kadeploy.defaults import (
    BUFFER_SIZE,
    CONNECT_TIMEOUT,
    CONTROL_PORT,
    DATA_PORT,
    DISCOVERY_PORT,
    DISCOVERY_TRIES,
    HANDSHAKE_TIMEOUT,
    LATE_CHILD_GRACE,
)
from kadeploy.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, KadeployError, NotJoined
from kadeploy.version import SOFTWARE

# The data plane (relay, digests, consumer, progress bar) is imported once the node is
# registered and placed (_deploy): a client costs little CPU before it is registered.

log = logging.getLogger("kadeploy.client")


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
    buffer_size: int = BUFFER_SIZE
    sockbuf: Optional[int] = None
    connect_timeout: float = CONNECT_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    discovery_port: int = DISCOVERY_PORT
    discovery_tries: int = DISCOVERY_TRIES
    progress_bar: Optional[bool] = None   # None: when stderr is a terminal
    key: Optional[bytes] = None
    install: bool = False                 # --install: the server's manifest, onto a disk
    disk: Optional[str] = None
    force: bool = False
    insecure_no_verify: bool = False   # with a key, accept a stream without digests

    def consumer_command(self) -> str:
        return self.consumer or default_consumer(self.target or DEFAULT_TARGET)


def find_server(cfg: ClientConfig):
    """(host, control port) from -h, or by discovery with -s."""
    if cfg.host:
        return cfg.host, cfg.control_port
    from kadeploy.control.discovery import discover
    log.info("looking for session %r by broadcast", cfg.session)
    if cfg.key is None:
        log.warning("no key: the first answer to the broadcast is taken, and anyone on this "
                    "network can answer it (see --key-file)")
    host, port = discover(cfg.session, tries=cfg.discovery_tries, port=cfg.discovery_port,
                          key=cfg.key)
    log.info("found the server of session %r at %s", cfg.session, format_hostport(host, port))
    return host, port


async def go_now(cfg: ClientConfig) -> str:
    """ka-d-client -g: tell the server to start with the clients it has."""
    host, port = await asyncio.get_running_loop().run_in_executor(None, find_server, cfg)
    ch = await _open_control(host, port, cfg)
    try:
        asker = Asker(cfg.key, CONTROL, auth.new_nonce())
        go = P.Go(software=SOFTWARE, session=cfg.session, nonce=asker.nonce)
        msg = await request(ch, go, asker, cfg, auth.go_context(go), "go-now")
        if not msg.started:
            raise NotJoined(f"server has already started ({msg.nodes} node(s))")
        return f"server starts with {msg.nodes} node(s)"
    finally:
        ch.close()


async def request(ch: ControlChannel, first: P.Message, asker: Asker, cfg: ClientConfig,
                  context: str, what: str, sent: bool = False,
                  auth_sent: Optional[bytes] = None) -> P.Message:
    """Send Hello or Go (unless it is `sent` already) and return the server's answer,
    after the mutual challenge-response (kadeploy.core.handshake) when we have a key;
    NotJoined when it cannot be had. `auth_sent`: the Auth the early registration
    (kadeploy.control.early) sent, which must be the one the handshake gives."""
    try:
        if not sent:
            await ch.send(first)
        msg = await asyncio.wait_for(ch.recv(), cfg.handshake_timeout)
        try:
            auth_msg = asker.react(msg, context)
        except HandshakeFailed as e:
            if auth_sent is not None:
                raise RuntimeError(f"the early path answered a Challenge the handshake refuses: {e}")
            if e.refuse:
                await ch.send(P.Refuse(reason=e.refuse))
            raise NotJoined(e.reason)
        if auth_sent is not None and (auth_msg is None or ch.conn.send(auth_msg) != auth_sent):
            raise RuntimeError("the early Auth is not the handshake's (kadeploy.control.early)")
        if auth_msg is not None:
            if auth_sent is None:
                await ch.send(auth_msg)
            ch.authenticate(asker.session, asker=True)
            msg = await asyncio.wait_for(ch.recv(), cfg.handshake_timeout)
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
    """One node's session. With `registered` (kadeploy.control.early), the listener is
    bound and the Hello sent already: the client goes on from there."""

    def __init__(self, cfg: ClientConfig, registered: Optional[Registered] = None) -> None:
        self.cfg = cfg
        self.registered = registered
        if not cfg.consumer and not cfg.install:
            target = cfg.target or DEFAULT_TARGET
            if not os.path.isdir(target):
                raise KadeployError(f"target directory {target} does not exist", exit_code=EXIT_USAGE)
        if registered is not None:
            self.listener = socket.socket(fileno=registered.listener.detach())
        else:
            self.listener = listen(cfg.data_port, cfg.bind, fallback_to_any_port=True)
        self.data_port = self.listener.getsockname()[1]
        if self.data_port != cfg.data_port:
            log.info("data port %d is in use here; listening on %d", cfg.data_port, self.data_port)

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            if self.registered is not None:
                ch, hello, auth_sent = await self._take_registration(self.registered)
            else:
                if self.cfg.host:     # no thread to start for discovery
                    host, port = self.cfg.host, self.cfg.control_port
                else:
                    host, port = await loop.run_in_executor(None, find_server, self.cfg)
                ch, hello, auth_sent = await _open_control(host, port, self.cfg), None, None
            try:
                return await self._session(ch, hello, auth_sent)
            finally:
                ch.close()
        finally:
            self.listener.close()

    async def _take_registration(self, registered: Registered):
        """The control channel of an early registration, its Hello counted as sent and
        what it read of the server's reply fed to the channel first."""
        if registered.failure is not None:
            raise NotJoined(str(registered.failure))
        if registered.answer_timed_out:
            registered.close_control()
            raise NotJoined("the server did not answer the registration")   # as request() says
        sock = socket.socket(fileno=registered.control.detach())
        reader, writer = await asyncio.open_connection(sock=sock)
        ch = ControlChannel(reader, writer, P.CLIENT)
        hello = P.Hello(**dict(registered.hello_fields))
        if ch.conn.send(hello) != registered.hello:
            ch.close()
            raise RuntimeError("the early Hello is not the protocol's (kadeploy.control.early)")
        if registered.reply:
            ch.conn.receive_data(bytes(registered.reply))
        return ch, hello, registered.auth

    async def _session(self, ch: ControlChannel, sent: Optional[P.Hello] = None,
                       auth_sent: Optional[bytes] = None) -> Outcome:
        """From the Hello (`sent`: already on the wire, and our Auth too when
        `auth_sent`) to the node's outcome."""
        cfg = self.cfg
        asker = Asker(cfg.key, CONTROL, sent.nonce if sent else auth.new_nonce())
        hello = sent or P.Hello(software=SOFTWARE, hostname=socket.gethostname(), data_port=self.data_port,
                                session=cfg.session, advertise=cfg.advertise, nonce=asker.nonce)
        node_id = (await request(ch, hello, asker, cfg, auth.hello_context(hello),
                                 "registration", sent=sent is not None, auth_sent=auth_sent)).node_id
        log.info("registered as node %d; waiting for the deployment to start", node_id)
        try:
            while isinstance(place := await ch.recv(), P.Ping):  # no timeout: the server
                pass                                             # waits for the others
        except ConnectionError as e:
            raise NotJoined(f"lost the server before the start: {e}")
        except P.ProtocolError as e:
            raise NotJoined(f"refused the server's word before the start: {e}")
        if isinstance(place, (P.Refuse, P.Abort)):
            raise NotJoined(f"server gave up: {place.reason}")
        refusal = refuse_place(place, cfg.key, cfg.insecure_no_verify)
        if refusal:
            await ch.send(P.Refuse(reason=refusal))
            raise NotJoined(refusal)
        log.info("position %d of %d, depth %d; parent %s; %d child(ren)", place.position,
                 place.n_nodes, place.depth, format_hostport(place.parent_host, place.parent_port),
                 len(place.children))
        from kadeploy.core.integrity import Verifier
        from kadeploy.data.node import ServerLink
        from kadeploy.view.progress import ClientBar
        verifier = Verifier(place.chunk_size) if place.digest else None
        link = ServerLink(ch, place.stall_timeout, verifier)
        link.bar = ClientBar(_Received(lambda: link.received()),
                             f"node {place.position}/{place.n_nodes}", enabled=cfg.progress_bar)
        job = None
        if cfg.install:   # only then: the install modules cost a node's start 4-6 ms
            from kadeploy.install.job import InstallJob
            job = InstallJob(place.install, cfg.disk, cfg.force)
        if job is not None:
            self.cfg = replace(cfg, consumer=job.consumer())
        link.start()
        try:
            outcome = await self._deploy(node_id, place, link)
            link.reporting = False
            link.bar.close()
            steps = job.finish(outcome) if job is not None else None
            await ch.send(P.Done(ok=outcome.ok, bytes=outcome.bytes, seconds=outcome.seconds,
                                 consumer_status=outcome.consumer_status, error=outcome.error,
                                 backend=outcome.backend, verified=outcome.verified,
                                 repairs=outcome.repairs, install=steps,
                                 content_bytes=outcome.content_bytes,
                                 decode_seconds=outcome.decode_seconds))
            if cfg.wait_finish:
                log.info("waiting for the server's finish")
                while not link.finished and link.lost is None:
                    link.changed.clear()
                    await link.changed.wait()
                if not link.finished and outcome.ok:
                    outcome.ok, outcome.error = False, f"no finish from the server: {link.lost}"
        except (ConnectionError, P.ProtocolError) as e:
            if outcome.ok:
                outcome.ok = False
                outcome.error = f"lost the server before the end: {e}"
        finally:
            await link.stop()
        if job is not None and job.reboot and outcome.ok:
            job.reboot_now()
        return outcome

    async def _deploy(self, node_id: int, place: P.Place, link: ServerLink) -> Outcome:
        from kadeploy.data.datalink import ChildAcceptor, accept_children, connect_parent
        from kadeploy.data.node import DataPhase, Outcome
        cfg = self.cfg
        data_key = auth.data_key(cfg.key, place.token)
        # With a repair window this node may adopt a lost node's child, which resumes
        # at an offset; the acceptor stays open for the whole data phase.
        acceptor = ChildAcceptor(self.listener, data_key, handshake_timeout=cfg.handshake_timeout,
                                 sockbuf=cfg.sockbuf, on_refused=_log_refused,
                                 offsets=bool(place.window))

        def reconnect(host: str, port: int, offset: int):
            return connect_parent(host, port, node_id, data_key, timeout=cfg.connect_timeout,
                                  sockbuf=cfg.sockbuf, offset=offset)

        # With a window, the relay does not wait for a slow child: it is fed from the
        # window when it connects (DataPhase, `late`).
        wait = LATE_CHILD_GRACE if place.window else cfg.connect_timeout
        try:
            parent, children = await asyncio.gather(
                reconnect(place.parent_host, place.parent_port, 0),
                accept_children(acceptor, place.children, timeout=wait, gone=lambda: link.dropped),
                return_exceptions=True)
        except BaseException:
            acceptor.close()
            raise
        if isinstance(children, BaseException):
            acceptor.close()
            raise children
        late = [cid for cid in place.children if cid not in children and cid not in link.dropped]
        for cid in late:
            if place.window:
                log.info("child node %d is not connected yet: it will start from the repair window", cid)
            else:
                log.warning("child node %d did not connect within %g s", cid, cfg.connect_timeout)
        reattached = False
        if isinstance(parent, NotJoined):
            parent = await self._reattach_early(link, parent, reconnect)
            reattached = not isinstance(parent, NotJoined)
        elif isinstance(parent, BaseException):
            acceptor.close()
            raise parent
        if isinstance(parent, NotJoined):
            acceptor.close()
            for s in children.values():
                s.close()   # our children see the stream end early and say so
            return Outcome(ok=False, bytes=0, seconds=0.0, error=str(parent),
                           consumer_status=None, backend="")
        return await DataPhase(cfg, place, link, parent, children, reconnect, acceptor,
                               late=late if place.window else [], repairs=int(reattached)).run()

    async def _reattach_early(self, link: ServerLink, error: NotJoined, reconnect):
        """The parent was lost before the data flowed: the server re-attaches us (it
        notices within its stall timeout), or the error stands."""
        log.warning("%s; waiting for the server to re-attach this node", error)
        try:
            step = await asyncio.wait_for(link.next_step(0), link.repair_patience)
        except asyncio.TimeoutError:
            step = None
        if step is None:
            return error
        from kadeploy.data.node import follow_reattach
        try:
            return await follow_reattach(link, reconnect, step, 0)
        except NotJoined as e:
            return e


class _Received:
    """Looks like counters[0] to the progress bar."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __getitem__(self, i: int) -> int:
        return self.fn()


def _log_refused(addr: str, why: str) -> None:
    log.warning("rejected data connection from %s: %s", addr, why)


def config_from(params: dict, consumer: Optional[str], key: Optional[bytes]) -> ClientConfig:
    """The node's configuration from ka-d-client's parameters, by click's names (from
    click, or from kadeploy.control.early for a command line it registered), with the
    consumer to run and the key loaded."""
    return ClientConfig(
        host=params["host"], session=params["session"], consumer=consumer, target=params["target"],
        wait_finish=params["wait_finish"], control_port=params["control_port"],
        data_port=params["data_port"], bind=params["bind"], advertise=params["advertise"],
        relay_backend=params["relay_backend"], buffer_size=params["buffer_size"],
        sockbuf=params["sockbuf"], connect_timeout=params["connect_timeout"],
        discovery_port=params["discovery_port"], progress_bar=False if params["quiet"] else None,
        handshake_timeout=params["handshake_timeout"], install=params["install"],
        disk=params["disk"], force=params["force"], key=key,
        insecure_no_verify=params["insecure_no_verify"])


def run_node(cfg: ClientConfig, registered: Optional[Registered]) -> int:
    """The node's whole run (from its early registration, if any), the original's
    closing lines, which users' scripts grep for, and the exit status."""
    started = time.monotonic()
    outcome = asyncio.run(Client(cfg, registered).run())
    elapsed = time.monotonic() - started
    megs = outcome.bytes / (1 << 20)
    rate = megs / outcome.seconds if outcome.seconds > 0 else 0.0
    overall = megs / elapsed if elapsed > 0 else 0.0
    sys.stderr.write(f"Total data received = {megs:.2f} Megs ({rate:.2f} Mbytes/sec)\n"
                     f"Elapsed time = {elapsed:.2f} s, throughput = {overall:.2f} Mbytes/second\n")
    return exit_status(outcome)


def exit_status(outcome: Outcome) -> int:
    return EXIT_OK if outcome.ok else EXIT_FAILED
