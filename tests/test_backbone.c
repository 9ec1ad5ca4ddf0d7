// test_backbone.c — the standalone student backbone (common/train/ser_backbone.h) and `ser export`:
// for a tiny job of each method, a checkpoint (file and run directory) and a `ser step`-style
// state file give bitwise the student's backbone and the same forward output; the random
// baseline is bitwise a fresh job's student; missing config / missing tensor / wrong shape /
// garbage / corrupt files are refused with messages naming the problem. `ser export` writes
// timm names and shapes with the layout in the metadata, the full state with the reference
// names, and refuses bad arguments without leaving files behind.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ser_backbone.h"
#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_safetensors.h"
#include "ser_test.h"
#include "ser_train.h"

static char s_root[64];
static int s_ndirs;

// The tiny model of tests/reference/make_fixtures.py, with small heads for every method.
static const char *s_ini =
    "[model]\narch = vit_tiny\ndim = 24\ndepth = 4\nheads = 3\nmlp_hidden = 48\nimg_size = 16\n"
    "patch = 4\ncls_layer = 2\nfreeze_patch_embed = false\n"
    "[moco]\ndim = 16\nmlp_dim = 32\n"
    "[dino]\nout_dim = 40\nhidden_dim = 32\nbottleneck_dim = 16\n"
    "[barlow]\nproj_dim = 32\n"
    "[ser]\nproj_dim = 20\nratio = 0.25\n"
    "[data]\nglobal_batch = 8\nshards = 2\n"
    "[run]\nthreads = 1\n[cluster]\nstatus_port = -1\n";

static const char *s_methods[3] = {"moco", "dino", "barlow"};

static int s_setup(void **state) {
    (void)state;
    ser_log_set_level(SER_LL_ERROR);
    snprintf(s_root, sizeof s_root, "/tmp/ser-backbone-XXXXXX");
    return mkdtemp(s_root) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    ser_test_rm_rf(s_root);
    return 0;
}

static const char *s_path(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "%s/%s%d", s_root, tag, s_ndirs++);
    return buf;
}

static void s_job(ser_config *cfg, const char *method, const char *init) {
    char err[SER_ERR_LEN], kv[64];
    ser_config_defaults(cfg);
    int rc = ser_config_load_string(cfg, s_ini, "test.ini", err);
    if (rc) fail_msg("%s", err);
    snprintf(kv, sizeof kv, "method.name=%s", method);
    assert_int_equal(ser_config_set_arg(cfg, kv, err), SER_OK);
    if (init) {
        snprintf(kv, sizeof kv, "model.init=%s", init);
        assert_int_equal(ser_config_set_arg(cfg, kv, err), SER_OK);
    }
    assert_int_equal(ser_config_validate(cfg, err), SER_OK);
}

static ser_vit *s_student(ser_trainer *t) {
    return t->mdl.student;
}

// A trainer of the job with weights that no init gives: every table shifted differently, so a
// load that picks the teacher / momentum encoder or a random init cannot pass.
static void s_trainer(ser_trainer *t, const ser_config *cfg, uint64_t seed) {
    char err[SER_ERR_LEN];
    int rc = ser_trainer_init(t, cfg, 10, err);
    if (rc) fail_msg("trainer: %s", err);
    ser_trainer_init_weights(t, seed);
    for (int k = 0; k < t->ntabs; k++)
        for (int j = 0; j < t->tabs[k]->n; j++) {
            const ser_tinfo *ti = &t->tabs[k]->t[j];
            if (ti->flags & SER_TINFO_COUNTER) continue;  // BatchNorm's num_batches_tracked
            for (size_t i = 0; i < ti->numel; i++)
                t->arenas[k][ti->offset + i] += 0.001f * (float)(k + 1) * (float)((i * 7919u) % 13u);
        }
}

