"""Whole deployments across network namespaces: one host per node, each with its own
address on one virtual switch, the real commands with the original's default ports."""
import json
import subprocess
import time

import pytest
from deploy import (
    assert_one_line_error,
    assert_same_tree,
    load_report,
    make_targets,
    tar_producer,
)

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("n_clients,arity", [(4, 1), (6, 2), (7, 3)])
def test_clone_across_hosts(net, hard_tree, scratch, tmp_path, n_clients, arity):
    cluster, dep = net(n_clients + 1)
    report = str(tmp_path / "report.json")
    dsts = make_targets(scratch, n_clients)
    server = dep.server("-n", str(n_clients), "-a", str(arity), "-e", tar_producer(hard_tree),
                        "--report", report, where=0)
    # Started in reverse address order: the tree must still follow the addresses.
    for i in reversed(range(1, n_clients + 1)):
        dep.client("-h", cluster.node(0).addr, "-t", dsts[i - 1], where=i)
    statuses = dep.wait_all(240)
    assert statuses == [0] * (n_clients + 1), server.err + "".join(p.err for p in dep.procs)
    for d in dsts:
        assert_same_tree(hard_tree, d)
    rep = load_report(report)
    assert [(r["position"], r["address"]) for r in rep["nodes"]] == \
        [(i, cluster.node(i).addr) for i in range(1, n_clients + 1)]
    assert [r["parent"] for r in rep["nodes"]] == [(p - 1) // arity for p in range(1, n_clients + 1)]


def tx_bytes(cluster, i: int) -> int:
    """Bytes node i has sent on its one link (its eth0), as the kernel counts them."""
    out = subprocess.run(["ip", "-n", cluster.node(i).ns, "-s", "-j", "link", "show", "eth0"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["bytes"]


def test_forwarding_is_what_feeds_the_chain(net, tmp_path):
    """A chain, not a star: each node's parent is the node before it, and every link
    carried the stream once. The server's uplink and each forwarder's sent SIZE bytes
    (plus TCP/IP headers and the control messages), the last node none; a server
    sending one copy per node would put three copies on its uplink."""
    size = 50_000_000
    cluster, dep = net(4)
    report = str(tmp_path / "r.json")
    before = [tx_bytes(cluster, i) for i in range(4)]
    dep.server("-n", "3", "-a", "1", "--report", report,
               "-e", f"head -c {size} /dev/urandom | tee " + str(tmp_path / "sent"), where=0)
    for i in (1, 2, 3):
        dep.client("-h", cluster.node(0).addr, "-e", f"cat > {tmp_path}/got{i}", where=i)
    assert dep.wait_all(120) == [0, 0, 0, 0]
    carried = [tx_bytes(cluster, i) - before[i] for i in range(4)]
    sent = (tmp_path / "sent").read_bytes()
    assert len(sent) == size
    for i in (1, 2, 3):
        assert (tmp_path / f"got{i}").read_bytes() == sent
    rep = load_report(report)
    assert [(r["position"], r["parent"]) for r in rep["nodes"]] == [(1, 0), (2, 1), (3, 2)]
    for i in (0, 1, 2):      # the server, then each forwarder: one copy, a few % of headers
        assert size <= carried[i] < 1.1 * size, (i, carried)
    assert carried[3] < 0.05 * size, carried    # the last node forwards to nobody


def test_discovery_by_session_name(net, tmp_path):
    cluster, dep = net(4)
    report = str(tmp_path / "r.json")
    dep.server("-n", "3", "-s", "lab-install", "-e", "seq 100000", "--report", report, where=0)
    time.sleep(0.5)
    for i in (1, 2, 3):
        dep.client("-s", "lab-install", "-e", "cat >/dev/null", where=i)
    assert dep.wait_all(60) == [0, 0, 0, 0], [p.err for p in dep.procs]
    assert "found the server of session 'lab-install' at 198.18.0.1" in dep.procs[1].err
    assert load_report(report)["totals"]["ok"] == 3


def test_discovery_of_an_absent_session(net):
    cluster, dep = net(2)
    dep.server("-n", "1", "-s", "other", "-e", "true", "--wait-timeout", "8", where=0)
    c = dep.client("-s", "nobody-here", "-e", "cat", where=1)
    assert_one_line_error(c, 3, "no server answered for session 'nobody-here' after 10 tries")


def test_go_now_wait_and_delay(net, tmp_path):
    """The original's barrier session: echo Hello to clients waiting with -w, released
    one by one -d apart; started early with -g."""
    cluster, dep = net(5)
    server = dep.server("-n", "10", "-d", "2", "-e", "echo Hello", "--verbose", where=0)
    clients = [dep.client("-h", "198.18.0.1", "-w", "-e", "cat", where=i) for i in (1, 2, 3)]
    deadline = time.monotonic() + 30
    while server.err.count("registered ") < 3:
        assert time.monotonic() < deadline, server.err
        time.sleep(0.05)
    go = dep.client("-h", "198.18.0.1", "-g", where=4)
    assert go.wait(30) == 0
    assert server.wait(60) == 0, server.err
    assert [c.wait(30) for c in clients] == [0, 0, 0]
    assert server.err.count("released") == 3
    assert all("Hello" in c.err for c in clients)


def test_failing_consumer_and_late_client(net, tmp_path):
    cluster, dep = net(5)
    report = str(tmp_path / "r.json")
    gate = tmp_path / "go"   # the stream ends once the late client has been refused
    server = dep.server("-n", "3", "-e", f"head -c 20000000 /dev/zero; until [ -e {gate} ]; do sleep 0.05; done",
                        "--report", report, where=0)
    ok1 = dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=1)
    bad = dep.client("-h", "198.18.0.1", "-e", "exit 5", where=2)
    ok3 = dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=3)
    deadline = time.monotonic() + 30
    while "tree (arity" not in server.err:
        assert time.monotonic() < deadline, server.err
        time.sleep(0.05)
    late = dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=4)
    assert_one_line_error(late, 3, "registration is closed")
    gate.touch()
    assert server.wait(60) == 2
    assert ok1.wait(30) == 0 and ok3.wait(30) == 0     # node 3 is fed through node 2
    assert bad.wait(30) == 1
    rep = load_report(report)
    assert [(r["address"], r["status"]) for r in rep["nodes"]] == [
        ("198.18.0.2", "ok"), ("198.18.0.3", "failed"), ("198.18.0.4", "ok")]
    assert rep["rejected"]["late"] == 1


