// ser_vit.c — see ser_vit.h.
#include "ser_vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_interp.h"
#include "ser_kernels.h"
#include "ser_rng.h"

// --- configuration ---------------------------------------------------------------------------
int ser_vit_config_preset(ser_vit_config *c, const char *name, int img_size, int patch) {
    memset(c, 0, sizeof *c);
    if (strcmp(name, "vit_tiny") == 0)
        c->dim = 192, c->heads = 3;
    else if (strcmp(name, "vit_small") == 0)
        c->dim = 384, c->heads = 6;
    else if (strcmp(name, "vit_base") == 0)
        c->dim = 768, c->heads = 12;
    else
        return SER_EINVAL;
    c->img_size = img_size;
    c->patch = patch;
    c->depth = 12;
    c->mlp_hidden = 4 * c->dim;
    c->cls_layer = 3;
    c->drop_path_rate = 0.0f;
    c->ln_eps = 1e-6f;
    return SER_OK;
}

int ser_vit_config_check(const ser_vit_config *c, char err[SER_ERR_LEN]) {
#define CHECK(cond, ...)                         \
    if (!(cond)) {                               \
        snprintf(err, SER_ERR_LEN, __VA_ARGS__); \
        return SER_ECONFIG;                      \
    }
    CHECK(c->patch >= 1 && c->patch <= 64, "vit: patch size %d not in [1, 64]", c->patch);
    CHECK(c->img_size >= c->patch && c->img_size % c->patch == 0,
          "vit: img_size %d is not a positive multiple of the patch size %d", c->img_size,
          c->patch);
    CHECK(c->dim >= 1 && c->heads >= 1 && c->dim % c->heads == 0,
          "vit: dim %d is not a multiple of heads %d", c->dim, c->heads);
    CHECK(c->depth >= 1 && c->depth <= 64, "vit: depth %d not in [1, 64]", c->depth);
    CHECK(c->mlp_hidden >= 1, "vit: mlp_hidden %d must be positive", c->mlp_hidden);
    CHECK(c->cls_layer >= 1 && c->cls_layer <= c->depth,
          "vit: cls_layer %d not in [1, depth=%d]", c->cls_layer, c->depth);
    CHECK(c->drop_path_rate >= 0.0f && c->drop_path_rate < 1.0f,
          "vit: drop_path_rate %g not in [0, 1)", (double)c->drop_path_rate);
    CHECK(c->ln_eps > 0.0f, "vit: ln_eps must be positive");
#undef CHECK
    return SER_OK;
}

// --- parameters ------------------------------------------------------------------------------
static const char *s_prefix;

static size_t s_add(ser_vit *v, const char *name, unsigned flags, int ndim, int64_t d0, int64_t d1,
                    int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    char full[SER_TINFO_NAME_LEN];
    int n = snprintf(full, sizeof full, "%s%s", s_prefix, name);
    SER_ASSERT(n > 0 && (size_t)n < sizeof full);
    return ser_ptab_add(v->tabp, full, flags, ndim, shape);
}

