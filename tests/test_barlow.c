// test_barlow.c — Barlow Twins + SER against the PyTorch reference (tests/reference/
// ser_ref_barlow.py BarlowSER, fixtures from make_barlow_fixtures.py): the cross-correlation
// loss behind the affine-free BatchNorm, a whole forward/backward (every loss term, every
// parameter gradient, the BatchNorm buffers) with the SER gradient on (one direction, and
// symmetric) and off, on 1, 2 and 4 shards; finite differences without PyTorch; shard splits
// against the whole batch; bad inputs and configurations.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_barlow.h"
#include "ser_eval.h"
#include "ser_kernels.h"
#include "ser_objective.h"
#include "ser_test.h"

#define RTOL 1e-4f
// atol: 2e-5 of the tensor's scale, with a floor of 1e-6, as test_moco.c. A whole step in
// float32 sits near 1e-5 of scale or below; of this tolerance PyTorch's own float32 run of these
// steps uses at most 19% on any tensor (make_barlow_fixtures.py --measure), ser's Release build
// 16%, a Debug ASan+UBSan build 17%.
// backbone.norm.bias is zero in exact arithmetic (a constant shift of the [CLS] is removed by
// the projector's first BatchNorm), so its float32 value is rounding noise of a sum whose terms
// are those of d/d norm.weight: its scale is taken from there (PyTorch float32: 11% of it;
// with its own scale, i.e. the 1e-6 floor, PyTorch itself would use 739%).
static float s_atol(const float *ref, size_t n) {
    return 2e-5f * ser_test_maxabs(ref, n) + 1e-6f;
}

static const char *s_scale_from(const char *name) {
    return strcmp(name, "backbone.norm.bias") == 0 ? "backbone.norm.weight" : name;
}

static float *s_rand(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    ser_test_fill_uniform(x, n, seed, lo, hi);
    return x;
}

// --- fixture cases -----------------------------------------------------------------------------
typedef struct {
    ser_st_file *f;
    ser_barlow m;
    float *inv[2], *eqimg[2][3];
    const float *eqp[2][3];
    ser_group_elem g[2][3];
    ser_batch b;
} s_case;

static void s_tiny_config(ser_barlow_config *cfg) {
    ser_barlow_config_default(cfg);
    ser_vit_config_preset(&cfg->vit, "vit_tiny", 16, 4);
    cfg->vit.dim = 24, cfg->vit.heads = 3, cfg->vit.depth = 4, cfg->vit.mlp_hidden = 48;
    cfg->vit.cls_layer = 2, cfg->vit.freeze_patch_embed = 0;
    cfg->proj_dim = 32, cfg->ser_proj_dim = 20, cfg->ser_lambda = 0.7f, cfg->ser_tau = 0.4f;
}

// ser = 0: the same fixture on a model without the SER term (projector_equiv left unloaded).
static void s_load_ser(s_case *c, const char *file, int ser) {
    c->f = ser_test_open_fixture(file);
    ser_barlow_config cfg;
    s_tiny_config(&cfg);
    cfg.ser_grad = atoi(ser_st_meta(c->f, "ser_grad"));
    cfg.ser_symmetric = atoi(ser_st_meta(c->f, "symmetric"));
    cfg.lambda_offdiag = strtof(ser_st_meta(c->f, "lambda_offdiag"), NULL);
    cfg.ser = ser;
    char err[SER_ERR_LEN];
    if (ser_barlow_init(&c->m, &cfg, err)) fail_msg("%s", err);
    int rc = ser_st_load_ptab(c->f, &c->m.tab, c->m.params, "param.", ser, err);
    if (rc) fail_msg("params: %s (%s)", err, ser_strerror(rc));
    rc = ser_st_load_ptab(c->f, &c->m.btab, c->m.buffers, "buffer.", 1, err);
    if (rc) fail_msg("buffers: %s (%s)", err, ser_strerror(rc));
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
    c->b = (ser_batch){.n_inv = 5,
                       .n_eq = 3,
                       .img = 16,
                       .inv = {c->inv[0], c->inv[1]},
                       .eq = {c->eqp[0], c->eqp[1]},
                       .g = {c->g[0], c->g[1]}};
}

static void s_load(s_case *c, const char *file) {
    s_load_ser(c, file, 1);
}

static void s_free(s_case *c) {
    for (int v = 0; v < 2; v++) {
        free(c->inv[v]);
        for (int e = 0; e < 3; e++) free(c->eqimg[v][e]);
    }
    ser_barlow_free(&c->m);
    ser_st_destroy(&c->f);
}

