// fuzz_safetensors.c — fuzzes the safetensors reader (common/io/ser_safetensors.h): the
// 8-byte header length, the JSON header (dtypes, shapes, data offsets, __metadata__) and the
// byte buffer, read both from memory (ser_st_open_mem) and from a file (ser_st_open, on a
// memfd reached by its /proc/self/fd path, so no file is written per input).
//
// The input is the file, unchanged. Checked here beyond "no crash":
//   - both readers give the same verdict, tensor count and tensors;
//   - an accepted file's tensors are self-consistent: numel = product of the shape, nbytes =
//     numel x dtype size, data 64-byte aligned, every name found by ser_st_find();
//   - ser_st_read_f32() of every tensor with its own shape succeeds exactly for F32, F64,
//     F16 and BF16 and returns F32 bytes unchanged;
//   - writing the tensors again (ser_st_writer_to_mem) and reading that back gives the same
//     tensors (names, dtypes, shapes, bytes).
#define _GNU_SOURCE  // nftw, memfd_create
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "ser_safetensors.h"

static int s_fd = -1;
static char s_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    s_fd = memfd_create("ser_fuzz_safetensors", MFD_CLOEXEC);
    if (s_fd < 0) {
        perror("fuzz_safetensors: memfd_create");
        abort();
    }
    snprintf(s_path, sizeof s_path, "/proc/self/fd/%d", s_fd);
    return 0;
}

static void s_fail(const char *what) {
    fprintf(stderr, "fuzz_safetensors: %s\n", what);
    abort();
}

static int s_same_entry(const ser_st_entry *a, const ser_st_entry *b) {
    if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->ndim != b->ndim ||
        a->numel != b->numel || a->nbytes != b->nbytes)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0;
}

static void s_check(const ser_st_file *f) {
    int n = ser_st_count(f);
    for (int i = 0; i < n; i++) {
        const ser_st_entry *e = ser_st_at(f, i);
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= (size_t)e->shape[d];
        if (e->ndim < 0 || e->ndim > SER_ST_MAX_DIM || numel != e->numel ||
            e->nbytes != e->numel * ser_dtype_size(e->dtype))
            s_fail("an entry's numel or nbytes does not match its shape and dtype");
        if (e->nbytes && ((uintptr_t)e->data % 64) != 0) s_fail("tensor data not 64-byte aligned");
        const ser_st_entry *g = ser_st_find(f, e->name);
        if (!g || strcmp(g->name, e->name) != 0) s_fail("ser_st_find misses a tensor");
        volatile uint8_t sum = 0;  // every byte must be readable
        for (size_t k = 0; k < e->nbytes; k++) sum ^= ((const uint8_t *)e->data)[k];
        (void)sum;
        float *dst = malloc(sizeof(float) * (e->numel ? e->numel : 1));
        char err[SER_ERR_LEN];
        int rc = ser_st_read_f32(f, e->name, dst, e->ndim, e->shape, err);
        int convertible = e->dtype == SER_DT_F32 || e->dtype == SER_DT_F64 ||
                          e->dtype == SER_DT_F16 || e->dtype == SER_DT_BF16;
        if ((rc == SER_OK) != convertible) s_fail("ser_st_read_f32 verdict does not match dtype");
        if (rc == SER_OK && e->dtype == SER_DT_F32 && e->nbytes &&
            memcmp(dst, e->data, e->nbytes) != 0)
            s_fail("ser_st_read_f32 changed F32 bytes");
        free(dst);
    }
    ser_st_meta(f, "format");
    ser_st_meta(f, "");
    ser_st_find(f, "");
    // Round trip through the writer.
    ser_st_writer *w = ser_st_writer_new();
    for (int i = 0; i < n; i++) {
        const ser_st_entry *e = ser_st_at(f, i);
        ser_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, e->data);
    }
    const char *fmt = ser_st_meta(f, "format");
    if (fmt) ser_st_writer_meta(w, "format", fmt);
    void *buf = NULL;
    size_t len = 0;
    char err[SER_ERR_LEN];
    if (ser_st_writer_to_mem(w, &buf, &len, err) != SER_OK) s_fail(err);
    ser_st_file *g = NULL;
    if (ser_st_open_mem(&g, buf, len, err) != SER_OK) {
        fprintf(stderr, "fuzz_safetensors: reading back what the writer wrote: %s\n", err);
        abort();
    }
    if (ser_st_count(g) != n) s_fail("round trip changed the tensor count");
    for (int i = 0; i < n; i++) {
        const ser_st_entry *e = ser_st_at(f, i), *r = ser_st_find(g, e->name);
        if (!r || !s_same_entry(e, r)) s_fail("round trip changed a tensor");
    }
    const char *fmt2 = ser_st_meta(g, "format");
    if ((fmt == NULL) != (fmt2 == NULL) || (fmt && strcmp(fmt, fmt2) != 0))
        s_fail("round trip changed the metadata");
    ser_st_destroy(&g);
    free(buf);
    ser_st_writer_destroy(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (s_fd < 0) LLVMFuzzerInitialize(NULL, NULL);
    char err_mem[SER_ERR_LEN] = "", err_file[SER_ERR_LEN] = "";
    ser_st_file *fm = NULL, *ff = NULL;
    int rm = ser_st_open_mem(&fm, data, size, err_mem);
    if (ftruncate(s_fd, 0) != 0 || (size && pwrite(s_fd, data, size, 0) != (ssize_t)size)) {
        perror("fuzz_safetensors: memfd write");
        abort();
    }
    int rf = ser_st_open(&ff, s_path, err_file);
    if (rm != rf) {
        fprintf(stderr, "fuzz_safetensors: memory says %d (%s), file says %d (%s)\n", rm, err_mem,
                rf, err_file);
        abort();
    }
    if ((rm == SER_OK) != (fm != NULL) || (rf == SER_OK) != (ff != NULL))
        s_fail("result pointer does not match the return code");
    if (rm != SER_OK && !err_mem[0]) s_fail("refusal without a reason");
    if (fm) {
        if (ser_st_count(fm) != ser_st_count(ff)) s_fail("memory and file differ in count");
        for (int i = 0; i < ser_st_count(fm); i++)
            if (!s_same_entry(ser_st_at(fm, i), ser_st_at(ff, i)))
                s_fail("memory and file differ in a tensor");
        s_check(fm);
    }
    ser_st_destroy(&fm);
    ser_st_destroy(&ff);
    return 0;
}
