// ser_kernels.c — see ser_kernels.h. The naive twins live in ser_kernels_naive.c.
#include "ser_kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ser_base.h"
#include "ser_bf16.h"
#include "ser_fmath.h"

// OpenBLAS (OpenMP build) runs single-threaded when called inside a parallel region.
void openblas_set_num_threads(int num_threads);

static int s_threads = 1;

// OpenBLAS picks its kernels from the CPU model; a model it does not know (virtual machines
// often report a generic "Intel Xeon Processor") gets pre-AVX kernels, 4x slower here on a
// 16-core AVX-512 machine (ViT-S/16 step: 34 s against 8.5 s with OPENBLAS_CORETYPE=SkylakeX).
// Said once per process, with the fix.
static void s_check_blas_core(void) {
    static int done;
    if (done) return;
    done = 1;
    const char *core = openblas_get_corename();
    static const char *const old[] = {"prescott", "core2", "penryn", "dunnington", "nehalem",
                                      "atom", "katmai", "coppermine", "northwood", "banias",
                                      "generic", "unknown"};
    int slow = 0;
    for (size_t i = 0; core && i < sizeof old / sizeof old[0]; i++)
        slow |= strcasecmp(core, old[i]) == 0;
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
    if (slow && (avx2 || avx512))
        ser_log(SER_LL_WARNING,
                "OpenBLAS uses its %s kernels on a CPU with %s: it did not recognise this CPU "
                "model (common on virtual machines), and matrix products run several times "
                "slower. Set OPENBLAS_CORETYPE=%s in the environment of every ser process.",
                core, avx512 ? "AVX-512" : "AVX2", avx512 ? "SkylakeX" : "Haswell");
}

void ser_kernels_set_threads(int n) {
    if (n < 1) n = 1;
    s_threads = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    s_check_blas_core();
}

int ser_kernels_get_threads(void) { return s_threads; }

static int s_precision = SER_PRECISION_FP32;

int ser_kernels_set_precision(int precision, char *err, size_t nerr) {
    if (precision == SER_PRECISION_BF16 && !ser_bf16_supported()) {
        if (err)
            snprintf(err, nerr,
                     "run.precision = bf16 needs native bf16 matrix units (AVX512-BF16 or AMX); "
                     "oneDNN finds %s on this CPU: use run.precision = fp32 (or auto)",
                     ser_bf16_isa());
        return -1;
    }
    s_precision = precision == SER_PRECISION_BF16 ? SER_PRECISION_BF16 : SER_PRECISION_FP32;
    return 0;
}

int ser_kernels_get_precision(void) { return s_precision; }

