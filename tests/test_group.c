// test_group.c — the geometric group of SER (common/nn/ser_group.c): permutation primitives on
// hand-written torch.rot90 examples, the fused relative action against its composed twin and
// the reference's formula (bitwise), the closed-form index maps on synthetic (row, col) maps,
// the image action commuting with patchify, the channels-last image action equal to the planar
// one bit for bit, PyTorch fixtures (forward and backward), the adjoint identity, and the
// samplers (ranges, distribution, determinism, reference mode, its keyed form).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_group.h"
#include "ser_interp.h"
#include "ser_test.h"

static float *s_rand(size_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    ser_test_fill_uniform(x, n, seed, lo, hi);
    return x;
}

static double s_dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static ser_group_elem s_elem(int d, int f, int r, int gh, int gw) {
    ser_group_elem g = {(uint8_t)d, (uint8_t)f, (uint8_t)r, (int16_t)gh, (int16_t)gw};
    return g;
}

static size_t s_map_numel(const ser_group_elem *g, int C) {
    int rows, cols;
    ser_group_view_grid(g, &rows, &cols);
    return (size_t)rows * cols * C;
}

// --- elements and arguments ------------------------------------------------------------------
static void test_elem_grid_and_errors(void **state) {
    (void)state;
    ser_group_elem g = s_elem(0, 1, 1, 3, 5);
    int rows, cols, H, W;
    ser_group_view_grid(&g, &rows, &cols);
    assert_int_equal(rows, 5);
    assert_int_equal(cols, 3);
    ser_group_image_size(&g, 16, &H, &W);
    assert_int_equal(H, 80);
    assert_int_equal(W, 48);
    g.rot90 = 2;
    ser_group_view_grid(&g, &rows, &cols);
    assert_int_equal(rows, 3);
    assert_int_equal(cols, 5);
    assert_int_equal(ser_group_elem_check(&g), SER_OK);

    ser_group_elem bad[5] = {s_elem(0, 0, 0, 0, 4), s_elem(0, 0, 0, 4, -1), s_elem(2, 0, 0, 4, 4),
                             s_elem(0, 3, 0, 4, 4), s_elem(0, 0, 4, 4, 4)};
    float z[64] = {0}, out[4096];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ser_group_elem_check(&bad[i]), SER_EINVAL);
        assert_int_equal(ser_group_rel_action(out, z, 1, &bad[i], &g), SER_EINVAL);
        assert_int_equal(ser_group_rel_action(out, z, 1, &g, &bad[i]), SER_EINVAL);
        assert_int_equal(ser_group_rel_action_backward(z, out, 1, &bad[i], &g), SER_EINVAL);
        assert_int_equal(ser_group_image_action(out, z, 1, 8, 8, 2, &bad[i]), SER_EINVAL);
    }
    assert_int_equal(ser_group_elem_check(NULL), SER_EINVAL);
    assert_int_equal(ser_group_rel_action(out, z, 0, &g, &g), SER_EINVAL);
    assert_int_equal(ser_group_image_action(out, z, 1, 8, 8, 0, &g), SER_EINVAL);
    assert_int_equal(ser_group_image_action(out, z, 1, 0, 8, 2, &g), SER_EINVAL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ser_group_image_action_hwc(out, z, 1, 8, 8, 2, &bad[i]), SER_EINVAL);
    assert_int_equal(ser_group_image_action_hwc(out, z, 1, 8, 8, 0, &g), SER_EINVAL);
    assert_int_equal(ser_group_image_action_hwc(out, z, 0, 8, 8, 2, &g), SER_EINVAL);
    assert_int_equal(ser_group_image_action_hwc(out, z, 1, 8, 8, SER_GROUP_MAX_PATCH + 1, &g),
                     SER_EINVAL);

    ser_group_elem a, b;
    uint32_t ids[1] = {0};
    assert_int_equal(ser_group_sample_paper(&a, &b, 0, 1, 0, 0), SER_EINVAL);
    assert_int_equal(ser_group_sample_paper(&a, &b, SER_GROUP_MAX_BASE_GRID + 1, 1, 0, 0),
                     SER_EINVAL);
    assert_int_equal(ser_group_sample_reference(&a, &b, 1, ids, -3, 1, 0, 0), SER_EINVAL);
    assert_int_equal(ser_group_sample_reference(&a, &b, -1, ids, 14, 1, 0, 0), SER_EINVAL);
    assert_int_equal(ser_group_sample_reference(&a, &b, 1, NULL, 14, 1, 0, 0), SER_EINVAL);
    assert_int_equal(ser_group_sample_reference(NULL, NULL, 0, NULL, 14, 1, 0, 0), SER_OK);
    ser_group_key keys[1] = {{0, 0}}, shard = {0, 0};
    assert_int_equal(ser_group_sample_reference_keyed(&a, &b, 1, keys, 0, 1, shard), SER_EINVAL);
    assert_int_equal(ser_group_sample_reference_keyed(&a, &b, -1, keys, 14, 1, shard), SER_EINVAL);
    assert_int_equal(ser_group_sample_reference_keyed(&a, &b, 1, NULL, 14, 1, shard), SER_EINVAL);
    assert_int_equal(ser_group_sample_reference_keyed(NULL, NULL, 0, NULL, 14, 1, shard), SER_OK);
}

