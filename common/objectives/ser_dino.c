// ser_dino.c — see ser_dino.h.
#include "ser_dino.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_equiv.h"
#include "ser_kernels.h"
#include "ser_loss.h"
#include "ser_optim.h"
#include "ser_rng.h"
#include "ser_sched.h"

void ser_dino_config_default(ser_dino_config *c) {
    memset(c, 0, sizeof *c);
    ser_vit_config_preset(&c->vit, "vit_small", 224, 16);
    c->vit.cls_layer = 3;
    c->vit.drop_path_rate = 0.1f;
    c->vit.freeze_patch_embed = 0;
    c->init_scheme = SER_VIT_INIT_GENERIC;
    c->out_dim = 65536;
    c->hidden_dim = 2048;
    c->bottleneck_dim = 256;
    c->norm_last_layer = 0;
    c->freeze_last_layer_epochs = 1;
    c->student_temp = 0.1f;
    c->teacher_temp = 0.04;
    c->teacher_temp_final = 0.07;
    c->teacher_temp_warmup_epochs = 10;
    c->center_momentum = 0.9;
    c->ser = 1;
    c->ser_grad = 1;
    c->ser_lambda = 0.3f;
    c->ser_tau = 0.4f;
    c->ser_proj_dim = 512;
    c->ser_symmetric = 1;
    c->projector_ema_quirk = 0;
}

int ser_dino_config_from_job(ser_dino_config *c, const ser_config *job, char err[SER_ERR_LEN]) {
    ser_dino_config_default(c);
    if (job->method.name != SER_CONFIG_METHOD_DINO)
        return ser_errf(err, SER_ECONFIG, "method.name: ser_dino needs dino");
    int rc = ser_config_to_vit(job, &c->vit, err);
    if (rc) return rc;
    c->init_scheme = job->model.init == SER_CONFIG_INIT_MOCO ? SER_VIT_INIT_MOCO
                                                             : SER_VIT_INIT_GENERIC;
    const ser_config_dino *dj = &job->dino;
    c->out_dim = dj->out_dim;
    c->hidden_dim = dj->hidden_dim;
    c->bottleneck_dim = dj->bottleneck_dim;
    c->norm_last_layer = dj->norm_last_layer;
    c->freeze_last_layer_epochs = dj->freeze_last_layer_epochs;
    c->student_temp = (float)dj->student_temp;
    c->teacher_temp = dj->teacher_temp;
    c->teacher_temp_final = dj->teacher_temp_final;
    c->teacher_temp_warmup_epochs = dj->teacher_temp_warmup_epochs;
    c->center_momentum = dj->center_momentum;
    c->ser = job->ser.enabled;
    c->ser_grad = job->ser.grad;
    c->ser_lambda = (float)job->ser.lambda;
    c->ser_tau = (float)job->ser.tau;
    c->ser_proj_dim = job->ser.proj_dim;
    c->ser_symmetric = job->ser.symmetric == SER_CONFIG_SYM_AUTO ? 1 : job->ser.symmetric;  // auto: the reference's
    c->projector_ema_quirk = job->dino.projector_ema_quirk;
    return SER_OK;
}

double ser_dino_teacher_temp(const ser_dino_config *c, int64_t epoch) {
    return ser_sched_dino_teacher_temp(epoch, c->teacher_temp, c->teacher_temp_final,
                                       c->teacher_temp_warmup_epochs);
}

// --- the DINO head -----------------------------------------------------------------------------
int ser_dino_head_register(ser_dino_head *h, int in, int hidden, int bottleneck, int out,
                           int norm_last_layer, ser_ptab *tab, const char *prefix,
                           char err[SER_ERR_LEN]) {
    memset(h, 0, sizeof *h);
    if (in < 1 || hidden < 1 || bottleneck < 1 || out < 1)
        return ser_errf(err, SER_ECONFIG, "dino head %s: widths %d -> %d -> %d -> %d must be >= 1",
                      prefix, in, hidden, bottleneck, out);
    char name[SER_TINFO_NAME_LEN];
    int n = snprintf(name, sizeof name, "%smlp.", prefix);
    if (n < 0 || (size_t)n + 32 > sizeof name)
        return ser_errf(err, SER_EINVAL, "dino head: prefix '%s' too long", prefix);
    ser_mlp_layer_spec spec[3] = {{in, hidden, 1, SER_BN_NONE, SER_ACT_GELU, 0},
                                  {hidden, hidden, 1, SER_BN_NONE, SER_ACT_GELU, 0},
                                  {hidden, bottleneck, 1, SER_BN_NONE, SER_ACT_NONE, 0}};
    ser_ptab nobuf;  // no BatchNorm in the DINO head (use_bn=False): nothing is added here
    ser_ptab_init(&nobuf);
    int rc = ser_mlp_register(&h->mlp, spec, 3, tab, &nobuf, name, err);
    SER_ASSERT(nobuf.n == 0);
    ser_ptab_free(&nobuf);
    if (rc) return rc;
    int64_t gshape[2] = {out, 1}, vshape[2] = {out, bottleneck};
    snprintf(name, sizeof name, "%slast_layer.weight_g", prefix);
    h->off_g = ser_ptab_add(tab, name, norm_last_layer ? SER_TINFO_FROZEN : 0, 2, gshape);
    snprintf(name, sizeof name, "%slast_layer.weight_v", prefix);
    h->off_v = ser_ptab_add(tab, name, 0, 2, vshape);
    h->in = in, h->bottleneck = bottleneck, h->out = out;
    h->g_frozen = norm_last_layer;
    return SER_OK;
}

