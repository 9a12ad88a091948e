"""The data path: move one byte stream from one fd to many, and the one place
that chooses how.

Contract shared by every backend (tests/test_relay.py holds them all to it):

- ``relay(src_fd, sink_fds, ...)`` reads ``src_fd`` (a socket or pipe) until EOF and
  writes every byte, in order, to each fd of ``sink_fds`` (sockets, pipes, files).
- All fds are switched to non-blocking; the relay waits with poll, never spins.
- A sink that fails (EPIPE, ECONNRESET, ENOSPC...) is retired with its error and the
  others go on; when none is left the relay returns with ``ended == NO_SINKS``.
- A readable ``stop_fd`` ends the relay at once with ``ended == STOPPED``.
- ``counters`` (optional, ``array('Q')`` of ``1 + len(sink_fds)``) is updated as
  bytes move: ``[bytes_in, sink0_bytes, ...]``; the control plane reads it for progress.
- The relay never closes nor shuts down an fd: its caller owns them, and signals EOF
  downstream (close a pipe, ``shutdown(SHUT_WR)`` a socket) after it returns.

Backends: ``cython`` (the compiled splice/tee loop, no GIL), ``python`` (the same
loop in Python, ``os.splice`` plus tee through ctypes), ``copy`` (recv/write with one
buffer: the oracle). ``auto`` tries them in AUTO_ORDER, which is not this order.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, Optional, Sequence

from kadeploy import defaults
from kadeploy.defaults import ENV_BACKEND, ENV_REQUIRE
from kadeploy.relay.result import (
    EOF,
    NO_SINKS,
    SOURCE_ERROR,
    STOPPED,
    RelayResult,
    SpliceUnsupported,
)

BACKENDS = ("cython", "python", "copy")
# The order `auto` tries them in, from bench/RESULTS.md: the compiled loop costs the
# least CPU per GB everywhere; on shaped links (like real ones, where bytes arrive a
# segment at a time) the copy loop beats the splice loop written in Python, whose
# per-iteration overhead outweighs the copies it saves.
AUTO_ORDER = ("cython", "copy", "python")
DEFAULT_BUFFER_SIZE = defaults.BUFFER_SIZE

_MODULES = {
    "cython": "kadeploy.relay.cython_backend",
    "python": "kadeploy.relay.python_backend",
    "copy": "kadeploy.relay.copy",
}
_import_errors: Dict[str, BaseException] = {}


class BackendUnavailable(RuntimeError):
    pass


def _load(name: str):
    if name not in _MODULES:
        raise BackendUnavailable(
            f"unknown relay backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as e:
        _import_errors[name] = e
        raise BackendUnavailable(f"relay backend {name!r} is not available: {e}") from e


def available() -> Dict[str, Optional[str]]:
    """Every backend with None if it loads, else why not."""
    out = {}
    for name in BACKENDS:
        try:
            _load(name)
            out[name] = None
        except BackendUnavailable as e:
            out[name] = str(e)
    return out


def resolve(name: Optional[str] = None) -> str:
    """The backend to use: the name asked for, else $KADEPLOY_RELAY, else `auto`."""
    name = (name or os.environ.get(ENV_BACKEND) or "auto").strip().lower()
    required = os.environ.get(ENV_REQUIRE, "").strip().lower()
    if required:
        _load(required)  # raises BackendUnavailable when it did not build
    if name != "auto":
        _load(name)
        return name
    for candidate in AUTO_ORDER:
        try:
            _load(candidate)
            return candidate
        except BackendUnavailable:
            continue
    raise BackendUnavailable("no relay backend loads")  # copy always does


def check_backend(name: Optional[str]) -> None:
    """A backend that is asked for and does not load is a usage error, said before anything starts."""
    from kadeploy.errors import EXIT_USAGE, KadeployError
    try:
        resolve(name)
    except BackendUnavailable as e:
        raise KadeployError(str(e), exit_code=EXIT_USAGE)


def relay(src_fd: int, sink_fds: Sequence[int], *, backend: Optional[str] = None,
          buffer_size: int = DEFAULT_BUFFER_SIZE, stop_fd: int = -1,
          counters=None) -> RelayResult:
    """Run the relay; fall back to `copy` when splice is refused before any byte moved."""
    name = resolve(backend)
    try:
        return _load(name).run(src_fd, list(sink_fds), buffer_size=buffer_size,
                               stop_fd=stop_fd, counters=counters)
    except SpliceUnsupported:
        res = _load("copy").run(src_fd, list(sink_fds), buffer_size=buffer_size,
                                stop_fd=stop_fd, counters=counters)
        res.backend = f"copy (fallback from {name})"
        return res


async def relay_in_thread(src_fd: int, sink_fds: Sequence[int], *, backend: Optional[str] = None,
                          buffer_size: int = DEFAULT_BUFFER_SIZE, counters=None) -> RelayResult:
    """relay() in a worker thread, for asyncio callers: cancelling the awaiting task
    stops the relay (through its stop fd) and waits for the thread to let go of the fds."""
    import asyncio

    stop_r, stop_w = os.pipe()
    job = asyncio.get_running_loop().run_in_executor(None, lambda: relay(
        src_fd, sink_fds, backend=backend, buffer_size=buffer_size, stop_fd=stop_r,
        counters=counters))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        os.write(stop_w, b"x")
        await job
        raise
    finally:
        os.close(stop_r)
        os.close(stop_w)


__all__ = ["relay", "relay_in_thread", "resolve", "available", "BACKENDS", "AUTO_ORDER", "RelayResult",
           "SpliceUnsupported", "BackendUnavailable", "EOF", "NO_SINKS", "SOURCE_ERROR",
           "STOPPED", "DEFAULT_BUFFER_SIZE", "ENV_BACKEND", "ENV_REQUIRE"]
