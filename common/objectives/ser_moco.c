// ser_moco.c — see ser_moco.h.
#include "ser_moco.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_equiv.h"
#include "ser_loss.h"
#include "ser_optim.h"
#include "ser_sched.h"

// The add-ons (ser_moco_addon.h): one row each.
static const ser_moco_addon_i *const s_addons[] = {&ser_moco_addon_essl, &ser_moco_addon_augself,
                                                   &ser_moco_addon_equimod, &ser_moco_addon_stl};

void ser_moco_config_default(ser_moco_config *c) {
    memset(c, 0, sizeof *c);
    ser_vit_config_preset(&c->vit, "vit_small", 224, 16);
    c->vit.cls_layer = 3;
    c->vit.freeze_patch_embed = 1;  // reference MoCo: frozen at its random init
    c->init_scheme = SER_VIT_INIT_MOCO;
    c->mlp_dim = 4096;
    c->dim = 256;
    c->T = 0.2f;
    c->ser = 1;
    c->ser_grad = 1;
    c->ser_lambda = 1.0f;
    c->ser_tau = 0.5f;
    c->ser_proj_dim = 512;
    c->ser_symmetric = 1;
}

// The add-on selected by method.name, or NULL (plain MoCo-v3, or another method).
static const ser_moco_addon_i *s_addon_of(int method) {
    for (size_t i = 0; i < sizeof s_addons / sizeof s_addons[0]; i++)
        if (s_addons[i]->method == method) return s_addons[i];
    return NULL;
}

int ser_moco_config_from_job(ser_moco_config *c, const ser_config *job, char err[SER_ERR_LEN]) {
    ser_moco_config_default(c);
    const ser_moco_addon_i *addon = s_addon_of(job->method.name);
    if (job->method.name != SER_CONFIG_METHOD_MOCO && !addon)
        return ser_errf(err, SER_ECONFIG, "method.name: ser_moco needs moco or one of its add-ons");
    int rc = ser_config_to_vit(job, &c->vit, err);
    if (rc) return rc;
    c->init_scheme = job->model.init == SER_CONFIG_INIT_MOCO ? SER_VIT_INIT_MOCO
                                                             : SER_VIT_INIT_GENERIC;
    c->mlp_dim = job->moco.mlp_dim;
    c->dim = job->moco.dim;
    c->T = (float)job->moco.temperature;
    c->ser = job->ser.enabled;
    c->ser_grad = job->ser.grad;
    c->ser_lambda = (float)job->ser.lambda;
    c->ser_tau = (float)job->ser.tau;
    c->ser_proj_dim = job->ser.proj_dim;
    c->ser_symmetric = job->ser.symmetric == SER_CONFIG_SYM_AUTO ? 1 : job->ser.symmetric;
    c->local_pairs = job->ser.local_pairs;
    c->addon = addon, c->addon_job = addon ? job : NULL;
    c->addon_pooled = ser_config_addon_pooled(job);
    return SER_OK;
}

