// test_netdiag.c — proto/ser_netdiag: endpoint checks, and the causes a socket monitor names,
// in one process over 127.0.0.1: a refused port (once, again after 30 s with a count, not again
// for a socket made again), the connection coming up and being lost, an unresolvable host, a
// CURVE server when this process has no key. The log is read from stderr, redirected to a file
// around each check; the 30 s are moved with ser_clock_set.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ser_base.h"
#include "ser_netdiag.h"
#include "ser_test.h"

static char s_log[64];
static int s_saved_fd = -1;
static int64_t s_offset;  // added to the monotonic clock (ser_clock_set)

static int64_t s_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + s_offset;
}

static int s_setup(void **state) {
    (void)state;
    snprintf(s_log, sizeof s_log, "/tmp/ser_test_netdiag_XXXXXX");
    int fd = mkstemp(s_log);
    if (fd < 0) return -1;
    close(fd);
    ser_clock_set(s_clock);
    alarm(60);  // a hang is a failure
    return 0;
}

static int s_teardown(void **state) {
    (void)state;
    ser_clock_set(NULL);
    unlink(s_log);
    alarm(0);
    return 0;
}

// ser_log's lines go to s_log (truncated) until s_capture_end.
static void s_capture_begin(void) {
    fflush(stderr);
    s_saved_fd = dup(2);
    FILE *f = fopen(s_log, "w");
    assert_non_null(f);
    dup2(fileno(f), 2);
    fclose(f);
}

static void s_capture_end(void) {
    fflush(stderr);
    dup2(s_saved_fd, 2);
    close(s_saved_fd);
    s_saved_fd = -1;
}

// How many times needle is in what was captured so far.
static int s_count(const char *needle) { return ser_test_count_in_file(s_log, needle); }

// Polls the monitor for ms milliseconds (or until describe() returns want, when want >= 0);
// returns the last state, its text in text.
static int s_pump(ser_netdiag *d, int ms, int want, char *text, size_t n) {
    int st = SER_NETDIAG_UNKNOWN;
    for (int t = 0; t < ms; t += 20) {
        zmq_pollitem_t it = {ser_netdiag_socket(d), 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 20);
        st = ser_netdiag_describe(d, text, n);
        if (want >= 0 && st == want) break;
    }
    return st;
}

// Polls the monitor until needle has been logged (what is captured so far), for ms at most: a
// loaded machine may take longer than a fixed pump for the next connection attempt.
static void s_pump_until(ser_netdiag *d, int ms, const char *needle, char *text, size_t n) {
    for (int t = 0; t < ms && s_count(needle) == 0; t += 100) {
        fflush(stderr);
        s_pump(d, 100, -1, text, n);
    }
}

static void *s_dealer(void *ctx) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, ivl = 20;  // retry every 20 ms: many attempts in a short test
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    return s;
}

static void test_check_endpoint(void **state) {
    (void)state;
    static const char *const good[] = {"tcp://127.0.0.1:5555", "tcp://host-1.example.org:1",
                                       "tcp://[::1]:5555", "tcp://eth0;10.0.0.2:7",
                                       "ipc:///tmp/ser.sock", "inproc://x", NULL};
    static const struct {
        const char *ep, *want;
    } bad[] = {
        {"localhost:5555", "'localhost:5555' has no transport: expected tcp://HOST:PORT (did you "
                           "mean tcp://localhost:5555?)"},
        {"tcp:/x", "'tcp:/x': expected tcp://HOST:PORT (or ipc://PATH)"},
        {"127.0.0.1", "'127.0.0.1': expected tcp://HOST:PORT"},
        {"tcp://localhost", "'tcp://localhost' has no port: expected tcp://HOST:PORT"},
        {"tcp://h:0", "port '0' is not a number in 1..65535"},
        {"tcp://h:5555x", "port '5555x' is not a number in 1..65535"},
        {"tcp://:5555", "'' is not a host name or address"},
        {"tcp://a b:5555", "'a b' is not a host name or address"},
        {"http://h:80", "unknown transport 'http': expected tcp://HOST:PORT"},
        {"ipc://", "'ipc://' has no name after '://'"},
        {"", "empty endpoint: expected tcp://HOST:PORT"},
    };
    char err[SER_ERR_LEN];
    for (int i = 0; good[i]; i++) {
        if (ser_netdiag_check_endpoint(good[i], err)) fail_msg("%s: %s", good[i], err);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ser_netdiag_check_endpoint(bad[i].ep, err), SER_EINVAL);
        if (!strstr(err, bad[i].want)) fail_msg("%s: got \"%s\"", bad[i].ep, err);
    }
    // ser_netdiag_connect names the endpoint too, before libzmq's "Invalid argument".
    void *ctx = zmq_ctx_new(), *s = s_dealer(ctx);
    assert_int_equal(ser_netdiag_connect(s, "localhost:5555", err), SER_EINVAL);
    assert_non_null(strstr(err, "did you mean tcp://localhost:5555?"));
    assert_int_equal(ser_netdiag_connect(s, "tcp://127.0.0.1:1", err), SER_OK);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

