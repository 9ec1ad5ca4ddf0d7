// fuzz_make_corpus.c — writes the seed corpora of the fuzz harnesses (tests/fuzz/corpus/<name>/)
// with ser's own writers, so that the valid seeds are exactly what ser sends or writes:
//   wire             envelopes + tensor frames (protobuf-c, as ser_wire_send frames them)
//   loader_request   LoaderShardRequest messages for the fixture loader (fuzz_fixtures.h)
//   loader_reply     replies carrying real shards of the fixture loader, and refusals
//   safetensors      files from ser_st_writer (every dtype) and hand-made headers
//   ckpt             a checkpoint saved by ser_ckpt_save with the fixture binding
//   config           INI texts with overrides
//   jpeg             small JPEGs from TurboJPEG: 4:2:0, 4:4:4, gray, progressive, CMYK, 1x1
//   png              small PNGs from libpng: RGB, RGBA 16-bit interlaced, grey 1/4/16-bit,
//                    grey+alpha, palette with tRNS; one truncated, one announcing 20000 x 20000
//   status_http      HTTP requests for the status port
// Each seed is valid or one small step from valid. It tests nothing itself and is not run by
// ctest; run it by hand after a format changes (docs/fuzzing.md):
//   build/tests/fuzz/fuzz_make_corpus tests/fuzz/corpus
#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "fuzz_fixtures.h"
#include "fuzz_util.h"
#include "loader.pb-c.h"
#include "ser.pb-c.h"
#include "ser_base.h"
#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_dl.h"
#include "ser_dl_service.h"
#include "ser_safetensors.h"
#include "ser_wire.h"

// protobuf-c's string fields are `char *`; every message built here points at literals or
// buffers that outlive the pack call and are never written through.
#pragma GCC diagnostic ignored "-Wcast-qual"

static const char *s_out;

static void s_write(const char *dir, const char *name, const void *data, size_t n) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", s_out, dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/%s/%s", s_out, dir, name);
    if (ser_fuzz_write_file(p, data, n) != 0) {
        fprintf(stderr, "fuzz_make_corpus: cannot write %s: %s\n", p, strerror(errno));
        exit(1);
    }
    printf("%6zu  %s\n", n, p);
}

// An option byte followed by the framing of fuzz_util.h.
static void s_write_frames(const char *dir, const char *name, uint8_t opt, const ser_fuzz_frame *f,
                           int n) {
    size_t need = ser_fuzz_join(f, n, NULL, 0);
    uint8_t *b = malloc(need + 1);
    b[0] = opt;
    ser_fuzz_join(f, n, b + 1, need);
    s_write(dir, name, b, need + 1);
    free(b);
}

// --- wire ----------------------------------------------------------------------------------
typedef struct s_t {
    const char *name;
    int ndim;
    int64_t shape[4];
    const float *data;
} s_t;

// One message as ser_wire_send frames it ([identity,] envelope, tensors), after the option
// byte. version: the envelope's protocol version; only the first `frames` tensor frames are
// written (n for a whole message).
static void s_msg_cut(const char *name, uint8_t opt, const char *identity, int type,
                      uint32_t version, const s_t *t, int n, int frames) {
    Ser__TensorMeta m[12], *mp[12];
    ser_fuzz_frame f[14];
    int nf = 0;
    if (identity) f[nf++] = (ser_fuzz_frame){(const uint8_t *)identity, strlen(identity)};
    for (int i = 0; i < n; i++) {
        ser__tensor_meta__init(&m[i]);
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        m[i].name = (char *)t[i].name, m[i].dtype = SER__DTYPE__DTYPE_F32;
        m[i].n_shape = (size_t)t[i].ndim, m[i].shape = (int64_t *)t[i].shape;
        m[i].nbytes = numel * sizeof(float);
        mp[i] = &m[i];
    }
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.protocol_version = version, e.job_id = SER_FUZZ_JOB, e.type = (Ser__MsgType)type;
    e.step = 7, e.shard = 1, e.momentum = 0.996, e.params_version = 7;
    e.text = type == SER__MSG_TYPE__MSG_HELLO ? "w0" : "";
    e.n_tensors = (size_t)n, e.tensors = mp;
    size_t len = ser__envelope__get_packed_size(&e);
    uint8_t *env = malloc(len ? len : 1);
    ser__envelope__pack(&e, env);
    f[nf++] = (ser_fuzz_frame){env, len};
    for (int i = 0; i < frames; i++)
        f[nf++] = (ser_fuzz_frame){(const uint8_t *)t[i].data, m[i].nbytes};
    s_write_frames("wire", name, opt, f, nf);
    free(env);
}

