// test_dl_service.c — `ser dataloader` as two child processes on 127.0.0.1 (ephemeral ports):
// the same shard has the same bytes from either process (1 and 2 threads) and from the
// in-process pipeline; mismatched job, config or version is refused with a reason; garbage
// frames do not crash the service; a loader with --idle-exit exits once its job has gone
// quiet, not before it served one. Children are killed by pid on every exit path, and a
// hard alarm ends the test if anything hangs.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "ser_base.h"
#include "ser_dl.h"
#include "ser_dl_service.h"
#include "ser_test.h"

#define NCHILD 2

static char s_tmp[256], s_root[300];
static pid_t s_child[NCHILD + 1];  // the last: test_idle_exit's own loader
static char s_ep[NCHILD][256];

static void s_kill_children(void) {
    for (int i = 0; i < NCHILD + 1; i++) {
        if (s_child[i] <= 0) continue;
        kill(s_child[i], SIGTERM);
        int status = 0;
        for (int t = 0; t < 200; t++) {  // 2 s for a clean exit, then SIGKILL
            if (waitpid(s_child[i], &status, WNOHANG) == s_child[i]) break;
            usleep(10000);
            if (t == 199) {
                kill(s_child[i], SIGKILL);
                waitpid(s_child[i], &status, 0);
            }
        }
        s_child[i] = 0;
    }
}

static void s_on_alarm(int sig) {
    (void)sig;
    for (int i = 0; i < NCHILD + 1; i++)
        if (s_child[i] > 0) kill(s_child[i], SIGKILL);
    static const char msg[] = "test_dl_service: hard timeout, children killed\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

static void s_config(ser_dl_config *c) {
    ser_dl_config_defaults(c);
    snprintf(c->data, sizeof c->data, "%s", s_root);
    snprintf(c->job_id, sizeof c->job_id, "test-job");
    c->img = 32;
    c->patch = 8;
    c->global_batch = 8;
    c->shards = 2;
    c->eq_ratio = 0.25;
    c->seed = 77;
}

// Starts `ser dataloader` for the test job on an ephemeral port, writing it to DIR/endpoint<i>,
// with --idle-exit=IDLE (the --opt=value form).
static pid_t s_loader(int i, int threads, const char *idle) {
    char epf[300], nthreads[8], idle_opt[32];
    snprintf(epf, sizeof epf, "%s/endpoint%d", s_tmp, i);
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    snprintf(idle_opt, sizeof idle_opt, "--idle-exit=%s", idle);
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[] = {"ser", "dataloader", "--data", s_root, "--job", "test-job", "--img",
                        "32", "--patch", "8", "--batch", "8", "--shards", "2", "--eq-ratio",
                        "0.25", "--seed", "77", "--threads", nthreads, "--cache", "",
                        "--bind", "tcp://127.0.0.1:*", "--endpoint-file", epf,
                        "--log-level", "warning", idle_opt, NULL};
        execv(SER_BINARY, argv);
        _exit(127);
    }
    return pid;
}

// Waits for DIR/endpoint<i> (10 s at most); ep[0] stays 0 when it does not come.
static void s_read_endpoint(int i, char *ep, size_t n) {
    char epf[300];
    snprintf(epf, sizeof epf, "%s/endpoint%d", s_tmp, i);
    for (int t = 0; t < 1000 && !ep[0]; t++) {
        FILE *f = fopen(epf, "r");
        if (f) {
            if (!fgets(ep, (int)n, f)) ep[0] = 0;
            ep[strcspn(ep, "\n")] = 0;
            fclose(f);
        }
        if (!ep[0]) usleep(10000);
    }
}