int ser_vit_register(ser_vit *v, const ser_vit_config *cfg, ser_ptab *tab, const char *prefix,
                     char err[SER_ERR_LEN]) {
    memset(v, 0, sizeof *v);
    int rc = ser_vit_config_check(cfg, err);
    if (rc) return rc;
    if (strlen(prefix) > 64) {
        snprintf(err, SER_ERR_LEN, "vit: prefix '%s' longer than 64 characters", prefix);
        return SER_EINVAL;
    }
    v->cfg = *cfg;
    v->tabp = tab;
    v->first = tab->n;
    v->prefix_len = (int)strlen(prefix);
    s_prefix = prefix;
    int C = cfg->dim, P = cfg->patch, Hd = cfg->mlp_hidden;
    v->g0h = v->g0w = cfg->img_size / P;
    v->baseline = cfg->cls_layer == cfg->depth;
    int N0 = v->g0h * v->g0w + (v->baseline ? 1 : 0);
    unsigned nd = SER_TINFO_NO_DECAY;
    unsigned pf = cfg->freeze_patch_embed ? SER_TINFO_FROZEN : 0;
    v->off_cls = s_add(v, "cls_token", 0, 3, 1, 1, C, 0);
    v->off_pos = s_add(v, "pos_embed", 0, 3, 1, N0, C, 0);
    v->off_pw = s_add(v, "patch_embed.proj.weight", pf, 4, C, 3, P, P);
    v->off_pb = s_add(v, "patch_embed.proj.bias", pf | nd, 1, C, 0, 0, 0);
    v->blk = ser_xcalloc((size_t)cfg->depth, sizeof *v->blk);
    char name[SER_TINFO_NAME_LEN];
    for (int l = 0; l < cfg->depth; l++) {
        ser_vit_block_off *o = &v->blk[l];
#define P1(field, suffix, flags, n0) \
    snprintf(name, sizeof name, "blocks.%d." suffix, l), o->field = s_add(v, name, flags, 1, n0, 0, 0, 0)
#define P2(field, suffix, n0, n1) \
    snprintf(name, sizeof name, "blocks.%d." suffix, l), o->field = s_add(v, name, 0, 2, n0, n1, 0, 0)
        P1(n1w, "norm1.weight", nd, C);
        P1(n1b, "norm1.bias", nd, C);
        P2(qkvw, "attn.qkv.weight", 3 * C, C);
        P1(qkvb, "attn.qkv.bias", nd, 3 * C);
        P2(projw, "attn.proj.weight", C, C);
        P1(projb, "attn.proj.bias", nd, C);
        P1(n2w, "norm2.weight", nd, C);
        P1(n2b, "norm2.bias", nd, C);
        P2(fc1w, "mlp.fc1.weight", Hd, C);
        P1(fc1b, "mlp.fc1.bias", nd, Hd);
        P2(fc2w, "mlp.fc2.weight", C, Hd);
        P1(fc2b, "mlp.fc2.bias", nd, C);
#undef P1
#undef P2
    }
    v->off_norm_w = s_add(v, "norm.weight", nd, 1, C, 0, 0, 0);
    v->off_norm_b = s_add(v, "norm.bias", nd, 1, C, 0, 0, 0);
    if (!v->baseline) {
        v->off_neq_w = s_add(v, "norm_equiv.weight", nd, 1, C, 0, 0, 0);
        v->off_neq_b = s_add(v, "norm_equiv.bias", nd, 1, C, 0, 0, 0);
    }
    v->count = tab->n - v->first;
    return SER_OK;
}

void ser_vit_bind(ser_vit *v, float *params, float *grads) {
    v->params = params;
    v->grads = grads;
}

int ser_vit_init(ser_vit *v, const ser_vit_config *cfg, char err[SER_ERR_LEN]) {
    ser_ptab tab;
    ser_ptab_init(&tab);
    int rc = ser_vit_register(v, cfg, &tab, "", err);
    if (rc) {
        ser_ptab_free(&tab);
        return rc;
    }
    v->own_tab = tab;
    v->tabp = &v->own_tab;
    v->owns_arena = 1;
    v->params = ser_xaligned(sizeof(float) * tab.total);
    v->grads = ser_xaligned(sizeof(float) * tab.total);
    return SER_OK;
}

void ser_vit_free(ser_vit *v) {
    if (!v) return;
    if (v->owns_arena) {
        free(v->params);
        free(v->grads);
        ser_ptab_free(&v->own_tab);
    }
    free(v->blk);
    memset(v, 0, sizeof *v);
}

size_t ser_vit_span(const ser_vit *v, size_t *first_offset) {
    const ser_tinfo *a = &v->tabp->t[v->first], *b = &v->tabp->t[v->first + v->count - 1];
    if (first_offset) *first_offset = a->offset;
    return b->offset + ((b->numel + 15) & ~(size_t)15) - a->offset;
}

void ser_vit_zero_grad(ser_vit *v) {
    size_t off, n = ser_vit_span(v, &off);
    memset(v->grads + off, 0, sizeof(float) * n);
}

