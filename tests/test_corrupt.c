// test_corrupt.c — the common corruptions (ser_corrupt.h) against their definitions in
// Hendrycks' make_cifar_c.py / make_imagenet_c.py, on small images.
//
// Closed forms are recomputed independently and compared byte for byte (within 1 where the
// two computations may truncate on different sides of an integer): brightness, contrast,
// pixelate, JPEG, defocus (the disk kernel built naively), zoom blur (on a ramp, where
// linear interpolation is exact). The random ones are checked through properties of their
// definitions (glass: a pure shuffle at CIFAR severity 1; snow: the blend and the half-turn
// symmetry of the snow term; frost: the blend weights; fog: a fractal layer independent of
// the image; elastic: the affine part) and statistically, with tolerances of at least 4.5
// standard errors, so a correct implementation fails a check with probability below 1e-5 (and,
// the draws being deterministic, either always or never). Every type x severity also runs at
// several sizes with guard bytes around the output, and the severity order is checked.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "ser_base.h"
#include "ser_corrupt.h"
#include "ser_rng.h"
#include "ser_test.h"

// The constants the tests need, restated from make_cifar_c.py / make_imagenet_c.py.
static const double k_gauss[2][5] = {{0.04, 0.06, .08, .09, .10}, {.08, .12, 0.18, 0.26, 0.38}};
static const double k_shot[2][5] = {{500, 250, 100, 75, 50}, {60, 25, 12, 5, 3}};
static const double k_impulse[2][5] = {{.01, .02, .03, .05, .07}, {.03, .06, .09, 0.17, 0.27}};
static const double k_bright[2][5] = {{.05, .1, .15, .2, .3}, {.1, .2, .3, .4, .5}};
static const double k_contrast[2][5] = {{.75, .5, .4, .3, 0.15}, {0.4, .3, .2, .1, .05}};
static const double k_pixelate[2][5] = {{0.95, 0.9, 0.85, 0.75, 0.65}, {0.6, 0.5, 0.4, 0.3, 0.25}};
static const int k_jpeg[2][5] = {{80, 65, 58, 50, 40}, {25, 18, 15, 10, 7}};
static const double k_frost[2][5][2] = {
    {{1, 0.2}, {1, 0.3}, {0.9, 0.4}, {0.85, 0.4}, {0.75, 0.45}},
    {{1, 0.4}, {0.8, 0.6}, {0.7, 0.7}, {0.65, 0.7}, {0.6, 0.75}}};
static const double k_fog[2][5] = {{.2, .5, 0.75, 1, 1.5}, {1.5, 2, 2.5, 2.5, 3}};
// zoom_blur: np.arange(1, stop, step) as (step, number of factors); see ser_corrupt.c.
static const double k_zoom[2][5][2] = {
    {{0.01, 7}, {0.01, 12}, {0.01, 16}, {0.01, 21}, {0.01, 26}},
    {{0.01, 12}, {0.01, 16}, {0.02, 11}, {0.02, 13}, {0.03, 11}}};
static const double k_snow_blend[2][5] = {{0.95, 0.9, 0.9, 0.85, 0.8}, {0.8, 0.7, 0.7, 0.65, 0.55}};
static const double k_motion_radius[2][5] = {{6, 6, 6, 8, 9}, {10, 15, 15, 15, 20}};
static const double k_defocus_radius[2][5] = {{0.3, 0.4, 0.5, 1, 1.5}, {3, 4, 6, 8, 10}};
static const double k_defocus_alias[2][5] = {{0.4, 0.5, 0.6, 0.2, 0.1}, {0.1, 0.5, 0.5, 0.5, 0.5}};

// 0: CIFAR-10-C constants (min side <= 64), 1: ImageNet-C.
static int s_table(int h, int w) {
    return (h < w ? h : w) <= 64 ? 0 : 1;
}

static int s_is_random(int type) {
    switch (type) {
        case SER_CORRUPT_DEFOCUS_BLUR:
        case SER_CORRUPT_ZOOM_BLUR:
        case SER_CORRUPT_BRIGHTNESS:
        case SER_CORRUPT_CONTRAST:
        case SER_CORRUPT_PIXELATE:
        case SER_CORRUPT_JPEG_COMPRESSION:
            return 0;
        default:
            return 1;
    }
}

// A textured test image: sinusoids of 9 and 14 px periods, a 4 px checkerboard and per-pixel
// noise around mid-grey, in [lo, hi], so blurs, shuffles and warps all change it.
static uint8_t *s_texture(int h, int w, uint64_t seed, int lo, int hi) {
    uint8_t *img = ser_xmalloc((size_t)h * w * 3);
    ser_rng r;
    ser_rng_init(&r, seed, 0, 0, SER_RNG_FIXTURE);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                double v = 128.0 + 45.0 * sin(x * 0.7 + c) * cos(y * 0.45) +
                           25.0 * (((x / 4 + y / 4) & 1) ? 1.0 : -1.0) +
                           30.0 * (ser_rng_uniform_double(&r) - 0.5);
                v = v < lo ? lo : v > hi ? hi : v;
                img[((size_t)y * w + x) * 3 + c] = (uint8_t)v;
            }
    return img;
}

// A natural-like image: octaves of bilinearly interpolated noise with cells of 1, 2, 4, ...
// px up to a quarter of the larger side, equally weighted (a 1/f amplitude spectrum, as in
// photographs), shared by the channels with a weaker per-channel part, scaled to [lo, hi].
// Blurs, warps and resampling then remove more of it the stronger they are, instead of
// saturating once the one texture scale is gone.
static uint8_t *s_natural(int h, int w, uint64_t seed, int lo, int hi) {
    size_t npix = (size_t)h * w;
    double *f = ser_xcalloc(npix * 4, sizeof *f);  // 4 fields: shared, then one per channel
    ser_rng r;
    ser_rng_init(&r, seed, 1, 0, SER_RNG_FIXTURE);
    int side = h > w ? h : w;
    for (int field = 0; field < 4; field++)
        for (int cell = 1; cell <= side / 4; cell *= 2) {
            int gh = h / cell + 2, gw = w / cell + 2;
            double *g = ser_xmalloc((size_t)gh * gw * sizeof *g);
            for (int i = 0; i < gh * gw; i++) g[i] = 2.0 * ser_rng_uniform_double(&r) - 1.0;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    double gy = (double)y / cell, gx = (double)x / cell;
                    int y0 = (int)gy, x0 = (int)gx;
                    double ay = gy - y0, ax = gx - x0;
                    double v =
                        (1 - ay) * ((1 - ax) * g[y0 * gw + x0] + ax * g[y0 * gw + x0 + 1]) +
                        ay * ((1 - ax) * g[(y0 + 1) * gw + x0] + ax * g[(y0 + 1) * gw + x0 + 1]);
                    f[field * npix + (size_t)y * w + x] += v;
                }
            free(g);
        }
    double mn = 1e300, mx = -1e300;
    for (size_t i = 0; i < npix; i++)
        for (int c = 0; c < 3; c++) {
            double v = f[i] + 0.4 * f[(c + 1) * npix + i];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    uint8_t *img = ser_xmalloc(npix * 3);
    for (size_t i = 0; i < npix; i++)
        for (int c = 0; c < 3; c++) {
            double v = f[i] + 0.4 * f[(c + 1) * npix + i];
            img[i * 3 + c] = (uint8_t)(lo + (hi - lo) * (v - mn) / (mx - mn) + 0.5);
        }
    free(f);
    return img;
}