void ser_dino_head_bind(ser_dino_head *h, float *params, float *grads) {
    h->params = params;
    h->grads = grads;
    ser_mlp_bind(&h->mlp, params, grads, NULL);
}

// timm's trunc_normal_(std) truncates at absolute +-2 (as ser_vit.c does).
static void s_fill_trunc_normal(float *x, size_t n, ser_rng *r, double std) {
    for (size_t i = 0; i < n; i++) {
        double g;
        do g = ser_rng_normal(r) * std;
        while (g < -2.0 || g > 2.0);
        x[i] = (float)g;
    }
}

void ser_dino_head_init_weights(ser_dino_head *h, uint64_t seed) {
    for (int l = 0; l < h->mlp.n; l++) {
        const ser_mlp_layer *L = &h->mlp.layer[l];
        ser_rng r;
        ser_rng_init(&r, seed, (uint32_t)l, 2, SER_RNG_INIT);
        s_fill_trunc_normal(h->params + L->w, (size_t)L->s.out * L->s.in, &r, 0.02);
        memset(h->params + L->b, 0, sizeof(float) * (size_t)L->s.out);
    }
    // last_layer: nn.Linear's default init of v (kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(D))),
    // created after DINOHead's _init_weights ran; then weight_g.fill_(1).
    ser_rng r;
    ser_rng_init(&r, seed, (uint32_t)h->mlp.n, 2, SER_RNG_INIT);
    double bound = 1.0 / sqrt((double)h->bottleneck);
    float *v = h->params + h->off_v;
    for (size_t i = 0; i < (size_t)h->out * h->bottleneck; i++)
        v[i] = (float)((2.0 * ser_rng_uniform_double(&r) - 1.0) * bound);
    for (int k = 0; k < h->out; k++) h->params[h->off_g + k] = 1.0f;
}

void ser_dino_head_acts_free(ser_dino_head_acts *a) {
    if (!a) return;
    ser_mlp_acts_free(&a->mlp);
    free(a->mem);
    memset(a, 0, sizeof *a);
}

static size_t s_head_layout(const ser_dino_head *h, ser_dino_head_acts *a, int M, int alloc) {
    size_t off = 0, D = (size_t)h->bottleneck, K = (size_t)h->out;
#define TAKE(ptr, n)                             \
    do {                                         \
        if (alloc) (ptr) = a->mem + off;         \
        off += ((size_t)(n) + 15) & ~(size_t)15; \
    } while (0)
    TAKE(a->z, (size_t)M * D);
    TAKE(a->znorm, (size_t)M);
    TAKE(a->w, K * D);
    TAKE(a->vnorm, K);
    TAKE(a->out, (size_t)M * K);
    TAKE(a->dz, (size_t)M * D);
    TAKE(a->dw, K * D);
#undef TAKE
    return off;
}

const float *ser_dino_head_forward(const ser_dino_head *h, ser_dino_head_acts *a, const float *x,
                                   int M) {
    SER_ASSERT(M >= 1);
    int D = h->bottleneck, K = h->out;
    size_t need = s_head_layout(h, a, M, 0);
    if (need > a->cap) {
        free(a->mem);
        a->mem = ser_xaligned(sizeof(float) * need);
        a->cap = need;
    }
    s_head_layout(h, a, M, 1);
    a->M = M;
    const float *y = ser_mlp_forward(&h->mlp, &a->mlp, x, M, 0);
    ser_l2norm_rows_forward(a->z, a->znorm, y, M, D);
    // weight_norm (dim 0): W = v * (g / ||v||) per output row, as torch._weight_norm.
    const float *g = h->params + h->off_g, *v = h->params + h->off_v;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++) {
        const float *vr = v + (size_t)k * D;
        double s = 0;
        for (int j = 0; j < D; j++) s += (double)vr[j] * (double)vr[j];
        float n = (float)sqrt(s), scale = g[k] / n;
        a->vnorm[k] = n;
        for (int j = 0; j < D; j++) a->w[(size_t)k * D + j] = vr[j] * scale;
    }
    ser_matmul_forward(a->out, a->z, a->w, NULL, M, D, K);
    return a->out;
}

