// test_config.c — the job configuration: defaults from the table, every error class with its
// message (file:line, key, what is allowed), nothing partially applied, overrides, the dump
// round trip, the hash (its definition and which keys it ignores), every preset in configs/,
// the helpers for the other modules, and docs/config.md being the table's current output
// (SER_UPDATE_DOCS=1 rewrites it).
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_config.h"
#include "ser_test.h"

#define SRC_DIR SER_FIXTURE_DIR "/../../.."

// Loads text (on defaults) expecting failure; checks the code and that every needle is in the
// message; the config must be unchanged.
static void s_expect_error(const char *text, int code, const char *const *needles) {
    ser_config c, before;
    ser_config_defaults(&c);
    before = c;
    char err[SER_ERR_LEN] = "";
    int rc = ser_config_load_string(&c, text, "job.ini", err);
    fprintf(stderr, "  -> %s\n", err);
    if (rc != code) fail_msg("expected %d, got %d (%s) for:\n%s", code, rc, err, text);
    for (int i = 0; needles[i]; i++)
        if (!strstr(err, needles[i])) fail_msg("'%s' not in '%s'", needles[i], err);
    assert_true(ser_config_equal(&c, &before));
}

#define EXPECT(text, ...) \
    s_expect_error(text, SER_ECONFIG, (const char *const[]){__VA_ARGS__, NULL})

static void test_defaults(void **state) {
    (void)state;
    ser_config c;
    ser_config_defaults(&c);
    char err[SER_ERR_LEN];
    assert_int_equal(ser_config_validate(&c, err), SER_OK);
    assert_int_equal(c.model.arch, SER_CONFIG_ARCH_VIT_SMALL);
    assert_int_equal(c.model.img_size, 224);
    assert_int_equal(c.model.patch, 16);
    assert_int_equal(c.model.cls_layer, 3);
    assert_true(c.model.freeze_patch_embed);
    assert_int_equal(c.model.init, SER_CONFIG_INIT_MOCO);
    assert_int_equal(c.method.name, SER_CONFIG_METHOD_MOCO);
    assert_int_equal(c.moco.dim, 256);
    assert_int_equal(c.moco.mlp_dim, 4096);
    assert_true(c.moco.temperature == 0.2 && c.moco.momentum == 0.99);
    assert_int_equal(c.dino.out_dim, 65536);
    assert_true(c.dino.teacher_temp == 0.04 && c.dino.teacher_temp_final == 0.07);
    assert_true(c.dino.center_momentum == 0.9 && c.dino.momentum == 0.982);
    assert_int_equal(c.barlow.proj_dim, 8192);
    assert_true(c.barlow.lambda_offdiag == 0.0051);
    assert_true(c.ser.enabled && c.ser.grad == SER_CONFIG_GRAD_ON && c.ser.ratio == 0.01);
    assert_true(c.ser.scale_min == 0.7 && c.ser.scale_max == 1.3);
    assert_true(c.ser.aspect_max == 4.0 / 3.0);
    assert_int_equal(c.ser.proj_dim, 512);
    assert_true(c.optim.lr == 3e-4 && c.optim.weight_decay == 0.1);
    assert_true(c.optim.beta1 == 0.9 && c.optim.beta2 == 0.999 && c.optim.eps == 1e-8);
    assert_int_equal(c.optim.warmup_epochs, 10);
    assert_int_equal(c.optim.epochs, 100);
    assert_true(c.optim.clip == 0.0);
    assert_int_equal(c.data.global_batch, 2048);
    assert_int_equal(c.data.shards, 8);
    assert_string_equal(c.data.path, "");
    assert_string_equal(c.cluster.coordinator, "127.0.0.1");
    assert_int_equal(c.cluster.port, 5555);
    // Every row's default is what ser_config_get prints back.
    int n;
    const ser_config_option *t = ser_config_options(&n);
    char key[128], val[256];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%s.%s", t[i].section, t[i].name);
        assert_int_equal(ser_config_get(&c, key, val, sizeof val), SER_OK);
        ser_config d = c;
        assert_int_equal(ser_config_set(&d, key, val, err), SER_OK);
        assert_true(ser_config_equal(&c, &d));
        assert_non_null(t[i].help);
        assert_true(strlen(t[i].help) > 10);
    }
    assert_int_equal(ser_config_get(&c, "optim.nope", val, sizeof val), SER_ENOENT);
    assert_int_equal(ser_config_get(&c, "optim.lr", val, sizeof val), SER_OK);
    assert_string_equal(val, "0.0003");
}

