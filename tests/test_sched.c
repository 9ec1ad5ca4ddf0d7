// test_sched.c — every schedule against the reference formulas evaluated by Python/numpy
// (tests/reference/make_optim_fixtures.py, "sched.*"): the ImageNet run of ser-reference §8
// (I=625, E=100, W=10, B=2048) at step 0, around the end of warmup, the middle, the last step
// and random steps, and a tiny run (I=7, E=5, W=2) at every step; plus the documented examples.
//
// Values are compared in double with |a - b| <= 4*DBL_EPSILON*scale, scale being the
// schedule's largest magnitude: MoCo and Barlow Twins use math.cos (glibc, like ser) and match
// exactly; DINO's cosine_scheduler uses numpy's cos, which on AVX-512 machines is numpy's own
// SIMD cos and differs from glibc's in the last bit for most arguments (a 1-ulp change of
// 1 + cos moves 0.4 - 0.18*(1 + cos) by one ulp of 0.4). Exact matches and the largest
// relative difference are printed.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_sched.h"
#include "ser_test.h"

static ser_st_file *s_fx;

static int setup(void **state) {
    (void)state;
    s_fx = ser_test_open_fixture("optim.safetensors");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ser_st_destroy(&s_fx);
    return 0;
}

typedef struct s_run {
    const char *tag;
    int64_t I, E, W, B;
} s_run;

static const s_run s_runs[] = {{"run", 625, 100, 10, 2048}, {"tiny", 7, 5, 2, 256}};

typedef double (*s_fn)(const s_run *r, int64_t it);

// Compares fn(r, it) with the fixture "sched.<name>.<tag>.{it,val}".
static int s_check(const char *name, const s_run *r, s_fn fn, double scale) {
    char key[128];
    snprintf(key, sizeof key, "sched.%s.%s.it", name, r->tag);
    const ser_st_entry *ei = ser_st_find(s_fx, key);
    snprintf(key, sizeof key, "sched.%s.%s.val", name, r->tag);
    const ser_st_entry *ev = ser_st_find(s_fx, key);
    if (!ei || !ev) fail_msg("fixture sched.%s.%s missing", name, r->tag);
    assert_int_equal(ei->dtype, SER_DT_I64);
    assert_int_equal(ev->dtype, SER_DT_F64);
    assert_int_equal(ei->numel, ev->numel);
    const int64_t *its = ei->data;
    const double *vals = ev->data;
    double max_rel = 0;
    size_t bad = 0, exact = 0;
    for (size_t k = 0; k < ei->numel; k++) {
        double got = fn(r, its[k]), ref = vals[k];
        double d = fabs(got - ref);
        if (d == 0) exact++;
        if (ref != 0 && d / fabs(ref) > max_rel) max_rel = d / fabs(ref);
        if (d > 4 * DBL_EPSILON * scale) {
            if (bad < 5)
                fprintf(stderr, "  %s.%s it=%lld: got %.17g ref %.17g\n", name, r->tag,
                        (long long)its[k], got, ref);
            bad++;
        }
    }
    fprintf(stderr, "%s sched.%-12s %-5s n=%-5zu exact=%-5zu max_rel=%.3g\n", bad ? "FAIL" : "ok  ",
            name, r->tag, ei->numel, exact, max_rel);
    return bad == 0;
}

static double s_moco_lr(const s_run *r, int64_t it) {
    return ser_sched_moco_lr(ser_sched_epoch_frac(it, r->I), ser_sched_peak_lr(3e-4, r->B), r->W,
                             r->E);
}
static double s_moco_m(const s_run *r, int64_t it) {
    return ser_sched_moco_momentum(ser_sched_epoch_frac(it, r->I), 0.99, r->E);
}
static double s_dino_lr(const s_run *r, int64_t it) {
    return ser_sched_cosine(it, ser_sched_peak_lr(1e-4, r->B), 1e-5, r->E, r->I, r->W, 0.0);
}
static double s_dino_wd(const s_run *r, int64_t it) {
    return ser_sched_cosine(it, 0.04, 0.4, r->E, r->I, 0, 0.0);
}
static double s_dino_m(const s_run *r, int64_t it) {
    return ser_sched_cosine(it, 0.982, 1.0, r->E, r->I, 0, 0.0);
}
static double s_dino_tt(const s_run *r, int64_t epoch) {
    return ser_sched_dino_teacher_temp(epoch, 0.04, 0.07, r->E - 1 < 10 ? r->E - 1 : 10);
}
static double s_barlow_lr(const s_run *r, int64_t it) {
    return ser_sched_barlow_lr(it, r->I, r->E, r->W, r->B, 1e-4);
}

