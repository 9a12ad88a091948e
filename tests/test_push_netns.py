"""kadeploy push with real components: an OpenSSH server in each of N network
namespaces, kadeploy push run on a head namespace through ssh, ClusterShell and pdsh,
every node's copy checked against the source, and the bad inputs of issue 14."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import sshcluster
from kadeploy.lab.treedigest import diff_manifests, tree_manifest

pytestmark = pytest.mark.netns
KADEPLOY = str(Path(sys.executable).parent / "kadeploy")


@pytest.fixture(autouse=True)
def _need_ssh():
    reason = sshcluster.ssh_available()
    if reason is not None:
        pytest.skip(f"needs OpenSSH: {reason}")


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="kdp-push-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ssh_nodes(workdir, vcluster):
    """`ssh_nodes(names, rate=None, **faults)` -> SshCluster with sshd on every node."""
    def make(names, rate=None, unreachable=(), **kw):
        live = [n for n in names if n not in unreachable]
        cluster = vcluster(len(live) + 1, prefix="kdp", rate=rate)
        return sshcluster.start(cluster, workdir / "ssh", names=names, unreachable=unreachable, **kw)
    return make


def make_source(root: Path) -> Path:
    """A small tree with what a copy gets wrong: modes, owners, a symlink, a hard link,
    an empty directory, a file of random bytes."""
    src = root / "data"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "sub" / "notes.txt").write_text("through the chain\n")
    (src / "random.bin").write_bytes(os.urandom(3 << 20))
    (src / "secret").write_text("mode 0600, owner 1234\n")
    os.chmod(src / "secret", 0o600)
    os.chown(src / "secret", 1234, 5678)
    os.symlink("sub/notes.txt", src / "link")
    os.link(src / "sub" / "notes.txt", src / "sub" / "deeper" / "hard")
    os.setxattr(src / "secret", "user.kdp", b"kept with --preserve")
    return src


def push(sc, *args, launcher="ssh", timeout=120):
    argv = [KADEPLOY, "push", *args, "--launcher", launcher, "--ssh-option=-F",
            f"--ssh-option={sc.ssh_config}", "--connect-timeout", "10"]
    env = dict(os.environ)
    if launcher == "clush":
        env["CLUSTERSHELL_CFGDIR"] = str(sc.workdir / "clustershell")   # nothing of the host's
        # tree mode: the gateway runs ClusterShell with this interpreter (ssh sessions
        # read root's ~/.bashrc, whose PATH may find another python first)
        env["CLUSTERSHELL_GW_PYTHON_EXECUTABLE"] = sys.executable
    return sc.head_run(argv, timeout=timeout, env=env)


def leftovers(node, dest) -> list:
    return [p.name for p in node.path(dest).iterdir() if p.name.startswith(".kadeploy-push-")]


def wait_receiving(node, dest, timeout=60) -> None:
    """Until the node's temporary copy holds data (the stream flows to it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temp in node.path(dest).glob(".kadeploy-push-*"):
            if any(f.is_file() and f.stat().st_size > 0 for f in temp.rglob("*")):
                return
        time.sleep(0.05)
    raise AssertionError(f"{node.name} received nothing within {timeout} s")


def assert_result(proc, status, ok, failed):
    out = proc.stdout.strip().splitlines()
    assert proc.returncode == status, f"exit {proc.returncode}, not {status}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert out[-2] == f"ok: {ok}", proc.stdout + proc.stderr
    assert out[-1] == f"failed: {failed}", proc.stdout + proc.stderr


