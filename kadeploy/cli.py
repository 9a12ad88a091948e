"""Command line: ka-d-server, ka-d-client (the original's flags and ports) and kadeploy.

Each command's own options are declared here, those several commands share in
kadeploy.options; `kadeploy server`/`kadeploy client` are the same commands as
ka-d-server/ka-d-client. Every failure ends in one line on stderr and a
documented exit status (kadeploy.errors), never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, List, Optional

import click

from kadeploy import defaults
from kadeploy import relay as relay_mod
from kadeploy.control.auth import load_key
from kadeploy.control.policy import (
    security_options,
    server_security_options,
)
from kadeploy.data import synthetic
from kadeploy.errors import EXIT_INTERRUPTED, EXIT_USAGE, failure_status, interrupt_on_sigterm
from kadeploy.install import cli as install_cli
from kadeploy.netboot import options as netboot_options
from kadeploy.options import (
    CONTEXT,
    POSITIVE,
    SECONDS,
    Size,
    arity_option,
    network_options,
)
from kadeploy.relay import check_backend
from kadeploy.version import PROTOCOL_NAME, PROTOCOL_VERSION, __version__
from kadeploy.view.logs import setup_logging

# ------------------------------------------------------------------ helpers

def version_text(prog: str) -> str:
    try:
        backend = relay_mod.resolve()
    except relay_mod.BackendUnavailable as e:
        backend = f"unavailable ({e})"
    avail = relay_mod.available()
    have = ", ".join(name for name, why in avail.items() if why is None)
    return (f"{prog} (kadeploy) {__version__}\n"
            f"protocol {PROTOCOL_NAME}/{PROTOCOL_VERSION}\n"
            f"relay backend {backend} (available: {have})")


def _print_version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        click.echo(version_text(ctx.find_root().info_name or "kadeploy"))
        ctx.exit(0)


def version_option(f):
    # -v prints the version, as in the original; verbosity is --verbose / -q.
    return click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True,
                        callback=_print_version, help="Print the version, protocol and relay backend, and exit.")(f)


def run_main(cmd: click.Command, prog: str, args: Optional[List[str]] = None) -> None:
    """Run a click command with the project's exit statuses and one-line errors."""
    import signal
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        rv = cmd.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see {prog} --help)"
        click.echo(f"{prog}: error: {e.format_message()}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (Exception, KeyboardInterrupt) as e:
        sys.exit(failure_status(prog, e))
    sys.exit(rv or 0)


def check_compress(text: str) -> str:
    from kadeploy.data.codec import CodecError, parse_spec
    try:
        return str(parse_spec(text))
    except CodecError as e:
        raise click.BadParameter(str(e), param_hint="'--compress'")


# ------------------------------------------------------------------- server

@click.command("server", context_settings=CONTEXT)
@click.option("-n", "--clients", "n_clients", type=POSITIVE, default=None,
              help="Number of clients to wait for before the tree is built (default 1, or the number of --hosts).")
@arity_option
@click.option("-s", "--session", metavar="NAME", help="Session name; clients may find the server by UDP broadcast of it.")
@click.option("-e", "--command", "producer", metavar="CMD", default=None,
              help="Producer command, run by /bin/sh; its stdout is the stream. [default: (cd /; tar --create --one-file-system --sparse /)]")
@click.option("--synthetic", type=Size(), default=None, expose_value=False, callback=synthetic.remember,
              help="Network check: stream SIZE zero bytes (suffixes K, M, G) instead of running a producer; not with -e.")
@click.option("-d", "--delay", type=click.IntRange(min=0), default=0,
              help="Release clients waiting with -w one by one, this many tenths of a second apart.")
@click.option("-l", "--last-reports", is_flag=True,
              help="Accepted for compatibility: every node always reports its progress.")
@click.option("--wait-timeout", type=SECONDS, default=None,
              help="Start after this many seconds with the clients registered so far.")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False), default=None,
              help="File of host names or addresses, one a line: the deployment order, and the only hosts accepted.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the final report to this file as JSON.")
@click.option("--size", "expected_size", type=Size(), default=None,
              help="Expected stream size (suffixes K, M, G), for the ETA of the progress display.")
