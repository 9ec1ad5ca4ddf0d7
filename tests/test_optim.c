// test_optim.c — AdamW, clipping and the EMA against PyTorch 1.13 fixtures
// (tests/reference/make_optim_fixtures.py), the decay rules, the state layout, and the
// parallel path against the serial one.
//
// AdamW and the EMA are compared bitwise with the fp32 PyTorch run (ser reproduces its
// operation order; see ser_optim.h) and with rtol 1e-6 against the same run in float64.
// Clipping is compared with rtol 1e-6: ser sums squares in double, torch's fp32 norm kernel in
// its own order, so a norm can differ in the last bit.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_optim.h"
#include "ser_test.h"

static ser_st_file *s_fx;

// The table of the fixture (make_optim_fixtures.py TENSORS), in order.
typedef struct s_tdef {
    const char *name;
    int ndim;
    int64_t shape[4];
    int frozen;
} s_tdef;

static const s_tdef s_tensors[] = {
    {"cls_token", 3, {1, 1, 8}, 0},
    {"pos_embed", 3, {1, 5, 8}, 0},
    {"patch_embed.proj.weight", 4, {8, 3, 2, 2}, 1},
    {"patch_embed.proj.bias", 1, {8}, 1},
    {"blocks.0.norm1.weight", 1, {8}, 0},
    {"blocks.0.attn.qkv.weight", 2, {24, 8}, 0},
    {"blocks.0.attn.qkv.bias", 1, {24}, 0},
    {"blocks.0.mlp.fc1.weight", 2, {20, 30}, 0},
    {"head.last_layer.weight_g", 2, {37, 1}, 0},
};
#define NT ((int)(sizeof s_tensors / sizeof s_tensors[0]))
#define LAST_LAYER 8  // its grad is None in step 1 of the no_bias_1d case

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

// The table with the flags a model builder sets (ser_vit.c: NO_DECAY on biases and 1-D
// tensors), so that SER_OPTIM_DECAY_ALL is seen to ignore them.
static void s_table(ser_ptab *tab) {
    ser_ptab_init(tab);
    for (int i = 0; i < NT; i++) {
        const s_tdef *d = &s_tensors[i];
        unsigned flags = d->frozen ? SER_TINFO_FROZEN : 0;
        if (d->ndim == 1) flags |= SER_TINFO_NO_DECAY;
        ser_ptab_add(tab, d->name, flags, d->ndim, d->shape);
    }
}

static const void *s_raw(const char *name, ser_dtype dt, size_t *numel) {
    const ser_st_entry *e = ser_st_find(s_fx, name);
    if (!e) fail_msg("fixture tensor '%s' missing", name);
    if (e->dtype != dt)
        fail_msg("fixture tensor '%s' has dtype %s", name, ser_dtype_name(e->dtype));
    if (numel) *numel = e->numel;
    return e->data;
}

// Loads fixture tensors "<prefix><name>" of every table entry into an arena.
static void s_load(const ser_ptab *tab, float *arena, const char *prefix) {
    char name[256];
    for (int i = 0; i < tab->n; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, tab->t[i].name);
        size_t n;
        const float *x = s_raw(name, SER_DT_F32, &n);
        assert_int_equal(n, tab->t[i].numel);
        memcpy(arena + tab->t[i].offset, x, n * sizeof(float));
    }
}

static uint32_t s_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

// Bitwise comparison; prints the number of differing elements and the largest ulp distance.
// strict = 0 only reports (prefix "info").
static int s_bitwise_ex(const char *label, const float *got, const float *ref, size_t n,
                        int strict) {
    size_t bad = 0;
    int64_t max_ulp = 0;
    for (size_t i = 0; i < n; i++) {
        if (s_bits(got[i]) == s_bits(ref[i])) continue;
        if (bad < 3 && strict)
            fprintf(stderr, "  %s[%zu]: got %.9g ref %.9g\n", label, i, (double)got[i],
                    (double)ref[i]);
        bad++;
        int64_t d = (int64_t)s_bits(got[i]) - (int64_t)s_bits(ref[i]);
        if (d < 0) d = -d;
        if (d > max_ulp) max_ulp = d;
    }
    fprintf(stderr, "%s %-52s n=%-6zu bitwise_diff=%zu max_ulp=%lld\n",
            !strict ? "info" : bad ? "FAIL" : "ok  ", label, n, bad, (long long)max_ulp);
    return bad == 0;
}

static int s_bitwise(const char *label, const float *got, const float *ref, size_t n) {
    return s_bitwise_ex(label, got, ref, n, 1);
}

