"""The console entry points. ka-d-client (and `kadeploy client`) may register with the
server before the command line machinery is even imported (kadeploy.control.early);
everything else goes straight to kadeploy.cli."""
from __future__ import annotations

import os
import sys


def client_main() -> None:
    _register_early("ka-d-client", sys.argv[1:])
    from kadeploy.cli import client_main as main
    main()


def server_main() -> None:
    from kadeploy.cli import server_main as main
    main()


def kadeploy_main() -> None:
    if sys.argv[1:2] == ["client"]:
        _register_early("kadeploy", sys.argv[2:])
    from kadeploy.cli import kadeploy_main as main
    main()


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
