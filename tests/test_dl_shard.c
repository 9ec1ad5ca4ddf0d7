// test_dl_shard.c — deterministic shard assembly: batch geometry, bytes independent of the
// thread count, both policies and group-sampling modes, bad files in a shard, the group
// elements equal to common/nn/ser_group.h's samplers under the documented keys, and the
// equivariant pair's relative transform checked against the g0, g1 sent with it.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_dl.h"
#include "ser_group.h"
#include "ser_interp.h"
#include "ser_test.h"

static char s_tmp[256], s_root[300];

static int s_setup(void **state) {
    (void)state;
    char err[256];
    snprintf(s_tmp, sizeof s_tmp, "/tmp/ser_test_dl_shard_XXXXXX");
    if (!mkdtemp(s_tmp)) return -1;
    snprintf(s_root, sizeof s_root, "%s/data", s_tmp);
    if (ser_dl_data_make_synthetic(s_root, 3, 6, 64, 48, 7, err)) return -1;
    // One bad file: it is replaced, the shards stay deterministic.
    char p[400];
    snprintf(p, sizeof p, "%s/train/c01/i0002.jpg", s_root);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    fputs("garbage", f);
    fclose(f);
    return 0;
}

static int s_teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static void s_config(ser_dl_config *c) {
    ser_dl_config_defaults(c);
    snprintf(c->data, sizeof c->data, "%s", s_root);
    c->img = 32;
    c->patch = 8;
    c->global_batch = 12;
    c->shards = 3;
    c->eq_ratio = 0.25;  // 3 equivariant samples: the whole of the last shard but one
    c->seed = 1234;
    c->threads = 1;
}

// ser_group_elem has a padding byte: compare its fields, not its memory.
static void s_assert_same_g(const ser_group_elem g[2], const ser_group_elem h[2]) {
    for (int v = 0; v < 2; v++) {
        assert_int_equal(g[v].rot180, h[v].rot180);
        assert_int_equal(g[v].hflip, h[v].hflip);
        assert_int_equal(g[v].rot90, h[v].rot90);
        assert_int_equal(g[v].gh, h[v].gh);
        assert_int_equal(g[v].gw, h[v].gw);
    }
}

static void s_assert_same_shard(const ser_dl_shard *a, const ser_dl_shard *b) {
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->nbytes, b->nbytes);
    for (int k = 0; k < a->n; k++) {
        const ser_dl_sample *x = &a->samples[k], *y = &b->samples[k];
        assert_int_equal(x->position, y->position);
        assert_int_equal(x->index, y->index);
        assert_int_equal(x->source, y->source);
        assert_int_equal(x->label, y->label);
        assert_int_equal(x->equivariant, y->equivariant);
        s_assert_same_g(x->g, y->g);
        assert_memory_equal(x->h, y->h, sizeof x->h);
        assert_memory_equal(x->w, y->w, sizeof x->w);
    }
    assert_memory_equal(a->data, b->data, a->nbytes);
}

static ser_dl *s_new(const ser_dl_config *c) {
    char err[256] = "";
    ser_dl *dl = ser_dl_new(c, err);
    if (!dl) fprintf(stderr, "ser_dl_new: %s\n", err);
    assert_non_null(dl);
    return dl;
}

static void test_geometry(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    ser_dl *dl = s_new(&c);
    uint32_t N = ser_dl_count(dl);
    assert_int_equal(N, 18);
    assert_int_equal(ser_dl_num_eq(dl), 3);
    assert_int_equal(ser_dl_shard_size(dl), 4);
    // Three steps = 36 samples = 2 epochs: each epoch visits every index once.
    int seen[2][18];
    memset(seen, 0, sizeof seen);
    for (uint64_t t = 0; t < 3; t++)
        for (uint32_t s = 0; s < 3; s++) {
            ser_dl_shard sh;
            assert_int_equal(ser_dl_make_shard(dl, t, s, &sh), SER_OK);
            for (int k = 0; k < sh.n; k++) {
                const ser_dl_sample *x = &sh.samples[k];
                assert_int_equal(x->position, s * 4 + (uint32_t)k);
                uint64_t q = t * 12 + x->position;
                seen[q / N][x->index]++;
                assert_int_equal(x->equivariant, x->position >= 9);
                if (!x->equivariant) {
                    assert_int_equal(x->h[0], 32);
                    assert_int_equal(x->w[1], 32);
                } else {
                    int oh, ow;
                    ser_group_image_size(&x->g[1], 8, &oh, &ow);
                    assert_int_equal(x->h[1], oh);
                    assert_int_equal(x->w[1], ow);
                    assert_true(x->g[0].gh >= 3 && x->g[0].gh <= 5);  // sqrt(16*[0.7,1.3]*..)
                }
                assert_true(x->label >= 0 && x->label < 3);
            }
            ser_dl_shard_free(&sh);
        }
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < 18; i++) assert_int_equal(seen[e][i], 1);
    ser_dl_shard sh;
    assert_int_equal(ser_dl_make_shard(dl, 0, 3, &sh), SER_EINVAL);
    assert_int_equal(ser_dl_bad_files(dl), 1);
    ser_dl_destroy(&dl);
    assert_null(dl);
    // n_eq is Python's round(ratio * B): half to even.
    const struct { double r; int B, want; } cases[] = {
        {0.01, 256, 3}, {0.125, 4, 0}, {0.375, 4, 2}, {0.0, 8, 0}, {1.0, 8, 8}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_config(&c);
        c.eq_ratio = cases[i].r;
        c.global_batch = cases[i].B;
        c.shards = 1;
        dl = s_new(&c);
        assert_int_equal(ser_dl_num_eq(dl), cases[i].want);
        ser_dl_destroy(&dl);
    }
    // Config errors are reported, not fatal.
    char err[256];
    s_config(&c);
    c.shards = 5;
    assert_null(ser_dl_new(&c, err));
    fprintf(stderr, "expected error: %s\n", err);
}