// --- AdamW -------------------------------------------------------------------------------------
static void s_adamw_case(const char *mode, int decay) {
    ser_ptab tab;
    s_table(&tab);
    const double *betas = s_raw(mode[0] == 'a' ? "adamw.all.betas" : "adamw.no_bias_1d.betas",
                                SER_DT_F64, NULL);
    const double *eps = s_raw(mode[0] == 'a' ? "adamw.all.eps" : "adamw.no_bias_1d.eps",
                              SER_DT_F64, NULL);
    const double *lr = s_raw("adamw.lr", SER_DT_F64, NULL);
    const double *wd = s_raw("adamw.wd", SER_DT_F64, NULL);
    ser_optim_config cfg;
    ser_optim_config_default(&cfg);
    cfg.beta1 = betas[0], cfg.beta2 = betas[1], cfg.eps = eps[0], cfg.decay = decay;
    ser_optim o;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_optim_init(&o, &tab, &cfg, err), SER_OK);
    float *p = ser_xaligned(tab.total * 4), *g = ser_xaligned(tab.total * 4);
    s_load(&tab, p, "adamw.init.");
    unsigned char active[NT];
    char pre[128];
    for (int s = 0; s < 3; s++) {
        memset(g, 0, tab.total * 4);
        snprintf(pre, sizeof pre, "adamw.grad%d.", s);
        s_load(&tab, g, pre);
        for (int i = 0; i < NT; i++) active[i] = 1;
        if (decay == SER_OPTIM_DECAY_NO_BIAS_1D && s == 1) active[LAST_LAYER] = 0;
        ser_optim_step(&o, p, g, lr[s], wd[s], active);
    }
    char name[256];
    int ok = 1;
    for (int i = 0; i < NT; i++) {
        const ser_tinfo *t = &tab.t[i];
        snprintf(name, sizeof name, "adamw.%s.f32.param.%s", mode, t->name);
        ok &= s_bitwise(name, p + t->offset, s_raw(name, SER_DT_F32, NULL), t->numel);
        // Against the float64 run: the fp32 error of three steps.
        snprintf(name, sizeof name, "adamw.%s.f64.param.%s", mode, t->name);
        ok &= ser_test_allclose(name, p + t->offset, s_raw(name, SER_DT_F32, NULL), t->numel,
                                1e-7f, 1e-6f);
        snprintf(name, sizeof name, "adamw.%s.f32.step.%s", mode, t->name);
        const ser_st_entry *e = ser_st_find(s_fx, name);
        if (!e) {  // torch has no state: never stepped
            assert_int_equal(o.step[i], 0);
            continue;
        }
        assert_int_equal(o.step[i], ((const int64_t *)e->data)[0]);
        snprintf(name, sizeof name, "adamw.%s.f32.exp_avg.%s", mode, t->name);
        ok &= s_bitwise(name, o.exp_avg + t->offset, s_raw(name, SER_DT_F32, NULL), t->numel);
        snprintf(name, sizeof name, "adamw.%s.f32.exp_avg_sq.%s", mode, t->name);
        ok &= s_bitwise(name, o.exp_avg_sq + t->offset, s_raw(name, SER_DT_F32, NULL), t->numel);
    }
    assert_true(ok);
    free(p), free(g);
    ser_optim_free(&o);
    ser_ptab_free(&tab);
}

static void test_adamw_decay_all(void **state) {
    (void)state;
    s_adamw_case("all", SER_OPTIM_DECAY_ALL);
}

static void test_adamw_no_bias_1d(void **state) {
    (void)state;
    s_adamw_case("no_bias_1d", SER_OPTIM_DECAY_NO_BIAS_1D);
}

