// test_dl_harden.c — the loader against hostile input: bad JPEGs that leave decoder state
// behind, and dataset trees with FIFOs, devices, link loops, huge files and deep folders.
//
// The JPEGs are made by the test (ser_dl_encode_jpeg) and damaged the way real files are: cut
// just before the SOS marker, or with an SOF0 that says 0x0. With libjpeg-turbo 2.1.5 either
// one left on a reused TurboJPEG handle made the next good image fail, so which file was
// "bad" depended on what the thread had decoded before. Walk tests run under alarm(): a FIFO
// that is opened, or a link loop that is followed, shows up as SIGALRM instead of a hang.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "ser_base.h"
#include "ser_dl_data.h"
#include "ser_test.h"

#define S_ALARM_S 20  // seconds any walk or load below may take before it counts as a hang

static char s_tmp[256];

static int s_setup(void **state) {
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/ser_test_dl_harden_XXXXXX");
    return mkdtemp(s_tmp) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    ser_test_rm_rf(s_tmp);  // removes links themselves, never what they point at
    return 0;
}

// Writes a w x h JPEG with content that differs per k (a ramp plus a k-dependent stripe).
static void s_good_jpeg(const char *path, int w, int h, int k) {
    uint8_t *px = malloc((size_t)w * h * 3);
    assert_non_null(px);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *o = px + ((size_t)y * w + x) * 3;
            o[0] = (uint8_t)(x * 255 / w);
            o[1] = (uint8_t)(y * 255 / h);
            o[2] = (uint8_t)(((x + 3 * k) / 4 % 2) * 180 + 30 * k);
        }
    assert_int_equal(ser_dl_encode_jpeg(path, px, w, h, 90), SER_OK);
    free(px);
}

static void s_assert_same_image(const ser_dl_image *a, const ser_dl_image *b) {
    assert_int_equal(a->w, b->w);
    assert_int_equal(a->h, b->h);
    assert_memory_equal(a->px, b->px, (size_t)a->w * a->h * 3);
}

// --- decoder state ---------------------------------------------------------------------------

static void test_decoder_reset_after_header_error(void **state) {
    (void)state;
    enum { NGOOD = 4 };
    char p[400], err[256];
    uint8_t *good[NGOOD];
    size_t ngood[NGOOD];
    ser_dl_image ref[NGOOD] = {{0}};
    for (int k = 0; k < NGOOD; k++) {
        snprintf(p, sizeof p, "%s/good%d.jpg", s_tmp, k);
        s_good_jpeg(p, 40 + 8 * k, 30 + 4 * k, k);
        good[k] = ser_test_read_file(p, &ngood[k]);
        // The reference: each good file on a fresh, temporary handle.
        assert_int_equal(ser_dl_decode_jpeg(NULL, good[k], ngood[k], &ref[k], err), SER_OK);
    }
    size_t ncut, nsof;
    snprintf(p, sizeof p, "%s/cut.jpg", s_tmp);
    ser_test_write_jpeg_cut(p, good[0], ngood[0]);
    uint8_t *cut = ser_test_read_file(p, &ncut);
    snprintf(p, sizeof p, "%s/sof0.jpg", s_tmp);
    ser_test_write_jpeg_sof0_zero(p, good[0], ngood[0]);
    uint8_t *sof = ser_test_read_file(p, &nsof);

    void *tj = tjInitDecompress();
    assert_non_null(tj);
    ser_dl_image im = {0};
    // (a) cut before SOS, then the same image whole, on one handle.
    assert_int_equal(ser_dl_decode_jpeg(&tj, cut, ncut, &im, err), SER_EFORMAT);
    fprintf(stderr, "expected error (cut before SOS): %s\n", err);
    assert_null(im.px);
    assert_non_null(tj);
    assert_int_equal(ser_dl_decode_jpeg(&tj, good[0], ngood[0], &im, err), SER_OK);
    s_assert_same_image(&im, &ref[0]);
    ser_dl_image_free(&im);
    // (b) SOF0 0x0, then several good images on the same handle.
    assert_int_equal(ser_dl_decode_jpeg(&tj, sof, nsof, &im, err), SER_EFORMAT);
    fprintf(stderr, "expected error (SOF0 0x0): %s\n", err);
    for (int k = 0; k < NGOOD; k++) {
        assert_int_equal(ser_dl_decode_jpeg(&tj, good[k], ngood[k], &im, err), SER_OK);
        s_assert_same_image(&im, &ref[k]);
        ser_dl_image_free(&im);
    }
    // Both in a row, then good again; and a NULL *tj is made on first use.
    assert_int_equal(ser_dl_decode_jpeg(&tj, cut, ncut, &im, err), SER_EFORMAT);
    assert_int_equal(ser_dl_decode_jpeg(&tj, sof, nsof, &im, err), SER_EFORMAT);
    assert_int_equal(ser_dl_decode_jpeg(&tj, good[3], ngood[3], &im, err), SER_OK);
    s_assert_same_image(&im, &ref[3]);
    ser_dl_image_free(&im);
    tjDestroy(tj);
    tj = NULL;
    assert_int_equal(ser_dl_decode_jpeg(&tj, good[1], ngood[1], &im, err), SER_OK);
    assert_non_null(tj);
    s_assert_same_image(&im, &ref[1]);
    ser_dl_image_free(&im);
    tjDestroy(tj);

    for (int k = 0; k < NGOOD; k++) {
        free(good[k]);
        ser_dl_image_free(&ref[k]);
    }
    free(cut);
    free(sof);
}

