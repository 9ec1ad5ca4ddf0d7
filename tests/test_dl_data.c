// test_dl_data.c — dataset readers, the index cache, bad-input handling and its budget, PNG
// decoding, and the name of ImageFolder's validation split.
//
// Every dataset is generated in a temporary folder by the test itself (TurboJPEG encodes the
// JPEGs, libpng the PNGs; CIFAR-10 and IDX files are written byte by byte); the real
// Fashion-MNIST of Debian's dataset-fashion-mnist is read when installed, else that test says
// why it is skipped.
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_dl.h"
#include "ser_dl_data.h"
#include "ser_eval_data.h"
#include "ser_test.h"

static char s_tmp[256];

static int s_setup(void **state) {
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/ser_test_dl_data_XXXXXX");
    return mkdtemp(s_tmp) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

// A grayscale JPEG and a CMYK JPEG through TurboJPEG.
static void s_write_special(const char *gray_path, const char *cmyk_path) {
    tjhandle tj = tjInitCompress();
    uint8_t g[16 * 12], k[16 * 12 * 4];
    for (int i = 0; i < 16 * 12; i++) {
        g[i] = (uint8_t)(i * 7);
        k[4 * i] = (uint8_t)(i * 3), k[4 * i + 1] = (uint8_t)(255 - i), k[4 * i + 2] = 40,
        k[4 * i + 3] = (uint8_t)(i & 63);
    }
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    assert_int_equal(tjCompress2(tj, g, 16, 0, 12, TJPF_GRAY, &jpg, &len, TJSAMP_GRAY, 90, 0), 0);
    ser_test_write_file(gray_path, jpg, len);
    tjFree(jpg);
    jpg = NULL;
    assert_int_equal(tjCompress2(tj, k, 16, 0, 12, TJPF_CMYK, &jpg, &len, TJSAMP_444, 95, 0), 0);
    ser_test_write_file(cmyk_path, jpg, len);
    tjFree(jpg);
    tjDestroy(tj);
}

static void test_imagefolder_index_cache_and_bad_files(void **state) {
    (void)state;
    char root[300], p[400], cache[300], err[256];
    snprintf(root, sizeof root, "%s/imgs", s_tmp);
    snprintf(cache, sizeof cache, "%s/cache", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 3, 4, 40, 30, 1, err), SER_OK);
    // Special and bad files in class c01 (sorted names: they come after i0003.jpg).
    snprintf(p, sizeof p, "%s/train/c01/j0_gray.jpg", root);
    char q[400];
    snprintf(q, sizeof q, "%s/train/c01/j1_cmyk.JPEG", root);
    s_write_special(p, q);
    snprintf(p, sizeof p, "%s/train/c01/j2_empty.jpg", root);
    ser_test_write_file(p, "", 0);
    snprintf(p, sizeof p, "%s/train/c01/j3_text.jpg", root);
    ser_test_write_file(p, "hello, not a jpeg\n", 18);
    snprintf(q, sizeof q, "%s/train/c01/i0000.jpg", root);
    size_t n;
    uint8_t *good = ser_test_read_file(q, &n);
    snprintf(p, sizeof p, "%s/train/c01/j4_truncated.jpg", root);
    ser_test_write_file(p, good, n * 7 / 8);  // header intact, scan data cut short
    snprintf(p, sizeof p, "%s/train/c01/j5_corrupt.jpg", root);
    for (size_t i = n / 3; i < n - 2; i++) good[i] = (uint8_t)(good[i] * 31 + 7);
    ser_test_write_file(p, good, n);
    free(good);
    snprintf(p, sizeof p, "%s/train/c02/skipped.webp", root);  // a format not read
    ser_test_write_file(p, "webp", 4);

    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_TRAIN, cache, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_kind(d), SER_DL_KIND_IMAGEFOLDER);
    assert_int_equal(ser_dl_data_count(d), 3 * 4 + 6);
    assert_int_equal(ser_dl_data_num_classes(d), 3);
    assert_false(ser_dl_data_index_from_cache(d));
    // Order: class by class, files sorted by name.
    assert_int_equal(ser_dl_data_label(d, 0), 0);
    assert_int_equal(ser_dl_data_label(d, 4), 1);
    assert_int_equal(ser_dl_data_label(d, 17), 2);
    char path[512];
    assert_non_null(strstr(ser_dl_data_path(d, 8, path, sizeof path), "c01/j0_gray.jpg"));
    // Decode everything: grayscale (8) and CMYK (9) convert to RGB; the 4 bad files (10 empty,
    // 11 text, 12 truncated, 13 corrupt) are replaced by the next good index, 14 =
    // c02/i0000.jpg.
    ser_dl_image im = {0};
    uint32_t src;
    for (uint32_t i = 0; i < ser_dl_data_count(d); i++) {
        assert_int_equal(ser_dl_data_load(d, i, NULL, &im, &src), SER_OK);
        assert_true(im.w > 0 && im.h > 0);
        if (i >= 10 && i <= 13)
            assert_int_equal(src, 14);
        else
            assert_int_equal(src, i);
        if (i == 8) {  // grayscale: R = G = B
            for (int k = 0; k < im.w * im.h; k++) {
                assert_int_equal(im.px[3 * k], im.px[3 * k + 1]);
                assert_int_equal(im.px[3 * k], im.px[3 * k + 2]);
            }
        }
        ser_dl_image_free(&im);
    }
    assert_int_equal(ser_dl_data_bad_files(d), 4);
    assert_int_equal(ser_dl_data_replacements(d), 4);
    // Again: bad files are not logged or counted twice, replacements are.
    assert_int_equal(ser_dl_data_load(d, 11, NULL, &im, &src), SER_OK);
    assert_int_equal(src, 14);
    ser_dl_image_free(&im);
    assert_int_equal(ser_dl_data_bad_files(d), 4);
    assert_int_equal(ser_dl_data_replacements(d), 5);
    ser_dl_data_destroy(&d);
    assert_null(d);

    // Second open: from the cache, same index.
    d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, cache, err);
    assert_non_null(d);
    assert_true(ser_dl_data_index_from_cache(d));
    assert_int_equal(ser_dl_data_count(d), 18);
    assert_non_null(strstr(ser_dl_data_path(d, 8, path, sizeof path), "c01/j0_gray.jpg"));
    ser_dl_data_destroy(&d);
    // A new file changes its folder's mtime: the cache is rebuilt.
    snprintf(p, sizeof p, "%s/train/c00/z_new.jpg", root);
    snprintf(q, sizeof q, "%s/train/c00/i0000.jpg", root);
    good = ser_test_read_file(q, &n);
    ser_test_write_file(p, good, n);
    free(good);
    d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, cache, err);
    assert_non_null(d);
    assert_false(ser_dl_data_index_from_cache(d));
    assert_int_equal(ser_dl_data_count(d), 19);
    ser_dl_data_destroy(&d);

    // A val split that does not exist, a missing root, a root that is a file.
    assert_null(ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_VAL, NULL, err));
    fprintf(stderr, "expected error: %s\n", err);
    assert_non_null(strstr(err, "has no val/ or test/ folder"));
    snprintf(p, sizeof p, "%s/does-not-exist", s_tmp);
    assert_null(ser_dl_data_open(p, SER_DL_KIND_AUTO, SER_DL_SPLIT_TRAIN, NULL, err));
    fprintf(stderr, "expected error: %s\n", err);
    assert_non_null(strstr(err, "does-not-exist"));
    snprintf(p, sizeof p, "%s/train/c01/j3_text.jpg", root);
    assert_null(ser_dl_data_open(p, SER_DL_KIND_AUTO, SER_DL_SPLIT_TRAIN, NULL, err));
    // A root without any JPEG.
    snprintf(p, sizeof p, "%s/empty", s_tmp);
    mkdir(p, 0755);
    assert_null(ser_dl_data_open(p, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err));
    fprintf(stderr, "expected error: %s\n", err);
}

