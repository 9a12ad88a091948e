"""Control-plane scale: how long N protocol-level clients take to register, be placed,
take the stream (the server's children) and report, against one real ka-d-server.

The baseline in the same run is N=50; the figure to read is the ratio
time(N) / time(50) (linear scaling gives N/50, worse means something is quadratic).

    .venv/bin/python -m pytest bench/bench_control_plane.py --benchmark-only
"""
import asyncio
import os
import resource
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from deploy import Deployment  # noqa: E402
from fakeclients import run_fakes  # noqa: E402


def one_deployment(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dep = Deployment(tmp)
        try:
            server = dep.server("-n", str(n), "-a", "4", "-e", "head -c 1000000 /dev/zero", "-q")
            results = asyncio.run(run_fakes("127.0.0.1", int(dep.ports[1]), n))
            assert server.wait(300) == 0, server.err
            assert not [r for r in results if r.error]
        finally:
            dep.close()


@pytest.mark.parametrize("n", [50, 500, 1000])
def test_register_place_report(benchmark, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 256)), hard))
    benchmark.group = "control plane"
    benchmark.pedantic(one_deployment, args=(n,), rounds=3, iterations=1)