static double s_mad(const uint8_t *a, const uint8_t *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += fabs((double)a[i] - (double)b[i]);
    return s / (double)n;
}

// np.uint8(np.clip(v, 0, 1) * 255) for a value whose exact result may be an integer.
static int s_trunc(double v01) {
    double v = (v01 < 0 ? 0 : v01 > 1 ? 1 : v01) * 255.0;
    return (int)floor(v + 1e-6);
}

static void s_apply_ok(uint8_t *out, const uint8_t *in, int h, int w, int type, int sev,
                       uint64_t seed) {
    char err[SER_ERR_LEN] = "";
    int rc = ser_corrupt_apply(out, in, h, w, type, sev, seed, err);
    if (rc != SER_OK) printf("%s sev %d %dx%d: %s\n", ser_corrupt_name(type), sev, h, w, err);
    assert_int_equal(rc, SER_OK);
}

// Compares got with ref: every byte within 1, and at least min_exact of them equal.
static void s_assert_close_u8(const char *what, const uint8_t *got, const uint8_t *ref, size_t n,
                              double min_exact) {
    size_t exact = 0;
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)ref[i]);
        exact += d == 0;
        maxd = d > maxd ? d : maxd;
        if (d > 1 && maxd == d)
            printf("%s: byte %zu got %d, expected %d\n", what, i, got[i], ref[i]);
    }
    if (maxd > 1 || (double)exact < min_exact * (double)n)
        printf("%s: max diff %d, %zu/%zu exact\n", what, maxd, exact, n);
    assert_true(maxd <= 1);
    assert_true((double)exact >= min_exact * (double)n);
}

// --- names and arguments ---------------------------------------------------------------------

static void test_names(void **state) {
    (void)state;
    assert_string_equal(ser_corrupt_name(SER_CORRUPT_GAUSSIAN_NOISE), "gaussian_noise");
    assert_string_equal(ser_corrupt_name(SER_CORRUPT_ELASTIC_TRANSFORM), "elastic_transform");
    assert_string_equal(ser_corrupt_name(SER_CORRUPT_JPEG_COMPRESSION), "jpeg_compression");
    assert_string_equal(ser_corrupt_name(SER_CORRUPT_ZOOM_BLUR), "zoom_blur");
    for (int t = 0; t < SER_CORRUPT_COUNT; t++) {
        assert_non_null(ser_corrupt_name(t));
        assert_int_equal(ser_corrupt_from_name(ser_corrupt_name(t)), t);
    }
    assert_null(ser_corrupt_name(-1));
    assert_null(ser_corrupt_name(SER_CORRUPT_COUNT));
    assert_int_equal(ser_corrupt_from_name("speckle_noise"), -1);
    assert_int_equal(ser_corrupt_from_name("Gaussian Noise"), -1);
    assert_int_equal(ser_corrupt_from_name(""), -1);
    assert_int_equal(ser_corrupt_from_name(NULL), -1);
}

static void s_expect_einval(uint8_t *out, const uint8_t *in, int h, int w, int type, int sev,
                            const char *needle) {
    char err[SER_ERR_LEN] = "";
    uint8_t before[32];
    if (out) memcpy(before, out, sizeof before);
    assert_int_equal(ser_corrupt_apply(out, in, h, w, type, sev, 1, err), SER_EINVAL);
    if (!strstr(err, needle)) printf("message '%s' does not name '%s'\n", err, needle);
    assert_non_null(strstr(err, needle));
    if (out) assert_memory_equal(before, out, sizeof before);  // untouched
    // err may be NULL.
    assert_int_equal(ser_corrupt_apply(out, in, h, w, type, sev, 1, NULL), SER_EINVAL);
}

static void test_bad_arguments(void **state) {
    (void)state;
    uint8_t *in = s_texture(16, 16, 1, 0, 255), *out = ser_xcalloc(16 * 16 * 3, 1);
    s_expect_einval(out, in, 16, 16, -1, 1, "type -1");
    s_expect_einval(out, in, 16, 16, SER_CORRUPT_COUNT, 1, "type 15");
    s_expect_einval(out, in, 16, 16, 0, 0, "severity 0");
    s_expect_einval(out, in, 16, 16, 0, 6, "severity 6");
    s_expect_einval(out, in, 7, 16, 0, 1, "size 7x16");
    s_expect_einval(out, in, 16, 7, 0, 1, "size 16x7");
    s_expect_einval(out, in, 0, 0, 0, 1, "size 0x0");
    s_expect_einval(out, in, -8, 16, 0, 1, "size -8x16");
    s_expect_einval(out, in, 16, 20000, 0, 1, "size 16x20000");
    s_expect_einval(out, NULL, 16, 16, 0, 1, "input image is NULL");
    s_expect_einval(NULL, in, 16, 16, 0, 1, "output image is NULL");
    free(in);
    free(out);
}

// --- every type x severity, in bounds --------------------------------------------------------

static void test_all_types_sizes_in_bounds(void **state) {
    (void)state;
    // 8x8 (the smallest), 28 and 32 (CIFAR constants), 9x67 (non-square), 65x80 (ImageNet
    // constants on a small image), 224.
    static const int sizes[][2] = {{8, 8}, {28, 28}, {32, 32}, {9, 67}, {65, 80}, {224, 224}};
    enum { GUARD = 64 };
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int h = sizes[si][0], w = sizes[si][1];
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_texture(h, w, 3, 0, 255), *copy = ser_xmalloc(n);
        uint8_t *buf = ser_xmalloc(n + 2 * GUARD), *out = buf + GUARD;
        memcpy(copy, in, n);
        double t0 = ser_time_sec();
        for (int t = 0; t < SER_CORRUPT_COUNT; t++)
            for (int sev = 1; sev <= 5; sev++) {
                memset(buf, 0xA5, n + 2 * GUARD);
                s_apply_ok(out, in, h, w, t, sev, 42);
                for (int g = 0; g < GUARD; g++) {
                    assert_int_equal(buf[g], 0xA5);
                    assert_int_equal(buf[GUARD + n + g], 0xA5);
                }
                assert_memory_equal(in, copy, n);  // in is const
            }
        printf("all 75 corruptions at %dx%d: %.3f s\n", h, w, ser_time_sec() - t0);
        free(in);
        free(copy);
        free(buf);
    }
}