void ser_dino_head_backward(const ser_dino_head *h, ser_dino_head_acts *a, float *dx,
                            const float *dout) {
    SER_ASSERT(h->grads && a->mem);
    int M = a->M, D = h->bottleneck, K = h->out;
    memset(a->dw, 0, sizeof(float) * (size_t)K * D);
    ser_matmul_backward(a->dz, a->dw, NULL, dout, a->z, a->w, M, D, K, 0);
    // W = g v / n with n = ||v||:  dg = dW.v / n,  dv = (g / n) (dW - dg v / n).
    const float *g = h->params + h->off_g, *v = h->params + h->off_v;
    float *gg = h->grads + h->off_g, *gv = h->grads + h->off_v;
    int g_frozen = h->g_frozen;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++) {
        const float *vr = v + (size_t)k * D, *dwr = a->dw + (size_t)k * D;
        float n = a->vnorm[k];
        double dot = 0;
        for (int j = 0; j < D; j++) dot += (double)dwr[j] * (double)vr[j];
        float dg = (float)(dot / (double)n), s = g[k] / n;
        if (!g_frozen) gg[k] += dg;
        for (int j = 0; j < D; j++) gv[(size_t)k * D + j] += s * (dwr[j] - dg * vr[j] / n);
    }
    // Through F.normalize (in place: each row's dot product is taken before it is written).
    ser_l2norm_rows_backward(a->dz, a->dz, a->z, a->znorm, M, D, 0);
    ser_mlp_backward(&h->mlp, &a->mlp, dx, a->dz);
}

// --- the loss ----------------------------------------------------------------------------------
// DINO's multi-crop loss: the sum over the M samples and over the pairs (teacher global view
// iq, student view v != iq) of CE(t_iq_i, s_v_i), divided by the number of pairs 2(V - 1) and
// by `batch`; ds is d/ds of that. s is (V*M, K) with V = 2 + local views, view-major (view 0's
// M rows, view 1's, then the local views'); t is (2M, K), the two global views. V = 2 is the
// two-view loss 1/2 [CE(t0_i, s1_i) + CE(t1_i, s0_i)].
// mon (NULL: not wanted) gets the sums over the 2M global rows of the teacher's entropy
// -sum p log p (mon[0]) and of KL(teacher row || student row of the other global view) (mon[1]).
static double s_dino_loss(float *ds, const float *s, const float *t, const float *center, int M,
                          int K, int V, float student_temp, float teacher_temp, int batch,
                          double mon[2]) {
    int R = 2 * M, RS = V * M;
    float *p = ser_xaligned(sizeof(float) * (size_t)R * K);
    double *rowloss = ser_xmalloc(sizeof(double) * (size_t)RS);
    double *rowent = ser_xmalloc(sizeof(double) * (size_t)R);
    // Teacher: softmax((t - center) / teacher_temp), row by row.
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *tr = t + (size_t)r * K;
        float *pr = p + (size_t)r * K;
        float mx = -INFINITY;
        for (int k = 0; k < K; k++) {
            pr[k] = (tr[k] - center[k]) / teacher_temp;
            mx = pr[k] > mx ? pr[k] : mx;
        }
        double z = 0;
        for (int k = 0; k < K; k++) z += exp((double)(pr[k] - mx));
        // The entropy from the same terms, no extra exp or log per element:
        // -sum p log p = log z - sum p (x - mx) with p = exp(x - mx) / z.
        double pd = 0;
        for (int k = 0; k < K; k++) {
            float dk = pr[k] - mx;
            double e = exp((double)dk) / z;
            pr[k] = (float)e;
            pd += e * (double)dk;
        }
        rowent[r] = log(z) - pd;
    }
    // Student row r (view v, sample i) against the teacher rows of the global views other than
    // v: the other one for a global view, both for a local one.
    double gscale = 1.0 / ((double)(2 * (V - 1)) * (double)batch);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < RS; r++) {
        int v = r / M, i = r % M;
        const float *sr = s + (size_t)r * K;
        const float *q0 = p + ((size_t)(v < 2 ? 1 - v : 0) * M + i) * K;
        const float *q1 = v < 2 ? NULL : p + ((size_t)M + i) * K;
        float mx = -INFINITY;
        for (int k = 0; k < K; k++) {
            float x = sr[k] / student_temp;
            mx = x > mx ? x : mx;
        }
        double z = 0, sq = 0;
        for (int k = 0; k < K; k++) z += exp((double)(sr[k] / student_temp - mx));
        double lse = (double)mx + log(z), ce = 0;
        for (int k = 0; k < K; k++) {
            double x = (double)(sr[k] / student_temp);
            ce -= (double)q0[k] * (x - lse);
            sq += (double)q0[k];
        }
        if (q1) {
            double ce1 = 0;
            for (int k = 0; k < K; k++) {
                double x = (double)(sr[k] / student_temp);
                ce1 -= (double)q1[k] * (x - lse);
                sq += (double)q1[k];
            }
            ce += ce1;
        }
        rowloss[r] = ce;
        if (ds) {
            // d/dx of -sum_j sum q_j log_softmax(x) = softmax(x) * sum_j sum(q_j) - sum_j q_j;
            // x = s / student_temp.
            float *dr = ds + (size_t)r * K;
            for (int k = 0; k < K; k++) {
                double x = (double)(sr[k] / student_temp);
                double qk = q1 ? (double)q0[k] + (double)q1[k] : (double)q0[k];
                dr[k] = (float)((exp(x - lse) * sq - qk) / (double)student_temp * gscale);
            }
        }
    }
    double loss = 0;
    for (int r = 0; r < RS; r++) loss += rowloss[r];
    if (mon)  // in row order: the same sums for any thread count
        for (int r = 0; r < R; r++) {
            int v = r / M, i = r % M;
            double hq = rowent[(size_t)(1 - v) * M + i];
            mon[0] += rowent[r], mon[1] += rowloss[r] - hq;  // CE(q, s) - H(q) = KL(q || s)
        }
    free(p), free(rowloss), free(rowent);
    return loss * gscale;
}

