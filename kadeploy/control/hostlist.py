"""The server's --hosts list: which entry (if any) a connection's real source address is.

Entries that are addresses match as they are; names are resolved here, by the
server, and match on what they resolve to. A name's addresses are looked up when
the list is first needed and again (at most every REFRESH seconds) when a
connection matches nothing, so that a node whose address changed after the server
started (DHCP) is still recognised. The matching itself is the index
kadeploy.core.topology.HostList, rebuilt after each look-up.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Dict, FrozenSet, List, Optional, Sequence

from kadeploy.core.addresses import normalize_address
from kadeploy.core.topology import HostList

log = logging.getLogger("kadeploy.server")
REFRESH = 2.0


class ResolvedHosts:
    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts: List[str] = list(hosts)
        self.index = HostList(self.hosts)
        self.names = self.index.names
        self.resolved: Dict[str, FrozenSet[str]] = {}
        self._looked_up: Optional[float] = None
        self._lock = asyncio.Lock()

    async def rank(self, source: str) -> Optional[int]:
        """The index of the entry naming `source`, or None: not a listed host."""
        if self.names and self._looked_up is None:
            await self._resolve()
        found = self.index.first_match(source)
        if found is None and self.names and self._stale():
            await self._resolve()
            found = self.index.first_match(source)
        return found

    def _stale(self) -> bool:
        return self._looked_up is None or asyncio.get_running_loop().time() - self._looked_up > REFRESH

    async def _resolve(self) -> None:
        async with self._lock:
            if self._looked_up is not None and not self._stale():
                return   # another connection just did it
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(
                *(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM) for name in self.names),
                return_exceptions=True)
            for name, res in zip(self.names, results):
                if isinstance(res, BaseException):
                    if name not in self.resolved:
                        log.warning("--hosts entry %r does not resolve: %s", name,
                                    getattr(res, "strerror", None) or res)
                    self.resolved[name] = frozenset()
                else:
                    self.resolved[name] = frozenset(normalize_address(info[4][0]) for info in res)
            self.index = HostList(self.hosts, self.resolved)
            self._looked_up = loop.time()
