"""`kadeploy push`, the head node's side: check the input, start the server in this
process, start a receiver on every node through a launcher, carry the data through the
chain, and say which nodes have it and which do not, as folded node sets.

A node has it only when the server's report says its copy was verified and put in
place (kadeploy.push.receive); a node the launcher could not start is reported with
the launcher's own error, and the others go on.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import shlex
import socket
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kadeploy.control.server import Server
from kadeploy.control.server_config import ServerConfig
from kadeploy.core.topology import address_key
from kadeploy.defaults import CONTROL_PORT, DATA_PORT
from kadeploy.errors import EXIT_FAILED, EXIT_OK, EXIT_SOME_FAILED, KadeployError, UsageError
from kadeploy.push import launchers as launchers_mod
from kadeploy.push.nodes import Chains, NameIndex, fold, parse_nodeset, read_order_file
from kadeploy.push.receive import TAR_PRESERVE_CREATE, FileStat
from kadeploy.files import write_json_atomically
from kadeploy.view.report import Report

log = logging.getLogger("kadeploy.server")
DEFAULT_REMOTE_COMMAND = "kadeploy"
DEFAULT_WAIT_TIMEOUT = 60.0
DEFAULT_STALL_TIMEOUT = ServerConfig.stall_timeout
PUSH_REPORT_FORMAT = 1
LAUNCHER_GRACE = 30.0          # seconds an attached launcher (srun) may take to end after the report


@dataclass
class PushConfig:
    sources: List[str]
    nodes: Optional[str]   # None: nodes_asked() finds them
    dest: str
    single_file: bool = False
    excludes: List[str] = field(default_factory=list)
    preserve: bool = False
    dry_run: bool = False
    launcher: str = "auto"
    remote_command: str = DEFAULT_REMOTE_COMMAND
    order: str = "nodeset"
    chains: int = 1
    arity: int = 1
    server_address: Optional[str] = None
    control_port: int = CONTROL_PORT
    data_port: int = DATA_PORT
    fanout: Optional[int] = None
    connect_timeout: float = launchers_mod.DEFAULT_CONNECT_TIMEOUT
    ssh_options: List[str] = field(default_factory=list)
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    key_file: Optional[str] = None
    key: Optional[bytes] = None
    quiet: bool = False


@dataclass
class PushResult:
    ok: List[str]
    failed: Dict[str, str]          # node -> why
    report: Optional[Report]

    @property
    def exit_status(self) -> int:
        if not self.failed:
            return EXIT_OK
        return EXIT_FAILED if not self.ok else EXIT_SOME_FAILED

    def to_dict(self) -> dict:
        return {"format": PUSH_REPORT_FORMAT, "ok": self.ok, "failed": self.failed,
                "ok_nodeset": fold(self.ok), "failed_nodeset": fold(self.failed),
                "deployment": self.report.to_dict() if self.report is not None else None}

    def write_json(self, path: str) -> None:
        write_json_atomically(path, self.to_dict(), prefix=".kadeploy-push-report-")

    def lines(self) -> List[str]:
        out = [f"{node}: {why}" for node, why in sorted(self.failed.items())]
        out.append(f"ok: {fold(self.ok) or '-'} ({len(self.ok)} node(s))")
        out.append(f"failed: {fold(self.failed) or '-'} ({len(self.failed)} node(s))")
        return out


# ------------------------------------------------------------------ the input

def check_sources(cfg: PushConfig) -> None:
    for src in cfg.sources:
        if not os.path.lexists(src):
            raise UsageError(f"source {src} does not exist")
    if cfg.single_file:
        if len(cfg.sources) != 1:
            raise UsageError("--file sends exactly one SOURCE")
        mode = os.stat(cfg.sources[0]).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise UsageError(f"--file: {cfg.sources[0]} is neither a regular file nor a block device")
        if cfg.excludes:
            raise UsageError("--exclude applies to directories, not to --file")
        return
    names = [os.path.basename(os.path.normpath(s)) for s in cfg.sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two sources would both become {dup[0]} under --dest")
    if "/" in [os.path.normpath(s) for s in cfg.sources]:
        raise UsageError("SOURCE / has no name to put under --dest; send its directories instead")


def producer_command(cfg: PushConfig) -> str:
    """tar of each SOURCE under its own name (what rsync SRC DEST/ makes); --file: the
    bytes themselves."""
    if cfg.single_file:
        return shlex.join(["cat", "--", cfg.sources[0]])
    argv = ["tar", "--create", "--sparse", "--sort=name", "--file", "-"]   # the same stream each time
    argv += TAR_PRESERVE_CREATE if cfg.preserve else []
    argv += [f"--exclude={pattern}" for pattern in cfg.excludes]
    for src in cfg.sources:
        path = os.path.abspath(os.path.normpath(src))
        argv += ["--directory", os.path.dirname(path), os.path.basename(path)]
    return shlex.join(argv)


def remote_argv(cfg: PushConfig, launcher: launchers_mod.Launcher) -> List[str]:
    """The command each node runs: `kadeploy receive ...` (or --remote-command's)."""
    try:
        argv = shlex.split(cfg.remote_command)
    except ValueError as e:
        raise UsageError(f"bad --remote-command: {e}")
    if not argv:
        raise UsageError("--remote-command is empty")
    argv += ["receive", "--dest", cfg.dest, "-p", str(cfg.control_port),
             "--connect-timeout", f"{max(cfg.connect_timeout, 30):g}", "-q"]
    server = cfg.server_address or (None if launcher.name in ("ssh", "clush", "pdsh") else socket.getfqdn())
    if server:
        argv += ["--server", server]
    if launcher.detach:
        argv.append("--detach")
    if cfg.single_file:
        src = cfg.sources[0]
        argv += ["--file", "--name", os.path.basename(src)]
        if cfg.preserve:
            argv += ["--stat", FileStat.of(os.stat(src)).encode()]
    elif cfg.preserve:
        argv.append("--preserve")
    if cfg.key_file:
        argv += ["--key-file", cfg.key_file]
    return argv


def placement_order(cfg: PushConfig, names: List[str]) -> List[str]:
    if cfg.order in ("nodeset", "address"):
        return names
    return read_order_file(cfg.order, names)


# ------------------------------------------------------------------ the server

class PushServer(Server):
    """The server of one push: nodes placed in the push's order, in K chains."""

    def __init__(self, config: ServerConfig, by_address: bool, chains: int) -> None:
        super().__init__(config)
        self.by_address, self.chains = by_address, chains

    def _place_order(self):
        ordered = super()._place_order()     # in the order of cfg.hosts
        if self.by_address:
            ordered.sort(key=lambda n: (address_key(n.info.address), n.info.data_port))
        return ordered

    def _build_tree(self, n_nodes: int):
        if self.chains > 1:
            return Chains(n_nodes, self.chains)
        return super()._build_tree(n_nodes)


def server_config(cfg: PushConfig, order: List[str], launcher: launchers_mod.Launcher) -> ServerConfig:
    return ServerConfig(
        n_clients=len(order), arity=cfg.arity, producer=producer_command(cfg),
        control_port=cfg.control_port, data_port=cfg.data_port, bind=None,
        wait_timeout=None if launcher.returns_when_registered else cfg.wait_timeout, hosts=order,
        connect_timeout=max(cfg.connect_timeout, 30), key=cfg.key, live=False,
        progress_interval=5.0, stall_timeout=cfg.stall_timeout,
        max_connections=max(4096, 2 * len(order) + 64))


def raise_open_files_limit(n_nodes: int) -> None:
    """One control connection per node, plus the ssh processes' pipes: a soft limit
    of 1024 would stop a push to a few hundred nodes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * n_nodes + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open files limited to %d (ulimit -Hn): too few for %d node(s)", new, n_nodes)


async def run_push(cfg: PushConfig, names: List[str], order: List[str],
                   launcher: launchers_mod.Launcher, argv: List[str],
                   listening: Callable[[], None] = lambda: None) -> PushResult:
    raise_open_files_limit(len(names))
    server = PushServer(server_config(cfg, order, launcher), cfg.order == "address", cfg.chains)
    serving = asyncio.ensure_future(server.run())
    await asyncio.sleep(0)      # the server binds its ports, or fails, before any node starts
    if serving.done():
        serving.result()
    listening()
    loop = asyncio.get_running_loop()
    index = NameIndex(names)
    failed_at_once: Dict[str, str] = {}

    def failed_now(node: str, why: str) -> None:
        """A node the launcher says failed while it runs (srun): the transfer waits
        no longer for it, unless it had registered (then it is lost as any node is)."""
        if node in failed_at_once:
            return
        failed_at_once[node] = why
        log.warning("%s could not be started: %s", node, why)
        registered = {index.find(n.info.hostname, n.info.address) for n in server.registry.nodes.values()}
        server.registry.not_coming(sum(1 for n in failed_at_once if n not in registered))

    def on_failed(node: str, why: str) -> None:   # in the launcher's thread
        try:
            loop.call_soon_threadsafe(failed_now, node, why)
        except RuntimeError:
            pass    # the loop has ended: the launcher's result says it all

    launching = loop.run_in_executor(None, launcher.run, names, argv, on_failed)
    launched: Dict[str, Optional[str]] = {}

    async def follow_launcher() -> None:
        nonlocal launched
        try:
            launched = await launching
        except Exception as e:  # the launcher itself broke (e.g. no route in ClusterShell's topology)
            why = f"the {launcher.name} launcher failed: {type(e).__name__}: {e}"
            log.error("%s", why)
            launched = {n: why for n in names}
        failed = sum(1 for why in launched.values() if why is not None)
        if failed:
            log.warning("%d node(s) could not be started: %s", failed,
                        fold(n for n, why in launched.items() if why is not None))
        if launcher.returns_when_registered or len(server.registry.nodes) >= len(names) - failed:
            server.registry.start_now.set()   # every node that could start has registered

    following = asyncio.ensure_future(follow_launcher())
    report: Optional[Report] = None
    try:
        report = await serving
    except KadeployError:
        if server.registry.nodes:
            raise
        # nobody registered: every node is reported below, with why if it is known
    finally:
        # srun's step ends once its receivers have reported: its per-node errors
        # name the nodes that never started.
        if not following.done():
            await asyncio.wait([following],
                               timeout=None if launcher.returns_when_registered else LAUNCHER_GRACE)
        following.cancel()
    return gather_result(names, report, launched)


def gather_result(names: Sequence[str], report: Optional[Report],
                  launched: Dict[str, Optional[str]]) -> PushResult:
    rows: Dict[str, object] = {}
    if report is not None:
        index = NameIndex(names)
        for row in report.nodes:
            name = index.find(row.hostname, row.address)
            if name is not None:
                rows[name] = row
    ok, failed = [], {}
    for name in names:
        row = rows.get(name)
        if row is not None and row.status == "ok":
            ok.append(name)
        elif row is not None:
            failed[name] = row.error or "failed"
        elif launched.get(name):
            failed[name] = launched[name]
        elif report is not None and report.stream_error:
            failed[name] = f"never registered; the stream failed: {report.stream_error}"
        else:
            failed[name] = "never registered with the server"
    return PushResult(ok=ok, failed=failed, report=report)


def plan_lines(cfg: PushConfig, order: List[str], launcher: launchers_mod.Launcher,
               argv: List[str]) -> List[str]:
    """What --dry-run shows: nothing is started."""
    shape = f"{cfg.chains} chains" if cfg.chains > 1 else "a chain" if cfg.arity == 1 else f"a tree of arity {cfg.arity}"
    lines = [f"nodes: {fold(order)} ({len(order)} node(s)), in {cfg.order} order, as {shape}",
             f"order: {' '.join(order[:8])}{' ...' if len(order) > 8 else ''}",
             f"producer: {producer_command(cfg)}",
             f"launcher: {launcher.name}"]
    commands = launcher.command_lines(order, argv)
    lines += [f"  {c}" for c in commands[:3]]
    if len(commands) > 3:
        lines.append(f"  ... and {len(commands) - 3} more")
    return lines


def nodes_asked(cfg: PushConfig) -> str:
    """-w's node set; with the srun launcher inside an allocation, by default the
    allocation's nodes ($SLURM_JOB_NODELIST, a node set Slurm writes as ClusterShell reads)."""
    if cfg.nodes:
        return cfg.nodes
    allocated = os.environ.get("SLURM_JOB_NODELIST")
    if cfg.launcher == "srun" and allocated:
        return allocated
    raise UsageError("no nodes: give -w NODESET (with --launcher srun, inside an allocation, "
                     "the default is its nodes)")


def prepare(cfg: PushConfig) -> Tuple[List[str], List[str], launchers_mod.Launcher, List[str]]:
    """Everything that can be checked before anything starts; UsageError otherwise."""
    names = parse_nodeset(nodes_asked(cfg))
    check_sources(cfg)
    if not os.path.isabs(cfg.dest):
        raise UsageError(f"--dest {cfg.dest} must be an absolute path (it is a path on the nodes)")
    if cfg.chains > 1 and cfg.arity > 1:
        raise UsageError("--chains and -a are exclusive: K chains are each a chain")
    order = placement_order(cfg, names)
    launcher = launchers_mod.make_launcher(cfg.launcher, fanout=cfg.fanout,
                                           connect_timeout=cfg.connect_timeout,
                                           ssh_options=cfg.ssh_options)
    return names, order, launcher, remote_argv(cfg, launcher)
