"""ka-d-client's registration before the heavy imports (issue 13, point 4).

A node is registered once the server has its Hello (with a key, once it has our
answer to its Challenge too), and all that needs is known from a few options. So for
a command line made only of the options in OPTIONS, the client checks them, binds its
data listener, connects and sends its Hello with blocking sockets and next to no
imports; with a key it then checks the server's proof and sends its own (hashlib and
hmac: kadeploy.core.proofs). asyncio and the protocol module are loaded afterwards,
while the server waits for the other nodes, and the client (kadeploy.control.client)
takes over both sockets through take(), which holds what was sent to what the
protocol and the handshake would have sent. Such a command line is known to the
last parameter (OPTIONS, and ABSENT for the rest), so the node runs on without click
(kadeploy.control.early_client).

Any other command line, a value this module is not sure of (say a port of "+1"), a
key that does not load, or a check that fails, takes the normal path from the start,
which says what is wrong: nothing reaches the server before click has accepted
it or this module has proved it would. A command line that cannot be registered early
costs only the scan.
"""
from __future__ import annotations

import errno
import os
import time

import _socket   # socket.py would import enum, selectors and its IntEnum tables

from kadeploy import defaults
from kadeploy.control import cmdline
from kadeploy.core import frame
from kadeploy.version import SOFTWARE

# Each option the early path knows: its spellings -> (click's parameter name, kind).
# tests/test_early.py holds every entry to ka-d-client's click declaration.
OPTIONS = {
    ("-h", "--host"): ("host", "text"),
    ("-p", "--control-port"): ("control_port", "port"),
    ("-P", "--data-port"): ("data_port", "port"),
    ("-e", "--command"): ("consumer", "text"),
    ("-t", "--target"): ("target", "directory"),
    ("--advertise",): ("advertise", "address"),
    ("--connect-timeout",): ("connect_timeout", "seconds"),
    ("--handshake-timeout",): ("handshake_timeout", "seconds"),
    ("--key-file",): ("key_file", "file"),
    ("--relay",): ("relay_backend", "backend"),
    ("--buffer-size",): ("buffer_size", "size"),
    ("--sockbuf",): ("sockbuf", "size"),
    ("--discard",): ("discard", "flag"),
    ("-w", "--wait"): ("wait_finish", "flag"),
    ("-q", "--quiet"): ("quiet", "flag"),
    ("--verbose",): ("verbose", "flag"),
}
# What click gives each parameter of ka-d-client that is not on the command line: with
# OPTIONS, every parameter of a command line registered here is known, and the node
# runs on without click (kadeploy.control.early_client). tests/test_early.py holds it
# to click's declaration.
ABSENT = {
    "host": None, "session": None, "consumer": None, "target": None, "wait_finish": False,
    "go": False, "advertise": None, "install": False, "disk": None, "force": False,
    "insecure_no_verify": False, "control_port": defaults.CONTROL_PORT,
    "data_port": defaults.DATA_PORT, "bind": None, "relay_backend": None,
    "buffer_size": defaults.BUFFER_SIZE, "sockbuf": None,
    "connect_timeout": defaults.CONNECT_TIMEOUT, "handshake_timeout": defaults.HANDSHAKE_TIMEOUT,
    "discovery_port": defaults.DISCOVERY_PORT, "key_file": None, "quiet": False, "verbose": False,
}
_SPELLINGS = cmdline.spellings_of(OPTIONS)
# The codes of Hello, Challenge and Auth; the Hello's fields, in protocol order, are
# hello_fields(). The client (kadeploy.control.client) checks them once the protocol
# is loaded: each frame sent must be the one protocol.encode writes.
HELLO_CODE, CHALLENGE_CODE, AUTH_CODE = 1, 14, 15
# A Challenge's body as the protocol writes it is 119 bytes; a longer one is not read here.
CHALLENGE_MAX = 256
LISTEN_BACKLOG = 1024

_registered = None   # what start() did, for take()


def scan(argv) -> "dict | None":
    """The parameters click would give for `argv` (only those it names, and `discard`),
    or None when the early path cannot be sure of them. Pure: no I/O."""
    params = cmdline.read(argv, _SPELLINGS)
    if params is None or "host" not in params or (params.get("discard") and "consumer" in params):
        return None                  # -s discovery, or a usage error click will name
    return params


