// test_dl_data.c — dataset readers, the index cache and bad-input handling.
//
// Every dataset is generated in a temporary folder by the test itself (TurboJPEG encodes the
// JPEGs; CIFAR-10 and IDX files are written byte by byte); the real Fashion-MNIST of Debian's
// dataset-fashion-mnist is read when installed, else that test says why it is skipped.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include "ser_base.h"
#include "ser_dl_data.h"
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
    snprintf(p, sizeof p, "%s/train/c02/skipped.png", root);
    ser_test_write_file(p, "png", 3);

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
    assert_non_null(strstr(err, "val"));
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_imagefolder_index_cache_and_bad_files),
        cmocka_unit_test(test_all_bad_is_an_error),
        cmocka_unit_test(test_cifar10_binary),
        cmocka_unit_test(test_fmnist_idx),
        cmocka_unit_test(test_fmnist_debian),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
