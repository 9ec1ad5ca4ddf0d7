// test_objective.c — the objective interface (common/objectives/ser_objective.h):
//   - the table: built-in rows in the order of method.name, lookups, run-time registration;
//   - tensors outside a step's graph: for every method, SER off with [CLS] inserted before the
//     last block, and SER on with no equivariant sample in the batch, leave projector_equiv and
//     norm_equiv, their AdamW moments and step counts bitwise untouched (torch skips a parameter
//     whose .grad is None); a step with equivariant samples then moves them;
//   - a toy objective defined only here (a SimSiam-like negative cosine with a linear predictor)
//     plugs in through ser_objective_register: it trains through the shared step loop, and
//     `ser step` and a coordinator with 2 workers (each in a forked process of this test, which
//     registered it) give the same bits — nothing of the runtime knows it.
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ser_batchfile.h"
#include "ser_cmd.h"
#include "ser_barlow.h"
#include "ser_config.h"
#include "ser_dino.h"
#include "ser_moco.h"
#include "ser_objective.h"
#include "ser_optim.h"
#include "ser_rng.h"
#include "ser_safetensors.h"
#include "ser_test.h"
#include "ser_train.h"

static char s_dir[64];

// The tiny model of tests/reference/make_fixtures.py, with a method section per objective.
static const char *s_ini =
    "[model]\narch = vit_tiny\ndim = 24\ndepth = 4\nheads = 3\nmlp_hidden = 48\nimg_size = 16\n"
    "patch = 4\ncls_layer = 2\nfreeze_patch_embed = false\n"
    "[moco]\ndim = 16\nmlp_dim = 32\n"
    "[dino]\nout_dim = 32\nhidden_dim = 24\nbottleneck_dim = 8\nteacher_temp_warmup_epochs = 1\n"
    "[barlow]\nproj_dim = 32\n"
    "[ser]\nlambda = 0.7\ntau = 0.4\nproj_dim = 20\nratio = 0.375\n"
    "[optim]\nepochs = 4\nwarmup_epochs = 1\nweight_decay = 0.1\n"
    "[data]\nglobal_batch = 8\nshards = 2\niters_per_epoch = 5\n"
    "[run]\nthreads = 1\nlog_every = 1\n"
    "[cluster]\nheartbeat_ms = 100\ntimeout_ms = 3000\nstatus_port = -1\n";

// --- the toy objective -------------------------------------------------------------------------
// loss = mean over samples and both directions of -cos(W q_v + b, stopgrad(q_{1-v})), q the final
// [CLS] rows. No teacher, no config section of its own.
typedef struct s_toy {
    ser_ptab tab;
    ser_vit vit;
    float *params, *grads;
    size_t w_off, b_off;
    int C;
} s_toy;

static int s_toy_init(void *st, const ser_config *cfg, ser_objective_model *m, char *err) {
    s_toy *t = st;
    ser_vit_config vc;
    int rc = ser_config_to_vit(cfg, &vc, err);
    if (rc) return rc;
    ser_ptab_init(&t->tab);
    if ((rc = ser_vit_register(&t->vit, &vc, &t->tab, "encoder.", err))) return rc;
    t->C = vc.dim;
    int64_t ws[2] = {vc.dim, vc.dim}, bs[1] = {vc.dim};
    t->w_off = ser_ptab_add(&t->tab, "predictor.weight", 0, 2, ws);
    t->b_off = ser_ptab_add(&t->tab, "predictor.bias", 0, 1, bs);
    t->params = ser_xaligned(sizeof(float) * t->tab.total);
    t->grads = ser_xaligned(sizeof(float) * t->tab.total);
    memset(t->params, 0, sizeof(float) * t->tab.total);
    ser_vit_bind(&t->vit, t->params, t->grads);
    ser_objective_model_fill(m, &t->tab, t->params, t->grads, NULL, NULL, NULL, NULL, &t->vit, NULL,
                             cfg->ser.enabled, cfg->ser.enabled && cfg->ser.grad);
    return SER_OK;
}