// --- seeds -----------------------------------------------------------------------------------

static void test_seed_determinism_and_in_place(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si];
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_texture(h, w, 5, 0, 255), *a = ser_xmalloc(n), *b = ser_xmalloc(n);
        uint8_t *c = ser_xmalloc(n);
        for (int t = 0; t < SER_CORRUPT_COUNT; t++) {
            s_apply_ok(a, in, h, w, t, 3, 7);
            s_apply_ok(b, in, h, w, t, 3, 7);
            assert_memory_equal(a, b, n);
            s_apply_ok(c, in, h, w, t, 3, 8);
            int same = memcmp(a, c, n) == 0;
            if (same == s_is_random(t))
                printf("%s at %d: seeds 7 and 8 give %s bytes\n", ser_corrupt_name(t), h,
                       same ? "the same" : "different");
            assert_int_equal(same, !s_is_random(t));
            // In place (out == in) gives the same bytes.
            memcpy(c, in, n);
            s_apply_ok(c, c, h, w, t, 3, 7);
            assert_memory_equal(a, c, n);
        }
        free(in);
        free(a);
        free(b);
        free(c);
    }
}

// --- closed forms ----------------------------------------------------------------------------

// brightness: HSV V + c clipped. The reference does not go through HSV: with hue and
// saturation fixed, RGB is proportional to V, so each channel is x * min(V + c, 1) / V, and a
// black pixel (V = 0, S = 0) becomes grey c.
static void test_brightness_is_hsv_value_shift(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t npix = (size_t)h * w;
        uint8_t *in = s_texture(h, w, 11, 0, 255), *out = ser_xmalloc(npix * 3);
        uint8_t *ref = ser_xmalloc(npix * 3);
        // Some black, white, grey and saturated pixels.
        static const uint8_t special[][3] = {{0, 0, 0},   {255, 255, 255}, {90, 90, 90},
                                             {255, 0, 0}, {0, 200, 17},    {3, 0, 250}};
        for (int i = 0; i < 6; i++) memcpy(in + i * 3, special[i], 3);
        for (int sev = 1; sev <= 5; sev++) {
            double c = k_bright[tb][sev - 1];
            s_apply_ok(out, in, h, w, SER_CORRUPT_BRIGHTNESS, sev, 0);
            for (size_t i = 0; i < npix; i++) {
                const uint8_t *p = in + i * 3;
                int mx = p[0] > p[1] ? p[0] : p[1];
                mx = p[2] > mx ? p[2] : mx;
                double v = mx / 255.0, v2 = v + c > 1.0 ? 1.0 : v + c;
                for (int ch = 0; ch < 3; ch++)
                    ref[i * 3 + ch] = (uint8_t)s_trunc(mx == 0 ? c : p[ch] / 255.0 * v2 / v);
            }
            s_assert_close_u8("brightness", out, ref, npix * 3, 0.999);
            // The special pixels exactly: black -> grey c, white stays white.
            assert_int_equal(out[0], s_trunc(c));
            assert_int_equal(out[2], s_trunc(c));
            assert_int_equal(out[3], 255);
        }
        free(in);
        free(out);
        free(ref);
    }
}

// contrast: (x - mean) * c + mean with per-channel means over the image.
static void test_contrast_formula(void **state) {
    (void)state;
    static const int sides[] = {28, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t npix = (size_t)h * w;
        uint8_t *in = s_texture(h, w, 12, 0, 255), *out = ser_xmalloc(npix * 3);
        uint8_t *ref = ser_xmalloc(npix * 3);
        long sum[3] = {0, 0, 0};
        for (size_t i = 0; i < npix; i++)
            for (int ch = 0; ch < 3; ch++) sum[ch] += in[i * 3 + ch];
        for (int sev = 1; sev <= 5; sev++) {
            double c = k_contrast[tb][sev - 1];
            s_apply_ok(out, in, h, w, SER_CORRUPT_CONTRAST, sev, 0);
            for (size_t i = 0; i < npix; i++)
                for (int ch = 0; ch < 3; ch++) {
                    double m = (double)sum[ch] / (255.0 * (double)npix);
                    ref[i * 3 + ch] = (uint8_t)s_trunc((in[i * 3 + ch] / 255.0 - m) * c + m);
                }
            s_assert_close_u8("contrast", out, ref, npix * 3, 0.999);
        }
        free(in);
        free(out);
        free(ref);
    }
}

// pixelate: PIL BOX down to int(side*c) then BOX up. BOX down averages the inputs whose centres
// fall in the output pixel's span (j + 0.5 in (o*s, (o+1)*s], s = in/out); BOX up picks input
// floor((o + 0.5)*in/out) (nearest). PIL rounds to 8 bits after the horizontal and after the
// vertical pass. PIL's 22-bit fixed-point weights can turn an exact .5 mean the other way, so
// bytes may differ by 1.
static void s_box_axis(const uint8_t *src, uint8_t *dst, int in, int out, int count,
                       size_t stride_i, size_t stride_o, size_t step_in, size_t step_out) {
    // Resamples `count` lines: line l reads src + l*step_in + j*stride_i.
    double s = (double)in / out;
    for (int l = 0; l < count; l++)
        for (int o = 0; o < out; o++) {
            double acc = 0.0;
            int cnt = 0;
            if (out < in) {
                for (int j = 0; j < in; j++)
                    if (j + 0.5 > o * s && j + 0.5 <= (o + 1) * s) {
                        acc += src[l * step_in + (size_t)j * stride_i];
                        cnt++;
                    }
            } else {
                int j = (int)floor((o + 0.5) * s);
                acc = src[l * step_in + (size_t)j * stride_i];
                cnt = 1;
            }
            dst[l * step_out + (size_t)o * stride_o] = (uint8_t)floor(acc / cnt + 0.5);
        }
}

static void s_box_resize(const uint8_t *src, int h, int w, uint8_t *dst, int oh, int ow) {
    uint8_t *tmp = ser_xmalloc((size_t)h * ow * 3);
    for (int ch = 0; ch < 3; ch++) {
        // Horizontal: lines are rows; then vertical: lines are columns.
        s_box_axis(src + ch, tmp + ch, w, ow, h, 3, 3, (size_t)w * 3, (size_t)ow * 3);
        s_box_axis(tmp + ch, dst + ch, h, oh, ow, (size_t)ow * 3, (size_t)ow * 3, 3, 3);
    }
    free(tmp);
}

