"""The client's registration before the heavy imports (kadeploy.control.early, issue 13
point 4): it reads a command line exactly as click does or leaves it to click, sends the
protocol's own Hello, registers before asyncio is even imported, never registers a bad
command line, and fails as the normal path does."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadeploy import cli, defaults
from kadeploy.control import early
from kadeploy.control import auth
from kadeploy.core import frame, proofs
from kadeploy.core import handshake as H
from kadeploy.core import protocol as P
from kadeploy.data import synthetic
from kadeploy.version import SOFTWARE

import clickmatch

CLIENT = [sys.executable, "-m", "kadeploy", "client"]
KEY, OTHER_KEY = b"k" * 32, b"o" * 32


# ------------------------------------------------------------------ the scan

def test_every_early_option_is_the_clients_own():
    clickmatch.assert_options_are_the_commands(cli.client_command, early.OPTIONS,
                                               callbacks_read=("discard", "advertise"))


def _parse(argv):
    """click's reading of a ka-d-client command line: (params, --discard), or None if it refuses."""
    try:
        ctx = cli.client_command.make_context("ka-d-client", list(argv))
    except click.ClickException:
        return None
    with ctx:
        return ctx.params, synthetic.discard_asked()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    d = tmp_path_factory.mktemp("early")
    (d / "dir").mkdir()
    (d / "file").write_text("x")
    return {"dir": str(d / "dir"), "file": str(d / "file"), "missing": str(d / "missing")}


VALUES = ["127.0.0.1", "node1", "nœud", "a b", "-x", "", "1M", "64k", "1g", "0K", "1MiB", " 1M", "2T",
          "cython", "auto", "copy", "Cython", "fast", "0", "1", "80", "65535", "65536", "+1", "1_0",
          " 1", "١", "0.5", "5.", ".5", "1e3", "inf", "nan", "0.0", "cat >/dev/null", "a\nb",
          "{dir}", "{file}", "{missing}"]
OTHER_OPTIONS = ["-s", "-g", "--bind", "--discovery-port", "--install", "--help",
                 "-v", "-qw", "-h127.0.0.1", "--host=", "--discard=1", "--", "extra"]
TOKENS = [s for spellings in early.OPTIONS for s in spellings] + OTHER_OPTIONS


@given(clickmatch.command_lines(TOKENS, VALUES))
def test_the_scan_reads_a_command_line_as_click_does_or_not_at_all(places, argv):
    argv = [a.format(**places) for a in argv]
    mine = early.scan(argv)
    if mine is None:
        return                                    # the normal path reads it
    # Every parameter, as the node runs without click (kadeploy.control.early_client).
    clickmatch.assert_read_as_click(argv, mine, _parse(argv), early.ABSENT, "discard", False)


def test_absent_holds_every_parameter_of_the_client_and_clicks_default():
    params, _ = _parse(["-h", "x"])
    assert {**early.ABSENT, "host": "x"} == params
    for name, value in params.items():
        assert type(early.ABSENT[name]) is type(value) or name == "host", name


@pytest.mark.parametrize("argv", [
    ["-h", "node"], ["--host", "node", "--discard"], ["-h", "n", "-p", "2", "-P", "3", "-e", "cat", "-w", "-q"],
    ["--host=n", "--connect-timeout=1.5", "--handshake-timeout", "2", "--verbose", "--advertise", "10.0.0.1"],
    ["-h", "n", "--discard", "--relay", "cython", "--buffer-size", "1048576", "-q"],   # kadeploy bench's
])
def test_the_usual_command_lines_take_the_early_path(argv):
    assert early.scan(argv) is not None


def test_the_hello_and_the_handshake_are_the_protocols():
    assert (early.HELLO_CODE, early.CHALLENGE_CODE, early.AUTH_CODE) == (P.Hello.CODE, P.Challenge.CODE, P.Auth.CODE)
    fields = early.hello_fields("node", 30764, None)
    assert [f.name for f in dataclasses.fields(P.Hello)] == [name for name, _ in fields]
    assert [f.name for f in dataclasses.fields(P.Auth)] == ["proof"]
    assert (H.CONTROL.asker, H.CONTROL.answerer) == (proofs.CONTROL_ASKER, proofs.CONTROL_ANSWERER)
    challenge = H.Answerer(KEY, H.CONTROL, auth.new_nonce(), "ctx", auth.new_nonce()).challenge()
    assert len(P.encode(challenge)) - P.HEADER_SIZE <= early.CHALLENGE_MAX