// Same bytes for 1, 2 and 3 threads, for every policy and group-sampling mode, and from two
// independent pipelines (as two loader processes would be).
static void test_thread_count_independence(void **state) {
    (void)state;
    for (int policy = 0; policy < 2; policy++)
        for (int gs = 0; gs < 2; gs++) {
            ser_dl_config c;
            s_config(&c);
            c.policy = policy;
            c.group_sampling = gs;
            c.interp = policy ? SER_DL_INTERP_BICUBIC : SER_DL_INTERP_BILINEAR;
            ser_dl *a = s_new(&c);
            c.threads = 2;
            ser_dl *b = s_new(&c);
            c.threads = 3;
            ser_dl *d = s_new(&c);
            for (uint64_t t = 0; t < 3; t++)
                for (uint32_t s = 0; s < 3; s++) {
                    ser_dl_shard x, y, z;
                    assert_int_equal(ser_dl_make_shard(a, t, s, &x), SER_OK);
                    // Out of order on the others: no state carries over between shards.
                    assert_int_equal(ser_dl_make_shard(b, t, 2 - s, &y), SER_OK);
                    ser_dl_shard_free(&y);
                    assert_int_equal(ser_dl_make_shard(b, t, s, &y), SER_OK);
                    assert_int_equal(ser_dl_make_shard(d, t, s, &z), SER_OK);
                    s_assert_same_shard(&x, &y);
                    s_assert_same_shard(&x, &z);
                    ser_dl_shard_free(&x);
                    ser_dl_shard_free(&y);
                    ser_dl_shard_free(&z);
                }
            ser_dl_destroy(&a);
            ser_dl_destroy(&b);
            ser_dl_destroy(&d);
        }
}

static void test_views_differ_and_seed_matters(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    ser_dl *a = s_new(&c);
    c.seed = 99;
    ser_dl *b = s_new(&c);
    ser_dl_shard x, y;
    assert_int_equal(ser_dl_make_shard(a, 1, 0, &x), SER_OK);
    assert_int_equal(ser_dl_make_shard(b, 1, 0, &y), SER_OK);
    assert_true(memcmp(x.data, y.data, x.nbytes < y.nbytes ? x.nbytes : y.nbytes) != 0);
    for (int k = 0; k < x.n; k++)
        assert_true(memcmp(x.samples[k].view[0], x.samples[k].view[1], 32 * 32 * 3) != 0);
    ser_dl_shard_free(&x);
    ser_dl_shard_free(&y);
    ser_dl_destroy(&a);
    ser_dl_destroy(&b);
}

static void test_reference_group_sampling(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    c.group_sampling = SER_DL_GROUP_REFERENCE;
    c.global_batch = 16;
    c.shards = 2;
    c.eq_ratio = 0.75;  // 12: 4 in shard 0, 8 in shard 1
    ser_dl *dl = s_new(&c);
    for (uint64_t t = 0; t < 4; t++)
        for (uint32_t s = 0; s < 2; s++) {
            ser_dl_shard sh;
            assert_int_equal(ser_dl_make_shard(dl, t, s, &sh), SER_OK);
            const ser_dl_sample *first = NULL;
            for (int k = 0; k < sh.n; k++) {
                const ser_dl_sample *x = &sh.samples[k];
                if (!x->equivariant) continue;
                assert_int_equal(x->g[1].rot180, !x->g[0].rot180);
                assert_int_equal(x->g[1].hflip, !x->g[0].hflip);
                if (!first) first = x;
                for (int v = 0; v < 2; v++) {  // scale, aspect, rot90 shared in the shard
                    assert_int_equal(x->g[v].gh, first->g[v].gh);
                    assert_int_equal(x->g[v].gw, first->g[v].gw);
                    assert_int_equal(x->g[v].rot90, first->g[v].rot90);
                }
            }
            ser_dl_shard_free(&sh);
        }
    ser_dl_destroy(&dl);
}

