"""Threads that read one copy of the stream in user space, beside the zero-copy relay.

ServerTap (on the server): digests what the producer wrote and spools it to a file
  from which a repaired node can be re-served from any offset.
SpoolFeeder (on the server): sends a spool from an offset to one socket with
  sendfile, following the spool as it grows, until the stream's end.
ConsumerFeeder (on a node): digests what the node received and passes it on to the
  consumer; if the consumer stops reading it keeps reading (and digesting), so that
  the node's children are never held back by its own consumer.

They read from a pipe that is one sink of the relay; only this local copy leaves
the kernel, the bytes forwarded to children never do.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Callable, Optional

from .integrity import ChunkDigester

READ_SIZE = 1 << 20


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


class ServerTap(threading.Thread):
    def __init__(self, read_fd: int, digester: Optional[ChunkDigester], spool_fd: Optional[int],
                 on_digest: Callable[[int, str], None]) -> None:
        super().__init__(name="kadeploy-server-tap", daemon=True)
        self.read_fd, self.digester, self.spool_fd = read_fd, digester, spool_fd
        self.on_digest = on_digest
        self.spooled = 0
        self.finished = False
        self.whole: Optional[str] = None
        self.spool_error: Optional[OSError] = None
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()

    def run(self) -> None:
        os.set_blocking(self.read_fd, True)
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        try:
            while n := os.readv(self.read_fd, [view]):
                chunk = view[:n]
                if self.digester is not None:
                    for index, digest in self.digester.update(chunk):
                        self.on_digest(index, digest)
                self._spool(chunk)
            if self.digester is not None:
                last, self.whole = self.digester.finish()
                if last is not None:
                    self.on_digest(*last)
        except BaseException as e:  # reported by the server as a stream failure
            self.error = e
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def _spool(self, chunk: memoryview) -> None:
        if self.spool_fd is None or self.spool_error is not None:
            return
        try:
            _write_all(self.spool_fd, chunk)
        except OSError as e:  # e.g. ENOSPC: repairs end here, the deployment goes on
            self.spool_error = e
            return
        with self._cond:
            self.spooled += len(chunk)
            self._cond.notify_all()

    def wait_beyond(self, offset: int, timeout: float = 1.0) -> None:
        with self._cond:
            if self.spooled <= offset and not self.finished:
                self._cond.wait(timeout)


class SpoolFeeder(threading.Thread):
    """Re-serves the stream from `offset` to a repaired node."""

    def __init__(self, tap: ServerTap, spool_path: str, sock: socket.socket, offset: int,
                 on_end: Callable[[Optional[BaseException]], None]) -> None:
        super().__init__(name="kadeploy-spool-feeder", daemon=True)
        self.tap, self.spool_path, self.sock, self.offset = tap, spool_path, sock, offset
        self.on_end = on_end
        self.sent = 0

    def run(self) -> None:
        error: Optional[BaseException] = None
        pos = self.offset
        try:
            self.sock.setblocking(True)
            with open(self.spool_path, "rb") as spool:
                while True:
                    available = self.tap.spooled
                    if pos < available:
                        n = os.sendfile(self.sock.fileno(), spool.fileno(), pos, available - pos)
                        pos += n
                        self.sent += n
                    elif self.tap.finished:
                        if self.tap.spool_error is not None:
                            raise self.tap.spool_error
                        break
                    else:
                        self.tap.wait_beyond(pos)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:
            error = e
        finally:
            self.sock.close()
            self.on_end(error)


class ConsumerFeeder(threading.Thread):
    def __init__(self, read_fd: int, consumer_fd: int, digester: Optional[ChunkDigester],
                 on_digest: Callable[[int, str], None]) -> None:
        super().__init__(name="kadeploy-consumer-feeder", daemon=True)
        self.read_fd, self.consumer_fd = read_fd, consumer_fd
        self.digester, self.on_digest = digester, on_digest
        self.received = 0
        self.delivered = 0
        self.consumer_error: Optional[OSError] = None
        self.whole: Optional[str] = None
        self.n_chunks = 0
        self._stop_feeding = threading.Event()

    def stop_feeding(self) -> None:
        """Deliver nothing more to the consumer (a corrupted chunk was found)."""
        self._stop_feeding.set()

    def run(self) -> None:
        os.set_blocking(self.read_fd, True)
        os.set_blocking(self.consumer_fd, True)
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        try:
            while n := os.readv(self.read_fd, [view]):
                chunk = view[:n]
                self.received += n
                if self.digester is not None:
                    for index, digest in self.digester.update(chunk):
                        self.on_digest(index, digest)
                self._deliver(chunk)
            if self.digester is not None:
                # The last, partial chunk is compared only in the final verdict: when the
                # stream is short it is not the server's last chunk, and not corrupted.
                _, self.whole = self.digester.finish()
                self.n_chunks = len(self.digester.digests)
        finally:
            try:
                os.close(self.consumer_fd)   # EOF for the consumer
            except OSError:
                pass

    def _deliver(self, chunk: memoryview) -> None:
        if self.consumer_error is not None or self._stop_feeding.is_set():
            return
        try:
            _write_all(self.consumer_fd, chunk)
            self.delivered += len(chunk)
        except OSError as e:
            if e.errno != errno.EPIPE:
                self.consumer_error = e
            else:
                self.consumer_error = e  # the consumer exited before the end
