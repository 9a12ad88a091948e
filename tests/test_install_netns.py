"""Whole-machine installs across network namespaces, onto loop disks, driving the
real ka-d-server --install and ka-d-client --install: a real Debian (the golden
machine of tests/golden.py) installed onto several disks in one deployment, and
each way an install can fail, reported per node and step."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

import installkit as K
import loopdisks
from deploy import load_report

pytestmark = pytest.mark.netns

TOOLS = ("sfdisk", "partx", "mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "mkswap", "mmd", "debootstrap",
         "mkfs.btrfs", "btrfs", "partclone.fat", "mtype",
         "ssh-keygen", "xfs_repair", "fsck.vfat", "unshare", "wipefs", "blkid")


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("installs need root (loop devices, mounts)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (tools/setup-env installs them)")
    with K.golden_disk(str(tmp_path_factory.mktemp("kdi-golden"))) as g:
        yield g


@pytest.fixture
def disks(tmp_path):
    """disks(n, mib) -> n empty loop disks, detached at the end."""
    with contextlib.ExitStack() as stack:
        def make(n, mib=K.TARGET_DISK_MIB, tag="t"):
            return [stack.enter_context(K.loop_disk(str(tmp_path), f"{tag}{i}", mib)) for i in range(n)]
        yield make


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@contextlib.contextmanager
def bind_alone(src, where):
    """The file system at src without what is mounted inside it."""
    os.makedirs(where, exist_ok=True)
    K.sh("mount", "--bind", "-o", "ro", src, where)
    try:
        yield where
    finally:
        subprocess.run(["umount", where])


def blkid(dev, tag):
    return K.sh("blkid", "--probe", "--output", "value", "--match-tag", tag, dev).strip()


def sha_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def steps_of(row):
    return {s["step"]: s for s in row["steps"]}


def test_install_three_nodes_in_one_deployment(net, golden, disks, tmp_path):
    cluster, dep = net(4)
    dep.env["TMPDIR"] = str(tmp_path)   # what a killed node leaves behind stays here
    targets = disks(3)
    manifest = write(tmp_path / "m.toml", K.manifest_text(
        golden, hooks=['echo "$KADEPLOY_HOSTNAME $KADEPLOY_ROLE" > /etc/kdi-hook'],
        extra='\n[[file]]\npath = "/etc/kdi-role"\ncontent = "role=$role uuid=$uuid_root\\n"\n'
              # A file system made on the node, with nothing sent into it.
              '\n[[partition]]\nname = "srv"\nsize = "128MiB"\nfs = "btrfs"\nmount = "/srv"\n'))
    names = ["alpha", "bravo", "charlie"]
    table = write(tmp_path / "nodes.csv", "name,mac,address,role\n" + "".join(
        f"{n},52:54:00:00:00:0{i},{cluster.node(i).addr},r{i}\n" for i, n in enumerate(names, 1)))
    report = str(tmp_path / "report.json")
    server = dep.server("-n", "3", "--install", manifest, "--nodes-table", table, "--report", report,
                        where=0)
    for i, disk in enumerate(targets, 1):
        dep.client("-h", cluster.node(0).addr, "--install", "--disk", disk, where=i)
    statuses = dep.wait_all(400)
    assert statuses == [0, 0, 0, 0], server.out + server.err + "".join(p.err for p in dep.procs[1:])
    rep = load_report(report)
    assert [r["status"] for r in rep["nodes"]] == ["ok"] * 3
    for row in rep["nodes"]:
        st = steps_of(row)
        for name in ("disk", "partition", "mkfs root", "mkfs var", "mkfs swap", "mkfs srv", "mount srv",
                     "receive root",
                     "receive var", "receive esp", "identity", "hooks", "boot loader", "unmount"):
            assert st[name]["status"] == "ok", (name, st[name])
        assert st["receive root"]["verified"] is True and st["receive root"]["bytes"] > 100 << 20
    assert "install steps:" in server.out and "receive root" in server.out

    golden_keys = {sha_file(os.path.join(golden.root, "etc/ssh", f))
                   for f in os.listdir(os.path.join(golden.root, "etc/ssh")) if f.startswith("ssh_host_")}
    seen_ids, seen_keys = set(), set()
    for i, (disk, name) in enumerate(zip(targets, names), 1):
        layout = json.loads(K.sh("sfdisk", "--json", disk))["partitiontable"]
        assert layout["label"] == "gpt"
        sizes = [p["size"] * 512 for p in layout["partitions"]]
        assert sizes[:2] == [1 << 20, 32 << 20] and sizes[3:] == [320 << 20, 32 << 20, 128 << 20], sizes
        assert [p["type"] for p in layout["partitions"]] == [
            "21686148-6449-6E6F-744E-656564454649", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
        parts = dict(zip(["bios", "esp", "root", "var", "swap", "srv"], K.partition_nodes(disk)))
        K.sh("fsck.ext4", "-n", "-f", parts["root"])
        K.sh("xfs_repair", "-n", parts["var"])
        K.sh("fsck.vfat", "-n", parts["esp"])
        K.sh("btrfs", "check", "--readonly", parts["srv"])
        with open(parts["esp"], "rb") as a, open(golden.parts["esp"], "rb") as b:
            assert a.read() == b.read(), "the ESP is not the golden image"
        uuids = {p: blkid(parts[p], "UUID") for p in ("esp", "root", "var", "swap", "srv")}
        assert uuids["root"] != blkid(golden.parts["root"], "UUID")
        mnt = str(tmp_path / f"check{i}")
        with K.mounted(parts["root"], mnt, "-o", "ro"), \
                bind_alone(golden.root, str(tmp_path / "golden-root-alone")) as src_root:
            # /srv is a file system of its own on the nodes: the source's /srv went into
            # it, and the root's mount point directory under it is made anew.
            srv = K.fs_differences(src_root, mnt, changed=K.IDENTITY_PATHS + (b"srv",))
            assert srv == []
            etc = os.path.join(mnt, "etc")
            assert open(os.path.join(etc, "hostname")).read() == name + "\n"
            assert f"127.0.1.1\t{name}" in open(os.path.join(etc, "hosts")).read()
            assert open(os.path.join(etc, "kdi-hook")).read() == f"{name} r{i}\n"
            assert open(os.path.join(etc, "kdi-role")).read() == f"role=r{i} uuid={uuids['root']}\n"
            fstab = open(os.path.join(etc, "fstab")).read()
            assert re.findall(r"^UUID=(\S+)\s+(\S+)", fstab, re.M) == [
                (uuids["root"], "/"), (uuids["var"], "/var"), (uuids["srv"], "/srv"),
                (uuids["esp"], "/boot/efi"), (uuids["swap"], "none")]
            mid = open(os.path.join(etc, "machine-id")).read()
            assert re.fullmatch(r"[0-9a-f]{32}\n", mid) and mid != open(
                os.path.join(golden.root, "etc/machine-id")).read()
            seen_ids.add(mid)
            keys = {sha_file(os.path.join(etc, "ssh", f)) for f in os.listdir(os.path.join(etc, "ssh"))
                    if f.startswith("ssh_host_")}
            assert len(keys) >= 6 and not keys & golden_keys and not keys & seen_keys
            seen_keys |= keys
            assert "console=ttyS0" in open(os.path.join(mnt, "boot/grub/grub.cfg")).read()
        with K.mounted(parts["var"], mnt, "-o", "ro"):
            assert K.fs_differences(os.path.join(golden.root, "var"), mnt, excluded=(b"tmp/",)) == []
    assert len(seen_ids) == 3


def test_each_failure_is_reported_per_node_and_step(net, golden, disks, tmp_path):
    """One deployment, five nodes: a good disk, a disk with a mounted file system, a
    disk smaller than the layout, a node whose mkfs fails (a failing mkfs.ext4 first
    on its PATH), a node the node table does not list. The good one is installed;
    each other fails at its own step, in one line; nothing else is called installed."""
    cluster, dep = net(6)
    dep.env["TMPDIR"] = str(tmp_path)   # what a killed node leaves behind stays here
    good, busy, failing = disks(3)
    (small,) = disks(1, 300, tag="small")
    K.sh("sfdisk", "--quiet", busy, input="label: dos\nsize=64MiB, type=83\n")
    busy_part = K.partition_nodes(busy)[0]
    K.sh("mkfs.ext4", "-q", busy_part)
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    write(fakebin / "mkfs.ext4", "#!/bin/sh\necho 'mkfs.ext4: Input/output error while writing "
                                 "the superblock' >&2\nexit 1\n")
    os.chmod(fakebin / "mkfs.ext4", 0o755)
    manifest = write(tmp_path / "m.toml", K.manifest_text(golden, loader="none"))
    report = str(tmp_path / "report.json")
    table = write(tmp_path / "nodes.toml", "".join(
        f'[[node]]\nname = "n{i}"\naddress = "{cluster.node(i).addr}"\n' for i in range(1, 5)))
    with K.mounted(busy_part, str(tmp_path / "busy")):
        server = dep.server("-n", "5", "--install", manifest, "--nodes-table", table,
                            "--report", report, where=0)
        for i, disk in enumerate((good, busy, small), 1):
            dep.client("-h", cluster.node(0).addr, "--install", "--disk", disk, where=i)
        dep.client("-h", cluster.node(0).addr, "--install", where=5)
        dep.env = dict(dep.env, PATH=f"{fakebin}:{os.environ['PATH']}")
        dep.client("-h", cluster.node(0).addr, "--install", "--disk", failing, where=4)
        statuses = dep.wait_all(300)
    assert statuses == [2, 0, 1, 1, 1, 1], server.out + server.err
    rows = load_report(report)["nodes"]
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "failed", "failed"]
    assert steps_of(rows[0])["identity"]["detail"].startswith("n1: hostname")
    assert re.fullmatch(r"step disk: /dev/loop\d+ is in use: /dev/loop\d+p1 is mounted on .*busy "
                        r"\(--force to install anyway\)", rows[1]["error"]), rows[1]["error"]
    assert re.fullmatch(r"step disk: /dev/loop\d+ has 300 MiB, the layout needs \d+ MiB",
                        rows[2]["error"]), rows[2]["error"]
    assert rows[3]["error"] == ("step mkfs root: mkfs.ext4 failed (exit status 1): mkfs.ext4: "
                                "Input/output error while writing the superblock"), rows[3]["error"]
    assert re.fullmatch(rf"step install: not in the node table \(address {cluster.node(5).addr}, "
                        r"host name .*\)", rows[4]["error"]), rows[4]["error"]
    for row in rows[1:]:
        assert "unmount" not in steps_of(row)
        assert not any(s["step"].startswith("receive") and s["status"] == "ok" for s in row["steps"])
    clients = {p.name: p for p in dep.procs[1:]}
    for name, row in zip(("client2", "client3", "client5", "client4"), rows[1:]):
        assert "Traceback" not in clients[name].err
        assert row["error"] in clients[name].err, clients[name].err
    for row in rows:
        assert f"{row['address']}" in server.out
    assert server.out.count("FAILED: step ") == 4


@pytest.mark.timeout(600)   # its server.wait(300) must fail first, with the server's words
def test_a_stream_cut_inside_a_file_system(net, golden, disks, tmp_path):
    """Node 2 of a chain dies while the root file system flows (no repair): node 3's
    stream is cut inside it, and it says so for that step; node 1 is installed. The ESP
    goes as partclone's used blocks here (as a raw image elsewhere)."""
    cluster, dep = net(4, rate="200mbit")
    dep.env["TMPDIR"] = str(tmp_path)   # what a killed node leaves behind stays here
    targets = disks(3)
    manifest = write(tmp_path / "m.toml", K.manifest_text(golden, loader="none", esp_source="partclone"))
    report = str(tmp_path / "report.json")
    server = dep.server("-n", "3", "--install", manifest, "--no-repair", "--report", report, where=0)
    clients = [dep.client("-h", cluster.node(0).addr, "--install", "--disk", d, where=i)
               for i, d in enumerate(targets, 1)]
    # 360 MB at 200 Mbit/s take 15 s: kill node 2 once node 3 has written 60 MB of
    # the root file system (the blocks of the sparse file behind its loop disk).
    last = loopdisks.image_path(str(tmp_path), "t2")
    deadline = time.monotonic() + 120
    while os.stat(last).st_blocks * 512 < 60 << 20 and time.monotonic() < deadline:
        assert server.popen.poll() is None, server.err
        time.sleep(0.2)
    assert clients[1].popen.poll() is None, clients[1].err
    clients[1].kill(signal.SIGKILL)
    assert server.wait(300) == 2, server.out + server.err
    rows = load_report(report)["nodes"]
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert re.fullmatch(r"step receive root: the stream ended inside the stream of root .*",
                        rows[2]["error"]), rows[2]["error"]
    assert clients[0].wait(60) == 0 and clients[2].wait(60) == 1
    assert "Traceback" not in clients[2].err
    st = steps_of(rows[0])
    assert st["receive esp"]["status"] == "ok" and st["receive esp"]["verified"] is True
    esp = K.partition_nodes(targets[0])[1]
    K.sh("fsck.vfat", "-n", esp)
    assert K.sh("mtype", "-i", esp, "::/EFI/kdi/note.txt") == "golden ESP\n"
    assert blkid(esp, "LABEL") == "GOLDESP"


