"""`kadeploy bench` plumbing and the network-check options (--synthetic, --discard).

Correctness only: no timing is asserted (other tests share this machine's cores).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from deploy import Deployment, load_report

from kadeploy import cli
from kadeploy.lab import bench
from kadeploy.lab import vcluster as vc
from kadeploy.lab.benchlib import bytecode, methods, output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = [sys.executable, "-m", "kadeploy"]
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_kadeploy(args, capsys):
    """The CLI in-process, as `kadeploy ARGS` runs it: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exc:
        cli.run_main(cli.kadeploy_group, "kadeploy", list(args))
    return exc.value.code, capsys.readouterr().err


def assert_one_line(err: str, fragment: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


# ---------------------------------------------------------------- clear errors

def test_bench_is_a_kadeploy_subcommand():
    import click
    ctx = click.Context(cli.kadeploy_group)
    assert cli.kadeploy_group.get_command(ctx, "bench") is bench.bench_command
    assert "bench" in cli.kadeploy_group.list_commands(ctx)


def test_bench_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(bench.os, "geteuid", lambda: 1000)
    status, err = run_kadeploy(["bench", "--nodes", "2", "--size", "1M"], capsys)
    assert status == 1
    assert_one_line(err, "kadeploy bench needs root")


def test_delay_without_netem_is_one_clear_line(monkeypatch, capsys):
    # This kernel has no netem; pretend so everywhere, before anything is built.
    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    monkeypatch.setattr(vc, "netns_support", lambda: None)
    monkeypatch.setattr(vc, "netem_available", lambda: (False, 'Error: Specified qdisc kind is unknown.'))
    status, err = run_kadeploy(["bench", "--nodes", "2", "--delay", "1ms"], capsys)
    assert status == 1
    assert_one_line(err, "--delay/--loss need the netem qdisc")


def test_missing_baseline_tool_names_the_package(monkeypatch, capsys):
    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    monkeypatch.setattr(vc, "netns_support", lambda: None)
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    status, err = run_kadeploy(["bench", "--methods", "diy,udpcast"], capsys)
    assert status == 64
    assert_one_line(err, "apt-get install socat udpcast")


@pytest.mark.parametrize("args,fragment", [
    (["--nodes", "1,2"], "between 2 and 250"),
    (["--methods", "kadeploy,carrier-pigeon"], "carrier-pigeon"),
    (["--rate", "fast"], "bad rate"),
    (["--size", "lots"], "is not a size"),
    (["--start", "whenever"], "whenever"),
    (["--start", "sender-first", "--methods", "kadeploy,star"],
     "--start sender-first: only diy and kadeploy can start their sender first (leave star out"),
])
def test_bad_lists_are_usage_errors(args, fragment, capsys):
    status, err = run_kadeploy(["bench", *args], capsys)
    assert status == 64
    assert_one_line(err, fragment)


@pytest.mark.parametrize("argv,fragment", [
    (["server", "--synthetic", "1M", "-e", "true"], "--synthetic and -e/--command are exclusive"),
    (["client", "-h", "127.0.0.1", "--discard", "-e", "cat"], "--discard and -e/--command are exclusive"),
])
def test_network_check_options_exclude_commands(argv, fragment, capsys):
    status, err = run_kadeploy(argv, capsys)
    assert status == 64
    assert_one_line(err, fragment)


# ------------------------------------------------------------ pieces, no root

def test_dd_count_is_parsed():
    log = b"0+2048 records in\n0+2048 records out\n4194304 bytes (4.2 MB, 4.0 MiB) copied, 0.1 s\n"
    assert methods.counted_bytes(log) == 4194304
    assert methods.counted_bytes(b"socat: E connect(): Connection refused\n") is None


def fake_rows():
    rows = []
    for n in (2, 4):
        for m, t, cpu in (("kadeploy", 2.0, 0.5), ("diy", 2.5, 1.0)):
            for rep, jitter in ((1, 0.0), (2, 0.2)):
                kd = m == "kadeploy"
                rows.append({"rate_mbit": 1000.0, "method": m, "n": n, "arity": 1 if kd else None,
                             "buffer_size": 1 << 20 if kd else None, "backend": "auto" if kd else None,
                             "size": 250_000_000, "repeat": rep, "ok": True, "error": None,
                             "wall_s": t + jitter, "stream_s": t if kd else None,
                             "link_fraction": 2 / (t + jitter), "stream_link_fraction": 1.0 if kd else None,
                             "cpu_per_gb_server": cpu, "cpu_per_gb_client": cpu})
    return rows


def test_aggregate_and_ratios():
    summary = output.aggregate(fake_rows())
    assert len(summary) == 4 and all(s["runs"] == 2 and s["ok_runs"] == 2 for s in summary)
    kd2 = next(s for s in summary if s["method"] == "kadeploy" and s["n"] == 2)
    assert kd2["wall_s"] == pytest.approx(2.1) and kd2["wall_s_min"] == 2.0 and kd2["wall_s_max"] == 2.2
    ratios = output.ratios(summary, {"arity": 1, "buffer_size": 1 << 20, "backend": "auto"})
    assert [(r["n"], r["baseline"]) for r in ratios] == [(2, "diy"), (4, "diy")]
    assert ratios[0]["time_ratio"] == pytest.approx(2.1 / 2.6)
    assert ratios[0]["cpu_client_ratio"] == pytest.approx(0.5)


def test_ratios_pair_each_start_with_its_own():
    """A sweep of both starts compares kadeploy with the baseline started the same way."""
    rows = []
    for start, kd_wall in (("receivers-first", 2.0), ("sender-first", 3.0)):
        for r in fake_rows():
            if r["n"] == 2:
                rows.append(dict(r, start=start, wall_s=kd_wall if r["method"] == "kadeploy" else 4.0))
    ratios = output.ratios(output.aggregate(rows), {"arity": 1, "buffer_size": 1 << 20, "backend": "auto"})
    assert sorted((r["start"], r["time_ratio"]) for r in ratios) == [
        ("receivers-first", 0.5), ("sender-first", 0.75)]


def test_plots_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    summary = output.aggregate(fake_rows())
    made = output.plots(summary, str(tmp_path), {"arity": 1, "buffer_size": 1 << 20, "backend": "auto"})
    assert {os.path.basename(p) for p in made} == {"time_vs_n.png", "cpu_per_gb.png"}
    for p in made:
        assert open(p, "rb").read(8) == PNG_MAGIC


# ------------------------------------------------------- in namespaces, root

@pytest.mark.netns
def test_benchmarks_run_kadeploy_from_byte_code_as_an_installed_copy_does(tmp_path, monkeypatch):
    """Under PYTHONDONTWRITEBYTECODE (set on these machines) a source tree has no byte
    code, and every process a benchmark starts would compile kadeploy from source."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "sub/__init__.py", "sub/mod.py"):
        (pkg / rel).write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert bytecode.compile_tree(str(pkg))
    for rel in ("__init__.py", "sub/__init__.py", "sub/mod.py"):
        assert os.path.exists(importlib.util.cache_from_source(str(pkg / rel))), rel
    assert bytecode.as_installed() == "compiled"
    assert "PYTHONDONTWRITEBYTECODE" not in os.environ      # the processes started next
    for root, _, files in os.walk(bytecode.PACKAGE):
        for name in files:
            if name.endswith(".py"):
                assert os.path.exists(importlib.util.cache_from_source(os.path.join(root, name))), name


def test_tiny_sweep_writes_csv_json_png(tmp_path):
    out = tmp_path / "out"
    args = ["bench", "--nodes", "2,3", "--size", "4M", "--methods", "kadeploy,diy",
            "--backend", "copy", "--rate", "1gbit", "--out", str(out), "--plain"]
    p = subprocess.run(KD + args, env=ENV, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.count("bench: [") == 4, p.stderr            # progress: one line each
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["n"]) for r in rows] == [
        ("kadeploy", "2"), ("diy", "2"), ("kadeploy", "3"), ("diy", "3")]
    for r in rows:
        assert r["ok"] == "True", r
        assert float(r["wall_s"]) > 0 and float(r["cpu_per_gb_client"]) > 0
        assert float(r["link_fraction"]) > 0
    assert all(r["backend_used"] == "copy" for r in rows if r["method"] == "kadeploy")
    doc = json.loads((out / "results.json").read_text())
    assert {"command", "date", "machine", "runs", "summary", "ratios", "reference"} <= set(doc)
    assert doc["machine"]["nproc"] == os.cpu_count()
    assert doc["byte_code"] == "compiled"
    assert len(doc["runs"]) == 4 and len(doc["summary"]) == 4
    assert {(r["n"], r["baseline"]) for r in doc["ratios"]} == {(2, "diy"), (3, "diy")}
    for name in ("time_vs_n.png", "cpu_per_gb.png"):      # matplotlib is in the bench extra
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not [n for n in vc._netns_list() if n.startswith("kdbench-")]


@pytest.mark.netns
@pytest.mark.parametrize("method", ["kadeploy", "diy"])
def test_each_start_order_starts_its_side_first_and_clocks_the_other(vcluster, tmp_path, method):
    """receivers-first: the sender starts once the receivers listen, timed from its
    start; sender-first: the receivers start once the sender listens (a DIY sender
    retries), timed from the first receiver's start. Read off the runners' records."""
    from kadeploy.lab.benchlib import execute
    cluster = vcluster(3, prefix="kdbst", rate="1gbit", ipv6=False)
    for start in methods.STARTS:
        work = tmp_path / start
        row = execute.run(cluster, methods.Experiment(method, 3, 4 << 20, backend="copy", start=start),
                          10 ** 9, str(work))
        assert row["ok"], row["error"]
        assert row["start"] == start
        sender, *receivers = [json.loads((work / f"node{i}.json").read_text()) for i in range(3)]
        last_end = max(r["end"] for r in receivers)
        if start == "sender-first":
            assert sender["start"] < min(r["start"] for r in receivers)
            assert row["wall_s"] == pytest.approx(last_end - min(r["start"] for r in receivers))
        else:
            assert sender["start"] > max(r["start"] for r in receivers)
            assert row["wall_s"] == pytest.approx(last_end - sender["start"])


@pytest.mark.netns
def test_synthetic_and_discard_end_to_end(vcluster, tmp_path):
    cluster = vcluster(3)
    dep = Deployment(str(tmp_path), loopback=False,
                     wrap=lambda i, argv: ["ip", "netns", "exec", cluster.node(i).ns, *argv])
    try:
        report = str(tmp_path / "report.json")
        dep.server("-n", "2", "--synthetic", "5M", "--report", report, where=0)
        for i in (1, 2):
            dep.client("-h", cluster.node(0).addr, "--discard", where=i)
        assert dep.wait_all(60) == [0, 0, 0], [p.err for p in dep.procs]
        rep = load_report(report)
        assert rep["stream_bytes"] == 5 << 20
        assert rep["totals"] == {"nodes": 2, "ok": 2, "failed": 0}
        assert all(r["bytes"] == 5 << 20 for r in rep["nodes"])
        assert "Total data received = 5.00 Megs" in dep.procs[1].err
    finally:
        dep.close()


def test_chain_cpu_benchmark_at_smoke_size(tmp_path):
    """bench/chain_cpu.py (run on a quiet machine at 1 GiB) still runs, and each row is a
    real run of its kind: every variant, every role, kadeploy relaying by splice, the C
    relay built and moving every byte."""
    out = tmp_path / "c.csv"
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "chain_cpu.py"), "--relays", "2",
                        "--size-mib", "8", "--repeat", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = list(csv.DictReader(open(out)))
    assert sorted((r["variant"], r["role"]) for r in rows) == sorted(
        [(v, role) for v in ("kadeploy", "encrypt", "no-integrity") for role in ("server", "relay", "last")]
        + [("c-splice", "relay"), ("c-splice", "last")])
    assert all(float(r["cpu_s"]) > 0 for r in rows)
    assert {r["backend"] for r in rows if r["role"] == "relay" and r["variant"] != "c-splice"} == {"cython"}
    assert "kadeploy / c-splice" in p.stdout
    bad = subprocess.run([sys.executable, os.path.join(REPO, "bench", "chain_cpu.py"), "--variants", "nope"],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert bad.returncode != 0 and "unknown variant(s) nope" in bad.stderr


def test_loopback_ceiling_benchmark_at_smoke_size(tmp_path):
    """bench/loopback_ceiling.py (4 GiB on a quiet machine) still runs: iperf3 and the four
    kadeploy configurations, each a verified run that moved every byte."""
    out = tmp_path / "l.csv"
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "loopback_ceiling.py"), "--size-mib", "16",
                        "--rounds", "1", "--out", str(out)], capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = list(csv.DictReader(open(out)))
    assert [r["what"] for r in rows] == ["iperf3", "defaults", "no-repair", "no-verify", "no-verify-no-repair"]
    assert all(float(r["mb_per_s"]) > 0 for r in rows)
    assert all(int(r["bytes"]) == 16 << 20 for r in rows)
    assert "| × iperf3 |" in p.stdout


def test_window_memory_benchmark_at_smoke_size():
    """bench/window_memory.py (256 MiB on a quiet machine) still runs every kind: each
    child mapped, filled and exited, and the ratios are of this run's figures."""
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "window_memory.py"), "--size-mib", "4",
                        "--rounds", "1", "--huge"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    for kind in ("window", "shared", "none", "huge"):
        assert result[f"{kind}_exit_ms"]["median"] > 0, kind
    assert result["window_fill_ms"]["median"] > 0 and result["shared_fill_ms"]["median"] > 0
    assert result["window_to_shared_exit_median"] == (result["window_exit_ms"]["median"]
                                                      / result["shared_exit_ms"]["median"])
    bad = subprocess.run([sys.executable, os.path.join(REPO, "bench", "window_memory.py"), "--rounds", "0"],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert bad.returncode != 0 and "--rounds must be at least 1" in bad.stderr


def test_node_threads_diagnostic_at_smoke_size():
    """bench/node_threads.py (RESULTS' per-thread split) still runs a real deployment."""
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "node_threads.py"), "8"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("server: thread ") and "\nclient: thread " in p.stdout
    assert "blake3 keyed" in p.stdout and "GB/s per core" in p.stdout


