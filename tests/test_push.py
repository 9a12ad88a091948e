"""kadeploy push without namespaces: node sets, chains, the launchers' parsing, the
receiver's temporary copy and rename, and the one-line errors of bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadeploy.core.topology import build_tree
from kadeploy.errors import KadeployError, UsageError
from kadeploy.push import launchers
from kadeploy.push.nodes import Chains, NameIndex, fold, parse_nodeset, read_order_file, split_chains
from kadeploy.push.push import PushConfig, PushResult, gather_result, producer_command
from kadeploy.push.receive import TEMP_PREFIX, Destination, FileStat, put_in_place
from kadeploy.view.report import NodeReport, Report

KADEPLOY = [sys.executable, "-m", "kadeploy"]


from kadeploy.lab.ports import free_port  # noqa: E402


# ------------------------------------------------------------------ node sets

def test_nodeset_expands_in_rack_order_and_folds_back():
    names = parse_nodeset("node[010-012,001],gpu[1-2]")
    assert names == ["gpu1", "gpu2", "node001", "node010", "node011", "node012"]
    assert fold(names) == "gpu[1-2],node[001,010-012]"
    assert fold([]) == ""


@pytest.mark.parametrize("bad", ["node[1-", "node[3-1]", "n[a-b]"])
def test_a_nodeset_that_does_not_parse_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="bad node set"):
        parse_nodeset(bad)


def test_order_file_must_name_exactly_the_nodes(tmp_path):
    names = parse_nodeset("n[1-4]")
    f = tmp_path / "order"
    f.write_text("# rack 2 first\nn[3-4]\nn2\nn1\n")
    assert read_order_file(str(f), names) == ["n3", "n4", "n2", "n1"]
    f.write_text("n[1-3]\n")
    with pytest.raises(UsageError, match="does not list n4"):
        read_order_file(str(f), names)
    f.write_text("n[1-5]\n")
    with pytest.raises(UsageError, match="lists n5, not in --nodes"):
        read_order_file(str(f), names)


def test_a_client_is_known_by_its_host_name_short_name_or_address():
    index = NameIndex(["node1", "node2.cluster", "198.18.0.9"])
    assert index.find("node1", "10.0.0.1") == "node1"
    assert index.find("node1.cluster.example", "10.0.0.1") == "node1"
    assert index.find("node2", "10.0.0.2") == "node2.cluster"
    assert index.find("whatever", "198.18.0.9") == "198.18.0.9"
    assert index.find("other", "10.0.0.3") is None
    assert index.find("", "10.0.0.3") is None


@given(st.integers(1, 300), st.integers(1, 40))
def test_chains_cover_every_position_once_in_contiguous_runs(n, k):
    runs = split_chains(n, k)
    assert [p for r in runs for p in r] == list(range(1, n + 1))
    assert max(map(len, runs)) - min(map(len, runs)) <= 1
    tree = Chains(n, k)
    # Parent and children agree, every node hangs from the server, depths add up.
    for p in range(1, n + 1):
        parent = tree.parent(p)
        assert p in tree.children(parent)
        assert tree.depth(p) == tree.depth(parent) + 1
    assert len(tree.children(0)) == min(n, k)
    assert tree.height == max(map(len, runs))


def test_one_chain_is_the_servers_chain():
    chains, tree = Chains(9, 1), build_tree(9, 1)
    for p in range(10):
        assert chains.parent(p) == tree.parent(p)
        assert chains.children(p) == tree.children(p)
        assert chains.depth(p) == tree.depth(p)


# ------------------------------------------------------------------ launchers

def test_pdsh_output_names_each_failed_node_with_its_own_error():
    out = ("n1: kadeploy receive: registered\n"
           "n3: bash: line 1: kadeploy: command not found\n"
           "pdsh@head: n3: ssh exited with exit code 127\n"
           "n4: ssh: connect to host 198.18.0.250 port 22: No route to host\n"
           "pdsh@head: n4: ssh exited with exit code 255\n")
    got = launchers.parse_pdsh(["n1", "n2", "n3", "n4"], out)
    assert got == {"n1": None, "n2": None, "n3": "bash: line 1: kadeploy: command not found",
                   "n4": "ssh: connect to host 198.18.0.250 port 22: No route to host"}


def test_ssh_runs_in_batch_mode_with_a_connect_timeout():
    argv = launchers.SshLauncher(connect_timeout=4, ssh_options=["-F", "cfg"]).ssh_argv(
        "n1", ["kadeploy", "receive", "--dest", "/a b"])
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=4"]
    assert argv[-3:] == ["n1", "--", "kadeploy receive --dest '/a b'"]


def test_srun_needs_an_allocation(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(launchers, "_need_binary", lambda name, package: None)
    with pytest.raises(UsageError, match="inside a Slurm allocation"):
        launchers.make_launcher("srun")
    srun = launchers.SrunLauncher().srun_argv(["n1", "n2", "n3"], ["kadeploy", "receive"])
    assert srun[:5] == ["srun", "-N3", "--ntasks-per-node=1", "--nodelist=n[1-3]", "--kill-on-bad-exit=0"]



def test_srun_errors_name_each_failed_node_once_with_its_tasks_own_word():
    """Lines as srun --label writes them: a task's words may come before or after
    srun's that it failed; the node is named at its first failure line only."""
    errors = launchers.SrunErrors()
    lines = ["0: kadeploy receive: registered",
             " 2: kadeploy receive: cannot write to /data: Read-only file system",
             "srun: error: n3: task 2: Exited with exit code 1",
             "srun: error: n2: task 1: Exited with exit code 13",
             " 1: slurmstepd-n2: error: execve(): kadeploy: No such file or directory",
             "srun: error: n2: task 1: Exited with exit code 13",
             "srun: error: n4: task 3: Killed",
             "srun: error: n5: tasks 4-5: Exited with exit code 2"]
    assert [errors.feed(line + "\n") for line in lines] == [None, None, "n3", "n2", None, None, "n4", "n5"]
    assert errors.failed == {"n3": "kadeploy receive: cannot write to /data: Read-only file system",
                             "n2": "execve(): kadeploy: No such file or directory",
                             "n4": "Killed", "n5": "Exited with exit code 2"}

