"""Whole deployments on loopback through the real commands."""
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
from deploy import (
    KD,
    Deployment,
    assert_one_line_error,
    assert_same_tree,
    load_report,
    make_targets,
    tar_producer,
)


@pytest.fixture
def dep(tmp_path):
    d = Deployment(str(tmp_path))
    yield d
    d.close()


@pytest.mark.parametrize("n,arity", [(3, 1), (5, 2), (7, 3)])
def test_hard_tree_cloned_exactly(hard_tree, scratch, dep, tmp_path, n, arity):
    report = str(tmp_path / "report.json")
    dsts = make_targets(scratch, n)
    server = dep.server("-n", str(n), "-a", str(arity), "-e", tar_producer(hard_tree),
                        "--report", report)
    clients = [dep.client("-h", "127.0.0.1", "-t", t) for t in dsts]
    statuses = dep.wait_all(180)
    assert statuses == [0] * (n + 1), server.err + "".join(c.err for c in clients)
    for t in dsts:
        assert_same_tree(hard_tree, t)
    rep = load_report(report)
    assert rep["totals"] == {"nodes": n, "ok": n, "failed": 0}
    assert rep["arity"] == arity
    # The tree in the report is the heap layout: position p's parent is (p-1)//arity.
    assert sorted((r["position"], r["parent"]) for r in rep["nodes"]) == \
        [(p, (p - 1) // arity) for p in range(1, n + 1)]
    assert all(r["bytes"] == rep["stream_bytes"] > 0 for r in rep["nodes"])
    assert "Total data received = " in clients[0].err
    assert "Elapsed time = " in clients[0].err


def test_failing_consumer_in_the_middle_of_a_chain(dep, tmp_path):
    """Node 2 of 4 fails its consumer: it says so, the others still get everything."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(8 << 20))
    dsts = make_targets(tmp_path, 4)
    report = str(tmp_path / "r.json")
    dep.server("-n", "4", "-e", tar_producer(src), "--report", report)
    # Data ports chosen so the chain order is known: ports sort the nodes on one host.
    base = 41000 + os.getpid() % 1000 * 10
    for i, t in enumerate(dsts):
        cmd = ["-e", "head -c 1000 >/dev/null; exit 0"] if i == 1 else ["-t", t]
        dep.client("-h", "127.0.0.1", "-P", str(base + i), *cmd)
    statuses = dep.wait_all(120)
    assert statuses == [2, 0, 1, 0, 0], [p.err for p in dep.procs]
    assert "consumer stopped reading after" in dep.procs[2].err
    for i in (0, 2, 3):
        assert_same_tree(src, dsts[i])
    rep = load_report(report)
    bad = [r for r in rep["nodes"] if r["status"] != "ok"]
    assert [r["position"] for r in bad] == [2]
    assert "consumer stopped reading" in bad[0]["error"]
    assert "failed: " in dep.procs[0].out


def test_consumer_exit_status_is_the_verdict(dep, tmp_path):
    dep.server("-n", "2", "-e", "head -c 100000 /dev/zero")
    ok = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    bad = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null; exit 7")
    assert dep.procs[0].wait(60) == 2
    assert ok.wait(60) == 0
    assert_one_line_error(bad, 1, "Elapsed time")
    assert "consumer failed (exit status 7)" in bad.err


def test_failing_producer_fails_everyone(dep):
    server = dep.server("-n", "2", "-e", "echo partial; exit 4")
    clients = [dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null") for _ in range(2)]
    assert server.wait(60) == 1
    for c in clients:
        assert c.wait(60) == 1
        assert "the server's stream failed: producer failed (exit status 4)" in c.err
    assert "stream failed: producer failed" in server.out


def test_late_client_is_refused(dep, tmp_path):
    gate = tmp_path / "go"   # the stream ends once the late client has been refused
    server = dep.server("-n", "1", "-e", f"until [ -e {gate} ]; do sleep 0.05; done; echo hi")
    first = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    _wait_for(lambda: "position 1 of 1" in first.err)
    late = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    assert_one_line_error(late, 3, "registration is closed")
    gate.touch()
    assert first.wait(60) == 0 and server.wait(60) == 0


def test_go_now_starts_with_the_clients_present(dep, tmp_path):
    report = str(tmp_path / "r.json")
    server = dep.server("-n", "10", "-e", "seq 100000", "--report", report)
    clients = [dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null") for _ in range(2)]
    _wait_for(lambda: server.err.count("registered ") == 2)
    go = dep.client("-h", "127.0.0.1", "-g")
    assert go.wait(30) == 0
    assert [c.wait(60) for c in clients] == [0, 0]
    assert server.wait(60) == 0
    assert load_report(report)["totals"]["nodes"] == 2


def test_wait_timeout_starts_without_the_missing(dep):
    server = dep.server("-n", "3", "--wait-timeout", "5", "-e", "echo hello")
    c = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    assert c.wait(60) == 0 and server.wait(60) == 0
    assert "starting with 1 of 3" in server.err


def test_wait_timeout_with_nobody_fails(dep):
    assert_one_line_error(dep.server("--wait-timeout", "0.5", "-e", "true"), 1, "no client registered")


def test_wait_and_delay_release_clients_in_order(dep):
    server = dep.server("-n", "3", "-d", "3", "-e", "echo Hello", "--verbose")
    clients = [dep.client("-h", "127.0.0.1", "-w", "-e", "cat", "-P", str(42000 + i + os.getpid() % 500 * 4))
               for i in range(3)]
    assert server.wait(60) == 0
    assert [c.wait(30) for c in clients] == [0, 0, 0]
    released = [line for line in server.err.splitlines() if "released" in line]
    assert len(released) == 3
    for c in clients:
        assert "waiting for the server's finish" in c.err
        assert "Hello" in c.err  # the consumer's stdout goes to the client's stderr


def test_ipv6_loopback(dep, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    report = str(tmp_path / "r.json")
    server = dep.server("-n", "2", "--bind", "::1", "-e", "seq 200000", "--report", report)
    clients = [dep.client("-h", "::1", "--bind", "::1", "-e", "md5sum >&2") for _ in range(2)]
    assert [server.wait(60)] + [c.wait(60) for c in clients] == [0, 0, 0], server.err
    assert {r["address"] for r in load_report(report)["nodes"]} == {"::1"}


@pytest.mark.parametrize("args,fragment", [
    (["server", "-a", "0"], "0 is not in the range x>=1"),
    (["server", "-n", "0"], "0 is not in the range x>=1"),
    (["server", "--buffer-size", "lots"], "is not a size"),
    (["server", "--relay", "turbo"], "'turbo' is not one of"),
    (["server", "--hosts", "/nonexistent/hosts"], "cannot read hosts file"),
    (["client", "-e", "cat"], "give the server with -h HOST or find it with -s SESSION"),
    (["client", "-h", "127.0.0.1", "-t", "/nonexistent/target"], "target directory /nonexistent/target does not exist"),
    (["client", "-h", "127.0.0.1", "-p", "0"], "0 is not in the range"),
])
def test_bad_arguments(dep, args, fragment):
    p = dep._start("bad", KD + list(args))
    assert_one_line_error(p, 64, fragment)


def test_unreachable_server(dep):
    port = dep.ports[1]
    p = dep.client("-h", "127.0.0.1", "-p", port, "--connect-timeout", "1", "-e", "cat")
    assert_one_line_error(p, 3, "Connection refused")


def test_garbage_to_the_server_is_refused_and_the_deployment_goes_on(dep):
    server = dep.server("-n", "1", "-e", "seq 1000")
    port = int(dep.ports[1])
    _wait_for(lambda: _can_connect(port))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = s.recv(4096)
    assert b"does not speak the kadeploy protocol" in reply
    with socket.create_connection(("127.0.0.1", port)) as s:  # another version
        body = b'{"software":"x","hostname":"h","data_port":1}'
        s.sendall(struct.pack(">2sBBI", b"KD", 1, 1, len(body)) + body)
        assert b"version 1" in s.recv(4096)
    c = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    assert c.wait(60) == 0 and server.wait(60) == 0
    assert "rejected 127.0.0.1 (protocol): peer does not speak" in server.err


@pytest.mark.parametrize("reply,fragment", [
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", "does not speak the kadeploy protocol"),
    (struct.pack(">2sBBI", b"KD", 9, 3, 2) + b"{}", "version 9"),
])
def test_client_against_a_garbage_server(dep, reply, fragment):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()

    def serve():
        conn, _ = lsock.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = dep.client("-h", "127.0.0.1", "-p", str(lsock.getsockname()[1]), "-e", "cat")
    assert_one_line_error(p, 3, fragment)
    lsock.close()


def _can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for(cond, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_progress_lines_when_not_a_terminal(dep):
    server = dep.server("-n", "1", "--progress-interval", "0.3", "-e",
                        "for i in 1 2 3 4 5 6; do head -c 100000 /dev/zero; sleep 0.3; done")
    c = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    assert c.wait(60) == 0 and server.wait(60) == 0
    lines = [line for line in server.err.splitlines() if "progress: " in line]
    assert len(lines) >= 2, server.err
    assert "nodes: " in lines[-1] and ("streaming" in lines[-1] or "done" in lines[-1])
    assert "\x1b[" not in server.err and "\r" not in c.err   # no terminal codes in logs


def test_sigterm_stops_the_server_and_its_producer(dep):
    marker = f"sleep {1000 + os.getpid() % 1000}.5"
    server = dep.server("-n", "1", "-e", f"{marker}; echo never")
    c = dep.client("-h", "127.0.0.1", "-e", "cat >/dev/null")
    _wait_for(lambda: "tree (arity" in server.err and _running(marker))
    os.kill(server.popen.pid, signal.SIGTERM)
    assert_one_line_error(server, 130, "interrupted")
    _wait_for(lambda: not _running(marker), 10)
    assert c.wait(30) == 1
    assert "lost the server" in c.err


def test_sigterm_stops_a_client_and_its_consumer(dep):
    marker = f"sleep {2000 + os.getpid() % 1000}.5"
    server = dep.server("-n", "1", "-e", "seq 100000000")
    c = dep.client("-h", "127.0.0.1", "-e", f"{marker}; cat >/dev/null")
    _wait_for(lambda: _running(marker) and "position 1 of 1" in c.err)
    os.kill(c.popen.pid, signal.SIGTERM)
    assert_one_line_error(c, 130, "interrupted")
    _wait_for(lambda: not _running(marker), 10)
    assert server.wait(30) == 1      # its only node is gone


def _running(command_line: str) -> bool:
    """Is a process with exactly this command line alive (the producer or consumer's
    own process, not the kadeploy command that names it in its arguments)?"""
    return subprocess.run(["pgrep", "-f", f"^{command_line}$"], capture_output=True).returncode == 0


def test_demo_command(dep):
    """The README's first command runs this: a real deployment, every copy verified."""
    demo = dep._start("demo", KD + ["demo", "--clients", "3", "--arity", "2"])
    assert demo.wait(180) == 0, demo.err
    assert demo.out.count("identical to the source") == 3
    assert "demo: success" in demo.out


def test_waiting_clients_outlast_the_stall_timeout(dep):
    """-w with a long -d: released clients wait longer than the stall timeout, and
    the server's pings keep them from giving it up. The stall timeout (4 s) is four
    times the ping interval, so a ping late on a loaded machine is not a lost server;
    the second client still waits 8 s, twice the stall timeout."""
    server = dep.server("-n", "2", "-d", "80", "--stall-timeout", "4", "-e", "echo Hello")
    clients = [dep.client("-h", "127.0.0.1", "-w", "-e", "cat") for _ in range(2)]
    assert server.wait(60) == 0, server.err
    assert [c.wait(30) for c in clients] == [0, 0], [c.err for c in clients]


def test_live_table_and_progress_bar_on_a_terminal(dep):
    """On a terminal the server draws the live table and the client its bar."""
    import pty
    import select as sel

    def on_pty(argv):
        import fcntl
        import struct as st
        import termios
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, st.pack("HHHH", 40, 200, 0, 0))  # room for every column
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=slave, env=dep.env, start_new_session=True)
        os.close(slave)
        return p, master

    slow = "for i in 1 2 3 4 5 6; do head -c 3000000 /dev/zero; sleep 0.4; done"
    server, s_tty = on_pty(KD + ["server", *dep.ports, "-n", "1", "--size", "18M", "-e", slow])
    client, c_tty = on_pty(KD + ["client", *dep.client_ports, "-h", "127.0.0.1", "-e", "cat >/dev/null"])
    seen = {s_tty: b"", c_tty: b""}
    open_fds = set(seen)
    try:
        deadline = time.monotonic() + 60
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = sel.select(list(open_fds), [], [], 0.2)
            for fd in ready:
                try:
                    seen[fd] += os.read(fd, 65536)
                except OSError:      # EIO: the command exited and closed the terminal
                    open_fds.discard(fd)
        assert server.wait(10) == 0 and client.wait(10) == 0
    finally:
        for p in (server, client):
            if p.poll() is None:
                p.kill()
        for fd in (s_tty, c_tty):
            try:
                os.close(fd)
            except OSError:
                pass
    table = seen.get(s_tty, b"").decode(errors="replace")
    for column in ("POS", "NODE", "STATE", "RECEIVED", "RATE", "ETA", "LAST ERROR"):
        assert column in table, table[-2000:]
    bar = seen.get(c_tty, b"").decode(errors="replace")
    assert "node 1/1: " in bar and " at " in bar and "MB/s" in bar, bar[-2000:]


def test_full_spool_disables_repair_but_not_the_deployment(dep, tmp_path):
    """The repair spool runs out of space (a 2 MiB tmpfs for a 12 MB stream): the
    server says repairs are off from then on, and every node still gets every byte."""
    from kadeploy.lab.vcluster import scratch_fs
    if os.geteuid() != 0:
        pytest.skip("needs root for a tmpfs")
    with scratch_fs("2m") as spool:
        server = dep.server("-n", "2", "--spool", str(spool), "-e",
                            f"head -c 12000000 /dev/urandom | tee {tmp_path}/sent")
        clients = [dep.client("-h", "127.0.0.1", "-e", f"cat > {tmp_path}/got{i}") for i in (1, 2)]
        assert server.wait(60) == 0, server.err
        assert [c.wait(30) for c in clients] == [0, 0]
    assert "repair spool failed" in server.err and "No space left" in server.err
    sent = (tmp_path / "sent").read_bytes()
    assert (tmp_path / "got1").read_bytes() == sent == (tmp_path / "got2").read_bytes()