static void test_decay_rules(void **state) {
    (void)state;
    ser_ptab tab;
    s_table(&tab);
    ser_optim_config cfg;
    ser_optim_config_default(&cfg);
    ser_optim a, d;
    assert_int_equal(ser_optim_init(&a, &tab, &cfg, NULL), SER_OK);
    cfg.decay = SER_OPTIM_DECAY_NO_BIAS_1D;
    assert_int_equal(ser_optim_init(&d, &tab, &cfg, NULL), SER_OK);
    //                          cls pos pw pb n1w qkvw qkvb fc1 g
    static const int all[NT] = {1, 1, 0, 0, 1, 1, 1, 1, 1};
    static const int dino[NT] = {1, 1, 0, 0, 0, 1, 0, 1, 1};
    // torch state indices: one group over model.parameters(); DINO's [decayed..., others...].
    static const int tidx_dino[NT] = {0, 1, -1, -1, 5, 2, 6, 3, 4};
    for (int i = 0; i < NT; i++) {
        assert_int_equal(ser_optim_decays(&a, i), all[i]);
        assert_int_equal(ser_optim_decays(&d, i), dino[i]);
        assert_int_equal(ser_optim_torch_index(&a, i), i);
        assert_int_equal(ser_optim_torch_index(&d, i), tidx_dino[i]);
    }
    char buf[256];
    assert_string_equal(ser_optim_state_key(&a, 5, SER_OPTIM_STATE_EXP_AVG, buf, sizeof buf),
                        "optimizer.blocks.0.attn.qkv.weight.exp_avg");
    assert_string_equal(ser_optim_state_key(&a, 0, SER_OPTIM_STATE_EXP_AVG_SQ, buf, sizeof buf),
                        "optimizer.cls_token.exp_avg_sq");
    assert_string_equal(ser_optim_state_key(&a, 1, SER_OPTIM_STATE_STEP, buf, sizeof buf),
                        "optimizer.pos_embed.step");
    ser_optim_free(&a);
    ser_optim_free(&d);
    ser_optim_free(&d);  // safe twice (zeroed)
    ser_ptab_free(&tab);
}

static void test_bad_config(void **state) {
    (void)state;
    ser_ptab tab;
    s_table(&tab);
    ser_optim_config cfg;
    ser_optim o;
    char err[SER_ERR_LEN];
    ser_optim_config_default(&cfg);
    cfg.beta2 = 1.0;
    assert_int_equal(ser_optim_init(&o, &tab, &cfg, err), SER_EINVAL);
    assert_non_null(strstr(err, "betas"));
    ser_optim_free(&o);
    ser_optim_config_default(&cfg);
    cfg.eps = -1;
    assert_int_equal(ser_optim_init(&o, &tab, &cfg, err), SER_EINVAL);
    assert_non_null(strstr(err, "eps"));
    ser_optim_free(&o);
    ser_ptab_free(&tab);
}

// A checkpoint is m, v and the steps: restoring them into a fresh optimizer and continuing
// must equal the uninterrupted run bitwise. Also: the parallel path for large tensors equals
// the serial path (the same data cut into small tensors), for 1 and 2 threads.
static void s_fill(float *x, size_t n, uint64_t seed, float scale) {
    ser_test_fill_uniform(x, n, seed, -scale, scale);
}

static void test_state_restore_and_parallel(void **state) {
    (void)state;
    const int64_t big = 3 * 40000 + 5;  // above the parallel threshold
    ser_ptab one, four;
    ser_ptab_init(&one);
    ser_ptab_init(&four);
    ser_ptab_add(&one, "w", 0, 1, &big);
    int64_t parts[4] = {30000, 30000, 30000, 30005};
    char nm[16];
    for (int i = 0; i < 4; i++) {
        snprintf(nm, sizeof nm, "w%d", i);
        ser_ptab_add(&four, nm, 0, 2, (int64_t[]){1, parts[i]});
    }
    ser_optim_config cfg;
    ser_optim_config_default(&cfg);
    float *p1 = ser_xaligned(one.total * 4), *g1 = ser_xaligned(one.total * 4);
    float *p4 = ser_xaligned(four.total * 4), *g4 = ser_xaligned(four.total * 4);
    float *pr = ser_xaligned(one.total * 4);
    s_fill(p1, (size_t)big, 1, 1.0f);
    // Same values in the four-tensor layout.
    size_t at = 0;
    for (int i = 0; i < 4; i++) {
        memcpy(p4 + four.t[i].offset, p1 + at, (size_t)parts[i] * 4);
        at += (size_t)parts[i];
    }
    memcpy(pr, p1, (size_t)big * 4);
    ser_optim o1, o4, orf;
    assert_int_equal(ser_optim_init(&o1, &one, &cfg, NULL), SER_OK);
    assert_int_equal(ser_optim_init(&o4, &four, &cfg, NULL), SER_OK);
    assert_int_equal(ser_optim_init(&orf, &one, &cfg, NULL), SER_OK);
    int threads = omp_get_max_threads();
    for (int s = 0; s < 6; s++) {
        s_fill(g1, (size_t)big, 100 + (uint64_t)s, 0.5f);
        at = 0;
        for (int i = 0; i < 4; i++) {
            memcpy(g4 + four.t[i].offset, g1 + at, (size_t)parts[i] * 4);
            at += (size_t)parts[i];
        }
        omp_set_num_threads(s % 2 ? 1 : 2);
        ser_optim_step(&o1, p1, g1, 1e-3, 0.05, NULL);
        ser_optim_step(&o4, p4, g4, 1e-3, 0.05, NULL);
        if (s == 2) {  // "checkpoint" the reference optimizer into a fresh one
            ser_optim fresh;
            assert_int_equal(ser_optim_init(&fresh, &one, &cfg, NULL), SER_OK);
            ser_optim_step(&orf, pr, g1, 1e-3, 0.05, NULL);
            memcpy(fresh.exp_avg, orf.exp_avg, one.total * 4);
            memcpy(fresh.exp_avg_sq, orf.exp_avg_sq, one.total * 4);
            memcpy(fresh.step, orf.step, sizeof *orf.step * (size_t)one.n);
            ser_optim_free(&orf);
            orf = fresh;
        } else {
            ser_optim_step(&orf, pr, g1, 1e-3, 0.05, NULL);
        }
    }
    omp_set_num_threads(threads);
    at = 0;
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        ok &= s_bitwise("parallel vs serial param", p1 + at, p4 + four.t[i].offset,
                        (size_t)parts[i]);
        ok &= s_bitwise("parallel vs serial exp_avg_sq", o1.exp_avg_sq + at,
                        o4.exp_avg_sq + four.t[i].offset, (size_t)parts[i]);
        at += (size_t)parts[i];
    }
    ok &= s_bitwise("restored state vs uninterrupted", pr, p1, (size_t)big);
    assert_true(ok);
    assert_int_equal(orf.step[0], 6);
    ser_optim_reset(&o1);
    assert_int_equal(o1.step[0], 0);
    assert_true(o1.exp_avg[7] == 0.0f && o1.exp_avg_sq[big - 1] == 0.0f);
    free(p1), free(g1), free(p4), free(g4), free(pr);
    ser_optim_free(&o1);
    ser_optim_free(&o4);
    ser_optim_free(&orf);
    ser_ptab_free(&one);
    ser_ptab_free(&four);
}