static void s_fill_uniform(float *x, size_t n, ser_rng *r, double bound) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((2.0 * ser_rng_uniform_double(r) - 1.0) * bound);
}

// timm/reference trunc_normal_(std) truncates at absolute +-2 (builder/utils.py:487-525).
static void s_fill_trunc_normal(float *x, size_t n, ser_rng *r, double std) {
    for (size_t i = 0; i < n; i++) {
        double g;
        do g = ser_rng_normal(r) * std;
        while (g < -2.0 || g > 2.0);
        x[i] = (float)g;
    }
}

void ser_vit_init_weights(ser_vit *v, int scheme, uint64_t seed) {
    int P = v->cfg.patch;
    for (int i = 0; i < v->count; i++) {
        const ser_tinfo *t = &v->tabp->t[v->first + i];
        float *x = v->params + t->offset;
        memset(x, 0, sizeof(float) * t->numel);
        ser_rng r;
        ser_rng_init(&r, seed, (uint32_t)i, 0, SER_RNG_INIT);
        const char *nm = t->name + v->prefix_len;
        size_t len = strlen(nm);
        int is_w = len > 7 && strcmp(nm + len - 7, ".weight") == 0;
        int is_norm = strstr(nm, "norm") != NULL;
        if (strcmp(nm, "cls_token") == 0) {
            if (scheme == SER_VIT_INIT_MOCO)
                for (size_t k = 0; k < t->numel; k++) x[k] = (float)(ser_rng_normal(&r) * 1e-6);
            else
                s_fill_trunc_normal(x, t->numel, &r, 0.02);
        } else if (strcmp(nm, "pos_embed") == 0) {
            s_fill_trunc_normal(x, t->numel, &r, 0.02);
        } else if (strncmp(nm, "patch_embed", 11) == 0) {
            // PyTorch's Conv2d default: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(fan_in)) for both
            // weight and bias, fan_in = 3*P*P.
            s_fill_uniform(x, t->numel, &r, 1.0 / sqrt(3.0 * P * P));
        } else if (is_norm) {
            if (is_w)
                for (size_t k = 0; k < t->numel; k++) x[k] = 1.0f;
        } else if (is_w) {
            if (scheme == SER_VIT_INIT_MOCO) {
                double fan_out = (double)t->shape[0], fan_in = (double)t->shape[1];
                if (strstr(nm, "attn.qkv")) fan_out /= 3.0;  // q, k, v counted separately
                s_fill_uniform(x, t->numel, &r, sqrt(6.0 / (fan_in + fan_out)));
            } else {
                s_fill_trunc_normal(x, t->numel, &r, 0.02);
            }
        }  // Linear biases stay 0.
    }
}

double ser_vit_flops(const ser_vit_config *c, int B, int gh, int gw) {
    double C = c->dim, Hd = c->mlp_hidden, NP = (double)gh * gw, K = 3.0 * c->patch * c->patch;
    double f = 2.0 * B * NP * K * C;  // patch embedding
    for (int l = 0; l < c->depth; l++) {
        double T = (l < c->cls_layer && c->cls_layer < c->depth) ? NP : NP + 1;
        double M = B * T;
        f += 2.0 * M * C * (3 * C + C + 2 * Hd);  // qkv, proj, fc1, fc2
        f += 2.0 * 2.0 * B * T * T * C;           // q k^T and P v over all heads
    }
    return f;
}

// --- activations -----------------------------------------------------------------------------
void ser_vit_acts_free(ser_vit_acts *a) {
    if (!a) return;
    free(a->mem);
    free(a->xin);
    memset(a, 0, sizeof *a);
}

// Token count seen by block l.
static int s_tokens(const ser_vit *v, int l, int NP) {
    return (v->baseline || l >= v->cfg.cls_layer) ? NP + 1 : NP;
}

