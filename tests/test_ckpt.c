// test_ckpt.c — checkpoints (common/io/ser_ckpt.h): bitwise round trip of tables, optimizer state,
// extras and the training position; keep-last-K rotation and the `latest` pointer; refusal of
// corrupt (every byte flipped), truncated (many lengths), wrong-version, wrong-config and
// wrong-layout files with the bound memory left untouched; walking back to an older valid
// checkpoint; SIGKILL at random moments of a save; a MoCo run resumed from a checkpoint that
// continues bitwise; and PyTorch loading the model subset with load_state_dict(strict=True)
// when /usr/bin/python3 has torch. Run it under ASan+UBSan too.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_moco.h"
#include "ser_optim.h"
#include "ser_safetensors.h"
#include "ser_sched.h"
#include "ser_test.h"

static char s_root[64];  // the mkdtemp directory of this run; everything we write goes there
static int s_ndirs;

// --- files and directories -----------------------------------------------------------------------
static int s_setup(void **state) {
    (void)state;
    snprintf(s_root, sizeof s_root, "/tmp/ser-ckpt-XXXXXX");
    return mkdtemp(s_root) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    ser_test_rm_rf(s_root);
    return 0;
}

// A fresh (not yet created) run directory name under s_root.
static const char *s_newdir(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "%s/%s%d", s_root, tag, s_ndirs++);
    return buf;
}

static unsigned char *s_read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    *n = (size_t)len;
    return buf;
}

static void s_write_all(const char *path, const void *buf, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static int s_exists(const char *dir, const char *name) {
    char p[1024];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

// Entries of dir whose name contains sub.
static int s_count(const char *dir, const char *sub) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strstr(de->d_name, sub) != NULL;
    closedir(d);
    return n;
}

// The steps in dir as "10,20,30".
static const char *s_steps_str(const char *dir, char *buf, size_t n) {
    int64_t *steps;
    int cnt;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_ckpt_list(dir, &steps, &cnt, err), SER_OK);
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < cnt && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ",%lld" : "%lld", (long long)steps[i]);
    free(steps);
    return buf;
}

static void s_check_rc(int rc, int want, const char *err, const char *what) {
    if (rc != want)
        fail_msg("%s: got %s (%d), want %s: %s", what, ser_strerror(rc), rc, ser_strerror(want),
                 rc ? err : "");
}

// --- a small synthetic model: two tables, AdamW, extras
// --------------------------------------------
typedef struct s_model {
    ser_ptab tab, btab;
    float *params, *buffers;
    ser_optim opt;
    float center[6];  // extra F32 (1, 6), like dino_loss.center
    int64_t skipped;  // extra int64 scalar
    ser_ckpt *ck;
} s_model;

static const int64_t s_center_shape[2] = {1, 6};

// variant 1 changes one shape, variant 2 freezes a trainable tensor.
static void s_model_init(s_model *m, int variant) {
    memset(m, 0, sizeof *m);
    ser_ptab_init(&m->tab);
    ser_ptab_init(&m->btab);
    const int64_t pe[4] = {8, 3, 2, 2}, qkv[2] = {12, 4}, qkvb[1] = {12}, pred[2] = {5, 4},
                  pos[3] = {1, 4, 4}, pred_alt[2] = {5, 3}, bn[1] = {5};
    ser_ptab_add(&m->tab, "base_encoder.patch_embed.proj.weight", SER_TINFO_FROZEN, 4, pe);
    ser_ptab_add(&m->tab, "base_encoder.pos_embed", 0, 3, pos);
    ser_ptab_add(&m->tab, "base_encoder.blocks.0.attn.qkv.weight", 0, 2, qkv);
    ser_ptab_add(&m->tab, "base_encoder.blocks.0.attn.qkv.bias",
                 variant == 2 ? SER_TINFO_FROZEN : 0, 1, qkvb);
    ser_ptab_add(&m->tab, "predictor.0.weight", 0, 2, variant == 1 ? pred_alt : pred);
    ser_ptab_add(&m->btab, "predictor.1.running_mean", 0, 1, bn);
    ser_ptab_add(&m->btab, "predictor.1.running_var", 0, 1, bn);
    ser_ptab_add(&m->btab, "predictor.1.num_batches_tracked", SER_TINFO_COUNTER, 0, NULL);
    m->params = ser_xaligned(sizeof(float) * m->tab.total);
    m->buffers = ser_xaligned(sizeof(float) * m->btab.total);
    ser_optim_config oc;
    ser_optim_config_default(&oc);
    char err[SER_ERR_LEN];
    if (ser_optim_init(&m->opt, &m->tab, &oc, err)) fail_msg("%s", err);
    m->ck = ser_ckpt_new();
    ser_ckpt_add_table(m->ck, &m->tab, m->params, NULL);
    ser_ckpt_add_table(m->ck, &m->btab, m->buffers, NULL);
    ser_ckpt_add_optim(m->ck, &m->opt);
    ser_ckpt_add_f32(m->ck, "dino_loss.center", m->center, 2, s_center_shape);
    ser_ckpt_add_i64(m->ck, "stats.skipped_steps", &m->skipped);
}

static void s_model_free(s_model *m) {
    ser_ckpt_destroy(&m->ck);
    ser_optim_free(&m->opt);
    free(m->params), free(m->buffers);
    ser_ptab_free(&m->tab);
    ser_ptab_free(&m->btab);
}

// Deterministic contents from seed, with `steps` AdamW steps taken; the predictor is inactive
// unless all_active, so it has no optimizer state (step 0) in the checkpoint.
static void s_model_fill(s_model *m, uint64_t seed, int steps, int all_active) {
    ser_test_fill_uniform(m->params, m->tab.total, seed, -1, 1);
    ser_test_fill_uniform(m->buffers, m->btab.total, seed + 1, 0.5f, 2);
    ser_test_fill_uniform(m->center, 6, seed + 2, -3, 3);
    m->buffers[ser_ptab_find(&m->btab, "predictor.1.num_batches_tracked")->offset] =
        (float)(seed % 1000);
    m->skipped = (int64_t)seed * 3;
    ser_optim_reset(&m->opt);
    float *g = ser_xaligned(sizeof(float) * m->tab.total);
    unsigned char active[8];
    for (int i = 0; i < m->tab.n; i++)
        active[i] = all_active || strcmp(m->tab.t[i].name, "predictor.0.weight") != 0;
    for (int s = 0; s < steps; s++) {
        ser_test_fill_uniform(g, m->tab.total, seed * 100 + (uint64_t)s, -0.5f, 0.5f);
        ser_optim_step(&m->opt, m->params, g, 1e-3, 0.05, active);
    }
    free(g);
}

// Bitwise equality of every bound tensor (not the arena padding).
static int s_model_equal(const s_model *a, const s_model *b, int verbose) {
    int ok = 1;
    for (int i = 0; i < a->tab.n; i++) {
        const ser_tinfo *t = &a->tab.t[i];
        size_t nb = t->numel * sizeof(float);
        ok &= memcmp(a->params + t->offset, b->params + t->offset, nb) == 0;
        ok &= memcmp(a->opt.exp_avg + t->offset, b->opt.exp_avg + t->offset, nb) == 0;
        ok &= memcmp(a->opt.exp_avg_sq + t->offset, b->opt.exp_avg_sq + t->offset, nb) == 0;
        ok &= a->opt.step[i] == b->opt.step[i];
        if (!ok) {
            if (verbose) fprintf(stderr, "  differs at or before %s\n", t->name);
            return 0;
        }
    }
    for (int i = 0; i < a->btab.n; i++) {
        const ser_tinfo *t = &a->btab.t[i];
        ok &= memcmp(a->buffers + t->offset, b->buffers + t->offset, t->numel * 4) == 0;
    }
    ok &= memcmp(a->center, b->center, sizeof a->center) == 0;
    ok &= a->skipped == b->skipped;
    return ok;
}

