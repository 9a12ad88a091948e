"""One suite for every relay backend, run against real sockets, pipes and files.

Each test runs once per backend (cython, python, copy), like uvloop's mixins; the
copy backend is the oracle and every backend must agree with it. A backend that did
not build is skipped, unless $KADEPLOY_REQUIRE_BACKEND names it: then the run fails.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import stat
import struct
import threading
import time
from array import array
from functools import lru_cache

import pytest
from forbid_skips import not_applicable

from kadeploy import relay as kr
from kadeploy.relay import EOF, NO_SINKS, SOURCE_ERROR, STOPPED, relay

MiB = 1 << 20
SEED = 20240611
BIG = 2 << 30  # through the splice backends
BIG_COPY = 256 * MiB  # through the slower copy backend


# ---- fixtures ----------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_fd_leak():
    """Every pipe and socket a test (or a relay) opens is closed when it ends."""
    before = len(os.listdir("/proc/self/fd"))
    yield
    after = len(os.listdir("/proc/self/fd"))
    assert after == before, f"fd leak: {before} fds open before the test, {after} after"


@pytest.fixture(params=kr.BACKENDS)
def backend(request):
    name = request.param
    try:
        kr._load(name)
    except kr.BackendUnavailable as e:
        if os.environ.get(kr.ENV_REQUIRE, "").strip().lower() == name:
            pytest.fail(f"{kr.ENV_REQUIRE}={name} but {e}")
        pytest.skip(str(e))
    return name


def splices(name: str) -> bool:
    return name != "copy"


# ---- data: a seeded stream, generated fast, checked by digest -----------------------

@lru_cache(maxsize=None)
def _block(size: int) -> bytes:
    return random.Random(SEED).randbytes(size)


def generate(total: int, chunk: int = MiB):
    """A seeded stream: one random block, each copy stamped with its index, so a lost,
    repeated or reordered chunk changes the digest."""
    block = bytearray(_block(chunk))
    for idx, off in enumerate(range(0, total, chunk)):
        struct.pack_into("<QQ", block, 0, idx, off)
        struct.pack_into("<Q", block, chunk // 2, idx)
        yield memoryview(block)[:min(chunk, total - off)]


@lru_cache(maxsize=None)
def expected_digest(total: int) -> str:
    h = hashlib.sha1()
    for piece in generate(total):
        h.update(piece)
    return h.hexdigest()


# ---- ends: sources and sinks the relay is given -------------------------------------

class Ends:
    """Owns every fd of one test run and closes them all."""

    def __init__(self):
        self.fds = []
        self.socks = []

    def own(self, *items):
        for x in items:
            (self.socks if isinstance(x, socket.socket) else self.fds).append(x)
        return items

    def pair(self, kind):
        """(relay side, peer side) as fds; for a source the peer writes, for a sink it reads."""
        if kind == "socket":
            a, b = self.own(*socket.socketpair())
            return a.fileno(), b.fileno()
        if kind == "tcp":
            a, b = tcp_pair()
            self.own(a, b)
            return a.fileno(), b.fileno()
        r, w = self.own(*os.pipe())
        return r, w

    def release(self, fd):
        """Hand fd over to whoever closes it (a thread, or the test itself)."""
        if fd in self.fds:
            self.fds.remove(fd)
            return
        for s in self.socks:
            if s.fileno() == fd:
                self.socks.remove(s)
                s.detach()
                return

    def close(self):
        for s in self.socks:
            s.close()
        for fd in self.fds:
            os.close(fd)
        self.fds, self.socks = [], []


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


def end_stream(fd, owned):
    """EOF for the reader of fd: SHUT_WR a socket (fd stays open), close an owned pipe."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        if owned:
            os.close(fd)
        return
    with socket.socket(fileno=os.dup(fd)) as s:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError as e:  # the peer already reset the connection
            if e.errno != errno.ENOTCONN:
                raise


