"""How fast the server's first-level data connections take the stream, from the
kernel's own counts (TCP_INFO): the bytes each one had acknowledged, and how long it
had data waiting to go or in flight (tcpi_busy_time).

`--compress auto` learns two things from it (kadeploy.data.codec.AutoPolicy, which
reads them): was the link the limit (a connection busy nearly all the time), and at
what rate did it take the stream. Counting at the socket sees the link from the first byte: what the
encoder's writes waited for could not, while the ~10 MiB of pipes and socket buffers
up to the first node filled at memory speed whatever the link.

The stream goes at the pace of its slowest first-level connection: the busiest one
is the one measured.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Callable, Dict, Iterable, Optional, Tuple

# struct tcp_info (linux/tcp.h): __u64 tcpi_bytes_acked at 120 (Linux 4.1),
# __u64 tcpi_busy_time (microseconds) at 168 (Linux 4.10).
_U64 = struct.Struct("=Q")
_ACKED_AT, _BUSY_AT, _INFO_LEN = 120, 168, 176


def counts(sock: socket.socket) -> Optional[Tuple[int, float]]:
    """(bytes acknowledged, seconds busy) of a TCP socket; None when it is closed or
    the kernel is older than Linux 4.10."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _INFO_LEN)
    except OSError:
        return None
    if len(info) < _INFO_LEN:
        return None
    return _U64.unpack_from(info, _ACKED_AT)[0], _U64.unpack_from(info, _BUSY_AT)[0] / 1e6


class LinkMeter:
    """How busy the busiest of `sockets()` was since restart(), and at what rate (see
    the module's docstring)."""

    def __init__(self, sockets: Callable[[], Iterable[socket.socket]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sockets, self.clock = sockets, clock
        self._since: Dict[int, Tuple[int, float]] = {}
        self._t0 = 0.0
        self.restart()

    def restart(self) -> None:
        """Measure from now on."""
        self._t0 = self.clock()
        self._since = {}
        for sock in self.sockets():
            c = counts(sock)
            if c is not None:
                self._since[id(sock)] = c

    def busiest(self) -> Optional[Tuple[float, float]]:
        """(share of the time busy, bytes/s acknowledged) of the busiest connection
        since restart(); None before any connection was measured."""
        span = self.clock() - self._t0
        best = None
        for sock in self.sockets():
            then, now = self._since.get(id(sock)), counts(sock)
            if then is None or now is None or span <= 0:
                continue
            share, rate = (now[1] - then[1]) / span, (now[0] - then[0]) / span
            if best is None or share > best[0]:
                best = (share, rate)
        return best
