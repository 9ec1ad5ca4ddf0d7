// test_grad.c — finite-difference checks of every kernel's backward and of the whole ViT,
// without PyTorch: central differences (f(x+e) - f(x-e)) / 2e of f = sum(out * dout),
// accumulated in double, compared element by element with the analytic gradient.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_interp.h"
#include "ser_kernels.h"
#include "ser_test.h"
#include "ser_vit.h"

#define EPS 1e-2f
// float forward passes make f noisy at ~1e-6; divided by 2*EPS that is ~1e-4. Truncation error
// is O(EPS^2).
#define FD_ATOL 1e-3
#define FD_RTOL 1e-2

typedef double (*objective_fn)(void *ctx);

// Perturbs x[idx[i]] for i < n (all of x when idx is NULL) and compares with g.
static int s_fd_check(const char *label, objective_fn f, void *ctx, float *x, const float *g,
                      size_t n, const size_t *idx) {
    double max_err = 0, sum_err = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = idx ? idx[i] : i;
        float x0 = x[j];
        x[j] = x0 + EPS;
        double fp = f(ctx);
        x[j] = x0 - EPS;
        double fm = f(ctx);
        x[j] = x0;
        double fd = (fp - fm) / (2.0 * (double)EPS);
        double err = fabs(fd - (double)g[j]);
        sum_err += err;
        if (err > max_err) max_err = err;
        if (err > FD_ATOL + FD_RTOL * fabs(fd)) {
            if (bad < 5) print_error("  %s[%zu]: analytic %.6g, finite difference %.6g\n", label, j, (double)g[j], fd);
            bad++;
        }
    }
    print_message("%s %-34s n=%-5zu max|fd-g|=%.2e mean|fd-g|=%.2e\n", bad ? "FAIL" : "ok  ",
                  label, n, max_err, sum_err / (double)(n ? n : 1));
    return bad == 0;
}

static double s_dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static float *s_rand(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    ser_test_fill_uniform(x, n, seed, lo, hi);
    return x;
}

// --- linear ----------------------------------------------------------------------------------
typedef struct { float *x, *w, *b, *out, *dout; int M, K, N; } lin_ctx;
static double s_lin_f(void *p) {
    lin_ctx *c = p;
    ser_matmul_forward(c->out, c->x, c->w, c->b, c->M, c->K, c->N);
    return s_dot(c->out, c->dout, (size_t)c->M * c->N);
}
static void test_fd_linear(void **state) {
    (void)state;
    lin_ctx c = {s_rand(15, 1, -1, 1), s_rand(12, 2, -1, 1), s_rand(4, 3, -1, 1), malloc(20 * 4),
                 s_rand(20, 4, -1, 1), 5, 3, 4};
    float dx[15], dw[12] = {0}, db[4] = {0};
    ser_matmul_backward(dx, dw, db, c.dout, c.x, c.w, 5, 3, 4, 0);
    int ok = s_fd_check("linear.x", s_lin_f, &c, c.x, dx, 15, NULL);
    ok &= s_fd_check("linear.w", s_lin_f, &c, c.w, dw, 12, NULL);
    ok &= s_fd_check("linear.b", s_lin_f, &c, c.b, db, 4, NULL);
    assert_true(ok);
    free(c.x), free(c.w), free(c.b), free(c.out), free(c.dout);
}

// --- layernorm -------------------------------------------------------------------------------
typedef struct { float *x, *w, *b, *out, *dout, *mean, *rstd; int M, C; } ln_ctx;
static double s_ln_f(void *p) {
    ln_ctx *c = p;
    ser_layernorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, c->M, c->C, 1e-6f);
    return s_dot(c->out, c->dout, (size_t)c->M * c->C);
}
static void test_fd_layernorm(void **state) {
    (void)state;
    int M = 3, C = 7;
    ln_ctx c = {s_rand(21, 1, -2, 2), s_rand(7, 2, 0.5, 1.5), s_rand(7, 3, -1, 1), malloc(21 * 4),
                s_rand(21, 4, -1, 1), malloc(3 * 4), malloc(3 * 4), M, C};
    s_ln_f(&c);
    float dx[21], dw[7] = {0}, db[7] = {0};
    ser_layernorm_backward(dx, dw, db, c.dout, c.x, c.w, c.mean, c.rstd, M, C, 0);
    int ok = s_fd_check("layernorm.x", s_ln_f, &c, c.x, dx, 21, NULL);
    ok &= s_fd_check("layernorm.w", s_ln_f, &c, c.w, dw, 7, NULL);
    ok &= s_fd_check("layernorm.b", s_ln_f, &c, c.b, db, 7, NULL);
    assert_true(ok);
    free(c.x), free(c.w), free(c.b), free(c.out), free(c.dout), free(c.mean), free(c.rstd);
}

