"""The commands' log: one line per event on stderr, prefixed by the command's name."""
from __future__ import annotations

import logging
import sys
from typing import List, Optional


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so that log lines go above a
    live table (rich redirects sys.stderr while it draws)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; we always look it up
        pass


def setup_logging(prog: str, quiet: bool, verbose: bool, log_file: Optional[str] = None) -> None:
    """The log on stderr; with `log_file`, there instead, and only warnings and errors on
    stderr too (another process draws on that terminal)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    form = logging.Formatter(f"%(asctime)s.%(msecs)03d {prog}: %(message)s", "%H:%M:%S")
    handlers: List[logging.Handler] = [StderrHandler()]
    if log_file:
        handlers[0].setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(form)
    root = logging.getLogger("kadeploy")
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = False
