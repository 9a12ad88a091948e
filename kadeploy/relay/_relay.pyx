# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled relay: the whole splice/tee data path of a node, run without the GIL.

Setup (fd checks, pipes, their sizes) is the Python code shared with the other splice
backends (kadeploy.relay._splice); the loop below is the C twin of its ``_loop``.
"""
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno, EAGAIN, EINTR, EINVAL, ENOSYS
from libc.stdlib cimport calloc, free

from kadeploy.relay.includes.libc cimport (
    splice, tee, fcntl, poll, pollfd, nfds_t, SPLICE_F_MOVE, SPLICE_F_NONBLOCK,
    SPLICE_F_MORE, F_SETPIPE_SZ, F_GETPIPE_SZ, POLLIN, POLLOUT)

include "includes/consts.pxi"

import os

from kadeploy.relay import _splice
from kadeploy.relay.result import (
    EOF, NO_SINKS, SOURCE_ERROR, STOPPED, RelayResult, SpliceUnsupported)

NAME = "cython"


def set_pipe_size(int fd, int size):
    cdef int ret = fcntl(fd, F_SETPIPE_SZ, size)
    if ret < 0:
        _raise_errno(errno, "F_SETPIPE_SZ")
    return ret


def get_pipe_size(int fd):
    cdef int ret = fcntl(fd, F_GETPIPE_SZ)
    if ret < 0:
        _raise_errno(errno, "F_GETPIPE_SZ")
    return ret


cdef _raise_errno(int err, what):
    # OSError(errno, ...) builds the matching subclass (BrokenPipeError, ...).
    raise OSError(err, f"{what}: {os.strerror(err)}")


def run(int src_fd, sink_fds, *, buffer_size, int stop_fd=-1, counters=None, **_ignored):
    res, sinks = _splice.start(NAME, src_fd, sink_fds, counters)
    if res.ended:
        return res

    cdef unsigned long long[::1] cview
    cdef Loop L
    cdef int i, end
    pipes = _splice.PipeSet(set_pipe_size, get_pipe_size, buffer_size)
    L.sinks = NULL
    L.pfds = NULL
    L.tags = NULL
    try:
        L.src_fd = src_fd
        L.stop_fd = stop_fd
        L.nsinks = L.nlive = len(sinks)
        L.direct = L.nsinks == 1
        L.n_in = 0
        L.null_fd = -1
        L.src_ready, L.src_full, L.src_done = True, False, False
        L.src_err = L.fatal_err = 0
        L.fatal_what = NULL
        L.bytes_in = 0
        L.counters = NULL
        if counters is not None:
            cview = counters
            L.counters = &cview[0]
        L.sinks = <Sink *>calloc(L.nsinks, sizeof(Sink))
        L.pfds = <pollfd *>calloc(L.nsinks + 2, sizeof(pollfd))
        L.tags = <int *>calloc(L.nsinks + 2, sizeof(int))
        if L.sinks == NULL or L.pfds == NULL or L.tags == NULL:
            raise MemoryError()
        L.in_r, L.in_w, L.in_cap = pipes.new()
        res.pipe_size = L.in_cap
        if not L.direct:
            L.null_fd = pipes.devnull()
        teed = _splice.teed_sinks(sinks, L.direct, pipes)
        res.teed = sum(teed)
        for i in range(L.nsinks):
            L.sinks[i].fd = sinks[i]
            L.sinks[i].live = L.sinks[i].ready = True
            L.sinks[i].teed = teed[i]
            if teed[i]:
                L.sinks[i].pipe_r = L.sinks[i].pipe_w = -1
            elif L.direct:
                L.sinks[i].pipe_r, L.sinks[i].pipe_w, L.sinks[i].cap = L.in_r, L.in_w, L.in_cap
            else:
                L.sinks[i].pipe_r, L.sinks[i].pipe_w, L.sinks[i].cap = pipes.new()

        with nogil:
            end = relay_loop(&L)

        res.bytes_in = L.bytes_in
        for i in range(L.nsinks):
            res.sink_bytes[i] = L.sinks[i].sent
            if L.sinks[i].err:
                res.sink_errors[i] = OSError(L.sinks[i].err,
                                             f"splice to fd {sinks[i]}: {os.strerror(L.sinks[i].err)}")
        if end == END_UNSUPPORTED:
            raise SpliceUnsupported(L.src_err,
                                    f"splice from fd {src_fd}: {os.strerror(L.src_err)}")
        if end == END_FATAL:
            _raise_errno(L.fatal_err, L.fatal_what.decode())
        if end == END_STALLED:
            raise RuntimeError("cython relay stalled: nothing to wait for")
        if L.src_err:
            res.source_error = OSError(L.src_err,
                                       f"splice from fd {src_fd}: {os.strerror(L.src_err)}")
        res.ended = {END_EOF: EOF, END_SOURCE_ERROR: SOURCE_ERROR,
                     END_STOPPED: STOPPED, END_NO_SINKS: NO_SINKS}[end]
        return res
    finally:
        free(L.sinks)
        free(L.pfds)
        free(L.tags)
        pipes.close()


cdef inline ssize_t splice_r(int fd_in, int fd_out, size_t n, unsigned int flags) noexcept nogil:
    """splice with EINTR retried; -errno on failure (errno saved at once)."""
    cdef ssize_t k
    while True:
        k = splice(fd_in, NULL, fd_out, NULL, n, flags)
        if k >= 0:
            return k
        if errno != EINTR:
            return -errno


cdef inline ssize_t tee_r(int fd_in, int fd_out, size_t n, unsigned int flags) noexcept nogil:
    cdef ssize_t k
    while True:
        k = tee(fd_in, fd_out, n, flags)
        if k >= 0:
            return k
        if errno != EINTR:
            return -errno


cdef inline int _fatal(Loop *L, int err, const char *what) noexcept nogil:
    L.fatal_err = err
    L.fatal_what = what
    return END_FATAL


cdef int relay_loop(Loop *L) except -1 nogil:
    # Invariants, true at the top of every pass:
    # - L.n_in is the number of bytes in the source pipe, s.held the number in sink
    #   s's pipe. They change only with the syscall that moved those bytes (EAGAIN
    #   cannot tell which side of a splice is blocked; the counts can).
    # - Sink s has received from the source pipe's head s.ahead bytes that are still
    #   in it (tee copies from the head, never from an offset), so only sinks with
    #   s.ahead == 0 may tee; then the source pipe drops min(ahead of live sinks).
    #   A byte leaves the source pipe only once every live sink's pipe holds it.
    # - A ready flag is False only after EAGAIN; only poll sets it back.
    # - One sink ("direct"): the source pipe is that sink's pipe; s.held counts it
    #   and nothing is tee'd.
    # - A teed sink (a pipe, with several sinks) has no pipe of ours: tee puts the
    #   bytes in it, so s.held stays 0, and its EAGAIN means its reader is behind.
    # A retired sink's pipe is never read again; the caller closes every pipe.
    cdef bint progress = True
    cdef int i, j, nwait, rc, tag
    cdef ssize_t k
    cdef size_t level, want, d
    cdef unsigned int flags
    cdef unsigned int nb_move = SPLICE_F_NONBLOCK | SPLICE_F_MOVE
    cdef Sink *s
    cdef Sink *s0 = &L.sinks[0]

    while True:
        # -- wait (or, after a pass that moved bytes, just peek at stop_fd) --
        nwait = 0
        if not (L.src_done or L.src_ready or L.src_full):
            L.pfds[nwait].fd = L.src_fd
            L.pfds[nwait].events = POLLIN
            L.tags[nwait] = TAG_SOURCE
            nwait += 1
        for i in range(L.nsinks):
            s = &L.sinks[i]
            if s.live and not s.ready and (s.held or (s.teed and L.n_in)):
                L.pfds[nwait].fd = s.fd
                L.pfds[nwait].events = POLLOUT
                L.tags[nwait] = i
                nwait += 1
        if nwait == 0 and not progress:
            return END_STALLED
        if L.stop_fd >= 0:
            L.pfds[nwait].fd = L.stop_fd
            L.pfds[nwait].events = POLLIN
            L.tags[nwait] = TAG_STOP
            nwait += 1
        if nwait:
            while True:
                rc = poll(L.pfds, <nfds_t>nwait, POLL_PEEK if progress else POLL_BLOCK)
                if rc >= 0:
                    break
                if errno != EINTR:
                    return _fatal(L, errno, b"poll")
                with gil:
                    PyErr_CheckSignals()  # let Ctrl-C and friends through
            for j in range(nwait):
                if not L.pfds[j].revents:
                    continue
                tag = L.tags[j]
                if tag == TAG_STOP:
                    return END_STOPPED
                elif tag == TAG_SOURCE:
                    L.src_ready = True
                else:
                    L.sinks[tag].ready = True
        progress = False

        # -- 1. source -> source pipe --
        level = s0.held if L.direct else L.n_in
        if not L.src_done and L.src_ready and not L.src_full and level < L.in_cap:
            k = splice_r(L.src_fd, L.in_w, L.in_cap - level, nb_move)
            if k == -EAGAIN:
                # With bytes queued the pipe may be full in page slots: wait for a
                # sink to drain it rather than spin on a readable socket.
                if level:
                    L.src_full = True
                else:
                    L.src_ready = False
            elif k < 0:
                if (k == -EINVAL or k == -ENOSYS) and L.bytes_in == 0:
                    L.src_err = <int>-k
                    return END_UNSUPPORTED
                L.src_err = <int>-k
                L.src_done = True
            elif k == 0:
                L.src_done = True
            else:
                L.bytes_in += k
                if L.counters != NULL:
                    L.counters[0] = L.bytes_in
                if L.direct:
                    s0.held += k
                else:
                    L.n_in += k
                progress = True

        # -- 2. source pipe -> every sink pipe (tee), then drop what all hold --
        if L.n_in:
            for i in range(L.nsinks):
                s = &L.sinks[i]
                if s.teed:  # straight into the sink (a pipe): nothing held on our side
                    if not s.live or s.ahead or not s.ready:
                        continue
                    k = tee_r(L.in_r, s.fd, L.n_in, SPLICE_F_NONBLOCK)
                    if k == 0 or k == -EAGAIN:   # its reader is behind: poll for room
                        s.ready = False
                        continue
                    if k < 0:                    # EPIPE...: retire it, the others go on
                        s.err = <int>-k
                        s.live = False
                        L.nlive -= 1
                        progress = True
                        continue
                    s.ahead = k
                    s.sent += k
                    if L.counters != NULL:
                        L.counters[1 + i] = s.sent
                    progress = True
                    continue
                if not s.live or s.ahead or s.tee_full or s.held >= s.cap:
                    continue
                want = L.n_in if L.n_in < s.cap - s.held else s.cap - s.held
                k = tee_r(L.in_r, s.pipe_w, want, SPLICE_F_NONBLOCK)
                if k == 0 or k == -EAGAIN:  # out of page slots: wait until it drains
                    s.tee_full = True
                    continue
                if k < 0:
                    return _fatal(L, <int>-k, b"tee")
                s.ahead = k
                s.held += k
                progress = True
            d = L.n_in
            for i in range(L.nsinks):
                if L.sinks[i].live and L.sinks[i].ahead < d:
                    d = L.sinks[i].ahead
            if d and L.nlive:
                while d:  # discard the head of the source pipe without copying it
                    k = splice_r(L.in_r, L.null_fd, d, SPLICE_F_MOVE)
                    if k <= 0:
                        return _fatal(L, <int>-k if k < 0 else EAGAIN, b"splice to /dev/null")
                    d -= k
                    L.n_in -= k
                    for i in range(L.nsinks):
                        if L.sinks[i].live:
                            L.sinks[i].ahead -= k
                L.src_full = False
                progress = True

        # -- 3. each sink pipe -> its sink --
        flags = nb_move if L.src_done else nb_move | SPLICE_F_MORE
        for i in range(L.nsinks):
            s = &L.sinks[i]
            if not (s.live and s.held and s.ready):
                continue
            k = splice_r(s.pipe_r, s.fd, s.held, flags)
            if k == -EAGAIN or k == 0:
                s.ready = False
                continue
            if k < 0:  # EPIPE, ECONNRESET, ENOSPC...: retire it, the others go on
                s.err = <int>-k
                s.live = False
                L.nlive -= 1
                progress = True  # what the others hold may now be dropped
                continue
            s.held -= k
            s.sent += k
            if L.counters != NULL:
                L.counters[1 + i] = s.sent
            s.tee_full = False
            if L.direct:
                L.src_full = False
            progress = True

        # -- end? --
        if L.nlive == 0:
            return END_NO_SINKS
        if L.src_done and L.n_in == 0:
            for i in range(L.nsinks):
                if L.sinks[i].live and L.sinks[i].held:
                    break
            else:
                return END_SOURCE_ERROR if L.src_err else END_EOF
