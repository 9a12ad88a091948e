"""The install part of the server's report: one row per node and step."""
from __future__ import annotations

from typing import List


def steps_table(nodes) -> List[str]:
    head = ("NODE", "STEP", "STATUS", "BYTES", "VERIFIED", "SECONDS", "DETAIL")
    rows = [head]
    for n in nodes:
        name = f"{n.position or '-'} {n.address}"
        for s in n.steps:
            rows.append((name, s["step"], s["status"].upper() if s["status"] != "ok" else "ok",
                         "-" if s["bytes"] is None else str(s["bytes"]),
                         {True: "yes", False: "NO", None: "-"}[s["verified"]],
                         f"{s['seconds']:.2f}", s["detail"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return ["", "install steps:"] + [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
