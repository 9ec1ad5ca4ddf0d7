// ser_train.h — what one process needs to own a job's training state: the objective's model
// (through its table, objectives/ser_objective.h), AdamW and the schedules, and the one step
// loop shared by `ser step`, the benchmarks and the coordinator:
//     teacher EMA (objectives whose EMA opens a step) -> engine forward -> objective ->
//     engine backward -> [clip, non-finite guard, AdamW on the tensors with a gradient] ->
//     after_apply (DINO: centre, teacher EMA)
// The engine is an interface: ser_trainer_local_engine() runs the shards in this process
// (nn/ser_engine.h); the coordinator's runs them on its workers.
//
// defines:
//   ser_trainer, ser_trainer_init(), ser_trainer_init_model(), ser_trainer_free(),
//   ser_trainer_set_ipe(), ser_trainer_init_weights(), ser_trainer_load()
//   ser_trainer_values()   lr, wd, momentum of an iteration (schedules or fixed overrides)
//   ser_step_engine_i, ser_trainer_local_engine()   where the per-shard ViT work runs
//   ser_trainer_step()     the step loop; ser_trainer_step_local() on the local engine
//   ser_trainer_active()   which trainable tensors AdamW moves in a step
//   ser_trainer_apply()    clip, non-finite guard, AdamW, after_apply
//   ser_trainer_write()    the state in `ser step`'s output layout
//   ser_trainer_ckpt()     the checkpoint binding of the state (ser_ckpt.h)
#ifndef SER_TRAIN_H
#define SER_TRAIN_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_engine.h"
#include "ser_objective.h"
#include "ser_optim.h"
#include "ser_sched.h"

typedef struct ser_trainer {
    ser_config cfg;
    int method;                  // index of the objective (method.name)
    const ser_objective_i *obj;  // its table
    void *st;                    // its state (obj->state_size bytes)
    ser_objective_model mdl;     // what its init built
    int64_t ipe;                 // iterations per epoch (DINO's last-layer freeze, schedules)
    unsigned char *active;       // per trainable tensor: torch's "has a gradient" this step
    int n_eq;                    // equivariant samples of the last step's batch
    double cls_std;              // the last step's collapse monitor: ser_monitor_std of the
                                 // student's final [CLS] rows of view 0 (ser_monitor.h)
    int n_mon;                   // the objective's own monitors of the last step
    const char *mon_names[SER_OBJECTIVE_MAX_MONITORS];
    double mon[SER_OBJECTIVE_MAX_MONITORS];
    // The views every objective has: its trainable table and arenas, and the tables of a
    // checkpoint / weights file (trainable, teacher if any, buffers). Aliases of mdl's.
    ser_ptab *tab;
    float *params, *grads;
    const ser_ptab *tabs[3];
    float *arenas[3];
    int ntabs;
    ser_engine eng;              // the local engine's activations, kept across steps
    ser_optim opt;
    ser_sched_params sp;
    double lr_fix, wd_fix, mom_fix;  // NAN: follow the schedule
} ser_trainer;

// Builds the model of cfg's method, zero optimizer state, schedules for iters_per_epoch
// iterations per epoch. Weights are not initialised: call ser_trainer_init_weights() or
// ser_trainer_load().
int ser_trainer_init(ser_trainer *t, const ser_config *cfg, int64_t iters_per_epoch,
                     char err[SER_ERR_LEN]);
// The model alone (no optimizer state, no schedules). ser_trainer_free() releases it.
int ser_trainer_init_model(ser_trainer *t, const ser_config *cfg, char err[SER_ERR_LEN]);
void ser_trainer_free(ser_trainer *t);
// Changes the schedules' epoch length (a resume keeps the checkpoint's).
void ser_trainer_set_ipe(ser_trainer *t, int64_t iters_per_epoch);