static void test_load_and_comments(void **state) {
    (void)state;
    ser_config c;
    ser_config_defaults(&c);
    char err[SER_ERR_LEN];
    const char *text = "; a comment\r\n"
                       "# another\n"
                       "[optim]\n"
                       "lr = 1.5e-4   ; inline comment\n"
                       "epochs=50\r\n"
                       "\n"
                       "[ser]\n"
                       "enabled = OFF\n"
                       "grad = off\n"
                       "[data]\n"
                       "path = /data/my images/train\n"
                       "seed = 123456789012345\n"
                       "[model]\n"
                       "arch = vit_tiny\n";
    assert_int_equal(ser_config_load_string(&c, text, "job.ini", err), SER_OK);
    assert_true(c.optim.lr == 1.5e-4);
    assert_int_equal(c.optim.epochs, 50);
    assert_int_equal(c.ser.enabled, 0);
    assert_int_equal(c.ser.grad, SER_CONFIG_GRAD_OFF);
    assert_string_equal(c.data.path, "/data/my images/train");
    assert_int_equal(c.data.seed, 123456789012345LL);
    assert_int_equal(c.model.arch, SER_CONFIG_ARCH_VIT_TINY);
    assert_int_equal(c.optim.warmup_epochs, 10);  // untouched keys keep their defaults
    // A file on top of another configuration only changes what it names.
    assert_int_equal(ser_config_load_string(&c, "[optim]\nepochs = 60\n", "b.ini", err), SER_OK);
    assert_int_equal(c.optim.epochs, 60);
    assert_true(c.optim.lr == 1.5e-4);
}

static void test_value_errors(void **state) {
    (void)state;
    EXPECT("[optim]\nwarmup_epochs = 5\nlr = -1\n", "job.ini:3: optim.lr = -1: must be in [0, 10]");
    EXPECT("[optim]\nepochs = 10x\n", "job.ini:2: optim.epochs = 10x: not an integer",
           "[1, 100000]");
    EXPECT("[optim]\nepochs = 1.0\n", "job.ini:2:", "not an integer");
    EXPECT("[optim]\nepochs = 99999999999999999999\n", "job.ini:2:", "not an integer");
    EXPECT("[optim]\nlr = 1e-4x\n", "job.ini:2: optim.lr = 1e-4x: not a number");
    EXPECT("[optim]\nlr =\n", "job.ini:2: optim.lr = : not a number");
    EXPECT("[optim]\nlr = nan\n", "job.ini:2: optim.lr = nan: must be in [0, 10]");
    EXPECT("[optim]\nlr = inf\n", "job.ini:2:", "must be in [0, 10]");
    EXPECT("\n[method]\nname = simclr\n",
           "job.ini:3: method.name = simclr: must be one of moco, dino, barlow");
    EXPECT("[ser]\nenabled = maybe\n",
           "job.ini:2: ser.enabled = maybe: must be one of true, false");
    EXPECT("[ser]\ntau = 0\n", "job.ini:2: ser.tau = 0: must be in (0, 100]");
    EXPECT("[optim]\nbeta2 = 1\n", "job.ini:2: optim.beta2 = 1: must be in [0, 1)");
    EXPECT("[cluster]\nport = 70000\n", "job.ini:2: cluster.port = 70000: must be in [0, 65535]");
    EXPECT("[model]\narch = VIT_SMALL\n", "must be one of vit_tiny, vit_small, vit_base");
}

static void test_structure_errors(void **state) {
    (void)state;
    EXPECT("[optim]\nlr = 0.1\nlearning_rate = 0.1\n",
           "job.ini:3: optim.learning_rate: unknown key in [optim]", "keys: lr, min_lr");
    EXPECT("[model]\narch = vit_small\n[optimizer]\nlr = 0.1\n",
           "job.ini:4: [optimizer]: unknown section", "sections: model, method, moco");
    EXPECT("lr = 0.1\n", "job.ini:1: lr: key outside any [section]");
    EXPECT("[optim]\nlr = 0.1\n\nlr = 0.2\n", "job.ini:4: optim.lr: given twice (first on line 2");
    EXPECT("[optim]\nlr = 0.1\n  epochs = 3\n", "job.ini:3: optim.lr: given twice");
    EXPECT("[optim]\nlr = 0.1\nthis is not a pair\n", "job.ini:3: syntax error");
    EXPECT("[optim\nlr = 0.1\n", "job.ini:1: syntax error");
    // A syntax error before a value error is the one reported.
    EXPECT("[optim]\njunk\nlr = -5\n", "job.ini:2: syntax error");
    char longline[400];
    snprintf(longline, sizeof longline, "[data]\npath = /%0250d\n", 0);
    EXPECT(longline, "job.ini:2: line longer than 197 characters");
    // The first error is reported, not a later one.
    EXPECT("[optim]\nlr = -1\nepochs = x\n", "job.ini:2: optim.lr = -1");
}

