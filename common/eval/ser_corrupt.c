// ser_corrupt.c — Hendrycks & Dietterich's 15 common corruptions (see ser_corrupt.h for what
// each one computes and how it differs from the Python originals).
//
// Images are (h, w, 3) interleaved. Float work is done in double on x/255 (numpy float64 in the
// originals); every helper states the Python call it stands for.
#include "ser_corrupt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "ser_rng.h"

#define S_MAX_SIDE 16384
#define S_PI 3.14159265358979323846
// Third Philox counter word of every stream here ("corr"); the first two are (type, substream).
#define S_RNG_DOMAIN 0x636f7272u
// np.uint8(v) truncates; values within this many levels below an integer count as it (see .h).
#define S_TRUNC_EPS 1e-4

// --- constants -------------------------------------------------------------------------------
// One table per dataset: the `c = [...][severity - 1]` lists of the corruption functions.
typedef struct s_consts {
    double gauss[5];       // gaussian_noise: sigma of the noise on [0, 1]
    double shot[5];        // shot_noise: photons per unit intensity
    double impulse[5];     // impulse_noise: amount
    double defocus[5][2];  // defocus_blur: disk radius, alias_blur
    double glass[5][3];    // glass_blur: sigma, max_delta, iterations
    double motion[5][2];   // motion_blur: radius, sigma
    double zoom[5][3];     // zoom_blur: np.arange(1, stop, step) as start, step, length
    double snow[5][7];     // snow: loc, scale, zoom, threshold, blur radius, blur sigma, blend
    double frost[5][2];    // frost: image weight, frost weight
    double fog[5][2];      // fog: strength, wibbledecay
    double brightness[5];  // brightness: added to HSV V
    double contrast[5];    // contrast: factor
    double elastic[5][3];  // elastic_transform: alpha, sigma, affine
    double pixelate[5];    // pixelate: size factor
    int jpeg[5];           // jpeg_compression: quality
} s_consts;

// hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py, the functions of the same names.
// zoom_blur: np.arange(1, stop, 0.01) has ceil((stop - 1)/0.01) elements in double arithmetic:
// stops 1.06, 1.11, 1.16, 1.21, 1.26 give 7, 12, 16, 21, 26 factors.
static const s_consts s_cifar = {
    .gauss = {0.04, 0.06, .08, .09, .10},
    .shot = {500, 250, 100, 75, 50},
    .impulse = {.01, .02, .03, .05, .07},
    .defocus = {{0.3, 0.4}, {0.4, 0.5}, {0.5, 0.6}, {1, 0.2}, {1.5, 0.1}},
    .glass = {{0.05, 1, 1}, {0.25, 1, 1}, {0.4, 1, 1}, {0.25, 1, 2}, {0.4, 1, 2}},
    .motion = {{6, 1}, {6, 1.5}, {6, 2}, {8, 2}, {9, 2.5}},
    .zoom = {{1, 0.01, 7}, {1, 0.01, 12}, {1, 0.01, 16}, {1, 0.01, 21}, {1, 0.01, 26}},
    .snow = {{0.1, 0.2, 1, 0.6, 8, 3, 0.95},
             {0.1, 0.2, 1, 0.5, 10, 4, 0.9},
             {0.15, 0.3, 1.75, 0.55, 10, 4, 0.9},
             {0.25, 0.3, 2.25, 0.6, 12, 6, 0.85},
             {0.3, 0.3, 1.25, 0.65, 14, 12, 0.8}},
    .frost = {{1, 0.2}, {1, 0.3}, {0.9, 0.4}, {0.85, 0.4}, {0.75, 0.45}},
    .fog = {{.2, 3}, {.5, 3}, {0.75, 2.5}, {1, 2}, {1.5, 1.75}},
    .brightness = {.05, .1, .15, .2, .3},
    .contrast = {.75, .5, .4, .3, 0.15},
    // IMSIZE = 32.
    .elastic = {{32 * 0.0, 32 * 0.0, 32 * 0.08},
                {32 * 0.05, 32 * 0.2, 32 * 0.07},
                {32 * 0.08, 32 * 0.06, 32 * 0.06},
                {32 * 0.1, 32 * 0.04, 32 * 0.05},
                {32 * 0.1, 32 * 0.03, 32 * 0.03}},
    .pixelate = {0.95, 0.9, 0.85, 0.75, 0.65},
    .jpeg = {80, 65, 58, 50, 40},
};

// hendrycks/robustness ImageNet-C/create_c/make_imagenet_c.py (224 px), the functions of the
// same names. zoom_blur: np.arange(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02),
// (1, 1.26, 0.02), (1, 1.31, 0.03) have 12, 16, 11, 13, 11 elements.
static const s_consts s_imagenet = {
    .gauss = {.08, .12, 0.18, 0.26, 0.38},
    .shot = {60, 25, 12, 5, 3},
    .impulse = {.03, .06, .09, 0.17, 0.27},
    .defocus = {{3, 0.1}, {4, 0.5}, {6, 0.5}, {8, 0.5}, {10, 0.5}},
    .glass = {{0.7, 1, 2}, {0.9, 2, 1}, {1, 2, 3}, {1.1, 3, 2}, {1.5, 4, 2}},
    .motion = {{10, 3}, {15, 5}, {15, 8}, {15, 12}, {20, 15}},
    .zoom = {{1, 0.01, 12}, {1, 0.01, 16}, {1, 0.02, 11}, {1, 0.02, 13}, {1, 0.03, 11}},
    .snow = {{0.1, 0.3, 3, 0.5, 10, 4, 0.8},
             {0.2, 0.3, 2, 0.5, 12, 4, 0.7},
             {0.55, 0.3, 4, 0.9, 12, 8, 0.7},
             {0.55, 0.3, 4.5, 0.85, 12, 8, 0.65},
             {0.55, 0.3, 2.5, 0.85, 12, 12, 0.55}},
    .frost = {{1, 0.4}, {0.8, 0.6}, {0.7, 0.7}, {0.65, 0.7}, {0.6, 0.75}},
    .fog = {{1.5, 2}, {2, 2}, {2.5, 1.7}, {2.5, 1.5}, {3, 1.4}},
    .brightness = {.1, .2, .3, .4, .5},
    .contrast = {0.4, .3, .2, .1, .05},
    // "244 should have been 224, but ultimately nothing is incorrect" (the original's comment).
    .elastic = {{244 * 2.0, 244 * 0.7, 244 * 0.1},
                {244 * 2.0, 244 * 0.08, 244 * 0.2},
                {244 * 0.05, 244 * 0.01, 244 * 0.02},
                {244 * 0.07, 244 * 0.01, 244 * 0.02},
                {244 * 0.12, 244 * 0.01, 244 * 0.02}},
    .pixelate = {0.6, 0.5, 0.4, 0.3, 0.25},
    .jpeg = {25, 18, 15, 10, 7},
};