// --- permutation primitives ------------------------------------------------------------------
// The 2x3 map [[0,1,2],[3,4,5]] (C = 1) and what torch.rot90 / torch.flip return for it.
static void test_primitives_torch_examples(void **state) {
    (void)state;
    const float in[6] = {0, 1, 2, 3, 4, 5};
    const float rot[4][6] = {{0, 1, 2, 3, 4, 5},   // k=0: 2x3
                             {2, 5, 1, 4, 0, 3},   // k=1: [[2,5],[1,4],[0,3]]
                             {5, 4, 3, 2, 1, 0},   // k=2: [[5,4,3],[2,1,0]]
                             {3, 0, 4, 1, 5, 2}};  // k=3: [[3,0],[4,1],[5,2]]
    float out[6];
    for (int k = -4; k <= 7; k++) {
        ser_group_rot90_hwc(out, in, 2, 3, 1, k);
        assert_memory_equal(out, rot[((k % 4) + 4) % 4], sizeof out);
    }
    const float flip[6] = {2, 1, 0, 5, 4, 3};
    ser_group_hflip_hwc(out, in, 2, 3, 1);
    assert_memory_equal(out, flip, sizeof out);

    // Channels travel together: C = 3 copies of the same pattern, offset per channel.
    float in3[18], out3[18];
    for (int t = 0; t < 6; t++)
        for (int c = 0; c < 3; c++) in3[t * 3 + c] = in[t] + 10.0f * (float)c;
    ser_group_rot90_hwc(out3, in3, 2, 3, 3, 1);
    for (int t = 0; t < 6; t++)
        for (int c = 0; c < 3; c++) assert_true(out3[t * 3 + c] == rot[1][t] + 10.0f * (float)c);
}

// rot90 composes like the cyclic group, rot180 = vertical flip o hflip, and every backward is
// the inverse permutation accumulated into its target.
static void test_primitives_algebra_and_adjoints(void **state) {
    (void)state;
    int h = 4, w = 7, C = 3;
    size_t n = (size_t)h * w * C;
    float *x = s_rand(n, 1, -1, 1), *y = s_rand(n, 2, -1, 1);
    float *a = malloc(n * 4), *b = malloc(n * 4), *c = malloc(n * 4);
    for (int k = 0; k < 4; k++) {
        int oh = (k & 1) ? w : h, ow = (k & 1) ? h : w;
        // rot90_k then rot90_{4-k} is the identity.
        ser_group_rot90_hwc(a, x, h, w, C, k);
        ser_group_rot90_hwc(b, a, oh, ow, C, 4 - k);
        assert_memory_equal(b, x, n * 4);
        // rot90_1 applied k times equals rot90_k.
        memcpy(b, x, n * 4);
        int ch = h, cw = w;
        for (int t = 0; t < k; t++) {
            ser_group_rot90_hwc(c, b, ch, cw, C, 1);
            memcpy(b, c, n * 4);
            int s = ch;
            ch = cw, cw = s;
        }
        assert_memory_equal(b, a, n * 4);
        // Adjoint: <rot(x), y> == <x, rot^T(y)>, and the backward accumulates.
        memcpy(c, x, n * 4);
        ser_group_rot90_hwc_backward(c, y, h, w, C, k);
        for (size_t i = 0; i < n; i++) c[i] -= x[i];
        assert_true(fabs(s_dot(a, y, n) - s_dot(x, c, n)) < 1e-9);
    }
    // rot180 = flip rows o flip columns.
    ser_group_rot90_hwc(a, x, h, w, C, 2);
    ser_group_hflip_hwc(b, x, h, w, C);
    for (int i = 0; i < h; i++)
        memcpy(c + (size_t)i * w * C, b + (size_t)(h - 1 - i) * w * C, (size_t)w * C * 4);
    assert_memory_equal(a, c, n * 4);
    // hflip is an involution and self-adjoint.
    ser_group_hflip_hwc(a, x, h, w, C);
    ser_group_hflip_hwc(b, a, h, w, C);
    assert_memory_equal(b, x, n * 4);
    memset(c, 0, n * 4);
    ser_group_hflip_hwc_backward(c, y, h, w, C);
    assert_true(fabs(s_dot(a, y, n) - s_dot(x, c, n)) < 1e-9);
    free(x), free(y), free(a), free(b), free(c);
}

// PyTorch's bicubic with equal sizes is an exact copy; ser_interp's weights for src = o are
// exactly (0, 1, 0, 0), so it reproduces finite inputs bitwise too: skipping it changes nothing.
static void test_equal_size_bicubic_is_identity(void **state) {
    (void)state;
    int sizes[3][2] = {{1, 1}, {5, 3}, {14, 14}};
    for (int s = 0; s < 3; s++) {
        int H = sizes[s][0], W = sizes[s][1], C = 4;
        size_t n = (size_t)H * W * C;
        float *x = s_rand(n, 3 + s, -100, 100), *y = malloc(n * 4), *dx = calloc(n, 4);
        ser_bicubic_hwc(y, H, W, x, H, W, C, 0, 0);
        assert_memory_equal(y, x, n * 4);
        ser_bicubic_hwc_backward(dx, H, W, x, H, W, C, 0, 0);
        assert_memory_equal(dx, x, n * 4);
        free(x), free(y), free(dx);
    }
}

// --- fused vs composed, and the reference's formula ------------------------------------------
// Every combination of flags and rotations on both sides, for equal grids (pure permutation)
// and for a scaling: the fused action equals the composition of primitives bitwise.
static void test_rel_fused_equals_composed(void **state) {
    (void)state;
    int C = 3, grids[3][4] = {{3, 5, 3, 5}, {3, 5, 4, 2}, {6, 4, 3, 7}};
    int checked = 0;
    for (int gcase = 0; gcase < 3; gcase++)
        for (int code = 0; code < 256; code++) {
            ser_group_elem ga = s_elem(code & 1, (code >> 1) & 1, (code >> 2) & 3, grids[gcase][0],
                                       grids[gcase][1]);
            ser_group_elem gb = s_elem((code >> 4) & 1, (code >> 5) & 1, (code >> 6) & 3,
                                       grids[gcase][2], grids[gcase][3]);
            size_t na = s_map_numel(&ga, C), nb = s_map_numel(&gb, C);
            float *z = s_rand(na, 10 + code, -1, 1), *dout = s_rand(nb, 20 + code, -1, 1);
            float *o1 = malloc(nb * 4), *o2 = malloc(nb * 4);
            float *d1 = calloc(na, 4), *d2 = calloc(na, 4);
            assert_int_equal(ser_group_rel_action(o1, z, C, &ga, &gb), SER_OK);
            assert_int_equal(ser_group_rel_action_naive(o2, z, C, &ga, &gb), SER_OK);
            assert_memory_equal(o1, o2, nb * 4);
            assert_int_equal(ser_group_rel_action_backward(d1, dout, C, &ga, &gb), SER_OK);
            assert_int_equal(ser_group_rel_action_naive_backward(d2, dout, C, &ga, &gb), SER_OK);
            assert_memory_equal(d1, d2, na * 4);
            free(z), free(dout), free(o1), free(o2), free(d1), free(d2);
            checked++;
        }
    print_message("fused == composed (bitwise) for %d (g_a, g_b) pairs\n", checked);
}