static void test_cross_field_errors(void **state) {
    (void)state;
    EXPECT("[model]\nimg_size = 225\n",
           "job.ini: model.img_size = 225 is not a multiple of model.patch = 16");
    EXPECT("[model]\ncls_layer = 13\n", "job.ini: model.cls_layer = 13 must be in [1, 12]");
    EXPECT("[model]\ncls_layer = 12\n", "model.cls_layer = 12 (= depth) is the baseline layout",
           "ser.enabled = false");
    EXPECT("[data]\nglobal_batch = 1000\nshards = 16\n",
           "job.ini: data.global_batch = 1000 is not a multiple of data.shards = 16");
    EXPECT("[optim]\nwarmup_epochs = 100\n",
           "optim.warmup_epochs = 100 must be < optim.epochs = 100");
    EXPECT("[ser]\nwarmup_epochs = 50\nrest_epochs = 50\n",
           "ser.warmup_epochs + ser.rest_epochs = 100 must be < optim.epochs = 100");
    EXPECT("[data]\nglobal_batch = 32\nshards = 8\n",
           "ser.ratio = 0.01 gives round(0.01 * 32) = 0 equivariant samples in the global batch");
    EXPECT("[ser]\nscale_min = 1.5\n", "ser.scale_min = 1.5 must be <= ser.scale_max = 1.3");
    EXPECT("[cluster]\nheartbeat_ms = 20000\n",
           "cluster.heartbeat_ms = 20000 must be < cluster.timeout_ms");
    EXPECT("[cluster]\ndata_port = 5555\n", "cluster.port and cluster.data_port are both 5555");
    EXPECT("[method]\nname = dino\n[dino]\nteacher_temp_warmup_epochs = 101\n",
           "dino.teacher_temp_warmup_epochs = 101 must be <= optim.epochs = 100");
    EXPECT("[data]\nkind = synthetic\nsynthetic_images = 100\n",
           "data.synthetic_images = 100 is smaller than data.global_batch = 2048");
    EXPECT("[method]\nname = equimod\n",
           "method.name = equimod reads the unaugmented centre view x_0 as local view 0: set "
           "data.local_crops = 1, data.local_mode = center and data.local_size = model.img_size "
           "(= 224; now local_crops 0, local_size 96)");
    EXPECT("[method]\nname = equimod\n[data]\nlocal_crops = 1\nlocal_mode = center\n",
           "data.local_size = model.img_size (= 224; now local_crops 1, local_size 96)");
    // Local views: only for methods that read them, in a mode that fits their count.
    EXPECT("[method]\nname = barlow\n[data]\nlocal_crops = 2\n",
           "data.local_crops = 2: method.name = barlow has no use for local views");
    EXPECT("[data]\nlocal_crops = 2\nlocal_mode = rotations\n",
           "data.local_mode = rotations needs data.local_crops = 4 (one per rotation), not 2");
    EXPECT("[data]\nlocal_crops = 2\nlocal_size = 90\n",
           "data.local_size = 90 is not a multiple of model.patch = 16");
    EXPECT("[data]\nlocal_crop_min = 0.5\nlocal_crop_max = 0.3\n",
           "data.local_crop_min = 0.5 must be <= data.local_crop_max = 0.3");
    EXPECT("[method]\nname = essl\n", "method.name = essl predicts the rotation of 4 rotated "
           "crops: set data.local_crops = 4");
    EXPECT("[method]\nname = stl\n[data]\nglobal_batch = 12\nshards = 4\n",
           "method.name = stl pairs the batch positions 2k and 2k+1 within a shard: "
           "data.global_batch (= 12) and its shard size data.global_batch / data.shards (= 12 / 4) "
           "must be even");
    // Layer decoupling: only an add-on reads moco.addon_layer, and only at the SER map's block.
    EXPECT("[moco]\naddon_layer = 3\n",
           "moco.addon_layer = 3: only a MoCo add-on (method.name = essl, augself, equimod or stl) "
           "reads it; method.name = moco");
    EXPECT("[method]\nname = augself\n[moco]\naddon_layer = 4\n",
           "moco.addon_layer = 4: the pooled map is the block-k map of the SER layout, so it must "
           "be model.cls_layer (= 3) and model.cls_layer < the depth (12)");
    EXPECT("[method]\nname = augself\n[model]\ncls_layer = 12\n[ser]\nenabled = false\n"
           "[moco]\naddon_layer = 12\n",
           "moco.addon_layer = 12: the pooled map is the block-k map of the SER layout");
    EXPECT("[ser]\nlocal_pairs = 2\nratio = 0.5\n",
           "ser.local_pairs = 2: the pair NT-Xent compares up to 2 x 260915 tokens of the global "
           "pair");
    EXPECT("[method]\nname = dino\n[ser]\nlocal_pairs = 2\n",
           "ser.local_pairs = 2: the 2+4-view SER is built for method.name = moco with "
           "ser.enabled = true");
    // The baseline layout is fine without SER.
    ser_config c;
    ser_config_defaults(&c);
    char err[SER_ERR_LEN];
    assert_int_equal(
        ser_config_load_string(&c, "[model]\ncls_layer = 12\n[ser]\nenabled = false\n", "j", err),
        SER_OK);
    assert_int_equal(ser_config_load_string(&c,
                                            "[method]\nname = equimod\n[data]\nlocal_crops = 1\n"
                                            "local_mode = center\nlocal_size = 224\n",
                                            "j", err),
                     SER_OK);
    assert_int_equal(
        ser_config_load_string(&c, "[method]\nname = stl\n[data]\nglobal_batch = 16\nshards = 4\n",
                               "j", err),
        SER_OK);
    ser_config_defaults(&c);
    assert_int_equal(ser_config_load_string(&c, "[method]\nname = augself\n[moco]\n"
                                            "addon_layer = 3\n", "j", err), SER_OK);
    assert_int_equal(ser_config_addon_pooled(&c), 1);
}