// --- PNG -------------------------------------------------------------------------------------

// Samples of a w x h image of colour type ct at bit depth bd: (h, w, channels), each in
// [0, 2^bd - 1] (palette: an index below npal), from a fixed hash of (x, y, c). 16-bit grey
// spans 0..599 so that PIL's clip to 255 shows on both sides.
static int s_png_channels(int ct) {
    return ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_PALETTE ? 1
           : ct == PNG_COLOR_TYPE_GRAY_ALPHA                          ? 2
           : ct == PNG_COLOR_TYPE_RGB                                 ? 3
                                                                      : 4;
}

static uint16_t *s_png_samples(int w, int h, int bd, int ct, int npal) {
    int ch = s_png_channels(ct);
    uint16_t *v = malloc(sizeof(uint16_t) * (size_t)w * h * ch);
    assert_non_null(v);
    uint32_t top = bd == 16 && ct == PNG_COLOR_TYPE_GRAY ? 600 : (1u << bd);
    if (ct == PNG_COLOR_TYPE_PALETTE) top = (uint32_t)npal;
    for (int i = 0; i < w * h * ch; i++) {
        uint32_t x = (uint32_t)i * 2654435761u + (uint32_t)(bd * 31 + ct);
        x ^= x >> 13;
        v[i] = (uint16_t)(x % top);
    }
    return v;
}

