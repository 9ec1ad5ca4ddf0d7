// ser_train.c — see ser_train.h.
#include "ser_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_safetensors.h"

int ser_trainer_init(ser_trainer *t, const ser_config *cfg, int64_t iters_per_epoch,
                     char err[SER_ERR_LEN]) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->lr_fix = t->wd_fix = t->mom_fix = NAN;
    ser_moco_config mc;
    int rc = ser_moco_config_from_job(&mc, cfg, err);
    if (rc) return rc;
    if ((rc = ser_moco_init(&t->m, &mc, err))) return rc;
    ser_optim_config oc;
    ser_config_to_optim(cfg, &oc);
    if ((rc = ser_optim_init(&t->opt, &t->m.tab, &oc, err))) {
        ser_trainer_free(t);
        return rc;
    }
    ser_config_to_sched(cfg, iters_per_epoch, &t->sp);
    return SER_OK;
}

void ser_trainer_free(ser_trainer *t) {
    if (!t) return;
    ser_optim_free(&t->opt);
    ser_moco_free(&t->m);
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
    double g = ser_optim_clip_grad(&t->m.tab, t->m.grads, t->cfg.optim.clip, t->cfg.optim.clip_mode,
                                   NULL, NULL, NULL);
    if (gnorm) *gnorm = g;
    if (!isfinite(g)) {
        snprintf(err, SER_ERR_LEN, "step %lld: non-finite gradient (global norm %g); not applied",
                 (long long)it, g);
        return SER_ENONFINITE;
    }
    ser_optim_step(&t->opt, t->m.params, t->m.grads, lr, wd, NULL);
    return SER_OK;
}

int ser_trainer_write(const ser_trainer *t, const char *path, const float *grads0,
                      const float *losses, int64_t steps, int64_t first_iter,
                      char err[SER_ERR_LEN]) {
    const ser_moco *mp = &t->m;
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
    if (grads0) ser_st_writer_add_ptab(w, &mp->tab, grads0, "grad.");
    ser_st_writer_add_ptab(w, &mp->tab, mp->params, "");
    ser_st_writer_add_ptab(w, &mp->mtab, mp->mparams, "");
    ser_st_writer_add_ptab(w, &mp->btab, mp->buffers, "");
    typedef char name_t[SER_TINFO_NAME_LEN + 48];
    name_t *names = ser_xcalloc((size_t)mp->tab.n * 3 + 1, sizeof *names);
    for (int i = 0; i < mp->tab.n; i++) {
        const ser_tinfo *ti = &mp->tab.t[i];
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
