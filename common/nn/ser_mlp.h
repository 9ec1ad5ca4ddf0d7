// ser_mlp.h — the projection and prediction heads: a stack of Linear layers, each optionally
// followed by BatchNorm1d (or LayerNorm) and an activation, with PyTorch nn.Sequential naming.
//
// MoCo-v3's _build_mlp(L, in, hidden, out, last_bn) is layers {Linear(no bias), BN, ReLU} x
// (L-1), then Linear(no bias) and BN(affine=False): names head.0.weight, head.1.weight,
// head.1.bias, head.1.running_mean, head.1.running_var, head.1.num_batches_tracked,
// head.3.weight, ... (ser-reference.md §2.1). BatchNorm in training mode normalises with the
// biased batch variance over all M rows it is given (the whole global batch: SyncBN semantics)
// and updates its running statistics (momentum 0.1, unbiased variance), which training never
// reads but the state_dict carries. Statistics accumulate in double, as PyTorch's CPU kernel.
//
// defines:
//   ser_mlp_layer_spec, ser_mlp, ser_mlp_register(), ser_mlp_bind()
//   ser_mlp_acts (saved activations of one forward), ser_mlp_acts_free()
//   ser_mlp_init_weights()     PyTorch defaults (Linear U(+-1/sqrt(fan_in)), BN (1, 0))
//   ser_mlp_forward()          training-mode forward, saves what backward needs
//   ser_mlp_backward()         accumulates parameter gradients, writes the input gradient
//   ser_mlp_moco_spec()        the layer list of MoCo-v3's _build_mlp
#ifndef SER_MLP_H
#define SER_MLP_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_ptab.h"

enum ser_act { SER_ACT_NONE = 0, SER_ACT_RELU, SER_ACT_GELU };
// The norm after a Linear: BatchNorm1d (affine or not), or LayerNorm (affine, eps 1e-5: the
// E-SSL rotation head's), which normalises each row and has no running statistics.
enum ser_bn { SER_BN_NONE = 0, SER_BN_AFFINE, SER_BN_PLAIN /* affine=False */, SER_BN_LAYERNORM };

#define SER_MLP_MAX_LAYERS 8
#define SER_BN_EPS 1e-5f
#define SER_BN_MOMENTUM 0.1

typedef struct ser_mlp_layer_spec {
    int in, out;
    int bias;  // Linear bias
    int bn;    // enum ser_bn
    int act;   // enum ser_act
    int conv1x1;  // weight stored as (out, in, 1, 1): a per-token Conv2d 1x1 (projector_equiv)
} ser_mlp_layer_spec;

typedef struct ser_mlp_layer {
    ser_mlp_layer_spec s;
    size_t w, b, bnw, bnb;  // parameter offsets (b/bnw/bnb unused when absent)
    size_t rm, rv, nbt;     // buffer offsets (running_mean, running_var, num_batches_tracked)
} ser_mlp_layer;

typedef struct ser_mlp {
    int n;
    ser_mlp_layer layer[SER_MLP_MAX_LAYERS];
    float *params, *grads, *buffers;  // arena bases; grads may be NULL (no-grad module)
} ser_mlp;

// Saved activations of one forward of M rows (one per call whose backward is still due).
typedef struct ser_mlp_acts {
    int M;
    size_t cap;
    float *mem;
    float *x[SER_MLP_MAX_LAYERS + 1];  // x[l] input of layer l; x[n] the output
    float *h[SER_MLP_MAX_LAYERS];      // Linear output (pre-BN)
    float *a[SER_MLP_MAX_LAYERS];      // post-BN, pre-activation
    float *mean[SER_MLP_MAX_LAYERS], *rstd[SER_MLP_MAX_LAYERS];
    float *d0, *d1;                    // backward scratch (M x max width)
} ser_mlp_acts;

// MoCo-v3 _build_mlp(num_layers, in, hidden, out, last_bn). Returns the layer count.
int ser_mlp_moco_spec(ser_mlp_layer_spec *spec, int num_layers, int in, int hidden, int out,
                      int last_bn);

// Appends parameters (to tab) and BatchNorm buffers (to btab) named prefix + Sequential index.
int ser_mlp_register(ser_mlp *m, const ser_mlp_layer_spec *spec, int n, ser_ptab *tab,
                     ser_ptab *btab, const char *prefix, char err[SER_ERR_LEN]);
void ser_mlp_bind(ser_mlp *m, float *params, float *grads, float *buffers);
void ser_mlp_init_weights(ser_mlp *m, uint64_t seed);
void ser_mlp_acts_free(ser_mlp_acts *a);

// x (M, in) -> returns the output (M, out), owned by a until its next forward. Updates the
// running statistics when update_running is set (training mode). M >= 2 when any BN exists.
const float *ser_mlp_forward(const ser_mlp *m, ser_mlp_acts *a, const float *x, int M,
                             int update_running);
// dy (M, out) -> dx (M, in) written (if dx is non-NULL); parameter gradients accumulate.
void ser_mlp_backward(const ser_mlp *m, ser_mlp_acts *a, float *dx, const float *dy);

// BatchNorm1d training forward on x (M, C) -> y; mean/rstd (C,) saved; w/b NULL for
// affine=False; run_mean/run_var (C,) updated when non-NULL.
void ser_batchnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int M, int C, float *run_mean, float *run_var);
// dx written; dw/db accumulate (skipped when NULL).
void ser_batchnorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, const float *mean, const float *rstd, int M, int C);

#endif
