// test_equiv.c — finite differences through the whole SER term (ser_equiv_term):
// projector_equiv (1x1 conv, GELU, 1x1 conv) on student and key maps, the relative group
// action T_ab (rotations, flips, bicubic scaling), the patch-wise NT-Xent in both directions;
// w.r.t. the student maps, the key maps when they are the student's own (Barlow Twins), and
// the projector's weights. (Teacher maps are constants: the API has no gradient output for them.)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_equiv.h"
#include "ser_kernels.h"
#include "ser_test.h"

typedef struct {
    ser_ptab tab, btab;
    float *params, *grads;
    ser_mlp proj;
    ser_group_elem g[2][3];
    ser_batch b;
    ser_gathered gat;
    ser_equiv_opts o;
} s_ctx;

static void s_setup(s_ctx *c, int keys_from_student, int both) {
    memset(c, 0, sizeof *c);
    int C = 6, E = 5;
    ser_mlp_layer_spec spec[2] = {{C, E, 0, SER_BN_NONE, SER_ACT_GELU, 1},
                                  {E, E, 0, SER_BN_NONE, SER_ACT_NONE, 1}};
    char err[SER_ERR_LEN];
    ser_ptab_init(&c->tab), ser_ptab_init(&c->btab);
    assert_int_equal(ser_mlp_register(&c->proj, spec, 2, &c->tab, &c->btab, "p.", err), 0);
    c->params = calloc(c->tab.total, 4), c->grads = calloc(c->tab.total, 4);
    ser_mlp_bind(&c->proj, c->params, c->grads, NULL);
    ser_test_fill_uniform(c->params, c->tab.total, 3, -0.6f, 0.6f);
    // Three equivariant samples with rotations, flips and scalings (non-square grids).
    ser_group_elem g0[3] = {{0, 1, 1, 3, 4}, {1, 0, 3, 4, 4}, {0, 0, 2, 2, 3}};
    ser_group_elem g1[3] = {{1, 0, 2, 4, 4}, {0, 1, 0, 3, 5}, {1, 1, 1, 3, 3}};
    memcpy(c->g[0], g0, sizeof g0), memcpy(c->g[1], g1, sizeof g1);
    c->b.n_eq = 3, c->b.g[0] = c->g[0], c->b.g[1] = c->g[1];
    ser_gathered *g = &c->gat;
    g->C = C, g->n_eq = 3;
    for (int v = 0; v < 2; v++) {
        g->tok[v] = calloc(3, sizeof(int)), g->tokoff[v] = calloc(3, sizeof(size_t));
        for (int e = 0; e < 3; e++) {
            int r, cc;
            ser_group_view_grid(&c->g[v][e], &r, &cc);
            g->tok[v][e] = r * cc, g->tokoff[v][e] = g->ntok[v], g->ntok[v] += (size_t)r * cc;
        }
        size_t n = g->ntok[v] * C;
        g->qmap[v] = malloc(n * 4), g->kmap[v] = malloc(n * 4), g->dqmap[v] = calloc(n, 4);
        ser_test_fill_uniform(g->qmap[v], n, 10 + (uint64_t)v, -1, 1);
        ser_test_fill_uniform(g->kmap[v], n, 20 + (uint64_t)v, -1, 1);
    }
    c->o = (ser_equiv_opts){.tau = 0.4f, .lambda = 0.7f, .grad = 1, .both_directions = both,
                            .keys_from_student = keys_from_student};
}

static void s_free(s_ctx *c) {
    for (int v = 0; v < 2; v++) {
        free(c->gat.tok[v]), free(c->gat.tokoff[v]);
        free(c->gat.qmap[v]), free(c->gat.kmap[v]), free(c->gat.dqmap[v]);
    }
    free(c->params), free(c->grads);
    ser_ptab_free(&c->tab), ser_ptab_free(&c->btab);
}

static double s_loss(s_ctx *c) {
    ser_equiv_opts o = c->o;
    o.grad = 0;
    double L;
    char err[SER_ERR_LEN];
    SER_ASSERT(ser_equiv_term(&c->proj, &c->b, &c->gat, &o, &L, err) == SER_OK);
    return L;
}

// d(lambda * L)/dx by central differences vs the analytic gradient, for n coordinates of x.
static int s_check(const char *label, s_ctx *c, float *x, const float *g, size_t n, int stride) {
    double eps = 3e-3, max_err = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i += (size_t)stride) {
        float v = x[i];
        x[i] = v + (float)eps;
        double fp = s_loss(c);
        x[i] = v - (float)eps;
        double fm = s_loss(c);
        x[i] = v;
        double fd = (double)c->o.lambda * (fp - fm) / (2 * eps), err = fabs(fd - (double)g[i]);
        max_err = err > max_err ? err : max_err;
        if (err > 1e-4 + 1e-2 * fabs(fd)) {
            if (bad < 5) print_error("  %s[%zu]: analytic %.6g, finite difference %.6g\n", label, i, (double)g[i], fd);
            bad++;
        }
    }
    print_message("%s %-28s max|fd-g| = %.2e\n", bad ? "FAIL" : "ok  ", label, max_err);
    return bad == 0;
}

static void s_run(int keys_from_student, int both) {
    s_ctx c;
    s_setup(&c, keys_from_student, both);
    double L;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_equiv_term(&c.proj, &c.b, &c.gat, &c.o, &L, err), 0);
    assert_true(isfinite(L) && L > 0);
    // Snapshot the analytic gradients (the checks re-run the forward only).
    float *gp = malloc(c.tab.total * 4), *gq[2];
    memcpy(gp, c.grads, c.tab.total * 4);
    int ok = 1;
    for (int v = 0; v < 2; v++) {
        size_t n = c.gat.ntok[v] * c.gat.C;
        gq[v] = malloc(n * 4);
        memcpy(gq[v], c.gat.dqmap[v], n * 4);
    }
    for (int v = 0; v < 2; v++) {
        char label[64];
        size_t n = c.gat.ntok[v] * c.gat.C;
        snprintf(label, sizeof label, "student map view %d", v);
        ok &= s_check(label, &c, c.gat.qmap[v], gq[v], n, 3);
    }
    ok &= s_check("projector_equiv weights", &c, c.params, gp, c.tab.total, 5);
    assert_true(ok);
    free(gp), free(gq[0]), free(gq[1]);
    s_free(&c);
}

// MoCo / DINO: keys from the teacher, both directions.
static void test_fd_teacher_keys_both_directions(void **s) { (void)s, s_run(0, 1); }
// Barlow Twins: keys from the student itself, one direction (the reference) and symmetric.
static void test_fd_student_keys_one_direction(void **s) { (void)s, s_run(1, 0); }
static void test_fd_student_keys_symmetric(void **s) { (void)s, s_run(1, 1); }

int main(void) {
    ser_kernels_set_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_teacher_keys_both_directions),
        cmocka_unit_test(test_fd_student_keys_one_direction),
        cmocka_unit_test(test_fd_student_keys_symmetric),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