@click.option("--progress-interval", type=SECONDS, default=defaults.PROGRESS_INTERVAL, show_default=True,
              help="Seconds between progress lines when stderr is not a terminal.")
@click.option("--no-verify", is_flag=True,
              help="Send no chunk digests: nodes cannot verify what they received.")
@click.option("--no-repair", is_flag=True,
              help="Keep no repair window: the nodes below a lost node fail instead of being re-attached.")
@click.option("--window", "window", type=Size(), default=defaults.REPAIR_WINDOW,
              show_default=f"{defaults.REPAIR_WINDOW >> 20}M",
              help="Bytes of the stream kept in memory, by the server and each node with children, to "
                   "repair nodes from (suffixes K, M, G); a node that fell further behind cannot be repaired.")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the whole stream in a file in this directory instead of the window (it needs "
                   "room for the whole stream).")
@click.option("--stall-timeout", type=SECONDS, default=defaults.STALL_TIMEOUT, show_default=True,
              help="Seconds of silence after which a node is given up (and the server, by the nodes).")
@click.option("--max-connections", type=POSITIVE, default=defaults.MAX_CONNECTIONS, show_default=True,
              help="Control connections open at once; more are closed at once and counted (floods).")
@click.option("--compress", metavar="none|zstd[:LEVEL]|auto", default="none", show_default=True,
              help="Compress the stream once on the server (zstd, LEVEL 1-19, default 3; on every core, up to 8 threads); "
                   "relays forward it as it is and each node decompresses for its consumer. auto "
                   "compresses only when the link is slower than compressing and decompressing.")
@install_cli.server_options
@netboot_options.server_boot_states_option
@server_security_options
@network_options
@version_option
def server_command(n_clients, arity, session, producer, delay, last_reports, wait_timeout,
                   hosts_file, report_file, expected_size, progress_interval, no_verify,
                   no_repair, window, spool_dir, stall_timeout, max_connections, compress,
                   install_manifest, nodes_table, reboot, strict, boot_states, insecure_no_verify, encrypt,
                   control_port, data_port, bind, relay_backend, buffer_size, sockbuf,
                   connect_timeout, handshake_timeout, discovery_port, key_file, quiet, verbose):
    """Send a stream (by default a tar of this machine's root) to clients
    arranged in a chain or tree, and report how every node fared."""
    from kadeploy.control import server_run

    setup_logging("ka-d-server", quiet, verbose)
    if session is not None:
        from kadeploy.control.discovery import check_session_name
        check_session_name(session)
    check_backend(relay_backend)
    producer = synthetic.server_producer(producer)
    producer, install = install_cli.server_install(install_manifest, nodes_table, reboot, strict, producer)
    params = click.get_current_context().params
    cfg = server_run.configure(params, producer, install, check_compress(compress))
    return server_run.deploy(cfg, report_file)


# ------------------------------------------------------------------- client

def check_advertise(value: Optional[str]) -> Optional[str]:
    """--advertise by the rule the server holds the Hello to, so that a bad one is a
    usage error here, not a refusal there."""
    from kadeploy.core.fields import RULES
    wrong = value is not None and RULES["Hello"]["advertise"](value)
    if wrong:
        raise click.BadParameter(f"{value!r} {wrong}", param_hint="'--advertise'")
    return value


@click.command("client", context_settings=CONTEXT)
@click.option("-h", "--host", metavar="HOST", help="Server address or name.")
@click.option("-s", "--session", metavar="NAME", help="Find the server by UDP broadcast of this session name.")
@click.option("-e", "--command", "consumer", metavar="CMD", default=None,
              help="Consumer command, run by /bin/sh; the stream arrives on its stdin. [default: tar --extract ... --directory TARGET]")
@click.option("--discard", is_flag=True, expose_value=False, callback=synthetic.remember,
              help="Network check: read the stream and discard it instead of running a consumer; not with -e.")
@click.option("-t", "--target", type=click.Path(file_okay=False), default=None,
              help="Directory the default consumer extracts into; with -e, the directory the command runs in. [default: /tmp/disk]")
@click.option("-w", "--wait", "wait_finish", is_flag=True,
              help="After the data is written, wait for the server's finish (see server -d).")
@click.option("-g", "--go", is_flag=True,
              help="Tell the server to start now with the clients it has, then exit.")
