"""Chunk digests and the verifier, without I/O."""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.core.integrity import (
    ChunkDigester,
    IntegrityError,
    Verifier,
    default_algorithm,
    new_hasher,
)

ALGS = ["sha256", "blake3"]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=10),
       alg=st.sampled_from(ALGS))
def test_digests_do_not_depend_on_how_bytes_arrive(data, cuts, alg):
    whole = ChunkDigester(alg, chunk_size=512)
    whole.update(data)
    pieces = ChunkDigester(alg, chunk_size=512)
    points = sorted({c % (len(data) + 1) for c in cuts})
    for a, b in zip([0] + points, points + [len(data)]):
        pieces.update(data[a:b])
    assert whole.finish() == pieces.finish()
    assert whole.digests == pieces.digests


def test_one_flipped_byte_is_named():
    data = bytearray(os.urandom(10_000))
    server, node = ChunkDigester("sha256", chunk_size=1000), ChunkDigester("sha256", chunk_size=1000)
    v = Verifier(chunk_size=1000)
    for i, d in server.update(bytes(data)):
        v.add_theirs(i, d)
    data[4321] ^= 1
    for i, d in node.update(bytes(data)):
        v.add_ours(i, d)
    assert v.mismatch and "chunk 4 (bytes 4000 to 4999)" in v.mismatch


def test_truncation_is_not_called_corruption_but_fails():
    data = os.urandom(3000)
    server, node = ChunkDigester("sha256", chunk_size=1000), ChunkDigester("sha256", chunk_size=1000)
    v = Verifier(chunk_size=1000)
    for i, d in server.update(data):
        v.add_theirs(i, d)
    _, their_whole = server.finish()
    for i, d in node.update(data[:2500]):
        v.add_ours(i, d)
    _, our_whole = node.finish()
    assert v.mismatch is None
    assert v.final_verdict(node.digests, our_whole, their_whole) is not None


def test_keyed_digests_need_the_key_and_differ():
    a = ChunkDigester("hmac-sha256", key=b"k" * 16, chunk_size=100)
    b = ChunkDigester("hmac-sha256", key=b"j" * 16, chunk_size=100)
    a.update(b"x" * 100)
    b.update(b"x" * 100)
    assert a.digests != b.digests
    with pytest.raises(IntegrityError, match="needs the session key"):
        new_hasher("blake3-keyed", None)
    assert default_algorithm(True).endswith(("keyed", "hmac-sha256"))


def test_whole_digest_covers_length():
    a, b = ChunkDigester("sha256", chunk_size=4), ChunkDigester("sha256", chunk_size=4)
    a.update(b"abcd")
    b.update(b"abcd")
    b.update(b"")
    assert a.finish()[1] == b.finish()[1]
    c = ChunkDigester("sha256", chunk_size=4)
    c.update(b"abcd\0")
    assert c.finish()[1] != a.finish()[1]
