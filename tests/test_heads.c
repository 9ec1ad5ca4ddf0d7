// test_heads.c — MoCo projector/predictor MLPs with BatchNorm over the batch (outputs, every
// gradient, running statistics), the contrastive loss and projector_equiv against PyTorch
// float64 fixtures, plus finite differences through BatchNorm, the MLP and the loss.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_kernels.h"
#include "ser_loss.h"
#include "ser_mlp.h"
#include "ser_test.h"

#define RTOL 1e-4f
static float s_atol(const float *ref, size_t n) { return 1e-5f * ser_test_maxabs(ref, n) + 1e-7f; }

static ser_st_file *s_fx;
static int setup(void **state) {
    (void)state;
    s_fx = ser_test_open_fixture("heads.safetensors");
    ser_kernels_set_threads(2);
    return 0;
}
static int teardown(void **state) {
    (void)state;
    ser_st_destroy(&s_fx);
    return 0;
}

typedef struct {
    ser_ptab tab, btab;
    float *params, *grads, *buffers;
    ser_mlp m;
} s_mod;

static void s_mod_init(s_mod *o, const ser_mlp_layer_spec *spec, int n, const char *prefix) {
    char err[SER_ERR_LEN];
    ser_ptab_init(&o->tab);
    ser_ptab_init(&o->btab);
    assert_int_equal(ser_mlp_register(&o->m, spec, n, &o->tab, &o->btab, prefix, err), 0);
    o->params = calloc(o->tab.total + 1, 4);
    o->grads = calloc(o->tab.total + 1, 4);
    o->buffers = calloc(o->btab.total + 1, 4);
    ser_mlp_bind(&o->m, o->params, o->grads, o->buffers);
    ser_mlp_init_weights(&o->m, 1);
}

static void s_mod_free(s_mod *o) {
    free(o->params), free(o->grads), free(o->buffers);
    ser_ptab_free(&o->tab);
    ser_ptab_free(&o->btab);
}

static void s_check_mlp(const char *name, int L, int din, int hid, int dout, int last_bn) {
    ser_mlp_layer_spec spec[SER_MLP_MAX_LAYERS];
    int n = ser_mlp_moco_spec(spec, L, din, hid, dout, last_bn);
    s_mod o;
    s_mod_init(&o, spec, n, "");
    char prefix[64], key[SER_TINFO_NAME_LEN + 80], err[SER_ERR_LEN];
    snprintf(prefix, sizeof prefix, "%s.param.", name);
    int rc = ser_st_load_ptab(s_fx, &o.tab, o.params, prefix, 1, err);
    if (rc) fail_msg("%s", err);
    size_t nx, nout;
    snprintf(key, sizeof key, "%s.x", name);
    float *x = ser_test_tensor(s_fx, key, &nx);
    snprintf(key, sizeof key, "%s.out", name);
    float *ref = ser_test_tensor(s_fx, key, &nout);
    int M = (int)(nx / (size_t)din), ok = 1;
    ser_mlp_acts a;
    memset(&a, 0, sizeof a);
    const float *out = ser_mlp_forward(&o.m, &a, x, M, 1);
    snprintf(key, sizeof key, "%s.out", name);
    ok &= ser_test_allclose(key, out, ref, nout, s_atol(ref, nout), RTOL);
    free(ref);
    snprintf(key, sizeof key, "%s.dout", name);
    float *dy = ser_test_tensor(s_fx, key, NULL);
    float *dx = calloc(nx, 4);
    ser_mlp_backward(&o.m, &a, dx, dy);
    snprintf(key, sizeof key, "%s.dx", name);
    ref = ser_test_tensor(s_fx, key, NULL);
    ok &= ser_test_allclose(key, dx, ref, nx, s_atol(ref, nx), RTOL);
    free(ref);
    for (int i = 0; i < o.tab.n; i++) {
        const ser_tinfo *t = &o.tab.t[i];
        snprintf(key, sizeof key, "%s.grad.%s", name, t->name);
        ref = ser_test_tensor(s_fx, key, NULL);
        ok &= ser_test_allclose(key, o.grads + t->offset, ref, t->numel, s_atol(ref, t->numel), RTOL);
        free(ref);
    }
    for (int i = 0; i < o.btab.n; i++) {
        const ser_tinfo *t = &o.btab.t[i];
        if (t->flags & SER_TINFO_COUNTER) {
            assert_true(o.buffers[t->offset] == 1.0f);  // one training forward
            continue;
        }
        snprintf(key, sizeof key, "%s.buffer.%s", name, t->name);
        ref = ser_test_tensor(s_fx, key, NULL);
        ok &= ser_test_allclose(key, o.buffers + t->offset, ref, t->numel, 1e-7f, RTOL);
        free(ref);
    }
    assert_true(ok);
    free(x), free(dy), free(dx);
    ser_mlp_acts_free(&a);
    s_mod_free(&o);
}