static const char *const s_names[SER_CORRUPT_COUNT] = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
};

const char *ser_corrupt_name(int type) {
    return type >= 0 && type < SER_CORRUPT_COUNT ? s_names[type] : NULL;
}

int ser_corrupt_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < SER_CORRUPT_COUNT; i++)
        if (strcmp(name, s_names[i]) == 0) return i;
    return -1;
}

// --- small helpers ---------------------------------------------------------------------------

static inline double s_clip01(double v) {
    return v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v;
}

// np.uint8(np.clip(v, 0, 1) * 255).
static inline uint8_t s_trunc_u8(double v) {
    double t = s_clip01(v) * 255.0 + S_TRUNC_EPS;
    return (uint8_t)(t >= 255.0 ? 255 : (int)t);
}

static void s_load(double *x, const uint8_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = in[i] / 255.0;
}

static void s_store(uint8_t *out, const double *x, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = s_trunc_u8(x[i]);
}

static inline double s_uniform(ser_rng *r, double lo, double hi) {
    return lo + (hi - lo) * ser_rng_uniform_double(r);
}

static int s_pow2_at_least(int n) {
    int p = 1;
    while (p < n) p *= 2;
    return p;
}

// Border modes: scipy 'nearest' (aaa|abc|ccc), scipy 'reflect' (cba|abc|cba) and OpenCV's
// BORDER_REFLECT_101 = scipy 'mirror' (cb|abc|ba). Any integer i maps into [0, n).
enum { S_NEAREST, S_REFLECT, S_REFLECT101 };

static int s_border(int i, int n, int mode) {
    if (i >= 0 && i < n) return i;
    if (mode == S_NEAREST || n == 1) return i < 0 ? 0 : n - 1;
    int p = mode == S_REFLECT ? 2 * n : 2 * n - 2;
    i %= p;
    if (i < 0) i += p;
    if (i < n) return i;
    return mode == S_REFLECT ? p - 1 - i : p - i;
}

// --- separable filters -----------------------------------------------------------------------
// A 1-D correlation along one axis with the border folded into the weights: output i reads the
// contiguous inputs lo[i] .. lo[i]+len[i]-1 with weights w[i*m ..]. Folding makes a kernel
// longer than the image (elastic_transform's sigma of 171 px) cost O(n) per output, not O(r).

typedef struct s_filt {
    int n, m;  // positions, row stride of w (min(n, 2r+1))
    int *lo, *len;
    double *w;  // (n, m)
} s_filt;

// k: (2r+1) taps, k[r] the centre.
static void s_filt_init(s_filt *f, int n, const double *k, int r, int mode) {
    f->n = n;
    f->m = 2 * r + 1 < n ? 2 * r + 1 : n;
    f->lo = ser_xmalloc((size_t)n * sizeof *f->lo);
    f->len = ser_xmalloc((size_t)n * sizeof *f->len);
    f->w = ser_xcalloc((size_t)n * (size_t)f->m, sizeof *f->w);
    double *row = ser_xcalloc((size_t)n, sizeof *row);
    for (int i = 0; i < n; i++) {
        int lo = n, hi = -1;
        for (int t = -r; t <= r; t++) {
            // The borders fold contiguous ranges onto contiguous ranges, so [lo, hi] is
            // exactly the set of inputs touched.
            int j = s_border(i + t, n, mode);
            row[j] += k[t + r];
            if (j < lo) lo = j;
            if (j > hi) hi = j;
        }
        SER_ASSERT(hi - lo + 1 <= f->m);
        f->lo[i] = lo;
        f->len[i] = hi - lo + 1;
        for (int j = lo; j <= hi; j++) {
            f->w[(size_t)i * f->m + (j - lo)] = row[j];
            row[j] = 0.0;
        }
    }
    free(row);
}

static void s_filt_free(s_filt *f) {
    free(f->lo);
    free(f->len);
    free(f->w);
    memset(f, 0, sizeof *f);
}

// dst, src: (h, w, c), distinct. axis 0 filters along rows (f->n == h), axis 1 along columns.
static void s_filt_apply(double *dst, const double *src, int h, int w, int c, int axis,
                         const s_filt *f) {
    size_t rs = (size_t)w * c;
    if (axis == 0) {
        for (int y = 0; y < h; y++) {
            double *d = dst + (size_t)y * rs;
            const double *wy = f->w + (size_t)y * f->m;
            memset(d, 0, rs * sizeof *d);
            for (int t = 0; t < f->len[y]; t++) {
                const double *s = src + (size_t)(f->lo[y] + t) * rs;
                double wt = wy[t];
                for (size_t i = 0; i < rs; i++) d[i] += wt * s[i];
            }
        }
        return;
    }
    for (int y = 0; y < h; y++) {
        const double *s = src + (size_t)y * rs;
        double *d = dst + (size_t)y * rs;
        for (int x = 0; x < w; x++) {
            const double *wx = f->w + (size_t)x * f->m;
            for (int ch = 0; ch < c; ch++) {
                double acc = 0.0;
                const double *sp = s + (size_t)f->lo[x] * c + ch;
                for (int t = 0; t < f->len[x]; t++) acc += wx[t] * sp[(size_t)t * c];
                d[(size_t)x * c + ch] = acc;
            }
        }
    }
}

