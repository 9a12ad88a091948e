"""The control protocol, without I/O.

Rules of this file:
- A frame is an 8-byte header and a JSON body: magic ``b"KD"``, protocol version (u8),
  message type (u8), body length (u32, big-endian), then the body, a JSON object.
  The header layout never changes between versions, so a peer of another version is
  always recognised and named, not taken for garbage.
- A body is at most MAX_BODY bytes; a longer one is refused before it is buffered.
- Each message type has a fixed set of typed fields; anything else is a protocol error.
  Each value must also make sense for its field (kadeploy.core.fields: ports, counts,
  chunk sizes, algorithm names, ...), or the message is refused.
- The legal order of messages is the table TRANSITIONS: (state, sender, message type)
  -> next state. An illegal message is a lookup miss, raised as LocalProtocolError
  (we tried to send it) or RemoteProtocolError (the peer sent it).
- A Refuse may be sent by either side in any state; it ends the connection.
- With a key, every frame after the handshake (after the asker's Auth) carries a
  FrameAuth tag: HMAC-SHA256 over its direction's sequence number, header and body,
  keyed by that direction's session key (kadeploy.core.handshake). A frame changed,
  dropped, replayed or reordered in transit fails its tag, and the connection ends.
- Image bytes never pass through here: the data connection carries one DataHello
  and DataWelcome, then raw stream bytes handed to the relay.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Dict, List, Optional, Tuple, Type

from kadeploy.core import fields as fields_mod
from kadeploy.core import frame
from kadeploy.core.frame import HEADER, HEADER_SIZE, MAGIC
from kadeploy.core.states import Word
from kadeploy.defaults import STALL_TIMEOUT
from kadeploy.version import PROTOCOL_VERSION

MAX_BODY = 64 * 1024


class ProtocolError(Exception):
    """A broken rule of the protocol; the message is one line fit for a user."""


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol, speaks another version, or is not kadeploy."""


# ---------------------------------------------------------------- messages

# The messages' __eq__ and __repr__ are Message's, written once: dataclass would
# generate (exec) both for each of the 20 types, and every process imports this module
# on its way to the first byte (bench/import_cost.py: 0.55-0.63 x the import time).
_message = dataclass(eq=False, repr=False)


@_message
class Message:
    CODE = 0
    __hash__ = None     # compared by value, as dataclass's eq would make them

    def to_dict(self) -> dict:
        return asdict(self)

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({shown})"


@_message
class Hello(Message):
    """Client -> server: register as a node of the session."""
    CODE = 1
    software: str
    hostname: str
    data_port: int
    session: Optional[str] = None
    # Address the node's children should connect to; None: the address the server
    # sees this connection come from.
    advertise: Optional[str] = None
    # Present when the client has a key: its half of the challenge-response.
    nonce: Optional[str] = None


@_message
class Go(Message):
    """Client -> server: start now with the nodes registered so far (ka-d-client -g)."""
    CODE = 2
    software: str
    session: Optional[str] = None
    nonce: Optional[str] = None


@_message
class Welcome(Message):
    CODE = 3
    node_id: int
    software: str


@_message
class Refuse(Message):
    """Either side, then close: why the connection is not wanted."""
    CODE = 4
    reason: str


@_message
class GoAck(Message):
    CODE = 5
    started: bool
    nodes: int
    message: str


@_message
class Place(Message):
    """Server -> client: the node's place in the tree, sent once the tree is built."""
    CODE = 6
    position: int          # 1-based index in the deployment order; the server is 0
    depth: int
    n_nodes: int
    arity: int
    parent_host: str       # the server's data address for the first level
    parent_port: int
    children: List[int] = field(default_factory=list)   # node ids expected to connect
    token: str = ""        # secret of this deployment, proves membership on data links
    digest: Optional[str] = None   # digest algorithm of the chunks; None: not verified
    chunk_size: int = 4 << 20      # kadeploy.core.integrity.CHUNK_SIZE
    stall_timeout: float = STALL_TIMEOUT   # silence after which either side gives the other up
    install: Optional[str] = None  # JSON: the install manifest and this node's values
    codec: Optional[str] = None    # how the wire bytes decode (kadeploy.data.codec); None: as they are
    encrypt: Optional[str] = None  # the stream's cipher (kadeploy.core.encryption); None: clear
    window: int = 0                # bytes of repair window to keep, to serve adopted children


@_message
class Progress(Message):
    CODE = 7
    bytes: int


@_message
class End(Message):
    """Server -> client: the producer finished; what a complete stream is."""
    CODE = 8
    bytes: int
    ok: bool
    error: Optional[str] = None
    digest: Optional[str] = None   # of the whole stream, after every chunk's Digest
    content_bytes: Optional[int] = None   # what each consumer must get, when the stream is encoded


