"""What importing one kadeploy module costs a fresh interpreter, in this tree against
another (a worktree of an earlier commit), interleaved round by round so that the
machine's drift hits both alike.

    .venv/bin/python bench/import_cost.py --baseline DIR [--module kadeploy.core.protocol]
                                          [--rounds 12] [--out FILE.json]

Each round starts one interpreter per tree with that tree first on PYTHONPATH; it
imports the module's dependencies first (--preload, by default what the protocol
module imports), then times the module's own import with perf_counter. Byte code is
compiled for both trees first (an installed copy has it). Prints JSON: each tree's
milliseconds (median, min, max) and the ratio of the medians, this tree / baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)
sys.path.insert(0, TREE)
from kadeploy.lab.benchlib import bytecode, output  # noqa: E402
PRELOAD = ("kadeploy.asyncio_without_tls", "dataclasses", "json", "hashlib", "hmac", "typing",
           "ipaddress", "kadeploy.core.fields", "kadeploy.core.frame", "kadeploy.core.states",
           "kadeploy.defaults")
TIMER = ("import importlib, sys, time\n"
         "for name in sys.argv[2:]: importlib.import_module(name)\n"
         "t = time.perf_counter(); importlib.import_module(sys.argv[1])\n"
         "print(time.perf_counter() - t)\n")


def time_import(tree: str, module: str, preload) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", TIMER, module, *preload], env=env, cwd="/",
                         capture_output=True, text=True, check=True).stdout
    return float(out)     # seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="the other tree (e.g. git worktree add DIR COMMIT)")
    ap.add_argument("--module", default="kadeploy.core.protocol")
    ap.add_argument("--preload", default=",".join(PRELOAD),
                    help="modules imported before the timed one, comma-separated")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not os.path.isdir(os.path.join(args.baseline, "kadeploy")):
        ap.error(f"--baseline {args.baseline}: no kadeploy package there")
    preload = [m for m in args.preload.split(",") if m]
    trees = {"this": TREE, "baseline": os.path.abspath(args.baseline)}
    byte_code = bytecode.as_installed()
    if not bytecode.compile_tree(os.path.join(trees["baseline"], "kadeploy")):
        byte_code += "; the baseline's partly from source"
    times = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            times[name].append(time_import(tree, args.module, preload))
    result = {
        **output.run_header("bench/import_cost.py", argv),
        "byte_code": byte_code,
        "module": args.module,
        "this_ms": output.spread_ms(times["this"]),
        "baseline_ms": output.spread_ms(times["baseline"]),
    }
    result["this_to_baseline_median"] = result["this_ms"]["median"] / result["baseline_ms"]["median"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
