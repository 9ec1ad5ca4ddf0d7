// ser_batchfile.h — the batch file of `ser step` (docs/step-format.md) and shard slicing.
//
// defines:
//   ser_batchfile, ser_batchfile_load(), ser_batchfile_free()   a global batch from a file
//   ser_batch_shard()     the samples of shard s as a batch of their own (global ids kept)
#ifndef SER_BATCHFILE_H
#define SER_BATCHFILE_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_engine.h"

typedef struct ser_batchfile {
    ser_batch b;      // points into the buffers below
    float *inv[2];
    float **eq[2];
    float *local[SER_MAX_LOCAL];  // local.view<k>: (B, 3, ls, ls) by position
    float *vparams;               // vparams: (B, 2, SER_VIEW_PARAMS), or NULL
    ser_group_elem *g[2];
    float **lpair[2];             // lpair.view<v>.<i>: the local SER pairs' views (n_eq * P)
    ser_group_elem *lg[2];        // lpair.g
    int n_lpair_views;
    uint32_t *ids;
} ser_batchfile;

// Reads and validates a batch file (uint8 images are normalised with ImageNet mean/std); every
// failure names the file and the tensor. patch checks each equivariant view's size.
int ser_batchfile_load(ser_batchfile *sb, const char *path, int patch, char err[SER_ERR_LEN]);
// Releases everything; leaves *sb zeroed, so a second call does nothing.
void ser_batchfile_free(ser_batchfile *sb);

// Shard s of S as a batch of its own: the same images, group elements and global sample ids
// (ids: room for B/S ids), so a process computing only this shard makes exactly the ViT calls
// the whole-batch run makes for it (ser_engine.h).
void ser_batch_shard(const ser_batch *b, int s, int shards, ser_batch *out, uint32_t *ids);

#endif
