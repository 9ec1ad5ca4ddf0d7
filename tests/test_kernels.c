// test_kernels.c — every kernel against PyTorch float64 fixtures, against its naive twin at
// larger and awkward shapes, and their determinism (ser_kernels.h).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_fmath.h"
#include "ser_interp.h"
#include "ser_kernels.h"
#include "ser_test.h"

// Fixture comparisons use rtol 1e-4 (the bound) and an atol of 1e-6 times the
// tensor's largest magnitude, which only matters for entries that cancel to near zero.
#define RTOL 1e-4f
static float s_atol(const float *ref, size_t n) { return 1e-6f * ser_test_maxabs(ref, n) + 1e-7f; }

#define CHECK(label, got, ref, n) SER_ASSERT_CLOSE(label, got, ref, n, s_atol(ref, n), RTOL)

static ser_st_file *s_fx;

static int setup(void **state) {
    (void)state;
    s_fx = ser_test_open_fixture("kernels.safetensors");
    ser_kernels_set_threads(2);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ser_st_destroy(&s_fx);
    return 0;
}

#define T(name) ser_test_tensor(s_fx, name, NULL)

static void test_linear_fixture(void **state) {
    (void)state;
    float *x = T("linear.x"), *w = T("linear.w"), *b = T("linear.b"), *out = T("linear.out");
    float *dout = T("linear.dout"), *dx = T("linear.dx"), *dw = T("linear.dw"), *db = T("linear.db");
    float got[20], gx[35], gw[28], gb[4];
    for (int naive = 0; naive < 2; naive++) {
        memset(gw, 0, sizeof gw);
        memset(gb, 0, sizeof gb);
        (naive ? ser_matmul_forward_naive : ser_matmul_forward)(got, x, w, b, 5, 7, 4);
        CHECK("linear.out", got, out, 20);
        (naive ? ser_matmul_backward_naive : ser_matmul_backward)(gx, gw, gb, dout, x, w, 5, 7, 4, 0);
        CHECK("linear.dx", gx, dx, 35);
        CHECK("linear.dw", gw, dw, 28);
        CHECK("linear.db", gb, db, 4);
    }
    free(x), free(w), free(b), free(out), free(dout), free(dx), free(dw), free(db);
}

static void test_layernorm_fixture(void **state) {
    (void)state;
    float *x = T("layernorm.x"), *w = T("layernorm.w"), *b = T("layernorm.b");
    float *out = T("layernorm.out"), *dout = T("layernorm.dout"), *dx = T("layernorm.dx");
    float *dw = T("layernorm.dw"), *db = T("layernorm.db");
    float got[60], mean[6], rstd[6], gx[60], gw[10], gb[10];
    for (int naive = 0; naive < 2; naive++) {
        memset(gw, 0, sizeof gw);
        memset(gb, 0, sizeof gb);
        (naive ? ser_layernorm_forward_naive : ser_layernorm_forward)(got, mean, rstd, x, w, b, 6,
                                                                      10, 1e-6f);
        CHECK("layernorm.out", got, out, 60);
        (naive ? ser_layernorm_backward_naive : ser_layernorm_backward)(gx, gw, gb, dout, x, w,
                                                                        mean, rstd, 6, 10, 0);
        CHECK("layernorm.dx", gx, dx, 60);
        CHECK("layernorm.dw", gw, dw, 10);
        CHECK("layernorm.db", gb, db, 10);
    }
    free(x), free(w), free(b), free(out), free(dout), free(dx), free(dw), free(db);
}

static void test_gelu_fixture(void **state) {
    (void)state;
    float *x = T("gelu.x"), *out = T("gelu.out"), *dout = T("gelu.dout"), *dx = T("gelu.dx");
    float got[200], gx[200];
    ser_gelu_forward(got, x, 200);
    CHECK("gelu.out", got, out, 200);
    ser_gelu_backward(gx, x, dout, 200, 0);
    CHECK("gelu.dx", gx, dx, 200);
    ser_gelu_forward_naive(got, x, 200);
    CHECK("gelu.out(naive)", got, out, 200);
    ser_gelu_backward_naive(gx, x, dout, 200, 0);
    CHECK("gelu.dx(naive)", gx, dx, 200);
    free(x), free(out), free(dout), free(dx);
}