static void s_toy_free(void *st) {
    s_toy *t = st;
    ser_vit_free(&t->vit);
    free(t->params), free(t->grads);
    ser_ptab_free(&t->tab);
}

static void s_toy_init_weights(void *st, uint64_t seed) {
    s_toy *t = st;
    ser_vit_init_weights(&t->vit, SER_VIT_INIT_GENERIC, seed);
    ser_rng r;
    ser_rng_init(&r, seed, 77, 0, 0);
    for (int i = 0; i < t->C * t->C; i++)
        t->params[t->w_off + i] = (ser_rng_uniform(&r) - 0.5f) * 0.4f + (i % (t->C + 1) == 0);
    memset(t->params + t->b_off, 0, sizeof(float) * (size_t)t->C);
}

static int s_toy_objective(void *st, const ser_batch *b, ser_gathered *g, const ser_objective_step *s,
                           double losses[3], char *err) {
    (void)b, (void)s;
    s_toy *t = st;
    int B = g->B, C = t->C;
    const float *W = t->params + t->w_off, *bias = t->params + t->b_off;
    float *dW = t->grads + t->w_off, *db = t->grads + t->b_off;
    float *p = ser_xcalloc((size_t)C, sizeof(float)), *dp = ser_xcalloc((size_t)C, sizeof(float));
    double loss = 0;
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < B; i++) {
            const float *q = g->qcls[v] + (size_t)i * C, *z = g->qcls[1 - v] + (size_t)i * C;
            double pp = 0, zz = 0, pz = 0;
            for (int o = 0; o < C; o++) {
                double a = bias[o];
                for (int k = 0; k < C; k++) a += (double)W[o * C + k] * (double)q[k];
                p[o] = (float)a;
                pp += a * a, zz += (double)z[o] * (double)z[o], pz += a * (double)z[o];
            }
            double np = sqrt(pp) + 1e-12, nz = sqrt(zz) + 1e-12, cosv = pz / (np * nz);
            double scale = -1.0 / (2.0 * B);  // mean over samples, half per direction
            loss += scale * cosv;
            for (int o = 0; o < C; o++)
                dp[o] = (float)(scale * ((double)z[o] / (np * nz) - cosv * (double)p[o] / (np * np)));
            float *dq = g->dqcls[v] + (size_t)i * C;
            for (int o = 0; o < C; o++) {
                db[o] += dp[o];
                for (int k = 0; k < C; k++) {
                    dW[o * C + k] += dp[o] * q[k];
                    dq[k] += dp[o] * W[o * C + k];
                }
            }
        }
    free(p), free(dp);
    losses[0] = losses[1] = loss, losses[2] = 0;
    if (!isfinite(loss)) return ser_errf(err, SER_ENONFINITE, "toy: non-finite loss");
    return SER_OK;
}

static const ser_objective_i s_toy_i = {
    .name = "toy",
    .student_prefix = "encoder.",
    .ema = SER_OBJECTIVE_EMA_NONE,
    .state_size = sizeof(s_toy),
    .init = s_toy_init,
    .free = s_toy_free,
    .init_weights = s_toy_init_weights,
    .objective = s_toy_objective,
};

static int s_toy_index = -1;

static int setup(void **state) {
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/ser_objective_XXXXXX");
    if (!mkdtemp(s_dir)) return -1;
    s_toy_index = ser_objective_register(&s_toy_i);
    return s_toy_index < 0 ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    ser_test_rm_rf(s_dir);
    return 0;
}