static int s_setup(void **state) {
    (void)state;
    char err[256];
    signal(SIGALRM, s_on_alarm);
    alarm(60);
    snprintf(s_tmp, sizeof s_tmp, "/tmp/ser_test_dl_service_XXXXXX");
    if (!mkdtemp(s_tmp)) return -1;
    snprintf(s_root, sizeof s_root, "%s/data", s_tmp);
    if (ser_dl_data_make_synthetic(s_root, 2, 5, 48, 40, 3, err)) return -1;
    for (int i = 0; i < NCHILD; i++)
        if ((s_child[i] = s_loader(i, i + 1, "0")) < 0) return -1;
    for (int i = 0; i < NCHILD; i++) {
        s_read_endpoint(i, s_ep[i], sizeof s_ep[i]);
        if (!s_ep[i][0]) {
            fprintf(stderr, "loader %d did not start\n", i);
            s_kill_children();
            return -1;
        }
    }
    return 0;
}

static int s_teardown(void **state) {
    (void)state;
    s_kill_children();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    alarm(0);
    return system(cmd) == 0 ? 0 : -1;
}

// ser_group_elem has a padding byte: compare its fields, not its memory.
static void s_assert_same_g(const ser_group_elem g[2], const ser_group_elem h[2]) {
    for (int v = 0; v < 2; v++) {
        assert_int_equal(g[v].rot180, h[v].rot180);
        assert_int_equal(g[v].hflip, h[v].hflip);
        assert_int_equal(g[v].rot90, h[v].rot90);
        assert_int_equal(g[v].gh, h[v].gh);
        assert_int_equal(g[v].gw, h[v].gw);
    }
}

static void s_assert_same(const ser_dl_shard *a, const ser_dl_shard *b) {
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->nbytes, b->nbytes);
    for (int k = 0; k < a->n; k++) {
        const ser_dl_sample *x = &a->samples[k], *y = &b->samples[k];
        assert_int_equal(x->position, y->position);
        assert_int_equal(x->index, y->index);
        assert_int_equal(x->label, y->label);
        assert_int_equal(x->equivariant, y->equivariant);
        s_assert_same_g(x->g, y->g);
        assert_memory_equal(x->h, y->h, sizeof x->h);
        assert_memory_equal(x->w, y->w, sizeof x->w);
        for (int v = 0; v < 2; v++)
            assert_memory_equal(x->view[v], y->view[v], (size_t)x->h[v] * x->w[v] * 3);
    }
}

static void test_two_processes_same_bytes(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    uint64_t hash = ser_dl_config_hash(&c);
    char err[256];
    ser_dl *local = ser_dl_new(&c, err);
    assert_non_null(local);
    ser_dl_client *cl[NCHILD];
    for (int i = 0; i < NCHILD; i++) {
        cl[i] = ser_dl_client_new(s_ep[i], "test-job", hash, -1, err);
        assert_non_null(cl[i]);
    }
    // Steps 0..3 (step 2 straddles the epoch boundary: N = 10, B = 8), both shards.
    for (uint64_t t = 0; t < 4; t++)
        for (uint32_t s = 0; s < 2; s++) {
            ser_dl_shard a, b, ref;
            assert_int_equal(ser_dl_client_fetch(cl[0], t, s, 10000, &a, err), SER_OK);
            assert_int_equal(ser_dl_client_fetch(cl[1], t, s, 10000, &b, err), SER_OK);
            assert_int_equal(ser_dl_make_shard(local, t, s, &ref), SER_OK);
            s_assert_same(&a, &b);
            s_assert_same(&a, &ref);
            if (s == 1) assert_true(a.samples[3].equivariant);
            ser_dl_shard_free(&a);
            ser_dl_shard_free(&b);
            ser_dl_shard_free(&ref);
        }
    // What the replies said of the loaders (for the coordinator's status port): one record,
    // named by the endpoint the client connected to, with the loader's counters and the step of
    // its last reply.
    ser_loadstat ls[SER_LOADSTAT_MAX];
    assert_int_equal(ser_dl_client_loaders(cl[0], ls, SER_LOADSTAT_MAX), 1);
    assert_string_equal(ls[0].endpoint, s_ep[0]);
    assert_true(ls[0].served >= 8);  // its 8 shards, and what other tests asked of it
    assert_int_equal(ls[0].step, 3);
    assert_int_equal(ls[0].bad_files, 0);
    assert_true(ser_clock_now_ms() - ls[0].heard_ms < 10000);
    // A client connected to both loaders (round robin) gets the same shards.
    char both[600];
    snprintf(both, sizeof both, "%s,%s", s_ep[0], s_ep[1]);
    ser_dl_client *rr = ser_dl_client_new(both, "test-job", hash, -1, err);
    assert_non_null(rr);
    for (uint64_t t = 0; t < 3; t++) {
        ser_dl_shard a, ref;
        assert_int_equal(ser_dl_client_fetch(rr, t, 1, 10000, &a, err), SER_OK);
        assert_int_equal(ser_dl_make_shard(local, t, 1, &ref), SER_OK);
        s_assert_same(&a, &ref);
        ser_dl_shard_free(&a);
        ser_dl_shard_free(&ref);
    }
    int nl = ser_dl_client_loaders(rr, ls, SER_LOADSTAT_MAX);  // whichever answered, by name
    assert_true(nl >= 1 && nl <= 2);
    for (int i = 0; i < nl; i++)
        assert_true(!strcmp(ls[i].endpoint, s_ep[0]) || !strcmp(ls[i].endpoint, s_ep[1]));
    ser_dl_client_destroy(&rr);
    for (int i = 0; i < NCHILD; i++) ser_dl_client_destroy(&cl[i]);
    ser_dl_destroy(&local);
}