class Reader(threading.Thread):
    """Reads a sink's peer to EOF, keeping the bytes or just their digest.

    With stop_after, it closes its fd after that many bytes (it then owns the fd)."""

    def __init__(self, fd, *, keep=True, delay=0.0, stop_after=None, piece=MiB):
        super().__init__(daemon=True)
        self.fd, self.keep, self.delay, self.stop_after = fd, keep, delay, stop_after
        self.piece = piece
        self.data = bytearray()
        self.digest = hashlib.sha1()
        self.count = 0
        self.error = None

    def run(self):
        buf = bytearray(self.piece)
        try:
            with open(self.fd, "rb", buffering=0, closefd=False) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    self.count += n
                    self.digest.update(memoryview(buf)[:n])
                    if self.keep:
                        self.data += buf[:n]
                    if self.stop_after is not None and self.count >= self.stop_after:
                        break
                    if self.delay:
                        time.sleep(self.delay)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            if self.stop_after is not None:
                os.close(self.fd)  # a child dying mid-stream


class Writer(threading.Thread):
    """Feeds the source peer with pieces, then ends the stream, resets it, or leaves it
    open; when it ends or resets the stream, it owns (and closes) a pipe or reset fd."""

    def __init__(self, fd, pieces, *, close=True, reset=False):
        super().__init__(daemon=True)
        self.fd, self.pieces, self.close, self.reset = fd, pieces, close, reset
        self.error = None

    def run(self):
        try:
            for p in self.pieces:
                view = memoryview(p)
                while view:
                    view = view[os.write(self.fd, view):]
        except BaseException as e:
            self.error = e
        if self.reset:  # abort the TCP connection: the relay's next read gets ECONNRESET
            s = socket.socket(fileno=self.fd)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        elif self.close:
            end_stream(self.fd, owned=True)


def run_relay(name, pieces, sinks=("socket",), *, src="socket", readers=None,
              stop_fd=-1, counters=None, buffer_size=kr.DEFAULT_BUFFER_SIZE,
              keep=True, writer_close=True, reset=False, before_relay=None):
    """Relay pieces from a src of kind src to sinks of the given kinds.

    A sink kind is "socket", "tcp", "pipe", or an open regular-file fd (int). Returns
    (result, readers); readers[i] is None for a file sink."""
    ends = Ends()
    threads = []
    try:
        src_fd, feed_fd = ends.pair(src)
        sink_fds, peers = [], []
        for kind, opts in zip(sinks, readers or [{}] * len(sinks)):
            if isinstance(kind, int):
                sink_fds.append(kind)
                peers.append(None)
                continue
            fd, peer = ends.pair(kind)
            if kind == "pipe":
                fd, peer = peer, fd  # the relay writes, the reader reads
            if opts.get("stop_after") is not None:
                ends.release(peer)
            sink_fds.append(fd)
            peers.append(Reader(peer, keep=keep, **opts))
        writer = Writer(feed_fd, pieces, close=writer_close, reset=reset)
        if reset or (writer_close and src == "pipe"):
            ends.release(feed_fd)
        threads = [writer, *filter(None, peers)]
        for t in threads:
            t.start()
        if before_relay:
            before_relay()
        res = relay(src_fd, sink_fds, backend=name, buffer_size=buffer_size,
                    stop_fd=stop_fd, counters=counters)
        for fd, kind in zip(sink_fds, sinks):
            if not isinstance(kind, int):
                if kind == "pipe":
                    ends.release(fd)
                end_stream(fd, owned=True)
        if not writer_close:  # unblock the writer of a stopped relay: it gets EPIPE
            with socket.socket(fileno=os.dup(src_fd)) as s:
                s.shutdown(socket.SHUT_RDWR)
        return res, peers
    finally:
        for t in threads:
            t.join(30)
            assert not t.is_alive(), f"{t} never finished"
        for p in filter(None, peers):
            assert p.error is None, p.error
        ends.close()


def check_all_received(res, peers, data, name):
    assert res.ended == EOF, res
    assert res.bytes_in == len(data)
    for i, p in enumerate(peers):
        assert res.sink_errors[i] is None, res.sink_errors[i]
        assert res.sink_bytes[i] == len(data)
        if p is not None:
            assert p.count == len(data)
            assert bytes(p.data) == data, f"sink {i} got different bytes through {name}"


def chop(data, sizes):
    """data cut into pieces whose sizes cycle through sizes."""
    out, off, i = [], 0, 0
    while off < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[off:off + n])
        off, i = off + n, i + 1
    return out


# ---- the suite ---------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("src", ["socket", "pipe"])
def test_empty_stream(backend, src):
    res, peers = run_relay(backend, [], ("socket", "pipe"), src=src)
    check_all_received(res, peers, b"", backend)


