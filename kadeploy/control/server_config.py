"""ka-d-server's configuration, apart from the server: the command line builds it and
binds the listeners before the control plane (asyncio among it) is imported."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from kadeploy.data.commands import DEFAULT_PRODUCER
from kadeploy.defaults import (
    BUFFER_SIZE,
    CONNECT_TIMEOUT,
    CONTROL_PORT,
    DATA_PORT,
    DISCOVERY_PORT,
    HANDSHAKE_TIMEOUT,
    MAX_CONNECTIONS,
    PROGRESS_INTERVAL,
    REPAIR_WINDOW,
    STALL_TIMEOUT,
)


@dataclass
class ServerConfig:
    n_clients: int = 1
    arity: int = 1
    session: Optional[str] = None
    producer: str = DEFAULT_PRODUCER
    finish_delay: float = 0.0          # seconds between Finish messages (-d is tenths)
    control_port: int = CONTROL_PORT
    data_port: int = DATA_PORT
    bind: Optional[str] = None
    wait_timeout: Optional[float] = None
    hosts: Optional[List[str]] = None
    relay_backend: Optional[str] = None
    buffer_size: int = BUFFER_SIZE
    sockbuf: Optional[int] = None
    connect_timeout: float = CONNECT_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    discovery_port: int = DISCOVERY_PORT
    progress_interval: float = PROGRESS_INTERVAL
    live: Optional[bool] = None        # live table; None: when stderr is a terminal
    expected_size: Optional[int] = None
    key: Optional[bytes] = None
    max_connections: int = MAX_CONNECTIONS
    verify: bool = True                # chunk digests beside the data, checked by every node
    repair: bool = True                # keep a repair window; re-attach the orphans of a lost node
    spool_dir: Optional[str] = None    # a spool file there instead of the in-memory window
    window: int = REPAIR_WINDOW        # bytes of the stream kept in memory for repairs
    stall_timeout: float = STALL_TIMEOUT  # a node silent this long is given up
    install: Optional[object] = None   # a kadeploy.install.serve.ServerInstall
    compress: str = "none"             # --compress: none, zstd[:LEVEL] or auto (kadeploy.data.codec)
    encrypt: bool = False              # --encrypt: AES-256-GCM of the stream (kadeploy.core.encryption)
    boot_states: Optional[str] = None  # --boot-states: the netboot kit's nodes, shown while they boot