// scipy.ndimage.gaussian_filter over axes 0 and 1 of an (h, w, c) image, in place: radius
// int(truncate*sigma + 0.5), taps exp(-x^2/(2 sigma^2)) normalised; sigma <= 1e-15 leaves the
// image alone, as scipy skips such axes. skimage.filters.gaussian(multichannel=True) is this
// with mode 'nearest' and truncate 4.
static void s_gaussian(double *x, int h, int w, int c, double sigma, double truncate, int mode) {
    if (!(sigma > 1e-15)) return;
    int r = (int)(truncate * sigma + 0.5);
    double *k = ser_xmalloc((size_t)(2 * r + 1) * sizeof *k), sum = 0.0;
    for (int t = -r; t <= r; t++) sum += k[t + r] = exp(-0.5 / (sigma * sigma) * t * t);
    for (int t = 0; t <= 2 * r; t++) k[t] /= sum;
    s_filt fy, fx;
    s_filt_init(&fy, h, k, r, mode);
    s_filt_init(&fx, w, k, r, mode);
    double *tmp = ser_xmalloc((size_t)h * w * c * sizeof *tmp);
    s_filt_apply(tmp, x, h, w, c, 0, &fy);
    s_filt_apply(x, tmp, h, w, c, 1, &fx);
    free(tmp);
    s_filt_free(&fy);
    s_filt_free(&fx);
    free(k);
}

// --- resampling helpers ----------------------------------------------------------------------

// Bilinear sample of channel ch of an (h, w, c) image at row sy, column sx, neighbours mapped
// through the border mode (cv2 INTER_LINEAR / scipy map_coordinates order=1).
static double s_bilinear(const double *img, int h, int w, int c, int ch, double sy, double sx,
                         int mode) {
    // Keep the int conversion defined for absurd coordinates (a near-degenerate affine map).
    if (!(sy > -1e7)) sy = -1e7;
    if (!(sy < 1e7)) sy = 1e7;
    if (!(sx > -1e7)) sx = -1e7;
    if (!(sx < 1e7)) sx = 1e7;
    double fy0 = floor(sy), fx0 = floor(sx), ay = sy - fy0, ax = sx - fx0;
    int y0 = s_border((int)fy0, h, mode), y1 = s_border((int)fy0 + 1, h, mode);
    int x0 = s_border((int)fx0, w, mode), x1 = s_border((int)fx0 + 1, w, mode);
    const double *r0 = img + (size_t)y0 * w * c, *r1 = img + (size_t)y1 * w * c;
    double top = (1.0 - ax) * r0[(size_t)x0 * c + ch] + ax * r0[(size_t)x1 * c + ch];
    double bot = (1.0 - ax) * r1[(size_t)x0 * c + ch] + ax * r1[(size_t)x1 * c + ch];
    return (1.0 - ay) * top + ay * bot;
}

// One axis of clipped_zoom(img, z): the central ceil(n/z) crop, zoomed by z with
// scipy.ndimage.zoom(order=1) to round(ch*z) samples at src = o*(ch-1)/(out-1), of which the
// central n are kept. Output o reads crop positions i0[o], i1[o] with weight fr[o] on i1.
static void s_zoom_axis(int *i0, int *i1, double *fr, int n, double z) {
    int ch = (int)ceil((double)n / z);
    int top = (n - ch) / 2;
    int on = (int)nearbyint(ch * z);  // Python's round(): half to even
    int trim = (on - n) / 2;
    double scale = on > 1 ? (double)(ch - 1) / (on - 1) : 0.0;
    for (int o = 0; o < n; o++) {
        double s = (o + trim) * scale;
        int a = (int)floor(s);
        if (a > ch - 1) a = ch - 1;
        if (a < 0) a = 0;
        i0[o] = top + a;
        i1[o] = top + (a + 1 < ch ? a + 1 : a);
        fr[o] = a + 1 < ch ? s - a : 0.0;
    }
}

// dst += clipped_zoom(src, z) (accumulate) or dst = ... ; (h, w, c), distinct buffers.
static void s_clipped_zoom(double *dst, const double *src, int h, int w, int c, double z,
                           int accumulate) {
    int *iy = ser_xmalloc((size_t)(2 * h + 2 * w) * sizeof *iy), *iy1 = iy + h, *ix = iy1 + h,
        *ix1 = ix + w;
    double *fy = ser_xmalloc((size_t)(h + w) * sizeof *fy), *fx = fy + h;
    s_zoom_axis(iy, iy1, fy, h, z);
    s_zoom_axis(ix, ix1, fx, w, z);
    for (int y = 0; y < h; y++) {
        const double *r0 = src + (size_t)iy[y] * w * c, *r1 = src + (size_t)iy1[y] * w * c;
        double *d = dst + (size_t)y * w * c;
        for (int x = 0; x < w; x++)
            for (int ch = 0; ch < c; ch++) {
                double t = (1.0 - fx[x]) * r0[(size_t)ix[x] * c + ch] +
                           fx[x] * r0[(size_t)ix1[x] * c + ch];
                double b = (1.0 - fx[x]) * r1[(size_t)ix[x] * c + ch] +
                           fx[x] * r1[(size_t)ix1[x] * c + ch];
                double v = (1.0 - fy[y]) * t + fy[y] * b;
                if (accumulate)
                    d[(size_t)x * c + ch] += v;
                else
                    d[(size_t)x * c + ch] = v;
            }
    }
    free(iy);
    free(fy);
}

