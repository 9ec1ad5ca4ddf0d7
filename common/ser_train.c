// ser_train.c — see ser_train.h.
#include "ser_train.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

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
