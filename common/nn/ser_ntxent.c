// ser_ntxent.c — see ser_ntxent.h.
//
// Layout of the workspace: St (N, N) holds S transposed, St[j, i] = S_ij, so that each anchor
// (student row j, a column of S) is a contiguous row: the masked log-sum-exp of anchor j reads
// one row, and the same row then becomes row j of A = (P^T - I) * scale / N in place.
// The pair form's S (2N, 2N) is symmetric and read by rows (anchors) too; its rows become
// G * scale in place, and G + G^T replaces it before the one backward product.
#include "ser_ntxent.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_kernels.h"
#include "ser_fmath.h"

// max_N: the largest N = sum_s T_s accepted.
static int s_check(const double *loss, const float *q, const float *k, const int *tps, int n, int D,
                   float tau, float scale, int max_N, int *N_out) {
    if (!loss || !q || !k || !tps || n < 1 || D < 1) return SER_EINVAL;
    if (!isfinite(tau) || !(tau > 0) || !isfinite(scale)) return SER_EINVAL;
    int64_t N = 0;
    for (int s = 0; s < n; s++) {
        if (tps[s] < 0) return SER_EINVAL;
        N += tps[s];
        if (N > max_N) return SER_EINVAL;
    }
    if (N < 1) return SER_EINVAL;
    *N_out = (int)N;
    return SER_OK;
}

// The pair form: 2N up to SER_NTXENT_MAX_TOKENS (the workspace is (2N)^2), and both gradients
// or neither.
static int s_check_pair(const double *loss, const float *dA, const float *dB, const float *A,
                        const float *B, const int *tps, int n, int D, float tau, float scale,
                        int *N_out) {
    if (!dA != !dB) return SER_EINVAL;
    return s_check(loss, A, B, tps, n, D, tau, scale, SER_NTXENT_MAX_TOKENS / 2, N_out);
}

// lo[j], hi[j]: the token range [lo, hi) of row j's sample.
static void s_blocks(int *lo, int *hi, const int *tps, int n) {
    int at = 0;
    for (int s = 0; s < n; s++) {
        for (int t = 0; t < tps[s]; t++) lo[at + t] = at, hi[at + t] = at + tps[s];
        at += tps[s];
    }
}

// --- fast path -------------------------------------------------------------------------------
// xh (N, D) = x / max(||x||, eps) per row; nrm (N,) = ||x|| (accumulated in double).
static void s_normalize(float *xh, float *nrm, const float *x, int N, int D) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *r = x + (size_t)i * D;
        float *o = xh + (size_t)i * D;
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)r[d] * (double)r[d];
        float nr = (float)sqrt(ss);
        float den = nr > (float)SER_NTXENT_NORM_EPS ? nr : (float)SER_NTXENT_NORM_EPS;
        nrm[i] = nr;
        for (int d = 0; d < D; d++) o[d] = r[d] / den;
    }
}

// dx (N, D) += d(x^)/dx applied to g (N, D): (g - x^ (x^ . g)) / ||x||, or g / eps where the
// clamp is active.
static void s_normalize_backward(float *dx, const float *g, const float *xh, const float *nrm,
                                 int N, int D) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *gi = g + (size_t)i * D, *hi = xh + (size_t)i * D;
        float *o = dx + (size_t)i * D;
        if (nrm[i] >= (float)SER_NTXENT_NORM_EPS) {
            double dot = 0;
            for (int d = 0; d < D; d++) dot += (double)hi[d] * (double)gi[d];
            float fd = (float)dot, inv = 1.0f / nrm[i];
            for (int d = 0; d < D; d++) o[d] += (gi[d] - hi[d] * fd) * inv;
        } else {
            for (int d = 0; d < D; d++) o[d] += gi[d] / (float)SER_NTXENT_NORM_EPS;
        }
    }
}

