"""What the operator sees while a deployment runs.

On a terminal the server shows a live table (rich) of every node: state, bytes, rate,
ETA and last error; elsewhere (a log file, CI) it prints one summary line every few
seconds. The client shows a one-line bar on a terminal and nothing periodic otherwise
(its closing lines are the original's).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Tuple

from kadeploy.core.states import NodeState

RATE_WINDOW = 5.0  # seconds of samples behind a displayed rate


@dataclass
class RateMeter:
    """Bytes per second over the last few seconds."""
    samples: Deque[Tuple[float, int]] = field(default_factory=collections.deque)

    def add(self, value: int, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, value))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    @property
    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_rate(bps: float) -> str:
    return f"{bps / 1e6:.1f} MB/s"


def eta(done: int, total: Optional[int], rate: float) -> str:
    if not total or rate <= 0 or done >= total:
        return "-"
    s = int((total - done) / rate)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class NodeView:
    """One row of the live table, as the server knows it."""
    position: int
    name: str
    parent: str
    state: NodeState
    bytes: int
    rate: float
    error: str = ""
    step: str = ""     # a node still booting (kadeploy.netboot.progress): its boot step


class ServerProgress:
    """Runs beside the deployment; `snapshot()` gives (header, rows) when called."""

    def __init__(self, snapshot: Callable[[], Tuple[str, List[NodeView]]], *,
                 interval: float, live: Optional[bool] = None, total: Optional[int] = None,
                 log=None) -> None:
        self.snapshot = snapshot
        self.total = total
        self.interval = interval
        self.live = sys.stderr.isatty() if live is None else live
        self.log = log or logging.getLogger("kadeploy.server")
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task) -> None:
        # A broken display must not go unnoticed, nor stop the deployment.
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("progress display stopped: %r", task.exception())

    async def stop(self) -> None:
        """Idempotent; a display that crashed was reported already."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                pass

    async def _run(self) -> None:
        if self.live:
            try:
                import rich  # noqa: F401
            except ImportError:
                self.live = False
        if self.live:
            await self._run_live()
        else:
            while True:
                await asyncio.sleep(self.interval)
                self.log.info("progress: %s", summary_line(*self.snapshot()))

    async def _run_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=sys.stderr)
        with Live(console=console, refresh_per_second=2, transient=True,
                  redirect_stderr=True, redirect_stdout=False) as live:
            try:
                while True:
                    live.update(render_table(*self.snapshot(), total=self.total))
                    await asyncio.sleep(0.5)
            finally:
                live.update(render_table(*self.snapshot(), total=self.total))


def summary_line(header: str, rows: List[NodeView]) -> str:
    counts = collections.Counter(r.state for r in rows)
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    streaming = [r for r in rows if r.state == NodeState.STREAMING]
    slowest = ""
    if streaming:
        s = min(streaming, key=lambda r: r.bytes)
        slowest = f"; slowest {s.name} at {human_bytes(s.bytes)} ({human_rate(s.rate)})"
    failed = [r for r in rows if r.state == NodeState.FAILED]
    bad = f"; failed: {', '.join(r.name for r in failed)}" if failed else ""
    return f"{header}; nodes: {states}{slowest}{bad}{_booting(rows)}"


def _booting(rows: List[NodeView], most: int = 10) -> str:
    booting = [f"{r.name} ({r.step})" for r in rows if r.step]
    more = f", and {len(booting) - most} more" if len(booting) > most else ""
    return f"; booting: {', '.join(booting[:most])}{more}" if booting else ""


def render_table(header: str, rows: List[NodeView], total: Optional[int] = None):
    from rich.table import Table

    table = Table(title=header, title_justify="left", expand=False)
    for col in ("POS", "NODE", "PARENT", "STATE", "RECEIVED", "RATE", "ETA", "LAST ERROR"):
        table.add_column(col, no_wrap=col != "LAST ERROR")
    style = {NodeState.FAILED: "red", NodeState.DONE: "green", NodeState.STREAMING: "cyan"}
    for r in rows:
        state = f"{r.state}: {r.step}" if r.step else f"{r.state}"
        table.add_row(str(r.position or "-"), r.name, r.parent, f"[{style.get(r.state, '')}]{state}",
                      human_bytes(r.bytes), human_rate(r.rate), eta(r.bytes, total, r.rate),
                      r.error or "")
    return table


class ClientBar:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, counters, label: str, *, total: Optional[int] = None,
                 enabled: Optional[bool] = None) -> None:
        self.counters, self.label, self.total = counters, label, total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.meter = RateMeter()

    def tick(self) -> None:
        if not self.enabled:
            return
        done = self.counters[0]
        self.meter.add(done)
        sys.stderr.write(f"\r{self.label}: {human_bytes(done)} at {human_rate(self.meter.rate)}"
                         f"  ETA {eta(done, self.total, self.meter.rate)}\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
