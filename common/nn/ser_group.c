// ser_group.c — see ser_group.h.
//
// The fused actions describe every flip and rotation as a strided "view" of memory: a view
// (rows, cols, base, sy, sx) reads element (i, j) at base + i*sy + j*sx (channel stride apart).
// rot90 and the flips only change base and the two strides, so the input side
// (rot90_{-r_a}, rot180^d, hflip^f) becomes one strided view of z and the output side
// (rot90_{r_b}) becomes the view rot90_{-r_b}(out) that the resize writes through. One
// ser_bicubic_forward call (or one copy, for equal grids) then does the whole action; for a
// resize the channels-last map is transposed to planar first (ser_interp walks planes). The
// primitives and the _naive twins instead follow the torch.rot90 index formulas literally.
#include "ser_group.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_interp.h"
#include "ser_rng.h"

// --- elements --------------------------------------------------------------------------------
int ser_group_elem_check(const ser_group_elem *g) {
    if (!g) return SER_EINVAL;
    if (g->rot180 > 1 || g->hflip > 1 || g->rot90 > 3) return SER_EINVAL;
    if (g->gh < 1 || g->gw < 1 || g->gh > SER_GROUP_MAX_GRID || g->gw > SER_GROUP_MAX_GRID)
        return SER_EINVAL;
    return SER_OK;
}

void ser_group_view_grid(const ser_group_elem *g, int *rows, int *cols) {
    int odd = g->rot90 & 1;
    *rows = odd ? g->gw : g->gh;
    *cols = odd ? g->gh : g->gw;
}

size_t ser_group_token_layout(const ser_group_elem *g, size_t n, int *tok, size_t *off) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int r, c;
        ser_group_view_grid(&g[i], &r, &c);
        tok[i] = r * c;
        off[i] = total;
        total += (size_t)r * c;
    }
    return total;
}

void ser_group_image_size(const ser_group_elem *g, int P, int *H, int *W) {
    int rows, cols;
    ser_group_view_grid(g, &rows, &cols);
    *H = P * rows;
    *W = P * cols;
}

// --- strided views ---------------------------------------------------------------------------
typedef struct s_view {
    int rows, cols;
    int64_t base, sy, sx;  // in floats
} s_view;

static s_view s_view_plain(int rows, int cols, int64_t sy, int64_t sx) {
    s_view v = {rows, cols, 0, sy, sx};
    return v;
}

// v becomes the view of torch.rot90(v, k): for k = 1, u[i,j] = v[j, cols-1-i], so u starts at
// v's element (0, cols-1), walks rows with -sx and columns with sy. Applied k mod 4 times.
static void s_view_rot90(s_view *v, int k) {
    for (k = ((k % 4) + 4) % 4; k > 0; k--) {
        s_view u = {v->cols, v->rows, v->base + (int64_t)(v->cols - 1) * v->sx, -v->sx, v->sy};
        *v = u;
    }
}

static void s_view_flip_rows(s_view *v) {
    v->base += (int64_t)(v->rows - 1) * v->sy;
    v->sy = -v->sy;
}

static void s_view_flip_cols(s_view *v) {
    v->base += (int64_t)(v->cols - 1) * v->sx;
    v->sx = -v->sx;
}

// rot180^d then hflip^f. rot180 is the flip of both axes.
static void s_view_flips(s_view *v, int d, int f) {
    if (d) s_view_flip_rows(v);
    if (d ^ f) s_view_flip_cols(v);
}

// out view <- in view (channel strides ocs, ics): an exact copy when the grids are equal (as
// PyTorch's bicubic does), else the bicubic resize with size semantics.
static void s_transfer(float *out, s_view ov, int64_t ocs, const float *in, s_view iv, int64_t ics,
                       int C) {
    if (ov.rows == iv.rows && ov.cols == iv.cols) {
        for (int y = 0; y < ov.rows; y++)
            for (int x = 0; x < ov.cols; x++) {
                float *o = out + ov.base + y * ov.sy + x * ov.sx;
                const float *i = in + iv.base + y * iv.sy + x * iv.sx;
                if (ocs == 1 && ics == 1)
                    memcpy(o, i, sizeof(float) * (size_t)C);
                else
                    for (int c = 0; c < C; c++) o[c * ocs] = i[c * ics];
            }
        return;
    }
    ser_bicubic_axis ay, ax;
    ser_bicubic_axis_init(&ay, iv.rows, ov.rows, 0);
    ser_bicubic_axis_init(&ax, iv.cols, ov.cols, 0);
    ser_strides is = {ics, iv.sy, iv.sx}, os = {ocs, ov.sy, ov.sx};
    ser_bicubic_forward(out + ov.base, os, in + iv.base, is, C, &ay, &ax);
    ser_bicubic_axis_free(&ay);
    ser_bicubic_axis_free(&ax);
}

