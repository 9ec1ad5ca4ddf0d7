// ser_ntxent.c — see ser_ntxent.h.
//
// Layout of the workspace: St (N, N) holds S transposed, St[j, i] = S_ij, so that each anchor
// (student row j, a column of S) is a contiguous row: the masked log-sum-exp of anchor j reads
// one row, and the same row then becomes row j of A = (P^T - I) * scale / N in place.
#include "ser_ntxent.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_kernels.h"
#include "ser_fmath.h"

static int s_check(const double *loss, const float *q, const float *k, const int *tps, int n, int D,
                   float tau, float scale, int *N_out) {
    if (!loss || !q || !k || !tps || n < 1 || D < 1) return SER_EINVAL;
    if (!isfinite(tau) || !(tau > 0) || !isfinite(scale)) return SER_EINVAL;
    int64_t N = 0;
    for (int s = 0; s < n; s++) {
        if (tps[s] < 0) return SER_EINVAL;
        N += tps[s];
        if (N > SER_NTXENT_MAX_TOKENS) return SER_EINVAL;
    }
    if (N < 1) return SER_EINVAL;
    *N_out = (int)N;
    return SER_OK;
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

int ser_ntxent_forward_backward(double *loss, float *dq, float *dk, const float *q, const float *k,
                                const int *tokens_per_sample, int n_samples, int D, float tau,
                                float scale) {
    int N = 0;
    int rc = s_check(loss, q, k, tokens_per_sample, n_samples, D, tau, scale, &N);
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
    for (int j = 0; j < N; j++) {
        float *row = St + (size_t)j * N;
        int a = lo[j], b = hi[j];
        float sjj = row[j];
        // The max over the unmasked entries: other samples' tokens and the positive.
        float m = sjj;
        for (int i = 0; i < a; i++) m = row[i] > m ? row[i] : m;
        for (int i = b; i < N; i++) m = row[i] > m ? row[i] : m;
        for (int i = 0; i < a; i++) row[i] = ser_fexp(row[i] - m);
        for (int i = b; i < N; i++) row[i] = ser_fexp(row[i] - m);
        float ejj = ser_fexp(sjj - m);
        for (int i = a; i < b; i++) row[i] = 0.0f;
        row[j] = ejj;
        double sum = 0;
        for (int i = 0; i < N; i++) sum += (double)row[i];
        // A NaN anywhere in q_j or k_j reaches S_jj and so the loss (ser_fexp clamps NaN).
        row_loss[j] = (double)m + log(sum) - (double)sjj;
        if (grads) {
            float c = (float)(1.0 / sum) * a_scale;
            for (int i = 0; i < N; i++) row[i] *= c;
            row[j] -= a_scale;
        }
    }
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

// --- naive twin ------------------------------------------------------------------------------
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

int ser_ntxent_naive(double *loss, float *dq, float *dk, const float *q, const float *k,
                     const int *tokens_per_sample, int n_samples, int D, float tau, float scale) {
    int N = 0;
    int rc = s_check(loss, q, k, tokens_per_sample, n_samples, D, tau, scale, &N);
    if (rc) return rc;
    size_t ND = (size_t)N * D, NN = (size_t)N * N;
    double *qh = ser_xmalloc(sizeof(double) * ND), *kh = ser_xmalloc(sizeof(double) * ND);
    double *qn = ser_xmalloc(sizeof(double) * (size_t)N),
           *kn = ser_xmalloc(sizeof(double) * (size_t)N);
    double *S = ser_xmalloc(sizeof(double) * NN), *P = ser_xcalloc(NN, sizeof(double));
    int *smp = ser_xmalloc(sizeof(int) * (size_t)N);
    for (int s = 0, at = 0; s < n_samples; s++)
        for (int t = 0; t < tokens_per_sample[s]; t++) smp[at++] = s;
    s_normalize_d(qh, qn, q, N, D);
    s_normalize_d(kh, kn, k, N, D);
    // S[i, j] = k^_i . q^_j / tau: i teacher, j student (anchor).
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int d = 0; d < D; d++) s += kh[(size_t)i * D + d] * qh[(size_t)j * D + d];
            S[(size_t)i * N + j] = s / (double)tau;
        }
    double L = 0;
    for (int j = 0; j < N; j++) {
        double m = -INFINITY, sum = 0;
        for (int i = 0; i < N; i++)
            if (smp[i] != smp[j] || i == j) m = fmax(m, S[(size_t)i * N + j]);
        for (int i = 0; i < N; i++)
            if (smp[i] != smp[j] || i == j) sum += exp(S[(size_t)i * N + j] - m);
        double lse = m + log(sum);
        L += lse - S[(size_t)j * N + j];
        for (int i = 0; i < N; i++)
            if (smp[i] != smp[j] || i == j) P[(size_t)i * N + j] = exp(S[(size_t)i * N + j] - lse);
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
    free(qh), free(kh), free(qn), free(kn), free(S), free(P), free(smp);
    return SER_OK;
}