// --- the table ---------------------------------------------------------------------------------
static void test_table(void **state) {
    (void)state;
    enum { N = 7 };  // the built-in objectives
    const char *names[N] = {"moco", "dino", "barlow", "essl", "augself", "equimod", "stl"};
    int idx[N] = {SER_CONFIG_METHOD_MOCO, SER_CONFIG_METHOD_DINO, SER_CONFIG_METHOD_BARLOW,
                  SER_CONFIG_METHOD_ESSL, SER_CONFIG_METHOD_AUGSELF,
                  SER_CONFIG_METHOD_EQUIMOD, SER_CONFIG_METHOD_STL};
    for (int i = 0; i < N; i++) {
        const ser_objective_i *o = ser_objective_get(idx[i]);
        assert_non_null(o);
        assert_string_equal(o->name, names[i]);
        assert_string_equal(ser_objective_names[idx[i]], names[i]);
        assert_int_equal(ser_objective_find(names[i]), idx[i]);
        assert_non_null(o->init), assert_non_null(o->objective), assert_non_null(o->student_prefix);
        assert_true((o->ema == SER_OBJECTIVE_EMA_NONE) == (o->teacher_ema == NULL));
        // Only AugSelf reads the global views' parameters (the coordinator then requires them).
        assert_int_equal(o->view_params, idx[i] == SER_CONFIG_METHOD_AUGSELF ||
                                             idx[i] == SER_CONFIG_METHOD_EQUIMOD);
    }
    assert_int_equal(s_toy_index, N);
    assert_int_equal(ser_objective_count(), N + 1);
    assert_int_equal(ser_objective_find("toy"), N);
    assert_null(ser_objective_get(N + 1));
    assert_int_equal(ser_objective_find("simclr"), -1);
    assert_int_equal(ser_objective_register(&s_toy_i), -1);  // the name is taken
    // The config knows the registered name.
    ser_config c;
    char err[SER_ERR_LEN];
    ser_config_defaults(&c);
    assert_int_equal(ser_config_set_arg(&c, "method.name=toy", err), SER_OK);
    assert_int_equal(c.method.name, N);
    assert_int_not_equal(ser_config_set_arg(&c, "method.name=simclr", err), SER_OK);
}

// ser.symmetric = auto (the default) is each reference's direction; true / false apply to all.
static void test_symmetric_auto(void **state) {
    (void)state;
    ser_config c;
    char err[SER_ERR_LEN];
    ser_config_defaults(&c);
    assert_int_equal(c.ser.symmetric, SER_CONFIG_SYM_AUTO);
    ser_moco_config mc;
    ser_dino_config dc;
    ser_barlow_config bc;
    for (int v = 0; v < 3; v++) {
        c.ser.symmetric = v == 0 ? SER_CONFIG_SYM_AUTO : v == 1 ? SER_CONFIG_SYM_TRUE : SER_CONFIG_SYM_FALSE;
        int want_mo = v == 2 ? 0 : 1, want_bt = v == 1 ? 1 : 0;
        c.method.name = SER_CONFIG_METHOD_MOCO;
        assert_int_equal(ser_moco_config_from_job(&mc, &c, err), SER_OK);
        assert_int_equal(mc.ser_symmetric, want_mo);
        c.method.name = SER_CONFIG_METHOD_DINO;
        assert_int_equal(ser_dino_config_from_job(&dc, &c, err), SER_OK);
        assert_int_equal(dc.ser_symmetric, want_mo);
        c.method.name = SER_CONFIG_METHOD_BARLOW;
        assert_int_equal(ser_barlow_config_from_job(&bc, &c, err), SER_OK);
        assert_int_equal(bc.ser_symmetric, want_bt);
    }
    assert_int_equal(ser_config_set_arg(&c, "ser.symmetric=false", err), SER_OK);
    assert_int_equal(c.ser.symmetric, SER_CONFIG_SYM_FALSE);
    assert_int_not_equal(ser_config_set_arg(&c, "ser.symmetric=maybe", err), SER_OK);
}

