"""Data connections and the first level's start (kadeploy.data.datalink, the server's
_accept_children): a slow first node is waited for, a connection that completes while
its parent renews the expectation is not lost, a node that never connects is given up."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deploy import Deployment, load_report  # noqa: E402
from fakeclients import fake_client  # noqa: E402

from kadeploy.control import auth  # noqa: E402
from kadeploy.control.netio import connect, recv_frame, send_frame  # noqa: E402
from kadeploy.core import protocol as P  # noqa: E402
from kadeploy.core.handshake import DATA, Asker  # noqa: E402
from kadeploy.data.datalink import ChildAcceptor, accept_children  # noqa: E402

KEY = auth.data_key(None, "token-of-this-test")


def _acceptor(listener, refused):
    return ChildAcceptor(listener, KEY, handshake_timeout=5, sockbuf=None,
                         on_refused=lambda addr, why: refused.append(why), offsets=True)


def _listener() -> socket.socket:
    s = socket.create_server(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def _hello(port: int, node_id: int):
    """A child's handshake up to its proof: (socket, what sends the proof and reads the welcome)."""
    sock = await connect("127.0.0.1", port, 5, "parent")
    asker = Asker(KEY, DATA, auth.new_nonce())
    await send_frame(sock, P.DataHello(node_id=node_id, nonce=asker.nonce, offset=0))
    challenge = P.expect(await recv_frame(sock), P.Challenge)

    async def finish():
        await send_frame(sock, asker.answer(challenge, auth.data_context(node_id, 0)))
        return await recv_frame(sock)
    return sock, finish


def test_a_connection_completing_while_the_parent_expects_the_child_anew_is_not_lost():
    """The CI failure: the server stopped waiting for a slow first node in the middle of
    its handshake and expected it anew; the handshake then resolved the abandoned
    expectation, the node was welcomed and never fed."""
    async def scenario():
        listener, refused = _listener(), []
        acceptor = _acceptor(listener, refused)
        first = acceptor.expect(7)
        sock, finish = await _hello(listener.getsockname()[1], 7)
        renewed = acceptor.expect(7)          # as serve() does after the grace
        assert isinstance(await finish(), P.DataWelcome)
        conn, offset = await asyncio.wait_for(renewed, 5)
        assert offset == 0 and not first.done() and refused == []
        sock.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        for s in (sock, conn, listener):
            s.close()
        acceptor.close()
    asyncio.run(scenario())


def test_then_bounds_the_wait_for_the_others_once_the_first_is_in():
    async def scenario():
        listener, refused = _listener(), []
        acceptor = _acceptor(listener, refused)
        port = listener.getsockname()[1]

        async def child_one():
            await asyncio.sleep(0.3)
            sock, finish = await _hello(port, 1)
            await finish()
            return sock
        loop = asyncio.get_running_loop()
        started = loop.time()
        one = asyncio.ensure_future(child_one())
        got = await accept_children(acceptor, [1, 2], timeout=30, then=0.2)
        waited = loop.time() - started
        assert set(got) == {1} and 0.3 <= waited < 5
        # Without `then`, nobody connected: the whole timeout.
        started = loop.time()
        assert await accept_children(acceptor, [3], timeout=0.5, then=0.1) == {}
        assert loop.time() - started >= 0.5
        (await one).close()
        for s in got.values():
            s.close()
        listener.close()
        acceptor.close()
    asyncio.run(scenario())


def test_the_stream_waits_for_a_slow_first_node_instead_of_running_past_the_window(tmp_path):
    """Node 1 (the server's only child) is frozen when the deployment starts. The server
    used to start streaming after half a second anyway, into its window alone, at memory
    speed: 64 MiB past a 4 MiB window, and both nodes failed. It waits for the first
    node now, and both get every byte."""
    data = os.urandom(64 << 20)
    (tmp_path / "blob").write_bytes(data)
    dep = Deployment(str(tmp_path))
    try:
        report = str(tmp_path / "r.json")
        # A stall timeout far above the freeze: frozen, then loading its data plane, node 1
        # is silent for 2 s and more, and only the half-second grace is tested here.
        server = dep.server("-n", "2", "-e", f"cat {tmp_path / 'blob'}", "--window", "4M",
                            "--report", report, "--stall-timeout", "10")
        base = 44000 + os.getpid() % 1000 * 10
        first = dep.client("-h", "127.0.0.1", "-P", str(base), "-e", f"cat > {tmp_path}/got0")
        deadline = time.monotonic() + 30
        while "registered " not in server.err:
            assert server.popen.poll() is None and time.monotonic() < deadline, server.err
            time.sleep(0.02)
        os.killpg(first.popen.pid, signal.SIGSTOP)
        second = dep.client("-h", "127.0.0.1", "-P", str(base + 1), "-e", f"cat > {tmp_path}/got1")
        while "tree (arity" not in server.err:
            assert time.monotonic() < deadline, server.err
            time.sleep(0.02)
        time.sleep(2)        # well past the grace, within the stall timeout
        os.killpg(first.popen.pid, signal.SIGCONT)
        assert [first.wait(60), second.wait(60), server.wait(60)] == [0, 0, 0], \
            first.err + second.err + server.err
        for i in range(2):
            assert hashlib.sha256((tmp_path / f"got{i}").read_bytes()).digest() == \
                hashlib.sha256(data).digest()
        assert load_report(report)["totals"]["ok"] == 2
        assert "not connected yet" not in server.err
    finally:
        dep.close()


def test_a_node_that_never_opens_its_data_connection_is_given_up(tmp_path):
    """Two children of the server (arity 2): one takes the stream, the other lives on
    (it reports) but never connects. It is given up after --connect-timeout, told why,
    and the deployment ends failed instead of waiting for it for ever."""
    dep = Deployment(str(tmp_path))
    try:
        server = dep.server("-n", "2", "-a", "2", "-e", "head -c 3000000 /dev/zero",
                            "--connect-timeout", "5")
        ctrl = int(dep.client_ports[1])

        async def both():
            taker = asyncio.ensure_future(fake_client("127.0.0.1", ctrl, 45001))
            await asyncio.sleep(0.5)       # registers first: position 1
            idle = asyncio.ensure_future(fake_client("127.0.0.1", ctrl, 45002, take_data=False))
            return await asyncio.wait_for(asyncio.gather(taker, idle), 60)
        taker, idle = asyncio.run(both())
        assert taker.error is None and taker.received == 3000000, taker.error
        assert idle.error is not None and "did not open its data connection within 5 s" in idle.error
        assert server.wait(30) != 0
        assert "did not open its data connection within 5 s" in server.err
    finally:
        dep.close()


def test_a_parent_that_never_answers_the_handshake_times_out_saying_so():
    """A frozen parent's kernel still accepts the connection; the child gives up after
    its timeout with a message that says so (asyncio's TimeoutError has no text)."""
    from kadeploy.data.datalink import connect_parent
    from kadeploy.errors import NotJoined

    async def scenario():
        listener = _listener()
        try:
            await connect_parent("127.0.0.1", listener.getsockname()[1], 3, KEY, timeout=0.2, sockbuf=None)
        except NotJoined as e:
            return str(e)
        finally:
            listener.close()
    assert asyncio.run(scenario()).endswith("failed: timed out")