static void s_msg(const char *name, uint8_t opt, const char *identity, int type, uint32_t version,
                  const s_t *t, int n) {
    s_msg_cut(name, opt, identity, type, version, t, n, n);
}

static void s_wire(void) {
    static float x[64];
    for (int i = 0; i < 64; i++) x[i] = 0.25f * (float)i - 3.0f;
    // g of one equivariant sample: view 0 a 2 x 2 grid, view 1 a 3 x 2 grid turned once
    // (rot180, hflip, rot90, gh, gw).
    static const float g[10] = {0, 1, 0, 2, 2, 1, 0, 1, 3, 2};
    const int v = SER_PROTOCOL_VERSION;
    s_msg("hello_dealer", 0, NULL, SER__MSG_TYPE__MSG_HELLO, v, NULL, 0);
    s_msg("hello_router_job", 3, "w0", SER__MSG_TYPE__MSG_HELLO, v, NULL, 0);
    s_msg("version2", 0, NULL, SER__MSG_TYPE__MSG_HEARTBEAT, 2, NULL, 0);
    s_msg("identity_nul", 1, "w\001x", SER__MSG_TYPE__MSG_HEARTBEAT, v, NULL, 0);
    // PARAMS: student (span 16) and teacher; BACKWARD_DONE: grad.
    s_t params[2] = {{"student", 1, {16}, x}, {"teacher", 1, {16}, x + 16}};
    s_msg("params_teacher", 4, NULL, SER__MSG_TYPE__MSG_PARAMS, v, params, 2);
    s_msg("params", 0, NULL, SER__MSG_TYPE__MSG_PARAMS, v, params, 1);
    s_t grad[1] = {{"grad", 1, {16}, x}};
    s_msg("backward_done_router", 1, "worker-1", SER__MSG_TYPE__MSG_BACKWARD_DONE, v, grad, 1);
    // FORWARD_DONE, 2 rows of C = 3: without equivariant samples, then with one (maps of
    // 4 and 6 tokens), with a teacher.
    s_t fwd[9] = {
        {"qcls0", 2, {2, 3}, x},      {"qcls1", 2, {2, 3}, x + 6},  {"kcls0", 2, {2, 3}, x + 12},
        {"kcls1", 2, {2, 3}, x + 18}, {"qmap0", 2, {4, 3}, x},      {"qmap1", 2, {6, 3}, x + 12},
        {"kmap0", 2, {4, 3}, x + 30}, {"kmap1", 2, {6, 3}, x + 42}, {"g", 3, {1, 2, 5}, g}};
    s_msg("forward_done_plain", 0x01, "w0", SER__MSG_TYPE__MSG_FORWARD_DONE, v, fwd, 2);
    s_msg("forward_done_teacher_eq", 0x05 | 0x10, "w0", SER__MSG_TYPE__MSG_FORWARD_DONE, v, fwd, 9);
    s_t fwd_student[5] = {fwd[0], fwd[1], fwd[4], fwd[5], fwd[8]};
    s_msg("forward_done_eq_any", 0x08, NULL, SER__MSG_TYPE__MSG_FORWARD_DONE, v, fwd_student, 5);
    s_t fwd_short[5] = {fwd[0], fwd[1], fwd[4], {"qmap1", 2, {5, 3}, x}, fwd[8]};
    s_msg("forward_done_bad_map", 0x18, NULL, SER__MSG_TYPE__MSG_FORWARD_DONE, v, fwd_short, 5);
    // BACKWARD: the gradients of those rows and maps.
    s_t bwd[4] = {{"dqcls0", 2, {2, 3}, x},
                  {"dqcls1", 2, {2, 3}, x + 6},
                  {"dqmap0", 2, {4, 3}, x + 12},
                  {"dqmap1", 2, {6, 3}, x + 24}};
    s_msg("backward", 0, NULL, SER__MSG_TYPE__MSG_BACKWARD, v, bwd, 4);
    // A frame missing, and a frame one byte short (hand-cut from a valid message).
    s_msg_cut("frame_missing", 1, "w0", SER__MSG_TYPE__MSG_BACKWARD, v, bwd, 4, 3);
    Ser__TensorMeta m;
    ser__tensor_meta__init(&m);
    int64_t shape[1] = {4};
    m.name = "grad", m.dtype = SER__DTYPE__DTYPE_F32, m.n_shape = 1, m.shape = shape;
    m.nbytes = 16;
    Ser__TensorMeta *mp = &m;
    Ser__Envelope e;
    ser__envelope__init(&e);
    e.protocol_version = (uint32_t)v, e.job_id = SER_FUZZ_JOB;
    e.type = SER__MSG_TYPE__MSG_BACKWARD_DONE, e.n_tensors = 1, e.tensors = &mp;
    uint8_t env[128];
    size_t len = ser__envelope__get_packed_size(&e);
    ser__envelope__pack(&e, env);
    ser_fuzz_frame f[2] = {{env, len}, {(const uint8_t *)x, 15}};
    s_write_frames("wire", "frame_size", 0, f, 2);
}

