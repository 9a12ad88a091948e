"""A virtual switched cluster built from Linux network namespaces.

Used by the tests, the demo and ``kadeploy bench``: N "nodes", each a network
namespace with one Ethernet port (a veth pair) plugged into one bridge that
lives in its own "switch" namespace, so nothing touches the host's interfaces::

    switch ns:  br0 -- p0 -- p1 -- ... -- p{N-1}
                        |     |              |
    node ns i:        eth0  eth0  ...      eth0   198.18.0.(i+1)/24, fd42:6b64::(i+1)/64

Addresses come from 198.18.0.0/24 (RFC 2544 benchmarking range) and the ULA
prefix fd42:6b64::/64 ("kd").  Each node has ``lo`` up and a default route on
its ``eth0`` so that a broadcast to 255.255.255.255 (server discovery) leaves
through ``eth0`` and reaches every other node.  IPv6 duplicate address
detection is switched off so addresses are usable at once.

``rate`` shapes both directions of each node's link with ``tc tbf`` (egress
of ``eth0`` is node->switch, egress of the switch-side port is switch->node),
like a full-duplex switch port.  ``delay``/``loss`` need ``netem``; when the
kernel lacks ``sch_netem`` a :class:`NetemUnavailable` error is raised before
anything is created.

Names are unique per instance: ``{prefix}-{pid}-{starttime}-{seq}-sw`` and
``...-n{i}``; the creator's pid and start time let :func:`cleanup_stale`
remove what dead runs left behind, without touching live ones.  Interface
names inside the namespaces are short and fixed (``br0``, ``p{i}``, ``eth0``)
because every namespace is private to one instance.

Teardown kills every process started with :meth:`VirtualCluster.popen` (whole
process groups), then any other process still living in the namespaces, then
deletes the namespaces (which destroys the veths and the bridge).  It runs even
when the ``with`` body raised, and is idempotent.

Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from kadeploy.core.states import Word

__all__ = [
    "VClusterError",
    "NetemUnavailable",
    "Node",
    "VirtualCluster",
    "scratch_fs",
    "cleanup_stale",
    "call_in_netns",
    "netns_support",
    "netem_available",
    "parse_rate",
    "IPV4_SUBNET",
    "IPV6_PREFIX",
    "DEFAULT_PREFIX",
    "MAX_NODES",
]

IPV4_SUBNET = "198.18.0.0/24"
IPV6_PREFIX = "fd42:6b64::"          # 0x6b 0x64 = "kd"
IPV6_PLEN = 64
DEFAULT_PREFIX = "kd"
MAX_NODES = 250                      # 198.18.0.1 .. 198.18.0.250
NODE_IF = "eth0"
BRIDGE_IF = "br0"
NETNS_RUN_DIR = "/run/netns"

# Grace period between SIGTERM and SIGKILL at teardown, in seconds.
TERM_GRACE = 1.0

_CLONE_NEWNET = 0x40000000
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_seq = itertools.count()
_seq_lock = threading.Lock()


class VClusterError(RuntimeError):
    """Setting up or tearing down the virtual cluster failed."""


class NetemUnavailable(VClusterError):
    """Delay/loss emulation was asked for but the kernel has no netem qdisc."""


# ---------------------------------------------------------------- helpers

def _proc_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(b")") + 2:].split()
    return int(rest[19])             # field 22, starttime


def _creator_alive(pid: int, start: int) -> bool:
    return _proc_starttime(pid) == start


def _next_tag(prefix: str) -> str:
    with _seq_lock:
        n = next(_seq)
    pid = os.getpid()
    return f"{prefix}-{pid}-{_proc_starttime(pid)}-{n}"


def _check_prefix(prefix: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*", prefix or ""):
        raise ValueError(f"bad prefix {prefix!r}: use letters, digits, '_', '.', '-'")
    return prefix


def _ip_binary() -> str:
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.access(p, os.X_OK)),
        None)
    if ip is None:
        raise VClusterError("the 'ip' command is missing: install iproute2 (apt-get install iproute2)")
    return ip


def _tc_binary() -> str:
    tc = shutil.which("tc") or next(
        (p for p in ("/usr/sbin/tc", "/sbin/tc") if os.access(p, os.X_OK)), None)
    if tc is None:
        raise VClusterError("the 'tc' command is missing: install iproute2 (apt-get install iproute2)")
    return tc


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise VClusterError(f"{what} needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); "
                            f"run as root, e.g. with sudo")


def _run(argv: Sequence[str], input: str | None = None) -> str:
    """Run an iproute2 command, return stdout, raise VClusterError with stderr on failure."""
    p = subprocess.run(argv, input=input, capture_output=True, text=True)
    if p.returncode != 0:
        cmd = " ".join(argv)
        detail = (p.stderr or p.stdout).strip()
        if input:
            detail += "\n--- batch input ---\n" + input
        raise VClusterError(f"{cmd} failed (exit {p.returncode}): {detail}")
    return p.stdout


def _run_many(jobs: list[tuple[list[str], str]]) -> None:
    """Run several batch commands concurrently; raise on the first failure."""
    procs = [(argv, inp, subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
             for argv, inp in jobs]
    errors = []
    for argv, inp, p in procs:
        out, err = p.communicate(inp)
        if p.returncode != 0:
            errors.append(f"{' '.join(argv)} failed (exit {p.returncode}): "
                          f"{(err or out).strip()}\n--- batch input ---\n{inp}")
    if errors:
        raise VClusterError("\n".join(errors))


def _netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):                    # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)
        return
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def call_in_netns(ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in a fresh thread that has joined network namespace ``ns``.

    The calling thread never changes namespace.  Sockets created by ``fn`` stay
    bound to ``ns`` and can be used from any thread afterwards.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(os.path.join(NETNS_RUN_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:              # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns:{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def _pids_in_netns(names: Sequence[str]) -> dict[str, list[int]]:
    """Processes (thread-group leaders) whose network namespace is one of ``names``."""
    wanted: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_RUN_DIR, name))
        except FileNotFoundError:
            continue
        wanted[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in names}
    if not wanted:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:                          # gone, zombie, or kernel thread
            continue
        name = wanted.get((st.st_dev, st.st_ino))
        if name is not None:
            found[name].append(int(entry))
    return found


def _kill_netns_processes(names: Sequence[str], timeout: float = 3.0) -> list[str]:
    """SIGKILL every process living in ``names``; wait until they are gone. Return complaints."""
    deadline = time.monotonic() + timeout
    while True:
        left = {n: p for n, p in _pids_in_netns(names).items() if p}
        if not left:
            return []
        if time.monotonic() > deadline:
            return [f"processes still alive in netns {n}: {p}" for n, p in left.items()]
        for pids in left.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _delete_netns(names: Sequence[str]) -> list[str]:
    names = [n for n in names if os.path.exists(os.path.join(NETNS_RUN_DIR, n))]
    if not names:
        return []
    p = subprocess.run([_ip_binary(), "-force", "-batch", "-"],
                       input="".join(f"netns delete {n}\n" for n in names),
                       capture_output=True, text=True)
    left = [n for n in names if os.path.exists(os.path.join(NETNS_RUN_DIR, n))]
    if left:
        return [f"could not delete netns {', '.join(left)}: {p.stderr.strip()}"]
    return []


_RATE_UNITS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
    "kibps": 8 * 2**10, "mibps": 8 * 2**20, "gibps": 8 * 2**30, "tibps": 8 * 2**40,
}


def parse_rate(rate: str | int | float) -> int:
    """Parse a tc-style rate ("1gbit", "100mbit", "12.5mbps", 8000000) into bits per second.

    As in tc(8), ``bit`` units are bits and ``bps`` units are BYTES per second;
    a bare number is bits per second.
    """
    if isinstance(rate, (int, float)):
        value = float(rate)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", rate)
        if not m or m.group(2).lower() not in _RATE_UNITS | {"": 1}:
            raise ValueError(f"bad rate {rate!r}: expected e.g. '1gbit', '100mbit', '8mbps'")
        value = float(m.group(1)) * _RATE_UNITS.get(m.group(2).lower(), 1)
    if value < 8000:
        raise ValueError(f"rate {rate!r} is below 8 kbit/s")
    return int(value)


def _tbf_params(bits_per_s: int) -> str:
    """tbf arguments for a switch-port-like link.

    burst: at least 128 KiB so that a 64 KiB GSO packet passes without being
    split, and at least 4 ms worth of data so high rates are not limited by
    timer granularity.  limit (queue): burst plus 20 ms worth of data plus one
    GSO packet, a modest switch-port buffer.
    """
    bytes_per_s = bits_per_s // 8
    burst = max(128 * 1024, bytes_per_s // 250)
    limit = burst + bytes_per_s // 50 + 64 * 1024
    return f"tbf rate {bits_per_s}bit burst {burst} limit {limit}"


def _netem_params(delay: str | float | None, loss: str | float | None) -> str:
    parts = ["netem"]
    if delay is not None:
        parts.append(f"delay {delay:g}s" if isinstance(delay, (int, float)) else f"delay {delay}")
    if loss is not None:
        parts.append(f"loss {loss:g}%" if isinstance(loss, (int, float)) else f"loss {loss}")
    return " ".join(parts)


# ------------------------------------------------------------ capability probes

_support_cache: dict[str, Any] = {}


def netns_support() -> str | None:
    """None if this process can build virtual clusters, else the reason why not."""
    if "netns" not in _support_cache:
        reason = None
        try:
            _require_root("a virtual cluster")
            _ip_binary()
            _tc_binary()
            probe = _next_tag(DEFAULT_PREFIX) + "-probe"
            try:
                _run([_ip_binary(), "netns", "add", probe])
            finally:
                _delete_netns([probe])
        except VClusterError as e:
            reason = str(e)
        _support_cache["netns"] = reason
    return _support_cache["netns"]


def netem_available() -> tuple[bool, str]:
    """Whether the kernel has the netem qdisc; (available, tc's message). Needs root."""
    if "netem" not in _support_cache:
        _require_root("probing netem")
        probe = _next_tag(DEFAULT_PREFIX) + "-probe"
        try:
            _run([_ip_binary(), "netns", "add", probe])
            p = subprocess.run([_tc_binary(), "-n", probe, "qdisc", "add", "dev", "lo", "root",
                                "netem", "delay", "1ms"], capture_output=True, text=True)
            _support_cache["netem"] = (p.returncode == 0, (p.stderr or p.stdout).strip())
        finally:
            _delete_netns([probe])
    return _support_cache["netem"]


# ----------------------------------------------------------------- the cluster

@dataclass(frozen=True)
class Node:
    """One node of a :class:`VirtualCluster`."""

    index: int
    ns: str                   # network namespace name (for `ip netns exec`)
    addr: str                 # IPv4 address on eth0
    addr6: str | None         # IPv6 ULA on eth0, None if ipv6=False
    ifname: str               # interface name inside the node namespace
    port: str                 # switch-side veth name (inside the switch namespace)
    cluster: "VirtualCluster" = field(repr=False, compare=False)

    def run(self, argv: Sequence[str] | str, **kw: Any) -> subprocess.CompletedProcess:
        return self.cluster.run(self.index, argv, **kw)

    def popen(self, argv: Sequence[str] | str, **kw: Any) -> subprocess.Popen:
        return self.cluster.popen(self.index, argv, **kw)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call_in_netns(self.ns, fn, *args, **kwargs)


class ClusterState(Word):
    """A VirtualCluster's life: new -> up -> closed."""
    NEW = "new"
    UP = "up"
    CLOSED = "closed"


class VirtualCluster:
    """N network namespaces on one virtual switch.  Use as a context manager.

    ``rate``: tc rate ("1gbit", "100mbit", bits/s as int) applied to both
    directions of every node's link.  ``delay`` ("5ms" or seconds) and ``loss``
    (percent) need netem, added on both directions as well, so node-to-node
    one-way latency is twice ``delay``.  ``mtu`` sets every link's MTU.
    """

    def __init__(self, n_nodes: int, *, prefix: str | None = None, rate: str | int | None = None,
                 delay: str | float | None = None, loss: str | float | None = None,
                 ipv6: bool = True, mtu: int | None = None):
        if not 1 <= n_nodes <= MAX_NODES:
            raise ValueError(f"n_nodes must be between 1 and {MAX_NODES}, not {n_nodes}")
        self.n_nodes = n_nodes
        self.prefix = _check_prefix(prefix or DEFAULT_PREFIX)
        self.rate_bits = parse_rate(rate) if rate is not None else None
        self.delay = delay
        self.loss = loss
        self.ipv6 = ipv6
        self.mtu = mtu
        self.tag = _next_tag(self.prefix)
        self.switch_ns = f"{self.tag}-sw"
        self.nodes = [
            Node(index=i, ns=f"{self.tag}-n{i}", addr=f"198.18.0.{i + 1}",
                 addr6=f"{IPV6_PREFIX}{i + 1:x}" if ipv6 else None,
                 ifname=NODE_IF, port=f"p{i}", cluster=self)
            for i in range(n_nodes)
        ]
        self._procs: list[subprocess.Popen] = []
        self._procs_lock = threading.Lock()
        self._state = ClusterState.NEW

    # ---- public API

    def node(self, i: int) -> Node:
        return self.nodes[i]

    def __len__(self) -> int:
        return self.n_nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    @property
    def namespaces(self) -> list[str]:
        return [self.switch_ns] + [n.ns for n in self.nodes]

    def _netns_exec(self, i: int, argv: Sequence[str] | str) -> list[str]:
        if self._state != ClusterState.UP:
            raise VClusterError(f"virtual cluster {self.tag} is {self._state}, not up")
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        return [_ip_binary(), "netns", "exec", self.nodes[i].ns, *argv]

    def run(self, i: int, argv: Sequence[str] | str, **kw: Any) -> subprocess.CompletedProcess:
        """``subprocess.run(argv, **kw)`` inside node i.  A string argv runs with ``sh -c``."""
        return subprocess.run(self._netns_exec(i, argv), **kw)

    def popen(self, i: int, argv: Sequence[str] | str, **kw: Any) -> subprocess.Popen:
        """``subprocess.Popen(argv, **kw)`` inside node i, in a new session (its own
        process group); the process group is killed at teardown."""
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self._netns_exec(i, argv), **kw)
        with self._procs_lock:
            self._procs.append(p)
        return p

    def call(self, i: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Python callable in a thread inside node i's namespace (see call_in_netns)."""
        return call_in_netns(self.nodes[i].ns, fn, *args, **kwargs)

    # ---- lifecycle

    def __enter__(self) -> "VirtualCluster":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except VClusterError as e:
            if exc_type is None:
                raise
            warnings.warn(f"virtual cluster teardown: {e}", RuntimeWarning, stacklevel=2)

    def start(self) -> None:
        if self._state != ClusterState.NEW:
            raise VClusterError(f"virtual cluster {self.tag} already {self._state}")
        _require_root("a virtual cluster")
        ip, tc = _ip_binary(), _tc_binary()
        if self.delay is not None or self.loss is not None:
            ok, msg = netem_available()
            if not ok:
                raise NetemUnavailable(
                    "delay/loss emulation needs the sch_netem kernel module (CONFIG_NET_SCH_NETEM), "
                    f"which this kernel does not have (tc: {msg or 'netem qdisc unknown'}); "
                    "load it with 'modprobe sch_netem' or run without delay/loss")
        if self.ipv6 and not os.path.isdir("/proc/sys/net/ipv6"):
            raise VClusterError("ipv6=True but this kernel has no IPv6 support")
        self._state = ClusterState.UP
        atexit.register(self.close)
        try:
            self._build(ip, tc)
        except BaseException:
            try:
                self.close()
            except VClusterError as e:          # keep the original error visible
                warnings.warn(f"virtual cluster teardown: {e}", RuntimeWarning, stacklevel=2)
            raise

    def _build(self, ip: str, tc: str) -> None:
        _run([ip, "-batch", "-"], input="".join(f"netns add {ns}\n" for ns in self.namespaces))

        have6 = os.path.isdir("/proc/sys/net/ipv6")
        if have6:
            # The switch only bridges frames: no IPv6 on its ports (no DAD, no RS noise).
            call_in_netns(self.switch_ns, _write_sysctls, {
                "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
            if self.ipv6:
                node_sysctls = {"net.ipv6.conf.all.accept_dad": "0",
                                "net.ipv6.conf.default.accept_dad": "0"}
            else:
                node_sysctls = {"net.ipv6.conf.all.disable_ipv6": "1",
                                "net.ipv6.conf.default.disable_ipv6": "1"}
            for n in self.nodes:
                call_in_netns(n.ns, _write_sysctls, node_sysctls)

        mtu = f" mtu {self.mtu}" if self.mtu else ""
        sw = [f"link add {BRIDGE_IF}{mtu} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
              f"link set {BRIDGE_IF} up"]
        for n in self.nodes:
            mac = f"02:6b:64:00:{n.index >> 8:02x}:{n.index & 0xff:02x}"
            sw += [f"link add {n.port}{mtu} type veth peer name {n.ifname}{mtu} address {mac} netns {n.ns}",
                   f"link set {n.port} master {BRIDGE_IF}",
                   f"link set {n.port} up"]
        _run([ip, "-n", self.switch_ns, "-batch", "-"], input="\n".join(sw) + "\n")

        jobs = []
        for n in self.nodes:
            cmds = ["link set lo up",
                    f"link set {n.ifname} up",
                    f"addr add {n.addr}/24 brd + dev {n.ifname}",
                    f"route add default dev {n.ifname}"]
            if self.ipv6:
                cmds += [f"addr add {n.addr6}/{IPV6_PLEN} dev {n.ifname} nodad",
                         f"route add ::/0 dev {n.ifname}"]
            jobs.append(([ip, "-n", n.ns, "-batch", "-"], "\n".join(cmds) + "\n"))
        _run_many(jobs)

        qdiscs = []
        netem = None
        if self.delay is not None or self.loss is not None:
            netem = _netem_params(self.delay, self.loss)
        tbf = _tbf_params(self.rate_bits) if self.rate_bits else None
        if netem and tbf:
            qdiscs = [f"root handle 1: {netem}", f"parent 1:1 handle 10: {tbf}"]
        elif netem:
            qdiscs = [f"root handle 1: {netem}"]
        elif tbf:
            qdiscs = [f"root handle 1: {tbf}"]
        if qdiscs:
            jobs = [([tc, "-n", self.switch_ns, "-batch", "-"],
                     "".join(f"qdisc add dev {n.port} {q}\n" for n in self.nodes for q in qdiscs))]
            jobs += [([tc, "-n", n.ns, "-batch", "-"],
                      "".join(f"qdisc add dev {n.ifname} {q}\n" for q in qdiscs))
                     for n in self.nodes]
            _run_many(jobs)

    def close(self) -> None:
        """Kill every process, delete every namespace.  Idempotent; raises
        VClusterError (after doing all it can) if something could not be removed."""
        if self._state == ClusterState.CLOSED:
            return
        self._state = ClusterState.CLOSED
        atexit.unregister(self.close)
        problems: list[str] = []

        with self._procs_lock:
            procs, self._procs = self._procs, []
        live = [p for p in procs if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)     # start_new_session: pgid == pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    p.send_signal(sig)        # in case the caller overrode start_new_session
            deadline = time.monotonic() + TERM_GRACE
            for p in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))
            live = [p for p in live if p.poll() is None]
            if not live:
                break
        for p in live:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                problems.append(f"process {p.pid} ({p.args!r}) survived SIGKILL")

        ours = sorted(set(self.namespaces) | {n for n in _netns_list() if n.startswith(self.tag + "-")})
        problems += _kill_netns_processes(ours)
        problems += _delete_netns(ours)
        if problems:
            raise VClusterError(f"teardown of virtual cluster {self.tag}: " + "; ".join(problems))

    def __repr__(self) -> str:
        return f"<VirtualCluster {self.tag} n_nodes={self.n_nodes} {self._state}>"


# ------------------------------------------------------------------- scratch fs

def _mount_tmpfs(path: str, options: str) -> None:
    if _libc.mount(b"kd-scratch", os.fsencode(path), b"tmpfs", 0, options.encode()) != 0:
        e = ctypes.get_errno()
        hint = " (mounting needs root)" if e == errno.EPERM else ""
        raise VClusterError(f"mount -t tmpfs -o {options} {path}: {os.strerror(e)}{hint}")


def _umount(path: str) -> None:
    p = os.fsencode(path)
    if _libc.umount2(p, 0) == 0:
        return
    e = ctypes.get_errno()
    if e == errno.EBUSY and _libc.umount2(p, _MNT_DETACH) == 0:
        return                                 # still in use: detach lazily, it goes when freed
    raise OSError(e, f"umount {path}: {os.strerror(e)}")


@contextlib.contextmanager
def scratch_fs(size: str = "1g", *, prefix: str | None = None, dir: str | None = None,
               mode: int = 0o755) -> Iterator[Path]:
    """A private tmpfs mounted on a fresh temporary directory; unmounted and removed afterwards.

    ``size`` is tmpfs's ``size=`` option ("512m", "2g", "50%"); memory is used
    only as files are written.  Needs root.
    """
    prefix = _check_prefix(prefix or DEFAULT_PREFIX)
    if not re.fullmatch(r"[0-9]+[kmgKMG%]?", str(size)):
        raise ValueError(f"bad tmpfs size {size!r}: expected e.g. '512m', '2g', '50%'")
    pid = os.getpid()
    path = tempfile.mkdtemp(prefix=f"{prefix}-scratch-{pid}-{_proc_starttime(pid)}-", dir=dir)
    try:
        _mount_tmpfs(path, f"size={size},mode={mode:o}")
        try:
            yield Path(path)
        finally:
            _umount(path)
    finally:
        os.rmdir(path)


# ---------------------------------------------------------------- stale cleanup

def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, scratch_dir: str | None = None) -> list[str]:
    """Remove namespaces and scratch tmpfs mounts left by dead runs using ``prefix``.

    A leftover is stale when the process that created it (pid and start time,
    both in its name) no longer exists; live runs are never touched.  Returns
    what was removed.  Needs root for namespaces and mounts.
    """
    prefix = _check_prefix(prefix)
    removed: list[str] = []
    pat = re.compile(re.escape(prefix) + r"-(\d+)-(\d+)-\d+-(?:sw|n\d+|probe)")
    stale = []
    for name in _netns_list():
        m = pat.fullmatch(name)
        if m and not _creator_alive(int(m.group(1)), int(m.group(2))):
            stale.append(name)
    if stale:
        problems = _kill_netns_processes(stale) + _delete_netns(stale)
        if problems:
            warnings.warn("cleanup_stale: " + "; ".join(problems), RuntimeWarning, stacklevel=2)
        removed += [f"netns {n}" for n in stale if n not in _netns_list()]

    base = scratch_dir or tempfile.gettempdir()
    spat = re.compile(re.escape(prefix) + r"-scratch-(\d+)-(\d+)-.+")
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        m = spat.fullmatch(entry)
        if not m or _creator_alive(int(m.group(1)), int(m.group(2))):
            continue
        path = os.path.join(base, entry)
        try:
            for _ in range(8):                   # stacked mounts, if any
                if not os.path.ismount(path):
                    break
                _umount(path)
            os.rmdir(path)        # never rm -r: an unmounted scratch dir is empty
            removed.append(f"scratch {path}")
        except OSError as e:
            warnings.warn(f"cleanup_stale: {path}: {e}", RuntimeWarning, stacklevel=2)
    return removed