// The adjoint of s_transfer: in view += T^T(out view), a scatter-add.
static void s_transfer_backward(float *din, s_view iv, int64_t ics, const float *dout, s_view ov,
                                int64_t ocs, int C) {
    if (ov.rows == iv.rows && ov.cols == iv.cols) {
        for (int y = 0; y < ov.rows; y++)
            for (int x = 0; x < ov.cols; x++) {
                const float *o = dout + ov.base + y * ov.sy + x * ov.sx;
                float *i = din + iv.base + y * iv.sy + x * iv.sx;
                for (int c = 0; c < C; c++) i[c * ics] += o[c * ocs];
            }
        return;
    }
    ser_bicubic_axis ay, ax;
    ser_bicubic_axis_init(&ay, iv.rows, ov.rows, 0);
    ser_bicubic_axis_init(&ax, iv.cols, ov.cols, 0);
    ser_strides is = {ics, iv.sy, iv.sx}, os = {ocs, ov.sy, ov.sx};
    ser_bicubic_backward(din + iv.base, is, dout + ov.base, os, C, &ay, &ax);
    ser_bicubic_axis_free(&ay);
    ser_bicubic_axis_free(&ax);
}

// --- image action ----------------------------------------------------------------------------
// Both layouts run this one path; only the strides differ. Planar (C, H, W): element stride 1,
// channel stride H*W. Channels-last (H, W, C): element stride C, channel stride 1. Every output
// value is the same ser_bicubic_forward sum over the same source values in the same order, so
// the two layouts give the same bits (tests/test_group.c checks it).
static int s_image_action(float *out, const float *in, int C, int H, int W, int P,
                          const ser_group_elem *g, int channels_last) {
    if (ser_group_elem_check(g) || C < 1 || H < 1 || W < 1 || P < 1) return SER_EINVAL;
    if (P > SER_GROUP_MAX_PATCH) return SER_EINVAL;
    int OH, OW;
    ser_group_image_size(g, P, &OH, &OW);
    int64_t ies = channels_last ? C : 1, ics = channels_last ? 1 : (int64_t)H * W;
    int64_t oes = channels_last ? C : 1, ocs = channels_last ? 1 : (int64_t)OH * OW;
    s_view iv = s_view_plain(H, W, W * ies, ies);
    s_view_flips(&iv, g->rot180, g->hflip);
    // The resize writes W' = rot90_{-r}(out), so that out = rot90_r(W').
    s_view ov = s_view_plain(OH, OW, OW * oes, oes);
    s_view_rot90(&ov, -g->rot90);
    SER_ASSERT(ov.rows == P * g->gh && ov.cols == P * g->gw);
    s_transfer(out, ov, ocs, in, iv, ics, C);
    return SER_OK;
}

int ser_group_image_action(float *out, const float *in, int C, int H, int W, int P,
                           const ser_group_elem *g) {
    return s_image_action(out, in, C, H, W, P, g, 0);
}

int ser_group_image_action_hwc(float *out, const float *in, int C, int H, int W, int P,
                               const ser_group_elem *g) {
    return s_image_action(out, in, C, H, W, P, g, 1);
}

// --- token-map permutations ------------------------------------------------------------------
// Token index in the (h, w) input that torch.rot90(in, k, [0,1]) puts at output (i, j).
static inline int64_t s_rot90_src(int i, int j, int h, int w, int k) {
    switch (k) {
        case 1:
            return (int64_t)j * w + (w - 1 - i);
        case 2:
            return (int64_t)(h - 1 - i) * w + (w - 1 - j);
        case 3:
            return (int64_t)(h - 1 - j) * w + i;
        default:
            return (int64_t)i * w + j;
    }
}

void ser_group_rot90_hwc(float *out, const float *in, int h, int w, int C, int k) {
    k = ((k % 4) + 4) % 4;
    int oh = (k & 1) ? w : h, ow = (k & 1) ? h : w;
    for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++)
            memcpy(out + ((int64_t)i * ow + j) * C, in + s_rot90_src(i, j, h, w, k) * C,
                   sizeof(float) * (size_t)C);
}