// --- GELU ------------------------------------------------------------------------------------
typedef struct { float *x, *out, *dout; size_t n; } gelu_ctx;
static double s_gelu_f(void *p) {
    gelu_ctx *c = p;
    ser_gelu_forward(c->out, c->x, c->n);
    return s_dot(c->out, c->dout, c->n);
}
static void test_fd_gelu(void **state) {
    (void)state;
    gelu_ctx c = {s_rand(40, 1, -4, 4), malloc(40 * 4), s_rand(40, 2, -1, 1), 40};
    float dx[40];
    ser_gelu_backward(dx, c.x, c.dout, 40, 0);
    assert_true(s_fd_check("gelu.x", s_gelu_f, &c, c.x, dx, 40, NULL));
    free(c.x), free(c.out), free(c.dout);
}

// --- attention -------------------------------------------------------------------------------
typedef struct { float *qkv, *out, *att, *dout; int B, N, C, H; } att_ctx;
static double s_att_f(void *p) {
    att_ctx *c = p;
    ser_attention_forward(c->out, c->att, c->qkv, c->B, c->N, c->C, c->H);
    return s_dot(c->out, c->dout, (size_t)c->B * c->N * c->C);
}
static void test_fd_attention(void **state) {
    (void)state;
    int B = 2, N = 5, C = 6, H = 2;
    size_t nq = (size_t)B * N * 3 * C;
    att_ctx c = {s_rand(nq, 1, -1.5, 1.5), malloc((size_t)B * N * C * 4),
                 malloc((size_t)B * H * N * N * 4), s_rand((size_t)B * N * C, 2, -1, 1), B, N, C, H};
    s_att_f(&c);
    float *dq = malloc(nq * 4);
    ser_attention_backward(dq, c.dout, c.qkv, c.att, B, N, C, H);
    assert_true(s_fd_check("attention.qkv", s_att_f, &c, c.qkv, dq, nq, NULL));
    free(c.qkv), free(c.out), free(c.att), free(c.dout), free(dq);
}

// --- bicubic (both semantics) ----------------------------------------------------------------
typedef struct { float *in, *out, *dout; int H, W, OH, OW, C; double sh, sw; } bic_ctx;
static double s_bic_f(void *p) {
    bic_ctx *c = p;
    ser_bicubic_hwc(c->out, c->OH, c->OW, c->in, c->H, c->W, c->C, c->sh, c->sw);
    return s_dot(c->out, c->dout, (size_t)c->OH * c->OW * c->C);
}
static void test_fd_bicubic(void **state) {
    (void)state;
    int cases[2][4] = {{4, 4, 3, 5}, {3, 4, 6, 2}};
    for (int k = 0; k < 2; k++) {
        int H = cases[k][0], W = cases[k][1], OH = cases[k][2], OW = cases[k][3], C = 2;
        bic_ctx c = {s_rand((size_t)H * W * C, 1, -1, 1), malloc((size_t)OH * OW * C * 4),
                     s_rand((size_t)OH * OW * C, 2, -1, 1), H, W, OH, OW, C,
                     k == 0 ? (OH + 0.1) / H : 0, k == 0 ? (OW + 0.1) / W : 0};
        float *din = calloc((size_t)H * W * C, 4);
        ser_bicubic_hwc_backward(din, H, W, c.dout, OH, OW, C, c.sh, c.sw);
        assert_true(s_fd_check(k ? "bicubic(size).in" : "bicubic(scale).in", s_bic_f, &c, c.in,
                               din, (size_t)H * W * C, NULL));
        free(c.in), free(c.out), free(c.dout), free(din);
    }
}

