"""The threads that run a codec's stages beside the relay (kadeploy.data.codec).

EncodePump, on the server: reads the producer, encodes once, and writes the encoded
  stream into a pipe that is the relay's source. It counts the content (the length
  End announces); how fast the link takes it, `auto` learns from the kernel
  (kadeploy.data.linkmeter).
StreamTap, on a node and on the server: reads the one copy of the stream that leaves
  the kernel (a pipe that is a sink of the relay), into the repair window when there
  is one (kadeploy.data.window: the read IS the window's copy), digests it, and, on a
  node whose stream is encoded, decodes it in the same thread and writes the content
  to the consumer. It counts what the consumer got, and keeps digesting when the
  consumer or the decoder fails (the verdict needs every chunk, and the children
  and the window every byte).
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Callable, Optional, Tuple

from kadeploy.data.codec import CodecError, Pipeline

READ_SIZE = 1 << 20
# Without a window (a leaf) the tap reads into one buffer again and again: at 128 KiB
# it stays in the core's cache, and the copy out of the pipe plus the digest cost
# 0.67-0.71 CPU s/GB instead of 0.91-1.01 with 1 MiB (bench/node_threads.py, RESULTS.md).
# Reads into the window go to a new place each time: their size makes no difference.
# Decoding stages take READ_SIZE (their records are larger: smaller pieces cost them
# more buffering than the cache saves, bench/chain_cpu.py's encrypt runs).
TAP_BUFFER = 1 << 17
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def make_pipe() -> Tuple[int, int]:
    """A pipe sized for large reads (1 MiB when allowed; the default otherwise)."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    return r, w


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class EncodePump(threading.Thread):
    """producer fd -> stages -> the relay's source pipe (read_fd)."""

    def __init__(self, src_fd: int, stages: Pipeline) -> None:
        super().__init__(name="kadeploy-encode", daemon=True)
        self.src_fd, self.stages = src_fd, stages
        self.read_fd, self._write_fd = make_pipe()
        self.content = 0                 # bytes read from the producer
        self.wire = 0                    # bytes written for the relay
        self.error: Optional[BaseException] = None

    def _send(self, data) -> None:
        if data:
            _write_all(self._write_fd, data)
            self.wire += len(data)

    def run(self) -> None:
        os.set_blocking(self.src_fd, True)
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        try:
            while n := os.readv(self.src_fd, [view]):
                self.content += n
                self._send(self.stages.update(view[:n]))
            self._send(self.stages.finish())
        except BaseException as e:   # the stream ends short; the server says why
            self.error = e
        finally:
            os.close(self._write_fd)     # EOF for the relay


class StreamTap(threading.Thread):
    """Keeps the window, digests, and decodes for the consumer when there are stages.

    emit_last: report the last, partial chunk's digest too (the server announces it;
    a node keeps its own for the final verdict)."""

    def __init__(self, read_fd: int, digester=None, *, stages: Optional[Pipeline] = None,
                 out_fd: Optional[int] = None, window=None, emit_last: bool = False,
                 on_digest: Callable[[int, str], None] = lambda i, d: None,
                 on_bad_stream: Callable[[str], None] = lambda why: None) -> None:
        super().__init__(name="kadeploy-tap", daemon=True)
        self.read_fd, self.digester, self.stages, self.out_fd = read_fd, digester, stages, out_fd
        self.window, self.emit_last = window, emit_last
        self.on_digest, self.on_bad_stream = on_digest, on_bad_stream
        self.wire = 0
        self.content = 0                 # bytes the consumer took
        self.whole: Optional[str] = None
        self.error: Optional[BaseException] = None       # reading or digesting failed
        self.decode_error: Optional[str] = None
        self.consumer_error: Optional[OSError] = None

    @property
    def digests(self):
        return self.digester.digests if self.digester is not None else []

    @property
    def decode_seconds(self) -> float:
        return sum(getattr(s, "seconds", 0.0) for s in self.stages.stages) if self.stages else 0.0

    def _feed(self, data) -> None:
        """Decode and hand to the consumer, until either fails."""
        if self.stages is None or self.decode_error or self.consumer_error:
            return
        try:
            out = self.stages.update(data) if data is not None else self.stages.finish()
        except CodecError as e:
            self.decode_error = str(e)
            self.on_bad_stream(self.decode_error)
            return
        if out and self.out_fd is not None:
            view = memoryview(out)
            try:
                while view:
                    n = os.write(self.out_fd, view)
                    self.content += n
                    view = view[n:]
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                self.consumer_error = e

    def run(self) -> None:
        os.set_blocking(self.read_fd, True)
        window = self.window
        size = READ_SIZE if self.stages is not None else TAP_BUFFER
        view = None if window is not None else memoryview(bytearray(size))
        try:
            while True:
                into = window.reserve(READ_SIZE) if window is not None else view
                n = os.readv(self.read_fd, [into])
                if not n:
                    break
                if window is not None:
                    window.commit(n)
                self.wire += n
                chunk = into[:n]
                if self.digester is not None:
                    for index, digest in self.digester.update(chunk):
                        self.on_digest(index, digest)
                self._feed(chunk)
            self._feed(None)
            if self.digester is not None:
                last, self.whole = self.digester.finish()
                if last is not None and self.emit_last:
                    self.on_digest(*last)
        except BaseException as e:
            self.error = e
        finally:
            if window is not None:
                window.finish(self.error)
            os.close(self.read_fd)
            if self.out_fd is not None:
                os.close(self.out_fd)    # EOF for the consumer
