// ser_safetensors.h — read and write weights in the safetensors format.
//
// Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 N, then N
// bytes of UTF-8 JSON (possibly padded with trailing spaces), then the byte buffer:
//   {"NAME": {"dtype": "F32", "shape": [2,3], "data_offsets": [BEGIN, END]}, ...,
//    "__metadata__": {"key": "string value", ...}}
// Offsets are relative to the start of the byte buffer, which tensors must cover exactly
// (no holes, no overlaps). Data is little-endian and row-major; a 0-d tensor has shape [].
// This module assumes a little-endian host (checked at compile time).
//
// defines:
//   ser_dtype (SER_DT_*), ser_dtype_size(), ser_dtype_name(), ser_dtype_parse()
//   ser_st_entry                        one tensor of an opened file
//   ser_st_file (opaque reader)         ser_st_open(), ser_st_open_mem(), ser_st_destroy(),
//                                       ser_st_count(), ser_st_at(), ser_st_find(),
//                                       ser_st_meta(), ser_st_read_f32(), ser_st_load_ptab(),
//                                       ser_st_load_ptabs()
//   ser_st_writer (opaque writer)       ser_st_writer_new(), ser_st_writer_destroy(),
//                                       ser_st_writer_add(), ser_st_writer_add_ptab(),
//                                       ser_st_writer_meta(), ser_st_writer_save(),
//                                       ser_st_writer_to_mem()
//
// Errors: functions returning int give SER_OK or a negative SER_E* code and, when err is not
// NULL, a one-line message naming the file (or "<memory>") and what is wrong.
#ifndef SER_SAFETENSORS_H
#define SER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_ptab.h"

// --- dtypes ----------------------------------------------------------------------------------
typedef enum ser_dtype {
    SER_DT_F32,
    SER_DT_F64,
    SER_DT_F16,
    SER_DT_BF16,
    SER_DT_I64,
    SER_DT_I32,
    SER_DT_I16,
    SER_DT_I8,
    SER_DT_U8,
    SER_DT_BOOL,
} ser_dtype;

// Bytes per element (BOOL is one byte holding 0 or 1).
size_t ser_dtype_size(ser_dtype t);
// The safetensors spelling: "F32", "BF16", "BOOL", ...
const char *ser_dtype_name(ser_dtype t);
// Parses the exact (case-sensitive) safetensors spelling; SER_OK or SER_EDTYPE.
int ser_dtype_parse(const char *s, ser_dtype *out);

// --- reader ----------------------------------------------------------------------------------
#define SER_ST_MAX_DIM 8

typedef struct ser_st_entry {
    char name[SER_TINFO_NAME_LEN];  // names longer than SER_TINFO_NAME_LEN-1 bytes are rejected
    ser_dtype dtype;
    int ndim;  // 0 for a scalar
    int64_t shape[SER_ST_MAX_DIM];
    size_t numel, nbytes;  // numel is 1 for a scalar, 0 if any dim is 0
    const void *data;      // nbytes bytes, 64-byte aligned, owned by the file
} ser_st_entry;

typedef struct ser_st_file ser_st_file;

// Reads and validates the whole file; on success *out owns all tensor bytes and metadata.
// Each tensor's data is copied to its own 64-byte aligned slot, so e->data is aligned for any
// dtype even when the file places a tensor at an offset that is not a multiple of its dtype
// size (such files are accepted). Returns SER_EIO (cannot read), SER_ENOENT (no such file),
// SER_EFORMAT (malformed), SER_EDTYPE (unknown dtype) or SER_ENOMEM; *out is NULL on error.
// Caller owns *out; release with ser_st_destroy().
int ser_st_open(ser_st_file **out, const char *path, char err[SER_ERR_LEN]);
// Same from a memory buffer of n bytes (not retained: the bytes are copied).
int ser_st_open_mem(ser_st_file **out, const void *buf, size_t n, char err[SER_ERR_LEN]);
// NULL-safe; sets *f = NULL.
void ser_st_destroy(ser_st_file **f);

