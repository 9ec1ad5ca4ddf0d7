// ser_group.h — the geometric group G of SER: sampling its elements, their action on images
// (what the loader applies to the base crop) and the relative action on token maps (what the
// loss applies to the teacher map), forward and adjoint. Spec: ser-reference.md §2.5, §2.7,
// §3.3, §10.
//
// --- one group element -----------------------------------------------------------------------
// g = (d, f, r, gh, gw). Its image action on the base crop x ((P*g0) x (P*g0) pixels):
//   view = R^r S F^f D^d x
// D = rotate by 180 degrees, F = horizontal flip (columns), S = bicubic resize to
// (P*gh) x (P*gw) pixels (size semantics, align_corners False, no antialias: ser_interp.h),
// R = torch.rot90(., r, dims=[H,W]) (counter-clockwise). The view's token grid is (gh, gw) for
// even r and (gw, gh) for odd r.
//
// Naming: gh counts token ROWS (the H axis) and gw token COLUMNS. The reference calls the same
// two numbers w and h, with its "w" along H (ser-reference §2.5): our (gh, gw) = its (w, h).
//
// --- the relative action T_ab (derivation) ---------------------------------------------------
// D and F are commuting involutions, and both commute with S (align_corners False resizing is
// mirror-symmetric: an output index o and its mirror O-1-o read mirrored source positions).
// With view_v = R^{r_v} S_v F^{f_v} D^{d_v} x for v in {a, b}:
//   x      = D^{d_a} F^{f_a} S_a^{-1} R^{-r_a} view_a
//   view_b = R^{r_b} S_b F^{f_b} D^{d_b} D^{d_a} F^{f_a} S_a^{-1} R^{-r_a} view_a
//          = R^{r_b} (S_b S_a^{-1}) F^{f_a xor f_b} D^{d_a xor d_b} R^{-r_a} view_a.
// On token maps S_b S_a^{-1} is the bicubic resize from grid (gh_a, gw_a) to (gh_b, gw_b), so
//   T_ab(Z) = rot90_{r_b}( resize_{(gh_b,gw_b)}( hflip^{f_a^f_b}( rot180^{d_a^d_b}(
//                 rot90_{-r_a}(Z) ) ) ) )
// where rot90_{-r_a}(Z) has grid (gh_a, gw_a). T_ab moves the (teacher) map of view a onto the
// grid of view b. The formula holds for any pair, so it serves both sampling modes. In the
// reference's mode (f_b = !f_a, d_b = !d_a) both xors are 1, and since rot180 o rot90_{-r_a} =
// rot90_{2-r_a} it reduces to the reference's T(Z; gh_b, gw_b, k_inv=-r_a, k_t=r_b) =
// rot90_{k_t}(resize(hflip(rot90_{k_inv+2}(Z)))) (§2.7); tests/test_group.c checks the
// equality. When both grids have the same size the resize is skipped: PyTorch's bicubic with
// equal sizes is an exact copy.
//
// --- layouts ---------------------------------------------------------------------------------
// Images are channel-planar (C, H, W), or channels-last (H, W, C) through the _hwc variant of
// the image action (the data loader's layout); both run the same strided code. Token maps are
// channels-last (h, w, C), row-major, token index row*w + col. Permutation primitives follow
// torch.rot90(x, k, dims=[0,1]):
//   k=1: out[i,j] = in[j, w-1-i] (out is (w,h));  k=2: out[i,j] = in[h-1-i, w-1-j];
//   k=3: out[i,j] = in[h-1-j, i] (out is (w,h)); k is taken mod 4 (negative allowed).
//   hflip: out[i,j] = in[i, w-1-j].
// Backward functions are adjoints written as scatter-adds: they ACCUMULATE (+=) into the
// input gradient, so they compose with everything else.
//
// --- sampling --------------------------------------------------------------------------------
// target_area = g0^2 * U(0.7, 1.3), aspect = exp(U(log 3/4, log 4/3)),
// gh = round_half_even(sqrt(area*aspect)), gw = round_half_even(sqrt(area/aspect)), both
// clamped to >= 1; r uniform in 0..3; d, f Bernoulli(1/2). Every draw comes from Philox
// (ser_rng.h), purpose SER_RNG_GROUP, and is a pure function of its key:
//   paper mode      every field drawn per sample and per view:
//                   (seed, step, sample_id, view<<16 | SER_RNG_GROUP)
//   reference mode  (gh, gw, r) once per view for the whole equivariant sub-batch of one shard:
//                   (seed, step, shard_id, (SER_GROUP_TAG_SHARED+view)<<16 | SER_RNG_GROUP);
//                   d, f per sample for view 0:
//                   (seed, step, sample_id, SER_GROUP_TAG_FLAGS<<16 | SER_RNG_GROUP);
//                   view 1's d and f are the logical NOT of view 0's (ser-reference §3.3), so
//                   every relative transform contains the vertical flip F.D.
//   reference mode, keyed   the same draws and tags with the two counter words given
//                   explicitly: (seed, shard_key.c0, shard_key.c1, (SHARED+view)<<16 | GROUP)
//                   and (seed, sample_key.c0, sample_key.c1, FLAGS<<16 | GROUP). The plain
//                   function is the keyed one with shard_key = (step, shard_id) and
//                   sample_key = (step, sample_id). The data loader keys the shared draws by
//                   (step, shard) and the flags by (epoch, dataset index) (dataloader/ser_dl.h).
// The uniforms are 24-bit floats mapped in double; the reference draws float32 uniforms from a
// torch.Generator, so individual draws are not bit-identical to it, only the distribution is.
// Ranges (tests/test_group.c): g0 = 14 (224 px, P=16): gh, gw in [10, 18];
// g0 = 8 (32 px, P=4): [6, 11] (11 is rare: it needs area*aspect >= 110.25 of at most 110.9);
// g0 = 6 (96 px, P=16): [4, 8].
//
// Threading: nothing here keeps global state; the actions are single-threaded and a caller
// may run one sample per thread.
//
// defines:
//   ser_group_elem                              one element (d, f, r, gh, gw)
//   ser_group_elem_check(g)                     SER_OK or SER_EINVAL (bad flag, r or grid)
//   ser_group_view_grid(g, &rows, &cols)        token grid of the view
//   ser_group_token_layout()                    token counts and offsets of views in a row
//   ser_group_image_size(g, P, &H, &W)          pixel size of the view
//   ser_group_image_action(out, in, C,H,W, P, g)      CHW image -> CHW view
//   ser_group_image_action_hwc(out, in, C,H,W, P, g)  HWC image -> HWC view (same code, same bits)
//   ser_group_rot90_hwc[_backward], ser_group_hflip_hwc[_backward]   token-map permutations
//   ser_group_rel_action[_backward](out, z, C, ga, gb)    T_ab on channels-last maps
//   ser_group_rel_action_naive[_backward]       the same composed from the primitives (oracle)
//   ser_group_sample_paper(), ser_group_sample_reference()    Philox-driven sampling
//   ser_group_key, ser_group_sample_reference_keyed()  reference mode with explicit stream keys
//   SER_GROUP_* constants
#ifndef SER_GROUP_H
#define SER_GROUP_H

