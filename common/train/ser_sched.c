// ser_sched.c — see ser_sched.h.
//
// Floating-point contraction is off in this file: GCC (gnu11, -march=native) would otherwise
// fuse `i*step + start` into one FMA and the values would no longer be numpy's, which rounds
// the product and the sum separately.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "ser_sched.h"

#include <math.h>

#include "ser_base.h"

// math.pi / np.pi.
static const double s_pi = 3.141592653589793;

double ser_sched_peak_lr(double base_lr, int64_t global_batch) {
    return base_lr * (double)global_batch / 256.0;
}

double ser_sched_epoch_frac(int64_t it, int64_t iters_per_epoch) {
    SER_ASSERT(iters_per_epoch >= 1 && it >= 0);
    int64_t epoch = it / iters_per_epoch, i = it % iters_per_epoch;
    // `epoch + i / iters_per_epoch`: a correctly rounded quotient, then the sum.
    return (double)epoch + (double)i / (double)iters_per_epoch;
}

double ser_sched_moco_lr(double t, double peak_lr, int64_t warmup_epochs, int64_t epochs) {
    if (t < (double)warmup_epochs) return peak_lr * t / (double)warmup_epochs;
    return peak_lr * 0.5 *
           (1.0 + cos(s_pi * (t - (double)warmup_epochs) / (double)(epochs - warmup_epochs)));
}

double ser_sched_moco_momentum(double t, double m0, int64_t epochs) {
    return 1.0 - 0.5 * (1.0 + cos(s_pi * t / (double)epochs)) * (1.0 - m0);
}

double ser_sched_linspace(double start, double stop, int64_t num, int64_t i) {
    SER_ASSERT(num >= 1 && i >= 0 && i < num);
    if (num == 1) return 0.0 * (stop - start) + start;  // y = y*delta; y += start
    if (i == num - 1) return stop;                       // y[-1] = stop
    double delta = stop - start;
    double div = (double)(num - 1);
    double step = delta / div;
    double y = (double)i;
    if (step == 0.0) {
        y /= div;  // numpy's path for denormal steps (gh-5437)
        y *= delta;
    } else {
        y *= step;
    }
    return y + start;
}

double ser_sched_cosine(int64_t it, double base, double final, int64_t epochs,
                        int64_t iters_per_epoch, int64_t warmup_epochs, double start_warmup) {
    int64_t total = epochs * iters_per_epoch;
    int64_t warmup_iters = warmup_epochs > 0 ? warmup_epochs * iters_per_epoch : 0;
    SER_ASSERT(it >= 0 && it < total && warmup_iters <= total);
    if (it < warmup_iters) return ser_sched_linspace(start_warmup, base, warmup_iters, it);
    double j = (double)(it - warmup_iters), n = (double)(total - warmup_iters);
    return final + 0.5 * (base - final) * (1.0 + cos(s_pi * j / n));
}

double ser_sched_dino_teacher_temp(int64_t epoch, double t0, double t1, int64_t warmup_epochs) {
    SER_ASSERT(epoch >= 0);
    if (epoch < warmup_epochs) return ser_sched_linspace(t0, t1, warmup_epochs, epoch);
    return 1.0 * t1;  // np.ones(n) * teacher_temp
}

double ser_sched_barlow_lr(int64_t it, int64_t iters_per_epoch, int64_t epochs,
                           int64_t warmup_epochs, int64_t global_batch, double lr_weights) {
    int64_t max_steps = epochs * iters_per_epoch;
    int64_t warmup_steps = warmup_epochs * iters_per_epoch;
    double base_lr = (double)global_batch / 256.0;
    double lr;
    if (it < warmup_steps) {
        lr = base_lr * (double)it / (double)warmup_steps;
    } else {
        int64_t step = it - warmup_steps;
        max_steps -= warmup_steps;
        double q = 0.5 * (1.0 + cos(s_pi * (double)step / (double)max_steps));
        double end_lr = base_lr * 0.001;
        lr = base_lr * q + end_lr * (1.0 - q);
    }
    return lr * lr_weights;
}

double ser_sched_constant(int64_t it, int64_t epochs, int64_t iters_per_epoch,
                          int64_t warmup_epochs, int64_t rest_epochs, double ratio) {
    SER_ASSERT(epochs > warmup_epochs + rest_epochs);
    int64_t total = epochs * iters_per_epoch;
    SER_ASSERT(it >= 0 && it < total);
    if (it < warmup_epochs * iters_per_epoch) return 0.0;
    if (it >= total - rest_epochs * iters_per_epoch) return 0.0;
    return 1.0 * ratio;  // np.ones(n) * ratio
}

double ser_sched_round_half_even(double x) {
    if (!isfinite(x)) return x;
    double f = floor(x), d = x - f;  // exact: x and floor(x) share the exponent range
    if (d > 0.5) return f + 1.0;
    if (d < 0.5) return f;
    return fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

int ser_sched_equiv_count(double ratio, int batch) {
    double n = ser_sched_round_half_even(ratio * (double)batch);
    if (n < 0) return 0;
    if (n > batch) return batch;
    return (int)n;
}

void ser_sched_eval(const ser_sched_params *p, int64_t it, ser_sched_values *out) {
    int64_t I = p->iters_per_epoch, E = p->epochs;
    SER_ASSERT(I >= 1 && E >= 1 && it >= 0 && it < E * I);
    double t = ser_sched_epoch_frac(it, I);
    out->epoch = t;
    switch (p->lr_kind) {
    case SER_SCHED_DINO:
        out->lr = ser_sched_cosine(it, ser_sched_peak_lr(p->base_lr, p->global_batch), p->min_lr,
                                   E, I, p->warmup_epochs, 0.0);
        break;
    case SER_SCHED_BARLOW:
        out->lr = ser_sched_barlow_lr(it, I, E, p->warmup_epochs, p->global_batch, p->base_lr);
        break;
    default:
        out->lr = ser_sched_moco_lr(t, ser_sched_peak_lr(p->base_lr, p->global_batch),
                                    p->warmup_epochs, E);
        break;
    }
    out->wd = ser_sched_cosine(it, p->wd, p->wd_end, E, I, 0, 0.0);
    if (p->momentum_kind == SER_SCHED_BARLOW)
        out->momentum = 0.0;
    else if (p->momentum_kind == SER_SCHED_DINO)
        out->momentum = ser_sched_cosine(it, p->momentum, 1.0, E, I, 0, 0.0);
    else
        out->momentum = ser_sched_moco_momentum(t, p->momentum, E);
    out->teacher_temp = 0.0;
    if (p->teacher_temp > 0.0)
        out->teacher_temp = ser_sched_dino_teacher_temp(it / I, p->teacher_temp,
                                                        p->teacher_temp_final,
                                                        p->teacher_temp_warmup_epochs);
    out->ser_ratio = 0.0;
    if (p->ser_ratio > 0.0)
        out->ser_ratio = ser_sched_constant(it, E, I, p->ser_warmup_epochs, p->ser_rest_epochs,
                                            p->ser_ratio);
    out->n_equiv = ser_sched_equiv_count(out->ser_ratio, p->ser_batch);
}
