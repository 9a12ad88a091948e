"""kadeploy-netboot(1) against the CLI of kadeploy/netboot/cli.py: every option of
`netboot build` and `netboot serve` in its subsection of OPTIONS and in the SYNOPSIS,
with its default; the page lints clean; setup.py installs it."""
from __future__ import annotations

import re
import shutil
import subprocess

import click
import pytest

from kadeploy.netboot.cli import build_command, serve_command
from test_docs import MAN, ROOT, entries, macro_text, option_strings, read_page, sections

PAGE = "kadeploy-netboot.1"
COMMANDS = {"kadeploy netboot build": build_command, "kadeploy netboot serve": serve_command}


def subsections(lines):
    out, current = {}, None
    for line in lines:
        if line.startswith(".SS"):
            current = line[3:].strip().strip('"')
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


@pytest.mark.parametrize("linter", [["groff", "-man", "-ww", "-z"], ["mandoc", "-Tlint"]])
def test_page_lints_clean(linter):
    if shutil.which(linter[0]) is None:
        pytest.skip(f"{linter[0]} is not installed")
    p = subprocess.run([*linter, str(MAN / PAGE)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout + p.stderr == "", p.stdout + p.stderr


@pytest.mark.parametrize("title", sorted(COMMANDS))
def test_every_option_is_documented_in_help_order_with_its_default(title):
    cmd = COMMANDS[title]
    documented = entries(subsections(sections(read_page(PAGE))["OPTIONS"])[title])
    tags = [tag for tag, _body in documented]
    params = [p for p in cmd.params if isinstance(p, click.Option)]
    order = []
    for p in params:
        where = [i for i, tag in enumerate(tags) if any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", tag)
                                                        for o in option_strings(p))]
        assert where, f"{title}: {p.opts[0]} has no entry in {PAGE}"
        order.append(where[0])
        body = documented[where[0]][1]
        if p.show_default and not p.is_flag:
            assert f"default {p.default}" in body, f"{title}: {p.opts[0]} should state its default {p.default}"
        for choice in getattr(p.type, "choices", ()):
            assert re.search(rf"\b{re.escape(choice)}\b", tags[where[0]] + body), (p.opts[0], choice)
    assert order == sorted(order), f"{title}: the entries are not in --help order"
    assert len(tags) == len(params), f"{title}: the page documents options the CLI lacks"


@pytest.mark.parametrize("title", sorted(COMMANDS))
def test_synopsis_names_every_option(title):
    synopsis = " ".join(macro_text(line) for line in sections(read_page(PAGE))["SYNOPSIS"])
    part = synopsis.split(title, 1)[1].split("kadeploy netboot", 1)[0]
    for p in COMMANDS[title].params:
        if isinstance(p, click.Option):
            assert any(o in part.split() or f"[{o}]" in part or f"[{o}" in part for o in option_strings(p)), (
                f"SYNOPSIS of {title} lacks {p.opts[0]}")


def test_setup_installs_the_page():
    assert f"man/{PAGE}" in (ROOT / "setup.py").read_text()