@given(st.text(max_size=40), st.integers(1, 65535), st.one_of(st.none(), st.text(min_size=1, max_size=40)),
       st.one_of(st.none(), st.just(auth.new_nonce())))
def test_a_flat_frame_is_what_protocol_encode_writes(hostname, port, advertise, nonce):
    fields = early.hello_fields(hostname, port, advertise, nonce)
    try:
        expected = P.encode(P.Hello(**dict(fields)))
    except P.LocalProtocolError:
        return                                    # not a Hello the protocol sends
    assert frame.flat_frame(early.HELLO_CODE, fields) == expected


@given(st.one_of(st.just(auth.new_nonce()), st.text(max_size=40)),
       st.one_of(st.just(proofs.proof(KEY, "server", "a", "b", "c")), st.text(max_size=80)))
def test_the_early_path_reads_a_challenge_as_the_protocol_does_or_not_at_all(nonce, proof):
    try:
        body = P.encode(P.Challenge(nonce=nonce, proof=proof))[P.HEADER_SIZE:]
    except P.LocalProtocolError:
        return                                    # not a Challenge the protocol sends
    assert early.challenge_fields(body) == (nonce, proof)   # what a server sends is always read


@given(st.binary(max_size=160) | st.builds(lambda a, b: b'{"nonce":"' + a + b'","proof":"' + b + b'"}',
                                           st.binary(max_size=40), st.binary(max_size=70)))
def test_a_body_the_early_path_reads_is_that_challenge_to_the_protocol(body):
    fields = early.challenge_fields(body)
    if fields is not None:
        assert P.parse_body(P.Challenge.CODE, body) == P.Challenge(*fields)


# ------------------------------------------------------------- real processes

class StandIn:
    """A listener in place of the server; nothing else runs on its port."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def hello(self, timeout: float):
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(timeout)
        code, length = P.parse_header(_exactly(conn, P.HEADER_SIZE))
        return conn, P.parse_body(code, _exactly(conn, length))

    def nobody_called(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.accept()[0].close()
            return False
        except BlockingIOError:
            return True

    def close(self) -> None:
        self.sock.close()


def _exactly(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        assert chunk, "the client hung up"
        buf += chunk
    return buf


@contextlib.contextmanager
def _client(port: int, env, *extra):
    """`kadeploy client -h 127.0.0.1 -p PORT --discard`, killed at the end if still there."""
    proc = subprocess.Popen(CLIENT + ["-h", "127.0.0.1", "-p", str(port), "--discard", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _refuse(conn, proc) -> None:
    """End a test's registration: the client, refused, must exit 3 and say why."""
    with conn:
        conn.sendall(P.encode(P.Refuse(reason="test over")))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "server refused: test over" in err, err


@pytest.fixture
def stand_in():
    s = StandIn()
    yield s
    s.close()


GATED_ASYNCIO = '''\
import importlib, os, sys, time
while not os.path.exists(os.environ["KD_TEST_GATE"]):   # until the test opens the gate
    time.sleep(0.01)
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
del sys.modules["asyncio"]
sys.modules["asyncio"] = importlib.import_module("asyncio")
'''


