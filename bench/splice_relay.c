/* The baseline of bench/chain_cpu.py: the least a chain node can do in user space.
 *
 *   splice_relay LISTEN_PORT [NEXT_PORT]
 *
 * Listens on 127.0.0.1:LISTEN_PORT for its parent, connects to 127.0.0.1:NEXT_PORT (its
 * child) when given, and moves the stream socket -> pipe -> child socket with splice(2),
 * with tee(2) giving the same pages to a second pipe read by its local consumer, the
 * same one as ka-d-client --discard: `cat >/dev/null`, its child (waited for, so that
 * its CPU is counted with this process's). No digests, no control plane, no copy in
 * the relay itself. Prints "ready" when it listens and its byte count at the end;
 * exits non-zero on error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIPE_BYTES (1 << 20)

static void die(const char *what) { perror(what); exit(1); }

static int tcp_to(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return s;
}

static int accept_one(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0) die("listen");
    printf("ready\n");
    fflush(stdout);
    int s = accept(l, NULL, NULL);
    if (s < 0) die("accept");
    close(l);
    return s;
}

/* Move exactly n bytes from in to out by splice. */
static void drain(int in, int out, long n) {
    while (n > 0) {
        ssize_t k = splice(in, NULL, out, NULL, n, SPLICE_F_MOVE);
        if (k <= 0) die("splice out");
        n -= k;
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: splice_relay LISTEN_PORT [NEXT_PORT]\n");
        return 2;
    }
    int src = accept_one(atoi(argv[1]));
    int next = argc == 3 ? tcp_to(atoi(argv[2])) : -1;
    int null = open("/dev/null", O_WRONLY);
    int a[2], b[2];
    if (null < 0 || pipe(a) < 0 || pipe(b) < 0) die("pipe");
    fcntl(a[1], F_SETPIPE_SZ, PIPE_BYTES);
    fcntl(b[1], F_SETPIPE_SZ, PIPE_BYTES);
    pid_t consumer = fork();
    if (consumer < 0) die("fork");
    if (consumer == 0) {
        dup2(b[0], 0);
        close(b[0]);
        close(b[1]);
        execl("/bin/sh", "sh", "-c", "cat >/dev/null", (char *)NULL);
        die("exec");
    }
    close(b[0]);
    long total = 0;
    for (;;) {
        ssize_t n = splice(src, NULL, a[1], NULL, PIPE_BYTES, SPLICE_F_MOVE);
        if (n < 0) die("splice in");
        if (n == 0) break;
        total += n;
        while (n > 0) {   /* tee gives the consumer the same pages (no copy), then they go on */
            ssize_t t = tee(a[0], b[1], n, 0);
            if (t <= 0) die("tee");
            drain(a[0], next >= 0 ? next : null, t);
            n -= t;
        }
    }
    if (next >= 0) shutdown(next, SHUT_WR);
    close(b[1]);                          /* EOF for the consumer */
    int status;
    if (waitpid(consumer, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("consumer");
    printf("%ld\n", total);
    return 0;
}
