// ser_dl_ops.h — augmentation ops of the loader, each deterministic given its parameters.
//
// Images are RGB, HWC (rows of w*3 values), uint8 or float. Two semantics:
//   torchvision  torchvision 0.14 on PIL 9.4 images, uint8 exact: PIL's antialiased
//                resampling in 22-bit fixed point, ImageEnhance blends (float, truncating),
//                PIL's uint8 HSV round trip for hue, L = (19595 R + 38470 G + 7471 B + 2^15)
//                >> 16 for grayscale, PIL's GaussianBlur (three extended box blurs, the
//                MoCo-v3 blur), ImageOps.solarize(128).
//   kornia       kornia 0.8.0 on [0,1] floats (ser-reference.md §3.2): additive brightness,
//                multiplicative contrast, HSV saturation/hue in radians, 9x9 truncated Gaussian
//                with reflect border, solarize with a random threshold.
// The equivariant group action is not here: the loader applies common/nn/ser_group.h's
// ser_group_image_action_hwc, the one definition of G that the worker's objective also uses.
//
// defines:
//   ser_dl_rrc_params()                      torchvision RandomResizedCrop.get_params
//   ser_dl_pil_resize(), _naive()            PIL resize of a crop box (bilinear/bicubic)
//   ser_dl_hflip_u8()
//   ser_dl_pil_brightness/contrast/saturation/hue(), ser_dl_pil_grayscale()
//   ser_dl_pil_gaussian_blur(), _naive(), ser_dl_pil_solarize()
//   ser_dl_kornia_brightness/contrast/saturation/hue/grayscale/blur/solarize()
//   ser_dl_photo (parameters of one view's photometric draw), ser_dl_photo_draw(),
//   ser_dl_photo_apply_u8() (torchvision), ser_dl_photo_apply_f32() (kornia)
//   ser_dl_u8_to_f32(), ser_dl_f32_to_u8()
//   ser_dl_normalise()                       RGB uint8 HWC -> ImageNet-normalised float CHW
#ifndef SER_DL_OPS_H
#define SER_DL_OPS_H

#include <stdint.h>

#include "ser_rng.h"

enum ser_dl_interp { SER_DL_INTERP_BILINEAR = 0, SER_DL_INTERP_BICUBIC = 1 };
enum ser_dl_policy { SER_DL_POLICY_TORCHVISION = 0, SER_DL_POLICY_KORNIA = 1 };

// --- geometry --------------------------------------------------------------------------------

// RandomResizedCrop.get_params on a W x H image: 10 tries of area*U(smin,smax) with a
// log-uniform ratio in (rmin,rmax), w = round(sqrt(A*r)), h = round(sqrt(A/r)) (half to
// even), accept if 0 < w <= W and 0 < h <= H, then i ~ U{0..H-h}, j ~ U{0..W-w}; else the
// centre crop with the ratio clamped. Draws from r (purpose SER_RNG_CROP).
void ser_dl_rrc_params(ser_rng *r, int W, int H, double smin, double smax, double rmin,
                       double rmax, int *i, int *j, int *h, int *w);

// PIL Image.crop((x0, y0, x0+cw, y0+ch)).resize((ow, oh), BILINEAR|BICUBIC) on uint8 RGB
// (in has row stride in_stride bytes). Antialiased: the filter support grows with the
// downscale factor; 8-bit fixed point with 22 fractional bits; horizontal pass first on the
// rows the vertical pass needs. out is (oh, ow, 3).
void ser_dl_pil_resize(uint8_t *out, int ow, int oh, const uint8_t *in, int in_stride, int x0,
                       int y0, int cw, int ch, int interp);
// The same in double precision with rounding at the end: the oracle (matches within +-1).
void ser_dl_pil_resize_naive(uint8_t *out, int ow, int oh, const uint8_t *in, int in_stride,
                             int x0, int y0, int cw, int ch, int interp);

void ser_dl_hflip_u8(uint8_t *img, int w, int h);
// torchvision Resize(round(side * 256 / 224)) (the shorter side; the longer one truncated) then
// CenterCrop(side) (offsets rounded half to even) on a w x h image: out is (side, side, 3).
void ser_dl_resize_center_crop(uint8_t *out, int side, const uint8_t *in, int w, int h,
                               int interp);

// --- torchvision / PIL photometrics (in place, (h, w, 3) uint8) -------------------------------

// Image.blend(black, img, f): out = trunc(f*x), clipped when f > 1.
void ser_dl_pil_brightness(uint8_t *img, int n, float f);
// Image.blend(mean-gray, img, f); the mean is int(mean(L) + 0.5) of the whole image.
void ser_dl_pil_contrast(uint8_t *img, int n, float f);
// Image.blend(L(img), img, f).
void ser_dl_pil_saturation(uint8_t *img, int n, float f);
// torchvision adjust_hue: PIL RGB->HSV (uint8), H += uint8(hue*255), HSV->RGB.
void ser_dl_pil_hue(uint8_t *img, int n, float hue);
// The same with PIL's per-pixel conversions written out (the oracle; exact).
void ser_dl_pil_hue_naive(uint8_t *img, int n, float hue);
// convert("L") replicated to three channels.
void ser_dl_pil_grayscale(uint8_t *img, int n);
// ImageFilter.GaussianBlur(radius=sigma): three extended box blurs per axis.
void ser_dl_pil_gaussian_blur(uint8_t *img, int w, int h, float sigma);
// The same box blurs written as a direct weighted sum per pass (the oracle; exact).
void ser_dl_pil_gaussian_blur_naive(uint8_t *img, int w, int h, float sigma);
// ImageOps.solarize(threshold): x >= threshold -> 255 - x.
void ser_dl_pil_solarize(uint8_t *img, int n, int threshold);