// Writes samples v as a PNG file with libpng (pal/trns for palette images).
static void s_write_png(const char *path, int w, int h, int bd, int ct, int interlace,
                        const uint16_t *v, const png_color *pal, int npal, int ntrns) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    assert_non_null(info);
    assert_int_equal(setjmp(png_jmpbuf(png)), 0);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, bd, ct,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    png_byte trns[256];
    png_color_16 trns_col = {0, 1, 2, 3, 4};
    memset(trns, 7, sizeof trns);
    if (ntrns) png_set_tRNS(png, info, trns, ntrns, pal ? NULL : &trns_col);
    png_write_info(png, info);
    int ch = s_png_channels(ct);
    size_t rb = ((size_t)w * ch * bd + 7) / 8;
    uint8_t *img = calloc((size_t)h, rb);
    png_bytep *rows = malloc(sizeof(png_bytep) * (size_t)h);
    for (int y = 0; y < h; y++) {
        rows[y] = img + (size_t)y * rb;
        for (int k = 0; k < w * ch; k++) {
            unsigned val = v[(size_t)y * w * ch + k];
            if (bd == 16) {
                rows[y][2 * k] = (uint8_t)(val >> 8), rows[y][2 * k + 1] = (uint8_t)val;
            } else if (bd == 8) {
                rows[y][k] = (uint8_t)val;
            } else {  // packed, most significant bits first
                int bit = k * bd;
                rows[y][bit / 8] |= (uint8_t)(val << (8 - bd - bit % 8));
            }
        }
    }
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
    free(rows);
    free(img);
}

// What PIL's Image.open(f).convert("RGB") gives for sample v of pixel i.
static void s_png_expect(uint8_t *rgb, const uint16_t *v, int i, int bd, int ct,
                         const png_color *pal) {
    int ch = s_png_channels(ct);
    const uint16_t *p = v + (size_t)i * ch;
    if (ct == PNG_COLOR_TYPE_PALETTE) {
        rgb[0] = pal[p[0]].red, rgb[1] = pal[p[0]].green, rgb[2] = pal[p[0]].blue;
        return;
    }
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) {
        unsigned g = p[0];
        if (bd == 16) g = ct == PNG_COLOR_TYPE_GRAY ? (g > 255 ? 255 : g) : g >> 8;
        else if (bd < 8) g = g * 255 / ((1u << bd) - 1);
        rgb[0] = rgb[1] = rgb[2] = (uint8_t)g;
        return;
    }
    for (int c = 0; c < 3; c++) rgb[c] = (uint8_t)(bd == 16 ? p[c] >> 8 : p[c]);
}