// --- loader --------------------------------------------------------------------------------
static void s_request(const char *name, uint8_t opt, uint32_t version, const char *job,
                      uint64_t hash, uint64_t step, uint32_t shard, const char *delim) {
    Ser__LoaderShardRequest r = SER__LOADER_SHARD_REQUEST__INIT;
    r.protocol_version = version, r.job_id = (char *)job, r.config_hash = hash, r.step = step;
    r.shard = shard;
    uint8_t buf[256];
    size_t n = ser__loader_shard_request__get_packed_size(&r);
    ser__loader_shard_request__pack(&r, buf);
    ser_fuzz_frame f[3] = {
        {(const uint8_t *)"client-1", 8}, {(const uint8_t *)delim, strlen(delim)}, {buf, n}};
    s_write_frames("loader_request", name, opt, f, 3);
}

static void s_group(Ser__LoaderGroup *m, const ser_group_elem *g) {
    ser__loader_group__init(m);
    m->rot180 = g->rot180, m->hflip = g->hflip, m->gh = (uint32_t)g->gh, m->gw = (uint32_t)g->gw;
    m->rot90 = (uint32_t)g->rot90;
}

// A reply as s_reply in ser_dl_service.c builds it.
static void s_reply(const char *name, uint8_t opt, const ser_dl_shard *sh, uint64_t hash,
                    int status, const char *error) {
    Ser__LoaderShard m = SER__LOADER_SHARD__INIT;
    m.protocol_version = SER_DL_PROTOCOL_VERSION, m.job_id = SER_FUZZ_JOB, m.config_hash = hash;
    m.step = sh->step, m.shard = sh->shard, m.status = status, m.error = (char *)error;
    int n = status ? 0 : sh->n;
    Ser__LoaderSample smp[8], *sp[8];
    Ser__LoaderGroup gr[16];
    for (int i = 0; i < n && i < 8; i++) {
        const ser_dl_sample *x = &sh->samples[i];
        ser__loader_sample__init(&smp[i]);
        smp[i].position = x->position, smp[i].dataset_index = x->index;
        smp[i].source_index = x->source, smp[i].label = x->label;
        smp[i].equivariant = x->equivariant;
        smp[i].h0 = (uint32_t)x->h[0], smp[i].w0 = (uint32_t)x->w[0];
        smp[i].h1 = (uint32_t)x->h[1], smp[i].w1 = (uint32_t)x->w[1];
        if (x->equivariant) {
            s_group(&gr[2 * i], &x->g[0]);
            s_group(&gr[2 * i + 1], &x->g[1]);
            smp[i].g0 = &gr[2 * i], smp[i].g1 = &gr[2 * i + 1];
        }
        sp[i] = &smp[i];
    }
    m.n_samples = (size_t)n, m.samples = sp;
    size_t len = ser__loader_shard__get_packed_size(&m);
    uint8_t *buf = malloc(len ? len : 1);
    ser__loader_shard__pack(&m, buf);
    ser_fuzz_frame f[2 + 16];
    f[0] = (ser_fuzz_frame){(const uint8_t *)"", 0};
    f[1] = (ser_fuzz_frame){buf, len};
    int nf = 2;
    for (int i = 0; i < n && i < 8; i++)
        for (int v = 0; v < 2; v++)
            f[nf++] = (ser_fuzz_frame){sh->samples[i].view[v],
                                       (size_t)sh->samples[i].h[v] * sh->samples[i].w[v] * 3};
    s_write_frames("loader_reply", name, opt, f, nf);
    free(buf);
}

