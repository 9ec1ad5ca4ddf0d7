// ser_dino.h — DINO + SER: the model (student, EMA teacher, DINO heads, the shared
// projector_equiv, the centre) and one forward/backward over a global batch split into shards,
// for two global views (no local crops), as ser-reference.md §4.1 describes the public code
// (fixed where it crashes, §0.3).
//
// A step has two kinds of work (design.md §3, docs/batch-coupling.md):
//   per shard   (ser_engine) the student ViT forward (final [CLS]; for equivariant samples also
//               the block-k map), the teacher ViT forward (same, no drop path); later the
//               student ViT backward;
//   per batch   everything that couples samples, computed once over the gathered features:
//               the student and teacher DINO heads, the centred, sharpened teacher softmax, the
//               cross-entropy (a mean over the global batch), the batch mean of the teacher
//               outputs for the centre, projector_equiv, the group action and the patch-wise
//               NT-Xent over all equivariant tokens (ser_equiv_term).
// The ViT gradient of each shard is computed into a zeroed buffer and the shard gradients are
// summed in shard order (ser_engine), so any split of the shards over processes gives the same
// bits.
//
// The objective (per view v, rows [invariant; equivariant] of the whole global batch, B rows):
//   s_v = head(student CLS_v) / student_temp
//   t_v = softmax((head_t(teacher CLS_v) - center) / teacher_temp)          (no gradient)
//   loss_inv = 1/2 [CE(t_0, s_1) + CE(t_1, s_0)],  CE(t, s) = mean_i -sum_k t_ik log_softmax(s_i)_k
//   loss = loss_inv + lambda * loss_equiv    (loss_equiv: ser_equiv.h, teacher keys, both
//                                             directions unless ser_symmetric = 0)
// The reference computes the loss per GPU (256 rows) and DDP averages the gradients; with equal
// shards that is the global-batch mean used here.
//
// The DINO head (vision_transformer.py DINOHead, use_bn=False, nlayers=3):
//   Linear(C, hidden) GELU Linear(hidden, hidden) GELU Linear(hidden, bottleneck)
//   -> F.normalize(dim=-1) -> weight_norm(Linear(bottleneck, out_dim, bias=False))
// with the last layer's weight W = g * v / ||v|| per output row (PyTorch weight_norm, dim 0):
// weight_g (out_dim, 1), filled with 1 at init and trainable unless norm_last_layer; weight_v
// (out_dim, bottleneck), PyTorch's default Linear init. MLP weights trunc_normal(.02), biases 0.
//
// After the optimizer step (done by the caller), ser_dino_after_step():
//   center <- m_c * center + (1 - m_c) * mean over both views of the raw teacher head outputs
//             of the last forward (center_momentum m_c = 0.9; the reference does this inside the
//             loss, before the step: the value is the same);
//   teacher <- EMA of the student (backbone and head) with the teacher momentum m
//             (ser_optim_ema SER_OPTIM_EMA_DINO: t = t*m; t = t + (1 - m)*s).
// projector_equiv is ONE module shared by student and teacher (the reference's
// set_projector_equiv): the teacher's key maps go through the student's trainable projector.
// The reference's EMA loop zips student.parameters() with teacher.parameters(), which pairs the
// shared projector with itself, and its in-place mul_/add_ then scales the projector by m(2 - m)
// every step. ser does not (the projector is shared, not averaged); projector_ema_quirk = 1
// reproduces it for parity runs with the public code.
//
// State-dict names (the reference checkpoint's `student` / `teacher` state dicts with the
// MultiCropWrapper layout, without DDP's `module.` prefix, plus the DINOLoss buffer):
//   tab   (trainable)  student.backbone.*               the ViT (ser_vit.h names)
//                      student.head.mlp.{0,2,4}.weight/.bias
//                      student.head.last_layer.weight_g (out_dim, 1)
//                      student.head.last_layer.weight_v (out_dim, bottleneck)
//                      student.projector_equiv.{0,2}.weight (1x1 convs; only with SER)
//   ttab  (teacher)    teacher.backbone.*, teacher.head.*: entry i mirrors tab entry i
//                      (i < n_base) at the same offset. The reference's teacher state dict
//                      also lists teacher.projector_equiv.*: the same tensors as the student's
//                      (write them under both names to produce a reference checkpoint).
//   btab  (buffers)    dino_loss.center (1, out_dim)
// Frozen (SER_TINFO_FROZEN, as the reference leaves them without gradient): weight_g when
// norm_last_layer; with ser_grad off, projector_equiv.* and student.backbone.norm_equiv.*;
// the patch embedding when vit.freeze_patch_embed.
//
// defines:
//   ser_dino_config, ser_dino_config_default(), ser_dino_config_from_job()
//   ser_dino_head, ser_dino_head_register(), ser_dino_head_bind(), ser_dino_head_init_weights()
//   ser_dino_head_acts, ser_dino_head_acts_free(), ser_dino_head_forward(),
//   ser_dino_head_backward()
//   ser_dino_loss()                      the 2-view DINO cross-entropy and its gradient
//   ser_dino_loss_crops()                the same with local crops (multi-crop)
//   ser_dino, ser_dino_init(), ser_dino_free(), ser_dino_init_weights()
//   ser_dino_losses
//   ser_objective_dino      the objective table (ser_objective.h)
//   ser_dino_update_center(), ser_dino_ema_update(), ser_dino_after_step()
//   ser_dino_active()                    the freeze_last_layer mask for ser_optim_step
//   ser_dino_teacher_temp()              the teacher temperature of an epoch
#ifndef SER_DINO_H
#define SER_DINO_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_engine.h"
#include "ser_mlp.h"
#include "ser_objective.h"
#include "ser_ptab.h"
#include "ser_vit.h"

