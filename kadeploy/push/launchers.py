"""Launchers: start `kadeploy receive` on every node through the tools admins already
use (ssh, ClusterShell, pdsh, Slurm's srun), and say, node by node, where it failed.

A launcher only starts the receivers; the data never goes through it (clush and pdsh
would copy stdin to every node: a star). With `detach`, a receiver returns as soon as
it has registered with the server and goes on in the background, so a bounded fan-out
(ssh's, clush's, pdsh's) never holds a session open for the whole transfer; srun keeps
its tasks attached, since Slurm ends a step's stray processes.

`run(nodes, argv, on_failed)` blocks and returns {node: None when the remote command
exited 0, else the launcher's own error text}; nodes it says nothing about are not in
the map. A launcher that stays attached (srun) also calls on_failed(node, why) from its
thread as soon as it knows a node failed, so that the transfer need not wait for it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

from kadeploy.errors import UsageError
from kadeploy.push.nodes import fold

NAMES = ("ssh", "clush", "pdsh", "srun", "none")
DEFAULT_FANOUT = 64            # ClusterShell's default; ssh's here, pdsh's own is 32
DEFAULT_CONNECT_TIMEOUT = 10


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_failure(status: int, stderr: str) -> str:
    """The remote side's (or ssh's) own last word, else the bare exit status."""
    return last_line(stderr) or f"remote command exited {status}"


def _not_told(node: str, why: str) -> None:
    """run()'s on_failed when nobody asks to know at once."""


class Launcher:
    name = ""
    detach = True              # receivers return once registered
    # run() returns once every node it could start has registered (detached
    # receivers), so the transfer may start then; else --wait-timeout bounds the wait.
    returns_when_registered = True

    def __init__(self, fanout: Optional[int] = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 ssh_options: Sequence[str] = ()) -> None:
        self.fanout = fanout
        self.connect_timeout = connect_timeout
        self.ssh_options = list(ssh_options)

    def check(self) -> None:
        """UsageError when the launcher cannot run here at all."""

    def command_lines(self, nodes: Sequence[str], argv: Sequence[str]) -> List[str]:
        """What it runs, for --dry-run and --launcher none."""
        raise NotImplementedError

    def run(self, nodes: Sequence[str], argv: Sequence[str],
            on_failed: Callable[[str, str], None] = _not_told) -> Dict[str, Optional[str]]:
        raise NotImplementedError


def _need_binary(name: str, package: str) -> None:
    if shutil.which(name) is None:
        raise UsageError(f"the {name} launcher needs the {name} command (install {package})")


class SshLauncher(Launcher):
    """One `ssh -o BatchMode=yes -o ConnectTimeout=T node command` per node, at most
    `fanout` at a time."""
    name = "ssh"

    def check(self) -> None:
        _need_binary("ssh", "openssh-client")

    def ssh_argv(self, node: str, argv: Sequence[str]) -> List[str]:
        return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout:g}",
                *self.ssh_options, node, "--", shlex.join(argv)]

    def command_lines(self, nodes, argv):
        return [shlex.join(self.ssh_argv(n, argv)) for n in nodes]

    def _one(self, node: str, argv: Sequence[str]) -> Optional[str]:
        p = subprocess.run(self.ssh_argv(node, argv), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           errors="replace")
        return None if p.returncode == 0 else describe_failure(p.returncode, p.stderr)

    def run(self, nodes, argv, on_failed=_not_told):
        with ThreadPoolExecutor(max_workers=max(1, min(self.fanout or DEFAULT_FANOUT, len(nodes)))) as pool:
            return dict(zip(nodes, pool.map(lambda n: self._one(n, argv), nodes)))


class ClushLauncher(Launcher):
    """ClusterShell's Task: its fan-out, connect timeout and tree mode (gateways) come
    from ClusterShell's own configuration files unless set here."""
    name = "clush"

    def check(self) -> None:
        try:
            import ClusterShell.Task  # noqa: F401
        except ImportError as e:
            raise UsageError(f"the clush launcher needs ClusterShell ({e})")

    def command_lines(self, nodes, argv):
        return [shlex.join(["clush", "-w", fold(nodes), *(["-f", str(self.fanout)] if self.fanout else []),
                            shlex.join(argv)])]

    def run(self, nodes, argv, on_failed=_not_told):
        from ClusterShell.NodeSet import NodeSet
        from ClusterShell.Task import task_self

        task = task_self()            # the task bound to this (worker) thread
        task.set_info("connect_timeout", self.connect_timeout)
        if self.fanout:
            task.set_info("fanout", self.fanout)
        if self.ssh_options:
            task.set_info("ssh_options", shlex.join(self.ssh_options))
        task.shell(shlex.join(argv), nodes=NodeSet.fromlist(nodes), stderr=True)
        task.run()
        results: Dict[str, Optional[str]] = {}
        for rc, keys in task.iter_retcodes():
            for node in keys:
                err = task.key_error(node)
                results[node] = None if rc == 0 else describe_failure(
                    rc, err.decode(errors="replace") if err else "")
        for node in task.iter_keys_timeout():
            results[node] = f"timed out after {self.connect_timeout:g} s"
        return results


# pdsh prints "pdsh@head: node: ssh exited with exit code 255" for a failed node and
# prefixes each line of a node's stderr with "node: ".
_PDSH_EXIT = re.compile(r"^pdsh@[^:]*: (?P<node>[^:\s]+): .*exited with exit code (?P<rc>\d+)")
_PDSH_LINE = re.compile(r"^(?P<node>[^:\s]+): (?P<text>.*)$")


