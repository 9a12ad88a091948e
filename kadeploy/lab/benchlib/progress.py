"""A progress display on stderr: a rich progress bar when rich is installed and
stderr is a terminal, else one plain line per experiment."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, plain: bool = False) -> None:
        self.total = total
        self.done = 0
        self._rich = None
        if not plain and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import Progress as RP
            except ImportError:
                pass
            else:
                self._rich = RP(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True))
                self._task = self._rich.add_task("bench", total=total)

    def __enter__(self) -> "Progress":
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()

    def starting(self, label: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, description=label)

    def finished(self, label: str, row: dict) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {label}: {summary_line(row)}"
        if self._rich is not None:
            self._rich.console.print(line, highlight=False, markup=False)
            self._rich.advance(self._task)
        else:
            print(f"bench: {line}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(text, highlight=False, markup=False)
        else:
            print(f"bench: {text}", file=sys.stderr, flush=True)


def summary_line(row: dict) -> str:
    if not row["ok"]:
        return f"FAILED: {row['error']}"
    parts = [f"wall {row['wall_s']:.2f} s"]
    if row.get("stream_s"):
        parts.append(f"stream {row['stream_s']:.2f} s")
    if row.get("link_fraction"):
        parts.append(f"{100 * row['link_fraction']:.1f}% of link")
    if row.get("cpu_per_gb_client") is not None:
        parts.append(f"CPU {row['cpu_per_gb_client']:.2f} s/GB per receiver, "
                     f"{row['cpu_per_gb_server']:.2f} sender")
    return ", ".join(parts)
