"""Run one command and record what it cost: ``python -m kadeploy.lab.benchlib.runner
OUT.json LOG -- ARGV...``.

Written to OUT.json when the command ends: start and end (wall clock, comparable
between network namespaces of one host), the exit status, and the user and system
CPU seconds of the command's whole process tree (``RUSAGE_CHILDREN`` counts every
descendant that was waited for: a shell waits for its pipeline, the client for its
consumer). The runner's own start-up is not counted.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m kadeploy.lab.benchlib.runner OUT.json LOG -- ARGV...", file=sys.stderr)
        return 64
    out, log, cmd = argv[0], argv[1], argv[3:]
    with open(log, "wb") as f:
        start = time.time()
        status = subprocess.call(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        end = time.time()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"start": start, "end": end, "status": status,
                   "utime": ru.ru_utime, "stime": ru.ru_stime}, f)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
