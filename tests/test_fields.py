"""Every field of every message is checked against its meaning, without sockets."""
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import BY_TYPE, valid_messages

from kadeploy.core import fields as F
from kadeploy.core import protocol as P

PLACE = P.Place(position=2, depth=2, n_nodes=3, arity=1, parent_host="198.18.0.2", parent_port=30764,
                children=[3], token="ab" * 16, digest="sha256")
SAMPLES = {
    P.Hello: P.Hello(software="kadeploy", hostname="n1", data_port=30764, nonce="ab" * 16),
    P.Place: PLACE,
    P.Progress: P.Progress(bytes=5),
    P.End: P.End(bytes=5, ok=True, digest="cd" * 32),
    P.Done: P.Done(ok=True, bytes=5, seconds=1.0, consumer_status=0),
    P.DataHello: P.DataHello(node_id=3, nonce="ab" * 16, offset=0),
    P.Challenge: P.Challenge(nonce="ab" * 16, proof="cd" * 32),
    P.Digest: P.Digest(index=0, digest="cd" * 32),
    P.Reattach: P.Reattach(host="198.18.0.1", port=30764),
    P.DropChild: P.DropChild(node_id=4),
    P.Welcome: P.Welcome(node_id=1, software="kadeploy"),
}

BAD = [
    (P.Place, "chunk_size", 0), (P.Place, "chunk_size", 1 << 40), (P.Place, "digest", "md5"),
    (P.Place, "parent_port", 0), (P.Place, "parent_port", 65536), (P.Place, "position", 0),
    (P.Place, "stall_timeout", 0.0), (P.Place, "stall_timeout", math.inf), (P.Place, "token", "t"),
    (P.Place, "parent_host", ""), (P.Place, "children", [0]),
    (P.Hello, "data_port", 0), (P.Hello, "data_port", 70000), (P.Hello, "hostname", "a\nb"),
    (P.Hello, "nonce", "ab"), (P.Hello, "advertise", "a b"), (P.Hello, "software", ""),
    (P.Progress, "bytes", -1), (P.Progress, "bytes", 1 << 64),
    (P.End, "bytes", -5), (P.End, "digest", "zz"),
    (P.Done, "seconds", -1.0), (P.Done, "seconds", math.nan), (P.Done, "repairs", -1),
    (P.DataHello, "offset", -1), (P.DataHello, "node_id", 0),
    (P.Challenge, "nonce", "AB" * 16), (P.Challenge, "proof", ""),
    (P.Digest, "index", -1), (P.Digest, "digest", "cd" * 31),
    (P.Reattach, "port", 0), (P.Reattach, "host", ""), (P.DropChild, "node_id", 0),
    (P.Welcome, "node_id", 0), (P.Place, "codec", "gzip"), (P.Place, "window", -1),
    (P.End, "content_bytes", -1), (P.Done, "decode_seconds", -0.5),
]


def body_with(cls, field, value) -> bytes:
    d = SAMPLES[cls].to_dict()
    d[field] = value
    return json.dumps(d).encode()


@pytest.mark.parametrize("cls,field,value", BAD, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_each_bad_value_is_refused_naming_the_field(cls, field, value):
    with pytest.raises(P.RemoteProtocolError, match=rf"^{cls.__name__}\.{field} "):
        P.parse_body(cls.CODE, body_with(cls, field, value))
    # Nor can we send it: the same rules hold on both sides.
    with pytest.raises(P.LocalProtocolError, match=rf"{cls.__name__}\.{field} "):
        P.encode(cls(**(SAMPLES[cls].to_dict() | {field: value})))


def test_samples_are_valid():
    for cls, msg in SAMPLES.items():
        assert P.parse_body(cls.CODE, P.encode(msg)[P.HEADER_SIZE:]) == msg


@pytest.mark.parametrize("change,fragment", [
    ({"position": 4}, "beyond the 3 node(s)"),
    ({"depth": 3}, "deeper than position 2"),
    ({"children": [3, 4]}, "2 children for arity 1"),
    ({"arity": 2, "children": [3, 3]}, "or one twice"),
])
def test_a_place_must_be_consistent(change, fragment):
    d = PLACE.to_dict() | change
    with pytest.raises(P.RemoteProtocolError, match=re.escape(fragment)):
        P.parse_body(P.Place.CODE, json.dumps(d).encode())


def test_every_field_has_a_rule_or_needs_none():
    """A new field must be given a rule (booleans and messages without fields need none)."""
    from dataclasses import fields
    for cls in P.MESSAGE_TYPES.values():
        for f in fields(cls):
            if f.type in ("bool", "Optional[bool]"):
                continue
            assert f.name in F.RULES.get(cls.__name__, {}), f"{cls.__name__}.{f.name} has no rule"


@given(valid_messages)
def test_valid_messages_round_trip(msg):
    assert P.parse_body(msg.CODE, P.encode(msg)[P.HEADER_SIZE:]) == msg


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)


@given(st.sampled_from(sorted(BY_TYPE, key=lambda c: c.CODE)).flatmap(
    lambda cls: st.tuples(BY_TYPE[cls], st.text(max_size=12), json_values)))
def test_any_field_changed_to_anything_is_refused_or_still_valid(case):
    """Fields of valid messages overwritten by any JSON value: the parser either
    refuses with a protocol error or returns a message that obeys every rule."""
    msg, name, value = case
    d = msg.to_dict()
    if d:
        name = sorted(d)[sum(map(ord, name)) % len(d)]
    d[name] = value
    try:
        got = P.parse_body(msg.CODE, json.dumps(d).encode())
    except P.RemoteProtocolError:
        return
    assert F.problem(got) is None