// One anchor: row (n entries) holds its logits. The denominator is every entry outside the
// masked ranges [a0, b0) and [a1, b1) (a0 <= b0 <= a1 <= b1 <= n) plus the positive pos (inside
// one of them). Returns the anchor's loss lse - row[pos]; row becomes the masked exps, or with
// grads (P - e_pos) * a_scale.
static double s_anchor(float *row, int n, int a0, int b0, int a1, int b1, int pos, int grads,
                       float a_scale) {
    float spos = row[pos];
    // The max over the unmasked entries: other samples' tokens and the positive.
    float m = spos;
    for (int i = 0; i < a0; i++) m = row[i] > m ? row[i] : m;
    for (int i = b0; i < a1; i++) m = row[i] > m ? row[i] : m;
    for (int i = b1; i < n; i++) m = row[i] > m ? row[i] : m;
    for (int i = 0; i < a0; i++) row[i] = ser_fexp(row[i] - m);
    for (int i = b0; i < a1; i++) row[i] = ser_fexp(row[i] - m);
    for (int i = b1; i < n; i++) row[i] = ser_fexp(row[i] - m);
    float epos = ser_fexp(spos - m);
    for (int i = a0; i < b0; i++) row[i] = 0.0f;
    for (int i = a1; i < b1; i++) row[i] = 0.0f;
    row[pos] = epos;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)row[i];
    if (grads) {
        float c = (float)(1.0 / sum) * a_scale;
        for (int i = 0; i < n; i++) row[i] *= c;
        row[pos] -= a_scale;
    }
    // A NaN anywhere in the anchor's or the positive's input row reaches row[pos] and so the
    // loss (ser_fexp clamps NaN).
    return (double)m + log(sum) - (double)spos;
}

int ser_ntxent_forward_backward(double *loss, float *dq, float *dk, const float *q, const float *k,
                                const int *tokens_per_sample, int n_samples, int D, float tau,
                                float scale) {
    int N = 0;
    int rc =
        s_check(loss, q, k, tokens_per_sample, n_samples, D, tau, scale, SER_NTXENT_MAX_TOKENS, &N);
    if (rc) return rc;
    size_t ND = (size_t)N * D;
    float *qh = ser_xmalloc(sizeof(float) * ND), *kh = ser_xmalloc(sizeof(float) * ND);
    float *qn = ser_xmalloc(sizeof(float) * (size_t)N),
          *kn = ser_xmalloc(sizeof(float) * (size_t)N);
    int *lo = ser_xmalloc(sizeof(int) * (size_t)N), *hi = ser_xmalloc(sizeof(int) * (size_t)N);
    double *row_loss = ser_xmalloc(sizeof(double) * (size_t)N);
    float *St = ser_xmalloc(sizeof(float) * (size_t)N * (size_t)N);
    s_blocks(lo, hi, tokens_per_sample, n_samples);
    s_normalize(qh, qn, q, N, D);
    s_normalize(kh, kn, k, N, D);

    // St (N, N) = Q^ K^^T / tau: row j = anchor j against every teacher row i.
    float inv_tau = 1.0f / tau;
    ser_sgemm_rows(St, N, 0, qh, D, kh, D, 1, N, N, D, inv_tau);

    int grads = dq || dk;
    float a_scale = (float)((double)scale / (double)N);
#pragma omp parallel for schedule(static)
    for (int j = 0; j < N; j++)
        row_loss[j] = s_anchor(St + (size_t)j * N, N, lo[j], hi[j], N, N, j, grads, a_scale);
    double L = 0;
    for (int j = 0; j < N; j++) L += row_loss[j];
    *loss = L / (double)N;

    if (grads) {
        float *g = ser_xmalloc(sizeof(float) * ND);
        if (dq) {
            // dq^ (N, D) = A K^ / tau.
            ser_sgemm_rows(g, D, 0, St, N, kh, D, 0, N, D, N, inv_tau);
            s_normalize_backward(dq, g, qh, qn, N, D);
        }
        if (dk) {
            // dk^ (N, D) = A^T Q^ / tau.
            ser_sgemm_rows(g, D, 1, St, N, qh, D, 0, N, D, N, inv_tau);
            s_normalize_backward(dk, g, kh, kn, N, D);
        }
        free(g);
    }
    free(qh), free(kh), free(qn), free(kn), free(lo), free(hi), free(row_loss), free(St);
    return SER_OK;
}

