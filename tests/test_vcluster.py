"""The virtual cluster: addressing, reachability, broadcast, shaping, teardown, scratch tmpfs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from kadeploy.defaults import DISCOVERY_PORT
from kadeploy.lab import vcluster as vc
from kadeploy.lab.vcluster import NetemUnavailable, VClusterError, VirtualCluster


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def _alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (orphans may stay zombies if PID 1 does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _scratch_mounts() -> int:
    with open("/proc/self/mounts") as f:
        return f.read().count(f"kd-scratch-{os.getpid()}-")


def _our_netns() -> set[str]:
    # Only this process's namespaces: other test runs may be building clusters concurrently.
    return {n for n in vc._netns_list() if n.startswith(f"kd-{os.getpid()}-")}


@pytest.fixture
def no_leaks():
    """Assert the test leaves no namespace, host link or tmpfs mount behind."""
    before_ns, before_links = _our_netns(), _host_links()
    before_mounts = _scratch_mounts()
    yield
    assert _our_netns() - before_ns == set()
    new_links = _host_links() - before_links
    assert not [n for n in new_links if re.fullmatch(r"p\d+|br0|eth0", n)], new_links
    assert _scratch_mounts() == before_mounts


def _echo_once(server: socket.socket, received: list) -> None:
    conn, peer = server.accept()
    with conn:
        received.append(peer[0])
        data = b""
        while len(data) < 5:
            data += conn.recv(5 - len(data))
        conn.sendall(data[::-1])


# ---------------------------------------------------------------- no root needed

def test_parse_rate():
    assert vc.parse_rate("1gbit") == 10**9
    assert vc.parse_rate("100mbit") == 10**8
    assert vc.parse_rate("12.5mbps") == 10**8          # tc: bps = bytes per second
    assert vc.parse_rate(8_000_000) == 8_000_000
    with pytest.raises(ValueError):
        vc.parse_rate("fast")


def test_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(VClusterError, match="needs root"):
        VirtualCluster(2).__enter__()


def test_missing_ip_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(vc.shutil, "which", lambda name: None)
    monkeypatch.setattr(vc.os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(VClusterError, match="iproute2"):
        VirtualCluster(2).__enter__()


def test_bad_arguments():
    with pytest.raises(ValueError):
        VirtualCluster(0)
    with pytest.raises(ValueError):
        VirtualCluster(2, prefix="a/b")


# ---------------------------------------------------------------- namespaces

@pytest.mark.netns
def test_nodes_get_addresses(no_leaks, vcluster):
    a, b = vcluster(3), vcluster(3)
    assert len({*a.namespaces, *b.namespaces}) == 8, "two live instances must not share names"
    assert set(a.namespaces) | set(b.namespaces) <= set(vc._netns_list())
    for node in a:
        out = node.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
        links = {link["ifname"]: link for link in json.loads(out)}
        assert set(links) == {"lo", "eth0"}
        assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
        addrs = {(x["local"], x["prefixlen"]) for x in links["eth0"]["addr_info"]}
        assert (f"198.18.0.{node.index + 1}", 24) in addrs
        assert (f"fd42:6b64::{node.index + 1:x}", 64) in addrs
        assert node.addr == f"198.18.0.{node.index + 1}"
        routes = node.run(["ip", "-j", "route", "show", "default"], capture_output=True,
                          text=True, check=True).stdout
        assert json.loads(routes)[0]["dev"] == "eth0"


@pytest.mark.netns
def test_ipv6_off(vcluster):
    c = vcluster(2, ipv6=False)
    assert c.node(0).addr6 is None
    out = c.run(0, "ip -6 -j addr show dev eth0", capture_output=True, text=True, check=True).stdout
    assert not any(link.get("addr_info") for link in json.loads(out))


@pytest.mark.netns
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_tcp_between_nodes(vcluster, family):
    c = vcluster(4)
    src, dst = c.node(0), c.node(3)
    addr = dst.addr if family == socket.AF_INET else dst.addr6
    server = dst.call(socket.create_server, (addr, 0), family=family)
    port = server.getsockname()[1]
    received: list = []
    t = threading.Thread(target=_echo_once, args=(server, received))
    t.start()
    try:
        with src.call(socket.create_connection, (addr, port), timeout=10) as conn:
            conn.sendall(b"hello")
            assert conn.recv(5) == b"olleh"
    finally:
        t.join(10)
        server.close()
    want = src.addr if family == socket.AF_INET else src.addr6
    assert received == [want], "the connection must come from node 0's own address"


@pytest.mark.netns
def test_nodes_are_isolated_from_the_host(vcluster):
    c = vcluster(2)
    # The host has no route into 198.18.0.0/24 inside the namespaces, and a
    # socket bound in the host namespace cannot use the node addresses.
    with pytest.raises(OSError):
        socket.create_server((c.node(0).addr, 0))


@pytest.mark.netns
def test_broadcast_reaches_other_nodes_only_in_its_cluster(vcluster):
    a, b = vcluster(3), vcluster(2)

    def listener():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("", DISCOVERY_PORT))
        s.settimeout(10)
        return s

    a1, a2, b0 = a.call(1, listener), a.call(2, listener), b.call(0, listener)
    sender = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
        f"s.sendto(b'session-x\\0', ('255.255.255.255', {DISCOVERY_PORT}))"
    )
    try:
        a.run(0, [sys.executable, "-c", sender], check=True, timeout=30)
        for s in (a1, a2):
            data, (host, _) = s.recvfrom(100)
            assert (data, host) == (b"session-x\0", a.node(0).addr)
        b0.settimeout(0.3)
        with pytest.raises(socket.timeout):
            b0.recvfrom(100)          # another cluster's broadcast domain
    finally:
        for s in (a1, a2, b0):
            s.close()


@pytest.mark.netns
def test_sixteen_nodes_are_set_up_and_reach_each_other(vcluster):
    c = vcluster(16, rate="1gbit")   # (how long it takes is not asserted: the machine is shared)
    server = c.call(15, socket.create_server, (c.node(15).addr, 0))
    with server, c.call(0, socket.create_connection, server.getsockname(), timeout=10):
        conn, peer = server.accept()
        conn.close()
    assert peer[0] == c.node(0).addr


# ---------------------------------------------------------------- shaping

@pytest.mark.netns
def test_rate_limit_limits(vcluster):
    c = vcluster(2, rate="4mbit")             # 500 kB/s each way
    for ns, dev in ((c.switch_ns, "p1"), (c.node(1).ns, "eth0"), (c.switch_ns, "p0"), (c.node(0).ns, "eth0")):
        out = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev],
                             capture_output=True, text=True, check=True).stdout
        assert "tbf" in out and "rate 4Mbit" in out, (ns, dev, out)

    total = 1_000_000
    server = c.call(1, socket.create_server, (c.node(1).addr, 0))
    got = []

    def sink():
        conn, _ = server.accept()
        with conn:
            n = 0
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
            got.append(n)

    t = threading.Thread(target=sink)
    t.start()
    t0 = time.monotonic()
    with c.call(0, socket.create_connection, server.getsockname(), timeout=60) as conn:
        conn.sendall(bytes(total))
        conn.shutdown(socket.SHUT_WR)
        t.join(60)
    elapsed = time.monotonic() - t0
    server.close()
    assert got == [total]
    # ~2 s in theory; a 4 Mbit/s link cannot possibly move 1 MB in under 1 s.
    assert elapsed > 1.0, f"1 MB over a 4 Mbit/s link took only {elapsed:.2f} s: not shaped"


@pytest.mark.netns
def test_delay_without_netem_is_a_clear_error(no_leaks, vcluster):
    available, _ = vc.netem_available()
    if available:
        c = vcluster(2, delay="50ms")         # RTT = 4 x 50 ms (both ends of both links)
        server = c.call(1, socket.create_server, (c.node(1).addr, 0))
        t0 = time.monotonic()
        with server, c.call(0, socket.create_connection, server.getsockname(), timeout=10):
            pass
        assert time.monotonic() - t0 > 0.1
        return
    with pytest.raises(NetemUnavailable, match="sch_netem"):
        vcluster(2, delay="10ms")
    with pytest.raises(NetemUnavailable, match="sch_netem"):
        vcluster(2, loss=1)


# ---------------------------------------------------------------- teardown

@pytest.mark.netns
def test_teardown_on_exception_kills_everything(no_leaks):
    c = VirtualCluster(2)
    with pytest.raises(ZeroDivisionError):
        with c:
            names = c.namespaces
            assert set(names) <= set(vc._netns_list())
            plain = c.popen(0, ["sleep", "1000"])
            # A grandchild that leaves the process group: found through its namespace.
            escaper = c.popen(1, "setsid sleep 1000 & echo $!; exec sleep 1000",
                              stdout=subprocess.PIPE, text=True)
            grandchild = int(escaper.stdout.readline())
            assert _alive(grandchild)
            1 / 0
    escaper.stdout.close()
    assert plain.returncode is not None and escaper.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert not set(names) & set(vc._netns_list())
    c.close()                                  # idempotent
    with pytest.raises(VClusterError):
        c.run(0, ["true"])


@pytest.mark.netns
def test_cleanup_stale_removes_only_dead_runs(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = os.getpid()
    stale = f"kdtest-{dead.pid}-1-0-sw"
    live = f"kdtest-{me}-{vc._proc_starttime(me)}-0-n0"
    stale_dir = tmp_path / f"kdtest-scratch-{dead.pid}-1-abc"
    stale_dir.mkdir()
    vc._mount_tmpfs(str(stale_dir), "size=1m")
    try:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        removed = vc.cleanup_stale("kdtest", scratch_dir=str(tmp_path))
        assert f"netns {stale}" in removed and f"scratch {stale_dir}" in removed
        assert stale not in vc._netns_list() and live in vc._netns_list()
        assert not stale_dir.exists()
    finally:
        vc._delete_netns([stale, live])
        if os.path.ismount(stale_dir):
            vc._umount(str(stale_dir))


# ---------------------------------------------------------------- scratch tmpfs

def _fstype(path) -> str | None:
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mnt, fstype, *_ = line.split()
            if mnt == str(path):
                found = fstype
    return found


@pytest.mark.netns
def test_scratch_fs_is_a_private_tmpfs(no_leaks):
    with vc.scratch_fs("16m") as d:
        assert _fstype(d) == "tmpfs"
        (d / "f").write_bytes(b"x" * 1000)
        with pytest.raises(OSError):
            (d / "too-big").write_bytes(bytes(32 << 20))
    assert not d.exists()

    with pytest.raises(RuntimeError):
        with vc.scratch_fs("16m") as d2:
            busy = open(d2 / "open-file", "w")          # keeps the mount busy: lazy unmount
            raise RuntimeError("body failed")
    busy.close()
    assert not d2.exists()