// Every tensor of t (counters aside) against prefix + name in the fixture.
static int s_check_table(const ser_st_file *f, const ser_ptab *t, const float *arena,
                         const char *prefix) {
    int ok = 1;
    char key[SER_TINFO_NAME_LEN + 32], skey[SER_TINFO_NAME_LEN + 32];
    for (int i = 0; i < t->n; i++) {
        const ser_tinfo *e = &t->t[i];
        if (e->flags & SER_TINFO_COUNTER) continue;
        snprintf(key, sizeof key, "%s%s", prefix, e->name);
        snprintf(skey, sizeof skey, "%s%s", prefix, s_scale_from(e->name));
        size_t n, ns;
        float *ref = ser_test_tensor(f, key, &n), *sref = ser_test_tensor(f, skey, &ns);
        ok &= ser_test_allclose(key, arena + e->offset, ref, n, s_atol(sref, ns), RTOL);
        free(ref), free(sref);
    }
    return ok;
}

static int s_check_scalar(const ser_st_file *f, const char *name, double got) {
    float g = (float)got, *ref = ser_test_tensor(f, name, NULL);
    int ok = ser_test_allclose(name, &g, ref, 1, 1e-6f, RTOL);
    free(ref);
    return ok;
}

static void s_run(const char *file, int shards) {
    s_case c;
    s_load(&c, file);
    ser_barlow_losses L;
    char err[SER_ERR_LEN];
    int rc = ser_barlow_forward_backward(&c.m, &c.b, shards, 0, 0, &L, err);
    if (rc) fail_msg("forward_backward: %s", err);
    int ok = s_check_scalar(c.f, "loss", L.loss);
    ok &= s_check_scalar(c.f, "loss_inv", L.loss_inv);
    ok &= s_check_scalar(c.f, "loss_equiv", L.loss_equiv);
    ok &= s_check_scalar(c.f, "on_diag", L.on_diag);
    ok &= s_check_scalar(c.f, "off_diag", L.off_diag);
    ok &= s_check_table(c.f, &c.m.tab, c.m.grads, "grad.");
    ok &= s_check_table(c.f, &c.m.btab, c.m.buffers, "after.");
    // Every BatchNorm (projector.1, projector.4, bn) ran once per view.
    for (int i = 0; i < c.m.btab.n; i++)
        if (c.m.btab.t[i].flags & SER_TINFO_COUNTER) {
            float *ref = ser_test_tensor(c.f, "after.bn.num_batches_tracked", NULL);
            assert_true(ref[0] == 2.0f);
            ok &= c.m.buffers[c.m.btab.t[i].offset] == 2.0f;
            free(ref);
        }
    assert_true(ok);
    s_free(&c);
}

static void test_ser_on_1_shard(void **s) {
    (void)s, s_run("barlow_ser_on.safetensors", 1);
}
static void test_ser_on_2_shards(void **s) {
    (void)s, s_run("barlow_ser_on.safetensors", 2);
}
static void test_ser_on_4_shards(void **s) {
    (void)s, s_run("barlow_ser_on.safetensors", 4);
}
static void test_ser_off_2_shards(void **s) {
    (void)s, s_run("barlow_ser_off.safetensors", 2);
}
static void test_ser_off_4_shards(void **s) {
    (void)s, s_run("barlow_ser_off.safetensors", 4);
}
static void test_ser_sym_1_shard(void **s) {
    (void)s, s_run("barlow_ser_sym.safetensors", 1);
}
static void test_ser_sym_4_shards(void **s) {
    (void)s, s_run("barlow_ser_sym.safetensors", 4);
}

// Without the SER term the model is plain Barlow Twins: with the SER gradient off the fixture's
// gradients are exactly those of loss_inv, and loss = loss_inv.
static void test_ser_disabled_is_plain_barlow_twins(void **state) {
    (void)state;
    s_case c;
    s_load_ser(&c, "barlow_ser_off.safetensors", 0);
    assert_null(ser_ptab_find(&c.m.tab, "projector_equiv.0.weight"));
    ser_barlow_losses L;
    char err[SER_ERR_LEN];
    if (ser_barlow_forward_backward(&c.m, &c.b, 4, 0, 0, &L, err)) fail_msg("%s", err);
    int ok = s_check_scalar(c.f, "loss_inv", L.loss);
    ok &= s_check_scalar(c.f, "loss_inv", L.loss_inv);
    ok &= L.loss_equiv == 0.0;
    ok &= s_check_table(c.f, &c.m.tab, c.m.grads, "grad.");
    ok &= s_check_table(c.f, &c.m.btab, c.m.buffers, "after.");
    assert_true(ok);
    s_free(&c);
}