#include <stddef.h>
#include <stdint.h>

typedef struct ser_group_elem {
    uint8_t rot180;  // d: rotate by 180 degrees first
    uint8_t hflip;   // f: then flip horizontally (columns)
    uint8_t rot90;   // r in 0..3: last, torch.rot90(x, r, dims=[H,W]) (counter-clockwise)
    int16_t gh, gw;  // target token grid (rows, cols) of the resize, before the rot90
} ser_group_elem;

// Sampling constants (ser-reference §3.3).
#define SER_GROUP_SCALE_MIN 0.7
#define SER_GROUP_SCALE_MAX 1.3
#define SER_GROUP_RATIO_MIN (3.0 / 4.0)
#define SER_GROUP_RATIO_MAX (4.0 / 3.0)
// Largest base grid g0 the samplers accept (gh, gw stay far below INT16_MAX).
#define SER_GROUP_MAX_BASE_GRID 4096
// Largest gh, gw an element may carry, and the largest patch size of the image action.
#define SER_GROUP_MAX_GRID 8192
#define SER_GROUP_MAX_PATCH 2048
// Stream tags (bits 16.. of the third Philox counter word), see "sampling" above.
#define SER_GROUP_TAG_SHARED 2  // + view: reference mode, per-shard geometry
#define SER_GROUP_TAG_FLAGS 4   // reference mode, per-sample flags of view 0

// SER_OK, or SER_EINVAL when a flag is not 0/1, r > 3, or gh/gw is outside 1..SER_GROUP_MAX_GRID.
int ser_group_elem_check(const ser_group_elem *g);

// Token grid of the view: (gh, gw) for even r, (gw, gh) for odd r.
void ser_group_view_grid(const ser_group_elem *g, int *rows, int *cols);
// The token layout of n views laid out one after another (a gathered map): tok[i] = rows *
// cols of g[i]'s view grid, off[i] its first row; returns the total rows.
size_t ser_group_token_layout(const ser_group_elem *g, size_t n, int *tok, size_t *off);
// Pixel size of the view for patch size P: (P*rows, P*cols) of the view grid.
void ser_group_image_size(const ser_group_elem *g, int P, int *H, int *W);