// Every backbone tensor of b equals the student's bitwise.
static void s_assert_same_backbone(const ser_backbone *b, ser_trainer *t) {
    const ser_vit *sv = s_student(t);
    const ser_ptab *bt = b->vit.tabp;
    assert_int_equal(bt->n, sv->count);
    for (int i = 0; i < bt->n; i++) {
        const ser_tinfo *bi = &bt->t[i], *si = &sv->tabp->t[sv->first + i];
        assert_string_equal(bi->name, si->name + sv->prefix_len);
        assert_int_equal(bi->numel, si->numel);
        if (memcmp(b->vit.params + bi->offset, sv->params + si->offset,
                   sizeof(float) * bi->numel) != 0)
            fail_msg("%s differs from the student's %s", bi->name, si->name);
    }
}

// The final [CLS] output and the SER map of both ViTs on the same images, bitwise.
static void s_assert_same_forward(ser_vit *a, ser_vit *b) {
    int B = 2, H = 16, W = 16;
    size_t n = (size_t)B * 3 * H * W;
    float *img = malloc(sizeof(float) * n);
    ser_test_fill_uniform(img, n, 42, -1.0f, 1.0f);
    ser_vit_acts aa = {0}, ab = {0};
    ser_vit_fwd_opts o = {0};
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_forward(a, &aa, img, B, H, W, &o, err), SER_OK);
    assert_int_equal(ser_vit_forward(b, &ab, img, B, H, W, &o, err), SER_OK);
    int C = a->cfg.dim;
    assert_memory_equal(aa.cls, ab.cls, sizeof(float) * (size_t)B * C);
    if (!a->baseline) assert_memory_equal(aa.map, ab.map, sizeof(float) * (size_t)B * aa.NP * C);
    ser_vit_acts_free(&aa);
    ser_vit_acts_free(&ab);
    free(img);
}

static void s_save_ckpt(ser_trainer *t, const char *dir, int64_t step, char *path, size_t n) {
    char err[SER_ERR_LEN];
    ser_ckpt *ck = ser_trainer_ckpt(t);
    ser_ckpt_pos pos = {step, 0, 0, 0};
    int rc = ser_ckpt_save(ck, dir, &pos, &t->cfg, 0, path, n, err);
    ser_ckpt_destroy(&ck);
    if (rc) fail_msg("save: %s", err);
}

static void s_save_state(ser_trainer *t, const char *path) {
    char err[SER_ERR_LEN];
    float losses[3] = {1, 2, 3};
    int rc = ser_trainer_write(t, path, NULL, losses, 1, 0, err);
    if (rc) fail_msg("state: %s", err);
}

// --- loading -------------------------------------------------------------------------------------
static void test_load_each_method(void **state) {
    (void)state;
    for (int m = 0; m < 3; m++) {
        ser_config cfg;
        ser_trainer t;
        s_job(&cfg, s_methods[m], NULL);
        s_trainer(&t, &cfg, 11 + (uint64_t)m);
        char dir[128], ck[512], st[128], err[SER_ERR_LEN];
        s_path(dir, sizeof dir, "run");
        s_save_ckpt(&t, dir, 30, ck, sizeof ck);
        s_path(st, sizeof st, "state");
        s_save_state(&t, st);

        ser_backbone b;
        // The checkpoint file: the config comes from its metadata.
        int rc = ser_backbone_load(&b, ck, NULL, err);
        if (rc) fail_msg("%s: %s", s_methods[m], err);
        assert_int_equal(b.method, cfg.method.name);
        assert_int_equal(b.step, 30);
        assert_true(ser_config_equal(&b.cfg, &cfg));
        s_assert_same_backbone(&b, &t);
        s_assert_same_forward(s_student(&t), &b.vit);
        ser_backbone_free(&b);
        // The run directory.
        assert_int_equal(ser_backbone_load(&b, dir, NULL, err), SER_OK);
        assert_int_equal(b.step, 30);
        s_assert_same_backbone(&b, &t);
        ser_backbone_free(&b);
        // The state file needs the config ...
        rc = ser_backbone_load(&b, st, NULL, err);
        assert_int_equal(rc, SER_ECONFIG);
        assert_non_null(strstr(err, "config"));
        assert_non_null(strstr(err, st));
        ser_backbone_free(&b);  // zeroed on error: safe
        // ... and with it loads the same.
        rc = ser_backbone_load(&b, st, &cfg, err);
        if (rc) fail_msg("%s state: %s", s_methods[m], err);
        assert_int_equal(b.step, -1);
        s_assert_same_backbone(&b, &t);
        s_assert_same_forward(s_student(&t), &b.vit);
        ser_backbone_free(&b);
        ser_trainer_free(&t);
    }
}

