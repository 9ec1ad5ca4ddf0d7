// test_vit.c — the whole ViT against PyTorch float64 fixtures (square grid with drop path,
// non-square 3x5 grid with an interpolated position embedding, CLS after block 1, and the
// baseline layout on square and non-square grids), plus the properties the distributed
// runtime relies on: bitwise repeatable results at a fixed thread count, and per-sample
// drop-path masks that depend on the global sample id rather than the position in a batch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ser_kernels.h"
#include "ser_safetensors.h"
#include "ser_test.h"
#include "ser_vit.h"

#define RTOL 1e-4f
// atol: 1e-5 of the tensor's largest magnitude, for entries that cancel to near zero (gradients
// of a whole network sum thousands of terms of both signs).
static float s_atol(const float *ref, size_t n) { return 1e-5f * ser_test_maxabs(ref, n) + 1e-7f; }

static int s_meta_int(const ser_st_file *f, const char *key) {
    const char *v = ser_st_meta(f, key);
    if (!v) fail_msg("fixture metadata '%s' missing", key);
    return atoi(v);
}

static void s_config_from_meta(ser_vit_config *c, const ser_st_file *f) {
    memset(c, 0, sizeof *c);
    c->img_size = s_meta_int(f, "img_size");
    c->patch = s_meta_int(f, "patch");
    c->dim = s_meta_int(f, "dim");
    c->depth = s_meta_int(f, "depth");
    c->heads = s_meta_int(f, "heads");
    c->mlp_hidden = s_meta_int(f, "hidden");
    c->cls_layer = s_meta_int(f, "cls_layer");
    c->drop_path_rate = (float)atof(ser_st_meta(f, "drop_path_rate"));
    c->ln_eps = 1e-6f;
}

static void s_run_case(const char *file) {
    ser_st_file *f = ser_test_open_fixture(file);
    ser_vit_config cfg;
    s_config_from_meta(&cfg, f);
    int B = s_meta_int(f, "batch"), H = s_meta_int(f, "H"), W = s_meta_int(f, "W");
    int n_last = s_meta_int(f, "n_last");
    char err[SER_ERR_LEN];
    ser_vit v;
    assert_int_equal(ser_vit_init(&v, &cfg, err), 0);
    // PyTorch's state_dict loads strictly into ser's parameter table.
    int rc = ser_st_load_ptab(f, v.tabp, v.params, "param.", 1, err);
    if (rc) fail_msg("load_ptab: %s", err);
    float *img = ser_test_tensor(f, "img", NULL), *masks = ser_test_tensor(f, "drop_masks", NULL);
    ser_vit_fwd_opts o = {.train = cfg.drop_path_rate > 0, .drop_masks = masks, .n_last = n_last};
    ser_vit_acts a;
    memset(&a, 0, sizeof a);
    rc = ser_vit_forward(&v, &a, img, B, H, W, &o, err);
    if (rc) fail_msg("forward: %s", err);
    int ok = 1;
    size_t n;
    float *ref = ser_test_tensor(f, "out.cls", &n);
    ok &= ser_test_allclose("out.cls", a.cls, ref, n, s_atol(ref, n), RTOL);
    free(ref);
    float *dmap = NULL;
    if (!v.baseline) {
        ref = ser_test_tensor(f, "out.map", &n);
        ok &= ser_test_allclose("out.map", a.map, ref, n, s_atol(ref, n), RTOL);
        free(ref);
        dmap = ser_test_tensor(f, "dmap", NULL);
    }
    if (n_last) {
        ref = ser_test_tensor(f, "out.last_cls", &n);
        ok &= ser_test_allclose("out.last_cls", a.last_cls, ref, n, s_atol(ref, n), RTOL);
        free(ref);
    }
    float *dcls = ser_test_tensor(f, "dcls", NULL);
    ser_vit_zero_grad(&v);
    ser_vit_backward(&v, &a, dcls, dmap);
    char key[SER_TINFO_NAME_LEN + 8];
    for (int i = 0; i < v.tabp->n; i++) {
        const ser_tinfo *t = &v.tabp->t[i];
        snprintf(key, sizeof key, "grad.%s", t->name);
        ref = ser_test_tensor(f, key, &n);
        assert_int_equal(n, t->numel);
        ok &= ser_test_allclose(key, v.grads + t->offset, ref, n, s_atol(ref, n), RTOL);
        free(ref);
    }
    assert_true(ok);
    free(img), free(masks), free(dcls), free(dmap);
    ser_vit_acts_free(&a);
    ser_vit_free(&v);
    ser_st_destroy(&f);
}