static void test_attention_fixture(void **state) {
    (void)state;
    float *qkv = T("attention.qkv"), *out = T("attention.out"), *att = T("attention.att");
    float *dout = T("attention.dout"), *dqkv = T("attention.dqkv");
    float got[80], gatt[100], gq[240];
    for (int naive = 0; naive < 2; naive++) {
        (naive ? ser_attention_forward_naive : ser_attention_forward)(got, gatt, qkv, 2, 5, 8, 2);
        CHECK("attention.out", got, out, 80);
        CHECK("attention.att", gatt, att, 100);
        (naive ? ser_attention_backward_naive : ser_attention_backward)(gq, dout, qkv, gatt, 2, 5,
                                                                        8, 2);
        CHECK("attention.dqkv", gq, dqkv, 240);
    }
    free(qkv), free(out), free(att), free(dout), free(dqkv);
}

static void test_softmax_fixture(void **state) {
    (void)state;
    float *x = T("softmax.x"), *out = T("softmax.out");
    ser_softmax_rows(x, 4, 9);
    CHECK("softmax.out", x, out, 36);
    free(x), free(out);
}

static void test_patch_fixture(void **state) {
    (void)state;
    float *img = T("patch.img"), *w = T("patch.w"), *b = T("patch.b"), *out = T("patch.out");
    float *dout = T("patch.dout"), *dw = T("patch.dw"), *db = T("patch.db");
    float cols[12 * 48], got[72], gw[288], gb[6];
    ser_patch_im2col(cols, img, 2, 8, 12, 4);
    ser_matmul_forward(got, cols, w, b, 12, 48, 6);
    CHECK("patch.out", got, out, 72);
    memset(gw, 0, sizeof gw);
    memset(gb, 0, sizeof gb);
    ser_matmul_backward(NULL, gw, gb, dout, cols, w, 12, 48, 6, 0);
    CHECK("patch.dw", gw, dw, 288);
    CHECK("patch.db", gb, db, 6);
    free(img), free(w), free(b), free(out), free(dout), free(dw), free(db);
}

static void test_bicubic_fixture(void **state) {
    (void)state;
    float *pos = T("bicubic_sf.pos");  // (4,4,5) channels-last
    int grids[5][2] = {{3, 5}, {4, 6}, {2, 2}, {5, 5}, {7, 3}};
    char key[96];
    for (int i = 0; i < 5; i++) {
        int gh = grids[i][0], gw = grids[i][1];
        size_t n = (size_t)gh * gw * 5;
        float *got = calloc(n, 4), *gpos = calloc(80, 4);
        double sh = (gh + 0.1) / 4, sw = (gw + 0.1) / 4;
        assert_int_equal(ser_bicubic_out_size(4, sh), gh);
        assert_int_equal(ser_bicubic_out_size(4, sw), gw);
        ser_bicubic_hwc(got, gh, gw, pos, 4, 4, 5, sh, sw);
        snprintf(key, sizeof key, "bicubic_sf.%dx%d.out", gh, gw);
        float *ref = T(key);
        CHECK(key, got, ref, n);
        snprintf(key, sizeof key, "bicubic_sf.%dx%d.dout", gh, gw);
        float *dout = T(key);
        ser_bicubic_hwc_backward(gpos, 4, 4, dout, gh, gw, 5, sh, sw);
        snprintf(key, sizeof key, "bicubic_sf.%dx%d.dpos", gh, gw);
        float *dref = T(key);
        CHECK(key, gpos, dref, 80);
        free(got), free(gpos), free(ref), free(dout), free(dref);
    }
    float *in = T("bicubic_size.in");  // (3,4,5)
    int sizes[4][2] = {{5, 7}, {2, 3}, {3, 4}, {6, 2}};
    for (int i = 0; i < 4; i++) {
        int oh = sizes[i][0], ow = sizes[i][1];
        size_t n = (size_t)oh * ow * 5;
        float *got = calloc(n, 4), *gin = calloc(60, 4);
        ser_bicubic_hwc(got, oh, ow, in, 3, 4, 5, 0, 0);
        snprintf(key, sizeof key, "bicubic_size.%dx%d.out", oh, ow);
        float *ref = T(key);
        CHECK(key, got, ref, n);
        snprintf(key, sizeof key, "bicubic_size.%dx%d.dout", oh, ow);
        float *dout = T(key);
        ser_bicubic_hwc_backward(gin, 3, 4, dout, oh, ow, 5, 0, 0);
        snprintf(key, sizeof key, "bicubic_size.%dx%d.din", oh, ow);
        float *dref = T(key);
        CHECK(key, gin, dref, 60);
        free(got), free(gin), free(ref), free(dout), free(dref);
    }
    free(pos), free(in);
}