// ser-reference §2.7: T(Z; w_t, h_t, k_inv, k_t) = rot90_{k_t}(resize(hflip(rot90_{k_inv+2}(Z))))
// with k_inv = -r_a, k_t = r_b. The reference always calls the resize.
static void s_reference_T(float *out, const float *z, int C, const ser_group_elem *ga,
                          const ser_group_elem *gb) {
    int ra, ca;
    ser_group_view_grid(ga, &ra, &ca);
    size_t na = (size_t)ra * ca * C, nb = (size_t)gb->gh * gb->gw * C;
    float *t = malloc(na * 4), *u = malloc(na * 4), *v = malloc(nb * 4);
    ser_group_rot90_hwc(t, z, ra, ca, C, -ga->rot90 + 2);  // -> (gh_a, gw_a)
    ser_group_hflip_hwc(u, t, ga->gh, ga->gw, C);
    ser_bicubic_hwc(v, gb->gh, gb->gw, u, ga->gh, ga->gw, C, 0, 0);
    ser_group_rot90_hwc(out, v, gb->gh, gb->gw, C, gb->rot90);
    free(t), free(u), free(v);
}

static void test_rel_reference_special_case(void **state) {
    (void)state;
    int C = 5, n = 4, checked = 0;
    uint32_t ids[4] = {3, 17, 18, 400};
    for (uint32_t step = 0; step < 40; step++) {
        ser_group_elem g0[4], g1[4];
        assert_int_equal(ser_group_sample_reference(g0, g1, n, ids, 6, 99, step, step % 3), SER_OK);
        for (int s = 0; s < n; s++)
            for (int dir = 0; dir < 2; dir++) {
                const ser_group_elem *ga = dir ? &g1[s] : &g0[s], *gb = dir ? &g0[s] : &g1[s];
                size_t na = s_map_numel(ga, C), nb = s_map_numel(gb, C);
                float *z = s_rand(na, step * 8 + s, -2, 2);
                float *o1 = malloc(nb * 4), *o2 = malloc(nb * 4);
                assert_int_equal(ser_group_rel_action(o1, z, C, ga, gb), SER_OK);
                s_reference_T(o2, z, C, ga, gb);
                assert_memory_equal(o1, o2, nb * 4);
                free(z), free(o1), free(o2);
                checked++;
            }
    }
    print_message("general T_ab == reference T(Z; w_t, h_t, -r_a, r_b) (bitwise), %d cases\n",
                  checked);
}

// --- closed-form index maps ------------------------------------------------------------------
// Where torch.rot90(., k) moves input position (y, x) of an (h, w) grid: k = 1 reads
// out[i,j] = in[j, w-1-i], so (y, x) lands at (w-1-x, y). Works for fractional positions.
static void s_pos_rot90(int k, int h, int w, double *y, double *x) {
    for (k = ((k % 4) + 4) % 4; k > 0; k--) {
        double ny = (w - 1) - *x, nx = *y;
        *y = ny, *x = nx;
        int t = h;
        h = w, w = t;
    }
}

// rot180^d then hflip^f on an (h, w) grid (each its own inverse).
static void s_pos_flips(int d, int f, int h, int w, double *y, double *x) {
    if (d) *y = (h - 1) - *y, *x = (w - 1) - *x;
    if (f) *x = (w - 1) - *x;
}

// Equal grid sizes: T_ab is a permutation. A map whose channels are (row, col) of view a must
// arrive at the position the closed form R^{r_b} F^f D^d R^{-r_a} predicts, exactly.
static void test_rel_index_map_permutations(void **state) {
    (void)state;
    int grids[2][2] = {{3, 5}, {4, 4}}, checked = 0;
    for (int gc = 0; gc < 2; gc++)
        for (int code = 0; code < 256; code++) {
            int gh = grids[gc][0], gw = grids[gc][1];
            ser_group_elem ga = s_elem(code & 1, (code >> 1) & 1, (code >> 2) & 3, gh, gw);
            ser_group_elem gb = s_elem((code >> 4) & 1, (code >> 5) & 1, (code >> 6) & 3, gh, gw);
            int ra, ca, rb, cb;
            ser_group_view_grid(&ga, &ra, &ca);
            ser_group_view_grid(&gb, &rb, &cb);
            float *z = malloc((size_t)ra * ca * 2 * 4), *out = malloc((size_t)rb * cb * 2 * 4);
            for (int i = 0; i < ra; i++)
                for (int j = 0; j < ca; j++)
                    z[(i * ca + j) * 2] = (float)i, z[(i * ca + j) * 2 + 1] = (float)j;
            assert_int_equal(ser_group_rel_action(out, z, 2, &ga, &gb), SER_OK);
            for (int i = 0; i < ra; i++)
                for (int j = 0; j < ca; j++) {
                    double y = i, x = j;
                    s_pos_rot90(-ga.rot90, ra, ca, &y, &x);  // -> (gh, gw)
                    s_pos_flips(ga.rot180 ^ gb.rot180, ga.hflip ^ gb.hflip, gh, gw, &y, &x);
                    s_pos_rot90(gb.rot90, gh, gw, &y, &x);  // -> (rb, cb)
                    int oi = (int)y, oj = (int)x;
                    assert_true(oi >= 0 && oi < rb && oj >= 0 && oj < cb);
                    assert_true(out[(oi * cb + oj) * 2] == (float)i);
                    assert_true(out[(oi * cb + oj) * 2 + 1] == (float)j);
                }
            free(z), free(out);
            checked++;
        }
    print_message("closed-form index maps hold exactly for %d permutation pairs\n", checked);
}

