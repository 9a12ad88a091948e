"""The command lines of each method, for one experiment on nodes 0..n-1.

Node 0 sends, nodes 1..n-1 receive. Every method moves the same data, made the same
way (``head -c SIZE /dev/zero``), into the same kind of consumer (a process reading
a pipe with a 128 KiB buffer and discarding it):

- ``kadeploy``: the real ka-d-server ``--synthetic`` and ka-d-client ``--discard``;
- ``diy``:      a do-it-yourself chain, socat into tee into the next socat;
- ``star``:     the sender opens one TCP connection per receiver (benchlib.star);
- ``udpcast``:  multicast with udp-sender / udp-receiver (Debian package udpcast).

The baselines' consumer is ``dd bs=128K of=/dev/null``, whose closing line gives the
byte count, so that their copies are checked too (kadeploy checks its own).
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from kadeploy import defaults
from kadeploy.data.synthetic import synthetic_producer

METHODS = ("kadeploy", "diy", "star", "udpcast")
# Which side starts first (the clock runs from the start of the other side):
# receivers-first, the receivers once listening, then the sender, timed from the
# sender's start; sender-first, as a deployment runs (a server waits, then its nodes
# boot), the sender once listening, then the receivers, timed from their start.
STARTS = ("receivers-first", "sender-first")
SENDER_FIRST = {"kadeploy", "diy"}   # the star and udpcast senders need their receivers up
# Debian packages each baseline needs, and the command that proves it is there.
NEEDS = {"diy": ("socat", "socat"), "star": ("socat", "socat"),
         "udpcast": ("udp-sender", "udpcast")}
BASE_PORT = 40764           # the baselines'; kadeploy's clients listen on defaults.DATA_PORT
SOCAT_BUFFER = 128 * 1024   # socat's default is 8 KiB; an admin would raise it
SERVER_ADDR = "198.18.0.1"
COUNT_CONSUMER = "dd bs=128K of=/dev/null"
_DD_BYTES = re.compile(rb"^(\d+) bytes", re.M)


@dataclass(frozen=True)
class Experiment:
    method: str
    n: int                         # nodes, server included
    size: int                      # bytes
    arity: int = 1
    buffer_size: int = defaults.BUFFER_SIZE
    backend: str = "auto"
    repeat: int = 1
    integrity: bool = True         # kadeploy's digests and repair window (off: --no-verify --no-repair)
    compress: str = "none"         # kadeploy's --compress
    source: Optional[str] = None   # a directory streamed as tar (None: `size` synthetic zero bytes)
    start: str = "receivers-first"   # one of STARTS

    @property
    def receivers(self) -> int:
        return self.n - 1

    def label(self) -> str:
        if self.method == "kadeploy":
            return (f"kadeploy N={self.n} a={self.arity} buf={self.buffer_size >> 10}K "
                    f"{self.backend}{'' if self.integrity else ' no-verify'}"
                    f"{'' if self.compress == 'none' else ' ' + self.compress}{self._start()} #{self.repeat}")
        return f"{self.method} N={self.n}{self._start()} #{self.repeat}"

    @property
    def sender_first(self) -> bool:
        return self.start == "sender-first"

    def _start(self) -> str:
        return " " + self.start if self.sender_first else ""


@dataclass
class Plan:
    """Shell commands per node; node 0's starts last, once the others listen, or first
    (Experiment.start)."""
    commands: Dict[int, str]
    listen_ports: Dict[int, int] = field(default_factory=dict)
    sender_port: Optional[int] = None       # node 0 listens there when it starts first
    report_file: Optional[str] = None       # kadeploy's JSON report
    check_bytes: bool = False               # the receivers' logs end with dd's count


def addr(i: int) -> str:
    return f"198.18.0.{i + 1}"


def producer(e: Experiment) -> str:
    """The stream of an experiment, the same for every method: a tar of the source
    directory, or synthetic zeros."""
    if e.source:
        return f"tar --create --numeric-owner --directory {shlex.quote(e.source)} ."
    return synthetic_producer(e.size)


def kadeploy_plan(e: Experiment, workdir: str, rate_bits: Optional[int]) -> Plan:
    kd = [sys.executable, "-m", "kadeploy"]
    common = ["--relay", e.backend, "--buffer-size", str(e.buffer_size), "-q"]
    report = f"{workdir}/report.json"
    cmds = {0: shlex.join(kd + ["server", "-n", str(e.receivers), "-a", str(e.arity),
                                *(["-e", producer(e)] if e.source else ["--synthetic", str(e.size)]),
                                "--report", report, "--wait-timeout", "120", *common,
                                *([] if e.compress == "none" else ["--compress", e.compress]),
                                *([] if e.integrity else ["--no-verify", "--no-repair"])])}
    for i in range(1, e.n):
        cmds[i] = shlex.join(kd + ["client", "-h", SERVER_ADDR, "--discard", *common])
    return Plan(cmds, {i: defaults.DATA_PORT for i in range(1, e.n)}, report_file=report,
                sender_port=defaults.CONTROL_PORT)


def _socat_listen(port: int) -> str:
    return f"socat -u -b {SOCAT_BUFFER} TCP-LISTEN:{port},reuseaddr STDOUT"


def _socat_send(i: int, port: int) -> str:
    return f"socat -u -b {SOCAT_BUFFER} STDIN TCP:{addr(i)}:{port},retry=12000,interval=0.005"


def diy_plan(e: Experiment, workdir: str, rate_bits: Optional[int]) -> Plan:
    port = BASE_PORT
    cmds = {0: f"{producer(e)} | {_socat_send(1, port)}"}
    for i in range(1, e.n):
        if i == e.n - 1:
            cmds[i] = f"{_socat_listen(port)} | {COUNT_CONSUMER}"
        else:
            fifo = shlex.quote(f"{workdir}/fifo{i}")
            # tee feeds the local consumer through a FIFO and the next node through stdout.
            cmds[i] = (f"rm -f {fifo}; mkfifo {fifo}; {COUNT_CONSUMER} <{fifo} & "
                       f"{_socat_listen(port)} | tee {fifo} | {_socat_send(i + 1, port)}; wait")
    return Plan(cmds, {i: port for i in range(1, e.n)}, check_bytes=True)


def star_plan(e: Experiment, workdir: str, rate_bits: Optional[int]) -> Plan:
    port = BASE_PORT
    targets = " ".join(f"{addr(i)}:{port}" for i in range(1, e.n))
    cmds = {0: f"{producer(e)} | {shlex.quote(sys.executable)} "
               f"-m kadeploy.lab.benchlib.star {targets}"}
    for i in range(1, e.n):
        cmds[i] = f"{_socat_listen(port)} | {COUNT_CONSUMER}"
    return Plan(cmds, {i: port for i in range(1, e.n)}, check_bytes=True)


def udpcast_plan(e: Experiment, workdir: str, rate_bits: Optional[int]) -> Plan:
    # Without a cap udp-sender overruns the shaped port's queue and spends its time on
    # retransmissions; 95 % of the link rate is its best case here.
    cap = f" --max-bitrate {int(rate_bits * 0.95 / 1e6)}m" if rate_bits else ""
    cmds = {0: (f"{producer(e)} | udp-sender --interface eth0 --nokbd "
                f"--min-receivers {e.receivers} --full-duplex{cap}")}
    for i in range(1, e.n):
        cmds[i] = f"udp-receiver --interface eth0 --nokbd | {COUNT_CONSUMER}"
    return Plan(cmds, check_bytes=True)


PLANNERS = {"kadeploy": kadeploy_plan, "diy": diy_plan, "star": star_plan,
            "udpcast": udpcast_plan}


def plan(e: Experiment, workdir: str, rate_bits: Optional[int]) -> Plan:
    return PLANNERS[e.method](e, workdir, rate_bits)


def counted_bytes(log: bytes) -> Optional[int]:
    """The byte count of dd's closing lines, or None."""
    found: List[bytes] = _DD_BYTES.findall(log)
    return int(found[-1]) if found else None