// --- fast vs naive at larger and awkward shapes ------------------------------------------------
static float *s_rand(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    ser_test_fill_uniform(x, n, seed, lo, hi);
    return x;
}

static void test_matmul_vs_naive(void **state) {
    (void)state;
    int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {33, 17, 65}, {197, 64, 96}, {128, 130, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *x = s_rand((size_t)M * K, 1 + s, -1, 1), *w = s_rand((size_t)N * K, 2 + s, -1, 1);
        float *b = s_rand((size_t)N, 3 + s, -1, 1), *dout = s_rand((size_t)M * N, 4 + s, -1, 1);
        float *o1 = calloc((size_t)M * N, 4), *o2 = calloc((size_t)M * N, 4);
        float *dx1 = s_rand((size_t)M * K, 5, -1, 1), *dx2 = malloc((size_t)M * K * 4);
        memcpy(dx2, dx1, (size_t)M * K * 4);
        float *dw1 = calloc((size_t)N * K, 4), *dw2 = calloc((size_t)N * K, 4);
        float *db1 = calloc((size_t)N, 4), *db2 = calloc((size_t)N, 4);
        ser_matmul_forward(o1, x, w, b, M, K, N);
        ser_matmul_forward_naive(o2, x, w, b, M, K, N);
        assert_true(ser_test_nmse(o1, o2, (size_t)M * N) < 1e-10);
        ser_matmul_backward(dx1, dw1, db1, dout, x, w, M, K, N, 1);  // accumulate mode
        ser_matmul_backward_naive(dx2, dw2, db2, dout, x, w, M, K, N, 1);
        assert_true(ser_test_nmse(dx1, dx2, (size_t)M * K) < 1e-10);
        assert_true(ser_test_nmse(dw1, dw2, (size_t)N * K) < 1e-10);
        assert_true(ser_test_nmse(db1, db2, (size_t)N) < 1e-10);
        free(x), free(w), free(b), free(dout), free(o1), free(o2), free(dx1), free(dx2);
        free(dw1), free(dw2), free(db1), free(db2);
    }
}

static void test_layernorm_attention_vs_naive(void **state) {
    (void)state;
    // LayerNorm at a ViT-S row width with a large offset (catastrophic-cancellation check).
    int M = 50, C = 384;
    float *x = s_rand((size_t)M * C, 11, 99, 101), *w = s_rand(C, 12, 0.5, 1.5);
    float *b = s_rand(C, 13, -1, 1), *dout = s_rand((size_t)M * C, 14, -1, 1);
    float *o1 = malloc((size_t)M * C * 4), *o2 = malloc((size_t)M * C * 4);
    float m1[50], r1[50], m2[50], r2[50];
    ser_layernorm_forward(o1, m1, r1, x, w, b, M, C, 1e-6f);
    ser_layernorm_forward_naive(o2, m2, r2, x, w, b, M, C, 1e-6f);
    SER_ASSERT_CLOSE("layernorm(offset 100)", o1, o2, (size_t)M * C, 2e-4f, 1e-4f);
    free(x), free(w), free(b), free(dout), free(o1), free(o2);
    // Attention with an odd token count and 3 heads.
    int B = 2, N = 17, Cq = 24, H = 3;
    float *qkv = s_rand((size_t)B * N * 3 * Cq, 21, -2, 2);
    float *dq = s_rand((size_t)B * N * Cq, 22, -1, 1);
    float *a1 = malloc((size_t)B * N * Cq * 4), *a2 = malloc((size_t)B * N * Cq * 4);
    float *p1 = malloc((size_t)B * H * N * N * 4), *p2 = malloc((size_t)B * H * N * N * 4);
    float *g1 = malloc((size_t)B * N * 3 * Cq * 4), *g2 = malloc((size_t)B * N * 3 * Cq * 4);
    ser_attention_forward(a1, p1, qkv, B, N, Cq, H);
    ser_attention_forward_naive(a2, p2, qkv, B, N, Cq, H);
    SER_ASSERT_CLOSE("attention(17 tokens)", a1, a2, (size_t)B * N * Cq, 1e-6f, 1e-5f);
    ser_attention_backward(g1, dq, qkv, p1, B, N, Cq, H);
    ser_attention_backward_naive(g2, dq, qkv, p2, B, N, Cq, H);
    SER_ASSERT_CLOSE("attention.dqkv(17 tokens)", g1, g2, (size_t)B * N * 3 * Cq, 1e-6f, 1e-4f);
    free(qkv), free(dq), free(a1), free(a2), free(p1), free(p2), free(g1), free(g2);
}

