// ser_train.c — see ser_train.h.
#include "ser_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_kernels.h"
#include "ser_monitor.h"
#include "ser_safetensors.h"
#include "ser_vit.h"

int ser_trainer_init_model(ser_trainer *t, const ser_config *cfg, char err[SER_ERR_LEN]) {
    memset(t, 0, sizeof *t);
    // Refuse before allocating what cannot fit (an allocation failure aborts the process).
    int rc = ser_config_check_memory_here(cfg, err);
    if (rc) return rc;
    t->obj = ser_objective_get(cfg->method.name);
    if (!t->obj) return ser_errf(err, SER_ECONFIG, "method.name: no objective %d", cfg->method.name);
    t->cfg = *cfg;
    t->method = cfg->method.name;
    t->lr_fix = t->wd_fix = t->mom_fix = NAN;
    t->st = ser_xcalloc(1, t->obj->state_size);
    if ((rc = t->obj->init(t->st, cfg, &t->mdl, err))) {
        free(t->st);
        t->st = NULL, t->obj = NULL;
        return rc;
    }
    const ser_objective_model *m = &t->mdl;
    t->tab = m->tab, t->params = m->params, t->grads = m->grads;
    for (int k = 0; k < m->ntabs; k++) t->tabs[k] = m->tabs[k], t->arenas[k] = m->arenas[k];
    t->ntabs = m->ntabs;
    t->active = ser_xcalloc((size_t)t->tab->n + 1, 1);
    return SER_OK;
}

int ser_trainer_init(ser_trainer *t, const ser_config *cfg, int64_t iters_per_epoch,
                     char err[SER_ERR_LEN]) {
    // The linear layers' precision is per process: a training process runs its job's.
    if (ser_kernels_set_precision(cfg->run.precision, err, SER_ERR_LEN)) {
        memset(t, 0, sizeof *t);
        return SER_ECONFIG;
    }
    int rc = ser_trainer_init_model(t, cfg, err);
    if (rc) return rc;
    t->ipe = iters_per_epoch;
    ser_optim_config oc;
    ser_config_to_optim(cfg, &oc);
    if ((rc = ser_optim_init(&t->opt, t->tab, &oc, err))) {
        ser_trainer_free(t);
        return rc;
    }
    ser_config_to_sched(cfg, iters_per_epoch, &t->sp);
    return SER_OK;
}

void ser_trainer_set_ipe(ser_trainer *t, int64_t iters_per_epoch) {
    SER_ASSERT(iters_per_epoch >= 1);
    t->ipe = iters_per_epoch;
    ser_config_to_sched(&t->cfg, iters_per_epoch, &t->sp);
}

void ser_trainer_free(ser_trainer *t) {
    if (!t) return;
    ser_optim_free(&t->opt);
    ser_engine_free(&t->eng);
    if (t->obj && t->st) t->obj->free(t->st);
    free(t->st);
    free(t->active);
    memset(t, 0, sizeof *t);
}

void ser_trainer_init_weights(ser_trainer *t, uint64_t seed) { t->obj->init_weights(t->st, seed); }

int ser_trainer_load(ser_trainer *t, const char *path, char err[SER_ERR_LEN]) {
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (!rc) rc = ser_st_load_ptabs(f, t->tabs, t->arenas, t->ntabs, "", 1, err);
    ser_st_destroy(&f);
    return rc;
}

void ser_trainer_values(const ser_trainer *t, int64_t it, double *lr, double *wd, double *momentum) {
    ser_sched_values sv;
    ser_sched_eval(&t->sp, it, &sv);
    *lr = isnan(t->lr_fix) ? sv.lr : t->lr_fix;
    *wd = isnan(t->wd_fix) ? sv.wd : t->wd_fix;
    *momentum = isnan(t->mom_fix) ? sv.momentum : t->mom_fix;
}

size_t ser_trainer_span(const ser_trainer *t, size_t *off, size_t *toff) {
    size_t span = ser_vit_span(t->mdl.student, off);
    *toff = 0;
    if (t->mdl.teacher) SER_ASSERT(ser_vit_span(t->mdl.teacher, toff) == span);
    return span;
}

// --- the local engine ---------------------------------------------------------------------------
void ser_trainer_local_init(ser_trainer_local *l, ser_trainer *t, const ser_batch *b, int shards,
                            int64_t it) {
    memset(l, 0, sizeof *l);
    l->t = t, l->b = b, l->shards = shards;
    l->seed = (uint64_t)t->cfg.data.seed, l->step = (uint32_t)it;
}

void ser_trainer_local_free(ser_trainer_local *l) {
    if (l->have_g) ser_gathered_free(&l->g);
    l->have_g = 0;
}