// Lays out (and when alloc=1 allocates) every buffer of a; returns floats needed.
static size_t s_layout(ser_vit *v, ser_vit_acts *a, int alloc) {
    const ser_vit_config *c = &v->cfg;
    int B = a->B, NP = a->NP, N1 = a->N1, C = c->dim, Hd = c->mlp_hidden, L = c->depth;
    int K = 3 * c->patch * c->patch, Hh = c->heads;
    size_t off = 0;
    float *base = alloc ? a->mem : NULL;
#define TAKE(ptr, n)                                                            \
    do {                                                                        \
        if (alloc) (ptr) = base + off;                                          \
        off += ((size_t)(n) + 15) & ~(size_t)15;                                \
    } while (0)
    TAKE(a->cols, (size_t)B * NP * K);
    TAKE(a->pos, (size_t)N1 * C);
    for (int l = 0; l < L; l++) {
        size_t M = (size_t)B * s_tokens(v, l, NP), T = (size_t)s_tokens(v, l, NP);
        TAKE(a->xin[l], M * C);
        TAKE(a->xmid[l], M * C);
        TAKE(a->ln1[l], M * C);
        TAKE(a->ln1m[l], M);
        TAKE(a->ln1r[l], M);
        TAKE(a->qkv[l], M * 3 * C);
        TAKE(a->att[l], (size_t)B * Hh * T * T);
        TAKE(a->ao[l], M * C);
        TAKE(a->ln2[l], M * C);
        TAKE(a->ln2m[l], M);
        TAKE(a->ln2r[l], M);
        TAKE(a->hpre[l], M * Hd);
        TAKE(a->hact[l], M * Hd);
    }
    TAKE(a->xk, (size_t)B * NP * C);
    TAKE(a->xout, (size_t)B * N1 * C);
    TAKE(a->map, (size_t)B * NP * C);
    TAKE(a->mapm, (size_t)B * NP);
    TAKE(a->mapr, (size_t)B * NP);
    TAKE(a->clsin, (size_t)B * C);
    TAKE(a->cls, (size_t)B * C);
    TAKE(a->clsm, (size_t)B);
    TAKE(a->clsr, (size_t)B);
    TAKE(a->last_cls, (size_t)B * (a->n_last > 0 ? a->n_last : 1) * C);
    TAKE(a->dps, (size_t)L * 2 * B);
    TAKE(a->dX, (size_t)B * N1 * C);
    TAKE(a->dtmp, (size_t)B * N1 * C);
    TAKE(a->dsm, (size_t)B * N1 * C);
    TAKE(a->dbig, (size_t)B * N1 * (Hd > 3 * C ? Hd : 3 * C));
    TAKE(a->dpos, (size_t)N1 * C);
#undef TAKE
    return off;
}

static void s_acts_prepare(ser_vit *v, ser_vit_acts *a, int B, int H, int W, int n_last) {
    int P = v->cfg.patch, L = v->cfg.depth;
    if (!a->xin) {
        a->xin = ser_xcalloc((size_t)L * 15, sizeof(float *));
        float **p = a->xin;
        a->xmid = p + L, a->ln1 = p + 2 * L, a->ln1m = p + 3 * L, a->ln1r = p + 4 * L;
        a->qkv = p + 5 * L, a->att = p + 6 * L, a->ao = p + 7 * L, a->ln2 = p + 8 * L;
        a->ln2m = p + 9 * L, a->ln2r = p + 10 * L, a->hpre = p + 11 * L, a->hact = p + 12 * L;
    }
    a->B = B, a->H = H, a->W = W, a->gh = H / P, a->gw = W / P;
    a->NP = a->gh * a->gw, a->N1 = a->NP + 1, a->n_last = n_last;
    size_t need = s_layout(v, a, 0);
    if (need > a->cap) {
        free(a->mem);
        // Every activation buffer is written before it is read; not zeroing it keeps the first
        // touch of each page inside the block that uses it.
        a->mem = ser_xaligned_raw(sizeof(float) * need);
        a->cap = need;
    }
    s_layout(v, a, 1);
}

// --- position embedding ----------------------------------------------------------------------
// Writes the position embedding for a gh x gw grid into a->pos: (NP, C) patch rows, preceded
// by the CLS row in the baseline layout. Mirrors interpolate_pos_encoding{,_baseline}: no
// resampling when the patch count equals the base count and the grid is square; otherwise
// bicubic with scale_factor (g+0.1)/g0.
static int s_pos_interp_needed(const ser_vit *v, int gh, int gw) {
    return !(gh * gw == v->g0h * v->g0w && gh == gw);
}

