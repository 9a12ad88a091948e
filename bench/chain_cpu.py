"""CPU per GB on the server and on every node of a chain of K on loopback, for
kadeploy with its defaults (digests and repair window), with --encrypt, without
integrity (--no-verify --no-repair), and for a minimal C splice relay (the baseline,
bench/splice_relay.c), interleaved in the same run.

    .venv/bin/python bench/chain_cpu.py                       # K = 1, 2, 4, 8; 1 GiB; twice
    .venv/bin/python bench/chain_cpu.py --relays 2 --size-mib 64 --repeat 1 --out /tmp/c.csv

kadeploy: one real ka-d-server (--synthetic, with a key) and K real ka-d-client
processes (--discard). C: K splice_relay processes fed by this script. Each process's
CPU (user + system, its consumer included) is read from wait4() when it exits, so a
figure is that process's alone. CPU per GB is the marginal cost: the CPU of a 1 MiB run
of the same shape (start-up, registration) is taken off. The node at the end of the
chain relays to nobody ("last"); the others relay to their child ("relay").
Targets: issue 13, a relay node with integrity on <= 1.5 x the C relay; issue 15, a
relay node with --encrypt relays as the plain one does (splice) and pays only its own
decryption. Run it on a quiet machine (no tests, builds or other benchmarks).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from deploy import Deployment, free_port, load_report  # noqa: E402
from kadeploy.lab.benchlib import bytecode  # noqa: E402
from tables import chain_cpu_markdown, record  # noqa: E402

VARIANTS = {   # name -> the server's options (None: the C relay)
    "kadeploy": [],
    "encrypt": ["--encrypt"],
    "no-integrity": ["--no-verify", "--insecure-no-verify", "--no-repair"],
    "c-splice": None,
}
FIELDS = ["relays", "variant", "repeat", "role", "position", "bytes", "cpu_s", "cpu_s_small",
          "cpu_s_per_gb", "wall_s", "backend"]
SMALL = 1 << 20     # a run this size gives each process's fixed cost (start-up, registration)


def reap(pid: int, name: str, timeout: float, err=lambda: "") -> float:
    """Wait for the process; its CPU seconds (user + system, reaped children included)."""
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise SystemExit(f"{name} failed ({code}):\n{err()[-2000:]}")
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            raise SystemExit(f"{name} did not finish in {timeout:g} s:\n{err()[-2000:]}")
        time.sleep(0.02)


def kadeploy_run(relays: int, server_options, size: int, key_file: str, timeout: float):
    logdir = tempfile.mkdtemp(prefix="kd-chaincpu-")
    dep = Deployment(logdir)
    try:
        started = time.monotonic()
        report = os.path.join(logdir, "report.json")
        server = dep.server("-n", str(relays), "--synthetic", str(size), "--key-file", key_file,
                            "--report", report, *server_options)
        clients = [dep.client("-h", "127.0.0.1", "-P", str(free_port()), "--key-file", key_file,
                              "--discard", *(["--insecure-no-verify"] if "--no-verify" in server_options else []))
                   for _ in range(relays)]
        cpu = {c.name: reap(c.popen.pid, c.name, timeout, lambda c=c: c.err) for c in clients}
        server_cpu = reap(server.popen.pid, "server", timeout, lambda: server.err)
        for p in [server, *clients]:
            p.popen.returncode = 0
        wall = time.monotonic() - started
        rep = load_report(report)
        backends = {n["position"]: n["backend"] for n in rep["nodes"]}
        rows = [dict(role="server", position=0, cpu_s=server_cpu, wall_s=wall, backend=rep["backend"])]
        for c in clients:
            pos = int(re.search(r"position (\d+) of", c.err).group(1))
            rows.append(dict(role="relay" if pos < relays else "last", position=pos,
                             cpu_s=cpu[c.name], wall_s=wall, backend=backends[pos]))
        return rows
    finally:
        dep.close()
        shutil.rmtree(logdir, ignore_errors=True)


def c_run(relays: int, size: int, binary: str, timeout: float):
    ports = [free_port() for _ in range(relays)]
    procs = []
    try:
        for i in reversed(range(relays)):           # children first: each connects to its child
            argv = [binary, str(ports[i])] + ([str(ports[i + 1])] if i + 1 < relays else [])
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"splice_relay did not start: {p.stderr.read()}")
            procs.insert(0, p)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", ports[0])) as s:
            block, left = bytes(1 << 20), size
            while left:
                left -= s.send(memoryview(block)[:min(left, len(block))])
        rows = []
        for pos, p in enumerate(procs, 1):
            cpu = reap(p.pid, f"splice_relay {pos}", timeout, p.stderr.read)
            p.returncode = 0
            moved = int(p.stdout.read().split()[-1])
            if moved != size:
                raise SystemExit(f"splice_relay {pos} moved {moved} of {size} bytes")
            rows.append(dict(role="relay" if pos < relays else "last", position=pos, cpu_s=cpu,
                             wall_s=time.monotonic() - started, backend="splice (C)"))
        return rows
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relays", default="1,2,4,8", help="chain lengths K")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=os.path.join(HERE, "chain_cpu.csv"))
    args = ap.parse_args()
    bytecode.as_installed()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    work = tempfile.mkdtemp(prefix="kd-chaincpu-")
    binary = os.path.join(work, "splice_relay")
    if "c-splice" in variants:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, os.path.join(HERE, "splice_relay.c")], check=True)
    key_file = os.path.join(work, "key")
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    size = args.size_mib << 20
    rows = []
    for repeat in range(1, args.repeat + 1):
        for k in [int(x) for x in args.relays.split(",")]:
            for v in variants:                  # interleaved: drift hits every variant alike
                def run(n):
                    if VARIANTS[v] is None:
                        return c_run(k, n, binary, args.timeout)
                    return kadeploy_run(k, VARIANTS[v], n, key_file, args.timeout)
                small = {r["position"]: r["cpu_s"] for r in run(SMALL)}
                got = run(size)
                for r in got:
                    r.update(relays=k, variant=v, repeat=repeat, bytes=size, cpu_s=round(r["cpu_s"], 3),
                             cpu_s_small=round(small[r["position"]], 3), wall_s=round(r["wall_s"], 2),
                             cpu_s_per_gb=round((r["cpu_s"] - small[r["position"]]) / ((size - SMALL) / 1e9), 3))
                rows += got
                print(f"K={k} {v} #{repeat}: "
                      + ", ".join(f"{r['role']}{r['position'] or ''} {r['cpu_s_per_gb']}" for r in got), flush=True)
    record(args.out, FIELDS, rows, f"{args.size_mib} MiB per run", chain_cpu_markdown)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
