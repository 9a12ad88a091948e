"""The tables of bench/RESULTS.md, regenerated from the raw results of `kadeploy bench`
and of the scripts in bench/ (chain_cpu.py, loopback_ceiling.py, bench_control_scale.py:
recognised by their columns, and printed by those scripts too, so one place renders each).

    .venv/bin/python bench/tables.py bench/cluster_backends_1gbit.csv

reads a results.csv (one row per run), averages the good repeats of each configuration
(kadeploy.lab.benchlib.output.aggregate, as `kadeploy bench` does) and prints a Markdown
table: the configuration columns that vary, the runs that succeeded, the wall-clock time
a user sees (sender's start to the last receiver's exit) and kadeploy's own stream time
(placement to the last verdict), each a mean with its min–max over the repeats, the
link rate each of the two amounts to (mean over the repeats), and the CPU per GB.
With --median: medians instead of means.
With --ratios: kadeploy's wall time and CPU per receiver against each baseline. Nothing is computed here that the CSV does not hold.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from typing import Dict, List, Optional

from kadeploy.lab.benchlib.output import aggregate, ratios

CONFIG = [("rate_mbit", "Mbit/s"), ("method", "method"), ("n", "N"), ("arity", "arity"), ("buffer_size", "buffer"),
          ("backend", "backend"), ("integrity", "integrity"), ("compress", "compress"), ("start", "first")]


def _value(field: str, text: str):
    if text == "":
        return None
    if field in ("ok", "integrity"):
        return text == "True"
    if field in ("method", "backend", "backend_used", "error", "compress", "compression", "start"):
        return text
    number = float(text)
    return int(number) if field in ("n", "arity", "buffer_size", "size", "repeat") else number


def read_runs(path: str) -> List[Dict]:
    with open(path, newline="") as f:
        rows = [{k: _value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
    for row in rows:
        row.setdefault("integrity", None)   # older sweeps had no such columns
        row.setdefault("start", None)
    return rows


def _num(v: Optional[float], spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _seconds(s: Dict, measure: str, center: str = "") -> str:
    """The mean (or, center "_median", the median), and the range when there were
    several good repeats."""
    text = _num(s[measure + center], ".2f")
    if s["ok_runs"] > 1 and s[measure] is not None:
        text += f" ({s[measure + '_min']:.2f}–{s[measure + '_max']:.2f})"
    return text


def _config(field: str, v) -> str:
    if v is None:
        return "-"
    if field == "rate_mbit":
        return f"{v:g}"
    if field == "buffer_size":
        return f"{v >> 20}M" if v >= 1 << 20 else f"{v >> 10}K"
    if field == "integrity":
        return "on" if v else "off (--no-verify --no-repair)"
    if field == "start":
        return {"sender-first": "sender (clock from the receivers' start)",
                "receivers-first": "receivers (clock from the sender's start)"}[v]
    return str(v)


def markdown(summary: List[Dict], center: str = "") -> str:
    """One row per configuration; each measure the mean over the good repeats, or with
    center "_median" their median (for a machine whose hiccups make outliers)."""
    shown = [(f, title) for f, title in CONFIG if len({s.get(f) for s in summary}) > 1 or f == "n"]
    head = [title for _, title in shown] + [
        "runs ok", "wall s", "stream s", "% of link (wall)", "% of link (stream)",
        "CPU s/GB per receiver", "CPU s/GB sender"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if f in ("method", "backend", "integrity", "compress", "start") else "---:"
                            for f, _ in shown) + "|---:" * 7 + "|"]
    for s in summary:
        cells = [_config(f, s.get(f)) for f, _ in shown] + [
            f"{s['ok_runs']}/{s['runs']}",
            _seconds(s, "wall_s", center), _seconds(s, "stream_s", center),
            _num(s["link_fraction" + center], ".1f", 100), _num(s["stream_link_fraction" + center], ".1f", 100),
            _num(s["cpu_per_gb_client" + center], ".2f"), _num(s["cpu_per_gb_server" + center], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_markdown(summary: List[Dict]) -> str:
    """kadeploy (arity 1, 1 MiB buffer, backend auto: the bench's reference) against
    each baseline at the same N, by the wall clock and by CPU per receiver."""
    reference = {"arity": 1, "buffer_size": 1 << 20, "backend": "auto"}
    rows = ratios(summary, reference)
    starts = len({r["start"] for r in rows}) > 1
    lines = ["| N | " + ("first | " if starts else "") + "baseline | time kadeploy / baseline (wall) | "
             "CPU per receiver kadeploy / baseline |",
             "|---:|" + ("---|" if starts else "") + "---|---:|---:|"]
    for r in rows:
        first = f"{_config('start', r['start']).split(' ')[0]} | " if starts else ""
        lines.append(f"| {r['n']} | {first}{r['baseline']} | {_num(r['time_ratio'], '.2f')} | "
                     f"{_num(r['cpu_client_ratio'], '.2f')} |")
    return "\n".join(lines)


def _mean_range(xs: List[float], spec: str) -> str:
    text = format(sum(xs) / len(xs), spec)
    return text + (f" ({format(min(xs), spec)}–{format(max(xs), spec)})" if len(xs) > 1 else "")


def chain_cpu_markdown(rows: List[Dict]) -> str:
    """bench/chain_cpu.py: CPU s/GB per K, role and variant (mean, min–max over the
    repeats), and each kadeploy variant against the C relay in the same role."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    keys = sorted({(int(r["relays"]), r["role"]) for r in rows},
                  key=lambda k: (k[0], ["server", "relay", "last"].index(k[1])))

    def of(k, role, v):
        return [float(r["cpu_s_per_gb"]) for r in rows
                if (int(r["relays"]), r["role"], r["variant"]) == (k, role, v)]
    lines = ["| K | node | " + " | ".join(f"{v} s/GB" for v in variants)
             + "".join(f" | {v} / c-splice" for v in variants if v != "c-splice" and "c-splice" in variants) + " |",
             "|---:|---|" + "---:|" * (len(variants) + (len(variants) - 1 if "c-splice" in variants else 0))]
    for k, role in keys:
        base = of(k, role, "c-splice")
        cells = [_mean_range(xs, ".2f") if (xs := of(k, role, v)) else "-" for v in variants]
        if "c-splice" in variants:
            for v in variants:
                if v != "c-splice":
                    xs = of(k, role, v)
                    cells.append(f"{(sum(xs) / len(xs)) / (sum(base) / len(base)):.1f}" if xs and base else "-")
        lines.append(f"| {k} | {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceiling_markdown(rows: List[Dict]) -> str:
    """bench/loopback_ceiling.py: each configuration's rate (mean, min–max over the
    rounds), against iperf3's in the same run, and its wall clock."""
    whats = list(dict.fromkeys(r["what"] for r in rows))

    def of(what, field):
        return [float(r[field]) for r in rows if r["what"] == what]
    ceiling = sum(of("iperf3", "mb_per_s")) / len(of("iperf3", "mb_per_s"))
    lines = ["| run | MB/s | × iperf3 | wall s | relay |", "|---|---:|---:|---:|---|"]
    for w in whats:
        rate = of(w, "mb_per_s")
        backend = {r["backend"] for r in rows if r["what"] == w} - {""}
        lines.append(f"| {w} | {_mean_range(rate, '.0f')} | {sum(rate) / len(rate) / ceiling:.2f} | "
                     f"{_mean_range(of(w, 'wall_s'), '.2f')} | {', '.join(sorted(backend)) or '-'} |")
    return "\n".join(lines)


def plain_markdown(rows: List[Dict]) -> str:
    """bench/bench_control_scale.py: its rows as they are (one per size)."""
    cols = list(rows[0])
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
                     + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])


