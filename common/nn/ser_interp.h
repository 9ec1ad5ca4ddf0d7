// ser_interp.h — PyTorch-exact bicubic resampling (F.interpolate mode='bicubic',
// align_corners=False, antialias=False) and its adjoint.
//
// Kernel A = -0.75; taps i0-1..i0+2 index-clamped to [0, size-1]; the source coordinate itself
// is not clamped; separable: along x first, then y (the order of PyTorch's CPU kernel).
// Source coordinate: src = s*(o+0.5) - 0.5 with s = 1/scale_factor when a scale factor is
// given (scale > 0), else s = in/out. The scale-factor form is what the reference uses for
// position embeddings: scale_factor = (g+0.1)/g0 (ser-reference.md §1.4).
//
// Tensors are addressed through strides so one routine serves channel-planar images
// (C,H,W) and channels-last token maps (H,W,C).
//
// defines:
//   ser_bicubic_axis (per-axis taps and weights), ser_bicubic_axis_init()
//   ser_bicubic_forward(), ser_bicubic_backward()  (strided, any layout)
//   ser_bicubic_out_size(in, scale)                 floor(in*scale), as PyTorch sizes it
#ifndef SER_INTERP_H
#define SER_INTERP_H

#include <stdint.h>

typedef struct ser_bicubic_axis {
    int in, out;
    int *idx;    // (out, 4) clamped source indices
    float *w;    // (out, 4) weights
} ser_bicubic_axis;

// scale > 0: PyTorch scale_factor semantics; scale <= 0: size semantics (in/out).
void ser_bicubic_axis_init(ser_bicubic_axis *a, int in, int out, double scale);
void ser_bicubic_axis_free(ser_bicubic_axis *a);

// The output size PyTorch gives for a scale factor: floor(in * scale) computed in double.
int ser_bicubic_out_size(int in, double scale);

// out[c, y, x] = sum_i wy_i * (sum_j wx_j * in[c, iy_i, ix_j]) for C channels.
// Strides are in floats: cs (channel), ys (row), xs (column), separately for in and out.
typedef struct ser_strides {
    int64_t c, y, x;
} ser_strides;

void ser_bicubic_forward(float *out, ser_strides os, const float *in, ser_strides is, int C,
                         const ser_bicubic_axis *ay, const ser_bicubic_axis *ax);
// The adjoint: din[c, iy, ix] += sum over outputs of wy*wx*dout[c, y, x] (accumulates).
void ser_bicubic_backward(float *din, ser_strides is, const float *dout, ser_strides os, int C,
                          const ser_bicubic_axis *ay, const ser_bicubic_axis *ax);

// Convenience for channels-last maps: in (H,W,C) -> out (OH,OW,C), size semantics or scale.
void ser_bicubic_hwc(float *out, int OH, int OW, const float *in, int H, int W, int C,
                     double scale_h, double scale_w);
void ser_bicubic_hwc_backward(float *din, int H, int W, const float *dout, int OH, int OW, int C,
                              double scale_h, double scale_w);

#endif