// ImageMagick MotionBlurImage(radius, sigma, angle) on an 8-bit (h, w, c) image; dst != src.
// 2*ceil(radius)+1 taps weighted exp(-i^2/(2 sigma^2)), normalised; tap i reads the pixel at
// (x + round(i cos a), y + round(i sin a)) (ImageMagick's ceil(v - 0.5)), edges repeated.
static void s_motion_blur(uint8_t *dst, const uint8_t *src, int h, int w, int c, double radius,
                          double sigma, double angle_deg) {
    enum { MAXW = 64 };
    int width = 2 * (int)ceil(radius) + 1;
    SER_ASSERT(width >= 1 && width <= MAXW && sigma > 0.0);
    double k[MAXW], norm = 0.0;
    int ox[MAXW], oy[MAXW];
    for (int i = 0; i < width; i++) {
        k[i] = exp(-((double)i * i) / (2.0 * sigma * sigma)) / (sqrt(2.0 * S_PI) * sigma);
        norm += k[i];
    }
    double a = angle_deg * S_PI / 180.0;
    double px = width * sin(a), py = width * cos(a), hyp = hypot(px, py);
    for (int i = 0; i < width; i++) {
        k[i] /= norm;
        ox[i] = (int)ceil(i * py / hyp - 0.5);
        oy[i] = (int)ceil(i * px / hyp - 0.5);
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int ch = 0; ch < c; ch++) {
                double acc = 0.0;
                for (int i = 0; i < width; i++) {
                    int yy = s_border(y + oy[i], h, S_NEAREST);
                    int xx = s_border(x + ox[i], w, S_NEAREST);
                    acc += k[i] * src[((size_t)yy * w + xx) * c + ch];
                }
                double v = floor(acc + 0.5);
                dst[((size_t)y * w + x) * c + ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
}

// plasma_fractal(mapsize, wibbledecay) of make_*_c.py: a (ms, ms) diamond-square height map
// (wrapping around like np.roll), scaled to [0, 1]. ms is a power of two.
static void s_plasma(double *m, int ms, double decay, ser_rng *r) {
    m[0] = 0.0;
    double wib = 100.0;
#define M(i, j) m[(size_t)(i)*ms + (j)]
    for (int s = ms; s >= 2; s /= 2) {
        int hs = s / 2, g = ms / s;
        // fillsquares: the centre of each square is the mean of its 4 corners (+ noise), the
        // noise being the original's wibble * uniform(-wibble, wibble).
        for (int i = 0; i < g; i++)
            for (int j = 0; j < g; j++) {
                int i1 = (i + 1) % g, j1 = (j + 1) % g;
                double acc =
                    (M(i * s, j * s) + M(i1 * s, j * s)) + (M(i * s, j1 * s) + M(i1 * s, j1 * s));
                M(i * s + hs, j * s + hs) = acc / 4 + wib * s_uniform(r, -wib, wib);
            }
        // filldiamonds: edge midpoints from the two adjacent centres and the two corners.
        for (int i = 0; i < g; i++)
            for (int j = 0; j < g; j++) {
                int im = (i + g - 1) % g, j1 = (j + 1) % g;
                double acc = (M(i * s + hs, j * s + hs) + M(im * s + hs, j * s + hs)) +
                             (M(i * s, j * s) + M(i * s, j1 * s));
                M(i * s, j * s + hs) = acc / 4 + wib * s_uniform(r, -wib, wib);
            }
        for (int i = 0; i < g; i++)
            for (int j = 0; j < g; j++) {
                int jm = (j + g - 1) % g, i1 = (i + 1) % g;
                double acc = (M(i * s + hs, j * s + hs) + M(i * s + hs, jm * s + hs)) +
                             (M(i * s, j * s) + M(i1 * s, j * s));
                M(i * s + hs, j * s) = acc / 4 + wib * s_uniform(r, -wib, wib);
            }
        wib /= decay;
    }
#undef M
    size_t n = (size_t)ms * ms;
    double lo = m[0], hi;
    for (size_t i = 1; i < n; i++) lo = m[i] < lo ? m[i] : lo;
    for (size_t i = 0; i < n; i++) m[i] -= lo;
    hi = m[0];
    for (size_t i = 1; i < n; i++) hi = m[i] > hi ? m[i] : hi;
    for (size_t i = 0; i < n; i++) m[i] = hi > 0.0 ? m[i] / hi : 0.0;
}

// --- noise -----------------------------------------------------------------------------------

// log(k!) : exact sums below 16, Stirling's series (error < 1e-12) above.
static double s_log_factorial(double k) {
    if (k < 16.0) {
        double s = 0.0;
        for (int i = 2; i <= (int)k; i++) s += log((double)i);
        return s;
    }
    double n = k + 1.0, n2 = n * n;
    return (n - 0.5) * log(n) - n + 0.5 * log(2.0 * S_PI) +
           (1.0 / 12.0 - (1.0 / 360.0 - 1.0 / (1260.0 * n2)) / n2) / n;
}

// Poisson(lam): Knuth's product of uniforms below 10, Hormann's PTRS from 10 (numpy's split).
static double s_poisson(ser_rng *r, double lam) {
    if (!(lam > 0.0)) return 0.0;
    if (lam < 10.0) {
        double lim = exp(-lam), prod = 1.0;
        int k = 0;
        for (;;) {
            prod *= ser_rng_uniform_double(r);
            if (prod > lim)
                k++;
            else
                return k;
        }
    }
    double slam = sqrt(lam), loglam = log(lam);
    double b = 0.931 + 2.53 * slam, a = -0.059 + 0.02483 * b;
    double invalpha = 1.1239 + 1.1328 / (b - 3.4), vr = 0.9277 - 3.6224 / (b - 2.0);
    for (;;) {
        double u = ser_rng_uniform_double(r) - 0.5, v = ser_rng_uniform_double(r);
        double us = 0.5 - fabs(u);
        double k = floor((2.0 * a / us + b) * u + lam + 0.43);
        if (us >= 0.07 && v <= vr) return k;
        if (k < 0.0 || (us < 0.013 && v > us)) continue;
        if (log(v) + log(invalpha) - log(a / (us * us) + b) <=
            -lam + k * loglam - s_log_factorial(k))
            return k;
    }
}

// --- blurs -----------------------------------------------------------------------------------

// disk(radius, alias_blur) of make_*_c.py: the aliased disk X^2+Y^2 <= r^2 on [-L, L]^2
// (L = 8 for r <= 8, else r), normalised, then cv2.GaussianBlur(ksize 3 (r <= 8) or 5,
// sigma alias_blur, BORDER_REFLECT_101). Returns L; k is (2L+1)^2, row-major.
static int s_disk(double **kp, double radius, double alias_blur) {
    int L = radius <= 8 ? 8 : (int)radius, n = 2 * L + 1, ks = radius <= 8 ? 3 : 5;
    double *k = ser_xcalloc((size_t)n * n, sizeof *k), *tmp = ser_xcalloc((size_t)n * n, sizeof *k);
    double sum = 0.0;
    for (int y = -L; y <= L; y++)
        for (int x = -L; x <= L; x++)
            if ((double)(x * x + y * y) <= radius * radius) k[(y + L) * n + x + L] = 1.0, sum++;
    for (int i = 0; i < n * n; i++) k[i] /= sum;
    // cv2.getGaussianKernel(ks, sigma): exp(-(i - (ks-1)/2)^2 / (2 sigma^2)), normalised.
    double g[5], gs = 0.0;
    for (int i = 0; i < ks; i++) {
        double d = i - (ks - 1) / 2.0;
        gs += g[i] = exp(-d * d / (2.0 * alias_blur * alias_blur));
    }
    for (int i = 0; i < ks; i++) g[i] /= gs;
    int hk = ks / 2;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            double acc = 0.0;
            for (int t = -hk; t <= hk; t++)
                acc += g[t + hk] * k[y * n + s_border(x + t, n, S_REFLECT101)];
            tmp[y * n + x] = acc;
        }
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            double acc = 0.0;
            for (int t = -hk; t <= hk; t++)
                acc += g[t + hk] * tmp[s_border(y + t, n, S_REFLECT101) * n + x];
            k[y * n + x] = acc;
        }
    free(tmp);
    *kp = k;
    return L;
}