// G (n, n) += G^T in place: G_rc + G_cr to both, each pair by one thread, in 64 x 64 tiles.
static void s_add_transpose(float *G, int n) {
    int nb = (n + 63) / 64;
#pragma omp parallel for schedule(dynamic, 1)
    for (int bi = 0; bi < nb; bi++) {
        int i1 = bi * 64 + 64 < n ? bi * 64 + 64 : n;
        for (int bj = bi; bj < nb; bj++) {
            int j1 = bj * 64 + 64 < n ? bj * 64 + 64 : n;
            for (int i = bi * 64; i < i1; i++)
                for (int j = bj == bi ? i : bj * 64; j < j1; j++) {
                    float v = G[(size_t)i * n + j] + G[(size_t)j * n + i];
                    G[(size_t)i * n + j] = v, G[(size_t)j * n + i] = v;
                }
        }
    }
}

int ser_ntxent_pair_forward_backward(double *loss, float *dA, float *dB, const float *A,
                                     const float *B, const int *tokens_per_sample, int n_samples,
                                     int D, float tau, float scale) {
    int N = 0;
    int rc = s_check_pair(loss, dA, dB, A, B, tokens_per_sample, n_samples, D, tau, scale, &N);
    if (rc) return rc;
    int N2 = 2 * N;
    size_t ND = (size_t)N * D;
    // X^ = [A^; B^] (2N, D), norms (2N,).
    float *xh = ser_xmalloc(sizeof(float) * 2 * ND), *xn = ser_xmalloc(sizeof(float) * (size_t)N2);
    int *lo = ser_xmalloc(sizeof(int) * (size_t)N), *hi = ser_xmalloc(sizeof(int) * (size_t)N);
    double *row_loss = ser_xmalloc(sizeof(double) * (size_t)N2);
    float *S = ser_xmalloc(sizeof(float) * (size_t)N2 * (size_t)N2);
    s_blocks(lo, hi, tokens_per_sample, n_samples);
    s_normalize(xh, xn, A, N, D);
    s_normalize(xh + ND, xn + N, B, N, D);

    // S (2N, 2N) = X^ X^^T / tau: row r = anchor r against every row of both maps.
    float inv_tau = 1.0f / tau;
    ser_sgemm_rows(S, N2, 0, xh, D, xh, D, 1, N2, N2, D, inv_tau);

    int grads = dA != NULL;
    float a_scale = (float)((double)scale / (double)N2);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N2; r++) {
        // The masked ranges: the anchor's image in A and in B; the positive is in one of them.
        int t = r < N ? r : r - N;
        row_loss[r] = s_anchor(S + (size_t)r * N2, N2, lo[t], hi[t], N + lo[t], N + hi[t],
                               r < N ? r + N : r - N, grads, a_scale);
    }
    double L = 0;
    for (int r = 0; r < N2; r++) L += row_loss[r];
    *loss = L / (double)N2;

    if (grads) {
        // dX^ (2N, D) = (G + G^T) X^ / tau.
        s_add_transpose(S, N2);
        float *g = ser_xmalloc(sizeof(float) * 2 * ND);
        ser_sgemm_rows(g, D, 0, S, N2, xh, D, 0, N2, D, N2, inv_tau);
        s_normalize_backward(dA, g, xh, xn, N, D);
        s_normalize_backward(dB, g + ND, xh + ND, xn + N, N, D);
        free(g);
    }
    free(xh), free(xn), free(lo), free(hi), free(row_loss), free(S);
    return SER_OK;
}