def test_auto_is_clush_when_clustershell_imports():
    assert launchers.make_launcher("auto").name == "clush"


# ------------------------------------------------------------------ the head

def test_producer_tars_each_source_under_its_own_name(tmp_path):
    cfg = PushConfig(sources=[str(tmp_path / "a"), "/usr/share/doc/"], nodes="n1", dest="/x",
                     excludes=["*.o"], preserve=True)
    cmd = producer_command(cfg)
    assert f"--directory {tmp_path} a --directory /usr/share doc" in cmd
    assert "'--exclude=*.o'" in cmd and "--xattrs" in cmd


def test_every_node_is_ok_failed_or_explained():
    rows = [NodeReport(position=1, address="198.18.0.2", hostname="n1", data_port=1, parent=0,
                       bytes=5, seconds=1.0, status="ok"),
            NodeReport(position=2, address="198.18.0.3", hostname="n2", data_port=1, parent=1,
                       bytes=0, seconds=1.0, status="failed", error="consumer failed (exit status 2)")]
    report = Report(software="x", session=None, arity=1, stream_bytes=5, seconds=1.0,
                    producer_status=0, stream_error=None, backend="copy", rejected={}, nodes=rows)
    res = gather_result(["n1", "n2", "n3", "n4"], report, {"n3": "ssh: connect to host n3: No route to host"})
    assert res.ok == ["n1"]
    assert res.failed == {"n2": "consumer failed (exit status 2)",
                          "n3": "ssh: connect to host n3: No route to host",
                          "n4": "never registered with the server"}
    assert res.exit_status == 2
    assert res.lines()[-2:] == ["ok: n1 (1 node(s))", "failed: n[2-4] (3 node(s))"]
    assert PushResult(ok=[], failed={"n1": "x"}, report=None).exit_status == 1
    assert PushResult(ok=["n1"], failed={}, report=None).exit_status == 0


# ------------------------------------------------------------------ the node

def test_a_directory_copy_is_renamed_into_place_over_the_old_one(tmp_path):
    dest = tmp_path / "dest"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "old").write_text("old")
    d = Destination(str(dest), False, None, False, None)
    assert os.path.basename(d.temp).startswith(TEMP_PREFIX)
    (tmp_path / "dest" / os.path.basename(d.temp) / "data").mkdir()
    (tmp_path / "dest" / os.path.basename(d.temp) / "data" / "new").write_text("new")
    assert d.finish() == [str(dest / "data")]
    assert sorted(os.listdir(dest)) == ["data"]
    assert os.listdir(dest / "data") == ["new"]


def test_an_unverified_copy_is_removed(tmp_path):
    d = Destination(str(tmp_path), False, None, False, None)
    (open(os.path.join(d.temp, "half"), "w")).close()
    d.discard()
    assert os.listdir(tmp_path) == []


def test_a_single_file_gets_its_name_and_preserved_metadata(tmp_path):
    d = Destination(str(tmp_path), True, "weights.bin", True, FileStat(0o640, 0, 0, 1_000_000_000))
    with open(d.temp, "wb") as f:
        f.write(b"w" * 10)
    assert d.finish() == [str(tmp_path / "weights.bin")]
    st = os.stat(tmp_path / "weights.bin")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_000_000_000)
    assert os.listdir(tmp_path) == ["weights.bin"]
    assert FileStat.decode(FileStat(0o4755, 1, 2, 3).encode()) == FileStat(0o4755, 1, 2, 3)


