"""Command line of `kadeploy push` and of its remote side, `kadeploy receive`."""
from __future__ import annotations

import asyncio
import logging

import click

from kadeploy.control.auth import load_key
from kadeploy.defaults import CONTROL_PORT, DATA_PORT
from kadeploy.errors import UsageError
from kadeploy.push import launchers as launchers_mod
from kadeploy.push.nodes import ORDERS
from kadeploy.push.push import DEFAULT_REMOTE_COMMAND, DEFAULT_STALL_TIMEOUT, DEFAULT_WAIT_TIMEOUT

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}
PORT = click.IntRange(1, 65535)
POSITIVE = click.IntRange(min=1)
SECONDS = click.FloatRange(min=0, min_open=True)


def _logging(prog: str, quiet: bool, verbose: bool) -> None:
    """Push is quiet by default: the server's per-node lines are for --verbose."""
    from kadeploy.cli import setup_logging
    setup_logging(prog, quiet=False, verbose=False)
    logging.getLogger("kadeploy").setLevel(
        logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


class OrderType(click.ParamType):
    name = "nodeset|address|FILE"

    def convert(self, value, param, ctx):
        if value in ORDERS:
            return value
        import os
        if not os.path.isfile(value):
            self.fail(f"{value!r} is neither nodeset, address nor a file", param, ctx)
        return value


@click.command("push", context_settings=CONTEXT)
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
@click.option("-w", "--nodes", metavar="NODESET",
              help="The nodes, as a ClusterShell node set: node[001-512], @group, a,b,c "
                   "(with --launcher srun inside an allocation, by default its nodes).")
@click.option("--dest", metavar="DIR", required=True,
              help="Absolute path on the nodes: each SOURCE becomes DIR/NAME; with --file, the file's path or directory.")
@click.option("--file", "single_file", is_flag=True,
              help="Send one regular file or block device as raw bytes, not a tar of directories.")
@click.option("--exclude", "excludes", metavar="PATTERN", multiple=True,
              help="Leave out files matching PATTERN (tar's --exclude); may be repeated.")
@click.option("--preserve", is_flag=True,
              help="Keep owners (numeric), modes, times, ACLs and extended attributes.")
@click.option("--dry-run", is_flag=True,
              help="Print the node order, the producer and the launcher's commands; start nothing.")
@click.option("--launcher", type=click.Choice(["auto", *launchers_mod.NAMES]), default="auto", show_default=True,
              help="How the receivers are started: auto is clush when ClusterShell imports, else ssh.")
@click.option("--remote-command", metavar="CMD", default=DEFAULT_REMOTE_COMMAND, show_default=True,
              help="How a node starts kadeploy (its receive subcommand is appended).")
@click.option("--order", type=OrderType(), metavar="nodeset|address|FILE", default="nodeset", show_default=True,
              help="Chain order: the node set's, by address, or the order of the nodes in FILE.")
@click.option("--chains", type=POSITIVE, default=1, show_default=True,
              help="Send K chains at once, each a run of consecutive nodes in the order.")
@click.option("-a", "--arity", type=POSITIVE, default=1, show_default=True,
              help="Children per node (a tree) instead of chains.")
@click.option("--server-address", metavar="ADDRESS",
              help="Address the nodes reach this host at (default: where their ssh session came from; srun, none: this host's name).")
@click.option("-p", "--control-port", type=PORT, default=CONTROL_PORT, show_default=True,
              help="TCP port of the control connections.")
@click.option("-P", "--data-port", type=PORT, default=DATA_PORT, show_default=True,
              help="TCP port of this host's data connections.")
@click.option("--fanout", type=POSITIVE, default=None,
              help="Receivers started at once (default: ClusterShell's configuration for clush, 64 for ssh, pdsh's own 32).")
@click.option("--connect-timeout", type=SECONDS, default=launchers_mod.DEFAULT_CONNECT_TIMEOUT, show_default=True,
              help="Seconds the launcher waits for a node's ssh connection.")
@click.option("--ssh-option", "ssh_options", metavar="OPT", multiple=True,
              help="An argument for ssh (ssh, clush and pdsh launchers), e.g. -F FILE or -oPort=2222; may be repeated.")
@click.option("--wait-timeout", type=SECONDS, default=DEFAULT_WAIT_TIMEOUT, show_default=True,
              help="srun and none: seconds to wait for the nodes to register before starting with those that did (srun: not for those whose task failed).")
@click.option("--stall-timeout", type=SECONDS, default=DEFAULT_STALL_TIMEOUT, show_default=True,
              help="Seconds of silence after which a node is given up.")
@click.option("--key-file", type=click.Path(dir_okay=False), envvar="KADEPLOY_KEY_FILE",
              help="Shared key, at the same path on every node (see ka-d-server --key-file).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the result as JSON: the nodes ok and failed (with why), and the server's report.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the result.")
@click.option("--verbose", is_flag=True, help="Print the server's progress and every node's registration.")
def push_command(sources, nodes, dest, single_file, excludes, preserve, dry_run, launcher,
                 remote_command, order, chains, arity, server_address, control_port, data_port,
                 fanout, connect_timeout, ssh_options, wait_timeout, stall_timeout, key_file,
                 report_file, quiet, verbose):
    """Send files or directories to many running nodes through the chain: a
    receiver is started on every node by ssh, clush, pdsh or srun, each node renames
    its copy into place once it is verified, and the nodes that have it and those that
    do not are printed as folded node sets."""
    from kadeploy.push.push import PushConfig, plan_lines, prepare, run_push

    _logging("kadeploy push", quiet, verbose)
    cfg = PushConfig(
        sources=list(sources), nodes=nodes, dest=dest, single_file=single_file,
        excludes=list(excludes), preserve=preserve, dry_run=dry_run, launcher=launcher,
        remote_command=remote_command, order=order, chains=chains, arity=arity,
        server_address=server_address, control_port=control_port, data_port=data_port,
        fanout=fanout, connect_timeout=connect_timeout, ssh_options=list(ssh_options),
        wait_timeout=wait_timeout, stall_timeout=stall_timeout, key_file=key_file,
        key=load_key(key_file, warn=logging.getLogger("kadeploy").warning), quiet=quiet)
    names, ordered, chosen, argv = prepare(cfg)
    if dry_run:
        for line in plan_lines(cfg, ordered, chosen, argv):
            click.echo(line)
        return 0

    def listening() -> None:
        if chosen.name == "none":      # the admin starts the receivers
            click.echo(f"run on every node of {nodes}:", err=True)
            click.echo(chosen.command_lines(ordered, argv)[0])

    result = asyncio.run(run_push(cfg, names, ordered, chosen, argv, listening))
    for line in result.lines():
        click.echo(line)
    if report_file:
        result.write_json(report_file)
    return result.exit_status


@click.command("receive", context_settings=CONTEXT)
@click.option("--dest", metavar="PATH", required=True, help="The destination directory (with --file: file, directory or block device).")
@click.option("--file", "single_file", is_flag=True, help="The stream is one file's bytes.")
@click.option("--name", metavar="NAME", help="With --file and a directory --dest: the file's name in it.")
@click.option("--preserve", is_flag=True, help="Extract owners, modes, times, ACLs and extended attributes.")
@click.option("--stat", "file_stat", metavar="MODE,UID,GID,MTIME_NS", help="With --file: the metadata --preserve keeps.")
@click.option("--server", metavar="HOST", help="The pushing host (default: the client address of $SSH_CONNECTION).")
@click.option("-p", "--control-port", type=PORT, default=CONTROL_PORT, show_default=True,
              help="TCP port of the control connections.")
@click.option("--detach", is_flag=True, help="Return once registered; the transfer goes on in the background.")
@click.option("--connect-timeout", type=SECONDS, default=30.0,
              help="Seconds to wait for the server and the data links (default 30).")
@click.option("--key-file", type=click.Path(dir_okay=False), envvar="KADEPLOY_KEY_FILE", help="Shared key.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors.")
@click.option("--verbose", is_flag=True, help="Print debugging detail.")
def receive_command(dest, single_file, name, preserve, file_stat, server, control_port, detach,
                    connect_timeout, key_file, quiet, verbose):
    """The node's side of kadeploy push (started by it, through the launcher)."""
    from kadeploy.cli import setup_logging
    from kadeploy.control.client import ClientConfig
    from kadeploy.push.receive import Destination, FileStat, receive, server_address

    setup_logging("kadeploy receive", quiet, verbose)
    if file_stat and not single_file:
        raise UsageError("--stat goes with --file")
    host = server_address(server)
    destination = Destination(dest, single_file, name, preserve or bool(file_stat),
                              FileStat.decode(file_stat) if file_stat else None)
    try:
        cfg = ClientConfig(host=host, consumer=destination.consumer(), control_port=control_port,
                           connect_timeout=connect_timeout, progress_bar=False,
                           key=load_key(key_file, warn=logging.getLogger("kadeploy").warning))
    except BaseException:
        destination.discard()
        raise
    return receive(cfg, destination, detach)
