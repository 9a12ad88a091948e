"""The control plane at scale: hundreds of protocol-level clients, one real server.

Its duration is measured in bench/bench_control_plane.py, not asserted here."""
import asyncio
import resource

from deploy import Deployment, load_report
from fakeclients import run_fakes

N = 500


def test_500_clients_register_and_all_get_their_place(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * N + 256)), hard))
    dep = Deployment(str(tmp_path))
    try:
        report = str(tmp_path / "r.json")
        server = dep.server("-n", str(N), "-a", "4", "-e", "head -c 3000000 /dev/zero",
                            "--report", report, "-q", "--stall-timeout", "10")   # not a stall test
        port = int(dep.ports[1])
        results = asyncio.run(run_fakes("127.0.0.1", port, N))
        assert server.wait(120) == 0, server.err
    finally:
        dep.close()
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:5]
    # Every client placed once; positions follow the (address, port) order exactly.
    by_port = sorted(results, key=lambda r: r.data_port)
    assert [r.place.position for r in by_port] == list(range(1, N + 1))
    assert all(r.place.n_nodes == N and r.place.arity == 4 for r in results)
    assert all(len(r.place.children) <= 4 for r in results)
    # Only nodes with children keep a repair window: no leaf is ever asked to adopt.
    assert all((r.place.window > 0) == bool(r.place.children) for r in results)
    assert sum(1 for r in results if r.place.window) == (N - 1) // 4   # positions 1 to 124
    # The server's four children took the real stream.
    assert sorted(r.received for r in results if r.place.depth == 1) == [3000000] * 4
    rep = load_report(report)
    assert rep["totals"] == {"nodes": N, "ok": N, "failed": 0}
