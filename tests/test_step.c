// test_step.c — `ser step`, the reference interface, run as a real process: one step on the
// PyTorch fixture's weights and batch must give PyTorch's loss terms, gradients and weights
// after one AdamW step; 50 steps on one batch must overfit it; bad inputs give clear errors.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ser_test.h"

static char s_dir[64], s_cfg[128];
// Command lines: fixture paths are < 1024 bytes each.
#define ARGS_LEN 8192

// The tiny model of tests/reference/make_fixtures.py (moco_case).
static const char *s_ini =
    "[model]\narch = vit_tiny\ndim = 24\ndepth = 4\nheads = 3\nmlp_hidden = 48\nimg_size = 16\n"
    "patch = 4\ncls_layer = 2\nfreeze_patch_embed = false\n"
    "[moco]\ndim = 16\nmlp_dim = 32\ntemperature = 0.2\n"
    "[ser]\nlambda = 0.7\ntau = 0.4\nproj_dim = 20\nratio = 0.375\n"
    "[optim]\neps = 1\nclip = 0\n"
    "[data]\nglobal_batch = 8\nshards = 4\n"
    "[run]\nthreads = 2\n[cluster]\nstatus_port = -1\n";

static int setup(void **state) {
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/ser_step_XXXXXX");
    if (!mkdtemp(s_dir)) return -1;
    snprintf(s_cfg, sizeof s_cfg, "%s/job.ini", s_dir);
    FILE *f = fopen(s_cfg, "w");
    if (!f) return -1;
    fputs(s_ini, f);
    fclose(f);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

// Runs `ser ARGS` with stdout+stderr into DIR/log; returns the exit status.
static int s_ser(const char *args) { return ser_test_run(s_dir, args); }

static int s_log_has(const char *needle) { return ser_test_log_has(s_dir, needle); }

static void test_one_step_matches_pytorch(void **state) {
    (void)state;
    char args[ARGS_LEN], w[1024], b[1024], out[256];
    ser_test_fixture_path(w, sizeof w, "step_weights.safetensors");
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");
    snprintf(out, sizeof out, "%s/out.safetensors", s_dir);
    snprintf(args, sizeof args, "step --config '%s' --weights '%s' --batch '%s' --out '%s' "
             "--lr 0.5 --wd 0.1 --momentum 0.9", s_cfg, w, b, out);
    assert_int_equal(s_ser(args), 0);
    char err[SER_ERR_LEN];
    ser_st_file *o = NULL;
    assert_int_equal(ser_st_open(&o, out, err), 0);
    ser_st_file *exp = ser_test_open_fixture("step_expected.safetensors");
    ser_st_file *ref = ser_test_open_fixture("moco_ser_on.safetensors");
    int ok = 1;
    // Loss terms and first-step gradients: as test_moco (rtol 1e-4).
    const char *terms[3] = {"loss", "loss_inv", "loss_equiv"};
    for (int i = 0; i < 3; i++) {
        float *got = ser_test_tensor(o, terms[i], NULL), *r = ser_test_tensor(ref, terms[i], NULL);
        ok &= ser_test_allclose(terms[i], got, r, 1, 1e-6f, 1e-4f);
        free(got), free(r);
    }
    // Weights after the step (trainable and momentum encoder). With eps = 1 the first AdamW move
    // is ~ lr * g / (|g| + 1), linear in g, so weight errors are ~ lr times gradient errors
    // (<= 1e-5): atol 2e-5. (At small eps the first move is ~ lr * sign(g), which turns rounding
    // noise in tiny gradients into +-lr; AdamW itself is bitwise-checked in test_optim.)
    int n_checked = 0;
    for (int i = 0; i < ser_st_count(exp); i++) {
        const ser_st_entry *e = ser_st_at(exp, i);
        size_t n;
        float *want = ser_test_tensor(exp, e->name, &n), *got = ser_test_tensor(o, e->name, NULL);
        ok &= ser_test_allclose(e->name, got, want, n, 2e-5f, 1e-4f);
        free(want), free(got);
        n_checked++;
    }
    for (int i = 0; i < ser_st_count(ref); i++) {
        const ser_st_entry *e = ser_st_at(ref, i);
        if (strncmp(e->name, "grad.", 5) != 0) continue;
        size_t n;
        float *want = ser_test_tensor(ref, e->name, &n), *got = ser_test_tensor(o, e->name, NULL);
        // Gradients: the tolerance of test_moco.c (see there).
        ok &= ser_test_allclose(e->name, got, want, n, 2e-5f * ser_test_maxabs(want, n) + 1e-6f, 1e-4f);
        free(want), free(got);
    }
    assert_true(n_checked > 100);
    // The optimizer state is there for every trainable tensor, with step 1.
    const ser_st_entry *st = ser_st_find(o, "optimizer.base_encoder.blocks.0.attn.qkv.weight.step");
    assert_non_null(st);
    assert_int_equal(st->dtype, SER_DT_I64);
    assert_int_equal(*(const int64_t *)st->data, 1);
    assert_non_null(ser_st_find(o, "optimizer.projector_equiv.2.weight.exp_avg_sq"));
    assert_true(ok);
    ser_st_destroy(&o), ser_st_destroy(&exp), ser_st_destroy(&ref);
}

// A step in which projector_equiv and norm_equiv are outside the graph (no equivariant sample
// with SER on; SER off with [CLS] inserted after block 2 < depth): PyTorch's AdamW skips a
// parameter whose .grad is None (no decay, no moments, no step count), and so must ser. Both runs
// must give the PyTorch fixture's weights (make_fixtures.py unused_case), leave those tensors
// bitwise as loaded and write no optimizer state for them.
static void s_unused_case(const char *weights, const char *extra, int ser_on) {
    char args[ARGS_LEN], w[1024], b[1024], out[256];
    ser_test_fixture_path(w, sizeof w, weights);
    ser_test_fixture_path(b, sizeof b, "unused_batch.safetensors");
    snprintf(out, sizeof out, "%s/unused%d.safetensors", s_dir, ser_on);
    snprintf(args, sizeof args, "step --config '%s' --weights '%s' --batch '%s' --out '%s' "
             "--lr 0.5 --wd 0.1 --momentum 0.9 --set data.global_batch=4 --set data.shards=2 %s",
             s_cfg, w, b, out, extra);
    assert_int_equal(s_ser(args), 0);
    char err[SER_ERR_LEN];
    ser_st_file *o = NULL, *in = NULL;
    assert_int_equal(ser_st_open(&o, out, err), 0);
    assert_int_equal(ser_st_open(&in, w, err), 0);
    ser_st_file *exp = ser_test_open_fixture("unused_expected.safetensors");
    int ok = 1, n_unused = 0, n_checked = 0;
    for (int i = 0; i < ser_st_count(exp); i++) {
        const ser_st_entry *e = ser_st_at(exp, i);
        const char *name = e->name + 6;  // after "after."
        int unused = strstr(name, "projector_equiv.") || strstr(name, "norm_equiv.");
        if (!ser_on && strncmp(name, "projector_equiv.", 16) == 0) {
            assert_null(ser_st_find(o, name));  // SER off: no such module
            continue;
        }
        if (strncmp(name, "momentum_encoder.", 17) == 0) continue;  // not trainable
        const ser_st_entry *g = ser_st_find(o, name);
        if (!g) fail_msg("%s: missing from the state", name);
        size_t n;
        float *want = ser_test_tensor(exp, e->name, &n), *got = ser_test_tensor(o, name, NULL);
        ok &= ser_test_allclose(name, got, want, n, 2e-5f, 1e-4f);
        char key[256];
        snprintf(key, sizeof key, "optimizer.%s.step", name);
        const ser_st_entry *st = ser_st_find(o, key);
        if (unused) {
            // Bitwise as loaded, and no AdamW state at all (torch keeps none).
            const ser_st_entry *x = ser_st_find(in, name);
            assert_non_null(x);
            assert_int_equal(x->nbytes, g->nbytes);
            assert_memory_equal(x->data, g->data, g->nbytes);
            if (st) fail_msg("%s: optimizer state for a tensor without gradient", name);
            snprintf(key, sizeof key, "optimizer.%s.exp_avg", name);
            assert_null(ser_st_find(o, key));
            n_unused++;
        } else if (!strstr(name, "patch_embed")) {
            if (!st) fail_msg("%s: no optimizer step", name);
            assert_int_equal(*(const int64_t *)st->data, 1);
        }
        free(want), free(got);
        n_checked++;
    }
    assert_int_equal(n_unused, ser_on ? 4 : 2);  // projector_equiv.{0,2}.weight, norm_equiv.{weight,bias}
    assert_true(n_checked > 50);
    assert_true(ok);
    ser_st_destroy(&o), ser_st_destroy(&in), ser_st_destroy(&exp);
}

static void test_unused_tensors_untouched(void **state) {
    (void)state;
    s_unused_case("step_weights.safetensors", "", 1);
    s_unused_case("unused_weights_noser.safetensors", "--set ser.enabled=false", 0);
}

static void test_overfits_one_batch(void **state) {
    (void)state;
    char args[ARGS_LEN], w[1024], b[1024], out[256];
    ser_test_fixture_path(w, sizeof w, "step_weights.safetensors");
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");
    snprintf(out, sizeof out, "%s/out50.safetensors", s_dir);
    snprintf(args, sizeof args, "step --config '%s' --weights '%s' --batch '%s' --out '%s' "
             "--steps 50 --lr 0.002 --wd 0.0 --momentum 0.99 --set optim.eps=1e-8", s_cfg, w, b, out);
    assert_int_equal(s_ser(args), 0);
    char err[SER_ERR_LEN];
    ser_st_file *o = NULL;
    assert_int_equal(ser_st_open(&o, out, err), 0);
    size_t n;
    float *loss = ser_test_tensor(o, "loss", &n), *inv = ser_test_tensor(o, "loss_inv", NULL);
    float *eq = ser_test_tensor(o, "loss_equiv", NULL);
    assert_int_equal(n, 50);
    print_message("overfit: loss %.4f -> %.4f, inv %.4f -> %.4f, equiv %.4f -> %.4f\n",
                  (double)loss[0], (double)loss[49], (double)inv[0], (double)inv[49],
                  (double)eq[0], (double)eq[49]);
    assert_true(loss[49] < 0.5f * loss[0]);
    assert_true(inv[49] < inv[0] && eq[49] < eq[0]);
    free(loss), free(inv), free(eq);
    ser_st_destroy(&o);
}

// Barlow Twins + SER through the same interface: 30 steps on one batch lower both terms, and the
// output has the method's names (backbone.*, projector.*, bn.* buffers, no momentum encoder).
static void test_barlow_through_ser_step(void **state) {
    (void)state;
    char args[ARGS_LEN], b[1024], out[256];
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");
    snprintf(out, sizeof out, "%s/bt.safetensors", s_dir);
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s' --steps 30 --lr 0.002 "
             "--wd 0 --set method.name=barlow --set barlow.proj_dim=32 --set ser.symmetric=false "
             "--set optim.eps=1e-8", s_cfg, b, out);
    assert_int_equal(s_ser(args), 0);
    char err[SER_ERR_LEN];
    ser_st_file *o = NULL;
    assert_int_equal(ser_st_open(&o, out, err), 0);
    size_t n;
    float *loss = ser_test_tensor(o, "loss", &n), *inv = ser_test_tensor(o, "loss_inv", NULL);
    float *eq = ser_test_tensor(o, "loss_equiv", NULL);
    print_message("barlow: loss %.4f -> %.4f, inv %.4f -> %.4f, equiv %.4f -> %.4f\n",
                  (double)loss[0], (double)loss[n - 1], (double)inv[0], (double)inv[n - 1],
                  (double)eq[0], (double)eq[n - 1]);
    assert_int_equal(n, 30);
    assert_true(inv[n - 1] < 0.7f * inv[0] && eq[n - 1] < eq[0]);
    assert_non_null(ser_st_find(o, "backbone.blocks.3.mlp.fc2.weight"));
    assert_non_null(ser_st_find(o, "bn.running_var"));
    assert_non_null(ser_st_find(o, "optimizer.projector.6.weight.exp_avg"));
    assert_null(ser_st_find(o, "momentum_encoder.cls_token"));
    free(loss), free(inv), free(eq);
    ser_st_destroy(&o);
}