static void test_missing_file(void **state) {
    (void)state;
    ser_config c;
    ser_config_defaults(&c);
    char err[SER_ERR_LEN];
    assert_int_equal(ser_config_load_file(&c, "/nonexistent/job.ini", err), SER_ENOENT);
    assert_non_null(strstr(err, "/nonexistent/job.ini"));
    assert_int_equal(ser_config_load(&c, "/nonexistent/job.ini", 0, NULL, err), SER_ENOENT);
}

static void test_overrides(void **state) {
    (void)state;
    ser_config c, before;
    ser_config_defaults(&c);
    char err[SER_ERR_LEN];
    assert_int_equal(ser_config_set(&c, "optim.lr", "0.1", err), SER_OK);
    assert_true(c.optim.lr == 0.1);
    assert_int_equal(ser_config_set_arg(&c, "optim.epochs=30", err), SER_OK);
    assert_int_equal(c.optim.epochs, 30);
    assert_int_equal(ser_config_set_arg(&c, "method.name = dino", err), SER_OK);
    assert_int_equal(c.method.name, SER_CONFIG_METHOD_DINO);
    before = c;
    assert_int_equal(ser_config_set(&c, "optim.lr", "x", err), SER_ECONFIG);
    assert_non_null(strstr(err, "optim.lr = x: not a number"));
    assert_int_equal(ser_config_set(&c, "optim.learning_rate", "1", err), SER_ECONFIG);
    assert_non_null(strstr(err, "optim.learning_rate: unknown key in [optim]"));
    assert_int_equal(ser_config_set(&c, "optimizer.lr", "1", err), SER_ECONFIG);
    assert_non_null(strstr(err, "unknown section [optimizer]"));
    assert_int_equal(ser_config_set_arg(&c, "optim.lr", err), SER_ECONFIG);
    assert_non_null(strstr(err, "expected section.key=value"));
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(ser_config_set(&c, "data.path", big, err), SER_ECONFIG);
    assert_non_null(strstr(err, "longer than 160 characters"));
    assert_int_equal(ser_config_set(&c, "data.path", "a ; b", err), SER_ECONFIG);
    assert_non_null(strstr(err, "inline comment"));
    // Found by fuzz_config: "key = ; x" reads back as an empty value.
    assert_int_equal(ser_config_set(&c, "data.path", "; mp/x y", err), SER_ECONFIG);
    assert_non_null(strstr(err, "inline comment"));
    assert_int_equal(ser_config_set(&c, "run.name", "x\ny", err), SER_ECONFIG);
    assert_true(ser_config_equal(&c, &before));
    ser_config semi = c;
    assert_int_equal(ser_config_set(&semi, "data.path", "a;b", err), SER_OK);  // no blank: kept
    assert_string_equal(semi.data.path, "a;b");

    // The daemon path: defaults, file, overrides in order, validation; all or nothing.
    char path[] = "/tmp/ser-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("[optim]\nlr = 0.5\nepochs = 40\n", f);
    fclose(f);
    const char *ov[] = {"optim.lr=0.25", "optim.lr=0.125", "data.seed=7"};
    ser_config d;
    ser_config_defaults(&d);
    assert_int_equal(ser_config_load(&d, path, 3, ov, err), SER_OK);
    assert_true(d.optim.lr == 0.125);
    assert_int_equal(d.optim.epochs, 40);
    assert_int_equal(d.data.seed, 7);
    before = d;
    const char *bad[] = {"optim.epochs=20", "optim.lr=-1"};
    assert_int_equal(ser_config_load(&d, path, 2, bad, err), SER_ECONFIG);
    assert_non_null(strstr(err, "--set optim.lr = -1: must be in [0, 10]"));
    // Each override is fine alone, the combination is not (warmup 10 >= epochs 5).
    const char *cross[] = {"optim.epochs=5"};
    assert_int_equal(ser_config_load(&d, path, 1, cross, err), SER_ECONFIG);
    assert_non_null(strstr(err, "optim.warmup_epochs = 10 must be < optim.epochs = 5"));
    assert_non_null(strstr(err, path));
    assert_true(ser_config_equal(&d, &before));
    remove(path);
}