double ser_dino_loss_crops(float *ds, const float *s, const float *t, const float *center, int M,
                           int K, int V, float student_temp, float teacher_temp, double mon[2]) {
    SER_ASSERT(V >= 2 && V <= 2 + SER_MAX_LOCAL);
    if (mon) mon[0] = mon[1] = 0;
    double L = s_dino_loss(ds, s, t, center, M, K, V, student_temp, teacher_temp, M, mon);
    if (mon) mon[0] /= 2 * M, mon[1] /= 2 * M;
    return L;
}

double ser_dino_loss(float *ds, const float *s, const float *t, const float *center, int M,
                     int K, float student_temp, float teacher_temp, double mon[2]) {
    return ser_dino_loss_crops(ds, s, t, center, M, K, 2, student_temp, teacher_temp, mon);
}

// --- the model ---------------------------------------------------------------------------------
static int s_starts(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

int ser_dino_init(ser_dino *d, const ser_dino_config *cfg, char err[SER_ERR_LEN]) {
    memset(d, 0, sizeof *d);
    if (cfg->out_dim < 1 || cfg->hidden_dim < 1 || cfg->bottleneck_dim < 1)
        return ser_errf(err, SER_ECONFIG, "dino: out_dim %d, hidden_dim %d, bottleneck_dim %d "
                      "must be >= 1", cfg->out_dim, cfg->hidden_dim, cfg->bottleneck_dim);
    if (!(cfg->student_temp > 0.0f && isfinite(cfg->student_temp)) ||
        !(cfg->teacher_temp > 0.0 && isfinite(cfg->teacher_temp)) ||
        !(cfg->teacher_temp_final > 0.0 && isfinite(cfg->teacher_temp_final)))
        return ser_errf(err, SER_ECONFIG, "dino: temperatures (student %g, teacher %g -> %g) must "
                      "be positive", (double)cfg->student_temp, cfg->teacher_temp,
                      cfg->teacher_temp_final);
    if (!(cfg->center_momentum >= 0.0 && cfg->center_momentum <= 1.0))
        return ser_errf(err, SER_ECONFIG, "dino: center_momentum %g not in [0, 1]",
                      cfg->center_momentum);
    if (cfg->freeze_last_layer_epochs < 0 || cfg->teacher_temp_warmup_epochs < 0)
        return ser_errf(err, SER_ECONFIG, "dino: freeze_last_layer_epochs %d and "
                      "teacher_temp_warmup_epochs %d must be >= 0",
                      cfg->freeze_last_layer_epochs, cfg->teacher_temp_warmup_epochs);
    if (cfg->ser && (cfg->ser_proj_dim < 1 || !(cfg->ser_tau > 0.0f) || !(cfg->ser_lambda >= 0.0f)))
        return ser_errf(err, SER_ECONFIG, "ser: proj_dim %d, tau %g, lambda %g out of range",
                      cfg->ser_proj_dim, (double)cfg->ser_tau, (double)cfg->ser_lambda);
    if (cfg->ser && cfg->vit.cls_layer == cfg->vit.depth)
        return ser_errf(err, SER_ECONFIG,
                      "ser: needs the SER layout (cls_layer %d < depth %d): the baseline layout "
                      "has no block-k patch map", cfg->vit.cls_layer, cfg->vit.depth);
    d->cfg = *cfg;
    ser_ptab_init(&d->tab);
    ser_ptab_init(&d->ttab);
    ser_ptab_init(&d->btab);
    int C = cfg->vit.dim, rc;
    if ((rc = ser_vit_register(&d->vit, &cfg->vit, &d->tab, "student.backbone.", err))) goto fail;
    if ((rc = ser_dino_head_register(&d->head, C, cfg->hidden_dim, cfg->bottleneck_dim,
                                     cfg->out_dim, cfg->norm_last_layer, &d->tab, "student.head.",
                                     err)))
        goto fail;
    d->n_base = d->tab.n;
    if (cfg->ser) {
        ser_mlp_layer_spec pe[2] = {{C, cfg->ser_proj_dim, 0, SER_BN_NONE, SER_ACT_GELU, 1},
                                    {cfg->ser_proj_dim, cfg->ser_proj_dim, 0, SER_BN_NONE,
                                     SER_ACT_NONE, 1}};
        ser_ptab nobuf;
        ser_ptab_init(&nobuf);
        rc = ser_mlp_register(&d->proj, pe, 2, &d->tab, &nobuf, "student.projector_equiv.", err);
        ser_ptab_free(&nobuf);
        if (rc) goto fail;
    }
    d->n_proj = d->tab.n - d->n_base;
    ser_vit_config tcfg = cfg->vit;
    tcfg.drop_path_rate = 0.0f;  // the reference builds the teacher with drop_path_rate 0
    if ((rc = ser_vit_register(&d->tvit, &tcfg, &d->ttab, "teacher.backbone.", err))) goto fail;
    if ((rc = ser_dino_head_register(&d->thead, C, cfg->hidden_dim, cfg->bottleneck_dim,
                                     cfg->out_dim, 1, &d->ttab, "teacher.head.", err)))
        goto fail;
    SER_ASSERT(d->ttab.n == d->n_base);
    for (int i = 0; i < d->n_base; i++) SER_ASSERT(d->ttab.t[i].offset == d->tab.t[i].offset);
    int64_t cshape[2] = {1, cfg->out_dim};
    size_t coff = ser_ptab_add(&d->btab, "dino_loss.center", 0, 2, cshape);
    SER_ASSERT(coff == 0 && d->btab.n == 1);  // batch_center shares its offset (update_center)
    // The public code's SER loss has no gradient, so DDP leaves projector_equiv and norm_equiv
    // without grads and AdamW skips them entirely (no decay either): freeze them.
    if (cfg->ser && !cfg->ser_grad)
        for (int i = 0; i < d->tab.n; i++)
            if (s_starts(d->tab.t[i].name, "student.projector_equiv.") ||
                s_starts(d->tab.t[i].name, "student.backbone.norm_equiv."))
                d->tab.t[i].flags |= SER_TINFO_FROZEN;
    d->params = ser_xaligned(sizeof(float) * d->tab.total);
    d->grads = ser_xaligned(sizeof(float) * d->tab.total);
    d->tparams = ser_xaligned(sizeof(float) * d->ttab.total);
    d->buffers = ser_xaligned(sizeof(float) * d->btab.total);
    d->center = d->buffers + coff;
    d->batch_center = ser_xaligned(sizeof(float) * (size_t)cfg->out_dim);
    ser_vit_bind(&d->vit, d->params, d->grads);
    ser_dino_head_bind(&d->head, d->params, d->grads);
    if (cfg->ser) ser_mlp_bind(&d->proj, d->params, d->grads, NULL);
    ser_vit_bind(&d->tvit, d->tparams, NULL);
    ser_dino_head_bind(&d->thead, d->tparams, NULL);
    d->head_chunk = SER_DINO_HEAD_CHUNK;
    return SER_OK;
fail:
    ser_dino_free(d);
    return rc;
}

void ser_dino_free(ser_dino *d) {
    if (!d) return;
    ser_vit_free(&d->vit);
    ser_vit_free(&d->tvit);
    free(d->params), free(d->grads), free(d->tparams), free(d->buffers), free(d->batch_center);
    ser_ptab_free(&d->tab);
    ser_ptab_free(&d->ttab);
    ser_ptab_free(&d->btab);
    memset(d, 0, sizeof *d);
}

static size_t s_base_span(const ser_dino *d) {
    const ser_tinfo *t = &d->tab.t[d->n_base - 1];
    return t->offset + ((t->numel + 15) & ~(size_t)15);
}

void ser_dino_init_weights(ser_dino *d, uint64_t seed) {
    ser_vit_init_weights(&d->vit, d->cfg.init_scheme, seed);
    ser_dino_head_init_weights(&d->head, seed + 1);
    if (d->cfg.ser) ser_mlp_init_weights(&d->proj, seed + 3);  // PyTorch's Conv2d default
    memcpy(d->tparams, d->params, sizeof(float) * s_base_span(d));
    memset(d->buffers, 0, sizeof(float) * d->btab.total);
    d->have_batch_center = 0;
}

int ser_dino_active(const ser_dino *d, int64_t epoch, unsigned char *active) {
    int off = 0;
    for (int i = 0; i < d->tab.n; i++) {
        active[i] = 1;
        if (epoch < d->cfg.freeze_last_layer_epochs &&
            s_starts(d->tab.t[i].name, "student.head.last_layer."))
            active[i] = 0, off++;
    }
    return off;
}

// --- after the optimizer step --------------------------------------------------------------------
void ser_dino_update_center(ser_dino *d) {
    SER_ASSERT(d->have_batch_center);
    // self.center * m + batch_center * (1 - m): fp32 tensors times Python floats, each product
    // rounded (the MoCo EMA formula; batch_center has the centre's offset 0 in btab).
    ser_optim_ema(&d->btab, d->buffers, d->batch_center, d->cfg.center_momentum,
                  SER_OPTIM_EMA_MOCO);
    d->have_batch_center = 0;
}

void ser_dino_ema_update(ser_dino *d, double momentum) {
    // ttab's offsets are tab's, so the student arena is the source as it is.
    ser_optim_ema(&d->ttab, d->tparams, d->params, momentum, SER_OPTIM_EMA_DINO);
    if (d->cfg.ser && d->cfg.projector_ema_quirk && d->n_proj > 0) {
        // The reference zips the shared projector with itself: p.mul_(m).add_((1 - m) * p).
        ser_ptab proj = {.t = d->tab.t + d->n_base, .n = d->n_proj, .cap = 0, .total = 0};
        ser_optim_ema(&proj, d->params, d->params, momentum, SER_OPTIM_EMA_DINO);
    }
}

void ser_dino_after_step(ser_dino *d, double momentum) {
    ser_dino_update_center(d);
    ser_dino_ema_update(d, momentum);
}

// --- the step --------------------------------------------------------------------------------
// The batch-coupled part: heads and loss (in sample chunks), the centre's batch mean,
// projector_equiv, group action, NT-Xent.
static int s_objective(ser_dino *d, const ser_batch *b, ser_gathered *g, float teacher_temp,
                       ser_dino_losses *out, char *err) {
    const ser_dino_config *cfg = &d->cfg;
    int B = g->B, C = g->C, K = cfg->out_dim, V = 2 + g->n_local, rc = SER_OK;
    SER_ASSERT(d->head_chunk >= 1);
    int chunk = B < d->head_chunk ? B : d->head_chunk;
    size_t xn = (size_t)V * chunk * C, sn = (size_t)V * chunk * K;
    float *X = ser_xaligned(sizeof(float) * xn), *XT = ser_xaligned(sizeof(float) * xn);
    float *dX = ser_xaligned(sizeof(float) * xn), *dS = ser_xaligned(sizeof(float) * sn);
    double *csum = ser_xcalloc((size_t)K, sizeof(double));
    ser_dino_head_acts sa, ta;
    memset(&sa, 0, sizeof sa), memset(&ta, 0, sizeof ta);
    double loss_inv = 0, mon[2] = {0, 0};
    for (int i0 = 0; i0 < B; i0 += chunk) {
        int M = B - i0 < chunk ? B - i0 : chunk;
        size_t mc = (size_t)M * C;
        for (int v = 0; v < V; v++) {
            const float *src = v < 2 ? g->qcls[v] : g->lcls[v - 2];
            memcpy(X + v * mc, src + (size_t)i0 * C, sizeof(float) * mc);
            if (v < 2) memcpy(XT + v * mc, g->kcls[v] + (size_t)i0 * C, sizeof(float) * mc);
        }
        const float *S = ser_dino_head_forward(&d->head, &sa, X, V * M);
        const float *T = ser_dino_head_forward(&d->thead, &ta, XT, 2 * M);
        loss_inv += s_dino_loss(dS, S, T, d->center, M, K, V, cfg->student_temp, teacher_temp, B,
                                mon);
        ser_dino_head_backward(&d->head, &sa, dX, dS);
        for (int v = 0; v < V; v++) {
            float *dst = v < 2 ? g->dqcls[v] : g->dlcls[v - 2];
            memcpy(dst + (size_t)i0 * C, dX + v * mc, sizeof(float) * mc);
        }
        // The centre's batch sum: teacher rows in chunk order (view 0 then view 1 per chunk),
        // columns in parallel blocks.
        int nblk = (K + 63) / 64;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblk; blk++) {
            int k0 = blk * 64, k1 = k0 + 64 < K ? k0 + 64 : K;
            for (int r = 0; r < 2 * M; r++)
                for (int k = k0; k < k1; k++) csum[k] += (double)T[(size_t)r * K + k];
        }
    }
    for (int k = 0; k < K; k++) d->batch_center[k] = (float)(csum[k] / (2.0 * B));
    out->loss_inv = loss_inv;
    out->teacher_entropy = mon[0] / (2.0 * B), out->kl = mon[1] / (2.0 * B);
    out->loss_equiv = 0;
    if (cfg->ser) {
        ser_equiv_opts eo = {.tau = cfg->ser_tau, .lambda = cfg->ser_lambda, .grad = cfg->ser_grad,
                             .both_directions = cfg->ser_symmetric, .keys_from_student = 0};
        rc = ser_equiv_term(&d->proj, b, g, &eo, &out->loss_equiv, err);
    }
    out->loss = out->loss_inv + (double)cfg->ser_lambda * out->loss_equiv;
    free(X), free(XT), free(dX), free(dS), free(csum);
    ser_dino_head_acts_free(&sa), ser_dino_head_acts_free(&ta);
    return rc;
}

