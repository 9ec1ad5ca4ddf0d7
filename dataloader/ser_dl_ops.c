// ser_dl_ops.c — see ser_dl_ops.h. The PIL routines follow Pillow 9.4's C code
// (libImaging/Resample.c, BoxBlur.c, Blend.c, Convert.c) operation by operation, including
// its float/double mix, so that the uint8 results agree bit for bit.
#include "ser_dl_ops.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ser_base.h"

// --- RandomResizedCrop ----------------------------------------------------------------------

void ser_dl_rrc_params(ser_rng *r, int W, int H, double smin, double smax, double rmin,
                       double rmax, int *i, int *j, int *h, int *w) {
    double area = (double)H * W;
    double lr0 = log(rmin), lr1 = log(rmax);
    for (int t = 0; t < 10; t++) {
        double target = area * (smin + (smax - smin) * ser_rng_uniform_double(r));
        double aspect = exp(lr0 + (lr1 - lr0) * ser_rng_uniform_double(r));
        int cw = (int)rint(sqrt(target * aspect));  // rint: half to even, as Python's round
        int chh = (int)rint(sqrt(target / aspect));
        if (cw > 0 && cw <= W && chh > 0 && chh <= H) {
            *i = (int)ser_rng_below(r, (uint32_t)(H - chh + 1));
            *j = (int)ser_rng_below(r, (uint32_t)(W - cw + 1));
            *h = chh;
            *w = cw;
            return;
        }
    }
    double in_ratio = (double)W / (double)H;
    int cw, chh;
    if (in_ratio < rmin) {
        cw = W;
        chh = (int)rint(cw / rmin);
    } else if (in_ratio > rmax) {
        chh = H;
        cw = (int)rint(chh * rmax);
    } else {
        cw = W;
        chh = H;
    }
    *i = (H - chh) / 2;
    *j = (W - cw) / 2;
    *h = chh;
    *w = cw;
}

