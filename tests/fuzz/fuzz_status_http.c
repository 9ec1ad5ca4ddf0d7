// fuzz_status_http.c — fuzzes the coordinator's status port (coordinator/ser_status.h): the
// bytes a client sends go through http-parser with ser's callbacks, the request size limit,
// pipelining and keep-alive, the router (/, /status with its section and format queries,
// /metrics, /history?since=), and the renderers of the snapshot.
//
// In process: ser_status_serve_bytes() runs one connection's request path on the bytes, as
// the server's read callback would, and returns what it would write (tests/test_status.c
// checks that this equals what a TCP connection gets). The servers are real ones (started on
// 127.0.0.1 and fed a snapshot with workers, a loader, loss terms and a history, with frozen
// clocks); no client connects to them.
//
// Input: one option byte (the read size: 0 = one read, else 1..255 bytes per read), then the
// raw request bytes (any number of pipelined requests). Checked beyond "no crash":
//   - the answer is a sequence of well-formed HTTP/1.1 responses (http-parser reads all of
//     it, each starts with an HTTP/1.1 status line and has the Content-Length it says);
//   - the answer does not depend on how the bytes were cut into reads: one read and reads of
//     the option's size give the same bytes and the same close decision (for inputs under the
//     pipelining limit, SER_STATUS_MAX_PIPELINE requests).
#include <http_parser.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ser_base.h"
#include "ser_status.h"

// Two servers fed the same snapshots and the same inputs, one in one read, the other in reads
// of the option's size: their request counters stay equal, so their answers must be too.
static ser_status *s_srv, *s_srv_cut;

static void s_cleanup(void) {
    ser_status_destroy(&s_srv);
    ser_status_destroy(&s_srv_cut);
}

static void s_feed_snapshot(void) {
    static ser_status_worker w[2];
    static ser_status_loader l[1];
    snprintf(w[0].id, sizeof w[0].id, "w0");
    snprintf(w[0].address, sizeof w[0].address, "tcp://10.0.0.2:40000");
    w[0].state = SER_STATUS_WORKER_BUSY;
    w[0].last_heard_ms = ser_clock_now_ms() - 250;
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
        ser_status_update(s_srv_cut, &s);
    }
}

// Frozen clocks: the same request renders the same bytes every time.
static int64_t s_mono_ms(void) { return 1000000; }
static double s_unix_s(void) { return 1.7e9 + 60; }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    ser_clock_set(s_mono_ms);
    ser_clock_unix_set(s_unix_s);
    char err[SER_ERR_LEN];
    s_srv = ser_status_new("127.0.0.1", 0, NULL, err);
    if (s_srv) s_srv_cut = ser_status_new("127.0.0.1", 0, NULL, err);
    if (!s_srv || !s_srv_cut) {
        fprintf(stderr, "fuzz_status_http: %s\n", err);
        abort();
    }
    s_feed_snapshot();
    atexit(s_cleanup);
    return 0;
}

static void s_fail(const char *what, const uint8_t *data, size_t size) {
    fprintf(stderr, "fuzz_status_http: %s (input of %zu bytes)\n", what, size);
    (void)data;
    abort();
}

// Which of the input's requests were HEAD (their responses have no body), in order.
typedef struct s_heads {
    unsigned char head[256];
    int n_req, n_resp;
} s_heads;

static int s_req_complete(http_parser *p) {
    s_heads *h = p->data;
    if (h->n_req < (int)sizeof h->head) h->head[h->n_req] = p->method == HTTP_HEAD;
    h->n_req++;
    return 0;
}

static int s_resp_headers(http_parser *p) {
    const s_heads *h = p->data;
    return h->n_resp < h->n_req && h->n_resp < (int)sizeof h->head && h->head[h->n_resp];  // 1: no body
}

static int s_resp_complete(http_parser *p) {
    ((s_heads *)p->data)->n_resp++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_srv) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    size_t chunk = data[0];
    const char *req = (const char *)data + 1;
    size_t len = size - 1, n_one, n_cut;
    int closed_one, closed_cut;
    // The requests of the input, and which were HEAD (their responses have no body).
    s_heads h = {{0}, 0, 0};
    http_parser p;
    http_parser_settings st;
    http_parser_settings_init(&st);
    st.on_message_complete = s_req_complete;
    http_parser_init(&p, HTTP_REQUEST);
    p.data = &h;
    http_parser_execute(&p, &st, req, len);
    char *one = ser_status_serve_bytes(s_srv, req, len, 0, &n_one, &closed_one);
    // Past the pipelining limit (responses queued at once) the server closes early, and how
    // many are queued at once depends on the reads by design: compared below the limit only
    // (above it, both servers get one read, so that their request counters stay equal).
    int compare = h.n_req < SER_STATUS_MAX_PIPELINE;
    char *cut = ser_status_serve_bytes(s_srv_cut, req, len, compare ? chunk : 0, &n_cut, &closed_cut);
    if (compare && (n_one != n_cut || memcmp(one, cut, n_one) != 0 || closed_one != closed_cut))
        s_fail("the answer depends on how the request bytes were cut into reads", data, size);
    for (int k = 0; k < 2; k++) {
        const char *a = k ? cut : one;
        size_t n = k ? n_cut : n_one;
        if (n == 0) continue;
        // Well-formed responses, back to back: http-parser reads every byte.
        h.n_resp = 0;
        st.on_message_complete = s_resp_complete;
        st.on_headers_complete = s_resp_headers;
        http_parser_init(&p, HTTP_RESPONSE);
        p.data = &h;
        size_t used = http_parser_execute(&p, &st, a, n);
        if (HTTP_PARSER_ERRNO(&p) != HPE_OK || used != n || h.n_resp < 1)
            s_fail("the answer is not a sequence of HTTP responses", data, size);
        if (memcmp(a, "HTTP/1.1 ", 9) != 0) s_fail("no HTTP/1.1 status line", data, size);
    }
    free(one), free(cut);
    return 0;
}
