"""Ports and default values, named once: the CLI, the configs of server and client,
discovery, the lab and the tests take them from here (the man pages state them, and
tests/test_docs.py checks that they do)."""

CONTROL_PORT = 30765     # TCP, the original's control port (-p)
DATA_PORT = 30764        # TCP, the original's data port (-P)
DISCOVERY_PORT = 4957    # UDP, where a session name is broadcast (-s)

DISCOVERY_TRIES = 10     # broadcasts of a session name before giving up...
DISCOVERY_INTERVAL = 1.0  # ...one every this many seconds

BUFFER_SIZE = 1 << 20    # relay pipe/buffer bytes (--buffer-size): 1 MiB, the unprivileged pipe maximum

CONNECT_TIMEOUT = 30.0   # seconds for data links (and a server not up yet) to connect (--connect-timeout)
HANDSHAKE_TIMEOUT = 10.0  # seconds a new connection may take to introduce itself (--handshake-timeout)
STALL_TIMEOUT = 3.0      # seconds of silence after which a node, or the server, is given up (--stall-timeout)
# Each side speaks this often, well within the stall timeout, so that a live peer is
# never given up: the server pings every node, a node reports its progress.
PING_INTERVAL = 1.0
REPORT_INTERVAL = 1.0
# A refused connection (the server not up yet) is retried at once, then backing off to
# CONNECT_RETRY_CAP: a client joins at most that long after the server listens.
CONNECT_RETRY_FIRST = 0.001
CONNECT_RETRY_CAP = 0.02

# Where the default consumer (tar, kadeploy.data.commands) extracts (-t). The
# original's client default was `(cd /tmp/stage2; tar --x -f -)`, which GNU tar now
# rejects as ambiguous; this is its 2001 default with the directory made an option.
DEFAULT_TARGET = "/tmp/disk"

MAX_CONNECTIONS = 4096   # control connections open at once before more are refused (--max-connections)
PROGRESS_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal (--progress-interval)
# Bytes of the stream the server (and, for repairs in place, every node) keeps in
# memory to re-serve a repaired node from: far more than the lag between a node and
# its grandchild (two hops of socket buffers and pipes, ~12 MiB each at most here).
REPAIR_WINDOW = 256 << 20
# With a repair window, a child that has not connected this long after its parent is
# ready does not hold the stream back: it is fed from the window when it arrives.
LATE_CHILD_GRACE = 0.5
# The server logs the tree it built down to this many nodes, then how many more.
TREE_LOG_NODES = 200

# Environment variables, named here so that the client's early registration
# (kadeploy.control.early) can look at them without importing their modules.
ENV_KEY = "KADEPLOY_KEY"                 # the shared key itself (kadeploy.control.auth)
ENV_KEY_FILE = "KADEPLOY_KEY_FILE"       # a file holding it (--key-file)
ENV_BACKEND = "KADEPLOY_RELAY"           # the relay backend (--relay; kadeploy.relay)
# Set when a run must use the compiled core (CI): a missing backend is then an error
# instead of a silent fallback.
ENV_REQUIRE = "KADEPLOY_REQUIRE_BACKEND"
# The suffixes of a size (--window 256M): binary multiples, K, M and G in either case.
SIZE_SHIFTS = {"k": 10, "m": 20, "g": 30}