// cv2.filter2D(channel, -1, kernel) per channel: correlation centred on the kernel,
// BORDER_REFLECT_101. dst != src; zero taps are skipped.
static void s_filter2d(double *dst, const double *src, int h, int w, const double *k, int L) {
    int n = 2 * L + 1, nt = 0;
    int *ty = ser_xmalloc((size_t)n * n * 2 * sizeof *ty), *tx = ty + n * n;
    double *tw = ser_xmalloc((size_t)n * n * sizeof *tw);
    for (int i = 0; i < n * n; i++)
        if (k[i] != 0.0) ty[nt] = i / n - L, tx[nt] = i % n - L, tw[nt++] = k[i];
    int *ry = ser_xmalloc((size_t)(h + 2 * L + w + 2 * L) * sizeof *ry), *rx = ry + h + 2 * L;
    for (int i = -L; i < h + L; i++) ry[i + L] = s_border(i, h, S_REFLECT101);
    for (int i = -L; i < w + L; i++) rx[i + L] = s_border(i, w, S_REFLECT101);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double a0 = 0.0, a1 = 0.0, a2 = 0.0;
            for (int t = 0; t < nt; t++) {
                const double *p = src + ((size_t)ry[y + ty[t] + L] * w + rx[x + tx[t] + L]) * 3;
                a0 += tw[t] * p[0], a1 += tw[t] * p[1], a2 += tw[t] * p[2];
            }
            double *d = dst + ((size_t)y * w + x) * 3;
            d[0] = a0, d[1] = a1, d[2] = a2;
        }
    free(ty);
    free(tw);
    free(ry);
}

// --- PIL resize (BOX) ------------------------------------------------------------------------
// Pillow's Resample.c: per output position the inputs whose box weight is non-zero, weights
// normalised and stored as 22-bit fixed point; a pass rounds (1 << 21) and clips to 8 bits.

#define S_PIL_BITS 22

typedef struct s_pil {
    int ks;
    int *xmin, *xn;
    int32_t *k;  // (out, ks)
} s_pil;

static void s_pil_init(s_pil *p, int in, int out) {
    double scale = (double)in / out, fscale = scale < 1.0 ? 1.0 : scale, support = 0.5 * fscale;
    p->ks = (int)ceil(support) * 2 + 1;
    p->xmin = ser_xmalloc((size_t)out * 2 * sizeof *p->xmin);
    p->xn = p->xmin + out;
    p->k = ser_xcalloc((size_t)out * p->ks, sizeof *p->k);
    double *kd = ser_xmalloc((size_t)p->ks * sizeof *kd);
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale, ww = 0.0, ss = 1.0 / fscale;
        int xmin = (int)(center - support + 0.5), xmax;
        if (xmin < 0) xmin = 0;
        xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        SER_ASSERT(xmax <= p->ks);
        for (int x = 0; x < xmax; x++) {
            double arg = (x + xmin - center + 0.5) * ss;
            kd[x] = arg > -0.5 && arg <= 0.5 ? 1.0 : 0.0;  // box_filter
            ww += kd[x];
        }
        for (int x = 0; x < xmax; x++) {
            if (ww != 0.0) kd[x] /= ww;
            p->k[(size_t)o * p->ks + x] = (int32_t)(0.5 + kd[x] * (1 << S_PIL_BITS));
        }
        p->xmin[o] = xmin;
        p->xn[o] = xmax;
    }
    free(kd);
}

static void s_pil_free(s_pil *p) {
    free(p->xmin);
    free(p->k);
}

static inline uint8_t s_pil_clip8(int64_t acc) {
    acc >>= S_PIL_BITS;
    return (uint8_t)(acc < 0 ? 0 : acc > 255 ? 255 : acc);
}

// Image.resize((ow, oh), Image.BOX) of an RGB image: horizontal pass, then vertical.
static void s_pil_resize_box(uint8_t *dst, int oh, int ow, const uint8_t *src, int h, int w) {
    s_pil px, py;
    s_pil_init(&px, w, ow);
    s_pil_init(&py, h, oh);
    uint8_t *tmp = ser_xmalloc((size_t)h * ow * 3);
    for (int y = 0; y < h; y++)
        for (int o = 0; o < ow; o++)
            for (int ch = 0; ch < 3; ch++) {
                int64_t acc = 1 << (S_PIL_BITS - 1);
                const int32_t *k = px.k + (size_t)o * px.ks;
                for (int t = 0; t < px.xn[o]; t++)
                    acc += (int64_t)src[((size_t)y * w + px.xmin[o] + t) * 3 + ch] * k[t];
                tmp[((size_t)y * ow + o) * 3 + ch] = s_pil_clip8(acc);
            }
    for (int o = 0; o < oh; o++)
        for (int x = 0; x < ow; x++)
            for (int ch = 0; ch < 3; ch++) {
                int64_t acc = 1 << (S_PIL_BITS - 1);
                const int32_t *k = py.k + (size_t)o * py.ks;
                for (int t = 0; t < py.xn[o]; t++)
                    acc += (int64_t)tmp[((size_t)(py.xmin[o] + t) * ow + x) * 3 + ch] * k[t];
                dst[((size_t)o * ow + x) * 3 + ch] = s_pil_clip8(acc);
            }
    free(tmp);
    s_pil_free(&px);
    s_pil_free(&py);
}

// --- the corruptions -------------------------------------------------------------------------
// Each takes x: (h, w, 3) in [0, 1] and leaves its result there, unless it says otherwise.