def fault_markdown(rows: List[Dict]) -> str:
    """bench/fault_timing.py: per scenario, the time from the kill to the last survivor's
    end against the same round's target (1.15 x the fault-free rest + stall timeout)."""
    lines = ["| scenario | killed (positions) | kill → last survivor s | fault-free rest s | target s | rounds within target |",
             "|---|---|---:|---:|---:|---:|"]
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == scenario]
        rest = [float(r["rest_s"]) for r in mine]
        if scenario == "none":
            lines.append(f"| none | - | - | {_mean_range(rest, '.2f')} | - | - |")
            continue
        took = [float(r["from_fault_s"]) for r in mine]
        target = [float(r["target_s"]) for r in mine]
        within = sum(t <= g for t, g in zip(took, target))
        lines.append(f"| {scenario} | {mine[0]['victims']} | {_mean_range(took, '.2f')} | "
                     f"{_mean_range(rest, '.2f')} | {_mean_range(target, '.2f')} | {within}/{len(mine)} |")
    return "\n".join(lines)


KINDS = [("scenario", fault_markdown), ("variant", chain_cpu_markdown), ("mb_per_s", ceiling_markdown), ("place_s", plain_markdown)]


def record(path: str, fields: List[str], rows: List[Dict], detail: str, render) -> None:
    """What each bench/ script does at its end: write its rows as CSV, then print when
    and where it ran and the table RESULTS.md takes (rendered from the rows, as this
    script would render the CSV)."""
    with open(path, "w", newline="") as out:
        w = csv.DictWriter(out, fields)
        w.writeheader()
        w.writerows(rows)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}; {detail}")
    print(render([{k: str(v) for k, v in r.items()} for r in rows]))
    print(f"rows: {path}")


def render_other(path: str) -> Optional[str]:
    """The table of a bench/ script's CSV, or None for a `kadeploy bench` results.csv."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for column, render in KINDS:
        if rows and column in rows[0]:
            return render(rows)
    return None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="a results.csv of `kadeploy bench`")
    ap.add_argument("--ratios", action="store_true",
                    help="print kadeploy's time and CPU against each baseline instead")
    ap.add_argument("--median", action="store_true",
                    help="each measure's median over the repeats instead of its mean")
    args = ap.parse_args(argv)
    try:
        other = render_other(args.csv)
        if other is not None:
            print(other)
            return 0
        runs = read_runs(args.csv)
    except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
        print(f"bench/tables.py: cannot read {args.csv}: {e}", file=sys.stderr)
        return 1
    summary = sorted(aggregate(runs), key=lambda s: (s["rate_mbit"], s["n"]))
    print(ratio_markdown(summary) if args.ratios else markdown(summary, "_median" if args.median else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