// A byte copy of everything load may write (whole arenas, padding included) and the position.
typedef struct s_snap {
    unsigned char *buf;
    size_t n;
} s_snap;

static void s_snap_take(s_snap *s, const s_model *m, const ser_ckpt_pos *pos) {
    size_t np = m->tab.total * 4, nb = m->btab.total * 4, ns = (size_t)m->tab.n * 8;
    s->n = 3 * np + nb + ns + sizeof m->center + sizeof m->skipped + sizeof *pos;
    s->buf = malloc(s->n);
    assert_non_null(s->buf);
    unsigned char *p = s->buf;
#define PUT(src, len) (memcpy(p, (src), (len)), p += (len))
    PUT(m->params, np);
    PUT(m->opt.exp_avg, np);
    PUT(m->opt.exp_avg_sq, np);
    PUT(m->buffers, nb);
    PUT(m->opt.step, ns);
    PUT(m->center, sizeof m->center);
    PUT(&m->skipped, sizeof m->skipped);
    PUT(pos, sizeof *pos);
#undef PUT
}

static void s_snap_assert_same(const s_snap *s, const s_model *m, const ser_ckpt_pos *pos,
                               const char *what) {
    s_snap now;
    s_snap_take(&now, m, pos);
    if (now.n != s->n || memcmp(now.buf, s->buf, s->n) != 0)
        fail_msg("%s: a refused load modified the bound memory", what);
    free(now.buf);
}

static void s_config(ser_config *cfg) {
    ser_config_defaults(cfg);
}

// --- names -------------------------------------------------------------------------------------
static void test_names(void **state) {
    (void)state;
    char buf[64];
    int64_t s = -1;
    assert_string_equal(ser_ckpt_name(buf, sizeof buf, 100), "ckpt-0000000100.safetensors");
    assert_string_equal(ser_ckpt_name(buf, sizeof buf, 0), "ckpt-0000000000.safetensors");
    assert_true(ser_ckpt_parse_name("ckpt-0000000100.safetensors", &s));
    assert_int_equal(s, 100);
    assert_true(ser_ckpt_parse_name("ckpt-12345678901.safetensors", &s));
    assert_int_equal(s, 12345678901LL);
    assert_true(ser_ckpt_parse_name("ckpt-9223372036854775807.safetensors", &s));
    assert_true(s == INT64_MAX);
    const char *bad[] = {
        "ckpt-100.safetensors",
        "ckpt-00000001000.safetensors",  // not canonical
        "ckpt-0000000100.safetensors.tmp.42",
        "ckpt-000000010a.safetensors",
        "ckpt--000000100.safetensors",
        "ckpt-9999999999999999999.safetensors",  // > int64
        "ckpt-0000000100.safetensor",
        "xckpt-0000000100.safetensors",
        "latest",
        "",
        "ckpt-0000000100.safetensors ",
        "ckpt- 000000100.safetensors",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (ser_ckpt_parse_name(bad[i], &s)) fail_msg("'%s' parsed as a checkpoint name", bad[i]);
}

// --- round trip ----------------------------------------------------------------------------------
static void test_roundtrip_bitwise(void **state) {
    (void)state;
    char dir[256], dir2[256], path[1024], path2[1024], err[SER_ERR_LEN];
    ser_config cfg;
    s_config(&cfg);
    s_model a, b;
    s_model_init(&a, 0);
    s_model_init(&b, 0);
    s_model_fill(&a, 1, 3, 0);
    s_model_fill(&b, 2, 2, 1);  // b also has state for the predictor: load must clear it
    assert_false(s_model_equal(&a, &b, 0));
    ser_ckpt_pos pos = {7, 2, 12345, 5}, got = {0, 0, 0, 0};

    s_newdir(dir, sizeof dir, "rt");
    int rc = ser_ckpt_save(a.ck, dir, &pos, &cfg, 3, path, sizeof path, err);
    s_check_rc(rc, SER_OK, err, "save");
    char want[512];
    snprintf(want, sizeof want, "%s/ckpt-0000000007.safetensors", dir);
    assert_string_equal(path, want);
    size_t n;
    unsigned char *latest;
    snprintf(want, sizeof want, "%s/latest", dir);
    latest = s_read_all(want, &n);
    latest[n] = 0;
    assert_string_equal((char *)latest, "ckpt-0000000007.safetensors\n");
    free(latest);

    rc = ser_ckpt_load(b.ck, path, &cfg, &got, err);
    s_check_rc(rc, SER_OK, err, "load");
    assert_true(s_model_equal(&a, &b, 1));
    assert_int_equal(got.step, 7);
    assert_int_equal(got.epoch, 2);
    assert_int_equal(got.iters_per_epoch, 5);
    assert_int_equal(got.data_cursor, 12345);

    // What is in the file: names, dtypes, metadata.
    ser_st_file *f;
    rc = ser_st_open(&f, path, err);
    s_check_rc(rc, SER_OK, err, "open");
    assert_string_equal(ser_st_meta(f, "format"), SER_CKPT_FORMAT);
    assert_string_equal(ser_st_meta(f, "format_version"), "2");
    char hex[17];
    assert_string_equal(ser_st_meta(f, "config_hash"), ser_config_hash_hex(&cfg, hex));
    assert_non_null(strstr(ser_st_meta(f, "content_hash"), "xxh3-64:"));
    assert_int_equal(strlen(ser_st_meta(f, "content_hash")), strlen("xxh3-64:") + 16);
    ser_config back;
    ser_config_defaults(&back);
    ser_config_set_arg(&back, "optim.lr=0.5", err);
    rc = ser_config_load_string(&back, ser_st_meta(f, "config"), "stored", err);
    s_check_rc(rc, SER_OK, err, "stored config");
    assert_true(ser_config_equal(&back, &cfg));  // the full dump, every key
    const ser_st_entry *e = ser_st_find(f, "predictor.1.num_batches_tracked");
    assert_non_null(e);
    assert_int_equal(e->dtype, SER_DT_I64);  // as PyTorch writes it
    assert_int_equal(e->ndim, 0);
    assert_non_null(ser_st_find(f, "base_encoder.blocks.0.attn.qkv.weight"));
    assert_non_null(ser_st_find(f, "optimizer.base_encoder.blocks.0.attn.qkv.weight.exp_avg"));
    e = ser_st_find(f, "optimizer.base_encoder.pos_embed.step");
    assert_non_null(e);
    assert_int_equal(e->dtype, SER_DT_I64);
    assert_int_equal(*(const int64_t *)e->data, 3);
    assert_null(ser_st_find(f, "optimizer.predictor.0.weight.exp_avg"));  // step 0: no state
    assert_null(ser_st_find(f, "optimizer.base_encoder.patch_embed.proj.weight.step"));  // frozen
    assert_non_null(ser_st_find(f, "dino_loss.center"));
    assert_non_null(ser_st_find(f, "stats.skipped_steps"));
    e = ser_st_find(f, "train.data_cursor");
    assert_non_null(e);
    assert_int_equal(*(const int64_t *)e->data, 12345);
    assert_int_equal(ser_st_count(f), 8 + 3 * 3 + 1 + 1 + 4);  // 4 position tensors
    ser_st_destroy(&f);

    // The bytes are a pure function of the state and the config: saving the loaded copy into
    // another directory gives the same file.
    s_newdir(dir2, sizeof dir2, "rt");
    rc = ser_ckpt_save(b.ck, dir2, &got, &cfg, 3, path2, sizeof path2, err);
    s_check_rc(rc, SER_OK, err, "save again");
    size_t n1, n2;
    unsigned char *f1 = s_read_all(path, &n1), *f2 = s_read_all(path2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(f1, f2, n1);
    free(f1), free(f2);

    // verify() reads the position without a binding; a NULL config skips the config check.
    ser_ckpt_pos vp;
    rc = ser_ckpt_verify(path, &cfg, &vp, err);
    s_check_rc(rc, SER_OK, err, "verify");
    assert_int_equal(vp.data_cursor, 12345);
    s_model_fill(&b, 5, 1, 1);
    rc = ser_ckpt_load(b.ck, path, NULL, &got, err);
    s_check_rc(rc, SER_OK, err, "load without config");
    assert_true(s_model_equal(&a, &b, 1));

    s_model_free(&a);
    s_model_free(&b);
}

// --- the run directory ---------------------------------------------------------------------------
static void test_rotation_keep_last_k(void **state) {
    (void)state;
    char dir[256], p[1024], err[SER_ERR_LEN], buf[256];
    ser_config cfg;
    s_config(&cfg);
    s_model m;
    s_model_init(&m, 0);
    s_model_fill(&m, 3, 1, 0);
    s_newdir(dir, sizeof dir, "rot");
    for (int64_t s = 10; s <= 60; s += 10) {
        ser_ckpt_pos pos = {s, 0, s * 8, 0};
        s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 3, NULL, 0, err), SER_OK, err, "save");
    }
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), "40,50,60");

    // Leftovers of killed saves are removed by the next save; other files are left alone.
    const char *junk[] = {"ckpt-0000000070.safetensors.tmp.999", "latest.tmp.12"};
    const char *keep[] = {"notes.txt", "ckpt-12.safetensors", "ckpt-0000000001.safetensors.bak"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, i < 2 ? junk[i] : keep[i - 2]);
        s_write_all(p, "x", 1);
    }
    assert_int_equal(s_count(dir, ".tmp."), 2);

    // A step older than the newest (a run resumed from an older checkpoint): the newer files
    // stay, `latest` names the one just written.
    ser_ckpt_pos pos = {35, 0, 0, 0};
    s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 3, NULL, 0, err), SER_OK, err, "save 35");
    assert_int_equal(s_count(dir, ".tmp."), 0);
    for (int i = 0; i < 3; i++) assert_true(s_exists(dir, keep[i]));
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), "35,40,50,60");
    int64_t latest = -1;
    s_check_rc(ser_ckpt_find_latest(dir, p, sizeof p, &latest, err), SER_OK, err, "find");
    assert_int_equal(latest, 35);

    pos.step = 70;
    s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 3, NULL, 0, err), SER_OK, err, "save 70");
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), "50,60,70");
    pos.step = 80;
    s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 1, NULL, 0, err), SER_OK, err, "save 80");
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), "80");
    for (int64_t s = 90; s <= 100; s += 10) {  // keep_last 0: keep everything
        pos.step = s;
        s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 0, NULL, 0, err), SER_OK, err, "save");
    }
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), "80,90,100");
    // Saving the same step again replaces it atomically.
    s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 0, NULL, 0, err), SER_OK, err, "resave");
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), "80,90,100");

    // A second process saving into the same directory is refused while the first holds the lock
    // (flock locks belong to open files, so a second open in this process stands in for it).
    snprintf(p, sizeof p, "%s/.ckpt.lock", dir);
    int lfd = open(p, O_RDWR);
    assert_true(lfd >= 0);
    assert_int_equal(flock(lfd, LOCK_EX | LOCK_NB), 0);
    pos.step = 105;
    s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 0, NULL, 0, err), SER_EIO, err, "locked");
    assert_non_null(strstr(err, "another process is saving checkpoints"));
    assert_false(s_exists(dir, "ckpt-0000000105.safetensors"));
    close(lfd);
    s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 0, NULL, 0, err), SER_OK, err, "unlocked");

    // Negative positions are refused before anything is written.
    ser_ckpt_pos neg = {110, -1, 0, 0};
    s_check_rc(ser_ckpt_save(m.ck, dir, &neg, &cfg, 0, NULL, 0, err), SER_EINVAL, err, "neg");
    assert_false(s_exists(dir, "ckpt-0000000110.safetensors"));
    s_model_free(&m);
}