// dump -> load -> identical, for the defaults and for a config where every option that can
// differ from its default (and still validate) does.
static void s_roundtrip(const ser_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(ser_config_dump(c, f), SER_OK);
    fclose(f);
    ser_config d;
    ser_config_defaults(&d);
    char err[SER_ERR_LEN], diff[SER_ERR_LEN];
    if (ser_config_load_string(&d, buf, "dump", err)) fail_msg("reload of the dump: %s", err);
    if (ser_config_diff(c, &d, diff, sizeof diff)) fail_msg("round trip differs: %s", diff);
    assert_true(ser_config_hash(c) == ser_config_hash(&d));
    // Every key is in the dump.
    int n, lines = 0;
    ser_config_options(&n);
    for (char *s = buf; (s = strstr(s, " = ")) != NULL; s++) lines++;
    assert_int_equal(lines, n);
    free(buf);
}

static void test_dump_roundtrip(void **state) {
    (void)state;
    ser_config c;
    ser_config_defaults(&c);
    s_roundtrip(&c);
    int n, changed = 0;
    const ser_config_option *t = ser_config_options(&n);
    char key[128], val[256], err[SER_ERR_LEN];
    for (int i = 0; i < n; i++) {
        const ser_config_option *o = &t[i];
        snprintf(key, sizeof key, "%s.%s", o->section, o->name);
        // Candidate values: awkward doubles (not short in decimal), bounds, other choices.
        char cand[8][96];
        int nc = 0;
        switch (o->type) {
        case SER_CONFIG_DOUBLE: {
            double span = o->max - o->min;
            snprintf(cand[nc++], 96, "%.17g", o->min + span * 0.3183098861837907);
            snprintf(cand[nc++], 96, "%.17g", o->min + span * 0.0007071067811865476);
            snprintf(cand[nc++], 96, "%.17g", o->max);
            break;
        }
        case SER_CONFIG_INT:
        case SER_CONFIG_I64:
            snprintf(cand[nc++], 96, "%.0f", o->min + 1);
            snprintf(cand[nc++], 96, "%.0f", floor(o->max / 2));
            snprintf(cand[nc++], 96, "%.0f", o->max);
            snprintf(cand[nc++], 96, "%.0f", o->min);
            break;
        case SER_CONFIG_BOOL: snprintf(cand[nc++], 96, "%s", "flip"); break;
        case SER_CONFIG_ENUM:
            for (int k = 0; o->choices[k] && nc < 8; k++)
                snprintf(cand[nc++], 96, "%s", o->choices[k]);
            break;
        case SER_CONFIG_STRING:
            snprintf(cand[nc++], 96, "%s", "a b/c=d;e\"f' [g] #h");
            break;
        }
        for (int k = 0; k < nc; k++) {
            ser_config d = c;
            if (strcmp(cand[k], "flip") == 0) {
                ser_config_get(&c, key, val, sizeof val);
                snprintf(cand[k], 96, "%s", strcmp(val, "true") == 0 ? "false" : "true");
            }
            if (ser_config_set(&d, key, cand[k], err)) continue;
            if (ser_config_equal(&d, &c) || ser_config_validate(&d, err)) continue;
            c = d;
            changed++;
            break;
        }
    }
    fprintf(stderr, "changed %d of %d options from their defaults\n", changed, n);
    assert_true(changed >= n - 3);
    s_roundtrip(&c);
}

