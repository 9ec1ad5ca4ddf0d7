// test_eval.c — the evaluation math (common/eval/ser_eval.h) on synthetic data with known answers,
// and `ser eval` end to end on a tiny generated ImageFolder with a tiny ViT.
//
// Known answers: separable clusters give 100% kNN and linear accuracy; the kNN temperature
// weighting equals a hand computation on four points (and the weighted vote overrules the
// majority exactly when the temperature is low); ranks and top-5 follow the documented tie
// rule; SGD lowers the loss; an exactly equivariant token map (the image's own pixels as tokens,
// patch size 1, and patch mean-pooling for the permutations) has zero equivariance error under
// every evaluated group element while a position-weighted one does not; the cosine consistency
// of identical features is 1.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_dl_data.h"
#include "ser_eval.h"
#include "ser_group.h"
#include "ser_rng.h"
#include "ser_test.h"
#include "ser_train.h"

static char s_tmp[64];

static int setup(void **state) {
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/ser_eval_XXXXXX");
    return mkdtemp(s_tmp) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    if (getenv("SER_TEST_KEEP")) {
        fprintf(stderr, "kept %s\n", s_tmp);
        return 0;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

// n points per class of C well-separated clusters in d dims: centre c at 5*e_c (d >= C), noise
// U(-0.5, 0.5) per coordinate.
static void s_clusters(float *x, int *y, int n_per, int C, int d, uint64_t seed) {
    ser_test_fill_uniform(x, (size_t)n_per * C * d, seed, -0.5f, 0.5f);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < n_per; i++) {
            int r = c * n_per + i;
            y[r] = c;
            x[(size_t)r * d + c] += 5.0f;
        }
}

// --- kNN -------------------------------------------------------------------------------------------

static void test_knn_separable(void **state) {
    (void)state;
    int C = 5, d = 8, ntr = 40 * C, nte = 10 * C;
    float *tr = malloc(sizeof(float) * (size_t)ntr * d), *te = malloc(sizeof(float) * (size_t)nte * d);
    int *ytr = malloc(sizeof(int) * (size_t)ntr), *yte = malloc(sizeof(int) * (size_t)nte);
    s_clusters(tr, ytr, 40, C, d, 1);
    s_clusters(te, yte, 10, C, d, 2);
    ser_eval_l2_normalize(tr, ntr, d);
    ser_eval_l2_normalize(te, nte, d);
    float *sc = malloc(sizeof(float) * (size_t)nte * C), *sn = malloc(sizeof(float) * (size_t)nte * C);
    assert_int_equal(ser_eval_knn_scores(sc, tr, ytr, ntr, te, nte, d, C, 20, 0.07f), SER_OK);
    ser_eval_acc a = ser_eval_topk(sc, yte, nte, C);
    assert_true(a.top1 == 100.0 && a.top5 == 100.0 && a.n == nte);
    // The blocked sgemm version agrees with the double-precision full sort.
    assert_int_equal(ser_eval_knn_scores_naive(sn, tr, ytr, ntr, te, nte, d, C, 20, 0.07f), SER_OK);
    SER_ASSERT_CLOSE("knn scores vs naive", sc, sn, (size_t)nte * C, 0, 1e-4f);
    // Bad arguments are refused.
    ytr[3] = C;
    assert_int_equal(ser_eval_knn_scores(sc, tr, ytr, ntr, te, nte, d, C, 20, 0.07f), SER_EINVAL);
    free(tr), free(te), free(ytr), free(yte), free(sc), free(sn);
}

static void test_knn_hand(void **state) {
    (void)state;
    // test (1,0); train: (1,0) class 0 (sim 1), (0.6,0.8) class 1 (sim 0.6), (0,1) class 1
    // (sim 0), (-1,0) class 0 (sim -1). k = 3 takes the first three.
    const float tr[8] = {1, 0, 0.6f, 0.8f, 0, 1, -1, 0}, te[2] = {1, 0};
    const int ytr[4] = {0, 1, 1, 0};
    float sc[2];
    const float T = 0.07f;
    assert_int_equal(ser_eval_knn_scores(sc, tr, ytr, 4, te, 1, 2, 2, 3, T), SER_OK);
    double e0 = exp(1.0 / (double)T), e1 = exp((double)0.6f / (double)T) + exp(0.0);
    assert_true(fabs((double)sc[0] - e0) <= 1e-5 * e0);
    assert_true(fabs((double)sc[1] - e1) <= 1e-5 * e1);
    int y0 = 0, y1 = 1;
    // Low temperature: the single closest neighbour outweighs the two of class 1.
    assert_true(ser_eval_topk(sc, &y0, 1, 2).top1 == 100.0);
    // High temperature: the weights are nearly equal and the majority (class 1) wins.
    assert_int_equal(ser_eval_knn_scores(sc, tr, ytr, 4, te, 1, 2, 2, 3, 100.0f), SER_OK);
    double h0 = exp(0.01), h1 = exp((double)0.6f / 100.0) + 1.0;
    assert_true(fabs((double)sc[0] - h0) < 1e-5 && fabs((double)sc[1] - h1) < 1e-5);
    assert_true(ser_eval_topk(sc, &y1, 1, 2).top1 == 100.0);
    // k larger than the train set: all four vote.
    assert_int_equal(ser_eval_knn_scores(sc, tr, ytr, 4, te, 1, 2, 2, 50, T), SER_OK);
    double a0 = e0 + exp(-1.0 / (double)T);
    assert_true(fabs((double)sc[0] - a0) <= 1e-5 * a0);
    // Equal similarities: the lower train index takes the last slot (k = 1, two copies).
    const float tr2[4] = {0, 1, 0, 1}, te2[2] = {0, 1};
    const int ytr2[2] = {1, 0};
    assert_int_equal(ser_eval_knn_scores(sc, tr2, ytr2, 2, te2, 1, 2, 2, 1, T), SER_OK);
    assert_true(sc[1] > 0 && sc[0] == 0);
}

static void test_topk_rank(void **state) {
    (void)state;
    // 7 classes; scores descending by class except a tie between classes 2 and 5.
    const float s[7] = {7, 6, 5, 3, 2, 5, 1};
    assert_int_equal(ser_eval_rank(s, 7, 0), 0);
    assert_int_equal(ser_eval_rank(s, 7, 2), 2);
    assert_int_equal(ser_eval_rank(s, 7, 5), 3);  // tied with class 2, which has the lower index
    assert_int_equal(ser_eval_rank(s, 7, 3), 4);
    assert_int_equal(ser_eval_rank(s, 7, 4), 5);
    assert_int_equal(ser_eval_rank(s, 7, 6), 6);
    float sc[7 * 4];
    for (int i = 0; i < 4; i++) memcpy(sc + 7 * i, s, sizeof s);
    const int y[4] = {0, 3, 4, 5};  // ranks 0, 4, 5, 3
    ser_eval_acc a = ser_eval_topk(sc, y, 4, 7);
    assert_true(fabs(a.top1 - 25.0) < 1e-12 && fabs(a.top5 - 75.0) < 1e-12);
    // Fewer than 5 classes: top-5 is always right.
    const float s3[3] = {0, 1, 2};
    const int y3 = 0;
    a = ser_eval_topk(s3, &y3, 1, 3);
    assert_true(a.top1 == 0 && a.top5 == 100.0);
}

// --- linear --------------------------------------------------------------------------------------

static void test_linear_separable(void **state) {
    (void)state;
    int C = 4, d = 6, n_per = 60, n = n_per * C;
    float *x = malloc(sizeof(float) * (size_t)n * d);
    int *y = malloc(sizeof(int) * (size_t)n);
    s_clusters(x, y, n_per, C, d, 3);
    ser_eval_linear_opts o;
    ser_eval_linear_opts_default(&o);
    o.epochs = 30, o.batch = 32, o.lr = 0.1;
    ser_eval_linear m;
    ser_eval_linear_init(&m, d, C, o.init_std, 7);
    double l0 = ser_eval_linear_loss(&m, x, y, n);
    assert_true(fabs(l0 - log(4.0)) < 0.1);  // near-zero weights: uniform predictions
    double hist[30];
    assert_int_equal(ser_eval_linear_train(&m, x, y, NULL, n, &o, hist), SER_OK);
    double l1 = ser_eval_linear_loss(&m, x, y, n);
    fprintf(stderr, "linear: loss %.4f -> epoch 1 %.4f -> epoch 30 %.4f -> final %.4f\n", l0,
            hist[0], hist[29], l1);
    assert_true(l1 < 0.1 * l0 && hist[29] < hist[0]);
    float *sc = malloc(sizeof(float) * (size_t)n * C);
    ser_eval_linear_scores(&m, sc, x, n);
    assert_true(ser_eval_topk(sc, y, n, C).top1 == 100.0);
    // Deterministic: the same seed gives the same weights.
    ser_eval_linear m2;
    ser_eval_linear_init(&m2, d, C, o.init_std, 7);
    assert_int_equal(ser_eval_linear_train(&m2, x, y, NULL, n, &o, NULL), SER_OK);
    assert_memory_equal(m.w, m2.w, sizeof(float) * (size_t)C * d);
    // A diverging learning rate is reported.
    ser_eval_linear m3;
    ser_eval_linear_init(&m3, d, C, o.init_std, 7);
    for (size_t i = 0; i < (size_t)n * d; i++) x[i] *= 1e18f;
    o.lr = 1e20;
    assert_int_equal(ser_eval_linear_train(&m3, x, y, NULL, n, &o, NULL), SER_ENONFINITE);
    ser_eval_linear_free(&m), ser_eval_linear_free(&m2), ser_eval_linear_free(&m3);
    free(x), free(y), free(sc);
}

static void test_linear_select(void **state) {
    (void)state;
    int C = 3, d = 5, n = 50 * C, nte = 20 * C;
    float *x = malloc(sizeof(float) * (size_t)n * d), *xt = malloc(sizeof(float) * (size_t)nte * d);
    int *y = malloc(sizeof(int) * (size_t)n), *yt = malloc(sizeof(int) * (size_t)nte);
    s_clusters(x, y, 50, C, d, 4);
    s_clusters(xt, yt, 20, C, d, 5);
    uint8_t *isv = malloc((size_t)n);
    ser_eval_val_mask(isv, n, 0.1, 9, NULL, 0);
    int nv = 0;
    for (int i = 0; i < n; i++) nv += isv[i];
    assert_int_equal(nv, 15);
    ser_eval_linear_opts o;
    ser_eval_linear_opts_default(&o);
    o.epochs = 20;
    const double lrs[3] = {1e-6, 0.1, 1e300};  // too small, right, diverging (inf as float)
    ser_eval_select sel;
    ser_eval_linear m;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_eval_linear_select(&m, &sel, x, y, n, d, C, isv, lrs, 3, &o, err), SER_OK);
    assert_int_equal(sel.best, 1);
    fprintf(stderr, "select: val top-1 %g %g %g, picked %d\n", sel.val_top1[0], sel.val_top1[1],
            sel.val_top1[2], sel.best);
    assert_true(sel.val_top1[2] == -1 && sel.val.top1 == 100.0);
    assert_int_equal(sel.n_train + sel.n_val, n);
    float *sc = malloc(sizeof(float) * (size_t)nte * C);
    ser_eval_linear_scores(&m, sc, xt, nte);
    assert_true(ser_eval_topk(sc, yt, nte, C).top1 == 100.0);
    ser_eval_linear_free(&m);
    // Groups stay together: rows i and i + n/2 share group i.
    int *grp = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) grp[i] = i % (n / 2);
    ser_eval_val_mask(isv, n, 0.2, 9, grp, n / 2);
    for (int i = 0; i < n / 2; i++) assert_int_equal(isv[i], isv[i + n / 2]);
    free(x), free(xt), free(y), free(yt), free(isv), free(sc), free(grp);
}

