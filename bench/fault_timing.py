"""What a repair costs in time (issue 13): a chain of 8 nodes on a rate-limited
virtual cluster, without a fault, with its middle node killed at 40 % of the stream,
and with three nodes killed there; interleaved, in the same run.

    .venv/bin/python bench/fault_timing.py                      # 200 Mbit/s, 256 MiB, three rounds
    .venv/bin/python bench/fault_timing.py --size-mib 16 --rounds 1 --out /tmp/f.csv

The fault lands when the producer has written 40 % of the stream (its copy in a tmpfs);
kill is SIGKILL of the node's client, so the loss is seen at once (a frozen node would
add the stall timeout). rest_s is, in the fault-free run, the time from the 40 % point to
the last node's exit; from_fault_s, in a fault run, from the kill to the last survivor's
exit. Target: from_fault_s <= 1.15 x rest_s (the same round's) + the stall timeout.
Every survivor must be reported verified by the server (its digests) or the run fails.
Needs root (network namespaces); run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))
from deploy import Deployment, load_report  # noqa: E402
from tables import fault_markdown, record  # noqa: E402

from kadeploy.lab import vcluster as vc  # noqa: E402
from kadeploy.lab.benchlib import bytecode  # noqa: E402

NODES = 8
STALL = 3.0
SCENARIOS = {"none": (), "one": (4,), "three": (2, 4, 6)}   # victims by chain position
FIELDS = ["round", "scenario", "victims", "bytes", "fault_at_s", "end_s", "rest_s", "from_fault_s",
          "target_s", "survivors_verified"]


def run(scenario: str, size: int, rate: str, timeout: float) -> dict:
    victims = SCENARIOS[scenario]
    work = tempfile.mkdtemp(prefix="kd-faultbench-", dir="/dev/shm")
    try:
        with vc.VirtualCluster(NODES + 1, rate=rate) as cluster:
            dep = Deployment(work, loopback=False,
                             wrap=lambda i, argv: ["ip", "netns", "exec", cluster.node(i).ns, *argv])
            try:
                report = os.path.join(work, "report.json")
                sent = os.path.join(work, "sent")
                server = dep.server("-n", str(NODES), "--report", report, "--stall-timeout", str(STALL),
                                    "-e", f"head -c {size} /dev/zero | tee {sent}", where=0)
                clients = {i: dep.client("-h", cluster.node(0).addr, "--discard", where=i)
                           for i in range(1, NODES + 1)}
                deadline = time.monotonic() + 60
                while "tree (arity" not in server.err:
                    if time.monotonic() > deadline or server.popen.poll() is not None:
                        raise SystemExit(f"no deployment started:\n{server.err[-2000:]}")
                    time.sleep(0.01)
                # Chain positions follow the namespaces' addresses: node i is position i.
                while (os.path.getsize(sent) if os.path.exists(sent) else 0) < 0.4 * size:
                    if time.monotonic() > deadline + timeout:
                        raise SystemExit(f"the stream never reached 40 %:\n{server.err[-2000:]}")
                    time.sleep(0.002)
                t_fault = time.monotonic()
                for v in victims:
                    os.killpg(clients[v].popen.pid, signal.SIGKILL)
                ends = {}
                for i, c in clients.items():
                    if i not in victims:
                        code = c.wait(timeout)
                        ends[i] = time.monotonic()
                        if code != 0:
                            raise SystemExit(f"{scenario}: node {i} exited {code}:\n{c.err[-1500:]}")
                server.wait(timeout)
                end = max(ends.values())
                nodes = {n["position"]: n for n in load_report(report)["nodes"]}
                verified = all(nodes[i]["verified"] is True and nodes[i]["bytes"] == size for i in ends)
                if not verified:
                    raise SystemExit(f"{scenario}: a survivor is not verified:\n{server.err[-2000:]}")
                orphans = {v + 1 for v in victims} - set(victims)
                if any(nodes[o]["repairs"] < 1 for o in orphans) or any(nodes[v]["status"] == "ok" for v in victims):
                    seen = ", ".join(f"{i}: {n['status']} {n['bytes']} B repaired {n['repairs']}x"
                                     for i, n in sorted(nodes.items()))
                    raise SystemExit(f"{scenario}: the faults were not repaired as planned (victims "
                                     f"{victims}, orphans {sorted(orphans)}; {seen}):\n{server.err[-2000:]}")
                return dict(scenario=scenario, victims=" ".join(map(str, victims)) or "-", bytes=size,
                            fault_at_s=round(t_fault, 3), end_s=round(end, 3),
                            from_fault_s=round(end - t_fault, 3), survivors_verified=len(ends))
            finally:
                dep.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", default=os.path.join(HERE, "fault_timing.csv"))
    args = ap.parse_args()
    bytecode.as_installed()
    reason = vc.netns_support()
    if reason is not None:
        raise SystemExit(f"needs network namespaces: {reason}")
    size = args.size_mib << 20
    rows = []
    for rnd in range(1, args.rounds + 1):
        got = {s: run(s, size, args.rate, args.timeout) for s in SCENARIOS}
        rest = got["none"]["from_fault_s"]        # fault-free: from the 40 % point to the end
        for s, row in got.items():
            row.update(round=rnd, rest_s=rest, target_s=round(1.15 * rest + STALL, 3),
                       fault_at_s="", end_s="")
            if s == "none":
                row["from_fault_s"] = ""
            rows.append(row)
            print(f"#{rnd} {s}: " + (f"rest of the stream {rest:.2f} s" if s == "none" else
                                     f"kill to last survivor {row['from_fault_s']:.2f} s "
                                     f"(target {row['target_s']:.2f})"), flush=True)
    record(args.out, FIELDS, rows, f"{args.size_mib} MiB at {args.rate}", fault_markdown)


if __name__ == "__main__":
    main()