// --- naive twins -----------------------------------------------------------------------------
static void s_normalize_d(double *xh, double *nrm, const float *x, int N, int D) {
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int d = 0; d < D; d++) {
            double v = (double)x[(size_t)i * D + d];
            ss += v * v;
        }
        nrm[i] = sqrt(ss);
        double den = fmax(nrm[i], SER_NTXENT_NORM_EPS);
        for (int d = 0; d < D; d++) xh[(size_t)i * D + d] = (double)x[(size_t)i * D + d] / den;
    }
}

static void s_normalize_backward_d(float *dx, const double *g, const double *xh, const double *nrm,
                                   int N, int D) {
    for (int i = 0; i < N; i++) {
        const double *gi = g + (size_t)i * D, *hi = xh + (size_t)i * D;
        double dot = 0;
        for (int d = 0; d < D; d++) dot += hi[d] * gi[d];
        for (int d = 0; d < D; d++) {
            double v = nrm[i] >= SER_NTXENT_NORM_EPS ? (gi[d] - hi[d] * dot) / nrm[i]
                                                     : gi[d] / SER_NTXENT_NORM_EPS;
            dx[(size_t)i * D + d] += (float)v;
        }
    }
}

// smp (N,): the sample of each row.
static int *s_sample_of(const int *tps, int n, int N) {
    int *smp = ser_xmalloc(sizeof(int) * (size_t)N);
    for (int s = 0, at = 0; s < n; s++)
        for (int t = 0; t < tps[s]; t++) smp[at++] = s;
    return smp;
}

// S (M, Nc) = U V^T / tau for U (M, D), V (Nc, D).
static void s_logits_d(double *S, const double *U, int M, const double *V, int Nc, int D,
                       float tau) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < Nc; j++) {
            double s = 0;
            for (int d = 0; d < D; d++) s += U[(size_t)i * D + d] * V[(size_t)j * D + d];
            S[(size_t)i * Nc + j] = s / (double)tau;
        }
}

// One anchor: its n logits v[i * stride]; ok[i] = 1 where entry i is in the denominator.
// p[i * stride] = exp(v - lse) where ok (left as it is elsewhere); returns lse.
static double s_masked_softmax_d(double *p, const double *v, size_t stride, int n,
                                 const unsigned char *ok) {
    double m = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        if (ok[i]) m = fmax(m, v[i * stride]);
    for (int i = 0; i < n; i++)
        if (ok[i]) sum += exp(v[i * stride] - m);
    double lse = m + log(sum);
    for (int i = 0; i < n; i++)
        if (ok[i]) p[i * stride] = exp(v[i * stride] - lse);
    return lse;
}

int ser_ntxent_naive(double *loss, float *dq, float *dk, const float *q, const float *k,
                     const int *tokens_per_sample, int n_samples, int D, float tau, float scale) {
    int N = 0;
    int rc =
        s_check(loss, q, k, tokens_per_sample, n_samples, D, tau, scale, SER_NTXENT_MAX_TOKENS, &N);
    if (rc) return rc;
    size_t ND = (size_t)N * D, NN = (size_t)N * N;
    double *qh = ser_xmalloc(sizeof(double) * ND), *kh = ser_xmalloc(sizeof(double) * ND);
    double *qn = ser_xmalloc(sizeof(double) * (size_t)N),
           *kn = ser_xmalloc(sizeof(double) * (size_t)N);
    double *S = ser_xmalloc(sizeof(double) * NN), *P = ser_xcalloc(NN, sizeof(double));
    int *smp = s_sample_of(tokens_per_sample, n_samples, N);
    unsigned char *ok = ser_xmalloc((size_t)N);
    s_normalize_d(qh, qn, q, N, D);
    s_normalize_d(kh, kn, k, N, D);
    // S[i, j] = k^_i . q^_j / tau: i teacher, j student (anchor, column j of S).
    s_logits_d(S, kh, N, qh, N, D, tau);
    double L = 0;
    for (int j = 0; j < N; j++) {
        for (int i = 0; i < N; i++) ok[i] = smp[i] != smp[j] || i == j;
        L += s_masked_softmax_d(P + j, S + j, (size_t)N, N, ok) - S[(size_t)j * N + j];
    }
    *loss = L / N;
    if (dq || dk) {
        // dS_ij = scale * (P_ij - [i == j]) / N.
        for (int i = 0; i < N; i++) P[(size_t)i * N + i] -= 1.0;
        double c = (double)scale / N / (double)tau;
        double *g = ser_xcalloc(ND, sizeof(double));
        if (dq) {
            for (int j = 0; j < N; j++)
                for (int i = 0; i < N; i++)
                    for (int d = 0; d < D; d++)
                        g[(size_t)j * D + d] += c * P[(size_t)i * N + j] * kh[(size_t)i * D + d];
            s_normalize_backward_d(dq, g, qh, qn, N, D);
        }
        if (dk) {
            memset(g, 0, sizeof(double) * ND);
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++)
                    for (int d = 0; d < D; d++)
                        g[(size_t)i * D + d] += c * P[(size_t)i * N + j] * qh[(size_t)j * D + d];
            s_normalize_backward_d(dk, g, kh, kn, N, D);
        }
        free(g);
    }
    free(qh), free(kh), free(qn), free(kn), free(S), free(P), free(smp), free(ok);
    return SER_OK;
}