def test_put_in_place_swaps_without_a_gap(tmp_path):
    (tmp_path / "new").write_text("2")
    (tmp_path / "final").write_text("1")
    put_in_place(str(tmp_path / "new"), str(tmp_path / "final"), str(tmp_path / "attic"))
    assert (tmp_path / "final").read_text() == "2" and (tmp_path / "attic").read_text() == "1"


def test_a_destination_that_is_not_a_directory_fails_before_the_transfer(tmp_path):
    with pytest.raises(KadeployError, match="is not a directory on this node"):
        Destination(str(tmp_path / "missing"), False, None, False, None)


# ----------------------------------------------------- bad input, one line

def run(*args, env=None):
    return subprocess.run([*KADEPLOY, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("args, status, fragment", [
    (["push", "/etc/hostname", "-w", "n[1-", "--dest", "/tmp"], 64, "bad node set 'n[1-'"),
    (["push", "/etc/hostname", "--dest", "/tmp"], 64, "no nodes: give -w NODESET"),
    (["push", "/nonexistent-kdp", "-w", "n1", "--dest", "/tmp"], 64, "source /nonexistent-kdp does not exist"),
    (["push", "/etc", "--file", "-w", "n1", "--dest", "/tmp"], 64, "neither a regular file nor a block device"),
    (["push", "/etc", "-w", "n1", "--dest", "tmp"], 64, "must be an absolute path"),
    (["push", "/etc", "-w", "n1", "--dest", "/tmp", "--chains", "2", "-a", "2"], 64, "--chains and -a are exclusive"),
    (["push", "/etc", "/usr/etc", "-w", "n1", "--dest", "/tmp"], 64, "would both become etc"),
    (["push", "/etc", "-w", "n1", "--dest", "/tmp", "--launcher", "srun"], 64, "srun"),
    (["receive", "--dest", "/nonexistent-kdp", "--server", "127.0.0.1"], 1, "is not a directory on this node"),
    (["receive", "--dest", "/tmp"], 64, "$SSH_CONNECTION is not set"),
])
def test_bad_input_is_one_line_and_a_status(args, status, fragment):
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "SLURM_JOB_ID")}
    p = run(*args, env=env)
    assert p.returncode == status, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], p.stderr


def test_dry_run_starts_nothing_and_shows_the_plan():
    p = run("push", "/etc/hostname", "-w", "n[1-5]", "--dest", "/tmp", "--dry-run", "--launcher", "ssh",
            "--chains", "2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "nodes: n[1-5] (5 node(s)), in nodeset order, as 2 chains"
    assert "ssh -o BatchMode=yes" in p.stdout and "... and 2 more" in p.stdout


def test_the_control_scale_bench_runs_at_a_small_size(tmp_path):
    """bench/bench_control_scale.py (run by the lead at 1k-10k) still works."""
    out = tmp_path / "scale.csv"
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "bench",
                                                     "bench_control_scale.py"),
                        "--sizes", "20,40", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    rows = out.read_text().splitlines()
    assert rows[0].startswith("nodes,register_s,place_s") and len(rows) == 3


def test_a_port_in_use_fails_before_any_node_is_started():
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("push", "/etc/hostname", "--file", "-w", "n1", "--dest", "/tmp", "--launcher", "none",
                "-p", str(port))
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"kadeploy: error: cannot listen on TCP port {port}: Address already in use"], p.stderr
    assert "receive" not in p.stdout      # the command for the nodes was never printed


def test_with_launcher_none_nodes_that_never_register_are_each_reported(tmp_path):
    p = run("push", "/etc/hostname", "--file", "-w", "n[1-2]", "--dest", "/tmp", "--launcher", "none",
            "-p", str(free_port()), "-P", str(free_port()), "--wait-timeout", "1")
    assert p.returncode == 1, p.stderr
    first, *rest = p.stdout.strip().splitlines()
    assert first.startswith("kadeploy receive --dest /tmp -p ") and " --file --name hostname" in first
    assert rest == ["n1: never registered with the server", "n2: never registered with the server",
                    "ok: - (0 node(s))", "failed: n[1-2] (2 node(s))"], p.stdout
    assert "Traceback" not in p.stderr


def test_a_broken_clustershell_topology_fails_every_node_with_its_error(tmp_path):
    """ClusterShell's tree mode with a gateway that cannot be reached: the launcher
    itself raises, and push says so for every node instead of waiting for ever."""
    import socket
    (tmp_path / "topology.conf").write_text(
        f"[routes]\n{socket.gethostname().split('.', 1)[0]}: kdp-nowhere-gw\nkdp-nowhere-gw: n[1-2]\n")
    env = dict(os.environ, CLUSTERSHELL_CFGDIR=str(tmp_path))
    p = subprocess.run([*KADEPLOY, "push", "/etc/hostname", "--file", "-w", "n[1-2]", "--dest", "/tmp",
                        "--launcher", "clush", "-p", str(free_port()), "-P", str(free_port())],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("n1: the clush launcher failed: RouteResolvingError"), p.stdout
    assert lines[-1] == "failed: n[1-2] (2 node(s))"
