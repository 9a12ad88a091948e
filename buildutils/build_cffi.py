"""cffi (API mode) bindings for the relay: splice, tee, vmsplice and pipe sizing.

Built at install time as ``kadeploy.relay._libc_cffi`` (see setup.py, which only asks for
it when a C compiler works). Only what the relay needs is declared. fcntl is variadic,
awkward through cffi, so two tiny non-variadic helpers wrap F_SETPIPE_SZ/F_GETPIPE_SZ.
"""
from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef("""
    struct iovec { void *iov_base; size_t iov_len; };
    /* loff_t is int64_t on glibc; the relay always passes NULL offsets. */
    ssize_t splice(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out,
                   size_t len, unsigned int flags);
    ssize_t tee(int fd_in, int fd_out, size_t len, unsigned int flags);
    ssize_t vmsplice(int fd, const struct iovec *iov, size_t nr_segs, unsigned int flags);
    int kd_set_pipe_size(int fd, int size);
    int kd_get_pipe_size(int fd);
""")

ffibuilder.set_source("kadeploy.relay._libc_cffi", r"""
    #ifndef _GNU_SOURCE
    #define _GNU_SOURCE
    #endif
    #include <fcntl.h>
    #include <sys/uio.h>
    #include <stdint.h>

    #ifndef F_SETPIPE_SZ
    #define F_SETPIPE_SZ 1031
    #define F_GETPIPE_SZ 1032
    #endif

    static int kd_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }
    static int kd_get_pipe_size(int fd) { return fcntl(fd, F_GETPIPE_SZ); }
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