// DINO + SER through the same interface: the SER term falls on one batch, the centre moves,
// the teacher is written, and during epoch 0 the last layer gets no update and no AdamW state
// (freeze_last_layer = 1: torch drops its gradient).
static void test_dino_through_ser_step(void **state) {
    (void)state;
    char args[ARGS_LEN], b[1024], out[256];
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");
    snprintf(out, sizeof out, "%s/dino.safetensors", s_dir);
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s' --steps 20 --lr 0.002 "
             "--wd 0.04 --set method.name=dino --set dino.out_dim=64 --set dino.hidden_dim=32 "
             "--set dino.bottleneck_dim=16 --set optim.decay=no_bias_1d --set optim.eps=1e-8",
             s_cfg, b, out);
    assert_int_equal(s_ser(args), 0);
    char err[SER_ERR_LEN];
    ser_st_file *o = NULL;
    assert_int_equal(ser_st_open(&o, out, err), 0);
    size_t n;
    float *loss = ser_test_tensor(o, "loss", &n), *eq = ser_test_tensor(o, "loss_equiv", NULL);
    print_message("dino: loss %.4f -> %.4f, equiv %.4f -> %.4f\n", (double)loss[0],
                  (double)loss[n - 1], (double)eq[0], (double)eq[n - 1]);
    for (size_t i = 0; i < n; i++) assert_true(isfinite(loss[i]));
    assert_true(eq[n - 1] < eq[0]);
    float *center = ser_test_tensor(o, "dino_loss.center", &n);
    assert_true(ser_test_maxabs(center, n) > 0.0f);
    assert_non_null(ser_st_find(o, "teacher.backbone.cls_token"));
    assert_non_null(ser_st_find(o, "optimizer.student.head.mlp.0.weight.exp_avg"));
    assert_null(ser_st_find(o, "optimizer.student.head.last_layer.weight_v.exp_avg"));
    free(loss), free(eq), free(center);
    ser_st_destroy(&o);
}