// --- tensors outside the graph -----------------------------------------------------------------
static void s_config(ser_config *c, const char *method, const char *extra1, const char *extra2) {
    char path[128], err[SER_ERR_LEN], m[64];
    snprintf(path, sizeof path, "%s/job.ini", s_dir);
    ser_test_write_file(path, s_ini, strlen(s_ini));
    snprintf(m, sizeof m, "method.name=%s", method);
    const char *sets[3] = {m, extra1 ? extra1 : "run.threads=1", extra2 ? extra2 : "run.threads=1"};
    ser_config_defaults(c);
    if (ser_config_load(c, path, 3, sets, err)) fail_msg("%s", err);
}

static int s_is_equiv(const char *name) {
    return strstr(name, "projector_equiv.") != NULL || strstr(name, "norm_equiv.") != NULL;
}

// One step of t on b (its first n_inv invariant samples and n_eq equivariant ones).
static void s_step(ser_trainer *t, const ser_batch *full, int n_inv, int n_eq, int shards, int64_t it) {
    ser_batch b = *full;
    b.n_inv = n_inv, b.n_eq = n_eq;
    const float *eq0[8], *eq1[8];
    const ser_group_elem *g0 = full->g[0], *g1 = full->g[1];
    for (int e = 0; e < n_eq; e++) eq0[e] = full->eq[0][e], eq1[e] = full->eq[1][e];
    b.eq[0] = eq0, b.eq[1] = eq1, b.g[0] = g0, b.g[1] = g1;
    b.ids = NULL;
    double lr, wd, mom, L[3];
    char err[SER_ERR_LEN];
    ser_trainer_values(t, it, &lr, &wd, &mom);
    if (ser_trainer_step_local(t, &b, shards, it, 0.01, 0.1, mom, L, NULL, NULL, err))
        fail_msg("step %lld: %s", (long long)it, err);
}

// Checks every SER tensor of t against its values in `before`: unchanged with no AdamW state
// (want_moved 0) or moved with state (1). Returns how many SER tensors there are.
static int s_check_equiv(const ser_trainer *t, const float *before, int want_moved) {
    int n = 0, moved_other = 0;
    for (int i = 0; i < t->tab->n; i++) {
        const ser_tinfo *ti = &t->tab->t[i];
        int same = memcmp(t->params + ti->offset, before + ti->offset, sizeof(float) * ti->numel) == 0;
        if (!s_is_equiv(ti->name)) {
            moved_other += !same;
            continue;
        }
        n++;
        if (want_moved) {
            if (same) fail_msg("%s: did not move with equivariant samples", ti->name);
            assert_true(t->opt.step[i] >= 1);
            continue;
        }
        if (!same) fail_msg("%s: moved without a gradient", ti->name);
        assert_int_equal(t->opt.step[i], 0);
        for (size_t k = 0; k < ti->numel; k++) {
            assert_true(t->opt.exp_avg[ti->offset + k] == 0.0f);
            assert_true(t->opt.exp_avg_sq[ti->offset + k] == 0.0f);
        }
    }
    assert_true(moved_other > 10);  // the rest of the model did train
    return n;
}

