"""What the repair window's memory costs a process on the wall clock: filling it (its
pages' first faults, which the digest thread pays during the stream) and freeing it in
the process's exit (which the server and every node with a window pay after their
last line). kadeploy's Window against a shared anonymous mapping of the same size,
the window's memory before f14a188, and against a process with no window at all; in
the same run, interleaved. With --huge, also the window's mapping asking for transparent
huge pages (MADV_HUGEPAGE), which kadeploy does not do: bench/RESULTS.md says why.

    .venv/bin/python bench/window_memory.py [--size-mib 256] [--rounds 5] [--huge] [--out F.json]

Each round runs one child process per kind. It maps the memory, writes it 1 MiB at a
time, says how long that took, and exits (os._exit, as kadeploy.entry ends a command).
The exit time is from its line to its reaping. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from kadeploy.lab.benchlib import output  # noqa: E402

KINDS = ("window", "shared", "none")

CHILD = """
import mmap, os, sys, time
kind, size = sys.argv[1], int(sys.argv[2])
if kind in ("window", "huge"):
    from kadeploy.data.window import Window
    buf = Window(size).buf
    if kind == "huge":
        buf.madvise(mmap.MADV_HUGEPAGE)
elif kind == "shared":
    buf = mmap.mmap(-1, size)
else:
    buf = None
started = time.perf_counter()
if buf is not None:
    piece = b"x" * (1 << 20)
    for offset in range(0, size, len(piece)):
        buf[offset:offset + len(piece)] = piece
print(time.perf_counter() - started, flush=True)
os._exit(0)
"""


def one(kind: str, size: int, env) -> "tuple[float, float]":
    """(seconds to fill, seconds from the fill's end to the process's reaping)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(size)], stdout=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()
    said = time.monotonic()
    status = proc.wait()
    ended = time.monotonic()
    proc.stdout.close()
    if status != 0 or not line.strip():
        raise SystemExit(f"window_memory: the {kind} child exited {status}")
    return float(line), ended - said


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--huge", action="store_true", help="also the window with MADV_HUGEPAGE")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1:
        ap.error("--size-mib and --rounds must be at least 1")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    size = args.size_mib << 20
    kinds = KINDS + (("huge",) if args.huge else ())
    runs = {kind: [] for kind in kinds}
    for _ in range(args.rounds):      # interleaved: the machine's drift hits them all alike
        for kind in kinds:
            runs[kind].append(one(kind, size, env))
    result = {
        **output.run_header("bench/window_memory.py", argv),
        "size_mib": args.size_mib,
        "rounds": args.rounds,
    }
    for kind in kinds:
        result[f"{kind}_fill_ms"] = output.spread_ms(fill for fill, _ in runs[kind])
        result[f"{kind}_exit_ms"] = output.spread_ms(freed for _, freed in runs[kind])
    for what in ("fill", "exit"):
        result[f"window_to_shared_{what}_median"] = (result[f"window_{what}_ms"]["median"]
                                                     / result[f"shared_{what}_ms"]["median"])
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