// --- the loss behind bn, against PyTorch ---------------------------------------------------------
static void s_xcorr_case(const ser_st_file *f, const char *name) {
    char key[64];
#define T(what) (snprintf(key, sizeof key, "%s.%s", name, what), ser_test_tensor(f, key, &n))
    size_t n, nP, NPn;
    float *z1 = T("z1");
    NPn = n;
    float *z2 = T("z2"), *a = T("a"), *b = T("b"), *da = T("da"), *db = T("db");
    float *dz1 = T("dz1"), *dz2 = T("dz2"), *on = T("on_diag"), *off = T("off_diag");
    float *lam = T("lambda"), *rm = T("running_mean");
    nP = n;
    float *rv = T("running_var"), *rm1 = T("after.running_mean"), *rv1 = T("after.running_var");
#undef T
    int P = (int)nP, N = (int)(NPn / nP);
    float *ga = malloc(NPn * 4), *gb = malloc(NPn * 4), *ya = malloc(NPn * 4),
          *yb = malloc(NPn * 4);
    float *ma = malloc(nP * 4), *ra = malloc(nP * 4), *mb = malloc(nP * 4), *rb = malloc(nP * 4);
    float *dza = malloc(NPn * 4), *dzb = malloc(NPn * 4);
    ser_batchnorm_forward(ya, ma, ra, z1, NULL, NULL, N, P, rm, rv);
    ser_batchnorm_forward(yb, mb, rb, z2, NULL, NULL, N, P, rm, rv);
    double o, d;
    assert_int_equal(ser_barlow_xcorr_loss(&o, &d, ga, gb, ya, yb, N, P, lam[0], 1.0f), SER_OK);
    ser_batchnorm_backward(dza, NULL, NULL, ga, z1, NULL, ma, ra, N, P);
    ser_batchnorm_backward(dzb, NULL, NULL, gb, z2, NULL, mb, rb, N, P);
    float got[2] = {(float)o, (float)d};
    int ok = ser_test_allclose("bn(z1)", ya, a, NPn, s_atol(a, NPn), RTOL);
    ok &= ser_test_allclose("bn(z2)", yb, b, NPn, s_atol(b, NPn), RTOL);
    ok &= ser_test_allclose("on_diag", &got[0], on, 1, 1e-6f, RTOL);
    ok &= ser_test_allclose("off_diag", &got[1], off, 1, 1e-6f, RTOL);
    ok &= ser_test_allclose("dL/da", ga, da, NPn, s_atol(da, NPn), RTOL);
    ok &= ser_test_allclose("dL/db", gb, db, NPn, s_atol(db, NPn), RTOL);
    ok &= ser_test_allclose("dL/dz1", dza, dz1, NPn, s_atol(dz1, NPn), RTOL);
    ok &= ser_test_allclose("dL/dz2", dzb, dz2, NPn, s_atol(dz2, NPn), RTOL);
    ok &= ser_test_allclose("running_mean", rm, rm1, nP, s_atol(rm1, nP), RTOL);
    ok &= ser_test_allclose("running_var", rv, rv1, nP, s_atol(rv1, nP), RTOL);
    // The naive twin against the same (PyTorch's) values.
    assert_int_equal(ser_barlow_xcorr_loss_naive(&o, &d, ga, gb, a, b, N, P, lam[0], 1.0f), SER_OK);
    got[0] = (float)o, got[1] = (float)d;
    ok &= ser_test_allclose("naive on_diag", &got[0], on, 1, 1e-6f, RTOL);
    ok &= ser_test_allclose("naive off_diag", &got[1], off, 1, 1e-6f, RTOL);
    ok &= ser_test_allclose("naive dL/da", ga, da, NPn, s_atol(da, NPn), RTOL);
    ok &= ser_test_allclose("naive dL/db", gb, db, NPn, s_atol(db, NPn), RTOL);
    assert_true(ok);
    float *all[] = {z1,  z2,  a,  b,  da, db, dz1, dz2, on, off, lam, rm, rv,
                    rm1, rv1, ga, gb, ya, yb, ma,  ra,  mb, rb,  dza, dzb};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

static void test_xcorr_vs_pytorch(void **state) {
    (void)state;
    ser_st_file *f = ser_test_open_fixture("barlow_xcorr.safetensors");
    s_xcorr_case(f, "small");
    s_xcorr_case(f, "blocks");
    ser_st_destroy(&f);
}

// The BLAS path against the double-precision twin (NMSE, STYLE rule 14), at a width that is
// not a multiple of the 128-row GEMM blocks and with scale != 1; and the same bits for 1 and 2
// threads.
static void test_xcorr_fast_vs_naive_and_threads(void **state) {
    (void)state;
    int N = 37, P = 300;
    size_t n = (size_t)N * P;
    float *a = s_rand(n, 11, -2, 2), *b = s_rand(n, 12, -2, 2);
    float *da[3], *db[3];
    double on[3], off[3];
    for (int k = 0; k < 3; k++) da[k] = malloc(n * 4), db[k] = malloc(n * 4);
    assert_int_equal(
        ser_barlow_xcorr_loss_naive(&on[0], &off[0], da[0], db[0], a, b, N, P, 0.05f, 0.3f),
        SER_OK);
    for (int k = 1; k < 3; k++) {
        ser_kernels_set_threads(k);
        assert_int_equal(
            ser_barlow_xcorr_loss(&on[k], &off[k], da[k], db[k], a, b, N, P, 0.05f, 0.3f), SER_OK);
    }
    ser_kernels_set_threads(2);
    double nda = ser_test_nmse(da[1], da[0], n), ndb = ser_test_nmse(db[1], db[0], n);
    print_message(
        "xcorr fast vs naive: on %.3g rel %.2e, off %.3g rel %.2e, nmse da %.2e db %.2e\n", on[0],
        fabs(on[1] - on[0]) / on[0], off[0], fabs(off[1] - off[0]) / off[0], nda, ndb);
    assert_true(fabs(on[1] - on[0]) <= 1e-5 * on[0] && fabs(off[1] - off[0]) <= 1e-5 * off[0]);
    assert_true(nda <= 1e-7 && ndb <= 1e-7);
    assert_true(on[1] == on[2] && off[1] == off[2]);
    assert_memory_equal(da[1], da[2], n * 4);
    assert_memory_equal(db[1], db[2], n * 4);
    // NULL gradients: the loss alone, the same value.
    double o2, d2;
    assert_int_equal(ser_barlow_xcorr_loss(&o2, &d2, NULL, NULL, a, b, N, P, 0.05f, 0.3f), SER_OK);
    assert_true(o2 == on[2] && d2 == off[2]);
    for (int k = 0; k < 3; k++) free(da[k]), free(db[k]);
    free(a), free(b);
}

// --- finite differences -----------------------------------------------------------------------
// Central differences of a double-precision objective, with the step actually taken by the
// float input ((x+e) - (x-e) rounded), compared with the analytic float gradient.
typedef double (*objective_fn)(void *ctx);

static int s_fd_check(const char *label, objective_fn f, void *ctx, float *x, const float *g,
                      size_t n, float eps, double atol, double rtol) {
    double max_err = 0, sum_err = 0;
    int bad = 0;
    for (size_t j = 0; j < n; j++) {
        float x0 = x[j], xp = x0 + eps, xm = x0 - eps;
        x[j] = xp;
        double fp = f(ctx);
        x[j] = xm;
        double fm = f(ctx);
        x[j] = x0;
        double fd = (fp - fm) / ((double)xp - (double)xm);
        double err = fabs(fd - (double)g[j]);
        sum_err += err;
        if (err > max_err) max_err = err;
        if (err > atol + rtol * fabs(fd)) {
            if (bad < 5)
                print_error("  %s[%zu]: analytic %.8g, finite difference %.8g\n", label, j,
                            (double)g[j], fd);
            bad++;
        }
    }
    print_message("%s %-28s n=%-4zu max|fd-g|=%.2e mean|fd-g|=%.2e\n", bad ? "FAIL" : "ok  ", label,
                  n, max_err, sum_err / (double)n);
    return bad == 0 && sum_err / (double)n <= 1e-4;
}

typedef struct {
    float *a, *b, *ya, *yb, *m, *r;
    int N, P, bn;
    float lambda;
} xc_ctx;

// loss(a, b) through the naive (double) loss; with bn, loss(bn(a), bn(b)) with ser's float
// BatchNorm (no running statistics).
static double s_xc_f(void *p) {
    xc_ctx *c = p;
    const float *x = c->a, *y = c->b;
    if (c->bn) {
        ser_batchnorm_forward(c->ya, c->m, c->r, c->a, NULL, NULL, c->N, c->P, NULL, NULL);
        ser_batchnorm_forward(c->yb, c->m, c->r, c->b, NULL, NULL, c->N, c->P, NULL, NULL);
        x = c->ya, y = c->yb;
    }
    double on, off;
    SER_ASSERT(ser_barlow_xcorr_loss_naive(&on, &off, NULL, NULL, x, y, c->N, c->P, c->lambda,
                                           1.0f) == SER_OK);
    return on + (double)c->lambda * off;
}

static void test_fd_xcorr_loss(void **state) {
    (void)state;
    int N = 5, P = 4;
    size_t n = (size_t)N * P;
    xc_ctx c = {s_rand(n, 21, -1.5f, 1.5f),
                s_rand(n, 22, -1.5f, 1.5f),
                NULL,
                NULL,
                NULL,
                NULL,
                N,
                P,
                0,
                0.3f};
    float da[20], db[20];
    assert_int_equal(
        ser_barlow_xcorr_loss(&(double){0}, &(double){0}, da, db, c.a, c.b, N, P, c.lambda, 1.0f),
        SER_OK);
    // The loss is a quartic polynomial: eps 1e-3 leaves truncation ~1e-6; the objective is double.
    int ok = s_fd_check("xcorr d/da", s_xc_f, &c, c.a, da, n, 1e-3f, 1e-4, 1e-4);
    ok &= s_fd_check("xcorr d/db", s_xc_f, &c, c.b, db, n, 1e-3f, 1e-4, 1e-4);
    assert_true(ok);
    free(c.a), free(c.b);
}

static void test_fd_bn_xcorr(void **state) {
    (void)state;
    int N = 6, P = 5;
    size_t n = (size_t)N * P;
    xc_ctx c = {s_rand(n, 31, -1.0f, 2.0f),
                s_rand(n, 32, -2.0f, 1.0f),
                malloc(n * 4),
                malloc(n * 4),
                malloc((size_t)P * 4),
                malloc((size_t)P * 4),
                N,
                P,
                1,
                0.3f};
    float ga[30], gb[30], dza[30], dzb[30], ma[5], ra[5], mb[5], rb[5];
    ser_batchnorm_forward(c.ya, ma, ra, c.a, NULL, NULL, N, P, NULL, NULL);
    ser_batchnorm_forward(c.yb, mb, rb, c.b, NULL, NULL, N, P, NULL, NULL);
    assert_int_equal(
        ser_barlow_xcorr_loss(&(double){0}, &(double){0}, ga, gb, c.ya, c.yb, N, P, c.lambda, 1.0f),
        SER_OK);
    ser_batchnorm_backward(dza, NULL, NULL, ga, c.a, NULL, ma, ra, N, P);
    ser_batchnorm_backward(dzb, NULL, NULL, gb, c.b, NULL, mb, rb, N, P);
    // The BatchNorm outputs are float (relative noise ~6e-8 on a loss ~10): with eps 1e-2 that is
    // ~3e-5 in the difference quotient, and truncation O(eps^2) stays below 1e-4 here.
    int ok = s_fd_check("bn+xcorr d/dz1", s_xc_f, &c, c.a, dza, n, 1e-2f, 5e-4, 1e-3);
    ok &= s_fd_check("bn+xcorr d/dz2", s_xc_f, &c, c.b, dzb, n, 1e-2f, 5e-4, 1e-3);
    assert_true(ok);
    free(c.a), free(c.b), free(c.ya), free(c.yb), free(c.m), free(c.r);
}

// --- shard splits -----------------------------------------------------------------------------
// The engine's job, shown for Barlow Twins: the loss, every gradient and the BatchNorm buffers
// from a batch split into 2, 4 or 8 shards equal the whole-batch ones (1 shard) up to float
// rounding: the ViT runs on other row counts (OpenBLAS rounds a 5-row and a 1-row product
// differently) and shard gradients are added in shard order. Measured: up to ~4e-6 of each
// tensor's scale (the same size as the C-vs-PyTorch differences), so half the fixture tolerance
// (1e-5 of scale) holds; an error in what is coupled (say BatchNorm or c per shard) would change
// the loss itself by O(1). The same split twice gives the same bits.
static void test_shards_equal_whole_batch(void **state) {
    (void)state;
    const int splits[4] = {1, 2, 4, 8};
    float *grads[4] = {0}, *bufs[4] = {0};
    double loss[4], inv[4], eq[4];
    size_t ng = 0, nb = 0;
    s_case c;
    for (int k = 0; k < 4; k++) {
        s_load(&c, "barlow_ser_sym.safetensors");
        ser_barlow_losses L;
        char err[SER_ERR_LEN];
        if (ser_barlow_forward_backward(&c.m, &c.b, splits[k], 0, 0, &L, err)) fail_msg("%s", err);
        loss[k] = L.loss, inv[k] = L.loss_inv, eq[k] = L.loss_equiv;
        ng = c.m.tab.total, nb = c.m.btab.total;
        grads[k] = malloc(ng * 4), bufs[k] = malloc(nb * 4);
        memcpy(grads[k], c.m.grads, ng * 4), memcpy(bufs[k], c.m.buffers, nb * 4);
        if (k < 3) s_free(&c);
    }
    int ok = 1;
    char label[64];
    for (int k = 1; k < 4; k++) {
        ok &= fabs(loss[k] - loss[0]) <= 1e-6 * fabs(loss[0]);
        ok &= fabs(inv[k] - inv[0]) <= 1e-6 * fabs(inv[0]);
        ok &= fabs(eq[k] - eq[0]) <= 1e-6 * fabs(eq[0]);
        for (int i = 0; i < c.m.tab.n; i++) {
            const ser_tinfo *t = &c.m.tab.t[i];
            const ser_tinfo *s = ser_ptab_find(&c.m.tab, s_scale_from(t->name));
            snprintf(label, sizeof label, "%d shards %.40s", splits[k], t->name);
            float atol = 1e-5f * ser_test_maxabs(grads[0] + s->offset, s->numel) + 1e-7f;
            ok &= ser_test_allclose(label, grads[k] + t->offset, grads[0] + t->offset, t->numel,
                                    atol, 1e-5f);
        }
        snprintf(label, sizeof label, "%d shards: buffers", splits[k]);
        ok &= ser_test_allclose(label, bufs[k], bufs[0], nb, 1e-7f, 1e-6f);
    }
    assert_true(ok);
    // Repeat the 4-shard split: bitwise.
    s_free(&c);
    s_load(&c, "barlow_ser_sym.safetensors");
    ser_barlow_losses L;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_barlow_forward_backward(&c.m, &c.b, 4, 0, 0, &L, err), SER_OK);
    assert_true(L.loss == loss[2]);
    assert_memory_equal(c.m.grads, grads[2], ng * 4);
    assert_memory_equal(c.m.buffers, bufs[2], nb * 4);
    s_free(&c);
    for (int k = 0; k < 4; k++) free(grads[k]), free(bufs[k]);
}