static void test_subset(void **state) {
    (void)state;
    int n = 1000, C = 10;
    int *y = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) y[i] = i < 500 ? 0 : 1 + i % 9;  // class 0 is half the data
    uint32_t *a = malloc(sizeof(uint32_t) * (size_t)n), *b = malloc(sizeof(uint32_t) * (size_t)n);
    assert_int_equal(ser_eval_subset(a, y, n, C, 100, 5), 100);
    assert_int_equal(ser_eval_subset(b, y, n, C, 100, 5), 100);
    assert_memory_equal(a, b, sizeof(uint32_t) * 100);  // deterministic
    int per[10] = {0};
    for (int i = 0; i < 100; i++) {
        per[y[a[i]]]++;
        if (i) assert_true(a[i] > a[i - 1]);  // sorted, distinct
    }
    for (int c = 0; c < C; c++) assert_int_equal(per[c], 10);  // balanced
    assert_int_equal(ser_eval_subset(a, y, n, C, 0, 5), n);
    assert_int_equal(ser_eval_subset(a, y, n, C, 5000, 5), n);
    free(y), free(a), free(b);
}

// --- equivariance ----------------------------------------------------------------------------------

// Token map of a (3, H, W) image with patch size 1: tokens (H, W, 3), optionally weighted by
// 1 + (token index) (not equivariant).
static void s_tokens(float *phi, const float *x, int H, int W, int weighted) {
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++)
            for (int c = 0; c < 3; c++)
                phi[((size_t)i * W + j) * 3 + c] =
                    x[((size_t)c * H + i) * W + j] * (weighted ? (float)(1 + i * W + j) : 1.0f);
}

