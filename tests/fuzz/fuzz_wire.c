// fuzz_wire.c — fuzzes the runtime's wire envelope and tensor frames: ser_wire_recv()
// (proto/ser_wire.h), the one function that decodes and validates every ZeroMQ multipart
// message the coordinator and the workers receive, then ser_wire_find() and the shard schema's
// parsers (proto/ser_shard.h: PARAMS, FORWARD_DONE with its group elements and maps, BACKWARD,
// BACKWARD_DONE) on every message it accepts.
//
// Input: one option byte, then the frames of one message in the framing of fuzz_util.h.
//   option bit 0: the receiving socket is a ROUTER (the first frame is the peer identity)
//   option bit 1: check the job id ("fuzz-job") as the coordinator does after HELLO
//   option bit 2: the objective has a teacher (kcls*, kmap*, the PARAMS teacher frame)
//   option bit 3: FORWARD_DONE may carry any number of equivariant samples, else exactly
//                 bits 4-5 of them
// The shard parsers are given the sizes the message itself announces (rows and C of qcls0,
// the span of student and grad, the token counts of dqmap0/1), as the coordinator and the
// worker know them from the job, so the fuzzer need not guess them.
// The frames are sent as one multipart message over an inproc PAIR socket pair and received
// with ser_wire_recv() on the other end, so the function runs exactly as in production, on
// real zmq_msg_t frames. Checked here beyond "no crash":
//   - the message is consumed whole whatever the verdict (nothing is left on the socket);
//   - on SER_OK the tensor count, names and frame sizes are those the envelope announced, and
//     ser_wire_find() finds each tensor with its numel and refuses any other numel;
//   - what a shard parser accepts lies inside the message's frames (every float is read), its
//     group elements are valid with view grids within the bound, and its token counts are
//     those of the group elements.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "fuzz_util.h"
#include "ser_shard.h"
#include "ser_wire.h"

static void *s_ctx, *s_tx, *s_rx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    s_ctx = zmq_ctx_new();
    s_rx = zmq_socket(s_ctx, ZMQ_PAIR);
    s_tx = zmq_socket(s_ctx, ZMQ_PAIR);
    int zero = 0;
    zmq_setsockopt(s_rx, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s_tx, ZMQ_LINGER, &zero, sizeof zero);
    if (!s_rx || !s_tx || zmq_bind(s_rx, "inproc://ser-fuzz-wire") != 0 ||
        zmq_connect(s_tx, "inproc://ser-fuzz-wire") != 0) {
        fprintf(stderr, "fuzz_wire: zmq setup failed: %s\n", zmq_strerror(zmq_errno()));
        abort();
    }
    return 0;
}

// Frames left on the receiving socket (there must be none after ser_wire_recv).
static int s_leftover(void) {
    int n = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int rc = zmq_msg_recv(&m, s_rx, ZMQ_DONTWAIT);
        zmq_msg_close(&m);
        if (rc < 0) return n;
        n++;
    }
}

static void s_fail(const char *what) {
    fprintf(stderr, "fuzz_wire: %s\n", what);
    abort();
}

// Reads n floats at p (unaligned), so that a sanitizer sees any byte outside the frame.
static void s_touch(const float *p, size_t n) {
    volatile float sum = 0;
    for (size_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, p + i, sizeof x);
        sum += x;
    }
    (void)sum;
}

// The numel of tensor `name` (the first of that name), or -1 when absent.
static int64_t s_numel(const ser_wire_msg *m, const char *name, int64_t shape[4], int *ndim) {
    for (int i = 0; i < m->n; i++) {
        const Ser__TensorMeta *t = m->env->tensors[i];
        if (strcmp(t->name, name) != 0) continue;
        if (ndim) *ndim = (int)t->n_shape;
        for (size_t d = 0; shape && d < t->n_shape && d < 4; d++) shape[d] = t->shape[d];
        return (int64_t)(t->nbytes / sizeof(float));
    }
    return -1;
}

