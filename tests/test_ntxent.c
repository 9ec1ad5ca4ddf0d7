// test_ntxent.c — the patch-wise NT-Xent (common/nn/ser_ntxent.c): PyTorch fixtures of the
// reference's code path, the brute-force definition of ser-reference §10.4, central finite
// differences through the normalisation, the BLAS path against the naive twin, bitwise
// equality across thread counts, and the edge cases (one sample, zero rows, large |S|, bad
// arguments, scale and accumulation).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_kernels.h"
#include "ser_ntxent.h"
#include "ser_test.h"

static float *s_rand(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    ser_test_fill_uniform(x, n, seed, lo, hi);
    return x;
}

static int s_total(const int *tps, int n) {
    int N = 0;
    for (int s = 0; s < n; s++) N += tps[s];
    return N;
}

static int setup(void **state) {
    (void)state;
    ser_kernels_set_threads(2);
    return 0;
}

// --- PyTorch fixtures ------------------------------------------------------------------------
// Loss to rtol 1e-5. Gradients: rtol 1e-4 plus atol 1e-6 (entries are O(1e-3..1); the zero
// rows of "zero_rows" are O(1e11) and covered by rtol). The fp32 path forms S in fp32, so its
// error grows with |S| <= 1/tau ("sharp" has tau = 0.02).
static void test_fixtures(void **state) {
    (void)state;
    ser_st_file *fx = ser_test_open_fixture("ntxent.safetensors");
    const char *cases[4] = {"ragged", "sharp", "zero_rows", "single"};
    for (int c = 0; c < 4; c++) {
        char key[64], label[80];
        size_t nq, nt;
#define FX(name, cnt) \
    (snprintf(key, sizeof key, "%s.%s", cases[c], name), ser_test_tensor(fx, key, cnt))
        float *q = FX("q", &nq), *k = FX("k", NULL), *tk = FX("tokens", &nt),
              *tau = FX("tau", NULL);
        float *loss = FX("loss", NULL), *dq_ref = FX("dq", NULL), *dk_ref = FX("dk", NULL);
#undef FX
        int n = (int)nt, *tps = malloc(sizeof(int) * nt);
        for (int s = 0; s < n; s++) tps[s] = (int)tk[s];
        int N = s_total(tps, n), D = (int)(nq / (size_t)N);
        assert_int_equal((size_t)N * D, nq);
        float *dq = malloc(nq * 4), *dk = malloc(nq * 4);
        for (int naive = 0; naive < 2; naive++) {
            memset(dq, 0, nq * 4), memset(dk, 0, nq * 4);
            double L = NAN;
            int rc = (naive ? ser_ntxent_naive : ser_ntxent_forward_backward)(&L, dq, dk, q, k, tps,
                                                                              n, D, tau[0], 1.0f);
            assert_int_equal(rc, SER_OK);
            float Lf = (float)L;
            snprintf(label, sizeof label, "%s.loss%s", cases[c], naive ? " (naive)" : "");
            SER_ASSERT_CLOSE(label, &Lf, loss, 1, 1e-6f, 1e-5f);
            snprintf(label, sizeof label, "%s.dq%s", cases[c], naive ? " (naive)" : "");
            SER_ASSERT_CLOSE(label, dq, dq_ref, nq, 1e-6f, 1e-4f);
            snprintf(label, sizeof label, "%s.dk%s", cases[c], naive ? " (naive)" : "");
            SER_ASSERT_CLOSE(label, dk, dk_ref, nq, 1e-6f, 1e-4f);
        }
        free(q), free(k), free(tk), free(tau), free(loss), free(dq_ref), free(dk_ref);
        free(tps), free(dq), free(dk);
    }
    ser_st_destroy(&fx);
}

