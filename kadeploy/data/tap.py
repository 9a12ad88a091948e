"""The server's repair spool, with --spool: the whole stream in a file.

(The digests and the in-memory repair window, the default, are kadeploy.data.pump's
StreamTap and kadeploy.data.window.)
Spool is the server's copy of the stream in a file, written by the relay itself (a
  file sink); the relay's counters say how much of it is there.
SpoolFeeder re-serves the spool from an offset to one repaired node with sendfile,
  following the spool as it grows, until the stream's end.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional

from kadeploy.data.feeder import Feeder

SPOOL_POLL = 0.05   # seconds between looks at a spool that has not grown


class Spool:
    """The repair spool: a file the relay writes; `attach` tells it how to ask the
    relay how much of the stream it holds."""

    def __init__(self, directory: Optional[str]) -> None:
        import tempfile
        self.fd, self.path = tempfile.mkstemp(prefix="kadeploy-spool-", dir=directory)
        self._length: Callable[[], int] = lambda: 0
        self.finished = False
        self.error: Optional[OSError] = None

    def attach(self, length: Callable[[], int]) -> None:
        self._length = length

    @property
    def length(self) -> int:
        return self._length()

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


class SpoolFeeder(Feeder):
    """Re-serves the stream from `offset` to a repaired node."""

    def __init__(self, spool: Spool, sock: socket.socket, offset: int,
                 on_end: Callable[[Optional[BaseException]], None]) -> None:
        super().__init__(sock, offset, on_end, "kadeploy-spool-feeder")
        self.spool = spool

    def feed(self) -> None:
        pos = self.offset
        with open(self.spool.path, "rb") as f:
            while True:
                # Read `finished` first: once it is set the length is final.
                done = self.spool.finished
                available = self.spool.length
                if pos < available:
                    n = os.sendfile(self.sock.fileno(), f.fileno(), pos, available - pos)
                    pos += n
                    self.sent += n
                elif self.spool.error is not None:
                    raise self.spool.error
                elif done:
                    return
                else:
                    time.sleep(SPOOL_POLL)
