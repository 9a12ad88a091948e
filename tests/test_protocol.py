"""The control protocol without sockets: framing, the transition table, refusals."""
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.core import protocol as P
from strategies import valid_messages

HELLO = P.Hello(software="kadeploy test", hostname="node1", data_port=30764, session="s1")
CONVERSATION = [  # (sender, message): a whole deployment of one node, in order
    (P.CLIENT, HELLO),
    (P.SERVER, P.Welcome(node_id=7, software="kadeploy test")),
    (P.SERVER, P.Place(position=1, depth=1, n_nodes=3, arity=1, parent_host="198.18.0.1",
                       parent_port=30764, children=[8], token="ab" * 16)),
    (P.CLIENT, P.Progress(bytes=1 << 40)),
    (P.SERVER, P.End(bytes=1 << 40, ok=True)),
    (P.CLIENT, P.Done(ok=True, bytes=1 << 40, seconds=12.5, consumer_status=0, backend="copy")),
    (P.SERVER, P.Finish()),
]


def pair():
    return {P.CLIENT: P.ControlConnection(P.CLIENT), P.SERVER: P.ControlConnection(P.SERVER)}


def run_conversation(split):
    ends = pair()
    for sender, msg in CONVERSATION:
        receiver = P.SERVER if sender == P.CLIENT else P.CLIENT
        data = ends[sender].send(msg)
        got = []
        for piece in split(data):
            ends[receiver].receive_data(piece)
            while (m := ends[receiver].next_event()) is not None:
                got.append(m)
        assert got == [msg]
        assert ends[sender].state == ends[receiver].state
    return ends


def test_whole_conversation_fed_whole():
    ends = run_conversation(lambda b: [b])
    assert ends[P.CLIENT].state == P.State.FINISHED


def test_whole_conversation_fed_byte_by_byte():
    ends = run_conversation(lambda b: [b[i:i + 1] for i in range(len(b))])
    assert ends[P.SERVER].state == P.State.FINISHED


def test_several_messages_in_one_read():
    s = P.ControlConnection(P.SERVER)
    place = P.Place(position=1, depth=1, n_nodes=1, arity=1, parent_host="h", parent_port=1,
                    token="ab" * 16)
    s.receive_data(P.encode(HELLO) + P.encode(place))
    assert s.next_event() == HELLO
    # A Place sent by the client side is illegal: the second frame is refused.
    with pytest.raises(P.RemoteProtocolError, match="client may not send Place"):
        s.next_event()


@pytest.mark.parametrize("state_msgs,bad", [
    ([], P.Done(ok=True, bytes=0, seconds=0.0)),                  # report before hello
    ([(P.CLIENT, HELLO)], P.Progress(bytes=1)),                     # progress before welcome
    ([(P.CLIENT, HELLO)], HELLO),                                   # hello twice
])
def test_illegal_sends_are_local_errors(state_msgs, bad):
    c = P.ControlConnection(P.CLIENT)
    for _, m in state_msgs:
        c.send(m)
    with pytest.raises(P.LocalProtocolError):
        c.send(bad)


def test_illegal_receive_is_remote_error():
    s = P.ControlConnection(P.SERVER)
    s.receive_data(P.encode(P.Done(ok=True, bytes=0, seconds=0.0)))
    with pytest.raises(P.RemoteProtocolError, match="may not send Done in state START"):
        s.next_event()


def test_every_state_is_reachable_and_can_end():
    graph = {}
    for (state, sender, msg), nxt in P.TRANSITIONS.items():
        assert sender in (P.CLIENT, P.SERVER) and msg in P.MESSAGE_TYPES.values()
        graph.setdefault(state, set()).add(nxt)
    states = set(graph) | {n for ns in graph.values() for n in ns}
    seen, todo = {P.State.START}, [P.State.START]
    while todo:
        for n in graph.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    assert seen == states == set(P.State)   # every state is in the table
    # Every state leads to an end (CLOSED or FINISHED); Refuse closes any of them.
    for s in states - {P.State.CLOSED, P.State.FINISHED}:
        assert graph.get(s), f"{s} is a dead end"