// Sum and dot with 8 independent accumulators combined in a fixed order: vectorisable without
// -ffast-math, and the same result on every run and thread count.
static inline float s_sum8(const float *x, int n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) a[j] += x[i + j];
    for (; i < n; i++) a[i & 7] += x[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static inline float s_dot8(const float *x, const float *y, int n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) a[j] += x[i + j] * y[i + j];
    for (; i < n; i++) a[i & 7] += x[i] * y[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// --- linear ----------------------------------------------------------------------------------
void ser_matmul_forward(float *out, const float *inp, const float *w, const float *b, int M, int K,
                        int N) {
    float beta = 0.0f;
    if (b) {
#pragma omp parallel for schedule(static)
        for (int m = 0; m < M; m++) memcpy(out + (size_t)m * N, b, sizeof(float) * (size_t)N);
        beta = 1.0f;
    }
    if (s_precision == SER_PRECISION_BF16)
        ser_bf16_gemm(out, N, b != NULL, 0, inp, K, 1, w, K, M, N, K);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, w, K, beta,
                    out, N);
}

// Pairwise column sums in the order documented at ser_colsum_acc (ser_kernels.h). One thread
// sums a block of w <= COLSUM_WMAX columns (x and db point at its first column, rows N apart),
// walking down the rows 16 at a time across the whole block: a 16-row tree per column, then a
// binary counter over these leaves, stack[l] holding the sum of 2^l leaves (2^(l+4) rows) while
// bit l of `full` (the count of full leaves so far) is set. The width only sets the memory
// pattern, never a column's arithmetic, so it may follow N and the thread count.
enum { COLSUM_LEAF = 16, COLSUM_WMAX = 256, COLSUM_WMIN = 64, COLSUM_LEVELS = 28 };

// out[j] = the perfect pairwise tree over rows 0..n-1 (n = 1, 2, 4, 8 or 16) of column j.
static inline void s_tree_rows(float *out, const float *r, size_t N, int n, int w) {
    const float *r0 = r, *r1 = r + N, *r2 = r + 2 * N, *r3 = r + 3 * N;
    const float *r4 = r + 4 * N, *r5 = r + 5 * N, *r6 = r + 6 * N, *r7 = r + 7 * N;
    if (n == 16) {
        const float *r8 = r + 8 * N, *r9 = r + 9 * N, *r10 = r + 10 * N, *r11 = r + 11 * N;
        const float *r12 = r + 12 * N, *r13 = r + 13 * N, *r14 = r + 14 * N, *r15 = r + 15 * N;
        for (int j = 0; j < w; j++)
            out[j] =
                (((r0[j] + r1[j]) + (r2[j] + r3[j])) + ((r4[j] + r5[j]) + (r6[j] + r7[j]))) +
                (((r8[j] + r9[j]) + (r10[j] + r11[j])) + ((r12[j] + r13[j]) + (r14[j] + r15[j])));
    } else if (n == 8) {
        for (int j = 0; j < w; j++)
            out[j] = ((r0[j] + r1[j]) + (r2[j] + r3[j])) + ((r4[j] + r5[j]) + (r6[j] + r7[j]));
    } else if (n == 4) {
        for (int j = 0; j < w; j++) out[j] = (r0[j] + r1[j]) + (r2[j] + r3[j]);
    } else if (n == 2) {
        for (int j = 0; j < w; j++) out[j] = r0[j] + r1[j];
    } else {
        memcpy(out, r0, sizeof(float) * (size_t)w);
    }
}

static void s_colsum_block(float *db, const float *x, int M, size_t N, int w) {
    float stack[COLSUM_LEVELS][COLSUM_WMAX], acc[COLSUM_WMAX], t[COLSUM_WMAX];
    unsigned full = 0;  // M <= INT_MAX: fewer than 2^27 leaves, so l < COLSUM_LEVELS
    int m = 0;
    for (; M - m >= COLSUM_LEAF; m += COLSUM_LEAF) {
        s_tree_rows(acc, x + (size_t)m * N, N, COLSUM_LEAF, w);
        int l = 0;
        for (; full >> l & 1u; l++)
            for (int j = 0; j < w; j++) acc[j] = stack[l][j] + acc[j];
        memcpy(stack[l], acc, sizeof(float) * (size_t)w);
        full++;
    }
    // Fold the groups of the binary expansion of M, smallest (last rows) first: the rest's
    // groups of 1, 2, 4, 8 rows, then the counter's partial sums.
    int rest = M - m, have = 0;
    for (int b = 1; b < COLSUM_LEAF; b *= 2) {
        if (!(rest & b)) continue;
        s_tree_rows(have ? t : acc, x + (size_t)(m + (rest & ~(2 * b - 1))) * N, N, b, w);
        if (have)
            for (int j = 0; j < w; j++) acc[j] = t[j] + acc[j];
        have = 1;
    }
    for (int l = 0; full >> l; l++) {
        if (!(full >> l & 1u)) continue;
        if (have)
            for (int j = 0; j < w; j++) acc[j] = stack[l][j] + acc[j];
        else
            memcpy(acc, stack[l], sizeof(float) * (size_t)w);
        have = 1;
    }
    for (int j = 0; j < w; j++) db[j] += acc[j];
}

void ser_colsum_acc(float *db, const float *x, int M, int N) {
    if (M <= 0 || N <= 0) return;
    // Block width: a multiple of 16 in [COLSUM_WMIN, COLSUM_WMAX] that gives every thread about
    // the same number of columns (wide rows stream better; it changes no bits).
    int nth = omp_get_max_threads(), per = (N + nth - 1) / nth;
    int w = (per + COLSUM_WMAX - 1) / COLSUM_WMAX;  // blocks per thread
    w = ((per + w - 1) / w + 15) / 16 * 16;
    if (w < COLSUM_WMIN) w = COLSUM_WMIN;
    int nblk = (N + w - 1) / w;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int j0 = blk * w;
        s_colsum_block(db + j0, x + j0, M, (size_t)N, N - j0 < w ? N - j0 : w);
    }
}