// init_random = the student of a fresh job with the same seed, for every method and scheme.
static void test_init_random_is_fresh_student(void **state) {
    (void)state;
    const char *inits[2] = {"moco", "generic"};
    for (int m = 0; m < 3; m++)
        for (int s = 0; s < 2; s++) {
            ser_config cfg;
            ser_trainer t;
            char err[SER_ERR_LEN];
            s_job(&cfg, s_methods[m], inits[s]);
            assert_int_equal(ser_trainer_init(&t, &cfg, 10, err), SER_OK);
            ser_trainer_init_weights(&t, 1234);
            ser_backbone b, other;
            assert_int_equal(ser_backbone_init_random(&b, &cfg, 1234, err), SER_OK);
            assert_int_equal(b.step, -1);
            assert_int_equal(b.method, cfg.method.name);
            s_assert_same_backbone(&b, &t);
            s_assert_same_forward(s_student(&t), &b.vit);
            // Another seed gives other weights.
            assert_int_equal(ser_backbone_init_random(&other, &cfg, 1235, err), SER_OK);
            size_t n = b.vit.tabp->total;
            assert_true(memcmp(b.vit.params, other.vit.params, sizeof(float) * n) != 0);
            ser_backbone_free(&other);
            ser_backbone_free(&b);
            ser_trainer_free(&t);
        }
    ser_backbone z;
    memset(&z, 0, sizeof z);
    ser_backbone_free(&z);  // safe on a zeroed struct
    ser_backbone_free(NULL);
}

// The newest checkpoint of a directory is corrupt: the older valid one is used, as resume does.
static void test_dir_walks_back(void **state) {
    (void)state;
    ser_config cfg;
    ser_trainer t;
    char dir[128], ck1[512], ck2[512], err[SER_ERR_LEN];
    s_job(&cfg, "moco", NULL);
    s_trainer(&t, &cfg, 5);
    s_path(dir, sizeof dir, "run");
    s_save_ckpt(&t, dir, 10, ck1, sizeof ck1);
    for (size_t i = 0; i < t.tab->total; i++) t.params[i] += 1.0f;
    s_save_ckpt(&t, dir, 20, ck2, sizeof ck2);
    ser_backbone b;
    assert_int_equal(ser_backbone_load(&b, dir, NULL, err), SER_OK);
    assert_int_equal(b.step, 20);
    s_assert_same_backbone(&b, &t);
    ser_backbone_free(&b);
    // Flip one byte of the newest one's data.
    FILE *f = fopen(ck2, "r+b");
    assert_non_null(f);
    fseek(f, -5, SEEK_END);
    int c = fgetc(f);
    fseek(f, -5, SEEK_END);
    fputc(c ^ 0x40, f);
    fclose(f);
    assert_int_equal(ser_backbone_load(&b, ck2, NULL, err), SER_EHASH);
    assert_non_null(strstr(err, "content hash"));
    assert_int_equal(ser_backbone_load(&b, dir, NULL, err), SER_OK);
    assert_int_equal(b.step, 10);
    ser_backbone_free(&b);
    ser_trainer_free(&t);
}