// --- the model's structure --------------------------------------------------------------------
static void test_state_dict_names_and_init(void **state) {
    (void)state;
    ser_barlow_config cfg;
    s_tiny_config(&cfg);
    ser_barlow m;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_OK);
    // BarlowTwins registration order: backbone, projector_equiv, projector.
    assert_string_equal(m.tab.t[0].name, "backbone.cls_token");
    int ipe = -1, ipr = -1;
    for (int i = 0; i < m.tab.n; i++) {
        if (ipe < 0 && strncmp(m.tab.t[i].name, "projector_equiv.", 16) == 0) ipe = i;
        if (ipr < 0 && strncmp(m.tab.t[i].name, "projector.", 10) == 0) ipr = i;
    }
    assert_true(ipe > 0 && ipr > ipe);
    const char *names[] = {"projector.0.weight",       "projector.1.weight",
                           "projector.1.bias",         "projector.3.weight",
                           "projector.4.weight",       "projector.4.bias",
                           "projector.6.weight",       "projector_equiv.0.weight",
                           "projector_equiv.2.weight", "backbone.norm_equiv.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_non_null(ser_ptab_find(&m.tab, names[i]));
    assert_int_equal(m.tab.n, ipr + 7);  // nothing after projector.6.weight
    assert_int_equal(ser_ptab_find(&m.tab, "projector.6.weight")->shape[0], 32);
    assert_int_equal(ser_ptab_find(&m.tab, "projector_equiv.0.weight")->ndim, 4);
    const char *bnames[] = {"projector.1.running_mean", "projector.4.running_var",
                            "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"};
    for (size_t i = 0; i < sizeof bnames / sizeof bnames[0]; i++)
        assert_non_null(ser_ptab_find(&m.btab, bnames[i]));
    assert_true(ser_ptab_find(&m.btab, "bn.num_batches_tracked")->flags & SER_TINFO_COUNTER);
    assert_null(ser_ptab_find(&m.tab, "bn.weight"));  // affine=False
    ser_barlow_init_weights(&m, 7);
    for (int i = 0; i < 32; i++) {
        assert_true(m.buffers[m.bn_rm + i] == 0.0f && m.buffers[m.bn_rv + i] == 1.0f);
        assert_true(m.params[ser_ptab_find(&m.tab, "projector.1.weight")->offset + i] == 1.0f);
    }
    // PyTorch default Linear init: U(+-1/sqrt(fan_in)).
    const ser_tinfo *w = ser_ptab_find(&m.tab, "projector.3.weight");
    float mx = ser_test_maxabs(m.params + w->offset, w->numel);
    assert_true(mx <= 1.0f / sqrtf(32.0f) && mx > 0.8f / sqrtf(32.0f));
    ser_barlow_free(&m);
    // Without SER: no projector_equiv, no norm_equiv; a plain ViT layout is allowed.
    cfg.ser = 0;
    cfg.vit.cls_layer = cfg.vit.depth;
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_OK);
    assert_null(ser_ptab_find(&m.tab, "projector_equiv.0.weight"));
    assert_null(ser_ptab_find(&m.tab, "backbone.norm_equiv.weight"));
    ser_barlow_free(&m);
}