static int s_pos_forward(ser_vit *v, ser_vit_acts *a, char err[SER_ERR_LEN]) {
    int C = v->cfg.dim, gh = a->gh, gw = a->gw, off = v->baseline ? 1 : 0;
    const float *pe = v->params + v->off_pos;
    if (v->baseline) memcpy(a->pos, pe, sizeof(float) * (size_t)C);
    if (!s_pos_interp_needed(v, gh, gw)) {
        memcpy(a->pos + off * C, pe + off * C, sizeof(float) * (size_t)a->NP * C);
        return SER_OK;
    }
    double sh = (gh + 0.1) / v->g0h, sw = (gw + 0.1) / v->g0w;
    if (ser_bicubic_out_size(v->g0h, sh) != gh || ser_bicubic_out_size(v->g0w, sw) != gw) {
        snprintf(err, SER_ERR_LEN, "vit: cannot resample the %dx%d position grid to %dx%d",
                 v->g0h, v->g0w, gh, gw);
        return SER_ESHAPE;
    }
    ser_bicubic_hwc(a->pos + off * C, gh, gw, pe + off * C, v->g0h, v->g0w, C, sh, sw);
    return SER_OK;
}

static void s_pos_backward(ser_vit *v, ser_vit_acts *a, const float *dpos) {
    int C = v->cfg.dim, gh = a->gh, gw = a->gw, off = v->baseline ? 1 : 0;
    float *g = v->grads + v->off_pos;
    if (v->baseline)
        for (int c = 0; c < C; c++) g[c] += dpos[c];
    if (!s_pos_interp_needed(v, gh, gw)) {
        ser_add_inplace(g + off * C, dpos + off * C, (size_t)a->NP * C);
        return;
    }
    double sh = (gh + 0.1) / v->g0h, sw = (gw + 0.1) / v->g0w;
    ser_bicubic_hwc_backward(g + off * C, v->g0h, v->g0w, dpos + off * C, gh, gw, C, sh, sw);
}

// --- forward ---------------------------------------------------------------------------------
static void s_drop_path_scales(ser_vit *v, ser_vit_acts *a, const ser_vit_fwd_opts *o,
                               int *any) {
    int L = v->cfg.depth, B = a->B;
    *any = 0;
    for (int l = 0; l < L; l++) {
        float p = L > 1 ? v->cfg.drop_path_rate * (float)l / (float)(L - 1) : 0.0f;
        for (int br = 0; br < 2; br++)
            for (int b = 0; b < B; b++) {
                float *s = &a->dps[((size_t)l * 2 + br) * B + b];
                *s = 1.0f;
                if (!o || !o->train || p <= 0.0f) continue;
                *any = 1;
                float keep;
                if (o->drop_masks) {
                    keep = o->drop_masks[((size_t)l * 2 + br) * B + b];
                } else {
                    ser_rng r;
                    uint32_t id = o->sample_ids ? o->sample_ids[b] : (uint32_t)b;
                    ser_rng_init(&r, o->seed, o->step, id,
                                 ((uint32_t)(l * 2 + br) << 16) | SER_RNG_DROP_PATH);
                    keep = ser_rng_uniform(&r) >= p ? 1.0f : 0.0f;
                }
                *s = keep / (1.0f - p);
            }
    }
}

