// ser_train.h — what one process needs to own a job's training state: the model, AdamW and
// the schedules, with the step-level operations shared by `ser step` and the coordinator.
//
// defines:
//   ser_trainer, ser_trainer_init(), ser_trainer_init_model(), ser_trainer_free(),
//   ser_trainer_init_weights(),
//   ser_trainer_load(), ser_trainer_forward_backward()
//   ser_trainer_values()   lr, wd, momentum of an iteration (schedules or fixed overrides)
//   ser_trainer_apply()    clip, non-finite guard, AdamW on m.grads
//   ser_trainer_write()    the state in `ser step`'s output layout
//   ser_trainer_ckpt()     the checkpoint binding of the state (ser_ckpt.h)
#ifndef SER_TRAIN_H
#define SER_TRAIN_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_barlow.h"
#include "ser_ckpt.h"
#include "ser_dino.h"
#include "ser_moco.h"
#include "ser_optim.h"
#include "ser_sched.h"

typedef struct ser_trainer {
    ser_config cfg;
    int method;       // SER_CONFIG_METHOD_*
    ser_moco m;       // method moco
    ser_barlow bt;    // method barlow
    ser_dino dino;    // method dino
    int64_t ipe;      // iterations per epoch (DINO's last-layer freeze, schedules)
    unsigned char *active;  // per trainable tensor: torch's "has a gradient" (DINO's freeze)
    // The method's state, as the views every method has: its trainable table and arenas, and
    // the tables of a checkpoint / weights file (trainable, teacher if any, buffers).
    ser_ptab *tab;
    float *params, *grads;
    const ser_ptab *tabs[3];
    float *arenas[3];
    int ntabs;
    ser_optim opt;
    ser_sched_params sp;
    double lr_fix, wd_fix, mom_fix;  // NAN: follow the schedule
} ser_trainer;

// Builds the model of cfg's method (moco, barlow, dino), zero optimizer state, schedules for
// iters_per_epoch iterations per epoch. Weights are not initialised: call
// ser_trainer_init_weights() or ser_trainer_load().
int ser_trainer_init(ser_trainer *t, const ser_config *cfg, int64_t iters_per_epoch,
                     char err[SER_ERR_LEN]);
// The model alone (no optimizer state, no schedules): what a worker computes with.
// ser_trainer_free() releases it; only the model's operations apply to it.
int ser_trainer_init_model(ser_trainer *t, const ser_config *cfg, char err[SER_ERR_LEN]);
void ser_trainer_free(ser_trainer *t);
// Changes the schedules' epoch length (a resume keeps the checkpoint's).
void ser_trainer_set_ipe(ser_trainer *t, int64_t iters_per_epoch);

void ser_trainer_init_weights(ser_trainer *t, uint64_t seed);
// Strict load of every table from a weights file in the method's state_dict names.
int ser_trainer_load(ser_trainer *t, const char *path, char err[SER_ERR_LEN]);

// One step's forward and backward over the batch in `shards` shards; fills t->grads.
// losses: total, invariance, equivariance. momentum: the teacher EMA (MoCo; ignored otherwise).
int ser_trainer_forward_backward(ser_trainer *t, const ser_batch *b, int shards, int64_t it,
                                 double momentum, double losses[3], char err[SER_ERR_LEN]);

void ser_trainer_values(const ser_trainer *t, int64_t it, double *lr, double *wd, double *momentum);

// The ViTs of the method, as the distributed runtime moves them: the student backbone's span of
// the trainable arena (params/grads + off, span floats) and, when the method has one, the
// teacher's (MoCo's momentum encoder, DINO's EMA teacher; tparams + toff) — NULL for barlow.
// maps / map_grad: the engine's flags (gather the SER maps; backpropagate through them).
typedef struct ser_trainer_vits {
    ser_vit *student, *teacher;
    float *params, *grads, *tparams;
    size_t off, toff, span;
    int maps, map_grad;
    int ema_before;  // 1: the teacher EMA opens the step (MoCo); 0: it closes it (DINO)
} ser_trainer_vits;
void ser_trainer_get_vits(ser_trainer *t, ser_trainer_vits *v);

// The method's teacher EMA towards the current student with momentum m: MoCo's momentum
// update (the start of a step), DINO's teacher update (the end of a step, without the centre);
// nothing for barlow. A worker that holds a teacher advances it with this, bitwise as the
// coordinator's own (same function, same operands).
void ser_trainer_teacher_ema(ser_trainer *t, double momentum);

// Phase 2 of a step (docs/batch-coupling.md) on a batch gathered from its shards: the
// method's objective, which fills g->dqcls / g->dqmap and the head-side part of t->grads
// (zeroed here first). losses: total, invariance, equivariance. SER_ENONFINITE names the term.
int ser_trainer_objective(ser_trainer *t, const ser_batch *b, ser_gathered *g, int64_t it,
                          double losses[3], char err[SER_ERR_LEN]);

// Clips the gradients per the config, refuses non-finite ones (SER_ENONFINITE, nothing
// applied), then one AdamW step (DINO: without the last layer while it is frozen, then the
// centre update and the teacher EMA). *gnorm gets the global norm before clipping.
int ser_trainer_apply(ser_trainer *t, int64_t it, double lr, double wd, double *gnorm,
                      char err[SER_ERR_LEN]);

// Writes the state in `ser step`'s output layout (docs/step-format.md): the K loss terms
// (losses: K x 3 of loss, loss_inv, loss_equiv), the first step's gradients (grads0, or NULL),
// every weight, buffer and the AdamW state. Atomic (tmp + rename).
int ser_trainer_write(const ser_trainer *t, const char *path, const float *grads0,
                      const float *losses, int64_t steps, int64_t first_iter,
                      char err[SER_ERR_LEN]);

// The checkpoint binding of the job's state: every table of tabs[] (trainable, teacher,
// buffers) and the AdamW state; the same binding saves and loads (docs/checkpoints.md).
// Caller owns the result; release with ser_ckpt_destroy(). Valid while t is.
ser_ckpt *ser_trainer_ckpt(ser_trainer *t);

#endif