static void test_refusals(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    char err[256];
    ser_dl_shard sh;
    ser_dl_client *cl = ser_dl_client_new(s_ep[0], "other-job", ser_dl_config_hash(&c), -1, err);
    assert_non_null(cl);
    assert_int_equal(ser_dl_client_fetch(cl, 0, 0, 5000, &sh, err), SER_ECONFIG);
    fprintf(stderr, "expected refusal: %s\n", err);
    ser_dl_client_destroy(&cl);
    cl = ser_dl_client_new(s_ep[0], "test-job", ser_dl_config_hash(&c) ^ 1, -1, err);
    assert_int_equal(ser_dl_client_fetch(cl, 0, 0, 5000, &sh, err), SER_ECONFIG);
    fprintf(stderr, "expected refusal: %s\n", err);
    ser_dl_client_destroy(&cl);
    cl = ser_dl_client_new(s_ep[0], "test-job", ser_dl_config_hash(&c), -1, err);
    assert_int_equal(ser_dl_client_fetch(cl, 0, 7, 5000, &sh, err), SER_EINVAL);
    fprintf(stderr, "expected refusal: %s\n", err);
    ser_dl_client_destroy(&cl);
}

// Garbage on the wire: wrong frame counts, bytes that do not parse, a wrong protocol
// version, a huge frame. The loader survives and still serves.
static void test_garbage_does_not_crash(void **state) {
    (void)state;
    void *ctx = zmq_ctx_new();
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(d, s_ep[1]), 0);
    uint8_t junk[512];
    for (int i = 0; i < 512; i++) junk[i] = (uint8_t)(i * 37 + 11);
    zmq_send(d, junk, 100, 0);                        // one frame, no delimiter
    zmq_send(d, "", 0, ZMQ_SNDMORE);                  // delimiter + junk: does not parse
    zmq_send(d, junk, 512, 0);
    zmq_send(d, "", 0, ZMQ_SNDMORE);                  // too many frames
    zmq_send(d, junk, 10, ZMQ_SNDMORE);
    zmq_send(d, junk, 10, 0);
    // A request with protocol version 99 (field 1 = 99): refused with a reply.
    const uint8_t v99[] = {0x08, 99, 0x12, 3, 'j', 'o', 'b'};
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, v99, sizeof v99, 0);
    zmq_pollitem_t it = {d, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    int got_frames = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        assert_true(zmq_msg_recv(&m, d, 0) >= 0);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        got_frames++;
    }
    assert_int_equal(got_frames, 2);  // "", LoaderShard with an error status
    zmq_close(d);
    // A frame above the socket's size limit: the loader drops that connection.
    void *big = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(big, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(big, s_ep[1]), 0);
    size_t bn = 4 << 20;
    uint8_t *bb = calloc(bn, 1);
    zmq_send(big, "", 0, ZMQ_SNDMORE);
    zmq_send(big, bb, bn, 0);
    free(bb);
    usleep(200000);
    zmq_close(big);
    zmq_ctx_term(ctx);
    // Still alive and serving.
    ser_dl_config c;
    s_config(&c);
    char err[256];
    ser_dl_client *cl = ser_dl_client_new(s_ep[1], "test-job", ser_dl_config_hash(&c), -1, err);
    ser_dl_shard sh;
    assert_int_equal(ser_dl_client_fetch(cl, 5, 0, 10000, &sh, err), SER_OK);
    assert_int_equal(sh.n, 4);
    ser_dl_shard_free(&sh);
    ser_dl_client_destroy(&cl);
    int status;
    assert_int_equal(waitpid(s_child[1], &status, WNOHANG), 0);  // not exited
}

