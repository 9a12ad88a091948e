"""Free TCP ports for the demo, the tests and the benchmarks, which run a server and its
clients on one host."""
from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A TCP port free now, below the kernel's ephemeral range: a client whose data port
    is taken falls back to any free port (bind to 0, an ephemeral one), and must not take
    the port this gives the server before the server has bound it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")