static uint64_t s_fnv(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void test_hash(void **state) {
    (void)state;
    ser_config c, d;
    ser_config_defaults(&c);
    // The documented definition: FNV-1a 64 over "ser-config-v1\n" and the hashed key=value lines.
    int n;
    const ser_config_option *t = ser_config_options(&n);
    uint64_t h = s_fnv(0xcbf29ce484222325ull, "ser-config-v1\n");
    char key[128], val[256], line[512];
    for (int i = 0; i < n; i++) {
        if (t[i].flags & SER_CONFIG_F_NOHASH) continue;
        if (strcmp(t[i].section, "dino") == 0 || strcmp(t[i].section, "barlow") == 0 ||
            strcmp(t[i].section, "essl") == 0 || strcmp(t[i].section, "augself") == 0 ||
            strcmp(t[i].section, "equimod") == 0 || strcmp(t[i].section, "stl") == 0)
            continue;
        // Keys marked "when set" at their default are not in the hash (the default config's
        // hash is the one of the binaries before them).
        if (t[i].flags & SER_CONFIG_F_HASH_IF_SET) continue;
        snprintf(key, sizeof key, "%s.%s", t[i].section, t[i].name);
        ser_config_get(&c, key, val, sizeof val);
        snprintf(line, sizeof line, "%s=%s\n", key, val);
        h = s_fnv(h, line);
    }
    assert_true(h == ser_config_hash(&c));
    char hex[17];
    ser_config_hash_hex(&c, hex);
    assert_int_equal(strlen(hex), 16);
    fprintf(stderr, "default config hash %s\n", hex);
    // Keys that do not change results leave the hash alone...
    static const char *const same[][2] = {
        {"data.path", "/elsewhere"}, {"data.workers", "16"},   {"run.out_dir", "/tmp/x"},
        {"run.log_every", "1"},      {"run.max_steps", "5"},
        {"run.checkpoint_every", "7"}, {"run.keep_checkpoints", "9"}, {"run.name", "other"},
        {"cluster.port", "6000"},    {"cluster.status_port", "-1"}, {"cluster.coordinator", "h"},
        {"dino.momentum", "0.99"},   {"barlow.proj_dim", "64"},  // methods not selected
        {"essl.lambda", "1"},        {"augself.crop", "1"}, {"equimod.lambda", "2"},
        {"stl.lambda_trans", "0.3"},
    };
    char err[SER_ERR_LEN];
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        d = c;
        assert_int_equal(ser_config_set(&d, same[i][0], same[i][1], err), SER_OK);
        if (ser_config_hash(&d) != ser_config_hash(&c)) fail_msg("%s changes the hash", same[i][0]);
    }
    // ...and every other key changes it.
    static const char *const differ[][2] = {
        {"optim.lr", "0.00030000000000000003"}, {"ser.grad", "off"}, {"data.shards", "4"},
        {"data.seed", "1"}, {"model.cls_layer", "4"}, {"run.nonfinite", "skip"},
        {"optim.decay", "no_bias_1d"}, {"moco.momentum", "0.999"}, {"method.name", "dino"},
        {"run.threads", "3"},  // BLAS bits depend on it (common/nn/ser_kernels.h)
        {"moco.addon_layer", "3"}, {"ser.local_pairs", "2"},  // "when set" keys, once set
    };
    for (size_t i = 0; i < sizeof differ / sizeof differ[0]; i++) {
        d = c;
        assert_int_equal(ser_config_set(&d, differ[i][0], differ[i][1], err), SER_OK);
        if (ser_config_hash(&d) == ser_config_hash(&c))
            fail_msg("%s leaves the hash", differ[i][0]);
    }
    // E-SSL is MoCo-v3 plus a rotation head: its own section and [moco] both count.
    ser_config e = c;
    assert_int_equal(ser_config_set(&e, "method.name", "essl", err), SER_OK);
    const char *essl_keys[][2] = {{"essl.lambda", "1"}, {"moco.temperature", "0.3"}};
    for (int i = 0; i < 2; i++) {
        d = e;
        assert_int_equal(ser_config_set(&d, essl_keys[i][0], essl_keys[i][1], err), SER_OK);
        if (ser_config_hash(&d) == ser_config_hash(&e))
            fail_msg("essl: %s leaves the hash", essl_keys[i][0]);
    }
    d = e;
    assert_int_equal(ser_config_set(&d, "dino.momentum", "0.99", err), SER_OK);
    assert_true(ser_config_hash(&d) == ser_config_hash(&e));
}

// --- presets -----------------------------------------------------------------------------------
static void s_load_preset(const char *file, ser_config *c) {
    char path[1024], err[SER_ERR_LEN];
    snprintf(path, sizeof path, "%s/configs/%s", SRC_DIR, file);
    if (ser_config_load(c, path, 0, NULL, err)) fail_msg("%s", err);
}

