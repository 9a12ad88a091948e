"""Faults during a deployment, across namespaces: a node killed, frozen or cut off,
two nodes lost, the server lost. Survivors must end byte-identical to the source and
the report must say exactly who failed and who was repaired.

Each fault is timed by the stream's progress (the producer's copy in `sent`), not by
the clock, and the test checks afterwards that the producer had not finished when the
fault landed: a fault after the stream's end would test no repair at all."""
import hashlib
import json
import os
import random
import signal
import subprocess
import time

import pytest
from deploy import load_report

from kadeploy.core.topology import build_tree

pytestmark = pytest.mark.netns
SIZE = 48_000_000          # at 400 Mbit/s about one second of streaming
RATE = "400mbit"
SEEDS = [int(s) for s in os.environ.get("KADEPLOY_FAULT_SEEDS", "1,2").split(",")]


def start(net, tmp_path, n_clients, arity, extra=()):
    cluster, dep = net(n_clients + 1, rate=RATE)
    report = str(tmp_path / "report.json")
    server = dep.server("-n", str(n_clients), "-a", str(arity), "--report", report,
                        "--stall-timeout", "3", *extra,
                        "-e", f"head -c {SIZE} /dev/urandom | tee {tmp_path}/sent", where=0)
    clients = {i: dep.client("-h", "198.18.0.1", "-e", f"cat > {tmp_path}/got{i}", where=i)
               for i in range(1, n_clients + 1)}
    deadline = time.monotonic() + 30
    while "tree (arity" not in server.err:
        assert time.monotonic() < deadline, server.err
        time.sleep(0.02)
    return cluster, dep, server, clients, report


def produced(tmp_path, name="sent") -> int:
    """Bytes the producer (or a consumer: got<i>) has written so far; nobody can have
    received more than the producer has written."""
    try:
        return (tmp_path / name).stat().st_size
    except FileNotFoundError:
        return 0


def wait_until_produced(tmp_path, server, fraction, timeout=60.0):
    target = int(SIZE * fraction)
    deadline = time.monotonic() + timeout
    while produced(tmp_path) < target:
        assert time.monotonic() < deadline, f"the stream never reached {target} bytes:\n{server.err}"
        time.sleep(0.005)


def fault(kind, cluster, clients, victim, tmp_path):
    """Inflict the fault; return its wall-clock time and how much the producer had
    written once it had landed (an upper bound on what anyone had received)."""
    if kind == "kill":
        clients[victim].kill(signal.SIGKILL)
    elif kind == "freeze":
        os.killpg(clients[victim].popen.pid, signal.SIGSTOP)
    elif kind == "link":
        subprocess.run(["ip", "netns", "exec", cluster.node(victim).ns, "ip", "link", "set", "eth0", "down"],
                       check=True)
    return time.time(), produced(tmp_path)


def orphans_of(n, arity, lost):
    """The nodes a repair must re-attach: children (in the tree) of a lost node that
    are not lost themselves."""
    tree = build_tree(n, arity)
    return {c for p in lost for c in tree.children(p)} - set(lost)