// ser_grad=off is the public code: projector_equiv and norm_equiv get no gradient and are frozen.
static void test_ser_off_freezes_the_ser_modules(void **state) {
    (void)state;
    s_case c;
    s_load(&c, "barlow_ser_off.safetensors");
    assert_true(ser_ptab_find(&c.m.tab, "projector_equiv.0.weight")->flags & SER_TINFO_FROZEN);
    assert_true(ser_ptab_find(&c.m.tab, "backbone.norm_equiv.bias")->flags & SER_TINFO_FROZEN);
    assert_false(ser_ptab_find(&c.m.tab, "backbone.norm.weight")->flags & SER_TINFO_FROZEN);
    assert_false(ser_ptab_find(&c.m.tab, "projector.0.weight")->flags & SER_TINFO_FROZEN);
    s_free(&c);
}

// --- errors -----------------------------------------------------------------------------------
static void test_bad_batches(void **state) {
    (void)state;
    s_case c;
    s_load(&c, "barlow_ser_on.safetensors");
    ser_barlow_losses L;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_barlow_forward_backward(&c.m, &c.b, 3, 0, 0, &L, err), SER_ESHAPE);
    assert_non_null(strstr(err, "3 shards"));
    c.g[1][2].rot90 = 7;
    assert_int_equal(ser_barlow_forward_backward(&c.m, &c.b, 4, 0, 0, &L, err), SER_EINVAL);
    assert_non_null(strstr(err, "sample 2 view 1"));
    c.g[1][2].rot90 = 1;
    c.b.img = 15;
    assert_int_equal(ser_barlow_forward_backward(&c.m, &c.b, 4, 0, 0, &L, err), SER_ESHAPE);
    c.b.img = 16;
    // A NaN pixel: its [CLS] row is refused before the projector (whose ReLU would turn the NaN
    // spread by the first BatchNorm into zeros), and nothing advances.
    size_t nb = c.m.btab.total;
    float *buf0 = malloc(nb * 4);
    memcpy(buf0, c.m.buffers, nb * 4);
    c.inv[1][100] = NAN;
    assert_int_equal(ser_barlow_forward_backward(&c.m, &c.b, 2, 0, 0, &L, err), SER_ENONFINITE);
    assert_non_null(strstr(err, "non-finite [CLS] (view 1, sample 0)"));
    assert_memory_equal(c.m.buffers, buf0, nb * 4);
    c.inv[1][100] = 0.5f;
    // A non-finite projector output (an infinite last-layer weight): bn turns it into NaN, the
    // loss is NaN, and the step is refused without gradients.
    c.m.params[ser_ptab_find(&c.m.tab, "projector.6.weight")->offset] = INFINITY;
    assert_int_equal(ser_barlow_forward_backward(&c.m, &c.b, 2, 0, 0, &L, err), SER_ENONFINITE);
    assert_non_null(strstr(err, "non-finite loss"));
    for (size_t i = 0; i < c.m.tab.total; i++) assert_true(c.m.grads[i] == 0.0f);
    free(buf0);
    s_free(&c);
}