typedef struct ser_dino_config {
    ser_vit_config vit;
    int init_scheme;                 // SER_VIT_INIT_GENERIC (reference DINO) or _MOCO
    int out_dim;                     // prototypes K (65536)
    int hidden_dim;                  // head MLP width (2048)
    int bottleneck_dim;              // before the L2 normalisation (256)
    int norm_last_layer;             // 1: weight_g frozen at 1 (reference ViT-S run: 0)
    int freeze_last_layer_epochs;    // last layer not updated while epoch < this (1)
    float student_temp;              // 0.1
    double teacher_temp;             // at epoch 0 (0.04)
    double teacher_temp_final;       // after the warmup (0.07)
    int teacher_temp_warmup_epochs;  // 10
    double center_momentum;          // 0.9
    int ser;                         // SER term on/off
    int ser_grad;                    // 1: the paper's gradient (default); 0: the public code
    float ser_lambda;                // 0.3 for DINO in run_pretrain.sh
    float ser_tau;                   // NT-Xent temperature (0.4)
    int ser_proj_dim;                // projector_equiv width (512)
    int ser_symmetric;               // 1: (L0 + L1)/2 as the reference; 0: one direction
    int projector_ema_quirk;         // 1: the reference's EMA scales projector_equiv by m(2-m)
} ser_dino_config;

// The reference ViT-S/16 DINO run (ser-reference.md §8) with the paper's gradient: drop path
// 0.1, trainable patch embedding, generic init, no projector quirk.
void ser_dino_config_default(ser_dino_config *c);
// From a job configuration ([model], [dino], [ser]); SER_ECONFIG if method.name is not dino.
int ser_dino_config_from_job(ser_dino_config *c, const ser_config *job, char err[SER_ERR_LEN]);

// --- the DINO head -----------------------------------------------------------------------------
typedef struct ser_dino_head {
    ser_mlp mlp;              // the three Linear layers (prefix + "mlp.")
    size_t off_g, off_v;      // last_layer.weight_g (K, 1), last_layer.weight_v (K, D)
    int in, bottleneck, out;  // C, D, K
    int g_frozen;             // norm_last_layer: no gradient for weight_g
    float *params, *grads;    // arena bases; grads may be NULL (the teacher)
} ser_dino_head;

// Saved activations of one forward of M rows.
typedef struct ser_dino_head_acts {
    ser_mlp_acts mlp;
    int M;
    size_t cap;
    float *mem;
    float *z;      // (M, D) L2-normalised bottleneck
    float *znorm;  // (M,) bottleneck norms
    float *w;      // (K, D) effective last-layer weight g * v / ||v||
    float *vnorm;  // (K,) ||v|| per output row
    float *out;    // (M, K) head output
    float *dz;     // (M, D) backward scratch
    float *dw;     // (K, D) backward scratch
} ser_dino_head_acts;

// Appends prefix+"mlp.{0,2,4}.weight/.bias", prefix+"last_layer.weight_g" (flagged frozen when
// norm_last_layer) and prefix+"last_layer.weight_v" to tab. Bind before use.
int ser_dino_head_register(ser_dino_head *h, int in, int hidden, int bottleneck, int out,
                           int norm_last_layer, ser_ptab *tab, const char *prefix,
                           char err[SER_ERR_LEN]);
void ser_dino_head_bind(ser_dino_head *h, float *params, float *grads);
// trunc_normal(.02) MLP weights, zero biases, weight_v U(+-1/sqrt(D)) (PyTorch's Linear
// default), weight_g = 1.
void ser_dino_head_init_weights(ser_dino_head *h, uint64_t seed);
void ser_dino_head_acts_free(ser_dino_head_acts *a);
// x (M, C) -> returns the output (M, K), owned by a until its next forward.
const float *ser_dino_head_forward(const ser_dino_head *h, ser_dino_head_acts *a, const float *x,
                                   int M);
// dout (M, K) -> dx (M, C) written (if non-NULL); parameter gradients accumulate (weight_g's
// only when not frozen).
void ser_dino_head_backward(const ser_dino_head *h, ser_dino_head_acts *a, float *dx,
                            const float *dout);

