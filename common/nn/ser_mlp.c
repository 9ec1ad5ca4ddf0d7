// ser_mlp.c — see ser_mlp.h.
#include "ser_mlp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_kernels.h"
#include "ser_rng.h"

int ser_mlp_moco_spec(ser_mlp_layer_spec *spec, int num_layers, int in, int hidden, int out,
                      int last_bn) {
    SER_ASSERT(num_layers >= 1 && num_layers <= SER_MLP_MAX_LAYERS);
    memset(spec, 0, sizeof *spec * (size_t)num_layers);
    for (int l = 0; l < num_layers; l++) {
        int last = l == num_layers - 1;
        spec[l].in = l == 0 ? in : hidden;
        spec[l].out = last ? out : hidden;
        spec[l].bias = 0;
        spec[l].bn = last ? (last_bn ? SER_BN_PLAIN : SER_BN_NONE) : SER_BN_AFFINE;
        spec[l].act = last ? SER_ACT_NONE : SER_ACT_RELU;
    }
    return num_layers;
}

static size_t s_add(ser_ptab *t, const char *prefix, int idx, const char *what, unsigned flags,
                    int ndim, int64_t d0, int64_t d1) {
    char name[SER_TINFO_NAME_LEN];
    int n = snprintf(name, sizeof name, "%s%d.%s", prefix, idx, what);
    SER_ASSERT(n > 0 && (size_t)n < sizeof name);
    int64_t shape[2] = {d0, d1};
    return ser_ptab_add(t, name, flags, ndim, shape);
}

int ser_mlp_register(ser_mlp *m, const ser_mlp_layer_spec *spec, int n, ser_ptab *tab,
                     ser_ptab *btab, const char *prefix, char err[SER_ERR_LEN]) {
    memset(m, 0, sizeof *m);
    if (n < 1 || n > SER_MLP_MAX_LAYERS) {
        snprintf(err, SER_ERR_LEN, "mlp %s: %d layers not in [1, %d]", prefix, n, SER_MLP_MAX_LAYERS);
        return SER_EINVAL;
    }
    unsigned nd = SER_TINFO_NO_DECAY;
    int idx = 0;  // nn.Sequential index: every Linear, BatchNorm and activation takes one
    for (int l = 0; l < n; l++) {
        const ser_mlp_layer_spec *s = &spec[l];
        if (s->in < 1 || s->out < 1 || (l > 0 && s->in != spec[l - 1].out)) {
            snprintf(err, SER_ERR_LEN, "mlp %s: layer %d has widths %d -> %d", prefix, l, s->in,
                     s->out);
            return SER_EINVAL;
        }
        ser_mlp_layer *L = &m->layer[l];
        L->s = *s;
        if (s->conv1x1) {
            char name[SER_TINFO_NAME_LEN];
            int k = snprintf(name, sizeof name, "%s%d.weight", prefix, idx);
            SER_ASSERT(k > 0 && (size_t)k < sizeof name);
            int64_t shape[4] = {s->out, s->in, 1, 1};
            L->w = ser_ptab_add(tab, name, 0, 4, shape);
        } else {
            L->w = s_add(tab, prefix, idx, "weight", 0, 2, s->out, s->in);
        }
        if (s->bias) L->b = s_add(tab, prefix, idx, "bias", nd, 1, s->out, 0);
        idx++;
        if (s->bn == SER_BN_LAYERNORM) {
            L->bnw = s_add(tab, prefix, idx, "weight", nd, 1, s->out, 0);
            L->bnb = s_add(tab, prefix, idx, "bias", nd, 1, s->out, 0);
            idx++;
        } else if (s->bn != SER_BN_NONE) {
            if (s->bn == SER_BN_AFFINE) {
                L->bnw = s_add(tab, prefix, idx, "weight", nd, 1, s->out, 0);
                L->bnb = s_add(tab, prefix, idx, "bias", nd, 1, s->out, 0);
            }
            L->rm = s_add(btab, prefix, idx, "running_mean", 0, 1, s->out, 0);
            L->rv = s_add(btab, prefix, idx, "running_var", 0, 1, s->out, 0);
            L->nbt = s_add(btab, prefix, idx, "num_batches_tracked", SER_TINFO_COUNTER, 0, 0, 0);
            idx++;
        }
        if (s->act != SER_ACT_NONE) idx++;
    }
    m->n = n;
    return SER_OK;
}

void ser_mlp_bind(ser_mlp *m, float *params, float *grads, float *buffers) {
    m->params = params;
    m->grads = grads;
    m->buffers = buffers;
}

void ser_mlp_acts_free(ser_mlp_acts *a) {
    if (!a) return;
    free(a->mem);
    memset(a, 0, sizeof *a);
}