static void test_png_decode_like_pil(void **state) {
    (void)state;
    png_color pal[16];
    for (int i = 0; i < 16; i++)
        pal[i] = (png_color){(png_byte)(i * 16), (png_byte)(255 - i * 9), (png_byte)(i * i)};
    static const struct {
        const char *name;
        int bd, ct, interlace, npal, ntrns;
    } cases[] = {
        {"rgb8", 8, PNG_COLOR_TYPE_RGB, 0, 0, 0},
        {"rgb8_interlaced", 8, PNG_COLOR_TYPE_RGB, 1, 0, 0},
        {"rgb8_trns", 8, PNG_COLOR_TYPE_RGB, 0, 0, 1},
        {"rgba8", 8, PNG_COLOR_TYPE_RGB_ALPHA, 0, 0, 0},
        {"rgb16", 16, PNG_COLOR_TYPE_RGB, 0, 0, 0},
        {"rgba16_interlaced", 16, PNG_COLOR_TYPE_RGB_ALPHA, 1, 0, 0},
        {"gray1", 1, PNG_COLOR_TYPE_GRAY, 0, 0, 0},
        {"gray2", 2, PNG_COLOR_TYPE_GRAY, 0, 0, 0},
        {"gray4_trns", 4, PNG_COLOR_TYPE_GRAY, 1, 0, 1},
        {"gray8", 8, PNG_COLOR_TYPE_GRAY, 0, 0, 0},
        {"gray16", 16, PNG_COLOR_TYPE_GRAY, 0, 0, 0},
        {"gray_alpha8", 8, PNG_COLOR_TYPE_GRAY_ALPHA, 0, 0, 0},
        {"gray_alpha16", 16, PNG_COLOR_TYPE_GRAY_ALPHA, 0, 0, 0},
        {"palette8_trns", 8, PNG_COLOR_TYPE_PALETTE, 0, 16, 5},
        {"palette4", 4, PNG_COLOR_TYPE_PALETTE, 0, 11, 0},
        {"palette1", 1, PNG_COLOR_TYPE_PALETTE, 1, 2, 0},
    };
    const int w = 13, h = 7;  // odd sizes: partial bytes of packed rows, every Adam7 pass
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char path[400], err[256] = "";
        snprintf(path, sizeof path, "%s/%s.png", s_tmp, cases[c].name);
        uint16_t *v = s_png_samples(w, h, cases[c].bd, cases[c].ct, cases[c].npal);
        s_write_png(path, w, h, cases[c].bd, cases[c].ct, cases[c].interlace, v,
                    cases[c].npal ? pal : NULL, cases[c].npal, cases[c].ntrns);
        size_t n;
        uint8_t *buf = ser_test_read_file(path, &n);
        ser_dl_image im = {0};
        int rc = ser_dl_decode_image(NULL, buf, n, &im, err);
        if (rc) fprintf(stderr, "%s: %s\n", cases[c].name, err);
        assert_int_equal(rc, SER_OK);
        assert_int_equal(im.w, w);
        assert_int_equal(im.h, h);
        int differ = 0;
        for (int i = 0; i < w * h; i++) {
            uint8_t want[3];
            s_png_expect(want, v, i, cases[c].bd, cases[c].ct, pal);
            if (memcmp(want, im.px + 3 * i, 3) && differ++ < 3)
                fprintf(stderr, "%s pixel %d: got %d %d %d, want %d %d %d\n", cases[c].name, i,
                        im.px[3 * i], im.px[3 * i + 1], im.px[3 * i + 2], want[0], want[1],
                        want[2]);
        }
        assert_int_equal(differ, 0);
        ser_dl_image_free(&im);
        free(buf);
        free(v);
    }
}

// Cut, corrupt, oversized and foreign PNGs: an error with a reason, never a crash or an image.
static void test_png_bad_input(void **state) {
    (void)state;
    char path[400], err[256];
    snprintf(path, sizeof path, "%s/good.png", s_tmp);
    const int w = 40, h = 30;
    uint16_t *v = s_png_samples(w, h, 8, PNG_COLOR_TYPE_RGB, 0);
    s_write_png(path, w, h, 8, PNG_COLOR_TYPE_RGB, 0, v, NULL, 0, 0);
    free(v);
    size_t n;
    uint8_t *good = ser_test_read_file(path, &n);
    ser_dl_image im = {0};
    // Every cut before the end of the last IDAT chunk (IEND is the last 12 bytes).
    for (size_t cut = 0; cut + 12 < n; cut += cut < 64 ? 1 : 7) {
        err[0] = 0;
        assert_int_equal(ser_dl_decode_png(good, cut, &im, err), SER_EFORMAT);
        assert_null(im.px);
        assert_true(err[0] != 0);
    }
    assert_int_equal(ser_dl_decode_png(good, n - 20, &im, err), SER_EFORMAT);
    fprintf(stderr, "expected error: %s\n", err);
    assert_non_null(strstr(err, "truncated"));
    // A flipped byte in the image data: the chunk's CRC fails.
    uint8_t *bad = malloc(n);
    memcpy(bad, good, n);
    bad[n - 30] ^= 0x55;
    assert_int_equal(ser_dl_decode_png(bad, n, &im, err), SER_EFORMAT);
    fprintf(stderr, "expected error: %s\n", err);
    assert_null(im.px);
    // An IHDR announcing 20000 x 20000 pixels (with a valid CRC): refused before any allocation.
    uint8_t big[8 + 25 + 12];
    memcpy(big, good, 8 + 8);  // signature, IHDR length and type
    const uint8_t dims[8] = {0, 0, 0x4e, 0x20, 0, 0, 0x4e, 0x20};
    memcpy(big + 16, dims, 8);
    memcpy(big + 24, good + 24, 5);  // depth, colour type, compression, filter, interlace
    uLong crc = crc32(0, big + 12, 17);
    big[29] = (uint8_t)(crc >> 24), big[30] = (uint8_t)(crc >> 16), big[31] = (uint8_t)(crc >> 8),
    big[32] = (uint8_t)crc;
    memcpy(big + 33, good + n - 12, 12);  // IEND
    assert_int_equal(ser_dl_decode_png(big, sizeof big, &im, err), SER_EFORMAT);
    fprintf(stderr, "expected error: %s\n", err);
    assert_non_null(strstr(err, "20000x20000 out of range (at most 178956970 pixels"));
    // Neither PNG nor JPEG.
    assert_int_equal(ser_dl_decode_image(NULL, (const uint8_t *)"GIF89a..", 8, &im, err),
                     SER_EFORMAT);
    assert_non_null(strstr(err, "not a JPEG or PNG file"));
    free(bad);
    free(good);
}