// --- the brute-force definition (ser-reference §10.4) ----------------------------------------
// L = mean_j -log( e^{S_jj} / sum_{i: img(i) != img(j) or i = j} e^{S_ij} ), written out here
// without sharing code with ser_ntxent.c.
static double s_definition(const float *q, const float *k, const int *tps, int n, int D,
                           float tau) {
    int N = s_total(tps, n);
    int *img = malloc(sizeof(int) * N);
    for (int s = 0, at = 0; s < n; s++)
        for (int t = 0; t < tps[s]; t++) img[at++] = s;
    double *S = malloc(sizeof(double) * N * N);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double kk = 0, qq = 0, kq = 0;
            for (int d = 0; d < D; d++) {
                double a = k[i * D + d], b = q[j * D + d];
                kk += a * a, qq += b * b, kq += a * b;
            }
            S[i * N + j] = kq / (fmax(sqrt(kk), 1e-12) * fmax(sqrt(qq), 1e-12)) / (double)tau;
        }
    double L = 0;
    for (int j = 0; j < N; j++) {
        double den = 0;
        for (int i = 0; i < N; i++)
            if (img[i] != img[j] || i == j) den += exp(S[i * N + j]);
        L += -log(exp(S[j * N + j]) / den);
    }
    free(img), free(S);
    return L / N;
}

static void test_bruteforce_definition(void **state) {
    (void)state;
    // Ragged token counts, as from ranks with different (w, h); a sample with one token.
    int tps[5] = {3, 1, 4, 2, 6}, n = 5, D = 5, N = s_total(tps, n);
    float taus[3] = {0.1f, 0.3f, 1.0f};
    for (int t = 0; t < 3; t++) {
        float *q = s_rand((size_t)N * D, 1 + t, -1, 1), *k = s_rand((size_t)N * D, 11 + t, -1, 1);
        double ref = s_definition(q, k, tps, n, D, taus[t]), Lf, Ln;
        assert_int_equal(ser_ntxent_forward_backward(&Lf, NULL, NULL, q, k, tps, n, D, taus[t], 1),
                         SER_OK);
        assert_int_equal(ser_ntxent_naive(&Ln, NULL, NULL, q, k, tps, n, D, taus[t], 1), SER_OK);
        print_message(
            "tau %.1f: definition %.9f, naive %.9f (diff %.1e), fp32 path %.9f "
            "(diff %.1e)\n",
            (double)taus[t], ref, Ln, fabs(Ln - ref), Lf, fabs(Lf - ref));
        assert_true(fabs(Ln - ref) <= 1e-12 * fabs(ref));
        assert_true(fabs(Lf - ref) <= 2e-6 * fabs(ref));
        free(q), free(k);
    }
}

// --- finite differences ----------------------------------------------------------------------
// Central differences of the double-precision naive loss, with the step actually taken in
// float, against the analytic gradients of both paths.
static void test_finite_differences(void **state) {
    (void)state;
    int tps[4] = {4, 2, 5, 3}, n = 4, D = 6, N = s_total(tps, n);
    size_t nd = (size_t)N * D;
    float tau = 0.25f;
    float *q = s_rand(nd, 21, -1, 1), *k = s_rand(nd, 22, -1, 1);
    float *g[2][2];  // [naive][q/k]
    for (int naive = 0; naive < 2; naive++) {
        g[naive][0] = calloc(nd, 4), g[naive][1] = calloc(nd, 4);
        double L;
        (naive ? ser_ntxent_naive : ser_ntxent_forward_backward)(&L, g[naive][0], g[naive][1], q, k,
                                                                 tps, n, D, tau, 1.0f);
    }
    double max_err[2] = {0, 0}, max_g = 0;
    for (int side = 0; side < 2; side++) {
        float *x = side ? k : q;
        for (size_t e = 0; e < nd; e++) {
            float x0 = x[e];
            float xp = x0 + 1e-3f, xm = x0 - 1e-3f;
            double Lp, Lm;
            x[e] = xp;
            ser_ntxent_naive(&Lp, NULL, NULL, q, k, tps, n, D, tau, 1.0f);
            x[e] = xm;
            ser_ntxent_naive(&Lm, NULL, NULL, q, k, tps, n, D, tau, 1.0f);
            x[e] = x0;
            double fd = (Lp - Lm) / ((double)xp - (double)xm);
            max_g = fmax(max_g, fabs(fd));
            for (int naive = 0; naive < 2; naive++) {
                double err = fabs((double)g[naive][side][e] - fd);
                max_err[naive] = fmax(max_err[naive], err);
                if (err > 1e-6 + 1e-4 * fabs(fd)) {
                    print_error("d%c[%zu] (%s): analytic %.9g, finite difference %.9g\n",
                                side ? 'k' : 'q', e, naive ? "naive" : "fp32",
                                (double)g[naive][side][e], fd);
                    fail();
                }
            }
        }
    }
    print_message(
        "finite differences (N=%d, D=%d): max |grad| %.3g, max |fd - grad| fp32 path "
        "%.2e, naive %.2e\n",
        N, D, max_g, max_err[0], max_err[1]);
    free(q), free(k), free(g[0][0]), free(g[0][1]), free(g[1][0]), free(g[1][1]);
}

