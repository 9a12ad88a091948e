"""The copy backend: recv_into/write with one reusable buffer.

It is the oracle every faster backend is tested against, and the fallback where
splice is refused. Same contract as every backend (see kadeploy.relay.relay).
"""
from __future__ import annotations

import errno
import os
import select
from typing import Optional, Sequence

from kadeploy.relay.result import EOF, NO_SINKS, SOURCE_ERROR, STOPPED, RelayResult

NAME = "copy"
_WAIT = (errno.EAGAIN, errno.EWOULDBLOCK)


def run(src_fd: int, sink_fds: Sequence[int], *, buffer_size: int,
        stop_fd: int = -1, counters=None, **_ignored) -> RelayResult:
    # Invariant at the top of each iteration: every live sink has been sent
    # exactly bytes_in bytes; the buffer holds nothing pending.
    res = RelayResult(NAME, sink_bytes=[0] * len(sink_fds), sink_errors=[None] * len(sink_fds))
    for fd in (src_fd, *sink_fds):
        os.set_blocking(fd, False)
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    live = list(range(len(sink_fds)))
    poller = select.poll()
    poller.register(src_fd, select.POLLIN)
    if stop_fd >= 0:
        poller.register(stop_fd, select.POLLIN)
    while True:
        if not live:
            res.ended = NO_SINKS
            return res
        events = dict(_poll(poller))
        if stop_fd >= 0 and events.get(stop_fd):
            res.ended = STOPPED
            return res
        if not events.get(src_fd):
            continue
        try:
            n = os.readv(src_fd, [view])
        except OSError as e:
            if e.errno in _WAIT:
                continue
            res.ended, res.source_error = SOURCE_ERROR, e
            return res
        if n == 0:
            res.ended = EOF
            return res
        res.bytes_in += n
        if counters is not None:
            counters[0] = res.bytes_in
        for i in list(live):
            err = _write_all(sink_fds[i], view[:n], stop_fd)
            if err is None:
                res.sink_bytes[i] += n
                if counters is not None:
                    counters[1 + i] = res.sink_bytes[i]
            elif err is STOPPED:
                res.ended = STOPPED
                return res
            else:
                res.sink_errors[i] = err
                live.remove(i)


def _poll(poller):
    while True:
        try:
            return poller.poll()
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def _write_all(fd: int, data: memoryview, stop_fd: int) -> Optional[object]:
    """Write all of data to a non-blocking fd, waiting with poll.

    Returns None when done, STOPPED if the stop fd fired, or the OSError."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if stop_fd >= 0:
        poller.register(stop_fd, select.POLLIN)
    while data:
        try:
            k = os.write(fd, data)
            data = data[k:]
            continue
        except OSError as e:
            if e.errno not in _WAIT:
                return e
        events = dict(_poll(poller))
        if stop_fd >= 0 and events.get(stop_fd):
            return STOPPED
        if events.get(fd, 0) & (select.POLLERR | select.POLLHUP) and not events[fd] & select.POLLOUT:
            # Let the next write report the precise error (EPIPE, ECONNRESET).
            try:
                os.write(fd, data[:1])
                data = data[1:]
            except OSError as e:
                if e.errno not in _WAIT:
                    return e
    return None