int ser_moco_init(ser_moco *m, const ser_moco_config *cfg, char err[SER_ERR_LEN]) {
    memset(m, 0, sizeof *m);
    if (cfg->mlp_dim < 1 || cfg->dim < 1 || !(cfg->T > 0.0f))
        return ser_errf(err, SER_ECONFIG, "moco: mlp_dim %d, dim %d, temperature %g must be positive",
                      cfg->mlp_dim, cfg->dim, (double)cfg->T);
    if (cfg->ser && (cfg->ser_proj_dim < 1 || !(cfg->ser_tau > 0.0f) || !(cfg->ser_lambda >= 0.0f)))
        return ser_errf(err, SER_ECONFIG, "ser: proj_dim %d, tau %g, lambda %g out of range",
                      cfg->ser_proj_dim, (double)cfg->ser_tau, (double)cfg->ser_lambda);
    if ((cfg->ser || cfg->addon_pooled) && cfg->vit.cls_layer == cfg->vit.depth)
        return ser_errf(err, SER_ECONFIG,
                      "%s: needs the SER layout (cls_layer %d < depth %d): the baseline layout "
                      "has no block-k patch map", cfg->ser ? "ser" : "moco.addon_layer",
                      cfg->vit.cls_layer, cfg->vit.depth);
    if (cfg->addon_pooled && !cfg->addon)
        return ser_errf(err, SER_ECONFIG, "moco.addon_layer: plain MoCo-v3 has no add-on to read it");
    m->cfg = *cfg;
    ser_ptab_init(&m->tab);
    ser_ptab_init(&m->mtab);
    ser_ptab_init(&m->btab);
    int C = cfg->vit.dim, rc;
    ser_mlp_layer_spec spec[SER_MLP_MAX_LAYERS];
    if ((rc = ser_vit_register(&m->vit, &cfg->vit, &m->tab, "base_encoder.", err))) goto fail;
    int n = ser_mlp_moco_spec(spec, 3, C, cfg->mlp_dim, cfg->dim, 1);
    if ((rc = ser_mlp_register(&m->head, spec, n, &m->tab, &m->btab, "base_encoder.head.", err)))
        goto fail;
    m->n_base = m->tab.n;
    n = ser_mlp_moco_spec(spec, 2, cfg->dim, cfg->mlp_dim, cfg->dim, 1);
    if ((rc = ser_mlp_register(&m->pred, spec, n, &m->tab, &m->btab, "predictor.", err))) goto fail;
    if (cfg->addon) {  // its tensors after the predictor
        SER_ASSERT(cfg->addon_job);
        m->addon = ser_xcalloc(1, cfg->addon->state_size);
        if ((rc = cfg->addon->build(m->addon, cfg->addon_job, C, &m->tab, &m->btab, err)))
            goto fail;
    }
    if (cfg->ser) {
        ser_mlp_layer_spec pe[2] = {{C, cfg->ser_proj_dim, 0, SER_BN_NONE, SER_ACT_GELU, 1},
                                    {cfg->ser_proj_dim, cfg->ser_proj_dim, 0, SER_BN_NONE,
                                     SER_ACT_NONE, 1}};
        if ((rc = ser_mlp_register(&m->proj, pe, 2, &m->tab, &m->btab, "projector_equiv.", err)))
            goto fail;
    }
    if ((rc = ser_vit_register(&m->mvit, &cfg->vit, &m->mtab, "momentum_encoder.", err))) goto fail;
    n = ser_mlp_moco_spec(spec, 3, C, cfg->mlp_dim, cfg->dim, 1);
    if ((rc = ser_mlp_register(&m->mhead, spec, n, &m->mtab, &m->btab, "momentum_encoder.head.",
                               err)))
        goto fail;
    SER_ASSERT(m->mtab.n == m->n_base);
    for (int i = 0; i < m->n_base; i++) SER_ASSERT(m->mtab.t[i].offset == m->tab.t[i].offset);
    // The public code's SER loss has no gradient, so DDP leaves projector_equiv and norm_equiv
    // without grads and AdamW skips them entirely (no decay either): freeze them. A decoupled
    // add-on still backpropagates through norm_equiv, which then has a gradient.
    if (cfg->ser && !cfg->ser_grad)
        for (int i = 0; i < m->tab.n; i++)
            if (strncmp(m->tab.t[i].name, "projector_equiv.", 16) == 0 ||
                (!cfg->addon_pooled &&
                 strncmp(m->tab.t[i].name, "base_encoder.norm_equiv.", 24) == 0))
                m->tab.t[i].flags |= SER_TINFO_FROZEN;
    m->params = ser_xaligned(sizeof(float) * m->tab.total);
    m->grads = ser_xaligned(sizeof(float) * m->tab.total);
    m->mparams = ser_xaligned(sizeof(float) * m->mtab.total);
    m->buffers = ser_xaligned(sizeof(float) * (m->btab.total ? m->btab.total : 1));
    ser_vit_bind(&m->vit, m->params, m->grads);
    ser_mlp_bind(&m->head, m->params, m->grads, m->buffers);
    ser_mlp_bind(&m->pred, m->params, m->grads, m->buffers);
    if (cfg->addon) cfg->addon->bind(m->addon, m->params, m->grads, m->buffers);
    if (cfg->ser) ser_mlp_bind(&m->proj, m->params, m->grads, m->buffers);
    ser_vit_bind(&m->mvit, m->mparams, NULL);
    ser_mlp_bind(&m->mhead, m->mparams, NULL, m->buffers);
    return SER_OK;
fail:
    ser_moco_free(m);
    return rc;
}