// The sizes avoid exact ties, an input centre on a box edge ((2j+1)*out == 2(o+1)*in, which
// needs more factors of 2 in out than in, e.g. 77 -> 38): there PIL's floating-point rounding,
// not the definition, decides which side the pixel falls on.
static void test_pixelate_is_box_down_nearest_up(void **state) {
    (void)state;
    static const int sizes[][2] = {{32, 32}, {28, 28}, {32, 48}, {224, 224}, {96, 112}};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int h = sizes[si][0], w = sizes[si][1], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_texture(h, w, 13, 0, 255), *out = ser_xmalloc(n), *ref = ser_xmalloc(n);
        for (int sev = 1; sev <= 5; sev++) {
            double c = k_pixelate[tb][sev - 1];
            int oh = (int)(h * c), ow = (int)(w * c);
            uint8_t *small = ser_xmalloc((size_t)oh * ow * 3);
            s_box_resize(in, h, w, small, oh, ow);
            s_box_resize(small, oh, ow, ref, h, w);
            s_apply_ok(out, in, h, w, SER_CORRUPT_PIXELATE, sev, 0);
            char what[64];
            snprintf(what, sizeof what, "pixelate %dx%d sev %d", h, w, sev);
            s_assert_close_u8(what, out, ref, n, 0.99);
            free(small);
        }
        free(in);
        free(out);
        free(ref);
    }
}

static void test_jpeg_equals_turbojpeg(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si];
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_texture(h, w, 14, 0, 255), *out = ser_xmalloc(n), *ref = ser_xmalloc(n);
        for (int sev = 1; sev <= 5; sev++) {
            tjhandle tc = tjInitCompress(), td = tjInitDecompress();
            unsigned char *jpg = NULL;
            unsigned long len = 0;
            assert_int_equal(tjCompress2(tc, in, w, 0, h, TJPF_RGB, &jpg, &len, TJSAMP_420,
                                         k_jpeg[s_table(h, w)][sev - 1], 0),
                             0);
            assert_int_equal(tjDecompress2(td, jpg, len, ref, w, 0, h, TJPF_RGB, 0), 0);
            tjFree(jpg);
            tjDestroy(tc);
            tjDestroy(td);
            s_apply_ok(out, in, h, w, SER_CORRUPT_JPEG_COMPRESSION, sev, 0);
            assert_memory_equal(out, ref, n);
            assert_true(s_mad(out, in, n) > 1.0);
        }
        free(in);
        free(out);
        free(ref);
    }
}

// Blurs and warps average with normalised weights or move pixels, so a constant image stays
// constant, byte for byte; contrast of a constant image is its mean. (defocus_blur: below.)
static void test_constant_image_is_fixed(void **state) {
    (void)state;
    static const int types[] = {SER_CORRUPT_GLASS_BLUR,        SER_CORRUPT_MOTION_BLUR,
                                SER_CORRUPT_ZOOM_BLUR,         SER_CORRUPT_CONTRAST,
                                SER_CORRUPT_ELASTIC_TRANSFORM, SER_CORRUPT_PIXELATE};
    static const int sides[] = {32, 224};
    static const uint8_t values[] = {0, 77, 200, 255};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si];
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
        for (int vi = 0; vi < 4; vi++) {
            memset(in, values[vi], n);
            for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
                for (int sev = 1; sev <= 5; sev++) {
                    s_apply_ok(out, in, h, w, types[ti], sev, 3);
                    if (memcmp(out, in, n) != 0)
                        printf("%s sev %d changes a constant %d image at %d px\n",
                               ser_corrupt_name(types[ti]), sev, values[vi], h);
                    assert_memory_equal(out, in, n);
                }
        }
        free(in);
        free(out);
    }
}

// disk(radius, alias_blur) as make_*_c.py builds it, written out naively: the aliased disk
// X^2 + Y^2 <= r^2 on [-L, L]^2 (L = 8 for r <= 8, else r), normalised, then
// cv2.GaussianBlur(ksize 3 (r <= 8) or 5, sigma alias_blur) with OpenCV's default border,
// BORDER_REFLECT_101. k: (2L+1)^2; returns L.
static int s_reflect101(int i, int n) {
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
    return i;
}

static int s_ref_disk(double *k, double radius, double alias_blur) {
    int L = radius <= 8 ? 8 : (int)radius, n = 2 * L + 1, ks = radius <= 8 ? 3 : 5;
    double a[21 * 21], t[21 * 21], g[5], gs = 0, ksum = 0;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int X = x - L, Y = y - L;
            a[y * n + x] = X * X + Y * Y <= radius * radius ? 1.0 : 0.0;
            ksum += a[y * n + x];
        }
    for (int i = 0; i < n * n; i++) a[i] /= ksum;
    for (int i = 0; i < ks; i++) {
        double d = i - (ks - 1) / 2;
        g[i] = exp(-d * d / (2 * alias_blur * alias_blur));
        gs += g[i];
    }
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            t[y * n + x] = 0;
            for (int i = 0; i < ks; i++)
                t[y * n + x] += g[i] / gs * a[y * n + s_reflect101(x + i - ks / 2, n)];
        }
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            k[y * n + x] = 0;
            for (int i = 0; i < ks; i++)
                k[y * n + x] += g[i] / gs * t[s_reflect101(y + i - ks / 2, n) * n + x];
        }
    return L;
}

// defocus_blur is cv2.filter2D with that kernel: a single bright pixel becomes 255 * kernel,
// and a constant image v becomes v * sum(kernel). The sum is 1 except where the disk touches
// the edge of its array (r = 8 and 10: ImageNet-C severities 4 and 5), where the reflected
// anti-aliasing blur adds 1.3% and 1.1%, so Hendrycks' defocus brightens there; so does ours.
static void test_defocus_is_disk_filter(void **state) {
    (void)state;
    static const int sides[] = {33, 225};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], q = h / 2, tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xcalloc(n, 1), *out = ser_xmalloc(n), *ref = ser_xmalloc(n);
        for (int sev = 1; sev <= 5; sev++) {
            double k[21 * 21], sum = 0;
            int L = s_ref_disk(k, k_defocus_radius[tb][sev - 1], k_defocus_alias[tb][sev - 1]);
            for (int i = 0; i < (2 * L + 1) * (2 * L + 1); i++) sum += k[i];
            memset(in, 0, n);
            memset(ref, 0, n);
            for (int ch = 0; ch < 3; ch++) in[((size_t)q * w + q) * 3 + ch] = 255;
            for (int dy = -L; dy <= L; dy++)
                for (int dx = -L; dx <= L; dx++)
                    for (int ch = 0; ch < 3; ch++)
                        ref[((size_t)(q + dy) * w + q + dx) * 3 + ch] =
                            (uint8_t)s_trunc(k[(dy + L) * (2 * L + 1) + dx + L]);
            s_apply_ok(out, in, h, w, SER_CORRUPT_DEFOCUS_BLUR, sev, 0);
            char what[64];
            snprintf(what, sizeof what, "defocus impulse %d px sev %d", h, sev);
            s_assert_close_u8(what, out, ref, n, 0.999);
            assert_true(out[((size_t)q * w + q) * 3] < 255);  // it did blur
            static const uint8_t values[] = {77, 200, 255};
            for (int vi = 0; vi < 3; vi++) {
                memset(in, values[vi], n);
                s_apply_ok(out, in, h, w, SER_CORRUPT_DEFOCUS_BLUR, sev, 0);
                int want = s_trunc(values[vi] / 255.0 * sum);
                for (size_t i = 0; i < n; i++) assert_int_equal(out[i], want);
                if (tb == 1 && sev >= 4 && vi == 1) assert_true(want > values[vi]);  // 200 -> 202
            }
        }
        free(in);
        free(out);
        free(ref);
    }
}

