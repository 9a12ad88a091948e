"""The client's side of an install: turn the server's payload into the install
consumer's command, then its recorded steps into the node's verdict and the steps
carried in Done. The node is installed only when the stream was verified AND every
step, to the last, succeeded."""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

from . import status

log = logging.getLogger("kadeploy.client")


class InstallJob:
    def __init__(self, payload: Optional[str], disk: Optional[str], force: bool) -> None:
        self.dir = tempfile.mkdtemp(prefix="kadeploy-install-job-")
        self.plan_path = os.path.join(self.dir, "plan.json")
        self.status_path = os.path.join(self.dir, "status.json")
        self.disk, self.force = disk, force
        self.reboot = False
        try:
            plan = json.loads(payload) if payload else {"refused": "the server sent no install"}
        except ValueError:
            plan = {"refused": "the server's install payload is not JSON"}
        if not isinstance(plan, dict):
            plan = {"refused": "the server's install payload is not an object"}
        if "refused" not in plan and not (isinstance(plan.get("manifest"), str)
                                          and isinstance(plan.get("node"), dict)
                                          and isinstance(plan.get("node", {}).get("hostname"), str)):
            plan = {"refused": "the server's install payload lacks the manifest or the node's values"}
        self.refused = plan.get("refused")
        if self.refused is None:
            self.reboot = plan.get("reboot") is True
            with open(self.plan_path, "w") as f:
                json.dump(plan, f)
            log.info("installing as %s", plan["node"]["hostname"])

    def consumer(self) -> str:
        if self.refused is not None:
            # Still placed in the chain: relay to the children, install nothing.
            return "cat >/dev/null; exit 1"
        argv = [sys.executable, "-m", "kadeploy.install.consume", "--plan", self.plan_path,
                "--status", self.status_path]
        if os.geteuid() == 0 and shutil.which("unshare"):
            # Its own mount namespace: whatever it mounts goes with it, even when it
            # is killed in the middle of an install.
            argv = ["unshare", "--mount", "--propagation", "private", *argv]
        if self.disk:
            argv += ["--disk", self.disk]
        if self.force:
            argv.append("--force")
        return shlex.join(argv)

    def steps(self) -> list:
        try:
            with open(self.status_path) as f:
                return status.load(f.read())
        except (OSError, status.StatusError):
            return []

    def finish(self, outcome) -> str:
        """Fix the outcome from the steps; return the steps as Done carries them."""
        steps = self.steps()
        if self.refused is not None:
            steps = [{"step": "install", "status": "failed", "detail": str(self.refused),
                      "seconds": 0.0, "bytes": None, "verified": None}]
        failure = status.first_failure(steps)
        if failure is not None:
            outcome.ok, outcome.error = False, failure
        elif outcome.ok and not status.all_done(steps):
            outcome.ok, outcome.error = False, "the install did not run to its end"
        if outcome.ok and self.reboot:
            steps.append({"step": "reboot", "status": "ok", "detail": "after the report",
                          "seconds": 0.0, "bytes": None, "verified": None})
        for row in steps:
            if row["status"] == "warning":
                log.warning("step %s: warning: %s", row["step"], row["detail"])
        if failure is not None:
            log.error("%s", failure)
        shutil.rmtree(self.dir, ignore_errors=True)
        return json.dumps(steps)

    def reboot_now(self) -> None:
        log.info("rebooting")
        subprocess.run(["systemctl", "reboot"]) if shutil.which("systemctl") else \
            subprocess.run(["reboot"])