// An ImageFolder of PNGs (and a PNG named .jpg): indexed, decoded by their signature.
static void test_png_imagefolder(void **state) {
    (void)state;
    char root[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/pngs", s_tmp);
    const char *files[] = {"train/a/x.png", "train/a/y.PNG", "train/b/z.jpg"};
    uint16_t *v[3];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/train/%c", root, i < 2 ? 'a' : 'b');
        assert_int_equal(ser_mkdir_p(p, err), SER_OK);
        snprintf(p, sizeof p, "%s/%s", root, files[i]);
        v[i] = s_png_samples(9 + i, 5, 8, PNG_COLOR_TYPE_RGB, 0);
        s_write_png(p, 9 + i, 5, 8, PNG_COLOR_TYPE_RGB, 0, v[i], NULL, 0, 0);
    }
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 3);
    assert_int_equal(ser_dl_data_num_classes(d), 2);
    for (uint32_t i = 0; i < 3; i++) {
        ser_dl_image im = {0};
        uint32_t src;
        assert_int_equal(ser_dl_data_load(d, i, NULL, &im, &src), SER_OK);
        assert_int_equal(src, i);
        assert_int_equal(im.w, 9 + (int)i);
        for (int k = 0; k < im.w * im.h * 3; k++) assert_int_equal(im.px[k], v[i][k]);
        ser_dl_image_free(&im);
    }
    assert_int_equal(ser_dl_data_bad_files(d), 0);
    ser_dl_data_destroy(&d);
    for (int i = 0; i < 3; i++) free(v[i]);
}

// --- the bad-file budget ---------------------------------------------------------------------

// ROOT/train/c/ with ngood JPEGs and nbad fake ones (text named .jpg), interleaved by name.
static void s_mixed_tree(const char *root, int ngood, int nbad) {
    char p[400], err[256];
    assert_int_equal(ser_dl_data_make_synthetic(root, 1, ngood, 24, 20, 5, err), SER_OK);
    for (int i = 0; i < nbad; i++) {
        snprintf(p, sizeof p, "%s/train/c00/i%04db.jpg", root, i);
        ser_test_write_file(p, "not an image\n", 13);
    }
}

// ROOT's train split with the bad-file budget frac (< 0: none set, the default).
static ser_dl_data *s_open_budget(const char *root, double frac) {
    char err[256];
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    if (frac >= 0) ser_dl_data_set_max_bad(d, frac);
    return d;
}

