"""Where a node's CPU goes: per-thread CPU seconds per GB of one ka-d-server and one
ka-d-client (--synthetic / --discard) on loopback, sampled from /proc/PID/task every
0.1 s (a diagnostic: threads are listed by thread id, in creation order: main, then the
relay, then the tap). Also the digest's own speed here, for comparison.

    .venv/bin/python bench/node_threads.py [SIZE_MIB] [server options...]
    .venv/bin/python bench/node_threads.py 2048 --no-verify
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from deploy import Deployment, free_port  # noqa: E402
from kadeploy.lab.benchlib import bytecode  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def sample(pid: int, seen: dict) -> None:
    """Each thread's user + system seconds so far (the last reading stands)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seen[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK


def digest_speed() -> str:
    import hashlib

    import blake3
    buf, key = os.urandom(1 << 20), os.urandom(32)
    out = []
    for name, make in (("blake3 keyed", lambda: blake3.blake3(key=key)), ("sha256", hashlib.sha256)):
        t = time.process_time()
        h = make()
        for _ in range(1024):
            h.update(buf)
        h.hexdigest()
        out.append(f"{name} {1 / (time.process_time() - t) * (1 << 30) / 1e9:.2f} GB/s per core")
    return ", ".join(out)


def main() -> None:
    size = (int(sys.argv[1]) if len(sys.argv) > 1 else 2048) << 20
    bytecode.as_installed()
    work = tempfile.mkdtemp(prefix="kd-threads-")
    dep = Deployment(work)
    try:
        server = dep.server("-n", "1", "--synthetic", str(size), *sys.argv[2:])
        client = dep.client("-h", "127.0.0.1", "-P", str(free_port()), "--discard")
        seen_s, seen_c = {}, {}
        while client.popen.poll() is None or server.popen.poll() is None:
            sample(server.popen.pid, seen_s)
            sample(client.popen.pid, seen_c)
            time.sleep(0.1)
        if (client.popen.returncode, server.popen.returncode) != (0, 0):
            raise SystemExit(f"the run failed:\n{server.err[-1500:]}{client.err[-1500:]}")
    finally:
        dep.close()
    gb = size / 1e9
    for name, seen in (("server", seen_s), ("client", seen_c)):
        print(f"{name}: " + ", ".join(f"thread {tid} {cpu / gb:.2f}" for tid, cpu in sorted(seen.items()))
              + " CPU s/GB")
    print(digest_speed())


if __name__ == "__main__":
    main()
