// test_safetensors.c — safetensors reader/writer: round trips, a hand-made golden file, dtype
// conversion, ptab loading, the atomic writer, a table of malformed inputs (each must fail
// cleanly, never crash: run it under ASan+UBSan too), and interop with PyTorch through
// tests/reference/st_roundtrip.py when python3-torch is installed.
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ser_safetensors.h"
#include "ser_test.h"

static char s_dir[64];  // the mkdtemp directory of this run; everything we write goes there

static const char *s_path(char *buf, size_t n, const char *file) {
    snprintf(buf, n, "%s/%s", s_dir, file);
    return buf;
}

static int s_setup(void **state) {
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/ser-st-XXXXXX");
    return mkdtemp(s_dir) ? 0 : -1;
}

// Removes every file (and empty directory) in s_dir, then s_dir itself.
static int s_teardown(void **state) {
    (void)state;
    DIR *d = opendir(s_dir);
    if (!d) return -1;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", s_dir, de->d_name);
        if (unlink(p) != 0) rmdir(p);
    }
    closedir(d);
    return rmdir(s_dir);
}

// Counts the entries of s_dir whose name contains sub.
static int s_dir_count(const char *sub) { return ser_test_count_entries(s_dir, sub); }

static void s_write_file(const char *path, const void *buf, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

// u64 LE header length + header (hlen bytes) + data_len zero bytes, in an exact-size buffer so
// that ASan catches any read past the end.
static unsigned char *s_build(const char *header, size_t hlen, size_t data_len, size_t *n) {
    *n = 8 + hlen + data_len;
    unsigned char *b = calloc(1, *n);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    return b;
}

static uint16_t s_bits16(float x) {  // bf16 bits of a float that bf16 holds exactly
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)(u >> 16);
}

static uint32_t s_bits32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

// --- dtypes ----------------------------------------------------------------------------------
static void test_dtypes(void **state) {
    (void)state;
    static const struct {
        ser_dtype t;
        const char *name;
        size_t size;
    } want[] = {
        {SER_DT_F32, "F32", 4},   {SER_DT_F64, "F64", 8}, {SER_DT_F16, "F16", 2},
        {SER_DT_BF16, "BF16", 2}, {SER_DT_I64, "I64", 8}, {SER_DT_I32, "I32", 4},
        {SER_DT_I16, "I16", 2},   {SER_DT_I8, "I8", 1},   {SER_DT_U8, "U8", 1},
        {SER_DT_BOOL, "BOOL", 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(ser_dtype_name(want[i].t), want[i].name);
        assert_int_equal(ser_dtype_size(want[i].t), want[i].size);
        ser_dtype t = SER_DT_BOOL;
        assert_int_equal(ser_dtype_parse(want[i].name, &t), SER_OK);
        assert_int_equal(t, want[i].t);
    }
    ser_dtype t;
    assert_int_equal(ser_dtype_parse("f32", &t), SER_EDTYPE);
    assert_int_equal(ser_dtype_parse("U32", &t), SER_EDTYPE);
    assert_int_equal(ser_dtype_parse("", &t), SER_EDTYPE);
    assert_int_equal(ser_dtype_parse(NULL, &t), SER_EDTYPE);
}

// --- round trip ------------------------------------------------------------------------------
// A writer holding one tensor of every dtype, a 0-d scalar, shapes with 1s, a zero-size tensor
// and float bit patterns that must survive unchanged (NaN payloads, -0, subnormals, inf).
typedef struct s_sample {
    float f32[24];
    double f64[5];
    uint16_t f16[3], bf16[2];
    int64_t i64[3];
    int32_t i32;
    int16_t i16[1];
    int8_t i8[4];
    uint8_t u8[7];
    uint8_t b[4];
    float special[8];
} s_sample;

static const struct {
    const char *name;
    ser_dtype dt;
    int ndim;
    int64_t shape[4];
} s_sample_desc[] = {
    {"x.f32", SER_DT_F32, 3, {2, 3, 4}}, {"x.f64", SER_DT_F64, 1, {5}},
    {"x.f16", SER_DT_F16, 2, {3, 1}},    {"x.bf16", SER_DT_BF16, 3, {1, 1, 2}},
    {"x.i64", SER_DT_I64, 1, {3}},       {"x.scalar", SER_DT_I32, 0, {0}},
    {"x.i16", SER_DT_I16, 1, {1}},       {"x.i8", SER_DT_I8, 3, {2, 1, 2}},
    {"x.u8", SER_DT_U8, 1, {7}},         {"x.bool", SER_DT_BOOL, 1, {4}},
    {"x.special", SER_DT_F32, 1, {8}},   {"x.empty", SER_DT_F32, 2, {0, 3}},
};
#define S_NSAMPLE ((int)(sizeof s_sample_desc / sizeof s_sample_desc[0]))

static const void *s_sample_data(const s_sample *s, int i) {
    const void *p[] = {s->f32, s->f64, s->f16, s->bf16, s->i64,     &s->i32,
                       s->i16, s->i8,  s->u8,  s->b,    s->special, NULL};
    return p[i];
}

static void s_sample_fill(s_sample *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < 24; i++) s->f32[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < 5; i++) s->f64[i] = (double)i / 3.0 - 1e300 * (i == 4);
    s->f16[0] = 0x3c00, s->f16[1] = 0xc000, s->f16[2] = 0x7bff;
    s->bf16[0] = 0x3f80, s->bf16[1] = 0x4049;
    s->i64[0] = INT64_MIN, s->i64[1] = -1, s->i64[2] = INT64_MAX;
    s->i32 = -123456789;
    s->i16[0] = -32768;
    for (int i = 0; i < 4; i++) s->i8[i] = (int8_t)(i * 50 - 100);
    for (int i = 0; i < 7; i++) s->u8[i] = (uint8_t)(i * 40);
    for (int i = 0; i < 4; i++) s->b[i] = (uint8_t)(i & 1);
    const uint32_t bits[8] = {0x7fc00001u, 0xffa00000u, 0x80000000u, 0x00000001u,
                              0x007fffffu, 0x7f800000u, 0xff800000u, 0x3eaaaaabu};
    memcpy(s->special, bits, sizeof bits);
}

static ser_st_writer *s_sample_writer(const s_sample *s) {
    ser_st_writer *w = ser_st_writer_new();
    for (int i = 0; i < S_NSAMPLE; i++)
        ser_st_writer_add(w, s_sample_desc[i].name, s_sample_desc[i].dt, s_sample_desc[i].ndim,
                          s_sample_desc[i].shape, s_sample_data(s, i));
    ser_st_writer_meta(w, "format", "pt");
    ser_st_writer_meta(w, "note",
                       "quotes \" backslash \\ newline \n utf-8 h\xc3\xa9llo \xe2\x82\xac");
    ser_st_writer_meta(w, "empty", "");
    ser_st_writer_meta(w, "format", "ser");  // replaces
    return w;
}

