"""Command-line options shared by several commands, each declared once.

`ka-d-server`, `ka-d-client` (and their `kadeploy server`/`kadeploy client` twins),
`kadeploy demo` and `kadeploy bench` take these from here: the value types (sizes,
ports, seconds), the relay backend's option and its list of choices, the arity, and
the bundle of network options both deployment commands have. A bundle is a decorator that adds
its options in the order --help lists them. The lab (bench, demo) imports this module,
never kadeploy.cli, so that the layers stay apart.
"""
from __future__ import annotations

import re
from typing import Callable

import click

from kadeploy import defaults
from kadeploy import relay as relay_mod
from kadeploy.control.auth import ENV_KEY, ENV_KEY_FILE

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}

# ------------------------------------------------------------------ value types

_SIZE_SHIFT = {"": 0, **defaults.SIZE_SHIFTS}


def parse_size(text: str) -> int:
    """'1M', '64k', '1048576' -> bytes (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*", str(text))
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 65536, 64K, 1M)")
    return int(m.group(1)) << _SIZE_SHIFT[m.group(2).lower()]


def format_size(n: int) -> str:
    """The shortest text parse_size reads back as n: 1048576 -> '1M'."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


class Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            n = parse_size(value)
        except click.BadParameter as e:
            self.fail(str(e), param, ctx)
        if n <= 0:
            self.fail("must be greater than 0", param, ctx)
        return n


PORT = click.IntRange(1, 65535)
POSITIVE = click.IntRange(min=1)
SECONDS = click.FloatRange(min=0, min_open=True)


# --------------------------------------------------------------- relay backend

RELAY_CHOICES = ("auto", *relay_mod.BACKENDS)
RELAY_HELP = (f"Relay backend (default: ${relay_mod.ENV_BACKEND}, else auto: the first that loads "
              f"of {', '.join(relay_mod.AUTO_ORDER)}).")


def relay_option(f: Callable) -> Callable:
    """--relay BACKEND, passed on as `relay_backend` (None: $KADEPLOY_RELAY, else auto)."""
    return click.option("--relay", "relay_backend", type=click.Choice(RELAY_CHOICES), default=None,
                        help=RELAY_HELP)(f)


# ----------------------------------------------------------------- the tree

def arity_option(f: Callable) -> Callable:
    """-a/--arity N, children per node (ka-d-server and kadeploy demo)."""
    return click.option("-a", "--arity", type=POSITIVE, default=1, show_default=True,
                        help="Children per node: 1 is a chain, the fastest on a switched "
                             "full-duplex network.")(f)


# ------------------------------------------------------- the two commands' bundle

def network_options(f: Callable) -> Callable:
    """The options ka-d-server and ka-d-client share, in the order --help lists them."""
    decorators = [
        click.option("-p", "--control-port", type=PORT, default=defaults.CONTROL_PORT, show_default=True,
                     help="TCP port of the control connections."),
        click.option("-P", "--data-port", type=PORT, default=defaults.DATA_PORT, show_default=True,
                     help="TCP port of the data connections."),
        click.option("--bind", metavar="ADDRESS", help="Listen on this address only (default: every address, IPv4 and IPv6)."),
        relay_option,
        click.option("--buffer-size", type=Size(), default=defaults.BUFFER_SIZE, show_default=True,
                     help="Relay pipe/buffer size in bytes (suffixes K, M, G); pipes are capped at the system's pipe-max-size."),
        click.option("--sockbuf", type=Size(), default=None,
                     help="Fix SO_SNDBUF/SO_RCVBUF of data connections (default: kernel autotuning)."),
        click.option("--connect-timeout", type=SECONDS, default=defaults.CONNECT_TIMEOUT, show_default=True,
                     help="Seconds to wait for connections to be made: data links to parents and from "
                          "children, and (client) a server that refuses because it has not started yet."),
        click.option("--handshake-timeout", type=SECONDS, default=defaults.HANDSHAKE_TIMEOUT, show_default=True,
                     help="Seconds a new connection may take to introduce itself (and authenticate) before it is dropped."),
        click.option("--discovery-port", type=PORT, default=defaults.DISCOVERY_PORT, show_default=True,
                     help="UDP port of discovery by session name."),
        click.option("--key-file", type=click.Path(dir_okay=False), envvar=ENV_KEY_FILE,
                     help="Shared secret: only peers with the same key take part (mutual HMAC "
                          f"challenge-response); also ${ENV_KEY_FILE}, or the key itself in ${ENV_KEY}."),
        click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors."),
        click.option("--verbose", is_flag=True, help="Print debugging detail."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f