// A header announcing more than PIL's decompression-bomb limit (2 x MAX_IMAGE_PIXELS =
// 178956970 pixels) is refused before any allocation, as torchvision refuses it.
static void test_decompression_bomb(void **state) {
    (void)state;
    char path[400], err[256];
    snprintf(path, sizeof path, "%s/bomb.jpg", s_tmp);
    s_good_jpeg(path, 16, 16, 1);
    size_t n;
    uint8_t *b = ser_test_read_file(path, &n);
    size_t sof = 0;
    for (size_t i = 2; i + 9 < n && !sof; i++)
        if (b[i] == 0xFF && b[i + 1] == 0xC0) sof = i;
    assert_true(sof > 0);
    b[sof + 5] = 16384 >> 8, b[sof + 6] = 0, b[sof + 7] = 16384 >> 8, b[sof + 8] = 0;
    void *tj = NULL;
    ser_dl_image im;
    memset(&im, 0, sizeof im);
    assert_int_equal(ser_dl_decode_jpeg(&tj, b, n, &im, err), SER_EFORMAT);
    assert_non_null(strstr(err, "out of range"));
    assert_null(im.px);
    fprintf(stderr, "expected error: %s\n", err);
    tjDestroy(tj);
    free(b);
}

// Loads every index of d on one handle, in order (dir > 0) or in reverse; keeps the images.
static void s_load_all(ser_dl_data *d, int dir, ser_dl_image *ims, uint32_t *src) {
    uint32_t n = ser_dl_data_count(d);
    void *tj = tjInitDecompress();
    assert_non_null(tj);
    for (uint32_t q = 0; q < n; q++) {
        uint32_t i = dir > 0 ? q : n - 1 - q;
        assert_int_equal(ser_dl_data_load(d, i, &tj, &ims[i], &src[i]), SER_OK);
    }
    tjDestroy(tj);
}

