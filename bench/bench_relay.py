"""Throughput of every relay backend, with copy as the baseline in the same run.

    .venv/bin/python -m pytest bench/bench_relay.py --benchmark-only \
        --benchmark-group-by=param:path -p no:cacheprovider

One relay moves STREAM bytes from a socket (socketpair or loopback TCP) to two sinks;
a thread feeds it, two threads discard. extra_info holds the relay thread's CPU
seconds per GB (os.times of the whole process, so it includes the feeder and readers:
compare backends with each other, not with bench/chain_loopback.py).
"""
from __future__ import annotations

import os
import socket
import threading

import pytest

from kadeploy import relay as kr

STREAM = 512 << 20
PIECE = 1 << 20


def _pair(path):
    if path == "socketpair":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


def _drain(sock):
    buf = bytearray(PIECE)
    while sock.recv_into(buf):
        pass


def one_run(backend, path, nsinks):
    src_in, src_out = _pair(path)
    sinks = [_pair(path) for _ in range(nsinks)]
    block = os.urandom(PIECE)

    def feed():
        for _ in range(STREAM // PIECE):
            src_in.sendall(block)
        src_in.shutdown(socket.SHUT_WR)

    threads = [threading.Thread(target=feed)]
    threads += [threading.Thread(target=_drain, args=(b,)) for _, b in sinks]
    for t in threads:
        t.start()
    try:
        t0 = os.times()
        res = kr.relay(src_out.fileno(), [a.fileno() for a, _ in sinks], backend=backend)
        t1 = os.times()
        for a, _ in sinks:
            a.shutdown(socket.SHUT_WR)
        for t in threads:
            t.join()
        assert res.eof and all(n == STREAM for n in res.sink_bytes), res
        return (t1.user - t0.user + t1.system - t0.system) / (STREAM / 1e9)
    finally:
        for s in (src_in, src_out, *(x for p in sinks for x in p)):
            s.close()


@pytest.mark.parametrize("nsinks", [1, 2])
@pytest.mark.parametrize("path", ["socketpair", "tcp"])
@pytest.mark.parametrize("backend", kr.BACKENDS)
def test_relay_throughput(benchmark, backend, path, nsinks):
    why = kr.available()[backend]
    if why:
        pytest.skip(why)
    cpu = []
    benchmark.pedantic(lambda: cpu.append(one_run(backend, path, nsinks)),
                       rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info["process_cpu_s_per_GB"] = round(min(cpu), 3)
    benchmark.extra_info["MB_per_s"] = round(STREAM / benchmark.stats.stats.min / 1e6)