@pytest.mark.parametrize("launcher", ["ssh", "clush"])
def test_push_a_directory_and_a_file_to_every_node(ssh_nodes, workdir, launcher):
    names = [f"kdp-n{i}" for i in range(1, 5)]
    sc = ssh_nodes(names)
    src = make_source(workdir)
    extra = workdir / "weights.bin"
    extra.write_bytes(os.urandom(1 << 20))
    args = [str(src), str(extra), "-w", "kdp-n[1-4]", "--dest", sc.dest, "--preserve"]
    if launcher == "clush":
        args += ["--chains", "2", "--verbose"]
    proc = push(sc, *args, launcher=launcher)
    assert_result(proc, 0, "kdp-n[1-4] (4 node(s))", "- (0 node(s))")
    if launcher == "clush":   # two chains, each a run of the node set's order
        assert tree_lines(proc.stderr) == ["server", "  kdp-n1", "    kdp-n2", "  kdp-n3", "    kdp-n4"]
    want = tree_manifest(src)
    for node in sc.nodes:
        got = node.path(sc.dest)
        assert not diff_manifests(want, tree_manifest(got / "data")), node.name
        assert (got / "weights.bin").read_bytes() == extra.read_bytes()
        assert os.getxattr(got / "data" / "secret", "user.kdp") == b"kept with --preserve"
        assert leftovers(node, sc.dest) == [], node.name
        # the host's directory is untouched: every copy is the node's own
        assert not any(Path(sc.dest).iterdir())


def test_push_replaces_an_older_copy_and_keeps_nothing_of_it(ssh_nodes, workdir):
    sc = ssh_nodes(["kdp-n1", "kdp-n2"])
    src = workdir / "tree"
    (src / "old").mkdir(parents=True)
    (src / "old" / "gone.txt").write_text("first version\n")
    assert push(sc, str(src), "-w", "kdp-n[1-2]", "--dest", sc.dest).returncode == 0
    shutil.rmtree(src / "old")
    (src / "new.txt").write_text("second version\n")
    (src / "junk.tmp").write_text("left out by --exclude\n")
    proc = push(sc, str(src), "-w", "kdp-n[1-2]", "--dest", sc.dest, "--exclude", "*.tmp")
    assert_result(proc, 0, "kdp-n[1-2] (2 node(s))", "- (0 node(s))")
    for node in sc.nodes:
        tree = node.path(sc.dest) / "tree"
        assert sorted(p.name for p in tree.iterdir()) == ["new.txt"]
        assert leftovers(node, sc.dest) == []


