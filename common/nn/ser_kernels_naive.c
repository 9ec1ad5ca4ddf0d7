// ser_kernels_naive.c — triple-loop twins of the kernels in ser_kernels.c: the test oracles.
// Written for clarity, accumulating in double where that makes them a better reference; the
// promotions to double are the point here, so that warning is off for this file.
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_kernels.h"

void ser_matmul_forward_naive(float *out, const float *inp, const float *w, const float *b, int M,
                              int K, int N) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = b ? (double)b[n] : 0.0;
            for (int k = 0; k < K; k++) acc += (double)inp[m * K + k] * (double)w[n * K + k];
            out[m * N + n] = (float)acc;
        }
}

void ser_matmul_backward_naive(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, int M, int K, int N, int acc) {
    if (dinp)
        for (int m = 0; m < M; m++)
            for (int k = 0; k < K; k++) {
                double a = 0;
                for (int n = 0; n < N; n++) a += (double)dout[m * N + n] * (double)w[n * K + k];
                dinp[m * K + k] = (float)(acc ? dinp[m * K + k] + a : a);
            }
    if (dw)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) {
                double a = 0;
                for (int m = 0; m < M; m++) a += (double)dout[m * N + n] * (double)inp[m * K + k];
                dw[n * K + k] += (float)a;
            }
    if (db)
        for (int n = 0; n < N; n++) {
            double a = 0;
            for (int m = 0; m < M; m++) a += (double)dout[m * N + n];
            db[n] += (float)a;
        }
}

void ser_layernorm_forward_naive(float *out, float *mean, float *rstd, const float *inp,
                                 const float *w, const float *b, int M, int C, float eps) {
    for (int m = 0; m < M; m++) {
        const float *x = inp + m * C;
        double mu = 0, var = 0;
        for (int c = 0; c < C; c++) mu += x[c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (x[c] - mu) * (x[c] - mu);
        var /= C;
        double rs = 1.0 / sqrt(var + (double)eps);
        for (int c = 0; c < C; c++) out[m * C + c] = (float)((x[c] - mu) * rs * w[c] + b[c]);
        if (mean) mean[m] = (float)mu;
        if (rstd) rstd[m] = (float)rs;
    }
}

void ser_layernorm_backward_naive(float *dinp, float *dw, float *db, const float *dout,
                                  const float *inp, const float *w, const float *mean,
                                  const float *rstd, int M, int C, int acc) {
    for (int m = 0; m < M; m++) {
        const float *x = inp + m * C, *dy = dout + m * C;
        double mg = 0, mgx = 0;
        for (int c = 0; c < C; c++) {
            double xh = (x[c] - (double)mean[m]) * rstd[m];
            double g = (double)dy[c] * w[c];
            mg += g;
            mgx += g * xh;
            dw[c] += (float)(dy[c] * xh);
            db[c] += dy[c];
        }
        mg /= C;
        mgx /= C;
        for (int c = 0; c < C; c++) {
            double xh = (x[c] - (double)mean[m]) * rstd[m];
            double g = (double)dy[c] * w[c];
            double d = rstd[m] * (g - mg - xh * mgx);
            dinp[m * C + c] = (float)(acc ? dinp[m * C + c] + d : d);
        }
    }
}

void ser_gelu_forward_naive(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = (float)(0.5 * x * (1.0 + erf(x / sqrt(2.0))));
    }
}

void ser_gelu_backward_naive(float *dinp, const float *inp, const float *dout, size_t n, int acc) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double cdf = 0.5 * (1.0 + erf(x / sqrt(2.0)));
        double pdf = exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
        double d = dout[i] * (cdf + x * pdf);
        dinp[i] = (float)(acc ? dinp[i] + d : d);
    }
}

void ser_attention_forward_naive(float *out, float *att, const float *qkv, int B, int N, int C,
                                 int H) {
    int hd = C / H;
    double scale = 1.0 / sqrt((double)hd);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *P = att + ((size_t)b * H + h) * N * N;
            for (int i = 0; i < N; i++) {
                double mx = -INFINITY;
                double *s = ser_xmalloc(sizeof(double) * (size_t)N);
                for (int j = 0; j < N; j++) {
                    double a = 0;
                    for (int d = 0; d < hd; d++)
                        a += (double)qkv[((size_t)b * N + i) * 3 * C + h * hd + d] *
                             qkv[((size_t)b * N + j) * 3 * C + C + h * hd + d];
                    s[j] = a * scale;
                    if (s[j] > mx) mx = s[j];
                }
                double z = 0;
                for (int j = 0; j < N; j++) z += exp(s[j] - mx);
                for (int j = 0; j < N; j++) P[i * N + j] = (float)(exp(s[j] - mx) / z);
                for (int d = 0; d < hd; d++) {
                    double a = 0;
                    for (int j = 0; j < N; j++)
                        a += (double)P[i * N + j] *
                             qkv[((size_t)b * N + j) * 3 * C + 2 * C + h * hd + d];
                    out[((size_t)b * N + i) * C + h * hd + d] = (float)a;
                }
                free(s);
            }
        }
}

void ser_attention_backward_naive(float *dqkv, const float *dout, const float *qkv,
                                  const float *att, int B, int N, int C, int H) {
    int hd = C / H;
    double scale = 1.0 / sqrt((double)hd);
    int C3 = 3 * C;
    memset(dqkv, 0, sizeof(float) * (size_t)B * N * C3);
    double *dP = ser_xmalloc(sizeof(double) * (size_t)N * N);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *P = att + ((size_t)b * H + h) * N * N;
#define Q(i, d) qkv[((size_t)b * N + (i)) * C3 + h * hd + (d)]
#define K(i, d) qkv[((size_t)b * N + (i)) * C3 + C + h * hd + (d)]
#define V(i, d) qkv[((size_t)b * N + (i)) * C3 + 2 * C + h * hd + (d)]
#define DO(i, d) dout[((size_t)b * N + (i)) * C + h * hd + (d)]
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++) {
                    double a = 0;
                    for (int d = 0; d < hd; d++) a += (double)DO(i, d) * V(j, d);
                    dP[i * N + j] = a;
                }
            for (int j = 0; j < N; j++)
                for (int d = 0; d < hd; d++) {
                    double a = 0;
                    for (int i = 0; i < N; i++) a += (double)P[i * N + j] * DO(i, d);
                    dqkv[((size_t)b * N + j) * C3 + 2 * C + h * hd + d] = (float)a;
                }
            for (int i = 0; i < N; i++) {
                double s = 0;
                for (int j = 0; j < N; j++) s += (double)P[i * N + j] * dP[i * N + j];
                for (int j = 0; j < N; j++) dP[i * N + j] = P[i * N + j] * (dP[i * N + j] - s);
            }
            for (int i = 0; i < N; i++)
                for (int d = 0; d < hd; d++) {
                    double aq = 0, ak = 0;
                    for (int j = 0; j < N; j++) {
                        aq += dP[i * N + j] * K(j, d);
                        ak += dP[j * N + i] * Q(j, d);
                    }
                    dqkv[((size_t)b * N + i) * C3 + h * hd + d] = (float)(aq * scale);
                    dqkv[((size_t)b * N + i) * C3 + C + h * hd + d] = (float)(ak * scale);
                }
#undef Q
#undef K
#undef V
#undef DO
        }
    free(dP);
}
