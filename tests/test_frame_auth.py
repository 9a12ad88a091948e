"""Authenticated control frames, without sockets: two ends wired back to back, and
whatever a machine on the path could do to the bytes in between."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadeploy.control.auth import new_nonce
from kadeploy.core import handshake as H
from kadeploy.core import protocol as P

KEY = b"k" * 32


def keyed_pair():
    """A client and a server ControlConnection just past a real keyed handshake."""
    client, server = P.ControlConnection(P.CLIENT), P.ControlConnection(P.SERVER)
    asker = H.Asker(KEY, H.CONTROL, new_nonce())
    hello = P.Hello(software="s", hostname="h", data_port=1, nonce=asker.nonce)
    server.receive_data(client.send(hello))
    server.next_event()
    answerer = H.Answerer(KEY, H.CONTROL, hello.nonce, "ctx", new_nonce())
    client.receive_data(server.send(answerer.challenge()))
    auth = asker.react(client.next_event(), "ctx")
    server.receive_data(client.send(auth))
    answerer.verify(server.next_event())
    client.authenticate(*asker.session.for_side(asker=True))
    server.authenticate(*answerer.session.for_side(asker=False))
    return client, server


def frames(server, msgs):
    return [server.send(m) for m in msgs]


def place(**kw):
    base = dict(position=1, depth=1, n_nodes=1, arity=1, parent_host="198.18.0.1", parent_port=30764,
                token="ab" * 16, digest="sha256", chunk_size=4 << 20)
    return P.Place(**(base | kw))


def receive_all(conn, data):
    conn.receive_data(data)
    out = []
    while (m := conn.next_event()) is not None:
        out.append(m)
    return out


def test_keyed_frames_arrive_whole_and_byte_by_byte():
    client, server = keyed_pair()
    welcome, pl, ping = frames(server, [P.Welcome(node_id=1, software="s"), place(), P.Ping()])
    stream = welcome + pl + ping
    assert len(welcome) == len(P.encode(P.Welcome(node_id=1, software="s"))) + P.FrameAuth.TAG_SIZE
    got = []
    for i in range(len(stream)):
        got += receive_all(client, stream[i:i + 1])
    assert [type(m) for m in got] == [P.Welcome, P.Place, P.Ping]
    # And the other way.
    assert isinstance(receive_all(server, client.send(P.Progress(bytes=5)))[0], P.Progress)


def test_a_changed_frame_fails_its_tag():
    client, server = keyed_pair()
    welcome, pl = frames(server, [P.Welcome(node_id=1, software="s"), place()])
    receive_all(client, welcome)
    forged = pl.replace(b'"digest":"sha256"', b'"digest":null    ')
    assert forged != pl and len(forged) == len(pl)
    with pytest.raises(P.RemoteProtocolError, match="control message 1 failed authentication"):
        receive_all(client, forged)


def test_a_dropped_replayed_or_reordered_frame_fails():
    msgs = [P.Welcome(node_id=1, software="s"), place(), P.Ping(), P.Ping()]
    for mangle in (lambda f: f[0] + f[2],            # Place dropped
                   lambda f: f[0] + f[0],            # Welcome replayed
                   lambda f: f[0] + f[2] + f[1]):    # Ping before Place
        client, server = keyed_pair()
        with pytest.raises(P.RemoteProtocolError, match="failed authentication"):
            receive_all(client, mangle(frames(server, msgs)))


def test_a_frame_without_its_tag_is_not_accepted():
    client, server = keyed_pair()
    server.send(P.Welcome(node_id=1, software="s"))   # advance the server's state
    bare = P.encode(P.Welcome(node_id=1, software="s"))
    client.receive_data(bare)
    assert client.next_event() is None          # waits for the tag
    client.receive_data(b"")
    with pytest.raises(P.RemoteProtocolError, match="closed in the middle"):
        client.next_event()


@given(st.integers(0, 10_000), st.integers(0, 255))
def test_any_flipped_byte_is_caught(where, xor):
    client, server = keyed_pair()
    data = bytearray(b"".join(frames(server, [P.Welcome(node_id=1, software="s"), place(), P.Ping()])))
    where %= len(data)
    data[where] ^= xor or 1
    try:
        got = receive_all(client, bytes(data))
        client.receive_data(b"")
        while client.next_event() is not None:
            pass
    except P.ProtocolError:
        return
    raise AssertionError(f"flipped byte {where} went unseen: {got}")