static void s_loader(void) {
    char root[600], err[256];
    snprintf(root, sizeof root, "%s/data", ser_fuzz_tmpdir());
    ser_dl_config c;
    ser_fuzz_loader_config(&c, root);
    ser_dl *dl = NULL;
    if (ser_fuzz_loader_data(root, err) != SER_OK || !(dl = ser_dl_new(&c, err))) {
        fprintf(stderr, "fuzz_make_corpus: loader: %s\n", err);
        exit(1);
    }
    uint64_t h = ser_dl_config_hash(&c);
    s_request("valid_0_0", 0, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h, 0, 0, "");
    s_request("valid_9_1", 0, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h, 9, 1, "");
    s_request("version0", 0, 0, SER_FUZZ_JOB, h, 0, 0, "");
    s_request("other_job", 0, SER_DL_PROTOCOL_VERSION, "other", h, 0, 0, "");
    s_request("other_hash", 0, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h ^ 1, 0, 0, "");
    s_request("shard_range", 0, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h, 0, 2, "");
    s_request("step_range", 0, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h, 1ull << 32, 0, "");
    s_request("delimiter", 0, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h, 0, 0, "x");
    s_request("truncated", 1, SER_DL_PROTOCOL_VERSION, SER_FUZZ_JOB, h, 0, 0, "");

    ser_dl_shard s0, s1;
    if (ser_dl_make_shard(dl, 0, 0, &s0) != SER_OK || ser_dl_make_shard(dl, 3, 1, &s1) != SER_OK) {
        fprintf(stderr, "fuzz_make_corpus: cannot make the shards\n");
        exit(1);
    }
    s_reply("shard_0_0", 0, &s0, h, 0, "");
    s_reply("shard_3_1_equivariant", 0, &s1, h, 0, "");
    s_reply("late", 2, &s1, h, 0, "");
    s_reply("refused", 0, &s0, h, SER_ECONFIG, "config hash 0000000000000001, this loader has ...");
    s_reply("other_hash", 0, &s0, h ^ 1, 0, "");
    ser_dl_shard_free(&s0);
    ser_dl_shard_free(&s1);
    ser_dl_destroy(&dl);
}

// --- safetensors ---------------------------------------------------------------------------
static void s_safetensors(void) {
    float f32[6] = {1, -2, 3.5f, 0, 1e-3f, -1e20f};
    double f64[1] = {3.141592653589793};
    uint16_t f16[2] = {0x3c00, 0xfc00}, bf16[1] = {0x3f80};
    int64_t i64[1] = {-5};
    uint8_t u8[1] = {0}, bools[3] = {0, 1, 1};
    int64_t s23[2] = {2, 3}, s2[1] = {2}, s1[1] = {1}, s0[1] = {0}, s3[1] = {3};
    ser_st_writer *w = ser_st_writer_new();
    ser_st_writer_add(w, "blocks.0.attn.qkv.weight", SER_DT_F32, 2, s23, f32);
    ser_st_writer_add(w, "f64", SER_DT_F64, 1, s1, f64);
    ser_st_writer_add(w, "f16", SER_DT_F16, 1, s2, f16);
    ser_st_writer_add(w, "bf16.scalar", SER_DT_BF16, 0, NULL, bf16);
    ser_st_writer_add(w, "counter", SER_DT_I64, 1, s1, i64);
    ser_st_writer_add(w, "empty", SER_DT_U8, 1, s0, u8);
    ser_st_writer_add(w, "mask", SER_DT_BOOL, 1, s3, bools);
    ser_st_writer_meta(w, "format", "pt");
    ser_st_writer_meta(w, "note", "caf\xc3\xa9 \"quoted\"");
    void *buf;
    size_t n;
    char err[SER_ERR_LEN];
    if (ser_st_writer_to_mem(w, &buf, &n, err) != SER_OK) {
        fprintf(stderr, "fuzz_make_corpus: %s\n", err);
        exit(1);
    }
    s_write("safetensors", "every_dtype", buf, n);
    free(buf);
    ser_st_writer_destroy(&w);
    w = ser_st_writer_new();
    ser_st_writer_meta(w, "format", "pt");
    ser_st_writer_to_mem(w, &buf, &n, err);
    s_write("safetensors", "metadata_only", buf, n);
    free(buf);
    ser_st_writer_destroy(&w);
    // Hand-made headers: an unaligned F32 after a U8, a hole, an overlap, a bad dtype.
    static const char *const hdr[] = {
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
        "{\"a\":{\"dtype\":\"F8\",\"shape\":[],\"data_offsets\":[0,1]},\"__metadata__\":{}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]}}   ",
    };
    static const char *const names[] = {"unaligned", "hole", "overlap", "bad_dtype", "zero_dim"};
    for (size_t k = 0; k < sizeof hdr / sizeof *hdr; k++) {
        size_t hl = strlen(hdr[k]), total = 8 + hl + 12;
        uint8_t *b = calloc(1, total);
        for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
        memcpy(b + 8, hdr[k], hl);
        for (size_t i = 8 + hl; i < total; i++) b[i] = (uint8_t)(i * 37);
        size_t used = total;
        if (k == 0) used = 8 + hl + 5;
        if (k == 2 || k == 3) used = 8 + hl + (k == 2 ? 8 : 1);
        if (k == 4) used = 8 + hl;
        s_write("safetensors", names[k], b, used);
        free(b);
    }
}