static void test_replacement_independent_of_order(void **state) {
    (void)state;
    char root[300], p[400], q[400], err[256];
    snprintf(root, sizeof root, "%s/order", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 6, 40, 30, 7, err), SER_OK);
    // Bad files sort right after a good one and right before another good one ("iNNNNa_..."),
    // so a decoder left dirty by them fails the next, good, index.
    snprintf(q, sizeof q, "%s/train/c00/i0000.jpg", root);
    size_t n;
    uint8_t *good = ser_test_read_file(q, &n);
    snprintf(p, sizeof p, "%s/train/c00/i0001a_cut.jpg", root);
    ser_test_write_jpeg_cut(p, good, n);
    snprintf(p, sizeof p, "%s/train/c00/i0003a_sof0.jpg", root);
    ser_test_write_jpeg_sof0_zero(p, good, n);
    snprintf(p, sizeof p, "%s/train/c01/i0002a_sof0.jpg", root);
    ser_test_write_jpeg_sof0_zero(p, good, n);
    snprintf(p, sizeof p, "%s/train/c01/i0004a_cut.jpg", root);
    ser_test_write_jpeg_cut(p, good, n);
    free(good);

    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    uint32_t cnt = ser_dl_data_count(d);
    assert_int_equal(cnt, 2 * 6 + 4);
    ser_dl_image *fwd = calloc(cnt, sizeof *fwd), *rev = calloc(cnt, sizeof *rev);
    uint32_t *sf = calloc(cnt, sizeof *sf), *sr = calloc(cnt, sizeof *sr);
    assert_true(fwd && rev && sf && sr);
    s_load_all(d, +1, fwd, sf);
    assert_int_equal(ser_dl_data_bad_files(d), 4);
    ser_dl_data_destroy(&d);
    d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    s_load_all(d, -1, rev, sr);
    assert_int_equal(ser_dl_data_bad_files(d), 4);

    char path[512];
    for (uint32_t i = 0; i < cnt; i++) {
        ser_dl_data_path(d, i, path, sizeof path);
        int bad = strstr(path, "a_cut.jpg") || strstr(path, "a_sof0.jpg");
        // A good file is never replaced; a bad one by the next index, which is good.
        if (sf[i] != (bad ? i + 1 : i) || sr[i] != sf[i])
            fprintf(stderr, "index %u (%s): source %u in order, %u in reverse\n", i, path, sf[i],
                    sr[i]);
        assert_int_equal(sf[i], bad ? i + 1 : i);
        assert_int_equal(sr[i], sf[i]);
        s_assert_same_image(&fwd[i], &rev[i]);
        ser_dl_image_free(&fwd[i]);
        ser_dl_image_free(&rev[i]);
    }
    ser_dl_data_destroy(&d);
    free(fwd), free(rev), free(sf), free(sr);
}

// --- the dataset walk and file reads ---------------------------------------------------------

static void s_path(char *buf, size_t n, const char *root, const char *rel) {
    snprintf(buf, n, "%s/%s", root, rel);
}

static void test_walk_skips_fifos_devices_and_link_loops(void **state) {
    (void)state;
    char root[300], cache[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/walk", s_tmp);
    snprintf(cache, sizeof cache, "%s/walk-cache", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 2, 3, 32, 24, 3, err), SER_OK);
    s_path(p, sizeof p, root, "train/c00/a.jpg");
    assert_int_equal(mkfifo(p, 0644), 0);
    s_path(p, sizeof p, root, "train/c01/z.jpg");
    assert_int_equal(symlink("/dev/zero", p), 0);
    s_path(p, sizeof p, root, "train/c00/self");
    assert_int_equal(symlink(".", p), 0);
    s_path(p, sizeof p, root, "train/c01/self");
    assert_int_equal(symlink(".", p), 0);
    s_path(p, sizeof p, root, "train/c01/up");
    assert_int_equal(symlink("..", p), 0);
    s_path(p, sizeof p, root, "train/c00/sibling");  // another class: must not relabel it
    assert_int_equal(symlink("../c01", p), 0);
    s_path(p, sizeof p, root, "train/c00/gone.jpg");  // dangling
    assert_int_equal(symlink("no-such-file.jpg", p), 0);

    alarm(S_ALARM_S);
    for (int pass = 0; pass < 2; pass++) {  // a fresh walk, then the index from the cache
        ser_dl_data *d =
            ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, cache, err);
        if (!d) fprintf(stderr, "open failed: %s\n", err);
        assert_non_null(d);
        assert_int_equal(ser_dl_data_index_from_cache(d), pass);
        assert_int_equal(ser_dl_data_count(d), 2 * 3);
        assert_int_equal(ser_dl_data_num_classes(d), 2);
        void *tj = NULL;
        for (uint32_t i = 0; i < 6; i++) {
            ser_dl_image im = {0};
            uint32_t src;
            assert_int_equal(ser_dl_data_load(d, i, &tj, &im, &src), SER_OK);
            assert_int_equal(src, i);
            assert_int_equal(ser_dl_data_label(d, i), (int)(i / 3));
            ser_dl_image_free(&im);
        }
        assert_int_equal(ser_dl_data_bad_files(d), 0);
        tjDestroy(tj);
        ser_dl_data_destroy(&d);
    }
    alarm(0);
}

