// ser_loss.c — see ser_loss.h.
#include "ser_loss.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"

#define SER_NORM_EPS 1e-12

void ser_l2norm_rows_forward(float *y, float *norms, const float *x, int M, int D) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * D;
        double s = 0;
        for (int d = 0; d < D; d++) s += (double)r[d] * (double)r[d];
        float n = (float)sqrt(s);
        norms[m] = n;
        float inv = 1.0f / (n > (float)SER_NORM_EPS ? n : (float)SER_NORM_EPS);
        for (int d = 0; d < D; d++) y[(size_t)m * D + d] = r[d] * inv;
    }
}

void ser_l2norm_rows_backward(float *dx, const float *dy, const float *y, const float *norms,
                              int M, int D, int acc) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) {
        const float *g = dy + (size_t)m * D, *yr = y + (size_t)m * D;
        float *o = dx + (size_t)m * D;
        float n = norms[m];
        if (n > (float)SER_NORM_EPS) {
            double dot = 0;
            for (int d = 0; d < D; d++) dot += (double)yr[d] * (double)g[d];
            float fd = (float)dot, inv = 1.0f / n;
            for (int d = 0; d < D; d++) {
                float v = (g[d] - yr[d] * fd) * inv;
                o[d] = acc ? o[d] + v : v;
            }
        } else {  // x / eps: the gradient is dy / eps
            for (int d = 0; d < D; d++) {
                float v = g[d] / (float)SER_NORM_EPS;
                o[d] = acc ? o[d] + v : v;
            }
        }
    }
}

double ser_moco_ctr(float *dq, const float *q, const float *k, int M, int D, float T, float scale) {
    size_t md = (size_t)M * D;
    float *qn = ser_xmalloc(sizeof(float) * md), *kn = ser_xmalloc(sizeof(float) * md);
    float *qnorm = ser_xmalloc(sizeof(float) * (size_t)M), *knorm = ser_xmalloc(sizeof(float) * (size_t)M);
    float *S = ser_xmalloc(sizeof(float) * (size_t)M * M);
    double *rowloss = ser_xmalloc(sizeof(double) * (size_t)M);
    ser_l2norm_rows_forward(qn, qnorm, q, M, D);
    ser_l2norm_rows_forward(kn, knorm, k, M, D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, M, D, 1.0f / T, qn, D, kn, D, 0.0f, S,
                M);
    // Row-wise log-softmax; S becomes dL/dlogits = (softmax - onehot) * 2T / M.
    float g = (float)(2.0 * (double)T / M);
#pragma omp parallel for schedule(static)
    for (int j = 0; j < M; j++) {
        float *r = S + (size_t)j * M;
        float mx = r[0];
        for (int i = 1; i < M; i++) mx = r[i] > mx ? r[i] : mx;
        double z = 0;
        for (int i = 0; i < M; i++) z += exp((double)(r[i] - mx));
        double lse = (double)mx + log(z);
        rowloss[j] = lse - (double)r[j];
        for (int i = 0; i < M; i++) r[i] = (float)exp((double)r[i] - lse) * g;
        r[j] -= g;
    }
    double loss = 0;
    for (int j = 0; j < M; j++) loss += rowloss[j];
    loss = loss / M * 2.0 * (double)T;
    if (dq) {
        // dqn = dlogits kn / T, then through the normalisation.
        float *dqn = ser_xmalloc(sizeof(float) * md);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, D, M, scale / T, S, M, kn, D,
                    0.0f, dqn, D);
        ser_l2norm_rows_backward(dq, dqn, qn, qnorm, M, D, 1);
        free(dqn);
    }
    free(qn), free(kn), free(qnorm), free(knorm), free(S), free(rowloss);
    return loss;
}
