"""What --encrypt costs: CPU per GB on the server and on every node of a chain, with
and without it, in the same run (issue 15: relays forward the ciphertext by splice,
each node decrypts for its own consumer only).

    .venv/bin/python bench/encrypt_cost.py                       # K = 1, 2, 4; 1 GiB; twice
    .venv/bin/python bench/encrypt_cost.py --relays 2 --size-mib 64 --repeat 1 --out /tmp/e.csv

One real ka-d-server (--synthetic, with a key) and K real ka-d-client processes
(--discard) on loopback, in a chain. Each process's CPU (user + system, its consumer
included) is read from wait4() when it exits, so a figure is that process's alone;
CPU per GB is the marginal cost: the CPU of a 1 MiB run of the same shape (start-up,
registration) is taken off.
The node at the end of the chain relays to nobody; the others relay to their child.
The difference between the two runs of a row is the cost of encrypting (server) and
decrypting (node); the relay backend each node used is recorded beside it.
Run it on a quiet machine (no tests, builds or other benchmarks).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from deploy import Deployment, free_port, load_report  # noqa: E402

FIELDS = ["relays", "encrypt", "repeat", "role", "position", "bytes", "cpu_s", "cpu_s_small",
          "cpu_s_per_gb", "wall_s", "backend"]
SMALL = 1 << 20     # a run this size gives each process's fixed cost (start-up, registration)


def cpu_of(proc, timeout: float) -> float:
    """Wait for the process; its CPU seconds (user + system, reaped children included)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.popen.pid, os.WNOHANG)
        if pid:
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
            if proc.popen.returncode != 0:
                raise SystemExit(f"{proc.name} failed ({proc.popen.returncode}):\n{proc.err[-2000:]}")
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{proc.name} did not finish in {timeout:g} s:\n{proc.err[-2000:]}")
        time.sleep(0.02)


def one_run(relays: int, encrypt: bool, size: int, key_file: str, repeat: int, timeout: float):
    logdir = tempfile.mkdtemp(prefix="kd-encrypt-bench-")
    dep = Deployment(logdir)
    try:
        started = time.monotonic()
        report = os.path.join(logdir, "report.json")
        server = dep.server("-n", str(relays), "--synthetic", str(size), "--key-file", key_file,
                            "--report", report, *(["--encrypt"] if encrypt else []))
        clients = [dep.client("-h", "127.0.0.1", "-P", str(free_port()), "--key-file", key_file,
                              "--discard") for _ in range(relays)]
        cpu = {c.name: cpu_of(c, timeout) for c in clients}
        server_cpu = cpu_of(server, timeout)
        wall = time.monotonic() - started
        backends = {n["position"]: n["backend"] for n in load_report(report)["nodes"]}
        rows = [dict(relays=relays, encrypt="on" if encrypt else "off", repeat=repeat, role="server",
                     position=0, bytes=size, cpu_s=round(server_cpu, 3), wall_s=round(wall, 2),
                     backend=load_report(report)["backend"])]
        for c in clients:
            pos = int(re.search(r"position (\d+) of", c.err).group(1))
            rows.append(dict(rows[0], role="relay" if pos < relays else "last", position=pos,
                             cpu_s=round(cpu[c.name], 3), backend=backends[pos]))
        return rows
    finally:
        dep.close()


def summary(rows) -> str:
    """Per K and role: mean CPU/GB off, on, and on/off."""
    out = ["relays  role    off s/GB  on s/GB  on/off"]
    keys = sorted({(r["relays"], r["role"]) for r in rows}, key=lambda k: (k[0], k[1] != "server", k[1]))
    for k, role in keys:
        def mean(enc):
            v = [r["cpu_s_per_gb"] for r in rows if (r["relays"], r["role"], r["encrypt"]) == (k, role, enc)]
            return sum(v) / len(v) if v else float("nan")
        off, on = mean("off"), mean("on")
        out.append(f"{k:6d}  {role:6s}  {off:8.3f}  {on:7.3f}  {on / off:6.2f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relays", default="1,2,4", help="chain lengths K")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=os.path.join(HERE, "encrypt_cost.csv"))
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", prefix="kd-encrypt-key-", delete=False) as f:
        f.write(os.urandom(32).hex())
    rows = []
    try:
        for repeat in range(1, args.repeat + 1):
            for k in [int(x) for x in args.relays.split(",")]:
                for encrypt in (False, True):      # interleaved: drift hits both alike
                    small = {r["position"]: r["cpu_s"]
                             for r in one_run(k, encrypt, SMALL, f.name, repeat, args.timeout)}
                    run = one_run(k, encrypt, args.size_mib << 20, f.name, repeat, args.timeout)
                    for r in run:
                        r["cpu_s_small"] = small[r["position"]]
                        r["cpu_s_per_gb"] = round((r["cpu_s"] - r["cpu_s_small"])
                                                  / (((args.size_mib << 20) - SMALL) / 1e9), 3)
                    rows += run
                    print(f"K={k} encrypt={'on' if encrypt else 'off'} #{repeat}: "
                          + ", ".join(f"{r['role']}{r['position'] or ''} {r['cpu_s_per_gb']}" for r in run),
                          flush=True)
    finally:
        os.unlink(f.name)
    with open(args.out, "w", newline="") as out:
        w = csv.DictWriter(out, FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}; {args.size_mib} MiB per run")
    print(summary(rows))
    print(f"rows: {args.out}")


if __name__ == "__main__":
    main()