// motion_blur of a single bright pixel is ImageMagick's one-sided line kernel: at most
// 2*ceil(radius)+1 lit pixels, the brightest at the dot (tap 0 weighs most), all within that
// many pixels of it and all on one side (their centroid is off the dot), summing to about 255.
static void test_motion_blur_impulse_is_a_streak(void **state) {
    (void)state;
    static const int sides[] = {33, 225};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], q = h / 2, tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xcalloc(n, 1), *out = ser_xmalloc(n);
        for (int ch = 0; ch < 3; ch++) in[((size_t)q * w + q) * 3 + ch] = 255;
        for (int sev = 1; sev <= 5; sev++) {
            int width = 2 * (int)ceil(k_motion_radius[tb][sev - 1]) + 1;
            s_apply_ok(out, in, h, w, SER_CORRUPT_MOTION_BLUR, sev, 9);
            long sum = 0, count = 0;
            double cy = 0, cx = 0;
            int vmax = 0;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    int v = out[((size_t)y * w + x) * 3];
                    if (!v) continue;
                    sum += v, count++;
                    cy += v * (y - q), cx += v * (x - q);
                    vmax = v > vmax ? v : vmax;
                    assert_true(abs(y - q) < width && abs(x - q) < width);
                }
            assert_true(count >= 2 && count <= width);
            assert_int_equal(vmax, out[((size_t)q * w + q) * 3]);
            assert_true(labs(sum - 255) <= width / 2 + 1);
            assert_true(hypot(cy / sum, cx / sum) >= 0.5);
        }
        free(in);
        free(out);
    }
}

// --- statistics of the noises ----------------------------------------------------------------

// gaussian_noise on a mid-grey image (no clipping within 4 sigma at these severities): the
// residual out - in is N(0, (255c)^2) plus the truncation, uniform on (-1, 0]: mean -0.5,
// variance (255c)^2 + 1/12. The standard error of a standard deviation estimate is
// sd/sqrt(2N): 0.64% for N = 64*64*3, 0.18% for 224*224*3; tolerances 3% and 1% (>= 4.5 SE).
static void test_gaussian_noise_sigma(void **state) {
    (void)state;
    static const int sides[] = {64, 224}, nsev[] = {5, 2};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
        memset(in, 128, n);
        for (int sev = 1; sev <= nsev[si]; sev++) {
            s_apply_ok(out, in, h, w, SER_CORRUPT_GAUSSIAN_NOISE, sev, 100 + sev);
            double s1 = 0, s2 = 0;
            for (size_t i = 0; i < n; i++) {
                double d = (double)out[i] - 128.0;
                s1 += d, s2 += d * d;
            }
            double mean = s1 / n, sd = sqrt(s2 / n - mean * mean);
            double sig = 255.0 * k_gauss[tb][sev - 1], want = sqrt(sig * sig + 1.0 / 12);
            double tol = si == 0 ? 0.03 : 0.01;
            printf("gaussian_noise %d px sev %d: sd %.3f (want %.3f), mean %.3f\n", h, sev, sd,
                   want, mean);
            assert_true(fabs(sd / want - 1.0) < tol);
            assert_true(fabs(mean + 0.5) < 4.5 * want / sqrt((double)n));
        }
        free(in);
        free(out);
    }
}

// shot_noise: out = np.uint8(min(k/c, 1) * 255), k ~ Poisson(x c). The test computes the mean
// and standard deviation of out exactly from the Poisson pmf (the 8-bit truncation matters:
// at c = 250, trunc(1.02 k) = k + 2 for every likely k, so the spread is sqrt(lambda), not
// 1.02 sqrt(lambda)) and allows 4.5 standard errors. CIFAR's c (50..500) exercises the PTRS
// sampler; ImageNet's c = 3 the small-lambda one, where the whole distribution is checked: at
// x = 2/3, lambda = 2 and out is 0, 85, 170 or 255 for k = 0, 1, 2, >= 3; each frequency within
// 0.006 of the pmf (SE <= 0.0013).
static void s_shot_moments(double x, double c, double *mean, double *sd) {
    double lam = x * c, m1 = 0, m2 = 0;
    for (int k = 0; k < 4 * (int)lam + 100; k++) {
        double p = exp(k * log(lam) - lam - lgamma(k + 1.0));
        double v = s_trunc(k / c);
        m1 += p * v, m2 += p * v * v;
    }
    *mean = m1;
    *sd = sqrt(m2 - m1 * m1);
}

static void test_shot_noise_poisson(void **state) {
    (void)state;
    {
        int h = 64, w = 64;
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
        memset(in, 128, n);
        for (int sev = 1; sev <= 5; sev++) {
            s_apply_ok(out, in, h, w, SER_CORRUPT_SHOT_NOISE, sev, 200 + sev);
            double s1 = 0, s2 = 0, wmean, wsd;
            for (size_t i = 0; i < n; i++) s1 += out[i], s2 += (double)out[i] * out[i];
            double mean = s1 / n, sd = sqrt(s2 / n - mean * mean);
            s_shot_moments(128.0 / 255.0, k_shot[0][sev - 1], &wmean, &wsd);
            printf("shot_noise 64 px sev %d: sd %.3f (want %.3f), mean %.3f (want %.3f)\n", sev, sd,
                   wsd, mean, wmean);
            assert_true(fabs(sd / wsd - 1.0) < 4.5 / sqrt(2.0 * n));
            assert_true(fabs(mean - wmean) < 4.5 * wsd / sqrt((double)n));
        }
        free(in);
        free(out);
    }
    {
        int h = 224, w = 224;
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
        memset(in, 170, n);
        s_apply_ok(out, in, h, w, SER_CORRUPT_SHOT_NOISE, 5, 300);
        long cnt[4] = {0, 0, 0, 0};
        for (size_t i = 0; i < n; i++) {
            int v = out[i];
            int k = v == 0 ? 0 : v == 85 ? 1 : v == 170 ? 2 : v == 255 ? 3 : -1;
            assert_true(k >= 0);
            cnt[k]++;
        }
        double e2 = exp(-2.0), pmf[4] = {e2, 2 * e2, 2 * e2, 1.0 - 5 * e2};
        for (int k = 0; k < 4; k++) {
            double f = (double)cnt[k] / n;
            printf("shot_noise 224 px sev 5: P(k%s%d) = %.4f (want %.4f)\n", k == 3 ? ">=" : "=", k,
                   f, pmf[k]);
            assert_true(fabs(f - pmf[k]) < 0.006);
        }
        free(in);
        free(out);
    }
}