// --- kornia 0.8.0 photometrics (in place, (h, w, 3) float in [0,1]) ---------------------------

void ser_dl_kornia_brightness(float *x, int n, float b);  // clamp(x + (b - 1))
void ser_dl_kornia_contrast(float *x, int n, float c);    // clamp(c * x)
void ser_dl_kornia_saturation(float *x, int n, float s);  // HSV: S <- clamp(s*S)
void ser_dl_kornia_hue(float *x, int n, float u);         // HSV: H <- fmod(H + 2*pi*u, 2*pi)
void ser_dl_kornia_grayscale(float *x, int n);            // 0.299 R + 0.587 G + 0.114 B
// 9x9 Gaussian (taps -4..4, normalised), separable (x then y), reflect border; tmp holds
// w*h*3 floats.
void ser_dl_kornia_blur(float *x, int w, int h, float sigma, float *tmp);
void ser_dl_kornia_blur_naive(float *x, int w, int h, float sigma, float *tmp);  // its twin: the
                                                                                  // same bits
void ser_dl_kornia_solarize(float *x, int n, float t);    // x < t ? x : 1 - x

// --- one view's photometric draw ------------------------------------------------------------

// The MoCo-v3 policy per view: jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2,
// blur sigma ~ U(0.1, 2) with p 1.0 (view 0) / 0.1 (view 1), solarize p 0 / 0.2. Local views
// (view 2 .. 1 + SER_DL_MAX_LOCAL): blur p 0.5, never solarized (DINO's local crops); the views
// of the local SER pairs (2 + SER_DL_MAX_LOCAL .. + SER_DL_MAX_PAIR_VIEWS) take that policy too.
#define SER_DL_MAX_LOCAL 10
#define SER_DL_MAX_PAIR_VIEWS 8  // 2 * SER_MAX_LOCAL_PAIRS (ser_dl.c asserts it)
typedef struct ser_dl_photo {
    int jitter;       // apply colour jitter
    int order[4];     // op order: 0 brightness, 1 contrast, 2 saturation, 3 hue
    float b, c, s, h; // brightness, contrast, saturation factors; hue shift in [-0.1, 0.1]
    int gray;
    int blur;
    float sigma;
    int solarize;
    float threshold;  // kornia: U(0,1); torchvision: 128/255 (fixed)
} ser_dl_photo;

// The policy's strengths, for images far smaller than ImageNet's (a sigma-2 blur on a 28 px
// image erases it): jitter scales the four jitter ranges (1 = 0.4, 0.4, 0.2, 0.1), blur_sigma
// is the largest blur sigma (sigma ~ U(0.1, blur_sigma); 0 = no blur), gray_prob the
// grayscale probability, solarize_prob view 1's solarize probability (view 0 never
// solarizes). The draws are made whatever the strengths, so each stream's layout is fixed.
typedef struct ser_dl_photo_strength {
    double jitter, blur_sigma, gray_prob, solarize_prob;
} ser_dl_photo_strength;
extern const ser_dl_photo_strength ser_dl_photo_moco;  // {1, 2, 0.2, 0.2}: MoCo-v3's

// Draws view `view`'s parameters from the streams (seed, epoch, index, view<<16 | purpose)
// for purposes SER_RNG_COLOR, SER_RNG_BLUR, SER_RNG_SOLARIZE. For kornia the op order is
// one per shard: pass it in shard_order (4 ints), else NULL (torchvision: per sample).
// st NULL: ser_dl_photo_moco (the same bits as before strengths existed).
void ser_dl_photo_draw(ser_dl_photo *p, int policy, uint64_t seed, uint32_t epoch,
                       uint32_t index, int view, const int *shard_order,
                       const ser_dl_photo_strength *st);
// Draws a random order of the 4 jitter ops (torch.randperm(4)'s role) from r.
void ser_dl_photo_draw_order(int order[4], ser_rng *r);
void ser_dl_photo_apply_u8(uint8_t *img, int w, int h, const ser_dl_photo *p);
// tmp holds w*h*3 floats.
void ser_dl_photo_apply_f32(float *x, int w, int h, const ser_dl_photo *p, float *tmp);

// --- float conversions ---------------------------------------------------------------------------

void ser_dl_u8_to_f32(float *out, const uint8_t *in, int n);  // x / 255
// Clamps x*255 to [0,255] and rounds half up.
void ser_dl_f32_to_u8(uint8_t *out, const float *in, int n);
// The network's input, as every worker and `ser eval` make it (loaders ship uint8, design.md
// §4): out (3, h, w) = (in / 255 - mean) / std per channel with ImageNet's mean and std;
// in (h, w, 3).
void ser_dl_normalise(float *out, const uint8_t *in, int h, int w);

#endif