// Kill/resume through the CLI: 4 steps in one run == 2 steps, --save, then 2 steps --resume,
// bitwise (weights, momentum encoder / buffers, AdamW state, the losses of steps 2 and 3), for
// both wired methods. A checkpoint of another config is refused with the differing key.
static void test_resume_bitwise(void **state) {
    (void)state;
    const char *methods[2] = {"", "--set method.name=barlow --set barlow.proj_dim=32"};
    char args[ARGS_LEN], b[1024], ck[256], o[3][256], err[SER_ERR_LEN];
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");
    for (int mth = 0; mth < 2; mth++) {
        snprintf(ck, sizeof ck, "%s/ck%d", s_dir, mth);
        for (int r = 0; r < 3; r++) snprintf(o[r], sizeof o[r], "%s/resume%d_%d.st", s_dir, mth, r);
        const char *tail[3] = {"--steps 4", "--steps 2 --save", "--steps 2 --resume"};
        for (int r = 0; r < 3; r++) {
            snprintf(args, sizeof args, "step --config '%s' %s --batch '%s' --out '%s' "
                     "--iters-per-epoch 4 --set optim.clip=0.5 %s %s", s_cfg, methods[mth], b,
                     o[r], tail[r], r ? ck : "");
            assert_int_equal(s_ser(args), 0);
        }
        ser_st_file *fa = NULL, *fb = NULL;
        assert_int_equal(ser_st_open(&fa, o[0], err), 0);
        assert_int_equal(ser_st_open(&fb, o[2], err), 0);
        int compared = 0;
        for (int i = 0; i < ser_st_count(fa); i++) {
            const ser_st_entry *ea = ser_st_at(fa, i), *eb;
            if (strncmp(ea->name, "grad.", 5) == 0 || strncmp(ea->name, "loss", 4) == 0) continue;
            eb = ser_st_find(fb, ea->name);
            assert_non_null(eb);
            assert_int_equal(ea->nbytes, eb->nbytes);
            if (memcmp(ea->data, eb->data, ea->nbytes) != 0) fail_msg("%s differs", ea->name);
            compared++;
        }
        const float *la = ser_st_find(fa, "loss")->data, *lb = ser_st_find(fb, "loss")->data;
        assert_memory_equal(la + 2, lb, 2 * sizeof(float));
        fprintf(stderr, "%s: %d state tensors equal after resume\n", mth ? "barlow" : "moco",
                compared);
        ser_st_destroy(&fa);
        ser_st_destroy(&fb);
    }
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s/x' --resume '%s/ck0' "
             "--set optim.clip=0.5 --set optim.lr=0.001", s_cfg, b, s_dir, s_dir);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has("(differs: optim.lr)"));
}

