// ser_barlow.h — Barlow Twins + SER: the model (backbone, projector, affine-free `bn`,
// projector_equiv) and one forward/backward over a global batch split into shards
// (ser-reference.md §4.2, builder/barlowtwins.py forward_equiv and train_erl, as intended: the
// public code crashes on its first step, §0.2).
//
// A step has two kinds of work (design.md §3, docs/batch-coupling.md):
//   per shard   (ser_engine, no teacher) the backbone forward on both views of every sample
//               (final [CLS]; for equivariant samples also the block-k map); later its backward;
//   per batch   everything that couples samples, computed once over the gathered features:
//               the projector (BatchNorm over the global batch, one call per view), `bn`, the
//               cross-correlation loss, projector_equiv, the feature-space group action and the
//               patch-wise NT-Xent over all equivariant tokens.
//
// The invariance loss, with B the global batch and rows in position order (invariant samples,
// then equivariant ones; any order gives the same loss):
//   z1 = projector([CLS] of view 0), z2 = projector([CLS] of view 1)     (B, P) each
//   c  = bn(z1)^T bn(z2) / B                                            (P, P)
//   loss_inv = sum_i (c_ii - 1)^2 + lambda_offdiag * sum_{i != j} c_ij^2
// projector = Linear(C, P, no bias) BN ReLU Linear(P, P, no bias) BN ReLU Linear(P, P, no bias)
// with PyTorch default init, bn = BatchNorm1d(P, affine=False). Every BatchNorm normalises over
// the whole global batch (SyncBN semantics) and advances its running statistics once per view.
// The gradient goes through both bn calls and the projector into both views' [CLS].
//
// The SER term (ser_equiv.h): student against student. By default (ser.symmetric = auto) one
// direction, as the reference: keys = T(projector_equiv(student map of view 0)) moved onto view 1's grid, anchors =
// projector_equiv(student map of view 1), loss_equiv = L0; `ser_symmetric` adds the other
// direction and averages. With ser_grad on both student maps get gradient (the keys are the
// student's own); with it off the term is value only and projector_equiv, norm_equiv are frozen.
// loss = loss_inv + ser_lambda * loss_equiv.
//
// Gradient scale: m->grads is d loss / d params of the whole-batch loss, whatever the shard
// count. The W-GPU reference computes the same global loss on every rank (c is all-reduced, the
// SER tokens gathered), each rank backpropagates it through its own rows only, and DDP averages
// the rank gradients: its gradients are these / W (W = 8 in run_pretrain.sh). (MoCo's
// contrastive loss is a per-rank mean, so there DDP's average is the global gradient.) AdamW
// is invariant to a constant gradient scale up to eps; per-parameter clipping (0.3) is not: the
// reference clips at 0.3 what is grad / 8 here.
//
// State-dict names are those of the reference BarlowTwins module, in its registration order:
//   backbone.*            the ViT (the checkpoint's `model` without the prefix)
//   projector_equiv.0.weight, projector_equiv.2.weight   1x1 convs (C -> E -> E), with SER
//   projector.0.weight, projector.1.{weight,bias}, projector.3.weight, projector.4.*,
//   projector.6.weight    (the checkpoint's `projector_inv`)
// buffers (btab): projector.{1,4}.{running_mean,running_var,num_batches_tracked},
//   bn.running_mean, bn.running_var, bn.num_batches_tracked (the reference checkpoint drops the
//   `bn` buffers; training never reads them).
//
// Memory of the cross-correlation: one P x P float buffer (c, then dL/dc in place: 268 MB at
// P = 8192) beside the (B, P) activations; see ser_barlow_xcorr_loss().
//
// defines:
//   ser_barlow_config, ser_barlow_config_default(), ser_barlow_config_from_job()
//   ser_barlow, ser_barlow_init(), ser_barlow_free(), ser_barlow_init_weights()
//   ser_barlow_losses
//   ser_objective_barlow    the objective table (ser_objective.h)
//   ser_barlow_xcorr_loss(), ser_barlow_xcorr_loss_naive()   the loss on normalised embeddings
#ifndef SER_BARLOW_H
#define SER_BARLOW_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_engine.h"
#include "ser_mlp.h"
#include "ser_objective.h"
#include "ser_ptab.h"
#include "ser_vit.h"

// Largest projector width accepted (the P x P buffer is 16 GiB at this bound).
#define SER_BARLOW_MAX_DIM 65536

