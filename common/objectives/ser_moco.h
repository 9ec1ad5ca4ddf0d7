// ser_moco.h — MoCo-v3 + SER: the model (student, momentum encoder, heads, projector_equiv)
// and one forward/backward over a global batch split into shards.
//
// A step has two kinds of work (design.md §3, docs/batch-coupling.md):
//   per shard   (ser_engine) the student ViT forward (final [CLS]; for equivariant samples also
//               the block-k map) and the momentum ViT forward; later the student ViT backward;
//   per batch   everything that couples samples, computed once over the gathered features:
//               projector (BatchNorm over the global batch), predictor, momentum projector,
//               the contrastive loss over all keys, projector_equiv, the feature-space group
//               action and the patch-wise NT-Xent over all equivariant tokens.
// The ViT gradient of each shard is computed into a zeroed buffer and the shard gradients are
// summed in shard order, so any split of the shards over processes gives the same bits.
//
// State-dict names follow the reference MoCo_ViT: base_encoder.* (ViT and .head.*),
// momentum_encoder.* (same layout), predictor.*, projector_equiv.0/.2.weight (1x1 convs).
//
// defines:
//   ser_moco_config, ser_moco_config_default(), ser_moco_config_from_job()
//   ser_moco, ser_moco_init(), ser_moco_free(), ser_moco_init_weights()
//   ser_moco_losses, ser_moco_objective(), ser_moco_momentum_update()
//   ser_objective_moco      the objective table (ser_objective.h)
#ifndef SER_MOCO_H
#define SER_MOCO_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_engine.h"
#include "ser_group.h"
#include "ser_mlp.h"
#include "ser_moco_addon.h"
#include "ser_objective.h"
#include "ser_ptab.h"
#include "ser_vit.h"

typedef struct ser_moco_config {
    ser_vit_config vit;
    int init_scheme;   // SER_VIT_INIT_MOCO (reference) or SER_VIT_INIT_GENERIC
    int mlp_dim;       // hidden width of projector and predictor (4096)
    int dim;           // output width (256)
    float T;           // contrastive temperature (0.2)
    int ser;           // SER term on/off
    int ser_grad;      // 1: the paper's gradient (default); 0: the public code (no gradient)
    float ser_lambda;  // lambda (1.0 for MoCo in run_pretrain.sh)
    float ser_tau;     // NT-Xent temperature
    int ser_proj_dim;  // projector_equiv width (512)
    int ser_symmetric; // 1: both directions averaged (the reference); 0: L0 only
    // > 0: the 2+4-view SER (ser.local_pairs): the global pair and this many local pairs per
    // equivariant sample, each student against student (ser_equiv_pair_term), summed.
    int local_pairs;
    // An add-on (ser_moco_addon.h: E-SSL, ...) and the job config it reads, or NULL.
    const ser_moco_addon_i *addon;
    const ser_config *addon_job;
    // The add-on reads the pooled block-cls_layer maps (ser_gathered.qpool) instead of the
    // final [CLS] rows (moco.addon_layer, layer decoupling).
    int addon_pooled;
} ser_moco_config;

// The reference ViT-S/16 run (ser-reference.md §8) with the paper's gradient.
void ser_moco_config_default(ser_moco_config *c);
// From a job configuration ([model], [moco], [ser]); SER_ECONFIG if method.name is not moco.
int ser_moco_config_from_job(ser_moco_config *c, const ser_config *job, char err[SER_ERR_LEN]);

typedef struct ser_moco {
    ser_moco_config cfg;
    ser_ptab tab;   // trainable: base_encoder.* (ViT, head), predictor.*, projector_equiv.*
    ser_ptab mtab;  // momentum_encoder.* (ViT, head): entry i mirrors tab entry i (i < n_base)
    ser_ptab btab;  // BatchNorm buffers of every head
    int n_base;     // tab entries of base_encoder (EMA'd onto mtab)
    float *params, *grads, *mparams, *buffers;
    ser_vit vit, mvit;
    ser_mlp head, mhead, pred, proj;
    void *addon;  // the add-on's state (cfg.addon), or NULL
} ser_moco;

int ser_moco_init(ser_moco *m, const ser_moco_config *cfg, char err[SER_ERR_LEN]);
void ser_moco_free(ser_moco *m);
// Fills every module; the momentum encoder starts as a copy of the base encoder.
void ser_moco_init_weights(ser_moco *m, uint64_t seed);
// p_m <- m * p_m + (1 - m) * p_b over base_encoder/momentum_encoder parameters (not buffers).
void ser_moco_momentum_update(ser_moco *m, double momentum);

typedef struct ser_moco_losses {
    double loss, loss_inv, loss_equiv;  // loss = loss_inv + lambda * loss_equiv + loss_addon
    double loss_addon;                  // the add-on's weighted term (0 without one)
} ser_moco_losses;

// The batch-coupled half on gathered features (used by the step loop, train/ser_train.h, in
// coordinator): heads, losses, SER term; fills g->dqcls/dqmap and the head-side gradients
// (m->grads must be zeroed before). Only b->n_inv, b->n_eq and b->g are read. SER_ENONFINITE
// names the loss term when a loss is not finite.
int ser_moco_objective(ser_moco *m, const ser_batch *b, ser_gathered *g, ser_moco_losses *out,
                       char err[SER_ERR_LEN]);

// The objective table of MoCo-v3 (+ SER): method.name = moco.
extern const ser_objective_i ser_objective_moco;
// The add-on methods (ser_moco_addon.h): MoCo-v3 + the add-on's head and loss.
extern const ser_objective_i ser_objective_essl;
extern const ser_objective_i ser_objective_augself;
extern const ser_objective_i ser_objective_equimod;
extern const ser_objective_i ser_objective_stl;

#endif
