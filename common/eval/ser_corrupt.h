// ser_corrupt.h — the 15 common corruptions x 5 severities of Hendrycks & Dietterich
// ("Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019),
// re-implemented in C from their definitions in hendrycks/robustness
// ImageNet-C/create_c/make_cifar_c.py (CIFAR-10-C) and make_imagenet_c.py (ImageNet-C, 224 px).
//
// Constants: the CIFAR-10-C table is used when min(h, w) <= 64, the ImageNet-C table otherwise
// (both tables are in ser_corrupt.c). Constants that are lengths (blur radii, elastic sizes,
// the glass-blur shuffle distance) are in pixels of the reference size (32 or 224) and are used
// unchanged at other sizes; fog's plasma map is the smallest power of two >= max(h, w) (32 and
// 256 at the reference sizes, as in the originals).
//
// Arithmetic follows the originals: images are scaled to [0, 1] in double, corrupted, clipped,
// multiplied by 255 and truncated to uint8 as np.uint8() does (a value within 1e-4 of the next
// integer counts as that integer, so round-off on exact results, e.g. blurring a constant
// image, does not drop a level). The ImageMagick (motion blur), PIL (pixelate) and libjpeg
// (JPEG) steps round as those libraries do. Random draws come from Philox (ser_rng.h) keyed by
// `seed`; a stream depends on (seed, type) only, so the five severities of one seed share their
// random numbers and differ only by their constants. The bytes are not those numpy would draw.
//
// What differs from Hendrycks' code (same mathematical operation unless stated):
//   gaussian/shot noise   numpy's normal / Poisson replaced by Box-Muller / Knuth (lambda < 10)
//                         and Hormann's PTRS (lambda >= 10, numpy's own algorithm).
//   impulse_noise         skimage random_noise 's&p' (amount c, salt_vs_pepper 0.5) as its
//                         per-value Bernoulli draw: each value is replaced with probability c,
//                         by 0 or 255 with equal odds (older skimage releases instead drew
//                         ceil(c*size/2) salt and pepper coordinates with replacement).
//   defocus_blur          cv2 disk kernel (GaussianBlur 3x3/5x5 anti-aliasing, BORDER_REFLECT_101)
//                         and filter2D (correlation, BORDER_REFLECT_101) computed directly in
//                         double (cv2 uses float32 and a DFT for large kernels). As in the
//                         original, the disks of radius 8 and 10 (ImageNet-C severities 4, 5)
//                         touch the edge of their array, the reflected anti-aliasing makes the
//                         kernel sum 1.013 and 1.011, and those severities brighten slightly.
//   glass_blur            skimage gaussian (scipy gaussian_filter, truncate 4, mode 'nearest')
//                         is computed directly; the shuffle loops run over rows h-d..d+1 and
//                         columns w-d..d+1 (the original uses 224 or 32 for both).
//   motion_blur           ImageMagick MagickMotionBlurImage(radius, sigma, angle): a one-sided
//                         line kernel of 2*ceil(radius)+1 taps with half-Gaussian weights
//                         exp(-i^2/(2 sigma^2)) (normalised), tap i at offset
//                         (round(i cos a), round(i sin a)) with y down, edge pixels repeated
//                         (ImageMagick's default virtual pixels), rounded to 8 bits. The PNG
//                         round trip and the greyscale special case are not needed.
//   zoom_blur             scipy.ndimage.zoom(order=1) as bilinear resampling with scipy's
//                         corner-aligned grid (src = o*(in-1)/(out-1), out = round(in*z));
//                         the zoom factors are np.arange's (e.g. 12 of them for
//                         arange(1, 1.11, 0.01)). Crops are per axis for non-square images.
//   snow                  as zoom_blur and motion_blur for the snow layer; cv2 RGB2GRAY weights
//                         0.299/0.587/0.114.
//   frost                 the six frost photographs are not available: a procedurally generated
//                         ice texture (a plasma fractal plus blurred random needle crystals,
//                         pale blue-white, values 0..255) replaces the random photo crop and is
//                         blended with the stated weights, clip(c0*x + c1*frost, 0, 255). Frost
//                         results are therefore NOT comparable with CIFAR-10-C/ImageNet-C.
//   fog                   the plasma fractal (diamond-square with np.roll wrap-around and the
//                         original's wibble*uniform(-wibble, wibble) noise) is reproduced exactly
//                         apart from the random numbers.
//   brightness            skimage rgb2hsv / hsv2rgb, reproduced operation by operation.
//   contrast              exact.
//   elastic_transform     cv2.getAffineTransform + warpAffine (INTER_LINEAR, BORDER_REFLECT_101)
//                         as exact double bilinear sampling (cv2 quantises coordinates to 1/32
//                         px); the affine points are (x, y) = (w/2 +- s, h/2 +- s), s =
//                         min(h, w)/3 (the original passes (h/2, w/2) as (x, y), the same for
//                         square images); skimage gaussian(mode 'reflect', truncate 3) and
//                         map_coordinates(order 1, mode 'reflect') computed directly.
//   pixelate              PIL resize BOX down to int(w*c) x int(h*c) then BOX back up (which is
//                         nearest neighbour), PIL's 22-bit fixed-point horizontal-then-vertical
//                         passes reproduced.
//   jpeg_compression      libjpeg-turbo (TJSAMP_420, ISLOW DCT, fancy upsampling: PIL's
//                         defaults for save(quality=q)) instead of PIL's libjpeg.
//   The originals' final storage step (ImageNet-C re-saves every image as JPEG quality 85) is
//   not applied: ser_corrupt_apply returns the corruption alone.
//
// defines:
//   SER_CORRUPT_* (types), ser_corrupt_name(), ser_corrupt_from_name()
//   ser_corrupt_apply()   one corruption of one RGB image at one severity
#ifndef SER_CORRUPT_H
#define SER_CORRUPT_H

