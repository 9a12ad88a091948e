"""The python backend: ``os.splice`` (Python >= 3.10) plus tee.

Python has no ``os.tee``. tee comes from ctypes' ``libc.tee`` with ``use_errno=True``;
ctypes needs no compiler, so this backend runs anywhere os.splice exists. Pipes are
sized with the fcntl module. The loop itself is the shared one in ``_splice``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from kadeploy.relay import _splice

NAME = "python"

if not hasattr(os, "splice"):
    raise ImportError("os.splice needs Python >= 3.10 on Linux")


def _ctypes_tee():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    raw = libc.tee  # AttributeError when this libc has none: reported as ImportError
    raw.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
    raw.restype = ctypes.c_ssize_t

    def tee(fd_in: int, fd_out: int, count: int, flags: int) -> int:
        while True:
            ret = raw(fd_in, fd_out, count, flags)
            if ret >= 0:
                return ret
            e = ctypes.get_errno()
            if e != errno.EINTR:
                raise OSError(e, f"tee: {os.strerror(e)}")
    return tee


try:
    _tee = _ctypes_tee()
except (OSError, AttributeError) as exc:
    raise ImportError(f"no tee(2) available through ctypes: {exc}") from exc


def _splice_call(fd_in: int, fd_out: int, count: int, flags: int) -> int:
    return os.splice(fd_in, fd_out, count, flags=flags)  # retries EINTR itself (PEP 475)


SYSCALLS = _splice.Syscalls(
    splice=_splice_call,
    tee=_tee,
    set_pipe_size=_splice.fcntl_set_pipe_size,
    get_pipe_size=_splice.fcntl_get_pipe_size,
)


def run(src_fd, sink_fds, *, buffer_size, stop_fd=-1, counters=None, **_ignored):
    return _splice.run(SYSCALLS, NAME, src_fd, sink_fds, buffer_size=buffer_size,
                       stop_fd=stop_fd, counters=counters)
