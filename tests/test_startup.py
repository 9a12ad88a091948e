"""Start-up that costs nothing (issue 13, point 4): what a client does before it is
registered, and the measurement of its CPU (bench/startup_cpu.py, smoke size).

Correctness only: the CPU figure is measured, not asserted (the machine is shared)."""
from __future__ import annotations

import asyncio
import json
import socket
import os
import subprocess
import sys
import time

import pytest

from kadeploy.control import early, netio
from kadeploy.defaults import CONNECT_RETRY_CAP
from kadeploy.errors import EXIT_USAGE
from kadeploy.core import protocol as P
from kadeploy.lab.benchlib import startup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = [os.path.join(os.path.dirname(sys.executable), "ka-d-client")]
if not os.path.exists(CLIENT[0]):
    CLIENT = [sys.executable, "-m", "kadeploy", "client"]

# Not one of these may be loaded before the client is registered: they belong to the
# data phase (relay, digests, compression, progress) or to the lab.
DATA_PLANE = ("kadeploy.relay._relay", "kadeploy.relay.cython_backend", "kadeploy.relay.cffi_backend",
              "kadeploy.data.node", "kadeploy.data.tap", "kadeploy.data.codec", "kadeploy.core.integrity",
              "blake3", "zstandard", "rich", "cffi", "kadeploy.lab", "kadeploy.view.report",
              # a keyless registration needs no cryptography, and no install's parsers
              "cryptography", "kadeploy.install.manifest", "kadeploy.install.formats")


