// fuzz_png.c — fuzzes the loader's PNG path: ser_dl_decode_png() (dataloader/ser_dl_data.h: the
// signature and IHDR size checks, libpng's chunk parsing, CRCs, inflate and every conversion to
// 8-bit RGB: palette, grey at 1/2/4/8/16 bits, alpha, tRNS, interlacing), then what the loader
// does next with any image it accepts (ser_fuzz_augment: crop, PIL resize, flip, photometric
// ops).
//
// The input is the file's bytes. Checked beyond "no crash" (libpng reports errors by longjmp,
// so a leak or a stale pointer after a jump is what the sanitizers look for here):
//   - an accepted image has 1 <= w, h and w*h <= 178956970 (the decoder's limit, PIL's);
//   - a refusal comes with a reason and no image;
//   - decoding the same input again gives the same verdict and the same pixels (no state
//     survives a call, a failed one included).
// Headers that announce more than 2^14 pixels (but no more than the limit) are skipped, as in
// fuzz_jpeg: such a decode is not wrong, but inflating megapixels under the sanitizers would
// slow the fuzzer to a few inputs per second. Sizes over the limit still reach the decoder,
// which must refuse them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ser_base.h"
#include "ser_dl_data.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ser_fuzz_quiet();
    return 0;
}

static void s_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_png: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

static uint32_t s_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 24 && !memcmp(data + 12, "IHDR", 4)) {
        uint64_t px = (uint64_t)s_be32(data + 16) * s_be32(data + 20);
        if (px > ((uint64_t)1 << 14) && px <= (uint64_t)178956970) return 0;  // see above
    }
    ser_dl_image im = {0, 0, NULL};
    char err[256] = "";
    int rc = ser_dl_decode_png(data, size, &im, err);
    ser_dl_image again = {0, 0, NULL};
    char err2[256] = "";
    int rc2 = ser_dl_decode_png(data, size, &again, err2);
    if (rc != rc2 || strcmp(err, err2) != 0)
        s_fail("a second decode of the same input gives another verdict", err2);
    if (rc == SER_OK) {
        if (!im.px || im.w < 1 || im.h < 1 || (int64_t)im.w * im.h > (int64_t)178956970)
            s_fail("accepted an image of a bad size", NULL);
        size_t nb = (size_t)im.w * im.h * 3;
        if (again.w != im.w || again.h != im.h || memcmp(again.px, im.px, nb) != 0)
            s_fail("a second decode of the same input gives other pixels", NULL);
        char why[160];
        if (ser_fuzz_augment(&im, data, size, why, sizeof why)) s_fail(why, NULL);
    } else if (!err[0] || im.px || again.px) {
        s_fail("a refusal without a reason, or with an image", err);
    }
    ser_dl_image_free(&im);
    ser_dl_image_free(&again);
    return 0;
}
