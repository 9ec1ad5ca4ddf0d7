// ser_optim.h — AdamW exactly as torch.optim.AdamW, gradient clipping, and the parameter EMA
// of the momentum / teacher encoders (ser-reference.md §2.2, §4.1, §6).
//
// AdamW is PyTorch 1.13's _single_tensor_adamw (foreach=False, amsgrad=False,
// maximize=False), element by element in fp32 with PyTorch's operation order and its scalars
// as Python floats (double) rounded to fp32 where PyTorch wraps them:
//     step += 1
//     p  = p * f32(1 - lr*wd)                       (decayed tensors only)
//     m  = fma(g, f32(1 - b1), m * f32(b1))         exp_avg.mul_(b1).add_(g, alpha=1-b1)
//     v  = fma(f32(1 - b2) * g, g, v * f32(b2))     exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2)
//     d  = sqrt(v) / f32(sqrt(1 - b2^step)) + f32(eps)
//     p  = p + (f32(-lr/(1 - b1^step)) * m) / d     param.addcdiv_(m, d, value=-step_size)
// The two fused multiply-adds are what PyTorch's CPU kernels compute (its AVX2 build fuses
// `a + alpha*b` and `self + value*t1*t2`); with them ser matches torch.optim.AdamW bitwise on
// the fixture (tests/test_optim.c). Weight decay multiplies by 1 when wd is 0, so a tensor that
// is not decayed is simply not multiplied.
//
// The state is torch's: per tensor, state['exp_avg'] (m), state['exp_avg_sq'] (v) and
// state['step'] (an fp32 tensor in torch; an int64 here: identical up to 2^24 steps). m and v
// are arenas with the table's offsets, like the parameters and gradients, so a checkpoint writes
// them in one pass. Checkpoint names (ser_optim_state_key): "optimizer.<tensor>.exp_avg",
// "optimizer.<tensor>.exp_avg_sq", "optimizer.<tensor>.step"; a tensor whose step is 0 has no
// torch state. In torch's optimizer.state_dict() the same tensor is state[k] with
// k = ser_optim_torch_index(): the position in model.parameters() for one param group (MoCo,
// Barlow Twins: frozen tensors count), or for DINO's get_params_groups the position in
// [decayed tensors..., not-decayed tensors...] with frozen tensors left out.
//
// Which tensors are decayed (ser_optim_config.decay):
//   SER_OPTIM_DECAY_ALL         every trainable tensor (MoCo and Barlow Twins in the reference:
//                               AdamW(model.parameters(), wd=0.1), biases, norms, pos, cls too)
//   SER_OPTIM_DECAY_NO_BIAS_1D  DINO's get_params_groups: a tensor whose name ends in ".bias" or
//                               that has one dimension gets wd 0 (as does one flagged
//                               SER_TINFO_NO_DECAY); pos_embed, cls_token and conv weights are
//                               decayed.
// Frozen tensors (SER_TINFO_FROZEN) are never touched: no step, no decay, no state.
//
// Clipping (the gradients are modified in place; norms are accumulated in double in index
// order, so they are deterministic):
//   SER_OPTIM_CLIP_PER_PARAM  utils.clip_gradients: for each tensor, n = f32(||g||_2),
//                             c = f32(clip) * (1 / (n + 1e-6f)) [torch's clip / tensor];
//                             if c < 1: g *= c.
//   SER_OPTIM_CLIP_GLOBAL     torch.nn.utils.clip_grad_norm_: N = f32(||all g||_2),
//                             c = min(f32(clip) * (1 / (N + 1e-6f)), 1); g *= c.
// Everything after the norm is torch's fp32 arithmetic. The norm itself is the double sum
// rounded once, where torch reduces in fp32 in its own lane order (and takes the global norm
// of the per-tensor fp32 norms), so a norm can differ from torch's in the last bit and a
// clipped gradient by an ulp or two (tests/test_optim.c reports it).
//
// EMA of a target (momentum / teacher) encoder towards a source (the student), per element in
// fp32, over every tensor of the table (frozen ones too: the reference zips all parameters):
//   SER_OPTIM_EMA_MOCO   t = t*f32(m) + s*f32(1 - m)
//                        (param_m.data = param_m.data * m + param_b.data * (1. - m))
//   SER_OPTIM_EMA_DINO   t = t*f32(m); t = t + f32(1 - m)*s
//                        (param_k.data.mul_(m).add_((1 - m) * param_q.detach().data))
// The two round identically when target and source are different memory. They differ when
// they alias (DINO's teacher shares the student's projector_equiv): DINO's in-place mul_ runs
// before (1 - m)*param_q is read, so t becomes t*m + (1 - m)*(t*m), not t.
//
// Every loop is element-wise (OpenMP over elements), so results do not depend on the thread
// count.
//
// defines:
//   SER_OPTIM_DECAY_ALL, SER_OPTIM_DECAY_NO_BIAS_1D     which tensors are weight-decayed
//   SER_OPTIM_CLIP_PER_PARAM, SER_OPTIM_CLIP_GLOBAL     clipping modes
//   SER_OPTIM_EMA_MOCO, SER_OPTIM_EMA_DINO              EMA formulas, named by method
//   SER_OPTIM_STATE_EXP_AVG, _EXP_AVG_SQ, _STEP         parts of the state (checkpoint names)
//   ser_optim_config, ser_optim_config_default()
//   ser_optim (m, v arenas and per-tensor steps), ser_optim_init(), ser_optim_free(),
//   ser_optim_reset(), ser_optim_decays(), ser_optim_step()
//   ser_optim_state_key(), ser_optim_torch_index()
//   ser_optim_clip_grad()
//   ser_optim_ema()
#ifndef SER_OPTIM_H
#define SER_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_ptab.h"