static void test_bad_inputs(void **state) {
    (void)state;
    char args[ARGS_LEN], w[1024], b[1024], bad[256];
    ser_test_fixture_path(w, sizeof w, "step_weights.safetensors");
    ser_test_fixture_path(b, sizeof b, "step_batch.safetensors");
    assert_int_equal(s_ser("step --out /tmp/x.safetensors"), 2);
    assert_true(s_log_has("--batch and --out are required"));
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s/o' --set method.name=simclr",
             s_cfg, b, s_dir);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("method.name"));
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s/o' --set optim.lr=-1",
             s_cfg, b, s_dir);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("optim.lr"));
    // The weights of another model: a strict-load error naming the tensor.
    snprintf(args, sizeof args, "step --config '%s' --weights '%s' --batch '%s' --out '%s/o' "
             "--set model.depth=3", s_cfg, w, b, s_dir);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has("unexpected, first 'base_encoder.blocks.3"));
    // A corrupt batch file.
    snprintf(bad, sizeof bad, "%s/bad.safetensors", s_dir);
    FILE *f = fopen(bad, "w");
    fputs("not a safetensors file at all", f);
    fclose(f);
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s/o'", s_cfg, bad, s_dir);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has("bad.safetensors"));
    // A batch whose group element does not match its image size.
    ser_st_file *bf = ser_test_open_fixture("step_batch.safetensors");
    ser_st_writer *wr = ser_st_writer_new();
    int64_t g[30];
    for (int i = 0; i < ser_st_count(bf); i++) {
        const ser_st_entry *e = ser_st_at(bf, i);
        if (strcmp(e->name, "eq.g") == 0) {
            memcpy(g, e->data, sizeof g);
            g[3] += 1;  // sample 0, view 0: gh one larger than its image
            ser_st_writer_add(wr, e->name, e->dtype, e->ndim, e->shape, g);
        } else {
            ser_st_writer_add(wr, e->name, e->dtype, e->ndim, e->shape, e->data);
        }
    }
    snprintf(bad, sizeof bad, "%s/badg.safetensors", s_dir);
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_writer_save(wr, bad, err), 0);
    ser_st_writer_destroy(&wr);
    ser_st_destroy(&bf);
    snprintf(args, sizeof args, "step --config '%s' --batch '%s' --out '%s/o'", s_cfg, bad, s_dir);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has("eq.view0.0"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_step_matches_pytorch),
        cmocka_unit_test(test_unused_tensors_untouched),
        cmocka_unit_test(test_overfits_one_batch),
        cmocka_unit_test(test_barlow_through_ser_step),
        cmocka_unit_test(test_dino_through_ser_step),
        cmocka_unit_test(test_resume_bitwise),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