// skimage rgb2hsv, V += c (clipped), hsv2rgb, operation by operation.
static void s_brightness(double *x, size_t npix, double c) {
    for (size_t i = 0; i < npix; i++) {
        double *p = x + i * 3, r = p[0], g = p[1], b = p[2];
        double v = r > g ? r : g;
        v = b > v ? b : v;
        double mn = r < g ? r : g;
        mn = b < mn ? b : mn;
        double delta = v - mn, s = delta == 0.0 ? 0.0 : delta / v, hue = 0.0;
        if (delta != 0.0) {
            // Later assignments win, as in skimage: blue over green over red.
            if (r == v) hue = (g - b) / delta;
            if (g == v) hue = 2.0 + (b - r) / delta;
            if (b == v) hue = 4.0 + (r - g) / delta;
            hue = fmod(hue / 6.0, 1.0);  // numpy's % 1.0: the result takes the divisor's sign
            if (hue < 0.0) hue += 1.0;
        }
        v = s_clip01(v + c);
        double hi = floor(hue * 6.0), f = hue * 6.0 - hi;
        double pp = v * (1.0 - s), q = v * (1.0 - f * s), t = v * (1.0 - (1.0 - f) * s);
        switch ((int)hi % 6) {
            case 0:
                p[0] = v, p[1] = t, p[2] = pp;
                break;
            case 1:
                p[0] = q, p[1] = v, p[2] = pp;
                break;
            case 2:
                p[0] = pp, p[1] = v, p[2] = t;
                break;
            case 3:
                p[0] = pp, p[1] = q, p[2] = v;
                break;
            case 4:
                p[0] = t, p[1] = pp, p[2] = v;
                break;
            default:
                p[0] = v, p[1] = pp, p[2] = q;
                break;
        }
    }
}

// (x - mean) * c + mean with the per-channel mean over the image.
static void s_contrast(double *x, size_t npix, double c) {
    double m[3] = {0, 0, 0};
    for (size_t i = 0; i < npix; i++)
        for (int ch = 0; ch < 3; ch++) m[ch] += x[i * 3 + ch];
    for (int ch = 0; ch < 3; ch++) m[ch] /= (double)npix;
    for (size_t i = 0; i < npix; i++)
        for (int ch = 0; ch < 3; ch++) x[i * 3 + ch] = (x[i * 3 + ch] - m[ch]) * c + m[ch];
}

static void s_defocus(double *x, int h, int w, const double c[2]) {
    double *k, *tmp = ser_xmalloc((size_t)h * w * 3 * sizeof *tmp);
    int L = s_disk(&k, c[0], c[1]);
    memcpy(tmp, x, (size_t)h * w * 3 * sizeof *tmp);
    s_filter2d(x, tmp, h, w, k, L);
    free(k);
    free(tmp);
}

static void s_glass(double *x, int h, int w, const double c[3], ser_rng *r) {
    size_t n = (size_t)h * w * 3;
    int d = (int)c[1], iters = (int)c[2];
    uint8_t *u = ser_xmalloc(n);
    s_gaussian(x, h, w, 3, c[0], 4.0, S_NEAREST);
    s_store(u, x, n);
    // Locally shuffle pixels: (y, x) swaps with (y + dy, x + dx), dx, dy in [-d, d) drawn as
    // np.random.randint(-d, d, size=(2,)) (dx first).
    for (int it = 0; it < iters; it++)
        for (int yy = h - d; yy > d; yy--)
            for (int xx = w - d; xx > d; xx--) {
                int dx = (int)ser_rng_below(r, (uint32_t)(2 * d)) - d;
                int dy = (int)ser_rng_below(r, (uint32_t)(2 * d)) - d;
                uint8_t *a = u + ((size_t)yy * w + xx) * 3;
                uint8_t *b = u + ((size_t)(yy + dy) * w + (xx + dx)) * 3;
                for (int ch = 0; ch < 3; ch++) {
                    uint8_t t = a[ch];
                    a[ch] = b[ch];
                    b[ch] = t;
                }
            }
    s_load(x, u, n);
    s_gaussian(x, h, w, 3, c[0], 4.0, S_NEAREST);
    free(u);
}

static void s_zoom_blur(double *x, int h, int w, const double c[3]) {
    size_t n = (size_t)h * w * 3;
    double *acc = ser_xcalloc(n, sizeof *acc);
    int count = (int)c[2];
    for (int i = 0; i < count; i++) s_clipped_zoom(acc, x, h, w, 3, c[0] + i * c[1], 1);
    for (size_t i = 0; i < n; i++) x[i] = (x[i] + acc[i]) / (count + 1);
    free(acc);
}

static void s_fog(double *x, int h, int w, const double c[2], ser_rng *r) {
    int ms = s_pow2_at_least(h > w ? h : w);
    double *p = ser_xmalloc((size_t)ms * ms * sizeof *p), mx = 0.0;
    s_plasma(p, ms, c[1], r);
    size_t n = (size_t)h * w * 3;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++)
            for (int ch = 0; ch < 3; ch++) {
                double *v = x + ((size_t)y * w + xx) * 3 + ch;
                *v = (*v + c[0] * p[(size_t)y * ms + xx]) * mx / (mx + c[0]);
            }
    free(p);
}

// The stand-in for the frost photographs: (h, w, 3) values in [0, 255]. A plasma fractal
// (wibbledecay 1.7: cloudy ice) plus straight needle crystals of random position, direction,
// length (3-18% of the larger side) and brightness, blurred slightly, tinted pale blue.
static void s_frost_texture(double *fr, int h, int w, ser_rng *r) {
    int side = h > w ? h : w, ms = s_pow2_at_least(side);
    double *p = ser_xmalloc((size_t)ms * ms * sizeof *p);
    double *nd = ser_xcalloc((size_t)h * w, sizeof *nd);
    s_plasma(p, ms, 1.7, r);
    // About 6 needles per row of the larger side: coverage, not count, scales with the area.
    int count = 6 * (int)((size_t)h * w / side) + 8;
    for (int k = 0; k < count; k++) {
        double x0 = s_uniform(r, 0, w), y0 = s_uniform(r, 0, h), a = s_uniform(r, 0, S_PI);
        double len = s_uniform(r, 0.03, 0.18) * side + 2.0, lum = s_uniform(r, 0.1, 0.35);
        double cx = cos(a), sy = sin(a);
        for (double t = 0.0; t <= len; t += 0.5) {
            int px = (int)floor(x0 + t * cx), py = (int)floor(y0 + t * sy);
            if (px >= 0 && px < w && py >= 0 && py < h) nd[(size_t)py * w + px] += 0.5 * lum;
        }
    }
    s_gaussian(nd, h, w, 1, side / 300.0 > 0.5 ? side / 300.0 : 0.5, 4.0, S_NEAREST);
    static const double tint[3] = {0.84, 0.92, 1.0};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double g = s_clip01(0.55 * p[(size_t)y * ms + x] + nd[(size_t)y * w + x]);
            for (int ch = 0; ch < 3; ch++) fr[((size_t)y * w + x) * 3 + ch] = 255.0 * g * tint[ch];
        }
    free(p);
    free(nd);
}

