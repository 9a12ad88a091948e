"""The cffi backend: the shared Python splice/tee loop over cffi's libc bindings.

Needs ``kadeploy.relay._libc_cffi``, built at install by buildutils/build_cffi.py; when it
did not build, importing this module raises ImportError and the backend is reported
unavailable.
"""
from __future__ import annotations

import errno
import os

from kadeploy.relay import _splice
from kadeploy.relay._libc_cffi import ffi, lib

NAME = "cffi"


def _check(ret: int, what: str) -> int:
    if ret >= 0:
        return ret
    e = ffi.errno  # read first: anything else may clobber it
    raise OSError(e, f"{what}: {os.strerror(e)}")


def _retry(call, what):
    def wrapped(*args):
        while True:
            ret = call(*args)
            if ret < 0 and ffi.errno == errno.EINTR:
                continue
            return _check(ret, what)
    return wrapped


_splice_raw = _retry(lib.splice, "splice")
_tee_raw = _retry(lib.tee, "tee")


def splice(fd_in: int, fd_out: int, count: int, flags: int) -> int:
    return _splice_raw(fd_in, ffi.NULL, fd_out, ffi.NULL, count, flags)


def tee(fd_in: int, fd_out: int, count: int, flags: int) -> int:
    return _tee_raw(fd_in, fd_out, count, flags)


SYSCALLS = _splice.Syscalls(
    splice=splice,
    tee=tee,
    set_pipe_size=_retry(lib.kd_set_pipe_size, "F_SETPIPE_SZ"),
    get_pipe_size=_retry(lib.kd_get_pipe_size, "F_GETPIPE_SZ"),
)


def run(src_fd, sink_fds, *, buffer_size, stop_fd=-1, counters=None, **_ignored):
    return _splice.run(SYSCALLS, NAME, src_fd, sink_fds, buffer_size=buffer_size,
                       stop_fd=stop_fd, counters=counters)