void ser_moco_free(ser_moco *m) {
    if (!m) return;
    ser_vit_free(&m->vit);
    ser_vit_free(&m->mvit);
    free(m->params), free(m->grads), free(m->mparams), free(m->buffers);
    ser_ptab_free(&m->tab);
    ser_ptab_free(&m->mtab);
    ser_ptab_free(&m->btab);
    if (m->addon && m->cfg.addon && m->cfg.addon->free) m->cfg.addon->free(m->addon);
    free(m->addon);
    memset(m, 0, sizeof *m);
}

static size_t s_base_span(const ser_moco *m) {
    const ser_tinfo *t = &m->tab.t[m->n_base - 1];
    return t->offset + ((t->numel + 15) & ~(size_t)15);
}

void ser_moco_init_weights(ser_moco *m, uint64_t seed) {
    ser_vit_init_weights(&m->vit, m->cfg.init_scheme, seed);
    ser_mlp_init_weights(&m->head, seed + 1);
    ser_mlp_init_weights(&m->pred, seed + 2);
    if (m->cfg.ser) ser_mlp_init_weights(&m->proj, seed + 3);
    if (m->cfg.addon) m->cfg.addon->init_weights(m->addon, seed + 5);
    ser_mlp_init_weights(&m->mhead, seed + 4);  // sets its BN buffers; weights copied below
    memcpy(m->mparams, m->params, sizeof(float) * s_base_span(m));
}

void ser_moco_momentum_update(ser_moco *m, double momentum) {
    // builder/moco.py: param_m.data = param_m.data * m + param_b.data * (1. - m); mtab's offsets
    // are tab's, so the base encoder's arena is the source as it is.
    ser_optim_ema(&m->mtab, m->mparams, m->params, momentum, SER_OPTIM_EMA_MOCO);
}