int ser_ntxent_pair_naive(double *loss, float *dA, float *dB, const float *A, const float *B,
                          const int *tokens_per_sample, int n_samples, int D, float tau,
                          float scale) {
    int N = 0;
    int rc = s_check_pair(loss, dA, dB, A, B, tokens_per_sample, n_samples, D, tau, scale, &N);
    if (rc) return rc;
    int N2 = 2 * N;
    size_t ND = (size_t)N * D, NN = (size_t)N2 * N2;
    double *xh = ser_xmalloc(sizeof(double) * 2 * ND), *xn = ser_xmalloc(sizeof(double) * N2);
    double *S = ser_xmalloc(sizeof(double) * NN), *P = ser_xcalloc(NN, sizeof(double));
    int *smp = s_sample_of(tokens_per_sample, n_samples, N);
    unsigned char *ok = ser_xmalloc((size_t)N2);
    s_normalize_d(xh, xn, A, N, D);
    s_normalize_d(xh + ND, xn + N, B, N, D);
    // S[r, c] = x^_r . x^_c / tau over X = [A; B] (anchor r, row r of S).
    s_logits_d(S, xh, N2, xh, N2, D, tau);
    double L = 0;
    for (int r = 0; r < N2; r++) {
        int p = r < N ? r + N : r - N;
        for (int c = 0; c < N2; c++) ok[c] = c == p || smp[c % N] != smp[r % N];
        L += s_masked_softmax_d(P + (size_t)r * N2, S + (size_t)r * N2, 1, N2, ok) -
             S[(size_t)r * N2 + p];
    }
    *loss = L / N2;
    if (dA) {
        // dS_rc = scale * (P_rc - [c == p(r)]) / 2N; S = X^ X^^T makes dX^ = (dS + dS^T) X^.
        for (int r = 0; r < N2; r++) P[(size_t)r * N2 + (r < N ? r + N : r - N)] -= 1.0;
        double c = (double)scale / N2 / (double)tau;
        double *g = ser_xcalloc(2 * ND, sizeof(double));
        for (int r = 0; r < N2; r++)
            for (int j = 0; j < N2; j++) {
                double w = c * (P[(size_t)r * N2 + j] + P[(size_t)j * N2 + r]);
                for (int d = 0; d < D; d++) g[(size_t)r * D + d] += w * xh[(size_t)j * D + d];
            }
        s_normalize_backward_d(dA, g, xh, xn, N, D);
        s_normalize_backward_d(dB, g + ND, xh + ND, xn + N, N, D);
        free(g);
    }
    free(xh), free(xn), free(S), free(P), free(smp), free(ok);
    return SER_OK;
}