static void test_moco_projector(void **s) { (void)s, s_check_mlp("proj", 3, 12, 16, 8, 1); }
static void test_moco_predictor(void **s) { (void)s, s_check_mlp("pred", 2, 8, 16, 8, 1); }
static void test_mlp_without_last_bn(void **s) { (void)s, s_check_mlp("nolast", 2, 12, 10, 6, 0); }

static void test_names_match_pytorch_sequential(void **state) {
    (void)state;
    ser_mlp_layer_spec spec[SER_MLP_MAX_LAYERS];
    int n = ser_mlp_moco_spec(spec, 3, 384, 4096, 256, 1);
    s_mod o;
    s_mod_init(&o, spec, n, "base_encoder.head.");
    const char *want[] = {"base_encoder.head.0.weight", "base_encoder.head.1.weight",
                          "base_encoder.head.1.bias", "base_encoder.head.3.weight",
                          "base_encoder.head.4.weight", "base_encoder.head.4.bias",
                          "base_encoder.head.6.weight"};
    assert_int_equal(o.tab.n, 7);
    for (int i = 0; i < 7; i++) assert_string_equal(o.tab.t[i].name, want[i]);
    assert_non_null(ser_ptab_find(&o.btab, "base_encoder.head.7.running_var"));
    assert_null(ser_ptab_find(&o.tab, "base_encoder.head.7.weight"));  // affine=False
    s_mod_free(&o);
}

static void test_contrastive_loss(void **state) {
    (void)state;
    float *q = ser_test_tensor(s_fx, "ctr.q", NULL), *k = ser_test_tensor(s_fx, "ctr.k", NULL);
    float *ref = ser_test_tensor(s_fx, "ctr.loss", NULL), *dref = ser_test_tensor(s_fx, "ctr.dq", NULL);
    float dq[48] = {0};
    float loss = (float)ser_moco_ctr(dq, q, k, 6, 8, 0.2f, 1.0f);
    int ok = ser_test_allclose("ctr.loss", &loss, ref, 1, 1e-6f, RTOL);
    ok &= ser_test_allclose("ctr.dq", dq, dref, 48, s_atol(dref, 48), RTOL);
    assert_true(ok);
    free(q), free(k), free(ref), free(dref);
}

