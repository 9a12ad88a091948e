"""`kadeploy netboot build` and `kadeploy netboot serve`: the click commands of the kit."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}
log = logging.getLogger("kadeploy.netboot")


@click.group("netboot", context_settings=CONTEXT)
def netboot_group():
    """Network boot kit: build the install system's boot image, and serve it to
    nodes by DHCP (or proxy-DHCP), TFTP (iPXE) and HTTP."""


@netboot_group.command("build", context_settings=CONTEXT)
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Directory of the debootstrap cache, keyed by the package list. [default: /var/cache/kadeploy/netboot]")
@click.option("--mirror", metavar="URL", default=None,
              help="Debian mirror (default: the one in /etc/apt/sources.list.d/debian.sources, else deb.debian.org).")
@click.option("--source", type=click.Path(exists=True, file_okay=False), default=None,
              help="kadeploy source tree to install into the image (default: the one this kadeploy runs from).")
@click.option("--wheel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A kadeploy wheel to install into the image instead of building one from --source.")
@click.option("--package", "extra_packages", metavar="NAME", multiple=True,
              help="Another Debian package to put into the image (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors.")
def build_command(outdir, cache_dir, mirror, source, wheel, extra_packages, quiet):
    """Build OUTDIR/vmlinuz and OUTDIR/initrd.img: a minimal Debian with kadeploy and
    the disk tools, whose /init runs `ka-d-client --install`; and OUTDIR/localboot.efi,
    the local boot of installed UEFI nodes. Needs root."""
    from ..cli import setup_logging
    from .build import DEFAULT_CACHE, build

    setup_logging("kadeploy netboot", quiet, False)
    report = build(Path(outdir), cache_dir=Path(cache_dir or DEFAULT_CACHE), mirror=mirror,
                   source=Path(source) if source else None, wheel=Path(wheel) if wheel else None,
                   extra_packages=extra_packages, log=log.info)
    click.echo(report.summary())
    return 0


KIT_LOG = "kit.log"


def _log_beside_the_table(state_dir: Path, quiet: bool, verbose: bool) -> None:
    """With --install on a terminal the install server draws its live table there, with
    every node's boot step: the kit's own log lines would break it, so they go to
    STATE_DIR/kit.log, and only warnings and errors to the terminal too."""
    from ..cli import setup_logging
    from ..errors import UsageError
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / KIT_LOG
        setup_logging("kadeploy netboot", quiet, verbose, log_file=str(path))
    except OSError as e:
        raise UsageError(f"--state-dir {state_dir}: {e.strerror}") from None
    click.echo(f"kadeploy netboot: the install server's table below shows each node's boot step; "
               f"this kit's log goes to {path}", err=True)


@netboot_group.command("serve", context_settings=CONTEXT)
@click.argument("image_dir", type=click.Path(file_okay=False))
@click.option("-i", "--interface", required=True, metavar="IFACE", help="Network interface of the boot network.")
@click.option("--nodes", "nodes_file", type=click.Path(dir_okay=False), default=None,
              help="Node table: CSV with a header name,mac,address (or TOML [[node]] tables).")
@click.option("--mode", type=click.Choice(["dhcp", "proxy"]), default="dhcp", show_default=True,
              help="dhcp: be the network's DHCP server (static leases from the node table); "
                   "proxy: answer only PXE requests beside the site's DHCP server.")
@click.option("--address", metavar="ADDRESS", default=None,
              help="This machine's IPv4 address on the interface (default: its first one).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8067, show_default=True,
              help="TCP port of the HTTP server (iPXE scripts, kernel, initrd, node reports).")
@click.option("--state-dir", type=click.Path(file_okay=False), default="/var/lib/kadeploy/netboot",
              show_default=True, help="Where dnsmasq.conf, the TFTP root, the leases and the node states are kept.")
@click.option("--ipxe-dir", type=click.Path(file_okay=False), default=None,
              help="Directory holding undionly.kpxe and ipxe.efi. [default: /usr/lib/ipxe]")
@click.option("--range", "dhcp_range", metavar="START,END", default=None,
              help="dhcp mode: a dynamic range for nodes outside the table (default: none with "
                   "--unknown ignore, the upper half of the network with --unknown install).")
@click.option("--router", metavar="ADDRESS", default=None, help="dhcp mode: default gateway to hand out (default: none).")
@click.option("--unknown", type=click.Choice(["ignore", "install"]), default="ignore", show_default=True,
              help="Nodes not in the table: ignore them, or install them under a name made by --name-rule.")
@click.option("--name-rule", default="node-{mac}", show_default=True,
              help="Name of a node outside the table: {mac} (hex digits) and {index} (1, 2, ... in order of appearance).")
@click.option("--server", "install_server", metavar="HOST", default=None,
              help="The ka-d-server the nodes install from (default: this machine's address).")
@click.option("-s", "--session", metavar="NAME", default=None, help="Session name passed to the nodes' ka-d-client.")
@click.option("--disk", metavar="DEVICE", default=None, help="Target disk passed to the nodes' ka-d-client --disk.")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Shared key passed to the nodes on their kernel command line (readable on the boot network).")
@click.option("--after", type=click.Choice(["reboot", "poweroff", "shell"]), default="reboot", show_default=True,
              help="What a node does after a good install.")
@click.option("--on-failure", type=click.Choice(["reboot", "poweroff", "shell"]), default="poweroff",
              show_default=True, help="What a node does after a failed install.")
@click.option("--kernel-arg", "kernel_args", metavar="ARG", multiple=True,
              help="Extra kernel command line argument of the install system (repeatable), e.g. console=ttyS0,115200.")
@click.option("--max-transfers", type=click.IntRange(min=0), default=0,
              help="Kernel/initrd transfers at once; more nodes wait their turn (0: no limit).")
@click.option("--reply-delay", type=click.IntRange(0, 60), default=0,
              help="Seconds dnsmasq waits before each DHCP reply, to spread a mass reboot.")
@click.option("--ping-check", is_flag=True,
              help="dhcp mode: ping each new address of the dynamic range before offering it; dnsmasq "
                   "then answers no node for about 3 s per new address.")
@click.option("--exit-when-done", is_flag=True,
              help="Exit when every node of the table has failed, or installed and booted its disk; "
                   "the status is 0 when all installed, 2 when some failed, 1 when all failed.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --exit-when-done: give up after this many seconds (exit 1).")
@click.option("--progress-interval", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds between the lines that count the nodes in each state (the install "
                   "server's progress lines too, with --install).")
@click.option("--install", "install_manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also run the install server, ka-d-server --install MANIFEST, with the node table "
                   "(--nodes-table); implies --exit-when-done.")
@click.option("-n", "--clients", "n_clients", type=click.IntRange(min=1), default=None,
              help="With --install: the number of nodes the install server waits for (default: the table's).")
@click.option("--print-config", is_flag=True, help="Print the dnsmasq configuration and exit.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors.")
@click.option("--verbose", is_flag=True, help="Print debugging detail (every dnsmasq line).")
def serve_command(image_dir, interface, nodes_file, mode, address, http_port, state_dir, ipxe_dir,
                  dhcp_range, router, unknown, name_rule, install_server, session, disk, key_file,
                  after, on_failure, kernel_args, max_transfers, reply_delay, ping_check, exit_when_done, timeout,
                  progress_interval, install_manifest, n_clients, print_config, quiet, verbose):
    """Serve IMAGE_DIR (vmlinuz, initrd.img, localboot.efi) to the nodes of the boot network: dnsmasq for
    DHCP or proxy-DHCP and TFTP (iPXE), HTTP for the rest; logs every node's steps."""
    from ..cli import setup_logging
    from ..errors import UsageError
    from . import nodetable
    from .serve import NetbootService, ServeConfig

    setup_logging("kadeploy netboot", quiet, verbose)
    table = nodetable.load(nodes_file) if nodes_file else nodetable.NodeTable()
    if not len(table) and unknown == "ignore":
        raise UsageError("no node to serve: give --nodes FILE, or --unknown install")
    start = end = None
    if dhcp_range:
        start, _, end = dhcp_range.partition(",")
        if not end:
            raise UsageError(f"--range {dhcp_range!r}: expected START,END")
    try:
        name_rule.format(mac="525400000001", index=1)
    except (KeyError, IndexError, ValueError) as e:
        raise UsageError(f"--name-rule {name_rule!r}: only {{mac}} and {{index}} may be used ({e})")
    install_command = None
    if install_manifest:
        if not nodes_file:
            raise UsageError("--install needs the node table (--nodes): it names the nodes to install")
        if install_server:
            raise UsageError("--install runs the install server here: not with --server")
        from .serve import STATE_FILE
        install_command = [sys.executable, "-m", "kadeploy", "server", "--install", install_manifest,
                           "-n", str(n_clients or len(table)), "--nodes-table", nodes_file,
                           "--boot-states", str(Path(state_dir) / STATE_FILE),
                           "--progress-interval", f"{progress_interval:g}"]
        install_command += ["-s", session] if session else []
        install_command += ["--key-file", key_file] if key_file else []
        exit_when_done = True
        if sys.stderr.isatty() and not print_config:
            _log_beside_the_table(Path(state_dir), quiet, verbose)
    elif n_clients is not None:
        raise UsageError("-n goes with --install")
    params = {"server": install_server, "session": session, "disk": disk,
              "after": after, "onfail": on_failure}
    if key_file:
        with open(key_file, encoding="utf-8") as f:
            params["key"] = f.read().strip()
    cfg = ServeConfig(image_dir=Path(image_dir), interface=interface, table=table, mode=mode,
                      server_address=address, http_port=http_port, state_dir=Path(state_dir),
                      ipxe_dir=Path(ipxe_dir) if ipxe_dir else None, range_start=start, range_end=end,
                      router=router, unknown=unknown, name_rule=name_rule,
                      install_params={k: v for k, v in params.items() if v},
                      kernel_args=kernel_args, max_transfers=max_transfers, reply_delay=reply_delay,
                      ping_check=ping_check,
                      exit_when_done=exit_when_done, progress_interval=progress_interval,
                      install_command=install_command)
    service = NetbootService(cfg)
    if print_config:
        click.echo(service.prepare(), nl=False)
        return 0
    service.start()
    try:
        return service.run(timeout=timeout if exit_when_done else None)
    finally:
        service.stop()