def tree_lines(stderr: str) -> list:
    """The server's tree (logged with --verbose), node names only."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if " tree (" in line) + 1
    tree = []
    for line in lines[start:]:
        if not line.startswith(" ") and line != "server":
            break
        tree.append(line.split(" (")[0])
    return tree


def test_push_one_file_in_the_order_of_a_file(ssh_nodes, workdir):
    sc = ssh_nodes(["kdp-n1", "kdp-n2", "kdp-n3"])
    blob = workdir / "image.raw"
    blob.write_bytes(os.urandom(2 << 20))
    os.chmod(blob, 0o640)
    order = workdir / "order"
    order.write_text("# rack 3 first\nkdp-n3\nkdp-n[1-2]\n")
    proc = push(sc, str(blob), "--file", "--preserve", "-w", "kdp-n[1-3]", "--dest", sc.dest,
                "--order", str(order), "--verbose")
    assert_result(proc, 0, "kdp-n[1-3] (3 node(s))", "- (0 node(s))")
    assert tree_lines(proc.stderr) == ["server", "  kdp-n3", "    kdp-n1", "      kdp-n2"]
    for node in sc.nodes:
        got = node.path(sc.dest) / "image.raw"
        assert got.read_bytes() == blob.read_bytes()
        assert got.stat().st_mode & 0o777 == 0o640
        assert got.stat().st_mtime_ns == blob.stat().st_mtime_ns


@pytest.mark.parametrize("launcher", ["ssh", "clush"])
def test_bad_nodes_fail_alone_with_the_launchers_own_error(ssh_nodes, workdir, launcher):
    """Unreachable, no kadeploy, a read-only destination, permission denied: each one
    line; the others have the data; nothing is left on the failed ones."""
    names = ["kdp-n1", "kdp-n2", "kdp-n3", "kdp-n4", "kdp-n5", "kdp-n6"]
    sc = ssh_nodes(names, no_kadeploy=["kdp-n3"], read_only=["kdp-n4"], unreachable=["kdp-n5"],
                   no_key=["kdp-n6"])
    src = make_source(workdir)
    report = workdir / "push.json"
    proc = push(sc, str(src), "-w", "kdp-n[1-6]", "--dest", sc.dest, "--report", str(report),
                launcher=launcher)
    assert_result(proc, 2, "kdp-n[1-2] (2 node(s))", "kdp-n[3-6] (4 node(s))")
    rep = json.loads(report.read_text())
    assert (rep["ok"], rep["ok_nodeset"], rep["failed_nodeset"]) == (["kdp-n1", "kdp-n2"], "kdp-n[1-2]", "kdp-n[3-6]")
    assert "Read-only file system" in rep["failed"]["kdp-n4"]
    assert rep["deployment"]["totals"] == {"nodes": 2, "ok": 2, "failed": 0}
    lines = {line.split(": ", 1)[0]: line for line in proc.stdout.splitlines()}
    assert "kadeploy: command not found" in lines["kdp-n3"], proc.stdout
    assert "Read-only file system" in lines["kdp-n4"], proc.stdout
    assert "connect to host" in lines["kdp-n5"] and UNREACHABLE_OK(lines["kdp-n5"]), proc.stdout
    assert "Permission denied (publickey)" in lines["kdp-n6"], proc.stdout
    nodes = sc.by_name()
    want = tree_manifest(src, mtime=False, owner=False)
    for name in ("kdp-n1", "kdp-n2"):
        assert not diff_manifests(want, tree_manifest(nodes[name].path(sc.dest) / "data", mtime=False, owner=False))
    for name in ("kdp-n3", "kdp-n4"):
        assert list(nodes[name].path(sc.dest).iterdir()) == [], name


def UNREACHABLE_OK(line: str) -> bool:
    return any(w in line for w in ("No route to host", "timed out", "Connection refused"))


def test_a_source_that_vanishes_midway_is_put_in_place_nowhere(ssh_nodes, workdir):
    sc = ssh_nodes(["kdp-n1", "kdp-n2"], rate="40mbit")
    src = workdir / "going"
    (src / "z").mkdir(parents=True)
    (src / "a_big").write_bytes(os.urandom(24 << 20))   # 5 s at 40 Mbit/s
    for i in range(200):
        (src / "z" / f"f{i:03}").write_text(f"{i}\n")
    proc = sc.head_popen([KADEPLOY, "push", str(src), "-w", "kdp-n[1-2]", "--dest", sc.dest,
                          "--launcher", "ssh", "--ssh-option=-F", f"--ssh-option={sc.ssh_config}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Once the first node is receiving a_big (tar sorts by name), the rest of the source goes.
    wait_receiving(sc.nodes[0], sc.dest)
    shutil.rmtree(src / "z")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    assert out.strip().splitlines()[-1] == "failed: kdp-n[1-2] (2 node(s))", out + err
    assert "producer failed" in out, out
    for node in sc.nodes:
        assert list(node.path(sc.dest).iterdir()) == [], node.name


@pytest.mark.skipif(shutil.which("pdsh") is None, reason="pdsh is not installed")
def test_push_through_pdsh(ssh_nodes, workdir):
    sc = ssh_nodes(["kdp-n1", "kdp-n2", "kdp-n3"], no_kadeploy=["kdp-n3"])
    src = make_source(workdir)
    proc = push(sc, str(src), "-w", "kdp-n[1-3]", "--dest", sc.dest, launcher="pdsh")
    assert_result(proc, 2, "kdp-n[1-2] (2 node(s))", "kdp-n3 (1 node(s))")
    assert "command not found" in proc.stdout
    want = tree_manifest(src, mtime=False, owner=False)
    for node in sc.nodes[:2]:
        assert not diff_manifests(want, tree_manifest(node.path(sc.dest) / "data", mtime=False, owner=False))


def test_order_by_address_differs_from_the_nodeset_order(ssh_nodes, workdir):
    sc = ssh_nodes(["kdp-b", "kdp-a"])          # kdp-b has the lower address
    src = workdir / "small"
    src.mkdir()
    (src / "f").write_text("x\n")
    by_name = push(sc, str(src), "-w", "kdp-a,kdp-b", "--dest", sc.dest, "--verbose")
    assert tree_lines(by_name.stderr) == ["server", "  kdp-a", "    kdp-b"], by_name.stderr
    by_address = push(sc, str(src), "-w", "kdp-a,kdp-b", "--dest", sc.dest, "--verbose", "--order", "address")
    assert_result(by_address, 0, "kdp-a,kdp-b (2 node(s))", "- (0 node(s))")
    assert tree_lines(by_address.stderr) == ["server", "  kdp-b", "    kdp-a"], by_address.stderr


def test_launcher_none_prints_the_command_the_admin_runs_on_every_node(workdir, vcluster, request):
    """No ssh at all: the nodes run the printed command themselves (here in their own
    UTS and mount namespaces), finding the server by --server-address."""
    cluster = vcluster(3, prefix="kdp")
    # The head resolves the names as a cluster's DNS would (--hosts matches names by
    # what they resolve to, not by the name a node claims).
    etc = f"/etc/netns/{cluster.node(0).ns}"
    os.makedirs(etc, exist_ok=True)
    request.addfinalizer(lambda: shutil.rmtree(etc, ignore_errors=True))
    with open(f"{etc}/hosts", "w") as f:
        f.write("".join(f"{cluster.node(i).addr} kdp-n{i}\n" for i in (1, 2)))
    src = make_source(workdir)
    dest = workdir / "dest"
    dest.mkdir()
    head = cluster.popen(0, [KADEPLOY, "push", str(src), "-w", "kdp-n[1-2]", "--dest", str(dest),
                             "--launcher", "none", "--server-address", cluster.node(0).addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    command = head.stdout.readline().strip()
    assert command.startswith("kadeploy receive ") and "--server 198.18.0.1" in command, command
    receivers = []
    for i in (1, 2):
        script = (f"hostname kdp-n{i}; mount -t tmpfs kdp-dest {dest}; "
                  f"PATH={sshcluster.VENV_BIN}:$PATH TMPDIR={workdir} {command} && exec sleep 600")
        receivers.append(cluster.popen(i, ["unshare", "--uts", "--mount", "--propagation", "private",
                                           "sh", "-c", script]))
    out, err = head.communicate(timeout=120)
    assert head.returncode == 0, out + err
    assert out.strip().splitlines()[-2:] == ["ok: kdp-n[1-2] (2 node(s))", "failed: - (0 node(s))"], out
    want = tree_manifest(src, mtime=False, owner=False)
    for proc in receivers:   # the sleep keeps each node's mount namespace for the check
        got = Path(f"/proc/{proc.pid}/root") / str(dest).lstrip("/") / "data"
        assert not diff_manifests(want, tree_manifest(got, mtime=False, owner=False))


def cmdline(pid: str) -> bytes:
    """A process's command line; empty when it has exited since it was listed."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def test_a_node_killed_midway_fails_alone_and_keeps_no_copy_in_place(ssh_nodes, workdir):
    """The server re-attaches the lost node's child; the killed node is reported with
    the reason, and its unverified copy was never renamed into place."""
    sc = ssh_nodes(["kdp-n1", "kdp-n2", "kdp-n3"], rate="40mbit")
    src = workdir / "big"
    src.mkdir()
    (src / "blob").write_bytes(os.urandom(24 << 20))     # about 5 s at 40 Mbit/s
    head = sc.head_popen([KADEPLOY, "push", str(src), "-w", "kdp-n[1-3]", "--dest", sc.dest,
                          "--launcher", "ssh", "--ssh-option=-F", f"--ssh-option={sc.ssh_config}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = sc.by_name()["kdp-n2"]
    wait_receiving(victim, sc.dest)
    pids = subprocess.run(["ip", "netns", "pids", sc.cluster.node(victim.index).ns],
                          capture_output=True, text=True).stdout.split()
    receivers = [int(p) for p in pids if b"receive" in cmdline(p)]
    assert receivers, "no receiver on kdp-n2"
    for pid in receivers:
        os.kill(pid, signal.SIGKILL)
    out, err = head.communicate(timeout=120)
    assert head.returncode == 2, out + err
    lines = out.strip().splitlines()
    assert lines[-2:] == ["ok: kdp-n[1,3] (2 node(s))", "failed: kdp-n2 (1 node(s))"], out + err
    assert lines[0].startswith("kdp-n2: lost the control connection"), out
    for name in ("kdp-n1", "kdp-n3"):
        node = sc.by_name()[name]
        assert (node.path(sc.dest) / "big" / "blob").read_bytes() == (src / "blob").read_bytes()
    assert not (victim.path(sc.dest) / "big").exists()


def test_clush_tree_mode_through_a_gateway(ssh_nodes, workdir):
    """ClusterShell's tree mode, configured in its own topology.conf: the head reaches
    the nodes through a gateway node, and the data still goes through the chain."""
    import socket
    sc = ssh_nodes(["kdp-gw", "kdp-n1", "kdp-n2"])
    cfgdir = sc.workdir / "clustershell"
    cfgdir.mkdir()
    head = socket.gethostname().split(".", 1)[0]
    (cfgdir / "topology.conf").write_text(f"[routes]\n{head}: kdp-gw\nkdp-gw: kdp-n[1-2]\n")
    src = make_source(workdir)
    proc = push(sc, str(src), "-w", "kdp-n[1-2]", "--dest", sc.dest, "--server-address",
                sc.cluster.node(0).addr, launcher="clush")
    assert_result(proc, 0, "kdp-n[1-2] (2 node(s))", "- (0 node(s))")
    gateway = sc.by_name()["kdp-gw"].address
    for name in ("kdp-n1", "kdp-n2"):
        log = (sc.workdir / f"sshd_{name}.log").read_text()
        assert f"Accepted publickey for root from {gateway} " in log, log    # not from the head
        got = sc.by_name()[name].path(sc.dest) / "data"
        assert not diff_manifests(tree_manifest(src, mtime=False, owner=False),
                                  tree_manifest(got, mtime=False, owner=False))


@pytest.fixture
def loop_devices(workdir):
    """`loop_devices(n, size)` -> n loop devices over files in the test's tmp dir,
    detached at the end."""
    made = []

    def make(n, size):
        for i in range(n):
            backing = workdir / f"kdp-disk{i}.img"
            with open(backing, "wb") as f:
                f.truncate(size)
            made.append(subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                                       capture_output=True, text=True).stdout.strip())
        return list(made)

    try:
        yield make
    finally:
        for dev in made:
            subprocess.run(["losetup", "--detach", dev], check=False)


def test_push_a_raw_image_onto_each_nodes_block_device(ssh_nodes, workdir, loop_devices):
    """--file onto a block device: written in place (a device has no temporary name),
    and each node's device holds the image."""
    image = workdir / "rootfs.img"
    image.write_bytes(os.urandom(3 << 20))
    devs = loop_devices(2, 8 << 20)
    sc = ssh_nodes(["kdp-n1", "kdp-n2"], devices={"kdp-n1": devs[0], "kdp-n2": devs[1]})
    proc = push(sc, str(image), "--file", "-w", "kdp-n[1-2]", "--dest", f"{sc.dest}/disk")
    assert_result(proc, 0, "kdp-n[1-2] (2 node(s))", "- (0 node(s))")
    want = image.read_bytes()
    for dev, node in zip(devs, sc.nodes):
        with open(dev, "rb") as f:
            assert f.read(len(want)) == want, dev
        assert leftovers(node, sc.dest) == [], node.name