static void test_fmath_accuracy(void **state) {
    (void)state;
    double max_rel = 0, max_abs = 0;
    for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
        double e = exp((double)x);
        double r = fabs((double)ser_fexp(x) - e) / e;
        max_rel = r > max_rel ? r : max_rel;
    }
    for (float x = -8.0f; x < 8.0f; x += 1e-4f) {
        double d = fabs((double)ser_ferf(x) - erf((double)x));
        max_abs = d > max_abs ? d : max_abs;
    }
    print_message("ser_fexp max rel err %.3g, ser_ferf max abs err %.3g\n", max_rel, max_abs);
    assert_true(max_rel < 4e-7);
    assert_true(max_abs < 1e-6);
    assert_true(ser_fexp(-200.0f) == 0.0f);
    assert_true(isfinite(ser_fexp(100.0f)));
}

// --- column sums (ser_colsum_acc: pairwise, see ser_kernels.h) ------------------------------
// fp64 column sums of x (M,N), and of |x|.
static void s_colsum_f64(double *sum, double *sumabs, const float *x, int M, int N) {
    for (int j = 0; j < N; j++) sum[j] = sumabs[j] = 0;
    for (int m = 0; m < M; m++)
        for (int j = 0; j < N; j++) {
            sum[j] += (double)x[(size_t)m * N + j];
            sumabs[j] += fabs((double)x[(size_t)m * N + j]);
        }
}

// The order documented at ser_colsum_acc, written from the documentation (recursion, not the
// kernel's leaves and binary counter): groups of 2^k rows by the binary expansion of M, each a
// perfect binary tree, folded from the last group back to the first.
static float s_tree_ref(const float *x, int N, int j, int m0, int n) {
    if (n == 1) return x[(size_t)m0 * N + j];
    return s_tree_ref(x, N, j, m0, n / 2) + s_tree_ref(x, N, j, m0 + n / 2, n / 2);
}

static float s_colsum_documented(const float *x, int M, int N, int j) {
    int start[32], size[32], ng = 0;
    for (int k = 30, m0 = 0; k >= 0; k--)
        if (M >> k & 1) start[ng] = m0, size[ng++] = 1 << k, m0 += 1 << k;
    float acc = s_tree_ref(x, N, j, start[ng - 1], size[ng - 1]);
    for (int g = ng - 2; g >= 0; g--) acc = s_tree_ref(x, N, j, start[g], size[g]) + acc;
    return acc;
}

// Columns of +-1000 in runs of 2^p rows (p = j % 14, so from the alternating rows of p = 0 to
// two cancelling halves at p = 13) plus a small signal: the exact sums are ~5000 out of a
// sum|x| of 1.6e7. The pairwise error bound of ser_kernels.h, gamma_d * sum|x| with d =
// log2(M) + 1 = 15, holds with a wide margin; the old row-after-row fp32 sum broke it for the
// long runs (p >= 7; by 50x at p = 13: the running sum reaches 8e6, where the ulp is 0.5, and
// the +0.3 signal rounds the same way at every step).
static void test_colsum_cancelling(void **state) {
    (void)state;
    int M = 16384, N = 65;
    float *x = s_rand((size_t)M * N, 51, -1e-3f, 1e-3f), *db = calloc((size_t)N, 4);
    for (int m = 0; m < M; m++)
        for (int j = 0; j < N; j++)
            x[(size_t)m * N + j] +=
                ((m >> (j % 14)) & 1 ? -1000.0f : 1000.0f) + 0.3f + 0.01f * (float)(j % 7);
    double sum[65], sumabs[65], u = ldexp(1.0, -24);
    s_colsum_f64(sum, sumabs, x, M, N);
    ser_colsum_acc(db, x, M, N);
    int d = (int)floor(log2(M)) + 1;
    double gamma = d * u / (1 - d * u), worst = 0, worst_seq = 0, max_err = 0, max_seq = 0;
    for (int j = 0; j < N; j++) {
        float seq = 0;  // the old order, for the message
        for (int m = 0; m < M; m++) seq += x[(size_t)m * N + j];
        double err = fabs((double)db[j] - sum[j]), bound = gamma * sumabs[j];
        max_err = fmax(max_err, err);
        max_seq = fmax(max_seq, fabs((double)seq - sum[j]));
        worst = fmax(worst, err / bound);
        worst_seq = fmax(worst_seq, fabs((double)seq - sum[j]) / bound);
        if (err > bound)
            print_message("column %d: |colsum - fp64| = %.3g > bound %.3g\n", j, err, bound);
        assert_true(err <= bound);
    }
    print_message(
        "cancelling sums, M=%d: max |err| pairwise %.3g (%.4f of the bound), row after "
        "row fp32 %.3g (%.1f of it)\n",
        M, max_err, worst, max_seq, worst_seq);
    assert_true(worst < 0.25);
    assert_true(100 * max_err < max_seq);
    free(x), free(db);
}