def start(argv, environ=os.environ) -> None:
    """Register now if the command line and the environment allow it (see the module's
    doc); otherwise do nothing and leave it all to the normal path."""
    global _registered
    params = scan(argv)
    if params is None or not _environment_allows(params, environ) or not _target_ok(params):
        return
    key = _key(params, environ)
    if key is False:
        return
    try:
        listener = bound_listener(*every_address(), params.get("data_port", defaults.DATA_PORT),
                                  dual_stack=True, fallback_to_any_port=True)
    except OSError:
        return                       # the normal path says why it cannot listen
    _registered = Registered(params, listener, key)   # set first: abandon() closes the listener
    _registered.join()


def abandon() -> None:
    """Withdraw whatever start() did (the normal path then does it all)."""
    global _registered
    early, _registered = _registered, None
    if early is not None:
        early.close()


def registration() -> "Registered | None":
    """What start() did, if anything (take() then hands it over)."""
    return _registered


def take(params: dict, discard: bool, key: "bytes | None" = None) -> "Registered | None":
    """The early registration, for the client to go on with, if there is one and the
    command line's parameters (click's reading, or early_client's) agree with it, and
    the client loaded the same key; one that disagrees is withdrawn (a bug, or a key
    file changed in between: the node then registers again on the normal path)."""
    global _registered
    early, _registered = _registered, None
    if early is None:
        return None
    mine = dict(early.params)
    if (mine.pop("discard", False) != discard or early.key != key
            or any(params.get(k) != v for k, v in mine.items())):
        early.close()
        return None
    return early


def _environment_allows(params: dict, environ) -> bool:
    if not cmdline.environment_is_plain(environ, "ka-d-client", "kadeploy"):
        return False
    asked = params.get("relay_backend")
    if asked or environ.get(defaults.ENV_BACKEND) or environ.get(defaults.ENV_REQUIRE):
        # The normal path refuses a backend asked for that does not load, before it
        # connects; loading it here keeps that order (and its cost, only when asked).
        from kadeploy import relay
        try:
            relay.resolve(asked)
        except relay.BackendUnavailable:
            return False
    return True


def _key(params: dict, environ) -> "bytes | None | bool":
    """The key, as the normal path loads it (None: none); False when it does not load,
    which the normal path words. Its warnings are the normal path's to give."""
    if not (params.get("key_file") or environ.get(defaults.ENV_KEY) or environ.get(defaults.ENV_KEY_FILE)):
        return None                  # no key: nothing more to import
    from kadeploy.control import auth
    from kadeploy.errors import UsageError
    try:
        return auth.load_key(params.get("key_file"), environ=environ)
    except UsageError:
        return False


def _target_ok(params: dict) -> bool:
    """The checks of click's --target (a directory, readable) and of the client (the
    default consumer's directory exists), when they pass; any failure is the normal
    path's to word."""
    target = params.get("target")
    if target is not None and not (os.path.isdir(target) and os.access(target, os.R_OK)):
        return False
    if "consumer" in params or params.get("discard"):
        return True
    return os.path.isdir(target or defaults.DEFAULT_TARGET)


# ------------------------------------------------------------------ sockets

def every_address():
    """(family, address) of a listener on every address: dual-stack where IPv6 works."""
    if _socket.has_ipv6:
        try:
            probe = _socket.socket(_socket.AF_INET6, _socket.SOCK_STREAM)
            try:
                probe.bind(("::", 0))
                return _socket.AF_INET6, "::"
            finally:
                probe.close()
        except OSError:
            pass
    return _socket.AF_INET, "0.0.0.0"