// --- the step --------------------------------------------------------------------------------
// The 2+4-view SER (ser.local_pairs = P): the global pair (qmap) and the P local pairs (lqmap,
// by (e, k) e-major: pair k's rows are gathered into contiguous maps, and their gradients
// scattered back), each student against student, the losses summed.
static int s_pairs_term(ser_moco *m, const ser_batch *b, ser_gathered *g, double *loss,
                        char *err) {
    const ser_moco_config *cfg = &m->cfg;
    *loss = 0;
    int n = b->n_eq, P = cfg->local_pairs, C = g->C, rc;
    if (n < 1) return SER_OK;
    if (g->n_lpairs != P || b->n_lpairs != P)
        return ser_errf(err, SER_ESHAPE, "ser: the batch has %d local SER pairs per equivariant "
                        "sample, ser.local_pairs is %d", g->n_lpairs, P);
    double L = 0;
    const int *tok[2] = {g->tok[0], g->tok[1]};
    const ser_group_elem *ge[2] = {b->g[0], b->g[1]};
    const float *map[2] = {g->qmap[0], g->qmap[1]};
    float *dmap[2] = {g->dqmap[0], g->dqmap[1]};
    rc = ser_equiv_pair_term(&m->proj, n, tok, ge, map, dmap, C, cfg->ser_tau, cfg->ser_lambda,
                             cfg->ser_grad, &L, err);
    *loss += L;
    int *tk[2] = {ser_xcalloc((size_t)n, sizeof(int)), ser_xcalloc((size_t)n, sizeof(int))};
    ser_group_elem *gk[2] = {ser_xcalloc((size_t)n, sizeof(ser_group_elem)),
                             ser_xcalloc((size_t)n, sizeof(ser_group_elem))};
    for (int k = 0; k < P && !rc; k++) {
        float *mk[2], *dk[2];
        for (int v = 0; v < 2; v++) {
            size_t rows = 0;
            for (int e = 0; e < n; e++) {
                size_t i = (size_t)e * P + k;
                tk[v][e] = g->ltok[v][i], gk[v][e] = b->lg[v][i];
                rows += (size_t)g->ltok[v][i];
            }
            mk[v] = ser_xaligned(sizeof(float) * (rows + 1) * C);
            dk[v] = ser_xaligned(sizeof(float) * (rows + 1) * C);
            for (size_t e = 0, at = 0; e < (size_t)n; e++) {
                size_t i = e * P + k, nr = (size_t)g->ltok[v][i] * C;
                memcpy(mk[v] + at, g->lqmap[v] + g->ltokoff[v][i] * C, sizeof(float) * nr);
                at += nr;
            }
        }
        const int *ct[2] = {tk[0], tk[1]};
        const ser_group_elem *cg[2] = {gk[0], gk[1]};
        const float *cm[2] = {mk[0], mk[1]};
        rc = ser_equiv_pair_term(&m->proj, n, ct, cg, cm, dk, C, cfg->ser_tau, cfg->ser_lambda,
                                 cfg->ser_grad, &L, err);
        *loss += L;
        for (int v = 0; v < 2; v++) {
            for (size_t e = 0, at = 0; e < (size_t)n; e++) {
                size_t i = e * P + k, nr = (size_t)g->ltok[v][i] * C;
                float *d = g->dlqmap[v] + g->ltokoff[v][i] * C;
                for (size_t j = 0; j < nr; j++) d[j] += dk[v][at + j];
                at += nr;
            }
            free(mk[v]), free(dk[v]);
        }
    }
    for (int v = 0; v < 2; v++) free(tk[v]), free(gk[v]);
    return rc;
}

