// ser_train.c — see ser_train.h.
#include "ser_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ser_safetensors.h"

int ser_trainer_init_model(ser_trainer *t, const ser_config *cfg, char err[SER_ERR_LEN]) {
    memset(t, 0, sizeof *t);
    // Refuse before allocating what cannot fit (an allocation failure aborts the process).
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    int rc0 = pages > 0 && psz > 0
                  ? ser_config_check_memory(cfg, (double)pages * (double)psz, err)
                  : SER_OK;
    if (rc0) return rc0;
    t->cfg = *cfg;
    t->method = cfg->method.name;
    t->lr_fix = t->wd_fix = t->mom_fix = NAN;
    int rc;
    if (t->method == SER_CONFIG_METHOD_MOCO) {
        ser_moco_config mc;
        if ((rc = ser_moco_config_from_job(&mc, cfg, err)) || (rc = ser_moco_init(&t->m, &mc, err)))
            return rc;
        t->tab = &t->m.tab, t->params = t->m.params, t->grads = t->m.grads;
        t->tabs[0] = &t->m.tab, t->tabs[1] = &t->m.mtab, t->tabs[2] = &t->m.btab;
        t->arenas[0] = t->m.params, t->arenas[1] = t->m.mparams, t->arenas[2] = t->m.buffers;
        t->ntabs = 3;
    } else if (t->method == SER_CONFIG_METHOD_BARLOW) {
        ser_barlow_config bc;
        if ((rc = ser_barlow_config_from_job(&bc, cfg, err)) || (rc = ser_barlow_init(&t->bt, &bc, err)))
            return rc;
        t->tab = &t->bt.tab, t->params = t->bt.params, t->grads = t->bt.grads;
        t->tabs[0] = &t->bt.tab, t->tabs[1] = &t->bt.btab;
        t->arenas[0] = t->bt.params, t->arenas[1] = t->bt.buffers;
        t->ntabs = 2;
    } else {
        ser_dino_config dc;
        if ((rc = ser_dino_config_from_job(&dc, cfg, err)) || (rc = ser_dino_init(&t->dino, &dc, err)))
            return rc;
        t->tab = &t->dino.tab, t->params = t->dino.params, t->grads = t->dino.grads;
        t->tabs[0] = &t->dino.tab, t->tabs[1] = &t->dino.ttab, t->tabs[2] = &t->dino.btab;
        t->arenas[0] = t->dino.params, t->arenas[1] = t->dino.tparams, t->arenas[2] = t->dino.buffers;
        t->ntabs = 3;
    }
    return SER_OK;
}

int ser_trainer_init(ser_trainer *t, const ser_config *cfg, int64_t iters_per_epoch,
                     char err[SER_ERR_LEN]) {
    int rc = ser_trainer_init_model(t, cfg, err);
    if (rc) return rc;
    t->ipe = iters_per_epoch;
    t->active = ser_xcalloc((size_t)t->tab->n + 1, 1);
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
    if (t->method == SER_CONFIG_METHOD_MOCO) ser_moco_free(&t->m);
    if (t->method == SER_CONFIG_METHOD_BARLOW) ser_barlow_free(&t->bt);
    if (t->method == SER_CONFIG_METHOD_DINO) ser_dino_free(&t->dino);
    free(t->active);
    t->active = NULL;
    t->ntabs = 0;
}

void ser_trainer_init_weights(ser_trainer *t, uint64_t seed) {
    if (t->method == SER_CONFIG_METHOD_MOCO) ser_moco_init_weights(&t->m, seed);
    if (t->method == SER_CONFIG_METHOD_BARLOW) ser_barlow_init_weights(&t->bt, seed);
    if (t->method == SER_CONFIG_METHOD_DINO) ser_dino_init_weights(&t->dino, seed);
}

int ser_trainer_load(ser_trainer *t, const char *path, char err[SER_ERR_LEN]) {
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (!rc) rc = ser_st_load_ptabs(f, t->tabs, t->arenas, t->ntabs, "", 1, err);
    ser_st_destroy(&f);
    return rc;
}

int ser_trainer_forward_backward(ser_trainer *t, const ser_batch *b, int shards, int64_t it,
                                 double momentum, double losses[3], char err[SER_ERR_LEN]) {
    int rc;
    uint64_t seed = (uint64_t)t->cfg.data.seed;
    if (t->method == SER_CONFIG_METHOD_MOCO) {
        ser_moco_losses L;
        rc = ser_moco_forward_backward(&t->m, b, shards, (float)momentum, seed, (uint32_t)it, &L, err);
        losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    } else if (t->method == SER_CONFIG_METHOD_BARLOW) {
        ser_barlow_losses L;
        rc = ser_barlow_forward_backward(&t->bt, b, shards, seed, (uint32_t)it, &L, err);
        losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    } else {
        ser_sched_values sv;
        ser_sched_eval(&t->sp, it, &sv);
        ser_dino_losses L;
        rc = ser_dino_forward_backward(&t->dino, b, shards, sv.teacher_temp, seed, (uint32_t)it, &L,
                                       err);
        losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    }
    return rc;
}

