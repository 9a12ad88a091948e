"""The commands' log: one line per event on stderr, prefixed by the command's name."""
from __future__ import annotations

import logging
from typing import List, Optional


def setup_logging(prog: str, quiet: bool, verbose: bool, log_file: Optional[str] = None) -> None:
    """The log on stderr; with `log_file`, there instead, and only warnings and errors on
    stderr too (another process draws on that terminal)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    from kadeploy.view.progress import StderrHandler
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
