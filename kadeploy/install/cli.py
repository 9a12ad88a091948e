"""Command line of installs: `kadeploy manifest check|capture|convert`, and the
options ka-d-server and ka-d-client take for an install (declared once, here)."""
from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_USAGE, KadeployError
from ..options import CONTEXT

# The manifest's parsers are imported by the commands that read one, not here: every
# ka-d-client loads this module for its options, and its start-up is counted.


def server_options(f):
    decorators = [
        click.option("--install", "install_manifest", type=click.Path(dir_okay=False), default=None,
                     help="Install whole machines from this manifest (kadeploy-manifest(5)): "
                          "every file system it names goes down one chain; not with -e."),
        click.option("--nodes-table", type=click.Path(dir_okay=False), default=None,
                     help="With --install: the nodes' values (CSV with a header, or TOML [[node]]), "
                          "matched by address or host name."),
        click.option("--reboot", is_flag=True, help="With --install: nodes reboot once installed and reported."),
        click.option("--strict", is_flag=True,
                     help="With --install: a file that changed while tar read it fails the install "
                          "(by default a warning)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def client_options(f):
    decorators = [
        click.option("--install", is_flag=True,
                     help="Install this machine from the server's manifest: partition, make file "
                          "systems, receive, identity, boot loader."),
        click.option("--disk", metavar="DEVICE", default=None,
                     help="With --install: the disk to install (default: the manifest's disk)."),
        click.option("--force", is_flag=True,
                     help="With --install: install even a disk with mounted or held partitions "
                          "(never the disk of the running root)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def server_install(install_manifest, nodes_table, reboot, strict, producer):
    """(producer command, ServerInstall) for an install; (producer, None) otherwise."""
    if install_manifest is None:
        if nodes_table or reboot or strict:
            raise click.UsageError("--nodes-table, --reboot and --strict go with --install")
        return producer, None
    if producer is not None:
        raise click.UsageError("--install sends the manifest's file systems: not with -e or --synthetic")
    from .serve import ServerInstall
    install = ServerInstall.load(install_manifest, nodes_table, strict, reboot)
    return install.producer(), install


def check_client(install, disk, force, consumer, target) -> None:
    if not install:
        if disk or force:
            raise click.UsageError("--disk and --force go with --install")
        return
    if consumer is not None or target is not None:
        raise click.UsageError("--install writes the disk: not with -e, -t or --discard")
    if disk is not None and not os.path.exists(disk):
        raise KadeployError(f"--disk {disk}: no such device", exit_code=EXIT_USAGE)


@click.group("manifest", context_settings=CONTEXT)
def manifest_group():
    """Write and check install manifests (kadeploy-manifest(5))."""


FORMATS = ("toml", "original", "sfdisk")


def _load(path: str, fmt: str):
    from .formats import parse_original, parse_sfdisk_dump
    from .manifest import ManifestError, load_manifest
    if fmt == "toml":
        return load_manifest(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}:1: not UTF-8 text") from None
    return (parse_original if fmt == "original" else parse_sfdisk_dump)(text, path)


@manifest_group.command("check", context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="toml", show_default=True,
              help="What FILE is: a manifest, the original's partition description, or an sfdisk --dump.")
def check_command(file, fmt):
    """Check a manifest; print a summary of its layout, or one error line (file, line, key)."""
    from .manifest import ManifestError
    try:
        m = _load(file, fmt)
    except ManifestError as e:
        raise KadeployError(str(e), exit_code=EXIT_USAGE)
    from . import order
    from .layout import minimum_bytes
    click.echo(f"{file}: ok: {m.disk.table}, {len(m.partitions)} partition(s), "
               f"{len(order.streams(m))} stream(s), at least {minimum_bytes(m.partitions, m.disk.table) >> 20} MiB, "
               f"boot loader {m.loader_hook and 'hook' or m.loader}")


@manifest_group.command("convert", context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--from", "fmt", type=click.Choice(FORMATS[1:]), required=True,
              help="The original's partition description, or an sfdisk --dump.")
def convert_command(file, fmt):
    """Print FILE as a manifest, to edit (add file systems, mount points, sources)."""
    from .manifest import ManifestError
    try:
        m = _load(file, fmt)
    except ManifestError as e:
        raise KadeployError(str(e), exit_code=EXIT_USAGE)
    click.echo(m.text, nl=False)


@manifest_group.command("capture", context_settings=CONTEXT)
@click.argument("device", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the manifest to this file (default: standard output).")
@click.option("--root", type=click.Path(file_okay=False), default="/", show_default=True,
              help="Where the machine's root is mounted: mount points are taken relative to it.")
def capture_command(device, output, root):
    """Write a manifest from this machine: DEVICE (default: the disk of /), its partitions,
    file systems and mounts."""
    from .capture import CaptureError, capture
    from .manifest import ManifestError
    try:
        text = capture(device, root)
    except (CaptureError, ManifestError) as e:
        raise KadeployError(str(e))
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
