// test_ntxent.c — the patch-wise NT-Xent (common/nn/ser_ntxent.c), both forms (the teacher-
// student loss and the pair loss, ser_ntxent.h): PyTorch fixtures (the reference's code path;
// for the pair form, its definition), the brute-force definitions (ser-reference §10.4 and
// ser_ntxent.h), central finite differences through the normalisation, the BLAS path against
// the naive twin, bitwise equality across thread counts, and the edge cases (one sample, zero
// rows, large |S|, bad arguments, scale and accumulation). Each check is written once over
// the form; test_* run it on the first form, test_pair_* on the pair form.
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

// --- the brute-force definitions -------------------------------------------------------------
// Written out here without sharing code with ser_ntxent.c.
static double s_cos_over_tau(const float *x, const float *y, int D, float tau) {
    double xx = 0, yy = 0, xy = 0;
    for (int d = 0; d < D; d++) {
        double a = x[d], b = y[d];
        xx += a * a, yy += b * b, xy += a * b;
    }
    return xy / (fmax(sqrt(xx), 1e-12) * fmax(sqrt(yy), 1e-12)) / (double)tau;
}

// ser-reference §10.4: L = mean_j -log( e^{S_jj} / sum_{i: img(i) != img(j) or i = j} e^{S_ij} ),
// S_ij = cos(k_i, q_j) / tau.
static double s_definition(const float *q, const float *k, const int *tps, int n, int D,
                           float tau) {
    int N = s_total(tps, n);
    int *img = malloc(sizeof(int) * N);
    for (int s = 0, at = 0; s < n; s++)
        for (int t = 0; t < tps[s]; t++) img[at++] = s;
    double L = 0;
    for (int j = 0; j < N; j++) {
        double den = 0;
        for (int i = 0; i < N; i++)
            if (img[i] != img[j] || i == j)
                den += exp(s_cos_over_tau(k + i * D, q + j * D, D, tau));
        L += -log(exp(s_cos_over_tau(k + j * D, q + j * D, D, tau)) / den);
    }
    free(img);
    return L / N;
}

// The pair form: over X = [A; B] (2N rows), L = (1/2N) sum_r -log( e^{S_r,p(r)} /
// sum_{c: c = p(r) or img(c) != img(r)} e^{S_rc} ), p(r) = r + N mod 2N, S_rc = cos(x_r, x_c) /
// tau.
static double s_pair_definition(const float *A, const float *B, const int *tps, int n, int D,
                                float tau) {
    int N = s_total(tps, n), N2 = 2 * N;
    int *img = malloc(sizeof(int) * N2);
    for (int s = 0, at = 0; s < n; s++)
        for (int t = 0; t < tps[s]; t++, at++) img[at] = img[N + at] = s;
    double L = 0;
    for (int r = 0; r < N2; r++) {
        const float *x = r < N ? A + r * D : B + (r - N) * D;
        int p = (r + N) % N2;
        double den = 0, pos = 0;
        for (int c = 0; c < N2; c++) {
            double S = s_cos_over_tau(x, c < N ? A + c * D : B + (c - N) * D, D, tau);
            if (c == p || img[c] != img[r]) den += exp(S);
            if (c == p) pos = exp(S);
        }
        L += -log(pos / den);
    }
    free(img);
    return L / N2;
}

// --- the two forms ---------------------------------------------------------------------------
typedef int (*s_loss_fn)(double *, float *, float *, const float *, const float *, const int *, int,
                         int, float, float);
typedef struct {
    const char *tag;  // printed before the labels
    s_loss_fn fast, naive;
    double (*definition)(const float *, const float *, const int *, int, int, float);
    const char *x[2];  // the two inputs: argument order, fixture keys, messages
    int maps;          // maps the negatives come from (1: k; 2: A and B)
} s_form;

static const s_form s_first = {
    "", ser_ntxent_forward_backward, ser_ntxent_naive, s_definition, {"q", "k"}, 1};