int ser_dino_objective(ser_dino *d, const ser_batch *b, ser_gathered *g, double teacher_temp,
                       ser_dino_losses *out, char err[SER_ERR_LEN]) {
    d->have_batch_center = 0;
    if (!(teacher_temp > 0.0 && isfinite(teacher_temp)))
        return ser_errf(err, SER_EINVAL, "dino: teacher temperature %g must be positive and finite",
                      teacher_temp);
    int rc = s_objective(d, b, g, (float)teacher_temp, out, err);
    if (!rc && !(isfinite(out->loss_inv) && isfinite(out->loss_equiv)))
        rc = ser_errf(err, SER_ENONFINITE, "non-finite loss (inv %g, equiv %g)", out->loss_inv,
                    out->loss_equiv);
    if (!rc) d->have_batch_center = 1;
    return rc;
}

// --- the objective table (ser_objective.h) ----------------------------------------------------
static int s_init(void *st, const ser_config *cfg, ser_objective_model *om, char err[SER_ERR_LEN]) {
    ser_dino *d = st;
    ser_dino_config dc;
    int rc;
    if ((rc = ser_dino_config_from_job(&dc, cfg, err)) || (rc = ser_dino_init(d, &dc, err)))
        return rc;
    ser_objective_model_fill(om, &d->tab, d->params, d->grads, &d->ttab, d->tparams, &d->btab,
                             d->buffers, &d->vit, &d->tvit, dc.ser, dc.ser_grad);
    return SER_OK;
}

