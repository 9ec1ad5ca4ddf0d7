// test_dl_ops.c — the loader's augmentation ops against torchvision 0.14 / PIL 9.4 fixtures
// (tests/reference/make_loader_fixtures.py), their naive twins, the kornia-semantics ops and
// the photometric draws. The group action the loader applies is common/nn/ser_group.h's, tested
// in tests/test_group.c.
//
// Tolerances: every torchvision/PIL op is integer or replays PIL's own float steps, so the
// comparison is exact (max |diff| 0) for decode, resize, brightness, contrast, saturation,
// hue, grayscale, blur, solarize, flip and the full jitter. The naive resize twin works in
// double without PIL's intermediate uint8 rounding: +-1.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"
#include "ser_dl_data.h"
#include "ser_dl_ops.h"
#include "ser_test.h"

enum {
    OP_DECODE = 1, OP_RESIZE, OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE, OP_GRAY,
    OP_BLUR, OP_SOLARIZE, OP_JITTER, OP_HFLIP, OP_CENTER
};
static const char *const s_op_names[] = {"?",   "decode",   "resize", "brightness",
                                         "contrast", "saturation", "hue", "grayscale",
                                         "blur", "solarize", "jitter", "hflip", "center"};

static uint8_t *s_read_fixture(size_t *n) {
    char path[1024];
    ser_test_fixture_path(path, sizeof path, "loader/loader_ops.bin");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n---> HINT: run /usr/bin/python3 "
                        "tests/reference/make_loader_fixtures.py\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static int s_max_diff(const uint8_t *a, const uint8_t *b, size_t n, size_t *first) {
    int m = 0;
    *first = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d && *first == (size_t)-1) *first = i;
        if (d > m) m = d;
    }
    return m;
}

static void test_torchvision_fixtures(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = s_read_fixture(&len);
    assert_non_null(buf);
    const int32_t *hdr = (const int32_t *)buf;
    assert_int_equal(hdr[0], 20251121);
    assert_int_equal(hdr[1], 1);
    int nrec = hdr[2], bad = 0;
    size_t off = 1024;
    for (int r = 0; r < nrec; r++) {
        int32_t rec[16];
        memcpy(rec, buf + off, sizeof rec);
        off += sizeof rec;
        int op = rec[0], iw = rec[1], ih = rec[2], ow = rec[3], oh = rec[4];
        float fl[4];
        memcpy(fl, rec + 10, sizeof fl);
        size_t in_n = op == OP_DECODE ? (size_t)iw : (size_t)iw * ih * 3;
        size_t out_n = (size_t)ow * oh * 3;
        assert_true(off + in_n + out_n <= len);
        const uint8_t *in = buf + off, *ref = buf + off + in_n;
        off += in_n + out_n;
        uint8_t *got = ser_xcalloc(out_n > in_n ? out_n : in_n, 1);
        if (op != OP_DECODE && op != OP_RESIZE && op != OP_CENTER) memcpy(got, in, in_n);
        int n = iw * ih;
        ser_dl_image im = {0};
        char err[256] = "";
        switch (op) {
            case OP_DECODE:
                if (ser_dl_decode_jpeg(NULL, in, in_n, &im, err) != SER_OK)
                    fail_msg("decode of record %d failed: %s", r, err);
                assert_int_equal(im.w, ow);
                assert_int_equal(im.h, oh);
                memcpy(got, im.px, out_n);
                ser_dl_image_free(&im);
                break;
            case OP_RESIZE:
                ser_dl_pil_resize(got, ow, oh, in, iw * 3, rec[5], rec[6], rec[7], rec[8], rec[9]);
                break;
            case OP_BRIGHTNESS: ser_dl_pil_brightness(got, n, fl[0]); break;
            case OP_CONTRAST: ser_dl_pil_contrast(got, n, fl[0]); break;
            case OP_SATURATION: ser_dl_pil_saturation(got, n, fl[0]); break;
            case OP_HUE: ser_dl_pil_hue(got, n, fl[0]); break;
            case OP_GRAY: ser_dl_pil_grayscale(got, n); break;
            case OP_BLUR: ser_dl_pil_gaussian_blur(got, iw, ih, fl[0]); break;
            case OP_SOLARIZE: ser_dl_pil_solarize(got, n, rec[5]); break;
            case OP_HFLIP: ser_dl_hflip_u8(got, iw, ih); break;
            case OP_CENTER:
                assert_int_equal(ow, rec[5]);
                ser_dl_resize_center_crop(got, rec[5], in, iw, ih, rec[6]);
                break;
            case OP_JITTER: {
                ser_dl_photo p = {.jitter = 1, .b = fl[0], .c = fl[1], .s = fl[2], .h = fl[3]};
                for (int k = 0; k < 4; k++) p.order[k] = rec[5 + k];
                ser_dl_photo_apply_u8(got, iw, ih, &p);
                break;
            }
            default: fail_msg("unknown fixture op %d", op);
        }
        size_t first;
        int md = s_max_diff(got, ref, out_n, &first);
        fprintf(stderr, "%s %-10s rec %2d in %dx%d out %dx%d f0 %.4f max|diff| %d\n",
                md ? "FAIL" : "ok  ", s_op_names[op], r, op == OP_DECODE ? 0 : iw, ih, ow, oh,
                (double)fl[0], md);
        if (md)
            fprintf(stderr, "     first mismatch at byte %zu: got %d ref %d\n", first, got[first],
                    ref[first]);
        bad += md != 0;
        free(got);
    }
    assert_int_equal(off, len);
    free(buf);
    assert_int_equal(bad, 0);
}

