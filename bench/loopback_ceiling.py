"""One node on loopback against iperf3's single stream, in the same run (issue 13):
how close kadeploy's data path comes to what the kernel's TCP can carry here.

    .venv/bin/python bench/loopback_ceiling.py                 # 4 GiB, three rounds
    .venv/bin/python bench/loopback_ceiling.py --size-mib 64 --rounds 1 --out /tmp/l.csv

Each round runs, interleaved: iperf3 (-n SIZE, one stream; the receiver's rate), then one
ka-d-server --synthetic SIZE and one ka-d-client --discard with the defaults (digests
and repair window), with --no-repair, with --no-verify, and with --no-verify
--no-repair. A kadeploy rate is the node's bytes over the node's stream time (its own
report), and beside it the wall clock from starting the server to its exit.
Targets: defaults >= 0.7 x iperf3, --no-verify >= 0.85 x, and integrity and repair
together cost <= 10 % of the same run without them.
Run it on a quiet machine (no tests, builds or other benchmarks).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from deploy import Deployment, free_port, load_report  # noqa: E402
from kadeploy.lab.benchlib import bytecode  # noqa: E402
from tables import ceiling_markdown, record  # noqa: E402

CONFIGS = {
    "defaults": [],
    "no-repair": ["--no-repair"],
    "no-verify": ["--no-verify"],
    "no-verify-no-repair": ["--no-verify", "--no-repair"],
}
FIELDS = ["round", "what", "bytes", "mb_per_s", "wall_s", "backend"]


def iperf3(size: int, timeout: float, tries: int = 3) -> dict:
    """iperf3's single stream of `size` bytes: a fresh one-shot server each try, the
    client started once the server says it listens; a run whose JSON lacks the
    receiver's sum (iperf3 can exit 0 so) is tried again, then reported."""
    why = ""
    for _ in range(tries):
        port = free_port()
        server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port), "--forceflush"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            head = [server.stdout.readline() for _ in range(2)]   # a rule, then "Server listening on"
            if not any("listening" in line for line in head):
                why = f"its server did not start: {''.join(head).strip()}"
                continue
            p = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", str(size), "-J"],
                               capture_output=True, text=True, timeout=timeout)
            try:
                out = json.loads(p.stdout)
                received = out["end"]["sum_received"]
            except (ValueError, KeyError):
                why = (out.get("error") if isinstance(out, dict) else None) or (p.stdout + p.stderr)[-300:]
                continue
            return dict(what="iperf3", bytes=size, mb_per_s=round(received["bits_per_second"] / 8 / 1e6, 1),
                        wall_s=round(received["seconds"], 3), backend="")
        finally:
            server.kill()
            server.wait()
    raise SystemExit(f"iperf3 failed {tries} times: {why}")


def kadeploy(name: str, options, size: int, timeout: float) -> dict:
    logdir = tempfile.mkdtemp(prefix="kd-ceiling-")
    dep = Deployment(logdir)
    try:
        report = os.path.join(logdir, "report.json")
        started = time.monotonic()
        server = dep.server("-n", "1", "--synthetic", str(size), "--report", report, *options)
        client = dep.client("-h", "127.0.0.1", "-P", str(free_port()), "--discard")
        codes = [client.wait(timeout), server.wait(timeout)]
        wall = time.monotonic() - started
        if codes != [0, 0]:
            raise SystemExit(f"{name}: exit {codes}\n{server.err[-1500:]}{client.err[-1500:]}")
        node = load_report(report)["nodes"][0]
        return dict(what=name, bytes=node["bytes"], mb_per_s=round(node["bytes"] / node["seconds"] / 1e6, 1),
                    wall_s=round(wall, 3), backend=node["backend"])
    finally:
        dep.close()
        shutil.rmtree(logdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=os.path.join(HERE, "loopback_ceiling.csv"))
    args = ap.parse_args()
    bytecode.as_installed()
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed (Debian: apt-get install iperf3)")
    size = args.size_mib << 20
    rows = []
    for rnd in range(1, args.rounds + 1):
        for row in [iperf3(size, args.timeout)] + [kadeploy(n, o, size, args.timeout) for n, o in CONFIGS.items()]:
            row["round"] = rnd
            rows.append(row)
            print(f"#{rnd} {row['what']}: {row['mb_per_s']} MB/s, {row['wall_s']} s", flush=True)
    record(args.out, FIELDS, rows, f"{args.size_mib} MiB per run", ceiling_markdown)


if __name__ == "__main__":
    main()
