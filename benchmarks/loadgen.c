/* loadgen: an epoll TCP load generator for the hand-off benchmarks.
 *
 * Usage:
 *   loadgen HOST PORT [--duration S | --connections N] [--concurrency C]
 *           [--mode silent|request] [--timeout S]
 *
 * Keeps C connections open at all times. Each one connects, in `request`
 * mode writes a 40-byte HTTP/1.0 request, then reads until EOF and closes.
 * A connection ends cleanly when it reads EOF after at least one byte; the
 * others are counted as `reset` (ECONNRESET/EPIPE), `empty` (EOF before any
 * byte), `hung` (no EOF within --timeout seconds of connect()) or
 * `connect_error` (refused, no address, ...; the slot then waits 10 ms, so
 * a dead server is not hammered).
 *
 * With --duration, no connection starts after S seconds; those in flight
 * are then drained (bounded by --timeout) so that their outcome is counted.
 * conn_per_s counts the clean connections that completed inside the window.
 *
 * Prints one JSON line on stdout. Latencies are connect() -> EOF, in ms,
 * over clean connections. cpu_s is this process's own user+system time, to
 * check the generator is not the bottleneck.
 *
 * Build: gcc -O2 -o loadgen loadgen.c   (Linux, no dependencies)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* 40 bytes, the size of a minimal HTTP/1.0 request. */
static const char REQUEST[] = "GET / HTTP/1.0\r\nHost: x\r\nX-Pad: abcd\r\n\r\n";
#define BACKOFF_S 0.010 /* a slot's pause after a failed connect */
#define TICK_MS 10      /* longest epoll wait: deadlines are checked this often */

enum state { IDLE, CONNECTING, READING };

struct conn {
    int fd;
    enum state state;
    double started;  /* connect() time */
    double deadline; /* hung after this; for IDLE, when to start again */
    size_t bytes;
};

struct options {
    const char *host;
    int port;
    double duration; /* 0: run --connections instead */
    long connections;
    int concurrency;
    int request;
    double timeout;
};

struct results {
    long started, ok, ok_in_window, reset, empty, hung, connect_error;
    int last_connect_errno;
    double *latencies; /* ms, one per clean connection */
    size_t n_latencies, cap_latencies;
};

static struct options opt = {NULL, 0, 0, 0, 50, 0, 2.0};
static struct results res;
static struct sockaddr_in addr;
static int epfd;
static double t_start, t_window_end;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen HOST PORT [--duration S | --connections N] "
                    "[--concurrency C] [--mode silent|request] [--timeout S]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    if (argc < 3)
        usage();
    opt.host = argv[1];
    opt.port = atoi(argv[2]);
    for (int i = 3; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage();
        const char *name = argv[i], *value = argv[i + 1];
        if (!strcmp(name, "--duration"))
            opt.duration = atof(value);
        else if (!strcmp(name, "--connections"))
            opt.connections = atol(value);
        else if (!strcmp(name, "--concurrency"))
            opt.concurrency = atoi(value);
        else if (!strcmp(name, "--timeout"))
            opt.timeout = atof(value);
        else if (!strcmp(name, "--mode") && !strcmp(value, "request"))
            opt.request = 1;
        else if (!strcmp(name, "--mode") && !strcmp(value, "silent"))
            opt.request = 0;
        else
            usage();
    }
    if (opt.duration <= 0 && opt.connections <= 0)
        opt.duration = 3.0;
    if (opt.concurrency < 1 || opt.port <= 0 || opt.timeout <= 0)
        usage();
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
        usage();
}

static void record_latency(double ms)
{
    if (res.n_latencies == res.cap_latencies) {
        res.cap_latencies = res.cap_latencies ? res.cap_latencies * 2 : 65536;
        res.latencies = realloc(res.latencies, res.cap_latencies * sizeof(double));
        if (!res.latencies)
            die("realloc");
    }
    res.latencies[res.n_latencies++] = ms;
}

/* May another connection start? */
static int may_start(double t)
{
    if (opt.duration > 0)
        return t < t_window_end;
    return res.started < opt.connections;
}

/* Close a connection; an abortive close (RST) leaves no TIME_WAIT behind. */
static void close_conn(struct conn *c, int abort)
{
    if (abort) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd);
    c->fd = -1;
    c->state = IDLE;
    c->deadline = 0;
}