static void s_unused_method(const char *method) {
    ser_batchfile bf;
    memset(&bf, 0, sizeof bf);
    char b[1024], err[SER_ERR_LEN];
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");  // 5 invariant + 3 equivariant
    if (ser_batchfile_load(&bf, b, 4, err)) fail_msg("%s", err);
    // SER off, [CLS] after block 2 of 4: norm_equiv exists and is never in the graph.
    ser_config c;
    s_config(&c, method, "ser.enabled=false", NULL);
    ser_trainer t;
    if (ser_trainer_init(&t, &c, 5, err)) fail_msg("%s", err);
    ser_trainer_init_weights(&t, 3);
    float *before = ser_xaligned(sizeof(float) * t.tab->total);
    memcpy(before, t.params, sizeof(float) * t.tab->total);
    for (int it = 0; it < 2; it++) s_step(&t, &bf.b, 4, 0, 2, it);
    assert_int_equal(s_check_equiv(&t, before, 0), 2);  // norm_equiv.weight, .bias
    ser_trainer_free(&t);
    free(before);
    // SER on: steps without an equivariant sample leave the SER tensors alone; a step with
    // equivariant samples moves them.
    s_config(&c, method, "ser.enabled=true", NULL);
    if (ser_trainer_init(&t, &c, 5, err)) fail_msg("%s", err);
    ser_trainer_init_weights(&t, 3);
    before = ser_xaligned(sizeof(float) * t.tab->total);
    memcpy(before, t.params, sizeof(float) * t.tab->total);
    for (int it = 0; it < 2; it++) s_step(&t, &bf.b, 4, 0, 2, it);
    int n = s_check_equiv(&t, before, 0);
    assert_true(n >= 4);
    s_step(&t, &bf.b, 5, 3, 1, 2);
    s_check_equiv(&t, before, 1);
    print_message("%s: %d SER tensors untouched by 2 steps without equivariant samples, moved by "
                  "one with\n", method, n);
    ser_trainer_free(&t);
    free(before);
    ser_batchfile_free(&bf);
}

static void test_unused_moco(void **state) {
    (void)state;
    s_unused_method("moco");
}

static void test_unused_dino(void **state) {
    (void)state;
    s_unused_method("dino");
}

static void test_unused_barlow(void **state) {
    (void)state;
    s_unused_method("barlow");
}

// --- the toy objective through the step loop and the runtime ------------------------------------
// Runs `ser ARGV...` as a function of this process (the toy is registered here) in a forked
// child with stdout/stderr into DIR/log; returns its pid.
typedef int (*s_cmd_fn)(int, char **);

static pid_t s_fork(s_cmd_fn fn, const char *log, char **argv) {
    pid_t pid = fork();
    if (pid == 0) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", s_dir, log);
        if (!freopen(path, "w", stdout) || !freopen(path, "a", stderr)) _exit(126);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int argc = 0;
        while (argv[argc]) argc++;
        _exit(fn(argc, argv) & 0xff);
    }
    return pid;
}

static int s_wait_pid(pid_t pid, int timeout_s) {
    for (int k = 0; k < timeout_s * 20; k++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        struct timespec ts = {0, 50000000L};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void s_tail(const char *log) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "tail -15 %s/%s", s_dir, log);
    if (system(cmd)) {}
}