// --- BLAS path vs naive, bitwise across threads ----------------------------------------------
// Two shapes: D = 64 against the naive twin, and D = 520 with tau = 1 (alpha = 1 and a
// reduction longer than OpenBLAS's K block, where one threaded BLAS call would change its
// summation order with the thread count).
static void test_fast_vs_naive_and_threads(void **state) {
    (void)state;
    int tps_a[6] = {196, 150, 221, 100, 180, 1}, tps_b[3] = {150, 99, 176};
    struct {
        const int *tps;
        int n, D;
        float tau;
        int naive;
    } cfg[2] = {{tps_a, 6, 64, 0.2f, 1}, {tps_b, 3, 520, 1.0f, 0}};
    for (int c = 0; c < 2; c++) {
        int n = cfg[c].n, D = cfg[c].D, N = s_total(cfg[c].tps, n);
        size_t nd = (size_t)N * D;
        float *q = s_rand(nd, 31 + c, -1, 1), *k = s_rand(nd, 33 + c, -1, 1);
        // Make the positives stronger than chance, as in training.
        for (size_t i = 0; i < nd; i++) q[i] += 0.5f * k[i];
        float *dq[3], *dk[3];
        double L[3];
        for (int run = 0; run < 2 + cfg[c].naive; run++) {
            dq[run] = calloc(nd, 4), dk[run] = calloc(nd, 4);
            if (run < 2) {
                ser_kernels_set_threads(run == 0 ? 1 : 3);
                assert_int_equal(ser_ntxent_forward_backward(&L[run], dq[run], dk[run], q, k,
                                                             cfg[c].tps, n, D, cfg[c].tau, 0.5f),
                                 SER_OK);
            } else {
                assert_int_equal(ser_ntxent_naive(&L[run], dq[run], dk[run], q, k, cfg[c].tps, n, D,
                                                  cfg[c].tau, 0.5f),
                                 SER_OK);
            }
        }
        ser_kernels_set_threads(2);
        assert_memory_equal(&L[0], &L[1], sizeof(double));
        assert_memory_equal(dq[0], dq[1], nd * 4);
        assert_memory_equal(dk[0], dk[1], nd * 4);
        print_message("N=%d D=%d tau=%g: 1 vs 3 threads bitwise equal\n", N, D, (double)cfg[c].tau);
        if (cfg[c].naive) {
            double nq = ser_test_nmse(dq[0], dq[2], nd), nk = ser_test_nmse(dk[0], dk[2], nd);
            print_message("  vs naive: loss %.9f / %.9f (rel %.1e), NMSE dq %.2e dk %.2e\n", L[0],
                          L[2], fabs(L[0] - L[2]) / L[2], nq, nk);
            assert_true(fabs(L[0] - L[2]) <= 1e-6 * L[2]);
            assert_true(nq <= 1e-7 && nk <= 1e-7);
        }
        for (int run = 0; run < 2 + cfg[c].naive; run++) free(dq[run]), free(dk[run]);
        free(q), free(k);
    }
}

// --- edge cases ------------------------------------------------------------------------------
// One sample: every off-diagonal entry is masked, each anchor's log-sum-exp is S_jj, so L = 0
// exactly and nothing flows back, whatever the inputs.
static void test_single_sample_is_zero(void **state) {
    (void)state;
    int tps[1] = {9}, D = 7;
    size_t nd = 9 * 7;
    float *q = s_rand(nd, 41, -3, 3), *k = s_rand(nd, 42, -3, 3);
    float *dq = s_rand(nd, 43, -1, 1), *dk = s_rand(nd, 44, -1, 1);
    float *dq0 = malloc(nd * 4), *dk0 = malloc(nd * 4);
    memcpy(dq0, dq, nd * 4), memcpy(dk0, dk, nd * 4);
    double L = 1, Ln = 1;
    assert_int_equal(ser_ntxent_forward_backward(&L, dq, dk, q, k, tps, 1, D, 0.05f, 1), SER_OK);
    assert_int_equal(ser_ntxent_naive(&Ln, NULL, NULL, q, k, tps, 1, D, 0.05f, 1), SER_OK);
    assert_true(L == 0.0 && Ln == 0.0);
    assert_memory_equal(dq, dq0, nd * 4);
    assert_memory_equal(dk, dk0, nd * 4);
    // Split into two samples, the same rows give a positive loss.
    int tps2[2] = {4, 5};
    assert_int_equal(ser_ntxent_forward_backward(&L, NULL, NULL, q, k, tps2, 2, D, 0.05f, 1),
                     SER_OK);
    assert_true(L > 0);
    free(q), free(k), free(dq), free(dk), free(dq0), free(dk0);
}

