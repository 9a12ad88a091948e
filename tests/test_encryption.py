"""The stream's encryption stage, without sockets: round trips however the bytes are
cut, and whatever a machine on the path does to the ciphertext is named."""
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadeploy.core import encryption as E

KEY = E.stream_key(b"k" * 32, "ab" * 16)
REC = 64   # small records: many of them in a short test


def through(stage, data: bytes, cuts) -> bytes:
    """Feed `data` cut at `cuts` as the pumps do: views of one buffer that the next
    read overwrites (a stage must not keep them)."""
    buf = bytearray(len(data))
    out, last = [], 0

    def feed(piece: bytes) -> None:
        buf[:len(piece)] = piece
        out.append(bytes(stage.update(memoryview(buf)[:len(piece)])))
        buf[:len(piece)] = b"\xff" * len(piece)      # the next read lands here
    for c in sorted(c % (len(data) + 1) for c in cuts):
        feed(data[last:c])
        last = c
    feed(data[last:])
    out.append(stage.finish())
    return b"".join(out)


def encrypt(data: bytes, cuts=(), key=KEY, record=REC) -> bytes:
    return through(E.Encryptor(key, record), data, cuts)


def decrypt(wire: bytes, cuts=(), key=KEY, record=REC) -> bytes:
    return through(E.Decryptor(key, record), wire, cuts)


@given(st.binary(max_size=5 * REC + 3), st.lists(st.integers(0, 1000), max_size=6),
       st.lists(st.integers(0, 1000), max_size=6))
def test_round_trip_however_the_bytes_are_cut(data, enc_cuts, dec_cuts):
    wire = encrypt(data, enc_cuts)
    assert len(wire) == E.wire_length(len(data), REC)
    assert decrypt(wire, dec_cuts) == data


@pytest.mark.parametrize("n", [0, 1, E.RECORD - 1, E.RECORD, E.RECORD + 1, 3 * E.RECORD])
def test_real_record_size(n):
    data = os.urandom(n)
    wire = encrypt(data, record=E.RECORD)
    assert len(wire) == E.wire_length(n)
    assert decrypt(wire, cuts=[1, E.WIRE_RECORD, E.WIRE_RECORD + 7], record=E.RECORD) == data


def test_the_plaintext_is_not_on_the_wire():
    marker = b"kadeploy-marker-ShouldNeverBeSeen"
    wire = encrypt(marker * 100)
    assert marker not in wire and marker[:8] not in wire


@given(st.binary(min_size=1, max_size=4 * REC), st.integers(0, 10_000), st.integers(1, 255))
def test_any_changed_byte_names_its_chunk(data, where, xor):
    wire = bytearray(encrypt(data))
    where %= len(wire)
    wire[where] ^= xor
    with pytest.raises(E.StreamCorrupted, match=rf"corrupted data: chunk {where // (REC + E.TAG)} "):
        decrypt(bytes(wire))


def records(wire):
    w = REC + E.TAG
    return [wire[i:i + w] for i in range(0, len(wire), w)]


@pytest.mark.parametrize("mangle", [
    lambda r: r[:-1],                     # cut at a record boundary: no last record
    lambda r: r[:1] + r[2:],              # a record dropped
    lambda r: [r[1], r[0]] + r[2:],       # two records swapped
    lambda r: r[:1] + r,                  # a record replayed
    lambda r: r + r[-1:],                 # the last record twice
], ids=["cut", "drop", "swap", "replay", "after-the-end"])
def test_records_cut_dropped_swapped_or_replayed_fail(mangle):
    wire = encrypt(os.urandom(4 * REC + 10))
    with pytest.raises(E.StreamCorrupted, match="corrupted data|stream cut"):
        decrypt(b"".join(mangle(records(wire))))


def test_a_stream_cut_inside_a_record():
    wire = encrypt(os.urandom(2 * REC))
    with pytest.raises(E.StreamCorrupted):
        decrypt(wire[:-5])
    with pytest.raises(E.StreamCorrupted, match="last record is missing"):
        decrypt(b"\x00" * 5)


def test_keys_differ_by_key_and_deployment():
    assert E.stream_key(b"k" * 32, "ab" * 16) != E.stream_key(b"k" * 32, "cd" * 16)
    assert E.stream_key(b"k" * 32, "ab" * 16) != E.stream_key(b"j" * 32, "ab" * 16)
    wire = encrypt(b"secret" * 50)
    with pytest.raises(E.StreamCorrupted, match="chunk 0"):
        decrypt(wire, key=E.stream_key(b"j" * 32, "ab" * 16))