static void s_sample_check(const ser_st_file *f, const s_sample *s) {
    assert_int_equal(ser_st_count(f), S_NSAMPLE);
    for (int i = 0; i < S_NSAMPLE; i++) {
        const ser_st_entry *e = ser_st_find(f, s_sample_desc[i].name);
        assert_non_null(e);
        assert_string_equal(e->name, s_sample_desc[i].name);
        assert_int_equal(e->dtype, s_sample_desc[i].dt);
        assert_int_equal(e->ndim, s_sample_desc[i].ndim);
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            assert_int_equal(e->shape[d], s_sample_desc[i].shape[d]);
            numel *= (size_t)e->shape[d];
        }
        assert_int_equal(e->numel, numel);
        assert_int_equal(e->nbytes, numel * ser_dtype_size(e->dtype));
        assert_int_equal((uintptr_t)e->data % 64, 0);
        if (e->nbytes) assert_memory_equal(e->data, s_sample_data(s, i), e->nbytes);
    }
    // ser_st_at is in data-offset order; our writer lays tensors out by dtype size, largest
    // first, keeping the order of addition among equal sizes.
    size_t prev = 8;
    for (int i = 0; i < ser_st_count(f); i++) {
        size_t sz = ser_dtype_size(ser_st_at(f, i)->dtype);
        assert_true(sz <= prev);
        prev = sz;
    }
    assert_string_equal(ser_st_at(f, 0)->name, "x.f64");
    assert_string_equal(ser_st_at(f, 1)->name, "x.i64");
    assert_string_equal(ser_st_at(f, 2)->name, "x.f32");
    assert_null(ser_st_find(f, "x"));
    assert_null(ser_st_find(f, "x.f32 "));
    assert_string_equal(ser_st_meta(f, "format"), "ser");
    assert_string_equal(ser_st_meta(f, "note"),
                        "quotes \" backslash \\ newline \n utf-8 h\xc3\xa9llo \xe2\x82\xac");
    assert_string_equal(ser_st_meta(f, "empty"), "");
    assert_null(ser_st_meta(f, "missing"));
}

static void test_roundtrip_mem_and_file(void **state) {
    (void)state;
    s_sample s;
    s_sample_fill(&s);
    ser_st_writer *w = s_sample_writer(&s);
    char err[SER_ERR_LEN] = "", path[256];
    void *buf = NULL;
    size_t n = 0;
    assert_int_equal(ser_st_writer_to_mem(w, &buf, &n, err), SER_OK);
    const unsigned char *b = buf;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    assert_int_equal(hlen % 8, 0);  // the data section starts 8-byte aligned
    assert_int_equal(b[8 + hlen - 1] == ' ' || b[8 + hlen - 1] == '}', 1);

    ser_st_file *f = NULL;
    int rc = ser_st_open_mem(&f, buf, n, err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, SER_OK);
    s_sample_check(f, &s);
    ser_st_destroy(&f);
    assert_null(f);
    ser_st_destroy(&f);  // NULL-safe

    s_path(path, sizeof path, "roundtrip.safetensors");
    assert_int_equal(ser_st_writer_save(w, path, err), SER_OK);
    assert_int_equal(ser_st_open(&f, path, err), SER_OK);
    s_sample_check(f, &s);
    ser_st_destroy(&f);

    // The file holds exactly the bytes of to_mem.
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char *fb = malloc(n + 1);
    assert_int_equal(fread(fb, 1, n + 1, fp), n);
    fclose(fp);
    assert_memory_equal(fb, buf, n);
    free(fb);
    free(buf);
    ser_st_writer_destroy(&w);
    assert_null(w);
    ser_st_writer_destroy(&w);
    unlink(path);
}

static void test_empty_writer(void **state) {
    (void)state;
    ser_st_writer *w = ser_st_writer_new();
    char err[SER_ERR_LEN];
    void *buf;
    size_t n;
    assert_int_equal(ser_st_writer_to_mem(w, &buf, &n, err), SER_OK);
    assert_int_equal(n, 16);
    assert_memory_equal(buf, "\x08\0\0\0\0\0\0\0{}      ", 16);
    ser_st_file *f;
    assert_int_equal(ser_st_open_mem(&f, buf, n, err), SER_OK);
    assert_int_equal(ser_st_count(f), 0);
    assert_null(ser_st_find(f, ""));
    assert_null(ser_st_meta(f, "format"));
    ser_st_destroy(&f);
    free(buf);
    ser_st_writer_destroy(&w);
}

// --- golden bytes ----------------------------------------------------------------------------
// A file built by hand from the format description: header JSON (keys deliberately not in
// offset order, metadata in the middle) padded with 4 spaces to 200 bytes, then 23 data bytes.
static const char s_golden_hdr[] =
    "{\"b\":{\"dtype\":\"I16\",\"shape\":[3],\"data_offsets\":[16,22]},"
    "\"__metadata__\":{\"format\":\"pt\"},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[22,23]}}    ";
static const unsigned char s_golden_data[23] = {
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0xbf,  // w: 1, 2, -0.5,
    0x00, 0x00, 0x80, 0x3e,                                                  //    0.25
    0x01, 0x00, 0xfe, 0xff, 0x2c, 0x01,                                      // b: 1, -2, 300
    0x07,                                                                    // s: 7
};

static void test_golden_read(void **state) {
    (void)state;
    assert_int_equal(strlen(s_golden_hdr), 200);
    unsigned char file[8 + 200 + 23];
    memcpy(file, "\xc8\0\0\0\0\0\0\0", 8);
    memcpy(file + 8, s_golden_hdr, 200);
    memcpy(file + 208, s_golden_data, 23);
    ser_st_file *f;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_open_mem(&f, file, sizeof file, err), SER_OK);
    assert_int_equal(ser_st_count(f), 3);
    assert_string_equal(ser_st_at(f, 0)->name, "w");
    assert_string_equal(ser_st_at(f, 1)->name, "b");
    assert_string_equal(ser_st_at(f, 2)->name, "s");
    assert_string_equal(ser_st_meta(f, "format"), "pt");

    const ser_st_entry *w = ser_st_find(f, "w");
    assert_int_equal(w->dtype, SER_DT_F32);
    assert_int_equal(w->ndim, 2);
    assert_int_equal(w->shape[0], 2);
    assert_int_equal(w->shape[1], 2);
    const float wv[4] = {1.0f, 2.0f, -0.5f, 0.25f};
    assert_memory_equal(w->data, wv, 16);
    float got[4];
    const int64_t sh[2] = {2, 2};
    assert_int_equal(ser_st_read_f32(f, "w", got, 2, sh, err), SER_OK);
    assert_memory_equal(got, wv, 16);

    const ser_st_entry *b = ser_st_find(f, "b");
    assert_int_equal(b->dtype, SER_DT_I16);
    const int16_t bv[3] = {1, -2, 300};
    assert_int_equal(b->nbytes, 6);
    assert_memory_equal(b->data, bv, 6);

    const ser_st_entry *s = ser_st_find(f, "s");
    assert_int_equal(s->dtype, SER_DT_U8);
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->numel, 1);
    assert_int_equal(*(const uint8_t *)s->data, 7);
    ser_st_destroy(&f);
}

// Our writer produces exactly the bytes the format prescribes for the same three tensors.
static void test_golden_write(void **state) {
    (void)state;
    static const char want_hdr[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"b\":{\"dtype\":\"I16\",\"shape\":[3],\"data_offsets\":[16,22]},"
        "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[22,23]}}    ";
    assert_int_equal(strlen(want_hdr), 200);
    const int64_t sb[1] = {3}, sw[2] = {2, 2};
    ser_st_writer *wr = ser_st_writer_new();
    ser_st_writer_meta(wr, "format", "pt");
    ser_st_writer_add(wr, "b", SER_DT_I16, 1, sb, s_golden_data + 16);
    ser_st_writer_add(wr, "w", SER_DT_F32, 2, sw, s_golden_data);
    ser_st_writer_add(wr, "s", SER_DT_U8, 0, NULL, s_golden_data + 22);
    void *buf;
    size_t n;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_writer_to_mem(wr, &buf, &n, err), SER_OK);
    assert_int_equal(n, 8 + 200 + 23);
    assert_memory_equal(buf, "\xc8\0\0\0\0\0\0\0", 8);
    assert_memory_equal((char *)buf + 8, want_hdr, 200);
    assert_memory_equal((char *)buf + 208, s_golden_data, 23);
    free(buf);
    ser_st_writer_destroy(&wr);
}

