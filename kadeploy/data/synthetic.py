"""The network check's data: ``ka-d-server --synthetic SIZE`` and ``ka-d-client --discard``.

Both are ordinary producer/consumer commands, so a network check takes exactly the
path of a deployment (relay, pipes, sockets, verdicts, report) minus the disks.
"""
from __future__ import annotations

from typing import Optional

# click is imported by the functions that need it: ka-d-client run from its early
# registration (kadeploy.control.early_client) takes DISCARD_CONSUMER without click.

# Zeros cost nothing to make (head reads /dev/zero at several GB/s here) and TCP does
# not compress, so the link sees the same load as with real data.
SYNTHETIC_PRODUCER = "head -c {size} /dev/zero"
# cat reads with a 128 KiB buffer; writing to /dev/null is free.
DISCARD_CONSUMER = "cat >/dev/null"


def synthetic_producer(size: int) -> str:
    """The producer command that streams ``size`` zero bytes."""
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
    return SYNTHETIC_PRODUCER.format(size=int(size))


# ---- the two CLI options, kept out of cli.py's command signatures: the option's
# callback stores its value in the click context, and the command asks for the
# producer/consumer to use with one call.

_SYNTHETIC = "kadeploy.synthetic"
_DISCARD = "kadeploy.discard"


def remember(ctx, param, value):
    """click callback of --synthetic and --discard."""
    ctx.meta[_SYNTHETIC if param.name == "synthetic" else _DISCARD] = value
    return value


def server_producer(producer: Optional[str]) -> Optional[str]:
    """The producer command to run: -e, or the synthetic stream of --synthetic."""
    import click
    size = click.get_current_context().meta.get(_SYNTHETIC)
    if size is None:
        return producer
    if producer is not None:
        raise click.UsageError("--synthetic and -e/--command are exclusive")
    return synthetic_producer(size)


def discard_asked() -> bool:
    """Whether the command line has --discard (click callback `remember` saw it)."""
    import click
    return bool(click.get_current_context().meta.get(_DISCARD))


def client_consumer(consumer: Optional[str]) -> Optional[str]:
    """The consumer command to run: -e, or the discarding one of --discard."""
    import click
    if not discard_asked():
        return consumer
    if consumer is not None:
        raise click.UsageError("--discard and -e/--command are exclusive")
    return DISCARD_CONSUMER