@_message
class Done(Message):
    """Client -> server: the node's completion report."""
    CODE = 9
    ok: bool
    bytes: int
    seconds: float
    consumer_status: Optional[int] = None
    error: Optional[str] = None
    backend: str = ""
    verified: Optional[bool] = None   # None: the stream carried no digests
    repairs: int = 0                  # times this node was re-attached
    install: Optional[str] = None     # JSON: the install's steps (kadeploy.install.status)
    content_bytes: Optional[int] = None   # what the consumer got, when the stream was encoded
    decode_seconds: Optional[float] = None   # time this node spent decoding it


@_message
class Finish(Message):
    """Server -> client: release a client waiting with -w."""
    CODE = 10


@_message
class Abort(Message):
    CODE = 11
    reason: str


@_message
class DataHello(Message):
    """Child -> parent, first frame on a data connection."""
    CODE = 12
    node_id: int
    nonce: str
    offset: int = 0        # where the stream resumes, for a re-attached node


@_message
class DataWelcome(Message):
    """Parent -> child: accepted; raw stream bytes follow this frame."""
    CODE = 13


@_message
class Challenge(Message):
    """The answerer's nonce and its proof that it knows the key (see kadeploy.control.auth)."""
    CODE = 14
    nonce: str
    proof: str


@_message
class Auth(Message):
    """The asker's proof, over both nonces."""
    CODE = 15
    proof: str


@_message
class Digest(Message):
    """Server -> client: the digest of one chunk of the stream."""
    CODE = 16
    index: int
    digest: str


@_message
class Ping(Message):
    """Server -> client, every second: the server is alive."""
    CODE = 17


@_message
class Reattach(Message):
    """Server -> client: your parent is gone; resume from this parent at your offset."""
    CODE = 18
    host: str
    port: int
    reason: str = ""


@_message
class DropChild(Message):
    """Server -> client: stop feeding this child (it is gone)."""
    CODE = 19
    node_id: int


@_message
class Adopt(Message):
    """Server -> client: a lost node's child will connect to you; feed it from your
    repair window, from the offset it asks for."""
    CODE = 20
    node_id: int


MESSAGE_TYPES: Dict[int, Type[Message]] = {
    cls.CODE: cls for cls in (Hello, Go, Welcome, Refuse, GoAck, Place, Progress, End,
                              Done, Finish, Abort, DataHello, DataWelcome, Challenge, Auth,
                              Digest, Ping, Reattach, DropChild, Adopt)
}

# JSON has one number type; these say which Python types a field accepts.
_ACCEPT = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _field_types(cls: Type[Message]) -> Dict[str, tuple]:
    """field name -> (accepted types, may be null, required, list item type)."""
    spec = {}
    hints = {"int": int, "float": float, "str": str, "bool": bool}
    for f in fields(cls):
        t = str(f.type)
        optional = t.startswith("Optional[")
        base = t[len("Optional["):-1] if optional else t
        required = f.default is MISSING and f.default_factory is MISSING
        if base.startswith("List["):
            spec[f.name] = ((list,), optional, required, hints[base[5:-1]])
        else:
            spec[f.name] = (_ACCEPT[hints[base]], optional, required, None)
    return spec


_SPECS = {code: _field_types(cls) for code, cls in MESSAGE_TYPES.items()}


def _build(code: int, body: dict) -> Message:
    cls = MESSAGE_TYPES[code]
    spec = _SPECS[code]
    unknown = set(body) - set(spec)
    if unknown:
        raise RemoteProtocolError(f"{cls.__name__} has unknown fields: {', '.join(sorted(unknown))}")
    for name, (accept, optional, required, item) in spec.items():
        if name not in body:
            if required:
                raise RemoteProtocolError(f"{cls.__name__} lacks field {name!r}")
            continue
        value = body[name]
        if value is None and optional:
            continue
        # bool is an int in Python; do not let True pass for a byte count.
        if not isinstance(value, accept) or (isinstance(value, bool) and bool not in accept):
            raise RemoteProtocolError(f"{cls.__name__}.{name} has the wrong type")
        if item is not None and not all(isinstance(v, _ACCEPT[item]) and not isinstance(v, bool)
                                        for v in value):
            raise RemoteProtocolError(f"{cls.__name__}.{name} has items of the wrong type")
    msg = cls(**body)
    wrong = fields_mod.problem(msg)
    if wrong:
        raise RemoteProtocolError(wrong)
    return msg


# ----------------------------------------------------------------- framing

def encode(msg: Message) -> bytes:
    wrong = fields_mod.problem(msg)
    if wrong:   # the same rules as the receiver's: we would be refused anyway
        raise LocalProtocolError(f"about to send a bad message: {wrong}")
    body = json.dumps(msg.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"{type(msg).__name__} is {len(body)} bytes, over the {MAX_BODY} limit")
    return frame.header(msg.CODE, len(body)) + body