// Patch mean pooling of a (3, H, W) image, patch P: tokens (H/P, W/P, 3).
static void s_pool(float *phi, const float *x, int H, int W, int P) {
    int gh = H / P, gw = W / P;
    for (int i = 0; i < gh; i++)
        for (int j = 0; j < gw; j++)
            for (int c = 0; c < 3; c++) {
                double s = 0;
                for (int a = 0; a < P; a++)
                    for (int b = 0; b < P; b++)
                        s += (double)x[((size_t)c * H + i * P + a) * W + j * P + b];
                phi[((size_t)i * gw + j) * 3 + c] = (float)(s / (P * P));
            }
}

static void test_equivariance_error(void **state) {
    (void)state;
    int g0 = 8;
    ser_group_elem G[SER_EVAL_MAX_GROUP];
    char names[SER_EVAL_MAX_GROUP][24];
    const double scales[2] = {0.75, 1.25};
    int nG = ser_eval_std_group(G, names, g0, scales, 2);
    assert_int_equal(nG, 6);
    assert_string_equal(names[0], "rot90");
    assert_string_equal(names[3], "hflip");
    assert_string_equal(names[5], "scale1.25");
    assert_int_equal(G[4].gh, 6);   // round(8 * 0.75)
    assert_int_equal(G[5].gh, 10);  // round(8 * 1.25)
    float *x = malloc(sizeof(float) * 3 * 64 * 64), *gx = malloc(sizeof(float) * 3 * 64 * 64);
    float *phi = malloc(sizeof(float) * 64 * 64 * 3), *phig = malloc(sizeof(float) * 64 * 64 * 3);
    float *scr = malloc(sizeof(float) * 64 * 64 * 3);
    ser_test_fill_uniform(x, (size_t)3 * g0 * g0, 11, -1, 1);  // patch 1: H = W = g0
    for (int j = 0; j < nG; j++) {
        int H, W;
        // Exactly equivariant: the pixels themselves.
        assert_int_equal(ser_group_image_action(gx, x, 3, g0, g0, 1, &G[j]), SER_OK);
        ser_group_image_size(&G[j], 1, &H, &W);
        s_tokens(phi, x, g0, g0, 0);
        s_tokens(phig, gx, H, W, 0);
        double e = ser_eval_equiv_error(phi, g0, g0, phig, 3, &G[j], scr);
        fprintf(stderr, "equivariant map   %-10s error %.3g\n", names[j], e);
        assert_true(e >= 0 && e < 1e-6);
        // Not equivariant: position-weighted tokens.
        s_tokens(phi, x, g0, g0, 1);
        s_tokens(phig, gx, H, W, 1);
        e = ser_eval_equiv_error(phi, g0, g0, phig, 3, &G[j], scr);
        fprintf(stderr, "position-weighted %-10s error %.3g\n", names[j], e);
        assert_true(e > 0.05);
    }
    // Patch mean-pooling (P = 4) commutes with the token permutations exactly.
    int P = 4, HH = P * g0;
    ser_test_fill_uniform(x, (size_t)3 * HH * HH, 12, -1, 1);
    for (int j = 0; j < 4; j++) {
        assert_int_equal(ser_group_image_action(gx, x, 3, HH, HH, P, &G[j]), SER_OK);
        s_pool(phi, x, HH, HH, P);
        s_pool(phig, gx, HH, HH, P);
        double e = ser_eval_equiv_error(phi, g0, g0, phig, 3, &G[j], scr);
        assert_true(e >= 0 && e < 1e-6);
    }
    // The identity element gives zero error for any map.
    ser_group_elem id = ser_eval_identity(g0, g0);
    s_tokens(phi, x, g0, g0, 1);
    assert_true(ser_eval_equiv_error(phi, g0, g0, phi, 3, &id, scr) == 0);
    free(x), free(gx), free(phi), free(phig), free(scr);
}