static void test_toy_objective(void **state) {
    (void)state;
    char cfg[128], b[1024], ref[160], out[160], epf[160], od[200];
    snprintf(cfg, sizeof cfg, "%s/toy.ini", s_dir);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fprintf(f, "%s[method]\nname = toy\n", s_ini);
    fclose(f);
    ser_test_fixture_path(b, sizeof b, "unused_batch.safetensors");  // 4 invariant samples
    snprintf(ref, sizeof ref, "%s/toy_step.safetensors", s_dir);
    snprintf(out, sizeof out, "%s/toy_cluster.safetensors", s_dir);
    snprintf(epf, sizeof epf, "%s/toy.endpoint", s_dir);
    snprintf(od, sizeof od, "run.out_dir=%s/toy_run", s_dir);
    // In this process: the shared step loop trains it (the loss goes down on one batch).
    ser_config c;
    char err[SER_ERR_LEN];
    ser_config_defaults(&c);
    const char *sets[3] = {"ser.enabled=false", "data.global_batch=4", "optim.lr=0.05"};
    if (ser_config_load(&c, cfg, 3, sets, err)) fail_msg("%s", err);
    ser_trainer t;
    if (ser_trainer_init(&t, &c, 5, err)) fail_msg("%s", err);
    ser_trainer_init_weights(&t, 0);
    ser_batchfile bf;
    memset(&bf, 0, sizeof bf);
    if (ser_batchfile_load(&bf, b, 4, err)) fail_msg("%s", err);
    double first = 0, last = 0;
    for (int it = 0; it < 10; it++) {
        double L[3];
        if (ser_trainer_step_local(&t, &bf.b, 2, it, 0.02, 0.0, 0.0, L, NULL, NULL, err))
            fail_msg("%s", err);
        if (it == 0) first = L[0];
        last = L[0];
    }
    print_message("toy: loss %.4f -> %.4f over 10 steps on one batch\n", first, last);
    assert_true(first < 0 && last < first);
    ser_trainer_free(&t);
    ser_batchfile_free(&bf);
    // `ser step` and a coordinator with 2 workers: the same bits.
    char *sargs[] = {"step", "--config", cfg, "--batch", b, "--out", ref, "--steps", "6",
                     "--set", "ser.enabled=false", "--set", "data.global_batch=4", NULL};
    int rc = s_wait_pid(s_fork(ser_cmd_step, "toy_step.log", sargs), 120);
    if (rc) s_tail("toy_step.log");
    assert_int_equal(rc, 0);
    char *cargs[] = {"coordinator", "--config", cfg, "--out", out, "--steps", "6",
                     "--endpoint-file", epf, "--set", "ser.enabled=false", "--set",
                     "data.global_batch=4", "--set", "cluster.port=0", "--set", od,
                     "--set", "cluster.coordinator=127.0.0.1", NULL};
    pid_t cp = s_fork(ser_cmd_coordinator, "toy_coord.log", cargs);
    char ep[256] = "";
    for (int k = 0; k < 600 && !ep[0]; k++) {
        FILE *e = fopen(epf, "r");
        if (e) {
            if (!fgets(ep, sizeof ep, e)) ep[0] = 0;
            fclose(e);
            ep[strcspn(ep, "\n")] = 0;
        }
        struct timespec ts = {0, 50000000L};
        if (!ep[0]) nanosleep(&ts, NULL);
    }
    if (!ep[0]) s_tail("toy_coord.log");
    assert_true(ep[0] != 0);
    pid_t wp[2];
    for (int w = 0; w < 2; w++) {
        char name[8], log[32];
        snprintf(name, sizeof name, "w%d", w);
        snprintf(log, sizeof log, "toy_w%d.log", w);
        char *wargs[] = {"worker", "--coordinator", ep, "--batch-file", b, "--name", name, NULL};
        wp[w] = s_fork(ser_cmd_worker, log, wargs);
    }
    rc = s_wait_pid(cp, 120);
    for (int w = 0; w < 2; w++) s_wait_pid(wp[w], 20);
    if (rc) s_tail("toy_coord.log");
    assert_int_equal(rc, 0);
    ser_st_file *fa = NULL, *fb = NULL;
    assert_int_equal(ser_st_open(&fa, ref, err), 0);
    assert_int_equal(ser_st_open(&fb, out, err), 0);
    assert_int_equal(ser_st_count(fa), ser_st_count(fb));
    int differ = 0;
    for (int i = 0; i < ser_st_count(fa); i++) {
        const ser_st_entry *x = ser_st_at(fa, i), *y = ser_st_find(fb, x->name);
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
            if (differ++ < 5) print_message("  differs: %s\n", x->name);
    }
    print_message("toy: ser step vs coordinator + 2 workers: %d tensors, %d differ\n",
                  ser_st_count(fa), differ);
    assert_int_equal(differ, 0);
    assert_non_null(ser_st_find(fa, "predictor.weight"));
    assert_non_null(ser_st_find(fa, "optimizer.predictor.weight.step"));
    ser_st_destroy(&fa), ser_st_destroy(&fb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_symmetric_auto),
        cmocka_unit_test(test_unused_moco),
        cmocka_unit_test(test_unused_dino),
        cmocka_unit_test(test_unused_barlow),
        cmocka_unit_test(test_toy_objective),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