static void test_projector_equiv(void **state) {
    (void)state;
    ser_mlp_layer_spec spec[2] = {{12, 16, 0, SER_BN_NONE, SER_ACT_GELU, 1},
                                  {16, 16, 0, SER_BN_NONE, SER_ACT_NONE, 1}};
    s_mod o;
    s_mod_init(&o, spec, 2, "");
    assert_int_equal(o.tab.t[0].ndim, 4);
    assert_string_equal(o.tab.t[1].name, "2.weight");
    char err[SER_ERR_LEN];
    if (ser_st_load_ptab(s_fx, &o.tab, o.params, "pe.param.", 1, err)) fail_msg("%s", err);
    float *x = ser_test_tensor(s_fx, "pe.x", NULL), *ref = ser_test_tensor(s_fx, "pe.out", NULL);
    float *dy = ser_test_tensor(s_fx, "pe.dout", NULL), *dref = ser_test_tensor(s_fx, "pe.dx", NULL);
    ser_mlp_acts a;
    memset(&a, 0, sizeof a);
    const float *out = ser_mlp_forward(&o.m, &a, x, 30, 0);
    int ok = ser_test_allclose("pe.out", out, ref, 30 * 16, s_atol(ref, 480), RTOL);
    float dx[30 * 12];
    ser_mlp_backward(&o.m, &a, dx, dy);
    ok &= ser_test_allclose("pe.dx", dx, dref, 360, s_atol(dref, 360), RTOL);
    char key[SER_TINFO_NAME_LEN + 16];
    for (int i = 0; i < 2; i++) {
        snprintf(key, sizeof key, "pe.grad.%s", o.tab.t[i].name);
        float *g = ser_test_tensor(s_fx, key, NULL);
        ok &= ser_test_allclose(key, o.grads + o.tab.t[i].offset, g, o.tab.t[i].numel,
                                s_atol(g, o.tab.t[i].numel), RTOL);
        free(g);
    }
    assert_true(ok);
    free(x), free(ref), free(dy), free(dref);
    ser_mlp_acts_free(&a);
    s_mod_free(&o);
}

// --- finite differences ----------------------------------------------------------------------
static double s_dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

// Central differences of f over x (nx values) and every `stride`-th parameter of o, against
// the analytic gradients dx and o->grads; returns how many disagree (printing the first few).
typedef double (*s_fd_fn)(s_mod *o, ser_mlp_acts *a, const float *x, const void *ctx);
static int s_fd_check(s_mod *o, ser_mlp_acts *a, float *x, size_t nx, const float *dx,
                      size_t stride, double eps, s_fd_fn f, const void *ctx, double *max_err) {
    int bad = 0;
    float *targets[2] = {x, o->params};
    const float *grads[2] = {dx, o->grads};
    size_t counts[2] = {nx, o->tab.total};
    *max_err = 0;
    for (int t = 0; t < 2; t++)
        for (size_t i = 0; i < counts[t]; i += (t ? stride : 1)) {
            float v = targets[t][i];
            targets[t][i] = v + (float)eps;
            double fp = f(o, a, x, ctx);
            targets[t][i] = v - (float)eps;
            double fm = f(o, a, x, ctx);
            targets[t][i] = v;
            double fd = (fp - fm) / (2 * eps), err = fabs(fd - (double)grads[t][i]);
            *max_err = err > *max_err ? err : *max_err;
            if (err > 1e-3 + 1e-2 * fabs(fd)) {
                if (bad < 5)
                    print_error("  %s[%zu]: analytic %g fd %g\n", t ? "param" : "x", i,
                                (double)grads[t][i], fd);
                bad++;
            }
        }
    return bad;
}

// ctr(mlp(x), k) with T = 0.3 over 6 rows.
static double s_fd_ctr(s_mod *o, ser_mlp_acts *a, const float *x, const void *k) {
    return ser_moco_ctr(NULL, ser_mlp_forward(&o->m, a, x, 6, 0), k, 6, 4, 0.3f, 1);
}

// sum(mlp(x) * w) over 3 rows of 4 outputs.
static double s_fd_dot(s_mod *o, ser_mlp_acts *a, const float *x, const void *w) {
    return s_dot(ser_mlp_forward(&o->m, a, x, 3, 0), w, 12);
}