// --- image action ----------------------------------------------------------------------------
// in (C, H, W) -> out (C, P*rows, P*cols) with (rows, cols) = ser_group_view_grid(g):
// out = rot90_r( resize_{(P*gh, P*gw)}( hflip^f( rot180^d(in) ) ) ). The resize is skipped
// (an exact copy, as in PyTorch) when (H, W) == (P*gh, P*gw). in and out must not overlap.
// Returns SER_OK, or SER_EINVAL for a bad element, C, H, W, P < 1 or P > SER_GROUP_MAX_PATCH.
int ser_group_image_action(float *out, const float *in, int C, int H, int W, int P,
                           const ser_group_elem *g);
// The same action on channels-last images: in (H, W, C) -> out (P*rows, P*cols, C). Same
// arguments, checks and return codes; out equals the CHW action on the transposed data bit for
// bit (the one code path, with other strides).
int ser_group_image_action_hwc(float *out, const float *in, int C, int H, int W, int P,
                               const ser_group_elem *g);

// --- token-map permutations (channels-last (h, w, C)) ----------------------------------------
// in (h, w, C) -> out (w, h, C) for odd k, (h, w, C) for even k; torch.rot90(in, k, [0, 1]).
void ser_group_rot90_hwc(float *out, const float *in, int h, int w, int C, int k);
// The adjoint: din (h, w, C) += rot90_k^T(dout), dout shaped as rot90_hwc's out.
void ser_group_rot90_hwc_backward(float *din, const float *dout, int h, int w, int C, int k);
// in (h, w, C) -> out (h, w, C) with out[i,j] = in[i, w-1-j].
void ser_group_hflip_hwc(float *out, const float *in, int h, int w, int C);
void ser_group_hflip_hwc_backward(float *din, const float *dout, int h, int w, int C);

// --- relative action T_ab --------------------------------------------------------------------
// z (rows_a, cols_a, C) on view a's grid -> out (rows_b, cols_b, C) on view b's grid, the
// grids given by ser_group_view_grid. The flips and rotations are folded into strides, so the
// whole action is one bicubic pass (or one copy). z and out must not overlap.
// Returns SER_OK or SER_EINVAL (bad element, C < 1).
int ser_group_rel_action(float *out, const float *z, int C, const ser_group_elem *ga,
                         const ser_group_elem *gb);
// The adjoint: dz (rows_a, cols_a, C) += T_ab^T(dout), dout (rows_b, cols_b, C).
int ser_group_rel_action_backward(float *dz, const float *dout, int C, const ser_group_elem *ga,
                                  const ser_group_elem *gb);
// The same maps composed literally from the primitives above and ser_bicubic_hwc, with
// temporaries (the oracle of the fused versions; bitwise equal to them).
int ser_group_rel_action_naive(float *out, const float *z, int C, const ser_group_elem *ga,
                               const ser_group_elem *gb);
int ser_group_rel_action_naive_backward(float *dz, const float *dout, int C,
                                        const ser_group_elem *ga, const ser_group_elem *gb);

// --- sampling --------------------------------------------------------------------------------
// Paper mode: *g0 and *g1 (the two views of sample sample_id) drawn independently, every field.
// g0grid = base grid (image size / P). Returns SER_OK or SER_EINVAL (g0grid outside
// 1..SER_GROUP_MAX_BASE_GRID).
int ser_group_sample_paper(ser_group_elem *g0, ser_group_elem *g1, int g0grid, uint64_t seed,
                           uint32_t step, uint32_t sample_id);
// Reference mode: g0[s], g1[s] for the n samples sample_ids[s] of the equivariant sub-batch of
// one shard. (gh, gw, r) are shared per view by all n samples; d, f are per sample for view 0,
// and view 1 gets their logical NOT. Returns SER_OK or SER_EINVAL (bad g0grid, n < 0, NULL
// arrays with n > 0).
int ser_group_sample_reference(ser_group_elem *g0, ser_group_elem *g1, int n,
                               const uint32_t *sample_ids, int g0grid, uint64_t seed, uint32_t step,
                               uint32_t shard_id);

// The first two Philox counter words of a sampling stream; the third is tag<<16 | SER_RNG_GROUP.
typedef struct ser_group_key {
    uint32_t c0, c1;
} ser_group_key;

// Reference mode with explicit keys: (gh, gw, r) of both views from shard_key, d and f of
// sample s from sample_keys[s] (see "sampling" above). The keys of one call need not share a
// word: the data loader's samples of one shard may come from two epochs. Same checks and
// return codes as ser_group_sample_reference.
int ser_group_sample_reference_keyed(ser_group_elem *g0, ser_group_elem *g1, int n,
                                     const ser_group_key *sample_keys, int g0grid, uint64_t seed,
                                     ser_group_key shard_key);

#endif