static void test_find_latest(void **state) {
    (void)state;
    char dir[256], p[1024], lp[1024], err[SER_ERR_LEN];
    int64_t step = -1;
    ser_config cfg;
    s_config(&cfg);
    s_model m;
    s_model_init(&m, 0);
    s_model_fill(&m, 4, 1, 0);
    ser_ckpt_pos pos = {0, 0, 0, 0};

    s_newdir(dir, sizeof dir, "find");
    s_check_rc(ser_ckpt_find_latest(dir, p, sizeof p, &step, err), SER_ENOENT, err, "no dir");
    s_check_rc(ser_ckpt_load_latest_valid(m.ck, dir, &cfg, &pos, NULL, 0, err), SER_ENOENT, err,
               "no dir");
    assert_int_equal(mkdir(dir, 0755), 0);
    s_check_rc(ser_ckpt_find_latest(dir, p, sizeof p, &step, err), SER_ENOENT, err, "empty dir");
    s_check_rc(ser_ckpt_load_latest_valid(m.ck, dir, &cfg, &pos, NULL, 0, err), SER_ENOENT, err,
               "empty dir");

    for (int64_t s = 10; s <= 20; s += 10) {
        pos.step = s;
        s_check_rc(ser_ckpt_save(m.ck, dir, &pos, &cfg, 0, NULL, 0, err), SER_OK, err, "save");
    }
    s_check_rc(ser_ckpt_find_latest(dir, p, sizeof p, &step, err), SER_OK, err, "find");
    assert_int_equal(step, 20);
    char want[1024];
    snprintf(want, sizeof want, "%s/ckpt-0000000020.safetensors", dir);
    assert_string_equal(p, want);

    snprintf(lp, sizeof lp, "%s/latest", dir);
    const char *pointer[] = {"ckpt-0000000010.safetensors\n", "garbage\n",
                             "ckpt-0000000099.safetensors\n", "../ckpt-0000000010.safetensors"};
    const int64_t expect[] = {10, 20, 20, 20};  // a pointer that does not check out: scan
    for (int i = 0; i < 4; i++) {
        s_write_all(lp, pointer[i], strlen(pointer[i]));
        s_check_rc(ser_ckpt_find_latest(dir, NULL, 0, &step, err), SER_OK, err, "find");
        assert_int_equal(step, expect[i]);
    }
    unlink(lp);
    s_check_rc(ser_ckpt_find_latest(dir, NULL, 0, &step, err), SER_OK, err, "no pointer");
    assert_int_equal(step, 20);
    s_model_free(&m);
}

// --- refusals ------------------------------------------------------------------------------------
// Saves model a at step 5 into a fresh directory; returns the path in path.
static void s_save_one(s_model *a, const ser_config *cfg, char *path, size_t n) {
    char dir[256], err[SER_ERR_LEN];
    ser_ckpt_pos pos = {5, 1, 40, 0};
    s_newdir(dir, sizeof dir, "ref");
    s_check_rc(ser_ckpt_save(a->ck, dir, &pos, cfg, 3, path, n, err), SER_OK, err, "save");
}