// The g0, g1 of every equivariant sample are the common samplers' output under the keys of
// ser_dl.h: paper mode (seed, epoch, dataset index); reference mode geometry (seed, step,
// shard) and flags (seed, epoch, dataset index). Steps 0..5 of B = 16 over N = 18 images cross
// epochs inside a shard, so a reference-mode shard holds samples of two epochs.
static void test_group_keys(void **state) {
    (void)state;
    for (int gs = 0; gs < 2; gs++) {
        ser_dl_config c;
        s_config(&c);
        c.group_sampling = gs;
        c.global_batch = 16;
        c.shards = 2;
        c.eq_ratio = 0.75;
        c.photometric = 0;
        ser_dl *dl = s_new(&c);
        const uint32_t N = ser_dl_count(dl);
        int checked = 0, straddles = 0;
        for (uint64_t t = 0; t < 6; t++)
            for (uint32_t s = 0; s < 2; s++) {
                ser_dl_shard sh;
                assert_int_equal(ser_dl_make_shard(dl, t, s, &sh), SER_OK);
                uint32_t first_epoch = UINT32_MAX;
                for (int k = 0; k < sh.n; k++) {
                    const ser_dl_sample *x = &sh.samples[k];
                    if (!x->equivariant) continue;
                    uint32_t e = (uint32_t)((t * 16 + x->position) / N);
                    if (first_epoch == UINT32_MAX) first_epoch = e;
                    straddles += e != first_epoch;
                    ser_group_elem g[2];
                    if (gs == SER_DL_GROUP_PAPER) {
                        assert_int_equal(
                            ser_group_sample_paper(&g[0], &g[1], 32 / 8, c.seed, e, x->index),
                            SER_OK);
                    } else {
                        ser_group_key key = {e, x->index}, shard = {(uint32_t)t, s};
                        assert_int_equal(ser_group_sample_reference_keyed(&g[0], &g[1], 1, &key,
                                                                          32 / 8, c.seed, shard),
                                         SER_OK);
                    }
                    s_assert_same_g(x->g, g);
                    for (int v = 0; v < 2; v++) {
                        int h, w;
                        ser_group_image_size(&g[v], 8, &h, &w);
                        assert_int_equal(x->h[v], h);
                        assert_int_equal(x->w[v], w);
                    }
                    checked++;
                }
                ser_dl_shard_free(&sh);
            }
        assert_int_equal(checked, 6 * 12);
        if (gs == SER_DL_GROUP_REFERENCE) assert_true(straddles > 0);
        ser_dl_destroy(&dl);
    }
}

// Undoes g on a view: rot90 back, bicubic back to S x S, the flips back (the flips commute
// with the symmetric resize). out is (S, S, 3) float.
static void s_undo_group(float *out, const uint8_t *view, int h, int w,
                         const ser_group_elem *g, int P, int S) {
    int rh = P * g->gh, rw = P * g->gw, k = g->rot90 & 3;
    float *a = ser_xmalloc(sizeof(float) * rh * rw * 3), *b = ser_xmalloc(sizeof(float) * S * S * 3);
    assert_int_equal(h * w, rh * rw);
    for (int i = 0; i < rh; i++)
        for (int j = 0; j < rw; j++) {
            int oi, oj;  // where (i, j) of the resized image went under rot90(k)
            switch (k) {
                case 0: oi = i, oj = j; break;
                case 1: oi = rw - 1 - j, oj = i; break;
                case 2: oi = rh - 1 - i, oj = rw - 1 - j; break;
                default: oi = j, oj = rh - 1 - i; break;
            }
            for (int c = 0; c < 3; c++) a[(i * rw + j) * 3 + c] = view[(oi * w + oj) * 3 + c];
        }
    ser_bicubic_hwc(b, S, S, a, rh, rw, 3, 0.0, 0.0);
    int fy = g->rot180, fx = g->rot180 ^ g->hflip;
    for (int i = 0; i < S; i++)
        for (int j = 0; j < S; j++)
            for (int c = 0; c < 3; c++)
                out[(i * S + j) * 3 + c] = b[((fy ? S - 1 - i : i) * S + (fx ? S - 1 - j : j)) * 3 + c];
    free(a);
    free(b);
}

// Mean absolute difference of token means (P x P blocks) of two (S, S, 3) images.
static double s_token_diff(const float *x, const float *y, int S, int P) {
    double tot = 0;
    int T = S / P;
    for (int ti = 0; ti < T; ti++)
        for (int tj = 0; tj < T; tj++)
            for (int c = 0; c < 3; c++) {
                double sx = 0, sy = 0;
                for (int i = 0; i < P; i++)
                    for (int j = 0; j < P; j++) {
                        sx += (double)x[((ti * P + i) * S + tj * P + j) * 3 + c];
                        sy += (double)y[((ti * P + i) * S + tj * P + j) * 3 + c];
                    }
                tot += fabs(sx - sy) / (P * P);
            }
    return tot / (T * T * 3);
}