// The 2-view DINO loss on head outputs s (student) and t (teacher, raw), both (2M, K) with
// view 0's rows first; center (K,). Returns 1/2 [CE(t_0, s_1) + CE(t_1, s_0)] with
// t_v = softmax((t_v - center)/teacher_temp), s_v/student_temp in the log-softmax. When ds is
// non-NULL it receives (written, not added) d loss / d s, (2M, K). mon, when non-NULL, gets
// the means over the 2M teacher rows of their entropy (mon[0]) and of KL(teacher row ||
// student row of the other view) (mon[1]).
double ser_dino_loss(float *ds, const float *s, const float *t, const float *center, int M,
                     int K, float student_temp, float teacher_temp, double mon[2]);
// The multi-crop loss: s is (V*M, K), the two global views' rows then V - 2 local views'
// (view-major); t is (2M, K), the globals. The mean over the 2(V - 1) pairs (teacher global
// iq, student view v != iq) of the batch-mean CE(t_iq, s_v): DINO's DINOLoss with ncrops = V.
double ser_dino_loss_crops(float *ds, const float *s, const float *t, const float *center, int M,
                           int K, int V, float student_temp, float teacher_temp, double mon[2]);

// --- the model ---------------------------------------------------------------------------------
// The heads and the loss run over chunks of this many samples (both views, student and
// teacher): a row's loss depends only on its own rows and the centre, so the global batch need
// not be held at once (at K = 65536 one (2B, K) array for B = 2048 samples is 1 GiB). The chunk
// is a constant of the job, not a function of the shards or threads: head gradients are summed
// over chunks in chunk order, so the bits do not depend on how the batch is split into shards.
#define SER_DINO_HEAD_CHUNK 64

typedef struct ser_dino {
    ser_dino_config cfg;
    ser_ptab tab;   // trainable: student.backbone.*, student.head.*, student.projector_equiv.*
    ser_ptab ttab;  // teacher.backbone.*, teacher.head.*: entry i mirrors tab entry i
    ser_ptab btab;  // dino_loss.center
    int n_base;     // tab entries of student.backbone + student.head (EMA'd onto ttab)
    int n_proj;     // tab entries of student.projector_equiv (after the n_base others)
    float *params, *grads, *tparams, *buffers;
    float *center;        // (1, K) inside buffers
    float *batch_center;  // (K,) mean raw teacher output of the last successful forward
    int have_batch_center;
    int head_chunk;  // samples per head/loss chunk (SER_DINO_HEAD_CHUNK); part of the numerics
    ser_vit vit, tvit;
    ser_dino_head head, thead;
    ser_mlp proj;
    double last_entropy, last_kl;  // of the last objective call (the collapse monitors)
} ser_dino;

int ser_dino_init(ser_dino *d, const ser_dino_config *cfg, char err[SER_ERR_LEN]);
void ser_dino_free(ser_dino *d);
// Fills every module; the teacher starts as a copy of the student (the reference's
// load_state_dict), the centre at 0.
void ser_dino_init_weights(ser_dino *d, uint64_t seed);

typedef struct ser_dino_losses {
    double loss, loss_inv, loss_equiv;  // loss = loss_inv + lambda * loss_equiv
    // Collapse monitors, means over the 2B teacher rows: the entropy of the centred and
    // sharpened teacher output (ln out_dim: uniform, 0: one-hot) and KL(teacher || student).
    double teacher_entropy, kl;
} ser_dino_losses;

// The batch-coupled half on gathered features (used by the step loop, train/ser_train.h): heads, loss, centre batch mean, SER term; fills g->dqcls/dqmap and the
// head-side gradients (d->grads must be zeroed before). Only b->n_inv, b->n_eq and b->g are
// read. On success the batch mean is kept for ser_dino_after_step().
int ser_dino_objective(ser_dino *d, const ser_batch *b, ser_gathered *g, double teacher_temp,
                       ser_dino_losses *out, char err[SER_ERR_LEN]);

// center <- center * f32(m_c) + batch_center * f32(1 - m_c), from the last successful
// ser_dino_objective (SER_ASSERTs there was one since the last update).
void ser_dino_update_center(ser_dino *d);
// The teacher EMA with momentum m (and the projector quirk when configured).
void ser_dino_ema_update(ser_dino *d, double momentum);
// After the optimizer step: ser_dino_update_center() then ser_dino_ema_update().
void ser_dino_after_step(ser_dino *d, double momentum);

// active[i] (i < d->tab.n) for ser_optim_step / ser_optim_clip_grad: 0 for
// student.head.last_layer.* while epoch < freeze_last_layer_epochs (the reference sets their
// grads to None after clipping: no AdamW step, no decay, no state), 1 otherwise. Returns the
// number of inactive tensors.
int ser_dino_active(const ser_dino *d, int64_t epoch, unsigned char *active);
// teacher_temp_schedule[epoch]: linspace(teacher_temp, teacher_temp_final, warmup) per epoch,
// then teacher_temp_final (ser_sched_dino_teacher_temp).
double ser_dino_teacher_temp(const ser_dino_config *c, int64_t epoch);

// The objective table of DINO (+ SER): method.name = dino.
extern const ser_objective_i ser_objective_dino;

#endif