#include <stdint.h>

#include "ser_base.h"

// In the order of Hendrycks' tables (make_imagenet_c.py's `d`).
enum {
    SER_CORRUPT_GAUSSIAN_NOISE,
    SER_CORRUPT_SHOT_NOISE,
    SER_CORRUPT_IMPULSE_NOISE,
    SER_CORRUPT_DEFOCUS_BLUR,
    SER_CORRUPT_GLASS_BLUR,
    SER_CORRUPT_MOTION_BLUR,
    SER_CORRUPT_ZOOM_BLUR,
    SER_CORRUPT_SNOW,
    SER_CORRUPT_FROST,
    SER_CORRUPT_FOG,
    SER_CORRUPT_BRIGHTNESS,
    SER_CORRUPT_CONTRAST,
    SER_CORRUPT_ELASTIC_TRANSFORM,
    SER_CORRUPT_PIXELATE,
    SER_CORRUPT_JPEG_COMPRESSION,
    SER_CORRUPT_COUNT
};

// "gaussian_noise", ... (the function names of Hendrycks' code); NULL for an unknown type.
const char *ser_corrupt_name(int type);
// The type of a name as ser_corrupt_name() spells it; -1 for an unknown name or NULL.
int ser_corrupt_from_name(const char *name);

// Corrupts one image. out, in: RGB interleaved (HWC) uint8, h rows by w columns, 8 <= h, w <=
// 16384. out may equal in (the corruption is then done in place); other overlaps are not
// allowed. severity is 1..5. seed makes the random corruptions deterministic: the same
// (seed, type, severity, image) gives the same bytes; corruptions without randomness ignore it.
// Returns SER_OK; SER_EINVAL with a message in err (may be NULL) for a bad type, severity,
// size or a NULL image; SER_EIO if libjpeg-turbo fails (JPEG only). out is unspecified after a
// failure other than SER_EINVAL.
int ser_corrupt_apply(uint8_t *out, const uint8_t *in, int h, int w, int type, int severity,
                      uint64_t seed, char err[SER_ERR_LEN]);

#endif
