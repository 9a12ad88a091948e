"""Compression on a real root file system: `kadeploy bench` with --compress none, zstd
and auto on a Debian tree (debootstrap --variant=minbase bookworm), at 1 Gbit/s and
200 Mbit/s. The baseline in the same run is --compress none.

    .venv/bin/python bench/compress_debian.py [--nodes 2,4] [--repeat 3] [--out bench/out/compress]
    .venv/bin/python bench/compress_debian.py --include linux-image-amd64,build-essential,...

The issue's figures: wall time with zstd <= 0.5 x without, and auto never slower than
the better of on and off by more than 3 %. The tree is built once and cached under
/var/cache/kadeploy-tests/kdd-debian-<key>/ (key: suite, variant, mirror); --tree DIR
uses another directory instead (the test suite's smoke run does). Needs root.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

CACHE = "/var/cache/kadeploy-tests"
SUITE, VARIANT = "bookworm", "minbase"
SOURCES = "/etc/apt/sources.list.d/debian.sources"
# A node's usual payload beside minbase: a kernel with its modules, compilers, Python.
LARGER = "linux-image-amd64,build-essential,gfortran,python3,openssh-server"


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org when none is named)."""
    try:
        with open(SOURCES) as f:
            m = re.search(r"^URIs:\s*(\S+)", f.read(), re.M)
            if m:
                return m.group(1)
    except OSError:
        pass
    return "http://deb.debian.org/debian"


def debian_tree(include: str = "") -> str:
    """The cached minbase tree, built on first use (about 20 s and 100 MB of downloads),
    with the packages of `include` (comma-separated) when given: a larger tree."""
    url = mirror()
    key = hashlib.sha256(f"{SUITE} {VARIANT} {url}".encode()
                         + (f" {include}".encode() if include else b"")).hexdigest()[:12]
    root = os.path.join(CACHE, f"kdd-debian-{key}")
    tree = os.path.join(root, "root")
    if os.path.exists(os.path.join(root, "complete")):
        return tree
    if shutil.which("debootstrap") is None:
        raise SystemExit("compress_debian: needs debootstrap (apt-get install debootstrap)")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    extra = [f"--include={include}"] if include else []
    subprocess.run(["debootstrap", f"--variant={VARIANT}", *extra, SUITE, tree, url], check=True,
                   stdout=subprocess.DEVNULL)
    open(os.path.join(root, "complete"), "w").close()
    return tree


def summarize(doc: dict) -> list:
    """Per rate and N: wall time of zstd and auto against none, from the sweep's summary."""
    by = {}
    for s in doc["summary"]:
        if s["method"] == "kadeploy":
            by.setdefault((s["rate_mbit"], s["n"]), {})[s["compress"]] = s["wall_s"]
    out = []
    for (rate, n), w in sorted(by.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
        off, on, auto = w.get("none"), next((v for k, v in w.items() if k.startswith("zstd")), None), w.get("auto")
        best = min(v for v in (off, on) if v is not None) if (off or on) else None
        out.append({"rate_mbit": rate, "n": n, "wall_none_s": off, "wall_zstd_s": on, "wall_auto_s": auto,
                    "zstd_over_none": on / off if on and off else None,
                    "auto_over_best": auto / best if auto and best else None})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="2,4")
    ap.add_argument("--rate", default="1gbit,200mbit")
    ap.add_argument("--compress", default="none,zstd,auto")
    ap.add_argument("--repeat", default="3")
    ap.add_argument("--tree", default=None, help="stream this directory instead of the Debian tree")
    ap.add_argument("--include", default="", help="packages to add to the minbase tree (comma-separated): "
                    f"a larger tree, e.g. {LARGER}")
    ap.add_argument("--out", default="bench/out/compress")
    args = ap.parse_args(argv)
    tree = args.tree or debian_tree(args.include)
    cmd = [sys.executable, "-m", "kadeploy", "bench", "--methods", "kadeploy", "--nodes", args.nodes,
           "--rate", args.rate, "--compress", args.compress, "--source", tree, "--repeat", args.repeat,
           "--out", args.out, "--plain"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    status = subprocess.run(cmd, env=env).returncode
    with open(os.path.join(args.out, "results.json")) as f:
        doc = json.load(f)
    rows = summarize(doc)
    with open(os.path.join(args.out, "compression.json"), "w") as f:
        json.dump({"command": " ".join(["bench/compress_debian.py"] + (argv or sys.argv[1:])),
                   "tree": tree, "stream_bytes": doc["size"], "date": doc["date"],
                   "machine": doc["machine"], "rows": rows,
                   "compression": sorted({r.get("compression") or "" for r in doc["runs"]})}, f, indent=2)
    for r in rows:
        print(json.dumps(r))
    return status


if __name__ == "__main__":
    sys.exit(main())
