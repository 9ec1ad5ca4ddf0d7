// ser_optim.c — see ser_optim.h.
//
// Floating-point contraction is off in this file: the EMA's t*m + s*(1 - m) must round both
// products (PyTorch runs them as separate kernels), and the fused multiply-adds that AdamW
// needs are written as explicit fmaf() calls.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "ser_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Tensors below this size run on the calling thread: a parallel region costs more.
#define S_PAR_MIN 32768

void ser_optim_config_default(ser_optim_config *c) {
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->decay = SER_OPTIM_DECAY_ALL;
}

static int s_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

// DINO's get_params_groups rule, plus the table's explicit no-decay flag.
static int s_no_decay_1d(const ser_tinfo *t) {
    return s_ends_with(t->name, ".bias") || t->ndim == 1 || (t->flags & SER_TINFO_NO_DECAY);
}

int ser_optim_init(ser_optim *o, const ser_ptab *tab, const ser_optim_config *cfg,
                   char err[SER_ERR_LEN]) {
    memset(o, 0, sizeof *o);
    if (!(cfg->beta1 >= 0.0 && cfg->beta1 < 1.0) || !(cfg->beta2 >= 0.0 && cfg->beta2 < 1.0)) {
        if (err)
            snprintf(err, SER_ERR_LEN, "optim: betas (%g, %g) must be in [0, 1)", cfg->beta1,
                     cfg->beta2);
        return SER_EINVAL;
    }
    if (!(cfg->eps >= 0.0)) {
        if (err) snprintf(err, SER_ERR_LEN, "optim: eps %g must be >= 0", cfg->eps);
        return SER_EINVAL;
    }
    if (cfg->decay != SER_OPTIM_DECAY_ALL && cfg->decay != SER_OPTIM_DECAY_NO_BIAS_1D) {
        if (err) snprintf(err, SER_ERR_LEN, "optim: unknown decay rule %d", cfg->decay);
        return SER_EINVAL;
    }
    o->tab = tab;
    o->cfg = *cfg;
    size_t total = tab->total ? tab->total : 16;
    o->exp_avg = ser_xaligned(sizeof(float) * total);
    o->exp_avg_sq = ser_xaligned(sizeof(float) * total);
    size_t n = tab->n ? (size_t)tab->n : 1;
    o->step = ser_xcalloc(n, sizeof *o->step);
    o->decayed = ser_xcalloc(n, 1);
    for (int i = 0; i < tab->n; i++) {
        const ser_tinfo *t = &tab->t[i];
        if (t->flags & SER_TINFO_FROZEN) continue;
        o->decayed[i] = cfg->decay == SER_OPTIM_DECAY_ALL ? 1 : !s_no_decay_1d(t);
    }
    return SER_OK;
}

void ser_optim_free(ser_optim *o) {
    if (!o) return;
    free(o->exp_avg);
    free(o->exp_avg_sq);
    free(o->step);
    free(o->decayed);
    memset(o, 0, sizeof *o);
}

void ser_optim_reset(ser_optim *o) {
    size_t total = o->tab->total;
    memset(o->exp_avg, 0, sizeof(float) * total);
    memset(o->exp_avg_sq, 0, sizeof(float) * total);
    memset(o->step, 0, sizeof *o->step * (size_t)o->tab->n);
}

int ser_optim_decays(const ser_optim *o, int i) {
    SER_ASSERT(i >= 0 && i < o->tab->n);
    return o->decayed[i];
}

// --- AdamW -------------------------------------------------------------------------------------
// One tensor of n elements; the scalars are already rounded to fp32 as PyTorch's kernels do.
typedef struct s_adamw_scalars {
    float decay;     // f32(1 - lr*wd), or 1 (skipped) when the tensor is not decayed
    int do_decay;
    float b1, one_minus_b1, b2, one_minus_b2;
    float bc2_sqrt;  // f32(sqrt(1 - b2^step))
    float eps;
    float neg_step_size;  // f32(-(lr / (1 - b1^step)))
} s_adamw_scalars;