static void s_fill_random(uint8_t *x, size_t n, uint64_t seed) {
    ser_rng r;
    ser_rng_init(&r, seed, 0, 0, SER_RNG_FIXTURE);
    for (size_t i = 0; i < n; i++) x[i] = (uint8_t)ser_rng_u32(&r);
}

static void test_resize_naive_twin(void **state) {
    (void)state;
    const int W = 61, H = 47;
    uint8_t *in = ser_xmalloc(W * H * 3), *a = ser_xmalloc(96 * 96 * 3), *b = ser_xmalloc(96 * 96 * 3);
    s_fill_random(in, W * H * 3, 3);
    const int cases[][6] = {{0, 0, 61, 47, 32, 32}, {5, 3, 20, 17, 96, 96}, {1, 2, 50, 40, 13, 29},
                            {7, 7, 30, 30, 30, 11}, {0, 0, 61, 47, 61, 80}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int interp = 0; interp < 2; interp++) {
            const int *k = cases[c];
            ser_dl_pil_resize(a, k[4], k[5], in, W * 3, k[0], k[1], k[2], k[3], interp);
            ser_dl_pil_resize_naive(b, k[4], k[5], in, W * 3, k[0], k[1], k[2], k[3], interp);
            size_t first;
            int md = s_max_diff(a, b, (size_t)k[4] * k[5] * 3, &first);
            fprintf(stderr, "resize twin case %zu interp %d: max|diff| %d (tolerance 1)\n", c,
                    interp, md);
            assert_true(md <= 1);
        }
    free(in);
    free(a);
    free(b);
}

static void test_blur_naive_twin(void **state) {
    (void)state;
    const int W = 37, H = 23;
    uint8_t *a = ser_xmalloc(W * H * 3), *b = ser_xmalloc(W * H * 3);
    const float sigmas[] = {0.1f, 0.5f, 1.0f, 2.0f, 7.5f, 30.0f};  // 30: radius > width
    for (int s = 0; s < 6; s++) {
        s_fill_random(a, W * H * 3, 4);
        memcpy(b, a, W * H * 3);
        ser_dl_pil_gaussian_blur(a, W, H, sigmas[s]);
        ser_dl_pil_gaussian_blur_naive(b, W, H, sigmas[s]);
        assert_memory_equal(a, b, W * H * 3);
    }
    free(a);
    free(b);
}

