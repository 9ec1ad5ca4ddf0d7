// fuzz_ckpt.c — fuzzes the checkpoint reader (common/io/ser_ckpt.h): ser_ckpt_verify(),
// ser_ckpt_load() into a small binding (fuzz_fixtures.h: a table, AdamW state, an extra F32
// tensor and an I64 scalar), ser_ckpt_find_latest_valid() on the folder, and
// ser_ckpt_parse_name(); on top of the safetensors layer these check the format and version,
// the content hash, the training position, the file name, the stored config (parsed with
// ser_config_load_string when its hash differs) and every bound tensor.
//
// Input: one option byte, then the file.
//   bit 0: repair the content hash. The rest is opened as safetensors and, when it has the
//          four hashed metadata values, written again with the content_hash those give
//          (computed here as docs/checkpoints.md and ser_ckpt.c define it), so the fuzzer
//          reaches the checks behind the hash; otherwise the bytes are used as they are
//   bit 1: name the file ckpt-0000000003.safetensors (the name is then checked against the
//          stored step, and ser_ckpt_find_latest_valid() lists it), else fuzz.safetensors
//   bit 2: verify against the job's config (else NULL: the tools' weights-only check)
// The file lives in a per-process temporary folder (fuzz_util.h), rewritten for each input.
// Checked here beyond "no crash": a refused load leaves the bound memory untouched; a load
// that succeeds was also accepted by ser_ckpt_verify() with the same config, and the
// positions agree; a refusal comes with a reason.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "fuzz_fixtures.h"
#include "fuzz_util.h"
#include "ser_safetensors.h"

static ser_fuzz_ckpt s_b;
static float *s_arena0, *s_m0, *s_v0;
static int64_t s_step0[8];
static float s_center0[6];
static char s_dir[512], s_named[600], s_plain[600];

