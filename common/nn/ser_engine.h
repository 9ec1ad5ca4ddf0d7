// ser_engine.h — the per-shard half of a two-view SSL step, shared by every objective.
//
// A global batch (ser_batch) is split into S fixed shards. For each shard, in shard order, the
// engine runs the student ViT on every view of every sample (keeping the activations), and
// optionally a teacher ViT (the MoCo momentum encoder, the DINO EMA teacher); it gathers the
// final [CLS] rows and the SER maps of the whole batch into ser_gathered. The objective then
// computes the batch-coupled terms on those (docs/batch-coupling.md) and fills the gradients
// dqcls/dqmap; the engine runs each shard's student backward into a zeroed buffer and adds
// the shard gradients in shard order. Which process computes a shard does not change a bit.
//
// Pooled maps (layer decoupling, SER_ENGINE_POOL): the mean over tokens of each call's block-k
// map (after norm_equiv) for every sample of every view, global and local, in qpool; their
// gradients come back in dqpool and reach the map as dqpool / tokens on every token. A MoCo
// add-on reads these instead of the final [CLS] with moco.addon_layer (ser_moco_addon.h).
//
// Local SER pairs (ser.local_pairs = P, the paper's 2+4-view SER, erl_local4): every equivariant
// sample e has P more pairs of views, pair k made of one local crop, each view its own
// photometric draw and group element (lg, on the local grid); the student runs on each view
// alone (their sizes differ) and only its block-k map is kept (lqmap, by (e, k) in e-major
// order); their gradients come back in dlqmap. Drop-path masks of pair k are keyed by
// (seed + (SER_MAX_LOCAL + 1 + k) * 0x9E3779B97F4A7C15, step, 2*id + view).
//
// Local views (multi-crop: DINO's local crops, MoCo's 2+L queries): n_local more views of every
// sample, local_img x local_img, run through the student only; their [CLS] rows are gathered in
// lcls and their gradients come back in dlcls. The teacher sees the two global views only.
//
// Calls within a shard, in order: invariant view 0 (all its invariant rows), invariant view 1,
// then for each equivariant sample: view 0, view 1 (one image each: their sizes differ), then
// local view 0..n_local-1 (all the shard's rows).
// Drop-path masks are keyed by (seed, step, 2*id + view) with id the global sample id; local
// view k keys them by (seed + (k+1)*0x9E3779B97F4A7C15, step, 2*id).
//
// defines:
//   ser_batch, ser_batch_check()         one global batch (views, group elements, ids)
//   ser_gathered, ser_gathered_free()    the batch-wide CLS rows and maps, and their gradients
//   ser_engine, ser_engine_free()        activations and scratch kept across steps
//   ser_engine_forward(), ser_engine_backward()
#ifndef SER_ENGINE_H
#define SER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_group.h"
#include "ser_vit.h"

// The most local views per sample (DINO's reference uses up to 10 local crops).
#define SER_MAX_LOCAL 10
// The most local SER pairs per equivariant sample (ser.local_pairs; the paper's erl_local4: 2).
#define SER_MAX_LOCAL_PAIRS 4

// The parameters a global view was made with, per sample and view (AugSelf and EquiMod
// predict them): floats
//   0-3   crop box i, j, h, w in source pixels (top, left, height, width)
//   4     horizontal flip applied
//   5     colour jitter applied; 6-9 its op order (0 brightness, 1 contrast, 2 saturation,
//         3 hue); 10-13 brightness, contrast, saturation factors and hue shift (as drawn)
//   14    grayscale applied
//   15    blur applied; 16 its sigma
//   17    solarize applied
//   18-19 source image height, width
//   20    solarize threshold in [0, 1] (kornia: drawn; torchvision: 128/255)
// 0-17 are EquiMod's 18-dim transformation vector (loader/equimod.py), in its order.
#define SER_VIEW_PARAMS 21

// One global batch: positions [0, n_inv) are invariant samples, [n_inv, n_inv + n_eq) the
// equivariant ones (the reference puts the equivariant sub-batch last). Images are normalised
// float CHW.
typedef struct ser_batch {
    int n_inv, n_eq;
    int img;                     // invariant views are img x img
    const float *inv[2];         // [view] (n_inv, 3, img, img)
    const float *const *eq[2];   // [view][e] (3, H, W) with (H, W) = ser_group_image_size(g)
    const ser_group_elem *g[2];  // [view] (n_eq,)
    const uint32_t *ids;         // (n_inv + n_eq,) global sample ids for drop path, or NULL
    int n_local;                 // local views per sample, 0..SER_MAX_LOCAL
    int local_img;               // local views are local_img x local_img
    const float *local[SER_MAX_LOCAL];  // [k] (n_inv + n_eq, 3, local_img, local_img) by position
    const float *vparams;        // (n_inv + n_eq, 2, SER_VIEW_PARAMS) by position, or NULL
    int n_lpairs;                // local SER pairs per equivariant sample, 0..SER_MAX_LOCAL_PAIRS
    const float *const *lpair[2];   // [view][e * n_lpairs + k] (3, H, W), (H, W) from lg
    const ser_group_elem *lg[2];    // [view][e * n_lpairs + k]
} ser_batch;

