"""What a client process costs before it is registered: CPU from exec to its Hello
(with a key: to its Auth, the answer to the server's Challenge).

A one-shot listener stands in for the server. It starts `ka-d-client`, waits for the
Hello frame (with a key, answers it with a Challenge by kadeploy.core.handshake and
waits for the Auth) and reads the client's utime + stime from /proc/PID/stat at that
instant (clock ticks: coarse, 10 ms here). Then either it refuses the client, which
exits at once, and takes its rusage from wait4 (the whole process: what it imports
after registering included); or, with kill_at_registration, it kills the client as
soon as it is registered, and wait4's rusage (microseconds) is the CPU to that point,
plus what the client did in the moment the listener took to wake up: an upper bound
of the cost to registration.

server_start() measures the other end: a ka-d-server from exec to listening on its
control port (the moment clients can register), by connecting until it answers.
exit_wall() measures a client's end: the wall time from its last line to its exit.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from kadeploy.control import auth
from kadeploy.core import handshake as H
from kadeploy.core import protocol as P

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Startup:
    cpu_at_registration: float   # s, from /proc at the moment it was registered (tick resolution)
    cpu_total: float         # s, rusage of the whole process (exec to its exit, or to the kill)
    wall_to_registration: float  # s, from spawn to the registration
    hello: P.Message
    status: int


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime


def _next_message(conn: socket.socket, state: P.ControlConnection) -> P.Message:
    while (msg := state.next_event()) is None:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("the client hung up before it was registered")
        state.receive_data(data)
    return msg


def measure(client: Sequence[str], *, timeout: float = 30.0, env=None,
            kill_at_registration: bool = False, key: Optional[bytes] = None) -> Startup:
    """Run `client` (argv of ka-d-client, without -h/-p; with `key`, the client's
    --key-file holds it) against the stand-in server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(timeout)
        port = lsock.getsockname()[1]
        argv: List[str] = [*client, "-h", "127.0.0.1", "-p", str(port), "-q"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        try:
            conn, _ = lsock.accept()
            with conn:
                conn.settimeout(timeout)
                state = P.ControlConnection(P.SERVER)
                hello = _next_message(conn, state)
                if key is not None:
                    answerer = H.Answerer(key, H.CONTROL, hello.nonce, auth.hello_context(hello), auth.new_nonce())
                    conn.sendall(state.send(answerer.challenge()))
                    answer = _next_message(conn, state)
                if kill_at_registration:
                    os.kill(proc.pid, signal.SIGKILL)
                at_registration = _proc_cpu(proc.pid)
                wall = time.monotonic() - started
                if key is not None:
                    answerer.verify(answer)
                    state.authenticate(*answerer.session.for_side(asker=False))
                if not kill_at_registration:
                    conn.sendall(state.send(P.Refuse(reason="start-up measured")))
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    return Startup(cpu_at_registration=at_registration, cpu_total=usage.ru_utime + usage.ru_stime,
                   wall_to_registration=wall, hello=hello, status=proc.returncode)


def python_floor(python: str, rounds: int) -> List[float]:
    """The baseline in the same run: the CPU of `python -c pass` in each of `rounds` runs,
    sorted (the interpreter's own start-up, which no change to kadeploy can remove)."""
    runs = []
    for _ in range(rounds):
        proc = subprocess.Popen([python, "-c", "pass"])
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        runs.append(usage.ru_utime + usage.ru_stime)
    return sorted(runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_start(python: str, *, timeout: float = 30.0, env=None) -> Tuple[float, float]:
    """(wall s, CPU s at that moment, tick resolution) of a `--synthetic` ka-d-server from
    exec to listening on its control port."""
    port, data_port = _free_port(), _free_port()
    started = time.monotonic()
    proc = subprocess.Popen([python, "-m", "kadeploy", "server", "-n", "1", "--synthetic", "1M",
                             "-p", str(port), "-P", str(data_port), "-q"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise RuntimeError(f"the server did not listen (exit {proc.poll()})")
                time.sleep(0.002)
        return time.monotonic() - started, _proc_cpu(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def exit_wall(python: str, *, full_teardown: bool, timeout: float = 60.0, env=None) -> float:
    """Wall seconds from a client's last line (its summary) to its exit, after a real
    16 MiB --synthetic deployment from a ka-d-server on loopback. With full_teardown
    the interpreter's own exit ends it (kadeploy.cli's entry point, not kadeploy.entry's,
    which ends the process without the teardown)."""
    port, data_port, client_port = _free_port(), _free_port(), _free_port()
    server = subprocess.Popen([python, "-m", "kadeploy", "server", "-n", "1", "--synthetic", "16M",
                               "-p", str(port), "-P", str(data_port), "-q"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    entry = "kadeploy.cli" if full_teardown else "kadeploy.entry"
    code = f"import sys; sys.argv[0] = 'ka-d-client'; from {entry} import client_main; client_main()"
    client = subprocess.Popen([python, "-c", code, "-h", "127.0.0.1", "-p", str(port), "-P", str(client_port),
                               "--discard"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        last = None
        for _ in client.stderr:
            last = time.monotonic()
        client.wait(timeout)
        end = time.monotonic()
        server.wait(timeout)
        if client.returncode != 0 or server.returncode != 0 or last is None:
            raise RuntimeError(f"the deployment failed (client {client.returncode}, server {server.returncode})")
        return end - last
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        client.stderr.close()