class PdshLauncher(Launcher):
    """`pdsh -R ssh -w nodes command`, ssh in batch mode with the connect timeout."""
    name = "pdsh"

    def check(self) -> None:
        _need_binary("pdsh", "pdsh")

    def pdsh_argv(self, nodes, argv) -> List[str]:
        return ["pdsh", "-S", "-R", "ssh", "-w", ",".join(nodes),
                *(["-f", str(self.fanout)] if self.fanout else []), shlex.join(argv)]

    def environment(self) -> Dict[str, str]:
        ssh = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout:g}", *self.ssh_options]
        return dict(os.environ, PDSH_SSH_ARGS_APPEND=shlex.join(ssh))

    def command_lines(self, nodes, argv):
        env = self.environment()["PDSH_SSH_ARGS_APPEND"]
        return [f"PDSH_SSH_ARGS_APPEND={shlex.quote(env)} " + shlex.join(self.pdsh_argv(nodes, argv))]

    def run(self, nodes, argv, on_failed=_not_told):
        p = subprocess.run(self.pdsh_argv(nodes, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, errors="replace", env=self.environment())
        return parse_pdsh(nodes, p.stdout + "\n" + p.stderr)


def parse_pdsh(nodes: Sequence[str], output: str) -> Dict[str, Optional[str]]:
    said: Dict[str, str] = {}
    failed: Dict[str, int] = {}
    for line in output.splitlines():
        m = _PDSH_EXIT.match(line)
        if m:
            failed[m.group("node")] = int(m.group("rc"))
            continue
        m = _PDSH_LINE.match(line)
        if m and m.group("node") in nodes and m.group("text").strip():
            said[m.group("node")] = m.group("text").strip()
    return {n: (f"{said.get(n) or f'remote command exited {failed[n]}'}" if n in failed else None)
            for n in nodes}


_SRUN_TASK = re.compile(r"^srun: error: (?P<node>[^:\s]+): (?:task (?P<task>\d+)|tasks [\d,-]+): (?P<text>.*)$")
_SRUN_LABEL = re.compile(r"^\s*(?P<task>\d+): (?:slurmstepd-[^:\s]+: error: )?(?P<text>.*)$")


class SrunErrors:
    """srun's standard error, read line by line as it comes. With --label, a task's
    lines start with its number, and so do slurmstepd's errors about it (an execve()
    that failed); they may come before or after srun's word that the task failed.
    Pure: no I/O."""

    def __init__(self) -> None:
        self.failed: Dict[str, str] = {}    # node -> why, the best known so far
        self._said: Dict[str, str] = {}     # task -> its last line (or slurmstepd's)
        self._node_of: Dict[str, str] = {}  # task -> node, of the tasks that failed

    def feed(self, line: str) -> Optional[str]:
        """The node this line first says failed, if it does. Its reason, in `failed`,
        is the task's own last word (or slurmstepd's), else srun's ("Exited with exit
        code 2")."""
        line = line.rstrip("\n")
        m = _SRUN_TASK.match(line)
        if m:
            node, task = m.group("node"), m.group("task") or ""   # "": "tasks 0-3", no one task
            first = node not in self.failed
            if task:
                self._node_of[task] = node
            self.failed[node] = self._said.get(task) or m.group("text")
            return node if first else None
        m = _SRUN_LABEL.match(line)
        if m and m.group("text").strip():
            task = m.group("task")
            self._said[task] = m.group("text").strip()
            if task in self._node_of:        # said after srun's word: a better reason
                self.failed[self._node_of[task]] = self._said[task]
        return None


class SrunLauncher(Launcher):
    """`srun -N n --ntasks-per-node=1 --nodelist=... command` inside a Slurm allocation;
    the receivers stay attached to the job step until the end."""
    name = "srun"
    detach = False
    returns_when_registered = False

    def check(self) -> None:
        _need_binary("srun", "slurm-client")
        if not os.environ.get("SLURM_JOB_ID"):
            raise UsageError("the srun launcher runs inside a Slurm allocation (salloc or sbatch): "
                             "$SLURM_JOB_ID is not set")

    def srun_argv(self, nodes, argv) -> List[str]:
        return ["srun", f"-N{len(nodes)}", "--ntasks-per-node=1", f"--nodelist={fold(nodes)}",
                "--kill-on-bad-exit=0", "--label", *argv]

    def command_lines(self, nodes, argv):
        return [shlex.join(self.srun_argv(nodes, argv))]

    def run(self, nodes, argv, on_failed=_not_told):
        errors = SrunErrors()
        last = ""
        with subprocess.Popen(self.srun_argv(nodes, argv), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              errors="replace") as p:
            for line in p.stderr:   # as it comes: a node that failed is known at once
                last = line if line.strip() else last
                node = errors.feed(line)
                if node is not None:
                    on_failed(node, errors.failed[node])
        if p.returncode != 0 and not errors.failed:   # the step itself failed: every node
            return {n: describe_failure(p.returncode, last) for n in nodes}
        return dict(errors.failed)


class PrintLauncher(Launcher):
    """`none`: print the command; the admin starts it on every node by any means."""
    name = "none"
    returns_when_registered = False

    def command_lines(self, nodes, argv):
        return [shlex.join(argv)]

    def run(self, nodes, argv, on_failed=_not_told):
        return {}


LAUNCHERS = {cls.name: cls for cls in (SshLauncher, ClushLauncher, PdshLauncher, SrunLauncher, PrintLauncher)}


def clustershell_importable() -> bool:
    try:
        import ClusterShell.Task  # noqa: F401
        return True
    except ImportError:
        return False


def make_launcher(name: str, **kw) -> Launcher:
    """auto: clush when ClusterShell imports, else ssh."""
    if name == "auto":
        name = "clush" if clustershell_importable() else "ssh"
    launcher = LAUNCHERS[name](**kw)
    launcher.check()
    return launcher