@click.option("--advertise", metavar="ADDRESS", callback=lambda ctx, param, value: check_advertise(value),
              help="Address this node's children connect to (default: the one the server sees).")
@install_cli.client_options
@security_options
@network_options
@version_option
def client_command(host, session, consumer, target, wait_finish, go, advertise, install, disk, force,
                   control_port,
                   data_port, bind, relay_backend, buffer_size, sockbuf, connect_timeout,
                   handshake_timeout, discovery_port, key_file, quiet, verbose, insecure_no_verify):
    """Receive the stream into a local consumer (by default tar extracting into
    --target) and forward it to this node's children."""
    from kadeploy.asyncio_without_tls import asyncio
    from kadeploy.control.client import config_from, go_now, run_node
    from kadeploy.control.discovery import check_session_name

    setup_logging("ka-d-client", quiet, verbose)
    if not host and not session:
        raise click.UsageError("give the server with -h HOST or find it with -s SESSION")
    if session is not None:
        check_session_name(session)
    if relay_backend or os.environ.get(relay_mod.ENV_BACKEND) or os.environ.get(relay_mod.ENV_REQUIRE):
        check_backend(relay_backend)   # else `auto`, which always loads: checked when used
    consumer = synthetic.client_consumer(consumer)
    install_cli.check_client(install, disk, force, consumer, target)
    params = click.get_current_context().params
    cfg = config_from(params, consumer, load_key(key_file, warn=logging.getLogger("kadeploy").warning))
    if go:
        logging.getLogger("kadeploy.client").info(asyncio.run(go_now(cfg)))
        return 0
    from kadeploy.control import early
    return run_node(cfg, early.take(params, synthetic.discard_asked(), cfg.key))


# --------------------------------------------------------------- kadeploy

class LazyGroup(click.Group):
    """A group whose lab commands (demo, bench) are imported only when run or listed,
    so that ka-d-client and ka-d-server never load the benchmark lab."""

    lazy = {"demo": "kadeploy.lab.demo:demo_command", "bench": "kadeploy.lab.bench:bench_command",
            # push needs ClusterShell, which the two commands must not load
            "push": "kadeploy.push.cli:push_command", "receive": "kadeploy.push.cli:receive_command",
            "netboot": "kadeploy.netboot.cli:netboot_group"}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group("kadeploy", cls=LazyGroup, context_settings=CONTEXT)
@version_option
def kadeploy_group():
    """Clone one machine onto many, or broadcast any stream to many nodes,
    through a chain or tree of TCP connections."""


kadeploy_group.add_command(server_command, "server")
kadeploy_group.add_command(client_command, "client")
kadeploy_group.add_command(install_cli.manifest_group, "manifest")


@kadeploy_group.command("backends", context_settings=CONTEXT)
def backends_command():
    """List the relay backends, which ones load here, and which auto picks."""
    for name, why in relay_mod.available().items():
        click.echo(f"{name:8} {'available' if why is None else why}")
    click.echo(f"auto     -> {relay_mod.resolve('auto')}")


@kadeploy_group.command("digest", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def digest_command(directory):
    """Print a digest of a directory tree's content and metadata, to compare a
    clone with its source."""
    from kadeploy.lab.treedigest import tree_digest
    click.echo(f"{tree_digest(directory)}  {directory}")


COMPLETION_SHELLS = ("bash", "zsh")


@kadeploy_group.command("completion", context_settings=CONTEXT)
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
def completion_command(shell):
    """Print the shell completion script of ka-d-server, ka-d-client and kadeploy
    for SHELL; e.g. add `eval "$(kadeploy completion bash)"` to ~/.bashrc."""
    from click.shell_completion import get_completion_class

    for cmd, prog in ((server_command, "ka-d-server"), (client_command, "ka-d-client"),
                      (kadeploy_group, "kadeploy")):
        var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
        click.echo(get_completion_class(shell)(cmd, {}, prog, var).source())


def _entry(cmd: click.Command, prog: str) -> Callable[[], None]:
    return lambda: run_main(cmd, prog)


server_main = _entry(server_command, "ka-d-server")
client_main = _entry(client_command, "ka-d-client")
kadeploy_main = _entry(kadeploy_group, "kadeploy")


if __name__ == "__main__":  # pragma: no cover
    kadeploy_main()
