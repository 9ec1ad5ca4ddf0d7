// ser_barlow.c — see ser_barlow.h.
#include "ser_barlow.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_equiv.h"
#include "ser_kernels.h"
#include "ser_sched.h"

void ser_barlow_config_default(ser_barlow_config *c) {
    memset(c, 0, sizeof *c);
    ser_vit_config_preset(&c->vit, "vit_small", 224, 16);
    c->vit.cls_layer = 3;
    c->vit.freeze_patch_embed = 0;  // reference BT: trainable patch embedding
    c->vit.drop_path_rate = 0.0f;
    c->init_scheme = SER_VIT_INIT_GENERIC;
    c->proj_dim = 8192;
    c->lambda_offdiag = 0.0051f;
    c->ser = 1;
    c->ser_grad = 1;
    c->ser_lambda = 1.0f;
    c->ser_tau = 0.4f;
    c->ser_proj_dim = 512;
    c->ser_symmetric = 0;
}

int ser_barlow_config_from_job(ser_barlow_config *c, const ser_config *job, char err[SER_ERR_LEN]) {
    ser_barlow_config_default(c);
    if (job->method.name != SER_CONFIG_METHOD_BARLOW)
        return ser_errf(err, SER_ECONFIG, "method.name: not barlow (ser_barlow_config_from_job)");
    int rc = ser_config_to_vit(job, &c->vit, err);
    if (rc) return rc;
    c->init_scheme =
        job->model.init == SER_CONFIG_INIT_MOCO ? SER_VIT_INIT_MOCO : SER_VIT_INIT_GENERIC;
    c->proj_dim = job->barlow.proj_dim;
    c->lambda_offdiag = (float)job->barlow.lambda_offdiag;
    c->ser = job->ser.enabled;
    c->ser_grad = job->ser.grad;
    c->ser_lambda = (float)job->ser.lambda;
    c->ser_tau = (float)job->ser.tau;
    c->ser_proj_dim = job->ser.proj_dim;
    c->ser_symmetric = job->ser.symmetric == SER_CONFIG_SYM_AUTO ? 0 : job->ser.symmetric;  // auto: the reference's
    return SER_OK;
}