// --- conversion to float ---------------------------------------------------------------------
static void test_read_f32_conversion(void **state) {
    (void)state;
    // F16: 1, -2, max normal, min subnormal, max subnormal, min normal, 1/3 rounded, -0, inf,
    // -inf, NaN.
    const uint16_t h[11] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400,
                            0x3555, 0x8000, 0x7c00, 0xfc00, 0x7e00};
    const float hv[11] = {1.0f,     -2.0f,           65504.0f, 0x1p-24f, 0x3ffp-24f,
                          0x1p-14f, 0.333251953125f, -0.0f,    INFINITY, -INFINITY,
                          NAN};
    // BF16: 1, pi rounded, -0.5, 2^-133 (an f32 subnormal), inf, NaN, largest finite.
    const uint16_t bf[7] = {0x3f80, 0x4049, 0xbf00, 0x0001, 0x7f80, 0x7fc0, 0x7f7f};
    const float bv[7] = {1.0f, 3.140625f, -0.5f, 0x1p-133f, INFINITY, NAN, 0x1.fep127f};
    // F64: rounding to nearest float, overflow to inf, underflow to 0, -0.
    const double d[6] = {1.0 / 3.0, 1e300, -1e300, 1e-50, -0.0, 16777217.0};
    const float dv[6] = {(float)(1.0 / 3.0), INFINITY, -INFINITY, 0.0f, -0.0f, 16777216.0f};
    const int32_t iv[2] = {1, 2};
    const int64_t s11[1] = {11}, s7[2] = {7, 1}, s6[3] = {1, 6, 1}, s2[1] = {2};

    ser_st_writer *w = ser_st_writer_new();
    ser_st_writer_add(w, "h", SER_DT_F16, 1, s11, h);
    ser_st_writer_add(w, "bf", SER_DT_BF16, 2, s7, bf);
    ser_st_writer_add(w, "d", SER_DT_F64, 3, s6, d);
    ser_st_writer_add(w, "blocks.0.int", SER_DT_I32, 1, s2, iv);
    void *buf;
    size_t n;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_writer_to_mem(w, &buf, &n, err), SER_OK);
    ser_st_file *f;
    assert_int_equal(ser_st_open_mem(&f, buf, n, err), SER_OK);

    float got[11];
    assert_int_equal(ser_st_read_f32(f, "h", got, 1, s11, err), SER_OK);
    for (int i = 0; i < 11; i++) {
        if (isnan(hv[i]))
            assert_true(isnan(got[i]));
        else
            assert_int_equal(s_bits32(got[i]), s_bits32(hv[i]));  // bit-exact, sign of 0 too
    }
    assert_int_equal(ser_st_read_f32(f, "bf", got, 2, s7, err), SER_OK);
    for (int i = 0; i < 7; i++) {
        if (isnan(bv[i]))
            assert_true(isnan(got[i]));
        else
            assert_int_equal(s_bits32(got[i]), s_bits32(bv[i]));
    }
    assert_int_equal(ser_st_read_f32(f, "d", got, 3, s6, err), SER_OK);
    for (int i = 0; i < 6; i++) assert_int_equal(s_bits32(got[i]), s_bits32(dv[i]));

    // Errors name the tensor (and both shapes).
    assert_int_equal(ser_st_read_f32(f, "blocks.0.int", got, 1, s2, err), SER_EDTYPE);
    assert_non_null(strstr(err, "'blocks.0.int'"));
    assert_non_null(strstr(err, "I32"));
    const int64_t s11x[2] = {11, 1};
    assert_int_equal(ser_st_read_f32(f, "h", got, 2, s11x, err), SER_ESHAPE);
    assert_non_null(strstr(err, "'h'"));
    assert_non_null(strstr(err, "[11]"));
    assert_non_null(strstr(err, "[11,1]"));
    assert_int_equal(ser_st_read_f32(f, "nope", got, 1, s2, err), SER_ENOENT);
    assert_non_null(strstr(err, "'nope'"));
    ser_st_destroy(&f);
    free(buf);
    ser_st_writer_destroy(&w);
}

// --- ptab ------------------------------------------------------------------------------------
static void s_make_ptab(ser_ptab *p) {
    const int64_t w[2] = {2, 3}, b[1] = {3}, h[1] = {4}, c[3] = {1, 1, 5};
    ser_ptab_init(p);
    ser_ptab_add(p, "blocks.0.w", 0, 2, w);
    ser_ptab_add(p, "blocks.0.b", 0, 1, b);
    ser_ptab_add(p, "head", 0, 1, h);
    ser_ptab_add(p, "cls", 0, 3, c);
}

// A file with tensors "<prefix><name>" for the ptab entries (skipping skip), plus extra.
static ser_st_file *s_ptab_file(const ser_ptab *p, const float *arena, const char *prefix,
                                const char *skip, const char *extra, void **buf) {
    ser_st_writer *w = ser_st_writer_new();
    char full[2 * SER_TINFO_NAME_LEN];
    for (int i = 0; i < p->n; i++) {
        if (skip && strcmp(p->t[i].name, skip) == 0) continue;
        snprintf(full, sizeof full, "%s%s", prefix, p->t[i].name);
        ser_st_writer_add(w, full, SER_DT_F32, p->t[i].ndim, p->t[i].shape, arena + p->t[i].offset);
    }
    static const float ev[2] = {9, 9};
    const int64_t es[1] = {2};
    if (extra) ser_st_writer_add(w, extra, SER_DT_F32, 1, es, ev);
    ser_st_writer_add(w, "student.head", SER_DT_F32, 1, es, ev);  // another prefix: ignored
    size_t n;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_writer_to_mem(w, buf, &n, err), SER_OK);
    ser_st_writer_destroy(&w);
    ser_st_file *f;
    assert_int_equal(ser_st_open_mem(&f, *buf, n, err), SER_OK);
    return f;
}