static void s_shards(const ser_wire_msg *m, int opt) {
    int has_teacher = (opt >> 2) & 1;
    int want_n_eq = (opt & 8) ? -1 : (opt >> 4) & 3;
    const int grid_max = 8;
    // PARAMS and BACKWARD_DONE: span from the frames themselves.
    int64_t span = s_numel(m, "student", NULL, NULL);
    if (span >= 0) {
        const float *st, *te;
        ser_shard_parse_params(m, (size_t)span, has_teacher, &st, &te);
        if (!st) s_fail("PARAMS: the student frame of its own size was not found");
        s_touch(st, (size_t)span);
        if (te) s_touch(te, (size_t)span);
    }
    int64_t gspan = s_numel(m, "grad", NULL, NULL);
    if (gspan >= 0) {
        const float *g = ser_shard_parse_grad(m, (size_t)gspan);
        if (!g) s_fail("BACKWARD_DONE: the grad frame of its own size was not found");
        s_touch(g, (size_t)gspan);
        if (ser_shard_parse_grad(m, (size_t)gspan + 1)) s_fail("grad found with a wrong span");
    }
    // FORWARD_DONE: rows and C from qcls0's shape (else a small default).
    int64_t shp[4] = {0, 0, 0, 0};
    int nd = 0, rows = 2, C = 3;
    if (s_numel(m, "qcls0", shp, &nd) >= 0 && nd == 2 && shp[0] >= 1 && shp[0] <= 4096 &&
        shp[1] >= 1 && shp[1] <= 4096)
        rows = (int)shp[0], C = (int)shp[1];
    ser_shard_fwd f;
    size_t ntok[2] = {0, 0};
    int n_local = (int)(rows % 3);  // 0..2 local views asked, varied by the input
    int want_vp = (opt >> 6) & 1, want_pool = (opt >> 7) & 1;
    int want_lp = (int)(rows % 3);  // 0..2 local SER pairs asked
    int rc = ser_shard_parse_forward(m, rows, C, has_teacher, n_local, want_vp, want_pool,
                                     want_lp, want_n_eq, grid_max, &f);
    if (rc == SER_OK) {
        if (f.rows != rows || f.C != C || f.n_eq < 0 || f.n_eq > rows ||
            (want_n_eq >= 0 && f.n_eq != want_n_eq))
            s_fail("FORWARD_DONE: accepted with other sizes than asked");
        for (int i = 0; i < (has_teacher ? 4 : 2); i++) s_touch(f.cls[i], (size_t)rows * C);
        for (int k = 0; k < n_local; k++) s_touch(f.lcls[k], (size_t)rows * C);
        if (want_vp) s_touch(f.vparams, (size_t)rows * 2 * SER_VIEW_PARAMS);
        for (int v = 0; want_pool && v < 2 + n_local; v++) s_touch(f.qpool[v], (size_t)rows * C);
        size_t tok[2] = {0, 0};
        for (int e = 0; e < f.n_eq; e++)
            for (int v = 0; v < 2; v++) {
                int r, c;
                if (ser_group_elem_check(&f.g[v][e]) != SER_OK) s_fail("an invalid group element");
                ser_group_view_grid(&f.g[v][e], &r, &c);
                if (r < 1 || c < 1 || r > grid_max || c > grid_max) s_fail("a view grid too large");
                tok[v] += (size_t)r * c;
            }
        if (tok[0] != f.ntok[0] || tok[1] != f.ntok[1]) s_fail("token counts not those of g");
        for (int i = 0; f.n_eq && i < (has_teacher ? 4 : 2); i++)
            s_touch(f.maps[i], f.ntok[i & 1] * (size_t)C);
        ntok[0] = f.ntok[0], ntok[1] = f.ntok[1];
        if (f.n_eq && want_lp) {
            size_t lt[2] = {0, 0};
            for (int e = 0; e < f.n_eq * want_lp; e++)
                for (int v = 0; v < 2; v++) {
                    int r, c;
                    if (ser_group_elem_check(&f.lg[v][e]) != SER_OK) s_fail("an invalid pair element");
                    ser_group_view_grid(&f.lg[v][e], &r, &c);
                    if (r > grid_max || c > grid_max) s_fail("a pair grid too large");
                    lt[v] += (size_t)r * c;
                }
            if (lt[0] != f.lntok[0] || lt[1] != f.lntok[1]) s_fail("pair token counts not lg's");
            for (int v = 0; v < 2; v++) s_touch(f.lmaps[v], f.lntok[v] * (size_t)C);
        }
        ser_shard_fwd_free(&f);
    } else if (rc != SER_EFORMAT && rc != SER_ESHAPE) {
        s_fail("FORWARD_DONE: an unexpected return code");
    }
    // BACKWARD: token counts from the forward above, else from dqmap0/1 themselves.
    for (int v = 0; v < 2 && rc != SER_OK; v++) {
        int64_t n = s_numel(m, v ? "dqmap1" : "dqmap0", NULL, NULL);
        ntok[v] = n > 0 && n % C == 0 ? (size_t)(n / C) : 0;
    }
    const float *d[SER_SHARD_MAX_BWD];
    size_t lntok[2];
    for (int v = 0; v < 2; v++) {
        int64_t n = s_numel(m, v ? "dlqmap1" : "dlqmap0", NULL, NULL);
        lntok[v] = n > 0 && n % C == 0 ? (size_t)(n / C) : 0;
    }
    if (ser_shard_parse_backward(m, rows, C, ntok, n_local, want_pool, (opt & 1) ? lntok : NULL,
                                 d) == SER_OK) {
        s_touch(d[0], (size_t)rows * C), s_touch(d[1], (size_t)rows * C);
        s_touch(d[2], ntok[0] * (size_t)C), s_touch(d[3], ntok[1] * (size_t)C);
        for (int k = 0; k < n_local; k++) s_touch(d[4 + k], (size_t)rows * C);
        int at = 4 + n_local;
        for (int v = 0; want_pool && v < 2 + n_local; v++) s_touch(d[at++], (size_t)rows * C);
        for (int v = 0; (opt & 1) && v < 2; v++) s_touch(d[at++], lntok[v] * (size_t)C);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_ctx) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    int router = data[0] & 1;
    const char *job = (data[0] & 2) ? "fuzz-job" : NULL;
    ser_fuzz_frame f[SER_FUZZ_MAX_FRAMES];
    int nf = ser_fuzz_split(data + 1, size - 1, f);
    for (int i = 0; i < nf; i++) {
        if (zmq_send(s_tx, f[i].p, f[i].n, i + 1 < nf ? ZMQ_SNDMORE : 0) < 0) {
            fprintf(stderr, "fuzz_wire: zmq_send: %s\n", zmq_strerror(zmq_errno()));
            abort();
        }
    }
    ser_wire_msg m;
    char err[SER_ERR_LEN] = "";
    int rc = ser_wire_recv(s_rx, router, job, &m, err);
    if (nf == 0 && rc != SER_ETIMEDOUT) {
        fprintf(stderr, "fuzz_wire: no message sent but ser_wire_recv returned %d\n", rc);
        abort();
    }
    if (rc == SER_OK) {
        Ser__Envelope *e = m.env;
        if (!e || (size_t)m.n != e->n_tensors || e->n_tensors > SER_WIRE_MAX_TENSORS ||
            (size_t)nf != e->n_tensors + 1 + (size_t)router) {
            fprintf(stderr, "fuzz_wire: accepted %d tensors from %d frames\n", m.n, nf);
            abort();
        }
        for (size_t i = 0; i < e->n_tensors; i++) {
            const Ser__TensorMeta *t = e->tensors[i];
            size_t numel = (size_t)(t->nbytes / sizeof(float));
            const float *p = ser_wire_find(&m, t->name, numel);
            // An earlier tensor of the same name wins; only check the first of each name.
            size_t first = 0;
            while (strcmp(e->tensors[first]->name, t->name) != 0) first++;
            if (first != i) continue;
            const ser_fuzz_frame *src = &f[1 + router + i];
            if (!p || src->n != t->nbytes || (t->nbytes && memcmp(p, src->p, src->n) != 0)) {
                fprintf(stderr, "fuzz_wire: tensor %zu ('%s') not found or not its frame\n", i,
                        t->name);
                abort();
            }
            if (ser_wire_find(&m, t->name, numel + 1) != NULL) {
                fprintf(stderr, "fuzz_wire: ser_wire_find accepted a wrong numel\n");
                abort();
            }
        }
        s_shards(&m, data[0]);
        ser_wire_msg_free(&m);
    } else if (rc != SER_ETIMEDOUT && !err[0] && rc != SER_EIO) {
        fprintf(stderr, "fuzz_wire: refusal %d without a reason\n", rc);
        abort();
    }
    int left = s_leftover();
    if (left) {
        fprintf(stderr, "fuzz_wire: %d frame(s) left on the socket after ser_wire_recv (rc %d)\n",
                left, rc);
        abort();
    }
    return 0;
}