int ser_barlow_init(ser_barlow *m, const ser_barlow_config *cfg, char err[SER_ERR_LEN]) {
    memset(m, 0, sizeof *m);
    if (cfg->proj_dim < 1 || cfg->proj_dim > SER_BARLOW_MAX_DIM || !(cfg->lambda_offdiag >= 0.0f) ||
        !isfinite(cfg->lambda_offdiag))
        return ser_errf(err, SER_ECONFIG,
                      "barlow: proj_dim %d not in [1, %d] or lambda_offdiag %g not finite >= 0",
                      cfg->proj_dim, SER_BARLOW_MAX_DIM, (double)cfg->lambda_offdiag);
    if (cfg->ser && (cfg->ser_proj_dim < 1 || !(cfg->ser_tau > 0.0f) || !isfinite(cfg->ser_tau) ||
                     !(cfg->ser_lambda >= 0.0f) || !isfinite(cfg->ser_lambda)))
        return ser_errf(err, SER_ECONFIG, "ser: proj_dim %d, tau %g, lambda %g out of range",
                      cfg->ser_proj_dim, (double)cfg->ser_tau, (double)cfg->ser_lambda);
    if (cfg->ser && cfg->vit.cls_layer == cfg->vit.depth)
        return ser_errf(err, SER_ECONFIG,
                      "ser: needs the SER layout (cls_layer %d < depth %d): the baseline layout "
                      "has no block-k patch map",
                      cfg->vit.cls_layer, cfg->vit.depth);
    m->cfg = *cfg;
    ser_ptab_init(&m->tab);
    ser_ptab_init(&m->btab);
    int C = cfg->vit.dim, P = cfg->proj_dim, rc;
    // Registration order = BarlowTwins.__init__: backbone, projector_equiv, projector, bn (so
    // table index i is the i-th of model.parameters(), the reference's AdamW order).
    if ((rc = ser_vit_register(&m->vit, &cfg->vit, &m->tab, "backbone.", err))) goto fail;
    if (cfg->ser) {
        ser_mlp_layer_spec pe[2] = {
            {C, cfg->ser_proj_dim, 0, SER_BN_NONE, SER_ACT_GELU, 1},
            {cfg->ser_proj_dim, cfg->ser_proj_dim, 0, SER_BN_NONE, SER_ACT_NONE, 1}};
        if ((rc = ser_mlp_register(&m->pequiv, pe, 2, &m->tab, &m->btab, "projector_equiv.", err)))
            goto fail;
    }
    // sizes = [C, P, P, P]: (Linear, BN, ReLU) x 2, then Linear: the MoCo builder without last_bn.
    ser_mlp_layer_spec spec[SER_MLP_MAX_LAYERS];
    int n = ser_mlp_moco_spec(spec, 3, C, P, P, 0);
    if ((rc = ser_mlp_register(&m->proj, spec, n, &m->tab, &m->btab, "projector.", err))) goto fail;
    int64_t shape[1] = {P};
    m->bn_rm = ser_ptab_add(&m->btab, "bn.running_mean", 0, 1, shape);
    m->bn_rv = ser_ptab_add(&m->btab, "bn.running_var", 0, 1, shape);
    m->bn_nbt = ser_ptab_add(&m->btab, "bn.num_batches_tracked", SER_TINFO_COUNTER, 0, NULL);
    // The public code's SER loss has no gradient: DDP leaves projector_equiv and norm_equiv
    // without grads and AdamW skips them entirely (no decay either): freeze them.
    if (cfg->ser && !cfg->ser_grad)
        for (int i = 0; i < m->tab.n; i++)
            if (strncmp(m->tab.t[i].name, "projector_equiv.", 16) == 0 ||
                strncmp(m->tab.t[i].name, "backbone.norm_equiv.", 20) == 0)
                m->tab.t[i].flags |= SER_TINFO_FROZEN;
    m->params = ser_xaligned(sizeof(float) * m->tab.total);
    m->grads = ser_xaligned(sizeof(float) * m->tab.total);
    m->buffers = ser_xaligned(sizeof(float) * m->btab.total);
    ser_vit_bind(&m->vit, m->params, m->grads);
    ser_mlp_bind(&m->proj, m->params, m->grads, m->buffers);
    if (cfg->ser) ser_mlp_bind(&m->pequiv, m->params, m->grads, m->buffers);
    return SER_OK;
fail:
    ser_barlow_free(m);
    return rc;
}

void ser_barlow_free(ser_barlow *m) {
    if (!m) return;
    ser_vit_free(&m->vit);
    free(m->params), free(m->grads), free(m->buffers);
    ser_ptab_free(&m->tab);
    ser_ptab_free(&m->btab);
    memset(m, 0, sizeof *m);
}

void ser_barlow_init_weights(ser_barlow *m, uint64_t seed) {
    ser_vit_init_weights(&m->vit, m->cfg.init_scheme, seed);
    ser_mlp_init_weights(&m->proj, seed + 1);
    if (m->cfg.ser) ser_mlp_init_weights(&m->pequiv, seed + 3);
    for (int i = 0; i < m->cfg.proj_dim; i++)
        m->buffers[m->bn_rm + i] = 0.0f, m->buffers[m->bn_rv + i] = 1.0f;
    m->buffers[m->bn_nbt] = 0.0f;
}

// --- the cross-correlation loss ----------------------------------------------------------------
static int s_xcorr_check(const double *on, const double *off, const float *a, const float *b, int N,
                         int P, float lambda, float scale) {
    if (!on || !off || !a || !b || N < 1 || P < 1 || P > SER_BARLOW_MAX_DIM) return SER_EINVAL;
    if (!isfinite(lambda) || !isfinite(scale)) return SER_EINVAL;
    return SER_OK;
}

