"""Attacks from the network, across namespaces: each must be refused and reported.

Every attacker here is a real process in its own network namespace, on the same
virtual switch as the deployment (prefix "kds")."""
import os
import shutil
import time
from contextlib import contextmanager

import pytest
from deploy import KD, assert_one_line_error, load_report
from test_security_netns import keyfile, wait_for  # noqa: F401  (keyfile: a fixture)

pytestmark = pytest.mark.netns
SERVER = "198.18.0.1"


@contextmanager
def etc_hosts(ns: str, text: str):
    """/etc/hosts as seen by processes `ip netns exec`-ed in `ns` (and only them)."""
    d = f"/etc/netns/{ns}"
    os.makedirs(d)
    try:
        with open(f"{d}/hosts", "w") as f:
            f.write(text)
        yield
    finally:
        shutil.rmtree(d, ignore_errors=True)


def client_named(dep, cluster, where: int, hostname: str, *args):
    """A real ka-d-client in node `where`, in a UTS namespace whose host name is `hostname`."""
    argv = ["ip", "netns", "exec", cluster.node(where).ns, "unshare", "--uts", "sh", "-c",
            f'hostname {hostname} && exec "$@"', "sh", *KD, "client", *args]
    return dep._start(f"named-{where}", argv)


def test_hosts_matches_the_real_source_not_what_the_peer_says(net, tmp_path):
    """--hosts names one node by address and one by a name the server resolves; an
    attacker claims the name (its host name) and then the address (--advertise)."""
    cluster, dep = net(4, prefix="kds")
    hosts = tmp_path / "hosts"
    hosts.write_text("198.18.0.2\nkds-named\n")
    report = str(tmp_path / "r.json")
    with etc_hosts(cluster.node(0).ns, "198.18.0.3 kds-named\n"):
        server = dep.server("--hosts", str(hosts), "-e", "seq 100000", "--report", report, where=0)
        by_name = client_named(dep, cluster, 3, "kds-named", "-h", SERVER, "-e", "cat >/dev/null")
        assert_one_line_error(by_name, 3, "(198.18.0.4) is not in the server's --hosts list")
        by_address = dep.client("-h", SERVER, "--advertise", "198.18.0.2", "-e", "cat >/dev/null",
                                where=3)
        assert_one_line_error(by_address, 3, "(198.18.0.4) is not in the server's --hosts list")
        members = [dep.client("-h", SERVER, "-e", "cat >/dev/null", where=i) for i in (1, 2)]
        assert [m.wait(60) for m in members] == [0, 0]
        assert server.wait(60) == 0
    rep = load_report(report)
    assert rep["rejected"]["hosts"] == 2
    assert [r["address"] for r in rep["nodes"]] == ["198.18.0.2", "198.18.0.3"]
    assert server.err.count("rejected 198.18.0.4 (hosts)") == 2


MITM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mitm.py")


@pytest.mark.parametrize("attack", ["rewrite-done", "drop-progress", "replay-progress",
                                    "reorder-progress", "reorder-ping"])
def test_a_forwarder_in_the_middle_cannot_change_drop_replay_or_reorder(net, keyfile, tmp_path, attack):
    """Client (node 1) -> forwarder (node 2, no key) -> server (node 0). The data link
    goes straight to the server; only the control connection passes the forwarder."""
    import sys
    cluster, dep = net(3, prefix="kds")
    report = str(tmp_path / "r.json")
    server = dep.server("-n", "1", "--key-file", keyfile, "--report", report,
                        "-e", "seq 100000; sleep 4", where=0)
    wait_for(lambda: "waiting for" in server.err)    # the forwarder connects at once, without retries
    mitm = dep._start("mitm", dep.wrap(2, [sys.executable, MITM, "30765", SERVER, "30765", attack]))
    wait_for(lambda: "listening" in mitm.out)
    consumer = "cat >/dev/null; exit 3" if attack == "rewrite-done" else "cat >/dev/null"
    client = dep.client("-h", "198.18.0.3", "--key-file", keyfile, "-e", consumer, where=1)
    assert client.wait(60) != 0
    assert server.wait(60) == 1, server.err
    assert "attacked: " in mitm.out          # the attack did happen
    rep = load_report(report)
    [node] = rep["nodes"]
    assert node["status"] == "failed"
    assert "failed authentication" in node["error"], node
    if attack == "reorder-ping":               # seen by the node, which says so
        assert "lost the server: control message" in client.err
        assert "failed authentication" in client.err
    else:                                      # seen by the server
        assert "failed authentication" in server.err


