"""The checks that hold a command line read without click (kadeploy.control.cmdline, by
the client's and the server's early paths) to click's declaration and reading."""
from __future__ import annotations

import socket

import click
from hypothesis import strategies as st

from kadeploy.options import PORT, SECONDS, Size

# Each kind of kadeploy.control.cmdline, and the click type it stands for.
KINDS = {
    "flag": lambda p: p.is_flag, "port": lambda p: p.type is PORT,
    "count": lambda p: isinstance(p.type, click.IntRange) and (p.type.min, p.type.max) == (1, None),
    "count0": lambda p: isinstance(p.type, click.IntRange) and (p.type.min, p.type.max) == (0, None),
    "seconds": lambda p: p.type is SECONDS,
    "directory": lambda p: isinstance(p.type, click.Path) and not p.type.file_okay,
    "file": lambda p: isinstance(p.type, click.Path) and not p.type.dir_okay and not p.type.exists,
    "output": lambda p: isinstance(p.type, click.Path) and not p.type.dir_okay and p.type.writable,
    "text": lambda p: p.type is click.STRING, "address": lambda p: p.type is click.STRING,
    "compress": lambda p: p.type is click.STRING,
    "size": lambda p: isinstance(p.type, Size), "backend": lambda p: isinstance(p.type, click.Choice),
}


def assert_options_are_the_commands(command: click.Command, options: dict, callbacks_read=()) -> None:
    """Every entry of an early path's OPTIONS is one option of `command`: the same
    parameter, all its spellings, a type its kind reads as click does, and no callback
    (a check of click's the early path would skip) but those it does itself."""
    for spellings, (name, kind) in options.items():
        params = {p for p in command.params for s in spellings if s in p.opts}
        assert len(params) == 1, spellings
        param, = params
        assert param.name == name and set(param.opts) | set(param.secondary_opts) == set(spellings), spellings
        assert KINDS[kind](param), (spellings, kind)
        assert param.callback is None or name in callbacks_read, spellings


def assert_read_as_click(argv, mine: dict, theirs, absent: dict, hidden: str, hidden_absent=None) -> None:
    """`mine`, an early path's reading of `argv`, is click's (`theirs`: its parameters
    and the value of the `hidden` one, which click keeps out of them), to the last
    parameter: what the early path did not name is click's default (`absent`)."""
    assert theirs is not None, f"click refuses {argv}, the early path took it as {mine}"
    params, hidden_value = theirs
    mine = dict(mine)
    assert mine.pop(hidden, hidden_absent) == hidden_value, argv
    for name, value in mine.items():
        assert params[name] == value and type(params[name]) is type(value), (argv, name)
    assert {**absent, **mine} == params, argv


def command_lines(tokens, values):
    """Command lines of these tokens and values, some joined as `--option=value`."""
    return st.lists(st.one_of(st.sampled_from(tokens), st.sampled_from(values),
                              st.builds(lambda o, v: f"{o}={v}", st.sampled_from(tokens), st.sampled_from(values))),
                    max_size=9)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def click_loaded(importtime_log: str) -> bool:
    """Whether a process's -X importtime log shows click imported."""
    return any(line.rsplit("|", 1)[-1].strip().split(".")[0] == "click"
               for line in importtime_log.splitlines() if line.startswith("import time:"))