static void test_refused_up_lost(void **state) {
    (void)state;
    char ep[64], want[160], text[600], err[SER_ERR_LEN];
    int port = ser_test_closed_port();
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    void *ctx = zmq_ctx_new(), *s = s_dealer(ctx);
    ser_netdiag *d = ser_netdiag_new(ctx, "tester");
    assert_int_equal(ser_netdiag_watch(d, s, err), SER_OK);
    s_capture_begin();
    assert_int_equal(ser_netdiag_connect(s, ep, err), SER_OK);
    int st = s_pump(d, 2000, SER_NETDIAG_DOWN_LOGGED, text, sizeof text);
    s_pump(d, 300, -1, text, sizeof text);  // ~15 more refused attempts
    s_capture_end();
    snprintf(want, sizeof want, "tester: %s: connection refused (nothing listening on "
             "127.0.0.1:%d?)", ep, port);
    assert_int_equal(st, SER_NETDIAG_DOWN_LOGGED);
    assert_non_null(strstr(text, want + strlen("tester: ")));
    assert_int_equal(s_count(want), 1);  // once, not at every attempt
    // A socket made again for the same endpoint (the worker's reconnect): not logged again.
    s_capture_begin();
    zmq_close(s);
    s = s_dealer(ctx);
    assert_int_equal(ser_netdiag_watch(d, s, err), SER_OK);
    assert_int_equal(ser_netdiag_connect(s, ep, err), SER_OK);
    s_pump(d, 300, -1, text, sizeof text);
    // 31 s later it is logged again, with the attempts counted.
    s_offset += 31000;
    s_pump_until(d, 5000, "(still; ", text, sizeof text);
    s_capture_end();
    assert_int_equal(s_count(want), 1);
    assert_int_equal(s_count("connection refused (nothing listening"), 1);
    assert_int_equal(s_count("(still; "), 1);
    assert_int_equal(s_count("failed attempts in the last 31 s)"), 1);
    // Something listens now: the connection comes up, and that is said once.
    s_capture_begin();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(r, ep), 0);
    st = s_pump(d, 2000, SER_NETDIAG_UP, text, sizeof text);
    assert_int_equal(st, SER_NETDIAG_UP);
    assert_string_equal(text, "");
    // It goes away: lost, then refused again.
    zmq_close(r);
    s_pump(d, 2000, SER_NETDIAG_DOWN_LOGGED, text, sizeof text);
    s_pump(d, 300, -1, text, sizeof text);
    s_capture_end();
    assert_int_equal(s_count("tester: "), 3);
    assert_int_equal(s_count(": connected (after "), 1);
    assert_int_equal(s_count(": disconnected (the server stopped"), 1);
    assert_int_equal(s_count(want), 1);
    assert_non_null(strstr(text, "connection refused"));
    ser_netdiag_destroy(&d);
    assert_null(d);
    ser_netdiag_destroy(&d);  // NULL-safe
    zmq_close(s);
    zmq_ctx_term(ctx);  // returns: the monitor's sockets are all closed
}

static void test_host_not_found(void **state) {
    (void)state;
    char text[600], err[SER_ERR_LEN];
    void *ctx = zmq_ctx_new(), *s = s_dealer(ctx);
    ser_netdiag *d = ser_netdiag_new(ctx, "tester");
    assert_int_equal(ser_netdiag_watch(d, s, err), SER_OK);
    s_capture_begin();
    assert_int_equal(ser_netdiag_connect(s, "tcp://no-such-host.invalid:5555", err), SER_OK);
    int st = s_pump(d, 2000, SER_NETDIAG_DOWN_LOGGED, text, sizeof text);
    s_capture_end();
    assert_int_equal(st, SER_NETDIAG_DOWN_LOGGED);
    assert_int_equal(s_count("tester: tcp://no-such-host.invalid:5555: host not found: cannot "
                             "resolve 'no-such-host.invalid' ("), 1);
    ser_netdiag_destroy(&d);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

// A CURVE server and a client without a key (this process has none: ser_curve_on() is 0).
static void test_curve_server_without_key(void **state) {
    (void)state;
    char pub[41], sec[41], ep[64], text[600], err[SER_ERR_LEN];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
    int one = 1, linger = 0;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof one);
    zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, sec, 40);
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof ep;
    zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &len);
    void *s = s_dealer(ctx);
    ser_netdiag *d = ser_netdiag_new(ctx, "tester");
    assert_int_equal(ser_netdiag_watch(d, s, err), SER_OK);
    unsetenv("SER_CURVE_KEY");
    s_capture_begin();
    assert_int_equal(ser_netdiag_connect(s, ep, err), SER_OK);
    int st = s_pump(d, 2000, SER_NETDIAG_DOWN_LOGGED, text, sizeof text);
    s_pump(d, 500, -1, text, sizeof text);
    s_capture_end();
    assert_int_equal(st, SER_NETDIAG_DOWN_LOGGED);
    assert_int_equal(s_count("CURVE handshake failed: the server uses CURVE and this process "
                             "has no key (SER_CURVE_KEY is unset: set SER_CURVE_KEY / "
                             "SER_CURVE_SERVER_KEY)"), 1);
    assert_int_equal(s_count("tester: "), 1);  // one line, whatever the attempts saw first
    ser_netdiag_destroy(&d);
    zmq_close(s);
    zmq_close(r);
    zmq_ctx_term(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_endpoint),
        cmocka_unit_test(test_refused_up_lost),
        cmocka_unit_test(test_host_not_found),
        cmocka_unit_test(test_curve_server_without_key),
    };
    if (getenv("SER_TEST_FILTER")) cmocka_set_test_filter(getenv("SER_TEST_FILTER"));
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