static const s_form s_pair = {
    "pair ", ser_ntxent_pair_forward_backward, ser_ntxent_pair_naive, s_pair_definition, {"a", "b"},
    2};

// --- PyTorch fixtures ------------------------------------------------------------------------
// Loss to rtol 1e-5. Gradients: rtol 1e-4 plus atol 1e-6, absolute for the first form (entries
// are O(1e-3..1); the zero rows of "zero_rows" are O(1e11) and covered by rtol), of the
// tensor's largest entry for the pair form ("single" is then exactly zero). The fp32 path forms
// S in fp32, so its error grows with |S| <= 1/tau ("sharp": tau = 0.02, pair 0.05).
static void s_fixtures(const s_form *f, const char *file, const char *const *cases, int n_cases,
                       int atol_of_max) {
    ser_st_file *fx = ser_test_open_fixture(file);
    for (int c = 0; c < n_cases; c++) {
        char key[64], label[80];
        size_t nq, nt;
#define FX(fmt, name, cnt) \
    (snprintf(key, sizeof key, "%s." fmt, cases[c], name), ser_test_tensor(fx, key, cnt))
        float *q = FX("%s", f->x[0], &nq), *k = FX("%s", f->x[1], NULL);
        float *tk = FX("%s", "tokens", &nt), *tau = FX("%s", "tau", NULL);
        float *loss = FX("%s", "loss", NULL),
              *ref[2] = {FX("d%s", f->x[0], NULL), FX("d%s", f->x[1], NULL)};
#undef FX
        int n = (int)nt, *tps = malloc(sizeof(int) * nt);
        for (int s = 0; s < n; s++) tps[s] = (int)tk[s];
        int N = s_total(tps, n), D = (int)(nq / (size_t)N);
        assert_int_equal((size_t)N * D, nq);
        float *g[2] = {malloc(nq * 4), malloc(nq * 4)};
        for (int naive = 0; naive < 2; naive++) {
            memset(g[0], 0, nq * 4), memset(g[1], 0, nq * 4);
            double L = NAN;
            int rc = (naive ? f->naive : f->fast)(&L, g[0], g[1], q, k, tps, n, D, tau[0], 1.0f);
            assert_int_equal(rc, SER_OK);
            float Lf = (float)L;
            snprintf(label, sizeof label, "%s%s.loss%s", f->tag, cases[c], naive ? " (naive)" : "");
            SER_ASSERT_CLOSE(label, &Lf, loss, 1, 1e-6f, 1e-5f);
            for (int side = 0; side < 2; side++) {
                float atol = atol_of_max ? 1e-6f * ser_test_maxabs(ref[side], nq) : 1e-6f;
                snprintf(label, sizeof label, "%s%s.d%s%s", f->tag, cases[c], f->x[side],
                         naive ? " (naive)" : "");
                SER_ASSERT_CLOSE(label, g[side], ref[side], nq, atol, 1e-4f);
            }
        }
        free(q), free(k), free(tk), free(tau), free(loss), free(ref[0]), free(ref[1]);
        free(tps), free(g[0]), free(g[1]);
    }
    ser_st_destroy(&fx);
}

static void test_fixtures(void **state) {
    (void)state;
    const char *cases[4] = {"ragged", "sharp", "zero_rows", "single"};
    s_fixtures(&s_first, "ntxent.safetensors", cases, 4, 0);
}

// tests/reference/make_group_fixtures.py writes it from the definition in ser_ntxent.h, not
// from the reference code.
static void test_pair_fixtures(void **state) {
    (void)state;
    const char *cases[3] = {"ragged", "sharp", "single"};
    s_fixtures(&s_pair, "ntxent_pair.safetensors", cases, 3, 1);
}