static void s_block_forward(ser_vit *v, ser_vit_acts *a, int l, int T, float *xout, int dp) {
    const ser_vit_config *c = &v->cfg;
    const ser_vit_block_off *o = &v->blk[l];
    const float *p = v->params;
    int B = a->B, C = c->dim, Hd = c->mlp_hidden, M = B * T;
    size_t MC = (size_t)M * C;
    float *x = a->xin[l], *xm = a->xmid[l];
    ser_layernorm_forward(a->ln1[l], a->ln1m[l], a->ln1r[l], x, p + o->n1w, p + o->n1b, M, C,
                          c->ln_eps);
    ser_matmul_forward(a->qkv[l], a->ln1[l], p + o->qkvw, p + o->qkvb, M, C, 3 * C);
    ser_attention_forward(a->ao[l], a->att[l], a->qkv[l], B, T, C, c->heads);
    ser_matmul_forward(xm, a->ao[l], p + o->projw, p + o->projb, M, C, C);
    if (dp) ser_scale_rows(xm, a->dps + ((size_t)l * 2 + 0) * B, M, C, T);
    ser_add_inplace(xm, x, MC);
    ser_layernorm_forward(a->ln2[l], a->ln2m[l], a->ln2r[l], xm, p + o->n2w, p + o->n2b, M, C,
                          c->ln_eps);
    ser_matmul_forward(a->hpre[l], a->ln2[l], p + o->fc1w, p + o->fc1b, M, C, Hd);
    ser_gelu_forward(a->hact[l], a->hpre[l], (size_t)M * Hd);
    ser_matmul_forward(xout, a->hact[l], p + o->fc2w, p + o->fc2b, M, Hd, C);
    if (dp) ser_scale_rows(xout, a->dps + ((size_t)l * 2 + 1) * B, M, C, T);
    ser_add_inplace(xout, xm, MC);
}

// Final LayerNorm of the CLS rows (row 0 of each sample) of x (B,T,C) into out (B,C).
static void s_cls_norm(ser_vit *v, float *out, float *mean, float *rstd, float *gather,
                       const float *x, int B, int T) {
    int C = v->cfg.dim;
    for (int b = 0; b < B; b++)
        memcpy(gather + (size_t)b * C, x + (size_t)b * T * C, sizeof(float) * (size_t)C);
    ser_layernorm_forward(out, mean, rstd, gather, v->params + v->off_norm_w,
                          v->params + v->off_norm_b, B, C, v->cfg.ln_eps);
}