static int s_local_forward(void *ctx, const ser_batch **b, ser_gathered **g, char err[SER_ERR_LEN]) {
    ser_trainer_local *l = ctx;
    ser_trainer *t = l->t;
    ser_trainer_local_free(l);
    int rc = ser_batch_check(l->b, &t->mdl.student->cfg, l->shards, err);
    int flags = (t->mdl.ser ? SER_ENGINE_MAPS : 0) | (t->mdl.pool ? SER_ENGINE_POOL : 0);
    if (!rc) rc = ser_engine_forward(&t->eng, t->mdl.student, t->mdl.teacher, l->b, l->shards,
                                     flags, l->seed, l->step, &l->g, err);
    if (rc) return rc;
    l->have_g = 1;
    *b = l->b, *g = &l->g;
    return SER_OK;
}

static int s_local_backward(void *ctx, float *grads, char err[SER_ERR_LEN]) {
    (void)err;
    ser_trainer_local *l = ctx;
    ser_trainer *t = l->t;
    (void)grads;  // the engine writes the student's span of t->grads, which grads points into
    SER_ASSERT(l->have_g);
    ser_engine_backward(&t->eng, t->mdl.student, l->b, l->shards, &l->g,
                        t->mdl.ser && t->mdl.ser_grad);
    ser_trainer_local_free(l);
    return SER_OK;
}

const ser_step_engine_i ser_trainer_local_engine = {s_local_forward, s_local_backward};

// --- the step loop ------------------------------------------------------------------------------
int ser_trainer_step(ser_trainer *t, const ser_step_engine_i *e, void *ctx, int64_t it, double lr,
                     double wd, double momentum, double losses[3], float *grads0, double *gnorm,
                     int *phase, char err[SER_ERR_LEN]) {
    const ser_objective_i *o = t->obj;
    int ph = SER_STEP_FORWARD, rc;
    if (o->ema == SER_OBJECTIVE_EMA_BEFORE && momentum >= 0) o->teacher_ema(t->st, momentum);
    const ser_batch *b = NULL;
    ser_gathered *g = NULL;
    if ((rc = e->forward(ctx, &b, &g, err))) goto out;
    ph = SER_STEP_OBJECTIVE;
    memset(t->grads, 0, sizeof(float) * t->tab->total);
    ser_sched_values sv;
    ser_sched_eval(&t->sp, it, &sv);
    ser_objective_step os = {it, it / t->ipe, momentum, sv.teacher_temp};
    if ((rc = o->objective(t->st, b, g, &os, losses, err))) {
        if (rc == SER_ENONFINITE) ser_err_prefix(err, "step %lld: ", (long long)it);
        goto out;
    }
    t->n_eq = b->n_eq;
    t->cls_std = ser_monitor_std(g->qcls[0], g->B, g->C);  // reads only: the bits stay
    t->n_mon = o->monitors ? o->monitors(t->st, t->mon_names, t->mon) : 0;
    ph = SER_STEP_BACKWARD;
    size_t off, toff, span = ser_trainer_span(t, &off, &toff);
    (void)span;
    if ((rc = e->backward(ctx, t->grads + off, err))) goto out;
    if (grads0) memcpy(grads0, t->grads, sizeof(float) * t->tab->total);
    ph = SER_STEP_APPLY;
    rc = ser_trainer_apply(t, it, lr, wd, momentum, gnorm, err);
out:
    if (phase) *phase = ph;
    return rc;
}

int ser_trainer_step_local(ser_trainer *t, const ser_batch *b, int shards, int64_t it, double lr,
                           double wd, double momentum, double losses[3], float *grads0,
                           double *gnorm, char err[SER_ERR_LEN]) {
    ser_trainer_local l;
    ser_trainer_local_init(&l, t, b, shards, it);
    int rc = ser_trainer_step(t, &ser_trainer_local_engine, &l, it, lr, wd, momentum, losses,
                              grads0, gnorm, NULL, err);
    ser_trainer_local_free(&l);
    return rc;
}

void ser_trainer_active(const ser_trainer *t, int64_t it, int n_eq, unsigned char *active) {
    memset(active, 1, (size_t)t->tab->n);
    if (t->obj->hold) t->obj->hold(t->st, t->ipe > 0 ? it / t->ipe : 0, active);
    ser_objective_equiv_active(t->tab, t->mdl.ser, t->mdl.ser_grad, n_eq, t->mdl.pool, active);
}

