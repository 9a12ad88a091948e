"""Only the nodes you mean: authentication and hostile peers, across namespaces."""
import asyncio
import os
import socket
import time

import pytest
from deploy import assert_one_line_error, load_report

from kadeploy.control import auth
from kadeploy.control.netio import recv_frame, send_frame
from kadeploy.core import handshake as H
from kadeploy.core import protocol as P
from kadeploy.defaults import CONTROL_PORT, DATA_PORT

pytestmark = pytest.mark.netns
KEY = b"correct horse battery staple 42"


@pytest.fixture
def keyfile(tmp_path):
    """A key file both security suites share (tests/test_attacks_netns.py imports it)."""
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    os.chmod(path, 0o600)
    return str(path)


def wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_keyed_deployment_and_refusals(net, keyfile, tmp_path):
    cluster, dep = net(5)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the right key at all!!")
    os.chmod(wrong, 0o600)
    report = str(tmp_path / "r.json")
    server = dep.server("-n", "2", "--key-file", keyfile, "-e", "seq 200000", "--report", report, where=0)
    anon = dep.client("-h", "198.18.0.1", "-e", "cat", where=3)
    assert_one_line_error(anon, 3, "this server requires a key")
    impostor = dep.client("-h", "198.18.0.1", "--key-file", str(wrong), "-e", "cat", where=4)
    assert_one_line_error(impostor, 3, "could not prove it knows the key")
    members = [dep.client("-h", "198.18.0.1", "--key-file", keyfile, "-e", "md5sum >&2", where=i)
               for i in (1, 2)]
    assert [m.wait(60) for m in members] == [0, 0]
    assert server.wait(60) == 0
    assert "no key: anyone" not in server.err
    rep = load_report(report)
    assert rep["rejected"]["auth"] >= 2
    assert {r["address"] for r in rep["nodes"]} == {"198.18.0.2", "198.18.0.3"}


def test_keyed_client_refuses_an_open_server(net, keyfile):
    cluster, dep = net(2)
    server = dep.server("-n", "1", "-e", "true", "--wait-timeout", "10", where=0)
    c = dep.client("-h", "198.18.0.1", "--key-file", keyfile, "-e", "cat", where=1)
    assert_one_line_error(c, 3, "the server has no key")
    server.wait(30)
    assert f"no key: anyone who can reach TCP port {CONTROL_PORT}" in server.err


def _handshake(host, nonce=None, replay_auth=None):
    """A hand-made keyed registration; returns (reply, the Auth bytes we sent)."""
    with socket.create_connection((host, CONTROL_PORT), timeout=10) as s:
        hello = P.Hello(software="test", hostname="h", data_port=40000, nonce=nonce or auth.new_nonce())
        s.sendall(P.encode(hello))
        r = P.FrameReader()

        def recv():
            while (m := r.next_message()) is None:
                r.feed(s.recv(4096))
            return m

        challenge = recv()
        sent = replay_auth or P.encode(P.Auth(
            proof=H.proof(KEY, "client", hello.nonce, challenge.nonce, auth.hello_context(hello))))
        s.sendall(sent)
        return recv(), sent, hello.nonce


def test_replayed_handshake_is_refused(net, keyfile):
    cluster, dep = net(2)
    server = dep.server("-n", "5", "--key-file", keyfile, "-e", "true", "--wait-timeout", "12", where=0)
    host = cluster.node(0).addr
    cluster.call(1, wait_for, lambda: _can_connect(host))
    reply, auth_bytes, nonce = cluster.call(1, _handshake, host)
    assert isinstance(reply, P.Welcome)
    # The same Hello (same nonce) and the same recorded proof, on a new connection.
    reply2, _, _ = cluster.call(1, _handshake, host, nonce, auth_bytes)
    assert isinstance(reply2, P.Refuse) and "replayed" in reply2.reason
    server.kill()


