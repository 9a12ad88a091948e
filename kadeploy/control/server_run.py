"""ka-d-server once its command line is read, by click (kadeploy.cli) or without it
(kadeploy.control.early_server): the checks that need no click, the configuration, the
listeners, the deployment and its report. Both paths run this, so they cannot differ
past the reading of their options."""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

from kadeploy.errors import EXIT_USAGE, KadeployError


def read_hosts_file(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except OSError as e:
        raise KadeployError(f"cannot read hosts file {path}: {e.strerror}", exit_code=EXIT_USAGE)
    hosts = [h for h in lines if h]
    if not hosts:
        raise KadeployError(f"hosts file {path} names no host", exit_code=EXIT_USAGE)
    return hosts


def configure(params: dict, producer: Optional[str], install, compress: str):
    """The ServerConfig of the server command's parameters (click's names), with the
    producer, install and --compress already checked by the path that read them; a
    KadeployError for what the command line cannot be run with."""
    from kadeploy.control.auth import load_key
    from kadeploy.control.policy import server_encrypts, server_verifies
    from kadeploy.control.server_config import ServerConfig
    from kadeploy.data.commands import DEFAULT_PRODUCER

    p = params
    hosts = read_hosts_file(p["hosts_file"]) if p["hosts_file"] else None
    n_clients = p["n_clients"]
    if n_clients is None:
        n_clients = len(hosts) if hosts else 1
    cfg = ServerConfig(
        n_clients=n_clients, arity=p["arity"], session=p["session"], producer=producer or DEFAULT_PRODUCER,
        finish_delay=p["delay"] / 10, control_port=p["control_port"], data_port=p["data_port"],
        bind=p["bind"], wait_timeout=p["wait_timeout"], hosts=hosts, relay_backend=p["relay_backend"],
        buffer_size=p["buffer_size"], sockbuf=p["sockbuf"], connect_timeout=p["connect_timeout"],
        discovery_port=p["discovery_port"], progress_interval=p["progress_interval"],
        expected_size=p["expected_size"], live=False if p["quiet"] else None,
        max_connections=p["max_connections"], handshake_timeout=p["handshake_timeout"],
        repair=not p["no_repair"], spool_dir=p["spool_dir"], window=p["window"],
        stall_timeout=p["stall_timeout"], install=install, compress=compress,
        boot_states=p["boot_states"],
        key=load_key(p["key_file"], warn=logging.getLogger("kadeploy").warning))
    cfg.verify = server_verifies(cfg.key, p["no_verify"], p["insecure_no_verify"])
    cfg.encrypt = server_encrypts(cfg.key, p["encrypt"])
    return cfg


def deploy(cfg, report_file: Optional[str]) -> int:
    """Run the deployment `cfg` describes, print its report (and write it as JSON to
    `report_file`); the command's exit status."""
    # Every check of the command line has passed, so a node that connects now is not
    # left by a server that exits over it. Listening before the control plane's
    # imports (asyncio among them), a node started first connects during them and its
    # Hello waits in the socket, instead of retrying a refused connection until then.
    from kadeploy.control.listeners import server_listeners
    listeners = server_listeners(cfg)
    from kadeploy.asyncio_without_tls import asyncio  # first: asyncio without ssl's start-up
    from kadeploy.control.server import exit_status, serve
    report = asyncio.run(serve(cfg, listeners))
    sys.stdout.write(report.table() + "\n")
    sys.stdout.flush()
    if report_file:
        report.write_json(report_file)
    return exit_status(report)
