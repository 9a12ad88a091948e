"""ka-d-server without click, for a command line read to its last parameter (issue 13,
point 4: the stream starts as soon as the nodes are there).

With the nodes started first, everything the server does before its first byte is on
the wall clock of the deployment, and click with the declarations of every command is
~15 % of that (bench/RESULTS.md). A command line made only of the options in OPTIONS,
each value read as click reads it (kadeploy.control.cmdline), is known to the last
parameter: those, and click's defaults for the rest (ABSENT). The server then runs
exactly what the click command runs once it has its parameters
(kadeploy.control.server_run), so the two cannot differ past the reading.
tests/test_early_server.py holds OPTIONS and ABSENT to click's declaration, and each
reading to click's. Anything else (--help, -v, an install, a session, a value this
reading is not sure of) goes to click, which accepts it or says what is wrong."""
from __future__ import annotations

import os

from kadeploy import defaults
from kadeploy.control import cmdline

# Each option read here: its spellings -> (click's parameter name, kind).
OPTIONS = {
    ("-n", "--clients"): ("n_clients", "count"),
    ("-a", "--arity"): ("arity", "count"),
    ("-e", "--command"): ("producer", "text"),
    ("--synthetic",): ("synthetic", "size"),
    ("-d", "--delay"): ("delay", "count0"),
    ("-l", "--last-reports"): ("last_reports", "flag"),
    ("--wait-timeout",): ("wait_timeout", "seconds"),
    ("--hosts",): ("hosts_file", "file"),
    ("--report",): ("report_file", "output"),
    ("--size",): ("expected_size", "size"),
    ("--progress-interval",): ("progress_interval", "seconds"),
    ("--no-verify",): ("no_verify", "flag"),
    ("--no-repair",): ("no_repair", "flag"),
    ("--window",): ("window", "size"),
    ("--stall-timeout",): ("stall_timeout", "seconds"),
    ("--max-connections",): ("max_connections", "count"),
    ("--compress",): ("compress", "compress"),
    ("--encrypt",): ("encrypt", "flag"),
    ("--insecure-no-verify",): ("insecure_no_verify", "flag"),
    ("-p", "--control-port"): ("control_port", "port"),
    ("-P", "--data-port"): ("data_port", "port"),
    ("--relay",): ("relay_backend", "backend"),
    ("--buffer-size",): ("buffer_size", "size"),
    ("--sockbuf",): ("sockbuf", "size"),
    ("--connect-timeout",): ("connect_timeout", "seconds"),
    ("--handshake-timeout",): ("handshake_timeout", "seconds"),
    ("--key-file",): ("key_file", "file"),
    ("-q", "--quiet"): ("quiet", "flag"),
    ("--verbose",): ("verbose", "flag"),
}
# What click gives each parameter of ka-d-server that is not on the command line.
ABSENT = {
    "n_clients": None, "arity": 1, "session": None, "producer": None, "delay": 0,
    "last_reports": False, "wait_timeout": None, "hosts_file": None, "report_file": None,
    "expected_size": None, "progress_interval": defaults.PROGRESS_INTERVAL, "no_verify": False,
    "no_repair": False, "window": defaults.REPAIR_WINDOW, "spool_dir": None,
    "stall_timeout": defaults.STALL_TIMEOUT, "max_connections": defaults.MAX_CONNECTIONS,
    "compress": "none", "install_manifest": None, "nodes_table": None, "reboot": False,
    "strict": False, "boot_states": None, "encrypt": False, "insecure_no_verify": False,
    "control_port": defaults.CONTROL_PORT, "data_port": defaults.DATA_PORT, "bind": None,
    "relay_backend": None, "buffer_size": defaults.BUFFER_SIZE, "sockbuf": None,
    "connect_timeout": defaults.CONNECT_TIMEOUT, "handshake_timeout": defaults.HANDSHAKE_TIMEOUT,
    "discovery_port": defaults.DISCOVERY_PORT, "key_file": None, "quiet": False, "verbose": False,
}
_SPELLINGS = cmdline.spellings_of(OPTIONS)


def scan(argv, environ=os.environ) -> "dict | None":
    """The parameters click would give for `argv` (those it names, and `synthetic`), or
    None when they are not known for sure and the command line is click's to read."""
    params = cmdline.read(argv, _SPELLINGS)
    if params is None or ("synthetic" in params and "producer" in params):
        return None                  # a usage error click will name
    if not cmdline.environment_is_plain(environ, "ka-d-server", "kadeploy"):
        return None
    return params


def run(prog: str, params: dict) -> int:
    """The exit status of the server command with these parameters (scan's), having run it."""
    from kadeploy.errors import failure_status
    params = {**ABSENT, **params}
    size = params.pop("synthetic", None)
    try:
        from kadeploy.control import server_run
        from kadeploy.data.codec import parse_spec
        from kadeploy.data.synthetic import synthetic_producer
        from kadeploy.relay import check_backend
        from kadeploy.view.logs import setup_logging

        setup_logging("ka-d-server", params["quiet"], params["verbose"])
        check_backend(params["relay_backend"])
        producer = params["producer"] if size is None else synthetic_producer(size)
        cfg = server_run.configure(params, producer, None, str(parse_spec(params["compress"])))
        return server_run.deploy(cfg, params["report_file"])
    except (Exception, KeyboardInterrupt) as e:
        return failure_status(prog, e)
