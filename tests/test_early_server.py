"""ka-d-server without click (kadeploy.control.early_server, issue 13 point 4): it reads a
command line exactly as click does or leaves it to click, knows every parameter then,
deploys without importing click, and fails in the normal path's words."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import click
import pytest
from hypothesis import given

from kadeploy import cli, defaults
from kadeploy.control import cmdline, early_server
from kadeploy.data import synthetic

import clickmatch

SERVER = [sys.executable, "-m", "kadeploy", "server"]
CLIENT = [sys.executable, "-m", "kadeploy", "client"]
LEFT_TO_CLICK = ["--discovery-port", "4957"]     # changes nothing here; the early path leaves it to click


def test_every_early_option_is_the_servers_own():
    assert clickmatch.KINDS["count"](_param("-n")) and clickmatch.KINDS["port"](_param("-p"))
    assert clickmatch.KINDS["count0"](_param("-d")) and not clickmatch.KINDS["count"](_param("-d"))
    clickmatch.assert_options_are_the_commands(cli.server_command, early_server.OPTIONS, callbacks_read=("synthetic",))


def _param(spelling: str) -> click.Parameter:
    return next(p for p in cli.server_command.params if spelling in p.opts)


def _parse(argv):
    """click's reading of a ka-d-server command line: (params, --synthetic), or None if it refuses."""
    try:
        ctx = cli.server_command.make_context("ka-d-server", list(argv))
    except click.ClickException:
        return None
    with ctx:
        params = dict(ctx.params)
        try:
            synthetic.server_producer(params["producer"])
        except click.UsageError:
            return None                           # --synthetic with -e: the command's own usage error
        return params, ctx.meta.get("kadeploy.synthetic")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    d = tmp_path_factory.mktemp("early_server")
    (d / "dir").mkdir()
    (d / "file").write_text("x")
    (d / "readonly").write_text("x")
    (d / "readonly").chmod(0o444)
    return {"dir": str(d / "dir"), "file": str(d / "file"), "missing": str(d / "missing"),
            "nodir": str(d / "missing" / "report.json"), "readonly": str(d / "readonly")}


VALUES = ["0", "1", "3", "01", "+1", " 1", "1_0", "١", "65535", "65536", "-1", "1M", "64k", "1g", "0K",
          "1MiB", "2T", "0.5", "5.", ".5", "1e3", "inf", "nan", "0.0", "cython", "auto", "Cython", "fast",
          "none", "zstd", "zstd:3", "zstd:0", "zstd:20", "auto:3", "gzip", "head -c 1 /dev/zero", "a\nb", "",
          "{dir}", "{file}", "{missing}", "{nodir}", "{readonly}"]
OTHER_OPTIONS = ["-s", "--bind", "--spool", "--install", "--nodes-table", "--reboot", "--strict",
                 "--boot-states", "--discovery-port", "--help", "-v", "-ql", "-n3", "--clients=",
                 "--no-verify=1", "--", "extra"]
TOKENS = [s for spellings in early_server.OPTIONS for s in spellings] + OTHER_OPTIONS


@given(clickmatch.command_lines(TOKENS, VALUES))
def test_the_scan_reads_a_command_line_as_click_does_or_not_at_all(places, argv):
    argv = [a.format(**places) for a in argv]
    mine = early_server.scan(argv, environ={})
    if mine is None:
        return                                    # click reads it
    clickmatch.assert_read_as_click(argv, mine, _parse(argv), early_server.ABSENT, "synthetic")


def test_absent_holds_every_parameter_of_the_server_and_clicks_default():
    params, size = _parse([])
    assert size is None and early_server.ABSENT == params
    for name, value in params.items():
        assert type(early_server.ABSENT[name]) is type(value), name


@pytest.mark.parametrize("argv", [
    ["-n", "4"], ["-n", "2", "-e", "tar -C /srv/image -c ."],
    # kadeploy bench's
    ["-n", "2", "-a", "1", "--synthetic", "536870912", "--report", "/tmp/report.json", "--wait-timeout",
     "120", "--relay", "auto", "--buffer-size", "1048576", "-q", "--compress", "zstd:3"],
    ["--clients=3", "--key-file", __file__, "--encrypt", "--window", "64M", "--stall-timeout", "2.5", "--verbose"],
])
def test_the_usual_command_lines_take_the_early_path(argv):
    assert early_server.scan(argv, environ={}) is not None


@pytest.mark.parametrize("environ", [{"_KA_D_SERVER_COMPLETE": "bash_source"}, {"_KADEPLOY_COMPLETE": "zsh_source"},
                                     {defaults.ENV_KEY_FILE: "/nonexistent/key"}])
def test_shell_completion_or_a_bad_key_file_in_the_environment_is_clicks(environ):
    assert early_server.scan(["-n", "1"], environ=environ) is None
    assert early_server.scan(["-n", "1"], environ={defaults.ENV_KEY_FILE: __file__}) is not None