static void test_fixture_square_drop_path(void **s) { (void)s, s_run_case("vit_square.safetensors"); }
static void test_fixture_nonsquare(void **s) { (void)s, s_run_case("vit_nonsquare_3x5.safetensors"); }
static void test_fixture_cls1(void **s) { (void)s, s_run_case("vit_cls1.safetensors"); }
static void test_fixture_baseline(void **s) { (void)s, s_run_case("vit_baseline.safetensors"); }
static void test_fixture_baseline_nonsquare(void **s) {
    (void)s, s_run_case("vit_baseline_3x5.safetensors");
}

// --- properties ------------------------------------------------------------------------------
static void s_tiny(ser_vit *v, int cls_layer, float dpr) {
    ser_vit_config c;
    assert_int_equal(ser_vit_config_preset(&c, "vit_tiny", 16, 4), 0);
    c.dim = 24, c.heads = 3, c.depth = 4, c.mlp_hidden = 48, c.cls_layer = cls_layer;
    c.drop_path_rate = dpr;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_init(v, &c, err), 0);
    ser_vit_init_weights(v, SER_VIT_INIT_GENERIC, 5);
}

static void test_repeatable_bitwise(void **state) {
    (void)state;
    ser_vit v;
    s_tiny(&v, 2, 0.2f);
    int B = 4, H = 12, W = 20;
    float *img = malloc(sizeof(float) * B * 3 * H * W), *dcls = malloc(sizeof(float) * B * 24);
    float *dmap = malloc(sizeof(float) * B * 15 * 24);
    ser_test_fill_uniform(img, (size_t)B * 3 * H * W, 1, -2, 2);
    ser_test_fill_uniform(dcls, (size_t)B * 24, 2, -1, 1);
    ser_test_fill_uniform(dmap, (size_t)B * 15 * 24, 3, -1, 1);
    float *g[2];
    char err[SER_ERR_LEN];
    for (int run = 0; run < 2; run++) {
        ser_vit_acts a;
        memset(&a, 0, sizeof a);
        ser_vit_fwd_opts o = {.train = 1, .seed = 9, .step = 3};
        assert_int_equal(ser_vit_forward(&v, &a, img, B, H, W, &o, err), 0);
        ser_vit_zero_grad(&v);
        ser_vit_backward(&v, &a, dcls, dmap);
        g[run] = malloc(sizeof(float) * v.tabp->total);
        memcpy(g[run], v.grads, sizeof(float) * v.tabp->total);
        ser_vit_acts_free(&a);
    }
    assert_memory_equal(g[0], g[1], sizeof(float) * v.tabp->total);
    ser_kernels_set_threads(2);
    free(g[0]), free(g[1]), free(img), free(dcls), free(dmap);
    ser_vit_free(&v);
}

// A sample's drop-path mask is keyed by its global id: computing it alone (id 9) or inside a
// batch (ids 7, 9) gives the same output, so any shard split reproduces one process.
static void test_drop_path_keyed_by_sample_id(void **state) {
    (void)state;
    ser_vit v;
    s_tiny(&v, 2, 0.5f);
    size_t per = 3 * 16 * 16;
    float *img = malloc(sizeof(float) * 2 * per);
    ser_test_fill_uniform(img, 2 * per, 4, -2, 2);
    uint32_t ids2[2] = {7, 9}, ids1[1] = {9};
    ser_vit_acts a2, a1;
    memset(&a2, 0, sizeof a2);
    memset(&a1, 0, sizeof a1);
    char err[SER_ERR_LEN];
    ser_vit_fwd_opts o2 = {.train = 1, .seed = 1, .step = 5, .sample_ids = ids2};
    ser_vit_fwd_opts o1 = {.train = 1, .seed = 1, .step = 5, .sample_ids = ids1};
    assert_int_equal(ser_vit_forward(&v, &a2, img, 2, 16, 16, &o2, err), 0);
    assert_int_equal(ser_vit_forward(&v, &a1, img + per, 1, 16, 16, &o1, err), 0);
    SER_ASSERT_CLOSE("cls(id 9) alone vs in batch", a1.cls, a2.cls + 24, 24, 1e-6f, 1e-5f);
    // And the masks really differ between samples/steps (the test is not vacuous).
    int differ = 0;
    for (int i = 0; i < 4 * 2; i++) differ |= a2.dps[i * 2] != a2.dps[i * 2 + 1];
    assert_true(differ);
    free(img);
    ser_vit_acts_free(&a1);
    ser_vit_acts_free(&a2);
    ser_vit_free(&v);
}