@pytest.mark.parametrize("backend_env", ["as-is", "cleared"])
def test_the_client_is_registered_before_it_imports_asyncio(tmp_path, stand_in, backend_env):
    """asyncio is held at its import until the Hello has arrived: a client that imports
    it (or click, which the normal path needs first) before its Hello never gets there."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "asyncio.py").write_text(GATED_ASYNCIO)
    gate = tmp_path / "gate"
    env = dict(os.environ, PYTHONPATH=str(shadow), KD_TEST_GATE=str(gate))
    if backend_env == "cleared":
        env.pop(defaults.ENV_REQUIRE, None)
        env.pop(defaults.ENV_BACKEND, None)
    with _client(stand_in.port, env) as proc:
        conn, hello = stand_in.hello(timeout=30)
        assert isinstance(hello, P.Hello) and hello.software == SOFTWARE and hello.nonce is None
        assert proc.poll() is None
        gate.touch()                              # asyncio may load now
        _refuse(conn, proc)


class KeyedServer:
    """The server's side of a keyed registration on a stand-in's connection, by the
    protocol and the handshake themselves."""

    def __init__(self, conn, hello: P.Hello, key: bytes) -> None:
        self.conn, self.hello = conn, hello
        self.state = P.ControlConnection(P.SERVER)
        self.state.receive_data(P.encode(hello))
        assert self.state.next_event() == hello
        self.answerer = H.Answerer(key, H.CONTROL, hello.nonce, auth.hello_context(hello), auth.new_nonce())

    def challenge(self) -> None:
        self.conn.sendall(self.state.send(self.answerer.challenge()))

    def reply(self) -> P.Message:
        while (msg := self.state.next_event()) is None:
            data = self.conn.recv(65536)
            self.state.receive_data(data)
            assert data or self.state.next_event() is not None, "the client hung up"
        return msg

    def refuse(self, proc) -> None:
        """End the test as _refuse does, over the authenticated channel."""
        with self.conn:
            self.conn.sendall(self.state.send(P.Refuse(reason="test over")))
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and "server refused: test over" in err, err


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("given", ["--key-file", defaults.ENV_KEY_FILE, defaults.ENV_KEY])
def test_a_keyed_client_answers_the_challenge_before_it_imports_asyncio(tmp_path, stand_in, key_file, given):
    """With a key, registering is the whole challenge-response: the Hello with its nonce,
    the server's Challenge, the client's Auth. All three happen with asyncio held at its
    import; then the normal path takes over the authenticated channel."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "asyncio.py").write_text(GATED_ASYNCIO)
    gate = tmp_path / "gate"
    env = dict(os.environ, PYTHONPATH=str(shadow), KD_TEST_GATE=str(gate))
    extra = ["--key-file", str(key_file)] if given == "--key-file" else []
    if given != "--key-file":
        env[given] = str(key_file) if given == defaults.ENV_KEY_FILE else KEY.decode()
    with _client(stand_in.port, env, *extra) as proc:
        conn, hello = stand_in.hello(timeout=30)
        assert hello.nonce is not None and proofs.well_formed_nonce(hello.nonce)
        server = KeyedServer(conn, hello, KEY)
        server.challenge()
        answer = server.reply()
        assert isinstance(answer, P.Auth)
        server.answerer.verify(answer)            # the client proved it holds the key
        server.state.authenticate(*server.answerer.session.for_side(asker=False))
        assert proc.poll() is None
        gate.touch()
        server.refuse(proc)                       # a tagged frame: the normal path has the keys


