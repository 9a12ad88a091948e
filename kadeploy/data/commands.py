"""The producer and consumer commands: defaults, and running them through the shell."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from typing import Optional

from kadeploy.defaults import DEFAULT_TARGET  # noqa: F401 (named there, with why)

# The original's producer default, unchanged.
DEFAULT_PRODUCER = "(cd /; tar --create --one-file-system --sparse /)"
CONSUMER_TEMPLATE = ("tar --extract --read-full-records --same-permissions --numeric-owner "
                     "--sparse --file - --directory {target}")


def default_consumer(target: str) -> str:
    return CONSUMER_TEMPLATE.format(target=shlex.quote(target))


def spawn_producer(command: str) -> subprocess.Popen:
    """`sh -c command` with its stdout as the stream; stderr stays visible (the
    original closed it and lost tar's warnings)."""
    return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, start_new_session=True)


def spawn_consumer(command: str, cwd: Optional[str] = None) -> subprocess.Popen:
    """`sh -c command` reading the stream on its stdin; its stdout goes to our stderr so
    that the client's own stdout stays clean."""
    return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                            stdout=2, cwd=cwd, start_new_session=True)


def describe_status(returncode: Optional[int]) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


def kill_group(proc: subprocess.Popen) -> None:
    """End a command and whatever it started (it runs in its own session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
