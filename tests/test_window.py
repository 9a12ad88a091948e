"""The in-memory repair window (kadeploy.data.window) and the tap that fills it."""
from __future__ import annotations

import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.data.pump import StreamTap
from kadeploy.data.window import Window, WindowFeeder, WindowMissed


def fill(window: Window, data: bytes, piece: int) -> None:
    pos = 0
    while pos < len(data):
        into = window.reserve(piece)
        n = min(len(into), len(data) - pos)
        into[:n] = data[pos:pos + n]
        window.commit(n)
        pos += n
    window.finish()


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 5000), total=st.integers(0, 20000), piece=st.integers(1, 7000),
       frm=st.integers(0, 20000))
def test_window_holds_exactly_the_last_size_bytes(size, total, piece, frm):
    data = os.urandom(total)
    w = Window(size)
    fill(w, data, piece)
    assert w.end == total and w.low == max(0, total - size)
    frm = min(frm, total)
    if frm < w.low:
        with pytest.raises(WindowMissed, match="raise --window"):
            w.read(frm, total - frm)
    else:
        assert w.read(frm, total - frm) == data[frm:]


def test_missed_message_names_the_option_and_the_gap():
    w = Window(1 << 20)
    fill(w, b"x" * (3 << 20), 65536)
    with pytest.raises(WindowMissed) as e:
        w.wait(100)
    msg = str(e.value)
    assert "--window" in msg and "1 MiB" in msg and f"from byte {2 << 20}" in msg
    assert f"fell {(2 << 20) - 100} bytes further behind" in msg and "byte 100 of the stream" in msg


def _window_mapping(pid: int, address: int) -> "str | None":
    """The line of /proc/PID/maps that holds `address`, if any."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line
    return None


def test_window_memory_is_private_and_not_inherited_by_a_fork():
    """Private pages are freed at exit in a third of a shared mapping's time, and a
    command the node starts (a fork) copies none of the window's page tables."""
    import ctypes
    w = Window(1 << 20)
    w.reserve(4096)[:4] = b"abcd"
    w.commit(4)
    address = ctypes.addressof(ctypes.c_char.from_buffer(w.buf))
    mine = _window_mapping(os.getpid(), address)
    assert mine is not None and mine.split()[1][3] == "p", mine   # rw-p, not rw-s
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _window_mapping(os.getpid(), address) is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the window was inherited by a fork"
    assert w.read(0, 4) == b"abcd"


def test_feeder_follows_a_growing_window_to_the_end():
    data = os.urandom(3 << 20)
    w = Window(8 << 20)
    a, b = socket.socketpair()
    done = []
    feeder = WindowFeeder(w, a, 12345, on_end=done.append)
    feeder.start()
    writer = threading.Thread(target=fill, args=(w, data, 100000))
    writer.start()
    got = bytearray()
    while chunk := b.recv(1 << 20):
        got += chunk
    writer.join()
    feeder.join(10)              # it closes the socket before it reports its end
    b.close()
    assert bytes(got) == data[12345:] and done == [None]


def test_feeder_that_falls_behind_fails_instead_of_sending_overwritten_bytes():
    data = os.urandom(4 << 20)
    w = Window(256 << 10)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    done = []
    feeder = WindowFeeder(w, a, 0, on_end=done.append)
    feeder.start()
    fill(w, data, 65536)         # nobody reads b: the feeder cannot keep up
    got = bytearray()
    while chunk := b.recv(1 << 20):
        got += chunk
    feeder.join(10)
    b.close()
    assert isinstance(done[0], WindowMissed)
    assert bytes(got) == data[:len(got)]      # whatever it sent was the stream's


def test_tap_reads_the_stream_into_the_window_and_digests_it():
    from kadeploy.core.integrity import ChunkDigester
    data = os.urandom(5 << 20)
    w = Window(2 << 20)
    r, wfd = os.pipe()
    digests = []
    tap = StreamTap(r, ChunkDigester("sha256", chunk_size=1 << 20), window=w, emit_last=True,
                    on_digest=lambda i, d: digests.append(i))
    tap.start()
    for i in range(0, len(data), 1 << 16):
        os.write(wfd, data[i:i + (1 << 16)])
    os.close(wfd)
    tap.join(30)
    assert tap.error is None and w.finished and w.end == len(data)
    assert w.read(len(data) - (2 << 20), 2 << 20) == data[-(2 << 20):]
    assert digests == list(range(5))
    import hashlib
    assert tap.digester.digests[3] == hashlib.sha256(data[3 << 20:4 << 20]).hexdigest()


# ------------------------------------------------------------ a slow child

def test_a_slow_child_does_not_hold_the_stream_back(tmp_path):
    """Node 3 of a chain is frozen when the deployment starts: nodes 1 and 2 take the
    stream at once, and node 3, thawed later, gets it from node 2's window."""
    import hashlib
    import signal
    import sys
    import time

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from deploy import Deployment, load_report

    data = os.urandom(24 << 20)
    (tmp_path / "blob").write_bytes(data)
    dep = Deployment(str(tmp_path))
    try:
        report = str(tmp_path / "r.json")
        server = dep.server("-n", "9", "-e", f"cat {tmp_path / 'blob'}", "--stall-timeout", "8",
                            "--report", report)
        base = 42000 + os.getpid() % 1000 * 10
        clients = [dep.client("-h", "127.0.0.1", "-P", str(base + i), "-e", f"cat > {tmp_path}/got{i}")
                   for i in range(3)]
        deadline = time.monotonic() + 30
        while server.err.count("registered ") < 3:
            assert time.monotonic() < deadline, server.err
            time.sleep(0.02)
        os.killpg(clients[2].popen.pid, signal.SIGSTOP)
        go = dep.client("-h", "127.0.0.1", "-g", name="go")
        assert go.wait(30) == 0, go.err
        while "still to connect" not in clients[1].err:   # node 2 has the stream, node 3 nothing
            assert time.monotonic() < deadline, clients[1].err + server.err
            time.sleep(0.02)
        os.killpg(clients[2].popen.pid, signal.SIGCONT)
        assert [c.wait(60) for c in clients] == [0, 0, 0], "\n".join(c.err for c in clients) + server.err
        assert server.wait(60) == 0, server.err
        assert "it will start from the repair window" in clients[1].err
        for i in range(3):
            assert hashlib.sha256((tmp_path / f"got{i}").read_bytes()).digest() == \
                hashlib.sha256(data).digest()
        assert load_report(report)["totals"]["ok"] == 3
    finally:
        dep.close()