// Keys' cubic convolution kernel, A = -0.75, in double (independent of ser_interp).
static double s_keys(double t) {
    const double A = -0.75;
    t = fabs(t);
    if (t <= 1) return ((A + 2) * t - (A + 3)) * t * t + 1;
    if (t < 2) return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A;
    return 0;
}

// Different grid sizes: on the (row, col) map each view-b token must hold the bicubic resample
// (PyTorch's rule: src = (o+0.5)*in/out - 0.5, taps clamped) of the linear field, read through
// the closed-form chain. Keys' kernel with A = -0.75 does not reproduce linear functions, so
// the value is not the ideal position; how far it is from it is reported (a wrong orientation
// would be off by whole grids).
static void test_rel_index_map_scaling(void **state) {
    (void)state;
    double max_err = 0, max_geo = 0, max_geo_interior = 0;
    int checked = 0;
    for (uint32_t s = 0; s < 60; s++) {
        ser_group_elem ga, gb;
        assert_int_equal(ser_group_sample_paper(&ga, &gb, 7, 5, 1, s), SER_OK);
        int ra, ca, rb, cb, ha = ga.gh, wa = ga.gw, hb = gb.gh, wb = gb.gw;
        ser_group_view_grid(&ga, &ra, &ca);
        ser_group_view_grid(&gb, &rb, &cb);
        int d = ga.rot180 ^ gb.rot180, f = ga.hflip ^ gb.hflip;
        float *z = malloc((size_t)ra * ca * 2 * 4), *out = malloc((size_t)rb * cb * 2 * 4);
        for (int i = 0; i < ra; i++)
            for (int j = 0; j < ca; j++)
                z[(i * ca + j) * 2] = (float)i, z[(i * ca + j) * 2 + 1] = (float)j;
        assert_int_equal(ser_group_rel_action(out, z, 2, &ga, &gb), SER_OK);
        for (int i = 0; i < rb; i++)
            for (int j = 0; j < cb; j++) {
                // View-b token -> position in the resized grid W = rot90_{-r_b}(out).
                double yw = i, xw = j;
                s_pos_rot90(-gb.rot90, rb, cb, &yw, &xw);
                double sy = (yw + 0.5) * ha / hb - 0.5, sx = (xw + 0.5) * wa / wb - 0.5;
                double pred[2] = {0, 0}, ideal[2];
                int interior = 1;
                for (int ky = -1; ky <= 2; ky++)
                    for (int kx = -1; kx <= 2; kx++) {
                        int ty = (int)floor(sy) + ky, tx = (int)floor(sx) + kx;
                        if (ty < 0 || ty >= ha || tx < 0 || tx >= wa) interior = 0;
                        ty = ty < 0 ? 0 : (ty >= ha ? ha - 1 : ty);
                        tx = tx < 0 ? 0 : (tx >= wa ? wa - 1 : tx);
                        double wgt = s_keys(sy - floor(sy) - ky) * s_keys(sx - floor(sx) - kx);
                        // Pre-resize position (ty, tx) -> view-a position: undo the flips,
                        // then rot90_{r_a} (z = rot90_{r_a}(U)).
                        double y = ty, x = tx;
                        s_pos_flips(d, f, ha, wa, &y, &x);
                        s_pos_rot90(ga.rot90, ha, wa, &y, &x);
                        pred[0] += wgt * y, pred[1] += wgt * x;
                    }
                double y = sy, x = sx;
                s_pos_flips(d, f, ha, wa, &y, &x);
                s_pos_rot90(ga.rot90, ha, wa, &y, &x);
                ideal[0] = y, ideal[1] = x;
                for (int c = 0; c < 2; c++) {
                    double got = out[(i * cb + j) * 2 + c];
                    double e = fabs(got - pred[c]), g = fabs(got - ideal[c]);
                    if (e > 2e-5) {
                        print_error("pair %u token (%d,%d) ch %d: got %g, predicted %g\n", s, i, j,
                                    c, got, pred[c]);
                        fail();
                    }
                    max_err = e > max_err ? e : max_err;
                    max_geo = g > max_geo ? g : max_geo;
                    if (interior) max_geo_interior = g > max_geo_interior ? g : max_geo_interior;
                }
            }
        free(z), free(out);
        checked++;
    }
    print_message(
        "scaling pairs: %d, max |T(Z) - bicubic prediction| = %.2e; distance from the "
        "ideal position: max %.3f tokens (%.3f away from clamped borders)\n",
        checked, max_err, max_geo, max_geo_interior);
    assert_true(max_geo < 0.5);
}

// --- commuting with patchify -----------------------------------------------------------------
// img (C, H, W) -> map (H/P, W/P, C) channels-last, the mean of each P x P patch.
static void s_pool(float *map, const float *img, int C, int H, int W, int P) {
    int gh = H / P, gw = W / P;
    for (int i = 0; i < gh; i++)
        for (int j = 0; j < gw; j++)
            for (int c = 0; c < C; c++) {
                float s = 0;
                for (int y = 0; y < P; y++)
                    for (int x = 0; x < P; x++)
                        s += img[((size_t)c * H + i * P + y) * W + j * P + x];
                map[((size_t)i * gw + j) * C + c] = s / (float)(P * P);
            }
}