static void test_timeout(void **state) {
    (void)state;
    char err[256];
    // Nothing listens there: the fetch times out, it does not hang.
    ser_dl_client *cl = ser_dl_client_new("tcp://127.0.0.1:1", "test-job", 1, -1, err);
    assert_non_null(cl);
    ser_dl_shard sh;
    int64_t t0 = ser_clock_now_ms();
    assert_int_equal(ser_dl_client_fetch(cl, 0, 0, 300, &sh, err), SER_ETIMEDOUT);
    assert_true(ser_clock_now_ms() - t0 < 2000);
    // The timeout names the endpoint and, from the socket's monitor, why it did not answer.
    print_message("%s\n", err);
    assert_non_null(strstr(err, "from tcp://127.0.0.1:1"));
    assert_non_null(strstr(err, "connection refused (nothing listening on 127.0.0.1:1?)"));
    ser_dl_client_destroy(&cl);
    // A malformed endpoint is named with what is expected, before anything connects.
    assert_null(ser_dl_client_new("tcp://127.0.0.1:2,localhost:5556", "test-job", 1, -1, err));
    assert_non_null(strstr(err, "'localhost:5556' has no transport: expected tcp://HOST:PORT"));
    assert_null(ser_dl_client_new("tcp:/x", "test-job", 1, -1, err));
    assert_non_null(strstr(err, "'tcp:/x': expected tcp://HOST:PORT"));
}

// --idle-exit=1: a loader that has served nothing waits for its job however long; once it has
// served a shard, a second without requests ends it with exit status 0.
// A rogue loader: answers every request with one frame of `reply_bytes` bytes of junk.
typedef struct s_rogue {
    void *sock;
    size_t reply_bytes;
    int answered;
} s_rogue;

static void *s_rogue_main(void *arg) {
    s_rogue *r = arg;
    zmq_pollitem_t it = {r->sock, 0, ZMQ_POLLIN, 0};
    for (int t = 0; t < 40 && !r->answered; t++) {  // 2 s at most
        if (zmq_poll(&it, 1, 50) <= 0) continue;
        zmq_msg_t id, part;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, r->sock, 0) < 0) continue;
        for (int more = 1; more;) {  // the request's other frames
            zmq_msg_init(&part);
            zmq_msg_recv(&part, r->sock, 0);
            more = zmq_msg_more(&part);
            zmq_msg_close(&part);
        }
        char *junk = calloc(1, r->reply_bytes);
        zmq_msg_send(&id, r->sock, ZMQ_SNDMORE);
        zmq_send(r->sock, "", 0, ZMQ_SNDMORE);
        zmq_send(r->sock, junk, r->reply_bytes, 0);
        free(junk);
        r->answered = 1;
    }
    return NULL;
}