// Tries to load path into b; asserts the refusal code (or any refusal when want == 1) and that
// b and pos are untouched; returns the message.
static const char *s_expect_refused(s_model *b, const char *path, const ser_config *cfg, int want,
                                    char err[SER_ERR_LEN], const char *what) {
    ser_ckpt_pos pos = {-7, -8, -9, 0};
    s_snap snap;
    s_snap_take(&snap, b, &pos);
    err[0] = 0;
    int rc = ser_ckpt_load(b->ck, path, cfg, &pos, err);
    if (rc == SER_OK || (want != 1 && rc != want))
        fail_msg("%s: got %s, want %s (%s)", what, ser_strerror(rc),
                 want == 1 ? "a refusal" : ser_strerror(want), err);
    if (strlen(err) == 0) fail_msg("%s: refused without a message", what);
    s_snap_assert_same(&snap, b, &pos, what);
    free(snap.buf);
    return err;
}

// Every byte of the file flipped in turn (XOR 0x01 or 0x80, alternating): each copy is refused.
static void test_refuse_flipped_bytes(void **state) {
    (void)state;
    char path[1024], bad[1024], err[SER_ERR_LEN], what[64];
    ser_config cfg;
    s_config(&cfg);
    s_model a, b;
    s_model_init(&a, 0);
    s_model_init(&b, 0);
    s_model_fill(&a, 6, 2, 0);
    s_model_fill(&b, 7, 2, 0);
    s_save_one(&a, &cfg, path, sizeof path);
    size_t n;
    unsigned char *buf = s_read_all(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    // The bad copies keep the checkpoint's name (in another directory), so only the bytes differ.
    char dir[256];
    s_newdir(dir, sizeof dir, "flip");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(bad, sizeof bad, "%s/ckpt-0000000005.safetensors", dir);
    int by_hash = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i % 2 ? 0x80 : 0x01;
        buf[i] ^= x;
        s_write_all(bad, buf, n);
        buf[i] ^= x;
        snprintf(what, sizeof what, "byte %zu ^ 0x%02x", i, x);
        // Data bytes are caught by the content hash; header bytes by the parser or the hash.
        s_expect_refused(&b, bad, &cfg, i >= 8 + hlen ? SER_EHASH : 1, err, what);
        by_hash += strstr(err, "content hash mismatch") != NULL;
    }
    fprintf(stderr,
            "flipped each of %zu bytes (header %llu): all refused, %d by the content "
            "hash, the rest by the parser\n",
            n, (unsigned long long)hlen, by_hash);
    s_write_all(bad, buf, n);
    ser_ckpt_pos pos;
    s_check_rc(ser_ckpt_load(b.ck, bad, &cfg, &pos, err), SER_OK, err, "intact copy");
    free(buf);
    s_model_free(&a);
    s_model_free(&b);
}

static void test_refuse_truncated(void **state) {
    (void)state;
    char path[1024], bad[1024], err[SER_ERR_LEN], what[64], dir[256];
    ser_config cfg;
    s_config(&cfg);
    s_model a, b;
    s_model_init(&a, 0);
    s_model_init(&b, 0);
    s_model_fill(&a, 8, 2, 0);
    s_model_fill(&b, 9, 2, 0);
    s_save_one(&a, &cfg, path, sizeof path);
    size_t n;
    unsigned char *buf = s_read_all(path, &n);
    s_newdir(dir, sizeof dir, "trunc");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(bad, sizeof bad, "%s/ckpt-0000000005.safetensors", dir);
    int tried = 0;
    for (size_t len = 0; len < n; len += len < 64 || len > n - 64 ? 1 : 37) {
        s_write_all(bad, buf, len);
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", len, n);
        s_expect_refused(&b, bad, &cfg, 1, err, what);
        tried++;
    }
    // Appended garbage is refused too (the buffer must be covered exactly).
    unsigned char *longer = malloc(n + 8);
    memcpy(longer, buf, n);
    memset(longer + n, 0, 8);
    s_write_all(bad, longer, n + 8);
    s_expect_refused(&b, bad, &cfg, SER_EFORMAT, err, "8 bytes appended");
    fprintf(stderr, "%d truncations of a %zu-byte checkpoint: all refused\n", tried, n);
    free(longer);
    free(buf);
    s_model_free(&a);
    s_model_free(&b);
}

// Copies the checkpoint src to dst through the safetensors writer, with one metadata value
// replaced (key NULL: none) and one tensor dropped (drop NULL: none); the content hash is kept.
static void s_rewrite(const char *src, const char *dst, const char *key, const char *value,
                      const char *drop) {
    char err[SER_ERR_LEN];
    ser_st_file *f;
    s_check_rc(ser_st_open(&f, src, err), SER_OK, err, "open");
    ser_st_writer *w = ser_st_writer_new();
    for (int i = 0; i < ser_st_count(f); i++) {
        const ser_st_entry *e = ser_st_at(f, i);
        if (drop && strcmp(e->name, drop) == 0) continue;
        ser_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, e->data);
    }
    const char *keys[] = {"format", "format_version", "config_hash", "config", "content_hash"};
    for (int k = 0; k < 5; k++) {
        const char *v = key && strcmp(key, keys[k]) == 0 ? value : ser_st_meta(f, keys[k]);
        if (v) ser_st_writer_meta(w, keys[k], v);
    }
    s_check_rc(ser_st_writer_save(w, dst, err), SER_OK, err, "rewrite");
    ser_st_writer_destroy(&w);
    ser_st_destroy(&f);
}

static void test_refuse_version_format_tamper(void **state) {
    (void)state;
    char path[1024], bad[1024], err[SER_ERR_LEN], dir[256];
    ser_config cfg;
    s_config(&cfg);
    s_model a, b;
    s_model_init(&a, 0);
    s_model_init(&b, 0);
    s_model_fill(&a, 10, 2, 0);
    s_model_fill(&b, 11, 2, 0);
    s_save_one(&a, &cfg, path, sizeof path);
    s_newdir(dir, sizeof dir, "ver");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(bad, sizeof bad, "%s/ckpt-0000000005.safetensors", dir);

    s_rewrite(path, bad, NULL, NULL, NULL);  // the same content: still loads
    ser_ckpt_pos pos;
    s_check_rc(ser_ckpt_load(b.ck, bad, &cfg, &pos, err), SER_OK, err, "plain rewrite");
    s_model_fill(&b, 11, 2, 0);

    s_rewrite(path, bad, "format_version", "3", NULL);
    s_expect_refused(&b, bad, &cfg, SER_EVERSION, err, "version 3");
    assert_non_null(strstr(err, "format version 3, this ser reads version 2"));
    assert_non_null(strstr(err, "newer ser"));
    s_rewrite(path, bad, "format_version", "1", NULL);  // before train.iters_per_epoch
    s_expect_refused(&b, bad, &cfg, SER_EVERSION, err, "version 1");
    assert_non_null(strstr(err, "older ser"));
    s_rewrite(path, bad, "format_version", "1x", NULL);
    s_expect_refused(&b, bad, &cfg, SER_EVERSION, err, "version 1x");
    s_rewrite(path, bad, "format", "ser-step-v1", NULL);
    s_expect_refused(&b, bad, &cfg, SER_EFORMAT, err, "format");
    assert_non_null(strstr(err, "not a ser checkpoint"));
    // A tensor removed, or the config swapped, behind the hash's back.
    s_rewrite(path, bad, NULL, NULL, "optimizer.base_encoder.pos_embed.exp_avg");
    s_expect_refused(&b, bad, &cfg, SER_EHASH, err, "tensor dropped");
    s_rewrite(path, bad, "content_hash", "xxh3-64:0000000000000000", NULL);
    s_expect_refused(&b, bad, &cfg, SER_EHASH, err, "hash replaced");
    assert_non_null(strstr(err, "corrupt or was modified"));
    s_rewrite(path, bad, "content_hash", NULL, NULL);
    s_expect_refused(&b, bad, &cfg, SER_EFORMAT, err, "no hash");
    // A plain safetensors file of weights is not a checkpoint.
    ser_st_writer *w = ser_st_writer_new();
    ser_st_writer_add_ptab(w, &a.tab, a.params, "");
    s_check_rc(ser_st_writer_save(w, bad, err), SER_OK, err, "weights");
    ser_st_writer_destroy(&w);
    s_expect_refused(&b, bad, &cfg, SER_EFORMAT, err, "weights file");
    // Renamed to another step.
    snprintf(bad, sizeof bad, "%s/ckpt-0000000006.safetensors", dir);
    s_rewrite(path, bad, NULL, NULL, NULL);
    s_expect_refused(&b, bad, &cfg, SER_EFORMAT, err, "renamed");
    assert_non_null(strstr(err, "renamed"));
    s_model_free(&a);
    s_model_free(&b);
}