def frame(code, body, version=None, magic=b"KD"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    v = P.PROTOCOL_VERSION if version is None else version
    return struct.pack(">2sBBI", magic, v, code, len(raw)) + raw


@pytest.mark.parametrize("data,message", [
    (frame(1, {"software": "x", "hostname": "h", "data_port": 1}, version=9), "version 9"),
    (b"GET / HTTP/1.1\r\n\r\n", "does not speak the kadeploy protocol"),
    (b"\x00\x00\x00\x05hello", "does not speak the kadeploy protocol"),
    (frame(99, {}), "unknown message type 99"),
    (frame(1, b"{not json"), "not valid JSON"),
    (frame(1, b"[1,2]"), "not a JSON object"),
    (frame(1, {"software": "x", "hostname": "h"}), "lacks field 'data_port'"),
    (frame(1, {"software": "x", "hostname": "h", "data_port": "80"}), "wrong type"),
    (frame(1, {"software": "x", "hostname": "h", "data_port": True}), "wrong type"),
    (frame(1, {"software": "x", "hostname": "h", "data_port": 1, "evil": 1}), "unknown fields"),
    (struct.pack(">2sBBI", b"KD", P.PROTOCOL_VERSION, 1, P.MAX_BODY + 1), "over the"),
])
def test_garbage_and_foreign_versions_are_refused(data, message):
    s = P.ControlConnection(P.SERVER)
    s.receive_data(data)
    with pytest.raises(P.RemoteProtocolError, match=message):
        s.next_event()


def test_oversized_frame_refused_before_the_body_arrives():
    r = P.FrameReader()
    r.feed(struct.pack(">2sBBI", b"KD", P.PROTOCOL_VERSION, 1, 1 << 31))
    with pytest.raises(P.RemoteProtocolError, match="over the"):
        r.next_message()


def test_garbage_refused_after_two_bytes():
    r = P.FrameReader()
    r.feed(b"\x16\x03")  # a TLS handshake
    with pytest.raises(P.RemoteProtocolError):
        r.next_message()


def test_eof_mid_message():
    r = P.FrameReader()
    r.feed(P.encode(HELLO)[:-3])
    assert r.next_message() is None
    r.feed(b"")
    with pytest.raises(P.RemoteProtocolError, match="closed in the middle"):
        r.next_message()


def test_oversized_message_cannot_be_sent():
    with pytest.raises(P.LocalProtocolError, match="over the"):
        P.encode(P.Place(position=1, depth=1, n_nodes=1 << 20, arity=1 << 20, parent_host="h",
                         parent_port=1, children=list(range(1, 20_001)), token="ab" * 16))


def test_list_items_are_typed():
    body = {"position": 1, "depth": 1, "n_nodes": 1, "arity": 1, "parent_host": "h",
            "parent_port": 1, "children": ["1"]}
    with pytest.raises(P.RemoteProtocolError, match="items of the wrong type"):
        P.parse_body(P.Place.CODE, json.dumps(body).encode())


messages = valid_messages


@settings(deadline=None)
@given(msgs=st.lists(messages, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_framing_roundtrip_independent_of_chunking(msgs, cuts):
    data = b"".join(P.encode(m) for m in msgs)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    r = P.FrameReader()
    got = []
    for p in filter(None, pieces):  # b"" means EOF
        r.feed(p)
        while (m := r.next_message()) is not None:
            got.append(m)
    assert got == msgs


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_bytes_raise_only_protocol_errors(data):
    s = P.ControlConnection(P.SERVER)
    s.receive_data(data)
    try:
        while s.next_event() is not None:
            pass
    except P.ProtocolError:
        pass


@pytest.mark.parametrize("n_before", range(len(CONVERSATION)))
def test_refuse_is_legal_in_any_state_and_closes(n_before):
    ends = pair()
    for sender, msg in CONVERSATION[:n_before]:
        other = P.SERVER if sender == P.CLIENT else P.CLIENT
        ends[other].receive_data(ends[sender].send(msg))
        assert ends[other].next_event() == msg
    ends[P.CLIENT].receive_data(ends[P.SERVER].send(P.Refuse(reason="bye")))
    assert ends[P.CLIENT].next_event() == P.Refuse(reason="bye")
    assert ends[P.CLIENT].state == ends[P.SERVER].state == P.State.CLOSED
    with pytest.raises(P.LocalProtocolError):
        ends[P.SERVER].send(P.Finish())


def _any_message():
    return valid_messages


@settings(deadline=None)
@given(script=st.lists(st.tuples(st.sampled_from([P.CLIENT, P.SERVER]), _any_message()), max_size=12))
def test_state_machines_fuzzed_with_message_sequences(script):
    """Any sequence of well-formed messages, from either side: the sender's machine
    refuses the illegal ones locally, the receiver's agrees on every legal one."""
    ends = pair()
    for sender, msg in script:
        receiver = P.SERVER if sender == P.CLIENT else P.CLIENT
        try:
            data = ends[sender].send(msg)
        except P.LocalProtocolError:
            continue
        ends[receiver].receive_data(data)
        assert ends[receiver].next_event() == msg
        assert ends[receiver].state == ends[sender].state


def test_messages_compare_hash_and_print_by_value():
    """Message writes __eq__ and __repr__ once for every type (dataclass's per-type
    ones cost start-up): they behave as dataclass's would."""
    a, b = P.Place(1, 1, 2, 1, "10.0.0.1", 30764), P.Place(1, 1, 2, 1, "10.0.0.1", 30764)
    assert a == b and not a != b and a is not b
    b.children.append(2)
    assert a != b
    assert P.Refuse(reason="x") != P.Abort(reason="x")          # same fields, other type
    assert P.Refuse(reason="x").__eq__("x") is NotImplemented
    with pytest.raises(TypeError):
        hash(P.Refuse(reason="x"))
    assert repr(P.Refuse(reason="no")) == "Refuse(reason='no')"
    assert repr(P.Welcome(node_id=3, software="kadeploy/2")) == "Welcome(node_id=3, software='kadeploy/2')"
    for cls in P.MESSAGE_TYPES.values():
        assert "__eq__" not in vars(cls) and "__repr__" not in vars(cls), cls.__name__
