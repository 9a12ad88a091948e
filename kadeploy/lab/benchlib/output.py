"""Results of a sweep: aggregation over repeats, CSV, JSON, a text table, PNG plots."""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

KEY = ("rate_mbit", "method", "n", "arity", "buffer_size", "backend", "integrity", "compress", "start")
CSV_FIELDS = [*KEY, "size", "repeat", "ok", "wall_s", "stream_s", "throughput_mbit",
              "stream_mbit", "link_fraction", "stream_link_fraction", "cpu_server_s",
              "cpu_client_mean_s", "cpu_client_max_s", "cpu_total_s", "cpu_per_gb_server",
              "cpu_per_gb_client", "backend_used", "compression", "error"]
MEASURES = ("wall_s", "stream_s", "link_fraction", "stream_link_fraction",
            "cpu_per_gb_server", "cpu_per_gb_client")


def run_header(script: str, argv: Optional[Sequence[str]]) -> dict:
    """What a benchmark's JSON opens with: the command as typed, the date, the machine."""
    return {
        "command": " ".join([script] + list(argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPU, Linux {platform.release()}, "
                   f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}",
    }


def spread_ms(seconds) -> dict:
    """Median, least and most of durations in seconds, as milliseconds."""
    ms = sorted(1000 * v for v in seconds)
    return {"min": ms[0], "median": statistics.median(ms), "max": ms[-1]}


def key(row: dict) -> Tuple:
    return tuple(row.get(k) for k in KEY)


def aggregate(rows: Sequence[dict]) -> List[dict]:
    """One row per configuration: mean, min and max of each measure over good repeats."""
    groups: Dict[Tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for k, rs in groups.items():
        good = [r for r in rs if r["ok"]]
        agg = dict(zip(KEY, k))
        agg.update({"runs": len(rs), "ok_runs": len(good), "size": rs[0]["size"]})
        for m in MEASURES:
            vals = [r[m] for r in good if r.get(m) is not None]
            agg[m] = statistics.fmean(vals) if vals else None
            agg[m + "_median"] = statistics.median(vals) if vals else None
            agg[m + "_min"] = min(vals) if vals else None
            agg[m + "_max"] = max(vals) if vals else None
        out.append(agg)
    return out


def ratios(summary: Sequence[dict], reference: dict) -> List[dict]:
    """kadeploy (the reference configuration) against each baseline, same rate, N and
    start: time ratio (< 1: kadeploy faster) and client CPU per GB ratio (< 1: cheaper)."""
    ref = {(s["rate_mbit"], s["n"], s.get("start")): s for s in summary if s["method"] == "kadeploy"
           and all(s[k] == v for k, v in reference.items())}
    out = []
    for s in summary:
        k = (s["rate_mbit"], s["n"], s.get("start"))
        if s["method"] == "kadeploy" or k not in ref:
            continue
        kd = ref[k]
        out.append({"rate_mbit": k[0], "n": k[1], "start": k[2], "baseline": s["method"],
                    "time_ratio": _div(kd["wall_s"], s["wall_s"]),
                    "cpu_client_ratio": _div(kd["cpu_per_gb_client"], s["cpu_per_gb_client"]),
                    "cpu_server_ratio": _div(kd["cpu_per_gb_server"], s["cpu_per_gb_server"])})
    return out


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def write_csv(path: str, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(summary: Sequence[dict]) -> str:
    head = ("rate", "method", "N", "first", "a", "buf", "backend", "verify", "ok", "wall s",
            "stream s", "link %", "CPU s/GB client", "CPU s/GB server")
    lines = [head]
    for s in summary:
        lines.append((
            _fmt(s["rate_mbit"], ".0f"), s["method"], str(s["n"]),
            {"sender-first": "sender"}.get(s.get("start"), "receivers"), _fmt(s["arity"], "d"),
            "-" if s["buffer_size"] is None else f"{s['buffer_size'] >> 10}K",
            s["backend"] or "-", {True: "on", False: "off", None: "-"}[s.get("integrity")],
            f"{s['ok_runs']}/{s['runs']}",
            _fmt(s["wall_s"], ".2f"), _fmt(s["stream_s"], ".2f"),
            _fmt(None if s["link_fraction"] is None else 100 * s["link_fraction"], ".1f"),
            _fmt(s["cpu_per_gb_client"], ".2f"), _fmt(s["cpu_per_gb_server"], ".2f")))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in lines)


# ------------------------------------------------------------------- plots

def plots(summary: Sequence[dict], outdir: str, reference: dict) -> List[str]:
    """The PNGs that the sweep has data for; [] when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for name, fn in (("time_vs_n.png", _time_vs_n), ("throughput_vs_arity.png", _vs_arity),
                     ("cpu_per_gb.png", _cpu_per_gb)):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=80)
        if fn(ax, summary, reference):
            fig.tight_layout()
            path = f"{outdir}/{name}"
            fig.savefig(path)
            made.append(path)
        plt.close(fig)
    return made


def _is_ref(s: dict, reference: dict) -> bool:
    return s["method"] != "kadeploy" or all(s[k] == v for k, v in reference.items())


def _rate_label(rate) -> str:
    return "unshaped" if rate is None else f"{rate:g} Mbit/s"


def _time_vs_n(ax, summary, reference) -> bool:
    series: Dict[Tuple, List[dict]] = {}
    for s in summary:
        if _is_ref(s, reference) and s["wall_s"] is not None:
            series.setdefault((s["method"], s["rate_mbit"], s.get("start") or ""), []).append(s)
    if not series or max(len(v) for v in series.values()) < 2:
        return False
    for (method, rate, start), pts in sorted(series.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0, kv[0][2])):
        pts.sort(key=lambda s: s["n"])
        ax.plot([p["n"] for p in pts], [p["wall_s"] for p in pts], marker="o",
                label=f"{method}, {_rate_label(rate)}" + (", sender first" if start == "sender-first" else ""))
        if method == "kadeploy" and start != "sender-first" and all(p["stream_s"] for p in pts):
            ax.plot([p["n"] for p in pts], [p["stream_s"] for p in pts], marker=".",
                    linestyle="--", label=f"kadeploy (report), {_rate_label(rate)}")
    return _label(ax, "nodes N (server included)", "wall time, s",
                  "Time vs N (same data for every method)")


def _label(ax, xlabel: str, ylabel: str, title: str) -> bool:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def _vs_arity(ax, summary, reference) -> bool:
    ref = {k: v for k, v in reference.items() if k != "arity"}
    pts = [s for s in summary if s["method"] == "kadeploy" and s["link_fraction"] is not None
           and all(s[k] == v for k, v in ref.items())]
    by: Dict[Tuple, List[dict]] = {}
    for s in pts:
        by.setdefault((s["rate_mbit"], s["n"]), []).append(s)
    by = {k: v for k, v in by.items() if len({s["arity"] for s in v}) > 1}
    if not by:
        return False
    for (rate, n), v in sorted(by.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
        v.sort(key=lambda s: s["arity"])
        ax.plot([s["arity"] for s in v], [100 * s["stream_link_fraction"] for s in v], marker="o",
                label=f"N={n}, {_rate_label(rate)}")
    return _label(ax, "arity (1 = chain)", "throughput, % of link rate",
                  "kadeploy: throughput vs arity")


def _cpu_per_gb(ax, summary, reference) -> bool:
    ref = {k: v for k, v in reference.items() if k != "backend"}
    bars = []
    for s in summary:
        if s["cpu_per_gb_client"] is None:
            continue
        if s["method"] == "kadeploy" and not all(s[k] == v for k, v in ref.items()):
            continue
        bars.append(s)
    if not bars:
        return False
    n = max(s["n"] for s in bars)
    rate = max((s["rate_mbit"] or 0) for s in bars if s["n"] == n) or None
    bars = [s for s in bars if s["n"] == n and s["rate_mbit"] == rate]
    labels = [s["backend"] if s["method"] == "kadeploy" else s["method"] for s in bars]
    x = range(len(bars))
    ax.bar([i - 0.2 for i in x], [s["cpu_per_gb_client"] for s in bars], 0.4, label="per receiver (mean)")
    ax.bar([i + 0.2 for i in x], [s["cpu_per_gb_server"] or 0 for s in bars], 0.4, label="sender")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylabel("CPU seconds per GB")
    ax.set_title(f"CPU per GB, N={n}, {_rate_label(rate)} (kadeploy: per backend)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return True