// The tabulated hue path against PIL's per-pixel conversions: every shift, exact.
static void test_hue_naive_twin(void **state) {
    (void)state;
    const int n = 4096;
    uint8_t *a = ser_xmalloc(n * 3), *b = ser_xmalloc(n * 3);
    for (int k = -26; k <= 26; k++) {
        float hue = (float)k / 255.0f + 0.0013f;
        s_fill_random(a, n * 3, (uint64_t)(k + 100));
        for (int i = 0; i < 64; i++) a[3 * i] = a[3 * i + 1] = (uint8_t)(i * 4);  // ties, grays
        memcpy(b, a, n * 3);
        ser_dl_pil_hue(a, n, hue);
        ser_dl_pil_hue_naive(b, n, hue);
        assert_memory_equal(a, b, n * 3);
    }
    free(a);
    free(b);
}

static void test_kornia_ops(void **state) {
    (void)state;
    float x[3 * 4] = {0.1f, 0.5f, 0.9f, 0.0f, 0.0f, 0.0f, 1.0f, 1.0f, 1.0f, 0.3f, 0.2f, 0.7f};
    float y[12];
    memcpy(y, x, sizeof x);
    ser_dl_kornia_brightness(y, 4, 1.3f);  // additive +0.3, clamped
    assert_float_equal(y[0], 0.4f, 1e-6);
    assert_float_equal(y[2], 1.0f, 1e-6);
    memcpy(y, x, sizeof x);
    ser_dl_kornia_contrast(y, 4, 1.2f);  // multiplicative, no mean
    assert_float_equal(y[1], 0.6f, 1e-6);
    assert_float_equal(y[2], 1.0f, 1e-6);
    memcpy(y, x, sizeof x);
    ser_dl_kornia_grayscale(y, 4);
    assert_float_equal(y[0], 0.299f * 0.1f + 0.587f * 0.5f + 0.114f * 0.9f, 1e-6);
    memcpy(y, x, sizeof x);
    ser_dl_kornia_hue(y, 4, 0.0f);  // identity up to float
    ser_dl_kornia_saturation(y, 4, 1.0f);
    for (int i = 0; i < 12; i++) assert_float_equal(y[i], x[i], 1e-5);
    memcpy(y, x, sizeof x);
    ser_dl_kornia_hue(y, 4, 1.0f / 3.0f);  // 120 degrees: (r,g,b) -> (b,r,g)
    assert_float_equal(y[0], x[2], 1e-5);
    assert_float_equal(y[1], x[0], 1e-5);
    assert_float_equal(y[2], x[1], 1e-5);
    memcpy(y, x, sizeof x);
    ser_dl_kornia_solarize(y, 4, 0.5f);
    assert_float_equal(y[0], 0.1f, 1e-6);
    assert_float_equal(y[2], 0.1f, 1e-6);
    // Blur: a constant image stays constant; mass is kept on a ramp's interior.
    float img[12 * 10 * 3], tmp[12 * 10 * 3];
    for (int i = 0; i < 360; i++) img[i] = 0.25f;
    ser_dl_kornia_blur(img, 12, 10, 1.7f, tmp);
    for (int i = 0; i < 360; i++) assert_float_equal(img[i], 0.25f, 1e-6);
    // The vectorised blur is its plain twin bit for bit, reflections of reflections included
    // (images narrower than the 4-pixel reach), and it moves the pixels.
    static const int sz[][2] = {{1, 1}, {2, 3}, {3, 5}, {5, 4}, {28, 28}, {31, 17}, {96, 96}};
    for (size_t z = 0; z < sizeof sz / sizeof sz[0]; z++) {
        int w = sz[z][0], h = sz[z][1], n = w * h * 3;
        float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
        float *t = malloc(sizeof(float) * (size_t)n);
        ser_rng r;
        ser_rng_init(&r, 7, (uint32_t)z, 0, SER_RNG_CROP);
        for (int i = 0; i < n; i++) a[i] = b[i] = (float)ser_rng_uniform_double(&r);
        float before = a[n / 2];
        ser_dl_kornia_blur(a, w, h, 0.1f + 0.3f * (float)z, t);
        ser_dl_kornia_blur_naive(b, w, h, 0.1f + 0.3f * (float)z, t);
        assert_memory_equal(a, b, sizeof(float) * (size_t)n);
        if (w * h > 9) assert_true(a[n / 2] != before);
        free(a), free(b), free(t);
    }
}