static void test_load_ptab(void **state) {
    (void)state;
    ser_ptab p;
    s_make_ptab(&p);
    float *src = calloc(p.total, sizeof(float)), *dst = calloc(p.total, sizeof(float));
    float *sentinel = calloc(p.total, sizeof(float));
    ser_test_fill_uniform(src, p.total, 1, -1.0f, 1.0f);
    for (size_t i = 0; i < p.total; i++) sentinel[i] = 77.0f;
    char err[SER_ERR_LEN];
    void *buf;

    // All present, via writer_add_ptab: strict load is bit-exact.
    ser_st_writer *w = ser_st_writer_new();
    ser_st_writer_add_ptab(w, &p, src, "teacher.");
    const int64_t es[1] = {1};
    static const float one = 1;
    ser_st_writer_add(w, "student.x", SER_DT_F32, 1, es, &one);
    size_t n;
    assert_int_equal(ser_st_writer_to_mem(w, &buf, &n, err), SER_OK);
    ser_st_writer_destroy(&w);
    ser_st_file *f;
    assert_int_equal(ser_st_open_mem(&f, buf, n, err), SER_OK);
    assert_non_null(ser_st_find(f, "teacher.blocks.0.w"));
    memcpy(dst, sentinel, p.total * sizeof(float));
    assert_int_equal(ser_st_load_ptab(f, &p, dst, "teacher.", 1, err), SER_OK);
    for (int i = 0; i < p.n; i++)
        assert_memory_equal(dst + p.t[i].offset, src + p.t[i].offset, p.t[i].numel * 4);
    // Without the prefix nothing matches: strict fails, naming the first missing tensor and
    // the first unexpected one.
    assert_int_equal(ser_st_load_ptab(f, &p, dst, NULL, 1, err), SER_ENOENT);
    assert_non_null(strstr(err, "'blocks.0.w'"));
    assert_non_null(strstr(err, "unexpected"));
    ser_st_destroy(&f);
    free(buf);

    // Missing tensor.
    f = s_ptab_file(&p, src, "teacher.", "head", NULL, &buf);
    memcpy(dst, sentinel, p.total * sizeof(float));
    assert_int_equal(ser_st_load_ptab(f, &p, dst, "teacher.", 1, err), SER_ENOENT);
    assert_non_null(strstr(err, "'teacher.head'"));
    assert_non_null(strstr(err, "1 missing"));
    assert_memory_equal(dst, sentinel, p.total * sizeof(float));  // untouched on error
    // Non-strict: loads the rest, leaves head alone.
    assert_int_equal(ser_st_load_ptab(f, &p, dst, "teacher.", 0, err), SER_OK);
    const ser_tinfo *th = ser_ptab_find(&p, "head"), *tw = ser_ptab_find(&p, "blocks.0.w");
    for (size_t i = 0; i < th->numel; i++) assert_true(dst[th->offset + i] == 77.0f);
    assert_memory_equal(dst + tw->offset, src + tw->offset, tw->numel * 4);
    ser_st_destroy(&f);
    free(buf);

    // Unexpected tensor under the prefix.
    f = s_ptab_file(&p, src, "teacher.", NULL, "teacher.blocks.1.w", &buf);
    assert_int_equal(ser_st_load_ptab(f, &p, dst, "teacher.", 1, err), SER_EFORMAT);
    assert_non_null(strstr(err, "'teacher.blocks.1.w'"));
    assert_non_null(strstr(err, "1 unexpected"));
    assert_int_equal(ser_st_load_ptab(f, &p, dst, "teacher.", 0, err), SER_OK);
    ser_st_destroy(&f);
    free(buf);

    // Shape mismatch: a (3,2) tensor where the model has (2,3); strict and non-strict.
    {
        ser_st_writer *w2 = ser_st_writer_new();
        const int64_t bad[2] = {3, 2};
        for (int i = 0; i < p.n; i++) {
            char full[2 * SER_TINFO_NAME_LEN];
            snprintf(full, sizeof full, "m.%s", p.t[i].name);
            int isw = strcmp(p.t[i].name, "blocks.0.w") == 0;
            ser_st_writer_add(w2, full, SER_DT_F32, p.t[i].ndim, isw ? bad : p.t[i].shape,
                              src + p.t[i].offset);
        }
        assert_int_equal(ser_st_writer_to_mem(w2, &buf, &n, err), SER_OK);
        ser_st_writer_destroy(&w2);
        assert_int_equal(ser_st_open_mem(&f, buf, n, err), SER_OK);
        for (int strict = 0; strict < 2; strict++) {
            memcpy(dst, sentinel, p.total * sizeof(float));
            assert_int_equal(ser_st_load_ptab(f, &p, dst, "m.", strict, err), SER_ESHAPE);
            assert_non_null(strstr(err, "'m.blocks.0.w'"));
            assert_non_null(strstr(err, "[3,2]"));
            assert_non_null(strstr(err, "[2,3]"));
            assert_memory_equal(dst, sentinel, p.total * sizeof(float));
        }
        ser_st_destroy(&f);
        free(buf);
    }

    // Dtype: F16 and BF16 convert, I32 is refused by name.
    {
        ser_st_writer *w2 = ser_st_writer_new();
        uint16_t hb[5] = {0x3c00, 0x4000, 0x4200, 0x4400, 0x4500};  // 1 2 3 4 5 (F16)
        uint16_t bb[4] = {s_bits16(-1), s_bits16(0.5f), s_bits16(8), s_bits16(-0.25f)};
        int32_t ib[3] = {1, 2, 3};
        const int64_t sc[3] = {1, 1, 5}, sh[1] = {4}, sb[1] = {3};
        ser_st_writer_add(w2, "blocks.0.w", SER_DT_F32, tw->ndim, tw->shape, src + tw->offset);
        ser_st_writer_add(w2, "cls", SER_DT_F16, 3, sc, hb);
        ser_st_writer_add(w2, "head", SER_DT_BF16, 1, sh, bb);
        ser_st_writer_add(w2, "blocks.0.b", SER_DT_I32, 1, sb, ib);
        assert_int_equal(ser_st_writer_to_mem(w2, &buf, &n, err), SER_OK);
        ser_st_writer_destroy(&w2);
        assert_int_equal(ser_st_open_mem(&f, buf, n, err), SER_OK);
        memcpy(dst, sentinel, p.total * sizeof(float));
        assert_int_equal(ser_st_load_ptab(f, &p, dst, "", 1, err), SER_EDTYPE);
        assert_non_null(strstr(err, "'blocks.0.b'"));
        assert_memory_equal(dst, sentinel, p.total * sizeof(float));
        ser_st_destroy(&f);
        free(buf);

        w2 = ser_st_writer_new();
        ser_st_writer_add(w2, "cls", SER_DT_F16, 3, sc, hb);
        ser_st_writer_add(w2, "head", SER_DT_BF16, 1, sh, bb);
        assert_int_equal(ser_st_writer_to_mem(w2, &buf, &n, err), SER_OK);
        ser_st_writer_destroy(&w2);
        assert_int_equal(ser_st_open_mem(&f, buf, n, err), SER_OK);
        assert_int_equal(ser_st_load_ptab(f, &p, dst, "", 0, err), SER_OK);
        const ser_tinfo *tc = ser_ptab_find(&p, "cls");
        const float wc[5] = {1, 2, 3, 4, 5}, wh[4] = {-1, 0.5f, 8, -0.25f};
        assert_memory_equal(dst + tc->offset, wc, sizeof wc);
        assert_memory_equal(dst + th->offset, wh, sizeof wh);
        ser_st_destroy(&f);
        free(buf);
    }
    free(src);
    free(dst);
    free(sentinel);
    ser_ptab_free(&p);
}