def parse_header(header: bytes) -> Tuple[int, int]:
    """Check a frame header; return (message code, body length)."""
    magic, version, code, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise RemoteProtocolError(
            "peer does not speak the kadeploy protocol (an original Ka-deploy, or not kadeploy at all)")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"peer speaks kadeploy protocol version {version}, this is version {PROTOCOL_VERSION}: "
            "run the same kadeploy release on server and clients")
    if code not in MESSAGE_TYPES:
        raise RemoteProtocolError(f"unknown message type {code}")
    if length > MAX_BODY:
        raise RemoteProtocolError(f"message of {length} bytes is over the {MAX_BODY}-byte limit")
    return code, length


def parse_body(code: int, body: bytes) -> Message:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RemoteProtocolError("message body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message body is not a JSON object")
    return _build(code, obj)


class FrameAuth:
    """The tags of the frames after a keyed handshake, one sequence per direction.

    The sequence number is not sent: each side counts, so a frame dropped, replayed
    or reordered is checked against the wrong number and fails like a changed one."""

    TAG_SIZE = 32

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send_key, self._recv_key = send_key, recv_key
        self.sent = 0
        self.received = 0

    @staticmethod
    def _tag(key: bytes, seq: int, frame: bytes) -> bytes:
        return hmac.new(key, seq.to_bytes(8, "big") + frame, hashlib.sha256).digest()

    def seal(self, frame: bytes) -> bytes:
        tag = self._tag(self._send_key, self.sent, frame)
        self.sent += 1
        return frame + tag

    def check(self, frame: bytes, tag: bytes) -> None:
        if not hmac.compare_digest(self._tag(self._recv_key, self.received, frame), tag):
            raise RemoteProtocolError(
                f"control message {self.received} failed authentication: changed, dropped, "
                "replayed or reordered on the way")
        self.received += 1