static void test_presets(void **state) {
    (void)state;
    char dirpath[1024];
    snprintf(dirpath, sizeof dirpath, "%s/configs", SRC_DIR);
    DIR *dir = opendir(dirpath);
    assert_non_null(dir);
    struct dirent *de;
    int count = 0;
    char hex[17];
    while ((de = readdir(dir)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".ini") != 0) continue;
        ser_config c;
        s_load_preset(de->d_name, &c);
        s_roundtrip(&c);
        fprintf(stderr, "preset %-28s hash %s\n", de->d_name, ser_config_hash_hex(&c, hex));
        count++;
    }
    closedir(dir);
    assert_true(count >= 5);

    ser_config c;
    ser_sched_params sp;
    ser_sched_values v;
    // The reference MoCo run (ser-reference.md section 8).
    s_load_preset("moco_vits16_imagenet.ini", &c);
    assert_int_equal(c.method.name, SER_CONFIG_METHOD_MOCO);
    assert_int_equal(c.model.cls_layer, 3);
    assert_true(c.model.freeze_patch_embed && c.model.init == SER_CONFIG_INIT_MOCO);
    assert_true(c.ser.lambda == 1.0 && c.ser.tau == 0.5 && c.ser.ratio == 0.01);
    assert_true(c.moco.temperature == 0.2 && c.moco.momentum == 0.99);
    assert_int_equal(ser_config_shard_batch(&c), 256);
    ser_config_to_sched(&c, 625, &sp);
    ser_sched_eval(&sp, 6250, &v);  // end of warmup: the peak
    assert_true(fabs(v.lr - 2.4e-3) < 1e-18);
    assert_int_equal(v.n_equiv, 20);  // round(0.01 * 2048), the last 20 positions
    assert_true(v.wd == 0.1);
    ser_sched_eval(&sp, 0, &v);
    assert_true(v.lr == 0.0 && fabs(v.momentum - 0.99) < 1e-16);
    // DINO.
    s_load_preset("dino_vits16_imagenet.ini", &c);
    ser_config_to_sched(&c, 625, &sp);
    assert_int_equal(sp.lr_kind, SER_SCHED_DINO);
    assert_int_equal(sp.momentum_kind, SER_SCHED_DINO);
    ser_sched_eval(&sp, 6249, &v);
    assert_true(fabs(v.lr - 8e-4) < 1e-18);
    assert_true(v.teacher_temp == 0.07);
    ser_sched_eval(&sp, 0, &v);
    assert_true(v.wd == ser_sched_cosine(0, 0.04, 0.4, 100, 625, 0, 0) && v.momentum == 0.982);
    assert_true(v.teacher_temp == 0.04);
    ser_optim_config oc;
    ser_config_to_optim(&c, &oc);
    assert_int_equal(oc.decay, SER_OPTIM_DECAY_NO_BIAS_1D);
    assert_true(c.optim.clip == 0.3 && c.ser.lambda == 0.3 && c.ser.tau == 0.4);
    // Barlow Twins.
    s_load_preset("barlow_vits16_imagenet.ini", &c);
    ser_config_to_sched(&c, 625, &sp);
    assert_int_equal(sp.lr_kind, SER_SCHED_BARLOW);
    ser_sched_eval(&sp, 62499, &v);
    assert_true(fabs(v.lr - 8e-7) < 1e-12 && v.momentum == 0.0);
    assert_false(c.ser.symmetric);
    // The small CPU presets: ViT-Ti/4.
    s_load_preset("moco_vitt4_cifar.ini", &c);
    ser_vit_config vc;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_config_to_vit(&c, &vc, err), SER_OK);
    assert_int_equal(vc.dim, 192);
    assert_int_equal(vc.heads, 3);
    assert_int_equal(vc.patch, 4);
    assert_int_equal(vc.img_size / vc.patch, 8);
    assert_int_equal(c.moco.mlp_dim, 1024);
    assert_int_equal(ser_sched_equiv_count(c.ser.ratio, c.data.global_batch), 5);
    s_load_preset("moco_vitt4_fashion.ini", &c);
    assert_int_equal(c.data.kind, SER_CONFIG_DATA_FASHION_MNIST);
    // The CIFAR-10 presets of DINO and Barlow Twins are the jobs their README figures were
    // measured with (experiments/cifar10.sh printed these config hashes; `ser local` ran its 2
    // workers at run.threads = 1 on the 2-core machine): a change to either preset has to come
    // with a new measurement. DINO's precision = auto ran as bf16 (what auto resolves to on a
    // CPU with native bf16, test_bf16), set here so the check holds on every CPU.
    s_load_preset("barlow_cifar10.ini", &c);
    assert_int_equal(ser_config_set(&c, "run.threads", "1", err), SER_OK);
    assert_string_equal(ser_config_hash_hex(&c, hex), "7125ac5312cb2b72");
    s_load_preset("dino_cifar10.ini", &c);
    assert_int_equal(ser_config_set(&c, "run.threads", "1", err), SER_OK);
    assert_int_equal(ser_config_set(&c, "run.precision", "bf16", err), SER_OK);
    assert_string_equal(ser_config_hash_hex(&c, hex), "94bfd54f2efc143f");
}