void ser_mlp_init_weights(ser_mlp *m, uint64_t seed) {
    for (int l = 0; l < m->n; l++) {
        ser_mlp_layer *L = &m->layer[l];
        ser_rng r;
        ser_rng_init(&r, seed, (uint32_t)l, 1, SER_RNG_INIT);
        double bound = 1.0 / sqrt((double)L->s.in);  // kaiming_uniform(a=sqrt 5)
        float *w = m->params + L->w;
        for (size_t i = 0; i < (size_t)L->s.out * L->s.in; i++)
            w[i] = (float)((2.0 * ser_rng_uniform_double(&r) - 1.0) * bound);
        if (L->s.bias)
            for (int i = 0; i < L->s.out; i++)
                m->params[L->b + i] = (float)((2.0 * ser_rng_uniform_double(&r) - 1.0) * bound);
        if (L->s.bn == SER_BN_AFFINE || L->s.bn == SER_BN_LAYERNORM)
            for (int i = 0; i < L->s.out; i++) m->params[L->bnw + i] = 1.0f, m->params[L->bnb + i] = 0.0f;
        if (L->s.bn != SER_BN_NONE && L->s.bn != SER_BN_LAYERNORM && m->buffers) {
            for (int i = 0; i < L->s.out; i++)
                m->buffers[L->rm + i] = 0.0f, m->buffers[L->rv + i] = 1.0f;
            m->buffers[L->nbt] = 0.0f;
        }
    }
}

// --- BatchNorm1d (training mode) -------------------------------------------------------------
void ser_batchnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int M, int C, float *run_mean, float *run_var) {
    enum { CB = 16 };
    int nblk = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * CB, c1 = c0 + CB < C ? c0 + CB : C;
        double s[CB] = {0}, v[CB] = {0};
        for (int m = 0; m < M; m++)
            for (int c = c0; c < c1; c++) s[c - c0] += (double)x[(size_t)m * C + c];
        for (int c = c0; c < c1; c++) s[c - c0] /= M;
        for (int m = 0; m < M; m++)
            for (int c = c0; c < c1; c++) {
                double d = (double)x[(size_t)m * C + c] - s[c - c0];
                v[c - c0] += d * d;
            }
        for (int c = c0; c < c1; c++) {
            mean[c] = (float)s[c - c0];
            rstd[c] = (float)(1.0 / sqrt(v[c - c0] / M + (double)SER_BN_EPS));
            if (run_mean) {  // PyTorch: momentum * stat + (1 - momentum) * running, in double
                double unbiased = M > 1 ? v[c - c0] / (M - 1) : v[c - c0];
                run_mean[c] = (float)(SER_BN_MOMENTUM * s[c - c0] +
                                      (1.0 - SER_BN_MOMENTUM) * (double)run_mean[c]);
                run_var[c] = (float)(SER_BN_MOMENTUM * unbiased +
                                     (1.0 - SER_BN_MOMENTUM) * (double)run_var[c]);
            }
        }
        for (int m = 0; m < M; m++)
            for (int c = c0; c < c1; c++) {
                float xh = (x[(size_t)m * C + c] - mean[c]) * rstd[c];
                y[(size_t)m * C + c] = w ? xh * w[c] + b[c] : xh;
            }
    }
}

void ser_batchnorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, const float *mean, const float *rstd, int M, int C) {
    enum { CB = 16 };
    int nblk = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * CB, c1 = c0 + CB < C ? c0 + CB : C;
        double sdy[CB] = {0}, sdyx[CB] = {0};
        for (int m = 0; m < M; m++)
            for (int c = c0; c < c1; c++) {
                double g = dy[(size_t)m * C + c];
                sdy[c - c0] += g;
                sdyx[c - c0] += g * (((double)x[(size_t)m * C + c] - (double)mean[c]) * (double)rstd[c]);
            }
        double gm[CB], gx[CB], scale[CB];
        for (int c = c0; c < c1; c++) {
            if (dw) dw[c] += (float)sdyx[c - c0];
            if (db) db[c] += (float)sdy[c - c0];
            gm[c - c0] = sdy[c - c0] / M, gx[c - c0] = sdyx[c - c0] / M;
            scale[c - c0] = (double)rstd[c] * (w ? (double)w[c] : 1.0);
        }
        // Row by row (each element's arithmetic is the same in any order): the block's columns
        // are one cache line of each row, read once instead of once per column.
        for (int m = 0; m < M; m++)
            for (int c = c0; c < c1; c++) {
                double xh = ((double)x[(size_t)m * C + c] - (double)mean[c]) * (double)rstd[c];
                dx[(size_t)m * C + c] = (float)(scale[c - c0] * ((double)dy[(size_t)m * C + c] -
                                                                 gm[c - c0] - xh * gx[c - c0]));
            }
    }
}

// --- MLP -------------------------------------------------------------------------------------
static size_t s_layout(const ser_mlp *m, ser_mlp_acts *a, int M, int alloc) {
    size_t off = 0, maxw = 0;
#define TAKE(ptr, n)                                 \
    do {                                             \
        if (alloc) (ptr) = a->mem + off;             \
        off += ((size_t)(n) + 15) & ~(size_t)15;     \
    } while (0)
    for (int l = 0; l < m->n; l++) {
        const ser_mlp_layer_spec *s = &m->layer[l].s;
        size_t mo = (size_t)M * s->out;
        TAKE(a->x[l], (size_t)M * s->in);
        TAKE(a->h[l], mo);
        if (s->bn != SER_BN_NONE) {  // mean/rstd per column (BN) or per row (LN)
            size_t ns = s->bn == SER_BN_LAYERNORM ? (size_t)M : (size_t)s->out;
            TAKE(a->a[l], mo);
            TAKE(a->mean[l], ns);
            TAKE(a->rstd[l], ns);
        } else if (alloc) {
            a->a[l] = a->h[l];
        }
        maxw = maxw > (size_t)s->in ? maxw : (size_t)s->in;
        maxw = maxw > (size_t)s->out ? maxw : (size_t)s->out;
    }
    TAKE(a->x[m->n], (size_t)M * m->layer[m->n - 1].s.out);
    TAKE(a->d0, (size_t)M * maxw);
    TAKE(a->d1, (size_t)M * maxw);
#undef TAKE
    return off;
}

