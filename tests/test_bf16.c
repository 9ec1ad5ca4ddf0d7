// test_bf16.c — the bf16 products of run.precision = bf16 (common/nn/ser_bf16.h): the rounding
// bit for bit, every product against its oracle (the same rounding, sums in double) within the
// fp32 summation bound, the linear layers' kernels in bf16 mode, repeatability, the primitive
// cache past its size, and the refusal where the CPU has no native bf16 (a child process with
// oneDNN limited to AVX2). Skipped (exit 77, with the reason) on a CPU without AVX512-BF16/AMX.
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "ser_bf16.h"
#include "ser_config.h"
#include "ser_kernels.h"
#include "ser_test.h"

extern char **environ;

static float s_f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint16_t s_round1(float x) {
    uint16_t h;
    ser_bf16_round(&h, &x, 1);
    return h;
}

// Round to nearest, ties to even; NaN stays a (quiet) NaN; overflow goes to infinity.
static void test_round(void **state) {
    (void)state;
    assert_int_equal(s_round1(1.0f), 0x3f80);
    assert_int_equal(s_round1(-2.0f), 0xc000);
    assert_int_equal(s_round1(0.0f), 0x0000);
    assert_int_equal(s_round1(-0.0f), 0x8000);
    assert_int_equal(s_round1(s_f(0x3f808000u)), 0x3f80);  // 1 + 2^-8: a tie, to the even 0x3f80
    assert_int_equal(s_round1(s_f(0x3f818000u)), 0x3f82);  // 1 + 3*2^-8: a tie, to the even 0x3f82
    assert_int_equal(s_round1(s_f(0x3f808001u)), 0x3f81);  // just above the tie: up
    assert_int_equal(s_round1(s_f(0x3f80ffffu)), 0x3f81);
    assert_int_equal(s_round1(s_f(0x3f807fffu)), 0x3f80);  // just below the tie: down
    assert_int_equal(s_round1(INFINITY), 0x7f80);
    assert_int_equal(s_round1(-INFINITY), 0xff80);
    assert_int_equal(s_round1(s_f(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds to infinity
    assert_int_equal(s_round1(s_f(0x00000001u)), 0x0000);  // the smallest subnormal: to zero
    assert_int_equal(s_round1(s_f(0x00018000u)), 0x0002);  // a subnormal tie, to even
    uint16_t n = s_round1(s_f(0x7f800001u));  // a signalling NaN whose payload would round away
    assert_true((n & 0x7f80) == 0x7f80 && (n & 0x007f) != 0);
    assert_true(isnan(ser_bf16_to_float(s_round1(NAN))));
    // A long vector (the vectorised path) equals the one-at-a-time results.
    enum { NV = 1001 };
    float x[NV];
    uint16_t h[NV];
    ser_test_fill_uniform(x, NV, 3, -1e3f, 1e3f);
    ser_bf16_round(h, x, NV);
    for (int i = 0; i < NV; i++) {
        assert_int_equal(h[i], s_round1(x[i]));
        assert_true(fabsf(ser_bf16_to_float(h[i]) - x[i]) <= fabsf(x[i]) * 0x1p-8f);  // u = 2^-8
    }
}

// op(A)(m,k) and op(B)(k,n) of the stored matrices.
static float s_a(const float *A, int lda, int ta, int m, int k) {
    return ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k];
}
static float s_b(const float *B, int ldb, int tb, int k, int n) {
    return tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
}

// got against the oracle: |got - ref| <= (K + 2) u sum_k |a_k b_k| + u |ref| (fp32 sums of
// exact bf16 products, plus the add into C). Also checks that the bf16 rounding happened: some
// entry is farther than that bound from the product of the unrounded inputs. Returns the
// largest error in units of the bound.
static double s_check(const float *got, const float *ref, const float *C0, int acc,
                      const float *A, int lda, int ta, const float *B, int ldb, int tb, int M,
                      int N, int K, int ldc) {
    const double u = 0x1p-24;
    double worst = 0;
    int rounded = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double mag = 0, exact = acc ? C0[(size_t)m * ldc + n] : 0;
            for (int k = 0; k < K; k++) {
                double a = s_a(A, lda, ta, m, k), b = s_b(B, ldb, tb, k, n);
                mag += fabs((double)ser_bf16_to_float(s_round1((float)a)) *
                            (double)ser_bf16_to_float(s_round1((float)b)));
                exact += a * b;
            }
            size_t i = (size_t)m * ldc + n;
            double bound = (K + 2) * u * mag + u * fabs((double)ref[i]) + 1e-30;
            double e = fabs((double)got[i] - (double)ref[i]) / bound;
            if (e > worst) worst = e;
            rounded |= fabs((double)got[i] - exact) > bound;
        }
    if (worst > 1) print_message("M=%d N=%d K=%d ta=%d tb=%d acc=%d: %.3g x the bound\n", M, N,
                                 K, ta, tb, acc, worst);
    assert_true(worst <= 1);
    if (M * N * K >= 64) assert_true(rounded);
    return worst;
}

static void test_gemm_vs_oracle(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7},      {17, 192, 64},
                                    {130, 64, 192}, {33, 31, 300}, {544, 256, 64}};
    for (int threads = 1; threads <= 2; threads++) {
        ser_kernels_set_threads(threads);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int c = 0; c < 8; c++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                int ta = c & 1, tb = c >> 1 & 1, acc = c >> 2 & 1;
                int pad = (int)s % 2 ? 3 : 0;  // row strides beyond the row, every other shape
                int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
                size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
                size_t nc = (size_t)M * ldc;
                float *A = malloc(sizeof(float) * na), *B = malloc(sizeof(float) * nb);
                float *C0 = malloc(sizeof(float) * nc), *got = malloc(sizeof(float) * nc);
                float *ref = malloc(sizeof(float) * nc), *again = malloc(sizeof(float) * nc);
                ser_test_fill_uniform(A, na, 10 + s, -2, 2);
                ser_test_fill_uniform(B, nb, 20 + s, -2, 2);
                ser_test_fill_uniform(C0, nc, 30 + s, -1, 1);
                memcpy(got, C0, sizeof(float) * nc);
                memcpy(ref, C0, sizeof(float) * nc);
                memcpy(again, C0, sizeof(float) * nc);
                ser_bf16_gemm(got, ldc, acc, ta, A, lda, tb, B, ldb, M, N, K);
                ser_bf16_gemm_naive(ref, ldc, acc, ta, A, lda, tb, B, ldb, M, N, K);
                s_check(got, ref, C0, acc, A, lda, ta, B, ldb, tb, M, N, K, ldc);
                // Padding between rows is never written.
                for (int m = 0; m < M; m++)
                    for (int n = N; n < ldc; n++)
                        assert_true(got[(size_t)m * ldc + n] == C0[(size_t)m * ldc + n]);
                // The same product again (a cached primitive): the same bits.
                ser_bf16_gemm(again, ldc, acc, ta, A, lda, tb, B, ldb, M, N, K);
                assert_memory_equal(got, again, sizeof(float) * nc);
                free(A), free(B), free(C0), free(got), free(ref), free(again);
            }
    }
    ser_kernels_set_threads(2);
}