// impulse_noise: each value becomes 0 or 255 with probability c (equal odds). The image avoids
// 0 and 255, so every changed value is counted; binomial SE sqrt(N c (1 - c)), tolerance 4.5 SE.
static void test_impulse_noise_fraction(void **state) {
    (void)state;
    static const int sides[] = {64, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_texture(h, w, 15, 1, 254), *out = ser_xmalloc(n);
        for (int sev = 1; sev <= 5; sev++) {
            double c = k_impulse[tb][sev - 1];
            s_apply_ok(out, in, h, w, SER_CORRUPT_IMPULSE_NOISE, sev, 400 + sev);
            long changed = 0, salt = 0;
            for (size_t i = 0; i < n; i++) {
                if (out[i] == in[i]) continue;
                assert_true(out[i] == 0 || out[i] == 255);
                changed++;
                salt += out[i] == 255;
            }
            double f = (double)changed / n, se = sqrt(c * (1 - c) / n);
            printf("impulse_noise %d px sev %d: %.4f changed (want %.2f), %.3f of them salt\n", h,
                   sev, f, c, (double)salt / changed);
            assert_true(fabs(f - c) < 4.5 * se);
            assert_true(fabs((double)salt / changed - 0.5) < 4.5 * 0.5 / sqrt((double)changed));
        }
        free(in);
        free(out);
    }
}

// --- other definition properties ----------------------------------------------------------------

// snow only brightens: c6*x + (1-c6)*max(x, 1.5 grey + 0.5) >= x, plus a snow layer >= 0.
static void test_snow_never_darkens(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si];
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_texture(h, w, 16, 0, 255), *out = ser_xmalloc(n);
        for (int sev = 1; sev <= 5; sev++) {
            s_apply_ok(out, in, h, w, SER_CORRUPT_SNOW, sev, 500);
            for (size_t i = 0; i < n; i++) assert_true(out[i] >= in[i]);
            assert_true(s_mad(out, in, n) > 1.0);
        }
        free(in);
        free(out);
    }
}

// fog multiplies by max/(max + c0): a black image stays black whatever the fractal.
static void test_fog_keeps_black(void **state) {
    (void)state;
    size_t n = 224 * 224 * 3;
    uint8_t *in = ser_xcalloc(n, 1), *out = ser_xmalloc(n);
    for (int sev = 1; sev <= 5; sev++) {
        s_apply_ok(out, in, 224, 224, SER_CORRUPT_FOG, sev, 600);
        assert_memory_equal(out, in, n);
    }
    free(in);
    free(out);
}

// frost: clip(c0*x + c1*frost, 0, 255). The ice texture depends on the seed alone, so frost of
// a black image is trunc(c1*frost): subtracting it leaves c0*x (+-1 for the two truncations)
// wherever nothing clipped, and frost(black)/c1 is the same texture at every severity.
static void test_frost_blend_weights(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_natural(h, w, 18, 0, 255), *black = ser_xcalloc(n, 1);
        uint8_t *out = ser_xmalloc(n), *ice = ser_xmalloc(n), *ice1 = ser_xmalloc(n);
        for (int sev = 1; sev <= 5; sev++) {
            double c0 = k_frost[tb][sev - 1][0], c1 = k_frost[tb][sev - 1][1];
            s_apply_ok(out, in, h, w, SER_CORRUPT_FROST, sev, 800);
            s_apply_ok(ice, black, h, w, SER_CORRUPT_FROST, sev, 800);
            if (sev == 1) memcpy(ice1, ice, n);
            size_t checked = 0;
            for (size_t i = 0; i < n; i++) {
                assert_true(ice[i] <= c1 * 255.0 + 1e-9);
                double c1_1 = k_frost[tb][0][1];
                assert_true(fabs(ice[i] / c1 - ice1[i] / c1_1) <= 1.0 / c1 + 1.0 / c1_1 + 1e-9);
                if (out[i] == 255) continue;
                assert_true(fabs((double)out[i] - ice[i] - c0 * in[i]) <= 1.0 + 1e-9);
                checked++;
            }
            assert_true(checked > n / 2);
        }
        s_apply_ok(out, black, h, w, SER_CORRUPT_FROST, 1, 801);
        assert_true(memcmp(out, ice1, n) != 0);  // another seed, another texture
        free(in);
        free(black);
        free(out);
        free(ice);
        free(ice1);
    }
}

// fog: (x + c0*p) * M/(M + c0), M = max(x), p a plasma fractal in [0, 1] that depends on the
// seed, not the image. So p can be recovered from any image, p = (out*(M + c0)/M - x)/c0, and
// must be the same from two different images (here one and its half-bright copy, which has
// another M), within the 8-bit truncation (1/255 on out, scaled as in the formula).
static void test_fog_layer_is_image_independent(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *a = s_natural(h, w, 19, 20, 230), *b = ser_xmalloc(n);
        uint8_t *oa = ser_xmalloc(n), *ob = ser_xmalloc(n);
        int ma = 0, mb = 0;
        for (size_t i = 0; i < n; i++) {
            b[i] = a[i] / 2;
            ma = a[i] > ma ? a[i] : ma;
            mb = b[i] > mb ? b[i] : mb;
        }
        for (int sev = 1; sev <= 5; sev++) {
            double c0 = k_fog[tb][sev - 1], Ma = ma / 255.0, Mb = mb / 255.0;
            s_apply_ok(oa, a, h, w, SER_CORRUPT_FOG, sev, 900);
            s_apply_ok(ob, b, h, w, SER_CORRUPT_FOG, sev, 900);
            double ea = (Ma + c0) / (Ma * c0) / 255.0, eb = (Mb + c0) / (Mb * c0) / 255.0;
            double pmin = 1e9, pmax = -1e9;
            for (size_t i = 0; i < n; i++) {
                // out/255 lies in [v - 1/255, v]: add half a level to centre the estimate.
                double pa = ((oa[i] + 0.5) / 255.0 * (Ma + c0) / Ma - a[i] / 255.0) / c0;
                double pb = ((ob[i] + 0.5) / 255.0 * (Mb + c0) / Mb - b[i] / 255.0) / c0;
                assert_true(fabs(pa - pb) <= 0.5 * (ea + eb) + 1e-9);
                assert_true(pa >= -0.5 * ea - 1e-9 && pa <= 1.0 + 0.5 * ea + 1e-9);
                pmin = pa < pmin ? pa : pmin;
                pmax = pa > pmax ? pa : pmax;
            }
            assert_true(pmax - pmin > 0.5);  // a fractal, not a constant
        }
        free(a);
        free(b);
        free(oa);
        free(ob);
    }
}

