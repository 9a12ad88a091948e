"""`kadeploy bench`: real deployments on a virtual cluster, against baselines, measured.

A VirtualCluster of max(--nodes) network namespaces on one bridge, every link shaped
to --rate in both directions (tc tbf; --delay/--loss need netem), node 0 the sender.
For each N the first N nodes take part, so every method runs in the same namespaces
on the same data (a synthetic stream of --size zero bytes), one experiment at a time:

    kadeploy   ka-d-server --synthetic / ka-d-client --discard, for every
               combination of --arity, --buffer-size and --backend;
    diy        a chain of socat and tee;   star   one connection per receiver;
    udpcast    multicast with udp-sender / udp-receiver.

Measured per experiment: wall time (sender start to last receiver exit), the kadeploy
report's time, throughput as a fraction of the link rate, and CPU seconds per GB of
each node's process tree. Written to --out: results.csv (one row per run),
results.json (runs, summary over repeats, ratios against the baselines, the machine
and the command), and PNG plots when matplotlib is installed. kadeploy runs from byte
code, as an installed copy does (benchlib.bytecode).
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import sys
import tempfile
from typing import List, Optional

import click

from kadeploy import defaults
from kadeploy.errors import EXIT_USAGE, KadeployError
from kadeploy.lab.benchlib import bytecode, execute, output
from kadeploy.lab.benchlib.methods import METHODS, NEEDS, SENDER_FIRST, STARTS, Experiment
from kadeploy.lab.benchlib.progress import Progress
from kadeploy.options import (
    CONTEXT,
    RELAY_CHOICES,
    format_size,
    parse_size,
)
from kadeploy.relay import check_backend


def _split(text: str) -> List[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def int_list(lo: int, hi: int):
    def convert(ctx, param, value):
        try:
            out = [int(t) for t in _split(value)]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of integers")
        if not out or any(not lo <= v <= hi for v in out):
            raise click.BadParameter(f"values must be between {lo} and {hi}")
        return sorted(set(out))
    return convert


def size_list(ctx, param, value):
    out = [parse_size(t) for t in _split(value)]
    if not out or min(out) <= 0:
        raise click.BadParameter("sizes must be greater than 0")
    return out


def choice_list(choices):
    def convert(ctx, param, value):
        out = _split(value)
        bad = [v for v in out if v not in choices]
        if not out or bad:
            raise click.BadParameter(f"{', '.join(bad) or value!r}: choose from {', '.join(choices)}")
        return list(dict.fromkeys(out))
    return convert


def compress_list(ctx, param, value):
    from kadeploy.data.codec import CodecError, parse_spec
    try:
        return list(dict.fromkeys(str(parse_spec(t)) for t in _split(value))) or ["none"]
    except CodecError as e:
        raise click.BadParameter(str(e))


def tar_size(directory: str) -> int:
    """Bytes of the tar stream of `directory` (the same command as the producer's)."""
    import subprocess
    from kadeploy.lab.benchlib.methods import Experiment, producer
    proc = subprocess.Popen(["/bin/sh", "-c", producer(Experiment("x", 2, 0, source=os.path.abspath(directory)))],
                            stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait() != 0:
        raise KadeployError(f"tar of {directory} failed (exit status {proc.returncode})")
    return total


def rate_list(ctx, param, value):
    from kadeploy.lab.vcluster import parse_rate
    out = []
    for t in _split(value):
        if t.lower() in ("none", "unshaped"):
            out.append(None)
            continue
        try:
            out.append(parse_rate(t))
        except ValueError as e:
            raise click.BadParameter(str(e))
    return out or [None]


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
            "python": platform.python_version()}


def check_prerequisites(methods: List[str], delay, loss) -> None:
    """Root, namespaces, the baselines' tools: each missing one is one clear line."""
    if os.geteuid() != 0:
        raise KadeployError("kadeploy bench needs root: it builds network namespaces, veths and "
                            "tc qdiscs (run it as root, e.g. with sudo)")
    from kadeploy.lab import vcluster as vc
    reason = vc.netns_support()
    if reason is not None:
        raise KadeployError(f"kadeploy bench cannot build a virtual cluster: {reason}")
    if delay is not None or loss is not None:
        ok, msg = vc.netem_available()
        if not ok:
            raise KadeployError(
                "--delay/--loss need the netem qdisc (sch_netem), which this kernel does not "
                f"have (tc: {msg or 'unknown qdisc'}); run without --delay/--loss")
    missing = sorted({NEEDS[m][1] for m in methods if m in NEEDS and shutil.which(NEEDS[m][0]) is None})
    if missing:
        raise KadeployError(f"the chosen baselines need {' '.join(missing)}: "
                            f"apt-get install {' '.join(missing)} (or leave them out of --methods)",
                            exit_code=EXIT_USAGE)


def plan_sweep(nodes, arities, buffers, backends, methods, size, repeat,
               integrity=(True,), compress=("none",), source=None,
               starts=("receivers-first",)) -> List[Experiment]:
    """Every repeat runs every configuration once, N by N, methods interleaved, so
    that background noise spreads over all of them."""
    out = []
    for r in range(1, repeat + 1):
        for n in nodes:
            for st in starts:
                for m in methods:
                    if m == "kadeploy":
                        out += [Experiment("kadeploy", n, size, a, b, be, r, i, c, source, st)
                                for a in arities for b in buffers for be in backends
                                for i in integrity for c in compress]
                    else:
                        out.append(Experiment(m, n, size, repeat=r, source=source, start=st))
    return out


@click.command("bench", context_settings=CONTEXT)
@click.option("--nodes", default="2,4,8,16", show_default=True, callback=int_list(2, 250),
              help="Cluster sizes N to sweep, server included (comma-separated).")
@click.option("--arity", "arities", default="1", show_default=True, callback=int_list(1, 249),
              help="kadeploy arities to sweep (1 = chain).")
@click.option("--buffer-size", "buffers", default=format_size(defaults.BUFFER_SIZE), show_default=True,
              callback=size_list,
              help="kadeploy relay buffer sizes to sweep (suffixes K, M).")
@click.option("--backend", "backends", default="auto", show_default=True,
              callback=choice_list(list(RELAY_CHOICES)),
              help="kadeploy relay backends to sweep.")
@click.option("--integrity", default="on", show_default=True,
              callback=lambda ctx, p, v: [x == "on" for x in choice_list(["on", "off"])(ctx, p, v)],
              help="kadeploy with its digests and repair window (on), without them (off), or both (on,off).")
@click.option("--compress", "compress", default="none", show_default=True, callback=compress_list,
              help="kadeploy --compress values to sweep (none, zstd, zstd:LEVEL, auto).")
@click.option("--source", type=click.Path(file_okay=False, exists=True), default=None,
              help="Stream a tar of this directory (every method alike) instead of --size zero bytes.")
@click.option("--start", "starts", default=STARTS[0], show_default=True,
              callback=choice_list(list(STARTS)),
              help="Which side starts first, the clock running from the other's start: "
                   "receivers-first (the sender once they listen) or sender-first (the "
                   "receivers once it listens, as a server waits for its nodes); kadeploy "
                   "and diy only for sender-first.")
@click.option("--methods", default=",".join(METHODS), show_default=True,
              callback=choice_list(list(METHODS)),
              help="Methods to run: kadeploy and the baselines diy, star, udpcast.")
@click.option("--rate", "rates", default="1gbit", show_default=True, callback=rate_list,
              help="Link rates to sweep (tc syntax: 1gbit, 300mbit; 'none' = unshaped); "
                   "one virtual cluster each.")
@click.option("--delay", default=None, metavar="DELAY", help="One-way delay per link direction (e.g. 1ms); needs netem.")
@click.option("--loss", default=None, metavar="PERCENT", help="Packet loss per link direction (e.g. 0.1%); needs netem.")
@click.option("--size", default="256M", show_default=True, callback=size_list,
              help="Bytes of synthetic data per experiment (suffixes K, M, G).")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Run the whole sweep this many times (the summary gives mean, min, max).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds one experiment may take before it is killed and marked failed.")
@click.option("--out", "outdir", type=click.Path(file_okay=False), default=None,
              help="Directory for results.csv, results.json and the plots. [default: ./bench-DATE-TIME]")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@click.option("--no-plots", is_flag=True, help="Do not draw the PNG plots.")
def bench_command(nodes, arities, buffers, backends, integrity, compress, source, starts, methods,
                  rates, delay, loss, size, repeat, timeout, outdir, plain, no_plots):
    """Measure deployments on a virtual cluster of network namespaces: time vs N,
    throughput vs link rate, CPU per GB per node, for kadeploy (per arity, buffer
    size and relay backend) and for a DIY socat chain, a star and udpcast. Needs root."""
    if "sender-first" in starts and set(methods) - SENDER_FIRST:
        raise KadeployError("--start sender-first: only " + " and ".join(sorted(SENDER_FIRST))
                            + " can start their sender first (leave "
                            + ", ".join(sorted(set(methods) - SENDER_FIRST)) + " out of --methods)",
                            exit_code=EXIT_USAGE)
    check_prerequisites(methods, delay, loss)
    if "kadeploy" in methods:
        for b in backends:
            check_backend(b)
    size = size[0] if source is None else tar_size(source)
    source = os.path.abspath(source) if source else None
    started = datetime.datetime.now().astimezone()
    outdir = outdir or f"bench-{started:%Y%m%d-%H%M%S}"
    os.makedirs(outdir, exist_ok=True)
    experiments = plan_sweep(nodes, arities, buffers, backends, methods, size, repeat, integrity,
                             compress, source, starts)
    reference = {"arity": arities[0], "buffer_size": buffers[0], "backend": backends[0],
                 "integrity": integrity[0], "compress": compress[0]}
    byte_code = bytecode.as_installed()
    rows = run_sweep(experiments, rates, delay, loss, timeout, plain, outdir)
    summary = output.aggregate(rows)
    doc = {"command": "kadeploy bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
           "date": started.isoformat(timespec="seconds"), "machine": machine(),
           "byte_code": byte_code,
           "size": size, "delay": delay, "loss": loss, "reference": reference,
           "runs": rows, "summary": summary, "ratios": output.ratios(summary, reference)}
    output.write_csv(os.path.join(outdir, "results.csv"), rows)
    output.write_json(os.path.join(outdir, "results.json"), doc)
    pngs = [] if no_plots else output.plots(summary, outdir, reference)
    click.echo(output.table(summary))
    for r in doc["ratios"]:
        click.echo(f"kadeploy / {r['baseline']} at N={r['n']}, {r['rate_mbit']} Mbit/s: time "
                   f"x{_f(r['time_ratio'])}, CPU per GB per receiver x{_f(r['cpu_client_ratio'])}")
    click.echo(f"wrote {outdir}/results.csv, {outdir}/results.json"
               + "".join(f", {p}" for p in pngs), err=True)
    failed = sum(1 for r in rows if not r["ok"])
    if failed:
        raise KadeployError(f"{failed} of {len(rows)} experiment(s) failed (see results.csv)")
    return 0


def _f(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def run_sweep(experiments: List[Experiment], rates, delay, loss, timeout: float,
              plain: bool, outdir: str) -> List[dict]:
    from kadeploy.lab.vcluster import (
        NetemUnavailable,
        VClusterError,
        VirtualCluster,
        scratch_fs,
    )
    n_max = max(e.n for e in experiments)
    rows: List[dict] = []
    with Progress(len(experiments) * len(rates), plain=plain) as progress, \
            scratch_fs("256m", prefix="kdbench") as work:
        for rate in rates:
            try:
                cluster = VirtualCluster(n_max, prefix="kdbench", rate=rate, delay=delay, loss=loss,
                                         ipv6=False)
                cluster.start()
            except NetemUnavailable as e:
                raise KadeployError(str(e))
            except VClusterError as e:
                raise KadeployError(f"cannot build the virtual cluster: {e}")
            try:
                progress.note(f"virtual cluster of {n_max} nodes, links "
                              f"{'unshaped' if rate is None else f'{rate / 1e6:g} Mbit/s'}")
                for k, e in enumerate(experiments):
                    progress.starting(e.label())
                    workdir = tempfile.mkdtemp(prefix=f"x{k}-", dir=str(work))
                    row = execute.run(cluster, e, rate, workdir, timeout)
                    if not row["ok"]:   # keep the logs of a failure
                        keep = os.path.join(outdir, f"failed-{len(rows) + 1}")
                        os.makedirs(keep, exist_ok=True)
                        for name in os.listdir(workdir):
                            if os.path.isfile(os.path.join(workdir, name)):
                                shutil.copy(os.path.join(workdir, name), keep)
                        row["error"] += f" (logs in {keep})"
                    shutil.rmtree(workdir, ignore_errors=True)
                    rows.append(row)
                    progress.finished(e.label(), row)
            finally:
                cluster.close()
    return rows
