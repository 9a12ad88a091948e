# Named tunables and result codes of the compiled relay loop (C enums: DEF is
# deprecated in Cython 3).

cdef enum:
    # Poll timeouts (ms): peek at stop_fd after a pass that moved bytes, else block.
    POLL_PEEK = 0
    POLL_BLOCK = -1

    # Poll slot tags: which fd a pollfd entry stands for (>= 0 is a sink index).
    TAG_SOURCE = -1
    TAG_STOP = -2

    # How the C loop ended; the Python wrapper maps these onto RelayResult.ended.
    END_EOF = 1
    END_SOURCE_ERROR = 2
    END_STOPPED = 3
    END_NO_SINKS = 4
    END_UNSUPPORTED = 5   # splice refused the source before any byte moved
    END_FATAL = 6         # tee/drop/poll failed: a bug or a kernel surprise
    END_STALLED = 7       # nothing to wait for and nothing moved: a bug
