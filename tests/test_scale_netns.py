"""64 real ka-d-client processes, each in its own network namespace, complete one
deployment at a rate two cores can carry; their start-up (exec to registered) is
measured and printed (pytest -s shows it)."""
from __future__ import annotations

import re
import statistics
import time

import pytest

from deploy import load_report

N = 64
REGISTERED = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ka-d-client: registered as node", re.M)


def seconds_of_day(t: float) -> float:
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t % 1)


@pytest.mark.netns
@pytest.mark.timeout(600)   # its own budgets (setup, wait_all 240 s) are the test's, not pytest's 300
def test_64_clients_in_64_namespaces_complete_a_deployment(net, tmp_path):
    cluster, dep = net(N + 1, rate="20mbit", prefix="kdp")
    report = str(tmp_path / "report.json")
    server_addr = cluster.node(0).addr
    size = 4_000_000
    dep.server("-n", str(N), "-e", f"head -c {size} /dev/urandom", "--report", report,
               "--stall-timeout", "20", "--connect-timeout", "60", "--progress-interval", "30", where=0)
    started = {}
    for i in range(1, N + 1):
        started[i] = time.time()
        dep.client("-h", server_addr, "--discard", "--connect-timeout", "60", where=i, name=f"client{i}")
    statuses = dep.wait_all(timeout=240)
    assert statuses == [0] * (N + 1), [p.err[-500:] for p, s in zip(dep.procs, statuses) if s][:3]
    rep = load_report(report)
    assert rep["totals"] == {"nodes": N, "ok": N, "failed": 0}
    assert all(n["verified"] and n["bytes"] == size for n in rep["nodes"])
    startup = []
    for i in range(1, N + 1):
        proc = next(p for p in dep.procs if p.name == f"client{i}")
        m = REGISTERED.search(proc.err)
        assert m, proc.err
        h, mi, s, ms = (int(g) for g in m.groups())
        registered = h * 3600 + mi * 60 + s + ms / 1000
        startup.append((registered - seconds_of_day(started[i])) % 86400)
    print(f"\n{N} clients, exec to registered: median {statistics.median(startup):.2f} s, "
          f"max {max(startup):.2f} s, min {min(startup):.2f} s")
    # Sanity only: 64 interpreters starting on two cores take seconds, not minutes.
    assert max(startup) < 60
