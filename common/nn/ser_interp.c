// ser_interp.c — see ser_interp.h.
#include "ser_interp.h"

#include <math.h>
#include <stdlib.h>

#include "ser_base.h"

// The cubic convolution weights of PyTorch's get_cubic_upsample_coefficients (A = -0.75),
// evaluated in float like its float kernels.
static inline float s_cc1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
static inline float s_cc2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

int ser_bicubic_out_size(int in, double scale) { return (int)floor((double)in * scale); }

void ser_bicubic_axis_init(ser_bicubic_axis *a, int in, int out, double scale) {
    SER_ASSERT(in > 0 && out > 0);
    a->in = in;
    a->out = out;
    a->idx = ser_xmalloc(sizeof(int) * 4 * (size_t)out);
    a->w = ser_xmalloc(sizeof(float) * 4 * (size_t)out);
    // area_pixel_compute_scale: 1/scale_factor in float, or in/out in float.
    float s = scale > 0 ? (float)(1.0 / scale) : (float)in / (float)out;
    const float A = -0.75f;
    for (int o = 0; o < out; o++) {
        // area_pixel_compute_source_index (cubic): s*(o+0.5)-0.5 evaluated in double, stored in
        // float, never clamped.
        float src = (float)((double)s * ((double)o + 0.5) - 0.5);
        int i0 = (int)floorf(src);
        float t = src - (float)i0;
        float *w = a->w + 4 * o;
        w[0] = s_cc2(t + 1.0f, A);
        w[1] = s_cc1(t, A);
        w[2] = s_cc1(1.0f - t, A);
        w[3] = s_cc2((1.0f - t) + 1.0f, A);
        for (int k = 0; k < 4; k++) {
            int i = i0 - 1 + k;
            a->idx[4 * o + k] = i < 0 ? 0 : (i > in - 1 ? in - 1 : i);
        }
    }
}

void ser_bicubic_axis_free(ser_bicubic_axis *a) {
    free(a->idx);
    free(a->w);
    a->idx = NULL;
    a->w = NULL;
}

void ser_bicubic_forward(float *out, ser_strides os, const float *in, ser_strides is, int C,
                         const ser_bicubic_axis *ay, const ser_bicubic_axis *ax) {
    for (int c = 0; c < C; c++) {
        const float *ic = in + c * is.c;
        float *oc = out + c * os.c;
        for (int y = 0; y < ay->out; y++) {
            const int *iy = ay->idx + 4 * y;
            const float *wy = ay->w + 4 * y;
            for (int x = 0; x < ax->out; x++) {
                const int *ix = ax->idx + 4 * x;
                const float *wx = ax->w + 4 * x;
                float acc = 0;
                for (int i = 0; i < 4; i++) {
                    const float *row = ic + iy[i] * is.y;
                    float t = row[ix[0] * is.x] * wx[0];
                    t += row[ix[1] * is.x] * wx[1];
                    t += row[ix[2] * is.x] * wx[2];
                    t += row[ix[3] * is.x] * wx[3];
                    acc = i == 0 ? t * wy[0] : acc + t * wy[i];
                }
                oc[y * os.y + x * os.x] = acc;
            }
        }
    }
}

void ser_bicubic_backward(float *din, ser_strides is, const float *dout, ser_strides os, int C,
                          const ser_bicubic_axis *ay, const ser_bicubic_axis *ax) {
    for (int c = 0; c < C; c++) {
        float *ic = din + c * is.c;
        const float *oc = dout + c * os.c;
        for (int y = 0; y < ay->out; y++) {
            const int *iy = ay->idx + 4 * y;
            const float *wy = ay->w + 4 * y;
            for (int x = 0; x < ax->out; x++) {
                const int *ix = ax->idx + 4 * x;
                const float *wx = ax->w + 4 * x;
                float g = oc[y * os.y + x * os.x];
                for (int i = 0; i < 4; i++) {
                    float gy = g * wy[i];
                    float *row = ic + iy[i] * is.y;
                    for (int j = 0; j < 4; j++) row[ix[j] * is.x] += gy * wx[j];
                }
            }
        }
    }
}

void ser_bicubic_hwc(float *out, int OH, int OW, const float *in, int H, int W, int C,
                     double scale_h, double scale_w) {
    ser_bicubic_axis ay, ax;
    ser_bicubic_axis_init(&ay, H, OH, scale_h);
    ser_bicubic_axis_init(&ax, W, OW, scale_w);
    ser_strides is = {1, (int64_t)W * C, C}, os = {1, (int64_t)OW * C, C};
    ser_bicubic_forward(out, os, in, is, C, &ay, &ax);
    ser_bicubic_axis_free(&ay);
    ser_bicubic_axis_free(&ax);
}

void ser_bicubic_hwc_backward(float *din, int H, int W, const float *dout, int OH, int OW, int C,
                              double scale_h, double scale_w) {
    ser_bicubic_axis ay, ax;
    ser_bicubic_axis_init(&ay, H, OH, scale_h);
    ser_bicubic_axis_init(&ax, W, OW, scale_w);
    ser_strides is = {1, (int64_t)W * C, C}, os = {1, (int64_t)OW * C, C};
    ser_bicubic_backward(din, is, dout, os, C, &ay, &ax);
    ser_bicubic_axis_free(&ay);
    ser_bicubic_axis_free(&ax);
}