ROGUE_RESPONDER = r"""
import select, socket, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
udp.bind(("0.0.0.0", 4957))
tcp = socket.create_server(("0.0.0.0", 30765))
print("listening", flush=True)
while True:
    ready, _, _ = select.select([udp, tcp], [], [])
    if tcp in ready:
        conn, addr = tcp.accept()
        print("tcp connection from", addr[0], flush=True)
        conn.close()
    if udp in ready:
        data, addr = udp.recvfrom(512)
        for _ in range(20):   # many answers, all at once: be first
            udp.sendto(b"kadeploy 0.1.0 30765\0", addr)
        print("answered", addr[0], flush=True)
"""


def test_a_rogue_discovery_responder_is_ignored_with_a_key(net, keyfile, tmp_path):
    """Node 2 answers every broadcast at once, pointing clients at itself."""
    import sys
    cluster, dep = net(3, prefix="kds")
    rogue = dep._start("rogue", dep.wrap(2, [sys.executable, "-c", ROGUE_RESPONDER]))
    wait_for(lambda: "listening" in rogue.out)
    # Only the rogue answers: a keyed client finds nobody, and never connects to it.
    alone = dep.client("-s", "kds-session", "--key-file", keyfile, "-e", "cat >/dev/null", where=1)
    assert_one_line_error(alone, 3, "answer(s) without a valid proof of the key ignored")
    assert "answered 198.18.0.2" in rogue.out
    # The real server answers too: the keyed client deploys from it.
    report = str(tmp_path / "r.json")
    server = dep.server("-n", "1", "-s", "kds-session", "--key-file", keyfile, "--report", report,
                        "-e", "seq 1000", where=0)
    member = dep.client("-s", "kds-session", "--key-file", keyfile, "-e", "cat >/dev/null", where=1)
    assert member.wait(60) == 0 and server.wait(60) == 0, member.err
    assert "found the server of session 'kds-session' at 198.18.0.1:30765" in member.err
    assert rogue.out.count("answered 198.18.0.2") >= 2
    assert "tcp connection" not in rogue.out
    assert "anyone on this network can answer" not in member.err


def test_discovery_without_a_key_warns_that_anyone_can_answer(net, tmp_path):
    cluster, dep = net(2, prefix="kds")
    server = dep.server("-n", "1", "-s", "kds-open", "-e", "seq 1000", where=0)
    member = dep.client("-s", "kds-open", "-e", "cat >/dev/null", where=1)
    assert member.wait(60) == 0 and server.wait(60) == 0
    assert "no key: the first answer to the broadcast is taken, and anyone on this network can " \
           "answer it" in member.err


def test_no_verify_with_a_key_needs_a_second_option(net, keyfile, tmp_path):
    cluster, dep = net(3, prefix="kds")
    refused = dep.server("-n", "1", "--key-file", keyfile, "--no-verify", "-e", "true", where=0)
    assert_one_line_error(refused, 64, "add --insecure-no-verify to mean it")
    server = dep.server("-n", "2", "-a", "2", "--key-file", keyfile, "--no-verify", "--insecure-no-verify",
                        "-e", "seq 1000", where=0)
    # A keyed node refuses a stream without digests unless told the same.
    strict = dep.client("-h", SERVER, "--key-file", keyfile, "-e", "cat >/dev/null", where=1)
    lax = dep.client("-h", SERVER, "--key-file", keyfile, "--insecure-no-verify",
                     "-e", "cat >/dev/null", where=2)
    assert_one_line_error(strict, 3, "refuses an unverified stream unless given --insecure-no-verify")
    assert lax.wait(60) == 0
    assert server.wait(60) == 2     # some nodes failed: the strict one