// T_ab(pool(view_a)) vs pool(view_b) for views made by the image action of the same base image.
static double s_commute_err(const float *img, int C, int g0, int P, const ser_group_elem *ga,
                            const ser_group_elem *gb) {
    int H = g0 * P, Ha, Wa, Hb, Wb;
    ser_group_image_size(ga, P, &Ha, &Wa);
    ser_group_image_size(gb, P, &Hb, &Wb);
    float *va = malloc((size_t)C * Ha * Wa * 4), *vb = malloc((size_t)C * Hb * Wb * 4);
    float *ma = malloc((size_t)C * Ha * Wa * 4), *mb = malloc((size_t)C * Hb * Wb * 4);
    float *t = malloc((size_t)C * Hb * Wb * 4);
    assert_int_equal(ser_group_image_action(va, img, C, H, H, P, ga), SER_OK);
    assert_int_equal(ser_group_image_action(vb, img, C, H, H, P, gb), SER_OK);
    s_pool(ma, va, C, Ha, Wa, P);
    s_pool(mb, vb, C, Hb, Wb, P);
    assert_int_equal(ser_group_rel_action(t, ma, C, ga, gb), SER_OK);
    double e = 0;
    size_t n = (size_t)(Hb / P) * (Wb / P) * C;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs((double)t[i] - (double)mb[i]));
    free(va), free(vb), free(ma), free(mb), free(t);
    return e;
}

static void test_commutes_with_patchify(void **state) {
    (void)state;
    int C = 2, g0 = 5, P = 4, H = g0 * P;
    // Integer pixels: patch sums and the division by P*P = 16 are exact in float, so pure
    // rotations and flips must commute bitwise.
    float *img = malloc((size_t)C * H * H * 4);
    ser_test_fill_uniform(img, (size_t)C * H * H, 41, 0, 256);
    for (int i = 0; i < C * H * H; i++) img[i] = floorf(img[i]);
    for (int code = 0; code < 256; code++) {
        ser_group_elem ga = s_elem(code & 1, (code >> 1) & 1, (code >> 2) & 3, g0, g0);
        ser_group_elem gb = s_elem((code >> 4) & 1, (code >> 5) & 1, (code >> 6) & 3, g0, g0);
        assert_true(s_commute_err(img, C, g0, P, &ga, &gb) == 0.0);
    }
    // Scalings on a smooth image (values in [-1.5, 1.5]): close, not equal. Both sides
    // approximate the same continuous resample, one in pixel space and one on patch means.
    int g1 = 8;
    H = g1 * P;
    float *sm = malloc((size_t)C * H * H * 4);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < H; x++) {
            double u = (y + 0.5) / H, v = (x + 0.5) / H;
            sm[y * H + x] = (float)(cos(M_PI * u) + 0.5 * cos(M_PI * v));
            sm[H * H + y * H + x] = (float)(sin(M_PI * v) * cos(0.5 * M_PI * u));
        }
    double max_e = 0;
    for (uint32_t s = 0; s < 40; s++) {
        ser_group_elem ga, gb;
        assert_int_equal(ser_group_sample_paper(&ga, &gb, g1, 8, 2, s), SER_OK);
        double e = s_commute_err(sm, C, g1, P, &ga, &gb);
        max_e = e > max_e ? e : max_e;
    }
    print_message(
        "T o patchify vs patchify o image action: rotations/flips exact (512 pairs), "
        "scalings max abs err %.4f on a field of range 3\n",
        max_e);
    assert_true(max_e < 0.05);
    free(img), free(sm);
}

// --- channels-last image action ---------------------------------------------------------------
// (C, H, W) <-> (H, W, C).
static void s_chw_to_hwc(float *dst, const float *src, int C, int H, int W) {
    for (int c = 0; c < C; c++)
        for (int t = 0; t < H * W; t++) dst[(size_t)t * C + c] = src[(size_t)c * H * W + t];
}

// The _hwc action on transposed data is the CHW action transposed, bit for bit: every (d, f, r)
// with an identity resize, downscales, upscales and non-square grids, on a non-square input.
static void test_image_action_hwc_equals_chw(void **state) {
    (void)state;
    const int grids[][3] = {{6, 4, 4}, {3, 2, 8}, {9, 7, 4}, {5, 8, 4}, {1, 1, 4}, {20, 13, 2}};
    int H = 24, W = 16, checked = 0;
    for (int C = 1; C <= 3; C++) {
        size_t n = (size_t)C * H * W;
        float *chw = s_rand(n, 100 + (uint64_t)C, -1, 2), *hwc = malloc(n * 4);
        s_chw_to_hwc(hwc, chw, C, H, W);
        for (size_t gi = 0; gi < sizeof grids / sizeof grids[0]; gi++)
            for (int code = 0; code < 16; code++) {
                int P = grids[gi][2];
                ser_group_elem g = s_elem(code & 1, (code >> 1) & 1, code >> 2, grids[gi][0],
                                          grids[gi][1]);
                int OH, OW;
                ser_group_image_size(&g, P, &OH, &OW);
                size_t no = (size_t)C * OH * OW;
                float *a = malloc(no * 4), *b = malloc(no * 4), *bt = malloc(no * 4);
                assert_int_equal(ser_group_image_action(a, chw, C, H, W, P, &g), SER_OK);
                assert_int_equal(ser_group_image_action_hwc(b, hwc, C, H, W, P, &g), SER_OK);
                s_chw_to_hwc(bt, a, C, OH, OW);
                assert_memory_equal(b, bt, no * 4);
                free(a), free(b), free(bt);
                checked++;
            }
        free(chw), free(hwc);
    }
    print_message("image action: HWC == transposed CHW bitwise in %d cases\n", checked);
}

// With an identity resize the channels-last action is a pure index map: out[a, b] = in[y, x]
// exactly, with (y, x) from inverting torch.rot90, then hflip, then rot180 (what the data
// loader's HWC views rely on).
static void test_image_action_hwc_index_maps(void **state) {
    (void)state;
    enum { P = 2, H = 4, W = 6, C = 3 };  // grid 2 x 3 tokens of 2 px
    float in[H * W * C], out[H * W * C];
    for (int i = 0; i < H * W * C; i++) in[i] = (float)i;
    for (int code = 0; code < 16; code++) {
        int d = code & 1, f = (code >> 1) & 1, r = code >> 2, oh, ow;
        ser_group_elem g = s_elem(d, f, r, H / P, W / P);
        ser_group_image_size(&g, P, &oh, &ow);
        assert_int_equal(oh * ow, H * W);
        assert_int_equal(ser_group_image_action_hwc(out, in, C, H, W, P, &g), SER_OK);
        for (int a = 0; a < oh; a++)
            for (int b = 0; b < ow; b++) {
                int y, x;
                switch (r) {
                    case 0: y = a, x = b; break;
                    case 1: y = b, x = W - 1 - a; break;
                    case 2: y = H - 1 - a, x = W - 1 - b; break;
                    default: y = H - 1 - b, x = a; break;
                }
                if (f) x = W - 1 - x;
                if (d) y = H - 1 - y, x = W - 1 - x;
                for (int c = 0; c < C; c++)
                    assert_true(out[(a * ow + b) * C + c] == in[(y * W + x) * C + c]);
            }
    }
}

