# State of one run of the compiled relay loop; plain C, so the loop needs no GIL.
from kadeploy.relay.includes.libc cimport pollfd


cdef struct Sink:
    int fd           # the sink itself (socket, pipe or file)
    int pipe_r       # its pipe (the source pipe when there is one sink)
    int pipe_w
    size_t cap       # capacity of that pipe
    size_t held      # bytes in that pipe
    size_t ahead     # bytes at the source pipe's head already tee'd to it
    unsigned long long sent
    int err          # errno that retired it, 0 while live
    bint live
    bint ready       # False after EAGAIN, until poll says writable
    bint tee_full    # tee found no room (page slots): wait until it drains
    bint teed        # a pipe itself: tee'd into straight from the source pipe, no pipe of its own

cdef struct Loop:
    int src_fd
    int in_r         # the source pipe
    int in_w
    size_t in_cap
    size_t n_in      # bytes in the source pipe (tee mode only)
    int null_fd      # /dev/null, to drop tee'd bytes from the source pipe
    int stop_fd
    bint direct      # one sink: its pipe is the source pipe, no tee
    bint src_ready
    bint src_full
    bint src_done
    int src_err
    int fatal_err
    const char *fatal_what
    unsigned long long bytes_in
    unsigned long long *counters   # [bytes_in, sink0, ...] or NULL
    int nsinks
    int nlive
    Sink *sinks
    # poll scratch: one slot per sink + source + stop
    pollfd *pfds
    int *tags