static void test_frozen_patch_embed(void **state) {
    (void)state;
    ser_vit_config c;
    ser_vit_config_preset(&c, "vit_tiny", 16, 4);
    c.depth = 2, c.cls_layer = 1, c.freeze_patch_embed = 1;
    ser_vit v;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_init(&v, &c, err), 0);
    ser_vit_init_weights(&v, SER_VIT_INIT_MOCO, 3);
    float img[2 * 3 * 16 * 16], dcls[2 * 192];
    ser_test_fill_uniform(img, sizeof img / 4, 1, -1, 1);
    ser_test_fill_uniform(dcls, sizeof dcls / 4, 2, -1, 1);
    ser_vit_acts a;
    memset(&a, 0, sizeof a);
    assert_int_equal(ser_vit_forward(&v, &a, img, 2, 16, 16, NULL, err), 0);
    ser_vit_zero_grad(&v);
    ser_vit_backward(&v, &a, dcls, NULL);
    const ser_tinfo *pw = ser_ptab_find(v.tabp, "patch_embed.proj.weight");
    const ser_tinfo *pos = ser_ptab_find(v.tabp, "pos_embed");
    assert_true(pw->flags & SER_TINFO_FROZEN);
    assert_true(ser_test_maxabs(v.grads + pw->offset, pw->numel) == 0.0f);
    assert_true(ser_test_maxabs(v.grads + pos->offset, pos->numel) > 0.0f);
    ser_vit_acts_free(&a);
    ser_vit_free(&v);
}

static void s_moments(const float *x, size_t n, double *mean, double *std, double *maxabs) {
    double s = 0, s2 = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        s += (double)x[i];
        s2 += (double)x[i] * (double)x[i];
        m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    }
    *mean = s / n, *std = sqrt(s2 / n - (s / n) * (s / n)), *maxabs = m;
}

static void test_init_schemes(void **state) {
    (void)state;
    ser_vit_config c;
    ser_vit_config_preset(&c, "vit_small", 224, 16);
    ser_vit v;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_init(&v, &c, err), 0);
    double mean, std, mx;
    // MoCo (§1.7): qkv U(+-sqrt(6/(C+C))), fc1 xavier U(+-sqrt(6/(C+4C))), cls N(0, 1e-6).
    ser_vit_init_weights(&v, SER_VIT_INIT_MOCO, 1);
    const ser_tinfo *t = ser_ptab_find(v.tabp, "blocks.0.attn.qkv.weight");
    s_moments(v.params + t->offset, t->numel, &mean, &std, &mx);
    assert_true(mx <= sqrt(6.0 / 768) && mx > 0.99 * sqrt(6.0 / 768));
    assert_true(fabs(std - sqrt(6.0 / 768) / sqrt(3.0)) < 1e-3);
    t = ser_ptab_find(v.tabp, "blocks.5.mlp.fc1.weight");
    s_moments(v.params + t->offset, t->numel, &mean, &std, &mx);
    assert_true(mx <= sqrt(6.0 / (384 + 1536)) && mx > 0.99 * sqrt(6.0 / (384 + 1536)));
    t = ser_ptab_find(v.tabp, "cls_token");
    s_moments(v.params + t->offset, t->numel, &mean, &std, &mx);
    assert_true(std > 5e-7 && std < 2e-6);
    t = ser_ptab_find(v.tabp, "patch_embed.proj.weight");
    s_moments(v.params + t->offset, t->numel, &mean, &std, &mx);
    assert_true(mx <= 1.0 / sqrt(768.0) && mx > 0.99 / sqrt(768.0));
    // Generic: Linear trunc_normal(.02), LayerNorm (1, 0), biases 0.
    ser_vit_init_weights(&v, SER_VIT_INIT_GENERIC, 1);
    t = ser_ptab_find(v.tabp, "blocks.3.attn.proj.weight");
    s_moments(v.params + t->offset, t->numel, &mean, &std, &mx);
    assert_true(fabs(std - 0.02) < 5e-4 && fabs(mean) < 5e-4);
    t = ser_ptab_find(v.tabp, "blocks.3.norm2.weight");
    s_moments(v.params + t->offset, t->numel, &mean, &std, &mx);
    assert_true(mean == 1.0 && std == 0.0);
    t = ser_ptab_find(v.tabp, "blocks.3.mlp.fc2.bias");
    assert_true(ser_test_maxabs(v.params + t->offset, t->numel) == 0.0f);
    // Same seed, same weights; another seed, other weights.
    float *w1 = malloc(sizeof(float) * v.tabp->total);
    memcpy(w1, v.params, sizeof(float) * v.tabp->total);
    ser_vit_init_weights(&v, SER_VIT_INIT_GENERIC, 1);
    assert_memory_equal(w1, v.params, sizeof(float) * v.tabp->total);
    ser_vit_init_weights(&v, SER_VIT_INIT_GENERIC, 2);
    assert_true(memcmp(w1, v.params, sizeof(float) * v.tabp->total) != 0);
    free(w1);
    ser_vit_free(&v);
}

