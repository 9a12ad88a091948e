"""One place for each decision: shared options and defaults agree wherever they are used.

The commands' options come from kadeploy.options and their defaults from
kadeploy.defaults; these tests fail when a copy creeps back in and drifts (a command
with its own --relay list, a config whose default differs from the CLI's).
"""
from __future__ import annotations

import dataclasses

import click
import pytest

from kadeploy import cli, defaults, options
from kadeploy import relay as relay_mod
from kadeploy.control.client import ClientConfig
from kadeploy.control.server_config import ServerConfig
from kadeploy.core import protocol as P
from kadeploy.lab.bench import bench_command
from kadeploy.lab.demo import demo_command


def params(cmd: click.Command) -> dict:
    return {p.name: p for p in cmd.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("cmd", [cli.server_command, cli.client_command, demo_command],
                         ids=["server", "client", "demo"])
def test_every_relay_option_is_the_shared_one(cmd):
    p = params(cmd)["relay_backend"]
    assert p.opts == ["--relay"]
    assert tuple(p.type.choices) == options.RELAY_CHOICES == ("auto", *relay_mod.BACKENDS)
    assert p.help == options.RELAY_HELP and p.default is None


@pytest.mark.parametrize("cmd", [cli.server_command, demo_command], ids=["server", "demo"])
def test_every_arity_option_is_the_shared_one(cmd):
    p = params(cmd)["arity"]
    assert p.opts == ["-a", "--arity"] and p.default == 1 and p.type.min == 1
    assert p.help == params(cli.server_command)["arity"].help


def test_relay_help_names_the_order_auto_tries():
    assert ", ".join(relay_mod.AUTO_ORDER) in options.RELAY_HELP


def test_bench_sweeps_exactly_the_relay_choices():
    p = params(bench_command)["backends"]
    ctx = click.Context(bench_command)
    assert p.process_value(ctx, ",".join(options.RELAY_CHOICES)) == list(options.RELAY_CHOICES)
    with pytest.raises(click.BadParameter, match="choose from"):
        p.process_value(ctx, "auto,no-such-backend")


def test_bench_buffer_default_is_the_relay_default():
    p = params(bench_command)["buffers"]
    assert p.process_value(click.Context(bench_command), p.default) == [defaults.BUFFER_SIZE]


@pytest.mark.parametrize("cmd,config", [(cli.server_command, ServerConfig), (cli.client_command, ClientConfig)],
                         ids=["server", "client"])
def test_config_defaults_are_the_cli_defaults(cmd, config):
    # A program that builds a config without the CLI gets what the CLI would give it.
    opts = params(cmd)
    compared = 0
    for f in dataclasses.fields(config):
        p = opts.get(f.name)
        if p is None or not p.show_default:   # options with a stated default
            continue
        assert f.default == p.default, f"{config.__name__}.{f.name} = {f.default!r}, CLI default {p.default!r}"
        compared += 1
    assert compared >= 6, compared   # ports, buffer, timeouts: the comparison ran


def test_the_protocol_announces_the_default_stall_timeout():
    assert P.Place(position=1, depth=1, n_nodes=1, arity=1, parent_host="h",
                   parent_port=1).stall_timeout == defaults.STALL_TIMEOUT == ServerConfig().stall_timeout


@pytest.mark.parametrize("text,n", [("1M", 1 << 20), ("64k", 65536), ("65536", 65536), ("2G", 2 << 30),
                                    ("1MiB", 1 << 20), (" 3 K ", 3072)])
def test_sizes_parse(text, n):
    assert options.parse_size(text) == n


@pytest.mark.parametrize("n", [1, 1000, 1024, 65536, 3 << 20, 1 << 30, (1 << 30) + 1024, 12345678])
def test_format_size_reads_back(n):
    assert options.parse_size(options.format_size(n)) == n


@pytest.mark.parametrize("bad", ["", "1T", "-1", "1.5M", "M"])
def test_bad_sizes_are_refused_in_one_line(bad):
    with pytest.raises(click.BadParameter) as e:
        options.parse_size(bad)
    assert "\n" not in e.value.format_message()