// With photometrics off, view1 = A(g1) A(g0)^-1 view0 at token granularity: undoing each
// view's g must give back the same crop. A wrong g (the other view's rot90 or flips) must not.
static void test_equivariant_relative_transform(void **state) {
    (void)state;
    for (int gs = 0; gs < 2; gs++) {
        ser_dl_config c;
        s_config(&c);
        c.img = 64;
        c.patch = 8;
        c.photometric = 0;
        c.eq_ratio = 1.0;
        c.global_batch = 18;
        c.shards = 1;
        c.crop_min = 0.5;
        c.group_sampling = gs;
        ser_dl *dl = s_new(&c);
        ser_dl_shard sh;
        assert_int_equal(ser_dl_make_shard(dl, 0, 0, &sh), SER_OK);
        const int S = 64, P = 8;
        float *r0 = ser_xmalloc(sizeof(float) * S * S * 3), *r1 = ser_xmalloc(sizeof(float) * S * S * 3);
        double worst_ok = 0, best_wrong = 1e9;
        int wrong_cases = 0;
        for (int k = 0; k < sh.n; k++) {
            const ser_dl_sample *x = &sh.samples[k];
            assert_true(x->equivariant);
            s_undo_group(r0, x->view[0], x->h[0], x->w[0], &x->g[0], P, S);
            s_undo_group(r1, x->view[1], x->h[1], x->w[1], &x->g[1], P, S);
            double d = s_token_diff(r0, r1, S, P);
            if (d > worst_ok) worst_ok = d;
            // A wrong element: view 1 undone with view 1's grid but another rotation/flip.
            ser_group_elem wrong = x->g[1];
            wrong.hflip ^= 1;
            if (x->w[1] * x->h[1] == P * wrong.gh * P * wrong.gw) {
                s_undo_group(r1, x->view[1], x->h[1], x->w[1], &wrong, P, S);
                double dw = s_token_diff(r0, r1, S, P);
                if (dw < best_wrong) best_wrong = dw;
                wrong_cases++;
            }
        }
        fprintf(stderr, "group sampling %s: token-mean |diff| right g <= %.4f, wrong g >= %.4f "
                        "(%d samples)\n", gs ? "reference" : "paper", worst_ok, best_wrong, sh.n);
        // Bicubic down- and up-sampling of a smooth image: a few grey levels at most.
        assert_true(worst_ok < 4.0);
        assert_true(wrong_cases > 0 && best_wrong > 4 * worst_ok);
        free(r0);
        free(r1);
        ser_dl_shard_free(&sh);
        ser_dl_destroy(&dl);
    }
}