def bound_listener(family: int, address: str, port: int, *, dual_stack: bool = False,
                   backlog: int = LISTEN_BACKLOG, fallback_to_any_port: bool = False):
    """A non-blocking listening TCP socket (a _socket.socket); OSError when it cannot
    bind. dual_stack: an IPv6 socket takes IPv4 too. With fallback_to_any_port, a port
    in use (another client on this host) is replaced by one the kernel picks."""
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if dual_stack and family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((address, port))
        except OSError as e:
            if not (fallback_to_any_port and e.errno == errno.EADDRINUSE):
                raise
            sock.bind((address, 0))
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def retry_pauses():
    """The pauses between connections refused by a server not up yet: from at once,
    doubling to CONNECT_RETRY_CAP (a node joins at most that long after it listens)."""
    pause = defaults.CONNECT_RETRY_FIRST
    while True:
        yield pause
        pause = min(2 * pause, defaults.CONNECT_RETRY_CAP)


class Unreachable(Exception):
    """A connection that could not be made, in one line; `refused` when the peer said no."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def resolve_failure(what: str, host: str, error: OSError) -> Unreachable:
    return Unreachable(f"cannot resolve {what} {host!r}: {error.strerror}")


def connect_failure(what: str, host: str, port: int, error: "OSError | None") -> Unreachable:
    from kadeploy.core.addresses import format_hostport
    reason = os.strerror(error.errno) if error is not None and error.errno else str(error)
    return Unreachable(f"cannot connect to {what} at {format_hostport(host, port)}: {reason}",
                       refused=isinstance(error, ConnectionRefusedError))


def timed_out(timeout: float) -> OSError:
    return TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout:g} s")


def connect(host: str, port: int, timeout: float, what: str = "server", on_refused=None):
    """A connected blocking _socket.socket to the server, retrying a refusal until
    `timeout` has passed, as kadeploy.control.netio.connect does; Unreachable if not.
    `on_refused` is called once, at the first refusal: there is time to spare."""
    deadline = time.monotonic() + timeout
    pauses = retry_pauses()
    while True:
        try:
            return _connect_once(host, port, timeout, what)
        except Unreachable as e:
            if not (e.refused and time.monotonic() < deadline):
                raise
        if on_refused is not None:
            on_refused()
            on_refused = None
        time.sleep(next(pauses))


def _connect_once(host: str, port: int, timeout: float, what: str):
    try:   # an ASCII name as bytes: a str goes through the idna codec (3 ms to import)
        name = host.encode() if host.isascii() else host
        infos = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)
    except _socket.gaierror as e:
        raise resolve_failure(what, host, e) from None
    last = None
    for family, type_, proto, _, addr in infos:
        sock = _socket.socket(family, type_, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        except TimeoutError:
            sock.close()
            last = timed_out(timeout)
        except OSError as e:
            sock.close()
            last = e
    raise connect_failure(what, host, port, last)


# ------------------------------------------------------------ the registration

# What the node imports next (kadeploy.control.early_client, then its data path once
# placed): loaded beside the connection's retries when the server is not up yet (a
# node booted before it), so that it is ready by the Hello.
PRELOAD = ("kadeploy.control.early_client", "kadeploy.data.node", "kadeploy.data.datalink")
_preloading = None


def preload() -> None:
    """Import PRELOAD in a thread, while the main one keeps trying the server."""
    global _preloading
    import threading

    def load() -> None:
        import importlib
        try:
            for name in PRELOAD:
                importlib.import_module(name)
        except BaseException:
            pass   # the main thread's own import raises it again, where it is reported
    _preloading = threading.Thread(target=load, name="kadeploy-preload", daemon=True)
    _preloading.start()


def preloaded() -> None:
    """Wait for preload() to end, if it ran: its imports are the normal path's next step."""
    if _preloading is not None:
        _preloading.join()


def hello_fields(hostname: str, data_port: int, advertise: "str | None", nonce: "str | None" = None):
    """The Hello of a node found by -h (a nonce with a key), as (field, value) in
    protocol order."""
    return (("software", SOFTWARE), ("hostname", hostname), ("data_port", data_port),
            ("session", None), ("advertise", advertise), ("nonce", nonce))


