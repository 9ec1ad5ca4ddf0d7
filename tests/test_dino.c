// test_dino.c — a whole DINO + SER forward/backward against the PyTorch reference
// (tests/reference/ser_ref_dino.py DINOSER): every loss term, every parameter gradient (the
// backbone, the head with weight_g/weight_v, projector_equiv), the centre update and the teacher
// EMA (with and without the reference's projector quirk), with the SER gradient on (the paper)
// and off (the public code); shard splits and head chunks; drop-path keying; finite differences
// through the DINO head and loss; the freeze_last_layer mask; bad inputs and configurations.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_dino.h"
#include "ser_kernels.h"
#include "ser_optim.h"
#include "ser_test.h"

#define RTOL 1e-4f
// atol: 2e-5 of the tensor's scale, with a floor of 1e-6 for gradients that are zero in exact
// arithmetic. This is test_moco.c's tolerance: a whole step in float32 sits close to 1e-5 of
// scale (PyTorch's own float32 run of the MoCo step reaches 47% of this atol). The DINO
// softmaxes (student 0.1, teacher 0.055) amplify the head's rounding by 1/T; the measured use is
// printed by ser_test_allclose ("% of tolerance") and stays within it in Release and ASan builds.
static float s_atol(const float *ref, size_t n) { return 2e-5f * ser_test_maxabs(ref, n) + 1e-6f; }

typedef struct {
    ser_st_file *f;
    ser_dino d;
    float *inv[2], *eqimg[2][3];
    const float *eqp[2][3];
    ser_group_elem g[2][3];
    ser_batch b;
    float *local[SER_MAX_LOCAL];
    double teacher_temp, momentum;
} s_case;

static void s_config(ser_dino_config *cfg, const ser_st_file *f) {
    ser_dino_config_default(cfg);
    ser_vit_config_preset(&cfg->vit, "vit_tiny", 16, 4);
    cfg->vit.dim = 24, cfg->vit.heads = 3, cfg->vit.depth = 4, cfg->vit.mlp_hidden = 48;
    cfg->vit.cls_layer = 2, cfg->vit.freeze_patch_embed = 0, cfg->vit.drop_path_rate = 0.0f;
    cfg->out_dim = atoi(ser_st_meta(f, "out_dim"));
    cfg->hidden_dim = atoi(ser_st_meta(f, "hidden_dim"));
    cfg->bottleneck_dim = atoi(ser_st_meta(f, "bottleneck_dim"));
    cfg->ser_proj_dim = atoi(ser_st_meta(f, "proj_dim"));
    cfg->student_temp = (float)atof(ser_st_meta(f, "student_temp"));
    cfg->center_momentum = atof(ser_st_meta(f, "center_momentum"));
    cfg->ser_lambda = (float)atof(ser_st_meta(f, "lam"));
    cfg->ser_tau = (float)atof(ser_st_meta(f, "tau"));
    cfg->ser_grad = atoi(ser_st_meta(f, "ser_grad"));
    cfg->norm_last_layer = atoi(ser_st_meta(f, "norm_last_layer"));
}

// Loads the fixture into a model built from cfg (NULL: the fixture's own configuration).
static void s_load_cfg(s_case *c, const char *file, const ser_dino_config *cfg_in) {
    c->f = ser_test_open_fixture(file);
    ser_dino_config cfg;
    if (cfg_in) cfg = *cfg_in;
    else s_config(&cfg, c->f);
    c->teacher_temp = atof(ser_st_meta(c->f, "teacher_temp"));
    c->momentum = atof(ser_st_meta(c->f, "momentum"));
    char err[SER_ERR_LEN];
    if (ser_dino_init(&c->d, &cfg, err)) fail_msg("%s", err);
    const ser_ptab *tabs[2] = {&c->d.tab, &c->d.ttab};
    float *arenas[2] = {c->d.params, c->d.tparams};
    if (ser_st_load_ptabs(c->f, tabs, arenas, 2, "param.", 1, err)) fail_msg("%s", err);
    if (ser_st_load_ptab(c->f, &c->d.btab, c->d.buffers, "buffer.", 1, err)) fail_msg("%s", err);
    c->inv[0] = ser_test_tensor(c->f, "inv.view0", NULL);
    c->inv[1] = ser_test_tensor(c->f, "inv.view1", NULL);
    float *g = ser_test_tensor(c->f, "eq.g", NULL);  // (3, 2, 5)
    char key[64];
    for (int e = 0; e < 3; e++)
        for (int v = 0; v < 2; v++) {
            const float *q = g + (e * 2 + v) * 5;
            c->g[v][e] = (ser_group_elem){(uint8_t)q[0], (uint8_t)q[1], (uint8_t)q[2],
                                          (int16_t)q[3], (int16_t)q[4]};
            snprintf(key, sizeof key, "eq.view%d.%d", v, e);
            c->eqimg[v][e] = ser_test_tensor(c->f, key, NULL);
            c->eqp[v][e] = c->eqimg[v][e];
        }
    free(g);
    c->b = (ser_batch){.n_inv = 5, .n_eq = 3, .img = 16, .inv = {c->inv[0], c->inv[1]},
                       .eq = {c->eqp[0], c->eqp[1]}, .g = {c->g[0], c->g[1]}};
    memset(c->local, 0, sizeof c->local);
    ser_test_local_views(c->f, &c->b, c->local);
}