// Local SER pairs (ser.local_pairs): every equivariant sample gets P pairs; undoing each view's
// group element on the local grid gives back one crop (token means within a few grey levels, a
// wrong element far off), the sizes follow the elements, the pairs' elements are their own
// draws, the shard does not depend on the thread count (photometrics on, both policies), and
// the config hash follows local_pairs only when it is set.
static void test_local_pairs(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    c.img = 64, c.photometric = 0, c.eq_ratio = 1.0, c.global_batch = 12, c.shards = 2;
    c.local_pairs = 2, c.local_size = 32, c.local_crop_min = 0.3, c.local_crop_max = 0.6;
    ser_dl *dl = s_new(&c);
    ser_dl_shard sh;
    assert_int_equal(ser_dl_make_shard(dl, 0, 1, &sh), SER_OK);
    assert_int_equal(sh.local_pairs, 2);
    const int S = 32, P = 8;
    float *r0 = ser_xmalloc(sizeof(float) * S * S * 3), *r1 = ser_xmalloc(sizeof(float) * S * S * 3);
    double worst_ok = 0, best_wrong = 1e9;
    int wrong_cases = 0, own_draws = 0;
    size_t want_bytes = 0;
    for (int i = 0; i < sh.n; i++) {
        const ser_dl_sample *x = &sh.samples[i];
        assert_true(x->equivariant);
        want_bytes += (size_t)(x->h[0] * x->w[0] + x->h[1] * x->w[1]) * 3;
        for (int k = 0; k < 2; k++) {
            for (int v = 0; v < 2; v++) {
                int h, w;
                ser_group_image_size(&x->lg[k][v], P, &h, &w);
                assert_int_equal(x->lh[k][v], h);
                assert_int_equal(x->lw[k][v], w);
                want_bytes += (size_t)h * w * 3;
                own_draws += x->lg[k][v].gh != x->g[v].gh || x->lg[k][v].rot90 != x->g[v].rot90 ||
                             x->lg[k][v].hflip != x->g[v].hflip;
            }
            s_undo_group(r0, x->lview[k][0], x->lh[k][0], x->lw[k][0], &x->lg[k][0], P, S);
            s_undo_group(r1, x->lview[k][1], x->lh[k][1], x->lw[k][1], &x->lg[k][1], P, S);
            double d = s_token_diff(r0, r1, S, P);
            if (d > worst_ok) worst_ok = d;
            ser_group_elem wrong = x->lg[k][1];
            wrong.hflip ^= 1;
            s_undo_group(r1, x->lview[k][1], x->lh[k][1], x->lw[k][1], &wrong, P, S);
            double dw = s_token_diff(r0, r1, S, P);
            if (dw < best_wrong) best_wrong = dw;
            wrong_cases++;
        }
    }
    fprintf(stderr, "local SER pairs: token-mean |diff| right g <= %.4f, wrong g >= %.4f (%d "
                    "pairs); %d of %d pair elements differ from the global pair's\n",
            worst_ok, best_wrong, wrong_cases, own_draws, 4 * sh.n);
    assert_int_equal(sh.nbytes, want_bytes);
    // The check a worker makes of a loader's reply: this shard passes; a view whose size is its
    // group element's at another patch (self-consistent, so the wire's own checks pass it), or
    // a grid above the job's bound, does not.
    char cerr[256];
    assert_int_equal(ser_dl_shard_check(&sh, P, 64, cerr), SER_OK);
    assert_int_equal(ser_dl_shard_check(&sh, P, 2, cerr), SER_ESHAPE);
    assert_non_null(strstr(cerr, "or its grid is above 2"));
    ser_dl_sample *t0 = &sh.samples[0];
    int lh0 = t0->lh[1][0], lw0 = t0->lw[1][0];
    t0->lh[1][0] = lh0 / 2, t0->lw[1][0] = lw0 / 2;  // the pair view's grid at patch 4
    assert_int_equal(ser_dl_shard_check(&sh, P, 64, cerr), SER_ESHAPE);
    print_message("%s\n", cerr);
    assert_non_null(strstr(cerr, "sample 0 local SER pair 1 view 0"));
    t0->lh[1][0] = lh0, t0->lw[1][0] = lw0;
    t0->h[1] *= 2, t0->w[1] *= 2;  // the global view's grid at patch 16
    assert_int_equal(ser_dl_shard_check(&sh, P, 64, cerr), SER_ESHAPE);
    assert_non_null(strstr(cerr, "sample 0 view 1"));
    t0->h[1] /= 2, t0->w[1] /= 2;
    assert_true(worst_ok < 4.0);
    assert_true(best_wrong > 4 * worst_ok);
    assert_true(own_draws > 0);
    free(r0), free(r1);
    ser_dl_shard_free(&sh);
    ser_dl_destroy(&dl);
    // Thread counts, with photometrics, both policies and group samplers.
    for (int policy = 0; policy < 2; policy++) {
        ser_dl_config t;
        s_config(&t);
        t.policy = policy, t.group_sampling = policy, t.local_pairs = 2, t.local_size = 16;
        t.local_crops = 1;
        ser_dl *a = s_new(&t);
        t.threads = 3;
        ser_dl *b = s_new(&t);
        for (uint32_t s2 = 0; s2 < 3; s2++) {
            ser_dl_shard x, y;
            assert_int_equal(ser_dl_make_shard(a, 1, s2, &x), SER_OK);
            assert_int_equal(ser_dl_make_shard(b, 1, s2, &y), SER_OK);
            s_assert_same_shard(&x, &y);
            for (int i = 0; i < x.n; i++)
                for (int k = 0; x.samples[i].equivariant && k < 2; k++)
                    s_assert_same_g(x.samples[i].lg[k], y.samples[i].lg[k]);
            ser_dl_shard_free(&x);
            ser_dl_shard_free(&y);
        }
        ser_dl_destroy(&a);
        ser_dl_destroy(&b);
    }
    ser_dl_config z;
    s_config(&z);
    uint64_t h0 = ser_dl_config_hash(&z);
    z.local_size = 24;  // no pairs, no local views: their geometry does not count
    assert_true(ser_dl_config_hash(&z) == h0);
    z.local_pairs = 1;
    assert_true(ser_dl_config_hash(&z) != h0);
    char err[256];
    z.local_size = 12;  // not a multiple of patch 8
    assert_int_equal(ser_dl_config_check(&z, err), SER_ECONFIG);
    assert_non_null(strstr(err, "local SER pairs"));
}