void ser_matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int M, int K, int N, int acc) {
    if (s_precision == SER_PRECISION_BF16) {
        if (dinp) ser_bf16_gemm(dinp, K, acc, 0, dout, N, 0, w, K, M, K, N);
        if (dw) ser_bf16_gemm(dw, K, 1, 1, dout, N, 0, inp, K, N, K, M);
        if (db) ser_colsum_acc(db, dout, M, N);
        return;
    }
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dout, N, w, K,
                    acc ? 1.0f : 0.0f, dinp, K);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dout, N, inp, K, 1.0f,
                    dw, K);
    if (db) ser_colsum_acc(db, dout, M, N);
}

void ser_sgemm_rows(float *C, int ldc, int trans_a, const float *A, int lda, const float *B, int ldb,
                    int trans_b, int M, int n, int K, float alpha) {
    int nblk = (M + SER_SGEMM_ROWS - 1) / SER_SGEMM_ROWS;
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < nblk; blk++) {
        int r0 = blk * SER_SGEMM_ROWS, m = M - r0 < SER_SGEMM_ROWS ? M - r0 : SER_SGEMM_ROWS;
        const float *Ab = trans_a ? A + r0 : A + (size_t)r0 * lda;
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, K, alpha, Ab, lda, B, ldb, 0.0f,
                    C + (size_t)r0 * ldc, ldc);
    }
}

// --- layernorm -------------------------------------------------------------------------------
void ser_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int M, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) {
        const float *x = inp + (size_t)m * C;
        float *y = out + (size_t)m * C;
        float mu = s_sum8(x, C) / (float)C;
        float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int i = 0;
        for (; i + 8 <= C; i += 8)
            for (int j = 0; j < 8; j++) {
                float d = x[i + j] - mu;
                a[j] += d * d;
            }
        for (; i < C; i++) {
            float d = x[i] - mu;
            a[i & 7] += d * d;
        }
        float var = (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) / (float)C;
        float rs = 1.0f / sqrtf(var + eps);
        for (int c = 0; c < C; c++) y[c] = (x[c] - mu) * rs * w[c] + b[c];
        if (mean) mean[m] = mu;
        if (rstd) rstd[m] = rs;
    }
}

void ser_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *mean, const float *rstd, int M, int C,
                            int acc) {
    // Input gradient, row-parallel: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy*w.
#pragma omp parallel
    {
        float *g = ser_xmalloc(sizeof(float) * 2 * (size_t)C);
        float *xh = g + C;
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            const float *x = inp + (size_t)m * C, *dy = dout + (size_t)m * C;
            float *dx = dinp + (size_t)m * C;
            float mu = mean[m], rs = rstd[m];
            for (int c = 0; c < C; c++) {
                g[c] = dy[c] * w[c];
                xh[c] = (x[c] - mu) * rs;
            }
            float mg = s_sum8(g, C) / (float)C;
            float mgx = s_dot8(g, xh, C) / (float)C;
            if (acc)
                for (int c = 0; c < C; c++) dx[c] += rs * (g[c] - mg - xh[c] * mgx);
            else
                for (int c = 0; c < C; c++) dx[c] = rs * (g[c] - mg - xh[c] * mgx);
        }
        free(g);
    }
    // Parameter gradients, column-block parallel (each column reduced by one thread in row
    // order).
    enum { CB = 64 };
    int nblk = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int j0 = blk * CB, j1 = j0 + CB < C ? j0 + CB : C;
        float aw[CB], ab[CB];
        memset(aw, 0, sizeof aw);
        memset(ab, 0, sizeof ab);
        for (int m = 0; m < M; m++) {
            const float *x = inp + (size_t)m * C, *dy = dout + (size_t)m * C;
            float mu = mean[m], rs = rstd[m];
            for (int j = j0; j < j1; j++) {
                aw[j - j0] += dy[j] * ((x[j] - mu) * rs);
                ab[j - j0] += dy[j];
            }
        }
        for (int j = j0; j < j1; j++) {
            dw[j] += aw[j - j0];
            db[j] += ab[j - j0];
        }
    }
}

// --- GELU ------------------------------------------------------------------------------------
#define SER_SQRT1_2 0.70710678118654752440f
#define SER_GELU_PDF_K 0.39894228040143267794f  // 1/sqrt(2*pi)

void ser_gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + ser_ferf(x * SER_SQRT1_2));
    }
}

