"""Hypothesis strategies for control messages that obey every field rule
(kadeploy.core.fields), and for ways to break one rule of a valid message."""
from hypothesis import strategies as st

from kadeploy.core import fields as F
from kadeploy.core import protocol as P
from kadeploy.core.integrity import ALGORITHMS, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

line = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs", "Co", "Cn"),
                             whitelist_characters=" "), max_size=40)
name = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-:", min_size=1, max_size=40)
software = line.filter(bool)
hexs = lambda n: st.text("0123456789abcdef", min_size=n, max_size=n)  # noqa: E731
count = st.integers(0, F.MAX_INT)
node_id = st.integers(1, F.MAX_INT)
port = st.integers(1, 65535)


@st.composite
def places(draw):
    n = draw(st.integers(1, 10**6))
    position = draw(st.integers(1, n))
    arity = draw(st.integers(1, 1000))
    children = draw(st.lists(st.integers(1, 10**6), max_size=min(arity, 50), unique=True))
    return P.Place(position=position, depth=draw(st.integers(1, position)), n_nodes=n, arity=arity,
                   parent_host=draw(name), parent_port=draw(port), children=children,
                   token=draw(hexs(32)), digest=draw(st.none() | st.sampled_from(ALGORITHMS)),
                   chunk_size=draw(st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)),
                   stall_timeout=draw(st.floats(0.05, 3600)),
                   codec=draw(st.none() | st.sampled_from(F.CODECS)), window=draw(count))


BY_TYPE = {
    P.Hello: st.builds(P.Hello, software=software, hostname=line, data_port=port,
                       session=st.none() | line.filter(bool), advertise=st.none() | name,
                       nonce=st.none() | hexs(32)),
    P.Go: st.builds(P.Go, software=software, session=st.none() | line.filter(bool),
                    nonce=st.none() | hexs(32)),
    P.Welcome: st.builds(P.Welcome, node_id=node_id, software=software),
    P.Refuse: st.builds(P.Refuse, reason=line),
    P.GoAck: st.builds(P.GoAck, started=st.booleans(), nodes=st.integers(0, F.MAX_NODES), message=line),
    P.Place: places(),
    P.Progress: st.builds(P.Progress, bytes=count),
    P.End: st.builds(P.End, bytes=count, ok=st.booleans(), error=st.none() | line,
                     digest=st.none() | hexs(64), content_bytes=st.none() | count),
    P.Done: st.builds(P.Done, ok=st.booleans(), bytes=count, seconds=st.floats(0, 1e6),
                      consumer_status=st.none() | st.integers(-255, 255), error=st.none() | line,
                      backend=line, verified=st.none() | st.booleans(), repairs=count,
                      content_bytes=st.none() | count, decode_seconds=st.none() | st.floats(0, 1e6)),
    P.Finish: st.builds(P.Finish),
    P.Abort: st.builds(P.Abort, reason=line),
    P.DataHello: st.builds(P.DataHello, node_id=node_id, nonce=hexs(32), offset=count),
    P.DataWelcome: st.builds(P.DataWelcome),
    P.Challenge: st.builds(P.Challenge, nonce=hexs(32), proof=hexs(64)),
    P.Auth: st.builds(P.Auth, proof=hexs(64)),
    P.Digest: st.builds(P.Digest, index=count, digest=hexs(64)),
    P.Ping: st.builds(P.Ping),
    P.Reattach: st.builds(P.Reattach, host=name, port=port, reason=line),
    P.DropChild: st.builds(P.DropChild, node_id=node_id),
    P.Adopt: st.builds(P.Adopt, node_id=node_id),
}
assert set(BY_TYPE) == set(P.MESSAGE_TYPES.values())
valid_messages = st.one_of(*BY_TYPE.values())

# A value each rule refuses, by the kind of rule (see kadeploy.core.fields).
BAD = {
    "port": [0, 65536, -1], "count": [-1, 1 << 63], "node_id": [0, -5],
    "hex": ["", "XYZ", "ab"], "text": ["two\nlines", "x" * 5000], "host": ["", "a b", "x\ty"],
    "chunk_size": [0, 1, MAX_CHUNK_SIZE + 1], "digest": ["md5", "SHA256", ""],
    "stall_timeout": [0.0, -1.0, float("inf"), float("nan")],
}
