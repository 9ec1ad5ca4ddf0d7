// ser_backbones.c — see ser_backbones.h.
#include "ser_backbones.h"

#include <stdlib.h>
#include <string.h>

#include "ser_kernels.h"
#include "ser_optim.h"

int ser_backbones_init(ser_backbones *b, const ser_config *cfg, char err[SER_ERR_LEN]) {
    memset(b, 0, sizeof *b);
    // The linear layers' precision is per process: a worker runs its job's.
    if (ser_kernels_set_precision(cfg->run.precision, err, SER_ERR_LEN)) return SER_ECONFIG;
    // Refuse before allocating what cannot fit (an allocation failure aborts the process).
    int rc = ser_config_check_memory_here(cfg, err);
    if (rc) return rc;
    b->obj = ser_objective_get(cfg->method.name);
    if (!b->obj) return ser_errf(err, SER_ECONFIG, "method.name: no objective %d", cfg->method.name);
    ser_vit_config vc;
    if ((rc = ser_config_to_vit(cfg, &vc, err))) return rc;
    ser_ptab_init(&b->tab);
    ser_ptab_init(&b->ttab);
    b->has_teacher = b->obj->teacher_prefix != NULL;
    if ((rc = ser_vit_register(&b->student, &vc, &b->tab, b->obj->student_prefix, err)) ||
        (b->has_teacher &&
         (rc = ser_vit_register(&b->teacher, &vc, &b->ttab, b->obj->teacher_prefix, err)))) {
        ser_backbones_free(b);
        return rc;
    }
    b->params = ser_xaligned(sizeof(float) * (b->tab.total + 1));
    b->grads = ser_xaligned(sizeof(float) * (b->tab.total + 1));
    memset(b->params, 0, sizeof(float) * (b->tab.total + 1));
    memset(b->grads, 0, sizeof(float) * (b->tab.total + 1));
    ser_vit_bind(&b->student, b->params, b->grads);
    b->span = ser_vit_span(&b->student, &b->off);
    if (b->has_teacher) {
        b->tparams = ser_xaligned(sizeof(float) * (b->ttab.total + 1));
        memset(b->tparams, 0, sizeof(float) * (b->ttab.total + 1));
        ser_vit_bind(&b->teacher, b->tparams, NULL);
        SER_ASSERT(ser_vit_span(&b->teacher, &b->toff) == b->span);
    }
    b->maps = (cfg->ser.enabled ? SER_ENGINE_MAPS : 0) |
              (ser_config_addon_pooled(cfg) ? SER_ENGINE_POOL : 0);
    b->map_grad = cfg->ser.enabled && cfg->ser.grad;
    return SER_OK;
}

void ser_backbones_free(ser_backbones *b) {
    if (!b) return;
    ser_vit_free(&b->student);
    if (b->has_teacher) ser_vit_free(&b->teacher);
    free(b->params), free(b->grads), free(b->tparams);
    ser_ptab_free(&b->tab);
    ser_ptab_free(&b->ttab);
    memset(b, 0, sizeof *b);
}

void ser_backbones_teacher_ema(ser_backbones *b, double momentum) {
    if (!b->has_teacher) return;
    // ttab and tab list the same tensors at the same offsets (one ViT config, registered first).
    ser_optim_ema(&b->ttab, b->tparams, b->params, momentum, b->obj->ema_kind);
}
