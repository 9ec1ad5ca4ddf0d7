// ser_vit.h — the Vision Transformer with the SER layout, forward and backward.
//
// Layout (ser-reference.md §1.3, §1.6): blocks 1..k run on the h*w patch tokens only; the
// [CLS] token (no position embedding) is concatenated at index 0 after block k; blocks
// k+1..depth run on 1+h*w tokens; the final LayerNorm gives the [CLS] output. After block k the
// patch map also goes through its own LayerNorm `norm_equiv`: the SER feature map, (B, h*w, C)
// row-major with token index row*w + col. k = depth is the baseline layout: [CLS] prepended at
// the input with pos_embed row 0, and no norm_equiv.
//
// Parameters use the reference state_dict names (cls_token, pos_embed, patch_embed.proj.weight,
// blocks.0.attn.qkv.weight, ..., norm.weight, norm_equiv.weight) and live in one arena (a
// ser_ptab); gradients in a second arena with the same offsets.
//
// Images are (B,3,H,W) float, normalised; H and W are multiples of the patch size and need not
// be equal. The position embedding is stored for the base grid img_size/patch and resampled to
// other grids exactly as the reference does (bicubic, scale factor (g+0.1)/g0).
//
// defines:
//   ser_vit_config, ser_vit_config_preset()     vit_tiny / vit_small / vit_base
//   ser_vit_init(), ser_vit_free(), ser_vit_init_weights(), ser_vit_zero_grad()
//   ser_vit_register(), ser_vit_bind()   share one table/arena with other modules (prefixes)
//   ser_vit_acts (saved activations of one forward), ser_vit_acts_free()
//   ser_vit_forward(), ser_vit_backward()
//   ser_vit_flops()                             model FLOPs of one forward
#ifndef SER_VIT_H
#define SER_VIT_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_ptab.h"

typedef struct ser_vit_config {
    int img_size;          // base image size: the position embedding grid is img_size/patch
    int patch;             // patch size P (kernel = stride = P)
    int dim;               // embedding dim C
    int depth;             // number of blocks
    int heads;             // attention heads (dim % heads == 0)
    int mlp_hidden;        // MLP hidden width (4*dim for the presets)
    int cls_layer;         // k in 1..depth: CLS inserted after block k; depth = baseline layout
    float drop_path_rate;  // stochastic depth, linspace(0, rate, depth)[l] per block
    float ln_eps;          // 1e-6
    int freeze_patch_embed;
} ser_vit_config;

// name: vit_tiny (192/3), vit_small (384/6), vit_base (768/12); depth 12, mlp 4x. cls_layer 3.
int ser_vit_config_preset(ser_vit_config *c, const char *name, int img_size, int patch);
// Checks every field; on failure writes a message naming the field into err.
int ser_vit_config_check(const ser_vit_config *c, char err[SER_ERR_LEN]);

typedef struct ser_vit_block_off {
    size_t n1w, n1b, qkvw, qkvb, projw, projb, n2w, n2b, fc1w, fc1b, fc2w, fc2b;
} ser_vit_block_off;

typedef struct ser_vit {
    ser_vit_config cfg;
    int g0h, g0w;  // base grid
    int baseline;  // cls_layer == depth
    ser_ptab own_tab;       // used by ser_vit_init (standalone); unused after ser_vit_register
    ser_ptab *tabp;         // the table holding this ViT's tensors (own_tab or external)
    int first, count;       // this ViT's entries are tabp->t[first .. first+count)
    int prefix_len;         // length of the name prefix of its entries
    int owns_arena;
    float *params, *grads;  // arena bases (offsets are into these); grads may be NULL
    size_t off_cls, off_pos, off_pw, off_pb, off_norm_w, off_norm_b, off_neq_w, off_neq_b;
    ser_vit_block_off *blk;
} ser_vit;