static void test_rrc_params(void **state) {
    (void)state;
    ser_rng r;
    ser_rng_init(&r, 1, 0, 0, SER_RNG_CROP);
    for (int t = 0; t < 2000; t++) {
        int i, j, h, w;
        ser_dl_rrc_params(&r, 120, 80, 0.08, 1.0, 3.0 / 4, 4.0 / 3, &i, &j, &h, &w);
        assert_true(h > 0 && w > 0 && i >= 0 && j >= 0 && i + h <= 80 && j + w <= 120);
        double ar = (double)w / h;
        assert_true(ar > 0.6 && ar < 1.6);
    }
    // Fallback on an extreme aspect: the centre crop with the ratio clamped to 4/3.
    ser_rng_init(&r, 2, 0, 0, SER_RNG_CROP);
    int i, j, h, w;
    ser_dl_rrc_params(&r, 400, 10, 0.99, 1.0, 3.0 / 4, 4.0 / 3, &i, &j, &h, &w);
    assert_int_equal(h, 10);
    assert_int_equal(w, 13);
    assert_int_equal(i, 0);
    assert_int_equal(j, (400 - 13) / 2);
}

static void test_photo_draw_is_pure(void **state) {
    (void)state;
    ser_dl_photo a, b, c;
    ser_dl_photo_draw(&a, SER_DL_POLICY_TORCHVISION, 9, 1, 77, 1, NULL, NULL);
    ser_dl_photo_draw(&b, SER_DL_POLICY_TORCHVISION, 9, 1, 77, 1, NULL, NULL);
    ser_dl_photo_draw(&c, SER_DL_POLICY_TORCHVISION, 9, 1, 78, 1, NULL, NULL);
    assert_memory_equal(&a, &b, sizeof a);
    assert_true(memcmp(&a, &c, sizeof a) != 0);
    // Rates over many samples: jitter 0.8, gray 0.2, blur 1.0 / 0.1, solarize 0 / 0.2.
    int jit = 0, gray = 0, blur[2] = {0, 0}, sol[2] = {0, 0};
    for (uint32_t i = 0; i < 4000; i++)
        for (int v = 0; v < 2; v++) {
            ser_dl_photo_draw(&a, SER_DL_POLICY_TORCHVISION, 5, 0, i, v, NULL, NULL);
            jit += a.jitter, gray += a.gray, blur[v] += a.blur, sol[v] += a.solarize;
            assert_true(a.b >= 0.6f && a.b <= 1.4f && a.h >= -0.1f && a.h <= 0.1f);
            assert_true(a.sigma >= 0.1f && a.sigma <= 2.0f);
        }
    assert_true(abs(jit - 6400) < 200 && abs(gray - 1600) < 150);
    assert_int_equal(blur[0], 4000);
    assert_true(abs(blur[1] - 400) < 80);
    assert_int_equal(sol[0], 0);
    assert_true(abs(sol[1] - 800) < 110);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_torchvision_fixtures), cmocka_unit_test(test_resize_naive_twin),
        cmocka_unit_test(test_blur_naive_twin),      cmocka_unit_test(test_hue_naive_twin),
        cmocka_unit_test(test_kornia_ops),
        cmocka_unit_test(test_rrc_params),           cmocka_unit_test(test_photo_draw_is_pure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
