"""The end every repair feeder shares: a thread that re-serves the stream from an
offset to one repaired node, then closes the socket and says how it ended."""
from __future__ import annotations

import socket
import threading
from typing import Callable, Optional


class Feeder(threading.Thread):
    """`feed()` sends the stream from `offset` to its end (subclasses: from where they
    keep it); on_end gets None when all of it was sent, else the error."""

    def __init__(self, sock: socket.socket, offset: int,
                 on_end: Callable[[Optional[BaseException]], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.sock, self.offset, self.on_end = sock, offset, on_end
        self.sent = 0

    def feed(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        error: Optional[BaseException] = None
        try:
            self.sock.setblocking(True)
            self.feed()
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:
            error = e
        finally:
            self.sock.close()
            self.on_end(error)
