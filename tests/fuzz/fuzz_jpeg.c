// fuzz_jpeg.c — fuzzes the loader's JPEG path: ser_dl_decode_jpeg() (dataloader/ser_dl_data.h:
// the signature and size checks, TurboJPEG's header and decode, warnings against errors,
// grayscale, CMYK/YCCK with the Adobe marker scan), then what the loader does next with any
// image it accepts, at whatever size it has: RandomResizedCrop parameters, PIL resizing to
// 16 x 16 (bilinear or bicubic, chosen by the input), the flip and the torchvision photometric ops
// (dataloader/ser_dl_ops.h).
//
// The input is the file's bytes. One decoder handle is kept across inputs, as a loader thread
// keeps its own, and checked here beyond "no crash":
//   - an accepted image has 1 <= w, h and w*h <= 178956970 (ser_dl_decode_jpeg's limit, PIL's);
//   - a refusal comes with a reason and no image;
//   - after any input, the same handle decodes a fixed reference JPEG to the same pixels as a
//     fresh handle did at start (a bad file must not change the next image: test_dl_harden).
// Headers that announce more than 2^14 pixels (but no more than the 178956970 the decoder allows)
// are skipped, not decoded: such a decode is not wrong but takes milliseconds to seconds under
// the sanitizers (a few hundred bytes can announce 16384 x 16384 pixels), which would slow the
// fuzzer down to a few inputs per second (docs/fuzzing.md). Sizes over that limit still go to the
// decoder, which must refuse them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "fuzz_util.h"
#include "ser_base.h"
#include "ser_dl_data.h"

static void *s_tj;
static tjhandle s_hdr;
static unsigned char *s_ref_jpg;
static unsigned long s_ref_len;
static ser_dl_image s_ref;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    // The reference: a 12 x 10 colour gradient, 4:2:0, quality 90.
    uint8_t rgb[10][12][3];
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 12; x++) {
            rgb[y][x][0] = (uint8_t)(20 * x);
            rgb[y][x][1] = (uint8_t)(25 * y);
            rgb[y][x][2] = (uint8_t)(7 * x * y);
        }
    tjhandle c = tjInitCompress();
    s_hdr = tjInitDecompress();
    char err[256];
    if (!c || !s_hdr ||
        tjCompress2(c, &rgb[0][0][0], 12, 0, 10, TJPF_RGB, &s_ref_jpg, &s_ref_len, TJSAMP_420, 90,
                    0) != 0 ||
        ser_dl_decode_jpeg(NULL, s_ref_jpg, s_ref_len, &s_ref, err) != SER_OK) {
        fprintf(stderr, "fuzz_jpeg: cannot make the reference JPEG\n");
        abort();
    }
    tjDestroy(c);
    return 0;
}

static void s_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_jpeg: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_hdr) LLVMFuzzerInitialize(NULL, NULL);
    int w, h, sub, cs;
    if (size >= 4 &&
        tjDecompressHeader3(s_hdr, data, (unsigned long)size, &w, &h, &sub, &cs) == 0 &&
        (int64_t)w * h > ((int64_t)1 << 14) && (int64_t)w * h <= (int64_t)178956970)
        return 0;  // valid but slow: see the header comment
    ser_dl_image im = {0, 0, NULL};
    char err[256] = "";
    int rc = ser_dl_decode_jpeg(&s_tj, data, size, &im, err);
    if (rc == SER_OK) {
        if (!im.px || im.w < 1 || im.h < 1 || (int64_t)im.w * im.h > (int64_t)178956970)
            s_fail("accepted an image of a bad size", NULL);
        // The buffer must hold w*h*3 bytes (the sanitizer checks the last one; the resize below
        // reads the crop box).
        volatile uint8_t last = im.px[(size_t)im.w * im.h * 3 - 1];
        (void)last;
        char why[160];
        if (ser_fuzz_augment(&im, data, size, why, sizeof why)) s_fail(why, NULL);
        ser_dl_image_free(&im);
    } else {
        if (!err[0] || im.px) s_fail("a refusal without a reason, or with an image", err);
    }
    // The next image on the same handle is not affected.
    ser_dl_image again = {0, 0, NULL};
    if (ser_dl_decode_jpeg(&s_tj, s_ref_jpg, s_ref_len, &again, err) != SER_OK ||
        again.w != s_ref.w || again.h != s_ref.h ||
        memcmp(again.px, s_ref.px, (size_t)s_ref.w * s_ref.h * 3) != 0)
        s_fail("the reference JPEG decodes differently after this input", err);
    ser_dl_image_free(&again);
    return 0;
}