@pytest.mark.timeout(30)
def test_one_byte(backend):
    res, peers = run_relay(backend, [b"x"], ("socket", "pipe", "tcp"))
    check_all_received(res, peers, b"x", backend)


@pytest.mark.timeout(30)
def test_one_byte_one_sink(backend):
    res, peers = run_relay(backend, [b"y"], ("pipe",), src="pipe")
    check_all_received(res, peers, b"y", backend)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("src", ["socket", "pipe", "tcp"])
def test_tiny_writes_odd_sizes(backend, src):
    data = random.Random(1).randbytes(300_001)
    pieces = chop(data, [1, 3, 7, 4093, 2, 65537, 5, 131071, 1])
    res, peers = run_relay(backend, pieces, ("socket", "pipe", "tcp"), src=src)
    check_all_received(res, peers, data, backend)


@pytest.mark.timeout(60)
def test_odd_buffer_sizes(backend):
    """A pipe of one page, and a buffer_size that is not a page multiple."""
    data = random.Random(2).randbytes(3 * MiB + 17)
    # A 1-byte buffer makes copy move one byte per syscall: far too slow for 3 MiB.
    for size in ((1, 4097, 3 * MiB + 1) if splices(backend) else (4097, 3 * MiB + 1)):
        res, peers = run_relay(backend, chop(data, [MiB - 3]), ("socket", "pipe"),
                               buffer_size=size)
        check_all_received(res, peers, data, backend)
        if splices(backend) and res.backend == backend:
            page = os.sysconf("SC_PAGE_SIZE")
            assert res.pipe_size >= page and res.pipe_size % page == 0


@pytest.mark.timeout(120)
def test_multi_gigabyte_stream_digest(backend):
    """2 GiB (256 MiB through copy) to a socket and a pipe, checked by SHA-1."""
    total = BIG if splices(backend) else BIG_COPY
    res, peers = run_relay(backend, generate(total), ("tcp", "pipe"), src="tcp", keep=False)
    assert res.ended == EOF and res.bytes_in == total, res
    assert res.sink_bytes == [total, total] and res.sink_errors == [None, None]
    for p in peers:
        assert p.digest.hexdigest() == expected_digest(total)


@pytest.mark.timeout(60)
def test_single_sink_stream_digest(backend):
    """One sink: the splice backends pass straight through, without tee."""
    total = 128 * MiB
    res, peers = run_relay(backend, generate(total), ("tcp",), src="tcp", keep=False)
    assert res.ended == EOF and res.sink_bytes == [total]
    assert peers[0].digest.hexdigest() == expected_digest(total)


@pytest.mark.timeout(60)
def test_pipe_sinks_are_teed_into_straight(backend):
    """Beside other sinks, a pipe (the consumer's stdin, the digest thread's pipe)
    gets the source pipe's pages by tee, with no pipe of the relay's own in between;
    a single sink is the source pipe's reader, so there is nothing to tee."""
    data = random.Random(8).randbytes(8 * MiB + 3)
    res, peers = run_relay(backend, chop(data, [MiB]), ("pipe", "tcp", "pipe"),
                           readers=[{"delay": 0.001, "piece": 64 * 1024}, {}, {}])
    check_all_received(res, peers, data, backend)
    assert res.teed == (2 if splices(backend) else 0)
    res, peers = run_relay(backend, chop(data, [MiB]), ("pipe",))
    check_all_received(res, peers, data, backend)
    assert res.teed == 0


@pytest.mark.timeout(60)
def test_slow_consumer(backend):
    data = random.Random(3).randbytes(6 * MiB)
    res, peers = run_relay(backend, chop(data, [MiB]), ("socket", "pipe", "tcp"),
                           readers=[{"delay": 0.002, "piece": 64 * 1024}, {}, {}])
    check_all_received(res, peers, data, backend)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["socket", "tcp"])
def test_child_socket_closes_early(backend, kind):
    data = random.Random(4).randbytes(16 * MiB)
    res, peers = run_relay(backend, chop(data, [MiB]), ("socket", kind, "pipe"),
                           readers=[{}, {"stop_after": 100_000, "piece": 4096}, {}])
    assert res.ended == EOF and res.bytes_in == len(data)
    assert isinstance(res.sink_errors[1], (BrokenPipeError, ConnectionResetError)), res
    assert res.sink_bytes[1] < len(data)
    for i in (0, 2):
        assert res.sink_ok(i) and bytes(peers[i].data) == data