// --- the brute-force definition --------------------------------------------------------------
static void s_bruteforce_definition(const s_form *f) {
    // Ragged token counts, as from ranks with different (w, h); a sample with one token.
    int tps[5] = {3, 1, 4, 2, 6}, n = 5, D = 5, N = s_total(tps, n);
    float taus[3] = {0.1f, 0.3f, 1.0f};
    for (int t = 0; t < 3; t++) {
        float *q = s_rand((size_t)N * D, 1 + t, -1, 1), *k = s_rand((size_t)N * D, 11 + t, -1, 1);
        double ref = f->definition(q, k, tps, n, D, taus[t]), Lf, Ln;
        assert_int_equal(f->fast(&Lf, NULL, NULL, q, k, tps, n, D, taus[t], 1), SER_OK);
        assert_int_equal(f->naive(&Ln, NULL, NULL, q, k, tps, n, D, taus[t], 1), SER_OK);
        print_message(
            "%stau %.1f: definition %.9f, naive %.9f (diff %.1e), fp32 path %.9f "
            "(diff %.1e)\n",
            f->tag, (double)taus[t], ref, Ln, fabs(Ln - ref), Lf, fabs(Lf - ref));
        assert_true(fabs(Ln - ref) <= 1e-12 * fabs(ref));
        assert_true(fabs(Lf - ref) <= 2e-6 * fabs(ref));
        free(q), free(k);
    }
}

static void test_bruteforce_definition(void **state) {
    (void)state;
    s_bruteforce_definition(&s_first);
}

static void test_pair_bruteforce_definition(void **state) {
    (void)state;
    s_bruteforce_definition(&s_pair);
}

// --- finite differences ----------------------------------------------------------------------
// Central differences of the double-precision naive loss at every coordinate of both inputs,
// with the step actually taken in float, against the analytic gradients of both paths.
static void s_finite_differences(const s_form *f) {
    int tps[4] = {4, 2, 5, 3}, n = 4, D = 6, N = s_total(tps, n);
    size_t nd = (size_t)N * D;
    float tau = 0.25f;
    float *q = s_rand(nd, 21, -1, 1), *k = s_rand(nd, 22, -1, 1);
    float *g[2][2];  // [naive][q/k]
    for (int naive = 0; naive < 2; naive++) {
        g[naive][0] = calloc(nd, 4), g[naive][1] = calloc(nd, 4);
        double L;
        (naive ? f->naive : f->fast)(&L, g[naive][0], g[naive][1], q, k, tps, n, D, tau, 1.0f);
    }
    double max_err[2] = {0, 0}, max_used[2] = {0, 0}, max_g = 0;
    for (int side = 0; side < 2; side++) {
        float *x = side ? k : q;
        for (size_t e = 0; e < nd; e++) {
            float x0 = x[e];
            float xp = x0 + 1e-3f, xm = x0 - 1e-3f;
            double Lp, Lm;
            x[e] = xp;
            f->naive(&Lp, NULL, NULL, q, k, tps, n, D, tau, 1.0f);
            x[e] = xm;
            f->naive(&Lm, NULL, NULL, q, k, tps, n, D, tau, 1.0f);
            x[e] = x0;
            double fd = (Lp - Lm) / ((double)xp - (double)xm);
            max_g = fmax(max_g, fabs(fd));
            for (int naive = 0; naive < 2; naive++) {
                double err = fabs((double)g[naive][side][e] - fd), tol = 1e-6 + 1e-4 * fabs(fd);
                max_err[naive] = fmax(max_err[naive], err);
                max_used[naive] = fmax(max_used[naive], err / tol);
                if (err > tol) {
                    print_error("%sd%s[%zu] (%s): analytic %.9g, finite difference %.9g\n", f->tag,
                                f->x[side], e, naive ? "naive" : "fp32", (double)g[naive][side][e],
                                fd);
                    fail();
                }
            }
        }
    }
    print_message(
        "%sfinite differences (N=%d, D=%d, %zu coordinates): max |grad| %.3g, max |fd - grad| "
        "fp32 path %.2e (%.0f%% of tol), naive %.2e (%.0f%% of tol)\n",
        f->tag, N, D, 2 * nd, max_g, max_err[0], 100 * max_used[0], max_err[1], 100 * max_used[1]);
    free(q), free(k), free(g[0][0]), free(g[0][1]), free(g[1][0]), free(g[1][1]);
}