// --- atomic save -----------------------------------------------------------------------------
static void test_atomic_save(void **state) {
    (void)state;
    char path[256], err[SER_ERR_LEN];
    s_sample s;
    s_sample_fill(&s);
    ser_st_writer *w = s_sample_writer(&s);
    s_path(path, sizeof path, "model.safetensors");
    assert_int_equal(ser_st_writer_save(w, path, err), SER_OK);
    assert_int_equal(ser_st_writer_save(w, path, err), SER_OK);  // overwrite in place
    assert_int_equal(s_dir_count(".tmp"), 0);
    assert_int_equal(s_dir_count("model.safetensors"), 1);
    ser_st_file *f;
    assert_int_equal(ser_st_open(&f, path, err), SER_OK);
    s_sample_check(f, &s);
    ser_st_destroy(&f);
    unlink(path);

    // The rename fails (the target is a directory): SER_EIO and no temporary left behind.
    s_path(path, sizeof path, "isdir.safetensors");
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(ser_st_writer_save(w, path, err), SER_EIO);
    assert_non_null(strstr(err, "isdir.safetensors"));
    assert_int_equal(s_dir_count(".tmp"), 0);
    // Reading a directory or a missing file fails cleanly too.
    assert_int_equal(ser_st_open(&f, path, err), SER_EIO);
    assert_null(f);
    assert_non_null(strstr(err, "not a regular file"));
    rmdir(path);
    s_path(path, sizeof path, "missing.safetensors");
    assert_int_equal(ser_st_open(&f, path, err), SER_ENOENT);
    assert_non_null(strstr(err, "missing.safetensors"));
    // No such directory: the temporary cannot even be created.
    s_path(path, sizeof path, "nodir/model.safetensors");
    assert_int_equal(ser_st_writer_save(w, path, err), SER_EIO);
    assert_int_equal(s_dir_count(".tmp"), 0);
    ser_st_writer_destroy(&w);
}

// --- accepted edge cases ---------------------------------------------------------------------
static void test_accepted_edge_cases(void **state) {
    (void)state;
    static const struct {
        const char *header;
        size_t data_len;
        int count;
    } ok[] = {
        {"{}", 0, 0},
        {"{}        ", 0, 0},
        {" \n{\"__metadata__\":null}\t\r\n ", 0, 0},
        {"{\"__metadata__\":{}}", 0, 0},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, 1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,0,3],\"data_offsets\":[0,0]},"
         "\"b\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[0,1]},"
         "\"c\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[1,1]}}",
         1, 3},
        // Unknown fields are ignored; a name can be empty or use escapes.
        {"{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[1,{}]},"
         "\"h\\u00e9\\\"q\":{\"data_offsets\":[1,2],\"shape\":[1,1,1,1,1,1,1,1],\"dtype\":\"I8\"}}",
         2, 2},
        // Integral numbers written as floats.
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4e0]}}", 4, 1},
    };
    char err[SER_ERR_LEN];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t n;
        unsigned char *b = s_build(ok[i].header, strlen(ok[i].header), ok[i].data_len, &n);
        ser_st_file *f = NULL;
        int rc = ser_st_open_mem(&f, b, n, err);
        if (rc != SER_OK) fprintf(stderr, "case %zu: %s\n", i, err);
        assert_int_equal(rc, SER_OK);
        assert_int_equal(ser_st_count(f), ok[i].count);
        if (i == 6) {
            assert_non_null(ser_st_find(f, ""));
            assert_non_null(ser_st_find(f, "h\xc3\xa9\"q"));
            assert_int_equal(ser_st_find(f, "h\xc3\xa9\"q")->ndim, 8);
        }
        ser_st_destroy(&f);
        free(b);
    }

    // An F32 tensor at an odd offset: accepted, and its copy is still 64-byte aligned.
    const char *h =
        "{\"pad\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}";
    size_t n;
    unsigned char *b = s_build(h, strlen(h), 9, &n);
    const float xv[2] = {1.5f, -7.25f};
    memcpy(b + n - 8, xv, 8);
    ser_st_file *f;
    assert_int_equal(ser_st_open_mem(&f, b, n, err), SER_OK);
    const ser_st_entry *e = ser_st_find(f, "x");
    assert_int_equal((uintptr_t)e->data % 64, 0);
    float got[2];
    const int64_t s2[1] = {2};
    assert_int_equal(ser_st_read_f32(f, "x", got, 1, s2, err), SER_OK);
    assert_memory_equal(got, xv, 8);
    ser_st_destroy(&f);
    free(b);
}

// --- malformed inputs ------------------------------------------------------------------------
#define F32A(name, shape, b, e) \
    "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

typedef struct s_bad {
    const char *what;
    const char *header;
    size_t hlen;  // 0: strlen(header)
    size_t data_len;
    int rc;
    const char *expect;  // must appear in the message
} s_bad;