// --- checkpoints ---------------------------------------------------------------------------
static uint8_t *s_slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    *n = fread(b + 1, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static void s_ckpt(void) {
    ser_fuzz_ckpt b;
    ser_fuzz_ckpt_init(&b);
    // A config that differs from the defaults in one hashed key is saved with the other file.
    ser_config other = b.cfg;
    char err[SER_ERR_LEN], dir[600], path[700];
    if (ser_config_set(&other, "optim.lr", "0.5", err) != SER_OK) exit(1);
    snprintf(dir, sizeof dir, "%s/run", ser_fuzz_tmpdir());
    ser_ckpt_pos pos = {3, 0, 12, 100};
    const ser_config *cfgs[2] = {&b.cfg, &other};
    static const char *const names[2] = {"ckpt", "ckpt_other_config"};
    for (int k = 0; k < 2; k++) {
        if (ser_ckpt_save(b.ck, dir, &pos, cfgs[k], 0, path, sizeof path, err) != SER_OK) {
            fprintf(stderr, "fuzz_make_corpus: %s\n", err);
            exit(1);
        }
        size_t n = 0;
        uint8_t *f = s_slurp(path, &n);
        if (!f) {
            fprintf(stderr, "fuzz_make_corpus: cannot read %s\n", path);
            exit(1);
        }
        static const uint8_t opts[4] = {7, 6, 1, 0};
        for (int o = 0; o < (k == 0 ? 4 : 1); o++) {
            char name[64];
            f[0] = opts[o];
            snprintf(name, sizeof name, "%s_opt%d", names[k], opts[o]);
            s_write("ckpt", name, f, n + 1);
        }
        free(f);
    }
    ser_fuzz_ckpt_free(&b);
}

// --- config --------------------------------------------------------------------------------
static void s_config_seed(const char *name, uint8_t opt, const char *text, const char *const *over,
                          int nover) {
    size_t n = 1 + strlen(text);
    for (int i = 0; i < nover; i++) n += 1 + strlen(over[i]);
    uint8_t *b = malloc(n), *p = b;
    *p++ = opt;
    memcpy(p, text, strlen(text)), p += strlen(text);
    for (int i = 0; i < nover; i++) {
        *p++ = 0;
        memcpy(p, over[i], strlen(over[i])), p += strlen(over[i]);
    }
    s_write("config", name, b, n);
    free(b);
}

static void s_config(void) {
    static const char *const over[] = {"optim.lr=0.1", "model.patch = 8", "data.path=/tmp/x y"};
    s_config_seed("small", 1,
                  "; a small job\n[run]\nname = fuzz\n[model]\narch = vit_tiny\nimg_size = 32\n"
                  "patch = 4\ncls_layer = 2\n[method]\nname = moco\n[optim]\nlr = 1.5e-4\n"
                  "epochs = 3\nwarmup_epochs = 1\n[data]\nglobal_batch = 16\nshards = 2\n"
                  "[ser]\nratio = 0.25\n",
                  over, 3);
    s_config_seed("dino", 0,
                  "[method]\nname = dino\n[dino]\nout_dim = 256\n[model]\narch=vit_small\n"
                  "drop_path_rate=0.1\n",
                  NULL, 0);
    s_config_seed("barlow", 0, "[method]\nname = barlow\n[barlow]\n", over, 1);
    s_config_seed("errors", 0, "[optim]\nlr = -1\nlr = 2\n[nosuch]\nx\n", over + 1, 1);
    s_config_seed("overrides_only", 0, "", over, 3);
    ser_config c;
    ser_config_defaults(&c);
    char *dump = ser_config_text(&c);
    s_config_seed("defaults_dump", 0, dump, NULL, 0);
    free(dump);
}

// --- JPEG ----------------------------------------------------------------------------------
static void s_jpeg_one(const char *name, int w, int h, int pf, int samp, int flags) {
    int ch = tjPixelSize[pf];
    uint8_t *px = malloc((size_t)w * h * (size_t)ch);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < ch; k++)
                px[((size_t)y * w + x) * (size_t)ch + (size_t)k] =
                    (uint8_t)(x * 31 + y * 17 + k * 80);
    tjhandle c = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    if (!c || tjCompress2(c, px, w, 0, h, pf, &jpg, &len, samp, 85, flags) != 0) {
        fprintf(stderr, "fuzz_make_corpus: JPEG %s: %s\n", name, tjGetErrorStr2(c));
        exit(1);
    }
    s_write("jpeg", name, jpg, len);
    if (strcmp(name, "rgb420_8x8") == 0) {
        s_write("jpeg", "truncated", jpg, len - 10);
        // The same file announcing 20000 x 20000 (over the 178956970-pixel limit): patch the SOF0.
        for (unsigned long i = 2; i + 9 < len; i++)
            if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0) {
                jpg[i + 5] = 20000 >> 8, jpg[i + 6] = 20000 & 0xff;
                jpg[i + 7] = 20000 >> 8, jpg[i + 8] = 20000 & 0xff;
                break;
            }
        s_write("jpeg", "huge_header", jpg, len);
    }
    tjFree(jpg);
    tjDestroy(c);
    free(px);
}