// More shapes than the primitive cache holds (512): every product still right, and one made
// before the cache turned over gives the same bits after.
static void test_cache_turnover(void **state) {
    (void)state;
    float A[8 * 700], B[700 * 4], first[32], later[32], ref[32];
    ser_test_fill_uniform(A, 8 * 700, 5, -1, 1);
    ser_test_fill_uniform(B, 700 * 4, 6, -1, 1);
    ser_bf16_gemm(first, 4, 0, 0, A, 700, 0, B, 4, 8, 4, 700);
    for (int k = 1; k <= 600; k++) {
        float c[8 * 4], r[8 * 4];
        ser_bf16_gemm(c, 4, 0, 0, A, k, 0, B, 4, 8, 4, k);
        ser_bf16_gemm_naive(r, 4, 0, 0, A, k, 0, B, 4, 8, 4, k);
        for (int i = 0; i < 32; i++) assert_true(fabsf(c[i] - r[i]) <= 1e-5f * (float)k);
    }
    ser_bf16_gemm(later, 4, 0, 0, A, 700, 0, B, 4, 8, 4, 700);
    assert_memory_equal(first, later, sizeof first);
    ser_bf16_gemm_naive(ref, 4, 0, 0, A, 700, 0, B, 4, 8, 4, 700);
    s_check(later, ref, NULL, 0, A, 700, 0, B, 4, 0, 8, 4, 700, 4);
}