static void test_bad_file_budget(void **state) {
    (void)state;
    char root[300], rep[400];
    // 12 bad of 24: a budget of 0.01 (at least SER_DL_BAD_FILES_FREE = 10 files) is passed.
    snprintf(root, sizeof root, "%s/mixed", s_tmp);
    s_mixed_tree(root, 12, 12);
    ser_dl_data *d = s_open_budget(root, 0.01);
    ser_dl_image im = {0};
    int rc = SER_OK;
    uint32_t i = 0;
    for (; i < ser_dl_data_count(d) && rc == SER_OK; i++) {
        rc = ser_dl_data_load(d, i, NULL, &im, NULL);
        ser_dl_image_free(&im);
    }
    assert_int_equal(rc, SER_EFORMAT);
    assert_int_equal(ser_dl_data_bad_files(d), 11);  // it stops at the first file past 10
    assert_int_equal(ser_dl_data_bad_report(d, rep, sizeof rep), SER_EFORMAT);
    fprintf(stderr, "report: %s\n", rep);
    assert_non_null(strstr(rep, "11 of 24 files cannot be decoded, more than "
                                "data.max_bad_fraction = 0.01 allows (10): c00/i0000b.jpg, "
                                "c00/i0001b.jpg, c00/i0002b.jpg, c00/i0003b.jpg, ... in "));
    assert_non_null(strstr(rep, "(c00/i0000b.jpg: not a JPEG or PNG file (13 bytes))"));
    // Every load fails from now on, good files included: the job stops.
    assert_int_equal(ser_dl_data_load(d, ser_dl_data_count(d) - 1, NULL, &im, NULL), SER_EFORMAT);
    ser_dl_data_destroy(&d);
    // A budget of 1: every bad file is replaced, as without one, with the same sources.
    d = s_open_budget(root, 1.0);
    ser_dl_data *none = s_open_budget(root, -1);
    for (i = 0; i < ser_dl_data_count(d); i++) {
        uint32_t a, b;
        assert_int_equal(ser_dl_data_load(d, i, NULL, &im, &a), SER_OK);
        ser_dl_image_free(&im);
        assert_int_equal(ser_dl_data_load(none, i, NULL, &im, &b), SER_OK);
        ser_dl_image_free(&im);
        assert_int_equal(a, b);
    }
    assert_int_equal(ser_dl_data_bad_files(d), 12);
    assert_int_equal(ser_dl_data_bad_report(d, rep, sizeof rep), SER_OK);
    assert_non_null(strstr(rep, "12 of 24 files cannot be decoded: "));
    ser_dl_data_destroy(&d);
    ser_dl_data_destroy(&none);
    // A few bad files in a small dataset stay under the free allowance of 10.
    snprintf(root, sizeof root, "%s/fewbad", s_tmp);
    s_mixed_tree(root, 4, 3);
    d = s_open_budget(root, 0.0);
    for (i = 0; i < ser_dl_data_count(d); i++) {
        assert_int_equal(ser_dl_data_load(d, i, NULL, &im, NULL), SER_OK);
        ser_dl_image_free(&im);
    }
    ser_dl_data_destroy(&d);
    // Nothing decodes: named as such.
    snprintf(root, sizeof root, "%s/nonebad", s_tmp);
    s_mixed_tree(root, 0, 5);
    d = s_open_budget(root, 0.01);
    assert_int_equal(ser_dl_data_load(d, 2, NULL, &im, NULL), SER_EFORMAT);
    assert_int_equal(ser_dl_data_bad_report(d, rep, sizeof rep), SER_EFORMAT);
    fprintf(stderr, "report: %s\n", rep);
    assert_non_null(strstr(rep, "none of the 5 files can be decoded: c00/i0002b.jpg, "));
    ser_dl_data_destroy(&d);
}

// --- the validation split's folder -----------------------------------------------------------

static void test_val_or_test_split(void **state) {
    (void)state;
    char root[300], src[700], dst[400], err[256];
    snprintf(root, sizeof root, "%s/splits", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 3, 24, 20, 9, err), SER_OK);
    // test/ only: the validation split (torchvision's exports name it so).
    snprintf(src, sizeof src, "cp -r '%s/train' '%s/test'", root, root);
    assert_int_equal(system(src), 0);
    snprintf(dst, sizeof dst, "%s/test/c00/i0000.jpg", root);
    unlink(dst);  // told apart from train by its size
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_VAL, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 5);
    assert_non_null(strstr(ser_dl_data_dir(d), "/splits/test"));
    ser_dl_data_destroy(&d);
    // The evaluation uses it as its test split instead of holding out 20% of train.
    ser_config cfg;
    ser_config_defaults(&cfg);
    ser_eval_data ed;
    snprintf(src, sizeof src, "imagefolder:%s", root);
    assert_int_equal(ser_eval_data_open(&ed, src, &cfg, 100, 100, 1, err), SER_OK);
    assert_string_equal(ed.test_split, "test");
    assert_int_equal(ed.te.total, 5);
    assert_int_equal(ed.tr.total, 6);
    ser_eval_data_free(&ed);
    // val/ and test/: val/ first.
    snprintf(src, sizeof src, "cp -r '%s/train' '%s/val'", root, root);
    assert_int_equal(system(src), 0);
    d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_VAL, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 6);
    assert_non_null(strstr(ser_dl_data_dir(d), "/splits/val"));
    ser_dl_data_destroy(&d);
    snprintf(src, sizeof src, "imagefolder:%s", root);
    assert_int_equal(ser_eval_data_open(&ed, src, &cfg, 100, 100, 1, err), SER_OK);
    assert_string_equal(ed.test_split, "val");
    ser_eval_data_free(&ed);
}