enum ser_vit_init_scheme {
    SER_VIT_INIT_GENERIC = 0,  // timm/DINO: trunc_normal(.02) Linear, LN (1,0), default conv
    SER_VIT_INIT_MOCO = 1,     // MoCo-v3 (§1.7): xavier Linear, per-part qkv, cls N(0,1e-6)
};

// Standalone: own table (bare names: cls_token, blocks.0...) and own zeroed arenas.
int ser_vit_init(ser_vit *v, const ser_vit_config *cfg, char err[SER_ERR_LEN]);
// Shared: appends this ViT's tensors to tab with names prefix+name ("base_encoder."). Bind the
// arenas (allocated by the owner of tab, tab->total floats each) before use.
int ser_vit_register(ser_vit *v, const ser_vit_config *cfg, ser_ptab *tab, const char *prefix,
                     char err[SER_ERR_LEN]);
void ser_vit_bind(ser_vit *v, float *params, float *grads);
void ser_vit_free(ser_vit *v);
// Fills this ViT's tensors (only its own entries of a shared table).
void ser_vit_init_weights(ser_vit *v, int scheme, uint64_t seed);
// Zeroes this ViT's gradient entries.
void ser_vit_zero_grad(ser_vit *v);
// Number of floats spanned by this ViT's entries, and its first offset (for flat copies).
size_t ser_vit_span(const ser_vit *v, size_t *first_offset);

// Saved activations of one forward. The buffers are reused by the next forward of the same
// or smaller size.
typedef struct ser_vit_acts {
    int B, H, W, gh, gw, NP, N1, n_last;
    size_t cap;
    float *mem;
    const float *img;  // not owned
    float *cols;       // (B*NP, 3*P*P)
    float *pos;        // (NP, C) position embedding used for the patches
    float **xin;       // [depth] block inputs (B, T_l, C)
    float **xmid;      // [depth] after the attention residual
    float **ln1, **ln1m, **ln1r, **qkv, **att, **ao, **ln2, **ln2m, **ln2r, **hpre, **hact;
    float *xk;         // (B, NP, C) patch tokens after block k (SER layout)
    float *xout;       // (B, T_last, C) output of the last block
    float *map, *mapm, *mapr;  // norm_equiv output (B, NP, C) and its stats
    float *clsin, *cls, *clsm, *clsr;  // final norm on the CLS rows: (B, C)
    float *last_cls;   // (B, n_last*C): final-norm CLS of the last n_last blocks
    float *dps;        // (depth, 2, B) drop-path multipliers (0 or 1/keep), NULL if none
    // backward scratch
    float *dX, *dtmp, *dsm, *dbig, *dpos;
} ser_vit_acts;

void ser_vit_acts_free(ser_vit_acts *a);

typedef struct ser_vit_fwd_opts {
    int train;                   // drop path on
    uint64_t seed;               // drop-path stream: (seed, step, sample id)
    uint32_t step;
    const uint32_t *sample_ids;  // (B,) global sample ids (NULL: 0..B-1)
    const float *drop_masks;     // (depth, 2, B) keep flags 0/1 overriding the RNG (tests)
    int n_last;                  // also output the final-norm CLS of the last n blocks (eval)
} ser_vit_fwd_opts;

// img (B,3,H,W). Outputs in a->cls (B,C) and, in the SER layout, a->map (B,NP,C).
int ser_vit_forward(ser_vit *v, ser_vit_acts *a, const float *img, int B, int H, int W,
                    const ser_vit_fwd_opts *o, char err[SER_ERR_LEN]);
// d_cls (B,C): gradient w.r.t. a->cls; d_map (B,NP,C) w.r.t. a->map or NULL. Accumulates into
// v->grads (frozen tensors untouched).
void ser_vit_backward(ser_vit *v, ser_vit_acts *a, const float *d_cls, const float *d_map);

// FLOPs (2 per multiply-add) of one forward for B images on a gh x gw grid (matmuls only).
double ser_vit_flops(const ser_vit_config *c, int B, int gh, int gw);

#endif