static void test_files_swapped_after_indexing(void **state) {
    (void)state;
    char root[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/swap", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 1, 6, 32, 24, 5, err), SER_OK);
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 6);
    // After the index is built: i0001 becomes a FIFO, i0002 a link to /dev/zero, i0004 a
    // (sparse) file one byte over the 64 MiB cap.
    s_path(p, sizeof p, root, "train/c00/i0001.jpg");
    assert_int_equal(unlink(p), 0);
    assert_int_equal(mkfifo(p, 0644), 0);
    s_path(p, sizeof p, root, "train/c00/i0002.jpg");
    assert_int_equal(unlink(p), 0);
    assert_int_equal(symlink("/dev/zero", p), 0);
    s_path(p, sizeof p, root, "train/c00/i0004.jpg");
    int fd = open(p, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, ((off_t)64 << 20) + 1), 0);
    close(fd);

    alarm(S_ALARM_S);
    const uint32_t want[6] = {0, 3, 3, 3, 5, 5};
    void *tj = NULL;
    for (uint32_t i = 0; i < 6; i++) {
        ser_dl_image im = {0};
        uint32_t src;
        assert_int_equal(ser_dl_data_load(d, i, &tj, &im, &src), SER_OK);
        assert_int_equal(src, want[i]);
        ser_dl_image_free(&im);
    }
    alarm(0);
    assert_int_equal(ser_dl_data_bad_files(d), 3);
    tjDestroy(tj);
    ser_dl_data_destroy(&d);
}

static void test_walk_depth_limit(void **state) {
    (void)state;
    char root[300], p[400], err[256];
    snprintf(root, sizeof root, "%s/deep", s_tmp);
    assert_int_equal(ser_dl_data_make_synthetic(root, 1, 1, 16, 16, 9, err), SER_OK);
    // 17 folder levels below the class folder, with an image at level 16.
    s_path(p, sizeof p, root, "train/c00");
    for (int k = 1; k <= 17; k++) {
        size_t l = strlen(p);
        snprintf(p + l, sizeof p - l, "/d%d", k);
        assert_int_equal(mkdir(p, 0755), 0);
        if (k == 16) {
            char q[440];
            snprintf(q, sizeof q, "%s/deep.jpg", p);
            s_good_jpeg(q, 16, 16, 1);
        }
    }
    assert_null(ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err));
    fprintf(stderr, "expected error: %s\n", err);
    assert_non_null(strstr(err, "d17"));
    assert_non_null(strstr(err, "SER_DL_MAX_DEPTH"));
    // 16 levels are fine, and the image there is indexed.
    assert_int_equal(rmdir(p), 0);
    ser_dl_data *d = ser_dl_data_open(root, SER_DL_KIND_IMAGEFOLDER, SER_DL_SPLIT_TRAIN, NULL, err);
    assert_non_null(d);
    assert_int_equal(ser_dl_data_count(d), 2);
    ser_dl_data_destroy(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decoder_reset_after_header_error),
        cmocka_unit_test(test_decompression_bomb),
        cmocka_unit_test(test_replacement_independent_of_order),
        cmocka_unit_test(test_walk_skips_fifos_devices_and_link_loops),
        cmocka_unit_test(test_files_swapped_after_indexing),
        cmocka_unit_test(test_walk_depth_limit),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
