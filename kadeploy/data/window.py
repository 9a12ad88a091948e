"""The repair window: the last bytes of the stream, in memory, and the feeds it serves.

Window is a ring of a fixed size that the digest thread reads the stream into (its
one copy that leaves the kernel is also the window: no second copy, no spool on
disk). It holds the bytes from `low` to `end` (absolute offsets in the stream).
WindowFeeder re-serves it from an offset to one repaired node over its socket,
following the window as it grows, until the stream's end.

Rules of the ring (one writer, any number of readers, no lock on the data path):
- The writer announces `low` (the oldest offset that stays valid) BEFORE it reads
  over the oldest bytes, for the whole room it reserved, and `end` AFTER the read,
  with `low` brought back to what the read really overwrote, under `cond`.
- A reader copies or sends bytes [a, b) with b <= end, then checks that a >= low
  still holds: low is at least every offset overwritten since it started, so if it
  does, nothing it sent was overwritten. Otherwise it has fallen further behind than
  the window and fails (WindowMissed).
"""
from __future__ import annotations

import mmap
import socket
import threading
from typing import Callable, Optional

from kadeploy.data.feeder import Feeder
from kadeploy.defaults import REPAIR_WINDOW as DEFAULT_WINDOW

WINDOW_OPTION = "--window"


class WindowMissed(Exception):
    """A node needs bytes the window no longer holds; the message names the option."""

    def __init__(self, offset: int, low: int, size: int) -> None:
        super().__init__(
            f"byte {offset} of the stream is no longer in the repair window ({WINDOW_OPTION}, "
            f"{size >> 20} MiB, from byte {low}): the node fell {low - offset} bytes further "
            f"behind than the window; raise {WINDOW_OPTION}")
        self.offset, self.low, self.size = offset, low, size


class Window:
    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size <= 0:
            raise ValueError("the window size must be positive")
        self.size = size
        # Anonymous memory: pages are given on first write, so a large window costs
        # nothing at start-up (a bytearray would be zeroed, 256 MiB at once). Private,
        # not shared: its pages fault in faster and are freed at the process's exit in
        # about a third of the time (256 MiB: 21 against 56 ms here, on the wall clock
        # of the server and of every node with a window; bench/window_memory.py). Not
        # inherited by the commands this process starts: a fork copies no page table.
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.buf.madvise(mmap.MADV_DONTFORK)
        self.view = memoryview(self.buf)
        self.low = 0                 # oldest valid offset
        self._committed_low = 0      # low as of the last commit (what is really gone)
        self.end = 0                 # one past the newest byte
        self.finished = False        # no byte will follow `end`
        self.error: Optional[BaseException] = None
        self.cond = threading.Condition()

    # ---------------------------------------------------------------- writer

    def reserve(self, limit: int) -> memoryview:
        """Room for the next read, at most `limit` bytes, contiguous in the ring; the
        bytes it will overwrite are given up (low moves) before the caller reads."""
        start = self.end % self.size
        n = min(limit, self.size - start)
        with self.cond:
            self.low = max(self.low, self.end + n - self.size)
        return self.view[start:start + n]

    def commit(self, n: int) -> None:
        with self.cond:
            self.end += n
            self.low = max(self._committed_low, self.end - self.size)
            self._committed_low = self.low
            self.cond.notify_all()

    def finish(self, error: Optional[BaseException] = None) -> None:
        with self.cond:
            self.finished, self.error = True, error
            self.low = self._committed_low     # the last reservation was not used
            self.cond.notify_all()

    # ---------------------------------------------------------------- readers

    def wait(self, offset: int, timeout: Optional[float] = None) -> int:
        """Block until there are bytes at `offset` or the stream has ended; the end."""
        with self.cond:
            while self.end <= offset and not self.finished:
                if not self.cond.wait(timeout):
                    break
            if offset < self.low:
                raise WindowMissed(offset, self.low, self.size)
            return self.end

    def span(self, offset: int, end: int) -> memoryview:
        """The ring's bytes from `offset`, contiguous, up to `end` (maybe fewer)."""
        start = offset % self.size
        return self.view[start:start + min(end - offset, self.size - start)]

    def check(self, offset: int) -> None:
        """After using bytes from `offset`: were they still valid all along?"""
        if offset < self.low:
            raise WindowMissed(offset, self.low, self.size)

    def read(self, offset: int, n: int) -> bytes:
        """A copy of bytes [offset, offset + n) (for tests and small reads)."""
        out = bytearray()
        while len(out) < n:
            end = self.wait(offset + len(out))
            if end <= offset + len(out):
                break
            piece = self.span(offset + len(out), min(end, offset + n))
            out += piece
            self.check(offset + len(out) - len(piece))
        return bytes(out)


class WindowFeeder(Feeder):
    """Re-serves the stream from `offset` to one repaired node, from the window."""

    def __init__(self, window: Window, sock: socket.socket, offset: int,
                 on_end: Callable[[Optional[BaseException]], None], name: str = "") -> None:
        super().__init__(sock, offset, on_end, f"kadeploy-window-feeder{name and ' ' + name}")
        self.window = window

    def feed(self) -> None:
        pos, w = self.offset, self.window
        while True:
            end = w.wait(pos)
            if pos >= end:
                if w.error is not None:
                    raise w.error
                return                          # finished, all sent
            piece = w.span(pos, end)
            n = self.sock.send(piece)
            w.check(pos)                        # nothing we sent was overwritten meanwhile
            pos += n
            self.sent += n