static void s_load(s_case *c, const char *file) { s_load_cfg(c, file, NULL); }

static void s_free(s_case *c) {
    for (int v = 0; v < 2; v++) {
        free(c->inv[v]);
        for (int e = 0; e < 3; e++) free(c->eqimg[v][e]);
    }
    for (int k = 0; k < SER_MAX_LOCAL; k++) free(c->local[k]);
    ser_dino_free(&c->d);
    ser_st_destroy(&c->f);
}

// Compares every entry of t (its values in arena) with the fixture's prefix+name tensors;
// `only` restricts to names starting with it (NULL: all).
static int s_check_table(const ser_st_file *f, const ser_ptab *t, const float *arena,
                         const char *prefix, const char *only) {
    int ok = 1;
    char key[SER_TINFO_NAME_LEN + 32];
    for (int i = 0; i < t->n; i++) {
        const ser_tinfo *e = &t->t[i];
        if (only && strncmp(e->name, only, strlen(only)) != 0) continue;
        snprintf(key, sizeof key, "%s%s", prefix, e->name);
        size_t n;
        float *ref = ser_test_tensor(f, key, &n);
        ok &= ser_test_allclose(key, arena + e->offset, ref, n, s_atol(ref, n), RTOL);
        free(ref);
    }
    return ok;
}

static int s_check_losses(const s_case *c, const ser_dino_losses *L) {
    float got[3] = {(float)L->loss, (float)L->loss_inv, (float)L->loss_equiv};
    const char *names[3] = {"loss", "loss_inv", "loss_equiv"};
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        float *ref = ser_test_tensor(c->f, names[i], NULL);
        ok &= ser_test_allclose(names[i], &got[i], ref, 1, 1e-6f, RTOL);
        free(ref);
    }
    return ok;
}

// The whole step: forward/backward, then the centre and the teacher EMA (student unchanged: the
// fixture's EMA is taken as after an optimizer step with lr 0).
static void s_run_cfg(const char *file, int shards, int head_chunk, const ser_dino_config *cfg) {
    s_case c;
    s_load_cfg(&c, file, cfg);
    if (head_chunk) c.d.head_chunk = head_chunk;
    ser_dino_losses L;
    char err[SER_ERR_LEN];
    int rc = ser_dino_forward_backward(&c.d, &c.b, shards, c.teacher_temp, 0, 0, &L, err);
    if (rc) fail_msg("forward_backward: %s", err);
    int ok = s_check_losses(&c, &L);
    ok &= s_check_table(c.f, &c.d.tab, c.d.grads, "grad.", NULL);
    size_t np = c.d.tab.total;
    float *before = malloc(sizeof(float) * np);
    memcpy(before, c.d.params, sizeof(float) * np);
    ser_dino_after_step(&c.d, c.momentum);
    ok &= s_check_table(c.f, &c.d.btab, c.d.buffers, "after.", NULL);
    ok &= s_check_table(c.f, &c.d.ttab, c.d.tparams, "after.", NULL);
    if (c.d.cfg.projector_ema_quirk)
        ok &= s_check_table(c.f, &c.d.tab, c.d.params, "after_quirk.", "student.projector_equiv.");
    else  // ser's default: the student, projector included, is not touched by the EMA
        assert_memory_equal(before, c.d.params, sizeof(float) * np);
    free(before);
    assert_true(ok);
    s_free(&c);
}

static void s_run(const char *file, int shards, int head_chunk) {
    s_run_cfg(file, shards, head_chunk, NULL);
}

static void test_ser_on_4_shards(void **s) { (void)s, s_run("dino_ser_on.safetensors", 4, 0); }
static void test_ser_on_1_shard(void **s) { (void)s, s_run("dino_ser_on.safetensors", 1, 0); }
// Multi-crop: 2 local crops of 8 px, student only; 1 shard, and 8 shards with head chunks of 3.
static void test_multicrop_1_shard(void **s) { (void)s, s_run("dino_multicrop.safetensors", 1, 0); }
static void test_multicrop_chunks(void **s) { (void)s, s_run("dino_multicrop.safetensors", 8, 3); }
static void test_ser_off_2_shards(void **s) { (void)s, s_run("dino_ser_off.safetensors", 2, 0); }
// Head chunks of 3 samples (3 + 3 + 2) over 8 shards of one sample each.
static void test_ser_on_head_chunks(void **s) { (void)s, s_run("dino_ser_on.safetensors", 8, 3); }