// Local views: view 2 + k of every sample (equivariant ones too) is the RandomResizedCrop of its
// own streams at local_size with scale (local_crop_min, local_crop_max), then the flip; the ops
// are those checked byte-exact against torchvision in test_dl_ops. With photometrics the shard
// still does not depend on the thread count, and the config hash follows the local views.
static void test_local_views(void **state) {
    (void)state;
    ser_dl_config c;
    s_config(&c);
    c.photometric = 0;
    c.local_crops = 3;
    c.local_size = 16;
    c.local_crop_min = 0.05, c.local_crop_max = 0.25;
    ser_dl *dl = s_new(&c);
    char err[256];
    ser_dl_data *d = ser_dl_data_open(s_root, c.kind, c.split, NULL, err);
    assert_non_null(d);
    int checked = 0, eq_seen = 0;
    for (uint32_t sh_i = 0; sh_i < 3; sh_i++) {
        ser_dl_shard sh;
        assert_int_equal(ser_dl_make_shard(dl, 0, sh_i, &sh), SER_OK);
        assert_int_equal(sh.n_local, 3);
        assert_int_equal(sh.local_size, 16);
        size_t want_bytes = (size_t)sh.n * 3 * 16 * 16 * 3;
        for (int k = 0; k < sh.n; k++)
            for (int v = 0; v < 2; v++)
                want_bytes += (size_t)sh.samples[k].h[v] * sh.samples[k].w[v] * 3;
        assert_int_equal(sh.nbytes, want_bytes);
        for (int k = 0; k < sh.n; k++) {
            const ser_dl_sample *x = &sh.samples[k];
            eq_seen += x->equivariant;
            ser_dl_image im = {0};
            uint32_t src;
            assert_int_equal(ser_dl_data_load(d, x->index, NULL, &im, &src), SER_OK);
            assert_int_equal(src, x->source);
            for (int l = 0; l < 3; l++) {
                uint8_t want[16 * 16 * 3];
                ser_rng r;
                int i, j, h, w;
                ser_rng_init(&r, c.seed, 0, x->index, (uint32_t)(2 + l) << 16 | SER_RNG_CROP);
                ser_dl_rrc_params(&r, im.w, im.h, 0.05, 0.25, 3.0 / 4.0, 4.0 / 3.0, &i, &j, &h, &w);
                double area = (double)h * w / ((double)im.w * im.h);
                assert_true(area <= 0.25 * 1.2);  // the fallback (centre crop) is larger
                ser_dl_pil_resize(want, 16, 16, im.px, im.w * 3, j, i, w, h, c.interp);
                ser_rng_init(&r, c.seed, 0, x->index, (uint32_t)(2 + l) << 16 | SER_RNG_FLIP);
                if (ser_rng_uniform(&r) < 0.5f) ser_dl_hflip_u8(want, 16, 16);
                assert_memory_equal(x->local[l], want, sizeof want);
                checked++;
            }
            assert_memory_not_equal(x->local[0], x->local[1], 16 * 16 * 3);
            ser_dl_image_free(&im);
        }
        ser_dl_shard_free(&sh);
    }
    assert_int_equal(checked, 12 * 3);
    assert_true(eq_seen == 3);
    ser_dl_data_destroy(&d);
    ser_dl_destroy(&dl);
    // Rotations (E-SSL): local view 0 is the crop of view 2's streams, view k its k-th
    // counter-clockwise quarter turn (torch.rot90(x, k, (H, W)): out[i][j] = in[j][S-1-i]).
    {
        ser_dl_config cr = c;
        cr.local_crops = 4, cr.local_rotations = 1;
        ser_dl_shard a, b;
        ser_dl *d1 = s_new(&c), *d2 = s_new(&cr);
        assert_int_equal(ser_dl_make_shard(d1, 0, 1, &a), SER_OK);
        assert_int_equal(ser_dl_make_shard(d2, 0, 1, &b), SER_OK);
        assert_true(ser_dl_config_hash(&c) != ser_dl_config_hash(&cr));
        for (int k = 0; k < a.n; k++) {
            const ser_dl_sample *x = &a.samples[k], *y = &b.samples[k];
            assert_memory_equal(x->local[0], y->local[0], 16 * 16 * 3);
            for (int l = 1; l < 4; l++)
                for (int i = 0; i < 16; i++)
                    for (int j = 0; j < 16; j++)
                        assert_memory_equal(y->local[l] + (i * 16 + j) * 3,
                                            y->local[l - 1] + (j * 16 + (15 - i)) * 3, 3);
            assert_memory_not_equal(y->local[0], y->local[2], 16 * 16 * 3);
        }
        ser_dl_shard_free(&a), ser_dl_shard_free(&b);
        ser_dl_destroy(&d1), ser_dl_destroy(&d2);
        cr.local_crops = 3;
        assert_int_not_equal(ser_dl_config_check(&cr, err), SER_OK);
        assert_non_null(strstr(err, "rotations"));
    }
    // The centre view (EquiMod's x_0): the op checked against torchvision in test_dl_ops, on
    // the sample's decoded image, unaugmented.
    {
        ser_dl_config cc = c;
        cc.photometric = 1, cc.local_crops = 1, cc.local_center = 1, cc.local_size = 24;
        ser_dl *dc = s_new(&cc);
        ser_dl_data *dd = ser_dl_data_open(s_root, cc.kind, cc.split, NULL, err);
        ser_dl_shard sh;
        assert_int_equal(ser_dl_make_shard(dc, 2, 1, &sh), SER_OK);
        for (int k = 0; k < sh.n; k++) {
            ser_dl_image im = {0};
            uint32_t src;
            uint8_t want[24 * 24 * 3];
            assert_int_equal(ser_dl_data_load(dd, sh.samples[k].index, NULL, &im, &src), SER_OK);
            ser_dl_resize_center_crop(want, 24, im.px, im.w, im.h, cc.interp);
            assert_memory_equal(sh.samples[k].local[0], want, sizeof want);
            ser_dl_image_free(&im);
        }
        ser_dl_shard_free(&sh);
        ser_dl_data_destroy(&dd);
        ser_dl_destroy(&dc);
        cc.local_crops = 2;
        assert_int_not_equal(ser_dl_config_check(&cc, err), SER_OK);
        assert_non_null(strstr(err, "centre view"));
    }
    // Every global view is what its recorded parameters (vparams) make of the decoded image:
    // crop box, flip and the photometric draw, rebuilt from the vector alone (torchvision and
    // kornia policies; invariant samples, whose views are not resampled by a group element).
    for (int pol = 0; pol < 2; pol++) {
        ser_dl_config cp = c;
        cp.photometric = 1, cp.policy = pol ? SER_DL_POLICY_KORNIA : SER_DL_POLICY_TORCHVISION;
        ser_dl *dp = s_new(&cp);
        ser_dl_data *dd = ser_dl_data_open(s_root, cp.kind, cp.split, NULL, err);
        assert_non_null(dd);
        int rebuilt = 0, jit = 0, blur = 0, sol = 0, gray = 0;
        for (int step = 0; step < 8; step++) {
            ser_dl_shard sh;
            assert_int_equal(ser_dl_make_shard(dp, (uint64_t)step, 0, &sh), SER_OK);
            for (int k = 0; k < sh.n; k++) {
                const ser_dl_sample *x = &sh.samples[k];
                if (x->equivariant) continue;
                ser_dl_image im = {0};
                uint32_t src;
                assert_int_equal(ser_dl_data_load(dd, x->index, NULL, &im, &src), SER_OK);
                for (int v = 0; v < 2; v++) {
                    const float *q = x->vparams[v];
                    uint8_t want[32 * 32 * 3];
                    float f[32 * 32 * 3], tmp[32 * 32 * 3];
                    assert_true(q[18] == (float)im.h && q[19] == (float)im.w);
                    ser_dl_pil_resize(want, 32, 32, im.px, im.w * 3, (int)q[1], (int)q[0],
                                      (int)q[3], (int)q[2], cp.interp);
                    if (q[4] != 0) ser_dl_hflip_u8(want, 32, 32);
                    ser_dl_photo p = {.jitter = q[5] != 0, .b = q[10], .c = q[11], .s = q[12],
                                      .h = q[13], .gray = q[14] != 0, .blur = q[15] != 0,
                                      .sigma = q[16], .solarize = q[17] != 0, .threshold = q[20]};
                    for (int o = 0; o < 4; o++) p.order[o] = (int)q[6 + o];
                    if (pol) {
                        ser_dl_u8_to_f32(f, want, 32 * 32 * 3);
                        ser_dl_photo_apply_f32(f, 32, 32, &p, tmp);
                        ser_dl_f32_to_u8(want, f, 32 * 32 * 3);
                    } else {
                        ser_dl_photo_apply_u8(want, 32, 32, &p);
                    }
                    assert_memory_equal(x->view[v], want, sizeof want);
                    rebuilt++, jit += p.jitter, blur += p.blur, sol += p.solarize, gray += p.gray;
                }
                ser_dl_image_free(&im);
            }
            ser_dl_shard_free(&sh);
        }
        fprintf(stderr, "%s: %d views rebuilt from vparams (jitter %d, gray %d, blur %d, "
                "solarize %d)\n", pol ? "kornia" : "torchvision", rebuilt, jit, gray, blur, sol);
        assert_true(rebuilt >= 48 && jit > 0 && blur > 0 && gray > 0 && sol > 0);
        ser_dl_data_destroy(&dd);
        ser_dl_destroy(&dp);
    }
    // Photometrics on: 1 thread and 3 threads give the same shard.
    c.photometric = 1;
    c.policy = SER_DL_POLICY_KORNIA;
    ser_dl_shard a, b;
    dl = s_new(&c);
    assert_int_equal(ser_dl_make_shard(dl, 1, 2, &a), SER_OK);
    ser_dl_destroy(&dl);
    c.threads = 3;
    dl = s_new(&c);
    assert_int_equal(ser_dl_make_shard(dl, 1, 2, &b), SER_OK);
    ser_dl_destroy(&dl);
    s_assert_same_shard(&a, &b);
    ser_dl_shard_free(&a), ser_dl_shard_free(&b);
    // The hash: local views change it; their geometry matters only when there are some.
    ser_dl_config z;
    s_config(&z);
    uint64_t h0 = ser_dl_config_hash(&z);
    z.local_size = 24;
    assert_true(ser_dl_config_hash(&z) == h0);
    z.local_crops = 2;
    uint64_t h1 = ser_dl_config_hash(&z);
    assert_true(h1 != h0);
    z.local_size = 16;
    assert_true(ser_dl_config_hash(&z) != h1);
    // Bad local settings are refused with a reason.
    z.local_size = 12;  // not a multiple of patch 8
    assert_int_not_equal(ser_dl_config_check(&z, err), SER_OK);
    assert_non_null(strstr(err, "local_size"));
    z.local_size = 16, z.local_crop_min = 0.5, z.local_crop_max = 0.3;
    assert_int_not_equal(ser_dl_config_check(&z, err), SER_OK);
    assert_non_null(strstr(err, "local crop scale"));
}

