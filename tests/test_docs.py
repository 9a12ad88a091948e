"""The documentation against the code: man pages, README and the click CLI.

The CLI (kadeploy/cli.py) is the single source of truth. These tests fail when the
docs drift from it: an option added, removed or renamed without its man page entry,
options documented out of --help order, a default or exit status changed, an example
that the CLI would reject, a README quick start that grew a third command.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import click
import pytest
from click.testing import CliRunner

from kadeploy import cli, errors
from kadeploy import relay as relay_mod
from kadeploy.control import auth
from kadeploy.data import commands
from kadeploy.push import cli as push_cli
from kadeploy.version import __version__
from kadeploy.view import report as report_mod

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
README = ROOT / "README.md"
FAULTS = ROOT / "docs" / "faults.md"
TESTS = ROOT / "tests"

# Which click command each page documents. kadeploy.1 documents the group's own
# options; its server and client subcommands are the commands of the other two pages.
PAGES: dict[str, click.Command] = {
    "ka-d-server.1": cli.server_command,
    "ka-d-client.1": cli.client_command,
    "kadeploy.1": cli.kadeploy_group,
    "kadeploy-push.1": push_cli.push_command,
}
PROGS = {"ka-d-server.1": "ka-d-server", "ka-d-client.1": "ka-d-client", "kadeploy.1": "kadeploy",
         "kadeploy-push.1": "kadeploy push"}
SUBCOMMAND_PAGES = {"server": "ka-d-server.1", "client": "ka-d-client.1", "push": "kadeploy-push.1"}
# Groups with a page of their own that tests/test_netboot_docs.py checks.
GROUP_PAGES = {"netboot": "kadeploy-netboot.1"}

# The statuses each command can end with (kadeploy/errors.py says which is whose).
EXIT_NAMES = {
    "ka-d-server.1": ["EXIT_OK", "EXIT_FAILED", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"],
    "ka-d-client.1": ["EXIT_OK", "EXIT_FAILED", "EXIT_NOT_JOINED", "EXIT_USAGE", "EXIT_INTERRUPTED"],
    "kadeploy-push.1": ["EXIT_OK", "EXIT_FAILED", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"],
}
ALL_EXIT_NAMES = sorted(n for n in vars(errors) if n.startswith("EXIT_"))
EXIT_NAMES["kadeploy.1"] = ALL_EXIT_NAMES

OPTION_RE = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][A-Za-z0-9-]*)")


# ------------------------------------------------------------ man(7) parsing

def unescape(text: str) -> str:
    """Roff source -> plain text, enough for option names, numbers and commands."""
    text = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", text)   # font changes
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "").replace("\\%", "")
    text = text.replace("\\(bu", "*").replace("\\ ", " ")
    return text


ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}   # these join their arguments
SKIP_MACROS = {"RS", "RE", "EX", "EE", "IP", "PP", "P", "LP", "TP", "br", "sp", "nf", "fi", "in"}


def roff_args(text: str) -> list[str]:
    """A macro's arguments: blank-separated, double quotes group ("" is a quote)."""
    return [q.replace('""', '"') if q or not bare else bare
            for q, bare in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', text)]


def macro_text(line: str) -> str:
    """The plain text of a source line: a macro's arguments, or the line itself."""
    if not line.startswith((".", "'")):
        return unescape(line)
    name, _, rest = line[1:].partition(" ")
    args = roff_args(rest)
    return unescape(("" if name in ALTERNATING else " ").join(args))


def read_page(name: str) -> str:
    return (MAN / name).read_text(encoding="utf-8")


def sections(source: str) -> dict[str, list[str]]:
    """Section name (as in .SH) -> its source lines, comments dropped."""
    out: dict[str, list[str]] = {}
    current = None
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith(".SH"):
            current = line[3:].strip().strip('"')
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def entries(lines: list[str]) -> list[tuple[str, str]]:
    """(tag, body) of every top-level .TP (or tagged .IP) item, in order, as plain text.

    Anything between .RS and .RE (nested lists, examples) belongs to the body of the
    item it is in; a paragraph macro at the top level ends the item."""
    items: list[tuple[str, list[str]]] = []
    depth = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth = max(0, depth - 1)
        if depth == 0 and line.startswith(".TP") and i + 1 < len(lines):
            items.append((macro_text(lines[i + 1]), []))
            i += 2
            continue
        if depth == 0 and line.startswith(".IP ") and macro_text(line).strip():
            items.append((roff_args(line[4:])[0], []))
        elif depth == 0 and re.match(r"\.(SS|PP|P|LP)\b", line):
            items.append(("", []))  # ends the last entry's body
        elif items:
            items[-1][1].append(line)
        i += 1
    return [(unescape(tag), body_text(body)) for tag, body in items if tag]


def body_text(lines: list[str]) -> str:
    words = []
    for line in lines:
        if line.startswith((".", "'")) and line[1:].split(" ", 1)[0] in SKIP_MACROS:
            continue
        words.append(macro_text(line))
    return " ".join(" ".join(words).replace("\\ ", " ").split())


def documented_options(page: str) -> list[tuple[list[str], str, str]]:
    """(option strings, tag, body) of every item of the OPTIONS section, in order."""
    out = []
    for tag, body in entries(sections(read_page(page))["OPTIONS"]):
        opts = OPTION_RE.findall(tag)
        if opts:
            out.append((opts, tag, body))
    return out


# ---------------------------------------------------------------- the CLI side

def cli_options(cmd: click.Command, prog: str) -> list[click.Option]:
    """The options in --help order, --help included."""
    ctx = click.Context(cmd, info_name=prog)
    return [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]


def option_strings(param: click.Option) -> list[str]:
    return list(param.opts) + list(param.secondary_opts)


def all_commands() -> list[tuple[list[str], click.Command]]:
    """(argv prefix, command) for the group and each of its subcommands."""
    ctx = click.Context(cli.kadeploy_group, info_name="kadeploy")
    out = [([], cli.kadeploy_group)]
    for name in cli.kadeploy_group.list_commands(ctx):
        sub = cli.kadeploy_group.get_command(ctx, name)
        out.append(([name], sub))
        if isinstance(sub, click.Group):   # e.g. kadeploy netboot build|serve
            sub_ctx = click.Context(sub, info_name=name, parent=ctx)
            out += [([name, n], sub.get_command(sub_ctx, n)) for n in sub.list_commands(sub_ctx)]
    return out


# ------------------------------------------------------------------ (a) lint

@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_lints_clean_with_groff(page):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base); cannot lint man pages")
    res = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / page)],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_lints_clean_with_mandoc(page):
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed (apt-get install mandoc); groff lint still runs")
    res = subprocess.run(["mandoc", "-Tlint", str(MAN / page)], check=False, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_header_names_the_current_version(page):
    th = next(line for line in read_page(page).splitlines() if line.startswith(".TH"))
    assert f"kadeploy {__version__}" in th, th


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_has_the_sections(page):
    have = set(sections(read_page(page)))
    need = {"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT",
            "FILES", "EXAMPLES", "COMPATIBILITY", "SECURITY", "SEE ALSO"}
    if page == "ka-d-server.1":
        need.add("REPORT")
    assert need <= have, f"missing sections: {sorted(need - have)}"


def subsections(source: str) -> list[str]:
    return [macro_text(line).strip() for line in source.splitlines() if line.startswith(".SS")]


@pytest.mark.parametrize("page", ["ka-d-server.1", "ka-d-client.1"])
def test_pages_describe_integrity_and_faults(page):
    subs = subsections(read_page(page))
    assert "Integrity" in subs, f"{page}: no Integrity subsection"
    assert any(s.startswith("Faults") for s in subs), f"{page}: no Faults subsection"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_security_section_states_the_trust_model(page):
    text = " ".join(macro_text(line) for line in sections(read_page(page))["SECURITY"])
    assert "--key-file" in text, f"{page}: SECURITY does not say how to add a key"
    assert ("--encrypt" in text or "encrypted" in text) and "read" in text, \
        f"{page}: SECURITY must say whether the stream can be read on the wire (and --encrypt where offered)"
    assert "/bin/sh" in text, f"{page}: SECURITY must say the commands run through /bin/sh"
    assert "token" in text, f"{page}: SECURITY must say what protects a deployment without a key"


# ----------------------------------------------------- (b) options both ways

@pytest.mark.parametrize("page", sorted(PAGES))
def test_options_section_matches_the_cli_in_help_order(page):
    """Every option (short and long form) is documented, nothing else is, and in the
    order --help lists them: a removed or renamed option fails here."""
    cmd = PAGES[page]
    expected = [option_strings(p) for p in cli_options(cmd, PROGS[page])]
    documented = [opts for opts, _, _ in documented_options(page)]
    in_cli = {o for opts in expected for o in opts}
    in_man = {o for opts in documented for o in opts}
    assert not in_cli - in_man, f"{page}: options missing from OPTIONS: {sorted(in_cli - in_man)}"
    assert not in_man - in_cli, f"{page}: OPTIONS documents options the CLI lacks: {sorted(in_man - in_cli)}"
    assert [sorted(o) for o in documented] == [sorted(o) for o in expected], (
        f"{page}: OPTIONS must list each option once, short and long form together, "
        f"in --help order: {[o[0] for o in expected]}")


def synopsis_options(page: str) -> list[click.Option]:
    """The options a page's SYNOPSIS must show: the command's, and on kadeploy.1 also
    those of the subcommands that have no page of their own."""
    params = cli_options(PAGES[page], PROGS[page])
    if page == "kadeploy.1":
        ctx = click.Context(cli.kadeploy_group, info_name="kadeploy")
        for name in cli.kadeploy_group.list_commands(ctx):
            if name not in SUBCOMMAND_PAGES and name not in GROUP_PAGES:
                sub = cli.kadeploy_group.get_command(ctx, name)
                # A group's own subcommands (kadeploy manifest check ...) too.
                nested = [sub.get_command(ctx, n) for n in sub.list_commands(ctx)] \
                    if isinstance(sub, click.Group) else []
                for cmd in [sub, *nested]:
                    params += [p for p in cli_options(cmd, name) if "--help" not in p.opts]
    return params


@pytest.mark.parametrize("page", sorted(PAGES))
def test_synopsis_names_every_option(page):
    synopsis = " ".join(macro_text(line) for line in sections(read_page(page))["SYNOPSIS"])
    found = set(OPTION_RE.findall(synopsis))
    params = synopsis_options(page)
    for param in params:
        assert found & set(option_strings(param)), f"{page}: SYNOPSIS lacks {param.opts}"
    known = {o for p in params for o in option_strings(p)}
    assert found <= known, f"{page}: SYNOPSIS names options the CLI lacks: {sorted(found - known)}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_option_entries_state_defaults_and_choices(page):
    params = {p.name: p for p in cli_options(PAGES[page], PROGS[page])}
    bodies = {}
    for opts, tag, body in documented_options(page):
        for p in params.values():
            if set(opts) & set(option_strings(p)):
                bodies[p.name] = tag + " " + body
    for p in params.values():
        text = bodies[p.name]
        if p.show_default and p.default is not None and not p.is_flag:
            d = p.default
            shown = str(int(d)) if isinstance(d, float) and d.is_integer() else str(d)
            assert re.search(rf"(?<![\d.]){re.escape(shown)}(?![\d])", text), (
                f"{page}: {p.opts[0]} should state its default {shown}: {text!r}")
        if isinstance(p.type, click.Choice):
            for choice in p.type.choices:
                assert re.search(rf"\b{re.escape(choice)}\b", text), (
                    f"{page}: {p.opts[0]} should list the choice {choice}")


def test_server_page_states_the_default_producer():
    body = {opts[0]: b for opts, _, b in documented_options("ka-d-server.1")}["-e"]
    assert commands.DEFAULT_PRODUCER in body


def test_client_page_states_the_default_consumer_and_target():
    entries_ = {opts[0]: b for opts, _, b in documented_options("ka-d-client.1")}
    consumer = commands.CONSUMER_TEMPLATE.format(target="target")
    assert consumer in entries_["-e"], entries_["-e"]
    assert commands.DEFAULT_TARGET in entries_["-t"]


def test_kadeploy_page_documents_every_subcommand():
    ctx = click.Context(cli.kadeploy_group, info_name="kadeploy")
    names = cli.kadeploy_group.list_commands(ctx)
    documented = {tag.split()[0]: body for tag, body in entries(sections(read_page("kadeploy.1"))["COMMANDS"])}
    assert sorted(documented) == sorted(names), "COMMANDS must list exactly the subcommands"
    synopsis = " ".join(macro_text(line) for line in sections(read_page("kadeploy.1"))["SYNOPSIS"])
    for name in names:
        assert re.search(rf"\bkadeploy {name}\b", synopsis), f"SYNOPSIS lacks kadeploy {name}"
        sub = cli.kadeploy_group.get_command(ctx, name)
        if name in SUBCOMMAND_PAGES:
            page = SUBCOMMAND_PAGES[name]
            assert sub is PAGES[page], f"kadeploy {name} is no longer the command of {page}"
            assert page[:-2] in documented[name], f"kadeploy {name} should point to {page[:-2]}(1)"
            continue
        if name in GROUP_PAGES:
            page = GROUP_PAGES[name][:-2]
            assert page in documented[name], f"kadeploy {name} should point to {GROUP_PAGES[name]}"
            continue
        # The small subcommands are documented in their COMMANDS entry.
        for p in cli_options(sub, name):
            for o in option_strings(p):
                assert o == "--help" or o in documented[name], f"kadeploy {name}: {o} undocumented"
            if p.show_default and p.default is not None and not p.is_flag:
                assert f"default {p.default}" in documented[name], (
                    f"kadeploy {name}: {p.opts[0]} should state its default {p.default}")
        for p in sub.params:
            if isinstance(p, click.Argument):
                assert p.name in documented[name].lower() + synopsis.lower(), (
                    f"kadeploy {name}: argument {p.name} undocumented")
                for choice in getattr(p.type, "choices", ()):
                    assert re.search(rf"\b{re.escape(choice)}\b", documented[name]), (
                        f"kadeploy {name}: {p.name} may be {choice}; the page does not say so")


def code_environment_variables() -> set[str]:
    """Every KADEPLOY_* variable the package reads: string literals in its source."""
    names = set()
    for path in (ROOT / "kadeploy").rglob("*.py"):
        names |= set(re.findall(r"""["'](KADEPLOY_[A-Z0-9_]+)["']""", path.read_text(encoding="utf-8")))
    return names


# Not ours, but read: kadeploy (bench, demo) makes its scratch files in $TMPDIR.
EXTRA_ENV = {"ka-d-server.1": set(), "ka-d-client.1": set(), "kadeploy.1": {"TMPDIR"},
             "kadeploy-push.1": {"TMPDIR", "SSH_CONNECTION", "SLURM_JOB_ID", "SLURM_JOB_NODELIST"}}


def test_environment_scan_finds_the_known_variables():
    found = code_environment_variables()
    assert {relay_mod.ENV_BACKEND, relay_mod.ENV_REQUIRE, auth.ENV_KEY, auth.ENV_KEY_FILE,
            "KADEPLOY_DEBUG"} <= found, found


@pytest.mark.parametrize("page", sorted(PAGES))
def test_environment_section_names_the_variables(page):
    tags = [tag for tag, _ in entries(sections(read_page(page))["ENVIRONMENT"])]
    assert sorted(tags) == sorted(code_environment_variables() | EXTRA_ENV[page]), tags


# --------------------------------------------------------- the JSON report

def report_fields() -> tuple[set[str], set[str]]:
    """(top-level fields, per-node fields) of the JSON report, from report.py itself."""
    import dataclasses
    node = report_mod.NodeReport(position=1, address="192.0.2.1", hostname="h", data_port=1,
                                 parent=0, bytes=1, seconds=1.0, status="ok")
    rep = report_mod.Report(software="s", session=None, arity=1, stream_bytes=1, seconds=1.0,
                            producer_status=0, stream_error=None, backend="b", rejected={},
                            nodes=[node])
    d = rep.to_dict()
    assert {f.name for f in dataclasses.fields(report_mod.NodeReport)} <= set(d["nodes"][0])
    return set(d), set(d["nodes"][0])


def report_entries() -> tuple[dict[str, str], dict[str, str]]:
    """The REPORT section of ka-d-server.1: {field: text} at the top level and for nodes."""
    lines = sections(read_page("ka-d-server.1"))["REPORT"]
    top = {}
    for tag, body in entries(lines):
        for name in re.split(r",\s*", tag.strip()):
            top[name] = body
    nested = lines[lines.index(".RS"):lines.index(".RE") + 1]
    nodes = {}
    for tag, body in entries(nested[1:-1]):
        for name in re.split(r",\s*", tag.strip()):
            nodes[name] = body
    return top, nodes


def test_report_section_documents_every_field():
    top, nodes = report_fields()
    doc_top, doc_nodes = report_entries()
    assert set(doc_top) == top, f"REPORT top-level fields: documented {sorted(doc_top)}, written {sorted(top)}"
    assert set(doc_nodes) == nodes, f"REPORT node fields: documented {sorted(doc_nodes)}, written {sorted(nodes)}"
    assert f"format {report_mod.REPORT_FORMAT}" in " ".join(
        macro_text(line) for line in sections(read_page("ka-d-server.1"))["REPORT"])


def rejection_categories() -> set[str]:
    """The kinds of rejected connections the server counts (registry.py and server.py)."""
    src = "".join((ROOT / "kadeploy" / name).read_text(encoding="utf-8")
                  for name in ("control/registry.py", "control/server.py"))
    cats = set(re.findall(r'Rejection\(\s*"([\w-]+)"', src))
    cats |= set(re.findall(r'_reject\(\s*\w+,\s*"([\w-]+)"', src))
    cats |= set(re.findall(r'rejected\[\s*"([\w-]+)"\s*\]', src))
    return cats


def test_report_section_names_every_rejection_category():
    cats = rejection_categories()
    assert {"protocol", "auth", "late", "flood", "data-link"} <= cats, cats   # the scan works
    text = report_entries()[0]["rejected"]
    for cat in cats:
        assert re.search(rf"(?<![\w-]){re.escape(cat)}(?![\w-])", text), f"REPORT: rejected kind {cat} undocumented"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_see_also_names_the_other_pages(page):
    text = " ".join(macro_text(line) for line in sections(read_page(page))["SEE ALSO"])
    for other in PAGES:
        if other != page:
            assert f"{other[:-2]}(1)" in text, f"{page}: SEE ALSO lacks {other[:-2]}(1)"


# ------------------------------------------------------- examples are valid

COMMAND_WORDS = {"ka-d-server": cli.server_command, "ka-d-client": cli.client_command}


def command_lines(text: str) -> list[str]:
    """Shell lines (continuations joined, prompts dropped) that run one of our commands."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\S+\$\s+", "", line).strip()
        if re.search(r"(^|[\s;&|])(ka-d-server|ka-d-client|kadeploy)\s", line):
            out.append(line)
    return out


def check_command_line(line: str) -> None:
    """Parse a command line with the real click parser; a bad option fails."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    tokens = list(lexer)
    while tokens:
        for i, tok in enumerate(tokens):
            if tok in COMMAND_WORDS or tok == "kadeploy":
                break
        else:
            return
        rest = tokens[i + 1:]
        end = next((j for j, t in enumerate(rest) if t and set(t) <= set(";&|")), len(rest))
        args, tokens = rest[:end], rest[end:]
        if tok == "kadeploy":
            cmd, prog = cli.kadeploy_group, "kadeploy"
            if args and not args[0].startswith("-"):
                ctx = click.Context(cli.kadeploy_group, info_name="kadeploy")
                sub = cli.kadeploy_group.get_command(ctx, args[0])
                assert sub is not None, f"no such subcommand in {line!r}"
                cmd, prog, args = sub, f"kadeploy {args[0]}", args[1:]
        else:
            cmd, prog = COMMAND_WORDS[tok], tok
        try:
            cmd.make_context(prog, list(args))
        except click.exceptions.Exit:
            pass  # --help, -v
        except click.BadParameter as e:
            # Whether an example's file exists depends on the machine, not on the docs.
            if not isinstance(getattr(e.param, "type", None), click.Path):
                raise AssertionError(f"example {line!r} is rejected by the CLI: {e.format_message()}")
        except click.UsageError as e:
            raise AssertionError(f"example {line!r} is rejected by the CLI: {e.format_message()}")


def man_examples(page: str) -> list[str]:
    src = read_page(page)
    blocks = re.findall(r"^\.EX\n(.*?)^\.EE\n", src, flags=re.DOTALL | re.MULTILINE)
    return [l for b in blocks for l in command_lines(unescape(b))]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_examples_parse(page):
    lines = man_examples(page)
    assert lines, f"{page}: no example found"
    for line in lines:
        check_command_line(line)


def test_example_checker_catches_a_bad_option():
    with pytest.raises(AssertionError):
        check_command_line("ka-d-server -n 4 --no-such-option")
    with pytest.raises(AssertionError):
        check_command_line("clush -w n[1-2] ka-d-client -h server -x && reboot")
    check_command_line('ka-d-client -h s -e "dd of=/dev/sdXN bs=1M" && reboot')


# --------------------------------------------------------- (c) --help runs

@pytest.mark.parametrize("argv", [prefix for prefix, _ in all_commands()], ids=lambda a: " ".join(a) or "kadeploy")
def test_help_of_every_command_exits_0(argv):
    res = CliRunner().invoke(cli.kadeploy_group, [*argv, "--help"], prog_name="kadeploy")
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


@pytest.mark.parametrize("cmd,prog", [(cli.server_command, "ka-d-server"),
                                      (cli.client_command, "ka-d-client"),
                                      (cli.kadeploy_group, "kadeploy")])
def test_entry_points_help_and_version_exit_0(cmd, prog, capsys):
    for flag in ("--help", "-v"):
        with pytest.raises(SystemExit) as e:
            cli.run_main(cmd, prog, [flag])
        assert e.value.code == 0, f"{prog} {flag}"
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("cmd,prog", [(cli.server_command, "ka-d-server"),
                                      (cli.client_command, "ka-d-client")])
def test_usage_error_exits_with_the_documented_status(cmd, prog, capsys):
    with pytest.raises(SystemExit) as e:
        cli.run_main(cmd, prog, ["--no-such-option"])
    assert e.value.code == errors.EXIT_USAGE


def test_module_entry_help_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv, _ in all_commands():
        res = subprocess.run([sys.executable, "-m", "kadeploy", *argv, "--help"],
                             check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert res.returncode == 0, res.stderr


# ------------------------------------------------------- (e) exit statuses

def test_every_exit_status_is_documented_for_some_command():
    used = set(EXIT_NAMES["ka-d-server.1"]) | set(EXIT_NAMES["ka-d-client.1"])
    assert used == set(ALL_EXIT_NAMES), (
        f"errors.py defines {sorted(set(ALL_EXIT_NAMES) - used)} that neither page documents; "
        "add it to EXIT_NAMES here and to the page's EXIT STATUS")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_exit_status_section_matches_errors_py(page):
    documented = []
    for tag, body in entries(sections(read_page(page))["EXIT STATUS"]):
        assert re.fullmatch(r"\d+", tag.strip()), f"{page}: EXIT STATUS tag {tag!r} is not a number"
        assert body, f"{page}: status {tag} has no explanation"
        documented.append(int(tag))
    expected = sorted(getattr(errors, n) for n in EXIT_NAMES[page])
    assert documented == expected, f"{page}: EXIT STATUS lists {documented}, errors.py gives {expected}"


# ---------------------------------------------------------------- (d) README

def readme() -> str:
    return README.read_text(encoding="utf-8")


def markdown_section(text: str, title: str) -> str:
    """The body of the first heading called `title`, up to the next heading of its level or above."""
    lines = text.splitlines()
    in_fence = False
    start = level = None
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        m = re.match(r"^(#+)\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        if start is None and m.group(2).strip().lower() == title.lower():
            start, level = i + 1, len(m.group(1))
        elif start is not None and len(m.group(1)) <= level:
            return "\n".join(lines[start:i])
    if start is None:
        raise AssertionError(f"README has no {title!r} heading")
    return "\n".join(lines[start:])


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```([^\n`]*)\n(.*?)^```\s*$", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_links_every_man_page():
    text = readme()
    for page in PAGES:
        assert f"man/{page}" in text, f"README does not link man/{page}"


def test_readme_quick_start_is_exactly_two_commands():
    section = markdown_section(readme(), "Quick start")
    blocks = fenced_blocks(section)
    assert len(blocks) == 1, "Quick start must hold exactly one fenced block"
    info, body = blocks[0]
    assert info.strip() == "sh", f"the Quick start block must be ```sh, not ```{info}"
    cmds = [line.strip() for line in body.splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert cmds == ["./tools/demo", "./tools/test"], cmds


def test_readme_quick_start_scripts_exist():
    for script in ("tools/demo", "tools/test"):
        path = ROOT / script
        assert path.is_file(), f"README's quick start runs ./{script}, which does not exist"
        assert os.access(path, os.X_OK), f"./{script} is not executable"


def test_readme_examples_parse():
    lines = [l for info, body in fenced_blocks(readme()) for l in command_lines(body)]
    assert lines, "README shows no ka-d-server/ka-d-client command"
    for line in lines:
        check_command_line(line)


def test_readme_inline_options_exist():
    """Every option the README names in `code` belongs to one of the commands."""
    known = {o for _, cmd in all_commands() for p in cli_options(cmd, "x") for o in option_strings(p)}
    text = re.sub(r"^```.*?^```", "", readme(), flags=re.DOTALL | re.MULTILINE)
    for span in re.findall(r"`([^`\n]+)`", text):
        m = re.fullmatch(r"(--?[A-Za-z][A-Za-z0-9-]*)(?:[ =]\S+)?", span.strip())
        if m:
            assert m.group(1) in known, f"README names {m.group(1)}, which no command has"


def test_readme_planned_features_are_under_status():
    """Planned capabilities are said to be planned, in a Status section."""
    status = markdown_section(readme(), "Status")
    assert "planned" in status.lower()


# ------------------------------------------------------- docs/faults.md

CITATION_RE = re.compile(r"(?:(tests/[\w/]+\.py)::)?\b(test_\w+)(?!\w|\.py\b)(?:\[([^\]`]+)\])?")
# Every test of these files must appear in the matrix, and every case of a
# parametrized one (ignoring trailing parameters such as the seed).
MATRIX_FILES = ["tests/test_faults_netns.py", "tests/test_integrity_netns.py"]


def faults_doc() -> str:
    return FAULTS.read_text(encoding="utf-8")


def citations() -> list[tuple[Optional[str], str, Optional[str]]]:
    return [(f or None, name, params or None) for f, name, params in CITATION_RE.findall(faults_doc())]


def defined_tests(path: Path) -> set[str]:
    return set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), flags=re.M))