void ser_trainer_get_vits(ser_trainer *t, ser_trainer_vits *v) {
    memset(v, 0, sizeof *v);
    if (t->method == SER_CONFIG_METHOD_MOCO) {
        v->student = &t->m.vit, v->teacher = &t->m.mvit, v->tparams = t->m.mparams;
        v->maps = t->m.cfg.ser, v->map_grad = t->m.cfg.ser && t->m.cfg.ser_grad;
        v->ema_before = 1;
    } else if (t->method == SER_CONFIG_METHOD_DINO) {
        v->student = &t->dino.vit, v->teacher = &t->dino.tvit, v->tparams = t->dino.tparams;
        v->maps = t->dino.cfg.ser, v->map_grad = t->dino.cfg.ser && t->dino.cfg.ser_grad;
    } else {
        v->student = &t->bt.vit;
        v->maps = t->bt.cfg.ser, v->map_grad = t->bt.cfg.ser && t->bt.cfg.ser_grad;
    }
    v->params = t->params, v->grads = t->grads;
    v->span = ser_vit_span(v->student, &v->off);
    if (v->teacher) {
        size_t tspan = ser_vit_span(v->teacher, &v->toff);
        SER_ASSERT(tspan == v->span);
    }
}

void ser_trainer_teacher_ema(ser_trainer *t, double momentum) {
    if (t->method == SER_CONFIG_METHOD_MOCO) ser_moco_momentum_update(&t->m, (float)momentum);
    if (t->method == SER_CONFIG_METHOD_DINO) ser_dino_ema_update(&t->dino, momentum);
}

int ser_trainer_objective(ser_trainer *t, const ser_batch *b, ser_gathered *g, int64_t it,
                          double losses[3], char err[SER_ERR_LEN]) {
    memset(t->grads, 0, sizeof(float) * t->tab->total);
    int rc;
    if (t->method == SER_CONFIG_METHOD_MOCO) {
        ser_moco_losses L;
        rc = ser_moco_objective(&t->m, b, g, &L, err);
        losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    } else if (t->method == SER_CONFIG_METHOD_BARLOW) {
        ser_barlow_losses L;
        rc = ser_barlow_objective(&t->bt, b, g, &L, err);
        losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    } else {
        ser_sched_values sv;
        ser_sched_eval(&t->sp, it, &sv);
        ser_dino_losses L;
        rc = ser_dino_objective(&t->dino, b, g, sv.teacher_temp, &L, err);
        losses[0] = L.loss, losses[1] = L.loss_inv, losses[2] = L.loss_equiv;
    }
    return rc;
}

void ser_trainer_values(const ser_trainer *t, int64_t it, double *lr, double *wd, double *momentum) {
    ser_sched_values sv;
    ser_sched_eval(&t->sp, it, &sv);
    *lr = isnan(t->lr_fix) ? sv.lr : t->lr_fix;
    *wd = isnan(t->wd_fix) ? sv.wd : t->wd_fix;
    *momentum = isnan(t->mom_fix) ? sv.momentum : t->mom_fix;
}

int ser_trainer_apply(ser_trainer *t, int64_t it, double lr, double wd, double *gnorm,
                      char err[SER_ERR_LEN]) {
    double g = ser_optim_clip_grad(t->tab, t->grads, t->cfg.optim.clip, t->cfg.optim.clip_mode,
                                   NULL, NULL, NULL);
    if (gnorm) *gnorm = g;
    if (!isfinite(g)) {
        snprintf(err, SER_ERR_LEN, "step %lld: non-finite gradient (global norm %g); not applied",
                 (long long)it, g);
        return SER_ENONFINITE;
    }
    if (t->method == SER_CONFIG_METHOD_DINO) {
        // The reference clips, then drops the last layer's gradient during its frozen epochs.
        double lr2, wd2, mom;
        ser_trainer_values(t, it, &lr2, &wd2, &mom);
        ser_dino_active(&t->dino, it / t->ipe, t->active);
        ser_optim_step(&t->opt, t->params, t->grads, lr, wd, t->active);
        ser_dino_after_step(&t->dino, mom);
        return SER_OK;
    }
    ser_optim_step(&t->opt, t->params, t->grads, lr, wd, NULL);
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
    for (int k = 0; k < t->ntabs; k++) ser_st_writer_add_ptab(w, t->tabs[k], t->arenas[k], "");
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
    return rc;
}

ser_ckpt *ser_trainer_ckpt(ser_trainer *t) {
    ser_ckpt *ck = ser_ckpt_new();
    for (int k = 0; k < t->ntabs; k++) ser_ckpt_add_table(ck, t->tabs[k], t->arenas[k], NULL);
    ser_ckpt_add_optim(ck, &t->opt);
    return ck;
}