int ser_trainer_apply(ser_trainer *t, int64_t it, double lr, double wd, double momentum,
                      double *gnorm, char err[SER_ERR_LEN]) {
    double g = ser_optim_clip_grad(t->tab, t->grads, t->cfg.optim.clip, t->cfg.optim.clip_mode,
                                   NULL, NULL, NULL);
    if (gnorm) *gnorm = g;
    if (!isfinite(g)) {
        snprintf(err, SER_ERR_LEN, "step %lld: non-finite gradient (global norm %g); not applied",
                 (long long)it, g);
        return SER_ENONFINITE;
    }
    // The reference clips, then leaves out what has no gradient in this step's graph.
    ser_trainer_active(t, it, t->n_eq, t->active);
    ser_optim_step(&t->opt, t->params, t->grads, lr, wd, t->active);
    if (t->obj->after_apply) {
        ser_objective_step os = {it, t->ipe > 0 ? it / t->ipe : 0, momentum, 0};
        t->obj->after_apply(t->st, &os);
    }
    return SER_OK;
}

int ser_trainer_write(const ser_trainer *t, const char *path, const float *grads0,
                      const float *losses, int64_t steps, int64_t first_iter,
                      char err[SER_ERR_LEN]) {
    const ser_ptab *tab = t->tab;
    const ser_optim *op = &t->opt;
    ser_st_writer *w = ser_st_writer_new();
    float *lcol[3];
    for (int j = 0; j < 3; j++) {
        lcol[j] = ser_xcalloc((size_t)steps + 1, sizeof(float));
        for (int64_t k = 0; k < steps; k++) lcol[j][k] = losses[k * 3 + j];
    }
    int64_t kshape[1] = {steps};
    ser_st_writer_add(w, "loss", SER_DT_F32, 1, kshape, lcol[0]);
    ser_st_writer_add(w, "loss_inv", SER_DT_F32, 1, kshape, lcol[1]);
    ser_st_writer_add(w, "loss_equiv", SER_DT_F32, 1, kshape, lcol[2]);
    if (grads0) ser_st_writer_add_ptab(w, tab, grads0, "grad.");
    // Every table; counters (BatchNorm's num_batches_tracked) as 0-d I64, as PyTorch and the
    // checkpoints store them.
    int ncount = 0;
    for (int k = 0; k < t->ntabs; k++) ncount += t->tabs[k]->n;
    int64_t *counters = ser_xcalloc((size_t)ncount + 1, sizeof(int64_t));
    ncount = 0;
    for (int k = 0; k < t->ntabs; k++)
        for (int i = 0; i < t->tabs[k]->n; i++) {
            const ser_tinfo *ti = &t->tabs[k]->t[i];
            const float *src = t->arenas[k] + ti->offset;
            if ((ti->flags & SER_TINFO_COUNTER) && ti->numel == 1) {
                counters[ncount] = (int64_t)src[0];
                ser_st_writer_add(w, ti->name, SER_DT_I64, 0, NULL, &counters[ncount++]);
            } else {
                ser_st_writer_add(w, ti->name, SER_DT_F32, ti->ndim, ti->shape, src);
            }
        }
    typedef char name_t[SER_TINFO_NAME_LEN + 48];
    name_t *names = ser_xcalloc((size_t)tab->n * 3 + 1, sizeof *names);
    for (int i = 0; i < tab->n; i++) {
        const ser_tinfo *ti = &tab->t[i];
        if (op->step[i] == 0) continue;  // frozen: no state, as torch keeps none
        for (int part = 0; part < 3; part++) {
            ser_optim_state_key(op, i, part, names[i * 3 + part], sizeof names[0]);
            if (part == SER_OPTIM_STATE_STEP)
                ser_st_writer_add(w, names[i * 3 + part], SER_DT_I64, 0, NULL, &op->step[i]);
            else
                ser_st_writer_add(w, names[i * 3 + part], SER_DT_F32, ti->ndim, ti->shape,
                                  (part ? op->exp_avg_sq : op->exp_avg) + ti->offset);
        }
    }
    char hash[17], nbuf[32];
    ser_config_hash_hex(&t->cfg, hash);
    ser_st_writer_meta(w, "config_hash", hash);
    snprintf(nbuf, sizeof nbuf, "%lld", (long long)steps);
    ser_st_writer_meta(w, "steps", nbuf);
    snprintf(nbuf, sizeof nbuf, "%lld", (long long)first_iter);
    ser_st_writer_meta(w, "first_iter", nbuf);
    ser_st_writer_meta(w, "format", "ser-step-v1");
    int rc = ser_st_writer_save(w, path, err);
    ser_st_writer_destroy(&w);
    for (int j = 0; j < 3; j++) free(lcol[j]);
    free(names);
    free(counters);
    return rc;
}

ser_ckpt *ser_trainer_ckpt(ser_trainer *t) {
    ser_ckpt *ck = ser_ckpt_new();
    for (int k = 0; k < t->ntabs; k++) ser_ckpt_add_table(ck, t->tabs[k], t->arenas[k], NULL);
    ser_ckpt_add_optim(ck, &t->opt);
    return ck;
}