// ser.enabled = false: no projector, no maps. The gradient is the public code's (ser_grad off:
// the SER term has none), the loss is loss_inv alone.
static void test_ser_disabled(void **state) {
    (void)state;
    ser_st_file *f = ser_test_open_fixture("dino_ser_off.safetensors");
    ser_dino_config cfg;
    s_config(&cfg, f);
    cfg.ser = 0;
    ser_dino d;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_dino_init(&d, &cfg, err), 0);
    assert_int_equal(d.n_proj, 0);
    assert_null(ser_ptab_find(&d.tab, "student.projector_equiv.0.weight"));
    const ser_ptab *tabs[2] = {&d.tab, &d.ttab};
    float *arenas[2] = {d.params, d.tparams};
    assert_int_equal(ser_st_load_ptabs(f, tabs, arenas, 2, "param.", 0, err), 0);
    assert_int_equal(ser_st_load_ptab(f, &d.btab, d.buffers, "buffer.", 1, err), 0);
    ser_st_destroy(&f);
    s_case c;  // the batch and the reference values
    s_load(&c, "dino_ser_off.safetensors");
    ser_dino_losses L;
    assert_int_equal(ser_dino_forward_backward(&d, &c.b, 2, c.teacher_temp, 0, 0, &L, err), 0);
    assert_true(L.loss_equiv == 0.0 && L.loss == L.loss_inv);
    float got = (float)L.loss_inv, *ref = ser_test_tensor(c.f, "loss_inv", NULL);
    int ok = ser_test_allclose("loss_inv", &got, ref, 1, 1e-6f, RTOL);
    ok &= s_check_table(c.f, &d.tab, d.grads, "grad.", NULL);
    ser_dino_after_step(&d, c.momentum);
    ok &= s_check_table(c.f, &d.btab, d.buffers, "after.", NULL);
    ok &= s_check_table(c.f, &d.ttab, d.tparams, "after.", NULL);
    assert_true(ok);
    free(ref);
    s_free(&c);
    ser_dino_free(&d);
}

// The reference's EMA loop scales the shared projector by m(2 - m); the flag reproduces it.
static void test_projector_ema_quirk(void **state) {
    (void)state;
    const char *files[2] = {"dino_ser_on.safetensors", "dino_ser_off.safetensors"};
    for (int i = 0; i < 2; i++) {
        ser_st_file *f = ser_test_open_fixture(files[i]);
        ser_dino_config cfg;
        s_config(&cfg, f);
        ser_st_destroy(&f);
        cfg.projector_ema_quirk = 1;
        s_run_cfg(files[i], 2, 0, &cfg);
    }
}

// ser_grad=off is the public code: projector_equiv and norm_equiv get no gradient and are frozen;
// norm_last_layer freezes weight_g. The teacher shares the projector: it has none of its own.
static void test_frozen_and_names(void **state) {
    (void)state;
    s_case c;
    s_load(&c, "dino_ser_off.safetensors");
    const ser_ptab *t = &c.d.tab;
    assert_true(ser_ptab_find(t, "student.projector_equiv.0.weight")->flags & SER_TINFO_FROZEN);
    assert_true(ser_ptab_find(t, "student.backbone.norm_equiv.weight")->flags & SER_TINFO_FROZEN);
    assert_true(ser_ptab_find(t, "student.head.last_layer.weight_g")->flags & SER_TINFO_FROZEN);
    assert_false(ser_ptab_find(t, "student.head.last_layer.weight_v")->flags & SER_TINFO_FROZEN);
    assert_false(ser_ptab_find(t, "student.backbone.norm.weight")->flags & SER_TINFO_FROZEN);
    const ser_tinfo *g = ser_ptab_find(t, "student.head.last_layer.weight_g");
    assert_int_equal(g->ndim, 2);  // (K, 1): DINO's get_params_groups decays it (not 1-D)
    assert_int_equal(g->shape[0], 64), assert_int_equal(g->shape[1], 1);
    assert_non_null(ser_ptab_find(t, "student.head.mlp.4.bias"));
    assert_null(ser_ptab_find(&c.d.ttab, "teacher.projector_equiv.0.weight"));
    assert_non_null(ser_ptab_find(&c.d.ttab, "teacher.head.last_layer.weight_v"));
    assert_non_null(ser_ptab_find(&c.d.btab, "dino_loss.center"));
    assert_int_equal(c.d.n_proj, 2);
    s_free(&c);
    s_load(&c, "dino_ser_on.safetensors");
    assert_false(ser_ptab_find(&c.d.tab, "student.head.last_layer.weight_g")->flags &
                 SER_TINFO_FROZEN);
    assert_false(ser_ptab_find(&c.d.tab, "student.projector_equiv.2.weight")->flags &
                 SER_TINFO_FROZEN);
    s_free(&c);
}

// The same shard split computed twice gives the same bits at a fixed thread count.
static void test_repeatable_bitwise(void **state) {
    (void)state;
    float *g[2], *ctr[2];
    size_t n = 0, k = 0;
    for (int run = 0; run < 2; run++) {
        s_case c;
        s_load(&c, "dino_ser_on.safetensors");
        ser_dino_losses L;
        char err[SER_ERR_LEN];
        assert_int_equal(
            ser_dino_forward_backward(&c.d, &c.b, 4, c.teacher_temp, 0, 0, &L, err), 0);
        n = c.d.tab.total, k = (size_t)c.d.cfg.out_dim;
        g[run] = malloc(n * sizeof(float));
        memcpy(g[run], c.d.grads, n * sizeof(float));
        ctr[run] = malloc(k * sizeof(float));
        memcpy(ctr[run], c.d.batch_center, k * sizeof(float));
        s_free(&c);
    }
    assert_memory_equal(g[0], g[1], n * sizeof(float));
    assert_memory_equal(ctr[0], ctr[1], k * sizeof(float));
    for (int i = 0; i < 2; i++) free(g[i]), free(ctr[i]);
}