def test_capture_writes_a_manifest_that_checks(golden, tmp_path):
    out = tmp_path / "captured.toml"
    r = subprocess.run([*K_CLI, "manifest", "capture", "--root", golden.root, "-o", str(out),
                        golden.dev], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from kadeploy.install.manifest import load_manifest
    m = load_manifest(str(out))
    got = [(p.name, p.type, p.fs, p.mount, p.source and (p.source.kind, p.source.path))
           for p in m.partitions]
    assert got == [("bios", "bios-boot", None, None, None),
                   ("esp", "esp", "vfat", "/boot/efi", ("image", golden.parts["esp"])),
                   ("root", "linux", "ext4", "/", ("tar", golden.root)),
                   ("var", "linux", "xfs", "/var", ("tar", golden.root + "/var")),
                   ("swap", "swap", "swap", None, None)]
    assert m.partition("esp").size.bytes == 32 << 20 and m.partition("swap").size.bytes == 32 << 20
    assert m.partition("root").size.fill and m.partition("var").size.bytes == 320 << 20
    assert m.partition("root").label == "goldroot" and m.loader == "grub-bios"
    r = subprocess.run([*K_CLI, "manifest", "check", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and ": ok: gpt, 5 partition(s), 3 stream(s)" in r.stdout


def test_a_bad_manifest_is_refused_in_one_line(tmp_path):
    from deploy import Deployment, assert_one_line_error
    bad = write(tmp_path / "bad.toml", '[disk]\ntable = "gpt"\n\n[[partition]]\nname = "root"\n'
                                        'size = "fill"\nfs = "ext4"\nmount = "/"\nsoruce = { tar = "/" }\n')
    dep = Deployment(str(tmp_path))
    try:
        p = dep.server("--install", bad)
        assert_one_line_error(p, 64, f"{bad}:9: key 'partition[1].soruce': unknown key")
    finally:
        dep.close()
    r = subprocess.run([*K_CLI, "manifest", "check", bad], capture_output=True, text=True, env=dep.env)
    assert r.returncode == 64 and r.stderr.strip() == \
        f"kadeploy: error: {bad}:9: key 'partition[1].soruce': unknown key"


K_CLI = [__import__("sys").executable, "-m", "kadeploy"]
