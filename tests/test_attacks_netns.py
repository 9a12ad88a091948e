"""Attacks from the network, across namespaces: each must be refused and reported.

Every attacker here is a real process in its own network namespace, on the same
virtual switch as the deployment (prefix "kds")."""
import os
import shutil
import time
from contextlib import contextmanager

import pytest
from deploy import KD, assert_one_line_error, load_report

pytestmark = pytest.mark.netns
KEY = b"correct horse battery staple 42"
SERVER = "198.18.0.1"


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    os.chmod(path, 0o600)
    return str(path)


def wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


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