def challenge_fields(body: bytes) -> "tuple[str, str] | None":
    """(nonce, proof) of a Challenge's body as the protocol writes it and by its rules
    (lower-case hex of their lengths); None for any other body, which the normal path
    reads and words."""
    from kadeploy.core import proofs
    head, sep, tail = b'{"nonce":"', b'","proof":"', b'"}'
    if not (body.startswith(head) and body.endswith(tail)) or not body.isascii():
        return None
    nonce, _, proof = body[len(head):len(body) - len(tail)].decode().partition(sep.decode())
    if (len(nonce), len(proof)) != (2 * proofs.NONCE_BYTES, proofs.PROOF_DIGITS) or \
            not set(nonce + proof) <= _LOWER_HEX:
        return None
    return (nonce, proof) if frame.flat_body((("nonce", nonce), ("proof", proof))) == body else None


_LOWER_HEX = frozenset("0123456789abcdef")


class Registered:
    """A client registered before the normal path: its listener, its control
    connection with the Hello sent (or why it could not be made), and with a key the
    server's reply (`reply`, the bytes read) and our Auth (`auth`, when sent)."""

    def __init__(self, params: dict, listener, key: "bytes | None" = None) -> None:
        self.params, self.listener, self.key = params, listener, key
        self.data_port = listener.getsockname()[1]
        self.control = None
        self.failure: "Unreachable | None" = None
        self.reply = bytearray()
        self.auth: "bytes | None" = None
        self.answer_timed_out = False
        nonce = None
        if key is not None:
            from kadeploy.control import auth
            nonce = auth.new_nonce()
        self.hello_fields = hello_fields(_socket.gethostname(), self.data_port, params.get("advertise"), nonce)
        self.hello = frame.flat_frame(HELLO_CODE, self.hello_fields)

    def join(self) -> None:
        p = self.params
        try:
            self.control = connect(p["host"], p.get("control_port", defaults.CONTROL_PORT),
                                   p.get("connect_timeout", defaults.CONNECT_TIMEOUT),
                                   on_refused=preload)
            self.control.sendall(self.hello)
            if self.key is not None:
                self._answer(p.get("handshake_timeout", defaults.HANDSHAKE_TIMEOUT))
        except Unreachable as e:
            self.failure = e
        except _socket.timeout:
            self.answer_timed_out = True   # the normal path says so, as it would have
        except OSError as e:   # the server went away between its accept and our Hello
            self.close_control()
            self.failure = Unreachable(f"registration failed: {e}")   # as the normal path says

    def _answer(self, timeout: float) -> None:
        """Read the server's Challenge, check its proof and send our Auth, as
        kadeploy.core.handshake.Asker does. Any other reply, or a proof that does not
        match, stops here: the normal path reads what is in `reply` and words it."""
        import types   # loaded by the interpreter's own start-up

        from kadeploy.control import auth
        from kadeploy.core import proofs
        from kadeploy.version import PROTOCOL_VERSION
        self.control.settimeout(timeout)
        if not self._read(frame.HEADER_SIZE):
            return
        magic, version, code, length = frame.HEADER.unpack(self.reply)
        if (magic, version, code) != (frame.MAGIC, PROTOCOL_VERSION, CHALLENGE_CODE) or length > CHALLENGE_MAX:
            return
        if not self._read(length):
            return
        fields = challenge_fields(bytes(self.reply[frame.HEADER_SIZE:]))
        if fields is None:
            return
        server_nonce, server_proof = fields
        nonce = dict(self.hello_fields)["nonce"]
        context = auth.hello_context(types.SimpleNamespace(**dict(self.hello_fields)))
        if not proofs.check(proofs.proof(self.key, proofs.CONTROL_ANSWERER, nonce, server_nonce, context),
                            server_proof):
            return                     # never prove ourselves to a server that did not
        ours = proofs.proof(self.key, proofs.CONTROL_ASKER, nonce, server_nonce, context)
        answer = frame.flat_frame(AUTH_CODE, (("proof", ours),))
        self.control.sendall(answer)
        self.auth = answer

    def _read(self, n: int) -> bool:
        """Append n more bytes of the server's to `reply`; False at its end of stream."""
        want = len(self.reply) + n
        while len(self.reply) < want:
            chunk = self.control.recv(want - len(self.reply))
            if not chunk:
                return False
            self.reply += chunk
        return True

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    def close(self) -> None:
        self.close_control()
        self.listener.close()