// --- clipping ----------------------------------------------------------------------------------
static void s_clip_case(int mode, double c, const char *key) {
    ser_ptab tab;
    s_table(&tab);
    float *g = ser_xaligned(tab.total * 4);
    s_load(&tab, g, "clip.grad.");
    float norms[NT];
    int nclipped = -1;
    double total = ser_optim_clip_grad(&tab, g, c, mode, NULL, norms, &nclipped);
    char name[256];
    int ok = 1, nb = 0;
    for (int i = 0; i < NT; i++) {
        const ser_tinfo *t = &tab.t[i];
        if (t->flags & SER_TINFO_FROZEN) {
            assert_true(isnan(norms[i]));
            continue;
        }
        snprintf(name, sizeof name, "%s.%s", key, t->name);
        const float *ref = s_raw(name, SER_DT_F32, NULL);
        ok &= ser_test_allclose(name, g + t->offset, ref, t->numel, 0.0f, 1e-6f);
        nb += s_bitwise_ex(name, g + t->offset, ref, t->numel, 0) ? 0 : 1;
    }
    if (mode == SER_OPTIM_CLIP_PER_PARAM) {
        snprintf(name, sizeof name, "%s.norms", key);
        size_t n;
        const float *rn = s_raw(name, SER_DT_F32, &n);
        assert_int_equal(n, 7);
        float got[7];
        for (int i = 0, k = 0; i < NT; i++)
            if (!isnan(norms[i])) got[k++] = norms[i];
        ok &= ser_test_allclose(name, got, rn, 7, 0.0f, 1e-6f);
        int expect = 0;
        for (int i = 0; i < 7; i++) expect += (float)c / (rn[i] + 1e-6f) < 1.0f;
        assert_int_equal(nclipped, expect);
    } else {
        snprintf(name, sizeof name, "%s.total", key);
        const float *rt = s_raw(name, SER_DT_F32, NULL);
        float tf = (float)total;
        ok &= ser_test_allclose(name, &tf, rt, 1, 0.0f, 1e-6f);
        assert_int_equal(nclipped, (float)c / (rt[0] + 1e-6f) < 1.0f ? 7 : 0);
    }
    fprintf(stderr, "     %s: %d of 7 tensors not bitwise equal to torch (norm rounding)\n", key,
            nb);
    assert_true(ok);
    free(g);
    ser_ptab_free(&tab);
}