void ser_group_rot90_hwc_backward(float *din, const float *dout, int h, int w, int C, int k) {
    k = ((k % 4) + 4) % 4;
    int oh = (k & 1) ? w : h, ow = (k & 1) ? h : w;
    for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++) {
            float *d = din + s_rot90_src(i, j, h, w, k) * C;
            const float *g = dout + ((int64_t)i * ow + j) * C;
            for (int c = 0; c < C; c++) d[c] += g[c];
        }
}

void ser_group_hflip_hwc(float *out, const float *in, int h, int w, int C) {
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++)
            memcpy(out + ((int64_t)i * w + j) * C, in + ((int64_t)i * w + (w - 1 - j)) * C,
                   sizeof(float) * (size_t)C);
}

void ser_group_hflip_hwc_backward(float *din, const float *dout, int h, int w, int C) {
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            float *d = din + ((int64_t)i * w + (w - 1 - j)) * C;
            const float *g = dout + ((int64_t)i * w + j) * C;
            for (int c = 0; c < C; c++) d[c] += g[c];
        }
}

// --- relative action, fused ------------------------------------------------------------------
// The views of T_ab for a map with row stride cols*es and element stride es: iv reads
// V = hflip^f(rot180^d(rot90_{-r_a}(z))) on grid (gh_a, gw_a); ov is W = rot90_{-r_b}(out), the
// grid (gh_b, gw_b) the resize writes through.
static void s_rel_views(s_view *iv, s_view *ov, int64_t es, const ser_group_elem *ga,
                        const ser_group_elem *gb) {
    int ra, ca, rb, cb;
    ser_group_view_grid(ga, &ra, &ca);
    ser_group_view_grid(gb, &rb, &cb);
    *iv = s_view_plain(ra, ca, ca * es, es);
    s_view_rot90(iv, -ga->rot90);
    s_view_flips(iv, ga->rot180 ^ gb->rot180, ga->hflip ^ gb->hflip);
    *ov = s_view_plain(rb, cb, cb * es, es);
    s_view_rot90(ov, -gb->rot90);
    SER_ASSERT(iv->rows == ga->gh && iv->cols == ga->gw);
    SER_ASSERT(ov->rows == gb->gh && ov->cols == gb->gw);
}

// (h*w, C) channels-last <-> (C, h*w) planar. ser_bicubic_forward walks one channel plane at a
// time, which is about 5x faster on planar data than on channels-last rows of C = 512.
static void s_to_planar(float *dst, const float *src, int64_t hw, int C) {
    for (int64_t t = 0; t < hw; t++)
        for (int c = 0; c < C; c++) dst[c * hw + t] = src[t * C + c];
}

// acc = 0 writes dst, acc = 1 adds to it.
static void s_from_planar(float *dst, const float *src, int64_t hw, int C, int acc) {
    for (int64_t t = 0; t < hw; t++)
        for (int c = 0; c < C; c++)
            if (acc)
                dst[t * C + c] += src[c * hw + t];
            else
                dst[t * C + c] = src[c * hw + t];
}

static int s_same_grid(const ser_group_elem *ga, const ser_group_elem *gb) {
    return ga->gh == gb->gh && ga->gw == gb->gw;
}

int ser_group_rel_action(float *out, const float *z, int C, const ser_group_elem *ga,
                         const ser_group_elem *gb) {
    if (ser_group_elem_check(ga) || ser_group_elem_check(gb) || C < 1) return SER_EINVAL;
    s_view iv, ov;
    if (s_same_grid(ga, gb)) {  // a permutation of whole tokens
        s_rel_views(&iv, &ov, C, ga, gb);
        s_transfer(out, ov, 1, z, iv, 1, C);
        return SER_OK;
    }
    int64_t na = (int64_t)ga->gh * ga->gw, nb = (int64_t)gb->gh * gb->gw;
    float *pa = ser_xmalloc(sizeof(float) * (size_t)(na * C));
    float *pb = ser_xmalloc(sizeof(float) * (size_t)(nb * C));
    s_to_planar(pa, z, na, C);
    s_rel_views(&iv, &ov, 1, ga, gb);
    s_transfer(pb, ov, nb, pa, iv, na, C);
    s_from_planar(out, pb, nb, C, 0);
    free(pa), free(pb);
    return SER_OK;
}