// ZMQ_MAXMSGSIZE on the client: a loader whose reply frame is over the job's largest legitimate
// one is disconnected before the frame is buffered (the fetch then times out naming the
// disconnection); without the limit the same reply is received and dropped as malformed.
static void test_reply_size_limit(void **state) {
    (void)state;
    int64_t legit = ser_dl_reply_max_bytes(16, 32, 4, 1.3);
    assert_true(legit == (int64_t)16 * 2 * 3 * 50 * 50 + (1 << 20));  // sides of 42 + 2 x 4 px
    for (int limited = 0; limited < 2; limited++) {
        void *ctx = zmq_ctx_new(), *srv = zmq_socket(ctx, ZMQ_ROUTER);
        int linger = 0;
        zmq_setsockopt(srv, ZMQ_LINGER, &linger, sizeof linger);
        assert_int_equal(zmq_bind(srv, "tcp://127.0.0.1:*"), 0);
        char ep[128], err[256];
        size_t n = sizeof ep;
        zmq_getsockopt(srv, ZMQ_LAST_ENDPOINT, ep, &n);
        s_rogue r = {srv, 2 << 20, 0};
        ser_dl_client *cl = ser_dl_client_new(ep, "test-job", 1, limited ? (1 << 20) : -1, err);
        assert_non_null(cl);
        pthread_t th;
        pthread_create(&th, NULL, s_rogue_main, &r);
        ser_dl_shard sh;
        assert_int_equal(ser_dl_client_fetch(cl, 0, 0, 1500, &sh, err), SER_ETIMEDOUT);
        pthread_join(th, NULL);
        assert_true(r.answered);
        print_message("%s: %s\n", limited ? "limited" : "unlimited", err);
        if (limited) {
            assert_non_null(strstr(err, "disconnected"));
        } else {  // the timeout names the reply it dropped and why
            assert_null(strstr(err, "disconnected"));
            assert_non_null(strstr(err, "dropped 1 malformed (reply does not parse)"));
        }
        ser_dl_client_destroy(&cl);
        zmq_close(srv);
        zmq_ctx_term(ctx);
    }
}

static void test_idle_exit(void **state) {
    (void)state;
    char ep[256] = "", err[256];
    s_child[NCHILD] = s_loader(NCHILD, 1, "1");
    s_read_endpoint(NCHILD, ep, sizeof ep);
    assert_true(ep[0]);
    usleep(1500000);
    int status = 0;
    assert_int_equal(waitpid(s_child[NCHILD], &status, WNOHANG), 0);  // no job yet: stays
    ser_dl_config c;
    s_config(&c);
    ser_dl_client *cl = ser_dl_client_new(ep, "test-job", ser_dl_config_hash(&c), -1, err);
    assert_non_null(cl);
    ser_dl_shard sh;
    int64_t t0 = ser_clock_now_ms();  // before the loader sees the request
    assert_int_equal(ser_dl_client_fetch(cl, 0, 0, 10000, &sh, err), SER_OK);
    ser_dl_shard_free(&sh);
    pid_t r = 0;
    for (int t = 0; t < 1000 && r == 0; t++) {  // 10 s at most
        r = waitpid(s_child[NCHILD], &status, WNOHANG);
        if (r == 0) usleep(10000);
    }
    int64_t waited = ser_clock_now_ms() - t0;
    ser_dl_client_destroy(&cl);
    assert_int_equal(r, s_child[NCHILD]);
    s_child[NCHILD] = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(waited >= 1000);  // not before the second of silence
}