// --- PyTorch fixtures ------------------------------------------------------------------------
#define RTOL 1e-5f
static float s_atol(const float *ref, size_t n) {
    return 1e-6f * ser_test_maxabs(ref, n) + 1e-7f;
}

static void test_fixture_rel_action(void **state) {
    (void)state;
    ser_st_file *fx = ser_test_open_fixture("group.safetensors");
    int n = atoi(ser_st_meta(fx, "n_rel"));
    assert_true(n >= 8);
    for (int i = 0; i < n; i++) {
        char key[64], label[64];
        size_t np, na, nb;
#define FX(name, cnt) \
    (snprintf(key, sizeof key, "rel.%d.%s", i, name), ser_test_tensor(fx, key, cnt))
        float *p = FX("params", &np), *z = FX("z", &na), *out = FX("out", &nb);
        float *dout = FX("dout", NULL), *dz = FX("dz", NULL);
#undef FX
        assert_int_equal(np, 10);
        ser_group_elem ga = s_elem((int)p[0], (int)p[1], (int)p[2], (int)p[3], (int)p[4]);
        ser_group_elem gb = s_elem((int)p[5], (int)p[6], (int)p[7], (int)p[8], (int)p[9]);
        assert_int_equal(na, s_map_numel(&ga, 3));
        assert_int_equal(nb, s_map_numel(&gb, 3));
        float *got = malloc(nb * 4), *gz = malloc(na * 4);
        for (int naive = 0; naive < 2; naive++) {
            snprintf(label, sizeof label, "rel.%d.out%s", i, naive ? " (naive)" : "");
            (naive ? ser_group_rel_action_naive : ser_group_rel_action)(got, z, 3, &ga, &gb);
            SER_ASSERT_CLOSE(label, got, out, nb, s_atol(out, nb), RTOL);
            // Accumulation: start from 1 and subtract it again.
            for (size_t t = 0; t < na; t++) gz[t] = 1.0f;
            (naive ? ser_group_rel_action_naive_backward : ser_group_rel_action_backward)(
                gz, dout, 3, &ga, &gb);
            for (size_t t = 0; t < na; t++) gz[t] -= 1.0f;
            snprintf(label, sizeof label, "rel.%d.dz%s", i, naive ? " (naive)" : "");
            // The +1/-1 round trip costs up to 2^-24 absolute.
            SER_ASSERT_CLOSE(label, gz, dz, na, s_atol(dz, na) + 2e-7f, RTOL);
        }
        free(p), free(z), free(out), free(dout), free(dz), free(got), free(gz);
    }
    ser_st_destroy(&fx);
}

static void test_fixture_image_action(void **state) {
    (void)state;
    ser_st_file *fx = ser_test_open_fixture("group.safetensors");
    int n = atoi(ser_st_meta(fx, "n_img"));
    assert_true(n >= 4);
    for (int i = 0; i < n; i++) {
        char key[64], label[64];
        size_t np, nx, no;
        snprintf(key, sizeof key, "img.%d.params", i);
        float *p = ser_test_tensor(fx, key, &np);
        snprintf(key, sizeof key, "img.%d.x", i);
        float *x = ser_test_tensor(fx, key, &nx);
        snprintf(key, sizeof key, "img.%d.out", i);
        float *out = ser_test_tensor(fx, key, &no);
        ser_group_elem g = s_elem((int)p[0], (int)p[1], (int)p[2], (int)p[3], (int)p[4]);
        int P = (int)p[5], H, W;
        ser_group_image_size(&g, P, &H, &W);
        assert_int_equal(nx, 3 * 8 * 8);
        assert_int_equal(no, (size_t)3 * H * W);
        float *got = malloc(no * 4);
        assert_int_equal(ser_group_image_action(got, x, 3, 8, 8, P, &g), SER_OK);
        snprintf(label, sizeof label, "img.%d.out", i);
        SER_ASSERT_CLOSE(label, got, out, no, s_atol(out, no), RTOL);
        // The channels-last action gives the same bits on the transposed image.
        float *xt = malloc(nx * 4), *gt = malloc(no * 4), *got_t = malloc(no * 4);
        s_chw_to_hwc(xt, x, 3, 8, 8);
        assert_int_equal(ser_group_image_action_hwc(gt, xt, 3, 8, 8, P, &g), SER_OK);
        s_chw_to_hwc(got_t, got, 3, H, W);
        assert_memory_equal(gt, got_t, no * 4);
        free(p), free(x), free(out), free(got), free(xt), free(gt), free(got_t);
    }
    ser_st_destroy(&fx);
}

// --- adjoint ---------------------------------------------------------------------------------
static void test_rel_adjoint(void **state) {
    (void)state;
    int C = 4;
    double max_rel = 0;
    for (uint32_t s = 0; s < 50; s++) {
        ser_group_elem ga, gb;
        assert_int_equal(ser_group_sample_paper(&ga, &gb, 6 + (int)(s % 5), 13, 0, s), SER_OK);
        size_t na = s_map_numel(&ga, C), nb = s_map_numel(&gb, C);
        float *z = s_rand(na, 100 + s, -1, 1), *y = s_rand(nb, 200 + s, -1, 1);
        float *tz = malloc(nb * 4), *ty = calloc(na, 4);
        ser_group_rel_action(tz, z, C, &ga, &gb);
        ser_group_rel_action_backward(ty, y, C, &ga, &gb);
        double l = s_dot(tz, y, nb), r = s_dot(z, ty, na);
        double rel = fabs(l - r) / fmax(1.0, fabs(l));
        max_rel = rel > max_rel ? rel : max_rel;
        free(z), free(y), free(tz), free(ty);
    }
    print_message("<T z, y> vs <z, T^T y>: max rel diff %.2e over 50 pairs\n", max_rel);
    assert_true(max_rel < 1e-5);
}