static void test_refuse_config_mismatch(void **state) {
    (void)state;
    char path[1024], err[SER_ERR_LEN], ha[17], hb[17];
    ser_config cfg, other, cosmetic;
    s_config(&cfg);
    s_config(&other);
    s_config(&cosmetic);
    assert_int_equal(ser_config_set_arg(&other, "optim.lr=0.0005", err), SER_OK);
    assert_int_equal(ser_config_set_arg(&other, "data.shards=4", err), SER_OK);
    assert_int_equal(ser_config_set_arg(&other, "run.name=other", err), SER_OK);  // not hashed
    assert_int_equal(ser_config_set_arg(&cosmetic, "run.name=renamed", err), SER_OK);
    assert_int_equal(ser_config_set_arg(&cosmetic, "run.out_dir=elsewhere", err), SER_OK);
    assert_int_equal(ser_config_set_arg(&cosmetic, "cluster.port=7000", err), SER_OK);
    s_model a, b;
    s_model_init(&a, 0);
    s_model_init(&b, 0);
    s_model_fill(&a, 12, 2, 0);
    s_model_fill(&b, 13, 2, 0);
    s_save_one(&a, &cfg, path, sizeof path);

    s_expect_refused(&b, path, &other, SER_ECONFIG, err, "config");
    fprintf(stderr, "message: %s\n", err);
    assert_non_null(strstr(err, "was written by config"));
    assert_non_null(strstr(err, ser_config_hash_hex(&cfg, ha)));
    assert_non_null(strstr(err, ser_config_hash_hex(&other, hb)));
    assert_non_null(strstr(err, "(differs: optim.lr, data.shards)"));
    assert_null(strstr(err, "run.name"));
    s_check_rc(ser_ckpt_verify(path, &other, NULL, err), SER_ECONFIG, err, "verify");

    // Another method: only method.name differs among the options that matter.
    ser_config dino;
    s_config(&dino);
    assert_int_equal(ser_config_set_arg(&dino, "method.name=dino", err), SER_OK);
    s_expect_refused(&b, path, &dino, SER_ECONFIG, err, "method");
    assert_non_null(strstr(err, "(differs: method.name)"));

    // Many differences: the line stays one line, ends in "...)", and every key is logged.
    ser_config many;
    s_config(&many);
    const char *sets[] = {"optim.lr=0.001",
                          "optim.min_lr=0.0001",
                          "optim.weight_decay=0.05",
                          "optim.weight_decay_end=0.2",
                          "optim.beta1=0.8",
                          "optim.beta2=0.99",
                          "optim.eps=1e-6",
                          "optim.warmup_epochs=5",
                          "optim.epochs=50",
                          "optim.clip=1",
                          "data.seed=7",
                          "data.global_batch=1024"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        assert_int_equal(ser_config_set_arg(&many, sets[i], err), SER_OK);
    s_expect_refused(&b, path, &many, SER_ECONFIG, err, "many");
    fprintf(stderr, "message: %s\n", err);
    assert_non_null(strstr(err, "(differs: optim.lr, optim.min_lr, "));
    assert_string_equal(err + strlen(err) - 6, ", ...)");

    // Options that cannot change results do not block a resume.
    ser_ckpt_pos pos;
    s_check_rc(ser_ckpt_load(b.ck, path, &cosmetic, &pos, err), SER_OK, err, "cosmetic");
    assert_true(s_model_equal(&a, &b, 1));

    // load_latest_valid stops at a config mismatch (older checkpoints share the config).
    char dir[256];
    snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(path, '/') - path), path);
    s_model_fill(&b, 13, 2, 0);
    pos = (ser_ckpt_pos){-1, -1, -1, 0};
    s_snap snap;
    s_snap_take(&snap, &b, &pos);
    s_check_rc(ser_ckpt_load_latest_valid(b.ck, dir, &other, &pos, NULL, 0, err), SER_ECONFIG, err,
               "latest valid, other config");
    s_snap_assert_same(&snap, &b, &pos, "latest valid, other config");
    free(snap.buf);
    s_model_free(&a);
    s_model_free(&b);
}

static void test_refuse_layout(void **state) {
    (void)state;
    char path[1024], err[SER_ERR_LEN];
    ser_config cfg;
    s_config(&cfg);
    s_model a;
    s_model_init(&a, 0);
    s_model_fill(&a, 14, 2, 0);
    s_save_one(&a, &cfg, path, sizeof path);

    // A tensor bound that the file lacks (the model grew).
    s_model b;
    s_model_init(&b, 0);
    s_model_fill(&b, 15, 2, 0);
    float extra[3] = {0};
    const int64_t three[1] = {3};
    ser_ckpt_add_f32(b.ck, "extra.new", extra, 1, three);
    s_expect_refused(&b, path, &cfg, SER_EFORMAT, err, "missing tensor");
    assert_non_null(strstr(err, "1 missing, first 'extra.new'"));
    s_model_free(&b);

    // A tensor in the file that nothing binds (strict, like load_state_dict(strict=True)).
    s_model_init(&b, 0);
    s_model_fill(&b, 15, 2, 0);
    ser_ckpt_destroy(&b.ck);
    b.ck = ser_ckpt_new();
    ser_ckpt_add_table(b.ck, &b.tab, b.params, NULL);
    ser_ckpt_add_table(b.ck, &b.btab, b.buffers, NULL);
    ser_ckpt_add_optim(b.ck, &b.opt);
    ser_ckpt_add_i64(b.ck, "stats.skipped_steps", &b.skipped);
    s_expect_refused(&b, path, &cfg, SER_EFORMAT, err, "unexpected tensor");
    assert_non_null(strstr(err, "1 unexpected, first 'dino_loss.center'"));
    // The same extra with another shape.
    const int64_t other_shape[2] = {2, 3};
    ser_ckpt_add_f32(b.ck, "dino_loss.center", b.center, 2, other_shape);
    s_expect_refused(&b, path, &cfg, SER_ESHAPE, err, "extra shape");
    assert_non_null(strstr(err,
                           "'dino_loss.center': shape [1,6] in the checkpoint, [2,3] in "
                           "this job"));
    s_model_free(&b);

    // A parameter of another shape (its optimizer state too).
    s_model_init(&b, 1);
    s_model_fill(&b, 15, 2, 0);
    s_expect_refused(&b, path, &cfg, SER_ESHAPE, err, "param shape");
    assert_non_null(strstr(err, "predictor.0.weight"));
    s_model_free(&b);

    // Optimizer state of a tensor that is frozen in this job.
    s_model_init(&b, 2);
    s_model_fill(&b, 15, 2, 0);
    s_expect_refused(&b, path, &cfg, SER_EFORMAT, err, "state of a frozen tensor");
    assert_non_null(
        strstr(err, "unexpected, first 'optimizer.base_encoder.blocks.0.attn.qkv.bias"));
    s_model_free(&b);
    s_model_free(&a);
}