static void s_jpeg(void) {
    s_jpeg_one("rgb420_8x8", 8, 8, TJPF_RGB, TJSAMP_420, 0);
    s_jpeg_one("rgb444_16x12", 16, 12, TJPF_RGB, TJSAMP_444, 0);
    s_jpeg_one("gray_9x7", 9, 7, TJPF_GRAY, TJSAMP_GRAY, 0);
    s_jpeg_one("progressive_17x9", 17, 9, TJPF_RGB, TJSAMP_422, TJFLAG_PROGRESSIVE);
    s_jpeg_one("cmyk_8x8", 8, 8, TJPF_CMYK, TJSAMP_444, 0);
    s_jpeg_one("rgb_1x1", 1, 1, TJPF_RGB, TJSAMP_444, 0);
    s_jpeg_one("rgb_40x1", 40, 1, TJPF_RGB, TJSAMP_420, 0);
}

// --- PNG -----------------------------------------------------------------------------------
typedef struct s_membuf {
    uint8_t *p;
    size_t n, cap;
} s_membuf;

static void s_png_write_cb(png_structp png, png_bytep data, size_t n) {
    s_membuf *m = png_get_io_ptr(png);
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
        if (!m->p) abort();
    }
    memcpy(m->p + m->n, data, n);
    m->n += n;
}

static void s_png_flush_cb(png_structp png) { (void)png; }