static void test_bad_configs(void **state) {
    (void)state;
    ser_barlow_config cfg;
    ser_barlow m;
    char err[SER_ERR_LEN];
    s_tiny_config(&cfg);
    cfg.proj_dim = 0;
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "proj_dim"));
    s_tiny_config(&cfg);
    cfg.lambda_offdiag = -1.0f;
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_ECONFIG);
    cfg.lambda_offdiag = NAN;
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_ECONFIG);
    s_tiny_config(&cfg);
    cfg.ser_tau = 0.0f;
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "tau"));
    s_tiny_config(&cfg);
    cfg.vit.cls_layer = cfg.vit.depth;
    assert_int_equal(ser_barlow_init(&m, &cfg, err), SER_ECONFIG);
    assert_non_null(strstr(err, "SER layout"));
    ser_barlow_free(&m);  // zeroed by the failed init: safe

    // The job mapping.
    ser_config job;
    ser_config_defaults(&job);
    assert_int_equal(ser_barlow_config_from_job(&cfg, &job, err), SER_ECONFIG);  // method moco
    assert_non_null(strstr(err, "method.name"));
    const char *sets[] = {"method.name=barlow", "barlow.proj_dim=64", "barlow.lambda_offdiag=0.01",
                          "ser.symmetric=true", "ser.tau=0.4",        "ser.grad=off",
                          "ser.lambda=0.5"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        assert_int_equal(ser_config_set_arg(&job, sets[i], err), SER_OK);
    assert_int_equal(ser_barlow_config_from_job(&cfg, &job, err), SER_OK);
    assert_int_equal(cfg.proj_dim, 64);
    assert_true(cfg.lambda_offdiag == 0.01f && cfg.ser_tau == 0.4f && cfg.ser_lambda == 0.5f);
    assert_true(cfg.ser_symmetric == 1 && cfg.ser_grad == 0 && cfg.ser == 1);

    // The loss kernel's argument checks.
    float x[4] = {1, 2, 3, 4};
    double o, d;
    assert_int_equal(ser_barlow_xcorr_loss(&o, &d, NULL, NULL, x, x, 0, 2, 0.1f, 1.0f), SER_EINVAL);
    assert_int_equal(ser_barlow_xcorr_loss(&o, &d, NULL, NULL, x, x, 2, 0, 0.1f, 1.0f), SER_EINVAL);
    assert_int_equal(ser_barlow_xcorr_loss(&o, &d, NULL, NULL, x, x, 2, 2, NAN, 1.0f), SER_EINVAL);
    assert_int_equal(ser_barlow_xcorr_loss(&o, &d, NULL, NULL, x, NULL, 2, 2, 0.1f, 1.0f),
                     SER_EINVAL);
    assert_int_equal(ser_barlow_xcorr_loss_naive(&o, &d, NULL, NULL, x, x, 2, 2, 0.1f, INFINITY),
                     SER_EINVAL);
}