// elastic_transform at CIFAR severity 1 has alpha = 0: only the random affine warp remains, and
// bilinear sampling of a linear ramp is exact, so away from the borders the result is again a
// plane in (x, y) (up to the truncation), a different one from the input's.
static void test_elastic_affine_part(void **state) {
    (void)state;
    int h = 32, w = 32;
    size_t n = (size_t)h * w * 3;
    uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                in[((size_t)y * w + x) * 3 + c] = (uint8_t)(40 + 3 * x + 2 * y);
    s_apply_ok(out, in, h, w, SER_CORRUPT_ELASTIC_TRANSFORM, 1, 1000);
    // Least-squares plane v = a + b x + c y over the interior [6, 25]^2 (the warp moves points
    // by a few pixels, so these sample inside the image).
    double S[3][4] = {{0}};
    for (int y = 6; y <= 25; y++)
        for (int x = 6; x <= 25; x++) {
            double f[3] = {1, x, y}, v = out[((size_t)y * w + x) * 3] + 0.5;
            for (int i = 0; i < 3; i++) {
                for (int j = 0; j < 3; j++) S[i][j] += f[i] * f[j];
                S[i][3] += f[i] * v;
            }
        }
    for (int i = 0; i < 3; i++)  // Gauss-Jordan on the 3x3 normal equations
        for (int r = 0; r < 3; r++) {
            if (r == i) continue;
            double m = S[r][i] / S[i][i];
            for (int j = 0; j < 4; j++) S[r][j] -= m * S[i][j];
        }
    double a = S[0][3] / S[0][0], b = S[1][3] / S[1][1], c = S[2][3] / S[2][2], worst = 0;
    for (int y = 6; y <= 25; y++)
        for (int x = 6; x <= 25; x++)
            for (int ch = 0; ch < 3; ch++) {
                double r = out[((size_t)y * w + x) * 3 + ch] + 0.5 - (a + b * x + c * y);
                worst = fabs(r) > worst ? fabs(r) : worst;
            }
    printf("elastic sev 1 on a ramp: plane %.3f + %.3f x + %.3f y, worst residual %.3f\n", a, b, c,
           worst);
    assert_true(worst <= 0.75);
    assert_true(fabs(b - 3.0) + fabs(c - 2.0) > 0.02);
    free(in);
    free(out);
}

// zoom_blur averages the image with clipped_zoom(x, z) for each factor z. scipy's zoom(order=1)
// is linear interpolation, exact on a linear ramp, so a ramp along x (red) and along y (green)
// gives, per axis, the ramp at the source coordinate of clipped_zoom: crop ch = ceil(n/z) from
// top = (n - ch)//2, zoom to round(ch*z) samples at src = o*(ch-1)/(round(ch*z)-1), keep from
// trim = (round(ch*z) - n)//2.
static double s_zoom_src(int o, int n, double z) {
    int ch = (int)ceil(n / z), top = (n - ch) / 2;
    int on = (int)nearbyint(ch * z), trim = (on - n) / 2;  // Python's round: half to even
    return top + (o + trim) * (double)(ch - 1) / (on - 1);
}

static void test_zoom_blur_of_a_ramp(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    for (int si = 0; si < 2; si++) {
        int n = sides[si], tb = s_table(n, n);
        double a = si == 0 ? 20 : 16, b = si == 0 ? 6 : 1;
        size_t nb = (size_t)n * n * 3;
        uint8_t *in = ser_xmalloc(nb), *out = ser_xmalloc(nb), *ref = ser_xmalloc(nb);
        for (int y = 0; y < n; y++)
            for (int x = 0; x < n; x++) {
                uint8_t *p = in + ((size_t)y * n + x) * 3;
                p[0] = (uint8_t)(a + b * x), p[1] = (uint8_t)(a + b * y), p[2] = 128;
            }
        for (int sev = 1; sev <= 5; sev++) {
            double step = k_zoom[tb][sev - 1][0];
            int count = (int)k_zoom[tb][sev - 1][1];
            for (int y = 0; y < n; y++)
                for (int x = 0; x < n; x++) {
                    double sx = x, sy = y;  // the image itself
                    for (int i = 0; i < count; i++) {
                        sx += s_zoom_src(x, n, 1 + i * step);
                        sy += s_zoom_src(y, n, 1 + i * step);
                    }
                    uint8_t *p = ref + ((size_t)y * n + x) * 3;
                    p[0] = (uint8_t)s_trunc((a + b * sx / (count + 1)) / 255.0);
                    p[1] = (uint8_t)s_trunc((a + b * sy / (count + 1)) / 255.0);
                    p[2] = 128;
                }
            s_apply_ok(out, in, n, n, SER_CORRUPT_ZOOM_BLUR, sev, 0);
            char what[64];
            snprintf(what, sizeof what, "zoom_blur ramp %d px sev %d", n, sev);
            s_assert_close_u8(what, out, ref, nb, 0.99);
        }
        free(in);
        free(out);
        free(ref);
    }
}

// glass_blur at CIFAR severity 1 has sigma 0.05: scipy's kernel radius int(4*0.05 + 0.5) = 0
// makes both Gaussian blurs the identity, so the result is the local shuffle alone, a
// permutation of the pixels. Each pixel is coded by its position; the loops visit rows and
// columns w-1 .. 2 and swap with offsets in [-1, 0], so row 0 and column 0 stay untouched and
// pixels move both along rows and along columns.
static void test_glass_blur_is_a_local_shuffle(void **state) {
    (void)state;
    int h = 32, w = 32;
    size_t n = (size_t)h * w * 3;
    uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
    char seen[32 * 32];
    memset(seen, 0, sizeof seen);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = in + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(x * 8), p[1] = (uint8_t)(y * 8), p[2] = 100;
        }
    s_apply_ok(out, in, h, w, SER_CORRUPT_GLASS_BLUR, 1, 1100);
    int moved_x = 0, moved_y = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *p = out + ((size_t)y * w + x) * 3;
            assert_true(p[0] % 8 == 0 && p[1] % 8 == 0 && p[2] == 100);
            int sx = p[0] / 8, sy = p[1] / 8;
            assert_false(seen[sy * w + sx]);
            seen[sy * w + sx] = 1;
            if (y == 0 || x == 0) assert_true(sx == x && sy == y);
            moved_x += sx != x, moved_y += sy != y;
        }
    assert_true(moved_x > h * w / 4 && moved_y > h * w / 4);
    free(in);
    free(out);
}