static void s_free(void *st) { ser_dino_free(st); }
static void s_init_weights(void *st, uint64_t seed) { ser_dino_init_weights(st, seed); }
static void s_ema(void *st, double momentum) { ser_dino_ema_update(st, momentum); }

static int s_objective_i(void *st, const ser_batch *b, ser_gathered *g, const ser_objective_step *s,
                         double losses[3], char err[SER_ERR_LEN]) {
    ser_dino_losses L;
    int rc = ser_dino_objective(st, b, g, s->teacher_temp, &L, err);
    losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    ((ser_dino *)st)->last_entropy = L.teacher_entropy, ((ser_dino *)st)->last_kl = L.kl;
    return rc;
}

static int s_monitors(void *st, const char **names, double *values) {
    const ser_dino *d = st;
    names[0] = "dino_teacher_entropy", values[0] = d->last_entropy;
    names[1] = "dino_kl", values[1] = d->last_kl;
    return 2;
}

// DINO's two ways to collapse, read on the teacher's centred and sharpened output: uniform
// (entropy at ln K: every image gets the same flat distribution, the student follows, and the
// loss sits at ln K) or one-hot (entropy near 0: one prototype for everything). Outside
// [SER_DINO_ENTROPY_LO, SER_DINO_ENTROPY_HI] x ln K counts as collapsed. A uniform collapse can
// also settle just under the upper bound: on Fashion-MNIST (docs/recipes.md, DINO 1) the
// entropy sat at 97% of ln K with the student-teacher KL at 0.07, while the healthy preset run
// spent its first 1000 steps at 85-97% with the KL at 0.15-0.35. So above
// SER_DINO_ENTROPY_DRIFT x ln K, a KL under SER_DINO_KL_DRIFT (the student matching a near-flat
// teacher) counts as collapsed too.
#define SER_DINO_ENTROPY_LO 0.02
#define SER_DINO_ENTROPY_HI 0.98
#define SER_DINO_ENTROPY_DRIFT 0.95
#define SER_DINO_KL_DRIFT 0.1
static int s_collapsed(void *st, char *why, size_t n) {
    const ser_dino *d = st;
    double lnk = log((double)d->cfg.out_dim), r = d->last_entropy / lnk;
    int drift = r > SER_DINO_ENTROPY_DRIFT && d->last_kl < SER_DINO_KL_DRIFT;
    if (lnk > 0 && r >= SER_DINO_ENTROPY_LO && r <= SER_DINO_ENTROPY_HI && !drift) return 0;
    if (drift && r <= SER_DINO_ENTROPY_HI) {
        snprintf(why, n, "dino_teacher_entropy %.4f is %.1f%% of ln(dino.out_dim) = %.4f with "
                 "dino_kl %.4f (the teacher's output is drifting to uniform and the student "
                 "follows it; healthy: entropy <= %.0f%% or KL >= %g)", d->last_entropy, 100 * r,
                 lnk, d->last_kl, 100 * SER_DINO_ENTROPY_DRIFT, SER_DINO_KL_DRIFT);
        return 1;
    }
    snprintf(why, n, "dino_teacher_entropy %.4f is %.1f%% of ln(dino.out_dim) = %.4f (the "
             "teacher's output is %s; healthy: %.0f%%..%.0f%%)", d->last_entropy, 100 * r, lnk,
             r > SER_DINO_ENTROPY_HI ? "uniform" : "one-hot", 100 * SER_DINO_ENTROPY_LO,
             100 * SER_DINO_ENTROPY_HI);
    return 1;
}

