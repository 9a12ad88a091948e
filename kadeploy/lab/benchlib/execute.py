"""One experiment on a virtual cluster, measured.

Receivers first (the default): once each receiver listens (its TCP port shows in its
own namespace's /proc/PID/net/tcp6 or tcp), node 0's sender starts, and the wall time
runs from the sender's start to the last receiver's exit. Sender first, as a
deployment runs: node 0 starts, once it listens (a DIY sender retries instead) the
receivers start, and the wall time runs from the first receiver's start to the last
one's exit. Either way the clock starts with the side started last, the same for
every method. For kadeploy the server's report also gives the deployment proper
(placement to the last verdict), without interpreter start-up and registration.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional

from kadeploy.lab.benchlib.methods import Experiment, Plan, counted_bytes, plan

RUNNER = [sys.executable, "-m", "kadeploy.lab.benchlib.runner"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GB = 1e9


def _env() -> Dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=REPO + (os.pathsep + path if path else ""))


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid``'s namespace has ``port`` ready (state from /proc/net/tcp*)."""
    want = f":{port:04X} "
    for name in ("tcp6", "tcp"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    # LISTEN, or ESTABLISHED once its (one-shot) listener was used
                    if cols[3] in ("0A", "01") and (cols[1] + " ").endswith(want):
                        return True
        except (OSError, StopIteration):
            pass
    return False


def _wait_listening(procs, ports: Dict[int, int], deadline: float) -> Optional[str]:
    waiting = dict(ports)
    while waiting:
        for i, port in list(waiting.items()):
            if procs[i].poll() is not None:
                return f"node {i} exited before it listened"
            if _listening(procs[i].pid, port):
                del waiting[i]
        if time.monotonic() > deadline:
            return f"nodes {sorted(waiting)} did not listen in time"
        time.sleep(0.02)
    return None


def _wait_started(proc, deadline: float) -> Optional[str]:
    """Wait until the runner ``proc`` has started its command (it has a child)."""
    while True:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                if f.read().split():
                    return None
        except OSError:
            pass
        if proc.poll() is not None:
            return "node 0 exited before it started"
        if time.monotonic() > deadline:
            return "node 0 did not start in time"
        time.sleep(0.002)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run(cluster, e: Experiment, rate_bits: Optional[int], workdir: str,
        timeout: float = 300.0) -> dict:
    """Run experiment ``e`` on nodes 0..e.n-1 of ``cluster``; return one result row."""
    os.makedirs(workdir, exist_ok=True)
    p: Plan = plan(e, workdir, rate_bits)
    env = _env()
    procs = {}
    deadline = time.monotonic() + timeout
    error = None

    def start(i: int) -> None:
        argv = RUNNER + [f"{workdir}/node{i}.json", f"{workdir}/node{i}.log", "--",
                         "/bin/sh", "-c", p.commands[i]]
        procs[i] = cluster.popen(i, argv, env=env)

    try:
        receivers = range(e.n - 1, 0, -1)
        if e.sender_first:
            start(0)
            error = (_wait_listening(procs, {0: p.sender_port}, time.monotonic() + 60) if p.sender_port
                     else _wait_started(procs[0], time.monotonic() + 60))   # DIY's sender retries
            later = receivers
        else:
            for i in receivers:
                start(i)
            error = _wait_listening(procs, p.listen_ports, time.monotonic() + 60)
            later = [0]
        if error is None:
            for i in later:
                start(i)
            for i in sorted(procs):
                left = deadline - time.monotonic()
                try:
                    procs[i].wait(max(0.1, left))
                except Exception:
                    error = f"timed out after {timeout:g} s"
                    break
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                _kill(proc)
    return _row(e, rate_bits, workdir, p, error)


def _kill(proc) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _row(e: Experiment, rate_bits: Optional[int], workdir: str, p: Plan,
         error: Optional[str]) -> dict:
    nodes = [_read_json(f"{workdir}/node{i}.json") for i in range(e.n)]
    row = {"rate_mbit": rate_bits / 1e6 if rate_bits else None, "method": e.method,
           "n": e.n, "arity": e.arity if e.method == "kadeploy" else None,
           "buffer_size": e.buffer_size if e.method == "kadeploy" else None,
           "backend": e.backend if e.method == "kadeploy" else None,
           "integrity": e.integrity if e.method == "kadeploy" else None,
           "compress": e.compress if e.method == "kadeploy" else None,
           "start": e.start, "size": e.size, "repeat": e.repeat}
    if error is None and any(n is None for n in nodes):
        error = "a node left no record"
    if error is None:
        bad = [i for i, n in enumerate(nodes) if n["status"] != 0]
        bad.sort(key=lambda i: i == 0)      # a receiver's own words first
        if bad:
            error = f"node(s) {bad} failed: " + _tail(f"{workdir}/node{bad[0]}.log")
    if error is None and p.check_bytes:
        for i in range(1, e.n):
            with open(f"{workdir}/node{i}.log", "rb") as f:
                got = counted_bytes(f.read())
            if got != e.size:
                error = f"node {i} received {got} of {e.size} bytes"
                break
    stream_s = None
    if p.report_file:
        rep = _read_json(p.report_file)
        if rep is not None:
            stream_s = rep.get("seconds")
            row["backend_used"] = rep.get("backend")
            row["compression"] = rep.get("compression")
    wall_s = None
    if all(n is not None for n in nodes):
        clock = min(n["start"] for n in nodes[1:]) if e.sender_first else nodes[0]["start"]
        wall_s = max(n["end"] for n in nodes[1:]) - clock
    cpu = [None if n is None else n["utime"] + n["stime"] for n in nodes]
    clients = [c for c in cpu[1:] if c is not None]
    gb = e.size / GB
    row.update({
        "ok": error is None, "error": error,
        "wall_s": wall_s, "stream_s": stream_s,
        "throughput_mbit": _rate(e.size, wall_s), "stream_mbit": _rate(e.size, stream_s),
        "link_fraction": _frac(e.size, wall_s, rate_bits),
        "stream_link_fraction": _frac(e.size, stream_s, rate_bits),
        "cpu_server_s": cpu[0],
        "cpu_client_mean_s": sum(clients) / len(clients) if clients else None,
        "cpu_client_max_s": max(clients) if clients else None,
        "cpu_total_s": sum(c for c in cpu if c is not None),
        "cpu_per_gb_server": cpu[0] / gb if cpu[0] is not None else None,
        "cpu_per_gb_client": sum(clients) / len(clients) / gb if clients else None,
        "cpu_nodes_s": cpu,
    })
    return row


def _rate(size: int, seconds: Optional[float]) -> Optional[float]:
    return size * 8 / seconds / 1e6 if seconds else None


def _frac(size: int, seconds: Optional[float], rate_bits: Optional[int]) -> Optional[float]:
    return size * 8 / seconds / rate_bits if seconds and rate_bits else None


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def describe(cmds: Dict[int, str]) -> str:
    return "\n".join(f"node {i}: {c}" for i, c in sorted(cmds.items()))


__all__ = ["run", "describe"]
