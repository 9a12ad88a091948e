"""The node's install consumer: run by ka-d-client --install as its consumer, with
the install stream on stdin. `python -m kadeploy.install.consume --plan FILE
--status FILE [--disk DEVICE] [--force]`; exits 0 only when every step succeeded.

The disk is checked, partitioned and formatted before the first byte of the stream
is read: until then the chain waits (TCP flow control), a barrier without timeouts.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import List, Optional

from .manifest import ManifestError, parse_manifest
from .status import StepLog, first_failure
from .steps import Installer


class Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise Interrupted()   # unwinds through the installer: mounts are undone


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="kadeploy-install-consume")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--disk")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    log = StepLog(args.status)
    try:
        with open(args.plan) as f:
            plan = json.load(f)
        manifest = parse_manifest(plan["manifest"], "the server's manifest")
    except (OSError, ValueError, KeyError, ManifestError) as e:
        log.begin("manifest")
        log.end("manifest", "failed", str(e), 0.0)
        print(f"kadeploy install: {e}", file=sys.stderr)
        return 1
    installer = Installer(manifest, plan["node"], log, disk=args.disk, force=args.force)
    try:
        ok = installer.install(sys.stdin.buffer)
    except Interrupted:
        print("kadeploy install: interrupted", file=sys.stderr)
        return 1
    if not ok:
        print(f"kadeploy install: {first_failure(log.steps)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