// snow: clip(c6*x + (1 - c6)*max(x, 1.5*grey + 0.5) + s + rot180(s)). On a grey image the
// blend is the constant c6*v + (1 - c6)*(1.5v + 0.5), and the snow term s + rot180(s) is
// symmetric under a half turn, so the result is too, and its minimum (where no flake falls)
// is the blend.
static void test_snow_blend_and_symmetry(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    static const uint8_t greys[] = {0, 100};
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = ser_xmalloc(n), *out = ser_xmalloc(n);
        for (int gi = 0; gi < 2; gi++) {
            memset(in, greys[gi], n);
            for (int sev = 1; sev <= 5; sev++) {
                double c6 = k_snow_blend[tb][sev - 1], v = greys[gi] / 255.0;
                int base = s_trunc(c6 * v + (1 - c6) * (1.5 * v + 0.5)), mn = 255;
                s_apply_ok(out, in, h, w, SER_CORRUPT_SNOW, sev, 1200);
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++)
                        for (int c = 0; c < 3; c++) {
                            int o = out[((size_t)y * w + x) * 3 + c];
                            assert_int_equal(o,
                                             out[((size_t)(h - 1 - y) * w + (w - 1 - x)) * 3 + c]);
                            mn = o < mn ? o : mn;
                        }
                assert_true(abs(mn - base) <= 1);
                assert_true(s_mad(out, in, n) > (double)(base - greys[gi]) + 1.0);  // flakes
            }
        }
        free(in);
        free(out);
    }
}

// --- severity --------------------------------------------------------------------------------

// The mean absolute difference (MAD) from the clean image grows with the severity, at both
// constant tables, on a natural-like image kept away from 0/255 (so clipping does not hide the
// changes). Severities share their random numbers (one stream per seed and type), so the
// comparison is between constants, not between draws.
//
// Where Hendrycks' constants themselves do not order the MAD, the test asserts what they do
// order (each reason is a property of the definition, true of the Python as well):
//   frost        MAD = E|(c0 - 1) x + c1 frost|: severities 3 and 4 share c1 and lower c0, so
//                MAD falls unless the image outshines the frost. Checked by
//                test_frost_blend_weights instead.
//   fog          MAD = c0/(M + c0) E|M p - x| and wibbledecay changes the fractal's statistics
//                from severity to severity (ImageNet 3 and 4 share c0). Checked by
//                test_fog_layer_is_image_independent instead.
//   elastic      the affine part shrinks with severity (CIFAR 2.56 -> 0.96 px, ImageNet 24.4,
//                48.8, then 4.9 px) while the local part grows: no order in MAD. The affine
//                part is checked by test_elastic_affine_part.
//   glass (CIFAR) the final blur grows with severity within one iteration count (sigma 0.05,
//                0.25, 0.4 for 1 iteration) and smooths the shuffle back toward the image;
//                at equal sigma, 2 iterations must beat 1 (severity 4 > 2, 5 > 3).
//   motion (CIFAR 3 -> 4) radius 6 -> 8 at sigma 2: the added taps weigh < 0.3%, so only
//                MAD(4) >= MAD(3) holds.
//   snow 2 -> 3, zoom (ImageNet 2 -> 3) the constants trade one strength for another
//                (snow: more flakes vs larger zoom and threshold; zoom: 16 factors up to 1.15
//                vs 11 up to 1.20): within 2%.
static void test_severity_monotone(void **state) {
    (void)state;
    static const int sides[] = {32, 224};
    int bad = 0;
    for (int si = 0; si < 2; si++) {
        int h = sides[si], w = sides[si], tb = s_table(h, w);
        size_t n = (size_t)h * w * 3;
        uint8_t *in = s_natural(h, w, 17, 40, 215), *out = ser_xmalloc(n);
        for (int t = 0; t < SER_CORRUPT_COUNT; t++) {
            double m[5];
            for (int sev = 1; sev <= 5; sev++) {
                s_apply_ok(out, in, h, w, t, sev, 700);
                m[sev - 1] = s_mad(out, in, n);
            }
            int strict = 1, ok = 1;
            for (int i = 1; i < 5; i++) strict &= m[i] > m[i - 1];
            if (t == SER_CORRUPT_FROST || t == SER_CORRUPT_FOG ||
                t == SER_CORRUPT_ELASTIC_TRANSFORM) {
                ok = 1;
            } else if (t == SER_CORRUPT_GLASS_BLUR && tb == 0) {
                ok = m[3] > m[1] && m[4] > m[2];
            } else {
                for (int i = 1; i < 5; i++) {
                    int exempt = (t == SER_CORRUPT_MOTION_BLUR && tb == 0 && i == 3) ||
                                 (t == SER_CORRUPT_SNOW && i == 2) ||
                                 (t == SER_CORRUPT_ZOOM_BLUR && tb == 1 && i == 2);
                    double floor_ = !exempt                        ? m[i - 1] * (1 + 1e-12)
                                    : t == SER_CORRUPT_MOTION_BLUR ? m[i - 1]
                                                                   : 0.98 * m[i - 1];
                    ok &= m[i] >= floor_;
                }
            }
            printf("%-18s %3d px: MAD %6.2f %6.2f %6.2f %6.2f %6.2f%s%s\n", ser_corrupt_name(t), h,
                   m[0], m[1], m[2], m[3], m[4], strict ? "" : "  (not strictly increasing)",
                   ok ? "" : "  FAIL");
            bad += !ok;
        }
        free(in);
        free(out);
    }
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_all_types_sizes_in_bounds),
        cmocka_unit_test(test_seed_determinism_and_in_place),
        cmocka_unit_test(test_brightness_is_hsv_value_shift),
        cmocka_unit_test(test_contrast_formula),
        cmocka_unit_test(test_pixelate_is_box_down_nearest_up),
        cmocka_unit_test(test_jpeg_equals_turbojpeg),
        cmocka_unit_test(test_constant_image_is_fixed),
        cmocka_unit_test(test_defocus_is_disk_filter),
        cmocka_unit_test(test_motion_blur_impulse_is_a_streak),
        cmocka_unit_test(test_gaussian_noise_sigma),
        cmocka_unit_test(test_shot_noise_poisson),
        cmocka_unit_test(test_impulse_noise_fraction),
        cmocka_unit_test(test_snow_never_darkens),
        cmocka_unit_test(test_fog_keeps_black),
        cmocka_unit_test(test_frost_blend_weights),
        cmocka_unit_test(test_fog_layer_is_image_independent),
        cmocka_unit_test(test_elastic_affine_part),
        cmocka_unit_test(test_zoom_blur_of_a_ramp),
        cmocka_unit_test(test_glass_blur_is_a_local_shuffle),
        cmocka_unit_test(test_snow_blend_and_symmetry),
        cmocka_unit_test(test_severity_monotone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