// Drop path (student only) with masks drawn from Philox by (seed, step, global sample id, view):
// the loss does not depend on the shard split, changes with the step and the seed, and the
// teacher (the centre's batch mean) never drops.
static void test_drop_path_keyed(void **state) {
    (void)state;
    ser_st_file *f = ser_test_open_fixture("dino_ser_on.safetensors");
    ser_dino_config cfg;
    s_config(&cfg, f);
    ser_st_destroy(&f);
    cfg.vit.drop_path_rate = 0.5f;
    s_case c;
    s_load_cfg(&c, "dino_ser_on.safetensors", &cfg);
    char err[SER_ERR_LEN];
    ser_dino_losses L[6];
    int K = cfg.out_dim;
    size_t n = c.d.tab.total;
    float *g1 = malloc(sizeof(float) * n), *ctr1 = malloc(sizeof(float) * (size_t)K);
    float *ctr4 = malloc(sizeof(float) * (size_t)K);
    // (shards, seed, step) per run.
    const int runs[6][3] = {{1, 7, 3}, {4, 7, 3}, {8, 7, 3}, {4, 7, 4}, {4, 8, 3}, {4, 7, 3}};
    for (int r = 0; r < 6; r++) {
        assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, runs[r][0], c.teacher_temp,
                                                   (uint64_t)runs[r][1], (uint32_t)runs[r][2],
                                                   &L[r], err),
                         0);
        if (r == 0) {
            memcpy(g1, c.d.grads, sizeof(float) * n);
            memcpy(ctr1, c.d.batch_center, sizeof(float) * (size_t)K);
        } else if (r == 1) {
            memcpy(ctr4, c.d.batch_center, sizeof(float) * (size_t)K);
        } else if (runs[r][0] == 4) {  // the teacher does not drop: the same bits, any seed/step
            assert_memory_equal(ctr4, c.d.batch_center, sizeof(float) * (size_t)K);
        }
        if (r == 1 || r == 2) {  // another split: equal up to the order of the shard sums and
                                 // the BLAS blocking of different ViT call sizes
            float a = (float)L[r].loss, ref = (float)L[0].loss;
            assert_true(ser_test_allclose("drop loss", &a, &ref, 1, 1e-6f, 1e-5f));
            assert_true(ser_test_allclose("drop grads", c.d.grads, g1, n,
                                          1e-5f * ser_test_maxabs(g1, n), 1e-4f));
            assert_true(ser_test_allclose("teacher batch mean", c.d.batch_center, ctr1,
                                          (size_t)K, 1e-6f, 1e-5f));
        }
    }
    assert_true(fabs(L[3].loss_inv - L[1].loss_inv) > 1e-3);  // another step
    assert_true(fabs(L[4].loss_inv - L[1].loss_inv) > 1e-3);  // another seed
    assert_true(L[5].loss_inv == L[1].loss_inv);              // the same again
    s_free(&c);
    // And drop path is on at all: rate 0 gives another loss.
    s_load(&c, "dino_ser_on.safetensors");
    ser_dino_losses L0;
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 4, c.teacher_temp, 7, 3, &L0, err), 0);
    assert_true(fabs(L0.loss_inv - L[1].loss_inv) > 1e-3);
    assert_memory_equal(ctr4, c.d.batch_center, sizeof(float) * (size_t)K);
    s_free(&c);
    free(g1), free(ctr1), free(ctr4);
}

// --- finite differences through the DINO head and loss ----------------------------------------
#define FD_EPS 3e-3f
// Float forward passes make f (~2) noisy at ~2e-7; divided by 2*EPS that is ~3e-5. Truncation
// error is O(EPS^2): at test_grad.c's EPS of 1e-2 the sharp softmaxes (temperatures 0.2 and 0.1)
// put weight_v at 8e-4, close to the atol; 3e-3 balances the two. Thresholds as test_grad.c.
#define FD_ATOL 1e-3
#define FD_RTOL 1e-2

typedef struct {
    ser_dino_head h;
    ser_dino_head_acts a;
    float *x, *t, *center;
    int M, K;
    float ts, tt;
} fd_ctx;

static double s_fd_f(fd_ctx *c) {
    const float *s = ser_dino_head_forward(&c->h, &c->a, c->x, 2 * c->M);
    return ser_dino_loss(NULL, s, c->t, c->center, c->M, c->K, c->ts, c->tt, NULL);
}

static int s_fd_check(const char *label, fd_ctx *c, float *x, const float *g, size_t n) {
    double max_err = 0;
    int bad = 0;
    for (size_t j = 0; j < n; j++) {
        float x0 = x[j];
        x[j] = x0 + FD_EPS;
        double fp = s_fd_f(c);
        x[j] = x0 - FD_EPS;
        double fm = s_fd_f(c);
        x[j] = x0;
        double fd = (fp - fm) / (2.0 * (double)FD_EPS), err = fabs(fd - (double)g[j]);
        if (err > max_err) max_err = err;
        if (err > FD_ATOL + FD_RTOL * fabs(fd)) {
            if (bad < 5)
                print_error("  %s[%zu]: analytic %.6g, finite difference %.6g\n", label, j,
                            (double)g[j], fd);
            bad++;
        }
    }
    print_message("%s %-28s n=%-4zu max|fd-g|=%.2e\n", bad ? "FAIL" : "ok  ", label, n, max_err);
    return bad == 0;
}