static void s_snow(double *x, int h, int w, const double c[7], ser_rng *r, ser_rng *r2) {
    size_t npix = (size_t)h * w;
    double *layer = ser_xmalloc(npix * sizeof *layer), *zl = ser_xmalloc(npix * sizeof *zl);
    uint8_t *l8 = ser_xmalloc(npix), *b8 = ser_xmalloc(npix);
    for (size_t i = 0; i < npix; i++) layer[i] = c[0] + c[1] * ser_rng_normal(r);
    s_clipped_zoom(zl, layer, h, w, 1, c[2], 0);
    for (size_t i = 0; i < npix; i++) l8[i] = s_trunc_u8(zl[i] < c[3] ? 0.0 : zl[i]);
    s_motion_blur(b8, l8, h, w, 1, c[4], c[5], s_uniform(r2, -135.0, -45.0));
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++) {
            double *p = x + ((size_t)y * w + xx) * 3;
            // cv2.cvtColor(RGB2GRAY) weights.
            double grey = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2], lift = grey * 1.5 + 0.5;
            double s = b8[(size_t)y * w + xx] / 255.0 +
                       b8[(size_t)(h - 1 - y) * w + (w - 1 - xx)] / 255.0;  // + rot90(k=2)
            for (int ch = 0; ch < 3; ch++) {
                double v = c[6] * p[ch] + (1.0 - c[6]) * (p[ch] > lift ? p[ch] : lift);
                p[ch] = v + s;
            }
        }
    free(layer);
    free(zl);
    free(l8);
    free(b8);
}

static void s_elastic(double *x, int h, int w, const double c[3], ser_rng *r) {
    size_t npix = (size_t)h * w, n = npix * 3;
    // Random affine: three points around the centre, each moved by uniform(-c2, c2), and the
    // image warped by the affine map that moves them (cv2.getAffineTransform + warpAffine).
    double cx = (double)(w / 2), cy = (double)(h / 2), sq = (double)((h < w ? h : w) / 3);
    double p1[3][2] = {{cx + sq, cy + sq}, {cx + sq, cy - sq}, {cx - sq, cy - sq}}, p2[3][2];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) p2[i][j] = p1[i][j] + s_uniform(r, -c[2], c[2]);
    // Solve [x y 1] . (a b t) = x' (and y') for the three points by Cramer's rule.
    double det = p1[0][0] * (p1[1][1] - p1[2][1]) - p1[0][1] * (p1[1][0] - p1[2][0]) +
                 (p1[1][0] * p1[2][1] - p1[2][0] * p1[1][1]);
    double M[2][3];
    for (int j = 0; j < 2; j++) {
        double r0 = p2[0][j], r1 = p2[1][j], r2 = p2[2][j];
        M[j][0] =
            (r0 * (p1[1][1] - p1[2][1]) - p1[0][1] * (r1 - r2) + (r1 * p1[2][1] - r2 * p1[1][1])) /
            det;
        M[j][1] =
            (p1[0][0] * (r1 - r2) - r0 * (p1[1][0] - p1[2][0]) + (p1[1][0] * r2 - p1[2][0] * r1)) /
            det;
        M[j][2] = (p1[0][0] * (p1[1][1] * r2 - p1[2][1] * r1) -
                   p1[0][1] * (p1[1][0] * r2 - p1[2][0] * r1) +
                   r0 * (p1[1][0] * p1[2][1] - p1[2][0] * p1[1][1])) /
                  det;
    }
    // warpAffine samples src at M^-1 (x, y).
    double ad = M[0][0] * M[1][1] - M[0][1] * M[1][0];
    double ia = M[1][1] / ad, ib = -M[0][1] / ad, ic = -M[1][0] / ad, id = M[0][0] / ad;
    double it0 = -(ia * M[0][2] + ib * M[1][2]), it1 = -(ic * M[0][2] + id * M[1][2]);
    double *warped = ser_xmalloc(n * sizeof *warped);
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++) {
            double sx = ia * xx + ib * y + it0, sy = ic * xx + id * y + it1;
            for (int ch = 0; ch < 3; ch++)
                warped[((size_t)y * w + xx) * 3 + ch] =
                    s_bilinear(x, h, w, 3, ch, sy, sx, S_REFLECT101);
        }
    // Smooth random displacements: alpha * gaussian(uniform(-1, 1), sigma, mode='reflect',
    // truncate=3), dx first.
    double *dx = ser_xmalloc(npix * 2 * sizeof *dx), *dy = dx + npix;
    for (size_t i = 0; i < npix * 2; i++) dx[i] = s_uniform(r, -1.0, 1.0);
    s_gaussian(dx, h, w, 1, c[1], 3.0, S_REFLECT);
    s_gaussian(dy, h, w, 1, c[1], 3.0, S_REFLECT);
    // map_coordinates(order=1, mode='reflect') at (y + dy, x + dx).
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++) {
            size_t i = (size_t)y * w + xx;
            double sy = y + dy[i] * c[0], sx = xx + dx[i] * c[0];
            for (int ch = 0; ch < 3; ch++)
                x[i * 3 + ch] = s_bilinear(warped, h, w, 3, ch, sy, sx, S_REFLECT);
        }
    free(warped);
    free(dx);
}

