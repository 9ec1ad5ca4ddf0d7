// ser_sched.h — the training schedules of ser-reference.md §2.2, §3.4, §4.1, §6 and §8, as
// pure functions of the iteration, evaluated exactly as the reference Python does.
//
// Every function computes in double, in the reference's operation order, so the values equal
// the reference's Python floats / numpy float64 elements (up to the last-ulp differences between
// numpy's and glibc's cos, which the tests measure). Iterations are global: it = epoch*I + step,
// with I the iterations per epoch (len(data_loader), drop_last). Nothing here allocates.
//
//   MoCo-v3 (main_moco.py): the fractional epoch t = epoch + step/I drives both
//     lr(t)  = peak*t/W                                       for t < W
//            = peak*0.5*(1 + cos(pi*(t - W)/(E - W)))         after (half-cosine to 0)
//     m(t)   = 1 - 0.5*(1 + cos(pi*t/E))*(1 - m0)
//   DINO (utils.cosine_scheduler): one value per iteration of an array of E*I values,
//     linspace(start, base, W*I) (endpoint included), then
//     final + 0.5*(base - final)*(1 + cos(pi*j/(E*I - W*I))), j = it - W*I.
//     It gives DINO's lr (start 0, warmup W, final min_lr), weight decay (no warmup) and
//     teacher momentum (base m0, final 1, no warmup).
//   DINO teacher temperature: linspace(t0, t1, Wt) per epoch, then t1.
//   Barlow Twins (builder/barlowtwins.py adjust_learning_rate): base = B/256,
//     lr = base*step/(W*I) during warmup, then q = 0.5*(1 + cos(pi*s/(E*I - W*I))),
//     lr = base*q + base*0.001*(1 - q); the group lr is lr*lr_weights (1e-4 in the run).
//   SER ratio (utils.constant_scheduler): 0 for the first Ws epochs, `ratio` in the middle,
//     0 for the last Rs epochs; the equivariant count is Python's round(ratio*B) (half to
//     even), e.g. round(0.01*256) = 3 (253 invariant), round(0.01*2048) = 20.
//   Peak lr (the linear scaling rule of all three mains): base_lr*B/256.
//
// defines:
//   ser_sched_peak_lr()                      base_lr*B/256 as (base_lr*B)/256
//   ser_sched_epoch_frac()                   MoCo's t = epoch + step/I
//   ser_sched_moco_lr(), ser_sched_moco_momentum()
//   ser_sched_linspace()                     numpy.linspace(start, stop, num)[i]
//   ser_sched_cosine()                       DINO's cosine_scheduler(...)[it]
//   ser_sched_dino_teacher_temp()            DINO's teacher temperature at an epoch
//   ser_sched_barlow_lr()                    Barlow Twins' lr at an iteration
//   ser_sched_constant()                     SER's constant_scheduler(...)[it]
//   ser_sched_round_half_even(), ser_sched_equiv_count()
//   ser_sched_kind (SER_SCHED_*), ser_sched_params, ser_sched_values, ser_sched_eval()
//                                            every value of one iteration of a job at once
#ifndef SER_SCHED_H
#define SER_SCHED_H

#include <stdint.h>

// --- the reference formulas --------------------------------------------------------------------
// (base_lr * global_batch) / 256, the order of `args.lr * args.batch_size / 256`.
double ser_sched_peak_lr(double base_lr, int64_t global_batch);

// MoCo's fractional epoch for global iteration it: epoch + (it % I)/I with epoch = it / I.
double ser_sched_epoch_frac(int64_t it, int64_t iters_per_epoch);
// adjust_learning_rate of main_moco.py at fractional epoch t (W, E in epochs).
double ser_sched_moco_lr(double t, double peak_lr, int64_t warmup_epochs, int64_t epochs);
// adjust_moco_momentum of main_moco.py: always the cosine, from m0 at t=0 to 1 at t=E.
double ser_sched_moco_momentum(double t, double m0, int64_t epochs);