// A w x h PNG of colour type ct, bit depth bd, packed samples from a fixed pattern; palette
// images get 6 colours and a tRNS of 3 entries.
static void s_png_one(const char *name, int w, int h, int bd, int ct, int interlace) {
    s_membuf m = {NULL, 0, 0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        fprintf(stderr, "fuzz_make_corpus: PNG %s: libpng failed\n", name);
        exit(1);
    }
    png_set_write_fn(png, &m, s_png_write_cb, s_png_flush_cb);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, bd, ct,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (ct == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[6];
        png_byte trns[3] = {0, 128, 255};
        for (int i = 0; i < 6; i++)
            pal[i] = (png_color){(png_byte)(40 * i), 200, (png_byte)(i * i)};
        png_set_PLTE(png, info, pal, 6);
        png_set_tRNS(png, info, trns, 3, NULL);
    }
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);  // 7 when interlaced: every row each pass
    size_t rb = png_get_rowbytes(png, info);
    uint8_t *row = calloc(rb, 1);
    for (int y = 0; y < h * passes; y++) {
        for (size_t k = 0; k < rb; k++) {
            size_t idx = (k + (size_t)(y % h)) % 6;  // palette: both nibbles at 4 bits
            row[k] = (uint8_t)(ct != PNG_COLOR_TYPE_PALETTE ? k * 37 + (size_t)(y % h) * 11
                               : bd == 8                    ? idx
                                                            : idx * 0x11);
        }
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(row);
    s_write("png", name, m.p, m.n);
    if (strcmp(name, "rgb_8x8") == 0) {
        s_write("png", "truncated", m.p, m.n - 20);  // IDAT cut short
        // IHDR announcing 20000 x 20000 (over the 178956970-pixel limit), its CRC made again.
        static const uint8_t dims[8] = {0, 0, 0x4e, 0x20, 0, 0, 0x4e, 0x20};
        memcpy(m.p + 16, dims, 8);
        uLong crc = crc32(0, m.p + 12, 17);
        for (int i = 0; i < 4; i++) m.p[29 + i] = (uint8_t)(crc >> (24 - 8 * i));
        s_write("png", "huge_header", m.p, m.n);
    }
    free(m.p);
}

static void s_png(void) {
    s_png_one("rgb_8x8", 8, 8, 8, PNG_COLOR_TYPE_RGB, 0);
    s_png_one("rgba16_interlaced_9x7", 9, 7, 16, PNG_COLOR_TYPE_RGB_ALPHA, 1);
    s_png_one("gray1_13x5", 13, 5, 1, PNG_COLOR_TYPE_GRAY, 0);
    s_png_one("gray4_interlaced_6x6", 6, 6, 4, PNG_COLOR_TYPE_GRAY, 1);
    s_png_one("gray16_5x4", 5, 4, 16, PNG_COLOR_TYPE_GRAY, 0);
    s_png_one("gray_alpha_7x3", 7, 3, 8, PNG_COLOR_TYPE_GRAY_ALPHA, 0);
    s_png_one("palette8_trns_10x4", 10, 4, 8, PNG_COLOR_TYPE_PALETTE, 0);
    s_png_one("palette4_11x3", 11, 3, 4, PNG_COLOR_TYPE_PALETTE, 0);
    s_png_one("rgb_1x1", 1, 1, 8, PNG_COLOR_TYPE_RGB, 0);
}

// --- status port ---------------------------------------------------------------------------
static void s_http(void) {
    static const char *const req[][2] = {
        {"index", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"},
        {"status", "GET /status HTTP/1.0\r\n\r\n"},
        {"status_section",
         "GET /status?section=workers&format=info HTTP/1.1\r\nHost: x\r\n"
         "Connection: close\r\n\r\n"},
        {"metrics", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"history", "HEAD /history?since=2 HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"pipelined",
         "GET /status?section=training HTTP/1.1\r\nHost: x\r\n\r\n"
         "GET /history HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"},
        {"post_body", "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"},
        {"chunked",
         "GET /status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3\r\nabc\r\n0\r\n\r\n"},
        {"upgrade",
         "GET /status HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
         "xyz"},
        {"bad_query",
         "GET /status?section=nope&format=xml HTTP/1.1\r\n\r\n"
         "GET /history?since=abc HTTP/1.1\r\n\r\n"},
        {"absolute", "GET http://127.0.0.1:8080/metrics?x=1#frag HTTP/1.1\r\n\r\n"},
        {"garbage", "\x16\x03\x01\x02\xfe\x01\xff\x01\xfc\x03\x03"},  // a TLS hello, sort of
    };
    // The option byte in front is the read size (0: one read): a spread of them.
    for (size_t i = 0; i < sizeof req / sizeof *req; i++) {
        size_t n = strlen(req[i][1]);
        char *buf = malloc(n + 1);
        buf[0] = (char)(i % 3 == 0 ? 0 : 1 + (i * 5) % 19);
        memcpy(buf + 1, req[i][1], n);
        s_write("status_http", req[i][0], buf, n + 1);
        free(buf);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_corpus OUT_DIR   (tests/fuzz/corpus)\n");
        return 2;
    }
    s_out = argv[1];
    mkdir(s_out, 0755);
    ser_fuzz_quiet();
    s_wire();
    s_loader();
    s_safetensors();
    s_ckpt();
    s_config();
    s_jpeg();
    s_png();
    s_http();
    return 0;
}