// Corrupt newest, truncated middle: load_latest_valid falls back to the oldest and says so.
static void test_latest_valid_walks_back(void **state) {
    (void)state;
    char dir[256], p[1024], got[1024], err[SER_ERR_LEN];
    ser_config cfg;
    s_config(&cfg);
    s_model a, b;
    s_model_init(&a, 0);
    s_model_init(&b, 0);
    s_newdir(dir, sizeof dir, "walk");
    for (int64_t s = 10; s <= 30; s += 10) {
        s_model_fill(&a, (uint64_t)s, 2, 0);
        ser_ckpt_pos pos = {s, 0, s, 0};
        s_check_rc(ser_ckpt_save(a.ck, dir, &pos, &cfg, 0, NULL, 0, err), SER_OK, err, "save");
    }
    size_t n;
    snprintf(p, sizeof p, "%s/ckpt-0000000030.safetensors", dir);
    unsigned char *buf = s_read_all(p, &n);
    buf[n - 3] ^= 0x10;
    s_write_all(p, buf, n);
    free(buf);
    snprintf(p, sizeof p, "%s/ckpt-0000000020.safetensors", dir);
    buf = s_read_all(p, &n);
    s_write_all(p, buf, n / 2);
    free(buf);

    ser_ckpt_pos pos;
    s_model_fill(&b, 99, 1, 1);
    s_check_rc(ser_ckpt_load_latest_valid(b.ck, dir, &cfg, &pos, got, sizeof got, err), SER_OK, err,
               "latest valid");
    assert_int_equal(pos.step, 10);
    assert_non_null(strstr(got, "ckpt-0000000010.safetensors"));
    s_model_fill(&a, 10, 2, 0);
    assert_true(s_model_equal(&a, &b, 1));

    // All three bad: the newest's refusal, never ENOENT (which would mean "start afresh").
    snprintf(p, sizeof p, "%s/ckpt-0000000010.safetensors", dir);
    buf = s_read_all(p, &n);
    buf[n - 1] ^= 0x01;
    s_write_all(p, buf, n);
    free(buf);
    s_snap snap;
    pos = (ser_ckpt_pos){-1, -1, -1, 0};
    s_snap_take(&snap, &b, &pos);
    s_check_rc(ser_ckpt_load_latest_valid(b.ck, dir, &cfg, &pos, NULL, 0, err), SER_EHASH, err,
               "all bad");
    s_snap_assert_same(&snap, &b, &pos, "all bad");
    free(snap.buf);
    fprintf(stderr, "message: %s\n", err);
    assert_non_null(strstr(err, "ckpt-0000000030"));
    assert_non_null(strstr(err, "2 older refused too"));

    // `latest` older than the newest file (a run resumed from an older checkpoint): it wins.
    s_newdir(dir, sizeof dir, "walk");
    for (int64_t s = 10; s <= 30; s += 10) {
        s_model_fill(&a, (uint64_t)s, 2, 0);
        ser_ckpt_pos q = {s, 0, s, 0};
        s_check_rc(ser_ckpt_save(a.ck, dir, &q, &cfg, 0, NULL, 0, err), SER_OK, err, "save");
    }
    snprintf(p, sizeof p, "%s/latest", dir);
    s_write_all(p, "ckpt-0000000020.safetensors\n", 28);
    s_check_rc(ser_ckpt_load_latest_valid(b.ck, dir, &cfg, &pos, NULL, 0, err), SER_OK, err,
               "latest pointer");
    assert_int_equal(pos.step, 20);
    s_model_free(&a);
    s_model_free(&b);
}

// --- crash safety --------------------------------------------------------------------------------
// A large checkpoint whose contents are a pure function of the step, so that the parent can
// check that whatever it finds after a kill is exactly what was saved for that step.
typedef struct s_big {
    ser_ptab tab;
    float *w;
    ser_optim opt;
    ser_ckpt *ck;
} s_big;

#define S_BIG_N (1 << 20)  // floats per tensor: 4 MiB; with the moments 12 MiB per checkpoint

static void s_big_init(s_big *b) {
    memset(b, 0, sizeof *b);
    ser_ptab_init(&b->tab);
    const int64_t big[1] = {S_BIG_N}, small[1] = {16};
    ser_ptab_add(&b->tab, "w", 0, 1, big);
    ser_ptab_add(&b->tab, "b", 0, 1, small);
    b->w = ser_xaligned(sizeof(float) * b->tab.total);
    ser_optim_config oc;
    ser_optim_config_default(&oc);
    char err[SER_ERR_LEN];
    if (ser_optim_init(&b->opt, &b->tab, &oc, err)) SER_ABORT("%s", err);
    b->ck = ser_ckpt_new();
    ser_ckpt_add_table(b->ck, &b->tab, b->w, NULL);
    ser_ckpt_add_optim(b->ck, &b->opt);
}

// A cheap hash of (step, array, index) as a float in [-1, 1): fast enough to refill 12 MiB
// every save cycle, different in every element for every step.
static void s_big_pattern(float *x, size_t n, uint64_t key) {
    for (size_t i = 0; i < n; i++) {
        uint64_t z = key * 0x9e3779b97f4a7c15ull + i;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        x[i] = (float)(int32_t)(uint32_t)(z >> 32) * 0x1p-31f;
    }
}

static void s_big_fill(s_big *b, int64_t step) {
    size_t n = b->tab.total;
    uint64_t s = (uint64_t)step * 3;
    s_big_pattern(b->w, n, s);
    s_big_pattern(b->opt.exp_avg, n, s + 1);
    s_big_pattern(b->opt.exp_avg_sq, n, s + 2);
    for (int i = 0; i < b->tab.n; i++) b->opt.step[i] = step;
}

static void s_big_free(s_big *b) {
    ser_ckpt_destroy(&b->ck);
    ser_optim_free(&b->opt);
    free(b->w);
    ser_ptab_free(&b->tab);
}

// The child: continue from the newest checkpoint and save steps forever (until killed). It
// writes one byte to `ready` once set up, so that the kill times fall into the save cycles.
static SER_NORETURN void s_saver_child(const char *dir, const ser_config *cfg, int ready) {
    s_big b;
    s_big_init(&b);
    char err[SER_ERR_LEN];
    int64_t step = 0;
    if (ser_ckpt_find_latest(dir, NULL, 0, &step, err) != SER_OK) step = 0;
    if (write(ready, "r", 1) != 1) _exit(4);
    close(ready);
    for (;;) {
        step++;
        s_big_fill(&b, step);
        ser_ckpt_pos pos = {step, step / 10, step * 64, 0};
        if (ser_ckpt_save(b.ck, dir, &pos, cfg, 2, NULL, 0, err) != SER_OK) {
            fprintf(stderr, "child: %s\n", err);
            _exit(3);
        }
    }
}