// --- PIL resampling ---------------------------------------------------------------------------

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double s_filter(double x, int interp) {
    if (x < 0.0) x = -x;
    if (interp == SER_DL_INTERP_BILINEAR) return x < 1.0 ? 1.0 - x : 0.0;
    const double a = -0.5;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

// Resample.c precompute_coeffs for a box [0, in_size) -> out_size. bounds is (out, 2):
// first tap and tap count; kk is (out, ksize) normalised double weights. Returns ksize.
static int s_precompute(int in_size, int out_size, int interp, int **bounds_p, double **kk_p) {
    double support0 = interp == SER_DL_INTERP_BILINEAR ? 1.0 : 2.0;
    double in0 = 0.0, in1 = (double)(float)in_size;  // PIL passes the box as floats
    double scale = (double)(in1 - in0) / out_size, filterscale = scale;
    if (filterscale < 1.0) filterscale = 1.0;
    double support = support0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    int *bounds = ser_xmalloc(sizeof(int) * 2 * (size_t)out_size);
    double *kk = ser_xmalloc(sizeof(double) * (size_t)ksize * out_size);
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = kk + (size_t)xx * ksize;
        int x;
        for (x = 0; x < xmax; x++) {
            double wv = s_filter((x + xmin - center + 0.5) * ss, interp);
            k[x] = wv;
            ww += wv;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    *bounds_p = bounds;
    *kk_p = kk;
    return ksize;
}

static int32_t *s_fixed_coeffs(const double *kk, size_t n) {
    int32_t *k = ser_xmalloc(sizeof(int32_t) * n);
    for (size_t i = 0; i < n; i++)
        k[i] = kk[i] < 0 ? (int32_t)(-0.5 + kk[i] * (1 << PIL_PRECISION_BITS))
                         : (int32_t)(0.5 + kk[i] * (1 << PIL_PRECISION_BITS));
    return k;
}

static inline uint8_t s_clip8(int32_t v) {
    if (v >= (1 << PIL_PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PIL_PRECISION_BITS);
}

void ser_dl_pil_resize(uint8_t *out, int ow, int oh, const uint8_t *in, int in_stride, int x0,
                       int y0, int cw, int ch, int interp) {
    SER_ASSERT(ow > 0 && oh > 0 && cw > 0 && ch > 0);
    const uint8_t *src = in + (size_t)y0 * in_stride + (size_t)x0 * 3;
    int need_h = ow != cw, need_v = oh != ch;
    if (!need_h && !need_v) {
        for (int y = 0; y < oh; y++) memcpy(out + (size_t)y * ow * 3, src + (size_t)y * in_stride,
                                            (size_t)ow * 3);
        return;
    }
    int *bh, *bv;
    double *kh_d, *kv_d;
    int ksh = s_precompute(cw, ow, interp, &bh, &kh_d);
    int ksv = s_precompute(ch, oh, interp, &bv, &kv_d);
    int32_t *kh = s_fixed_coeffs(kh_d, (size_t)ksh * ow), *kv = s_fixed_coeffs(kv_d, (size_t)ksv * oh);
    free(kh_d);
    free(kv_d);
    // Rows of the source that the vertical pass uses.
    int yfirst = bv[0], ylast = bv[2 * oh - 2] + bv[2 * oh - 1];
    uint8_t *tmp = NULL;
    const uint8_t *vsrc = src;
    int vstride = in_stride;
    if (need_h) {
        int rows = need_v ? ylast - yfirst : oh;
        int r0 = need_v ? yfirst : 0;
        uint8_t *dst = need_v ? (tmp = ser_xmalloc((size_t)rows * ow * 3)) : out;
        // The horizontal pass runs on the transposed block so that each output column is a
        // weighted sum of whole source columns (the same integer sums, vectorised).
        int len = rows * 3;
        uint8_t *t_in = ser_xmalloc((size_t)cw * len), *t_out = ser_xmalloc((size_t)ow * len);
        int32_t *sums = ser_xmalloc(sizeof(int32_t) * (size_t)len);
        for (int y = 0; y < rows; y++) {
            const uint8_t *row = src + (size_t)(y + r0) * in_stride;
            for (int x = 0; x < cw; x++) {
                uint8_t *d = t_in + (size_t)x * len + 3 * y;
                d[0] = row[3 * x], d[1] = row[3 * x + 1], d[2] = row[3 * x + 2];
            }
        }
        for (int xx = 0; xx < ow; xx++) {
            int xmin = bh[2 * xx], xmax = bh[2 * xx + 1];
            const int32_t *k = kh + (size_t)xx * ksh;
            for (int i = 0; i < len; i++) sums[i] = 1 << (PIL_PRECISION_BITS - 1);
            for (int x = 0; x < xmax; x++) {
                const uint8_t *col = t_in + (size_t)(xmin + x) * len;
                int32_t kw = k[x];
                for (int i = 0; i < len; i++) sums[i] += col[i] * kw;
            }
            uint8_t *o = t_out + (size_t)xx * len;
            for (int i = 0; i < len; i++) o[i] = s_clip8(sums[i]);
        }
        for (int xx = 0; xx < ow; xx++)
            for (int y = 0; y < rows; y++) {
                const uint8_t *sp = t_out + (size_t)xx * len + 3 * y;
                uint8_t *d = dst + ((size_t)y * ow + xx) * 3;
                d[0] = sp[0], d[1] = sp[1], d[2] = sp[2];
            }
        free(t_in);
        free(t_out);
        free(sums);
        if (need_v) {
            for (int i = 0; i < oh; i++) bv[2 * i] -= yfirst;
            vsrc = tmp;
            vstride = ow * 3;
        }
    }
    if (need_v) {
        int rowlen = ow * 3;  // when only vertical: ow == cw
        for (int yy = 0; yy < oh; yy++) {
            int ymin = bv[2 * yy], ymax = bv[2 * yy + 1];
            const int32_t *k = kv + (size_t)yy * ksv;
            uint8_t *o = out + (size_t)yy * rowlen;
            // Accumulate row by row into a vector of sums: same integer sums, better locality.
            int32_t acc[3 * 4096];
            int32_t *sums = rowlen <= 3 * 4096 ? acc : ser_xmalloc(sizeof(int32_t) * rowlen);
            for (int x = 0; x < rowlen; x++) sums[x] = 1 << (PIL_PRECISION_BITS - 1);
            for (int y = 0; y < ymax; y++) {
                const uint8_t *row = vsrc + (size_t)(y + ymin) * vstride;
                int32_t kw = k[y];
                for (int x = 0; x < rowlen; x++) sums[x] += row[x] * kw;
            }
            for (int x = 0; x < rowlen; x++) o[x] = s_clip8(sums[x]);
            if (sums != acc) free(sums);
        }
    }
    free(tmp);
    free(bh);
    free(bv);
    free(kh);
    free(kv);
}

void ser_dl_pil_resize_naive(uint8_t *out, int ow, int oh, const uint8_t *in, int in_stride,
                             int x0, int y0, int cw, int ch, int interp) {
    int *bh, *bv;
    double *kh, *kv;
    int ksh = s_precompute(cw, ow, interp, &bh, &kh);
    int ksv = s_precompute(ch, oh, interp, &bv, &kv);
    const uint8_t *src = in + (size_t)y0 * in_stride + (size_t)x0 * 3;
    for (int yy = 0; yy < oh; yy++)
        for (int xx = 0; xx < ow; xx++)
            for (int c = 0; c < 3; c++) {
                double acc = 0;
                for (int y = 0; y < bv[2 * yy + 1]; y++) {
                    const uint8_t *row = src + (size_t)(y + bv[2 * yy]) * in_stride;
                    double t = 0;
                    for (int x = 0; x < bh[2 * xx + 1]; x++)
                        t += row[3 * (x + bh[2 * xx]) + c] * kh[(size_t)xx * ksh + x];
                    t = t < 0 ? 0 : (t > 255 ? 255 : t);  // PIL clips between the passes
                    acc += t * kv[(size_t)yy * ksv + y];
                }
                // PIL skips a pass whose size is unchanged; its weights are then the identity
                // (the filters are 1 at 0 and 0 at the other integers), so no special case.
                double v = acc;
                v = floor(v + 0.5);
                out[((size_t)yy * ow + xx) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    free(bh);
    free(bv);
    free(kh);
    free(kv);
}

void ser_dl_resize_center_crop(uint8_t *out, int side, const uint8_t *in, int w, int h,
                               int interp) {
    int s = (int)lround(side * 256.0 / 224.0);
    int rw = w <= h ? s : (int)((double)s * w / h), rh = w <= h ? (int)((double)s * h / w) : s;
    if (rw < side) rw = side;
    if (rh < side) rh = side;
    uint8_t *full = ser_xmalloc((size_t)rw * rh * 3);
    ser_dl_pil_resize(full, rw, rh, in, w * 3, 0, 0, w, h, interp);
    int top = (int)rint((rh - side) / 2.0), left = (int)rint((rw - side) / 2.0);
    for (int y = 0; y < side; y++)
        memcpy(out + (size_t)y * side * 3, full + ((size_t)(top + y) * rw + left) * 3,
               (size_t)side * 3);
    free(full);
}

void ser_dl_hflip_u8(uint8_t *img, int w, int h) {
    for (int y = 0; y < h; y++) {
        uint8_t *row = img + (size_t)y * w * 3;
        for (int a = 0, b = w - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                uint8_t t = row[3 * a + c];
                row[3 * a + c] = row[3 * b + c];
                row[3 * b + c] = t;
            }
    }
}

// --- PIL photometrics -------------------------------------------------------------------------

// Blend.c: out = in1 + alpha*(in2 - in1) in float, truncated; clipped when extrapolating.
static inline uint8_t s_blend(int in1, int in2, float alpha) {
    if (alpha >= 0 && alpha <= 1.0f) return (uint8_t)((float)in1 + alpha * (float)(in2 - in1));
    float t = (float)in1 + alpha * (float)(in2 - in1);
    if (t <= 0.0f) return 0;
    if (t >= 255.0f) return 255;
    return (uint8_t)t;
}

static inline uint8_t s_pil_l(const uint8_t *p) {
    return (uint8_t)((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
}

void ser_dl_pil_brightness(uint8_t *img, int n, float f) {
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = s_blend(0, v, f);
    for (int i = 0; i < 3 * n; i++) img[i] = lut[img[i]];
}

void ser_dl_pil_contrast(uint8_t *img, int n, float f) {
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) sum += s_pil_l(img + 3 * i);
    int mean = (int)((double)sum / (double)n + 0.5);
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = s_blend(mean, v, f);
    for (int i = 0; i < 3 * n; i++) img[i] = lut[img[i]];
}

// Blend of each byte of img against deg (same layout), as s_blend: clamping t to [0, 255]
// before truncating is the same as both of Blend.c's branches, and vectorises.
static void s_blend_bytes(uint8_t *restrict img, const uint8_t *restrict deg, int n, float f) {
    for (int i = 0; i < n; i++) {
        float t = (float)deg[i] + f * (float)((int)img[i] - (int)deg[i]);
        t = t < 0.0f ? 0.0f : (t > 255.0f ? 255.0f : t);
        img[i] = (uint8_t)(int)t;
    }
}

void ser_dl_pil_saturation(uint8_t *img, int n, float f) {
    enum { CHUNK = 1024 };
    uint8_t deg[3 * CHUNK];
    for (int i0 = 0; i0 < n; i0 += CHUNK) {
        int m = n - i0 < CHUNK ? n - i0 : CHUNK;
        uint8_t *p = img + 3 * (size_t)i0;
        for (int i = 0; i < m; i++) deg[3 * i] = deg[3 * i + 1] = deg[3 * i + 2] = s_pil_l(p + 3 * i);
        s_blend_bytes(p, deg, 3 * m, f);
    }
}

static inline int s_clip8i(int v) { return v <= 0 ? 0 : v >= 255 ? 255 : v; }

// Convert.c rgb2hsv_row.
static inline void s_rgb2hsv(const uint8_t *in, uint8_t *hh, uint8_t *ss, uint8_t *vv) {
    uint8_t r = in[0], g = in[1], b = in[2];
    uint8_t maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
    uint8_t minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
    *vv = maxc;
    if (minc == maxc) {
        *hh = 0;
        *ss = 0;
        return;
    }
    float cr = (float)(maxc - minc);
    float s = cr / (float)maxc;
    float rc = ((float)(maxc - r)) / cr, gc = ((float)(maxc - g)) / cr;
    float bc = ((float)(maxc - b)) / cr;
    float h;
    if (r == maxc)
        h = bc - gc;
    else if (g == maxc)
        h = (float)(2.0 + (double)rc - (double)bc);
    else
        h = (float)(4.0 + (double)gc - (double)rc);
    h = (float)fmod(((double)h / 6.0 + 1.0), 1.0);
    *hh = (uint8_t)s_clip8i((int)((double)h * 255.0));
    *ss = (uint8_t)s_clip8i((int)((double)s * 255.0));
}

// Convert.c hsv2rgb.
static inline void s_hsv2rgb(uint8_t h, uint8_t s, uint8_t v, uint8_t *out) {
    if (s == 0) {
        out[0] = out[1] = out[2] = v;
        return;
    }
    int i = (int)floor((double)(float)h * 6.0 / 255.0);
    float f = (float)((double)(float)h * 6.0 / 255.0 - (double)(float)i);
    float fs = (float)((double)(float)s / 255.0);
    int p = (int)round((double)(float)v * (1.0 - (double)fs));
    int q = (int)round((double)(float)v * (1.0 - (double)(fs * f)));
    int t = (int)round((double)(float)v * (1.0 - (double)fs * (1.0 - (double)f)));
    uint8_t up = (uint8_t)s_clip8i(p), uq = (uint8_t)s_clip8i(q), ut = (uint8_t)s_clip8i(t);
    switch (i % 6) {
        case 0: out[0] = v, out[1] = ut, out[2] = up; break;
        case 1: out[0] = uq, out[1] = v, out[2] = up; break;
        case 2: out[0] = up, out[1] = v, out[2] = ut; break;
        case 3: out[0] = up, out[1] = uq, out[2] = v; break;
        case 4: out[0] = ut, out[1] = up, out[2] = v; break;
        default: out[0] = v, out[1] = up, out[2] = uq; break;
    }
}

// np.uint8(hue * 255): truncation toward zero, then modulo 256.
static uint8_t s_hue_shift(float hue) { return (uint8_t)((int)((double)hue * 255.0) & 255); }

void ser_dl_pil_hue_naive(uint8_t *img, int n, float hue) {
    uint8_t sh = s_hue_shift(hue);
    for (int i = 0; i < n; i++) {
        uint8_t *p = img + 3 * i, h, s, v;
        s_rgb2hsv(p, &h, &s, &v);
        s_hsv2rgb((uint8_t)(h + sh), s, v, p);
    }
}

// The fast path. rgb2hsv's H depends only on which channel is the maximum (first of r, g, b)
// and the distances of the two others from it; S only on (max - min, max). Both are tabulated
// by evaluating rgb2hsv itself, so they agree by construction. hsv2rgb keeps PIL's float and
// double steps, with its per-h and per-s terms tabulated; round(x) is (int)(x + 0.5), equal
// for 0 <= x < 256.
static uint8_t s_lut_h[3][256][256];  // [argmax][d_a][d_b]
static uint8_t s_lut_s[256][256];     // [max - min][max]
static int s_lut_i[256];
static float s_lut_f[256], s_lut_fs[256];
static double s_lut_omf[256];
static pthread_once_t s_hue_once = PTHREAD_ONCE_INIT;

static void s_hue_init(void) {
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++) {
            uint8_t rgb[3][3] = {{255, (uint8_t)(255 - a), (uint8_t)(255 - b)},
                                 {(uint8_t)(255 - a), 255, (uint8_t)(255 - b)},
                                 {(uint8_t)(255 - a), (uint8_t)(255 - b), 255}};
            for (int k = 0; k < 3; k++) {
                uint8_t h, sv, v;
                s_rgb2hsv(rgb[k], &h, &sv, &v);
                s_lut_h[k][a][b] = h;
            }
        }
    for (int mx = 1; mx < 256; mx++)
        for (int cr = 1; cr <= mx; cr++) {
            uint8_t p[3] = {(uint8_t)mx, (uint8_t)(mx - cr), (uint8_t)(mx - cr)}, h, sv, v;
            s_rgb2hsv(p, &h, &sv, &v);
            s_lut_s[cr][mx] = sv;
        }
    for (int h = 0; h < 256; h++) {
        s_lut_i[h] = (int)floor((double)(float)h * 6.0 / 255.0);
        s_lut_f[h] = (float)((double)(float)h * 6.0 / 255.0 - (double)(float)s_lut_i[h]);
        s_lut_omf[h] = 1.0 - (double)s_lut_f[h];
        s_lut_fs[h] = (float)((double)(float)h / 255.0);
    }
}

void ser_dl_pil_hue(uint8_t *img, int n, float hue) {
    pthread_once(&s_hue_once, s_hue_init);
    uint8_t sh = s_hue_shift(hue);
    for (int i = 0; i < n; i++) {
        uint8_t *p = img + 3 * i;
        int r = p[0], g = p[1], b = p[2];
        int mx = r > g ? (r > b ? r : b) : (g > b ? g : b);
        int mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
        if (mx == mn) continue;  // s = 0: gray stays gray
        int h = r == mx ? s_lut_h[0][mx - g][mx - b]
                        : (g == mx ? s_lut_h[1][mx - r][mx - b] : s_lut_h[2][mx - r][mx - g]);
        int s = s_lut_s[mx - mn][mx];
        if (s == 0) {
            p[0] = p[1] = p[2] = (uint8_t)mx;
            continue;
        }
        h = (uint8_t)(h + sh);
        double v = (double)(float)mx;
        float fs = s_lut_fs[s], f = s_lut_f[h];
        int pp = (int)(v * (1.0 - (double)fs) + 0.5);
        int q = (int)(v * (1.0 - (double)(fs * f)) + 0.5);
        int t = (int)(v * (1.0 - (double)fs * s_lut_omf[h]) + 0.5);
        // hsv2rgb's switch on i % 6 as a table of which of (v, p, q, t) goes to r, g, b.
        static const uint8_t sel[6][3] = {{0, 3, 1}, {2, 0, 1}, {1, 0, 3},
                                          {1, 2, 0}, {3, 1, 0}, {0, 1, 2}};
        uint8_t val[4] = {(uint8_t)mx, (uint8_t)s_clip8i(pp), (uint8_t)s_clip8i(q),
                          (uint8_t)s_clip8i(t)};
        const uint8_t *sl = sel[s_lut_i[h] % 6];
        p[0] = val[sl[0]], p[1] = val[sl[1]], p[2] = val[sl[2]];
    }
}

void ser_dl_pil_grayscale(uint8_t *img, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t *p = img + 3 * i;
        p[0] = p[1] = p[2] = s_pil_l(p);
    }
}

void ser_dl_pil_solarize(uint8_t *img, int n, int threshold) {
    for (int i = 0; i < 3 * n; i++)
        if (img[i] >= threshold) img[i] = (uint8_t)(255 - img[i]);
}

// BoxBlur.c: the extended box radius that makes three passes approximate sigma
// (Gwosdek et al. 2011), computed in float like ImagingGaussianBlur.
static float s_box_radius(float sigma, int passes) {
    float sigma2 = sigma * sigma / (float)passes;
    float L = (float)sqrt(12.0 * (double)sigma2 + 1.0);
    float l = (float)floor(((double)L - 1.0) / 2.0);
    float a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
    a /= 6 * (sigma2 - (l + 1) * (l + 1));
    return l + a;
}

static void s_transpose(uint8_t *out, const uint8_t *in, int w, int h) {
    // in (h, w, 3) -> out (w, h, 3), in 16x16 tiles.
    for (int y0 = 0; y0 < h; y0 += 16)
        for (int x0 = 0; x0 < w; x0 += 16)
            for (int y = y0; y < y0 + 16 && y < h; y++)
                for (int x = x0; x < x0 + 16 && x < w; x++) {
                    const uint8_t *s = in + ((size_t)y * w + x) * 3;
                    uint8_t *d = out + ((size_t)x * h + y) * 3;
                    d[0] = s[0], d[1] = s[1], d[2] = s[2];
                }
}

// The same box pass along y for all columns at once: rows of `len` bytes, (h, len) in `in`,
// result in `out`. Each column sees exactly the integer steps of s_line_box_blur; the work is
// row-wise so it vectorises. acc holds len uint32.
static void s_vbox(uint8_t *restrict out, const uint8_t *restrict in, int len, int h, float fr,
                   uint32_t *restrict acc) {
    int radius = (int)fr;
    uint32_t ww = (uint32_t)((float)(1u << 24) / (fr * 2 + 1));
    uint32_t fw = ((1u << 24) - (uint32_t)(radius * 2 + 1) * ww) / 2;
    int edgeA = radius + 1 < h ? radius + 1 : h;
    int edgeB = h - radius - 1 > 0 ? h - radius - 1 : 0;
    int last = h - 1;
#define ROW(y) (in + (size_t)(y) * len)
    {
        const uint8_t *r0 = ROW(0), *rl = ROW(last);
        for (int x = 0; x < len; x++) acc[x] = r0[x] * (uint32_t)(radius + 1);
        for (int y = 0; y < edgeA - 1; y++) {
            const uint8_t *r = ROW(y);
            for (int x = 0; x < len; x++) acc[x] += r[x];
        }
        for (int x = 0; x < len; x++) acc[x] += rl[x] * (uint32_t)(radius - edgeA + 1);
    }
    for (int y = 0; y <= last; y++) {
        int sub, add, far;
        if (edgeA <= edgeB) {
            if (y < edgeA) sub = 0, add = y + radius, far = y + radius + 1;
            else if (y < edgeB) sub = y - radius - 1, add = y + radius, far = y + radius + 1;
            else sub = y - radius - 1, add = last, far = last;
        } else {
            if (y < edgeB) sub = 0, add = y + radius, far = y + radius + 1;
            else if (y < edgeA) sub = 0, add = last, far = last;
            else sub = y - radius - 1, add = last, far = last;
        }
        const uint8_t *rs = ROW(sub), *ra = ROW(add), *rf = ROW(far);
        uint8_t *o = out + (size_t)y * len;
        for (int x = 0; x < len; x++) {
            acc[x] += (uint32_t)ra[x] - (uint32_t)rs[x];
            uint32_t bulk = acc[x] * ww + ((uint32_t)rs[x] + (uint32_t)rf[x]) * fw;
            o[x] = (uint8_t)((bulk + (1u << 23)) >> 24);
        }
    }
#undef ROW
}

// ImagingGaussianBlur: three box passes along x, then three along y. The x passes run as
// y passes on the transposed image (the same integer steps per line).
void ser_dl_pil_gaussian_blur(uint8_t *img, int w, int h, float sigma) {
    const int passes = 3;
    float fr = s_box_radius(sigma, passes);
    size_t n = (size_t)w * h * 3;
    uint8_t *t = ser_xmalloc(n), *u = ser_xmalloc(n);
    uint32_t *acc = ser_xmalloc(sizeof(uint32_t) * 3 * (size_t)(w > h ? w : h));
    s_transpose(t, img, w, h);  // t is (w, h, 3): x runs down
    for (int i = 0; i < passes; i++) {
        s_vbox(u, t, h * 3, w, fr, acc);
        uint8_t *x = t;
        t = u, u = x;
    }
    s_transpose(img, t, h, w);
    for (int i = 0; i < passes; i++) {
        s_vbox(u, img, w * 3, h, fr, acc);
        memcpy(img, u, n);
    }
    free(t);
    free(u);
    free(acc);
}

// The oracle: each box pass as a direct sum over the clamped taps x-r..x+r with weight ww and
// the two far taps x-r-1, x+r+1 with weight fw.
static void s_hbox_naive(uint8_t *img, int w, int h, float fr) {
    int radius = (int)fr;
    uint32_t ww = (uint32_t)((float)(1u << 24) / (fr * 2 + 1));
    uint32_t fw = ((1u << 24) - (uint32_t)(radius * 2 + 1) * ww) / 2;
    uint8_t *line = ser_xmalloc((size_t)w * 3);
    for (int y = 0; y < h; y++) {
        uint8_t *row = img + (size_t)y * w * 3;
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                uint32_t s = 0;
                for (int t = -radius; t <= radius; t++) {
                    int xi = x + t < 0 ? 0 : x + t > w - 1 ? w - 1 : x + t;
                    s += row[3 * xi + c];
                }
                int a = x - radius - 1 < 0 ? 0 : x - radius - 1;
                int b = x + radius + 1 > w - 1 ? w - 1 : x + radius + 1;
                uint32_t bulk = s * ww + (row[3 * a + c] + row[3 * b + c]) * fw;
                line[3 * x + c] = (uint8_t)((bulk + (1u << 23)) >> 24);
            }
        memcpy(row, line, (size_t)w * 3);
    }
    free(line);
}

void ser_dl_pil_gaussian_blur_naive(uint8_t *img, int w, int h, float sigma) {
    float fr = s_box_radius(sigma, 3);
    uint8_t *t = ser_xmalloc((size_t)w * h * 3);
    for (int i = 0; i < 3; i++) s_hbox_naive(img, w, h, fr);
    s_transpose(t, img, w, h);
    for (int i = 0; i < 3; i++) s_hbox_naive(t, h, w, fr);
    s_transpose(img, t, h, w);
    free(t);
}

// --- kornia photometrics ----------------------------------------------------------------------

static inline float s_clamp01(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

void ser_dl_kornia_brightness(float *x, int n, float b) {
    for (int i = 0; i < 3 * n; i++) x[i] = s_clamp01(x[i] + (b - 1.0f));
}

void ser_dl_kornia_contrast(float *x, int n, float c) {
    for (int i = 0; i < 3 * n; i++) x[i] = s_clamp01(x[i] * c);
}

#define S_2PI 6.283185307179586f

// kornia.color.rgb_to_hsv (eps 1e-8, h in [0, 2*pi)) and hsv_to_rgb.
static inline void s_k_rgb2hsv(const float *p, float *h, float *s, float *v) {
    float r = p[0], g = p[1], b = p[2];
    int am = 0;  // torch.max returns the first maximal index
    float mx = r;
    if (g > mx) mx = g, am = 1;
    if (b > mx) mx = b, am = 2;
    float mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
    float dc = mx - mn;
    *v = mx;
    *s = dc / (mx + 1e-8f);
    if (dc == 0) dc = 1;
    float rc = mx - r, gc = mx - g, bc = mx - b, hh;
    if (am == 0)
        hh = (bc - gc) / dc;
    else if (am == 1)
        hh = ((rc - bc) + 2.0f * dc) / dc;
    else
        hh = ((gc - rc) + 4.0f * dc) / dc;
    hh = hh / 6.0f;
    hh = hh - floorf(hh);  // Python-style % 1.0
    *h = S_2PI * hh;
}

static inline void s_k_hsv2rgb(float h, float s, float v, float *out) {
    h = h / S_2PI;
    float h6 = h * 6.0f;
    float hi = fmodf(floorf(h6), 6.0f);
    if (hi < 0) hi += 6.0f;
    float m6 = fmodf(h6, 6.0f);
    if (m6 < 0) m6 += 6.0f;
    float f = m6 - hi;
    float p = v * (1.0f - s), q = v * (1.0f - f * s), t = v * (1.0f - (1.0f - f) * s);
    switch ((int)hi) {
        case 0: out[0] = v, out[1] = t, out[2] = p; break;
        case 1: out[0] = q, out[1] = v, out[2] = p; break;
        case 2: out[0] = p, out[1] = v, out[2] = t; break;
        case 3: out[0] = p, out[1] = q, out[2] = v; break;
        case 4: out[0] = t, out[1] = p, out[2] = v; break;
        default: out[0] = v, out[1] = p, out[2] = q; break;
    }
}

void ser_dl_kornia_saturation(float *x, int n, float sf) {
    for (int i = 0; i < n; i++) {
        float h, s, v;
        s_k_rgb2hsv(x + 3 * i, &h, &s, &v);
        s_k_hsv2rgb(h, s_clamp01(s * sf), v, x + 3 * i);
    }
}

void ser_dl_kornia_hue(float *x, int n, float u) {
    float shift = S_2PI * u;
    for (int i = 0; i < n; i++) {
        float h, s, v;
        s_k_rgb2hsv(x + 3 * i, &h, &s, &v);
        h = fmodf(h + shift, S_2PI);  // torch.fmod: sign of the dividend
        s_k_hsv2rgb(h, s, v, x + 3 * i);
    }
}

void ser_dl_kornia_grayscale(float *x, int n) {
    for (int i = 0; i < n; i++) {
        float *p = x + 3 * i;
        p[0] = p[1] = p[2] = 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2];
    }
}

static inline int s_reflect(int i, int n) {
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
    return i;
}

// The 9 taps (-4..4) of a normalised Gaussian.
static void s_gauss9(float k[9], float sigma) {
    float sum = 0;
    for (int t = 0; t < 9; t++) {
        float d = (float)(t - 4);
        k[t] = expf(-(d * d) / (2.0f * sigma * sigma));
        sum += k[t];
    }
    for (int t = 0; t < 9; t++) k[t] /= sum;
}

void ser_dl_kornia_blur(float *x, int w, int h, float sigma, float *tmp) {
    float k[9];
    s_gauss9(k, sigma);
    // Every output is 0 + k[0] v[0] + ... + k[8] v[8] in tap order (ser_dl_kornia_blur_naive).
    // Here the taps run over a reflect-padded row (x), then over rows picked by reflection (y),
    // so the inner loops run along the pixels and vectorise; the loader is built with
    // -ffp-contract=off, so each element's operations, and so its bits, are the naive loops'.
    size_t rw = (size_t)w * 3;
    float *pad = ser_xmalloc(sizeof(float) * (rw + 24));
    for (int y = 0; y < h; y++) {
        const float *row = x + (size_t)y * rw;
        for (int p = -4; p < w + 4; p++)
            for (int c = 0; c < 3; c++) pad[(size_t)(p + 4) * 3 + c] = row[(size_t)s_reflect(p, w) * 3 + c];
        float *o = tmp + (size_t)y * rw;
        for (size_t i = 0; i < rw; i++) o[i] = 0;
        for (int t = 0; t < 9; t++) {
            const float *src = pad + (size_t)t * 3, kt = k[t];
            for (size_t i = 0; i < rw; i++) o[i] += kt * src[i];
        }
    }
    free(pad);
    for (int y = 0; y < h; y++) {
        float *o = x + (size_t)y * rw;
        for (size_t i = 0; i < rw; i++) o[i] = 0;
        for (int t = 0; t < 9; t++) {
            const float *src = tmp + (size_t)s_reflect(y + t - 4, h) * rw, kt = k[t];
            for (size_t i = 0; i < rw; i++) o[i] += kt * src[i];
        }
    }
}

void ser_dl_kornia_blur_naive(float *x, int w, int h, float sigma, float *tmp) {
    float k[9];
    s_gauss9(k, sigma);
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++)
            for (int c = 0; c < 3; c++) {
                float a = 0;
                for (int t = 0; t < 9; t++)
                    a += k[t] * x[((size_t)y * w + s_reflect(xx + t - 4, w)) * 3 + c];
                tmp[((size_t)y * w + xx) * 3 + c] = a;
            }
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++)
            for (int c = 0; c < 3; c++) {
                float a = 0;
                for (int t = 0; t < 9; t++)
                    a += k[t] * tmp[((size_t)s_reflect(y + t - 4, h) * w + xx) * 3 + c];
                x[((size_t)y * w + xx) * 3 + c] = a;
            }
}

void ser_dl_kornia_solarize(float *x, int n, float t) {
    for (int i = 0; i < 3 * n; i++) {
        float v = s_clamp01(x[i]);
        x[i] = v < t ? v : 1.0f - v;
    }
}

// --- photometric draws -----------------------------------------------------------------------

void ser_dl_photo_draw_order(int order[4], ser_rng *r) {
    for (int i = 0; i < 4; i++) order[i] = i;
    for (int i = 3; i > 0; i--) {
        int j = (int)ser_rng_below(r, (uint32_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

const ser_dl_photo_strength ser_dl_photo_moco = {1.0, 2.0, 0.2, 0.2};

static int s_is_moco(const ser_dl_photo_strength *st) {
    return st->jitter == 1.0 && st->blur_sigma == 2.0 && st->gray_prob == 0.2 &&
           st->solarize_prob == 0.2;
}

void ser_dl_photo_draw(ser_dl_photo *p, int policy, uint64_t seed, uint32_t epoch,
                       uint32_t index, int view, const int *shard_order,
                       const ser_dl_photo_strength *st) {
    // Views 0 and 1: MoCo-v3's two global policies; 2..: DINO's local-crop policy.
    static const float p_blur[3] = {1.0f, 0.1f, 0.5f}, p_sol[3] = {0.0f, 0.2f, 0.0f};
    SER_ASSERT(view >= 0 && view < 2 + SER_DL_MAX_LOCAL + SER_DL_MAX_PAIR_VIEWS);
    int pv = view < 2 ? view : 2;
    if (!st) st = &ser_dl_photo_moco;
    // MoCo-v3's strengths keep their original float constants: the same bits as the
    // torchvision/kornia fixtures.
    int moco = s_is_moco(st);
    float js = (float)st->jitter;
    uint32_t v = (uint32_t)view << 16;
    ser_rng r;
    memset(p, 0, sizeof *p);
    // One stream per purpose; every draw is made whether used or not, so the layout of each
    // stream is fixed.
    ser_rng_init(&r, seed, epoch, index, v | SER_RNG_COLOR);
    p->jitter = ser_rng_uniform(&r) < 0.8f;
    ser_dl_photo_draw_order(p->order, &r);
    if (shard_order) memcpy(p->order, shard_order, sizeof p->order);
    float ub = ser_rng_uniform(&r), uc = ser_rng_uniform(&r), us = ser_rng_uniform(&r),
          uh = ser_rng_uniform(&r);
    if (moco) {
        p->b = 0.6f + 0.8f * ub;
        p->c = 0.6f + 0.8f * uc;
        p->s = 0.8f + 0.4f * us;
        p->h = -0.1f + 0.2f * uh;
    } else {  // factor ranges [1 - a, 1 + a] with a scaled by the strength
        p->b = 1.0f - 0.4f * js + 0.8f * js * ub;
        p->c = 1.0f - 0.4f * js + 0.8f * js * uc;
        p->s = 1.0f - 0.2f * js + 0.4f * js * us;
        p->h = -0.1f * js + 0.2f * js * uh;
        if (js == 0.0f) p->jitter = 0;
    }
    p->gray = ser_rng_uniform(&r) < (moco ? 0.2f : (float)st->gray_prob);
    ser_rng_init(&r, seed, epoch, index, v | SER_RNG_BLUR);
    p->blur = ser_rng_uniform(&r) < p_blur[pv];
    float u = ser_rng_uniform(&r);
    p->sigma = moco ? 0.1f + 1.9f * u : 0.1f + ((float)st->blur_sigma - 0.1f) * u;
    if (!moco && st->blur_sigma <= 0.0) p->blur = 0;
    ser_rng_init(&r, seed, epoch, index, v | SER_RNG_SOLARIZE);
    p->solarize = ser_rng_uniform(&r) < (moco || view != 1 ? p_sol[pv] : (float)st->solarize_prob);
    p->threshold = policy == SER_DL_POLICY_KORNIA ? ser_rng_uniform(&r) : 128.0f / 255.0f;
}

void ser_dl_photo_apply_u8(uint8_t *img, int w, int h, const ser_dl_photo *p) {
    int n = w * h;
    if (p->jitter)
        for (int k = 0; k < 4; k++) switch (p->order[k]) {
                case 0: ser_dl_pil_brightness(img, n, p->b); break;
                case 1: ser_dl_pil_contrast(img, n, p->c); break;
                case 2: ser_dl_pil_saturation(img, n, p->s); break;
                default: ser_dl_pil_hue(img, n, p->h); break;
            }
    if (p->gray) ser_dl_pil_grayscale(img, n);
    if (p->blur) ser_dl_pil_gaussian_blur(img, w, h, p->sigma);
    if (p->solarize) ser_dl_pil_solarize(img, n, 128);
}

void ser_dl_photo_apply_f32(float *x, int w, int h, const ser_dl_photo *p, float *tmp) {
    int n = w * h;
    if (p->jitter)
        for (int k = 0; k < 4; k++) switch (p->order[k]) {
                case 0: ser_dl_kornia_brightness(x, n, p->b); break;
                case 1: ser_dl_kornia_contrast(x, n, p->c); break;
                case 2: ser_dl_kornia_saturation(x, n, p->s); break;
                default: ser_dl_kornia_hue(x, n, p->h); break;
            }
    if (p->gray) ser_dl_kornia_grayscale(x, n);
    if (p->blur) ser_dl_kornia_blur(x, w, h, p->sigma, tmp);
    if (p->solarize) ser_dl_kornia_solarize(x, n, p->threshold);
}

// --- float conversions ---------------------------------------------------------------------------

void ser_dl_u8_to_f32(float *out, const uint8_t *in, int n) {
    for (int i = 0; i < n; i++) out[i] = (float)in[i] * (1.0f / 255.0f);
}

void ser_dl_f32_to_u8(uint8_t *out, const float *in, int n) {
    for (int i = 0; i < n; i++) {
        float v = floorf(in[i] * 255.0f + 0.5f);
        out[i] = (uint8_t)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
    }
}

void ser_dl_normalise(float *out, const uint8_t *in, int h, int w) {
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    size_t hw = (size_t)h * w;
    for (size_t p = 0; p < hw; p++)
        for (int ch = 0; ch < 3; ch++)
            out[ch * hw + p] = ((float)in[p * 3 + ch] / 255.0f - mean[ch]) / std[ch];
}