# ------------------------------------------------------------- real processes

@pytest.mark.parametrize("early_path", [True, False])
@pytest.mark.parametrize("prog", ["kadeploy server", "ka-d-server"])
def test_a_server_deploys_without_loading_click(tmp_path, early_path, prog):
    """A real server and a real node: with a command line read to its last parameter the
    server deploys without importing click, prints its report and writes it as JSON;
    with an option left to click it takes the normal path, which loads click (so the
    check sees click when it is there)."""
    port, data_port = clickmatch.closed_port(), clickmatch.closed_port()
    got, report = tmp_path / "got", tmp_path / "report.json"
    argv = ["-n", "1", "-p", str(port), "-P", str(data_port), "-e", "seq 1 20000", "--report", str(report),
            *([] if early_path else LEFT_TO_CLICK)]
    assert (early_server.scan(argv, environ={}) is not None) is early_path
    entry = (["-m", "kadeploy", "server"] if prog == "kadeploy server"
             else ["-c", "import sys; from kadeploy.entry import server_main; sys.argv[0] = 'ka-d-server'; server_main()"])
    server = subprocess.Popen([sys.executable, "-X", "importtime", *entry, *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run(CLIENT + ["-h", "127.0.0.1", "-p", str(port), "-e", f"cat > {got}"],
                                capture_output=True, text=True, timeout=120)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert client.returncode == 0 and server.returncode == 0, client.stderr[-2000:] + err[-3000:]
    assert got.read_text() == "".join(f"{i}\n" for i in range(1, 20001))
    assert "VERIFIED" in out and " yes " in out, out
    assert '"verified": true' in report.read_text()
    assert clickmatch.click_loaded(err) is not early_path


def _untimed(log: str):
    return [re.sub(r"^\d\d:\d\d:\d\d\.\d+ ", "", line) for line in log.splitlines()]


def _key(tmp_path, name: str, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("case", ["short key", "encrypt without a key", "keyed no-verify", "empty hosts file",
                                  "unreadable hosts", "backend missing", "readable key"])
def test_the_early_path_fails_as_the_normal_path_does(tmp_path, case):
    """The same one line on stderr and the same exit status as click's path, and (but
    for a warning that lets the server go on) no listener opened before it."""
    port = clickmatch.closed_port()
    env = dict(os.environ)
    argv = ["-n", "1", "-p", str(port), "--synthetic", "1K", "--wait-timeout", "0.2", "-q"]
    extra = {"short key": ["--key-file", _key(tmp_path, "short", b"abc")],
             "encrypt without a key": ["--encrypt"],
             "keyed no-verify": ["--key-file", _key(tmp_path, "key", b"k" * 32), "--no-verify"],
             "empty hosts file": ["--hosts", _key(tmp_path, "hosts", b"# none\n")],
             "unreadable hosts": ["--hosts", str(tmp_path)],   # a directory: click's own error, read by click
             "backend missing": ["--relay", "cython"],
             "readable key": ["--key-file", _key(tmp_path, "open", b"k" * 32, 0o644)]}[case]
    if case == "backend missing":
        env[defaults.ENV_REQUIRE] = "no-such-backend"
    env.pop(defaults.ENV_KEY_FILE, None)
    env.pop(defaults.ENV_KEY, None)
    if case != "unreadable hosts":
        assert early_server.scan(argv + extra, environ={}) is not None
    runs = [subprocess.run(SERVER + argv + extra + more, capture_output=True, text=True, timeout=60, env=env)
            for more in ([], LEFT_TO_CLICK)]
    fast, normal = runs
    assert fast.returncode == normal.returncode, (fast.stderr, normal.stderr)
    assert _untimed(fast.stderr) == _untimed(normal.stderr), (fast.stderr, normal.stderr)
    assert "Traceback" not in fast.stderr + normal.stderr
    if case == "readable key":                   # a warning, then the wait times out with no node
        assert "readable by others" in fast.stderr and fast.returncode == 1, fast.stderr
    else:
        assert fast.returncode == 64 and len(fast.stderr.strip().splitlines()) == 1, fast.stderr


def test_the_reading_is_pure_and_shared():
    """Both early paths read with the same rules (kadeploy.control.cmdline)."""
    spellings = cmdline.spellings_of(early_server.OPTIONS)
    assert cmdline.read(["-n", "2", "--no-verify"], spellings) == {"n_clients": 2, "no_verify": True}
    assert cmdline.read(["-n", "2", "-n", "3"], spellings) is None
    assert cmdline.convert("count0", "0") == 0 and cmdline.convert("count", "0") is None
    assert cmdline.convert("port", "65535") == 65535 and cmdline.convert("port", "65536") is None