// The batch-coupled part: heads, contrastive loss, projector_equiv, group action, NT-Xent.
// With L local views (multi-crop; the paper's inv_local4 at L = 4): queries from the 2 + L
// views (each through the projector and predictor on its own, so its own BatchNorm batch, in
// view order), keys from the two global views, and the 2(L + 1) terms ctr(q_v, k_j), j != v,
// summed (not averaged), as the reference's inv_local4 / inv_essl.
static int s_objective(ser_moco *m, const ser_batch *b, ser_gathered *st, ser_moco_losses *out,
                       char *err) {
    const ser_moco_config *cfg = &m->cfg;
    // An add-on that reads the local views itself (E-SSL's rotated crops) keeps them out of the
    // contrastive loss.
    int queries = !cfg->addon || cfg->addon->local_queries;
    int B = st->B, D = cfg->dim, V = queries ? 2 + st->n_local : 2, rc = SER_OK;
    size_t BD = (size_t)B * D;
    ser_mlp_acts ha[2 + SER_MAX_LOCAL], pa[2 + SER_MAX_LOCAL], ma;
    memset(ha, 0, sizeof ha), memset(pa, 0, sizeof pa), memset(&ma, 0, sizeof ma);
    float *P[2 + SER_MAX_LOCAL], *KZ[2], *dP[2 + SER_MAX_LOCAL];
    float *dz = ser_xaligned(sizeof(float) * BD);
    for (int v = 0; v < V; v++) {
        const float *q = v < 2 ? st->qcls[v] : st->lcls[v - 2];
        P[v] = ser_xaligned(sizeof(float) * BD);
        dP[v] = ser_xaligned(sizeof(float) * BD);
        const float *z = ser_mlp_forward(&m->head, &ha[v], q, B, 1);
        memcpy(P[v], ser_mlp_forward(&m->pred, &pa[v], z, B, 1), sizeof(float) * BD);
    }
    for (int v = 0; v < 2; v++) {
        KZ[v] = ser_xaligned(sizeof(float) * BD);
        memcpy(KZ[v], ser_mlp_forward(&m->mhead, &ma, st->kcls[v], B, 1), sizeof(float) * BD);
    }
    out->loss_inv = ser_moco_ctr(dP[0], P[0], KZ[1], B, D, cfg->T, 1.0f) +
                    ser_moco_ctr(dP[1], P[1], KZ[0], B, D, cfg->T, 1.0f);
    for (int v = 2; v < V; v++) {  // a local query against both keys (ser_moco_ctr adds to dP)
        out->loss_inv += ser_moco_ctr(dP[v], P[v], KZ[0], B, D, cfg->T, 1.0f);
        out->loss_inv += ser_moco_ctr(dP[v], P[v], KZ[1], B, D, cfg->T, 1.0f);
    }
    for (int v = 0; v < V; v++) {
        ser_mlp_backward(&m->pred, &pa[v], dz, dP[v]);
        ser_mlp_backward(&m->head, &ha[v], v < 2 ? st->dqcls[v] : st->dlcls[v - 2], dz);
    }
    out->loss_equiv = 0;
    if (cfg->ser && cfg->local_pairs) {
        rc = s_pairs_term(m, b, st, &out->loss_equiv, err);
    } else if (cfg->ser) {
        ser_equiv_opts eo = {.tau = cfg->ser_tau, .lambda = cfg->ser_lambda, .grad = cfg->ser_grad,
                             .both_directions = cfg->ser_symmetric, .keys_from_student = 0};
        rc = ser_equiv_term(&m->proj, b, st, &eo, &out->loss_equiv, err);
    }
    out->loss = out->loss_inv + (double)cfg->ser_lambda * out->loss_equiv;
    out->loss_addon = 0;
    if (cfg->addon && !rc) {
        // Layer decoupling: the add-on sees the pooled block-k maps where it reads [CLS] rows
        // (global views in qcls, local views in lcls) and its gradients land in dqpool.
        ser_gathered ag = *st;
        if (cfg->addon_pooled) {
            SER_ASSERT(st->pool);
            for (int v = 0; v < 2 + st->n_local; v++) {
                float **q = v < 2 ? &ag.qcls[v] : &ag.lcls[v - 2];
                float **d = v < 2 ? &ag.dqcls[v] : &ag.dlcls[v - 2];
                *q = st->qpool[v], *d = st->dqpool[v];
            }
        }
        rc = cfg->addon->loss(m->addon, b, &ag, &out->loss_addon, err);
        out->loss += out->loss_addon;
    }
    for (int v = 0; v < V; v++) {
        free(P[v]), free(dP[v]);
        ser_mlp_acts_free(&ha[v]), ser_mlp_acts_free(&pa[v]);
    }
    free(KZ[0]), free(KZ[1]);
    ser_mlp_acts_free(&ma);
    free(dz);
    return rc;
}

int ser_moco_objective(ser_moco *m, const ser_batch *b, ser_gathered *g, ser_moco_losses *out,
                       char err[SER_ERR_LEN]) {
    int rc = s_objective(m, b, g, out, err);
    if (!rc && !(isfinite(out->loss_inv) && isfinite(out->loss_equiv) && isfinite(out->loss_addon)))
        rc = ser_errf(err, SER_ENONFINITE, "non-finite loss (inv %g, equiv %g, add-on %g)",
                      out->loss_inv, out->loss_equiv, out->loss_addon);
    return rc;
}

