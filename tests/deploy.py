"""Drive real ka-d-server / ka-d-client processes, on loopback or inside namespaces."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from kadeploy.lab.ports import free_port  # noqa: F401  (the tests and bench/ take it from here)

KD = [sys.executable, "-m", "kadeploy"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tar_producer(src: str) -> str:
    return f"tar --create --sparse --numeric-owner --directory '{src}' ."


class Proc:
    """A command with its output captured to files (pipes could fill and block it)."""

    def __init__(self, name: str, argv: Sequence[str], logdir: str, env=None):
        self.name = name
        self.argv = list(argv)
        self._out = open(os.path.join(logdir, f"{name}.out"), "w+")
        self._err = open(os.path.join(logdir, f"{name}.err"), "w+")
        self.popen = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err,
                                      stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not finish in {timeout} s\n{self.err}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            if sig == signal.SIGKILL:
                self.popen.wait()

    def _read(self, f) -> str:
        f.flush()
        f.seek(0)
        return f.read()

    @property
    def out(self) -> str:
        return self._read(self._out)

    @property
    def err(self) -> str:
        return self._read(self._err)

    def close(self) -> None:
        self.kill()
        self._out.close()
        self._err.close()


class Deployment:
    """Processes of one deployment; `wrap(ns)` turns an argv into one run in a namespace."""

    def __init__(self, logdir: str, *, wrap=None, loopback: bool = True):
        self.logdir = logdir
        self.wrap = wrap
        self.procs: List[Proc] = []
        # On one host the clients must not take the server's data port before it starts.
        ctrl = ["-p", str(free_port())]
        self.ports = ctrl + ["-P", str(free_port())] if loopback else []
        self.client_ports = ctrl + ["-P", str(free_port())] if loopback else []
        self.env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def _start(self, name: str, argv: List[str], where=None) -> Proc:
        if where is not None:
            argv = self.wrap(where, argv)
        p = Proc(name, argv, self.logdir, env=self.env)
        self.procs.append(p)
        return p

    def server(self, *args: str, where=None, name: str = "server") -> Proc:
        return self._start(name, KD + ["server", *self.ports, *args], where)

    def client(self, *args: str, where=None, name: Optional[str] = None) -> Proc:
        name = name or f"client{sum(p.name.startswith('client') for p in self.procs) + 1}"
        return self._start(name, KD + ["client", *self.client_ports, *args], where)

    def wait_all(self, timeout: float = 120) -> List[int]:
        deadline = time.monotonic() + timeout
        return [p.wait(max(1, deadline - time.monotonic())) for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            p.close()


def load_report(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def assert_one_line_error(proc: Proc, expected_status: int, fragment: str) -> None:
    """A bad input ends with one line on stderr naming the problem, and no traceback."""
    status = proc.wait(60)
    err = proc.err
    assert status == expected_status, f"{proc.name} exited {status}, not {expected_status}:\n{err}"
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert fragment in last, f"{fragment!r} not in the last line: {last!r}\n{err}"


def make_targets(root, n: int) -> List[str]:
    """node1 .. nodeN directories under root, for the default consumer's --target."""
    paths = [os.path.join(str(root), f"node{i}") for i in range(1, n + 1)]
    for p in paths:
        os.makedirs(p)
    return paths


def assert_same_tree(src, dst) -> None:
    from kadeploy.lab.treedigest import diff_manifests, tree_manifest
    diffs = diff_manifests(tree_manifest(str(src)), tree_manifest(str(dst)))
    assert not diffs, f"{dst} differs from {src}:\n" + "\n".join(diffs[:20])