typedef struct ser_barlow_config {
    ser_vit_config vit;
    int init_scheme;       // SER_VIT_INIT_GENERIC (reference) or SER_VIT_INIT_MOCO
    int proj_dim;          // P: width of every projector layer (8192)
    float lambda_offdiag;  // weight of the off-diagonal terms (0.0051)
    int ser;               // SER term on/off
    int ser_grad;          // 1: the paper's gradient (default); 0: value only (reference code)
    float ser_lambda;      // lambda (1.0 in run_pretrain.sh)
    float ser_tau;         // NT-Xent temperature (0.4)
    int ser_proj_dim;      // projector_equiv width (512)
    int ser_symmetric;     // 0: one direction, as the reference; 1: both, averaged
} ser_barlow_config;

// The reference ViT-S/16 run (ser-reference.md §8, BT column) with the paper's gradient.
void ser_barlow_config_default(ser_barlow_config *c);
// From a job configuration ([model], [barlow], [ser]); SER_ECONFIG if method.name is not barlow.
int ser_barlow_config_from_job(ser_barlow_config *c, const ser_config *job, char err[SER_ERR_LEN]);

typedef struct ser_barlow {
    ser_barlow_config cfg;
    ser_ptab tab;   // trainable: backbone.*, projector_equiv.*, projector.*
    ser_ptab btab;  // BatchNorm buffers: projector.*, bn.*
    float *params, *grads, *buffers;
    size_t bn_rm, bn_rv, bn_nbt;  // offsets of the `bn` buffers in buffers
    ser_vit vit;
    ser_mlp proj, pequiv;
    double last_on_diag, last_off_diag;  // of the last objective call (the collapse monitors)
} ser_barlow;

// Returns SER_OK, or SER_ECONFIG with a message (bad widths, lambda, tau; SER without the SER
// layout). On failure *m is left zeroed (ser_barlow_free is safe on it).
int ser_barlow_init(ser_barlow *m, const ser_barlow_config *cfg, char err[SER_ERR_LEN]);
void ser_barlow_free(ser_barlow *m);
// Fills every module: the ViT with cfg.init_scheme, the projector and projector_equiv with
// PyTorch's defaults; BatchNorm running stats (0, 1) and counters 0.
void ser_barlow_init_weights(ser_barlow *m, uint64_t seed);

typedef struct ser_barlow_losses {
    double loss, loss_inv, loss_equiv;  // loss = loss_inv + ser_lambda * loss_equiv
    double on_diag, off_diag;           // loss_inv = on_diag + lambda_offdiag * off_diag
} ser_barlow_losses;

// The batch-coupled half on gathered features (used by the step loop, train/ser_train.h): projector, BatchNorms (running buffers advance), cross-correlation loss, SER
// term; fills g->dqcls/dqmap and the head-side gradients (m->grads must be zeroed before).
// Only b->n_inv, b->n_eq and b->g are read. SER_ENONFINITE for a non-finite [CLS] row (nothing
// advances) or loss (m->grads zeroed; the buffers have advanced).
int ser_barlow_objective(ser_barlow *m, const ser_batch *b, ser_gathered *g, ser_barlow_losses *out,
                         char err[SER_ERR_LEN]);

// --- the cross-correlation loss ----------------------------------------------------------------
// a, b (N, P): the normalised embeddings bn(z1), bn(z2) of the whole batch. With c = a^T b / N:
//   *on_diag = sum_i (c_ii - 1)^2,  *off_diag = sum_{i != j} c_ij^2   (accumulated in double)
// and the loss is on_diag + lambda * off_diag. When da / db are non-NULL they are WRITTEN with
// scale * dL/da = scale * b G^T / N and scale * dL/db = scale * a G / N, where
// G = dL/dc (G_ii = 2 (c_ii - 1), G_ij = 2 lambda c_ij). Workspace: one P x P float buffer (c,
// then G in place). The products run as fixed blocks of rows, one single-threaded sgemm each
// (as in ser_ntxent.c), and the row sums of the loss are added serially, so the result is the
// same bits for every thread count. Returns SER_OK, or SER_EINVAL for NULL pointers, N < 1,
// P < 1 or > SER_BARLOW_MAX_DIM, lambda or scale not finite.
int ser_barlow_xcorr_loss(double *on_diag, double *off_diag, float *da, float *db, const float *a,
                          const float *b, int N, int P, float lambda, float scale);
// The same contract by the definition, in double precision, O(N P^2): the test oracle.
int ser_barlow_xcorr_loss_naive(double *on_diag, double *off_diag, float *da, float *db,
                                const float *a, const float *b, int N, int P, float lambda,
                                float scale);

// The objective table of Barlow Twins (+ SER): method.name = barlow.
extern const ser_objective_i ser_objective_barlow;

#endif