int ser_barlow_xcorr_loss(double *on_diag, double *off_diag, float *da, float *db, const float *a,
                          const float *b, int N, int P, float lambda, float scale) {
    int rc = s_xcorr_check(on_diag, off_diag, a, b, N, P, lambda, scale);
    if (rc) return rc;
    // c (P, P) = a^T b / N: row i is embedding dimension i of view 0 against every one of view 1.
    float *c = ser_xmalloc(sizeof(float) * (size_t)P * (size_t)P);
    double *on = ser_xmalloc(sizeof(double) * (size_t)P),
           *off = ser_xmalloc(sizeof(double) * (size_t)P);
    float inv_n = (float)(1.0 / N);
    ser_sgemm_rows(c, P, 1, a, P, b, P, 0, P, P, N, inv_n);
    // Loss terms per row in double; c becomes G * scale in place (G = dL/dc).
    float g_on = 2.0f * scale, g_off = 2.0f * lambda * scale;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < P; i++) {
        float *r = c + (size_t)i * P;
        double s = 0, d = (double)r[i] - 1.0;
        for (int j = 0; j < P; j++)
            if (j != i) s += (double)r[j] * (double)r[j];
        on[i] = d * d;
        off[i] = s;
        float cii = r[i];
        for (int j = 0; j < P; j++) r[j] *= g_off;
        r[i] = (cii - 1.0f) * g_on;
    }
    double son = 0, soff = 0;
    for (int i = 0; i < P; i++) son += on[i], soff += off[i];
    *on_diag = son, *off_diag = soff;
    // da (N, P) = b G^T / N, db (N, P) = a G / N.
    if (da) ser_sgemm_rows(da, P, 0, b, P, c, P, 1, N, P, P, inv_n);
    if (db) ser_sgemm_rows(db, P, 0, a, P, c, P, 0, N, P, P, inv_n);
    free(c), free(on), free(off);
    return SER_OK;
}

int ser_barlow_xcorr_loss_naive(double *on_diag, double *off_diag, float *da, float *db,
                                const float *a, const float *b, int N, int P, float lambda,
                                float scale) {
    int rc = s_xcorr_check(on_diag, off_diag, a, b, N, P, lambda, scale);
    if (rc) return rc;
    size_t PP = (size_t)P * (size_t)P;
    double *G = ser_xmalloc(sizeof(double) * PP);
    double son = 0, soff = 0;
    for (int i = 0; i < P; i++)
        for (int j = 0; j < P; j++) {
            double cij = 0;
            for (int n = 0; n < N; n++)
                cij += (double)a[(size_t)n * P + i] * (double)b[(size_t)n * P + j];
            cij /= N;
            if (i == j) {
                son += (cij - 1.0) * (cij - 1.0);
                G[(size_t)i * P + j] = 2.0 * (cij - 1.0);
            } else {
                soff += cij * cij;
                G[(size_t)i * P + j] = 2.0 * (double)lambda * cij;
            }
        }
    *on_diag = son, *off_diag = soff;
    for (int n = 0; n < N && (da || db); n++)
        for (int k = 0; k < P; k++) {
            // dL/da_nk = sum_j G_kj b_nj / N; dL/db_nk = sum_j a_nj G_jk / N.
            double ga = 0, gb = 0;
            for (int j = 0; j < P; j++) {
                ga += G[(size_t)k * P + j] * (double)b[(size_t)n * P + j];
                gb += (double)a[(size_t)n * P + j] * G[(size_t)j * P + k];
            }
            if (da) da[(size_t)n * P + k] = (float)((double)scale * ga / N);
            if (db) db[(size_t)n * P + k] = (float)((double)scale * gb / N);
        }
    free(G);
    return SER_OK;
}

