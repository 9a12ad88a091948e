"""Listening TCP sockets, with no asyncio: the server binds its own before the control
plane is imported (kadeploy.cli), so a node started first connects at once."""
from __future__ import annotations

import ipaddress
import os
import socket
from typing import Optional, Tuple

from kadeploy.control import early
from kadeploy.errors import KadeployError


def listen(port: int, bind: Optional[str] = None, *, backlog: int = early.LISTEN_BACKLOG,
           fallback_to_any_port: bool = False) -> socket.socket:
    """A listening TCP socket: dual-stack on every address unless `bind` is given.

    With fallback_to_any_port, a port already in use (another client on this host)
    is replaced by one the kernel picks."""
    family, addr = _bind_target(bind)
    try:
        sock = early.bound_listener(family, addr, port, dual_stack=bind is None, backlog=backlog,
                                    fallback_to_any_port=fallback_to_any_port)
    except OSError as e:
        raise KadeployError(f"cannot listen on TCP port {port}: {os.strerror(e.errno)}") from None
    return socket.socket(fileno=sock.detach())


def _bind_target(bind: Optional[str]) -> Tuple[int, str]:
    if bind is None:
        return early.every_address()
    try:
        ip = ipaddress.ip_address(bind.split("%", 1)[0])
    except ValueError:
        infos = socket.getaddrinfo(bind, None, type=socket.SOCK_STREAM)
        return infos[0][0], infos[0][4][0]
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), bind


def server_listeners(cfg) -> Tuple[socket.socket, socket.socket]:
    """The server's control and data listeners, for its ServerConfig."""
    return listen(cfg.control_port, cfg.bind), listen(cfg.data_port, cfg.bind)