def sha256(path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return "missing"


def finished(proc, timeout):
    """The exit status, or None for a command killed for not finishing in time."""
    try:
        return proc.wait(timeout)
    except AssertionError:
        return None


def check_survivors(tmp_path, server, clients, report, lost, faults, case=None):
    """faults: {position: (fault time, bytes produced when it landed)}.  The fault log
    (KADEPLOY_FAULT_LOG, for tools/fault-soak) gets one record per fault, written
    before anything is asserted, so a failed case is logged too."""
    status = finished(server, 120)
    statuses = {i: finished(c, 60) for i, c in clients.items() if i not in lost}
    sent_digest, sent_len = sha256(tmp_path / "sent"), produced(tmp_path)
    compared = {i: {"bytes": produced(tmp_path, f"got{i}"), "sha256": sha256(tmp_path / f"got{i}"),
                    "exit": statuses[i]} for i in statuses}
    for c in compared.values():
        c["identical"] = c["sha256"] == sent_digest and c["bytes"] == sent_len
    rep = load_report(report)
    by_pos = {r["position"]: r for r in rep["nodes"]}
    n = len(clients)
    orphans = orphans_of(n, rep["arity"], lost)
    log = os.environ.get("KADEPLOY_FAULT_LOG")
    if log:  # tools/fault-soak gathers the figures of long runs from here
        with open(log, "a") as f:
            for p in sorted(lost):
                failed_at = by_pos[p]["failed_at"]
                f.write(json.dumps({
                    **(case or {}), "victim": p, "produced_at_fault": faults[p][1], "stream_bytes": sent_len,
                    "source": {"bytes": sent_len, "sha256": sent_digest},
                    "latency": None if failed_at is None else rep["started_at"] + failed_at - faults[p][0],
                    "server_exit": status, "orphans": sorted(orphans),
                    "repairs": {str(q): r["repairs"] for q, r in sorted(by_pos.items())},
                    "survivors": {str(q): c for q, c in sorted(compared.items())},
                }) + "\n")
    assert sent_len == SIZE
    for p, (_, before_end) in faults.items():
        assert before_end < SIZE, f"node {p}'s fault landed after the stream had been produced"
    for i, c in compared.items():
        assert c["exit"] == 0, f"client {i}:\n{clients[i].err}\nserver:\n{server.err}"
        assert c["identical"], f"node {i}: {c['bytes']} bytes differ from the {sent_len} sent"
    assert {p for p, r in by_pos.items() if r["status"] != "ok"} == set(lost), server.out
    for p, r in by_pos.items():
        if p not in lost:
            assert r["verified"] is True and r["bytes"] == SIZE
            # Each orphan was re-attached once; nobody else was.
            assert r["repairs"] == (1 if p in orphans else 0), (p, r, server.err)
        else:
            assert r["error"] and r["failed_at"] is not None
            # Detected within the stall timeout and a margin (a noisy 2-core machine).
            latency = rep["started_at"] + r["failed_at"] - faults[p][0]
            assert latency < 15, f"node {p} reported failed {latency:.1f} s after the fault"
    assert status == 2, server.err
    return rep


def pick_victim(rng, n, arity, victim):
    """first, last, or "middle": a node that has both a parent node and children of
    its own when the tree has one (else any node strictly between), so that losing
    it calls for a repair."""
    if victim == "first":
        return 1
    if victim == "last":
        return n
    tree = build_tree(n, arity)
    inner = [p for p in range(2, n) if tree.children(p)]
    return rng.choice(inner or list(range(2, n)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind,n,arity,victim", [
    ("kill", 4, 1, "middle"), ("kill", 4, 1, "first"), ("kill", 4, 1, "last"),
    ("kill", 6, 2, "middle"), ("kill", 7, 3, "first"),
    ("freeze", 4, 1, "middle"), ("link", 4, 1, "middle"),
])
def test_single_fault(net, tmp_path, kind, n, arity, victim, seed):
    rng = random.Random(f"{kind}{n}{arity}{victim}{seed}")
    pos = pick_victim(rng, n, arity, victim)
    cluster, dep, server, clients, report = start(net, tmp_path, n, arity)
    wait_until_produced(tmp_path, server, rng.uniform(0.05, 0.6))
    landed = fault(kind, cluster, clients, pos, tmp_path)
    case = {"test": "single_fault", "kind": kind, "n": n, "arity": arity, "seed": seed}
    check_survivors(tmp_path, server, clients, report, {pos}, {pos: landed}, case)


def test_two_nodes_killed(net, tmp_path):
    cluster, dep, server, clients, report = start(net, tmp_path, 6, 1)
    wait_until_produced(tmp_path, server, 0.15)
    first = fault("kill", cluster, clients, 2, tmp_path)
    wait_until_produced(tmp_path, server, 0.4)
    second = fault("kill", cluster, clients, 4, tmp_path)
    check_survivors(tmp_path, server, clients, report, {2, 4}, {2: first, 4: second},
                    {"test": "two_nodes_killed", "kind": "kill", "n": 6, "arity": 1})


def test_server_killed_every_client_fails_clearly(net, tmp_path):
    cluster, dep, server, clients, report = start(net, tmp_path, 3, 1)
    wait_until_produced(tmp_path, server, 0.2)
    server.kill(signal.SIGKILL)
    for c in clients.values():
        status = c.wait(30)
        last = c.err.strip().splitlines()[-3:]
        assert status == 1, c.err
        assert "Traceback" not in c.err
        assert any("lost the server" in line or "stream cut" in line for line in last), c.err


def test_repair_off_fails_the_orphans(net, tmp_path):
    cluster, dep, server, clients, report = start(net, tmp_path, 3, 1, extra=["--no-repair"])
    wait_until_produced(tmp_path, server, 0.2)
    fault("kill", cluster, clients, 2, tmp_path)
    assert server.wait(120) == 2
    assert clients[1].wait(60) == 0
    assert clients[3].wait(60) == 1
    assert "stream cut" in clients[3].err
    assert {r["position"]: r["repairs"] for r in load_report(report)["nodes"]}[3] == 0


def test_node_lost_before_the_data_flows(net, tmp_path):
    """Killed after the tree is built, while the producer has not written a byte (it
    waits for the test's word, a file, to begin)."""
    cluster, dep = net(5, rate=RATE)
    report = str(tmp_path / "report.json")
    gate = tmp_path / "go"
    server = dep.server("-n", "4", "--report", report, "--stall-timeout", "3",
                        "-e", f"until [ -e {gate} ]; do sleep 0.05; done; "
                              f"head -c {SIZE} /dev/urandom | tee {tmp_path}/sent", where=0)
    clients = {i: dep.client("-h", "198.18.0.1", "-e", f"cat > {tmp_path}/got{i}", where=i)
               for i in range(1, 5)}
    deadline = time.monotonic() + 30
    while "tree (arity" not in server.err:
        assert time.monotonic() < deadline, server.err
        time.sleep(0.02)
    time.sleep(0.3)
    landed = fault("kill", cluster, clients, 2, tmp_path)
    assert landed[1] == 0, "the producer had started before the fault"
    gate.touch()
    check_survivors(tmp_path, server, clients, report, {2}, {2: landed},
                    {"test": "node_lost_before_the_data_flows", "kind": "kill", "n": 4, "arity": 1})


def test_parent_lost_before_its_child_connects(net, tmp_path):
    """Node 3 is frozen from its registration on, so that its parent (node 2) is lost
    before node 3 ever connected to it. Thawed, node 3 finds no parent, follows the
    server's re-attachment under node 1, gets the whole stream from node 1's window,
    and the report counts that re-attachment as its repair."""
    import re
    cluster, dep = net(5, rate=RATE)
    report = str(tmp_path / "report.json")
    server = dep.server("-n", "4", "--report", report, "--stall-timeout", "10",
                        "-e", f"head -c {SIZE} /dev/urandom | tee {tmp_path}/sent", where=0)

    def client(i):
        return dep.client("-h", "198.18.0.1", "-e", f"cat > {tmp_path}/got{i}", where=i)

    def wait_for(pattern):
        deadline = time.monotonic() + 30
        while not re.search(pattern, server.err):
            assert time.monotonic() < deadline, f"no {pattern!r}:\n{server.err}"
            time.sleep(0.01)
    clients = {3: client(3)}
    wait_for(r"\(1 of 4\)")
    os.killpg(clients[3].popen.pid, signal.SIGSTOP)
    clients.update({i: client(i) for i in (1, 2, 4)})
    wait_for(r"tree \(arity")
    landed = fault("kill", cluster, clients, 2, tmp_path)
    wait_for(r"re-attaching \S+ \(198\.18\.0\.4:")
    os.killpg(clients[3].popen.pid, signal.SIGCONT)
    check_survivors(tmp_path, server, clients, report, {2}, {2: landed})
    assert "waiting for the server to re-attach this node" in clients[3].err


def test_client_lost_while_waiting_for_the_start(net, tmp_path):
    """A registered node that dies before the start no longer counts towards -n."""
    cluster, dep = net(5, rate=RATE)
    report = str(tmp_path / "report.json")
    server = dep.server("-n", "3", "--report", report, "-e", "seq 100000", where=0)
    early = dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=1)
    doomed = dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=2)
    deadline = time.monotonic() + 30
    while server.err.count("registered ") < 2:
        assert time.monotonic() < deadline, server.err
        time.sleep(0.02)
    doomed.kill(signal.SIGKILL)
    while "left before the start" not in server.err:
        assert time.monotonic() < deadline, server.err
        time.sleep(0.02)
    late = [dep.client("-h", "198.18.0.1", "-e", "cat >/dev/null", where=i) for i in (3, 4)]
    assert server.wait(60) == 0, server.err
    assert early.wait(30) == 0 and all(c.wait(30) == 0 for c in late)
    assert load_report(report)["totals"] == {"nodes": 3, "ok": 3, "failed": 0}
