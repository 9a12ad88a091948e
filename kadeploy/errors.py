"""Errors that end a command with one clear line and a documented exit status."""
import os
import sys

# Exit statuses, the same for both commands (see the man pages' EXIT STATUS).
EXIT_OK = 0
EXIT_FAILED = 1        # server: every node failed, or the server itself did; client: this node failed
EXIT_SOME_FAILED = 2   # server only: some nodes failed, the others are good
EXIT_NOT_JOINED = 3    # client: could not join (server unreachable, refused, went away early)
EXIT_USAGE = 64        # bad arguments (sysexits EX_USAGE; click's own 2 would clash with 2 above)
EXIT_INTERRUPTED = 130


class KadeployError(Exception):
    """A failure explained in one line; `exit_code` is what the command exits with."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotJoined(KadeployError):
    exit_code = EXIT_NOT_JOINED
    refused = False  # the peer actively refused the connection (nobody listening yet)


class UsageError(KadeployError):
    exit_code = EXIT_USAGE


def interrupt_on_sigterm(signum, frame):
    """SIGTERM's handler in the commands: unwind like Ctrl-C (EXIT_INTERRUPTED), so that
    producers, consumers and namespaces are cleaned up."""
    raise KeyboardInterrupt


def failure_status(prog: str, e: BaseException) -> int:
    """The one line on stderr for a failure that ends a command, and its exit status;
    an unexpected exception (a bug) is raised again when KADEPLOY_DEBUG asks for its
    traceback."""
    if isinstance(e, KadeployError):
        line, status = f"error: {e}", e.exit_code
    elif isinstance(e, KeyboardInterrupt):
        line, status = "interrupted", EXIT_INTERRUPTED
    elif isinstance(e, OSError):
        line, status = f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), EXIT_FAILED
    else:
        if os.environ.get("KADEPLOY_DEBUG"):
            raise e
        line, status = (f"internal error: {type(e).__name__}: {e} "
                        "(run with KADEPLOY_DEBUG=1 for the traceback, and report it)"), EXIT_FAILED
    sys.stderr.write(f"{prog}: {line}\n")
    sys.stderr.flush()
    return status