// The bits depend on (x, M) alone: 1, 2 and 3 threads (1, 2 and 3 column blocks of N = 200), a
// column summed alone (N = 1), and the documented order re-derived above all agree exactly.
static void test_colsum_bitwise_order(void **state) {
    (void)state;
    int Ms[] = {1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 50, 113, 255, 256, 257, 1000, 5003, 16400};
    int N = 200;
    float *x = s_rand((size_t)16400 * N, 52, -1, 1), *col = malloc(16400 * 4);
    float *r[3], *one = malloc(4);
    for (size_t t = 0; t < 3; t++) r[t] = malloc((size_t)N * 4);
    for (size_t s = 0; s < sizeof Ms / sizeof Ms[0]; s++) {
        int M = Ms[s];
        for (int t = 0; t < 3; t++) {
            ser_kernels_set_threads(t + 1);
            for (int j = 0; j < N; j++) r[t][j] = 0.25f * (float)j;
            ser_colsum_acc(r[t], x, M, N);
        }
        assert_memory_equal(r[0], r[1], (size_t)N * 4);
        assert_memory_equal(r[0], r[2], (size_t)N * 4);
        for (int j = 0; j < N; j += 13) {
            for (int m = 0; m < M; m++) col[m] = x[(size_t)m * N + j];
            one[0] = 0.25f * (float)j;
            ser_colsum_acc(one, col, M, 1);
            float want = 0.25f * (float)j + s_colsum_documented(x, M, N, j);
            assert_memory_equal(one, &r[0][j], 4);
            assert_memory_equal(&want, &r[0][j], 4);
        }
    }
    ser_kernels_set_threads(2);
    for (size_t t = 0; t < 3; t++) free(r[t]);
    free(x), free(col), free(one);
}

// Small and awkward shapes: db += the sums (accumulated, not overwritten), exact where every
// partial sum is (small integers), within the error bound otherwise; M = 0 leaves db alone.
static void test_colsum_edges(void **state) {
    (void)state;
    int Ms[] = {0, 1, 2, 3, 17}, Ns[] = {1, 63, 65};
    for (size_t a = 0; a < sizeof Ms / sizeof Ms[0]; a++)
        for (size_t b = 0; b < sizeof Ns / sizeof Ns[0]; b++) {
            int M = Ms[a], N = Ns[b];
            size_t n = (size_t)M * N;
            float *xi = s_rand(n + 1, 60 + a, -50, 50), *xr = s_rand(n + 1, 70 + a, -1, 1);
            for (size_t i = 0; i < n; i++) xi[i] = rintf(xi[i]);
            float db0[65], dbi[65], dbr[65];
            double sum[65], sumabs[65], u = ldexp(1.0, -24);
            for (int j = 0; j < N; j++) db0[j] = dbi[j] = dbr[j] = 0.5f * (float)(j - 30);
            ser_colsum_acc(dbi, xi, M, N);
            s_colsum_f64(sum, sumabs, xi, M, N);
            for (int j = 0; j < N; j++) assert_true((double)dbi[j] == (double)db0[j] + sum[j]);
            ser_colsum_acc(dbr, xr, M, N);
            s_colsum_f64(sum, sumabs, xr, M, N);
            for (int j = 0; j < N; j++) {
                double exact = (double)db0[j] + sum[j];
                double bound = 7 * u * (sumabs[j] + fabs((double)db0[j]));  // d <= 5, db +=, slack
                assert_true(fabs((double)dbr[j] - exact) <= bound);
            }
            if (M == 0) assert_memory_equal(dbr, db0, (size_t)N * 4);
            free(xi), free(xr);
        }
}