// The reference clips, then drops the last layer's gradient during its frozen epochs.
static void s_hold(void *st, int64_t epoch, unsigned char *active) {
    (void)ser_dino_active(st, epoch, active);
}

static void s_after_apply(void *st, const ser_objective_step *s) {
    ser_dino_after_step(st, s->momentum);
}

static void s_sched(const ser_config *cfg, ser_sched_params *sp) {
    sp->lr_kind = SER_SCHED_DINO;
    sp->momentum_kind = SER_SCHED_DINO;
    sp->momentum = cfg->dino.momentum;
    sp->teacher_temp = cfg->dino.teacher_temp;
    sp->teacher_temp_final = cfg->dino.teacher_temp_final;
    sp->teacher_temp_warmup_epochs = cfg->dino.teacher_temp_warmup_epochs;
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3], const char **key) {
    double Hd = cfg->dino.hidden_dim, Bn = cfg->dino.bottleneck_dim, O = cfg->dino.out_dim;
    f[0] = f[1] = C * Hd + Hd * Hd + Hd * Bn + Bn * O;
    f[2] = (4.0 + cfg->data.local_crops) * B * (3 * Hd + Bn + 2 * O);
    *key = "dino.out_dim / dino.hidden_dim (DINO head)";
}

static int s_check(const ser_config *c, char err[SER_ERR_LEN]) {
    if (c->dino.teacher_temp_warmup_epochs > c->optim.epochs)
        return ser_errf(err, SER_ECONFIG,
                        "dino.teacher_temp_warmup_epochs = %d must be <= optim.epochs = %d",
                        c->dino.teacher_temp_warmup_epochs, c->optim.epochs);
    if (c->dino.freeze_last_layer_epochs >= c->optim.epochs)
        return ser_errf(err, SER_ECONFIG,
                        "dino.freeze_last_layer_epochs = %d must be < optim.epochs = %d",
                        c->dino.freeze_last_layer_epochs, c->optim.epochs);
    return SER_OK;
}

const ser_objective_i ser_objective_dino = {
    .name = "dino",
    .student_prefix = "student.backbone.",
    .teacher_prefix = "teacher.backbone.",
    .ema = SER_OBJECTIVE_EMA_AFTER,
    .ema_kind = SER_OPTIM_EMA_DINO,
    .state_size = sizeof(ser_dino),
    // The reference's student and teacher share projector_equiv: --full writes it under both.
    .alias_from = "student.projector_equiv.",
    .alias_to = "teacher.projector_equiv.",
    .local_views = 1,
    .init = s_init,
    .free = s_free,
    .init_weights = s_init_weights,
    .objective = s_objective_i,
    .teacher_ema = s_ema,
    .hold = s_hold,
    .after_apply = s_after_apply,
    .sched = s_sched,
    .memory = s_memory,
    .check = s_check,
    .monitors = s_monitors,
    .collapsed = s_collapsed,
};