static void test_cosine_consistency(void **state) {
    (void)state;
    float a[16], b[16], z[16] = {0};
    ser_test_fill_uniform(a, 16, 13, -1, 1);
    assert_true(fabs(ser_eval_cosine(a, a, 16) - 1.0) < 1e-12);
    for (int i = 0; i < 16; i++) b[i] = 3.5f * a[i];
    assert_true(fabs(ser_eval_cosine(a, b, 16) - 1.0) < 1e-12);
    for (int i = 0; i < 16; i++) b[i] = -a[i];
    assert_true(fabs(ser_eval_cosine(a, b, 16) + 1.0) < 1e-12);
    assert_true(ser_eval_cosine(a, z, 16) == 0);
    float m[4], s[4];
    float x[12] = {1, 2, 3, 4, 3, 2, 1, 0, 5, 2, 2, 2};
    ser_eval_standardize(x, 3, 4, m, s);
    for (int j = 0; j < 4; j++) {
        double mu = ((double)x[j] + (double)x[4 + j] + (double)x[8 + j]) / 3.0;
        assert_true(fabs(mu) < 1e-6);
    }
    assert_true(s[1] == 1e-6f);  // a constant column
}

// --- the command end to end ------------------------------------------------------------------------

static const char *s_ini =
    "[model]\narch = vit_tiny\ndim = 24\ndepth = 4\nheads = 3\nmlp_hidden = 48\nimg_size = 16\n"
    "patch = 4\ncls_layer = 2\nfreeze_patch_embed = false\n"
    "[moco]\ndim = 16\nmlp_dim = 32\n"
    "[ser]\nproj_dim = 20\nratio = 0.25\n"
    "[data]\nglobal_batch = 8\nshards = 2\nkind = synthetic\n"
    "[run]\nthreads = 1\n";

