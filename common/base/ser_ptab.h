// ser_ptab.h — a table of named tensors laid out in one contiguous float arena.
//
// Parameters, gradients and optimizer moments of a model all share one table: the same
// offsets index the parameter arena, the gradient arena and each AdamW moment arena, so an
// all-reduce is one flat buffer and a checkpoint is one pass over the table. Names are the
// reference PyTorch state_dict names (blocks.0.attn.qkv.weight, ...).
//
// defines:
//   ser_tinfo (name, shape, offset, numel, flags), SER_TINFO_* flags
//   ser_ptab_init(), ser_ptab_free(), ser_ptab_add(), ser_ptab_find(), ser_ptab_numel_str()
#ifndef SER_PTAB_H
#define SER_PTAB_H

#include <stddef.h>
#include <stdint.h>

#define SER_TINFO_MAX_DIM 4
#define SER_TINFO_NAME_LEN 128

enum {
    SER_TINFO_FROZEN = 1u << 0,    // never updated by the optimizer (e.g. frozen patch embedding)
    SER_TINFO_NO_DECAY = 1u << 1,  // excluded from weight decay when decay exclusions are on
    SER_TINFO_COUNTER = 1u << 2,   // an integer counter kept as float (BatchNorm's
                                   // num_batches_tracked); files store it as a 0-d I64
};

typedef struct ser_tinfo {
    char name[SER_TINFO_NAME_LEN];
    int ndim;
    int64_t shape[SER_TINFO_MAX_DIM];
    size_t offset;  // in floats from the start of the arena; a multiple of 16 (64 bytes)
    size_t numel;
    unsigned flags;
} ser_tinfo;

typedef struct ser_ptab {
    ser_tinfo *t;
    int n, cap;
    size_t total;  // floats needed by an arena holding every tensor
} ser_ptab;

void ser_ptab_init(ser_ptab *p);
void ser_ptab_free(ser_ptab *p);
// Appends a tensor; returns its offset in floats. Shape has ndim entries.
size_t ser_ptab_add(ser_ptab *p, const char *name, unsigned flags, int ndim, const int64_t *shape);
// Returns the entry or NULL.
const ser_tinfo *ser_ptab_find(const ser_ptab *p, const char *name);
// Writes "a,b,c" into buf (for messages).
const char *ser_tinfo_shape_str(const ser_tinfo *t, char *buf, size_t n);

#endif