static void test_finite_differences(void **state) {
    (void)state;
    s_finite_differences(&s_first);
}

static void test_pair_finite_differences(void **state) {
    (void)state;
    s_finite_differences(&s_pair);
}

// --- BLAS path vs naive, bitwise across threads ----------------------------------------------
// Two shapes: D = 64 against the naive twin, and D = 520 with tau = 1 (alpha = 1 and a
// reduction longer than OpenBLAS's K block, where one threaded BLAS call would change its
// summation order with the thread count). The pair form has 2N rows: 1696 and 850.
static void s_fast_vs_naive_and_threads(const s_form *f) {
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
            if (run < 2) ser_kernels_set_threads(run == 0 ? 1 : 3);
            assert_int_equal((run < 2 ? f->fast : f->naive)(&L[run], dq[run], dk[run], q, k,
                                                            cfg[c].tps, n, D, cfg[c].tau, 0.5f),
                             SER_OK);
        }
        ser_kernels_set_threads(2);
        assert_memory_equal(&L[0], &L[1], sizeof(double));
        assert_memory_equal(dq[0], dq[1], nd * 4);
        assert_memory_equal(dk[0], dk[1], nd * 4);
        print_message("%sN=%d D=%d tau=%g: 1 vs 3 threads bitwise equal\n", f->tag, N, D,
                      (double)cfg[c].tau);
        if (cfg[c].naive) {
            double nq = ser_test_nmse(dq[0], dq[2], nd), nk = ser_test_nmse(dk[0], dk[2], nd);
            print_message("  vs naive: loss %.9f / %.9f (rel %.1e), NMSE d%s %.2e d%s %.2e\n", L[0],
                          L[2], fabs(L[0] - L[2]) / L[2], f->x[0], nq, f->x[1], nk);
            assert_true(fabs(L[0] - L[2]) <= 1e-6 * L[2]);
            assert_true(nq <= 1e-7 && nk <= 1e-7);
        }
        for (int run = 0; run < 2 + cfg[c].naive; run++) free(dq[run]), free(dk[run]);
        free(q), free(k);
    }
}

static void test_fast_vs_naive_and_threads(void **state) {
    (void)state;
    s_fast_vs_naive_and_threads(&s_first);
}

static void test_pair_fast_vs_naive_and_threads(void **state) {
    (void)state;
    s_fast_vs_naive_and_threads(&s_pair);
}

// --- edge cases ------------------------------------------------------------------------------
// One sample: every entry but the positive is masked, each anchor's log-sum-exp is its
// positive's logit, so L = 0 exactly and nothing flows back, whatever the inputs.
static void s_single_sample_is_zero(const s_form *f) {
    int tps[1] = {9}, D = 7;
    size_t nd = 9 * 7;
    float *q = s_rand(nd, 41, -3, 3), *k = s_rand(nd, 42, -3, 3);
    float *dq = s_rand(nd, 43, -1, 1), *dk = s_rand(nd, 44, -1, 1);
    float *dq0 = malloc(nd * 4), *dk0 = malloc(nd * 4);
    memcpy(dq0, dq, nd * 4), memcpy(dk0, dk, nd * 4);
    for (int naive = 0; naive < 2; naive++) {
        double L = 1;
        assert_int_equal((naive ? f->naive : f->fast)(&L, dq, dk, q, k, tps, 1, D, 0.05f, 1),
                         SER_OK);
        assert_true(L == 0.0);
        assert_memory_equal(dq, dq0, nd * 4);
        assert_memory_equal(dk, dk0, nd * 4);
    }
    // Split into two samples, the same rows give a positive loss.
    int tps2[2] = {4, 5};
    double L = 0;
    assert_int_equal(f->fast(&L, NULL, NULL, q, k, tps2, 2, D, 0.05f, 1), SER_OK);
    assert_true(L > 0);
    free(q), free(k), free(dq), free(dk), free(dq0), free(dk0);
}

static void test_single_sample_is_zero(void **state) {
    (void)state;
    s_single_sample_is_zero(&s_first);
}