// The draws aligned pairs share (STL's aligned transform): colour jitter (flag, order, factors)
// and grayscale, and the crop box when the two source images have one size (the box is drawn
// for the image's size). Flip, blur and solarize stay each sample's own.
static int s_same_draws(const float *a, const float *b) {
    if (a[18] == b[18] && a[19] == b[19] && memcmp(a, b, 4 * sizeof(float))) return 0;
    for (int f = 5; f <= 14; f++)
        if (a[f] != b[f]) return 0;
    return 1;
}

// 1 when two views' own draws differ: flip, blur (with sigma) or solarize (with threshold).
static int s_own_draws_differ(const float *a, const float *b) {
    return a[4] != b[4] || a[15] != b[15] || a[16] != b[16] || a[17] != b[17] || a[20] != b[20];
}

// Aligned pairs (STL's aligned transform): positions 2k and 2k+1 of every shard share their
// global views' crop box (when their images have one size), colour jitter and grayscale while
// their images differ, and keep their own flips, blur and solarize; equivariant pairs share their
// one crop too. Without the flag no
// pair shares them. On the generated dataset (one size) and an ImageFolder of JPEGs of varying
// sizes. An odd shard size is refused, and the flag keys the config hash.
static void test_aligned_pairs(void **state) {
    (void)state;
    for (int synth = 0; synth < 2; synth++) {
        ser_dl_config c;
        s_config(&c);
        c.photometric = 1, c.policy = SER_DL_POLICY_KORNIA;  // 4 per shard; 9-11 equivariant
        if (synth) c.kind = SER_DL_KIND_SYNTHETIC, c.synthetic_images = 40;
        uint64_t h0 = ser_dl_config_hash(&c);
        for (int aligned = 0; aligned < 2; aligned++) {
            c.aligned_pairs = aligned;
            ser_dl *dl = s_new(&c);
            int pairs = 0, same = 0, eqpairs = 0, boxes = 0, own = 0;
            for (int step = 0; step < 4; step++)
                for (int sh = 0; sh < c.shards; sh++) {
                    ser_dl_shard d;
                    assert_int_equal(ser_dl_make_shard(dl, (uint64_t)step, (uint32_t)sh, &d), SER_OK);
                    for (int k = 0; k + 1 < d.n; k += 2) {
                        const ser_dl_sample *x = &d.samples[k], *y = &d.samples[k + 1];
                        if (x->equivariant != y->equivariant) continue;  // vparams[1] differ in kind
                        pairs++, eqpairs += x->equivariant;
                        assert_true(x->index != y->index);
                        int eq = s_same_draws(x->vparams[0], y->vparams[0]) &&
                                 s_same_draws(x->vparams[1], y->vparams[1]);
                        same += eq;
                        own += s_own_draws_differ(x->vparams[0], y->vparams[0]) ||
                               s_own_draws_differ(x->vparams[1], y->vparams[1]);
                        boxes += eq && x->vparams[0][18] == y->vparams[0][18] &&
                                 x->vparams[0][19] == y->vparams[0][19];
                        if (aligned) {
                            assert_true(eq);
                            if (!x->equivariant)  // same draws, other images
                                assert_true(memcmp(x->view[0], y->view[0], (size_t)c.img * c.img * 3));
                        }
                    }
                    ser_dl_shard_free(&d);
                }
            fprintf(stderr, "%s, aligned %d: %d pairs (%d equivariant), %d with the same draws "
                    "(%d with the same crop box too)\n", synth ? "generated" : "imagefolder",
                    aligned, pairs, eqpairs, same, boxes);
            assert_true(pairs >= 20 && eqpairs >= 4);
            if (!aligned) assert_int_equal(same, 0);
            if (aligned && synth) assert_int_equal(boxes, pairs);
            assert_true(own >= pairs / 2);  // flips, blur, solarize: each sample's own
            ser_dl_destroy(&dl);
        }
        assert_true(ser_dl_config_hash(&c) != h0);
        char err[256];
        c.shards = 4;  // 3 per shard
        assert_int_not_equal(ser_dl_config_check(&c, err), SER_OK);
        assert_non_null(strstr(err, "aligned pairs need an even shard size"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_thread_count_independence),
        cmocka_unit_test(test_views_differ_and_seed_matters),
        cmocka_unit_test(test_reference_group_sampling),
        cmocka_unit_test(test_group_keys),
        cmocka_unit_test(test_equivariant_relative_transform),
        cmocka_unit_test(test_local_views),
        cmocka_unit_test(test_local_pairs),
        cmocka_unit_test(test_aligned_pairs),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
