"""The stream codec (kadeploy.data.codec, kadeploy.data.pump) and whole compressed
deployments on loopback (issue 13, point 5)."""
from __future__ import annotations

import hashlib
import os
import threading
import random

import pytest
from deploy import Deployment, assert_one_line_error, assert_same_tree, load_report, make_targets, tar_producer
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.data import codec
from kadeploy.data.pump import EncodePump, StreamTap, make_pipe

RECORD = codec.RECORD_SIZE


def compressible(n: int, seed: int = 1) -> bytes:
    """Text-like bytes: compress about 3:1, like a root file system's."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghijklmnop ") for _ in range(rnd.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


def encode(data: bytes, pieces, **kw) -> bytes:
    enc = codec.Pipeline(codec.encoder_stages(codec.Spec(codec.ZSTD, 3), **kw))
    out, pos = [], 0
    for size in pieces:
        out.append(enc.update(data[pos:pos + size]))
        pos += size
    out.append(enc.update(data[pos:]))
    out.append(enc.finish())
    return b"".join(out)


def decode(wire: bytes, piece: int) -> bytes:
    dec = codec.Pipeline(codec.decoder_stages(codec.ZSTD))
    out = [dec.update(wire[i:i + piece]) for i in range(0, len(wire), piece)]
    out.append(dec.finish())
    return b"".join(out)


# ------------------------------------------------------------------ --compress

@pytest.mark.parametrize("text,spec", [("none", "none"), ("zstd", "zstd:3"), ("ZSTD:19", "zstd:19"),
                                       ("zstd:1", "zstd:1"), ("auto", "auto")])
def test_compress_values(text, spec):
    assert str(codec.parse_spec(text)) == spec


@pytest.mark.parametrize("text", ["gzip", "zstd:0", "zstd:20", "zstd:x", "zstd:", "zstd:-1"])
def test_bad_compress_values_are_refused(text):
    if text == "zstd:":
        assert str(codec.parse_spec(text)) == "zstd:3"   # an empty level is the default
        return
    with pytest.raises(codec.CodecError):
        codec.parse_spec(text)


# ----------------------------------------------------------------- round trips

@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 3 * RECORD + 17), seed=st.integers(0, 5),
       pieces=st.lists(st.integers(1, RECORD + 3), max_size=5),
       read=st.sampled_from([1, 5, 4096, 1 << 20, 9 << 20]), workers=st.sampled_from([1, 2]))
def test_round_trip_any_cut(size, seed, pieces, read, workers):
    data = compressible(size, seed)
    if read == 1:
        data = data[:20000]       # byte by byte only on a short stream
    wire = encode(data, pieces, workers=workers)
    assert decode(wire, read) == data


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 2 * RECORD + 17), pieces=st.lists(st.integers(1, 300_000), max_size=12),
       read=st.sampled_from([1, 3, 5, 6, 4096, 1 << 20]))
def test_auto_raw_records_of_any_size_round_trip(size, pieces, read):
    """Once auto sends raw, each piece it is given is a record as it comes (any size,
    however the reads cut headers and payloads)."""
    policy = codec.AutoPolicy()
    policy.decision = False
    enc = codec.ZstdEncoder(3, policy=policy)
    data = compressible(size)
    if read < 10:
        data = data[:30000]
    out, pos = [], 0
    for n in pieces + [len(data)]:
        out.append(enc.update(data[pos:pos + n]))
        pos += n
    wire = b"".join(out) + enc.finish()
    assert set(record_kinds(wire)) <= {codec.KIND_RAW}
    assert enc.content == len(data) and enc.wire == len(wire)
    dec = codec.ZstdDecoder()
    assert decode(wire, read) == data
    assert b"".join(dec.update(wire[i:i + read]) for i in range(0, len(wire), read)) + dec.finish() == data
    assert dec.content == len(data) and dec.wire == len(wire)


def test_compressible_data_shrinks_and_random_data_goes_raw():
    text = compressible(2 * RECORD)
    assert len(encode(text, [])) < 0.6 * len(text)
    noise = os.urandom(RECORD + 1000)
    wire = encode(noise, [])
    # Incompressible records go raw: 5 bytes of header per record, nothing more.
    assert len(wire) == len(noise) + 2 * codec.RECORD.size
    assert decode(wire, 1 << 20) == noise


def test_a_cut_stream_is_an_error_not_a_short_copy():
    wire = encode(compressible(RECORD + 100), [])
    for cut in (1, codec.RECORD.size, len(wire) // 2, len(wire) - 1):
        dec = codec.ZstdDecoder()
        dec.update(wire[:cut])
        with pytest.raises(codec.CodecError, match="cut inside a record"):
            dec.finish()


def test_corrupt_records_are_errors():
    wire = bytearray(encode(compressible(RECORD), []))
    bad_header = bytes([0x00]) + bytes(wire[1:])
    with pytest.raises(codec.CodecError, match="not a record header"):
        codec.ZstdDecoder().update(bad_header)
    wire[len(wire) // 2] ^= 0xFF      # inside the zstd frame
    with pytest.raises(codec.CodecError, match="does not decode"):
        codec.ZstdDecoder().update(bytes(wire))


class Xor(codec.Stage):
    """A second stage, to prove stages compose (the AEAD stage joins the same way)."""
    name = "xor"

    def update(self, data) -> bytes:
        return bytes(b ^ 0x5A for b in bytes(data))

    def finish(self) -> bytes:
        return b""


def test_stages_compose_in_order_and_reverse():
    data = compressible(RECORD // 2)
    enc = codec.Pipeline([codec.ZstdEncoder(3), Xor()])
    wire = enc.update(data) + enc.finish()
    assert enc.name == "zstd+xor"
    dec = codec.Pipeline([Xor(), codec.ZstdDecoder()])
    assert dec.update(wire[:1000]) + dec.update(wire[1000:]) + dec.finish() == data


def test_unknown_wire_codec_is_a_clear_error():
    with pytest.raises(codec.CodecError, match="does not know"):
        codec.decoder_stages("lz4")


# ----------------------------------------------------------------------- auto

def test_auto_compresses_on_a_slow_link_only():
    p = codec.AutoPolicy()
    p.sample(100e6, 30e6, 0.25, 0.1)   # ratio 0.3, 400 MB/s compress, 1 GB/s decompress
    assert p.decide(25e6, workers=1) is True          # 200 Mbit/s: link-bound, pays
    assert p.decide(1e9, workers=1) is False          # 8 Gbit/s: compression would be the limit
    assert p.decide(None, workers=1) is False         # the producer was slower than the link
    q = codec.AutoPolicy()
    q.sample(100e6, 99e6, 0.25, 0.1)                  # incompressible
    assert q.decide(25e6, workers=1) is False
    assert "ratio 0.99" in q.why


def record_kinds(wire: bytes):
    kinds, pos = [], 0
    while pos < len(wire):
        kind, length = codec.RECORD.unpack_from(wire, pos)
        kinds.append(kind)
        pos += codec.RECORD.size + length
    return kinds


def test_auto_judges_the_compressed_probe_after_probe_records_measured_from_the_first():
    """The link is measured from the first compressed record handed on (before it the
    compressors had nothing to give), and the probe judged after PROBE records."""
    policy = codec.AutoPolicy()
    calls = []
    enc = codec.ZstdEncoder(3, policy=policy, restart_rate=lambda: calls.append(("restart", enc.sampled)),
                            link_busy=lambda: calls.append(("judged", enc.sampled)) or (1.0, 10e6))
    data = compressible((policy.PROBE + 4) * RECORD)
    wire = b"".join(enc.update(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)) + enc.finish()
    assert calls == [("restart", 1), ("judged", policy.PROBE)]
    assert policy.decision is True
    assert record_kinds(wire) == [codec.KIND_ZSTD] * (policy.PROBE + 4)
    assert decode(wire, 1 << 20) == data


def test_auto_keeps_compressing_when_the_link_is_the_limit_even_compressed():
    """The link was busy all along during the compressed probe: no raw probe, no
    record sent raw (nothing lost to measuring)."""
    policy = codec.AutoPolicy()
    restarts = []
    enc = codec.ZstdEncoder(3, policy=policy, link_busy=lambda: (1.0, 10e6), restart_rate=lambda: restarts.append(1))
    data = compressible((policy.PROBE + 3) * RECORD)
    wire = enc.update(data) + enc.finish()
    assert policy.decision is True and "limit even compressed" in policy.why
    assert record_kinds(wire) == [codec.KIND_ZSTD] * (policy.PROBE + 3)
    assert restarts == [1]            # only the probe's own start
    assert decode(wire, 1 << 20) == data


def probed(share: float, wire_rate: float, *, c: float, d: float = 1e9, ratio: float = 0.4):
    """A policy after a compressed probe that saw these speeds; its decision."""
    p = codec.AutoPolicy()
    p.sample(100e6, ratio * 100e6, 100e6 / c, 100e6 / d)
    return p.decide_compressed((share, wire_rate), workers=1), p.why


def test_auto_reads_the_link_from_its_busy_share_while_compressing():
    """Not the limit while compressing: busy `share` of the time at `wire_rate` puts
    the link at wire_rate / share or a little more. Far enough either way, that
    decides; a near call is left to the raw probe."""
    # 40 MB/s of wire while busy half the time: a link of about 80 MB/s.
    assert probed(0.5, 40e6, c=300e6)[0] is True           # 300 > 1.25 x 1.1 x 80
    assert "link at least 80 MB/s (busy 50% of the time): compressing" in probed(0.5, 40e6, c=300e6)[1]
    assert probed(0.5, 40e6, c=85e6)[0] is False           # compressing is no faster than the link
    assert probed(0.5, 40e6, c=400e6, d=80e6)[0] is False  # nor decompressing
    assert probed(0.5, 40e6, c=100e6)[0] is None           # 1.1 x 80 < 100 < 1.25 x 1.1 x 80: measure
    assert probed(0.5, 40e6, c=300e6, ratio=0.95)[0] is False   # does not compress
    assert probed(0.0, 0.0, c=300e6)[0] is None            # nothing measured: the raw probe


@pytest.mark.parametrize("workers", [1, 2])
def test_auto_probes_the_link_raw_when_the_encoder_was_the_limit(workers):
    """The link was not the limit while compressing and its busy share does not
    decide: the next RAW_PROBE records go raw, measured afresh (restart_rate), and the
    decision follows the formula."""
    policy = codec.AutoPolicy()
    rates = iter([None, (1.0, 10e6)])   # compressed probe: not measured; raw probe: a slow link
    restarts = []
    enc = codec.ZstdEncoder(3, workers=workers, policy=policy, link_busy=lambda: next(rates),
                            restart_rate=lambda: restarts.append(enc.content))
    data = compressible((policy.PROBE + policy.RAW_PROBE + 4) * RECORD)
    wire = b"".join(enc.update(data[i:i + RECORD // 3]) for i in range(0, len(data), RECORD // 3))
    wire += enc.finish()
    assert policy.decision is True and "link 10 MB/s: compressing" in policy.why
    kinds = record_kinds(wire)
    # The probe is judged as its last record goes out: records already with a worker
    # then go compressed too (no loss), before the RAW_PROBE raw ones.
    m = kinds.index(codec.KIND_RAW)
    assert policy.PROBE <= m <= policy.PROBE + workers, kinds
    assert kinds == [codec.KIND_ZSTD] * m + [codec.KIND_RAW] * policy.RAW_PROBE + \
        [codec.KIND_ZSTD] * (len(kinds) - m - policy.RAW_PROBE)
    # Restarted at the probe's first record, then before any raw record.
    assert len(restarts) == 2 and restarts[1] == m * RECORD
    assert decode(wire, 1 << 20) == data


def test_auto_sends_raw_after_the_probes_when_compressing_does_not_pay():
    policy = codec.AutoPolicy()
    enc = codec.ZstdEncoder(3, policy=policy)   # the link was never measured the limit
    data = compressible((policy.PROBE + policy.RAW_PROBE + 2) * RECORD)
    wire = b"".join(enc.update(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)) + enc.finish()
    assert policy.decision is False and "never the limit" in policy.why
    kinds = record_kinds(wire)      # raw after the decision: each 1 MiB piece a record
    assert kinds == [codec.KIND_ZSTD] * policy.PROBE + [codec.KIND_RAW] * (policy.RAW_PROBE + 2 * 4)
    assert decode(wire, 1 << 20) == data


def test_auto_goes_raw_at_once_when_the_busy_share_shows_a_fast_link():
    """A link far faster than the compressors, seen while compressing: no raw probe."""
    policy = codec.AutoPolicy()
    restarts = []
    enc = codec.ZstdEncoder(3, policy=policy, link_busy=lambda: (0.001, 10e6),
                            restart_rate=lambda: restarts.append(enc.content))
    data = compressible((policy.PROBE + 3) * RECORD)
    wire = b"".join(enc.update(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)) + enc.finish()
    assert policy.decision is False and "link at least 10000 MB/s (busy 0% of the time): raw" in policy.why
    assert record_kinds(wire) == [codec.KIND_ZSTD] * policy.PROBE + [codec.KIND_RAW] * 3 * 4
    assert len(restarts) == 2         # the probe's start; the raw epoch's
    assert decode(wire, 1 << 20) == data


def test_auto_revisits_its_decision_as_the_stream_changes():
    """A tree's packages do not compress, its text does: every EPOCH records the
    decision is looked at again (compressing: by the ratio it gets; raw: by a sample
    and the link's rate over the epoch)."""
    policy = codec.AutoPolicy()
    policy.EPOCH = 2
    restarts = []
    enc = codec.ZstdEncoder(3, policy=policy, link_busy=lambda: (1.0, 10e6), restart_rate=lambda: restarts.append(1))
    text, noise = compressible(policy.PROBE * RECORD), os.urandom(4 * RECORD)
    more_text = compressible(6 * RECORD, seed=2)
    data = text + noise + more_text
    wire = b"".join(enc.update(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)) + enc.finish()
    kinds = record_kinds(wire)
    assert kinds[:policy.PROBE] == [codec.KIND_ZSTD] * policy.PROBE      # link-bound: compressing
    after_noise = kinds[policy.PROBE + 4:]
    assert codec.KIND_RAW in after_noise and after_noise[-1] == codec.KIND_ZSTD, kinds
    assert policy.changes == 2 and policy.decision is True, policy.why
    assert "changed 2x" in policy.why and restarts
    assert decode(wire, 1 << 20) == data


def test_auto_on_a_short_stream_says_where_it_ended():
    policy = codec.AutoPolicy()
    enc = codec.ZstdEncoder(3, policy=policy)
    wire = enc.update(compressible(3 * RECORD)) + enc.finish()
    assert policy.decision is None and "during the compressed probe" in policy.why
    assert record_kinds(wire) == [codec.KIND_ZSTD] * 3


# ---------------------------------------------------------------------- pumps

def test_encode_pump_and_node_tap_through_real_pipes(tmp_path):
    from kadeploy.core.integrity import ChunkDigester
    data = compressible(3 * RECORD + 5)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    pump = EncodePump(fd, codec.Pipeline(codec.encoder_stages(codec.Spec(codec.ZSTD), workers=2)))
    pump.start()
    out_r, out_w = os.pipe()
    tap = StreamTap(pump.read_fd, ChunkDigester("sha256"), stages=codec.Pipeline([codec.ZstdDecoder()]),
                  out_fd=out_w)
    tap.start()
    got = bytearray()
    while chunk := os.read(out_r, 1 << 20):
        got += chunk
    os.close(out_r)
    tap.join()
    pump.join()
    os.close(fd)
    assert bytes(got) == data
    assert pump.content == tap.content == len(data) and pump.wire == tap.wire < len(data)
    assert pump.error is None and tap.error is None and tap.decode_error is None
    whole = ChunkDigester("sha256")   # the digest is of the wire bytes
    assert tap.digests and tap.whole


def test_node_tap_keeps_digesting_when_the_consumer_quits():
    from kadeploy.core.integrity import ChunkDigester
    wire = encode(compressible(2 * RECORD), [])
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(out_r)                               # the consumer is gone
    tap = StreamTap(in_r, ChunkDigester("sha256"), stages=codec.Pipeline([codec.ZstdDecoder()]),
                  out_fd=out_w)
    tap.start()
    os.write(in_w, wire) if len(wire) < 65536 else [os.write(in_w, wire[i:i + 65536])
                                                   for i in range(0, len(wire), 65536)]
    os.close(in_w)
    tap.join(30)
    assert tap.consumer_error is not None and tap.error is None
    assert tap.wire == len(wire) and tap.whole is not None


# ------------------------------------------------------------- deployments

@pytest.fixture
def dep(tmp_path):
    d = Deployment(str(tmp_path))
    yield d
    d.close()


def _source(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "text").write_bytes(compressible(9 << 20))
    (src / "noise").write_bytes(os.urandom(3 << 20))
    for i in range(50):
        (src / "d" / f"f{i}").write_bytes(compressible(1000 * i, seed=i))
    return src


@pytest.mark.parametrize("n,arity,mode", [(3, 1, "zstd"), (4, 2, "zstd:1"), (2, 1, "auto")])
def test_compressed_deployment_is_exact(dep, tmp_path, n, arity, mode):
    src = _source(tmp_path)
    dsts = make_targets(tmp_path, n)
    report = str(tmp_path / "r.json")
    server = dep.server("-n", str(n), "-a", str(arity), "-e", tar_producer(src), "--compress", mode,
                        "--report", report)
    clients = [dep.client("-h", "127.0.0.1", "-t", t) for t in dsts]
    assert dep.wait_all(180) == [0] * (n + 1), server.err + "".join(c.err for c in clients)
    for t in dsts:
        assert_same_tree(src, t)
    rep = load_report(report)
    content = {r["content_bytes"] for r in rep["nodes"]}
    assert len(content) == 1 and content.pop() > 12 << 20
    assert all(r["bytes"] == rep["stream_bytes"] and r["verified"] for r in rep["nodes"])
    assert rep["compression"].startswith(mode if mode != "zstd" else "zstd:3")
    if mode != "auto":   # on loopback auto may well choose raw: the link is never the limit
        assert rep["stream_bytes"] < 0.75 * rep["nodes"][0]["content_bytes"]
        assert all(r["decode_rate"] and r["decode_rate"] > 0 for r in rep["nodes"])
    assert "compression " in server.out


def test_compressed_without_digests_still_checks_the_length(dep, tmp_path):
    data = compressible(5 << 20)
    (tmp_path / "blob").write_bytes(data)
    out = tmp_path / "copy"
    server = dep.server("-e", f"cat {tmp_path / 'blob'}", "--compress", "zstd", "--no-verify")
    client = dep.client("-h", "127.0.0.1", "-e", f"cat > {out}")
    assert dep.wait_all(60) == [0, 0], server.err + client.err
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_consumer_that_stops_early_fails_with_the_content_length(dep, tmp_path):
    (tmp_path / "blob").write_bytes(compressible(20 << 20))
    dep.server("-e", f"cat {tmp_path / 'blob'}", "--compress", "zstd")
    client = dep.client("-h", "127.0.0.1", "-e", "head -c 1000 >/dev/null")
    assert client.wait(60) == 1
    assert "consumer stopped reading after " in client.err and f"bytes of {20 << 20} " in client.err
    assert "Traceback" not in client.err


def test_bad_compress_is_one_line(dep):
    server = dep.server("--compress", "gzip")
    assert_one_line_error(server, 64, "unknown compression 'gzip'")


@pytest.mark.netns
def test_compression_bench_smoke(tmp_path):
    """bench/compress_debian.py at smoke size: a small tree instead of Debian's, N=2, one
    rate, one round; correctness only (every experiment ok, the figures computed)."""
    import json
    import subprocess
    import sys
    src = _source(tmp_path)
    out = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(repo, "bench", "compress_debian.py"), "--tree", str(src),
                        "--nodes", "2", "--rate", "200mbit", "--repeat", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((out / "compression.json").read_text())
    (row,) = doc["rows"]
    assert row["wall_none_s"] > 0 and row["wall_zstd_s"] > 0 and row["wall_auto_s"] > 0
    assert 0 < row["zstd_over_none"] and 0 < row["auto_over_best"]
    assert any("ratio" in c for c in doc["compression"])