static const s_bad s_bad_cases[] = {
    {"truncated json", "{\"a\":", 0, 0, SER_EFORMAT, "not valid JSON"},
    {"not json", "garbage", 0, 0, SER_EFORMAT, "not valid JSON"},
    {"trailing garbage", "{} x", 0, 0, SER_EFORMAT, "unexpected bytes"},
    {"two objects", "{}{}", 0, 0, SER_EFORMAT, "unexpected bytes"},
    {"embedded NUL", "{}\0     ", 8, 0, SER_EFORMAT, "unexpected bytes"},
    {"NUL in a name", "{\"a\0b\":{}}", 10, 0, SER_EFORMAT, "not valid JSON"},
    {"array", "[]", 0, 0, SER_EFORMAT, "not a JSON object"},
    {"number", "3", 0, 0, SER_EFORMAT, "not a JSON object"},
    {"string", "\"s\"", 0, 0, SER_EFORMAT, "not a JSON object"},
    {"null", "null", 0, 0, SER_EFORMAT, "not a JSON object"},
    {"only spaces", "        ", 0, 0, SER_EFORMAT, "not valid JSON"},
    {"deep nesting",
     "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
     "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
     0, 0, SER_EFORMAT, "not valid JSON"},
    {"invalid utf-8", "{\"\xff\":{}}", 0, 0, SER_EFORMAT, "UTF-8"},
    {"overlong utf-8", "{\"\xc0\xaf\":{}}", 0, 0, SER_EFORMAT, "UTF-8"},
    {"utf-8 surrogate", "{\"\xed\xa0\x80\":{}}", 0, 0, SER_EFORMAT, "UTF-8"},
    {"entry is a number", "{\"blk.w\":3}", 0, 0, SER_EFORMAT,
     "'blk.w': entry is not a JSON object"},
    {"entry is an array", "{\"blk.w\":[]}", 0, 0, SER_EFORMAT, "'blk.w': entry is not"},
    {"missing dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, SER_EFORMAT,
     "'w': missing \"dtype\""},
    {"missing shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 0, 4, SER_EFORMAT,
     "'w': missing \"shape\""},
    {"missing offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4, SER_EFORMAT,
     "'w': missing \"data_offsets\""},
    {"duplicate field",
     "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     SER_EFORMAT, "duplicate field \"dtype\""},
    {"dtype not a string", "{\"w\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     SER_EFORMAT, "dtype is not a string"},
    {"unknown dtype", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 0, 1,
     SER_EDTYPE, "unsupported dtype 'F8_E4M3'"},
    {"lowercase dtype", "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     SER_EDTYPE, "'w': unsupported dtype 'f32'"},
    {"unsupported U32", "{\"w\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
     SER_EDTYPE, "'U32'"},
    {"shape not an array", "{" F32A("w", "3", 0, 12) "}", 0, 12, SER_EFORMAT,
     "'w': shape is not an array"},
    {"negative dim", "{" F32A("w", "[-1]", 0, 0) "}", 0, 0, SER_EFORMAT, "shape[0]"},
    {"fractional dim", "{" F32A("w", "[2,1.5]", 0, 12) "}", 0, 12, SER_EFORMAT, "shape[1]"},
    {"string dim", "{" F32A("w", "[\"3\"]", 0, 12) "}", 0, 12, SER_EFORMAT, "shape[0]"},
    {"null dim", "{" F32A("w", "[null]", 0, 0) "}", 0, 0, SER_EFORMAT, "shape[0]"},
    {"bool dim", "{" F32A("w", "[true]", 0, 4) "}", 0, 4, SER_EFORMAT, "shape[0]"},
    {"huge dim", "{" F32A("w", "[1e300]", 0, 4) "}", 0, 4, SER_EFORMAT, "shape[0]"},
    {"dim 2^53", "{" F32A("w", "[9007199254740992]", 0, 4) "}", 0, 4, SER_EFORMAT, "shape[0]"},
    {"9 dims", "{" F32A("w", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 0, 4, SER_EFORMAT, "9 dims (max 8)"},
    {"numel overflow", "{" F32A("w", "[4294967296,4294967296,4294967296]", 0, 0) "}", 0, 0,
     SER_EFORMAT, "'w': shape [4294967296,4294967296,4294967296] x F32 overflows"},
    {"nbytes overflow",
     "{\"w\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,0]}}", 0, 0,
     SER_EFORMAT, "overflows"},
    {"offsets not an array",
     "{" F32A("w", "[1]", 0, 4) ",\"v\":{\"dtype\":\"U8\",\"shape\":[],"
                                "\"data_offsets\":4}}",
     0, 5, SER_EFORMAT, "'v': data_offsets is not an array"},
    {"one offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 0, 4,
     SER_EFORMAT, "data_offsets is not an array [begin, end]"},
    {"three offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 0, 8,
     SER_EFORMAT, "data_offsets is not an array"},
    {"string offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 0, 4,
     SER_EFORMAT, "data_offsets[1]"},
    {"negative offset", "{" F32A("w", "[1]", -4, 0) "}", 0, 4, SER_EFORMAT, "data_offsets[0]"},
    {"fractional offset", "{" F32A("w", "[1]", 0.5, 4.5) "}", 0, 5, SER_EFORMAT, "data_offsets[0]"},
    {"end before begin", "{" F32A("w", "[0]", 8, 0) "}", 0, 8, SER_EFORMAT,
     "data_offsets [8, 0] end before begin"},
    {"offsets out of range", "{" F32A("blocks.0.attn.qkv.weight", "[3,4]", 0, 100) "}", 0, 48,
     SER_EFORMAT, "data_offsets [0, 100] exceed the 48-byte data buffer"},
    {"huge end offset", "{" F32A("w", "[1]", 0, 9007199254740991) "}", 0, 4, SER_EFORMAT, "exceed"},
    {"size mismatch", "{" F32A("blocks.0.attn.qkv.weight", "[3,4]", 0, 100) "}", 0, 100,
     SER_EFORMAT,
     "tensor 'blocks.0.attn.qkv.weight': data_offsets [0, 100] do not match shape [3,4] x F32 = "
     "48 bytes"},
    {"scalar size mismatch", "{" F32A("s", "[]", 0, 8) "}", 0, 8, SER_EFORMAT,
     "shape [] x F32 = 4 bytes"},
    {"overlap", "{" F32A("a", "[2]", 0, 8) "," F32A("b", "[2]", 4, 12) "}", 0, 12, SER_EFORMAT,
     "'b' data_offsets [4, 12] overlap tensor 'a'"},
    {"same range twice", "{" F32A("a", "[2]", 0, 8) "," F32A("b", "[2]", 0, 8) "}", 0, 8,
     SER_EFORMAT, "overlap"},
    {"zero-size inside another", "{" F32A("a", "[2]", 0, 8) "," F32A("z", "[0]", 4, 4) "}", 0, 8,
     SER_EFORMAT, "'z' data_offsets [4, 4] overlap tensor 'a'"},
    {"hole", "{" F32A("a", "[1]", 0, 4) "," F32A("b", "[1]", 8, 12) "}", 0, 12, SER_EFORMAT,
     "bytes [4, 8) of the data buffer are not covered by any tensor (hole before 'b')"},
    {"leading hole", "{" F32A("a", "[1]", 4, 8) "}", 0, 8, SER_EFORMAT, "bytes [0, 4)"},
    {"trailing bytes", "{" F32A("a", "[1]", 0, 4) "}", 0, 8, SER_EFORMAT,
     "bytes [4, 8) at the end of the data buffer"},
    {"data without tensors", "{}", 0, 3, SER_EFORMAT, "bytes [0, 3) at the end"},
    {"duplicate name", "{" F32A("a", "[1]", 0, 4) "," F32A("a", "[1]", 4, 8) "}", 0, 8, SER_EFORMAT,
     "duplicate tensor name 'a'"},
    {"duplicate among many",
     "{" F32A("x", "[1]", 0, 4) "," F32A("b", "[1]", 4, 8) "," F32A("c", "[1]", 8, 12) "," F32A(
         "b", "[1]", 12, 16) "}",
     0, 16, SER_EFORMAT, "duplicate tensor name 'b'"},
    {"metadata value number", "{\"__metadata__\":{\"k\":1}}", 0, 0, SER_EFORMAT,
     "value of 'k' is not a string"},
    {"metadata value object", "{\"__metadata__\":{\"k\":{}}}", 0, 0, SER_EFORMAT, "not a string"},
    {"metadata value null", "{\"__metadata__\":{\"a\":\"x\",\"k\":null}}", 0, 0, SER_EFORMAT,
     "not a string"},
    {"metadata not an object", "{\"__metadata__\":3}", 0, 0, SER_EFORMAT,
     "__metadata__ is not a JSON object"},
    {"metadata array", "{\"__metadata__\":[\"a\"]}", 0, 0, SER_EFORMAT, "__metadata__ is not"},
    {"duplicate metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, SER_EFORMAT,
     "duplicate __metadata__"},
    {"duplicate metadata key", "{\"__metadata__\":{\"k\":\"1\",\"j\":\"\",\"k\":\"2\"}}", 0, 0,
     SER_EFORMAT, "duplicate __metadata__ key 'k'"},
    {"name too long",
     "{\""
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":{\"dtype\":\"U8\",\"shape\":[],"
     "\"data_offsets\":[0,1]}}",
     0, 1, SER_EFORMAT, "is 135 bytes (max 127)"},
};

static void s_check_bad(const char *what, const unsigned char *b, size_t n, int want_rc,
                        const char *expect, const char *label) {
    char err[SER_ERR_LEN] = "";
    ser_st_file *f = (ser_st_file *)(uintptr_t)1;  // a dangling value that must become NULL
    int rc = ser_st_open_mem(&f, b, n, err);
    if (rc != want_rc || !strstr(err, expect) || !strstr(err, "<memory>"))
        fprintf(stderr, "case '%s' (memory): rc %d (%s), want %d; message: %s\n", what, rc,
                ser_strerror(rc), want_rc, err);
    if (getenv("SER_TEST_VERBOSE")) fprintf(stderr, "%-28s -> %s\n", what, err);
    assert_int_equal(rc, want_rc);
    assert_null(f);
    assert_non_null(strstr(err, expect));
    assert_non_null(strstr(err, "<memory>"));

    // The same bytes from a file: same code, and the message names the file.
    char path[256];
    s_path(path, sizeof path, label);
    s_write_file(path, b, n);
    err[0] = 0;
    rc = ser_st_open(&f, path, err);
    if (rc != want_rc || !strstr(err, expect) || !strstr(err, label))
        fprintf(stderr, "case '%s' (file): rc %d, want %d; message: %s\n", what, rc, want_rc, err);
    assert_int_equal(rc, want_rc);
    assert_null(f);
    assert_non_null(strstr(err, expect));
    assert_non_null(strstr(err, label));
    unlink(path);
}

static void test_malformed_table(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof s_bad_cases / sizeof s_bad_cases[0]; i++) {
        const s_bad *c = &s_bad_cases[i];
        size_t hlen = c->hlen ? c->hlen : strlen(c->header), n;
        unsigned char *b = s_build(c->header, hlen, c->data_len, &n);
        s_check_bad(c->what, b, n, c->rc, c->expect, "bad.safetensors");
        free(b);
    }

    // The length field itself.
    unsigned char raw[40];
    memset(raw, 0, sizeof raw);
    s_check_bad("empty file", raw, 0, SER_EFORMAT, "shorter than the 8-byte", "short.st");
    s_check_bad("7 bytes", raw, 7, SER_EFORMAT, "7 bytes, shorter than the 8-byte", "short.st");
    s_check_bad("header length 0", raw, 16, SER_EFORMAT, "header length is 0", "zero.st");
    const uint64_t lens[3] = {100 * 1024 * 1024 + 1, UINT64_MAX, (uint64_t)1 << 63};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 8; i++) raw[i] = (unsigned char)(lens[k] >> (8 * i));
        s_check_bad("header length huge", raw, sizeof raw, SER_EFORMAT, "100 MiB limit", "huge.st");
    }
    memset(raw, 0, 8);
    raw[0] = 33;  // 33 > 40 - 8
    memcpy(raw + 8, "{}", 2);
    s_check_bad("header past the end", raw, sizeof raw, SER_EFORMAT,
                "header length 33 exceeds the 32 bytes", "past.st");

    // Nesting far beyond cJSON's limit (1000) must fail, not overflow the stack.
    size_t depth = 5000, n;
    char *deep = malloc(2 * depth + 8);
    size_t k = 0;
    k += (size_t)sprintf(deep, "{\"a\":");
    for (size_t i = 0; i < depth; i++) deep[k++] = '[';
    for (size_t i = 0; i < depth; i++) deep[k++] = ']';
    deep[k++] = '}';
    unsigned char *b = s_build(deep, k, 0, &n);
    s_check_bad("nesting 5000", b, n, SER_EFORMAT, "not valid JSON", "deep.st");
    free(b);
    free(deep);

    // Names: 127 bytes is the longest accepted, 128 is refused.
    for (int len = 127; len <= 128; len++) {
        char h[300];
        int hl = snprintf(h, sizeof h,
                          "{\"%0*d\":{\"dtype\":\"U8\",\"shape\":[],"
                          "\"data_offsets\":[0,1]}}",
                          len, 7);
        b = s_build(h, (size_t)hl, 1, &n);
        if (len == 128) {
            s_check_bad("name of 128 bytes", b, n, SER_EFORMAT, "is 128 bytes (max 127)", "n.st");
        } else {
            ser_st_file *f;
            char err[SER_ERR_LEN];
            assert_int_equal(ser_st_open_mem(&f, b, n, err), SER_OK);
            assert_int_equal(strlen(ser_st_at(f, 0)->name), 127);
            ser_st_destroy(&f);
        }
        free(b);
    }
}