static int s_jpeg(uint8_t *out, const uint8_t *in, int h, int w, int quality, char *err) {
    tjhandle tc = tjInitCompress(), td = NULL;
    unsigned char *buf = NULL;
    unsigned long len = 0;
    int rc = SER_EIO;
    if (!tc) {
        ser_errf(err, SER_EIO, "ser_corrupt_apply: tjInitCompress failed");
        goto done;
    }
    if (tjCompress2(tc, in, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_420, quality, 0) != 0) {
        ser_errf(err, SER_EIO, "ser_corrupt_apply: JPEG compression failed: %s",
                 tjGetErrorStr2(tc));
        goto done;
    }
    td = tjInitDecompress();
    if (!td) {
        ser_errf(err, SER_EIO, "ser_corrupt_apply: tjInitDecompress failed");
        goto done;
    }
    if (tjDecompress2(td, buf, len, out, w, 0, h, TJPF_RGB, 0) != 0) {
        ser_errf(err, SER_EIO, "ser_corrupt_apply: JPEG decompression failed: %s",
                 tjGetErrorStr2(td));
        goto done;
    }
    rc = SER_OK;
done:
    tjFree(buf);
    if (tc) tjDestroy(tc);
    if (td) tjDestroy(td);
    return rc;
}

// --- entry point -----------------------------------------------------------------------------

int ser_corrupt_apply(uint8_t *out, const uint8_t *in, int h, int w, int type, int severity,
                      uint64_t seed, char err[SER_ERR_LEN]) {
    if (!out || !in)
        return ser_errf(err, SER_EINVAL, "ser_corrupt_apply: the %s image is NULL",
                        !in ? "input" : "output");
    if (type < 0 || type >= SER_CORRUPT_COUNT)
        return ser_errf(err, SER_EINVAL, "ser_corrupt_apply: unknown corruption type %d (0..%d)",
                        type, SER_CORRUPT_COUNT - 1);
    if (severity < 1 || severity > 5)
        return ser_errf(err, SER_EINVAL, "ser_corrupt_apply: severity %d out of range 1..5",
                        severity);
    if (h < 8 || w < 8 || h > S_MAX_SIDE || w > S_MAX_SIDE)
        return ser_errf(
            err, SER_EINVAL,
            "ser_corrupt_apply: image size %dx%d (h x w) out of range: each side must be 8..%d", h,
            w, S_MAX_SIDE);

    const s_consts *k = (h < w ? h : w) <= 64 ? &s_cifar : &s_imagenet;
    int s = severity - 1;
    size_t npix = (size_t)h * w, n = npix * 3;
    // Two independent streams per (seed, type), the same at every severity.
    ser_rng r, r2;
    ser_rng_init(&r, seed, (uint32_t)type, 0, S_RNG_DOMAIN);
    ser_rng_init(&r2, seed, (uint32_t)type, 1, S_RNG_DOMAIN);

    // The 8-bit corruptions.
    if (type == SER_CORRUPT_JPEG_COMPRESSION) return s_jpeg(out, in, h, w, k->jpeg[s], err);
    if (type == SER_CORRUPT_PIXELATE) {
        int oh = (int)(h * k->pixelate[s]), ow = (int)(w * k->pixelate[s]);
        oh = oh < 1 ? 1 : oh;
        ow = ow < 1 ? 1 : ow;
        uint8_t *small = ser_xmalloc((size_t)oh * ow * 3);
        s_pil_resize_box(small, oh, ow, in, h, w);
        s_pil_resize_box(out, h, w, small, oh, ow);
        free(small);
        return SER_OK;
    }
    if (type == SER_CORRUPT_MOTION_BLUR) {
        uint8_t *src = ser_xmalloc(n);
        memcpy(src, in, n);
        s_motion_blur(out, src, h, w, 3, k->motion[s][0], k->motion[s][1],
                      s_uniform(&r, -45.0, 45.0));
        free(src);
        return SER_OK;
    }
    if (type == SER_CORRUPT_FROST) {
        double *fr = ser_xmalloc(n * sizeof *fr);
        s_frost_texture(fr, h, w, &r);
        for (size_t i = 0; i < n; i++) {
            double v = k->frost[s][0] * in[i] + k->frost[s][1] * fr[i];
            out[i] = s_trunc_u8(v / 255.0);  // np.clip(..., 0, 255), then np.uint8
        }
        free(fr);
        return SER_OK;
    }

    // The float corruptions.
    double *x = ser_xmalloc(n * sizeof *x);
    s_load(x, in, n);
    switch (type) {
        case SER_CORRUPT_GAUSSIAN_NOISE:
            for (size_t i = 0; i < n; i++) x[i] += k->gauss[s] * ser_rng_normal(&r);
            break;
        case SER_CORRUPT_SHOT_NOISE:
            for (size_t i = 0; i < n; i++) x[i] = s_poisson(&r, x[i] * k->shot[s]) / k->shot[s];
            break;
        case SER_CORRUPT_IMPULSE_NOISE:
            for (size_t i = 0; i < n; i++) {
                int flip = ser_rng_uniform_double(&r) < k->impulse[s];
                int salt = ser_rng_uniform_double(&r) < 0.5;
                if (flip) x[i] = salt ? 1.0 : 0.0;
            }
            break;
        case SER_CORRUPT_DEFOCUS_BLUR:
            s_defocus(x, h, w, k->defocus[s]);
            break;
        case SER_CORRUPT_GLASS_BLUR:
            s_glass(x, h, w, k->glass[s], &r);
            break;
        case SER_CORRUPT_ZOOM_BLUR:
            s_zoom_blur(x, h, w, k->zoom[s]);
            break;
        case SER_CORRUPT_SNOW:
            s_snow(x, h, w, k->snow[s], &r, &r2);
            break;
        case SER_CORRUPT_FOG:
            s_fog(x, h, w, k->fog[s], &r);
            break;
        case SER_CORRUPT_BRIGHTNESS:
            s_brightness(x, npix, k->brightness[s]);
            break;
        case SER_CORRUPT_CONTRAST:
            s_contrast(x, npix, k->contrast[s]);
            break;
        case SER_CORRUPT_ELASTIC_TRANSFORM:
            s_elastic(x, h, w, k->elastic[s], &r);
            break;
        default:
            SER_ABORT("ser_corrupt_apply: type %d not dispatched", type);
    }
    s_store(out, x, n);
    free(x);
    return SER_OK;
}