class FrameReader:
    """Bytes in, messages out; framing does not depend on how the bytes arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._closed = False
        self.auth: Optional[FrameAuth] = None   # set after a keyed handshake

    def feed(self, data: bytes) -> None:
        if self._closed and data:
            raise LocalProtocolError("data fed after EOF")
        if not data:
            self._closed = True
        self._buf += data

    def next_message(self) -> Optional[Message]:
        """The next whole message, or None when more bytes are needed."""
        if len(self._buf) < HEADER_SIZE:
            # Check the magic as soon as it is there: garbage is refused early.
            if len(self._buf) >= 2 and bytes(self._buf[:2]) != MAGIC:
                parse_header(bytes(self._buf[:2]) + bytes(HEADER_SIZE - 2))
            if self._closed and self._buf:
                raise RemoteProtocolError("connection closed in the middle of a message")
            return None
        code, length = parse_header(bytes(self._buf[:HEADER_SIZE]))
        end = HEADER_SIZE + length
        whole = end + (FrameAuth.TAG_SIZE if self.auth is not None else 0)
        if len(self._buf) < whole:
            if self._closed:
                raise RemoteProtocolError("connection closed in the middle of a message")
            return None
        frame = bytes(self._buf[:end])
        tag = bytes(self._buf[end:whole])
        del self._buf[:whole]
        if self.auth is not None:
            self.auth.check(frame, tag)   # before the body is even parsed
        return parse_body(code, frame[HEADER_SIZE:])

    @property
    def at_eof(self) -> bool:
        return self._closed and not self._buf


# ----------------------------------------------------------- state machine

class State(Word):
    """States of a control connection, the same on both ends."""
    START = "START"            # nothing said yet
    HELLO_SENT = "HELLO_SENT"  # the client asked to join
    CHALLENGED = "CHALLENGED"  # the server proved it knows the key; the client must too
    AUTHENTICATED = "AUTHENTICATED"
    GO_SENT = "GO_SENT"        # the client asked the server to start now
    GO_CHALLENGED = "GO_CHALLENGED"
    GO_AUTHENTICATED = "GO_AUTHENTICATED"
    REGISTERED = "REGISTERED"  # welcomed; waiting for the tree
    PLACED = "PLACED"          # knows its place; data flows
    ENDED = "ENDED"            # the server said how long the stream was
    REPORTED = "REPORTED"      # the client sent its completion report
    FINISHED = "FINISHED"      # released (-w); nothing more to say
    CLOSED = "CLOSED"          # refused, aborted or done with


CLIENT, SERVER = "client", "server"

TRANSITIONS: Dict[Tuple[State, str, Type[Message]], State] = {
    (State.START, CLIENT, Hello): State.HELLO_SENT,
    (State.START, CLIENT, Go): State.GO_SENT,
    (State.GO_SENT, SERVER, GoAck): State.CLOSED,
    # With a key, a challenge-response comes between the request and its answer.
    (State.GO_SENT, SERVER, Challenge): State.GO_CHALLENGED,
    (State.GO_CHALLENGED, CLIENT, Auth): State.GO_AUTHENTICATED,
    (State.GO_AUTHENTICATED, SERVER, GoAck): State.CLOSED,
    (State.HELLO_SENT, SERVER, Welcome): State.REGISTERED,
    (State.HELLO_SENT, SERVER, Challenge): State.CHALLENGED,
    (State.CHALLENGED, CLIENT, Auth): State.AUTHENTICATED,
    (State.AUTHENTICATED, SERVER, Welcome): State.REGISTERED,
    (State.REGISTERED, SERVER, Place): State.PLACED,
    (State.REGISTERED, SERVER, Abort): State.CLOSED,
    (State.REGISTERED, SERVER, Ping): State.REGISTERED,
    (State.PLACED, CLIENT, Progress): State.PLACED,
    (State.PLACED, SERVER, Digest): State.PLACED,
    (State.PLACED, SERVER, Ping): State.PLACED,
    (State.PLACED, SERVER, Reattach): State.PLACED,
    (State.PLACED, SERVER, DropChild): State.PLACED,
    (State.PLACED, SERVER, Adopt): State.PLACED,
    (State.ENDED, SERVER, Adopt): State.ENDED,
    (State.ENDED, SERVER, Ping): State.ENDED,
    (State.ENDED, SERVER, Reattach): State.ENDED,
    (State.ENDED, SERVER, DropChild): State.ENDED,
    (State.PLACED, SERVER, End): State.ENDED,
    (State.PLACED, CLIENT, Done): State.REPORTED,
    (State.PLACED, SERVER, Abort): State.CLOSED,
    (State.ENDED, CLIENT, Progress): State.ENDED,
    (State.ENDED, CLIENT, Done): State.REPORTED,
    (State.ENDED, SERVER, Abort): State.CLOSED,
    # A node that failed early reports before the server's End reaches it.
    (State.REPORTED, SERVER, End): State.REPORTED,
    (State.REPORTED, SERVER, Digest): State.REPORTED,
    (State.REPORTED, SERVER, Ping): State.REPORTED,
    (State.REPORTED, SERVER, Reattach): State.REPORTED,
    (State.REPORTED, SERVER, DropChild): State.REPORTED,
    (State.REPORTED, SERVER, Finish): State.FINISHED,
    (State.REPORTED, SERVER, Abort): State.CLOSED,
}


class ControlConnection:
    """One end of a control connection: feed bytes, get messages; send messages, get bytes."""

    def __init__(self, our_role: str) -> None:
        if our_role not in (CLIENT, SERVER):
            raise ValueError(our_role)
        self.our_role = our_role
        self.their_role = SERVER if our_role == CLIENT else CLIENT
        self.state = State.START
        self._reader = FrameReader()
        self._auth: Optional[FrameAuth] = None

    def _advance(self, sender: str, msg: Message, error: Type[ProtocolError]) -> None:
        if isinstance(msg, Refuse) and self.state != State.CLOSED:
            self.state = State.CLOSED  # either side may refuse at any point, then closes
            return
        key = (self.state, sender, type(msg))
        if key not in TRANSITIONS:
            raise error(f"{sender} may not send {type(msg).__name__} in state {self.state}")
        self.state = TRANSITIONS[key]

    def authenticate(self, send_key: bytes, recv_key: bytes) -> None:
        """From now on every frame either way carries a FrameAuth tag."""
        self._auth = self._reader.auth = FrameAuth(send_key, recv_key)

    @property
    def authenticated(self) -> bool:
        return self._auth is not None

    def send(self, msg: Message) -> bytes:
        self._advance(self.our_role, msg, LocalProtocolError)
        frame = encode(msg)
        return self._auth.seal(frame) if self._auth is not None else frame

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; b"" means the peer closed."""
        self._reader.feed(data)

    def next_event(self) -> Optional[Message]:
        msg = self._reader.next_message()
        if msg is not None:
            self._advance(self.their_role, msg, RemoteProtocolError)
        return msg

    @property
    def peer_closed(self) -> bool:
        return self._reader.at_eof


# Data connections carry a fixed handshake before raw bytes: DataHello, Challenge,
# Auth, DataWelcome (see kadeploy.data.datalink); checked in order with expect().
def expect(msg: Message, *types: Type[Message]) -> Message:
    if not isinstance(msg, types):
        names = " or ".join(t.__name__ for t in types)
        raise RemoteProtocolError(f"expected {names}, got {type(msg).__name__}")
    return msg