static void test_clip_per_param(void **state) {
    (void)state;
    s_clip_case(SER_OPTIM_CLIP_PER_PARAM, 0.3, "clip.per_param.0.3");
    s_clip_case(SER_OPTIM_CLIP_PER_PARAM, 1.0, "clip.per_param.1.0");
}

static void test_clip_global(void **state) {
    (void)state;
    s_clip_case(SER_OPTIM_CLIP_GLOBAL, 1.0, "clip.global.1.0");
    s_clip_case(SER_OPTIM_CLIP_GLOBAL, 1000.0, "clip.global.1000.0");
}

// clip <= 0 measures only; inactive tensors are neither measured nor scaled.
static void test_clip_measure_and_inactive(void **state) {
    (void)state;
    ser_ptab tab;
    s_table(&tab);
    float *g = ser_xaligned(tab.total * 4), *g0 = ser_xaligned(tab.total * 4);
    s_load(&tab, g, "clip.grad.");
    memcpy(g0, g, tab.total * 4);
    float norms[NT];
    int nc;
    double total = ser_optim_clip_grad(&tab, g, 0.0, SER_OPTIM_CLIP_PER_PARAM, NULL, norms, &nc);
    assert_int_equal(nc, 0);
    assert_memory_equal(g, g0, tab.total * 4);
    double ss = 0;
    for (int i = 0; i < NT; i++)
        if (!isnan(norms[i])) ss += (double)norms[i] * (double)norms[i];
    assert_true(fabs(sqrt(ss) - total) <= 1e-6 * total);
    unsigned char active[NT];
    memset(active, 1, sizeof active);
    active[LAST_LAYER] = 0;
    ser_optim_clip_grad(&tab, g, 1e-3, SER_OPTIM_CLIP_GLOBAL, active, norms, &nc);
    assert_true(isnan(norms[LAST_LAYER]));
    assert_int_equal(nc, 6);
    const ser_tinfo *t = &tab.t[LAST_LAYER];
    assert_memory_equal(g + t->offset, g0 + t->offset, t->numel * 4);
    free(g), free(g0);
    ser_ptab_free(&tab);
}

// --- EMA ---------------------------------------------------------------------------------------
static void test_ema(void **state) {
    (void)state;
    size_t n;
    const float *target = s_raw("ema.target", SER_DT_F32, &n);
    const float *source = s_raw("ema.source", SER_DT_F32, NULL);
    const double *ms = s_raw("ema.m", SER_DT_F64, NULL);
    ser_ptab tab;
    ser_ptab_init(&tab);
    int64_t shape = (int64_t)n;
    ser_ptab_add(&tab, "x", SER_TINFO_FROZEN, 1, &shape);  // the EMA ignores flags
    float *t = ser_xaligned(tab.total * 4), *s = ser_xaligned(tab.total * 4);
    char name[64];
    int ok = 1;
    for (int k = 0; k < 3; k++) {
        static const char *const kinds[] = {"moco", "dino", "dino_alias", "moco_alias"};
        for (int kind = 0; kind < 4; kind++) {
            int method = kind == 0 || kind == 3 ? SER_OPTIM_EMA_MOCO : SER_OPTIM_EMA_DINO;
            int alias = kind >= 2;
            memcpy(t, alias ? source : target, n * 4);
            memcpy(s, source, n * 4);
            ser_optim_ema(&tab, t, alias ? t : s, ms[k], method);
            snprintf(name, sizeof name, "ema.%s.%d", kinds[kind], k);
            ok &= s_bitwise(name, t, s_raw(name, SER_DT_F32, NULL), n);
        }
    }
    assert_true(ok);
    // Without aliasing the two formulas round identically; with it they differ.
    memcpy(t, target, n * 4);
    memcpy(s, target, n * 4);
    ser_optim_ema(&tab, t, source, 0.996, SER_OPTIM_EMA_MOCO);
    ser_optim_ema(&tab, s, source, 0.996, SER_OPTIM_EMA_DINO);
    assert_memory_equal(t, s, n * 4);
    assert_memory_not_equal(s_raw("ema.dino_alias.0", SER_DT_F32, NULL),
                            s_raw("ema.moco_alias.0", SER_DT_F32, NULL), n * 4);
    free(t), free(s);
    ser_ptab_free(&tab);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_decay_all),
        cmocka_unit_test(test_adamw_no_bias_1d),
        cmocka_unit_test(test_decay_rules),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_state_restore_and_parallel),
        cmocka_unit_test(test_clip_per_param),
        cmocka_unit_test(test_clip_global),
        cmocka_unit_test(test_clip_measure_and_inactive),
        cmocka_unit_test(test_ema),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