// --- determinism ----------------------------------------------------------------------------
// ser's own loops: bitwise identical for any thread count.
static void test_own_kernels_bitwise_across_threads(void **state) {
    (void)state;
    int M = 301, K = 96, B = 3, T = 37;
    float *x = s_rand((size_t)M * K, 31, -1, 1), *lw = s_rand(K, 37, 0.5, 1.5);
    float *lb = s_rand(K, 38, -1, 1), *dy = s_rand((size_t)M * K, 39, -1, 1);
    float *img = s_rand((size_t)B * 3 * 8 * 12, 40, -1, 1);
    float *res[2][6];
    size_t sizes[6] = {(size_t)M * K, (size_t)M * K + 2 * (size_t)K, (size_t)M * K, (size_t)M * K,
                       (size_t)K, (size_t)B * 6 * 48};
    for (int run = 0; run < 2; run++) {
        ser_kernels_set_threads(run == 0 ? 1 : 3);
        float **r = res[run];
        for (int i = 0; i < 6; i++) r[i] = calloc(sizes[i] + 2 * (size_t)M, 4);
        float *mu = r[0] + (size_t)M * K, *rs = mu + M;
        ser_layernorm_forward(r[0], mu, rs, x, lw, lb, M, K, 1e-6f);
        float *dw = r[1] + (size_t)M * K, *db = dw + K;
        ser_layernorm_backward(r[1], dw, db, dy, x, lw, mu, rs, M, K, 0);
        ser_gelu_forward(r[2], x, (size_t)M * K);
        ser_gelu_backward(r[3], x, dy, (size_t)M * K, 0);
        memcpy(r[3] + (size_t)M * K, x, 4 * (size_t)M);  // softmax of 37-wide rows, in place
        ser_softmax_rows(r[3], M * K / T, T);
        ser_colsum_acc(r[4], dy, M, K);
        ser_patch_im2col(r[5], img, B, 8, 12, 4);
    }
    for (int i = 0; i < 6; i++) {
        assert_memory_equal(res[0][i], res[1][i], sizes[i] * 4);
        free(res[0][i]), free(res[1][i]);
    }
    ser_kernels_set_threads(2);
    free(x), free(lw), free(lb), free(dy), free(img);
}

// BLAS-backed kernels: bitwise identical from run to run at a fixed thread count (here at a
// shape where 1 and 3 threads do differ, 1000x500x300).
static void test_blas_kernels_repeatable(void **state) {
    (void)state;
    int M = 1000, K = 500, N = 300, B = 3, T = 37, C = 48, H = 4;
    float *x = s_rand((size_t)M * K, 31, -1, 1), *w = s_rand((size_t)N * K, 32, -1, 1);
    float *dout = s_rand((size_t)M * N, 34, -1, 1);
    float *qkv = s_rand((size_t)B * T * 3 * C, 35, -2, 2), *dq = s_rand((size_t)B * T * C, 36, -1, 1);
    size_t sizes[5] = {(size_t)M * N, (size_t)M * K, (size_t)N * K, (size_t)B * H * T * T,
                       (size_t)B * T * 3 * C};
    float *res[2][5];
    ser_kernels_set_threads(2);
    for (int run = 0; run < 2; run++) {
        float **r = res[run];
        for (int i = 0; i < 5; i++) r[i] = calloc(sizes[i], 4);
        float *ao = calloc((size_t)B * T * C, 4);
        ser_matmul_forward(r[0], x, w, NULL, M, K, N);
        ser_matmul_backward(r[1], r[2], NULL, dout, x, w, M, K, N, 0);
        ser_attention_forward(ao, r[3], qkv, B, T, C, H);
        ser_attention_backward(r[4], dq, qkv, r[3], B, T, C, H);
        free(ao);
    }
    for (int i = 0; i < 5; i++) {
        assert_memory_equal(res[0][i], res[1][i], sizes[i] * 4);
        free(res[0][i]), free(res[1][i]);
    }
    free(x), free(w), free(dout), free(qkv), free(dq);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_fixture),
        cmocka_unit_test(test_layernorm_fixture),
        cmocka_unit_test(test_gelu_fixture),
        cmocka_unit_test(test_attention_fixture),
        cmocka_unit_test(test_softmax_fixture),
        cmocka_unit_test(test_patch_fixture),
        cmocka_unit_test(test_bicubic_fixture),
        cmocka_unit_test(test_matmul_vs_naive),
        cmocka_unit_test(test_layernorm_attention_vs_naive),
        cmocka_unit_test(test_fmath_accuracy),
        cmocka_unit_test(test_colsum_cancelling),
        cmocka_unit_test(test_colsum_bitwise_order),
        cmocka_unit_test(test_colsum_edges),
        cmocka_unit_test(test_own_kernels_bitwise_across_threads),
        cmocka_unit_test(test_blas_kernels_repeatable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