// The shipped preset (run_pretrain.sh lines 13-15) maps onto the reference's Barlow Twins run.
static void test_preset_maps_to_the_reference_run(void **state) {
    (void)state;
    char path[1024], err[SER_ERR_LEN];
    snprintf(path, sizeof path, "%s/../../../configs/barlow_vits16_imagenet.ini", SER_FIXTURE_DIR);
    ser_config job;
    if (ser_config_load(&job, path, 0, NULL, err)) fail_msg("%s", err);
    ser_barlow_config c, d;
    assert_int_equal(ser_barlow_config_from_job(&c, &job, err), SER_OK);
    ser_barlow_config_default(&d);
    assert_int_equal(c.proj_dim, 8192);
    assert_true(c.lambda_offdiag == 0.0051f && c.ser_lambda == 1.0f && c.ser_tau == 0.4f);
    assert_true(c.ser && c.ser_grad && !c.ser_symmetric && c.ser_proj_dim == 512);
    assert_true(c.init_scheme == SER_VIT_INIT_GENERIC && !c.vit.freeze_patch_embed);
    assert_true(c.vit.drop_path_rate == 0.0f && c.vit.cls_layer == 3 && c.vit.dim == 384);
    // ser_barlow_config_default() is the same run.
    assert_true(memcmp(&c.vit, &d.vit, sizeof c.vit) == 0);
    assert_true(c.proj_dim == d.proj_dim && c.lambda_offdiag == d.lambda_offdiag &&
                c.ser_tau == d.ser_tau && c.ser_symmetric == d.ser_symmetric &&
                c.init_scheme == d.init_scheme && c.ser_lambda == d.ser_lambda);
}

