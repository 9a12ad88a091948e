"""What a relay run reports back to the control plane."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from kadeploy.core.states import Word


class Ended(Word):
    """Why a relay run ended."""
    EOF = "eof"                    # the source was read to its clean end
    SOURCE_ERROR = "source-error"  # reading failed, e.g. a reset connection
    STOPPED = "stopped"            # the stop fd became readable
    NO_SINKS = "no-sinks"          # every sink failed, so nobody wanted the rest


# The names every backend (the compiled one too) and the control plane use.
EOF, SOURCE_ERROR, STOPPED, NO_SINKS = Ended.EOF, Ended.SOURCE_ERROR, Ended.STOPPED, Ended.NO_SINKS


class SpliceUnsupported(OSError):
    """splice/tee refused for these fds (EINVAL/ENOSYS) before any byte moved.

    Raised only when no byte was consumed from the source, so the caller can run
    the same transfer again on a copying backend.
    """


@dataclass
class RelayResult:
    backend: str
    bytes_in: int = 0
    # Per sink, in the order given: bytes written and the error that retired it.
    sink_bytes: List[int] = field(default_factory=list)
    sink_errors: List[Optional[OSError]] = field(default_factory=list)
    ended: Optional[Ended] = None  # None while the relay runs
    source_error: Optional[OSError] = None
    # Capacity in bytes of the pipes the splice backends obtained (F_GETPIPE_SZ after
    # F_SETPIPE_SZ); 0 for the copy backend, which uses no pipe.
    pipe_size: int = 0
    # How many sinks (pipes, beside other sinks) were tee'd into straight, with no
    # pipe of the relay's own in between; 0 for the copy backend.
    teed: int = 0

    @property
    def eof(self) -> bool:
        return self.ended == EOF

    def sink_ok(self, i: int) -> bool:
        return self.sink_errors[i] is None and self.sink_bytes[i] == self.bytes_in