def test_ipv6_and_hosts_order(net, tmp_path):
    cluster, dep = net(4)
    hosts = tmp_path / "hosts"
    hosts.write_text("# deployment order\nfd42:6b64::4\nfd42:6b64::2\nfd42:6b64::3\n")
    report = str(tmp_path / "r.json")
    dep.server("--hosts", str(hosts), "-e", "seq 300000", "--report", report, where=0)
    for i in (1, 2, 3):
        dep.client("-h", cluster.node(0).addr6, "-e", "cat >/dev/null", where=i)
    assert dep.wait_all(60) == [0, 0, 0, 0], [p.err for p in dep.procs]
    rep = load_report(report)
    assert [r["address"] for r in rep["nodes"]] == ["fd42:6b64::4", "fd42:6b64::2", "fd42:6b64::3"]


def test_host_not_in_hosts_file_is_refused(net, tmp_path):
    cluster, dep = net(3)
    hosts = tmp_path / "hosts"
    hosts.write_text("198.18.0.2\n")
    dep.server("--hosts", str(hosts), "-e", "seq 1000", where=0)
    stranger = dep.client("-h", "198.18.0.1", "-e", "cat", where=2)
    assert_one_line_error(stranger, 3, "not in the server's --hosts list")
    member = dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=1)
    assert member.wait(60) == 0 and dep.procs[0].wait(60) == 0
