"""A rack of new nodes asking for DHCP at once, with dnsmasq's ping check off (the
kit's default, `no-ping`) and on (`--ping-check`), in the same run.

    .venv/bin/python bench/dhcp_rack.py [--nodes 20]

`kadeploy netboot serve --unknown install` in a network namespace of its own; --nodes
unknown nodes and one node of the table, each in its own namespace on the same bridge,
run busybox udhcpc together (a discover a second, 60 of them, as a patient PXE ROM).
For each case: how many got a lease, and the seconds from the start to the last lease;
the known node's own. Needs root, dnsmasq and busybox (tools/setup-env installs them).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import netbootlab as lab  # noqa: E402
from test_netboot_netns import NODE1_MAC, Serve, udhcpc  # noqa: E402

from kadeploy.lab.benchlib import output  # noqa: E402


def rack(n: int, extra) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="kd-scratch-rack-"))
    scratch.chmod(0o755)                 # dnsmasq (user nobody) reads the TFTP root below it
    image = scratch / "image"
    image.mkdir()
    for name in ("vmlinuz", "initrd.img", "localboot.efi"):
        (image / name).write_bytes(b"K" * 5000)
    nodes = scratch / "nodes.csv"
    nodes.write_text(f"name,mac,address\nnode1,{NODE1_MAC},198.18.0.11\n")
    lab.cleanup_stale()
    with lab.BootNetwork() as net:
        serve = Serve(net, scratch, image, nodes, "--unknown", "install", *extra)
        serve.wait_for(r"dnsmasq serves br0")
        peers = [net.add_peer(f"52:54:00:6b:65:{i:02x}") for i in range(n)] + [net.add_peer(NODE1_MAC)]
        t0 = time.monotonic()

        def ask(ns):
            ok = udhcpc(net, ns, tries=60).returncode == 0
            return ok, time.monotonic() - t0
        with concurrent.futures.ThreadPoolExecutor(len(peers)) as pool:
            results = list(pool.map(ask, peers))
        serve.proc.terminate()
    unknown, known = results[:-1], results[-1]
    leased = [s for ok, s in unknown if ok]
    return {"unknown_leased": len(leased), "unknown": n,
            "last_unknown_lease_s": round(max(leased), 2) if leased else None,
            "known_leased": known[0], "known_s": round(known[1], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20, help="unknown nodes (plus one of the table)")
    args = ap.parse_args(argv)
    result = {
        **output.run_header("bench/dhcp_rack.py", argv),
        "no_ping": rack(args.nodes, []),
        "ping_check": rack(args.nodes, ["--ping-check"]),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
