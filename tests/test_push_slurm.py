"""kadeploy push through Slurm's srun, and ka-d-client started by srun, on a real
Slurm cluster: munged, slurmctld on a head namespace and a slurmd in each node's
(tests/slurmcluster.py), run inside an allocation (salloc) as an admin runs them,
every node's copy checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import deploy
import slurmcluster
from kadeploy.lab.treedigest import diff_manifests, tree_manifest
from test_push_netns import assert_result, leftovers, make_source, workdir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.netns
BIN = Path(sys.executable).parent
KADEPLOY, KA_D_SERVER, KA_D_CLIENT = (str(BIN / name) for name in ("kadeploy", "ka-d-server", "ka-d-client"))


@pytest.fixture(autouse=True)
def _need_slurm():
    reason = slurmcluster.slurm_available()
    if reason is not None:
        pytest.skip(f"needs Slurm: {reason}")


@pytest.fixture
def slurm_nodes(workdir, vcluster):
    """`slurm_nodes(names, **faults)` -> SlurmCluster, stopped at the test's end."""
    made = []

    def make(names, **kw):
        cluster = vcluster(len(names) + 1, prefix="kds")
        sc = slurmcluster.start(cluster, workdir / "slurm", names=names, **kw)
        made.append(sc)
        return sc
    yield make
    for sc in made:
        sc.close()


def push(sc, *args, allocated=None):
    # The nodes reach the head at its address: this machine's name resolves elsewhere.
    return sc.allocated_run([KADEPLOY, "push", *args, "--launcher", "srun",
                             "--server-address", sc.cluster.node(0).addr], timeout=120, nodes=allocated)


def test_push_through_srun_inside_an_allocation_to_its_nodes(slurm_nodes, workdir):
    """Without -w, the nodes are the allocation's ($SLURM_JOB_NODELIST)."""
    sc = slurm_nodes(["kds-n1", "kds-n2", "kds-n3"])
    src = make_source(workdir)
    proc = push(sc, str(src), "--dest", sc.dest, "--preserve")
    assert_result(proc, 0, "kds-n[1-3] (3 node(s))", "- (0 node(s))")
    want = tree_manifest(src)
    for node in sc.nodes:
        assert not diff_manifests(want, tree_manifest(node.path(sc.dest) / "data")), node.name
        assert leftovers(node, sc.dest) == [], node.name
    assert not any(Path(sc.dest).iterdir())   # every copy is the node's own


def test_a_node_srun_cannot_start_the_receiver_on_fails_alone_at_once_with_sruns_error(slurm_nodes, workdir):
    """srun says at once that a node's task failed: the others get the data without
    waiting out --wait-timeout (600 s here, over the run's own budget) for it, and
    each failed node's line gives the reason (slurmstepd's, or the receiver's own
    words), not only an exit status."""
    sc = slurm_nodes(["kds-n1", "kds-n2", "kds-n3", "kds-n4"], no_kadeploy=["kds-n2"], read_only=["kds-n4"])
    src = make_source(workdir)
    report = workdir / "push.json"
    proc = push(sc, str(src), "-w", "kds-n[1-4]", "--dest", sc.dest, "--report", str(report),
                "--wait-timeout", "600")
    assert_result(proc, 2, "kds-n[1,3] (2 node(s))", "kds-n[2,4] (2 node(s))")
    assert "wait timeout" not in proc.stderr, proc.stderr
    rep = json.loads(report.read_text())
    assert rep["failed"]["kds-n2"].startswith("execve(): kadeploy: "), rep["failed"]
    assert "Read-only file system" in rep["failed"]["kds-n4"], rep["failed"]
    assert "kds-n2 could not be started: " in proc.stderr, proc.stderr
    nodes = sc.by_name()
    want = tree_manifest(src, mtime=False, owner=False)
    for name in ("kds-n1", "kds-n3"):
        assert not diff_manifests(want, tree_manifest(nodes[name].path(sc.dest) / "data", mtime=False, owner=False))
    for name in ("kds-n2", "kds-n4"):
        assert list(nodes[name].path(sc.dest).iterdir()) == [], name


def test_nodes_outside_the_allocation_fail_with_sruns_own_error(slurm_nodes, workdir):
    """srun refuses the whole step: every node fails with srun's words, at once."""
    sc = slurm_nodes(["kds-n1", "kds-n2"])
    src = make_source(workdir)
    proc = push(sc, str(src), "-w", "kds-n[1-2]", "--dest", sc.dest, "--wait-timeout", "600",
                allocated=["kds-n1"])
    assert_result(proc, 1, "- (0 node(s))", "kds-n[1-2] (2 node(s))")
    lines = {line.split(": ", 1)[0]: line for line in proc.stdout.splitlines()}
    for name in ("kds-n1", "kds-n2"):
        assert lines[name].startswith(f"{name}: srun: error: "), proc.stdout
        assert list(sc.by_name()[name].path(sc.dest).iterdir()) == [], name


def test_clients_started_by_srun_deploy_a_tree_onto_every_node(slurm_nodes, workdir):
    """The manual's way to start the clients on a Slurm cluster:
    `srun -N n --ntasks-per-node=1 ka-d-client -h server -t DIR`, here on a tar of a
    small tree; every node extracts its own copy."""
    sc = slurm_nodes(["kds-n1", "kds-n2", "kds-n3"])
    src = make_source(workdir)
    head = sc.cluster.node(0).addr
    report = workdir / "report.json"
    server = sc.cluster.popen(0, [KA_D_SERVER, "-n", "3", "-e", deploy.tar_producer(str(src)),
                                  "--report", str(report), "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc = sc.allocated_run(["srun", "-N3", "--ntasks-per-node=1", KA_D_CLIENT, "-h", head,
                                 "-t", sc.dest, "-q"], timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert server.wait(60) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    rep = json.loads(report.read_text())
    assert rep["totals"] == {"nodes": 3, "ok": 3, "failed": 0}, rep["totals"]
    want = tree_manifest(src, mtime=False)
    for node in sc.nodes:
        assert not diff_manifests(want, tree_manifest(node.path(sc.dest), mtime=False)), node.name
