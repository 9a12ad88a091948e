"""Where the wall clock of a small deployment goes beyond its stream: a ka-d-server and
its nodes on a virtual cluster (`tc tbf` links), run as `kadeploy bench` runs them (the
nodes first, the server once they listen), with --verbose; their log lines placed in
time against the server's exec.

    .venv/bin/python bench/deploy_timeline.py [--nodes 2] [--rate 1gbit] [--size 512M] [--rounds 3]
                                              [--start receivers-first|sender-first]

--nodes counts the server, as `kadeploy bench --nodes` does. Prints each round's wall
clock (the server's exec to the last node's exit, the bench's measure; with --start
sender-first the server starts first and the clock runs from the nodes' start), the server's
report seconds, and the log lines with their milliseconds. Needs root.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kadeploy import defaults  # noqa: E402
from kadeploy.lab.benchlib import bytecode, execute  # noqa: E402
from kadeploy.lab.benchlib.methods import SERVER_ADDR, STARTS  # noqa: E402
from kadeploy.lab.vcluster import VirtualCluster  # noqa: E402

KD = [sys.executable, "-m", "kadeploy"]
LINE = re.compile(r"(\d\d):(\d\d):(\d\d\.\d+) (.*)")


def events(path: str, who: str, t0: float):
    """(seconds after t0, who, message) of each timestamped log line."""
    day = datetime.datetime.fromtimestamp(t0).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                at = day + int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
                out.append((at - t0, who, m[4][:100]))
    return out


def _wait_listening(procs: dict, port: int) -> None:
    error = execute._wait_listening(procs, {i: port for i in procs}, time.monotonic() + 60)
    if error is not None:
        raise RuntimeError(error)


def one_round(cluster, n: int, size: str, workdir: str, sender_first: bool) -> None:
    env = execute._env()
    runner = lambda i, argv: cluster.popen(i, execute.RUNNER + [f"{workdir}/n{i}.json", f"{workdir}/n{i}.log",  # noqa: E731
                                                                "--", *argv], env=env)
    start_clients = lambda: [runner(i, KD + ["client", "-h", SERVER_ADDR, "--discard", "--verbose"])  # noqa: E731
                             for i in range(1, n)]
    start_server = lambda: runner(0, KD + ["server", "-n", str(n - 1), "--synthetic", size,  # noqa: E731
                                           "--report", f"{workdir}/r.json", "--verbose"])
    if sender_first:
        server = start_server()
        _wait_listening({0: server}, defaults.CONTROL_PORT)
        clients = start_clients()
    else:
        clients = start_clients()
        _wait_listening(dict(enumerate(clients, 1)), defaults.DATA_PORT)
        server = start_server()
    for proc in [*clients, server]:
        proc.wait(300)
    records = [json.load(open(f"{workdir}/n{i}.json")) for i in range(n)]
    t0 = min(r["start"] for r in records[1:]) if sender_first else records[0]["start"]
    report = json.load(open(f"{workdir}/r.json"))
    print(f"wall {max(r['end'] for r in records[1:]) - t0:.3f} s, report seconds {report['seconds']:.3f}")
    lines = events(f"{workdir}/n0.log", "server", t0)
    for i in range(1, n):
        lines += events(f"{workdir}/n{i}.log", f"node{i}", t0)
    lines += [(r["end"] - t0, "server" if i == 0 else f"node{i}", "(exit)") for i, r in enumerate(records)]
    for at, who, msg in sorted(lines):
        print(f"  {at * 1000:8.1f} ms  {who:7} {msg}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--size", default="512M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--start", choices=STARTS, default=STARTS[0],
                    help="as kadeploy bench --start: the clock runs from the start of the side started last")
    args = ap.parse_args(argv)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, byte code {bytecode.as_installed()}")
    with VirtualCluster(args.nodes, prefix="kdtl", rate=args.rate) as cluster:
        for r in range(args.rounds):
            print(f"round {r + 1}:", end=" ")
            with tempfile.TemporaryDirectory(prefix="kd-timeline-") as workdir:
                one_round(cluster, args.nodes, args.size, workdir, args.start == "sender-first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
