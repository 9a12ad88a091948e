"""The relay's sinks by name, on the server and on every node alike.

The relay takes a list of fds and answers with one error per fd, in the same order;
everything around it speaks of sinks by name: a child by its node id, and the named
local sinks CONSUMER, DIGEST and SPOOL. This is the one place that turns one into the
other.
"""
from __future__ import annotations

import array
from typing import Dict, Hashable, Iterator, List, Optional, Tuple

CONSUMER = "consumer"   # a node's consumer process (tar x, dd, ...)
DIGEST = "digest"       # the pipe to the digest thread: the one copy that leaves the kernel
SPOOL = "spool"         # the server's repair spool


class Sinks:
    """An ordered set of (name, fd): the order is the relay's."""

    def __init__(self) -> None:
        self._items: List[Tuple[Hashable, int]] = []

    def add(self, name: Hashable, fd: int) -> None:
        assert name not in self.names(), f"sink {name!r} twice"
        self._items.append((name, fd))

    def names(self) -> List[Hashable]:
        return [name for name, _ in self._items]

    def fds(self) -> List[int]:
        return [fd for _, fd in self._items]

    def index(self, name: Hashable) -> int:
        return self.names().index(name)

    def __contains__(self, name: Hashable) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[Tuple[Hashable, int]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def counters(self) -> array.array:
        """The relay's counters for these sinks: [bytes in, bytes to each sink...]."""
        return array.array("Q", [0] * (1 + len(self._items)))

    def sent(self, counters: array.array, name: Hashable) -> int:
        """Bytes the relay has written to the sink `name`, from its counters."""
        return counters[1 + self.index(name)]

    def errors(self, sink_errors) -> Dict[Hashable, Optional[BaseException]]:
        """The relay's per-fd errors (RelayResult.sink_errors), by name."""
        return {name: err for (name, _), err in zip(self._items, sink_errors)}

    def retire(self, sink_errors) -> Dict[Hashable, BaseException]:
        """Remove the sinks that failed; return their errors by name."""
        failed = {n: e for n, e in self.errors(sink_errors).items() if e is not None}
        self._items = [(n, fd) for n, fd in self._items if n not in failed]
        return failed