// --- patch embedding -------------------------------------------------------------------------
typedef struct { float *img, *cols, *w, *b, *out, *dout; int B, H, W, P, C; } pe_ctx;
static double s_pe_f(void *p) {
    pe_ctx *c = p;
    int T = c->B * (c->H / c->P) * (c->W / c->P);
    ser_patch_im2col(c->cols, c->img, c->B, c->H, c->W, c->P);
    ser_matmul_forward(c->out, c->cols, c->w, c->b, T, 3 * c->P * c->P, c->C);
    return s_dot(c->out, c->dout, (size_t)T * c->C);
}
static void test_fd_patch_embed(void **state) {
    (void)state;
    int B = 2, H = 4, W = 6, P = 2, C = 3, T = 12, K = 12;
    pe_ctx c = {s_rand((size_t)B * 3 * H * W, 1, -1, 1), malloc((size_t)T * K * 4),
                s_rand((size_t)C * K, 2, -1, 1), s_rand(C, 3, -1, 1), malloc((size_t)T * C * 4),
                s_rand((size_t)T * C, 4, -1, 1), B, H, W, P, C};
    s_pe_f(&c);
    float dw[36] = {0}, db[3] = {0};
    ser_matmul_backward(NULL, dw, db, c.dout, c.cols, c.w, T, K, C, 0);
    int ok = s_fd_check("patch.w", s_pe_f, &c, c.w, dw, 36, NULL);
    ok &= s_fd_check("patch.b", s_pe_f, &c, c.b, db, 3, NULL);
    assert_true(ok);
    free(c.img), free(c.cols), free(c.w), free(c.b), free(c.out), free(c.dout);
}

// --- whole ViT -------------------------------------------------------------------------------
typedef struct { ser_vit *v; ser_vit_acts *a; float *img, *dcls, *dmap; int B, H, W; } vit_ctx;
static double s_vit_f(void *p) {
    vit_ctx *c = p;
    char err[SER_ERR_LEN];
    ser_vit_fwd_opts o = {.train = 1, .seed = 3, .step = 1};
    SER_ASSERT(ser_vit_forward(c->v, c->a, c->img, c->B, c->H, c->W, &o, err) == 0);
    double f = s_dot(c->a->cls, c->dcls, (size_t)c->B * c->v->cfg.dim);
    if (c->dmap) f += s_dot(c->a->map, c->dmap, (size_t)c->B * c->a->NP * c->v->cfg.dim);
    return f;
}
static void s_vit_fd(int cls_layer, int H, int W, float dpr) {
    ser_vit_config cfg;
    ser_vit_config_preset(&cfg, "vit_tiny", 8, 2);
    cfg.dim = 8, cfg.heads = 2, cfg.depth = 3, cfg.mlp_hidden = 16, cfg.cls_layer = cls_layer;
    cfg.drop_path_rate = dpr;
    ser_vit v;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_init(&v, &cfg, err), 0);
    ser_vit_init_weights(&v, SER_VIT_INIT_GENERIC, 11);
    // Larger weights than the init so that every path carries signal.
    for (size_t i = 0; i < v.tabp->total; i++) v.params[i] *= 10.0f;
    for (int i = 0; i < v.tabp->n; i++)
        if (strstr(v.tabp->t[i].name, "norm") && strstr(v.tabp->t[i].name, "weight"))
            for (size_t j = 0; j < v.tabp->t[i].numel; j++) v.params[v.tabp->t[i].offset + j] = 1.0f + 0.1f * (float)(j % 3);
    int B = 2, NP = (H / 2) * (W / 2);
    ser_vit_acts a;
    memset(&a, 0, sizeof a);
    vit_ctx c = {&v, &a, s_rand((size_t)B * 3 * H * W, 1, -1, 1), s_rand((size_t)B * 8, 2, -1, 1),
                 v.baseline ? NULL : s_rand((size_t)B * NP * 8, 3, -1, 1), B, H, W};
    s_vit_f(&c);
    ser_vit_zero_grad(&v);
    ser_vit_backward(&v, &a, c.dcls, c.dmap);
    int ok = 1;
    for (int i = 0; i < v.tabp->n; i++) {
        const ser_tinfo *t = &v.tabp->t[i];
        size_t idx[6], n = t->numel < 6 ? t->numel : 6;
        for (size_t k = 0; k < n; k++) idx[k] = t->offset + (k * 7919) % t->numel;
        ok &= s_fd_check(t->name, s_vit_f, &c, v.params, v.grads, n, idx);
    }
    assert_true(ok);
    free(c.img), free(c.dcls), free(c.dmap);
    ser_vit_acts_free(&a);
    ser_vit_free(&v);
}
static void test_fd_vit_ser_nonsquare_droppath(void **s) { (void)s, s_vit_fd(1, 6, 10, 0.5f); }
static void test_fd_vit_baseline(void **s) { (void)s, s_vit_fd(3, 8, 8, 0.0f); }

int main(void) {
    ser_kernels_set_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_linear),
        cmocka_unit_test(test_fd_layernorm),
        cmocka_unit_test(test_fd_gelu),
        cmocka_unit_test(test_fd_attention),
        cmocka_unit_test(test_fd_bicubic),
        cmocka_unit_test(test_fd_patch_embed),
        cmocka_unit_test(test_fd_vit_ser_nonsquare_droppath),
        cmocka_unit_test(test_fd_vit_baseline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
