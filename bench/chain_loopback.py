"""CPU seconds per GB per relay node, for a chain of K relays on loopback TCP.

    python bench/chain_loopback.py --backend cython --relays 1,2,4,8 --size-mib 2048

head (generator, this process) -> relay 0 -> ... -> relay K-1 -> tail (digest check,
this process). Each relay is its own process (this script with --relay) running
kadeploy.relay.relay(source TCP, [sink TCP]); it reports its own getrusage, so the
figure is the relay's CPU alone, not the generator's nor the checker's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

CHUNK = 1 << 20


def stream(total: int, seed: int = 7):
    """A seeded stream of total bytes, fast to make: one random MiB, stamped per copy."""
    block = bytearray(random.Random(seed).randbytes(CHUNK))
    sent = 0
    while sent < total:
        struct.pack_into("<Q", block, 0, sent)
        n = min(CHUNK, total - sent)
        yield memoryview(block)[:n]
        sent += n


def digest_of(total: int) -> str:
    h = hashlib.sha1()
    for piece in stream(total):
        h.update(piece)
    return h.hexdigest()


def relay_node(next_port: int, backend: str, buffer_size: int) -> None:
    """One relay process: print the port it listens on, relay, print its usage as JSON."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from kadeploy.relay import relay

    with socket.create_server(("127.0.0.1", 0)) as srv:
        print(srv.getsockname()[1], flush=True)
        down = socket.create_connection(("127.0.0.1", next_port))
        up, _ = srv.accept()
    t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    res = relay(up.fileno(), [down.fileno()], backend=backend, buffer_size=buffer_size)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    down.shutdown(socket.SHUT_WR)
    down.close()
    up.close()
    print(json.dumps({
        "backend": res.backend, "bytes": res.bytes_in, "ended": res.ended,
        "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
        "wall": t1 - t0, "pipe_size": res.pipe_size,
    }), flush=True)


def run_chain(k: int, total: int, backend: str, buffer_size: int, expected: str) -> dict:
    tail = socket.create_server(("127.0.0.1", 0))
    got = {}

    def check():
        conn, _ = tail.accept()
        h, n, buf = hashlib.sha1(), 0, bytearray(CHUNK)
        with conn:
            while True:
                m = conn.recv_into(buf)
                if not m:
                    break
                h.update(memoryview(buf)[:m])
                n += m
        got.update(bytes=n, digest=h.hexdigest())

    checker = threading.Thread(target=check)
    checker.start()
    next_port, procs = tail.getsockname()[1], []
    for _ in range(k):  # built from the tail up: each relay connects to the next
        p = subprocess.Popen([sys.executable, __file__, "--relay", str(next_port),
                              "--backend", backend, "--buffer-size", str(buffer_size)],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        next_port = int(p.stdout.readline())
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", next_port)) as head:
        for piece in stream(total):
            head.sendall(piece)
        head.shutdown(socket.SHUT_WR)
        checker.join()
    wall = time.monotonic() - t0
    tail.close()
    nodes = []
    for p in procs:
        nodes.append(json.loads(p.stdout.readline()))
        p.stdout.close()
        if p.wait() != 0:
            raise SystemExit(f"relay process exited with {p.returncode}")
    if got.get("digest") != expected or got.get("bytes") != total:
        raise SystemExit(f"K={k} {backend}: the tail got {got}, expected {total} bytes {expected}")
    gb = total / 1e9
    cpu = [(n["user"] + n["sys"]) / gb for n in nodes]
    return {"backend": backend, "k": k, "bytes": total, "wall": wall, "MB/s": total / wall / 1e6,
            "cpu_s_per_GB_mean": sum(cpu) / len(cpu), "cpu_s_per_GB_max": max(cpu),
            "user_s_per_GB": sum(n["user"] for n in nodes) / len(nodes) / gb,
            "sys_s_per_GB": sum(n["sys"] for n in nodes) / len(nodes) / gb,
            "ran": nodes[0]["backend"], "pipe_size": nodes[0]["pipe_size"]}


def main() -> None:
    from kadeploy.defaults import BUFFER_SIZE
    from kadeploy.relay import BACKENDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relay", type=int, metavar="NEXT_PORT", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default=",".join(BACKENDS))
    ap.add_argument("--relays", default="1,2,4,8", help="chain lengths K to run")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--buffer-size", type=int, default=BUFFER_SIZE)
    ap.add_argument("--json", action="store_true", help="one JSON line per run")
    a = ap.parse_args()
    if a.relay is not None:
        relay_node(a.relay, a.backend, a.buffer_size)
        return
    total = a.size_mib << 20
    expected = digest_of(total)
    if not a.json:
        print(f"{'backend':8} {'K':>2} {'MB/s':>8} {'cpu s/GB/node':>14} {'max':>6} "
              f"{'user':>6} {'sys':>6}")
    for k in map(int, a.relays.split(",")):
        for backend in a.backend.split(","):
            r = run_chain(k, total, backend, a.buffer_size, expected)
            if a.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"{backend:8} {k:2d} {r['MB/s']:8.0f} {r['cpu_s_per_GB_mean']:14.3f} "
                      f"{r['cpu_s_per_GB_max']:6.3f} {r['user_s_per_GB']:6.3f} "
                      f"{r['sys_s_per_GB']:6.3f}", flush=True)


if __name__ == "__main__":
    main()
