// ser_shard.h — the shard schema: the tensor frames of the runtime's per-shard messages, packed
// and validated in this one place by both sides (coordinator/ser_coord.c, worker/ser_worker.c).
//
//   PARAMS         student (span)            [teacher (span): objectives with a teacher, when the
//                                             worker cannot advance its own by the EMA]
//   FORWARD_DONE   qcls0, qcls1 (rows, C)     the student's final [CLS] rows of the shard
//                  [kcls0, kcls1 (rows, C)]   the teacher's, when the objective has a teacher
//                  and, with n_eq > 0 equivariant samples (the last positions of the shard):
//                  qmap0, qmap1 (ntok_v, C)   the student's SER maps of every equivariant view
//                  [kmap0, kmap1]             the teacher's
//                  g (n_eq, 2, 5)             the group elements as floats: rot180, hflip, rot90,
//                                             gh, gw of view 0 and view 1 (the coordinator reads
//                                             no data: the grids and token counts follow from g)
//                  lcls0..lcls<L-1> (rows, C) the student's [CLS] rows of the L local views
//                                             (data.local_crops), when L > 0
//                  [vparams (rows, 2, 21)]    the global views' parameters (SER_VIEW_PARAMS),
//                                             when the batch has them
//                  [qpool0..qpool<1+L> (rows, C)] the pooled block-k maps of views 0, 1 and the
//                                             local views, when a MoCo add-on reads them
//                                             (moco.addon_layer)
//                  [lg (n_eq * P, 2, 5), lqmap0, lqmap1 (lntok_v, C)] the local SER pairs
//                                             (ser.local_pairs = P): their group elements
//                                             and the student's maps of their views
//   BACKWARD       dqcls0, dqcls1 (rows, C), dqmap0, dqmap1 (ntok_v, C)
//                  [dlcls0..dlcls<L-1> (rows, C)]
//                  [dqpool0..dqpool<1+L> (rows, C)]
//                  [dlqmap0, dlqmap1 (lntok_v, C)]
//   BACKWARD_DONE  grad (span)               the shard's student gradient
// Frames are F32 (ser_wire.h); a frame's bytes carry no alignment guarantee.
//
// defines:
//   ser_shard_pack_params(), ser_shard_parse_params()
//   ser_shard_fwd, ser_shard_pack_forward(), ser_shard_parse_forward(), ser_shard_fwd_free()
//   ser_shard_pack_backward(), ser_shard_parse_backward()
//   ser_shard_pack_grad(), ser_shard_parse_grad()
#ifndef SER_SHARD_H
#define SER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "ser_engine.h"
#include "ser_group.h"
#include "ser_wire.h"

// --- PARAMS --------------------------------------------------------------------------------------
// out[0..2): student, and teacher when not NULL. Returns the number of frames.
int ser_shard_pack_params(ser_wire_tensor out[2], const float *student, const float *teacher,
                          size_t span);
// *student: the frame (NULL when absent or of another size: the message is to be dropped);
// *teacher: the teacher frame when want_teacher and present with span floats, else NULL.
void ser_shard_parse_params(const ser_wire_msg *m, size_t span, int want_teacher,
                            const float **student, const float **teacher);

// --- FORWARD_DONE --------------------------------------------------------------------------------
#define SER_SHARD_MAX_FWD (15 + 2 * SER_MAX_LOCAL)
#define SER_SHARD_MAX_BWD (8 + 2 * SER_MAX_LOCAL)
_Static_assert(SER_SHARD_MAX_FWD <= SER_WIRE_MAX_TENSORS && SER_SHARD_MAX_BWD <= SER_WIRE_MAX_TENSORS,
               "a shard message fits in one wire message");
// What a worker sends of a shard's forward (g: its gathered rows and maps; b: its batch).
// gbuf: n_eq * (1 + n_lpairs) * 10 + 1 floats for the group elements. Returns the number of
// frames.
int ser_shard_pack_forward(ser_wire_tensor out[SER_SHARD_MAX_FWD], const ser_gathered *g,
                           const ser_batch *b, int has_teacher, float *gbuf);