// Zero rows: x^ = 0 (no NaN), and the gradient is dx^ / 1e-12 as in PyTorch (the fixture
// "zero_rows" checks the values); here: finite, and the two paths agree.
static void test_zero_rows(void **state) {
    (void)state;
    int tps[3] = {3, 4, 2}, D = 5, N = 9;
    size_t nd = (size_t)N * D;
    float *q = s_rand(nd, 51, -1, 1), *k = s_rand(nd, 52, -1, 1);
    memset(q + 2 * D, 0, D * 4), memset(k + 5 * D, 0, D * 4), memset(k + 2 * D, 0, D * 4);
    float *g[4];
    for (int i = 0; i < 4; i++) g[i] = calloc(nd, 4);
    double L, Ln;
    ser_ntxent_forward_backward(&L, g[0], g[1], q, k, tps, 3, D, 0.3f, 1);
    ser_ntxent_naive(&Ln, g[2], g[3], q, k, tps, 3, D, 0.3f, 1);
    assert_true(isfinite(L) && fabs(L - Ln) <= 1e-6 * Ln);
    for (size_t i = 0; i < nd; i++) assert_true(isfinite(g[0][i]) && isfinite(g[1][i]));
    SER_ASSERT_CLOSE("zero_rows dq fp32 vs naive", g[0], g[2], nd, 1e-6f, 1e-4f);
    SER_ASSERT_CLOSE("zero_rows dk fp32 vs naive", g[1], g[3], nd, 1e-6f, 1e-4f);
    assert_true(fabsf(g[0][2 * D]) > 1e6f);  // the dx^/eps branch
    for (int i = 0; i < 4; i++) free(g[i]);
    free(q), free(k);
}

// Large |S| (tau = 1e-3: |S| <= 1000, exp overflows float and double without the max shift).
static void test_large_logits_stable(void **state) {
    (void)state;
    int tps[4] = {5, 3, 6, 2}, n = 4, D = 8, N = s_total(tps, n);
    size_t nd = (size_t)N * D;
    float *q = s_rand(nd, 61, -1, 1), *k = s_rand(nd, 62, -1, 1);
    for (size_t i = 0; i < nd; i++) q[i] += k[i];
    float *g[4];
    for (int i = 0; i < 4; i++) g[i] = calloc(nd, 4);
    double L, Ln;
    ser_ntxent_forward_backward(&L, g[0], g[1], q, k, tps, n, D, 1e-3f, 1);
    ser_ntxent_naive(&Ln, g[2], g[3], q, k, tps, n, D, 1e-3f, 1);
    print_message("tau 1e-3: loss fp32 %.6f naive %.6f\n", L, Ln);
    assert_true(isfinite(L) && L > 0);
    // S carries fp32 rounding of ~1e-7 * 1000; the loss is a difference of such terms.
    assert_true(fabs(L - Ln) <= 1e-3 * fmax(1.0, Ln));
    for (size_t i = 0; i < nd; i++) assert_true(isfinite(g[0][i]) && isfinite(g[1][i]));
    assert_true(ser_test_nmse(g[0], g[2], nd) < 1e-4 && ser_test_nmse(g[1], g[3], nd) < 1e-4);
    // Identical rows everywhere: every S_ij = 1/tau, masked sums of equal huge terms.
    for (size_t i = 0; i < nd; i++) q[i] = k[i] = 1.0f;
    ser_ntxent_forward_backward(&L, NULL, NULL, q, k, tps, n, D, 1e-3f, 1);
    ser_ntxent_naive(&Ln, NULL, NULL, q, k, tps, n, D, 1e-3f, 1);
    // Anchor j of sample s sees 1 + (N - T_s) equal terms: L = mean_j log(1 + N - T_s).
    double expect = 0;
    for (int s = 0; s < n; s++) expect += tps[s] * log(1.0 + N - tps[s]);
    expect /= N;
    print_message("all rows equal: loss %.9f naive %.9f closed form %.9f\n", L, Ln, expect);
    assert_true(fabs(L - expect) < 1e-6 && fabs(Ln - expect) < 1e-12);
    for (int i = 0; i < 4; i++) free(g[i]);
    free(q), free(k);
}