// Copies every tensor of src except `drop` into path (no config metadata); tensor `reshape`
// (if not NULL) is written with its first two dims merged.
static void s_copy_without(const char *src, const char *path, const char *drop,
                           const char *reshape) {
    char err[SER_ERR_LEN];
    ser_st_file *f = NULL;
    assert_int_equal(ser_st_open(&f, src, err), SER_OK);
    ser_st_writer *w = ser_st_writer_new();
    int64_t shape[SER_ST_MAX_DIM];
    for (int i = 0; i < ser_st_count(f); i++) {
        const ser_st_entry *e = ser_st_at(f, i);
        if (drop && strcmp(e->name, drop) == 0) continue;
        if (reshape && strcmp(e->name, reshape) == 0 && e->ndim >= 2) {
            shape[0] = e->shape[0] * e->shape[1];
            for (int d = 2; d < e->ndim; d++) shape[d - 1] = e->shape[d];
            ser_st_writer_add(w, e->name, e->dtype, e->ndim - 1, shape, e->data);
        } else {
            ser_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, e->data);
        }
    }
    assert_int_equal(ser_st_writer_save(w, path, err), SER_OK);
    ser_st_writer_destroy(&w);
    ser_st_destroy(&f);
}

static void test_refusals(void **state) {
    (void)state;
    ser_config cfg;
    ser_trainer t;
    char dir[128], ck[512], st[128], p[128], err[SER_ERR_LEN];
    s_job(&cfg, "dino", NULL);
    s_trainer(&t, &cfg, 9);
    s_path(dir, sizeof dir, "run");
    s_save_ckpt(&t, dir, 3, ck, sizeof ck);
    s_path(st, sizeof st, "state");
    s_save_state(&t, st);
    ser_backbone b;

    // A missing tensor: named, with the file.
    s_path(p, sizeof p, "missing");
    s_copy_without(st, p, "student.backbone.blocks.1.mlp.fc2.bias", NULL);
    assert_int_equal(ser_backbone_load(&b, p, &cfg, err), SER_ENOENT);
    assert_non_null(strstr(err, "student.backbone.blocks.1.mlp.fc2.bias"));
    assert_non_null(strstr(err, p));
    // The teacher alone is not the student.
    s_path(p, sizeof p, "shape");
    s_copy_without(st, p, NULL, "student.backbone.pos_embed");
    assert_int_equal(ser_backbone_load(&b, p, &cfg, err), SER_ESHAPE);
    assert_non_null(strstr(err, "student.backbone.pos_embed"));
    // A config of another shape for a good checkpoint: the shape is named.
    ser_config wide = cfg;
    assert_int_equal(ser_config_set_arg(&wide, "model.dim=30", err), SER_OK);
    assert_int_equal(ser_config_set_arg(&wide, "model.heads=3", err), SER_OK);
    assert_int_equal(ser_backbone_load(&b, ck, &wide, err), SER_ESHAPE);
    assert_non_null(strstr(err, "student.backbone."));
    // The wrong method's config: the prefix is absent.
    ser_config moco = cfg;
    assert_int_equal(ser_config_set_arg(&moco, "method.name=moco", err), SER_OK);
    assert_int_equal(ser_backbone_load(&b, ck, &moco, err), SER_ENOENT);
    assert_non_null(strstr(err, "base_encoder."));
    // Garbage, an empty file, a missing path, an empty directory.
    s_path(p, sizeof p, "garbage");
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    for (int i = 0; i < 1000; i++) fputc((i * 37) & 0xff, f);
    fclose(f);
    assert_int_equal(ser_backbone_load(&b, p, &cfg, err), SER_EFORMAT);
    assert_non_null(strstr(err, p));
    s_path(p, sizeof p, "empty");
    f = fopen(p, "wb");
    fclose(f);
    assert_true(ser_backbone_load(&b, p, &cfg, err) < 0);
    assert_non_null(strstr(err, p));
    s_path(p, sizeof p, "nothing");
    assert_int_equal(ser_backbone_load(&b, p, NULL, err), SER_ENOENT);
    assert_non_null(strstr(err, p));
    assert_int_equal(mkdir(p, 0755), 0);
    assert_int_equal(ser_backbone_load(&b, p, NULL, err), SER_ENOENT);
    assert_non_null(strstr(err, "no checkpoint"));
    ser_backbone_free(&b);
    ser_trainer_free(&t);
}

// --- ser export ----------------------------------------------------------------------------------
#define CMD_LEN 4096

// Runs `ser ARGS` with stdout+stderr into s_root/log; returns the exit status.
static int s_ser(const char *args) { return ser_test_run(s_root, args); }