const float *ser_mlp_forward(const ser_mlp *m, ser_mlp_acts *a, const float *x, int M,
                             int update_running) {
    SER_ASSERT(M >= 1);
    size_t need = s_layout(m, a, M, 0);
    if (need > a->cap) {
        free(a->mem);
        a->mem = ser_xaligned(sizeof(float) * need);
        a->cap = need;
    }
    s_layout(m, a, M, 1);
    a->M = M;
    memcpy(a->x[0], x, sizeof(float) * (size_t)M * m->layer[0].s.in);
    for (int l = 0; l < m->n; l++) {
        const ser_mlp_layer *L = &m->layer[l];
        const ser_mlp_layer_spec *s = &L->s;
        const float *p = m->params;
        ser_matmul_forward(a->h[l], a->x[l], p + L->w, s->bias ? p + L->b : NULL, M, s->in, s->out);
        if (s->bn == SER_BN_LAYERNORM) {
            ser_layernorm_forward(a->a[l], a->mean[l], a->rstd[l], a->h[l], p + L->bnw, p + L->bnb,
                                  M, s->out, 1e-5f);
        } else if (s->bn != SER_BN_NONE) {
            SER_ASSERT(M >= 2);  // PyTorch: "Expected more than 1 value per channel"
            int aff = s->bn == SER_BN_AFFINE;
            int upd = update_running && m->buffers;
            ser_batchnorm_forward(a->a[l], a->mean[l], a->rstd[l], a->h[l], aff ? p + L->bnw : NULL,
                                  aff ? p + L->bnb : NULL, M, s->out,
                                  upd ? m->buffers + L->rm : NULL, upd ? m->buffers + L->rv : NULL);
            if (upd) m->buffers[L->nbt] += 1.0f;
        }
        size_t n = (size_t)M * s->out;
        float *pre = a->a[l], *y = a->x[l + 1];
        if (s->act == SER_ACT_RELU) {
            // !(x <= 0) keeps NaN as NaN, as torch.relu does (x > 0 ? x : 0 would hide it).
            for (size_t i = 0; i < n; i++) y[i] = !(pre[i] <= 0.0f) ? pre[i] : 0.0f;
        } else if (s->act == SER_ACT_GELU) {
            ser_gelu_forward(y, pre, n);
        } else {
            memcpy(y, pre, sizeof(float) * n);
        }
    }
    return a->x[m->n];
}

void ser_mlp_backward(const ser_mlp *m, ser_mlp_acts *a, float *dx, const float *dy) {
    SER_ASSERT(m->grads && a->mem);
    int M = a->M;
    float *d = a->d0, *other = a->d1;
    memcpy(d, dy, sizeof(float) * (size_t)M * m->layer[m->n - 1].s.out);
    for (int l = m->n - 1; l >= 0; l--) {
        const ser_mlp_layer *L = &m->layer[l];
        const ser_mlp_layer_spec *s = &L->s;
        size_t n = (size_t)M * s->out;
        if (s->act == SER_ACT_RELU) {
            const float *pre = a->a[l];
            for (size_t i = 0; i < n; i++) d[i] = !(pre[i] <= 0.0f) ? d[i] : 0.0f;
        } else if (s->act == SER_ACT_GELU) {
            ser_gelu_backward(d, a->a[l], d, n, 0);
        }
        if (s->bn == SER_BN_LAYERNORM) {
            ser_layernorm_backward(other, m->grads + L->bnw, m->grads + L->bnb, d, a->h[l],
                                   m->params + L->bnw, a->mean[l], a->rstd[l], M, s->out, 0);
            float *t = d;
            d = other, other = t;
        } else if (s->bn != SER_BN_NONE) {
            int aff = s->bn == SER_BN_AFFINE;
            ser_batchnorm_backward(other, aff ? m->grads + L->bnw : NULL, aff ? m->grads + L->bnb : NULL,
                                   d, a->h[l], aff ? m->params + L->bnw : NULL, a->mean[l],
                                   a->rstd[l], M, s->out);
            float *t = d;
            d = other, other = t;
        }
        float *din = l == 0 ? dx : other;
        ser_matmul_backward(din, m->grads + L->w, s->bias ? m->grads + L->b : NULL, d, a->x[l],
                            m->params + L->w, M, s->in, s->out, 0);
        if (l > 0) {
            float *t = d;
            d = other, other = t;
        }
    }
}