static void s_fd_head(int norm_last_layer) {
    fd_ctx c;
    memset(&c, 0, sizeof c);
    int C = 5, H = 7, D = 4;
    c.M = 3, c.K = 6, c.ts = 0.2f, c.tt = 0.1f;
    ser_ptab tab;
    ser_ptab_init(&tab);
    char err[SER_ERR_LEN];
    assert_int_equal(ser_dino_head_register(&c.h, C, H, D, c.K, norm_last_layer, &tab, "h.", err),
                     0);
    float *params = ser_xaligned(sizeof(float) * tab.total);
    float *grads = ser_xaligned(sizeof(float) * tab.total);
    ser_dino_head_bind(&c.h, params, grads);
    for (int i = 0; i < tab.n; i++) {
        const ser_tinfo *t = &tab.t[i];
        int is_g = strstr(t->name, "weight_g") != NULL;
        ser_test_fill_uniform(params + t->offset, t->numel, 10 + (uint64_t)i, is_g ? 0.5f : -0.6f,
                              is_g ? 1.5f : 0.6f);
    }
    size_t R = (size_t)2 * c.M;
    c.x = malloc(sizeof(float) * R * C), c.t = malloc(sizeof(float) * R * c.K);
    c.center = malloc(sizeof(float) * (size_t)c.K);
    ser_test_fill_uniform(c.x, R * C, 1, -1.5f, 1.5f);
    ser_test_fill_uniform(c.t, R * c.K, 2, -1.0f, 1.0f);
    ser_test_fill_uniform(c.center, (size_t)c.K, 3, -0.3f, 0.3f);
    // Analytic gradients.
    float *ds = malloc(sizeof(float) * R * c.K), *dx = malloc(sizeof(float) * R * C);
    const float *s = ser_dino_head_forward(&c.h, &c.a, c.x, (int)R);
    ser_dino_loss(ds, s, c.t, c.center, c.M, c.K, c.ts, c.tt, NULL);
    ser_dino_head_backward(&c.h, &c.a, dx, ds);
    int ok = s_fd_check("x", &c, c.x, dx, R * C);
    for (int i = 0; i < tab.n; i++) {
        const ser_tinfo *t = &tab.t[i];
        if (norm_last_layer && strstr(t->name, "weight_g")) {  // frozen: no gradient written
            for (size_t j = 0; j < t->numel; j++) assert_true(grads[t->offset + j] == 0.0f);
            continue;
        }
        ok &= s_fd_check(t->name, &c, params + t->offset, grads + t->offset, t->numel);
    }
    assert_true(ok);
    ser_dino_head_acts_free(&c.a);
    free(params), free(grads), free(c.x), free(c.t), free(c.center), free(ds), free(dx);
    ser_ptab_free(&tab);
}

static void test_fd_head_and_loss(void **state) { (void)state, s_fd_head(0); }
static void test_fd_head_norm_last_layer(void **state) { (void)state, s_fd_head(1); }

// The loss against its definition in double on a tiny case, and the gradient's row sums (each
// row of d/ds sums to 0 when the teacher row sums to 1).
static void test_loss_definition(void **state) {
    (void)state;
    int M = 2, K = 5;
    float s[20], t[20], ctr[5], ds[20];
    ser_test_fill_uniform(s, 20, 4, -2, 2);
    ser_test_fill_uniform(t, 20, 5, -2, 2);
    ser_test_fill_uniform(ctr, 5, 6, -0.5f, 0.5f);
    float ts = 0.1f, tt = 0.04f;
    double L = ser_dino_loss(ds, s, t, ctr, M, K, ts, tt, NULL), ref = 0;
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < M; i++) {
            const float *tr = t + ((1 - v) * M + i) * K, *sr = s + (v * M + i) * K;
            double zt = 0, zs = 0, p[5];
            for (int k = 0; k < K; k++) zt += exp(((double)tr[k] - (double)ctr[k]) / (double)tt);
            for (int k = 0; k < K; k++) zs += exp((double)sr[k] / (double)ts);
            for (int k = 0; k < K; k++) {
                p[k] = exp(((double)tr[k] - (double)ctr[k]) / (double)tt) / zt;
                ref -= p[k] * ((double)sr[k] / (double)ts - log(zs)) / (2.0 * M);
            }
        }
    assert_true(fabs(L - ref) <= 1e-5 * fabs(ref));
    for (int r = 0; r < 2 * M; r++) {
        double sum = 0;
        for (int k = 0; k < K; k++) sum += (double)ds[r * K + k];
        assert_true(fabs(sum) < 1e-5);
    }
}

// Multi-crop: the loss with 2 local views against its definition in double (every student view
// against every teacher global but its own, averaged over the 6 pairs), and its gradient by
// central finite differences in double precision of the definition.
static double s_mc_ref(const float *s, const float *t, const float *ctr, int M, int K, int V,
                       double ts, double tt, int r_pert, int k_pert, double h) {
    double L = 0;
    for (int iq = 0; iq < 2; iq++)
        for (int v = 0; v < V; v++) {
            if (v == iq) continue;
            for (int i = 0; i < M; i++) {
                const float *tr = t + (iq * M + i) * K, *sr = s + (v * M + i) * K;
                double zt = 0, zs = 0, x[8];
                for (int k = 0; k < K; k++) {
                    x[k] = (double)sr[k] + ((v * M + i) == r_pert && k == k_pert ? h : 0);
                    zt += exp(((double)tr[k] - (double)ctr[k]) / tt);
                    zs += exp(x[k] / ts);
                }
                for (int k = 0; k < K; k++)
                    L -= exp(((double)tr[k] - (double)ctr[k]) / tt) / zt * (x[k] / ts - log(zs)) / M;
            }
        }
    return L / (2.0 * (V - 1));
}