static inline float s_gelu_grad(float x, float dy) {
    float cdf = 0.5f * (1.0f + ser_ferf(x * SER_SQRT1_2));
    float pdf = SER_GELU_PDF_K * ser_fexp(-0.5f * x * x);
    return dy * (cdf + x * pdf);
}

void ser_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int acc) {
    if (acc) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dinp[i] += s_gelu_grad(inp[i], dout[i]);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dinp[i] = s_gelu_grad(inp[i], dout[i]);
    }
}

// --- softmax and attention -------------------------------------------------------------------
static void s_softmax_row(float *x, int N) {
    float mx = x[0];
    for (int j = 1; j < N; j++) mx = x[j] > mx ? x[j] : mx;
    for (int j = 0; j < N; j++) x[j] = ser_fexp(x[j] - mx);
    float inv = 1.0f / s_sum8(x, N);
    for (int j = 0; j < N; j++) x[j] *= inv;
}

void ser_softmax_rows(float *x, int M, int N) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) s_softmax_row(x + (size_t)m * N, N);
}

void ser_attention_forward(float *out, float *att, const float *qkv, int B, int N, int C, int H) {
    SER_ASSERT(C % H == 0);
    int hd = C / H;
    float scale = 1.0f / sqrtf((float)hd);
    int C3 = 3 * C;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * N * C3 + (size_t)h * hd;
        const float *k = q + C, *v = q + 2 * C;
        float *P = att + (size_t)bh * N * N;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, hd, scale, q, C3, k, C3, 0.0f,
                    P, N);
        for (int i = 0; i < N; i++) s_softmax_row(P + (size_t)i * N, N);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, N, 1.0f, P, N, v, C3, 0.0f,
                    out + (size_t)b * N * C + (size_t)h * hd, C);
    }
}

void ser_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                            int B, int N, int C, int H) {
    int hd = C / H;
    float scale = 1.0f / sqrtf((float)hd);
    int C3 = 3 * C;
#pragma omp parallel
    {
        float *dP = ser_xmalloc(sizeof(float) * (size_t)N * N);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            size_t qo = (size_t)b * N * C3 + (size_t)h * hd;
            const float *q = qkv + qo, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + qo, *dk = dq + C, *dv = dq + 2 * C;
            const float *P = att + (size_t)bh * N * N;
            const float *dO = dout + (size_t)b * N * C + (size_t)h * hd;
            // dP = dO V^T, dV = P^T dO
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, hd, 1.0f, dO, C, v, C3,
                        0.0f, dP, N);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, hd, N, 1.0f, P, N, dO, C, 0.0f,
                        dv, C3);
            // dS = P * (dP - rowsum(P * dP))
            for (int i = 0; i < N; i++) {
                float *dpr = dP + (size_t)i * N;
                const float *pr = P + (size_t)i * N;
                float s = s_dot8(pr, dpr, N);
                for (int j = 0; j < N; j++) dpr[j] = pr[j] * (dpr[j] - s);
            }
            // dQ = scale dS K, dK = scale dS^T Q
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, N, scale, dP, N, k, C3,
                        0.0f, dq, C3);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, hd, N, scale, dP, N, q, C3,
                        0.0f, dk, C3);
        }
        free(dP);
    }
}

// --- patch embedding -------------------------------------------------------------------------
void ser_patch_im2col(float *cols, const float *img, int B, int H, int W, int P) {
    int gh = H / P, gw = W / P, K = 3 * P * P;
    SER_ASSERT(gh * P == H && gw * P == W);
#pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * gh; bp++) {
        int b = bp / gh, r = bp % gh;
        for (int c = 0; c < gw; c++) {
            float *dst = cols + ((size_t)(b * gh + r) * gw + c) * K;
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < P; ky++)
                    memcpy(dst + (ch * P + ky) * P,
                           img + (((size_t)b * 3 + ch) * H + (size_t)r * P + ky) * W +
                               (size_t)c * P,
                           sizeof(float) * (size_t)P);
        }
    }
}

// --- elementwise -----------------------------------------------------------------------------
void ser_add_inplace(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

void ser_scale_rows(float *x, const float *s, int M, int C, int rows_per_group) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) {
        float f = s[m / rows_per_group];
        float *row = x + (size_t)m * C;
        for (int c = 0; c < C; c++) row[c] *= f;
    }
}