// A FORWARD_DONE as the coordinator takes it. The row and map pointers point into the message.
typedef struct ser_shard_fwd {
    int rows, C, n_eq;
    const float *cls[4];   // qcls0, qcls1, kcls0, kcls1 (the last two NULL without a teacher)
    const float *maps[4];  // qmap0, qmap1, kmap0, kmap1 (NULL when n_eq == 0)
    const float *lcls[SER_MAX_LOCAL];  // lcls0.. (n_local of them)
    const float *vparams;  // (rows, 2, SER_VIEW_PARAMS), or NULL when not asked for
    const float *qpool[2 + SER_MAX_LOCAL];  // qpool0.. (2 + n_local of them when asked for)
    ser_group_elem *g[2];  // [view] (n_eq,) owned: ser_shard_fwd_free()
    size_t ntok[2];        // rows of each view's maps
    int n_lpairs;          // local SER pairs per equivariant sample (as asked)
    ser_group_elem *lg[2];   // [view] (n_eq * n_lpairs,) owned, NULL without pairs
    size_t lntok[2];         // rows of each view's pair maps
    const float *lmaps[2];   // lqmap0, lqmap1 (NULL without pairs)
} ser_shard_fwd;

// Validates m against what was asked: rows [CLS] rows of width C per view, the teacher's when
// has_teacher, those of n_local local views, the views' parameters when want_vparams, the
// pooled maps of every view when want_pool, want_lpairs local SER pairs per equivariant sample
// (their group elements and maps), want_n_eq equivariant samples (-1: any count from 0 to rows),
// group elements that are valid and whose view grids are at most grid_max tokens a side, maps of
// the sizes they imply. SER_EFORMAT (missing or mis-sized frames, bad group
// elements) or SER_ESHAPE (another number of equivariant samples than asked); on failure
// nothing is allocated.
int ser_shard_parse_forward(const ser_wire_msg *m, int rows, int C, int has_teacher, int n_local,
                            int want_vparams, int want_pool, int want_lpairs, int want_n_eq,
                            int grid_max, ser_shard_fwd *out);
void ser_shard_fwd_free(ser_shard_fwd *f);

// --- BACKWARD ------------------------------------------------------------------------------------
// The gradients of a shard's rows (rows x C per view, from dqcls + row0 * C), of its maps
// (ntok[v] x C, from dqmap[v] + map0[v] * C), of its local views' rows (from g->dlcls) and,
// when g->pool, of its pooled rows (from g->dqpool), and with local SER pairs of their maps
// (lntok[v] x C from dlqmap[v] + lmap0[v] * C): 4 + L (+ 2 + L) (+ 2) frames, the count returned.
int ser_shard_pack_backward(ser_wire_tensor out[SER_SHARD_MAX_BWD], const ser_gathered *g,
                            int row0, int rows, const size_t map0[2], const size_t ntok[2],
                            const size_t lmap0[2], const size_t lntok[2]);
// The frames (pointers into m: dqcls0, dqcls1, dqmap0, dqmap1, dlcls0.., with pool
// dqpool0..dqpool<1+n_local>, with lntok (not NULL) dlqmap0, dlqmap1) when every one is there
// with its size, else SER_EFORMAT.
int ser_shard_parse_backward(const ser_wire_msg *m, int rows, int C, const size_t ntok[2],
                             int n_local, int pool, const size_t lntok[2],
                             const float *out[SER_SHARD_MAX_BWD]);

// --- chunks of a span (cluster.reduce = chain, cluster.broadcast = tree) ------------------------
// A span of `span` floats moves in chunks of K floats (cluster.reduce_chunk): how many, and
// chunk k's first float (*i0) and length.
static inline int ser_shard_nchunks(size_t span, size_t K) { return (int)((span + K - 1) / K); }
static inline size_t ser_shard_chunk(size_t span, size_t K, size_t k, size_t *i0) {
    *i0 = k * K;
    return *i0 + K < span ? K : span - *i0;
}

// --- BACKWARD_DONE -------------------------------------------------------------------------------
void ser_shard_pack_grad(ser_wire_tensor *out, const float *grad, size_t span);
// The gradient frame, or NULL when it is absent or not span floats.
const float *ser_shard_parse_grad(const ser_wire_msg *m, size_t span);

#endif