int ser_group_rel_action_backward(float *dz, const float *dout, int C, const ser_group_elem *ga,
                                  const ser_group_elem *gb) {
    if (ser_group_elem_check(ga) || ser_group_elem_check(gb) || C < 1) return SER_EINVAL;
    s_view iv, ov;
    if (s_same_grid(ga, gb)) {
        s_rel_views(&iv, &ov, C, ga, gb);
        s_transfer_backward(dz, iv, 1, dout, ov, 1, C);
        return SER_OK;
    }
    int64_t na = (int64_t)ga->gh * ga->gw, nb = (int64_t)gb->gh * gb->gw;
    float *pa = ser_xcalloc((size_t)(na * C), sizeof(float));
    float *pb = ser_xmalloc(sizeof(float) * (size_t)(nb * C));
    s_to_planar(pb, dout, nb, C);
    s_rel_views(&iv, &ov, 1, ga, gb);
    s_transfer_backward(pa, iv, na, pb, ov, nb, C);
    s_from_planar(dz, pa, na, C, 1);
    free(pa), free(pb);
    return SER_OK;
}

// --- relative action, composed (oracle) ------------------------------------------------------
int ser_group_rel_action_naive(float *out, const float *z, int C, const ser_group_elem *ga,
                               const ser_group_elem *gb) {
    if (ser_group_elem_check(ga) || ser_group_elem_check(gb) || C < 1) return SER_EINVAL;
    int ra, ca, ha = ga->gh, wa = ga->gw, hb = gb->gh, wb = gb->gw;
    ser_group_view_grid(ga, &ra, &ca);
    size_t na = (size_t)ha * wa * C, nb = (size_t)hb * wb * C;
    float *t = ser_xmalloc(sizeof(float) * na), *u = ser_xmalloc(sizeof(float) * na);
    float *v = ser_xmalloc(sizeof(float) * nb);
    ser_group_rot90_hwc(t, z, ra, ca, C, -ga->rot90);  // (ha, wa)
    if (ga->rot180 ^ gb->rot180) {
        ser_group_rot90_hwc(u, t, ha, wa, C, 2);
        memcpy(t, u, sizeof(float) * na);
    }
    if (ga->hflip ^ gb->hflip) {
        ser_group_hflip_hwc(u, t, ha, wa, C);
        memcpy(t, u, sizeof(float) * na);
    }
    if (ha != hb || wa != wb)
        ser_bicubic_hwc(v, hb, wb, t, ha, wa, C, 0, 0);
    else
        memcpy(v, t, sizeof(float) * nb);
    ser_group_rot90_hwc(out, v, hb, wb, C, gb->rot90);
    free(t), free(u), free(v);
    return SER_OK;
}

int ser_group_rel_action_naive_backward(float *dz, const float *dout, int C,
                                        const ser_group_elem *ga, const ser_group_elem *gb) {
    if (ser_group_elem_check(ga) || ser_group_elem_check(gb) || C < 1) return SER_EINVAL;
    int ra, ca, ha = ga->gh, wa = ga->gw, hb = gb->gh, wb = gb->gw;
    ser_group_view_grid(ga, &ra, &ca);
    size_t na = (size_t)ha * wa * C, nb = (size_t)hb * wb * C;
    float *v = ser_xcalloc(nb, sizeof(float));
    float *t = ser_xcalloc(na, sizeof(float)), *u = ser_xcalloc(na, sizeof(float));
    ser_group_rot90_hwc_backward(v, dout, hb, wb, C, gb->rot90);
    if (ha != hb || wa != wb)
        ser_bicubic_hwc_backward(t, ha, wa, v, hb, wb, C, 0, 0);
    else
        memcpy(t, v, sizeof(float) * na);
    if (ga->hflip ^ gb->hflip) {
        memset(u, 0, sizeof(float) * na);
        ser_group_hflip_hwc_backward(u, t, ha, wa, C);
        memcpy(t, u, sizeof(float) * na);
    }
    if (ga->rot180 ^ gb->rot180) {
        memset(u, 0, sizeof(float) * na);
        ser_group_rot90_hwc_backward(u, t, ha, wa, C, 2);
        memcpy(t, u, sizeof(float) * na);
    }
    // rot90_{-r_a} took z (ra, ca) to (ha, wa); its adjoint scatters back into dz.
    ser_group_rot90_hwc_backward(dz, t, ra, ca, C, -ga->rot90);
    free(t), free(u), free(v);
    return SER_OK;
}

// --- sampling --------------------------------------------------------------------------------
static int16_t s_round_grid(double x) {
    double r = nearbyint(x);  // the default rounding mode: half to even, like Python's round
    if (!(r >= 1)) r = 1;
    if (r > SER_GROUP_MAX_GRID) r = SER_GROUP_MAX_GRID;
    return (int16_t)r;
}