@pytest.mark.netns
@pytest.mark.parametrize("start", methods.STARTS)
def test_deploy_timeline_diagnostic_at_smoke_size(start):
    """bench/deploy_timeline.py still runs a deployment and places its log lines in time."""
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "deploy_timeline.py"), "--size", "8M",
                        "--rounds", "1", "--rate", "200mbit", "--start", start],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "round 1: wall " in p.stdout and "registered vm" in p.stdout and "node1   (exit)" in p.stdout


@pytest.mark.netns
def test_dhcp_rack_benchmark_at_smoke_size():
    """bench/dhcp_rack.py still runs both cases; without the ping check every node leases."""
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "dhcp_rack.py"), "--nodes", "2"],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["no_ping"]["unknown_leased"] == 2 and result["no_ping"]["known_leased"]
    assert set(result["ping_check"]) == set(result["no_ping"])


def test_import_cost_benchmark_at_smoke_size():
    """bench/import_cost.py times a module's import in two trees, round by round; here
    both trees are this one, so only the plumbing is checked."""
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "import_cost.py"), "--baseline", REPO,
                        "--rounds", "1"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["module"] == "kadeploy.core.protocol"
    assert result["this_ms"]["median"] > 0 and result["baseline_ms"]["median"] > 0
    assert result["this_to_baseline_median"] == result["this_ms"]["median"] / result["baseline_ms"]["median"]
    for args, fragment in ((["--rounds", "0"], "--rounds must be at least 1"),
                           (["--baseline", "/nonexistent-kdb"], "no kadeploy package there")):
        bad = subprocess.run([sys.executable, os.path.join(REPO, "bench", "import_cost.py"),
                              "--baseline", REPO, *args], capture_output=True, text=True, timeout=60, env=ENV)
        assert bad.returncode != 0 and fragment in bad.stderr, bad.stderr