static void test_param_names_and_count(void **state) {
    (void)state;
    ser_vit_config c;
    ser_vit_config_preset(&c, "vit_small", 224, 16);
    ser_vit v;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_init(&v, &c, err), 0);
    size_t n = 0;
    for (int i = 0; i < v.tabp->n; i++) n += v.tabp->t[i].numel;
    // timm ViT-S/16 has 21,665,664 parameters with a 197-row pos_embed and no head; the SER
    // layout has 196 rows (-384) and adds norm_equiv (+768).
    assert_int_equal(n, 21665664 - 384 + 768);
    assert_non_null(ser_ptab_find(v.tabp, "blocks.11.mlp.fc2.bias"));
    assert_non_null(ser_ptab_find(v.tabp, "norm_equiv.weight"));
    const ser_tinfo *pos = ser_ptab_find(v.tabp, "pos_embed");
    assert_int_equal(pos->shape[1], 196);
    ser_vit_free(&v);
    c.cls_layer = 12;  // baseline: CLS position row, no norm_equiv
    assert_int_equal(ser_vit_init(&v, &c, err), 0);
    assert_null(ser_ptab_find(v.tabp, "norm_equiv.weight"));
    assert_int_equal(ser_ptab_find(v.tabp, "pos_embed")->shape[1], 197);
    ser_vit_free(&v);
}

// Two encoders in one table and arena (as the momentum encoder sits beside the student):
// prefixed names, and init/zero_grad touch only their own entries.
static void test_shared_table_prefixes(void **state) {
    (void)state;
    ser_vit_config c;
    ser_vit_config_preset(&c, "vit_tiny", 16, 4);
    c.depth = 2, c.cls_layer = 1;
    ser_ptab tab;
    ser_ptab_init(&tab);
    ser_vit a, b;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_register(&a, &c, &tab, "base_encoder.", err), 0);
    size_t split = tab.total;
    assert_int_equal(ser_vit_register(&b, &c, &tab, "momentum_encoder.", err), 0);
    assert_non_null(ser_ptab_find(&tab, "base_encoder.blocks.1.mlp.fc2.weight"));
    assert_non_null(ser_ptab_find(&tab, "momentum_encoder.norm_equiv.bias"));
    float *params = calloc(tab.total, sizeof(float)), *grads = calloc(tab.total, sizeof(float));
    ser_vit_bind(&a, params, grads);
    ser_vit_bind(&b, params, grads);
    ser_vit_init_weights(&a, SER_VIT_INIT_MOCO, 1);
    assert_true(ser_test_maxabs(params + split, tab.total - split) == 0.0f);
    ser_vit_init_weights(&b, SER_VIT_INIT_MOCO, 1);
    // Same scheme and seed: the two encoders start identical (as after the reference's copy).
    assert_memory_equal(params, params + split, split * sizeof(float));
    for (size_t i = 0; i < tab.total; i++) grads[i] = 1.0f;
    ser_vit_zero_grad(&b);
    assert_true(grads[0] == 1.0f && grads[split - 1] == 1.0f && grads[split] == 0.0f);
    size_t off, n = ser_vit_span(&b, &off);
    assert_int_equal(off, split);
    assert_int_equal(off + n, tab.total);
    free(params), free(grads);
    ser_vit_free(&a);
    ser_vit_free(&b);
    ser_ptab_free(&tab);
}