// --- the step --------------------------------------------------------------------------------
// The batch-coupled part: projector, bn, cross-correlation loss, then the SER term.
static int s_objective(ser_barlow *m, const ser_batch *b, ser_gathered *st, ser_barlow_losses *out,
                       char *err) {
    const ser_barlow_config *cfg = &m->cfg;
    int B = st->B, P = cfg->proj_dim, rc = SER_OK;
    size_t BP = (size_t)B * P;
    ser_mlp_acts pa[2];
    memset(pa, 0, sizeof pa);
    const float *z[2];
    float *y[2], *dy[2], *mean[2], *rstd[2];
    float *rm = m->buffers + m->bn_rm, *rv = m->buffers + m->bn_rv;
    // Forward, view 0 then view 1 (the running statistics advance in the reference's order).
    for (int v = 0; v < 2; v++) {
        z[v] = ser_mlp_forward(&m->proj, &pa[v], st->qcls[v], B, 1);  // owned by pa[v]
        y[v] = ser_xaligned(sizeof(float) * BP), dy[v] = ser_xaligned(sizeof(float) * BP);
        mean[v] = ser_xaligned(sizeof(float) * (size_t)P);
        rstd[v] = ser_xaligned(sizeof(float) * (size_t)P);
    }
    for (int v = 0; v < 2; v++) {
        ser_batchnorm_forward(y[v], mean[v], rstd[v], z[v], NULL, NULL, B, P, rm, rv);
        m->buffers[m->bn_nbt] += 1.0f;
    }
    rc = ser_barlow_xcorr_loss(&out->on_diag, &out->off_diag, dy[0], dy[1], y[0], y[1], B, P,
                               cfg->lambda_offdiag, 1.0f);
    SER_ASSERT(rc == SER_OK);  // shapes and lambda were checked by ser_barlow_init
    out->loss_inv = out->on_diag + (double)cfg->lambda_offdiag * out->off_diag;
    // Backward through bn (into y, no longer needed) and the projector into both views' [CLS].
    for (int v = 0; v < 2; v++) {
        ser_batchnorm_backward(y[v], NULL, NULL, dy[v], z[v], NULL, mean[v], rstd[v], B, P);
        ser_mlp_backward(&m->proj, &pa[v], st->dqcls[v], y[v]);
    }
    out->loss_equiv = 0;
    if (cfg->ser) {
        ser_equiv_opts eo = {.tau = cfg->ser_tau,
                             .lambda = cfg->ser_lambda,
                             .grad = cfg->ser_grad,
                             .both_directions = cfg->ser_symmetric,
                             .keys_from_student = 1};
        rc = ser_equiv_term(&m->pequiv, b, st, &eo, &out->loss_equiv, err);
    }
    out->loss = out->loss_inv + (double)cfg->ser_lambda * out->loss_equiv;
    for (int v = 0; v < 2; v++) {
        free(y[v]), free(dy[v]), free(mean[v]), free(rstd[v]);
        ser_mlp_acts_free(&pa[v]);
    }
    return rc;
}

int ser_barlow_objective(ser_barlow *m, const ser_batch *b, ser_gathered *g, ser_barlow_losses *out,
                         char err[SER_ERR_LEN]) {
    memset(out, 0, sizeof *out);
    // A non-finite [CLS] row must stop the step here: the projector's ReLU would turn the NaN
    // it spreads through the first BatchNorm into zeros and leave a finite, meaningless loss.
    for (int v = 0; v < 2; v++)
        for (size_t i = 0; i < (size_t)g->B * g->C; i++)
            if (!isfinite(g->qcls[v][i]))
                return ser_errf(err, SER_ENONFINITE, "non-finite [CLS] (view %d, sample %zu)", v,
                                i / (size_t)g->C);
    int rc = s_objective(m, b, g, out, err);
    if (!rc && !(isfinite(out->loss_inv) && isfinite(out->loss_equiv))) {
        memset(m->grads, 0, sizeof(float) * m->tab.total);
        rc = ser_errf(err, SER_ENONFINITE, "non-finite loss (inv %g, equiv %g)", out->loss_inv,
                    out->loss_equiv);
    }
    return rc;
}

// --- the objective table (ser_objective.h) ----------------------------------------------------
static int s_init(void *st, const ser_config *cfg, ser_objective_model *om, char err[SER_ERR_LEN]) {
    ser_barlow *m = st;
    ser_barlow_config bc;
    int rc;
    if ((rc = ser_barlow_config_from_job(&bc, cfg, err)) || (rc = ser_barlow_init(m, &bc, err)))
        return rc;
    ser_objective_model_fill(om, &m->tab, m->params, m->grads, NULL, NULL, &m->btab, m->buffers,
                             &m->vit, NULL, bc.ser, bc.ser_grad);
    return SER_OK;
}