static int s_log_has(const char *needle) { return ser_test_log_has(s_root, needle); }

static int s_file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// Files in s_root whose name contains sub (leftover temporaries).
static int s_count_in_root(const char *sub) { return ser_test_count_entries(s_root, sub); }

static void s_write_config(const ser_config *cfg, const char *path) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(ser_config_dump(cfg, f), SER_OK);
    assert_int_equal(fclose(f), 0);
}

// The exported backbone file: timm names and shapes, the values of b bitwise, the layout in
// the metadata.
static void s_check_export(const char *path, const ser_backbone *b) {
    char err[SER_ERR_LEN];
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (rc) fail_msg("%s", err);
    const ser_ptab *tab = b->vit.tabp;
    assert_int_equal(ser_st_count(f), tab->n);
    int extras = 0;
    for (int i = 0; i < tab->n; i++) {
        const ser_tinfo *t = &tab->t[i];
        char name[SER_TINFO_NAME_LEN + 8];
        int extra = strncmp(t->name, "norm_equiv.", 11) == 0;
        extras += extra;
        snprintf(name, sizeof name, "%s%s", extra ? "ser." : "", t->name);
        const ser_st_entry *e = ser_st_find(f, name);
        if (!e) fail_msg("%s: no tensor %s", path, name);
        assert_int_equal(e->dtype, SER_DT_F32);
        assert_int_equal(e->ndim, t->ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(e->shape[d], t->shape[d]);
        assert_memory_equal(e->data, b->vit.params + t->offset, sizeof(float) * t->numel);
    }
    // timm's shapes: pos_embed (1, NP, C) without a [CLS] row in the SER layout.
    const ser_vit_config *c = &b->vit.cfg;
    int NP = (c->img_size / c->patch) * (c->img_size / c->patch);
    const ser_st_entry *pe = ser_st_find(f, "pos_embed");
    assert_int_equal(pe->shape[1], NP + (b->vit.baseline ? 1 : 0));
    assert_int_equal(ser_st_find(f, "patch_embed.proj.weight")->shape[1], 3);
    assert_int_equal(extras, b->vit.baseline ? 0 : 2);
    assert_string_equal(ser_st_meta(f, "format"), "ser-timm-vit");
    const char *kw = ser_st_meta(f, "timm_kwargs");
    assert_non_null(kw);
    assert_non_null(strstr(kw, b->vit.baseline ? "\"no_embed_class\": false"
                                                : "\"no_embed_class\": true"));
    assert_non_null(strstr(kw, "\"embed_dim\": 24"));
    assert_non_null(strstr(kw, "\"mlp_ratio\": 2.0"));
    char k[16];
    snprintf(k, sizeof k, "%d", b->vit.baseline ? 0 : c->cls_layer);
    assert_string_equal(ser_st_meta(f, "ser_cls_after_block"), k);
    assert_string_equal(ser_st_meta(f, "ser_extras"),
                        b->vit.baseline ? "" : "ser.norm_equiv.weight,ser.norm_equiv.bias");
    assert_non_null(ser_st_meta(f, "config"));
    // The tiny test ViT (24 wide, patch 4 at 16 px) has no timm name of its own: the closest
    // is written, and said to be only that, with what differs.
    assert_string_equal(ser_st_meta(f, "timm_model"), "vit_tiny_patch16_224");
    assert_string_equal(ser_st_meta(f, "timm_model_exact"), "false");
    const char *note = ser_st_meta(f, "timm_model_note");
    assert_non_null(note);
    assert_non_null(strstr(note, "patch 4 at 16 px"));
    assert_non_null(strstr(note, "vit_tiny_patch16_224 is the closest"));
    ser_st_destroy(&f);
}

// The timm name of a ViT: the registered one when timm has that very model, else the closest
// registered name of the arch (its patch size first, then the nearest image size), flagged.
static void test_timm_name(void **state) {
    (void)state;
    static const struct {
        const char *preset;
        int arch, img, patch, exact;
        const char *want;
    } cases[] = {
        {"vit_small", SER_CONFIG_ARCH_VIT_SMALL, 224, 16, 1, "vit_small_patch16_224"},
        {"vit_small", SER_CONFIG_ARCH_VIT_SMALL, 224, 8, 1, "vit_small_patch8_224"},
        {"vit_base", SER_CONFIG_ARCH_VIT_BASE, 384, 32, 1, "vit_base_patch32_384"},
        {"vit_tiny", SER_CONFIG_ARCH_VIT_TINY, 384, 16, 1, "vit_tiny_patch16_384"},
        {"vit_tiny", SER_CONFIG_ARCH_VIT_TINY, 32, 4, 0, "vit_tiny_patch16_224"},
        {"vit_small", SER_CONFIG_ARCH_VIT_SMALL, 96, 8, 0, "vit_small_patch8_224"},
        {"vit_base", SER_CONFIG_ARCH_VIT_BASE, 320, 32, 0, "vit_base_patch32_384"},
        {"vit_small", SER_CONFIG_ARCH_VIT_SMALL, 64, 16, 0, "vit_small_patch16_224"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ser_vit_config vc;
        assert_int_equal(ser_vit_config_preset(&vc, cases[i].preset, cases[i].img, cases[i].patch),
                         SER_OK);
        char name[64], note[400];
        int exact = ser_backbone_timm_name(cases[i].arch, &vc, name, sizeof name, note, sizeof note);
        if (exact != cases[i].exact || strcmp(name, cases[i].want) != 0)
            fail_msg("%s %d px / patch %d: '%s' exact %d, want '%s' exact %d", cases[i].preset,
                     cases[i].img, cases[i].patch, name, exact, cases[i].want, cases[i].exact);
        assert_true(exact ? note[0] == 0 : strstr(note, name) != NULL);
    }
    // The right patch and image size but other widths: the name, not exact.
    ser_vit_config vc;
    assert_int_equal(ser_vit_config_preset(&vc, "vit_small", 224, 16), SER_OK);
    vc.depth = 6;
    char name[64], note[400];
    assert_int_equal(ser_backbone_timm_name(SER_CONFIG_ARCH_VIT_SMALL, &vc, name, sizeof name, note,
                                            sizeof note), 0);
    assert_string_equal(name, "vit_small_patch16_224");
    assert_non_null(strstr(note, "6 blocks"));
}

// The full state: every table of t with its reference name, counters as 0-d I64, bitwise; no
// optimizer state, no training position.
static void s_check_full(const char *path, ser_trainer *t) {
    char err[SER_ERR_LEN];
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (rc) fail_msg("%s", err);
    int n = 0;
    for (int k = 0; k < t->ntabs; k++)
        for (int i = 0; i < t->tabs[k]->n; i++, n++) {
            const ser_tinfo *ti = &t->tabs[k]->t[i];
            const ser_st_entry *e = ser_st_find(f, ti->name);
            if (!e) fail_msg("%s: no tensor %s", path, ti->name);
            if (ti->flags & SER_TINFO_COUNTER) {
                assert_int_equal(e->dtype, SER_DT_I64);
                assert_int_equal(e->ndim, 0);
                int64_t v;
                memcpy(&v, e->data, sizeof v);
                assert_true((float)v == t->arenas[k][ti->offset]);
                continue;
            }
            assert_int_equal(e->dtype, SER_DT_F32);
            assert_memory_equal(e->data, t->arenas[k] + ti->offset, sizeof(float) * ti->numel);
            // DINO: the shared projector also under the teacher, as torch's state_dict has it.
            if (t->method == SER_CONFIG_METHOD_DINO &&
                strncmp(ti->name, "student.projector_equiv.", 24) == 0) {
                char alias[SER_TINFO_NAME_LEN + 8];
                snprintf(alias, sizeof alias, "teacher.%s", ti->name + 8);
                const ser_st_entry *ae = ser_st_find(f, alias);
                if (!ae) fail_msg("%s: no tensor %s", path, alias);
                assert_memory_equal(ae->data, e->data, e->nbytes);
                n++;
            }
        }
    assert_int_equal(ser_st_count(f), n);
    assert_string_equal(ser_st_meta(f, "format"), "ser-full-state");
    ser_st_destroy(&f);
}

// ser's own forward of b on a fixed batch, for check_timm_export.py.
static void s_write_expect(ser_backbone *b, const char *path) {
    int B = 2, H = 16, W = 16, C = b->vit.cfg.dim;
    size_t n = (size_t)B * 3 * H * W;
    float *img = malloc(sizeof(float) * n);
    ser_test_fill_uniform(img, n, 7, -1.0f, 1.0f);
    ser_vit_acts a = {0};
    ser_vit_fwd_opts o = {0};
    char err[SER_ERR_LEN];
    assert_int_equal(ser_vit_forward(&b->vit, &a, img, B, H, W, &o, err), SER_OK);
    ser_st_writer *w = ser_st_writer_new();
    int64_t ish[4] = {B, 3, H, W}, csh[2] = {B, C}, msh[3] = {B, a.NP, C};
    ser_st_writer_add(w, "__test__.img", SER_DT_F32, 4, ish, img);
    ser_st_writer_add(w, "__test__.cls", SER_DT_F32, 2, csh, a.cls);
    if (!b->vit.baseline) ser_st_writer_add(w, "__test__.map", SER_DT_F32, 3, msh, a.map);
    assert_int_equal(ser_st_writer_save(w, path, err), SER_OK);
    ser_st_writer_destroy(&w);
    ser_vit_acts_free(&a);
    free(img);
}

static void s_run_python_check(const char *exp, const char *expect, const char *full) {
    char cmd[CMD_LEN];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -B '%s/../check_timm_export.py' '%s' '%s' %s%s%s",
             SER_FIXTURE_DIR, exp, expect, full ? "'" : "", full ? full : "", full ? "'" : "");
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (status %d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);
}

// Every method from a run directory with --full, and the baseline layout; the state file with
// --config; PyTorch loads the results when it is installed.
static void test_export(void **state) {
    (void)state;
    int torch = ser_test_have_torch();
    if (!torch) {
        printf("SKIP (part): python3-torch not installed; check_timm_export.py not run\n");
        fflush(stdout);
    }
    for (int m = 0; m < 4; m++) {
        ser_config cfg;
        ser_trainer t;
        char err[SER_ERR_LEN];
        s_job(&cfg, s_methods[m % 3], NULL);
        if (m == 3) {  // the baseline layout: [CLS] at the input, pos_embed with its row
            assert_int_equal(ser_config_set_arg(&cfg, "ser.enabled=false", err), SER_OK);
            assert_int_equal(ser_config_set_arg(&cfg, "model.cls_layer=4", err), SER_OK);
        }
        s_trainer(&t, &cfg, 21 + (uint64_t)m);
        char dir[128], ck[512], st[128], ini[128], out[128], full[128], expect[128];
        char args[CMD_LEN];
        s_path(dir, sizeof dir, "run");
        s_save_ckpt(&t, dir, 40, ck, sizeof ck);
        s_path(out, sizeof out, "backbone");
        s_path(full, sizeof full, "full");
        snprintf(args, sizeof args, "export '%s' --out '%s' --full '%s'", dir, out, full);
        assert_int_equal(s_ser(args), 0);
        assert_true(s_log_has("wrote"));
        ser_backbone b;
        assert_int_equal(ser_backbone_load(&b, ck, NULL, err), SER_OK);
        s_check_export(out, &b);
        s_check_full(full, &t);
        if (torch) {
            s_path(expect, sizeof expect, "expect");
            s_write_expect(&b, expect);
            s_run_python_check(out, expect, full);
        }
        // A state file: refused without --config (exit 1, says so), exported with it.
        s_path(st, sizeof st, "state");
        s_save_state(&t, st);
        s_path(ini, sizeof ini, "job");
        s_write_config(&cfg, ini);
        s_path(out, sizeof out, "backbone");
        snprintf(args, sizeof args, "export '%s' --out '%s'", st, out);
        assert_int_equal(s_ser(args), 1);
        assert_true(s_log_has("--config"));
        assert_false(s_file_exists(out));
        snprintf(args, sizeof args, "export '%s' --out '%s' --config '%s'", st, out, ini);
        assert_int_equal(s_ser(args), 0);
        s_check_export(out, &b);
        ser_backbone_free(&b);
        ser_trainer_free(&t);
    }
    assert_int_equal(s_count_in_root("export-tmp"), 0);
}

static void test_export_refusals(void **state) {
    (void)state;
    ser_config cfg;
    ser_trainer t;
    char dir[128], ck[512], out[128], full[128], p[128], args[CMD_LEN];
    s_job(&cfg, "barlow", NULL);
    s_trainer(&t, &cfg, 3);
    s_path(dir, sizeof dir, "run");
    s_save_ckpt(&t, dir, 5, ck, sizeof ck);
    s_path(out, sizeof out, "backbone");
    s_path(full, sizeof full, "full");

    // Usage: no --out, no input, two inputs, an unknown option, --out = --full: exit 2.
    snprintf(args, sizeof args, "export '%s'", ck);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("--out is required"));
    snprintf(args, sizeof args, "export --out '%s'", out);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("no CHECKPOINT"));
    snprintf(args, sizeof args, "export '%s' '%s' --out '%s'", ck, ck, out);
    assert_int_equal(s_ser(args), 2);
    snprintf(args, sizeof args, "export '%s' --out '%s' --bogus", ck, out);
    assert_int_equal(s_ser(args), 2);
    snprintf(args, sizeof args, "export '%s' --out '%s' --full '%s'", ck, out, out);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("same file"));
    snprintf(args, sizeof args, "export '%s' --out '%s' --config '%s/no-such.ini'", ck, out,
             s_root);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("no-such.ini"));
    // The input as output: refused, the checkpoint intact.
    snprintf(args, sizeof args, "export '%s' --out '%s'", ck, ck);
    assert_int_equal(s_ser(args), 2);
    assert_true(s_log_has("overwrite the input"));
    char err[SER_ERR_LEN];
    assert_int_equal(ser_ckpt_verify(ck, &cfg, NULL, err), SER_OK);
    // Bad inputs: a missing path, garbage, an empty run directory: exit 1 naming it.
    s_path(p, sizeof p, "nothing");
    snprintf(args, sizeof args, "export '%s' --out '%s'", p, out);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has(p));
    s_path(p, sizeof p, "garbage");
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("this is not a safetensors file at all, just some text", f);
    fclose(f);
    snprintf(args, sizeof args, "export '%s' --out '%s'", p, out);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has(p));
    s_path(p, sizeof p, "emptydir");
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(args, sizeof args, "export '%s' --out '%s'", p, out);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has("no checkpoint"));
    assert_false(s_file_exists(out));
    // Unwritable outputs: nothing written, not even the other file.
    snprintf(args, sizeof args, "export '%s' --out '%s/no/such/dir/b.safetensors'", ck, s_root);
    assert_int_equal(s_ser(args), 1);
    assert_true(s_log_has("no/such/dir"));
    snprintf(args, sizeof args, "export '%s' --out '%s' --full '%s/no/such/dir/f.safetensors'",
             ck, out, s_root);
    assert_int_equal(s_ser(args), 1);
    assert_false(s_file_exists(out));
    snprintf(args, sizeof args, "export '%s' --out '%s/no/such/dir/b.safetensors' --full '%s'",
             ck, s_root, full);
    assert_int_equal(s_ser(args), 1);
    assert_false(s_file_exists(full));
    assert_int_equal(s_count_in_root("export-tmp"), 0);
    // --help works.
    assert_int_equal(s_ser("export --help"), 0);
    assert_true(s_log_has("timm"));
    ser_trainer_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_each_method),
        cmocka_unit_test(test_init_random_is_fresh_student),
        cmocka_unit_test(test_dir_walks_back),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_export),
        cmocka_unit_test(test_timm_name),
        cmocka_unit_test(test_export_refusals),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