// --- sampling --------------------------------------------------------------------------------
typedef struct {
    int lo, hi;
    double mean_h, mean_w, mean_area, r_freq[4], d_freq, f_freq;
} s_stats;

static s_stats s_sample_stats(int g0, int n) {
    s_stats st = {1 << 30, -1, 0, 0, 0, {0, 0, 0, 0}, 0, 0};
    for (int s = 0; s < n; s++) {
        ser_group_elem g[2];
        assert_int_equal(ser_group_sample_paper(&g[0], &g[1], g0, 2024, 7, (uint32_t)s), SER_OK);
        for (int v = 0; v < 2; v++) {
            assert_int_equal(ser_group_elem_check(&g[v]), SER_OK);
            int a = g[v].gh < g[v].gw ? g[v].gh : g[v].gw,
                b = g[v].gh > g[v].gw ? g[v].gh : g[v].gw;
            st.lo = a < st.lo ? a : st.lo;
            st.hi = b > st.hi ? b : st.hi;
            st.mean_h += g[v].gh, st.mean_w += g[v].gw, st.mean_area += g[v].gh * g[v].gw;
            st.r_freq[g[v].rot90] += 1;
            st.d_freq += g[v].rot180, st.f_freq += g[v].hflip;
        }
    }
    double m = 2.0 * n;
    st.mean_h /= m, st.mean_w /= m, st.mean_area /= m, st.d_freq /= m, st.f_freq /= m;
    for (int r = 0; r < 4; r++) st.r_freq[r] /= m;
    return st;
}

static void test_sample_paper_ranges_and_distribution(void **state) {
    (void)state;
    int g0s[3] = {14, 8, 6}, lo_exp[3] = {10, 6, 4}, hi_exp[3] = {18, 11, 8};
    for (int t = 0; t < 3; t++) {
        int g0 = g0s[t];
        s_stats st = s_sample_stats(g0, 20000);
        print_message(
            "g0=%2d: gh,gw in [%d, %d]; mean gh %.3f gw %.3f gh*gw %.2f (g0^2 = %d); "
            "r freq %.3f %.3f %.3f %.3f; d %.3f f %.3f\n",
            g0, st.lo, st.hi, st.mean_h, st.mean_w, st.mean_area, g0 * g0, st.r_freq[0],
            st.r_freq[1], st.r_freq[2], st.r_freq[3], st.d_freq, st.f_freq);
        assert_true(st.lo >= lo_exp[t] && st.hi <= hi_exp[t]);
        // The extremes are reachable and show up in 40000 draws (11 at g0 = 8 is too rare).
        assert_int_equal(st.lo, lo_exp[t]);
        if (g0 != 8) assert_int_equal(st.hi, hi_exp[t]);
        // E[area] = g0^2 (rounding adds little); gh and gw are exchangeable.
        assert_true(fabs(st.mean_area / (g0 * g0) - 1.0) < 0.02);
        assert_true(fabs(st.mean_h - st.mean_w) < 0.05);
        for (int r = 0; r < 4; r++) assert_true(fabs(st.r_freq[r] - 0.25) < 0.015);
        assert_true(fabs(st.d_freq - 0.5) < 0.015 && fabs(st.f_freq - 0.5) < 0.015);
    }
}

static int s_elem_eq(const ser_group_elem *a, const ser_group_elem *b) {
    return a->rot180 == b->rot180 && a->hflip == b->hflip && a->rot90 == b->rot90 &&
           a->gh == b->gh && a->gw == b->gw;
}

static void test_sample_determinism(void **state) {
    (void)state;
    int diff_step = 0, diff_seed = 0, diff_view = 0;
    for (uint32_t s = 0; s < 200; s++) {
        ser_group_elem a0, a1, b0, b1, c0, c1, e0, e1;
        ser_group_sample_paper(&a0, &a1, 14, 1, 5, s);
        ser_group_sample_paper(&b0, &b1, 14, 1, 5, s);
        assert_true(s_elem_eq(&a0, &b0) && s_elem_eq(&a1, &b1));
        ser_group_sample_paper(&c0, &c1, 14, 1, 6, s);
        ser_group_sample_paper(&e0, &e1, 14, 2, 5, s);
        diff_step += !s_elem_eq(&a0, &c0);
        diff_seed += !s_elem_eq(&a0, &e0);
        diff_view += !s_elem_eq(&a0, &a1);
    }
    // Two independent elements coincide with probability about 1/(4*4*9*9) per draw.
    assert_true(diff_step > 190 && diff_seed > 190 && diff_view > 190);
}

