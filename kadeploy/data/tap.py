"""Beside the zero-copy relay: digests of the stream, and the server's repair spool.

HashTap reads one copy of the stream from a pipe that is a sink of the relay, and
  digests it. It is the only copy that leaves the kernel: the consumer, the children
  and the spool are fed by splice.
Spool is the server's copy of the stream in a file, written by the relay itself (a
  file sink); the relay's counters say how much of it is there.
SpoolFeeder re-serves the spool from an offset to one repaired node with sendfile,
  following the spool as it grows, until the stream's end.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Optional

from kadeploy.core.integrity import ChunkDigester

READ_SIZE = 1 << 20
SPOOL_POLL = 0.05   # seconds between looks at a spool that has not grown


class HashTap(threading.Thread):
    """Digests what comes through a pipe; reports each whole chunk's digest."""

    def __init__(self, read_fd: int, digester: ChunkDigester,
                 on_digest: Callable[[int, str], None], *, emit_last: bool) -> None:
        super().__init__(name="kadeploy-hash", daemon=True)
        self.read_fd, self.digester, self.on_digest = read_fd, digester, on_digest
        # The server announces its last, partial chunk; a node keeps its own for the
        # final verdict (when the stream is short it is no chunk of the server's).
        self.emit_last = emit_last
        self.whole: Optional[str] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        os.set_blocking(self.read_fd, True)
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        try:
            while n := os.readv(self.read_fd, [view]):
                for index, digest in self.digester.update(view[:n]):
                    self.on_digest(index, digest)
            last, self.whole = self.digester.finish()
            if last is not None and self.emit_last:
                self.on_digest(*last)
        except BaseException as e:  # reported as a failure of verification
            self.error = e
        finally:
            os.close(self.read_fd)

    @property
    def digests(self):
        return self.digester.digests


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


class SpoolFeeder(threading.Thread):
    """Re-serves the stream from `offset` to a repaired node."""

    def __init__(self, spool: Spool, sock: socket.socket, offset: int,
                 on_end: Callable[[Optional[BaseException]], None]) -> None:
        super().__init__(name="kadeploy-spool-feeder", daemon=True)
        self.spool, self.sock, self.offset, self.on_end = spool, sock, offset, on_end
        self.sent = 0

    def run(self) -> None:
        error: Optional[BaseException] = None
        pos = self.offset
        try:
            self.sock.setblocking(True)
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
                        break
                    else:
                        time.sleep(SPOOL_POLL)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:
            error = e
        finally:
            self.sock.close()
            self.on_end(error)