static void test_pair_single_sample_is_zero(void **state) {
    (void)state;
    s_single_sample_is_zero(&s_pair);
}

// Zero rows: x^ = 0 (no NaN), and the gradient is dx^ / 1e-12 as in PyTorch (the fixture
// "zero_rows" checks the values); here: finite, and the two paths agree.
static void s_zero_rows(const s_form *f) {
    int tps[3] = {3, 4, 2}, D = 5, N = 9;
    size_t nd = (size_t)N * D;
    float *q = s_rand(nd, 51, -1, 1), *k = s_rand(nd, 52, -1, 1);
    memset(q + 2 * D, 0, D * 4), memset(k + 5 * D, 0, D * 4), memset(k + 2 * D, 0, D * 4);
    float *g[4];
    for (int i = 0; i < 4; i++) g[i] = calloc(nd, 4);
    double L, Ln;
    f->fast(&L, g[0], g[1], q, k, tps, 3, D, 0.3f, 1);
    f->naive(&Ln, g[2], g[3], q, k, tps, 3, D, 0.3f, 1);
    assert_true(isfinite(L) && fabs(L - Ln) <= 1e-6 * Ln);
    for (size_t i = 0; i < nd; i++) assert_true(isfinite(g[0][i]) && isfinite(g[1][i]));
    char label[64];
    for (int side = 0; side < 2; side++) {
        snprintf(label, sizeof label, "%szero_rows d%s fp32 vs naive", f->tag, f->x[side]);
        SER_ASSERT_CLOSE(label, g[side], g[2 + side], nd, 1e-6f, 1e-4f);
    }
    assert_true(fabsf(g[0][2 * D]) > 1e6f);  // the dx^/eps branch
    for (int i = 0; i < 4; i++) free(g[i]);
    free(q), free(k);
}

static void test_zero_rows(void **state) {
    (void)state;
    s_zero_rows(&s_first);
}

static void test_pair_zero_rows(void **state) {
    (void)state;
    s_zero_rows(&s_pair);
}

// Large |S| (tau = 1e-3: |S| <= 1000, exp overflows float and double without the max shift).
static void s_large_logits_stable(const s_form *f) {
    int tps[4] = {5, 3, 6, 2}, n = 4, D = 8, N = s_total(tps, n);
    size_t nd = (size_t)N * D;
    float *q = s_rand(nd, 61, -1, 1), *k = s_rand(nd, 62, -1, 1);
    for (size_t i = 0; i < nd; i++) q[i] += k[i];
    float *g[4];
    for (int i = 0; i < 4; i++) g[i] = calloc(nd, 4);
    double L, Ln;
    f->fast(&L, g[0], g[1], q, k, tps, n, D, 1e-3f, 1);
    f->naive(&Ln, g[2], g[3], q, k, tps, n, D, 1e-3f, 1);
    print_message("%stau 1e-3: loss fp32 %.6f naive %.6f\n", f->tag, L, Ln);
    assert_true(isfinite(L) && L > 0);
    // S carries fp32 rounding of ~1e-7 * 1000; the loss is a difference of such terms.
    assert_true(fabs(L - Ln) <= 1e-3 * fmax(1.0, Ln));
    for (size_t i = 0; i < nd; i++) assert_true(isfinite(g[0][i]) && isfinite(g[1][i]));
    assert_true(ser_test_nmse(g[0], g[2], nd) < 1e-4 && ser_test_nmse(g[1], g[3], nd) < 1e-4);
    // Identical rows everywhere: every S = 1/tau, masked sums of equal huge terms.
    for (size_t i = 0; i < nd; i++) q[i] = k[i] = 1.0f;
    f->fast(&L, NULL, NULL, q, k, tps, n, D, 1e-3f, 1);
    f->naive(&Ln, NULL, NULL, q, k, tps, n, D, 1e-3f, 1);
    // An anchor of sample s sees 1 + maps * (N - T_s) equal terms: L = mean log of that.
    double expect = 0;
    for (int s = 0; s < n; s++) expect += tps[s] * log(1.0 + f->maps * (N - tps[s]));
    expect /= N;
    print_message("%sall rows equal: loss %.9f naive %.9f closed form %.9f\n", f->tag, L, Ln,
                  expect);
    assert_true(fabs(L - expect) < 1e-6 && fabs(Ln - expect) < 1e-12);
    for (int i = 0; i < 4; i++) free(g[i]);
    free(q), free(k);
}