static void s_free(void *st) { ser_barlow_free(st); }
static void s_init_weights(void *st, uint64_t seed) { ser_barlow_init_weights(st, seed); }

static int s_objective_i(void *st, const ser_batch *b, ser_gathered *g, const ser_objective_step *s,
                         double losses[3], char err[SER_ERR_LEN]) {
    (void)s;
    ser_barlow_losses L;
    int rc = ser_barlow_objective(st, b, g, &L, err);
    losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    ((ser_barlow *)st)->last_on_diag = L.on_diag, ((ser_barlow *)st)->last_off_diag = L.off_diag;
    return rc;
}

// On-diagonal: sum (c_ii - 1)^2 (0 when the two views agree in every dimension, proj_dim when
// they are unrelated); off-diagonal: sum_{i != j} c_ij^2 (redundancy: it grows when the
// dimensions say the same thing, a dimensional collapse).
static int s_monitors(void *st, const char **names, double *values) {
    const ser_barlow *m = st;
    names[0] = "barlow_on_diag", values[0] = m->last_on_diag;
    names[1] = "barlow_off_diag", values[1] = m->last_off_diag;
    return 2;
}

// Barlow Twins' two ways to collapse, read on its last cross-correlation matrix c (P x P): the
// two views' embeddings unrelated dimension by dimension (mean (1 - c_ii)^2 = on_diag / P above
// SER_BARLOW_ON_HI: a constant output, which the BatchNorm turns into zeros, reads 1), or
// every dimension saying the same thing (mean c_ij^2 over i != j = off_diag / (P (P - 1))
// above SER_BARLOW_OFF_HI: a dimensional collapse onto one direction reads 1; independent
// dimensions read about 1 / batch).
#define SER_BARLOW_ON_HI 0.9
#define SER_BARLOW_OFF_HI 0.5
static int s_collapsed(void *st, char *why, size_t n) {
    const ser_barlow *m = st;
    double P = m->cfg.proj_dim, on = m->last_on_diag / P;
    double off = P > 1 ? m->last_off_diag / (P * (P - 1)) : 0;
    if (on > SER_BARLOW_ON_HI) {
        snprintf(why, n, "barlow_on_diag %.4g is %.3f x barlow.proj_dim (the two views' "
                 "embeddings are unrelated or constant; healthy: below %.1f)",
                 m->last_on_diag, on, SER_BARLOW_ON_HI);
        return 1;
    }
    if (off > SER_BARLOW_OFF_HI) {
        snprintf(why, n, "barlow_off_diag %.4g is a mean squared correlation of %.3f between "
                 "dimensions (they say the same thing: a dimensional collapse; healthy: below %.1f)",
                 m->last_off_diag, off, SER_BARLOW_OFF_HI);
        return 1;
    }
    return 0;
}

static void s_sched(const ser_config *cfg, ser_sched_params *sp) {
    (void)cfg;
    sp->lr_kind = SER_SCHED_BARLOW;
    sp->momentum_kind = SER_SCHED_BARLOW;  // no teacher
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3], const char **key) {
    double Pb = cfg->barlow.proj_dim;
    f[0] = C * Pb + 2 * Pb * Pb, f[1] = 0;
    f[2] = 2 * B * 8 * Pb + 2 * Pb * Pb;  // rows, and the cross-correlation matrix
    *key = "barlow.proj_dim (projector)";
}

const ser_objective_i ser_objective_barlow = {
    .name = "barlow",
    .student_prefix = "backbone.",
    .ema = SER_OBJECTIVE_EMA_NONE,
    .state_size = sizeof(ser_barlow),
    .init = s_init,
    .free = s_free,
    .init_weights = s_init_weights,
    .objective = s_objective_i,
    .sched = s_sched,
    .memory = s_memory,
    .monitors = s_monitors,
    .collapsed = s_collapsed,
};
