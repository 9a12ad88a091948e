"""A real Slurm cluster for kadeploy push's srun launcher: munged with a key of the
test's own, slurmctld on the head (node 0 of a VirtualCluster), and a slurmd on
every other node, each in its own UTS namespace (its host name is its node name) and
mount namespace (a private tmpfs at the destination, as in tests/sshcluster.py).

slurmd enters its network namespace with nsenter rather than `ip netns exec`, which
mounts a sysfs of the namespace's own over /sys and so hides /sys/fs/cgroup, without
which slurmd does not start. The job steps srun launches are slurmd's children: they
run in their node's namespaces, as on a real node.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import sshcluster

VENV_BIN = os.path.dirname(sys.executable)
DAEMONS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
           "srun": "slurm-client", "salloc": "slurm-client", "sinfo": "slurm-client",
           "nsenter": "util-linux", "unshare": "util-linux"}


def slurm_available() -> Optional[str]:
    """Why these tests cannot run here (None: they can)."""
    for tool, package in DAEMONS.items():
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"{tool} is missing (apt-get install {package})"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class SlurmCluster:
    cluster: object
    workdir: Path
    dest: str
    conf: Path
    nodes: List[sshcluster.ServedNode] = field(default_factory=list)
    daemons: List[subprocess.Popen] = field(default_factory=list)

    def env(self) -> Dict[str, str]:
        """The head's environment: this Slurm's configuration, and kadeploy on the
        PATH (srun exports it to the job steps, as it does on a real cluster)."""
        return dict(os.environ, SLURM_CONF=str(self.conf),
                    PATH=f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin")

    def allocated_run(self, argv: List[str], timeout: float = 180,
                      nodes: Optional[List[str]] = None) -> subprocess.CompletedProcess:
        """`argv` on the head inside an allocation (salloc) of `nodes` (default: every
        node), as an admin runs it; output captured."""
        nodes = nodes or [n.name for n in self.nodes]
        return self.cluster.run(0, [_tool("salloc"), "--quiet", f"-N{len(nodes)}",
                                    f"--nodelist={','.join(nodes)}", "--", *argv],
                                capture_output=True, text=True, timeout=timeout, env=self.env())

    def by_name(self) -> Dict[str, sshcluster.ServedNode]:
        return {n.name: n for n in self.nodes}

    def close(self) -> None:
        nodes = [n.daemon for n in self.nodes if n.daemon is not None]
        for p in nodes + self.daemons[::-1]:   # the nodes, then slurmctld, then munged
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(cluster, workdir: Path, *, names: List[str], no_kadeploy=(), read_only=()) -> SlurmCluster:
    """munged, slurmctld on the head and a slurmd on cluster nodes 1..len(names); the
    nodes in `no_kadeploy` do not have kadeploy (the virtualenv's bin directory is
    hidden in their mount namespace), those in `read_only` a read-only destination.
    Returns once every node is idle."""
    workdir.mkdir(parents=True, exist_ok=True)
    dest = str(workdir / "dest")
    os.makedirs(dest, exist_ok=True)
    sc = SlurmCluster(cluster=cluster, workdir=workdir, dest=dest, conf=workdir / "slurm.conf")
    sc.nodes = [sshcluster.ServedNode(name=name, address=cluster.node(i).addr, index=i)
                for i, name in enumerate(names, start=1)]
    sshcluster.head_resolves(cluster, sc, {n.name: n.address for n in sc.nodes})
    try:
        munge_socket = _start_munged(sc)
        _write_conf(sc, munge_socket)
        (workdir / "state").mkdir()
        sc.daemons.append(cluster.popen(0, [_tool("slurmctld"), "-D", "-f", str(sc.conf)], env=sc.env(),
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(workdir / "slurmctld.err", "w")))
        for node in sc.nodes:
            (workdir / f"spool-{node.name}").mkdir()
            hide = f"mount -t tmpfs -o size=1m kdp-nothing {VENV_BIN}; " if node.name in no_kadeploy else ""
            ro = ",ro" if node.name in read_only else ""
            script = (f"set -e; hostname {node.name}; mount -t tmpfs -o size=256m{ro} kdp-dest {dest}; "
                      f"{hide}exec {_tool('slurmd')} -D -f {sc.conf}")
            node.daemon = subprocess.Popen(
                [_tool("nsenter"), f"--net=/run/netns/{cluster.node(node.index).ns}",
                 _tool("unshare"), "--uts", "--mount", "--propagation", "private", "sh", "-c", script],
                env=sc.env(), start_new_session=True, stdout=subprocess.DEVNULL,
                stderr=open(workdir / f"slurmd-{node.name}.err", "w"))
        _wait_idle(sc)
    except BaseException:
        sc.close()
        raise
    return sc


def _start_munged(sc: SlurmCluster) -> Path:
    """munged with a key made for this test; its socket in the test's directory."""
    key = sc.workdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = sc.workdir / "munge.socket"
    # --force: the test's directory lies under /tmp, whose mode munged would refuse
    sc.daemons.append(subprocess.Popen(
        [_tool("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
         f"--log-file={sc.workdir / 'munged.log'}", f"--pid-file={sc.workdir / 'munged.pid'}",
         f"--seed-file={sc.workdir / 'munged.seed'}"],
        stdout=subprocess.DEVNULL, stderr=open(sc.workdir / "munged.err", "w")))
    deadline = time.monotonic() + 15
    while not sock.exists():
        if sc.daemons[-1].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"munged did not start: {(sc.workdir / 'munged.err').read_text()[-500:]}")
        time.sleep(0.05)
    return sock


def _write_conf(sc: SlurmCluster, munge_socket: Path) -> None:
    w, head = sc.workdir, sc.cluster.node(0)
    cpus = os.cpu_count() or 1      # what slurmd finds; another count is an error in its log
    nodes = "".join(f"NodeName={n.name} NodeAddr={n.address} CPUs={cpus} State=UNKNOWN\n" for n in sc.nodes)
    sc.conf.write_text(
        # slurmctld runs only where the host name is SlurmctldHost's: the head keeps this machine's
        f"ClusterName=kdptest\nSlurmctldHost={socket.gethostname()}({head.addr})\n"
        f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={munge_socket}\n"
        "SlurmUser=root\nSlurmdUser=root\n"
        f"StateSaveLocation={w}/state\nSlurmdSpoolDir={w}/spool-%n\n"
        f"SlurmctldPidFile={w}/slurmctld.pid\nSlurmdPidFile={w}/slurmd-%n.pid\n"
        f"SlurmctldLogFile={w}/slurmctld.log\nSlurmdLogFile={w}/slurmd-%n.log\n"
        # no cgroups, accounting or MPI: none of them is what is tested
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
        "SchedulerType=sched/builtin\nSelectType=select/linear\nReturnToService=2\n"
        + nodes + f"PartitionName=kdp Nodes={','.join(n.name for n in sc.nodes)} Default=YES "
        "MaxTime=INFINITE State=UP\n")


def _wait_idle(sc: SlurmCluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    states = ""
    while time.monotonic() < deadline:
        for p in sc.daemons + [n.daemon for n in sc.nodes]:
            if p.poll() is not None:
                raise RuntimeError(f"a Slurm daemon exited {p.returncode}: {p.args}")
        r = sc.cluster.run(0, [_tool("sinfo"), "--noheader", "--Node", "--format=%N %t"],
                           capture_output=True, text=True, env=sc.env())
        states = r.stdout.split()
        if r.returncode == 0 and states[1::2] == ["idle"] * len(sc.nodes):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Slurm nodes are not idle within {timeout:g} s: {states}")
