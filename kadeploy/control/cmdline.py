"""A command line read without click, for the paths that run before it or instead of it
(kadeploy.control.early for ka-d-client, kadeploy.control.early_server for ka-d-server).

Each reads only the options it declares, each value by the rule click applies to it,
and gives up (None) on anything it is not sure of, leaving the command line to click,
which then accepts it or says what is wrong. Pure: no I/O beyond the checks of a path
that click's Path type makes too. The tests hold every declaration and every reading
to click's."""
from __future__ import annotations

import os

from kadeploy import defaults


def spellings_of(options: dict) -> dict:
    """{spelling: (click's parameter name, kind)} of {(spelling, ...): (name, kind)}."""
    return {spelling: entry for spellings, entry in options.items() for spelling in spellings}


def environment_is_plain(environ, *progs: str) -> bool:
    """Whether click would read these programs' command lines from argv alone: no shell
    completion asked for ($_PROG_COMPLETE), and a $KADEPLOY_KEY_FILE (which click
    reads as --key-file) that its Path type accepts, as a readable file."""
    if any(f"_{prog.replace('-', '_').upper()}_COMPLETE" in environ for prog in progs):
        return False
    key_file = environ.get(defaults.ENV_KEY_FILE)
    return not key_file or convert("file", key_file) is not None


def read(argv, spellings: dict) -> "dict | None":
    """The parameters click would give for the options `argv` names, or None when this
    reading cannot be sure of them (an option not in `spellings`, a positional argument,
    short flags combined, an option given twice, a value click might read otherwise)."""
    params = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        spelling, value = arg, None
        if arg.startswith("--") and "=" in arg:
            spelling, value = arg.split("=", 1)
        entry = spellings.get(spelling)
        if entry is None:
            return None              # unknown, positional, combined short flags, --help...
        name, kind = entry
        if name in params:
            return None              # given twice: leave the rule to click
        if kind == "flag":
            if value is not None:
                return None
            params[name] = True
            continue
        if value is None:
            if not args:
                return None
            value = args.pop(0)
        converted = convert(kind, value)
        if converted is None:
            return None
        params[name] = converted
    return params


def convert(kind: str, value: str):
    """The value as click converts it, or None when it might not accept it."""
    if not value or value.startswith("-") or not value.isprintable():
        return None
    if kind in ("text", "directory"):
        return value
    if kind == "file":      # click's Path(dir_okay=False), and a file that can be read
        return value if os.path.isfile(value) and os.access(value, os.R_OK) else None
    if kind == "output":    # click's Path(dir_okay=False, writable=True): checked if it exists
        if not os.path.lexists(value):
            return value if os.path.isdir(os.path.dirname(value) or ".") else None
        return value if os.path.isfile(value) and os.access(value, os.R_OK | os.W_OK) else None
    if kind == "address":   # the Hello's rule, which click's --advertise checks too
        from kadeploy.core.fields import RULES
        return value if RULES["Hello"]["advertise"](value) is None else None
    if kind == "backend":
        from kadeploy import relay
        return value if value in ("auto", *relay.BACKENDS) else None
    if kind == "compress":  # the server's check of --compress (kadeploy.data.codec)
        from kadeploy.data.codec import CodecError, parse_spec
        try:
            parse_spec(value)
        except CodecError:
            return None
        return value
    if kind == "size":   # digits and an optional K, M or G: a part of what options.Size reads
        shift = defaults.SIZE_SHIFTS.get(value[-1:].lower(), 0)
        digits = value[:-1] if shift else value
        n = int(digits) << shift if digits.isascii() and digits.isdigit() else 0
        return n if n > 0 else None
    if kind in ("port", "count", "count0"):   # IntRange(1, 65535), (min=1), (min=0)
        n = int(value) if value.isascii() and value.isdigit() else -1
        low, high = (0, None) if kind == "count0" else (1, 65535 if kind == "port" else None)
        return n if n >= low and (high is None or n <= high) else None
    # seconds: digits with at most one point, above zero (click's FloatRange(min=0, min_open))
    digits = value.replace(".", "", 1)
    if not (digits.isascii() and digits.isdigit()):
        return None
    seconds = float(value)
    return seconds if seconds > 0 else None
