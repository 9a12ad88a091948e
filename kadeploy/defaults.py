"""Ports and default values, named once: the CLI, the server, the client and the docs
take them from here."""

CONTROL_PORT = 30765     # TCP, the original's control port (-p)
DATA_PORT = 30764        # TCP, the original's data port (-P)
DISCOVERY_PORT = 4957    # UDP, where a session name is broadcast (-s)
# Bytes of the stream the server (and, for repairs in place, every node) keeps in
# memory to re-serve a repaired node from: far more than the lag between a node and
# its grandchild (two hops of socket buffers and pipes, ~12 MiB each at most here).
REPAIR_WINDOW = 256 << 20