@pytest.mark.timeout(60)
def test_consumer_pipe_exits_early(backend):
    """Like `tar x` dying: EPIPE on that sink, the others carry on."""
    data = random.Random(5).randbytes(16 * MiB)
    res, peers = run_relay(backend, chop(data, [MiB]), ("pipe", "socket"),
                           readers=[{"stop_after": 1, "piece": 4096}, {}])
    assert res.ended == EOF
    assert isinstance(res.sink_errors[0], BrokenPipeError), res
    assert res.sink_errors[0].errno == errno.EPIPE
    assert res.sink_ok(1) and bytes(peers[1].data) == data


@pytest.mark.timeout(60)
def test_every_sink_fails(backend):
    data = random.Random(6).randbytes(16 * MiB)
    res, peers = run_relay(backend, chop(data, [MiB]), ("pipe", "socket"),
                           readers=[{"stop_after": 1}, {"stop_after": 1}],
                           writer_close=False)
    assert res.ended == NO_SINKS, res
    assert all(isinstance(e, OSError) for e in res.sink_errors)


@pytest.mark.timeout(60)
def test_many_children(backend):
    data = random.Random(7).randbytes(12 * MiB + 5)
    kinds = ("socket", "pipe", "tcp", "socket") * 4
    res, peers = run_relay(backend, chop(data, [MiB + 1]), kinds)
    check_all_received(res, peers, data, backend)


@pytest.mark.timeout(60)
def test_regular_file_sink(backend, tmp_path):
    data = random.Random(8).randbytes(8 * MiB + 3)
    with open(tmp_path / "out", "wb") as f:
        res, peers = run_relay(backend, chop(data, [MiB]), (f.fileno(), "socket"))
        assert res.backend == backend
    check_all_received(res, peers, data, backend)
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.timeout(60)
def test_append_file_sink_falls_back_to_copy(backend, tmp_path):
    """splice refuses O_APPEND files: relay() must fall back to copy, still correct."""
    data = random.Random(9).randbytes(2 * MiB + 1)
    path = tmp_path / "out"
    path.write_bytes(b"head:")
    with open(path, "ab") as f:
        res, peers = run_relay(backend, chop(data, [MiB]), (f.fileno(), "pipe"))
    check_all_received(res, peers, data, backend)
    assert path.read_bytes() == b"head:" + data
    if splices(backend):
        assert res.backend == f"copy (fallback from {backend})"


@pytest.mark.timeout(30)
def test_splice_unsupported_before_any_byte(backend, tmp_path):
    """The backend itself raises SpliceUnsupported, having consumed nothing."""
    if not splices(backend):
        pytest.skip(not_applicable("copy never refuses"))
    mod = kr._load(backend)
    ends = Ends()
    try:
        src, peer = ends.pair("socket")
        os.write(peer, b"keep me")
        with open(tmp_path / "out", "ab") as f:
            with pytest.raises(kr.SpliceUnsupported):
                mod.run(src, [f.fileno()], buffer_size=MiB)
        assert os.read(src, 100) == b"keep me"
    finally:
        ends.close()


@pytest.mark.timeout(30)
def test_stop_fd(backend):
    stop_r, stop_w = os.pipe()
    try:
        data = random.Random(10).randbytes(2 * MiB)
        counters = array("Q", [0] * 3)

        def stop_later():
            # Once both sinks have it all (a stop while one is still being written
            # ends the relay there, as it must).
            deadline = time.monotonic() + 10
            while min(counters[1], counters[2]) < len(data) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.write(stop_w, b"!")

        t = threading.Thread(target=stop_later, daemon=True)
        res, peers = run_relay(backend, [data], ("socket", "pipe"), counters=counters,
                               stop_fd=stop_r, writer_close=False, before_relay=t.start)
        t.join()
        assert res.ended == STOPPED, res
        assert res.bytes_in == len(data) and res.sink_bytes == [len(data)] * 2
        assert bytes(peers[0].data) == data
    finally:
        os.close(stop_r)
        os.close(stop_w)