enum ser_optim_decay {
    SER_OPTIM_DECAY_ALL = 0,
    SER_OPTIM_DECAY_NO_BIAS_1D = 1,
};

enum ser_optim_clip {
    SER_OPTIM_CLIP_PER_PARAM = 0,
    SER_OPTIM_CLIP_GLOBAL = 1,
};

enum ser_optim_ema_method {
    SER_OPTIM_EMA_MOCO = 0,
    SER_OPTIM_EMA_DINO = 1,
};

enum ser_optim_state_part {
    SER_OPTIM_STATE_EXP_AVG = 0,
    SER_OPTIM_STATE_EXP_AVG_SQ = 1,
    SER_OPTIM_STATE_STEP = 2,
};

typedef struct ser_optim_config {
    double beta1, beta2;  // (0.9, 0.999)
    double eps;           // 1e-8
    int decay;            // SER_OPTIM_DECAY_*
} ser_optim_config;

// torch.optim.AdamW's defaults: betas (0.9, 0.999), eps 1e-8, and decay of every tensor.
void ser_optim_config_default(ser_optim_config *c);

typedef struct ser_optim {
    const ser_ptab *tab;  // not owned; must outlive the optimizer and not change
    ser_optim_config cfg;
    float *exp_avg;       // m: tab->total floats (64-byte aligned), the parameters' offsets
    float *exp_avg_sq;    // v: same layout
    int64_t *step;        // [tab->n] torch's state['step'] per tensor; 0 = no state yet
    unsigned char *decayed;  // [tab->n] 1 if the tensor gets weight decay
} ser_optim;

// Zeroes the state (m = v = 0, steps 0) for the tensors of tab. Returns SER_EINVAL with a
// message when betas are not in [0, 1) or eps < 0 or decay is unknown. Release with
// ser_optim_free() (also after a failed init).
int ser_optim_init(ser_optim *o, const ser_ptab *tab, const ser_optim_config *cfg,
                   char err[SER_ERR_LEN]);
// Safe on a zeroed struct.
void ser_optim_free(ser_optim *o);
// Back to the initial state (m = v = 0, steps 0).
void ser_optim_reset(ser_optim *o);
// 1 if tensor i is weight-decayed under the configured rule (frozen tensors: 0).
int ser_optim_decays(const ser_optim *o, int i);

// One AdamW step: params and grads are arenas of tab->total floats. Tensors that are frozen,
// or that have active[i] == 0 when active is not NULL ([tab->n]; torch's `p.grad is None`:
// DINO's last layer in its first epoch), are skipped entirely: no decay, no moment update, no
// step. lr and wd are the param group's values; wd applies to decayed tensors only.
void ser_optim_step(ser_optim *o, float *params, const float *grads, double lr, double wd,
                    const unsigned char *active);

// Writes the checkpoint name of one part of tensor i's state, e.g. "optimizer.blocks.0.attn.
// qkv.weight.exp_avg", into buf; returns buf.
const char *ser_optim_state_key(const ser_optim *o, int i, int part, char *buf, size_t n);
// The index torch's optimizer.state_dict()['state'] uses for tensor i (see the top comment),
// or -1 for a frozen tensor under SER_OPTIM_DECAY_NO_BIAS_1D.
int ser_optim_torch_index(const ser_optim *o, int i);

// Clips the gradients of the tensors of tab that are not frozen and are active (active NULL:
// all), with max norm `clip` and mode SER_OPTIM_CLIP_*. clip <= 0 only measures. norms
// ([tab->n] or NULL) receives each tensor's fp32 gradient norm before clipping (NAN for
// skipped tensors): the list utils.clip_gradients returns. Returns the global norm
// sqrt(sum of all squares) before clipping, in double; *n_clipped (may be NULL) receives the
// number of tensors that were scaled.
double ser_optim_clip_grad(const ser_ptab *tab, float *grads, double clip, int mode,
                           const unsigned char *active, float *norms, int *n_clipped);

// target = EMA(target, source, m) over every tensor of tab (arenas of tab->total floats) with
// the formula of `method` (SER_OPTIM_EMA_*). target and source may be the same arena.
void ser_optim_ema(const ser_ptab *tab, float *target, const float *source, double m, int method);

#endif