int ser_st_count(const ser_st_file *f);
// The i-th tensor (0 <= i < count) in file order of data offsets. Valid until destroy.
const ser_st_entry *ser_st_at(const ser_st_file *f, int i);
// The tensor with this exact name, or NULL.
const ser_st_entry *ser_st_find(const ser_st_file *f, const char *name);
// The __metadata__ value for key, or NULL. Valid until destroy.
const char *ser_st_meta(const ser_st_file *f, const char *key);

// Copies tensor `name` into dst (numel floats), converting F16/BF16/F64 to F32 (F64 rounds to
// nearest). ndim and shape must match the file exactly. Returns SER_ENOENT (no such tensor),
// SER_ESHAPE (names the tensor and both shapes) or SER_EDTYPE (any other dtype).
int ser_st_read_f32(const ser_st_file *f, const char *name, float *dst, int ndim,
                    const int64_t *shape, char err[SER_ERR_LEN]);

// Loads every ptab entry t from the tensor named prefix+t.name into arena + t.offset
// (prefix may be NULL or ""). Everything is checked before anything is copied, so the arena
// is unchanged on error. strict=1 also requires that every file tensor whose name starts
// with prefix is a ptab entry (PyTorch load_state_dict(strict=True)); strict=0 skips ptab
// entries missing from the file and ignores extra tensors. Shape and dtype are always
// checked. Returns SER_ENOENT (missing tensors; the message gives the count and the first
// missing and first unexpected names), SER_EFORMAT (only unexpected tensors), SER_ESHAPE
// (names the tensor and both shapes) or SER_EDTYPE.
int ser_st_load_ptab(const ser_st_file *f, const ser_ptab *p, float *arena, const char *prefix,
                     int strict, char err[SER_ERR_LEN]);
// The same over several tables at once (a model made of modules in separate tables, e.g.
// trainable parameters and the momentum encoder): strict checks the union of their names.
// Counters (SER_TINFO_COUNTER) also accept a 0-d I64/I32 tensor, as PyTorch writes them.
int ser_st_load_ptabs(const ser_st_file *f, const ser_ptab *const *p, float *const *arena, int np,
                      const char *prefix, int strict, char err[SER_ERR_LEN]);

// --- writer ----------------------------------------------------------------------------------
typedef struct ser_st_writer ser_st_writer;

// Caller owns the writer; release with ser_st_writer_destroy() (NULL-safe, sets *w = NULL).
ser_st_writer *ser_st_writer_new(void);
void ser_st_writer_destroy(ser_st_writer **w);
// Adds a tensor of ndim (0..SER_ST_MAX_DIM) dims. The name is copied; the data is NOT: it
// must stay valid and unchanged until the last save/to_mem. Names must be unique, shorter
// than SER_TINFO_NAME_LEN and not "__metadata__" (SER_ASSERT).
void ser_st_writer_add(ser_st_writer *w, const char *name, ser_dtype dt, int ndim,
                       const int64_t *shape, const void *data);
// Adds every ptab entry t as F32 tensor prefix+t.name with data arena + t.offset.
void ser_st_writer_add_ptab(ser_st_writer *w, const ser_ptab *p, const float *arena,
                            const char *prefix);
// Sets a __metadata__ string (both copied); setting a key again replaces its value.
void ser_st_writer_meta(ser_st_writer *w, const char *key, const char *value);
// Writes atomically: PATH.tmp.<pid>, fwrite, fflush, fsync, rename over PATH, fsync the
// directory; on failure the temporary file is removed and PATH is untouched (SER_EIO).
// Tensors are laid out by dtype size, largest first (stable among equal sizes), so every
// tensor is naturally aligned; the header is padded with spaces to a multiple of 8.
// The writer may be saved again afterwards.
int ser_st_writer_save(ser_st_writer *w, const char *path, char err[SER_ERR_LEN]);
// Same bytes into a malloc'ed buffer; caller owns *buf and releases it with free().
int ser_st_writer_to_mem(ser_st_writer *w, void **buf, size_t *n, char err[SER_ERR_LEN]);

#endif
