"""How a command's process ends (kadeploy.entry._run): with its status, its atexit
handlers run and its output flushed, as the interpreter's own exit would, but without
the interpreter's teardown, unless a thread is still working, which it then waits for."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


# Block-buffered standard output, as for a command whose output is a pipe or a file.
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _end(body: str, **kw) -> subprocess.CompletedProcess:
    """A process whose main is `body` (statements), ended by entry._run."""
    code = ("import atexit, sys, threading, time\n"
            "from kadeploy.entry import _run\n"
            "def main():\n" + "".join(f"    {line}\n" for line in body.splitlines()) +
            "_run(main)\n"
            "print('not reached')\n")
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, timeout=60,
                          env=BUFFERED, **kw)


@pytest.mark.parametrize("body, status, err", [
    ("pass", 0, ""), ("sys.exit()", 0, ""), ("sys.exit(3)", 3, ""), ("sys.exit(64)", 64, ""),
    ("sys.exit(256 + 2)", 2, ""), ("sys.exit(-1)", 255, ""), ("sys.exit('one line')", 1, "one line\n"),
])
def test_the_status_is_the_interpreters(body, status, err):
    p = _end(body)
    assert (p.returncode, p.stdout, p.stderr) == (status, "", err)


def test_buffered_output_and_atexit_handlers_are_not_lost():
    # stdout is a pipe here, so block-buffered: the text is still in the buffer at the end
    p = _end("atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
             "sys.stdout.write('buffered, no newline')\n"
             "sys.exit(2)")
    assert (p.returncode, p.stdout, p.stderr) == (2, "buffered, no newline", "atexit ran\n")


def test_a_thread_still_working_is_waited_for():
    p = _end("threading.Thread(target=lambda: (time.sleep(0.5), print('the thread ended'))).start()\n"
             "sys.exit(5)")
    assert (p.returncode, p.stdout) == (5, "the thread ended\n")


def test_a_daemon_thread_does_not_hold_the_end():
    p = _end("threading.Thread(target=lambda: time.sleep(60), daemon=True).start()\n"
             "sys.exit(4)")
    assert p.returncode == 4


def test_a_standard_output_closed_before_the_end_is_status_120_as_for_the_interpreter(tmp_path):
    written, gate = tmp_path / "written", tmp_path / "closed"
    code = ("import os, sys, time\n"
            "from kadeploy.entry import _run\n"
            "def main():\n"
            "    sys.stdout.write('x' * 100)               # buffered: nothing sent yet\n"
            f"    open({str(written)!r}, 'w').close()\n"
            f"    while not os.path.exists({str(gate)!r}):\n"
            "        time.sleep(0.01)\n"
            "_run(main)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=BUFFERED)
    deadline = time.monotonic() + 60
    while not written.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    proc.stdout.close()              # nobody reads: the final flush fails (EPIPE)
    gate.touch()
    proc.wait(60)
    proc.stderr.close()
    assert proc.returncode == 120