static void test_multicrop_loss_definition_and_fd(void **state) {
    (void)state;
    enum { M = 3, K = 6, V = 4 };
    float s[V * M * K], t[2 * M * K], ctr[K], ds[V * M * K];
    ser_test_fill_uniform(s, V * M * K, 14, -1, 1);
    ser_test_fill_uniform(t, 2 * M * K, 15, -1, 1);
    ser_test_fill_uniform(ctr, K, 16, -0.2f, 0.2f);
    double L = ser_dino_loss_crops(ds, s, t, ctr, M, K, V, 0.5f, 0.3f, NULL);
    double ref = s_mc_ref(s, t, ctr, M, K, V, 0.5f, 0.3f, -1, 0, 0);
    assert_true(fabs(L - ref) <= 1e-6 * fabs(ref));
    double worst = 0;
    for (int r = 0; r < V * M; r++)
        for (int k = 0; k < K; k++) {
            double h = 1e-5;
            double fd = (s_mc_ref(s, t, ctr, M, K, V, 0.5f, 0.3f, r, k, h) -
                         s_mc_ref(s, t, ctr, M, K, V, 0.5f, 0.3f, r, k, -h)) / (2 * h);
            double e = fabs(fd - (double)ds[r * K + k]);
            worst = e > worst ? e : worst;
        }
    print_message("multi-crop DINO loss: |analytic - finite difference| <= %.2e\n", worst);
    assert_true(worst < 1e-5);
    // V = 2 is the two-view loss, bit for bit.
    float ds2[2 * M * K];
    assert_true(ser_dino_loss_crops(ds2, s, t, ctr, M, K, 2, 0.5f, 0.3f, NULL) ==
                ser_dino_loss(ds, s, t, ctr, M, K, 0.5f, 0.3f, NULL));
    assert_memory_equal(ds2, ds, sizeof ds2);
}

// --- the helpers the caller needs ---------------------------------------------------------------
// The collapse monitors of the loss on cases worked by hand (temperatures 1, centre 0):
// uniform teachers have entropy ln K; a teacher row [1/4, 3/4] has entropy
// -(1/4 ln 1/4 + 3/4 ln 3/4); KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 ln(4/3).
static void test_loss_monitors(void **state) {
    (void)state;
    double mon[2];
    float u[2 * 6], s6[2 * 6], c6[6] = {0};
    for (int i = 0; i < 12; i++) u[i] = 0.3f, s6[i] = -1.25f;  // uniform teacher and student
    ser_dino_loss(NULL, s6, u, c6, 1, 6, 1.0f, 1.0f, mon);
    assert_true(fabs(mon[0] - log(6.0)) < 1e-6 && fabs(mon[1]) < 1e-6);
    float l3 = (float)log(3.0);
    // Rows: view 0 then view 1 (M = 1, K = 2).
    float t[4] = {0, l3, 0, 0}, s[4] = {0, l3, 0, l3}, c[2] = {0, 0};
    ser_dino_loss(NULL, s, t, c, 1, 2, 1.0f, 1.0f, mon);
    double h0 = -(0.25 * log(0.25) + 0.75 * log(0.75)), h1 = log(2.0);
    assert_true(fabs(mon[0] - (h0 + h1) / 2) < 1e-6);
    // Student view 0 [1/4, 3/4] against teacher view 1 [1/2, 1/2]: 1/2 ln(4/3); student view 1
    // against teacher view 0, both [1/4, 3/4]: 0.
    assert_true(fabs(mon[1] - 0.5 * log(4.0 / 3.0) / 2) < 1e-6);
}

static void test_active_mask_and_optimizer(void **state) {
    (void)state;
    s_case c;
    s_load(&c, "dino_ser_on.safetensors");
    assert_int_equal(c.d.cfg.freeze_last_layer_epochs, 1);
    unsigned char *active = malloc((size_t)c.d.tab.n);
    assert_int_equal(ser_dino_active(&c.d, 0, active), 2);
    int ig = -1, iv = -1;
    for (int i = 0; i < c.d.tab.n; i++) {
        if (!strcmp(c.d.tab.t[i].name, "student.head.last_layer.weight_g")) ig = i;
        if (!strcmp(c.d.tab.t[i].name, "student.head.last_layer.weight_v")) iv = i;
    }
    assert_true(ig >= 0 && iv >= 0);
    assert_int_equal(active[ig], 0), assert_int_equal(active[iv], 0);
    // One AdamW step in epoch 0: the last layer is left alone (no step, no decay, no state).
    ser_dino_losses L;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 2, c.teacher_temp, 0, 0, &L, err), 0);
    ser_optim_config oc;
    ser_optim_config_default(&oc);
    oc.decay = SER_OPTIM_DECAY_NO_BIAS_1D;
    ser_optim o;
    assert_int_equal(ser_optim_init(&o, &c.d.tab, &oc, err), 0);
    assert_true(ser_optim_decays(&o, ig));  // (K, 1) is not 1-D: decayed, as in the reference
    const ser_tinfo *tv = &c.d.tab.t[iv];
    float *v0 = malloc(sizeof(float) * tv->numel);
    memcpy(v0, c.d.params + tv->offset, sizeof(float) * tv->numel);
    ser_optim_step(&o, c.d.params, c.d.grads, 1e-3, 0.04, active);
    assert_memory_equal(v0, c.d.params + tv->offset, sizeof(float) * tv->numel);
    assert_int_equal(o.step[ig], 0), assert_int_equal(o.step[iv], 0);
    assert_int_equal(o.step[0], 1);
    ser_dino_after_step(&c.d, 0.996);
    // From epoch 1 on, every tensor is active.
    assert_int_equal(ser_dino_active(&c.d, 1, active), 0);
    for (int i = 0; i < c.d.tab.n; i++) assert_int_equal(active[i], 1);
    ser_optim_free(&o);
    free(v0), free(active);
    s_free(&c);
}