static void test_fd_mlp_and_ctr(void **state) {
    (void)state;
    ser_mlp_layer_spec spec[SER_MLP_MAX_LAYERS];
    int n = ser_mlp_moco_spec(spec, 3, 5, 7, 4, 1);
    spec[1].act = SER_ACT_GELU;  // GELU path as well (DINO heads)
    s_mod o;
    s_mod_init(&o, spec, n, "");
    int M = 6;
    float x[30], k[24], dx[30];
    ser_test_fill_uniform(x, 30, 1, -2, 2);
    ser_test_fill_uniform(k, 24, 2, -1, 1);
    ser_mlp_acts a;
    memset(&a, 0, sizeof a);
    // Objective: ctr(mlp(x), k) with T = 0.3.
    float dq[24] = {0};
    const float *y = ser_mlp_forward(&o.m, &a, x, M, 0);
    ser_moco_ctr(dq, y, k, M, 4, 0.3f, 1.0f);
    ser_mlp_backward(&o.m, &a, dx, dq);
    double max_err;  // eps 2e-3: BatchNorm over 6 rows is strongly curved
    int bad = s_fd_check(&o, &a, x, 30, dx, 3, 2e-3, s_fd_ctr, k, &max_err);
    print_message("fd mlp(BN, ReLU, GELU) + ctr: max|fd-g| = %.2e\n", max_err);
    assert_int_equal(bad, 0);
    ser_mlp_acts_free(&a);
    s_mod_free(&o);
}

// LayerNorm layers (E-SSL's rotation head): Linear+LN+ReLU, Linear+LN, Linear with biases, on
// the functional sum(y * w), by central differences over the input and every parameter; the
// names are nn.Sequential's (Linear 0, LN 1, ReLU 2, Linear 3, LN 4, Linear 5).
static void test_fd_layernorm_mlp(void **state) {
    (void)state;
    ser_mlp_layer_spec spec[3] = {{5, 7, 1, SER_BN_LAYERNORM, SER_ACT_RELU, 0},
                                  {7, 6, 1, SER_BN_LAYERNORM, SER_ACT_NONE, 0},
                                  {6, 4, 1, SER_BN_NONE, SER_ACT_NONE, 0}};
    s_mod o;
    s_mod_init(&o, spec, 3, "rotation_head.");
    assert_int_equal(o.tab.n, 10);
    assert_string_equal(o.tab.t[2].name, "rotation_head.1.weight");
    assert_string_equal(o.tab.t[5].name, "rotation_head.3.bias");
    assert_string_equal(o.tab.t[7].name, "rotation_head.4.bias");
    assert_string_equal(o.tab.t[8].name, "rotation_head.5.weight");
    for (size_t i = 0; i < o.tab.total; i++) o.params[i] += 0.3f * (float)sin((double)i);
    int M = 3;
    float x[15], w[12], dx[15];
    ser_test_fill_uniform(x, 15, 11, -2, 2);
    ser_test_fill_uniform(w, 12, 12, -1, 1);
    ser_mlp_acts a;
    memset(&a, 0, sizeof a);
    ser_mlp_forward(&o.m, &a, x, M, 1);
    ser_mlp_backward(&o.m, &a, dx, w);
    double max_err;
    int bad = s_fd_check(&o, &a, x, 15, dx, 1, 1e-3, s_fd_dot, w, &max_err);
    print_message("fd mlp(LayerNorm, ReLU): max|fd-g| = %.2e\n", max_err);
    assert_int_equal(bad, 0);
    ser_mlp_acts_free(&a);
    s_mod_free(&o);
}

static void test_bad_specs(void **state) {
    (void)state;
    ser_mlp_layer_spec spec[2] = {{4, 5, 0, 0, 0, 0}, {6, 2, 0, 0, 0, 0}};  // 5 != 6
    ser_ptab t, b;
    ser_ptab_init(&t), ser_ptab_init(&b);
    ser_mlp m;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_mlp_register(&m, spec, 2, &t, &b, "h.", err), SER_EINVAL);
    assert_non_null(strstr(err, "layer 1"));
    assert_int_equal(ser_mlp_register(&m, spec, 0, &t, &b, "h.", err), SER_EINVAL);
    ser_ptab_free(&t), ser_ptab_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moco_projector),
        cmocka_unit_test(test_moco_predictor),
        cmocka_unit_test(test_mlp_without_last_bn),
        cmocka_unit_test(test_names_match_pytorch_sequential),
        cmocka_unit_test(test_contrastive_loss),
        cmocka_unit_test(test_projector_equiv),
        cmocka_unit_test(test_fd_mlp_and_ctr),
        cmocka_unit_test(test_fd_layernorm_mlp),
        cmocka_unit_test(test_bad_specs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