static void s_adamw_range(float *p, float *m, float *v, const float *g, size_t n,
                          const s_adamw_scalars *s) {
    for (size_t i = 0; i < n; i++) {
        float pi = p[i];
        if (s->do_decay) pi = pi * s->decay;
        float gi = g[i];
        float mi = fmaf(gi, s->one_minus_b1, m[i] * s->b1);
        float vi = fmaf(s->one_minus_b2 * gi, gi, v[i] * s->b2);
        float d = sqrtf(vi) / s->bc2_sqrt + s->eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + (s->neg_step_size * mi) / d;
    }
}

void ser_optim_step(ser_optim *o, float *params, const float *grads, double lr, double wd,
                    const unsigned char *active) {
    const ser_ptab *tab = o->tab;
    const double b1 = o->cfg.beta1, b2 = o->cfg.beta2;
    for (int k = 0; k < tab->n; k++) {
        const ser_tinfo *t = &tab->t[k];
        if (t->flags & SER_TINFO_FROZEN) continue;
        if (active && !active[k]) continue;
        int64_t step = ++o->step[k];
        // Python: step = step_t.item() is a float; beta ** step is pow() on doubles.
        double bc1 = 1.0 - pow(b1, (double)step);
        double bc2 = 1.0 - pow(b2, (double)step);
        double step_size = lr / bc1;
        s_adamw_scalars s;
        s.do_decay = o->decayed[k] && wd != 0.0;
        s.decay = (float)(1.0 - lr * wd);
        s.b1 = (float)b1;
        s.one_minus_b1 = (float)(1.0 - b1);
        s.b2 = (float)b2;
        s.one_minus_b2 = (float)(1.0 - b2);
        s.bc2_sqrt = (float)sqrt(bc2);
        s.eps = (float)o->cfg.eps;
        s.neg_step_size = (float)(-step_size);
        float *p = params + t->offset, *m = o->exp_avg + t->offset, *v = o->exp_avg_sq + t->offset;
        const float *g = grads + t->offset;
        size_t n = t->numel;
        if (n < S_PAR_MIN) {
            s_adamw_range(p, m, v, g, n, &s);
            continue;
        }
        // Element-wise: the split does not change any result.
        const size_t chunk = 4096;
        long nchunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
        for (long c = 0; c < nchunks; c++) {
            size_t lo = (size_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
            s_adamw_range(p + lo, m + lo, v + lo, g + lo, len, &s);
        }
    }
}

const char *ser_optim_state_key(const ser_optim *o, int i, int part, char *buf, size_t n) {
    SER_ASSERT(i >= 0 && i < o->tab->n);
    static const char *const suffix[] = {"exp_avg", "exp_avg_sq", "step"};
    SER_ASSERT(part >= 0 && part <= SER_OPTIM_STATE_STEP);
    snprintf(buf, n, "optimizer.%s.%s", o->tab->t[i].name, suffix[part]);
    return buf;
}

int ser_optim_torch_index(const ser_optim *o, int i) {
    const ser_ptab *tab = o->tab;
    SER_ASSERT(i >= 0 && i < tab->n);
    if (o->cfg.decay == SER_OPTIM_DECAY_ALL) return i;
    // get_params_groups: requires_grad only; group 0 = regularized, group 1 = not regularized.
    if (tab->t[i].flags & SER_TINFO_FROZEN) return -1;
    int idx = 0;
    if (o->decayed[i]) {
        for (int k = 0; k < i; k++)
            if (!(tab->t[k].flags & SER_TINFO_FROZEN) && o->decayed[k]) idx++;
        return idx;
    }
    for (int k = 0; k < tab->n; k++)
        if (!(tab->t[k].flags & SER_TINFO_FROZEN) && o->decayed[k]) idx++;
    for (int k = 0; k < i; k++)
        if (!(tab->t[k].flags & SER_TINFO_FROZEN) && !o->decayed[k]) idx++;
    return idx;
}

// --- clipping ----------------------------------------------------------------------------------
static double s_sumsq(const float *g, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * (double)g[i];
    return s;
}

static void s_scale(float *g, size_t n, float c) {
    if (n < S_PAR_MIN) {
        for (size_t i = 0; i < n; i++) g[i] = g[i] * c;
        return;
    }
#pragma omp parallel for schedule(static)
    for (long i = 0; i < (long)n; i++) g[i] = g[i] * c;
}

// torch: `clip / (norm + 1e-6)` on an fp32 0-d tensor is reciprocal(norm + 1e-6) * clip.
static float s_clip_coef(double clip, float norm) {
    float denom = norm + (float)1e-6;
    float recip = 1.0f / denom;
    return recip * (float)clip;
}

double ser_optim_clip_grad(const ser_ptab *tab, float *grads, double clip, int mode,
                           const unsigned char *active, float *norms, int *n_clipped) {
    double total = 0.0;
    int clipped = 0;
    for (int k = 0; k < tab->n; k++) {
        const ser_tinfo *t = &tab->t[k];
        int skip = (t->flags & SER_TINFO_FROZEN) || (active && !active[k]);
        if (skip) {
            if (norms) norms[k] = NAN;
            continue;
        }
        double ss = s_sumsq(grads + t->offset, t->numel);
        total += ss;
        float nk = (float)sqrt(ss);
        if (norms) norms[k] = nk;
        if (clip > 0.0 && mode == SER_OPTIM_CLIP_PER_PARAM) {
            float c = s_clip_coef(clip, nk);
            if (c < 1.0f) {
                s_scale(grads + t->offset, t->numel, c);
                clipped++;
            }
        }
    }
    double total_norm = sqrt(total);
    if (clip > 0.0 && mode == SER_OPTIM_CLIP_GLOBAL) {
        float c = s_clip_coef(clip, (float)total_norm);
        // clamp(max=1) then multiply every gradient; multiplying by 1 changes nothing, so skip it.
        if (c < 1.0f) {
            for (int k = 0; k < tab->n; k++) {
                const ser_tinfo *t = &tab->t[k];
                if ((t->flags & SER_TINFO_FROZEN) || (active && !active[k])) continue;
                s_scale(grads + t->offset, t->numel, c);
                clipped++;
            }
        }
    }
    if (n_clipped) *n_clipped = clipped;
    return total_norm;
}

// --- EMA ---------------------------------------------------------------------------------------
static void s_ema_range(float *t, const float *s, size_t n, float m, float one_minus_m,
                        int method) {
    if (method == SER_OPTIM_EMA_DINO) {
        // param_k.data.mul_(m) first; (1 - m) * param_q is read afterwards (it may be param_k).
        for (size_t i = 0; i < n; i++) {
            float x = t[i] * m;
            t[i] = x;
            float y = one_minus_m * s[i];
            t[i] = x + y;
        }
    } else {
        // Both products are formed from the old values before the assignment.
        for (size_t i = 0; i < n; i++) {
            float a = t[i] * m, b = s[i] * one_minus_m;
            t[i] = a + b;
        }
    }
}

void ser_optim_ema(const ser_ptab *tab, float *target, const float *source, double m, int method) {
    SER_ASSERT(method == SER_OPTIM_EMA_MOCO || method == SER_OPTIM_EMA_DINO);
    float mf = (float)m, omf = (float)(1.0 - m);
    for (int k = 0; k < tab->n; k++) {
        const ser_tinfo *t = &tab->t[k];
        float *tp = target + t->offset;
        const float *sp = source + t->offset;
        size_t n = t->numel;
        if (n < S_PAR_MIN) {
            s_ema_range(tp, sp, n, mf, omf, method);
            continue;
        }
        const size_t chunk = 4096;
        long nchunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
        for (long c = 0; c < nchunks; c++) {
            size_t lo = (size_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
            s_ema_range(tp + lo, sp + lo, len, mf, omf, method);
        }
    }
}