// numpy.linspace(start, stop, num)[i] (endpoint=True), 0 <= i < num: i*step + start with
// step = (stop - start)/(num - 1), the last element exactly stop, [start] for num == 1.
double ser_sched_linspace(double start, double stop, int64_t num, int64_t i);
// utils.cosine_scheduler(base, final, epochs, I, warmup_epochs, start_warmup)[it],
// 0 <= it < epochs*I. SER_ASSERTs the range.
double ser_sched_cosine(int64_t it, double base, double final, int64_t epochs,
                        int64_t iters_per_epoch, int64_t warmup_epochs, double start_warmup);
// DINOLoss.teacher_temp_schedule[epoch]: linspace(t0, t1, warmup_epochs) then t1.
double ser_sched_dino_teacher_temp(int64_t epoch, double t0, double t1, int64_t warmup_epochs);
// Barlow Twins' lr of param group 0 at global iteration it: lr_weights times the schedule of
// builder/barlowtwins.py (warmup hard-coded to 10 epochs there, a parameter here; end factor
// 0.001 as there).
double ser_sched_barlow_lr(int64_t it, int64_t iters_per_epoch, int64_t epochs,
                           int64_t warmup_epochs, int64_t global_batch, double lr_weights);
// utils.constant_scheduler(epochs, I, warmup_epochs, rest_epochs, ratio)[it].
double ser_sched_constant(int64_t it, int64_t epochs, int64_t iters_per_epoch,
                          int64_t warmup_epochs, int64_t rest_epochs, double ratio);

// Python's round() of a float: nearest integer, ties to even (round(2.5) == 2).
double ser_sched_round_half_even(double x);
// round(ratio * batch): the number of equivariant samples of a batch (the reference applies it
// to the per-GPU batch; ser to the global batch, see docs/config.md).
int ser_sched_equiv_count(double ratio, int batch);

// --- a job's schedules ---------------------------------------------------------------------------
enum ser_sched_kind {
    SER_SCHED_MOCO = 0,    // MoCo lr and momentum (fractional epoch), constant wd
    SER_SCHED_DINO = 1,    // cosine_scheduler lr (warmup from 0, to min_lr), wd and momentum
    SER_SCHED_BARLOW = 2,  // Barlow Twins lr, constant wd, no momentum
};

// Everything needed to evaluate a job's schedules. Fill it with ser_config_to_sched() or by hand.
typedef struct ser_sched_params {
    int lr_kind;              // SER_SCHED_*: the lr formula
    int momentum_kind;        // SER_SCHED_MOCO, SER_SCHED_DINO; SER_SCHED_BARLOW = no teacher
    int64_t iters_per_epoch;  // I >= 1
    int64_t epochs;           // E >= 1
    int64_t warmup_epochs;    // lr warmup, W < E
    int64_t global_batch;     // B
    double base_lr;           // per 256 images
    double min_lr;            // DINO's final lr
    double wd, wd_end;        // weight decay: cosine wd -> wd_end (constant when equal)
    double momentum;          // m0 of the teacher / momentum encoder
    double teacher_temp, teacher_temp_final;  // DINO; 0 when unused
    int64_t teacher_temp_warmup_epochs;
    double ser_ratio;         // SER equivariant ratio (0: off)
    int64_t ser_warmup_epochs, ser_rest_epochs;
    int ser_batch;            // the batch the ratio applies to (the global batch)
} ser_sched_params;

typedef struct ser_sched_values {
    double epoch;         // fractional epoch t
    double lr;            // optimizer lr of this iteration
    double wd;            // weight decay of the decayed tensors
    double momentum;      // teacher / momentum-encoder EMA coefficient (0 without a teacher)
    double teacher_temp;  // DINO teacher temperature (0 if unused)
    double ser_ratio;     // constant_scheduler value
    int n_equiv;          // equivariant samples of a ser_batch
} ser_sched_values;

// Evaluates every schedule at global iteration it (0 <= it < epochs*I).
void ser_sched_eval(const ser_sched_params *p, int64_t it, ser_sched_values *out);

#endif
