# libc declarations for the relay's data path (no logic here).
# pyconfig.h, included first by every Cython module, defines _GNU_SOURCE, which
# fcntl.h needs to declare splice/tee/vmsplice.

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "fcntl.h" nogil:
    ctypedef long long loff_t
    ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out,
                   size_t len, unsigned int flags)
    ssize_t tee(int fd_in, int fd_out, size_t len, unsigned int flags)
    ssize_t vmsplice(int fd, const iovec *iov, size_t nr_segs, unsigned int flags)
    int fcntl(int fd, int cmd, ...)

    const unsigned int SPLICE_F_MOVE
    const unsigned int SPLICE_F_NONBLOCK
    const unsigned int SPLICE_F_MORE
    const int F_SETPIPE_SZ
    const int F_GETPIPE_SZ

cdef extern from "poll.h" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    const short POLLIN
    const short POLLOUT
    const short POLLERR
    const short POLLHUP
    const short POLLNVAL