void ser_trainer_init_weights(ser_trainer *t, uint64_t seed);
// Strict load of every table from a weights file in the method's state_dict names.
int ser_trainer_load(ser_trainer *t, const char *path, char err[SER_ERR_LEN]);

void ser_trainer_values(const ser_trainer *t, int64_t it, double *lr, double *wd, double *momentum);

// Where a step's per-shard ViT work runs.
typedef struct ser_step_engine_i {
    // The forward half: every shard's student (and teacher) pass, gathered in *g (dqcls / dqmap
    // zeroed), and the step's batch in *b (a remote engine learns its composition from the
    // shards). The pointers stay valid until the next forward.
    int (*forward)(void *ctx, const ser_batch **b, ser_gathered **g, char err[SER_ERR_LEN]);
    // The backward half: the student ViT's gradient from g's dqcls / dqmap, each shard's into a
    // zeroed buffer, added in shard order into grads (the student's span, overwritten).
    int (*backward)(void *ctx, float *grads, char err[SER_ERR_LEN]);
} ser_step_engine_i;

typedef struct ser_trainer_local {
    ser_trainer *t;
    const ser_batch *b;
    int shards;
    uint64_t seed;
    uint32_t step;
    ser_gathered g;
    int have_g;
} ser_trainer_local;
// The engine of one process over batch b in `shards` shards (drop-path masks keyed by the
// job's data.seed and step it). Release with ser_trainer_local_free().
extern const ser_step_engine_i ser_trainer_local_engine;
void ser_trainer_local_init(ser_trainer_local *l, ser_trainer *t, const ser_batch *b, int shards,
                            int64_t it);
void ser_trainer_local_free(ser_trainer_local *l);

// What ser_trainer_step did last, for a caller that names the source of a failure.
enum { SER_STEP_FORWARD = 1, SER_STEP_OBJECTIVE, SER_STEP_BACKWARD, SER_STEP_APPLY };

// One step at iteration it, lr and wd (ser_trainer_values): the step loop above. losses: total,
// invariance, equivariance. grads0: when not NULL, receives the whole gradient before the
// apply. *gnorm: the global norm before clipping. *phase: SER_STEP_* reached (on failure, the
// one that failed). Nothing reaches the parameters or AdamW unless every phase succeeds (the
// teacher EMA of an objective whose EMA opens the step has run).
int ser_trainer_step(ser_trainer *t, const ser_step_engine_i *e, void *ctx, int64_t it, double lr,
                     double wd, double momentum, double losses[3], float *grads0, double *gnorm,
                     int *phase, char err[SER_ERR_LEN]);

// ser_trainer_step on the local engine over batch b in `shards` shards (`ser step`, benchmarks).
int ser_trainer_step_local(ser_trainer *t, const ser_batch *b, int shards, int64_t it, double lr,
                           double wd, double momentum, double losses[3], float *grads0,
                           double *gnorm, char err[SER_ERR_LEN]);

// active[i] of every trainable tensor for a step at iteration it whose batch has n_eq
// equivariant samples: 0 for a tensor outside that step's graph (the SER tensors when the term
// is off, has no gradient or no sample) and for one the objective holds (DINO's frozen last
// layer); AdamW leaves those, their moments and step counts untouched, as torch does for a
// parameter whose .grad is None.
void ser_trainer_active(const ser_trainer *t, int64_t it, int n_eq, unsigned char *active);

// Clips the gradients per the config, refuses non-finite ones (SER_ENONFINITE, nothing
// applied), then one AdamW step on the active tensors of the last step, then the objective's
// after_apply. *gnorm gets the global norm before clipping.
int ser_trainer_apply(ser_trainer *t, int64_t it, double lr, double wd, double momentum,
                      double *gnorm, char err[SER_ERR_LEN]);

// The student's span of the trainable arena (params/grads + *off, span floats) and the
// teacher's (*toff), as the distributed runtime moves them.
size_t ser_trainer_span(const ser_trainer *t, size_t *off, size_t *toff);

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
