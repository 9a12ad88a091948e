"""Nodes that run a real OpenSSH server, for kadeploy push: one sshd per network
namespace of a VirtualCluster, each in its own UTS namespace (its host name is its
node name) and mount namespace (a private tmpfs at the destination, so that nodes
that share this machine's file system still have copies of their own).

Keys (host and user) are made per test in its tmp dir; an ssh_config there names
every node. Node 0 of the cluster is the head, where `kadeploy push` runs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

VENV_BIN = os.path.dirname(sys.executable)
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
UNREACHABLE = "198.18.0.250"     # in the cluster's subnet, and nobody is there


def ssh_available() -> Optional[str]:
    """Why these tests cannot run here (None: they can)."""
    for tool in ("ssh", "ssh-keygen", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    if not os.access(SSHD, os.X_OK):
        return "sshd is missing (apt-get install openssh-server)"
    return None


@dataclass
class ServedNode:
    """A node of the cluster, and the daemon in its namespaces (sshd here, slurmd in
    tests/slurmcluster.py)."""
    name: str
    address: str
    index: int                      # in the VirtualCluster
    daemon: Optional[subprocess.Popen] = None

    def path(self, dest: str) -> Path:
        """`dest` as this node sees it (its mount namespace, through its daemon)."""
        return Path(f"/proc/{self.daemon.pid}/root") / dest.lstrip("/")


@dataclass
class SshCluster:
    cluster: object
    workdir: Path
    dest: str
    ssh_config: Path
    nodes: List[ServedNode] = field(default_factory=list)

    def head_run(self, argv: List[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        """A command on the head node (namespace 0), output captured."""
        return self.cluster.run(0, argv, capture_output=True, text=True, timeout=timeout, **kw)

    def head_popen(self, argv: List[str], **kw) -> subprocess.Popen:
        return self.cluster.popen(0, argv, **kw)

    def by_name(self) -> Dict[str, ServedNode]:
        return {n.name: n for n in self.nodes}


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kdp-test", "-f", str(path)],
                   check=True)
    return path.with_suffix(".pub").read_text().strip()


def start(cluster, workdir: Path, *, names: List[str],
          no_kadeploy=(), read_only=(), unreachable=(), no_key=(),
          devices: Optional[Dict[str, str]] = None) -> SshCluster:
    """sshd on cluster nodes 1..len(names) (node 0 is the head). Nodes in
    `no_kadeploy` have no kadeploy on their PATH, those in `read_only` a read-only
    destination, those in `no_key` refuse our key; names in `unreachable` point at an
    address nobody answers. `devices` maps a node to a block device that it sees at
    DEST/disk (a bind mount in its mount namespace)."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation dir
    host_pub = _keygen(workdir / "host_key")
    user_pub = _keygen(workdir / "user_key")
    (workdir / "authorized_keys").write_text(user_pub + "\n")
    (workdir / "no_keys").write_text("")
    (workdir / "known_hosts").write_text(f"198.18.0.* {' '.join(host_pub.split()[:2])}\n")
    dest = str(workdir / "dest")
    os.makedirs(dest, exist_ok=True)
    tmpdir = workdir / "tmp"     # the receivers' logs, removed with the test's tmp dir
    tmpdir.mkdir(exist_ok=True)
    sc = SshCluster(cluster=cluster, workdir=workdir, dest=dest, ssh_config=workdir / "ssh_config")
    hosts = []
    live = [n for n in names if n not in unreachable]
    for i, name in enumerate(live, start=1):
        sc.nodes.append(ServedNode(name=name, address=cluster.node(i).addr, index=i))
        hosts.append(f"Host {name}\n  HostName {cluster.node(i).addr}\n")
    for name in unreachable:
        hosts.append(f"Host {name}\n  HostName {UNREACHABLE}\n")
    head_resolves(cluster, sc, {n.name: n.address for n in sc.nodes})
    sc.ssh_config.write_text("".join(hosts) + (
        "Host *\n  User root\n"
        f"  IdentityFile {workdir / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {workdir / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n  LogLevel ERROR\n"))
    for node in sc.nodes:
        path = f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin" if node.name not in no_kadeploy else "/usr/bin:/bin"
        config = workdir / f"sshd_{node.name}"
        config.write_text(
            f"Port 22\nListenAddress {node.address}\nHostKey {workdir / 'host_key'}\n"
            f"AuthorizedKeysFile {workdir / ('no_keys' if node.name in no_key else 'authorized_keys')}\n"
            "PidFile none\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nStrictModes no\nMaxStartups 100\n"
            f"SetEnv PATH={path} TMPDIR={tmpdir}\n")
        ro = ",ro" if node.name in read_only else ""
        # The destination: a private tmpfs at `dest`, seen only in this node's mount
        # namespace (the host keeps an empty directory there).
        device = (devices or {}).get(node.name)
        bind = f"touch {dest}/disk; mount --bind {device} {dest}/disk; " if device else ""
        script = (f"set -e; hostname {node.name}; mount -t tmpfs -o size=256m{ro} kdp-dest {dest}; "
                  f"{bind}exec {SSHD} -D -e -f {config}")
        node.daemon = cluster.popen(node.index, ["unshare", "--uts", "--mount", "--propagation", "private",
                                               "sh", "-c", script],
                                  stdout=subprocess.DEVNULL, stderr=open(workdir / f"sshd_{node.name}.log", "w"))
    for node in sc.nodes:
        _wait_listening(cluster, node)
    return sc


def head_resolves(cluster, owner, addresses: Dict[str, str]) -> None:
    """The head (node 0) resolves the node names as a real cluster's DNS would:
    ka-d-server's --hosts matches a name by what it resolves to, never by the name a
    node claims. `ip netns exec` reads /etc/netns/NS/hosts; removed with `owner`."""
    etc = f"/etc/netns/{cluster.node(0).ns}"
    os.makedirs(etc, exist_ok=True)
    weakref.finalize(owner, shutil.rmtree, etc, True)
    with open(f"{etc}/hosts", "w") as f:
        f.write("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in addresses.items()))


def _wait_listening(cluster, node: ServedNode, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout

    def probe() -> bool:
        try:
            socket.create_connection((node.address, 22), timeout=1).close()
            return True
        except OSError:
            return False

    while time.monotonic() < deadline:
        if node.daemon.poll() is not None:
            raise RuntimeError(f"sshd of {node.name} exited {node.daemon.returncode}")
        if cluster.node(0).call(probe):
            return
        time.sleep(0.1)
    raise RuntimeError(f"sshd of {node.name} does not listen on {node.address}:22")
