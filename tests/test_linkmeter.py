"""kadeploy.data.linkmeter: the link's pace from the kernel's TCP_INFO, on real
loopback connections (issue 13, point 5: how `auto` sees the link)."""
from __future__ import annotations

import socket
import threading
import time

from kadeploy.data.codec import AutoPolicy
from kadeploy.data.linkmeter import LinkMeter, counts

LINK_BOUND_SHARE = 1 / AutoPolicy.MARGIN


def connected_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    return sender, receiver


def reader(sock: socket.socket, rate: float, got: list) -> threading.Thread:
    """Reads at about `rate` bytes/s (sleeps between small reads) until EOF."""
    def run():
        while True:
            data = sock.recv(64 << 10)
            if not data:
                return
            got[0] += len(data)
            time.sleep(len(data) / rate)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_connection_held_back_by_its_receiver_is_the_limit_at_the_receivers_pace():
    sender, receiver = connected_pair()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    got = [0]
    reading = reader(receiver, 20e6, got)
    stop = threading.Event()

    def flood():
        try:
            while not stop.is_set():
                sender.sendall(b"\0" * (256 << 10))
        except OSError:
            pass
    threading.Thread(target=flood, daemon=True).start()
    time.sleep(0.3)                       # the buffers fill: from here the reader sets the pace
    meter = LinkMeter(lambda: [sender])
    got0, t0 = got[0], time.monotonic()
    time.sleep(0.6)
    share, rate = meter.busiest()
    link = AutoPolicy.limit_rate((share, rate))
    read_rate = (got[0] - got0) / (time.monotonic() - t0)
    stop.set()
    sender.shutdown(socket.SHUT_WR)
    reading.join(10)
    sender.close()
    receiver.close()
    assert share >= LINK_BOUND_SHARE, share
    assert link is not None and 0.7 * read_rate < link < 1.3 * read_rate, (link, read_rate)


def test_a_connection_that_mostly_waits_for_data_is_not_the_limit():
    sender, receiver = connected_pair()
    got = [0]
    reading = reader(receiver, 1e9, got)
    meter = LinkMeter(lambda: [sender])
    for _ in range(20):                   # 64 KiB every 25 ms: idle nearly all the time
        sender.sendall(b"\0" * (64 << 10))
        time.sleep(0.025)
    share, rate = meter.busiest()
    assert AutoPolicy.limit_rate((share, rate)) is None and share < LINK_BOUND_SHARE, share
    assert 0 < rate < 20 * (64 << 10) / 0.4          # what was sent, over at least the sleeps
    sender.close()
    reading.join(10)
    receiver.close()


def test_closed_and_unmeasured_connections_are_left_out():
    sender, receiver = connected_pair()
    assert counts(sender) is not None
    late = []
    meter = LinkMeter(lambda: [sender] + late)
    late.append(socket.socket())          # not measured at restart(), and not connected
    sender.close()
    assert counts(sender) is None
    assert meter.busiest() is None and AutoPolicy.limit_rate(meter.busiest()) is None
    receiver.close()
    late[0].close()
