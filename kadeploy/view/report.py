"""The deployment's final report: a table for people, JSON for programs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from kadeploy.core.addresses import format_hostport
from kadeploy.core.states import Verdict
from kadeploy.files import write_json_atomically

REPORT_FORMAT = 1


@dataclass
class NodeReport:
    position: int
    address: str
    hostname: str
    data_port: int
    parent: Optional[int]
    bytes: int
    seconds: Optional[float]
    status: Verdict
    error: Optional[str] = None
    consumer_status: Optional[int] = None
    backend: str = ""
    failed_at: Optional[float] = None   # seconds after the start when the failure was known
    verified: Optional[bool] = None     # every chunk's digest matched (None: not verified)
    repairs: int = 0                    # times re-attached after losing its parent
    steps: List[dict] = field(default_factory=list)   # an install's steps (kadeploy.install)
    content_bytes: Optional[int] = None   # what its consumer got, when the stream was compressed
    decode_seconds: Optional[float] = None   # time it spent decompressing

    @property
    def decode_rate(self) -> Optional[float]:
        """Content bytes per second of decompression on this node."""
        if self.content_bytes and self.decode_seconds:
            return self.content_bytes / self.decode_seconds
        return None

    @property
    def throughput(self) -> Optional[float]:
        """Bytes per second, as the node measured it."""
        if self.seconds and self.seconds > 0:
            return self.bytes / self.seconds
        return None


@dataclass
class Report:
    software: str
    session: Optional[str]
    arity: int
    stream_bytes: int
    seconds: float
    producer_status: Optional[int]
    stream_error: Optional[str]
    backend: str
    rejected: Dict[str, int]      # connections turned away, by reason
    started_at: float = 0.0        # wall clock (epoch seconds) of the start; failed_at counts from it
    pipe_size: int = 0             # relay pipe capacity obtained (0: a copying backend)
    protocol: str = ""
    nodes: List[NodeReport] = field(default_factory=list)
    compression: Optional[str] = None   # what --compress did: codec, bytes, ratio (None: off)

    @property
    def failed(self) -> List[NodeReport]:
        return [n for n in self.nodes if n.status != Verdict.OK]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = REPORT_FORMAT
        for row, node in zip(d["nodes"], self.nodes):
            row["throughput"] = node.throughput
            row["decode_rate"] = node.decode_rate
        d["totals"] = {"nodes": len(self.nodes), "ok": len(self.nodes) - len(self.failed),
                       "failed": len(self.failed)}
        return d

    def write_json(self, path: str) -> None:
        write_json_atomically(path, self.to_dict())

    def table(self) -> str:
        head = ("POS", "PARENT", "NODE", "BYTES", "SECONDS", "MB/S", "VERIFIED", "STATUS")
        rows = [head]
        for n in self.nodes:
            rate = n.throughput
            rows.append((
                str(n.position) if n.position else "-",
                "-" if n.parent is None else ("server" if n.parent == 0 else str(n.parent)),
                (n.hostname + " " if n.hostname else "") + format_hostport(n.address, n.data_port),
                str(n.bytes),
                f"{n.seconds:.2f}" if n.seconds is not None else "-",
                f"{rate / 1e6:.1f}" if rate else "-",
                {True: "yes", False: "NO", None: "-"}[n.verified],
                (n.status if n.status == Verdict.OK else f"FAILED: {n.error or 'unknown'}")
                + (f" (repaired {n.repairs}x)" if n.repairs else ""),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
        ok = len(self.nodes) - len(self.failed)
        rate = self.stream_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines.append(f"{ok} of {len(self.nodes)} node(s) ok; {self.stream_bytes} bytes in "
                     f"{self.seconds:.2f} s ({rate:.1f} MB/s); relay backend {self.backend or '-'}")
        if any(n.steps for n in self.nodes):
            from kadeploy.install.report import steps_table
            lines += steps_table(self.nodes)
        if self.compression:
            rates = [n.decode_rate for n in self.nodes if n.decode_rate]
            lines.append(f"compression {self.compression}" + (
                f"; decompression {min(rates) / 1e6:.0f} to {max(rates) / 1e6:.0f} MB/s per node"
                if rates else ""))
        if self.stream_error:
            lines.append(f"stream failed: {self.stream_error}")
        if self.rejected:
            lines.append("rejected connections: " + ", ".join(
                f"{n} {why}" for why, n in sorted(self.rejected.items())))
        if self.failed:
            lines.append("failed: " + ", ".join(
                (n.hostname or n.address) + f" ({format_hostport(n.address, n.data_port)})"
                for n in self.failed))
        return "\n".join(lines)