// The linear layer in bf16 mode: out = b + bf16(inp) bf16(w)^T; dinp = bf16(dout) bf16(w)
// (written or added); dw += bf16(dout)^T bf16(inp); db += column sums (fp32, unchanged). Back in
// fp32 mode the kernels give exactly their fp32 bits again.
static void test_linear_layer_bf16(void **state) {
    (void)state;
    enum { M = 70, K = 48, N = 40 };
    float inp[M * K], w[N * K], b[N], dout[M * N];
    ser_test_fill_uniform(inp, M * K, 1, -2, 2);
    ser_test_fill_uniform(w, N * K, 2, -1, 1);
    ser_test_fill_uniform(b, N, 3, -1, 1);
    ser_test_fill_uniform(dout, M * N, 4, -1, 1);
    float out32[M * N], out[M * N], ref[M * N], outb[M * N];
    ser_matmul_forward(out32, inp, w, b, M, K, N);
    assert_int_equal(ser_kernels_set_precision(SER_PRECISION_BF16, NULL, 0), 0);
    assert_int_equal(ser_kernels_get_precision(), SER_PRECISION_BF16);
    ser_matmul_forward(out, inp, w, b, M, K, N);
    for (int m = 0; m < M; m++) memcpy(ref + m * N, b, sizeof b);
    float bias_rows[M * N];
    memcpy(bias_rows, ref, sizeof ref);
    ser_bf16_gemm_naive(ref, N, 1, 0, inp, K, 1, w, K, M, N, K);
    s_check(out, ref, bias_rows, 1, inp, K, 0, w, K, 1, M, N, K, N);
    // Backward: dinp written then added; dw and db accumulate onto what is there.
    float dinp[M * K], dw[N * K], db[N], rdinp[M * K], rdw[N * K], rdb[N], dw0[N * K];
    ser_test_fill_uniform(dw0, N * K, 7, -1, 1);
    for (int accflag = 0; accflag < 2; accflag++) {
        ser_test_fill_uniform(dinp, M * K, 8, -1, 1);
        float dinp0[M * K];
        memcpy(dinp0, dinp, sizeof dinp);
        memcpy(rdinp, dinp, sizeof dinp);
        memcpy(dw, dw0, sizeof dw);
        memcpy(rdw, dw0, sizeof dw);
        memset(db, 0, sizeof db);
        memset(rdb, 0, sizeof rdb);
        ser_matmul_backward(dinp, dw, db, dout, inp, w, M, K, N, accflag);
        ser_bf16_gemm_naive(rdinp, K, accflag, 0, dout, N, 0, w, K, M, K, N);
        ser_bf16_gemm_naive(rdw, K, 1, 1, dout, N, 0, inp, K, N, K, M);
        s_check(dinp, rdinp, dinp0, accflag, dout, N, 0, w, K, 0, M, K, N, K);
        s_check(dw, rdw, dw0, 1, dout, N, 1, inp, K, 0, N, K, M, K);
        ser_colsum_acc(rdb, dout, M, N);
        assert_memory_equal(db, rdb, sizeof db);
    }
    // Repeatable, and the whole ViT-sized path once more with the same inputs: same bits.
    ser_matmul_forward(outb, inp, w, b, M, K, N);
    assert_memory_equal(out, outb, sizeof out);
    assert_int_equal(ser_kernels_set_precision(SER_PRECISION_FP32, NULL, 0), 0);
    ser_matmul_forward(outb, inp, w, b, M, K, N);
    assert_memory_equal(out32, outb, sizeof out);
}

// run.precision in the job config: bf16 and fp32 as given, auto resolved to bf16 on this CPU
// (the config's text then says bf16, so the hash names what ran); bf16 is part of the hash.
static void test_config(void **state) {
    (void)state;
    ser_config a, b;
    char err[SER_ERR_LEN], buf[32];
    ser_config_defaults(&a);
    ser_config_defaults(&b);
    assert_int_equal(a.run.precision, SER_PRECISION_FP32);
    assert_int_equal(ser_config_set(&b, "run.precision", "auto", err), 0);
    assert_int_equal(b.run.precision, SER_PRECISION_BF16);
    assert_true(ser_config_get(&b, "run.precision", buf, sizeof buf) == 0);
    assert_string_equal(buf, "bf16");
    assert_true(ser_config_hash(&a) != ser_config_hash(&b));
    assert_int_equal(ser_config_set(&b, "run.precision", "fp32", err), 0);
    assert_true(ser_config_hash(&a) == ser_config_hash(&b));
    assert_int_not_equal(ser_config_set(&b, "run.precision", "fp16", err), 0);
    assert_non_null(strstr(err, "fp32, bf16, auto"));
}

// The child side of test_refused_without_native_bf16 (oneDNN limited to AVX2 by its
// environment): bf16 refused with a message that says why and what to do; auto gives fp32.
static int s_limited_child(void) {
    char err[SER_ERR_LEN] = "";
    if (ser_bf16_supported()) return 10;
    if (ser_kernels_set_precision(SER_PRECISION_BF16, err, sizeof err) != -1) return 11;
    if (!strstr(err, "AVX512-BF16") || !strstr(err, "run.precision = fp32")) return 12;
    if (ser_kernels_get_precision() != SER_PRECISION_FP32) return 13;
    ser_config c;
    ser_config_defaults(&c);
    if (ser_config_set(&c, "run.precision", "auto", err) || c.run.precision != SER_PRECISION_FP32)
        return 14;
    fprintf(stderr, "limited child: refused as expected: %s\n", err);
    return 0;
}

static const char *s_self;

static void test_refused_without_native_bf16(void **state) {
    (void)state;
    char *argv[] = {(char *)(uintptr_t)s_self, "--limited-child", NULL};
    char *env[] = {"ONEDNN_MAX_CPU_ISA=AVX2", NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, s_self, NULL, NULL, argv, env), 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(int argc, char **argv) {
    s_self = argv[0];
    if (argc > 1 && !strcmp(argv[1], "--limited-child")) return s_limited_child();
    if (!ser_bf16_supported()) {
        printf("SKIPPED: oneDNN finds no native bf16 on this CPU (%s): run.precision = bf16 is "
               "refused here, and its tests need AVX512-BF16 or AMX\n", ser_bf16_isa());
        return 77;
    }
    printf("oneDNN bf16 products on %s\n", ser_bf16_isa());
    ser_kernels_set_threads(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round),
        cmocka_unit_test(test_gemm_vs_oracle),
        cmocka_unit_test(test_cache_turnover),
        cmocka_unit_test(test_linear_layer_bf16),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_refused_without_native_bf16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