static void test_sample_reference_mode(void **state) {
    (void)state;
    enum { n = 6 };
    uint32_t ids[n] = {0, 1, 2, 100, 101, 7777};
    int flag_counts[2] = {0, 0}, geo_differs = 0;
    for (uint32_t step = 0; step < 300; step++) {
        ser_group_elem g0[n], g1[n];
        assert_int_equal(ser_group_sample_reference(g0, g1, n, ids, 14, 5, step, 3), SER_OK);
        for (int s = 0; s < n; s++) {
            assert_int_equal(ser_group_elem_check(&g0[s]), SER_OK);
            assert_int_equal(ser_group_elem_check(&g1[s]), SER_OK);
            // Geometry shared by the group, per view.
            assert_true(g0[s].gh == g0[0].gh && g0[s].gw == g0[0].gw && g0[s].rot90 == g0[0].rot90);
            assert_true(g1[s].gh == g1[0].gh && g1[s].gw == g1[0].gw && g1[s].rot90 == g1[0].rot90);
            assert_true(g0[s].gh >= 10 && g0[s].gh <= 18 && g1[s].gw >= 10 && g1[s].gw <= 18);
            // View 1's flags are the NOT of view 0's: the relative action always contains the
            // vertical flip F.D.
            assert_int_equal(g0[s].rot180 ^ g1[s].rot180, 1);
            assert_int_equal(g0[s].hflip ^ g1[s].hflip, 1);
            flag_counts[0] += g0[s].rot180, flag_counts[1] += g0[s].hflip;
        }
        geo_differs += g0[0].gh != g1[0].gh || g0[0].gw != g1[0].gw || g0[0].rot90 != g1[0].rot90;
        // A sample's flags depend on its id, not on which other samples share the group.
        ser_group_elem h0, h1;
        ser_group_sample_reference(&h0, &h1, 1, &ids[4], 14, 5, step, 3);
        assert_true(s_elem_eq(&h0, &g0[4]) && s_elem_eq(&h1, &g1[4]));
    }
    print_message(
        "reference mode: d freq %.3f, f freq %.3f, views differ in geometry in %d/300 "
        "steps\n",
        flag_counts[0] / 1800.0, flag_counts[1] / 1800.0, geo_differs);
    assert_true(fabs(flag_counts[0] / 1800.0 - 0.5) < 0.05);
    assert_true(fabs(flag_counts[1] / 1800.0 - 0.5) < 0.05);
    assert_true(geo_differs > 280);
    // Shards are independent streams.
    int shard_differs = 0;
    for (uint32_t step = 0; step < 100; step++) {
        ser_group_elem a0, a1, b0, b1;
        ser_group_sample_reference(&a0, &a1, 1, ids, 14, 5, step, 0);
        ser_group_sample_reference(&b0, &b1, 1, ids, 14, 5, step, 1);
        shard_differs += a0.gh != b0.gh || a0.gw != b0.gw || a0.rot90 != b0.rot90;
    }
    assert_true(shard_differs > 90);
}

// The keyed reference sampler: with keys (step, shard_id) and (step, sample_id) it is the plain
// one; the geometry follows the shard key alone and the flags the sample key alone, so samples
// of one shard may carry keys from different words (the loader's epochs).
static void test_sample_reference_keyed(void **state) {
    (void)state;
    enum { n = 5 };
    uint32_t ids[n] = {0, 3, 9, 4096, 123456};
    int flags_moved = 0, geo_moved = 0;
    for (uint32_t step = 0; step < 200; step++) {
        ser_group_elem a0[n], a1[n], b0[n], b1[n], c0[n], c1[n];
        ser_group_key keys[n], other[n];
        for (int s = 0; s < n; s++) {
            keys[s] = (ser_group_key){step, ids[s]};
            other[s] = (ser_group_key){step + 1000 + (uint32_t)s, ids[s]};
        }
        ser_group_key shard = {step, step % 4};
        assert_int_equal(ser_group_sample_reference(a0, a1, n, ids, 14, 5, step, step % 4), SER_OK);
        assert_int_equal(ser_group_sample_reference_keyed(b0, b1, n, keys, 14, 5, shard), SER_OK);
        for (int s = 0; s < n; s++)
            assert_true(s_elem_eq(&a0[s], &b0[s]) && s_elem_eq(&a1[s], &b1[s]));
        // Other sample keys: same geometry, per-view, shared; flags redrawn and still NOT.
        assert_int_equal(ser_group_sample_reference_keyed(c0, c1, n, other, 14, 5, shard), SER_OK);
        for (int s = 0; s < n; s++) {
            assert_true(c0[s].gh == a0[s].gh && c0[s].gw == a0[s].gw && c0[s].rot90 == a0[s].rot90);
            assert_true(c1[s].gh == a1[s].gh && c1[s].gw == a1[s].gw && c1[s].rot90 == a1[s].rot90);
            assert_int_equal(c0[s].rot180 ^ c1[s].rot180, 1);
            assert_int_equal(c0[s].hflip ^ c1[s].hflip, 1);
            flags_moved += c0[s].rot180 != a0[s].rot180 || c0[s].hflip != a0[s].hflip;
        }
        // Another shard key: same flags, new geometry.
        ser_group_key shard2 = {step + 7, step % 4};
        assert_int_equal(ser_group_sample_reference_keyed(c0, c1, n, keys, 14, 5, shard2), SER_OK);
        for (int s = 0; s < n; s++)
            assert_true(c0[s].rot180 == a0[s].rot180 && c0[s].hflip == a0[s].hflip);
        geo_moved += c0[0].gh != a0[0].gh || c0[0].gw != a0[0].gw || c0[0].rot90 != a0[0].rot90;
    }
    // Independent flags agree with probability 1/4, independent geometry about 1/(4*9*9).
    print_message("keyed reference mode: flags redrawn in %d/1000, geometry in %d/200\n",
                  flags_moved, geo_moved);
    assert_true(flags_moved > 650 && flags_moved < 850);
    assert_true(geo_moved > 180);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_elem_grid_and_errors),
        cmocka_unit_test(test_primitives_torch_examples),
        cmocka_unit_test(test_primitives_algebra_and_adjoints),
        cmocka_unit_test(test_equal_size_bicubic_is_identity),
        cmocka_unit_test(test_rel_fused_equals_composed),
        cmocka_unit_test(test_rel_reference_special_case),
        cmocka_unit_test(test_rel_index_map_permutations),
        cmocka_unit_test(test_rel_index_map_scaling),
        cmocka_unit_test(test_commutes_with_patchify),
        cmocka_unit_test(test_image_action_hwc_equals_chw),
        cmocka_unit_test(test_image_action_hwc_index_maps),
        cmocka_unit_test(test_fixture_rel_action),
        cmocka_unit_test(test_fixture_image_action),
        cmocka_unit_test(test_rel_adjoint),
        cmocka_unit_test(test_sample_paper_ranges_and_distribution),
        cmocka_unit_test(test_sample_determinism),
        cmocka_unit_test(test_sample_reference_mode),
        cmocka_unit_test(test_sample_reference_keyed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