def test_client_registration_path_imports_no_data_plane():
    code = ("import sys, kadeploy.cli, kadeploy.control.client; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert not loaded & set(DATA_PLANE), sorted(loaded & set(DATA_PLANE))


# Loaded by neither command until a deployment asks for them: TLS (asyncio's, which
# kadeploy never uses), the report (built once the nodes are released), the netboot
# kit's boot states, discovery, an install's job; nor secrets (random, base64): tokens and
# nonces are read from os.urandom.
NOT_AT_START = ("ssl", "_ssl", "kadeploy.view.report", "kadeploy.netboot.progress",
                "kadeploy.control.discovery", "kadeploy.install.job", "secrets", "random")


@pytest.mark.parametrize("command", ["kadeploy.control.server", "kadeploy.control.client"])
def test_start_up_loads_no_tls_and_nothing_a_deployment_did_not_ask_for(command):
    code = f"import sys, kadeploy.cli, {command}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "asyncio" in loaded
    assert not loaded & set(NOT_AT_START), sorted(loaded & set(NOT_AT_START))


def test_asyncio_without_tls_still_runs_and_ssl_still_imports():
    """asyncio, imported with ssl hidden, serves a real connection; `import ssl` then
    works as ever (only asyncio's own TLS is off)."""
    code = """
import sys
from kadeploy.asyncio_without_tls import asyncio
assert "ssl" not in sys.modules
async def main():
    async def echo(r, w):
        w.write(await r.readexactly(5)); await w.drain(); w.close()
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
    w.write(b"hello"); await w.drain()
    got = await r.readexactly(5)
    w.close(); srv.close()
    return got
assert asyncio.run(main()) == b"hello"
import ssl
assert ssl.create_default_context().check_hostname
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_asyncio_already_loaded_is_left_as_it_is():
    code = ("import asyncio, sys; from kadeploy.asyncio_without_tls import asyncio as a; "
            "assert a is asyncio and 'ssl' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


@pytest.mark.parametrize("keyed", [False, True])
def test_startup_measurement_sees_the_registration_and_the_refusal(tmp_path, keyed):
    key = b"k" * 32 if keyed else None
    extra = []
    if keyed:
        (tmp_path / "key").write_bytes(key)
        extra = ["--key-file", str(tmp_path / "key")]
    r = startup.measure(CLIENT + ["--discard", *extra], key=key)
    assert isinstance(r.hello, P.Hello) and (r.hello.nonce is not None) == keyed
    assert r.status == 3                      # refused at registration: "could not join"
    assert 0 < r.cpu_total < 30 and 0 <= r.cpu_at_registration <= r.cpu_total + 0.02


def test_startup_bench_smoke(tmp_path):
    out = tmp_path / "startup.json"
    subprocess.run([sys.executable, os.path.join(REPO, "bench", "startup_cpu.py"), "--rounds", "1",
                    "--out", str(out)], check=True, capture_output=True)
    data = json.loads(out.read_text())
    assert data["rounds"] == 1 and data["python_floor_ms"] > 0
    assert data["cpu_to_exit_ms"]["min"] >= data["python_floor_ms"] * 0.5
    assert data["exit_wall_ms"]["min"] >= 0 and data["exit_wall_teardown_ms"]["min"] >= 0


def test_refused_connect_is_retried_without_a_fixed_delay(monkeypatch):
    """A server that starts listening while the client is being refused is joined at
    the next try: every pause between tries is at most the retry cap (not a fixed
    quarter of a second), and no try after the port opened is refused. Asserted on
    the pauses asked for, not on the clock, which a loaded machine stretches."""
    import socket
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    pauses, real = [], early.retry_pauses          # (when asked, pause)

    def recorded():
        for pause in real():
            pauses.append((time.monotonic(), pause))
            yield pause
    monkeypatch.setattr(netio.early, "retry_pauses", recorded)

    async def scenario():
        loop = asyncio.get_running_loop()
        opened = {}

        def open_listener():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(1)
            opened["sock"], opened["at"] = s, time.monotonic()

        loop.call_later(0.27, open_listener)
        sock = await netio.connect("127.0.0.1", port, 30.0, "server", retry_refused=True)
        sock.close()
        opened["sock"].close()
        return opened["at"]

    opened_at = asyncio.run(scenario())
    assert len(pauses) > 3                                # it was refused, and tried again
    assert max(p for _, p in pauses) <= CONNECT_RETRY_CAP
    assert not [t for t, _ in pauses if t > opened_at]    # the first try after the opening joined


def test_a_data_link_handshake_loads_no_cryptography():
    """A data link is keyed (by the deployment's token when there is no key) but no
    frame follows its handshake, so its session keys are never derived: the HKDF's
    library stays unloaded on the way to a stream's first byte. The link itself works."""
    code = """
import asyncio, socket, sys
from kadeploy.control import auth
from kadeploy.data.datalink import ChildAcceptor, connect_parent
key = auth.data_key(None, "token")
async def main():
    listener = socket.create_server(("127.0.0.1", 0)); listener.setblocking(False)
    acceptor = ChildAcceptor(listener, key, handshake_timeout=5, sockbuf=None,
                             on_refused=lambda addr, why: print("refused", why))
    accepted = acceptor.expect(3)
    child = await connect_parent("127.0.0.1", listener.getsockname()[1], 3, key, timeout=5, sockbuf=None)
    parent, offset = await accepted
    await asyncio.get_running_loop().sock_sendall(parent, b"stream")
    got = await asyncio.get_running_loop().sock_recv(child, 6)
    acceptor.close()
    return got, offset
assert asyncio.run(main()) == (b"stream", 0)
print(" ".join(sorted(m for m in sys.modules if m.startswith("cryptography"))) or "none")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "none", out.stdout


def _server_under_probe(args, probe):
    """Run ka-d-server with `args` in a process where `probe` (Python source defining
    find_spec(name)) sees every import first; its output and status."""
    code = (f"import sys, socket\n{probe}\n"
            "class Probe:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        find_spec(name)\n"
            "sys.meta_path.insert(0, Probe())\n"
            f"sys.argv = ['ka-d-server', *{list(args)!r}]\n"
            "from kadeploy.entry import server_main\n"
            "server_main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_listens_before_it_imports_its_control_plane():
    """A node started first connects while the server still imports asyncio and the
    control plane, and its Hello waits in the socket: it does not retry a refused
    connection until they are loaded."""
    port, data_port = _free_port(), _free_port()
    probe = ("def find_spec(name):\n"
             "    if name == 'asyncio' and not hasattr(sys, 'probed'):\n"
             "        sys.probed = True\n"
             "        with socket.socket() as s:\n"
             f"            print('connected' if s.connect_ex(('127.0.0.1', {port})) == 0 else 'refused',"
             " flush=True)\n")
    p = _server_under_probe(["-p", str(port), "-P", str(data_port), "--bind", "127.0.0.1",
                             "--synthetic", "1K", "--wait-timeout", "0.2", "-q"], probe)
    assert p.stdout.splitlines()[:1] == ["connected"], p.stdout + p.stderr
    assert "no client registered within 0.2 s" in p.stderr and p.returncode != 0, p.stderr


@pytest.mark.parametrize("bad", [["--hosts", "/nonexistent/hosts"], ["--compress", "lz4"],
                                 ["--key-file", "/nonexistent/key"], ["-a", "0"]])
def test_the_server_listens_only_for_a_command_line_it_has_checked(bad):
    """A node connected to a server that then exits over its command line would fail:
    every check comes first, and a bad command line never opens a port."""
    probe = ("from kadeploy.control import early\n"
             "bound = early.bound_listener\n"
             "def listening(*args, **kwargs):\n"
             "    print('listening', flush=True)\n"
             "    return bound(*args, **kwargs)\n"
             "early.bound_listener = listening\n"
             "def find_spec(name):\n"
             "    pass\n")
    p = _server_under_probe(["-p", str(_free_port()), "--synthetic", "1K", *bad], probe)
    assert p.returncode == EXIT_USAGE and "listening" not in p.stdout, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