@contextmanager
def capture(cluster, path):
    """tcpdump on the virtual switch's bridge (every frame between every node), to `path`."""
    import subprocess
    proc = subprocess.Popen(["ip", "netns", "exec", cluster.switch_ns, "tcpdump", "-i", "br0", "-U",
                             "-s", "0", "-w", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "listening on" not in (line := proc.stderr.readline()):
            assert proc.poll() is None and time.monotonic() < deadline, f"tcpdump: {line}"
        yield
    finally:
        # The last frames reach the file (-U writes each packet): until it stops growing.
        size, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline and (now := _size(path)) != size:
            size = now
            time.sleep(0.5)
        proc.terminate()
        proc.wait(10)


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def test_without_encrypt_the_stream_is_readable_on_the_wire_even_with_a_key(net, keyfile, tmp_path):
    """What a key does not protect: a capture on the bridge holds the tree's content."""
    cluster, dep = net(3, prefix="kds")
    marker = f"kds-marker-{os.urandom(8).hex()}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret.txt").write_text((marker + "\n") * 20000)
    pcap = tmp_path / "wire.pcap"
    with capture(cluster, pcap):
        server = dep.server("-n", "2", "--key-file", keyfile, "-e", f"tar -C {src} -c .", where=0)
        clients = [dep.client("-h", SERVER, "--key-file", keyfile, "-e", "tar -t >/dev/null", where=i)
                   for i in (1, 2)]
        assert [c.wait(60) for c in clients] == [0, 0] and server.wait(60) == 0
    wire = pcap.read_bytes()
    assert len(wire) > 20000 * len(marker), len(wire)   # the stream was captured ...
    assert marker.encode() in wire              # ... and can be read


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_encrypt_deploys_identical_trees_and_the_wire_never_shows_them(net, keyfile, tmp_path, compress):
    """A chain of three through the relay (node 1 forwards to 2, 2 to 3): the trees are
    byte-identical, and a capture of every frame on the bridge never holds the marker
    (the control: test_without_encrypt_the_stream_is_readable_on_the_wire_even_with_a_key)."""
    from deploy import assert_same_tree
    cluster, dep = net(4, prefix="kds")
    marker = f"kds-marker-{os.urandom(8).hex()}"
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "shadow").write_text((marker + "\n") * 2000)
    (src / "big").write_bytes(os.urandom(3 << 20))        # several cipher records
    pcap = tmp_path / "wire.pcap"
    report = str(tmp_path / "r.json")
    extra = ["--compress", compress] if compress else []
    with capture(cluster, pcap):
        server = dep.server("-n", "3", "--key-file", keyfile, "--encrypt", *extra, "--report", report,
                            "-e", f"tar -C {src} -c .", where=0)
        clients = []
        for i in (1, 2, 3):
            (tmp_path / f"t{i}").mkdir()
            clients.append(dep.client("-h", SERVER, "--key-file", keyfile,
                                      "-e", f"tar -x -C {tmp_path}/t{i}", where=i))
        assert [c.wait(90) for c in clients] == [0, 0, 0], [c.err for c in clients]
        assert server.wait(60) == 0, server.err
    for i in (1, 2, 3):
        assert_same_tree(src, tmp_path / f"t{i}")
    rep = load_report(report)
    assert [r["parent"] for r in rep["nodes"]] == [0, 1, 2]      # a chain: relays forwarded
    assert all(r["verified"] for r in rep["nodes"])
    wire = pcap.read_bytes()
    # The stream was captured (tcpdump may drop packets on a loaded machine: a third
    # of the stream is plenty to have seen it) ...
    assert len(wire) > 1 << 20
    assert marker.encode() not in wire and marker[:16].encode() not in wire   # ... and is unreadable


def test_encrypt_alone_catches_a_changed_byte_on_a_relayed_link(net, keyfile, tmp_path):
    """Digests off (--no-verify, confirmed on both sides): the cipher's tag still
    names the changed chunk, and that node's consumer is stopped. A forwarder (node 4)
    flips one byte of the link from node 2 to node 3."""
    import threading

    from test_integrity_netns import corrupting_forwarder
    cluster, dep = net(5, prefix="kds")
    ready = threading.Event()
    threading.Thread(target=cluster.call, daemon=True, args=(
        4, corrupting_forwarder, "198.18.0.5", ("198.18.0.3", 30764), ready, 3_000_200)).start()
    assert ready.wait(10)
    hosts = tmp_path / "hosts"
    hosts.write_text("198.18.0.2\n198.18.0.3\n198.18.0.4\n")
    report = str(tmp_path / "r.json")
    server = dep.server("--hosts", str(hosts), "--key-file", keyfile, "--encrypt", "--no-verify",
                        "--insecure-no-verify", "--report", report,
                        "-e", f"head -c 8000000 /dev/urandom | tee {tmp_path}/sent", where=0)
    clients = {}
    for i in (1, 2, 3):
        extra = ["--advertise", "198.18.0.5"] if i == 2 else []
        clients[i] = dep.client("-h", SERVER, "--key-file", keyfile, "--insecure-no-verify", *extra,
                                "-e", f"cat > {tmp_path}/got{i}", where=i)
    assert server.wait(90) == 2, server.err
    assert clients[1].wait(30) == 0 and clients[2].wait(30) == 0
    assert clients[3].wait(30) == 1
    # 3,000,200 bytes in: the third 1 MiB record on the wire (records are 1 MiB + 16).
    assert "corrupted data: chunk 2 " in clients[3].err and "authentication tag" in clients[3].err
    sent = (tmp_path / "sent").read_bytes()
    assert (tmp_path / "got1").read_bytes() == sent == (tmp_path / "got2").read_bytes()
    assert len((tmp_path / "got3").read_bytes()) < len(sent)   # stopped, not a silent bad copy
    row = {r["position"]: r for r in load_report(report)["nodes"]}[3]
    assert row["status"] == "failed" and "authentication tag" in row["error"]