def test_stranger_on_a_data_port_is_refused(net, keyfile, tmp_path):
    """A host that knows the node ids but not the key cannot take a child's place."""
    cluster, dep = net(4)
    report = str(tmp_path / "r.json")
    server = dep.server("-n", "2", "--key-file", keyfile, "-e", "seq 500000", "--report", report, where=0)
    first = dep.client("-h", "198.18.0.1", "--key-file", keyfile, "-e", "cat >/dev/null", where=1)
    wait_for(lambda: "registered" in server.err)
    # Node 2 will be the child of node 1 (198.18.0.2): knock on node 1's data port
    # before it is placed; it answers once it accepts its children.
    result = {}

    def stranger():
        async def go():
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("198.18.0.2", DATA_PORT))
            with sock:
                await send_frame(sock, P.DataHello(node_id=2, nonce=auth.new_nonce()))
                ch = await asyncio.wait_for(recv_frame(sock), 30)
                await send_frame(sock, P.Auth(proof="00" * 32))
                result["reply"] = await asyncio.wait_for(recv_frame(sock), 30)
                result["more"] = await loop.sock_recv(sock, 100)
                return ch
        return asyncio.run(go())

    import threading
    t = threading.Thread(target=lambda: result.setdefault("challenge", cluster.call(3, stranger)))
    t.start()
    time.sleep(0.5)
    second = dep.client("-h", "198.18.0.1", "--key-file", keyfile, "-e", "cat >/dev/null", where=2)
    t.join(60)
    assert isinstance(result.get("reply"), P.Refuse), result
    assert result["more"] == b""   # not one byte of the stream
    assert first.wait(60) == 0 and second.wait(60) == 0 and server.wait(60) == 0
    assert "rejected data connection from 198.18.0.4" in first.err


def test_connection_flood_during_a_deployment(net, tmp_path):
    """Hundreds of hostile connections while the stream flows: every one is turned
    away, and counted once. The stream waits (the producer blocks on a file) until the
    flooder has heard the server's answer on every connection, so what is asserted
    does not depend on how fast a loaded machine gets through them."""
    cluster, dep = net(4)
    report = str(tmp_path / "r.json")
    over = tmp_path / "flood-over"
    server = dep.server("-n", "2", "--handshake-timeout", "5", "--report", report,
                        "-e", f"{{ head -c 4000000 /dev/urandom; for i in $(seq 600); do "
                              f"[ -e {over} ] && break; sleep 0.1; done; head -c 4000000 /dev/urandom; }} "
                              "| tee " + str(tmp_path / "sent"), where=0)
    clients = [dep.client("-h", "198.18.0.1", "-e", f"cat > {tmp_path}/got{i}", where=i) for i in (1, 2)]
    wait_for(lambda: "tree (arity" in server.err)
    kinds = {"silent": b"", "http": b"GET / HTTP/1.0\r\n\r\n",
             # a header of this protocol version, then no body
             "truncated": P.encode(P.Hello(software="x", hostname="y", data_port=1))[:8],
             "random": b"\x00" + os.urandom(63),                   # never the protocol's magic
             "late": P.encode(P.Hello(software="x", hostname="y", data_port=1))}
    attempts = 250

    def flood():
        """Open `attempts` connections at once, each saying one kind of thing; then
        read every one to its end. Returns, per kind, the server's answers."""
        socks = []
        for i in range(attempts):
            kind = list(kinds)[i % len(kinds)]
            s = socket.create_connection(("198.18.0.1", CONTROL_PORT), timeout=30)
            socks.append((kind, s))          # established: the server has to answer it
            s.sendall(kinds[kind])
        answers = {k: [] for k in kinds}
        for kind, s in socks:
            reader, data = P.FrameReader(), b"."
            with s:
                while data:                  # the server closes every one of them
                    data = s.recv(65536)
                    reader.feed(data)
            msg = reader.next_message()
            answers[kind].append(msg.reason if isinstance(msg, P.Refuse) else None)
        return answers

    try:
        answers = cluster.call(3, flood)
    finally:
        over.touch()
    assert [c.wait(60) for c in clients] == [0, 0] and server.wait(60) == 0
    data = (tmp_path / "sent").read_bytes()
    assert len(data) == 8_000_000
    assert (tmp_path / "got1").read_bytes() == data == (tmp_path / "got2").read_bytes()
    rep = load_report(report)
    # Every connection was refused, with a reason, and counted once, by its kind.
    assert sum(len(a) for a in answers.values()) == attempts
    for kind, replies in answers.items():
        assert None not in replies, f"a {kind} connection was closed without a Refuse"
    assert sum(rep["rejected"].values()) == attempts, rep["rejected"]
    assert rep["rejected"]["late"] == len(answers["late"])
    assert all("registration is closed" in r for r in answers["late"])
    assert rep["rejected"]["silent"] == len(answers["silent"]) + len(answers["truncated"])
    assert rep["rejected"]["protocol"] == len(answers["http"]) + len(answers["random"])
    assert rep["totals"]["ok"] == 2


def _can_connect(host):
    try:
        socket.create_connection((host, CONTROL_PORT), timeout=1).close()
        return True
    except OSError:
        return False