// --- the objective table (ser_objective.h) ----------------------------------------------------
static int s_init(void *st, const ser_config *cfg, ser_objective_model *om, char err[SER_ERR_LEN]) {
    ser_moco *m = st;
    ser_moco_config mc;
    int rc;
    if ((rc = ser_moco_config_from_job(&mc, cfg, err)) || (rc = ser_moco_init(m, &mc, err)))
        return rc;
    ser_objective_model_fill(om, &m->tab, m->params, m->grads, &m->mtab, m->mparams, &m->btab,
                             m->buffers, &m->vit, &m->mvit, mc.ser, mc.ser_grad);
    om->pool = mc.addon_pooled;
    return SER_OK;
}

static void s_free(void *st) { ser_moco_free(st); }
static void s_init_weights(void *st, uint64_t seed) { ser_moco_init_weights(st, seed); }
static void s_ema(void *st, double momentum) { ser_moco_momentum_update(st, momentum); }

static int s_objective_i(void *st, const ser_batch *b, ser_gathered *g, const ser_objective_step *s,
                         double losses[3], char err[SER_ERR_LEN]) {
    (void)s;
    ser_moco_losses L;
    int rc = ser_moco_objective(st, b, g, &L, err);
    losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    return rc;
}

static int s_monitors_addon(void *st, const char **names, double *values) {
    const ser_moco *m = st;
    return m->cfg.addon && m->cfg.addon->monitors ? m->cfg.addon->monitors(m->addon, names, values)
                                                   : 0;
}

static void s_sched(const ser_config *cfg, ser_sched_params *sp) {
    sp->lr_kind = SER_SCHED_MOCO;
    sp->momentum_kind = SER_SCHED_MOCO;
    sp->momentum = cfg->moco.momentum;
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3], const char **key) {
    double M = cfg->moco.mlp_dim, D = cfg->moco.dim;
    double proj = C * M + M * M + M * D, pred = D * M + M * D;
    f[0] = proj + pred, f[1] = proj;
    // Every query view's hidden and output rows, and gradients; the two keys'.
    f[2] = (2.0 + cfg->data.local_crops) * B * (6 * M + 4 * D);
    *key = "moco.mlp_dim / moco.dim (projector and predictor)";
}

// An add-on method's estimate: MoCo's plus the add-on's.
static void s_memory_addon(const ser_config *cfg, double C, double B, double f[3],
                           const char **key) {
    s_memory(cfg, C, B, f, key);
    const ser_moco_addon_i *addon = s_addon_of(cfg->method.name);
    if (addon && addon->memory) addon->memory(cfg, C, B, f);
}

// MoCo-v3 and E-SSL share everything but their name, memory estimate and monitors.
#define S_MOCO_FAMILY                                                                 \
    .student_prefix = "base_encoder.", .teacher_prefix = "momentum_encoder.",         \
    .ema = SER_OBJECTIVE_EMA_BEFORE, .ema_kind = SER_OPTIM_EMA_MOCO,                  \
    .state_size = sizeof(ser_moco), .local_views = 1, .init = s_init, .free = s_free, \
    .init_weights = s_init_weights, .objective = s_objective_i, .teacher_ema = s_ema, \
    .sched = s_sched

const ser_objective_i ser_objective_moco = {
    .name = "moco",
    S_MOCO_FAMILY,
    .memory = s_memory,
};

// An add-on method: MoCo-v3's table with the add-on's name, memory and monitors; vp = 1 for one
// that reads the global views' parameters (the coordinator then requires them).
#define SER_MOCO_OBJECTIVE(nm, vp)                                                        \
    {.name = nm, .base_section = "moco", S_MOCO_FAMILY, .memory = s_memory_addon,          \
     .monitors = s_monitors_addon, .view_params = vp}

const ser_objective_i ser_objective_essl = SER_MOCO_OBJECTIVE("essl", 0);
const ser_objective_i ser_objective_augself = SER_MOCO_OBJECTIVE("augself", 1);
const ser_objective_i ser_objective_equimod = SER_MOCO_OBJECTIVE("equimod", 1);
const ser_objective_i ser_objective_stl = SER_MOCO_OBJECTIVE("stl", 0);