static void test_scale_and_accumulate(void **state) {
    (void)state;
    int tps[3] = {4, 6, 3}, n = 3, D = 9, N = s_total(tps, n);
    size_t nd = (size_t)N * D;
    float *q = s_rand(nd, 71, -1, 1), *k = s_rand(nd, 72, -1, 1);
    float *g1 = calloc(nd, 4), *h1 = calloc(nd, 4), *g2 = malloc(nd * 4), *h2 = malloc(nd * 4);
    double L1, L2;
    ser_ntxent_forward_backward(&L1, g1, h1, q, k, tps, n, D, 0.2f, 1.0f);
    for (size_t i = 0; i < nd; i++) g2[i] = 1.0f, h2[i] = -2.0f;
    ser_ntxent_forward_backward(&L2, g2, h2, q, k, tps, n, D, 0.2f, 0.25f);
    assert_true(L1 == L2);  // the loss is returned unscaled
    for (size_t i = 0; i < nd; i++) {
        g1[i] = 1.0f + 0.25f * g1[i];
        h1[i] = -2.0f + 0.25f * h1[i];
    }
    SER_ASSERT_CLOSE("dq += 0.25 * dL/dq", g2, g1, nd, 1e-6f, 1e-5f);
    SER_ASSERT_CLOSE("dk += 0.25 * dL/dk", h2, h1, nd, 1e-6f, 1e-5f);
    // Only dk requested: dq untouched (NULL), dk as before.
    memset(h2, 0, nd * 4);
    ser_ntxent_forward_backward(&L2, NULL, h2, q, k, tps, n, D, 0.2f, 0.25f);
    for (size_t i = 0; i < nd; i++) h1[i] = (h1[i] + 2.0f);
    SER_ASSERT_CLOSE("dk alone", h2, h1, nd, 1e-6f, 1e-5f);
    // A sample with zero tokens changes nothing.
    int tz[4] = {4, 0, 6, 3};
    double L3;
    assert_int_equal(ser_ntxent_forward_backward(&L3, NULL, NULL, q, k, tz, 4, D, 0.2f, 1), SER_OK);
    assert_true(L3 == L1);
    free(q), free(k), free(g1), free(h1), free(g2), free(h2);
}

static void test_bad_arguments(void **state) {
    (void)state;
    float q[8] = {1, 2, 3, 4, 5, 6, 7, 8}, k[8] = {1, 0, 0, 1, 1, 1, 0, 0};
    int tps[2] = {2, 2}, neg[2] = {2, -1}, none[2] = {0, 0};
    double L;
    typedef int (*fn)(double *, float *, float *, const float *, const float *, const int *, int,
                      int, float, float);
    fn fns[2] = {ser_ntxent_forward_backward, ser_ntxent_naive};
    for (int f = 0; f < 2; f++) {
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 2, 0.2f, 1), SER_OK);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 0, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, neg, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, none, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 0, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 2, 0.0f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 2, -1.0f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 2, NAN, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 2, INFINITY, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, tps, 2, 2, 0.2f, NAN), SER_EINVAL);
        assert_int_equal(fns[f](NULL, NULL, NULL, q, k, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, NULL, k, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[f](&L, NULL, NULL, q, k, NULL, 2, 2, 0.2f, 1), SER_EINVAL);
    }
    // A NaN input reaches the loss (the caller's NaN guard must see it).
    q[3] = NAN;
    assert_int_equal(ser_ntxent_forward_backward(&L, NULL, NULL, q, k, tps, 2, 2, 0.2f, 1), SER_OK);
    assert_true(isnan(L));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_bruteforce_definition),
        cmocka_unit_test(test_finite_differences),
        cmocka_unit_test(test_fast_vs_naive_and_threads),
        cmocka_unit_test(test_single_sample_is_zero),
        cmocka_unit_test(test_zero_rows),
        cmocka_unit_test(test_large_logits_stable),
        cmocka_unit_test(test_scale_and_accumulate),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