static void test_teacher_temp_and_config(void **state) {
    (void)state;
    ser_dino_config c;
    ser_dino_config_default(&c);
    assert_true(ser_dino_teacher_temp(&c, 0) == 0.04);
    assert_true(fabs(ser_dino_teacher_temp(&c, 5) - (0.04 + 5 * (0.03 / 9))) < 1e-15);
    assert_true(ser_dino_teacher_temp(&c, 9) == 0.07);
    assert_true(ser_dino_teacher_temp(&c, 50) == 0.07);
    // The job's [dino] and [ser] sections.
    ser_config job;
    ser_config_defaults(&job);
    char err[SER_ERR_LEN];
    assert_int_equal(ser_dino_config_from_job(&c, &job, err), SER_ECONFIG);  // method moco
    assert_non_null(strstr(err, "dino"));
    assert_int_equal(ser_config_set(&job, "method.name", "dino", err), 0);
    assert_int_equal(ser_config_set(&job, "dino.out_dim", "1000", err), 0);
    assert_int_equal(ser_config_set(&job, "dino.norm_last_layer", "true", err), 0);
    assert_int_equal(ser_config_set(&job, "dino.teacher_temp", "0.05", err), 0);
    assert_int_equal(ser_config_set(&job, "ser.grad", "off", err), 0);
    assert_int_equal(ser_config_set(&job, "ser.lambda", "0.3", err), 0);
    assert_int_equal(ser_config_set(&job, "model.init", "generic", err), 0);
    assert_int_equal(ser_dino_config_from_job(&c, &job, err), 0);
    assert_int_equal(c.out_dim, 1000);
    assert_int_equal(c.norm_last_layer, 1);
    assert_true(c.teacher_temp == 0.05);
    assert_int_equal(c.ser_grad, 0);
    assert_true(c.ser_lambda == 0.3f);
    assert_int_equal(c.init_scheme, SER_VIT_INIT_GENERIC);
    assert_int_equal(c.projector_ema_quirk, 0);
    // The committed ViT-S/16 DINO job is the default configuration.
    char path[512];
    ser_test_fixture_path(path, sizeof path, "../../../configs/dino_vits16_imagenet.ini");
    ser_config_defaults(&job);
    assert_int_equal(ser_config_load(&job, path, 0, NULL, err), 0);
    ser_dino_config def;
    ser_dino_config_default(&def);
    assert_int_equal(ser_dino_config_from_job(&c, &job, err), 0);
    assert_memory_equal(&c, &def, sizeof c);
}

// Fresh weights: the teacher is the student, weight_g = 1, the centre 0; a step runs.
static void test_init_weights(void **state) {
    (void)state;
    ser_dino_config cfg;
    ser_dino_config_default(&cfg);
    ser_vit_config_preset(&cfg.vit, "vit_tiny", 16, 4);
    cfg.vit.dim = 24, cfg.vit.heads = 3, cfg.vit.depth = 4, cfg.vit.mlp_hidden = 48;
    cfg.vit.cls_layer = 2;
    cfg.out_dim = 64, cfg.hidden_dim = 32, cfg.bottleneck_dim = 16, cfg.ser_proj_dim = 20;
    ser_dino d;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_dino_init(&d, &cfg, err), 0);
    ser_dino_init_weights(&d, 5);
    for (int i = 0; i < d.n_base; i++) {
        const ser_tinfo *t = &d.tab.t[i];
        assert_memory_equal(d.params + t->offset, d.tparams + t->offset, sizeof(float) * t->numel);
    }
    const ser_tinfo *g = ser_ptab_find(&d.tab, "student.head.last_layer.weight_g");
    for (size_t k = 0; k < g->numel; k++) assert_true(d.params[g->offset + k] == 1.0f);
    const ser_tinfo *b = ser_ptab_find(&d.tab, "student.head.mlp.2.bias");
    for (size_t k = 0; k < b->numel; k++) assert_true(d.params[b->offset + k] == 0.0f);
    const ser_tinfo *w = ser_ptab_find(&d.tab, "student.head.mlp.2.weight");
    double ss = 0;
    for (size_t k = 0; k < w->numel; k++)
        ss += (double)d.params[w->offset + k] * (double)d.params[w->offset + k];
    assert_true(fabs(sqrt(ss / (double)w->numel) - 0.02) < 0.004);
    for (int k = 0; k < cfg.out_dim; k++) assert_true(d.center[k] == 0.0f);
    ser_dino_free(&d);
}