static double s_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void test_kill_during_save(void **state) {
    (void)state;
    char dir[256], err[SER_ERR_LEN], p[1024];
    ser_config cfg;
    s_config(&cfg);
    s_newdir(dir, sizeof dir, "kill");
    assert_int_equal(mkdir(dir, 0755), 0);
    unsigned prev_alarm = alarm(240);  // hard timeout: SIGALRM ends the test binary (a failure)
    int old_level = ser_log_get_level();
    ser_log_set_level(SER_LL_ERROR);  // the children's and loads' notices are expected here

    s_big ref, got;
    s_big_init(&ref);
    s_big_init(&got);
    // One timed cycle (fill and save, then removed) to scale the random kill times.
    double t0 = s_now();
    s_big_fill(&ref, 1);
    ser_ckpt_pos pos = {1, 0, 64, 0};
    char timing[256];
    s_newdir(timing, sizeof timing, "timing");
    s_check_rc(ser_ckpt_save(ref.ck, timing, &pos, &cfg, 2, NULL, 0, err), SER_OK, err, "timed");
    double cycle = s_now() - t0;
    ser_test_rm_rf(timing);

    srand(12345);
    const int iters = 40;
    int64_t last_step = 0;
    int empty = 0, with_tmp = 0, over_k = 0;
    for (int it = 0; it < iters; it++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            s_saver_child(dir, &cfg, fds[1]);
        }
        close(fds[1]);
        char c;
        assert_int_equal(read(fds[0], &c, 1), 1);  // the child is set up (SIGALRM if it hangs)
        close(fds[0]);
        // Anywhere in the child's first ~2.5 save cycles: mid-write, mid-rename, mid-rotation,
        // between saves. `cycle` adapts to what the child really takes (fsync times vary):
        // longer after a kill that found no new checkpoint, shorter after one that did.
        double delay = 2.5 * cycle * (double)rand() / RAND_MAX;
        struct timespec ts = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
        nanosleep(&ts, NULL);
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
            fail_msg("child did not die by SIGKILL (status 0x%x): it failed on its own", status);

        // Every file with a checkpoint name is complete and intact; the newest loads exactly.
        int64_t *steps;
        int n;
        s_check_rc(ser_ckpt_list(dir, &steps, &n, err), SER_OK, err, "list");
        for (int k = 0; k < n; k++) {
            snprintf(p, sizeof p, "%s/ckpt-%010lld.safetensors", dir, (long long)steps[k]);
            s_check_rc(ser_ckpt_verify(p, &cfg, NULL, err), SER_OK, err, p);
        }
        over_k += n > 2;  // killed between the rename and the rotation
        free(steps);
        with_tmp += s_count(dir, ".tmp.") > 0;
        int rc = ser_ckpt_load_latest_valid(got.ck, dir, &cfg, &pos, NULL, 0, err);
        if (rc == SER_ENOENT && last_step == 0) {
            empty++;
            cycle *= 1.3;
            continue;
        }
        cycle *= pos.step > last_step ? 0.9 : 1.3;
        s_check_rc(rc, SER_OK, err, "load_latest_valid after SIGKILL");
        assert_true(pos.step >= last_step);  // never back past a checkpoint once complete
        assert_int_equal(pos.data_cursor, pos.step * 64);
        s_big_fill(&ref, pos.step);
        assert_memory_equal(ref.w, got.w, sizeof(float) * ref.tab.total);
        assert_memory_equal(ref.opt.exp_avg, got.opt.exp_avg, sizeof(float) * ref.tab.total);
        assert_memory_equal(ref.opt.exp_avg_sq, got.opt.exp_avg_sq, sizeof(float) * ref.tab.total);
        assert_int_equal(got.opt.step[0], pos.step);
        last_step = pos.step;
    }
    // The next save removes what the killed ones left.
    s_big_fill(&ref, last_step + 1);
    pos = (ser_ckpt_pos){last_step + 1, 0, (last_step + 1) * 64, 0};
    s_check_rc(ser_ckpt_save(ref.ck, dir, &pos, &cfg, 2, NULL, 0, err), SER_OK, err, "final");
    assert_int_equal(s_count(dir, ".tmp."), 0);
    char buf[128], want[128];
    snprintf(want, sizeof want, "%lld,%lld", (long long)last_step, (long long)last_step + 1);
    assert_string_equal(s_steps_str(dir, buf, sizeof buf), want);
    fprintf(stderr,
            "%d SIGKILLs (adapted save cycle %.0f ms): reached step %lld; %d before any "
            "checkpoint, %d left tmp files, %d between write and rotation\n",
            iters, cycle * 1e3, (long long)last_step, empty, with_tmp, over_k);
    assert_true(last_step > 0);
    s_big_free(&ref);
    s_big_free(&got);
    ser_log_set_level(old_level);
    alarm(prev_alarm);
}

// --- a MoCo run resumed from a checkpoint continues bitwise
// ----------------------------------------
typedef struct s_moco_run {
    ser_st_file *f;
    ser_moco m;
    ser_optim opt;
    ser_ckpt *ck;
    float *inv[2], *eqimg[2][3];
    const float *eqp[2][3];
    ser_group_elem g[2][3];
    ser_batch b;
} s_moco_run;

static void s_moco_config(ser_moco_config *cfg) {
    ser_moco_config_default(cfg);
    ser_vit_config_preset(&cfg->vit, "vit_tiny", 16, 4);
    cfg->vit.dim = 24, cfg->vit.heads = 3, cfg->vit.depth = 4, cfg->vit.mlp_hidden = 48;
    cfg->vit.cls_layer = 2, cfg->vit.freeze_patch_embed = 0;
    cfg->mlp_dim = 32, cfg->dim = 16, cfg->T = 0.2f, cfg->ser_lambda = 0.7f, cfg->ser_tau = 0.4f;
    cfg->ser_proj_dim = 20;
}

// The model and batch of the MoCo fixture; weights from the fixture (from_fixture) or from a
// different seed (the state a checkpoint must overwrite entirely).
static void s_moco_open(s_moco_run *r, const ser_config *job, int from_fixture) {
    memset(r, 0, sizeof *r);
    r->f = ser_test_open_fixture("moco_ser_on.safetensors");
    ser_moco_config mc;
    s_moco_config(&mc);
    char err[SER_ERR_LEN];
    if (ser_moco_init(&r->m, &mc, err)) fail_msg("%s", err);
    if (from_fixture) {
        const ser_ptab *tabs[2] = {&r->m.tab, &r->m.mtab};
        float *arenas[2] = {r->m.params, r->m.mparams};
        if (ser_st_load_ptabs(r->f, tabs, arenas, 2, "param.", 1, err)) fail_msg("%s", err);
        if (ser_st_load_ptab(r->f, &r->m.btab, r->m.buffers, "buffer.", 1, err))
            fail_msg("%s", err);
    } else {
        ser_moco_init_weights(&r->m, 777);
    }
    ser_optim_config oc;
    ser_config_to_optim(job, &oc);
    if (ser_optim_init(&r->opt, &r->m.tab, &oc, err)) fail_msg("%s", err);
    r->ck = ser_ckpt_new();
    ser_ckpt_add_table(r->ck, &r->m.tab, r->m.params, NULL);
    ser_ckpt_add_table(r->ck, &r->m.mtab, r->m.mparams, NULL);
    ser_ckpt_add_table(r->ck, &r->m.btab, r->m.buffers, NULL);
    ser_ckpt_add_optim(r->ck, &r->opt);

    r->inv[0] = ser_test_tensor(r->f, "inv.view0", NULL);
    r->inv[1] = ser_test_tensor(r->f, "inv.view1", NULL);
    float *g = ser_test_tensor(r->f, "eq.g", NULL);  // (3, 2, 5)
    char key[64];
    for (int e = 0; e < 3; e++)
        for (int v = 0; v < 2; v++) {
            const float *q = g + (e * 2 + v) * 5;
            r->g[v][e] = (ser_group_elem){(uint8_t)q[0], (uint8_t)q[1], (uint8_t)q[2],
                                          (int16_t)q[3], (int16_t)q[4]};
            snprintf(key, sizeof key, "eq.view%d.%d", v, e);
            r->eqimg[v][e] = ser_test_tensor(r->f, key, NULL);
            r->eqp[v][e] = r->eqimg[v][e];
        }
    free(g);
    r->b = (ser_batch){.n_inv = 5,
                       .n_eq = 3,
                       .img = 16,
                       .inv = {r->inv[0], r->inv[1]},
                       .eq = {r->eqp[0], r->eqp[1]},
                       .g = {r->g[0], r->g[1]}};
}