def collected_ids(files: list[str]) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *files], check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    assert ids, res.stdout + res.stderr
    return ids


def case_matches(cited: str, collected: str) -> bool:
    return collected == cited or collected.startswith(cited + "-")


def test_faults_doc_cites_only_tests_that_exist():
    cites = citations()
    assert cites, "docs/faults.md cites no test"
    everywhere = {name for p in TESTS.glob("test_*.py") for name in defined_tests(p)}
    param_cites = []
    for path, name, params in cites:
        if path:
            assert (ROOT / path).is_file(), f"docs/faults.md cites {path}, which does not exist"
            assert name in defined_tests(ROOT / path), f"docs/faults.md cites {path}::{name}, which does not exist"
            if params:
                param_cites.append((path, name, params))
        else:
            assert name in everywhere, f"docs/faults.md cites {name}, which no test file defines"
    if param_cites:
        ids = collected_ids(sorted({p for p, _, _ in param_cites}))
        for path, name, params in param_cites:
            cases = [i.split("[", 1)[1][:-1] for i in ids if i.startswith(f"{path}::{name}[")]
            assert any(case_matches(params, c) for c in cases), (
                f"docs/faults.md cites {path}::{name}[{params}]; the cases are {cases}")


def test_faults_matrix_covers_every_fault_test():
    cites = citations()
    cited_names = {(p, n) for p, n, _ in cites}
    cited_cases = {(p, n, c) for p, n, c in cites if c}
    for path in MATRIX_FILES:
        for name in defined_tests(ROOT / path):
            assert (path, name) in cited_names, f"docs/faults.md does not cite {path}::{name}"
    for test_id in collected_ids(MATRIX_FILES):
        if "[" not in test_id:
            continue
        head, case = test_id[:-1].split("[", 1)
        path, name = head.split("::")
        assert any(p == path and n == name and case_matches(c, case) for p, n, c in cited_cases), (
            f"docs/faults.md has no row for {test_id}")


def test_faults_matrix_rows_each_cite_a_test():
    matrix = faults_doc().split("## Measured", 1)[0]   # the figures' table cites no test
    rows = [line for line in matrix.splitlines()
            if line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line)]
    body = [r for r in rows if not r.startswith(("| Fault |", "| Attempt |"))]
    assert len(body) >= 13, "the fault matrix lost rows"
    for row in body:
        last = row.rstrip().rstrip("|").rsplit("|", 1)[-1]
        assert CITATION_RE.search(last), f"row cites no test in its last column: {row[:80]}"


def test_faults_doc_has_the_measured_section():
    section = markdown_section(faults_doc(), "Measured")
    assert "tools/fault-soak" in section


def test_readme_links_the_faults_doc_and_the_bench_results():
    text = readme()
    assert "docs/faults.md" in text and "bench/RESULTS.md" in text
