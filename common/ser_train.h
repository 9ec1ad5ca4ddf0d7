// ser_train.h — what one process needs to own a job's training state: the model, AdamW and
// the schedules, with the step-level operations shared by `ser step` and the coordinator.
//
// defines:
//   ser_trainer, ser_trainer_init(), ser_trainer_free()
//   ser_trainer_values()   lr, wd, momentum of an iteration (schedules or fixed overrides)
//   ser_trainer_apply()    clip, non-finite guard, AdamW on m.grads
//   ser_trainer_write()    the state in `ser step`'s output layout
#ifndef SER_TRAIN_H
#define SER_TRAIN_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_moco.h"
#include "ser_optim.h"
#include "ser_sched.h"

typedef struct ser_trainer {
    ser_config cfg;
    ser_moco m;
    ser_optim opt;
    ser_sched_params sp;
    double lr_fix, wd_fix, mom_fix;  // NAN: follow the schedule
} ser_trainer;

// Builds the model from cfg (method must be moco so far), zero optimizer state, schedules for
// iters_per_epoch iterations per epoch. Weights are not initialised: call
// ser_moco_init_weights() or load them.
int ser_trainer_init(ser_trainer *t, const ser_config *cfg, int64_t iters_per_epoch,
                     char err[SER_ERR_LEN]);
void ser_trainer_free(ser_trainer *t);

void ser_trainer_values(const ser_trainer *t, int64_t it, double *lr, double *wd, double *momentum);

// Clips t->m.grads per the config, refuses non-finite gradients (SER_ENONFINITE, nothing
// applied), then one AdamW step. *gnorm gets the global norm before clipping.
int ser_trainer_apply(ser_trainer *t, int64_t it, double lr, double wd, double *gnorm,
                      char err[SER_ERR_LEN]);

// Writes the state in `ser step`'s output layout (docs/step-format.md): the K loss terms
// (losses: K x 3 of loss, loss_inv, loss_equiv), the first step's gradients (grads0, or NULL),
// every weight, buffer and the AdamW state. Atomic (tmp + rename).
int ser_trainer_write(const ser_trainer *t, const char *path, const float *grads0,
                      const float *losses, int64_t steps, int64_t first_iter,
                      char err[SER_ERR_LEN]);

#endif