static void s_cleanup(void) {
    free(s_arena0), free(s_m0), free(s_v0);
    ser_fuzz_ckpt_free(&s_b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    ser_fuzz_ckpt_init(&s_b);
    size_t n = s_b.tab.total;
    s_arena0 = malloc(sizeof(float) * n), s_m0 = malloc(sizeof(float) * n);
    s_v0 = malloc(sizeof(float) * n);
    memcpy(s_arena0, s_b.arena, sizeof(float) * n);
    memcpy(s_m0, s_b.opt.exp_avg, sizeof(float) * n);
    memcpy(s_v0, s_b.opt.exp_avg_sq, sizeof(float) * n);
    memcpy(s_step0, s_b.opt.step, sizeof(int64_t) * (size_t)s_b.tab.n);
    memcpy(s_center0, s_b.center, sizeof s_center0);
    snprintf(s_dir, sizeof s_dir, "%s/run", ser_fuzz_tmpdir());
    if (ser_mkdir_p(s_dir, NULL) != SER_OK) abort();
    snprintf(s_named, sizeof s_named, "%s/ckpt-0000000003.safetensors", s_dir);
    snprintf(s_plain, sizeof s_plain, "%s/fuzz.safetensors", s_dir);
    atexit(s_cleanup);
    return 0;
}

// 1 if the bound memory is as it was after init.
static int s_unchanged(void) {
    size_t n = s_b.tab.total;
    return memcmp(s_arena0, s_b.arena, sizeof(float) * n) == 0 &&
           memcmp(s_m0, s_b.opt.exp_avg, sizeof(float) * n) == 0 &&
           memcmp(s_v0, s_b.opt.exp_avg_sq, sizeof(float) * n) == 0 &&
           memcmp(s_step0, s_b.opt.step, sizeof(int64_t) * (size_t)s_b.tab.n) == 0 &&
           memcmp(s_center0, s_b.center, sizeof s_center0) == 0 && s_b.skipped == 2;
}

static void s_restore(void) {
    size_t n = s_b.tab.total;
    memcpy(s_b.arena, s_arena0, sizeof(float) * n);
    memcpy(s_b.opt.exp_avg, s_m0, sizeof(float) * n);
    memcpy(s_b.opt.exp_avg_sq, s_v0, sizeof(float) * n);
    memcpy(s_b.opt.step, s_step0, sizeof(int64_t) * (size_t)s_b.tab.n);
    memcpy(s_b.center, s_center0, sizeof s_center0);
    s_b.skipped = 2;
}

// --- the content hash, as ser_ckpt.c's header comment defines it ---------------------------
static const char *const s_hashed[4] = {"format", "format_version", "config_hash", "config"};

static void s_hash_u64(XXH3_state_t *st, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    XXH3_64bits_update(st, b, 8);
}

static void s_hash_str(XXH3_state_t *st, const char *s) {
    XXH3_64bits_update(st, s, strlen(s) + 1);
}

static int s_cmp_entry(const void *a, const void *b) {
    return strcmp((*(const ser_st_entry *const *)a)->name, (*(const ser_st_entry *const *)b)->name);
}

// The file with its content_hash recomputed, or NULL when it does not open or lacks a value.
static void *s_repair(const uint8_t *data, size_t size, size_t *out_n) {
    ser_st_file *f = NULL;
    char err[SER_ERR_LEN];
    if (ser_st_open_mem(&f, data, size, err) != SER_OK) return NULL;
    const char *meta[4];
    for (int k = 0; k < 4; k++)
        if (!(meta[k] = ser_st_meta(f, s_hashed[k]))) {
            ser_st_destroy(&f);
            return NULL;
        }
    int n = ser_st_count(f);
    const ser_st_entry **e = malloc(sizeof *e * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) e[i] = ser_st_at(f, i);
    if (n) qsort(e, (size_t)n, sizeof *e, s_cmp_entry);
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    s_hash_str(&st, "ser-checkpoint-hash-v1");
    for (int i = 0; i < n; i++) {
        s_hash_str(&st, e[i]->name);
        s_hash_str(&st, ser_dtype_name(e[i]->dtype));
        s_hash_u64(&st, (uint64_t)e[i]->ndim);
        for (int d = 0; d < e[i]->ndim; d++) s_hash_u64(&st, (uint64_t)e[i]->shape[d]);
        s_hash_u64(&st, e[i]->nbytes);
        if (e[i]->nbytes) XXH3_64bits_update(&st, e[i]->data, e[i]->nbytes);
    }
    for (int k = 0; k < 4; k++) {
        s_hash_str(&st, s_hashed[k]);
        s_hash_str(&st, meta[k]);
    }
    char hex[40];
    snprintf(hex, sizeof hex, "xxh3-64:%016llx", (unsigned long long)XXH3_64bits_digest(&st));
    ser_st_writer *w = ser_st_writer_new();
    for (int i = 0; i < n; i++)
        ser_st_writer_add(w, e[i]->name, e[i]->dtype, e[i]->ndim, e[i]->shape, e[i]->data);
    for (int k = 0; k < 4; k++) ser_st_writer_meta(w, s_hashed[k], meta[k]);
    ser_st_writer_meta(w, "content_hash", hex);
    void *buf = NULL;
    if (ser_st_writer_to_mem(w, &buf, out_n, err) != SER_OK) buf = NULL;
    ser_st_writer_destroy(&w);
    free(e);
    ser_st_destroy(&f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_b.ck) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    int opt = data[0];
    const uint8_t *file = data + 1;
    size_t n = size - 1;
    // The name parser on the raw bytes (up to the first NUL), for free.
    char name[80];
    size_t ln = n < sizeof name - 1 ? n : sizeof name - 1;
    memcpy(name, file, ln);
    name[ln] = 0;
    int64_t named_step = -1;
    if (ser_ckpt_parse_name(name, &named_step) && named_step < 0) {
        fprintf(stderr, "fuzz_ckpt: parse_name gave a negative step\n");
        abort();
    }
    void *repaired = (opt & 1) ? s_repair(file, n, &n) : NULL;
    if (repaired) file = repaired;
    const char *path = (opt & 2) ? s_named : s_plain;
    unlink(s_named), unlink(s_plain);
    if (ser_fuzz_write_file(path, file, n) != 0) {
        perror("fuzz_ckpt: write");
        abort();
    }
    const ser_config *cfg = (opt & 4) ? &s_b.cfg : NULL;
    char err[SER_ERR_LEN] = "";
    ser_ckpt_pos vpos = {-1, -1, -1, -1}, lpos = {-7, -7, -7, -7};
    int vrc = ser_ckpt_verify(path, cfg, &vpos, err);
    if (vrc != SER_OK && !err[0]) {
        fprintf(stderr, "fuzz_ckpt: verify refused (%d) without a reason\n", vrc);
        abort();
    }
    err[0] = 0;
    int lrc = ser_ckpt_load(s_b.ck, path, &s_b.cfg, &lpos, err);
    if (lrc != SER_OK) {
        if (!err[0] || !s_unchanged() || lpos.step != -7) {
            fprintf(stderr,
                    "fuzz_ckpt: a refused load (%d: %s) changed the bound memory or the "
                    "position, or gave no reason\n",
                    lrc, err);
            abort();
        }
    } else {
        ser_ckpt_pos cpos;
        if (ser_ckpt_verify(path, &s_b.cfg, &cpos, err) != SER_OK || cpos.step != lpos.step ||
            cpos.epoch != lpos.epoch || cpos.data_cursor != lpos.data_cursor ||
            cpos.iters_per_epoch != lpos.iters_per_epoch || lpos.step < 0) {
            fprintf(stderr, "fuzz_ckpt: load accepted what verify refuses, or positions differ\n");
            abort();
        }
        s_restore();
    }
    if (opt & 2) {
        char found[700];
        err[0] = 0;
        int frc = ser_ckpt_find_latest_valid(s_dir, found, sizeof found, err);
        if ((frc == SER_OK) != (ser_ckpt_verify(path, NULL, NULL, err) == SER_OK)) {
            fprintf(stderr, "fuzz_ckpt: find_latest_valid disagrees with verify\n");
            abort();
        }
    }
    free(repaired);
    return 0;
}