static void s_moco_close(s_moco_run *r) {
    for (int v = 0; v < 2; v++) {
        free(r->inv[v]);
        for (int e = 0; e < 3; e++) free(r->eqimg[v][e]);
    }
    ser_ckpt_destroy(&r->ck);
    ser_optim_free(&r->opt);
    ser_moco_free(&r->m);
    ser_st_destroy(&r->f);
}

// Training steps [from, to) as a job runs them: every schedule value and every random draw
// is a function of the step.
static void s_moco_steps(s_moco_run *r, const ser_config *job, int64_t from, int64_t to) {
    ser_sched_params sp;
    ser_config_to_sched(job, 4, &sp);  // 4 iterations per epoch: lr leaves 0 at once
    char err[SER_ERR_LEN];
    for (int64_t it = from; it < to; it++) {
        ser_sched_values sv;
        ser_sched_eval(&sp, it, &sv);
        ser_moco_losses L;
        if (ser_moco_forward_backward(&r->m, &r->b, 2, (float)sv.momentum, (uint64_t)job->data.seed,
                                      (uint32_t)it, &L, err))
            fail_msg("step %lld: %s", (long long)it, err);
        ser_optim_clip_grad(&r->m.tab, r->m.grads, job->optim.clip, job->optim.clip_mode, NULL,
                            NULL, NULL);
        ser_optim_step(&r->opt, r->m.params, r->m.grads, sv.lr, sv.wd, NULL);
    }
}

static int s_same(const char *what, const void *a, const void *b, size_t n) {
    if (memcmp(a, b, n) == 0) return 1;
    fprintf(stderr, "  %s differs after resume\n", what);
    return 0;
}

static void test_moco_resume_bitwise(void **state) {
    (void)state;
    char dir[256], err[SER_ERR_LEN];
    ser_config job;
    s_config(&job);
    assert_int_equal(ser_config_set_arg(&job, "optim.clip=0.5", err), SER_OK);
    s_moco_run straight, first, resumed;

    s_moco_open(&straight, &job, 1);
    s_moco_steps(&straight, &job, 0, 4);

    s_moco_open(&first, &job, 1);
    s_moco_steps(&first, &job, 0, 2);
    s_newdir(dir, sizeof dir, "moco");
    ser_ckpt_pos pos = {2, 0, 2 * 8, 0};
    s_check_rc(ser_ckpt_save(first.ck, dir, &pos, &job, 3, NULL, 0, err), SER_OK, err, "save");
    s_moco_close(&first);

    s_moco_open(&resumed, &job, 0);  // other weights, fresh optimizer: the checkpoint decides
    ser_ckpt_pos got;
    s_check_rc(ser_ckpt_load_latest_valid(resumed.ck, dir, &job, &got, NULL, 0, err), SER_OK, err,
               "resume");
    assert_int_equal(got.step, 2);
    s_moco_steps(&resumed, &job, got.step, 4);

    size_t np = straight.m.tab.total * 4;
    int ok = s_same("params", straight.m.params, resumed.m.params, np);
    ok &= s_same("momentum encoder", straight.m.mparams, resumed.m.mparams,
                 straight.m.mtab.total * 4);
    ok &= s_same("buffers", straight.m.buffers, resumed.m.buffers, straight.m.btab.total * 4);
    ok &= s_same("exp_avg", straight.opt.exp_avg, resumed.opt.exp_avg, np);
    ok &= s_same("exp_avg_sq", straight.opt.exp_avg_sq, resumed.opt.exp_avg_sq, np);
    ok &= s_same("steps", straight.opt.step, resumed.opt.step, (size_t)straight.m.tab.n * 8);
    assert_true(ok);
    fprintf(stderr,
            "MoCo: 4 steps straight == 2 steps, checkpoint, 2 steps (bitwise, %zu "
            "trainable floats)\n",
            straight.m.tab.total);
    s_moco_close(&straight);
    s_moco_close(&resumed);
}

// --- PyTorch: the model subset loads into the reference MoCoSER with strict=True ----------------
static const char s_torch_check[] =
    "import sys\n"
    "import torch\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from ser_ref import MoCoSER\n"
    "from st_io import load_file, load_metadata\n"
    "t = load_file(sys.argv[2])\n"
    "meta = load_metadata(sys.argv[2])\n"
    "assert meta['format'] == 'ser-checkpoint' and meta['format_version'] == '2', meta\n"
    "vit = dict(img_size=16, patch=4, dim=24, depth=4, heads=3, hidden=48, cls_layer=2)\n"
    "m = MoCoSER(vit, mlp_dim=32, dim=16, T=0.2, lam=0.7, tau=0.4, proj_dim=20, ser_grad=True)\n"
    "sd = {k: v for k, v in t.items() if not k.startswith(('optimizer.', 'train.'))}\n"
    "m.load_state_dict(sd, strict=True)\n"
    "ref = m.state_dict()\n"
    "for k, v in sd.items():\n"
    "    assert ref[k].dtype == v.dtype, (k, ref[k].dtype, v.dtype)\n"
    "    assert torch.equal(ref[k], v), k\n"
    "opt = [k for k in t if k.startswith('optimizer.')]\n"
    "for k in opt:\n"
    "    base = k[len('optimizer.'):].rsplit('.', 1)[0]\n"
    "    assert base in sd, k\n"
    "    if not k.endswith('.step'):\n"
    "        assert t[k].shape == sd[base].shape, k\n"
    "print(f'torch strict load: {len(sd)} model tensors, {len(opt)} optimizer tensors, step',\n"
    "      int(t['train.step']))\n";

static void test_pytorch_strict_load(void **state) {
    (void)state;
    if (!ser_test_have_torch()) {
        printf("SKIP: python3-torch not installed; PyTorch strict loading not checked\n");
        fflush(stdout);
        skip();
    }
    char dir[256], path[1024], script[512], cmd[2048], err[SER_ERR_LEN];
    ser_config job;
    s_config(&job);
    s_moco_run r;
    s_moco_open(&r, &job, 1);
    s_moco_steps(&r, &job, 0, 1);
    s_newdir(dir, sizeof dir, "torch");
    ser_ckpt_pos pos = {1, 0, 8, 0};
    s_check_rc(ser_ckpt_save(r.ck, dir, &pos, &job, 3, path, sizeof path, err), SER_OK, err,
               "save");
    snprintf(script, sizeof script, "%s/check_ckpt_load.py", s_root);
    s_write_all(script, s_torch_check, strlen(s_torch_check));
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -B '%s' '%s/..' '%s'", script, SER_FIXTURE_DIR,
             path);
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (status %d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);
    s_moco_close(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_roundtrip_bitwise),
        cmocka_unit_test(test_rotation_keep_last_k),
        cmocka_unit_test(test_find_latest),
        cmocka_unit_test(test_refuse_flipped_bytes),
        cmocka_unit_test(test_refuse_truncated),
        cmocka_unit_test(test_refuse_version_format_tamper),
        cmocka_unit_test(test_refuse_config_mismatch),
        cmocka_unit_test(test_refuse_layout),
        cmocka_unit_test(test_latest_valid_walks_back),
        cmocka_unit_test(test_kill_during_save),
        cmocka_unit_test(test_moco_resume_bitwise),
        cmocka_unit_test(test_pytorch_strict_load),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