int ser_vit_forward(ser_vit *v, ser_vit_acts *a, const float *img, int B, int H, int W,
                    const ser_vit_fwd_opts *o, char err[SER_ERR_LEN]) {
    const ser_vit_config *c = &v->cfg;
    int P = c->patch, C = c->dim, L = c->depth, k = c->cls_layer;
    if (B < 1 || H < P || W < P || H % P || W % P) {
        snprintf(err, SER_ERR_LEN, "vit: image %dx%d (batch %d) is not a positive multiple of "
                 "the patch size %d", H, W, B, P);
        return SER_ESHAPE;
    }
    int n_last = o ? o->n_last : 0;
    int n_max = v->baseline ? L : L - k;  // blocks whose output has a CLS row
    if (n_last < 0 || n_last > n_max) {
        snprintf(err, SER_ERR_LEN, "vit: n_last %d not in [0, %d] (blocks with a CLS token)",
                 n_last, n_max);
        return SER_EINVAL;
    }
    s_acts_prepare(v, a, B, H, W, n_last);
    a->img = img;
    int NP = a->NP, N1 = a->N1, K = 3 * P * P;
    int rc = s_pos_forward(v, a, err);
    if (rc) return rc;
    int dp;
    s_drop_path_scales(v, a, o, &dp);

    // Patch embedding (+ position embedding), into the input of block 0.
    ser_patch_im2col(a->cols, img, B, H, W, P);
    const float *cls_tok = v->params + v->off_cls;
    if (v->baseline) {
        float *tmp = a->dtmp;  // (B*NP, C) scratch before the backward needs it
        ser_matmul_forward(tmp, a->cols, v->params + v->off_pw, v->params + v->off_pb, B * NP, K,
                           C);
        float *x0 = a->xin[0];
        for (int b = 0; b < B; b++) {
            float *row = x0 + (size_t)b * N1 * C;
            for (int ch = 0; ch < C; ch++) row[ch] = cls_tok[ch] + a->pos[ch];
            for (int t = 0; t < NP; t++)
                for (int ch = 0; ch < C; ch++)
                    row[(size_t)(t + 1) * C + ch] =
                        tmp[((size_t)b * NP + t) * C + ch] + a->pos[(size_t)(t + 1) * C + ch];
        }
    } else {
        float *x0 = a->xin[0];
        ser_matmul_forward(x0, a->cols, v->params + v->off_pw, v->params + v->off_pb, B * NP, K, C);
#pragma omp parallel for schedule(static)
        for (int b = 0; b < B; b++) {
            float *row = x0 + (size_t)b * NP * C;
            for (size_t i = 0; i < (size_t)NP * C; i++) row[i] += a->pos[i];
        }
    }

    // Blocks.
    for (int l = 0; l < L; l++) {
        int T = s_tokens(v, l, NP);
        float *xout;
        if (l == L - 1)
            xout = a->xout;
        else if (!v->baseline && l == k - 1)
            xout = a->xk;
        else
            xout = a->xin[l + 1];
        s_block_forward(v, a, l, T, xout, dp);
        if (!v->baseline && l == k - 1) {
            // SER map: norm_equiv of the patch tokens; then insert CLS (no position embedding).
            ser_layernorm_forward(a->map, a->mapm, a->mapr, a->xk, v->params + v->off_neq_w,
                                  v->params + v->off_neq_b, B * NP, C, c->ln_eps);
            if (l < L - 1) {
                float *nx = a->xin[l + 1];
                for (int b = 0; b < B; b++) {
                    memcpy(nx + (size_t)b * N1 * C, cls_tok, sizeof(float) * (size_t)C);
                    memcpy(nx + ((size_t)b * N1 + 1) * C, a->xk + (size_t)b * NP * C,
                           sizeof(float) * (size_t)NP * C);
                }
            }
        }
        if (n_last > 0 && l >= L - n_last) {
            // Eval: final norm of this block's CLS (no statistics kept).
            const float *xo = l == L - 1 ? a->xout : a->xin[l + 1];
            float *tmpo = a->dsm, *tmpg = a->dsm + (size_t)B * C;
            s_cls_norm(v, tmpo, NULL, NULL, tmpg, xo, B, T);
            int slot = l - (L - n_last);
            for (int b = 0; b < B; b++)
                memcpy(a->last_cls + ((size_t)b * n_last + slot) * C, tmpo + (size_t)b * C,
                       sizeof(float) * (size_t)C);
        }
    }
    // In the SER layout k < depth, so the last block always sees the N1 tokens with CLS.
    s_cls_norm(v, a->cls, a->clsm, a->clsr, a->clsin, a->xout, B, N1);
    return SER_OK;
}

// --- backward --------------------------------------------------------------------------------
static void s_block_backward(ser_vit *v, ser_vit_acts *a, int l, int T, float *dX, int dp) {
    const ser_vit_config *c = &v->cfg;
    const ser_vit_block_off *o = &v->blk[l];
    const float *p = v->params;
    float *g = v->grads;
    int B = a->B, C = c->dim, Hd = c->mlp_hidden, M = B * T;
    size_t MC = (size_t)M * C;
    // MLP branch: dX is the gradient w.r.t. the block output.
    const float *dy = dX;
    if (dp) {
        memcpy(a->dtmp, dX, sizeof(float) * MC);
        ser_scale_rows(a->dtmp, a->dps + ((size_t)l * 2 + 1) * B, M, C, T);
        dy = a->dtmp;
    }
    ser_matmul_backward(a->dbig, g + o->fc2w, g + o->fc2b, dy, a->hact[l], p + o->fc2w, M, Hd, C, 0);
    ser_gelu_backward(a->dbig, a->hpre[l], a->dbig, (size_t)M * Hd, 0);
    ser_matmul_backward(a->dsm, g + o->fc1w, g + o->fc1b, a->dbig, a->ln2[l], p + o->fc1w, M, C, Hd,
                        0);
    ser_layernorm_backward(dX, g + o->n2w, g + o->n2b, a->dsm, a->xmid[l], p + o->n2w, a->ln2m[l],
                           a->ln2r[l], M, C, 1);
    // Attention branch: dX is now the gradient w.r.t. xmid.
    dy = dX;
    if (dp) {
        memcpy(a->dtmp, dX, sizeof(float) * MC);
        ser_scale_rows(a->dtmp, a->dps + ((size_t)l * 2 + 0) * B, M, C, T);
        dy = a->dtmp;
    }
    ser_matmul_backward(a->dsm, g + o->projw, g + o->projb, dy, a->ao[l], p + o->projw, M, C, C, 0);
    ser_attention_backward(a->dbig, a->dsm, a->qkv[l], a->att[l], B, T, C, c->heads);
    ser_matmul_backward(a->dsm, g + o->qkvw, g + o->qkvb, a->dbig, a->ln1[l], p + o->qkvw, M, C,
                        3 * C, 0);
    ser_layernorm_backward(dX, g + o->n1w, g + o->n1b, a->dsm, a->xin[l], p + o->n1w, a->ln1m[l],
                           a->ln1r[l], M, C, 1);
}