// The collapse test (ser_objective_barlow.collapsed) on cross-correlations of known features
// (N 64 rows, P 16 dimensions, the BatchNorm's output as the loss sees it): identical standardised
// views are healthy (on_diag 0, mean squared off-diagonal correlation ~1/N); a constant output
// (zeros after the BatchNorm) reads on_diag = P exactly and is collapsed; every dimension the same
// standardised column reads c_ij = 1 (off_diag = P (P - 1)) and is a dimensional collapse.
static void test_collapse_test(void **state) {
    (void)state;
    enum { N = 64, P = 16 };
    static float a[N * P], col[N], mean[P], sd[P];
    ser_test_fill_uniform(col, N, 5, -1, 1);
    ser_eval_standardize(col, N, 1, mean, sd);
    ser_barlow m;
    memset(&m, 0, sizeof m);
    m.cfg.proj_dim = P;
    char why[300];
    for (int kind = 0; kind < 3; kind++) {
        if (kind == 0) {  // standardised independent columns
            ser_test_fill_uniform(a, N * P, 6, -1.7f, 1.7f);
            ser_eval_standardize(a, N, P, mean, sd);
        } else {
            for (int i = 0; i < N; i++)
                for (int j = 0; j < P; j++) a[i * P + j] = kind == 1 ? 0.0f : col[i];
        }
        assert_int_equal(ser_barlow_xcorr_loss(&m.last_on_diag, &m.last_off_diag, NULL, NULL, a, a,
                                               N, P, 0.005f, 1.0f),
                         SER_OK);
        why[0] = 0;
        int c = ser_objective_barlow.collapsed(&m, why, sizeof why);
        print_message("kind %d: on_diag %.6f off_diag %.6f -> %d %s\n", kind, m.last_on_diag,
                      m.last_off_diag, c, why);
        if (kind == 0) {
            assert_true(m.last_on_diag < 1e-4);
            assert_true(m.last_off_diag / (P * (P - 1)) < 0.1);
            assert_int_equal(c, 0);
        } else if (kind == 1) {
            assert_true(m.last_on_diag == P && m.last_off_diag == 0);
            assert_int_equal(c, 1);
            assert_non_null(strstr(why, "barlow_on_diag 16 is 1.000 x barlow.proj_dim"));
        } else {
            assert_true(m.last_on_diag < 1e-4);
            assert_true(fabs(m.last_off_diag - P * (P - 1)) < 1e-2);
            assert_int_equal(c, 1);
            assert_non_null(strstr(why, "dimensional collapse"));
        }
    }
}

int main(void) {
    ser_kernels_set_threads(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xcorr_vs_pytorch),
        cmocka_unit_test(test_xcorr_fast_vs_naive_and_threads),
        cmocka_unit_test(test_fd_xcorr_loss),
        cmocka_unit_test(test_fd_bn_xcorr),
        cmocka_unit_test(test_ser_on_1_shard),
        cmocka_unit_test(test_ser_on_2_shards),
        cmocka_unit_test(test_ser_on_4_shards),
        cmocka_unit_test(test_ser_off_2_shards),
        cmocka_unit_test(test_ser_off_4_shards),
        cmocka_unit_test(test_ser_sym_1_shard),
        cmocka_unit_test(test_ser_sym_4_shards),
        cmocka_unit_test(test_ser_disabled_is_plain_barlow_twins),
        cmocka_unit_test(test_shards_equal_whole_batch),
        cmocka_unit_test(test_state_dict_names_and_init),
        cmocka_unit_test(test_ser_off_freezes_the_ser_modules),
        cmocka_unit_test(test_bad_batches),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_collapse_test),
        cmocka_unit_test(test_preset_maps_to_the_reference_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