static void test_helpers(void **state) {
    (void)state;
    ser_config c;
    ser_config_defaults(&c);
    ser_vit_config vc;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_config_to_vit(&c, &vc, err), SER_OK);
    assert_int_equal(vc.dim, 384);
    assert_int_equal(vc.depth, 12);
    assert_int_equal(vc.cls_layer, 3);
    assert_true(vc.freeze_patch_embed);
    ser_optim_config oc;
    ser_config_set(&c, "optim.beta2", "0.95", err);
    ser_config_to_optim(&c, &oc);
    assert_true(oc.beta1 == 0.9 && oc.beta2 == 0.95 && oc.eps == 1e-8);
    assert_int_equal(oc.decay, SER_OPTIM_DECAY_ALL);
    // lr_schedule overrides the method's choice.
    ser_sched_params sp;
    ser_config_set(&c, "optim.lr_schedule", "dino", err);
    ser_config_to_sched(&c, 10, &sp);
    assert_int_equal(sp.lr_kind, SER_SCHED_DINO);
    assert_int_equal(sp.momentum_kind, SER_SCHED_MOCO);
    ser_config_set(&c, "ser.enabled", "false", err);
    ser_config_to_sched(&c, 10, &sp);
    assert_true(sp.ser_ratio == 0.0);
}

// --- docs --------------------------------------------------------------------------------------
// The memory estimate: configurations that pass validation but cannot fit are refused before
// anything is allocated, naming the keys of the largest part.
static void s_expect_mem(const char *sets, double avail, const char *key) {
    ser_config c;
    char err[SER_ERR_LEN];
    ser_config_defaults(&c);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", sets);
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " "))
        assert_int_equal(ser_config_set_arg(&c, tok, err), SER_OK);
    assert_int_equal(ser_config_validate(&c, err), SER_OK);
    int rc = ser_config_check_memory(&c, avail, err);
    if (!key) {
        if (rc) fail_msg("%s: %s", sets, err);
        return;
    }
    assert_int_equal(rc, SER_ENOMEM);
    print_message("  %s -> %s\n", sets, err);
    assert_non_null(strstr(err, key));
}

static void test_memory_estimate(void **state) {
    (void)state;
    const char *tiny = "model.arch=vit_tiny model.img_size=32 model.patch=4 data.global_batch=256 "
                       "data.shards=2";
    char sets[512];
    s_expect_mem(tiny, 24e9, NULL);
    snprintf(sets, sizeof sets, "%s moco.mlp_dim=1048576 moco.dim=1048576", tiny);
    s_expect_mem(sets, 24e9, "moco.mlp_dim");  // the 17.6 TB allocation
    snprintf(sets, sizeof sets, "%s method.name=dino dino.out_dim=1048576 dino.hidden_dim=65536", tiny);
    s_expect_mem(sets, 24e9, "dino.out_dim");
    snprintf(sets, sizeof sets, "%s method.name=barlow barlow.proj_dim=1048576", tiny);
    s_expect_mem(sets, 24e9, "barlow.proj_dim");
    s_expect_mem("model.arch=vit_base data.global_batch=16 data.shards=2 ser.ratio=0.25 ser.proj_dim=1048576",
                 24e9, "ser.proj_dim");
    s_expect_mem("model.arch=vit_base data.global_batch=65536 data.shards=1", 24e9,
                 "data.global_batch");
    s_expect_mem("model.arch=vit_base model.depth=64 model.dim=4096 model.heads=64 "
                 "data.global_batch=8 data.shards=8 ser.ratio=0.25", 24e9, "model (dim");
    // The estimate grows with what it counts.
    ser_config a, b;
    ser_config_defaults(&a), ser_config_defaults(&b);
    b.data.shards = a.data.shards / 2;
    assert_true(ser_config_memory_bytes(&b, NULL, 0) > ser_config_memory_bytes(&a, NULL, 0));
}

static void test_docs_up_to_date(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(ser_config_write_markdown(f), SER_OK);
    fclose(f);
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/config.md", SRC_DIR);
    const char *upd = getenv("SER_UPDATE_DOCS");
    if (upd && *upd && strcmp(upd, "0") != 0) {
        FILE *w = fopen(path, "wb");
        assert_non_null(w);
        assert_int_equal(fwrite(buf, 1, len, w), len);
        fclose(w);
        fprintf(stderr, "wrote %s\n", path);
    }
    FILE *r = fopen(path, "rb");
    if (!r) fail_msg("%s missing: run SER_UPDATE_DOCS=1 %s", path, "build/tests/test_config");
    char *disk = malloc(len + 2);
    size_t got = fread(disk, 1, len + 1, r);
    fclose(r);
    int same = got == len && memcmp(disk, buf, len) == 0;
    free(disk);
    free(buf);
    if (!same)
        fail_msg("docs/config.md is stale: regenerate with "
                 "SER_UPDATE_DOCS=1 build/tests/test_config");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_load_and_comments),
        cmocka_unit_test(test_value_errors),
        cmocka_unit_test(test_structure_errors),
        cmocka_unit_test(test_cross_field_errors),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_dump_roundtrip),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_memory_estimate),
        cmocka_unit_test(test_docs_up_to_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
