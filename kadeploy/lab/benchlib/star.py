"""The star baseline's sender: ``python -m kadeploy.lab.benchlib.star HOST:PORT...``.

Reads stdin in 1 MiB chunks and writes each chunk to every receiver over its own TCP
connection, one after the other, so the sender's single link carries every copy. A
refused connection is retried (receivers may still be starting) for 30 s.
"""
from __future__ import annotations

import socket
import sys
import time

CHUNK = 1 << 20


def connect(target: str, timeout: float = 30.0) -> socket.socket:
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host.strip("[]"), int(port)))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(argv=None) -> int:
    targets = list(sys.argv[1:] if argv is None else argv)
    if not targets:
        print("usage: python -m kadeploy.lab.benchlib.star HOST:PORT...", file=sys.stderr)
        return 64
    socks = [connect(t) for t in targets]
    src = sys.stdin.buffer.raw
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = src.readinto(buf)
        if not n:
            break
        for s in socks:
            s.sendall(view[:n])
    for s in socks:
        s.shutdown(socket.SHUT_WR)
        s.recv(1)           # wait for the receiver to close: every byte has arrived
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