// Checks sizes and group elements against the model; a message names the offending sample.
int ser_batch_check(const ser_batch *b, const ser_vit_config *vit, int shards,
                    char err[SER_ERR_LEN]);

typedef struct ser_gathered {
    int B, C, n_inv, n_eq;
    float *qcls[2], *kcls[2];  // [view] (B, C) student / teacher final [CLS] by position
    float *dqcls[2];           // [view] (B, C) gradient w.r.t. qcls, filled by the objective
    int *tok[2];               // [view] (n_eq,) tokens of each equivariant view
    size_t *tokoff[2];         // [view] (n_eq,) first row of each sample's map
    size_t ntok[2];            // [view] total rows
    float *qmap[2], *kmap[2];  // [view] (ntok, C) student / teacher SER maps (norm_equiv)
    float *dqmap[2];           // [view] gradient w.r.t. qmap, filled by the objective
    int n_local;               // local views (ser_batch.n_local)
    float *lcls[SER_MAX_LOCAL];   // [k] (B, C) the student's final [CLS] of local view k
    float *dlcls[SER_MAX_LOCAL];  // [k] (B, C) its gradient, filled by the objective
    float *vparams;            // (B, 2, SER_VIEW_PARAMS) the views' parameters, or NULL
    int n_lpairs;              // local SER pairs per equivariant sample (ser_batch.n_lpairs)
    int *ltok[2];              // [view] (n_eq * n_lpairs,) tokens of each local pair view
    size_t *ltokoff[2];        // [view] first row of each one's map
    size_t lntok[2];           // [view] total rows
    float *lqmap[2], *dlqmap[2];  // [view] (lntok, C) the student's maps of the pairs' views
    int pool;                  // qpool / dqpool are there (SER_ENGINE_POOL)
    // [view] (B, C): the mean of the block-k map of view v's call for every sample, views 0, 1
    // then the local views 2 .. 1 + n_local; dqpool its gradient, filled by the objective.
    float *qpool[2 + SER_MAX_LOCAL], *dqpool[2 + SER_MAX_LOCAL];
} ser_gathered;

void ser_gathered_free(ser_gathered *g);

typedef struct ser_engine {
    ser_vit_acts *acts;  // one per student call of every shard, kept between the two halves
    int nacts;
    ser_vit_acts tacts;  // the teacher's (no backward)
    float *shard_grads;  // one shard's gradient (the student's span of the arena)
    size_t cap;
    float *dmap;         // a call's map gradient when pooled rows add to it
    size_t dmap_cap;
    float *zrow;         // a zero [CLS] gradient row (local SER pair calls)
    int zrow_cap;
} ser_engine;

void ser_engine_free(ser_engine *e);

// What the forward half gathers besides the [CLS] rows (flags of ser_engine_forward).
enum {
    SER_ENGINE_MAPS = 1,  // the SER maps of the equivariant samples (qmap, kmap)
    SER_ENGINE_POOL = 2   // the student's pooled block-k maps of every view (qpool); SER layout
};

// Forward half. teacher may be NULL (no kcls/kmap). flags: SER_ENGINE_*. *g is allocated here
// (release with ser_gathered_free) and dqcls/dqmap/dlcls/dqpool are zeroed for the objective
// to fill.
int ser_engine_forward(ser_engine *e, ser_vit *student, ser_vit *teacher, const ser_batch *b,
                       int shards, int flags, uint64_t seed, uint32_t step, ser_gathered *g,
                       char err[SER_ERR_LEN]);

// Backward half: for each shard, the student's gradient from dqcls (and dqmap and the local SER
// pairs' dlqmap when map_grad, and dqpool when g->pool) into a zeroed buffer, then added to student->grads in shard order. student->grads must hold
// the other modules' gradients already; its ViT span is overwritten, not accumulated into.
void ser_engine_backward(ser_engine *e, ser_vit *student, const ser_batch *b, int shards,
                         const ser_gathered *g, int map_grad);

#endif