// Every proper prefix of a valid file is an error, from memory and from a file.
static void test_truncations(void **state) {
    (void)state;
    s_sample s;
    s_sample_fill(&s);
    ser_st_writer *w = s_sample_writer(&s);
    void *buf;
    size_t n;
    char err[SER_ERR_LEN], path[256];
    assert_int_equal(ser_st_writer_to_mem(w, &buf, &n, err), SER_OK);
    ser_st_writer_destroy(&w);
    s_path(path, sizeof path, "trunc.safetensors");
    for (size_t len = 0; len < n; len++) {
        unsigned char *b = malloc(len ? len : 1);
        memcpy(b, buf, len);
        ser_st_file *f = NULL;
        int rc = ser_st_open_mem(&f, b, len, err);
        if (rc >= 0) fprintf(stderr, "truncation to %zu of %zu bytes was accepted\n", len, n);
        assert_true(rc < 0);
        assert_int_equal(rc, SER_EFORMAT);
        assert_null(f);
        s_write_file(path, b, len);
        assert_int_equal(ser_st_open(&f, path, err), SER_EFORMAT);
        assert_null(f);
        free(b);
    }
    unlink(path);
    free(buf);
}

// Random byte changes of a valid file: success or a clean error, never a crash or an
// out-of-bounds access (this is what the ASan/UBSan build checks).
static void test_mutations(void **state) {
    (void)state;
    s_sample s;
    s_sample_fill(&s);
    ser_st_writer *w = s_sample_writer(&s);
    void *buf;
    size_t n;
    char err[SER_ERR_LEN];
    assert_int_equal(ser_st_writer_to_mem(w, &buf, &n, err), SER_OK);
    ser_st_writer_destroy(&w);
    unsigned char *b = malloc(n);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int nok = 0;
    static const char alphabet[] = "0123456789[]{},:\" -.e\\u";
    float *tmp = malloc(n * 8);
    for (int it = 0; it < 4000; it++) {
        memcpy(b, buf, n);
        int k = 1 + it % 3;
        for (int j = 0; j < k; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            // Mostly inside the header (where the structure is), sometimes anywhere.
            size_t hdr_end = 8 + (size_t)b[0] + 256 * (size_t)b[1];
            size_t pos = (x >> 8) % (it & 4 ? n : (hdr_end < n ? hdr_end : n));
            b[pos] = (x & 1) ? (unsigned char)alphabet[(x >> 40) % (sizeof alphabet - 1)]
                             : (unsigned char)(x >> 32);
        }
        ser_st_file *f = NULL;
        int rc = ser_st_open_mem(&f, b, n, err);
        if (rc == SER_OK) {
            nok++;
            for (int i = 0; i < ser_st_count(f); i++) {
                const ser_st_entry *e = ser_st_at(f, i);
                unsigned sum = 0;
                for (size_t q = 0; q < e->nbytes; q++) sum += ((const unsigned char *)e->data)[q];
                (void)sum;
                if (e->numel <= n) (void)ser_st_read_f32(f, e->name, tmp, e->ndim, e->shape, err);
            }
            ser_st_destroy(&f);
        } else {
            assert_true(rc < 0);
            assert_null(f);
            assert_true(strlen(err) > 0);
        }
    }
    fprintf(stderr, "mutations: %d of 4000 still valid\n", nok);
    free(tmp);
    free(b);
    free(buf);
}