def test_a_keyed_client_registers_early_with_a_real_server_and_deploys(tmp_path, key_file):
    """The real ka-d-server counts the node registered (its challenge-response done)
    while the client's asyncio is still held; then the client's normal path goes on over
    the authenticated channel and the deployment ends verified."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "asyncio.py").write_text(GATED_ASYNCIO)
    gate, got = tmp_path / "gate", tmp_path / "got"
    port, data_port = clickmatch.closed_port(), clickmatch.closed_port()
    log = tmp_path / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "kadeploy", "server", "-n", "1", "-p", str(port),
                               "-P", str(data_port), "--key-file", str(key_file), "-e", "echo keyed"],
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    client = subprocess.Popen(CLIENT + ["-h", "127.0.0.1", "-p", str(port), "--key-file", str(key_file),
                                        "-e", f"cat > {got}"],
                              env=dict(os.environ, PYTHONPATH=str(shadow), KD_TEST_GATE=str(gate)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while "registered " not in log.read_text():   # the server's word
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        assert client.poll() is None              # asyncio still held: registered early
        gate.touch()
        _, client_err = client.communicate(timeout=60)
        assert server.wait(60) == 0 and client.returncode == 0, client_err + log.read_text()
        assert got.read_text() == "keyed\n"
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        client.stderr.close()


@pytest.mark.parametrize("early_path", [True, False])
def test_a_node_registered_early_deploys_without_loading_click(tmp_path, early_path):
    """A real server and a real node: registered early, the node runs its deployment
    without importing click (its command line is known), ends verified and prints the
    original's closing lines; an option the early path leaves to click takes the normal
    path, which loads it (so the check sees click when it is there)."""
    port, data_port = clickmatch.closed_port(), clickmatch.closed_port()
    got = tmp_path / "got"
    server = subprocess.Popen([sys.executable, "-m", "kadeploy", "server", "-n", "1", "-p", str(port),
                               "-P", str(data_port), "-q", "-e", "seq 1 20000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    extra = [] if early_path else ["--discovery-port", "4957"]
    argv = ["-h", "127.0.0.1", "-p", str(port), "-e", f"cat > {got}", *extra]
    assert (early.scan(argv) is not None) is early_path
    try:
        client = subprocess.run([sys.executable, "-X", "importtime", "-m", "kadeploy", "client", *argv],
                                capture_output=True, text=True, timeout=120)
        _, server_err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert client.returncode == 0 and server.returncode == 0, client.stderr[-2000:] + server_err
    assert got.read_text() == "".join(f"{i}\n" for i in range(1, 20001))
    log = [line for line in client.stderr.splitlines() if not line.startswith("import time:")]
    assert any(line.startswith("Total data received = ") for line in log), log
    assert any("every chunk verified" in line for line in log), log
    assert clickmatch.click_loaded(client.stderr) is not early_path


@pytest.mark.parametrize("case", ["other key", "keyless server", "silent server"])
def test_a_keyed_client_fails_to_join_as_the_normal_path_does(stand_in, key_file, case):
    """A server that cannot prove the key, one without a key, one that never answers: the
    early path proves nothing to them and the normal path ends it, in its own words; as
    when it does it all (an option the early path leaves to click)."""
    results = []
    for extra in ([], ["--discovery-port", "4957"]):
        with _client(stand_in.port, os.environ, "--key-file", str(key_file), "--handshake-timeout", "1",
                     *extra) as proc:
            conn, hello = stand_in.hello(timeout=30)
            server = KeyedServer(conn, hello, OTHER_KEY if case == "other key" else KEY)
            with conn:
                if case == "other key":
                    server.challenge()
                    assert server.reply() == P.Refuse(reason=H.CONTROL.answerer_unproven_refuse)
                elif case == "keyless server":
                    conn.sendall(server.state.send(P.Welcome(node_id=1, software=SOFTWARE)))
                    assert server.reply() == P.Refuse(reason=H.CONTROL.answerer_keyless_refuse)
                _, err = proc.communicate(timeout=60)
            results.append((proc.returncode, err.strip().splitlines()[-1]))
    assert results[0] == results[1], results
    expected = {"other key": H.CONTROL.answerer_unproven, "keyless server": H.CONTROL.answerer_keyless,
                "silent server": "the server did not answer the registration"}[case]
    assert results[0][0] == 3 and results[0][1].endswith(f"error: {expected}"), results


def test_a_registration_with_another_key_than_the_normal_paths_is_withdrawn(stand_in, key_file):
    argv = ["-h", "127.0.0.1", "-p", str(stand_in.port), "--discard", "--key-file", str(key_file),
            "--handshake-timeout", "0.2"]
    early.start(argv)                             # the stand-in never answers: it times out
    conn, hello = stand_in.hello(timeout=10)
    with conn:
        params, discard = _parse(argv)
        assert early.take(params, discard, OTHER_KEY) is None
        assert conn.recv(1) == b""


@pytest.mark.parametrize("bad", [
    ["--discard", "--data-port", "0"], ["--discard", "-e", "cat"], ["--discard", "--connect-timeout", "0"],
    ["-t", "/nonexistent/dir"], ["-t", "/etc/hostname"], ["--discard", "--bogus"], ["--discard", "extra"],
    ["--discard", "--key-file", "/nonexistent/key"], ["--discard", "--advertise", "a b"],
    ["--discard", "--buffer-size", "0"], ["--discard", "--relay", "fast"],
])
def test_a_bad_command_line_is_never_registered(stand_in, bad):
    r = subprocess.run(CLIENT + ["-h", "127.0.0.1", "-p", str(stand_in.port)] + bad,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, (bad, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert stand_in.nobody_called(), f"{bad}: registered before the error"



@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_the_early_path_fails_to_join_as_the_normal_path_does(where):
    host, port = ("127.0.0.1", clickmatch.closed_port()) if where == "refused" else ("no-such-host.invalid", 1)
    argv = CLIENT + ["-h", host, "-p", str(port), "--discard", "--connect-timeout", "0.3"]
    normal_only = ["--discovery-port", "4957"]    # an option the early path leaves to click
    assert early.scan(argv[4:]) is not None and early.scan(argv[4:] + normal_only) is None
    fast = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    normal = subprocess.run(argv + normal_only, capture_output=True, text=True, timeout=60)
    assert fast.returncode == normal.returncode == 3, (fast.stderr, normal.stderr)
    first = [line.split(": ", 1)[1] for line in (fast.stderr.splitlines()[0], normal.stderr.splitlines()[0])]
    assert first[0] == first[1], (fast.stderr, normal.stderr)
    assert ("Connection refused" if where == "refused" else "cannot resolve") in first[0]


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (SigCgt of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signum - 1) & 1)


def test_sigterm_while_the_early_path_waits_for_the_server():
    proc = subprocess.Popen(CLIENT + ["-h", "127.0.0.1", "-p", str(clickmatch.closed_port()), "--discard",
                                      "--connect-timeout", "30"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60              # until it handles SIGTERM: in early's retries
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, "SIGTERM is never caught"
        time.sleep(0.02)
    time.sleep(0.2)                               # so that it lands in the retries, the case here
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip() == "kadeploy: interrupted", err


def test_a_registration_click_reads_otherwise_is_withdrawn(stand_in):
    """take() hands over only what click read the same way; otherwise the server sees the
    node leave before the start, and the normal path registers it again."""
    early.start(["-h", "127.0.0.1", "-p", str(stand_in.port), "--discard", "-P", str(clickmatch.closed_port())])
    conn, hello = stand_in.hello(timeout=10)
    with conn:
        assert early.take({"host": "elsewhere"}, discard=True) is None
        assert conn.recv(1) == b""                # the early connection is closed
    assert early.take({}, discard=True) is None   # and forgotten


def test_a_registration_click_agrees_with_is_handed_over(stand_in):
    argv = ["-h", "127.0.0.1", "-p", str(stand_in.port), "--discard"]
    early.start(argv)
    conn, hello = stand_in.hello(timeout=10)
    params, discard = _parse(argv)
    registered = early.take(params, discard)
    try:
        assert registered is not None and registered.failure is None
        assert registered.data_port == hello.data_port and registered.control is not None
    finally:
        registered.close()
        conn.close()


EARLY_MODULES = {"kadeploy", "kadeploy.version", "kadeploy.entry", "kadeploy.control", "kadeploy.control.early",
                 "kadeploy.control.cmdline",
                 "kadeploy.defaults", "kadeploy.core", "kadeploy.core.frame", "struct", "_struct", "_json",
                 "_socket", "errno", "time", "__future__"}


def test_the_early_path_imports_next_to_nothing():
    """What the early path loads beyond the interpreter's own start-up: kadeploy's few
    light modules and four C modules; no click, asyncio, json, dataclasses, typing."""
    code = ("import sys; before = set(sys.modules); import kadeploy.entry, kadeploy.control.early; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) <= EARLY_MODULES, sorted(set(out.stdout.split()) - EARLY_MODULES)


def test_a_keyed_registration_adds_only_hashlib_and_hmac(key_file):
    code = ("import sys; before = set(sys.modules); import kadeploy.entry, kadeploy.control.early as e; "
            f"e.start(['-h', 'no-such-host.invalid', '--discard', '--key-file', {str(key_file)!r}]); "
            "assert e._registered.key is not None and e._registered.failure is not None; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    # (a backend asked for in the environment, as in CI, would load the relay: not this test's)
    env = {k: v for k, v in os.environ.items() if k not in (defaults.ENV_REQUIRE, defaults.ENV_BACKEND)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    allowed = EARLY_MODULES | {"kadeploy.control.auth", "kadeploy.errors", "kadeploy.core.proofs",
                               "hashlib", "_hashlib", "_blake2", "hmac", "warnings", "stat", "_stat",
                               "_sha512", "_sha2"}   # (not secrets: it loads base64 and re)
    assert set(out.stdout.split()) <= allowed, sorted(set(out.stdout.split()) - allowed)


MARKED_ASYNCIO = '''\
import importlib, os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
del sys.modules["asyncio"]
sys.modules["asyncio"] = importlib.import_module("asyncio")
open(os.environ["KD_TEST_MARK"], "w").close()   # asyncio is loaded
'''


def test_a_client_started_before_the_server_loads_the_rest_while_it_waits(tmp_path):
    """Refused (no server yet), the early path imports the normal command beside its
    retries: by the time the server listens and takes the Hello, asyncio is loaded."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "asyncio.py").write_text(MARKED_ASYNCIO)
    mark = tmp_path / "mark"
    port = clickmatch.closed_port()
    env = dict(os.environ, PYTHONPATH=str(shadow), KD_TEST_MARK=str(mark))
    with _client(port, env) as proc:
        deadline = time.monotonic() + 60
        while not mark.exists():                  # loaded while the port refuses
            assert proc.poll() is None and time.monotonic() < deadline, "asyncio never loaded"
            time.sleep(0.05)
        server = StandIn(port)
        try:
            conn, hello = server.hello(timeout=30)
            assert isinstance(hello, P.Hello)
            _refuse(conn, proc)
        finally:
            server.close()