static void test_bad_inputs(void **state) {
    (void)state;
    ser_vit_config c;
    char err[SER_ERR_LEN];
    ser_vit v;
    assert_int_equal(ser_vit_config_preset(&c, "vit_huge", 224, 16), SER_EINVAL);
    ser_vit_config_preset(&c, "vit_tiny", 30, 4);
    assert_int_equal(ser_vit_init(&v, &c, err), SER_ECONFIG);
    assert_non_null(strstr(err, "img_size"));
    ser_vit_config_preset(&c, "vit_tiny", 32, 4);
    c.heads = 5;
    assert_int_equal(ser_vit_init(&v, &c, err), SER_ECONFIG);
    assert_non_null(strstr(err, "heads"));
    ser_vit_config_preset(&c, "vit_tiny", 32, 4);
    c.cls_layer = 13;
    assert_int_equal(ser_vit_init(&v, &c, err), SER_ECONFIG);
    assert_non_null(strstr(err, "cls_layer"));
    ser_vit_config_preset(&c, "vit_tiny", 32, 4);
    c.depth = 2, c.cls_layer = 1;
    assert_int_equal(ser_vit_init(&v, &c, err), 0);
    float img[3 * 30 * 32] = {0};
    ser_vit_acts a;
    memset(&a, 0, sizeof a);
    assert_int_equal(ser_vit_forward(&v, &a, img, 1, 30, 32, NULL, err), SER_ESHAPE);
    assert_non_null(strstr(err, "30x32"));
    ser_vit_fwd_opts o = {.n_last = 2};  // only one block has a CLS token
    assert_int_equal(ser_vit_forward(&v, &a, img, 1, 32, 32, &o, err), SER_EINVAL);
    ser_vit_acts_free(&a);
    ser_vit_free(&v);
}

// C writes weights, an image and its output; PyTorch loads the weights with strict=True into
// the reference model and must reproduce the output.
static void test_torch_loads_our_weights(void **state) {
    (void)state;
    if (!ser_test_have_torch()) {
        print_message("SKIP: /usr/bin/python3 cannot import torch; PyTorch strict load not checked\n");
        skip();
    }
    ser_vit v;
    s_tiny(&v, 2, 0.0f);
    int B = 2, H = 12, W = 20;
    float *img = malloc(sizeof(float) * B * 3 * H * W);
    ser_test_fill_uniform(img, (size_t)B * 3 * H * W, 8, -2, 2);
    ser_vit_acts a;
    memset(&a, 0, sizeof a);
    char err[SER_ERR_LEN], dir[] = "/tmp/ser_vit_XXXXXX", path[256], cmd[2048];
    assert_int_equal(ser_vit_forward(&v, &a, img, B, H, W, NULL, err), 0);
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ser_st_writer *wr = ser_st_writer_new();
    ser_st_writer_add_ptab(wr, v.tabp, v.params, "");
    int64_t ishape[4] = {B, 3, H, W}, cshape[2] = {B, 24}, mshape[3] = {B, 15, 24};
    ser_st_writer_add(wr, "__test__.img", SER_DT_F32, 4, ishape, img);
    ser_st_writer_add(wr, "__test__.cls", SER_DT_F32, 2, cshape, a.cls);
    ser_st_writer_add(wr, "__test__.map", SER_DT_F32, 3, mshape, a.map);
    ser_st_writer_meta(wr, "config", "img_size=16 patch=4 dim=24 depth=4 heads=3 hidden=48 cls_layer=2");
    assert_int_equal(ser_st_writer_save(wr, path, err), 0);
    ser_st_writer_destroy(&wr);
    char script[1024];
    ser_test_fixture_path(script, sizeof script, "../check_vit_load.py");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s", script, path);
    int rc = system(cmd);
    unlink(path);
    rmdir(dir);
    assert_int_equal(rc, 0);
    free(img);
    ser_vit_acts_free(&a);
    ser_vit_free(&v);
}

int main(void) {
    ser_kernels_set_threads(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_square_drop_path),
        cmocka_unit_test(test_fixture_nonsquare),
        cmocka_unit_test(test_fixture_cls1),
        cmocka_unit_test(test_fixture_baseline),
        cmocka_unit_test(test_fixture_baseline_nonsquare),
        cmocka_unit_test(test_repeatable_bitwise),
        cmocka_unit_test(test_drop_path_keyed_by_sample_id),
        cmocka_unit_test(test_frozen_patch_embed),
        cmocka_unit_test(test_init_schemes),
        cmocka_unit_test(test_param_names_and_count),
        cmocka_unit_test(test_shared_table_prefixes),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_torch_loads_our_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