// A request sent ahead (ser_dl_client_prefetch, the worker asking for its next step's shard
// while it computes): the fetch of that shard takes its reply; a fetch of another shard gets
// its own, the earlier reply dropped as stale; both the loader's bytes.
static void test_prefetch(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    char err[256];
    ser_dl *local = ser_dl_new(&c, err);
    assert_non_null(local);
    ser_dl_client *cl = ser_dl_client_new(s_ep[0], "test-job", ser_dl_config_hash(&c), -1, err);
    assert_non_null(cl);
    static const uint32_t ask[][4] = {{6, 1, 6, 1}, {7, 0, 8, 1}, {9, 1, 9, 1}};  // ahead, fetched
    for (int k = 0; k < 3; k++) {
        ser_dl_client_prefetch(cl, ask[k][0], ask[k][1]);
        ser_dl_shard a, ref;
        assert_int_equal(ser_dl_client_fetch(cl, ask[k][2], ask[k][3], 10000, &a, err), SER_OK);
        assert_int_equal(ser_dl_make_shard(local, ask[k][2], ask[k][3], &ref), SER_OK);
        s_assert_same(&a, &ref);
        ser_dl_shard_free(&a);
        ser_dl_shard_free(&ref);
    }
    // A worker with several shards asks for all of its next ones; each reply is kept for its
    // fetch, whatever order they come and are fetched in.
    for (uint32_t s = 0; s < 2; s++) ser_dl_client_prefetch(cl, 10, s);
    for (int k = 1; k >= 0; k--) {
        ser_dl_shard a, ref;
        assert_int_equal(ser_dl_client_fetch(cl, 10, (uint32_t)k, 10000, &a, err), SER_OK);
        assert_int_equal(ser_dl_make_shard(local, 10, (uint32_t)k, &ref), SER_OK);
        s_assert_same(&a, &ref);
        ser_dl_shard_free(&a);
        ser_dl_shard_free(&ref);
    }
    ser_dl_client_destroy(&cl);
    ser_dl_destroy(&local);
}

// A loader that counts requests and answers none (one that lost what was asked of it).
typedef struct s_mute {
    void *sock;
    int requests, stop;
} s_mute;

static void *s_mute_main(void *arg) {
    s_mute *m = arg;
    zmq_pollitem_t it = {m->sock, 0, ZMQ_POLLIN, 0};
    while (!__atomic_load_n(&m->stop, __ATOMIC_ACQUIRE)) {
        if (zmq_poll(&it, 1, 20) <= 0) continue;
        for (int more = 1; more;) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, m->sock, 0) < 0) break;
            more = zmq_msg_more(&part);
            zmq_msg_close(&part);
        }
        __atomic_add_fetch(&m->requests, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

// A request sent ahead whose reply does not come by half the fetch's time is sent again (the
// loader may have restarted since and lost it); a fetch still ends at its timeout.
static void test_prefetch_lost(void **state) {
    (void)state;
    void *ctx = zmq_ctx_new();
    s_mute m = {zmq_socket(ctx, ZMQ_ROUTER), 0, 0};
    int linger = 0;
    zmq_setsockopt(m.sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(m.sock, "tcp://127.0.0.1:*"), 0);
    char ep[256];
    size_t len = sizeof ep;
    zmq_getsockopt(m.sock, ZMQ_LAST_ENDPOINT, ep, &len);
    pthread_t th;
    pthread_create(&th, NULL, s_mute_main, &m);
    char err[256];
    ser_dl_client *cl = ser_dl_client_new(ep, "test-job", 1, -1, err);
    assert_non_null(cl);
    ser_dl_shard sh;
    ser_dl_client_prefetch(cl, 3, 0);
    int64_t t0 = ser_clock_now_ms();
    assert_int_equal(ser_dl_client_fetch(cl, 3, 0, 600, &sh, err), SER_ETIMEDOUT);
    int64_t took = ser_clock_now_ms() - t0;
    assert_true(took >= 550 && took < 3000);
    usleep(100000);
    assert_int_equal(__atomic_load_n(&m.requests, __ATOMIC_ACQUIRE), 2);  // ahead, then again
    // Without a request ahead: one request per fetch.
    assert_int_equal(ser_dl_client_fetch(cl, 4, 0, 300, &sh, err), SER_ETIMEDOUT);
    usleep(100000);
    assert_int_equal(__atomic_load_n(&m.requests, __ATOMIC_ACQUIRE), 3);
    ser_dl_client_destroy(&cl);
    __atomic_store_n(&m.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    zmq_close(m.sock);
    zmq_ctx_term(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_processes_same_bytes),
        cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_prefetch_lost),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_garbage_does_not_crash),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_idle_exit),
        cmocka_unit_test(test_reply_size_limit),
    };
    int rc = cmocka_run_group_tests(tests, s_setup, s_teardown);
    s_kill_children();
    return rc;
}