@pytest.mark.timeout(30)
def test_stop_fd_already_readable(backend):
    stop_r, stop_w = os.pipe()
    try:
        os.write(stop_w, b"!")
        res, _ = run_relay(backend, [b"x" * 1000], ("socket",), stop_fd=stop_r,
                           writer_close=False)
        assert res.ended == STOPPED
    finally:
        os.close(stop_r)
        os.close(stop_w)


@pytest.mark.timeout(60)
def test_counters(backend):
    data = random.Random(11).randbytes(8 * MiB)
    counters = array("Q", [0] * 4)
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(tuple(counters))
            time.sleep(0.002)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        res, peers = run_relay(backend, chop(data, [256 * 1024]), ("socket", "pipe", "tcp"),
                               counters=counters,
                               readers=[{"delay": 0.001, "piece": 128 * 1024}, {}, {}])
    finally:
        done.set()
        w.join()
    check_all_received(res, peers, data, backend)
    assert list(counters) == [res.bytes_in, *res.sink_bytes]
    for a, b in zip(seen, seen[1:]):  # progress only goes up...
        assert all(x <= y for x, y in zip(a, b))
    assert any(0 < s[0] < len(data) for s in seen), "counters were not updated as bytes moved"


@pytest.mark.timeout(30)
def test_source_reset(backend):
    """A reset upstream connection ends the relay with SOURCE_ERROR, after handing the
    sinks every byte it had read."""
    data = random.Random(12).randbytes(MiB)
    res, peers = run_relay(backend, [data], ("socket", "pipe"), src="tcp", reset=True)
    assert res.ended in (SOURCE_ERROR, EOF), res
    if res.ended == SOURCE_ERROR:
        assert isinstance(res.source_error, ConnectionResetError)
    for i, p in enumerate(peers):
        assert res.sink_bytes[i] == res.bytes_in == p.count
        assert bytes(p.data) == data[:p.count]


def test_auto_picks_an_available_backend():
    assert kr.resolve("auto") in kr.BACKENDS
    assert kr.available()["copy"] is None


# ---- the harness can fail ----------------------------------------------------------

def test_harness_catches_a_corrupting_relay(monkeypatch):
    """A relay that drops one byte to one sink must fail check_all_received."""
    copy = kr._load("copy")
    real_write = os.write
    dropped = []

    def lossy_write(fd, data):
        if not dropped and len(data) > 10:
            dropped.append(fd)
            data = bytes(data[:5]) + bytes(data[6:])
            real_write(fd, data)
            return len(data) + 1
        return real_write(fd, data)

    monkeypatch.setattr(copy.os, "write", lossy_write)
    data = random.Random(13).randbytes(64 * 1024)
    res, peers = run_relay("copy", [data], ("socket", "pipe"))
    monkeypatch.undo()
    with pytest.raises(AssertionError):
        check_all_received(res, peers, data, "copy")


@pytest.mark.timeout(60)
def test_blocked_sink_shut_down_from_another_thread(backend):
    """A child that stops reading holds the whole relay back until the control plane
    drops it (shutdown from another thread); then the others get every byte. A retired
    sink must let the relay go on: it once stalled with the source pipe full."""
    src_w, src_r = socket.socketpair()
    a_relay, a_peer = socket.socketpair()
    b_relay, b_peer = socket.socketpair()      # b_peer never reads
    total = 48 * MiB
    got = bytearray()

    def feed():
        for block in generate(total):
            src_w.sendall(block)
        src_w.shutdown(socket.SHUT_WR)

    def drain():
        while chunk := a_peer.recv(MiB):
            got.extend(chunk)

    def drop_b():
        time.sleep(0.5)
        b_relay.shutdown(socket.SHUT_RDWR)

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, drain, drop_b)]
    for t in threads:
        t.start()
    try:
        res = kr.relay(src_r.fileno(), [a_relay.fileno(), b_relay.fileno()], backend=backend)
        a_relay.shutdown(socket.SHUT_WR)
        threads[1].join(30)
        assert res.eof and res.bytes_in == total
        assert res.sink_bytes[0] == total and res.sink_errors[0] is None
        assert isinstance(res.sink_errors[1], OSError) and res.sink_bytes[1] < total
        assert hashlib.sha1(got).hexdigest() == expected_digest(total)
    finally:
        for s in (src_w, src_r, a_relay, a_peer, b_relay, b_peer):
            s.close()