void ser_vit_backward(ser_vit *v, ser_vit_acts *a, const float *d_cls, const float *d_map) {
    const ser_vit_config *c = &v->cfg;
    int B = a->B, C = c->dim, L = c->depth, k = c->cls_layer, NP = a->NP, N1 = a->N1;
    int P = c->patch, K = 3 * P * P;
    float *g = v->grads;
    int dp = 0;
    for (size_t i = 0; i < (size_t)L * 2 * B; i++) dp |= a->dps[i] != 1.0f;

    // Final norm on the CLS rows -> dX (B, N1, C), zero elsewhere.
    float *dX = a->dX;
    memset(dX, 0, sizeof(float) * (size_t)B * N1 * C);
    ser_layernorm_backward(a->dsm, g + v->off_norm_w, g + v->off_norm_b, d_cls, a->clsin,
                           v->params + v->off_norm_w, a->clsm, a->clsr, B, C, 0);
    for (int b = 0; b < B; b++)
        memcpy(dX + (size_t)b * N1 * C, a->dsm + (size_t)b * C, sizeof(float) * (size_t)C);

    for (int l = L - 1; l >= 0; l--) {
        int T = s_tokens(v, l, NP);
        s_block_backward(v, a, l, T, dX, dp);
        if (!v->baseline && l == k) {
            // Undo the CLS insertion: its gradient goes to cls_token, the rest back to (B,NP,C).
            float *gc = g + v->off_cls;
            for (int b = 0; b < B; b++) {
                const float *row = dX + (size_t)b * N1 * C;
                for (int ch = 0; ch < C; ch++) gc[ch] += row[ch];
                memmove(dX + (size_t)b * NP * C, row + C, sizeof(float) * (size_t)NP * C);
            }
        }
        if (!v->baseline && l == k && d_map) {
            // The SER map hangs off the same tokens: add norm_equiv's input gradient.
            ser_layernorm_backward(dX, g + v->off_neq_w, g + v->off_neq_b, d_map, a->xk,
                                   v->params + v->off_neq_w, a->mapm, a->mapr, B * NP, C, 1);
        }
    }

    // Input of block 0: dX (B, T0, C).
    int T0 = s_tokens(v, 0, NP);
    float *dpos = a->dpos;
    memset(dpos, 0, sizeof(float) * (size_t)T0 * C);
    ser_colsum_acc(dpos, dX, B, T0 * C);
    if (v->baseline) {
        float *gc = g + v->off_cls;
        for (int ch = 0; ch < C; ch++) gc[ch] += dpos[ch];
    }
    s_pos_backward(v, a, dpos);
    if (!c->freeze_patch_embed) {
        const float *dpatch = dX;
        if (v->baseline) {
            float *tmp = a->dtmp;
            for (int b = 0; b < B; b++)
                memcpy(tmp + (size_t)b * NP * C, dX + ((size_t)b * N1 + 1) * C,
                       sizeof(float) * (size_t)NP * C);
            dpatch = tmp;
        }
        ser_matmul_backward(NULL, g + v->off_pw, g + v->off_pb, dpatch, a->cols,
                            v->params + v->off_pw, B * NP, K, C, 0);
    }
}