// --- PyTorch interop -------------------------------------------------------------------------
// The pattern C writes and tests/reference/st_roundtrip.py checks: x[i] = i*0.25 - 3 etc.
static void test_pytorch_interop(void **state) {
    (void)state;
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3-torch not installed, interop not checked\n");
        fflush(stdout);
        skip();
    }
    float pf32[105];
    double pf64[24];
    int64_t pi64[10];
    int32_t pi32[7];
    int16_t pi16[5];
    int8_t pi8[6];
    uint8_t pu8[6], pbool[5];
    uint16_t pbf16[8];
    // -3, -2.75, ..., -1.25 in F16, written out by hand.
    const uint16_t pf16[8] = {0xc200, 0xc180, 0xc100, 0xc080, 0xc000, 0xbf00, 0xbe00, 0xbd00};
    for (int i = 0; i < 105; i++) pf32[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < 24; i++) pf64[i] = (double)i * 0.25 - 3.0;
    for (int i = 0; i < 10; i++) pi64[i] = (int64_t)i * 1000000007 - 5000000000;
    for (int i = 0; i < 7; i++) pi32[i] = i - 3;
    for (int i = 0; i < 5; i++) pi16[i] = (int16_t)(i * 1000 - 2000);
    for (int i = 0; i < 6; i++) pi8[i] = (int8_t)(i * 20 - 50);
    for (int i = 0; i < 6; i++) pu8[i] = (uint8_t)(i * 40);
    for (int i = 0; i < 5; i++) pbool[i] = (uint8_t)(i % 2);
    for (int i = 0; i < 8; i++) pbf16[i] = s_bits16((float)i * 0.25f - 3.0f);
    const float scalar = 2.5f;
    const int64_t s_f32[3] = {3, 5, 7}, s_f64[2] = {4, 6}, s_10[1] = {10}, s_17[2] = {1, 7},
                  s_5[1] = {5}, s_6[1] = {6}, s_231[3] = {2, 3, 1}, s_24[2] = {2, 4}, s_8[1] = {8},
                  s_04[2] = {0, 4};
    ser_st_writer *w = ser_st_writer_new();
    ser_st_writer_add(w, "pattern.f32", SER_DT_F32, 3, s_f32, pf32);
    ser_st_writer_add(w, "pattern.f64", SER_DT_F64, 2, s_f64, pf64);
    ser_st_writer_add(w, "pattern.f16", SER_DT_F16, 2, s_24, pf16);
    ser_st_writer_add(w, "pattern.bf16", SER_DT_BF16, 1, s_8, pbf16);
    ser_st_writer_add(w, "pattern.i64", SER_DT_I64, 1, s_10, pi64);
    ser_st_writer_add(w, "pattern.i32", SER_DT_I32, 2, s_17, pi32);
    ser_st_writer_add(w, "pattern.i16", SER_DT_I16, 1, s_5, pi16);
    ser_st_writer_add(w, "pattern.i8", SER_DT_I8, 1, s_6, pi8);
    ser_st_writer_add(w, "pattern.u8", SER_DT_U8, 3, s_231, pu8);
    ser_st_writer_add(w, "pattern.bool", SER_DT_BOOL, 1, s_5, pbool);
    ser_st_writer_add(w, "scalar", SER_DT_F32, 0, NULL, &scalar);
    ser_st_writer_add(w, "empty", SER_DT_F32, 2, s_04, NULL);
    ser_st_writer_meta(w, "format", "pt");
    ser_st_writer_meta(w, "producer", "ser test_safetensors");
    char in[256], out[256], cmd[1024], err[SER_ERR_LEN];
    s_path(in, sizeof in, "from_c.safetensors");
    s_path(out, sizeof out, "from_torch.safetensors");
    assert_int_equal(ser_st_writer_save(w, in, err), SER_OK);
    ser_st_writer_destroy(&w);

    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -B '%s/../st_roundtrip.py' '%s' '%s'",
             SER_FIXTURE_DIR, in, out);
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (status %d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);

    ser_st_file *f;
    rc = ser_st_open(&f, out, err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, SER_OK);
    assert_string_equal(ser_st_meta(f, "producer"), "st_roundtrip.py");
    assert_string_equal(ser_st_meta(f, "note"), "h\xc3\xa9llo \"quoted\" \\ back");
    assert_non_null(ser_st_meta(f, "torch"));

    // py.f32 = arange(24).reshape(2,3,4) * 0.5 - 1
    float got[24], want[24];
    const int64_t s234[3] = {2, 3, 4};
    assert_int_equal(ser_st_read_f32(f, "py.f32", got, 3, s234, err), SER_OK);
    for (int i = 0; i < 24; i++) want[i] = (float)i * 0.5f - 1.0f;
    assert_memory_equal(got, want, sizeof want);
    // py.f64 = arange(5) / 3 (float64), compared bit-exactly as doubles.
    const ser_st_entry *e = ser_st_find(f, "py.f64");
    assert_non_null(e);
    assert_int_equal(e->dtype, SER_DT_F64);
    for (int i = 0; i < 5; i++) assert_true(((const double *)e->data)[i] == (double)i / 3.0);
    // py.f16 / py.bf16 through the float conversion.
    const int64_t s6v[1] = {6}, s4v[1] = {4};
    const float wf16[6] = {1.0f, -2.0f, 65504.0f, 0x1p-24f, 0.333251953125f, INFINITY};
    assert_int_equal(ser_st_read_f32(f, "py.f16", got, 1, s6v, err), SER_OK);
    assert_memory_equal(got, wf16, sizeof wf16);
    assert_int_equal(ser_st_find(f, "py.f16")->dtype, SER_DT_F16);
    const float wbf16[4] = {1.0f, 3.140625f, -0.5f, 256.0f};
    assert_int_equal(ser_st_read_f32(f, "py.bf16", got, 1, s4v, err), SER_OK);
    assert_memory_equal(got, wbf16, sizeof wbf16);
    assert_int_equal(ser_st_find(f, "py.bf16")->dtype, SER_DT_BF16);
    // Integers, bools, a 0-d tensor, an empty tensor, a transposed (non-contiguous) tensor.
    e = ser_st_find(f, "py.i64");
    assert_int_equal(e->dtype, SER_DT_I64);
    const int64_t wi64[3] = {-((int64_t)1 << 40), 0, ((int64_t)1 << 62) + 1};
    assert_int_equal(e->nbytes, sizeof wi64);
    assert_memory_equal(e->data, wi64, sizeof wi64);
    e = ser_st_find(f, "py.i8");
    const int8_t wi8[8] = {-4, -3, -2, -1, 0, 1, 2, 3};
    assert_int_equal(e->dtype, SER_DT_I8);
    assert_memory_equal(e->data, wi8, 8);
    e = ser_st_find(f, "py.u8");
    assert_int_equal(e->dtype, SER_DT_U8);
    assert_memory_equal(e->data, "\x00\xff\x07", 3);
    e = ser_st_find(f, "py.bool");
    assert_int_equal(e->dtype, SER_DT_BOOL);
    assert_memory_equal(e->data, "\x01\x00\x01", 3);
    e = ser_st_find(f, "py.scalar");
    assert_int_equal(e->ndim, 0);
    assert_true(*(const float *)e->data == 42.5f);
    e = ser_st_find(f, "py.empty");
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 0);
    assert_int_equal(e->shape[1], 3);
    assert_int_equal(e->nbytes, 0);
    const int64_t s32[2] = {3, 2};
    const float wt[6] = {0, 3, 1, 4, 2, 5};
    assert_int_equal(ser_st_read_f32(f, "py.transposed", got, 2, s32, err), SER_OK);
    assert_memory_equal(got, wt, sizeof wt);
    assert_int_equal(ser_st_count(f), 11);
    ser_st_destroy(&f);
    unlink(in);
    unlink(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_roundtrip_mem_and_file),
        cmocka_unit_test(test_empty_writer),
        cmocka_unit_test(test_golden_read),
        cmocka_unit_test(test_golden_write),
        cmocka_unit_test(test_read_f32_conversion),
        cmocka_unit_test(test_load_ptab),
        cmocka_unit_test(test_atomic_save),
        cmocka_unit_test(test_accepted_edge_cases),
        cmocka_unit_test(test_malformed_table),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_pytorch_interop),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