static void test_large_logits_stable(void **state) {
    (void)state;
    s_large_logits_stable(&s_first);
}

static void test_pair_large_logits_stable(void **state) {
    (void)state;
    s_large_logits_stable(&s_pair);
}

// Scale and accumulation: g1, h1 = dL/dq, dL/dk from zero; g2, h2 = the same at scale 0.25 onto
// 1 and -2 (the caller frees all four). A sample with zero tokens changes nothing.
static void s_scale_and_accumulate(const s_form *f, const float *q, const float *k, float **g1,
                                   float **h1, float **g2, float **h2, double *L1) {
    int tps[3] = {4, 6, 3}, n = 3, D = 9, N = s_total(tps, n);
    size_t nd = (size_t)N * D;
    *g1 = calloc(nd, 4), *h1 = calloc(nd, 4), *g2 = malloc(nd * 4), *h2 = malloc(nd * 4);
    double L2;
    f->fast(L1, *g1, *h1, q, k, tps, n, D, 0.2f, 1.0f);
    for (size_t i = 0; i < nd; i++) (*g2)[i] = 1.0f, (*h2)[i] = -2.0f;
    f->fast(&L2, *g2, *h2, q, k, tps, n, D, 0.2f, 0.25f);
    assert_true(*L1 == L2);  // the loss is returned unscaled
    float *e1 = malloc(nd * 4), *e2 = malloc(nd * 4);
    for (size_t i = 0; i < nd; i++) {
        e1[i] = 1.0f + 0.25f * (*g1)[i];
        e2[i] = -2.0f + 0.25f * (*h1)[i];
    }
    char label[64];
    snprintf(label, sizeof label, "%sd%s += 0.25 * dL/d%s", f->tag, f->x[0], f->x[0]);
    SER_ASSERT_CLOSE(label, *g2, e1, nd, 1e-6f, 1e-5f);
    snprintf(label, sizeof label, "%sd%s += 0.25 * dL/d%s", f->tag, f->x[1], f->x[1]);
    SER_ASSERT_CLOSE(label, *h2, e2, nd, 1e-6f, 1e-5f);
    int tz[4] = {4, 0, 6, 3};
    double L3;
    assert_int_equal(f->fast(&L3, NULL, NULL, q, k, tz, 4, D, 0.2f, 1), SER_OK);
    assert_true(L3 == *L1);
    free(e1), free(e2);
}

static void test_scale_and_accumulate(void **state) {
    (void)state;
    size_t nd = 13 * 9;
    float *q = s_rand(nd, 71, -1, 1), *k = s_rand(nd, 72, -1, 1), *g1, *h1, *g2, *h2;
    double L1, L2;
    s_scale_and_accumulate(&s_first, q, k, &g1, &h1, &g2, &h2, &L1);
    // Only dk requested: dq untouched (NULL), dk as before.
    int tps[3] = {4, 6, 3};
    memset(h2, 0, nd * 4);
    ser_ntxent_forward_backward(&L2, NULL, h2, q, k, tps, 3, 9, 0.2f, 0.25f);
    for (size_t i = 0; i < nd; i++) h1[i] = 0.25f * h1[i];
    SER_ASSERT_CLOSE("dk alone", h2, h1, nd, 1e-6f, 1e-5f);
    free(q), free(k), free(g1), free(h1), free(g2), free(h2);
}

