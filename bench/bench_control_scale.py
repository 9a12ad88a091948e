"""One server, 1,000 to 10,000 protocol-level clients: time to register, time to
place, time to the final report, and the server's memory per node.

Each size runs one real ka-d-server process (chain, a 1 MB stream, a --hosts list
naming every client by the loopback address it connects from) against N lightweight clients in one
asyncio process (tests/fakeclients.py's protocol: Hello, Progress every second, the
server's children take the stream, Done). Growth is near linear when the last
column (time to place per node, relative to the smallest size) stays near 1.

    .venv/bin/python bench/bench_control_scale.py                # 1k, 2k, 5k, 10k
    .venv/bin/python bench/bench_control_scale.py --sizes 200,400 --out /tmp/x.csv

Run it on a quiet machine: it loads both cores for a few minutes at 10k.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from deploy import Deployment  # noqa: E402
from tables import plain_markdown  # noqa: E402
from fakeclients import _drain_from, _heartbeat, _next_but_pings  # noqa: E402

from kadeploy.control.netio import ControlChannel  # noqa: E402
from kadeploy.core import protocol as P  # noqa: E402

CONNECTING_AT_ONCE = 512     # nodes booting or being launched, not a SYN flood


@dataclass
class Timing:
    welcomed: float = 0.0
    placed: float = 0.0
    error: Optional[str] = None


def loopback(i: int) -> str:
    """Client i's own source address: --hosts matches the address a connection comes
    from (any of 127/8 is this machine), not the host name a client claims."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


async def _open_from(source: str, host: str, port: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_connection(host, port, local_addr=(source, 0))
        except ConnectionRefusedError:   # the server is not listening yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def one_client(host: str, port: int, i: int, gate: asyncio.Semaphore, t: Timing) -> None:
    async with gate:
        reader, writer = await _open_from(loopback(i), host, port)
        ch = ControlChannel(reader, writer, P.CLIENT)
        await ch.send(P.Hello(software="bench", hostname=f"node{i:05}", data_port=20000 + i))
        welcome = await ch.recv()
        t.welcomed = time.monotonic()
    beat = None
    try:
        place = await _next_but_pings(ch)
        t.placed = time.monotonic()
        if not isinstance(place, P.Place):
            t.error = f"got {place!r}"
            return
        progress = type("Progress", (), {"received": 0})()
        beat = asyncio.ensure_future(_heartbeat(ch, progress))
        if place.depth == 1:     # the server's child takes the real stream
            progress.received = await _drain_from(place, welcome.node_id)
        while not isinstance(msg := await _next_but_pings(ch), P.End):
            pass
        await ch.send(P.Done(ok=True, bytes=msg.bytes, seconds=0.0, backend="bench"))
    except Exception as e:  # recorded: the run is invalid then
        t.error = f"{type(e).__name__}: {e}"
    finally:
        if beat is not None:
            beat.cancel()
        ch.close()


def peak_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_size(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="kdp-bench-") as tmp:
        hosts = os.path.join(tmp, "hosts")
        with open(hosts, "w") as f:
            f.write("".join(f"{loopback(i)}\n" for i in range(n)))
        dep = Deployment(tmp)
        try:
            server = dep.server("--hosts", hosts, "-e", "head -c 1000000 /dev/zero", "-q",
                                "--max-connections", str(n + 256), "--stall-timeout", "60",
                                "--connect-timeout", "120")
            peak = [0]
            done = threading.Event()

            def watch() -> None:       # VmHWM is gone once the process has exited
                while not done.is_set():
                    peak[0] = max(peak[0], peak_rss_kib(server.popen.pid))
                    time.sleep(0.2)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            timings = [Timing() for _ in range(n)]
            started = time.monotonic()

            async def all_clients() -> None:
                gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
                await asyncio.gather(*(one_client("127.0.0.1", int(dep.ports[1]), i, gate, timings[i])
                                       for i in range(n)))

            asyncio.run(all_clients())
            status = server.wait(600)
            ended = time.monotonic()
            done.set()
            watcher.join()
        finally:
            dep.close()
    errors = [t.error for t in timings if t.error]
    if status != 0 or errors:
        raise SystemExit(f"N={n}: server exited {status}; {len(errors)} client error(s): {errors[:3]}")
    last_welcome = max(t.welcomed for t in timings)
    # From the first registration: the server's own start-up is not the control plane's.
    return {"nodes": n, "register_s": round(last_welcome - min(t.welcomed for t in timings), 3),
            "place_s": round(max(t.placed for t in timings) - last_welcome, 3),
            "total_s": round(ended - started, 3), "server_peak_rss_kib": peak[0]}


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,2000,5000,10000")
    ap.add_argument("--out", default=os.path.join(HERE, "control_scale.csv"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(sizes) + 512
    if hard < need:
        raise SystemExit(f"needs {need} open files, the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))   # the server inherits it
    rows = [run_size(n) for n in sizes]
    base = rows[0]
    for r in rows:
        r["place_us_per_node"] = round(1e6 * r["place_s"] / r["nodes"], 1)
        r["register_us_per_node"] = round(1e6 * r["register_s"] / r["nodes"], 1)
        # Memory one more node costs, against the smallest size (the interpreter and
        # the buffers are in the base).
        r["kib_per_extra_node"] = (round((r["server_peak_rss_kib"] - base["server_peak_rss_kib"])
                                         / (r["nodes"] - base["nodes"]), 2) if r is not base else "")
        r["place_per_node_vs_smallest"] = round(
            (r["place_s"] / r["nodes"]) / max(base["place_s"] / base["nodes"], 1e-9), 2)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    print("  ".join(cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(len(c)) for c in cols))
    print(f"written to {args.out}")
    print("\nFor bench/RESULTS.md (also: .venv/bin/python bench/tables.py bench/control_scale.csv):\n")
    print(plain_markdown([{k: str(v) for k, v in r.items()} for r in rows]))


if __name__ == "__main__":
    main()
