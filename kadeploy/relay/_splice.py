"""The splice/tee loop in Python (the python backend) and the set-up all splice backends share.

The loop is written once and parametrized by a ``Syscalls`` object (how to call
splice, tee and F_SETPIPE_SZ). The setup helpers (sink checks, pipe sizing) are also
used by the compiled ``cython`` backend, whose loop is the C twin of ``_loop`` below.

Data path: source --splice--> source pipe --tee--> one pipe per sink --splice--> sink;
a sink that is a pipe itself is tee'd into straight (one syscall and one pipe fewer).
With a single sink the source pipe is that sink's pipe and nothing is tee'd.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
from dataclasses import dataclass
from typing import Callable, List, Sequence

from kadeploy.relay.result import (
    EOF,
    NO_SINKS,
    SOURCE_ERROR,
    STOPPED,
    RelayResult,
    SpliceUnsupported,
)

SPLICE_F_MOVE = 1
SPLICE_F_NONBLOCK = 2
SPLICE_F_MORE = 4
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Python >= 3.10 names them
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
PIPE_MAX_SIZE_FILE = "/proc/sys/fs/pipe-max-size"
DEFAULT_PIPE_MAX = 1 << 20  # the kernel's default pipe-max-size
# splice/tee refuse these fds: the caller can fall back to copying.
UNSUPPORTED = (errno.EINVAL, errno.ENOSYS)
_POLL_READY = select.POLLIN | select.POLLOUT | select.POLLERR | select.POLLHUP | select.POLLNVAL


@dataclass
class Syscalls:
    """The system calls a Python loop runs on; each raises OSError on failure."""
    splice: Callable[[int, int, int, int], int]  # (fd_in, fd_out, count, flags)
    tee: Callable[[int, int, int, int], int]
    set_pipe_size: Callable[[int, int], int]  # returns the size obtained
    get_pipe_size: Callable[[int], int]


def fcntl_set_pipe_size(fd: int, size: int) -> int:
    return fcntl.fcntl(fd, F_SETPIPE_SZ, size)


def fcntl_get_pipe_size(fd: int) -> int:
    return fcntl.fcntl(fd, F_GETPIPE_SZ)


# ---- setup, shared by every splice backend ---------------------------------------

def pipe_max_size() -> int:
    try:
        with open(PIPE_MAX_SIZE_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return DEFAULT_PIPE_MAX


def pipe_size_request(buffer_size: int) -> int:
    """buffer_size rounded up to whole pages (the kernel counts pipe capacity in pages)."""
    page = os.sysconf("SC_PAGE_SIZE")
    return max(page, -(-buffer_size // page) * page)


def check_sinks(sink_fds: Sequence[int]) -> None:
    """Refuse, before any byte moves, the sinks splice is known to reject."""
    for fd in sink_fds:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            raise SpliceUnsupported(errno.EINVAL,
                                    f"splice cannot write to fd {fd}: file opened O_APPEND")
        if not (stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode) or stat.S_ISREG(mode)
                or stat.S_ISCHR(mode)):
            raise SpliceUnsupported(errno.EINVAL,
                                    f"splice cannot write to fd {fd}: unsupported file type")


def teed_sinks(sinks: Sequence[int], direct: bool, pipes: "PipeSet") -> List[bool]:
    """Which sinks the source pipe is tee'd into straight: pipes, when there are
    several sinks (one sink is the source pipe's own reader). They need no pipe of
    their own; each is grown to the relay's buffer size, as its own pipe would be."""
    if direct:
        return [False] * len(sinks)
    teed = [stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in sinks]
    for fd, t in zip(sinks, teed):
        if t:
            pipes.grow(fd)
    return teed


class PipeSet:
    """Every pipe (and /dev/null) one run opens, so that all of them get closed."""

    def __init__(self, set_size: Callable[[int, int], int], get_size: Callable[[int], int],
                 buffer_size: int):
        self._set, self._get = set_size, get_size
        self.request = pipe_size_request(buffer_size)
        self.fds: List[int] = []

    def new(self):
        """A fresh non-blocking pipe (r, w, capacity obtained)."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.fds += (r, w)
        return r, w, self._size(w)

    def grow(self, fd: int) -> None:
        """A pipe we were given (not ours to close), grown to the request if smaller."""
        if self._get(fd) < self.request:
            self._size(fd)

    def devnull(self) -> int:
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def _size(self, fd: int) -> int:
        # Above pipe-max-size only CAP_SYS_RESOURCE may go (EPERM), and a user past
        # pipe-user-pages-soft is refused too: retry at the cap, then keep the default.
        for want in dict.fromkeys((self.request, min(self.request, pipe_max_size()))):
            try:
                return self._set(fd, want)
            except OSError:
                continue
        return self._get(fd)

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


# ---- the Python loop ---------------------------------------------------------------

def start(name: str, src_fd: int, sink_fds: Sequence[int], counters):
    """The set-up every splice backend shares: the result, non-blocking fds, checks.
    Returns (result, sinks); the result has ended (NO_SINKS) when there is no sink."""
    sinks = list(sink_fds)
    res = RelayResult(name, sink_bytes=[0] * len(sinks), sink_errors=[None] * len(sinks))
    for fd in (src_fd, *sinks):
        os.set_blocking(fd, False)
    if not sinks:
        res.ended = NO_SINKS
        return res, sinks
    check_sinks(sinks)
    if counters is not None and len(counters) < 1 + len(sinks):
        raise ValueError(f"counters needs {1 + len(sinks)} slots, has {len(counters)}")
    return res, sinks


def run(sc: Syscalls, name: str, src_fd: int, sink_fds: Sequence[int], *,
        buffer_size: int, stop_fd: int = -1, counters=None) -> RelayResult:
    res, sinks = start(name, src_fd, sink_fds, counters)
    if res.ended:
        return res
    pipes = PipeSet(sc.set_pipe_size, sc.get_pipe_size, buffer_size)
    try:
        _loop(sc, res, src_fd, sinks, stop_fd, counters, pipes)
    finally:
        pipes.close()
    return res


def _loop(sc: Syscalls, res: RelayResult, src_fd: int, sinks: List[int], stop_fd: int,
          counters, pipes: PipeSet) -> None:
    # Invariants, true at the top of every pass:
    # - n_in is the number of bytes in the source pipe; held[i] the number in sink i's
    #   pipe. They only change with the syscall that moved those bytes (EAGAIN cannot
    #   tell which side of a splice is blocked; the counts can).
    # - Sink i has received from the source pipe's head ahead[i] bytes that are still
    #   in it (tee copies from the head, never from an offset), so only sinks with
    #   ahead[i] == 0 may tee; then the source pipe drops min(ahead[live]) bytes.
    #   A byte leaves the source pipe only once every live sink pipe holds it.
    # - bytes_in == n_in + (sink_bytes[i] + held[i] + ahead[i] - that tee'd part)
    #   i.e. every live sink is owed exactly the bytes still queued for it.
    # - A *_ready flag is False only after EAGAIN; only poll sets it back.
    # - With one sink ("direct"), the source pipe is that sink's pipe: held[0] is
    #   n_in, nothing is tee'd.
    # - A teed sink (a pipe, with several sinks) has no pipe of ours: tee puts the
    #   bytes in it, so held[i] stays 0, and its EAGAIN means its reader is behind.
    # A retired sink's pipe is never read again, and every pipe is closed on return.
    n = len(sinks)
    direct = n == 1
    in_r, in_w, in_cap = pipes.new()
    res.pipe_size = in_cap
    teed = teed_sinks(sinks, direct, pipes)
    res.teed = sum(teed)
    if direct:
        outs = [(in_r, in_cap)]
    else:
        outs = [None if t else pipes.new() for t in teed]
        null = pipes.devnull()
    held = [0] * n
    ahead = [0] * n
    tee_full = [False] * n
    sink_ready = [True] * n
    live = list(range(n))
    n_in = 0
    src_ready, src_full, src_done = True, False, False
    splice, tee = sc.splice, sc.tee
    nb_move = SPLICE_F_NONBLOCK | SPLICE_F_MOVE
    progress = True
    while True:
        # Wait, or just look at stop_fd when the last pass moved bytes.
        waits = []
        if not (src_done or src_ready or src_full):
            waits.append((src_fd, select.POLLIN, -1))
        for i in live:
            if not sink_ready[i] and (held[i] or (teed[i] and n_in)):
                waits.append((sinks[i], select.POLLOUT, i))
        if not waits and not progress:
            raise RuntimeError(f"{res.backend} relay stalled: nothing to wait for")
        for fd, i in _poll(waits, stop_fd, 0 if progress else -1):
            if i == -2:
                res.ended = STOPPED
                return
            if i == -1:
                src_ready = True
            else:
                sink_ready[i] = True
        progress = False

        # 1. source -> source pipe
        level = held[0] if direct else n_in
        if not src_done and src_ready and not src_full and level < in_cap:
            try:
                k = splice(src_fd, in_w, in_cap - level, nb_move)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    # With bytes queued the pipe may be full (in page slots): wait for
                    # a sink to drain it rather than poll a readable socket in a spin.
                    if level:
                        src_full = True
                    else:
                        src_ready = False
                elif e.errno in UNSUPPORTED and res.bytes_in == 0:
                    raise SpliceUnsupported(
                        e.errno, f"splice from fd {src_fd}: {e.strerror}") from e
                else:
                    src_done, res.source_error = True, e
            else:
                if k == 0:
                    src_done = True
                else:
                    res.bytes_in += k
                    if counters is not None:
                        counters[0] = res.bytes_in
                    if direct:
                        held[0] += k
                    else:
                        n_in += k
                    progress = True

        # 2. source pipe -> every sink pipe (tee), then drop what all of them hold
        if n_in:
            for i in list(live):
                if teed[i]:  # straight into the sink (a pipe): nothing held on our side
                    if ahead[i] or not sink_ready[i]:
                        continue
                    try:
                        k = tee(in_r, sinks[i], n_in, SPLICE_F_NONBLOCK)
                    except OSError as e:
                        if e.errno != errno.EAGAIN:   # EPIPE...: retire it, the others go on
                            res.sink_errors[i] = e
                            live.remove(i)
                            progress = True
                            continue
                        k = 0
                    if k == 0:  # its reader is behind: poll for room
                        sink_ready[i] = False
                        continue
                    ahead[i] = k
                    res.sink_bytes[i] += k
                    if counters is not None:
                        counters[1 + i] = res.sink_bytes[i]
                    progress = True
                    continue
                if ahead[i] or tee_full[i]:
                    continue
                r, w, cap = outs[i]
                want = min(n_in, cap - held[i])
                if want <= 0:
                    continue
                try:
                    k = tee(in_r, w, want, SPLICE_F_NONBLOCK)
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        raise
                    k = 0
                if k == 0:  # out of page slots: wait until this sink drains
                    tee_full[i] = True
                    continue
                ahead[i] = k
                held[i] += k
                progress = True
            if live:
                d = min(ahead[i] for i in live)
                if d:
                    _drop(splice, in_r, null, d)
                    n_in -= d
                    for i in live:
                        ahead[i] -= d
                    src_full = False
                    progress = True

        # 3. each sink pipe -> its sink
        flags = nb_move if src_done else nb_move | SPLICE_F_MORE
        for i in list(live):
            if not (held[i] and sink_ready[i]):
                continue
            try:
                k = splice(outs[i][0], sinks[i], held[i], flags)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    sink_ready[i] = False
                else:  # EPIPE, ECONNRESET, ENOSPC...: retire it, the others go on
                    res.sink_errors[i] = e
                    live.remove(i)
                    progress = True  # what the others hold may now be dropped
                continue
            if k == 0:
                sink_ready[i] = False
                continue
            held[i] -= k
            res.sink_bytes[i] += k
            if counters is not None:
                counters[1 + i] = res.sink_bytes[i]
            tee_full[i] = False
            if direct:
                src_full = False
            progress = True

        if not live:
            res.ended = NO_SINKS
            return
        if src_done and not n_in and not any(held[i] for i in live):
            res.ended = SOURCE_ERROR if res.source_error else EOF
            return


def _poll(waits, stop_fd: int, timeout: int):
    """(fd, tag) for every fd ready; tag -2 is stop_fd, -1 the source, else a sink."""
    p = select.poll()
    tags = {}
    for fd, ev, tag in waits:
        p.register(fd, ev)
        tags[fd] = tag
    if stop_fd >= 0:
        p.register(stop_fd, select.POLLIN)
        tags[stop_fd] = -2
    return [(fd, tags[fd]) for fd, ev in p.poll(timeout) if ev & _POLL_READY]


def _drop(splice, pipe_r: int, null: int, count: int) -> None:
    """Discard count bytes from the head of a pipe, without copying them."""
    while count:
        count -= splice(pipe_r, null, count, SPLICE_F_MOVE)