static void test_pair_scale_and_accumulate(void **state) {
    (void)state;
    size_t nd = 13 * 9;
    float *a = s_rand(nd, 71, -1, 1), *b = s_rand(nd, 72, -1, 1), *g1, *h1, *g2, *h2;
    double L1, L2;
    s_scale_and_accumulate(&s_pair, a, b, &g1, &h1, &g2, &h2, &L1);
    // Swapping A and B swaps the gradients (the loss is symmetric in the two maps).
    int tps[3] = {4, 6, 3};
    memset(g2, 0, nd * 4), memset(h2, 0, nd * 4);
    ser_ntxent_pair_forward_backward(&L2, h2, g2, b, a, tps, 3, 9, 0.2f, 1.0f);
    assert_true(fabs(L2 - L1) <= 1e-6 * L1);
    SER_ASSERT_CLOSE("pair swapped da", g2, g1, nd, 1e-6f, 1e-5f);
    SER_ASSERT_CLOSE("pair swapped db", h2, h1, nd, 1e-6f, 1e-5f);
    free(a), free(b), free(g1), free(h1), free(g2), free(h2);
}

// The checks both forms make; then a NaN input reaches the loss (the caller's NaN guard must
// see it).
static void s_bad_arguments(const s_form *f) {
    float q[8] = {1, 2, 3, 4, 5, 6, 7, 8}, k[8] = {1, 0, 0, 1, 1, 1, 0, 0};
    int tps[2] = {2, 2}, neg[2] = {2, -1}, none[2] = {0, 0};
    double L;
    s_loss_fn fns[2] = {f->fast, f->naive};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 2, 0.2f, 1), SER_OK);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 0, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, neg, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, none, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 0, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 2, 0.0f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 2, -1.0f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 2, NAN, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 2, INFINITY, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, tps, 2, 2, 0.2f, NAN), SER_EINVAL);
        assert_int_equal(fns[i](NULL, NULL, NULL, q, k, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, NULL, k, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, NULL, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, q, k, NULL, 2, 2, 0.2f, 1), SER_EINVAL);
    }
    for (int side = 0; side < 2; side++) {
        float *x = side ? k : q, x3 = x[3];
        x[3] = NAN;
        assert_int_equal(f->fast(&L, NULL, NULL, q, k, tps, 2, 2, 0.2f, 1), SER_OK);
        assert_true(isnan(L));
        x[3] = x3;
    }
}

static void test_bad_arguments(void **state) {
    (void)state;
    s_bad_arguments(&s_first);
}

// Also: exactly one gradient pointer NULL (both maps are student maps), and 2N one past
// SER_NTXENT_MAX_TOKENS (refused before anything is read or allocated).
static void test_pair_bad_arguments(void **state) {
    (void)state;
    s_bad_arguments(&s_pair);
    float a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8] = {1, 0, 0, 1, 1, 1, 0, 0}, g[16] = {0};
    int tps[2] = {2, 2}, big[2] = {SER_NTXENT_MAX_TOKENS / 4, SER_NTXENT_MAX_TOKENS / 4 + 1};
    double L;
    s_loss_fn fns[2] = {ser_ntxent_pair_forward_backward, ser_ntxent_pair_naive};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(fns[i](&L, g, g + 8, a, b, tps, 2, 2, 0.2f, 1), SER_OK);
        assert_int_equal(fns[i](&L, g, NULL, a, b, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, g, a, b, tps, 2, 2, 0.2f, 1), SER_EINVAL);
        assert_int_equal(fns[i](&L, NULL, NULL, a, b, big, 2, 2, 0.2f, 1), SER_EINVAL);
    }
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
        cmocka_unit_test(test_pair_fixtures),
        cmocka_unit_test(test_pair_bruteforce_definition),
        cmocka_unit_test(test_pair_finite_differences),
        cmocka_unit_test(test_pair_fast_vs_naive_and_threads),
        cmocka_unit_test(test_pair_single_sample_is_zero),
        cmocka_unit_test(test_pair_zero_rows),
        cmocka_unit_test(test_pair_large_logits_stable),
        cmocka_unit_test(test_pair_scale_and_accumulate),
        cmocka_unit_test(test_pair_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