static void test_reference_schedules(void **state) {
    (void)state;
    int ok = 1;
    for (size_t i = 0; i < sizeof s_runs / sizeof s_runs[0]; i++) {
        const s_run *r = &s_runs[i];
        ok &= s_check("moco_lr", r, s_moco_lr, 3e-4 * (double)r->B / 256);
        ok &= s_check("moco_m", r, s_moco_m, 1.0);
        ok &= s_check("dino_lr", r, s_dino_lr, 1e-4 * (double)r->B / 256);
        ok &= s_check("dino_wd", r, s_dino_wd, 0.4);
        ok &= s_check("dino_m", r, s_dino_m, 1.0);
        ok &= s_check("dino_tt", r, s_dino_tt, 0.07);
        ok &= s_check("barlow_lr", r, s_barlow_lr, 1e-4 * (double)r->B / 256);
    }
    assert_true(ok);
}

static double s_const_tiny(const s_run *r, int64_t it) {
    (void)r;
    return ser_sched_constant(it, 5, 7, 1, 1, 0.01);
}
static double s_const_run(const s_run *r, int64_t it) {
    (void)r;
    return ser_sched_constant(it, 100, 625, 0, 0, 0.01);
}

static void test_constant_scheduler(void **state) {
    (void)state;
    s_run tiny = {"tiny", 7, 5, 0, 0}, run = {"run", 625, 100, 0, 0};
    assert_true(s_check("constant", &tiny, s_const_tiny, 0.01));
    assert_true(s_check("constant", &run, s_const_run, 0.01));
    // Zeros for the first and last epoch, the ratio in between.
    assert_true(ser_sched_constant(6, 5, 7, 1, 1, 0.01) == 0.0);
    assert_true(ser_sched_constant(7, 5, 7, 1, 1, 0.01) == 0.01);
    assert_true(ser_sched_constant(27, 5, 7, 1, 1, 0.01) == 0.01);
    assert_true(ser_sched_constant(28, 5, 7, 1, 1, 0.01) == 0.0);
}

static void test_equiv_count(void **state) {
    (void)state;
    // The documented examples (ser-reference §3.4, §8).
    assert_int_equal(ser_sched_equiv_count(0.01, 256), 3);
    assert_int_equal(256 - ser_sched_equiv_count(0.01, 256), 253);
    assert_int_equal(ser_sched_equiv_count(0.01, 2048), 20);
    // Python's round: half to even.
    assert_true(ser_sched_round_half_even(2.5) == 2.0);
    assert_true(ser_sched_round_half_even(3.5) == 4.0);
    assert_true(ser_sched_round_half_even(-2.5) == -2.0);
    assert_true(ser_sched_round_half_even(0.5) == 0.0);
    assert_true(ser_sched_round_half_even(2.5000000000000004) == 3.0);
    assert_true(ser_sched_round_half_even(-0.4) == 0.0);
    // Against Python's round(np.float64(ratio) * batch).
    size_t n;
    const ser_st_entry *er = ser_st_find(s_fx, "sched.equiv.ratio");
    const ser_st_entry *eb = ser_st_find(s_fx, "sched.equiv.batch");
    const ser_st_entry *ec = ser_st_find(s_fx, "sched.equiv.count");
    assert_non_null(er), assert_non_null(eb), assert_non_null(ec);
    n = er->numel;
    for (size_t k = 0; k < n; k++) {
        double ratio = ((const double *)er->data)[k];
        int batch = (int)((const int64_t *)eb->data)[k];
        int expect = (int)((const int64_t *)ec->data)[k];
        if (ser_sched_equiv_count(ratio, batch) != expect)
            fail_msg("round(%g * %d): got %d, python %d", ratio, batch,
                     ser_sched_equiv_count(ratio, batch), expect);
    }
}