// Draws, in the reference's order: scale, log-aspect, rot90.
static void s_draw_geometry(ser_rng *r, int g0grid, ser_group_elem *g) {
    double u_scale = (double)ser_rng_uniform(r);
    double u_ratio = (double)ser_rng_uniform(r);
    double area = (double)g0grid * (double)g0grid *
                  (SER_GROUP_SCALE_MIN + (SER_GROUP_SCALE_MAX - SER_GROUP_SCALE_MIN) * u_scale);
    double lo = log(SER_GROUP_RATIO_MIN), hi = log(SER_GROUP_RATIO_MAX);
    double aspect = exp(lo + (hi - lo) * u_ratio);
    g->gh = s_round_grid(sqrt(area * aspect));
    g->gw = s_round_grid(sqrt(area / aspect));
    g->rot90 = (uint8_t)ser_rng_below(r, 4);
}

static void s_draw_flags(ser_rng *r, ser_group_elem *g) {
    g->rot180 = (uint8_t)ser_rng_below(r, 2);
    g->hflip = (uint8_t)ser_rng_below(r, 2);
}

int ser_group_sample_paper(ser_group_elem *g0, ser_group_elem *g1, int g0grid, uint64_t seed,
                           uint32_t step, uint32_t sample_id) {
    if (!g0 || !g1 || g0grid < 1 || g0grid > SER_GROUP_MAX_BASE_GRID) return SER_EINVAL;
    ser_group_elem *g[2] = {g0, g1};
    for (uint32_t v = 0; v < 2; v++) {
        ser_rng r;
        ser_rng_init(&r, seed, step, sample_id, v << 16 | SER_RNG_GROUP);
        s_draw_geometry(&r, g0grid, g[v]);
        s_draw_flags(&r, g[v]);
    }
    return SER_OK;
}

// Reference mode's two kinds of draw, shared by the plain and the keyed sampler. First
// (gh, gw, r) of both views from the shard's streams.
static void s_draw_shared(ser_group_elem shared[2], int g0grid, uint64_t seed,
                          ser_group_key shard) {
    for (uint32_t v = 0; v < 2; v++) {
        ser_rng r;
        ser_rng_init(&r, seed, shard.c0, shard.c1,
                     (uint32_t)(SER_GROUP_TAG_SHARED + v) << 16 | SER_RNG_GROUP);
        s_draw_geometry(&r, g0grid, &shared[v]);
    }
}

// d, f of view 0 from the sample's stream; view 1 gets their NOT.
static void s_draw_pair(ser_group_elem *g0, ser_group_elem *g1, const ser_group_elem shared[2],
                        uint64_t seed, ser_group_key sample) {
    ser_rng r;
    ser_rng_init(&r, seed, sample.c0, sample.c1,
                 (uint32_t)SER_GROUP_TAG_FLAGS << 16 | SER_RNG_GROUP);
    *g0 = shared[0];
    *g1 = shared[1];
    s_draw_flags(&r, g0);
    g1->rot180 = !g0->rot180;
    g1->hflip = !g0->hflip;
}

int ser_group_sample_reference(ser_group_elem *g0, ser_group_elem *g1, int n,
                               const uint32_t *sample_ids, int g0grid, uint64_t seed, uint32_t step,
                               uint32_t shard_id) {
    if (n < 0 || g0grid < 1 || g0grid > SER_GROUP_MAX_BASE_GRID) return SER_EINVAL;
    if (n > 0 && (!g0 || !g1 || !sample_ids)) return SER_EINVAL;
    ser_group_elem shared[2];
    s_draw_shared(shared, g0grid, seed, (ser_group_key){step, shard_id});
    for (int s = 0; s < n; s++)
        s_draw_pair(&g0[s], &g1[s], shared, seed, (ser_group_key){step, sample_ids[s]});
    return SER_OK;
}

int ser_group_sample_reference_keyed(ser_group_elem *g0, ser_group_elem *g1, int n,
                                     const ser_group_key *sample_keys, int g0grid, uint64_t seed,
                                     ser_group_key shard_key) {
    if (n < 0 || g0grid < 1 || g0grid > SER_GROUP_MAX_BASE_GRID) return SER_EINVAL;
    if (n > 0 && (!g0 || !g1 || !sample_keys)) return SER_EINVAL;
    ser_group_elem shared[2];
    s_draw_shared(shared, g0grid, seed, shard_key);
    for (int s = 0; s < n; s++) s_draw_pair(&g0[s], &g1[s], shared, seed, sample_keys[s]);
    return SER_OK;
}