static void start_conn(struct conn *c, double t)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    res.started++;
    c->started = t;
    c->deadline = t + opt.timeout;
    c->bytes = 0;
    c->state = CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        res.connect_error++;
        res.last_connect_errno = errno;
        close_conn(c, 0);
        c->deadline = t + BACKOFF_S;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void on_connected(struct conn *c, double t)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        res.connect_error++;
        res.last_connect_errno = err;
        close_conn(c, 0);
        c->deadline = t + BACKOFF_S;
        return;
    }
    c->state = READING;
    if (opt.request && send(c->fd, REQUEST, sizeof REQUEST - 1, MSG_NOSIGNAL) < 0) {
        res.reset++; /* EPIPE / ECONNRESET: the server already reset it */
        close_conn(c, 0);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_readable(struct conn *c, double t)
{
    char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            c->bytes += n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n < 0) {
            res.reset++;
        } else if (c->bytes == 0) {
            res.empty++;
        } else {
            res.ok++;
            if (t <= t_window_end)
                res.ok_in_window++;
            record_latency((t - c->started) * 1e3);
        }
        close_conn(c, 0);
        return;
    }
}

static void on_event(struct conn *c, uint32_t events, double t)
{
    if (c->state == CONNECTING) {
        on_connected(c, t);
        if (c->state != READING || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
            return;
    }
    on_readable(c, t);
}

/* Start idle slots whose pause is over; count and drop hung connections. */
static int tend_slots(struct conn *conns, double t)
{
    int active = 0;
    for (int i = 0; i < opt.concurrency; i++) {
        struct conn *c = &conns[i];
        if (c->state != IDLE && t >= c->deadline) {
            res.hung++;
            close_conn(c, 1);
        }
        if (c->state == IDLE && t >= c->deadline && may_start(t))
            start_conn(c, t);
        if (c->state != IDLE || may_start(t))
            active++;
    }
    return active;
}

static void run(void)
{
    struct conn *conns = calloc(opt.concurrency, sizeof *conns);
    struct epoll_event events[256];
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || epfd < 0)
        die("setup");
    for (int i = 0; i < opt.concurrency; i++)
        conns[i].fd = -1;
    t_start = now();
    t_window_end = opt.duration > 0 ? t_start + opt.duration : 1e300;
    while (tend_slots(conns, now()) > 0) {
        int n = epoll_wait(epfd, events, 256, TICK_MS);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        double t = now();
        for (int i = 0; i < n; i++)
            on_event(events[i].data.ptr, events[i].events, t);
    }
    free(conns);
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double p)
{
    if (!res.n_latencies)
        return 0;
    size_t i = (size_t)(p * res.n_latencies + 0.999999);
    return res.latencies[(i ? i : 1) - 1];
}

static double seconds(struct timeval tv)
{
    return tv.tv_sec + tv.tv_usec / 1e6;
}

static void report(double elapsed)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    qsort(res.latencies, res.n_latencies, sizeof(double), by_value);
    double window = opt.duration > 0 ? opt.duration : elapsed;
    long counted = opt.duration > 0 ? res.ok_in_window : res.ok;
    printf("{\"mode\": \"%s\", \"concurrency\": %d, \"window_s\": %.3f, \"elapsed_s\": %.3f, "
           "\"started\": %ld, \"ok\": %ld, \"ok_in_window\": %ld, \"conn_per_s\": %.1f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"reset\": %ld, \"empty\": %ld, "
           "\"hung\": %ld, \"connect_error\": %ld, \"last_connect_error\": \"%s\", "
           "\"cpu_s\": %.3f, \"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f}\n",
           opt.request ? "request" : "silent", opt.concurrency, window, elapsed, res.started,
           res.ok, res.ok_in_window, counted / window, percentile(0.50), percentile(0.99),
           res.reset, res.empty, res.hung, res.connect_error,
           res.last_connect_errno ? strerror(res.last_connect_errno) : "",
           seconds(ru.ru_utime) + seconds(ru.ru_stime), seconds(ru.ru_utime),
           seconds(ru.ru_stime));
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    run();
    report(now() - t_start);
    return 0;
}
