"""Verification catches corrupted bytes: a forwarder in its own namespace flips one
byte of the data link between two nodes (TCP checksums cannot see it: the forwarder
rewrites the bytes between two good TCP connections)."""
import signal
import socket
import threading

import pytest
from deploy import Deployment, load_report

from kadeploy.core.integrity import CHUNK_SIZE
from kadeploy.defaults import DATA_PORT

pytestmark = pytest.mark.netns
SIZE = 30_000_000
FLIP_AT = 9_000_000     # stream offset of the corrupted byte (past the handshake)


def corrupting_forwarder(listen_addr, target, ready, flip_at):
    """Accept one connection, connect to the target, copy both ways; in the target ->
    client direction, XOR one byte at `flip_at` bytes after the first 1 KiB of frames."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((listen_addr, DATA_PORT))
    ls.listen(1)
    ready.set()
    client, _ = ls.accept()
    upstream = socket.create_connection(target)

    def up():
        while data := client.recv(65536):
            upstream.sendall(data)

    threading.Thread(target=up, daemon=True).start()
    seen = 0
    while data := upstream.recv(65536):
        buf = bytearray(data)
        pos = flip_at - seen
        if 0 <= pos < len(buf):
            buf[pos] ^= 0x5A
        seen += len(buf)
        client.sendall(buf)
    client.shutdown(socket.SHUT_WR)
    client.close()
    upstream.close()
    ls.close()


@pytest.fixture
def setup(vcluster, tmp_path):
    deps = []

    def make(*server_args, flip_at=FLIP_AT):
        cluster = vcluster(5)
        dep = Deployment(str(tmp_path), loopback=False,
                         wrap=lambda i, argv: ["ip", "netns", "exec", cluster.node(i).ns, *argv])
        deps.append(dep)
        ready = threading.Event()
        t = threading.Thread(target=cluster.call, daemon=True, args=(
            4, corrupting_forwarder, "198.18.0.5", ("198.18.0.3", DATA_PORT), ready, flip_at + 200))
        t.start()
        assert ready.wait(10)
        report = str(tmp_path / "r.json")
        # The deployment order; --hosts matches the address each node connects from
        # (node 2's own), not the forwarder's address it advertises.
        hosts = tmp_path / "hosts"
        hosts.write_text("198.18.0.2\n198.18.0.3\n198.18.0.4\n")
        server = dep.server("--hosts", str(hosts), "--report", report, *server_args,
                            "-e", f"head -c {SIZE} /dev/urandom | tee {tmp_path}/sent", where=0)
        clients = {}
        for i in (1, 2, 3):
            extra = ["--advertise", "198.18.0.5"] if i == 2 else []   # node 3 reaches node 2 via the forwarder
            clients[i] = dep.client("-h", "198.18.0.1", *extra, "-e", f"cat > {tmp_path}/got{i}", where=i)
        return server, clients, report

    yield make
    for d in deps:
        d.close()


def test_corruption_is_caught_and_reported(setup, tmp_path):
    server, clients, report = setup()
    assert server.wait(120) == 2
    assert clients[1].wait(30) == 0 and clients[2].wait(30) == 0
    assert clients[3].wait(30) == 1
    assert "corrupted data: chunk 2 " in clients[3].err      # 9 MB is in the third 4 MiB chunk
    sent = (tmp_path / "sent").read_bytes()
    assert (tmp_path / "got1").read_bytes() == sent == (tmp_path / "got2").read_bytes()
    rep = load_report(report)
    row = {r["position"]: r for r in rep["nodes"]}[3]
    assert row["status"] == "failed" and row["verified"] is False and "corrupted" in row["error"]
    # Node 3's consumer was stopped before it finished: killed by the node (SIGTERM,
    # not an exit of its own) with only a part of the stream written, though node 3
    # itself received every byte and relayed them on.
    assert row["consumer_status"] == -signal.SIGTERM, row
    assert row["bytes"] == SIZE
    got3 = (tmp_path / "got3").read_bytes()
    assert FLIP_AT < len(got3) < SIZE - CHUNK_SIZE, len(got3)


def test_corruption_in_the_last_chunk_stops_the_consumer_before_its_end(setup, tmp_path):
    """The last chunk is checked once the stream has ended: the consumer gets its end
    of input only after that check, so a corrupted end is never taken for a whole copy
    (before, `cat` here ended with exit 0 on a full-length bad copy)."""
    last = (SIZE - 1) // CHUNK_SIZE
    server, clients, report = setup(flip_at=SIZE - 100_000)
    assert server.wait(120) == 2
    assert clients[3].wait(30) == 1
    assert f"corrupted data: chunk {last} " in clients[3].err
    row = {r["position"]: r for r in load_report(report)["nodes"]}[3]
    assert row["status"] == "failed" and row["verified"] is False
    assert row["consumer_status"] == -signal.SIGTERM, row


def test_without_verification_the_same_corruption_goes_unseen(setup, tmp_path):
    """The control experiment: what --no-verify gives up."""
    server, clients, report = setup("--no-verify")
    assert server.wait(120) == 0
    assert [clients[i].wait(30) for i in (1, 2, 3)] == [0, 0, 0]
    sent = (tmp_path / "sent").read_bytes()
    got3 = (tmp_path / "got3").read_bytes()
    assert len(got3) == len(sent) and got3 != sent
