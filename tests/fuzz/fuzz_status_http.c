// fuzz_status_http.c — fuzzes the coordinator's status port (coordinator/ser_status.h): the
// bytes a client sends go through http-parser with ser's callbacks, the request size limit,
// pipelining and keep-alive, the router (/, /status with its section and format queries,
// /metrics, /history?since=), and the renderers of the snapshot.
//
// The server's request handling (s_feed and s_handle_request in ser_status.c) is static and
// is only reached through a libuv TCP connection: there is no entry point that takes raw
// bytes, and the responses are written with uv_write on the connection's handle, so the code
// cannot be called in-process without a socket. This harness therefore runs the real server
// (ser_status_new on 127.0.0.1, an ephemeral port, fed a snapshot with workers, a loader,
// loss terms and a history) and, for each input, opens a connection, sends the input, half-
// closes, and reads until the server closes. It is slower than the in-process harnesses
// (a TCP connection per input); docs/fuzzing.md says what a faster one would need.
//
// The input is the raw request bytes (any number of pipelined requests). Checked here beyond
// "no crash" (the server runs in this process, under the same sanitizers):
//   - the server ends every connection: it closes within 5 s of the client's half-close;
//   - whatever it answers starts with an HTTP/1.1 status line.
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "ser_base.h"
#include "ser_status.h"

static ser_status *s_srv;
static int s_port;

static void s_cleanup(void) {
    ser_status_destroy(&s_srv);
}

static void s_feed_snapshot(void) {
    static ser_status_worker w[2];
    static ser_status_loader l[1];
    snprintf(w[0].id, sizeof w[0].id, "w0");
    snprintf(w[0].address, sizeof w[0].address, "tcp://10.0.0.2:40000");
    w[0].state = SER_STATUS_WORKER_BUSY;
    w[0].last_heard_ms = ser_clock_now_ms();
    w[0].n_shards = 2;
    w[0].shards[0] = 0, w[0].shards[1] = 3;
    snprintf(w[1].id, sizeof w[1].id, "w\"1\\<x>");  // names that need escaping
    w[1].state = SER_STATUS_WORKER_LOST;
    w[1].last_heard_ms = -1;
    snprintf(l[0].id, sizeof l[0].id, "loader0");
    snprintf(l[0].address, sizeof l[0].address, "tcp://127.0.0.1:5556");
    l[0].lag_steps = 2, l[0].lag_shards = 1, l[0].last_heard_ms = ser_clock_now_ms();
    for (int step = 0; step < 4; step++) {
        ser_status_snapshot s;
        ser_status_snapshot_init(&s);
        snprintf(s.job_id, sizeof s.job_id, "fuzz-job");
        snprintf(s.job_name, sizeof s.job_name, "fuzz \"job\"\n");
        s.state = step < 3 ? SER_STATUS_STATE_RUNNING : SER_STATUS_STATE_WAITING;
        s.config_hash = 0x0123456789abcdefull;
        s.start_time_unix = 1.7e9;
        snprintf(s.waiting_for, sizeof s.waiting_for, "w1 (shard 3)");
        s.waiting_since_ms = ser_clock_now_ms();
        snprintf(s.ckpt_path, sizeof s.ckpt_path, "/runs/x/ckpt-0000000002.safetensors");
        s.ckpt_step = 2, s.ckpt_time_ms = ser_clock_now_ms();
        s.step = step, s.epoch = 0.25 * step, s.phase = SER_STATUS_PHASE_BACKWARD;
        s.terms_step = step;
        s.n_terms = 3;
        snprintf(s.terms[0].name, sizeof s.terms[0].name, "loss");
        s.terms[0].value = 5.0 - step;
        snprintf(s.terms[1].name, sizeof s.terms[1].name, "loss_inv");
        s.terms[1].value = step == 2 ? (double)NAN : 4.0;
        snprintf(s.terms[2].name, sizeof s.terms[2].name, "loss_equiv");
        s.terms[2].value = (double)INFINITY;
        s.lr = 1e-3, s.momentum = 0.99, s.weight_decay = 0.04;
        s.images_per_second = 123.5, s.eta_s = 3600, s.steps_total = 100;
        s.knn_top1 = step >= 2 ? 41.5 : (double)NAN;
        s.knn_step = step >= 2 ? step : -1;
        s.n_workers = 2, s.workers = w;
        s.n_loaders = 1, s.loaders = l;
        ser_status_update(s_srv, &s);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    ser_status_opts o;
    ser_status_opts_defaults(&o);
    o.timeout_ms = 2000;
    char err[SER_ERR_LEN];
    s_srv = ser_status_new("127.0.0.1", 0, &o, err);
    if (!s_srv) {
        fprintf(stderr, "fuzz_status_http: %s\n", err);
        abort();
    }
    s_port = ser_status_port(s_srv);
    s_feed_snapshot();
    atexit(s_cleanup);
    return 0;
}

static void s_fail(const char *what) {
    fprintf(stderr, "fuzz_status_http: %s (errno: %s)\n", what, strerror(errno));
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_srv) LLVMFuzzerInitialize(NULL, NULL);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) s_fail("socket");
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)s_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        // libFuzzer's -timeout alarm interrupts system calls: an interrupted connect goes on
        // in the background, so wait for it and read its outcome.
        if (errno != EINTR) s_fail("connect");
        struct pollfd p = {fd, POLLOUT, 0};
        int pr, soerr = 0;
        socklen_t len = sizeof soerr;
        do pr = poll(&p, 1, 5000);
        while (pr < 0 && errno == EINTR);
        if (pr <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
            errno = soerr;
            s_fail("connect (after EINTR)");
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // Send what the server takes; it may close early (400, 431), which ends the sending.
    size_t off = 0;
    while (off < size) {
        ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    char head[9];
    size_t got = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, 5000);
        if (pr < 0 && errno == EINTR) continue;
        if (pr == 0) s_fail("the server did not close the connection within 5 s");
        char buf[65536];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;  // EOF, or a reset after an early close
        for (ssize_t k = 0; k < r && got < sizeof head; k++) head[got++] = buf[k];
    }
    if (got > 0 && (got < sizeof head || memcmp(head, "HTTP/1.1 ", sizeof head) != 0))
        s_fail("the answer does not start with an HTTP/1.1 status line");
    struct linger lg = {1, 0};  // reset: no TIME_WAIT left per input
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return 0;
}