static void test_bad_inputs(void **state) {
    (void)state;
    s_case c;
    s_load(&c, "dino_ser_on.safetensors");
    ser_dino_losses L;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 2, 0.0, 0, 0, &L, err), SER_EINVAL);
    assert_non_null(strstr(err, "teacher temperature"));
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 2, NAN, 0, 0, &L, err), SER_EINVAL);
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 3, 0.05, 0, 0, &L, err), SER_ESHAPE);
    assert_non_null(strstr(err, "3 shards"));
    c.g[1][2].rot90 = 7;
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 4, 0.05, 0, 0, &L, err), SER_EINVAL);
    assert_non_null(strstr(err, "sample 2 view 1"));
    c.g[1][2].rot90 = 1;
    // A non-finite head weight: SER_ENONFINITE, and no centre update is pending.
    const ser_tinfo *t = ser_ptab_find(&c.d.tab, "student.head.mlp.0.weight");
    c.d.params[t->offset + 3] = NAN;
    assert_int_equal(ser_dino_forward_backward(&c.d, &c.b, 2, 0.05, 0, 0, &L, err),
                     SER_ENONFINITE);
    assert_non_null(strstr(err, "non-finite"));
    assert_int_equal(c.d.have_batch_center, 0);
    s_free(&c);
    // Configurations.
    ser_dino_config cfg;
    ser_dino d;
    ser_dino_config_default(&cfg);
    cfg.vit.cls_layer = cfg.vit.depth;
    assert_int_equal(ser_dino_init(&d, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "SER layout"));
    ser_dino_config_default(&cfg);
    cfg.out_dim = 0;
    assert_int_equal(ser_dino_init(&d, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "out_dim"));
    ser_dino_config_default(&cfg);
    cfg.student_temp = 0.0f;
    assert_int_equal(ser_dino_init(&d, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "temperatures"));
    ser_dino_config_default(&cfg);
    cfg.center_momentum = 1.5;
    assert_int_equal(ser_dino_init(&d, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "center_momentum"));
    ser_dino_config_default(&cfg);
    cfg.ser_tau = -1.0f;
    assert_int_equal(ser_dino_init(&d, &cfg, err), SER_ECONFIG);
    ser_dino_config_default(&cfg);
    cfg.vit.heads = 5;  // 384 % 5 != 0: the ViT's own check
    assert_int_equal(ser_dino_init(&d, &cfg, err) < 0, 1);
    ser_dino_free(&d);  // safe on the zeroed struct a failed init leaves
}

// The collapse test (ser_objective_dino.collapsed) on given monitors, K = 1024 prototypes: the
// two bounds of the entropy, and the drift rule (entropy above 95% of ln K with the KL under
// 0.1) at the values measured on Fashion-MNIST: the collapsed run's 97% / 0.07 is caught, the
// healthy preset's worst point (96.6% / 0.146) and its start (61.6% / 1.54) are not.
static void test_collapse_test(void **state) {
    (void)state;
    ser_dino d;
    memset(&d, 0, sizeof d);
    d.cfg.out_dim = 1024;
    double lnk = log(1024.0);
    const struct {
        double r, kl;
        int want;
        const char *says;
    } cases[] = {{0.616, 1.5377, 0, NULL},
                 {0.966, 0.146, 0, NULL},
                 {0.90, 0.01, 0, NULL},
                 {0.97, 0.07, 1, "drifting to uniform and the student follows it"},
                 {0.985, 0.5, 1, "(the teacher's output is uniform"},
                 {0.01, 0.3, 1, "(the teacher's output is one-hot"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        d.last_entropy = cases[i].r * lnk, d.last_kl = cases[i].kl;
        char why[400] = "";
        int c = ser_objective_dino.collapsed(&d, why, sizeof why);
        print_message("entropy %.3f ln K, KL %.4f -> %d %s\n", cases[i].r, cases[i].kl, c, why);
        assert_int_equal(c, cases[i].want);
        if (cases[i].says) assert_non_null(strstr(why, cases[i].says));
    }
}

int main(void) {
    ser_kernels_set_threads(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ser_on_4_shards),
        cmocka_unit_test(test_collapse_test),
        cmocka_unit_test(test_ser_on_1_shard),
        cmocka_unit_test(test_multicrop_1_shard),
        cmocka_unit_test(test_multicrop_chunks),
        cmocka_unit_test(test_multicrop_loss_definition_and_fd),
        cmocka_unit_test(test_ser_off_2_shards),
        cmocka_unit_test(test_ser_on_head_chunks),
        cmocka_unit_test(test_ser_disabled),
        cmocka_unit_test(test_projector_ema_quirk),
        cmocka_unit_test(test_frozen_and_names),
        cmocka_unit_test(test_repeatable_bitwise),
        cmocka_unit_test(test_drop_path_keyed),
        cmocka_unit_test(test_fd_head_and_loss),
        cmocka_unit_test(test_fd_head_norm_last_layer),
        cmocka_unit_test(test_loss_definition),
        cmocka_unit_test(test_loss_monitors),
        cmocka_unit_test(test_active_mask_and_optimizer),
        cmocka_unit_test(test_teacher_temp_and_config),
        cmocka_unit_test(test_init_weights),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