static void test_all_bad_is_an_error(void **state) {
    (void)state;
    char root[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/allbad", s_tmp);
    mkdir(root, 0755);
    snprintf(p, sizeof p, "%s/a", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/a/x.jpg", root);
    ser_test_write_file(p, "x", 1);
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    ser_dl_image im = {0};
    assert_int_equal(ser_dl_data_load(d, 0, NULL, &im, NULL), SER_EFORMAT);
    assert_null(im.px);
    ser_dl_data_destroy(&d);
}

static void test_cifar10_binary(void **state) {
    (void)state;
    char root[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/cifar", s_tmp);
    mkdir(root, 0755);
    const char *names[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                           "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};
    uint8_t rec[2 * 3073];
    for (int f = 0; f < 6; f++) {
        for (int r = 0; r < 2; r++) {
            uint8_t *x = rec + r * 3073;
            x[0] = (uint8_t)((f * 2 + r) % 10);
            for (int i = 0; i < 3072; i++) x[1 + i] = (uint8_t)(i / 1024 * 100 + f * 2 + r);
        }
        snprintf(p, sizeof p, "%s/%s", root, names[f]);
        ser_test_write_file(p, rec, sizeof rec);
    }
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_kind(d), SER_DL_KIND_CIFAR10);
    assert_int_equal(ser_dl_data_count(d), 10);
    assert_int_equal(ser_dl_data_label(d, 7), 7);
    ser_dl_image im = {0};
    assert_int_equal(ser_dl_data_load(d, 7, NULL, &im, NULL), SER_OK);
    assert_int_equal(im.w, 32);
    assert_int_equal(im.h, 32);
    // Planes R, G, B -> HWC.
    assert_int_equal(im.px[0], 7);
    assert_int_equal(im.px[1], 107);
    assert_int_equal(im.px[3 * 1023 + 2], 207);
    ser_dl_image_free(&im);
    ser_dl_data_destroy(&d);
    d = ser_dl_data_open(root, SER_DL_KIND_CIFAR10, SER_DL_SPLIT_VAL, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 2);
    ser_dl_data_destroy(&d);
    // A truncated batch file is a clear error at open.
    snprintf(p, sizeof p, "%s/data_batch_3.bin", root);
    ser_test_write_file(p, rec, 100);
    assert_null(ser_dl_data_open(root, SER_DL_KIND_CIFAR10, SER_DL_SPLIT_TRAIN, NULL, err));
    fprintf(stderr, "expected error: %s\n", err);
}

static void s_write_gz(const char *path, const uint8_t *b, size_t n) {
    gzFile g = gzopen(path, "wb");
    assert_non_null(g);
    assert_int_equal(gzwrite(g, b, (unsigned)n), (int)n);
    gzclose(g);
}

static void test_fmnist_idx(void **state) {
    (void)state;
    char root[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/fmnist", s_tmp);
    mkdir(root, 0755);
    uint8_t img[16 + 3 * 28 * 28], lab[8 + 3];
    memset(img, 0, sizeof img);
    img[2] = 8, img[3] = 3, img[7] = 3, img[11] = 28, img[15] = 28;  // magic 0x803, n, h, w
    for (int i = 0; i < 3 * 784; i++) img[16 + i] = (uint8_t)(i % 251);
    memset(lab, 0, sizeof lab);
    lab[2] = 8, lab[3] = 1, lab[7] = 3, lab[8] = 9, lab[9] = 0, lab[10] = 4;
    const char *pre[] = {"train", "t10k"};
    for (int s = 0; s < 2; s++) {
        snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte.gz", root, pre[s]);
        s_write_gz(p, img, sizeof img);
        snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte.gz", root, pre[s]);
        s_write_gz(p, lab, sizeof lab);
    }
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_VAL, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_kind(d), SER_DL_KIND_FMNIST);
    assert_int_equal(ser_dl_data_count(d), 3);
    assert_int_equal(ser_dl_data_label(d, 0), 9);
    assert_int_equal(ser_dl_data_label(d, 2), 4);
    ser_dl_image im = {0};
    assert_int_equal(ser_dl_data_load(d, 1, NULL, &im, NULL), SER_OK);
    assert_int_equal(im.w, 28);
    assert_int_equal(im.px[0], 784 % 251);
    assert_int_equal(im.px[1], 784 % 251);
    assert_int_equal(im.px[5], 785 % 251);
    ser_dl_image_free(&im);
    ser_dl_data_destroy(&d);
    // Bad magic.
    img[3] = 4;
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", root);
    s_write_gz(p, img, sizeof img);
    assert_null(ser_dl_data_open(root, SER_DL_KIND_FMNIST, SER_DL_SPLIT_TRAIN, NULL, err));
    fprintf(stderr, "expected error: %s\n", err);
}

static void test_fmnist_debian(void **state) {
    (void)state;
    const char *root = "/usr/share/datasets/fashion-mnist";
    char p[300], err[256];
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte.gz", root);
    if (access(p, R_OK) != 0) {
        fprintf(stderr, "SKIP: %s not installed (Debian package dataset-fashion-mnist)\n", p);
        skip();
    }
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_AUTO, SER_DL_SPLIT_VAL, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 10000);
    assert_int_equal(ser_dl_data_label(d, 0), 9);  // the first test image is an ankle boot
    ser_dl_data_destroy(&d);
}

// data.kind = synthetic: generated images, no files. Each is a pure function of (split, index)
// (loaded twice, or in another order, it is the same), images differ, labels are index mod 10,
// and the job's loader config takes the kind and the size (which keys the shards' hash).
static void test_synthetic(void **state) {
    (void)state;
    char err[256];
    assert_null(ser_dl_data_open_synthetic(0, SER_DL_SPLIT_TRAIN, err));
    assert_non_null(strstr(err, "data.synthetic_images"));
    ser_dl_data *d = ser_dl_data_open_synthetic(50, SER_DL_SPLIT_TRAIN, err);
    ser_dl_data *v = ser_dl_data_open_synthetic(50, SER_DL_SPLIT_VAL, err);
    assert_non_null(d);
    assert_non_null(v);
    assert_int_equal(ser_dl_data_count(d), 50);
    assert_int_equal(ser_dl_data_kind(d), SER_DL_KIND_SYNTHETIC);
    assert_int_equal(ser_dl_data_num_classes(d), 10);
    assert_int_equal(ser_dl_data_label(d, 23), 3);
    ser_dl_image a, b, c, e;
    uint32_t src = 99;
    assert_int_equal(ser_dl_data_load(d, 7, NULL, &a, &src), SER_OK);
    assert_int_equal(src, 7);
    assert_int_equal(ser_dl_data_load(d, 8, NULL, &b, NULL), SER_OK);
    assert_int_equal(ser_dl_data_load(d, 7, NULL, &c, NULL), SER_OK);
    assert_int_equal(ser_dl_data_load(v, 7, NULL, &e, NULL), SER_OK);
    assert_int_equal(a.w, SER_DL_SYNTHETIC_SIDE);
    assert_int_equal(a.h, SER_DL_SYNTHETIC_SIDE);
    size_t nb = (size_t)a.w * a.h * 3;
    assert_memory_equal(a.px, c.px, nb);      // the same index: the same image
    assert_memory_not_equal(a.px, b.px, nb);  // another index
    assert_memory_not_equal(a.px, e.px, nb);  // the other split
    ser_dl_image_free(&a), ser_dl_image_free(&b), ser_dl_image_free(&c), ser_dl_image_free(&e);
    assert_int_equal(ser_dl_data_bad_files(d), 0);
    ser_dl_data_destroy(&d);
    ser_dl_data_destroy(&v);

    ser_config job;
    ser_config_defaults(&job);
    assert_int_equal(ser_config_set_arg(&job, "data.kind=synthetic", err), SER_OK);
    assert_int_equal(ser_config_set_arg(&job, "data.synthetic_images=64", err), SER_OK);
    ser_dl_config dc;
    ser_dl_config_from_job(&dc, &job);
    assert_int_equal(dc.kind, SER_DL_KIND_SYNTHETIC);
    assert_int_equal(dc.synthetic_images, 64);
    uint64_t h64 = ser_dl_config_hash(&dc);
    dc.synthetic_images = 65;
    assert_true(ser_dl_config_hash(&dc) != h64);
    dc.global_batch = 8, dc.shards = 2, dc.img = 16, dc.patch = 4, dc.threads = 1;
    ser_dl *dl = ser_dl_new(&dc, err);
    if (!dl) fail_msg("ser_dl_new: %s", err);
    assert_int_equal(ser_dl_count(dl), 65);
    ser_dl_shard sh;
    assert_int_equal(ser_dl_make_shard(dl, 3, 1, &sh), SER_OK);
    assert_int_equal(sh.n, 4);
    ser_dl_shard_free(&sh);
    ser_dl_destroy(&dl);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_imagefolder_index_cache_and_bad_files),
        cmocka_unit_test(test_all_bad_is_an_error),
        cmocka_unit_test(test_cifar10_binary),
        cmocka_unit_test(test_fmnist_idx),
        cmocka_unit_test(test_fmnist_debian),
        cmocka_unit_test(test_png_decode_like_pil),
        cmocka_unit_test(test_png_bad_input),
        cmocka_unit_test(test_png_imagefolder),
        cmocka_unit_test(test_bad_file_budget),
        cmocka_unit_test(test_val_or_test_split),
        cmocka_unit_test(test_synthetic),
    };
    if (getenv("SER_TEST_FILTER")) cmocka_set_test_filter(getenv("SER_TEST_FILTER"));  // "*png*"
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