// Runs `ser eval ARGS`, output to log; returns the exit status.
static int s_ser_eval(const char *args, const char *log) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s eval %s > %s 2>&1", SER_BINARY, args, log);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static cJSON *s_read_json(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("no JSON file %s", path);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    if (!j) fail_msg("%s is not JSON", path);
    return j;
}

static double s_num(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    if (!cJSON_IsNumber(x)) fail_msg("JSON: %s.%s missing or not a number", a, b ? b : "");
    return x->valuedouble;
}

static void s_show(const char *log) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cat %s >&2", log);
    if (system(cmd)) {}
}

static void test_cmd_end_to_end(void **state) {
    (void)state;
    char err[256], root[256], cfgp[256], js[256], log[256], args[2048], ck[256];
    // 4 classes x 12 images in train/ (no val/: 20% held out), 24 x 20 pixels (resized to 16).
    snprintf(root, sizeof root, "%s/data", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 4, 12, 24, 20, 3, err), SER_OK);
    snprintf(cfgp, sizeof cfgp, "%s/job.ini", s_tmp);
    FILE *f = fopen(cfgp, "w");
    assert_non_null(f);
    fputs(s_ini, f);
    fclose(f);
    snprintf(js, sizeof js, "%s/out.json", s_tmp);
    snprintf(log, sizeof log, "%s/eval.log", s_tmp);

    // Every mode on the random initialisation.
    snprintf(args, sizeof args,
             "all --config %s --random-init --data %s --json %s --threads 2 --epochs 5 "
             "--probe-epochs 3 --lr 0.01,0.1 --corruptions contrast,gaussian_noise "
             "--severities 1,5 --k 5",
             cfgp, root, js);
    int rc = s_ser_eval(args, log);
    if (rc) s_show(log);
    assert_int_equal(rc, 0);
    cJSON *j = s_read_json(js);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "checkpoint")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "random_init")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "step")));
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "config_hash");
    assert_true(cJSON_IsString(h) && strlen(h->valuestring) == 16);
    assert_true(s_num(j, "dataset", "train") + s_num(j, "dataset", "test") == 48);
    assert_true(s_num(j, "dataset", "classes") == 4);
    double t1 = s_num(j, "knn", "top1"), t5 = s_num(j, "knn", "top5");
    assert_true(t1 >= 0 && t1 <= 100 && t5 == 100);  // 4 classes: top-5 is always right
    assert_true(s_num(j, "linear", "test_top1") >= 0 && s_num(j, "linear", "lr") > 0);
    assert_true(s_num(j, "linear", "blocks") == 2);  // depth 4 - cls_layer 2 blocks with [CLS]
    double c90 = s_num(j, "equivariance", "consistency.rot90");
    assert_true(c90 >= -1 && c90 <= 1);
    assert_true(s_num(j, "equivariance", "error.scale1.25") > 0);
    assert_true(s_num(j, "equivariance", "error.mean") > 0);
    for (int l = 1; l <= 4; l++) {
        char key[32];
        snprintf(key, sizeof key, "rotation.block%d", l);
        double r = s_num(j, "probe", key);
        assert_true(r >= 0 && r <= 100);
        snprintf(key, sizeof key, "hflip.block%d", l);
        assert_true(s_num(j, "probe", key) >= 0);
    }
    assert_true(s_num(j, "robustness", "clean") == s_num(j, "linear", "test_top1"));
    assert_true(s_num(j, "robustness", "hflip") >= 0);
    assert_true(s_num(j, "robustness", "contrast.s5") >= 0);
    double mc = s_num(j, "robustness", "mean_corruption");
    double m2 = (s_num(j, "robustness", "contrast.mean") + s_num(j, "robustness", "gaussian_noise.mean")) / 2;
    assert_true(fabs(mc - m2) < 1e-9);
    cJSON_Delete(j);

    // A checkpoint (run directory) of the same job, with a val/ split this time.
    char val[300], tmp2[256];
    snprintf(tmp2, sizeof tmp2, "%s/data2", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(tmp2, 4, 3, 16, 16, 4, err), SER_OK);
    snprintf(args, sizeof args, "%s/train", tmp2);
    snprintf(val, sizeof val, "%s/val", root);
    assert_int_equal(rename(args, val), 0);
    ser_config cfg;
    ser_config_defaults(&cfg);
    char e2[SER_ERR_LEN];
    assert_int_equal(ser_config_load_string(&cfg, s_ini, "job.ini", e2), SER_OK);
    ser_trainer t;
    assert_int_equal(ser_trainer_init(&t, &cfg, 10, e2), SER_OK);
    ser_trainer_init_weights(&t, 5);
    snprintf(ck, sizeof ck, "%s/run", s_tmp);
    mkdir(ck, 0755);
    ser_ckpt *c = ser_trainer_ckpt(&t);
    ser_ckpt_pos pos = {7, 0, 0, 0};
    char path[512];
    assert_int_equal(ser_ckpt_save(c, ck, &pos, &t.cfg, 0, path, sizeof path, e2), SER_OK);
    ser_ckpt_destroy(&c);
    ser_trainer_free(&t);
    snprintf(args, sizeof args, "knn --checkpoint %s --data imagefolder:%s --json %s --test-limit 8",
             ck, root, js);
    rc = s_ser_eval(args, log);
    if (rc) s_show(log);
    assert_int_equal(rc, 0);
    j = s_read_json(js);
    assert_true(s_num(j, "step", NULL) == 7);
    const cJSON *cp = cJSON_GetObjectItemCaseSensitive(j, "checkpoint");
    assert_true(cJSON_IsString(cp) && strstr(cp->valuestring, "ckpt-0000000007"));
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "dataset"),
                                                       "test_split");
    assert_string_equal(ts->valuestring, "val");
    assert_true(s_num(j, "dataset", "test") == 8 && s_num(j, "dataset", "train") == 48);
    cJSON_Delete(j);

    // Errors: one line, exit 1 (runtime) or 2 (usage), no crash.
    snprintf(args, sizeof args, "knn --checkpoint %s/nope.safetensors --data %s", s_tmp, root);
    assert_int_equal(s_ser_eval(args, log), 1);
    snprintf(args, sizeof args, "knn --config %s --random-init --data %s/missing", cfgp, s_tmp);
    assert_int_equal(s_ser_eval(args, log), 1);
    snprintf(args, sizeof args, "bogus --config %s --random-init --data %s", cfgp, root);
    assert_int_equal(s_ser_eval(args, log), 2);
    snprintf(args, sizeof args, "knn --data %s", root);
    assert_int_equal(s_ser_eval(args, log), 2);
    snprintf(args, sizeof args, "knn --config %s --random-init", cfgp);  // synthetic [data]
    assert_int_equal(s_ser_eval(args, log), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_knn_separable),      cmocka_unit_test(test_knn_hand),
        cmocka_unit_test(test_topk_rank),          cmocka_unit_test(test_linear_separable),
        cmocka_unit_test(test_linear_select),      cmocka_unit_test(test_subset),
        cmocka_unit_test(test_equivariance_error), cmocka_unit_test(test_cosine_consistency),
        cmocka_unit_test(test_cmd_end_to_end),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