// The formulas' landmarks without the fixture: step 0, end of warmup, the last step.
static void test_landmarks(void **state) {
    (void)state;
    const int64_t I = 625, E = 100, W = 10;
    double peak = ser_sched_peak_lr(3e-4, 2048);
    assert_true(fabs(peak - 2.4e-3) < 1e-18);
    assert_true(ser_sched_moco_lr(0.0, peak, W, E) == 0.0);
    assert_true(ser_sched_moco_lr(10.0, peak, W, E) == peak);
    assert_true(ser_sched_moco_lr(ser_sched_epoch_frac(E * I - 1, I), peak, W, E) < 1e-9);
    assert_true(fabs(ser_sched_moco_momentum(0.0, 0.99, E) - 0.99) < 1e-16);
    assert_true(ser_sched_moco_momentum(100.0, 0.99, E) == 1.0);
    // DINO: linspace includes its endpoint, so the last warmup iteration is the peak.
    double dpeak = ser_sched_peak_lr(1e-4, 2048);
    assert_true(ser_sched_cosine(0, dpeak, 1e-5, E, I, W, 0.0) == 0.0);
    assert_true(ser_sched_cosine(W * I - 1, dpeak, 1e-5, E, I, W, 0.0) == dpeak);
    assert_true(ser_sched_cosine(W * I, dpeak, 1e-5, E, I, W, 0.0) == dpeak);
    // 0.4 + 0.5*(0.04 - 0.4)*2 is 0.04 up to the rounding of 0.4 - 0.36 (numpy's value too).
    assert_true(fabs(ser_sched_cosine(0, 0.04, 0.4, E, I, 0, 0.0) - 0.04) < 1e-16);
    // Equal endpoints give an exactly constant schedule (MoCo's and BT's constant wd).
    for (int64_t it = 0; it < E * I; it += 997)
        assert_true(ser_sched_cosine(it, 0.1, 0.1, E, I, 0, 0) == 0.1);
    assert_true(ser_sched_dino_teacher_temp(0, 0.04, 0.07, 10) == 0.04);
    assert_true(ser_sched_dino_teacher_temp(9, 0.04, 0.07, 10) == 0.07);
    assert_true(ser_sched_dino_teacher_temp(50, 0.04, 0.07, 10) == 0.07);
    assert_true(fabs(ser_sched_barlow_lr(W * I, I, E, W, 2048, 1e-4) - 8e-4) < 1e-19);
    assert_true(fabs(ser_sched_barlow_lr(E * I - 1, I, E, W, 2048, 1e-4) - 8e-7) < 1e-12);
    // numpy.linspace corner cases.
    assert_true(ser_sched_linspace(0.3, 0.7, 1, 0) == 0.3);
    assert_true(ser_sched_linspace(0.5, 0.5, 4, 2) == 0.5);
    assert_true(ser_sched_linspace(0.0, 1.0, 3, 1) == 0.5);
}

static void test_eval(void **state) {
    (void)state;
    ser_sched_params p;
    memset(&p, 0, sizeof p);
    p.lr_kind = SER_SCHED_DINO;
    p.momentum_kind = SER_SCHED_DINO;
    p.iters_per_epoch = 625, p.epochs = 100, p.warmup_epochs = 10, p.global_batch = 2048;
    p.base_lr = 1e-4, p.min_lr = 1e-5, p.wd = 0.04, p.wd_end = 0.4, p.momentum = 0.982;
    p.teacher_temp = 0.04, p.teacher_temp_final = 0.07, p.teacher_temp_warmup_epochs = 10;
    p.ser_ratio = 0.01, p.ser_batch = 256;
    ser_sched_values v;
    ser_sched_eval(&p, 6250, &v);
    assert_true(v.lr == ser_sched_peak_lr(1e-4, 2048));
    assert_true(v.epoch == 10.0);
    assert_true(v.teacher_temp == 0.07);
    assert_int_equal(v.n_equiv, 3);
    assert_true(v.wd == ser_sched_cosine(6250, 0.04, 0.4, 100, 625, 0, 0));
    assert_true(v.momentum == ser_sched_cosine(6250, 0.982, 1, 100, 625, 0, 0));
    p.lr_kind = SER_SCHED_MOCO, p.momentum_kind = SER_SCHED_MOCO;
    p.base_lr = 3e-4, p.momentum = 0.99;
    p.wd_end = p.wd = 0.1, p.teacher_temp = 0;
    ser_sched_eval(&p, 3125, &v);
    assert_true(v.lr == ser_sched_moco_lr(5.0, ser_sched_peak_lr(3e-4, 2048), 10, 100));
    assert_true(v.momentum == ser_sched_moco_momentum(5.0, 0.99, 100));
    assert_true(v.wd == 0.1 && v.teacher_temp == 0.0);
    p.lr_kind = SER_SCHED_BARLOW, p.momentum_kind = SER_SCHED_BARLOW, p.base_lr = 1e-4;
    ser_sched_eval(&p, 100, &v);
    assert_true(v.lr == ser_sched_barlow_lr(100, 625, 100, 10, 2048, 1e-4) && v.momentum == 0.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_schedules),
        cmocka_unit_test(test_constant_scheduler),
        cmocka_unit_test(test_equiv_count),
        cmocka_unit_test(test_landmarks),
        cmocka_unit_test(test_eval),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
