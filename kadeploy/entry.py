"""The console entry points. ka-d-client (and `kadeploy client`) may register with the
server before the command line machinery is even imported (kadeploy.control.early), and
ka-d-server (and `kadeploy server`) may run without it (kadeploy.control.early_server);
everything else goes straight to kadeploy.cli. Each ends its process through _run."""
from __future__ import annotations

import os
import sys


def client_main() -> None:
    def client() -> None:
        _register_early("ka-d-client", sys.argv[1:])
        _run_registered("ka-d-client")
        from kadeploy.cli import client_main as main
        main()
    _run(client)


def server_main() -> None:
    def server() -> None:
        _serve_early("ka-d-server", sys.argv[1:])
        from kadeploy.cli import server_main as main
        main()
    _run(server)


def kadeploy_main() -> None:
    def kadeploy() -> None:
        if sys.argv[1:2] == ["client"]:
            _register_early("kadeploy", sys.argv[2:])
            _run_registered("kadeploy")
        elif sys.argv[1:2] == ["server"]:
            _serve_early("kadeploy", sys.argv[2:])
        from kadeploy.cli import kadeploy_main as main
        main()
    _run(kadeploy)


def _run(main) -> None:
    """Run `main` and end the process with its status. Once it is done, and no thread
    but daemons is left, the process ends as the interpreter's exit would (the atexit
    handlers run, logging's flush among them, and the standard streams are flushed,
    status 120 if that fails) without first freeing every module and object: that
    takes ~20 ms (bench/RESULTS.md), on the wall clock of every deployment, which ends
    when its last node's process does."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    threading = sys.modules.get("threading")
    if threading is not None and any(t is not threading.main_thread() and not t.daemon and t.is_alive()
                                     for t in threading.enumerate()):
        sys.exit(code)               # the interpreter waits for them, as always
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): as the interpreter does
        sys.stderr.write(f"{code}\n")
        code = 1
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = 120
    os._exit(code & 0xFF)


def _register_early(prog: str, argv) -> None:
    import _signal   # signal.py would build its IntEnum tables

    from kadeploy.control import early
    from kadeploy.errors import EXIT_INTERRUPTED, interrupt_on_sigterm
    _signal.signal(_signal.SIGTERM, interrupt_on_sigterm)
    try:
        early.start(argv)
        early.preloaded()
    except KeyboardInterrupt:   # Ctrl-C (or SIGTERM) while waiting for the server
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception:   # a bug of the early path must not cost the registration
        early.abandon()
        if os.environ.get("KADEPLOY_DEBUG"):
            raise


def _serve_early(prog: str, argv) -> None:
    """A server command line known to its last parameter runs without click."""
    from kadeploy.control import early_server
    params = early_server.scan(argv)
    if params is not None:
        import _signal   # signal.py would build its IntEnum tables

        from kadeploy.errors import interrupt_on_sigterm
        _signal.signal(_signal.SIGTERM, interrupt_on_sigterm)
        sys.exit(early_server.run(prog, params))


def _run_registered(prog: str) -> None:
    """A node registered early runs on without click, to its exit status."""
    from kadeploy.control import early
    if early.registration() is not None:
        from kadeploy.control import early_client
        sys.exit(early_client.run(prog))
