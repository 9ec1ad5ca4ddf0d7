// ser_fmath.h — branch-free float exp and erf that the compiler vectorises.
//
// Used inside the hot loops (softmax, GELU); each has a libm twin (expf, erff) that the tests
// use as oracle. Accuracy (measured by tests/test_kernels.c over dense sweeps):
//   ser_fexp: relative error < 4e-7 on [-87, 88]; returns 0 below -87.3 (flushes).
//   ser_ferf: absolute error < 1e-6 everywhere (rational approximation on [-4, 4]).
//
// Vectorising the selects needs -fno-trapping-math (set in CMakeLists.txt): it changes no
// result and keeps NaN/Inf semantics, unlike -ffast-math.
//
// defines: ser_fexp(x), ser_ferf(x)   (static inline: definitions must be visible to vectorise)
#ifndef SER_FMATH_H
#define SER_FMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

// exp(x) = 2^n * exp(r), n = round(x/ln2), r = x - n*ln2 (Cody-Waite split), exp(r) by a
// degree-6 polynomial on |r| <= ln2/2.
static inline float ser_fexp(float x) {
    x = x < 88.3762626647949f ? x : 88.3762626647949f;
    int under = x < -87.3365447505531f;
    x = x > -87.3365447505531f ? x : -87.3365447505531f;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    float y = p * scale;
    return under ? 0.0f : y;
}

// erf by the rational approximation used by Eigen and XLA for float (odd numerator of degree
// 13, even denominator of degree 8) on x clamped to [-4, 4], where erf is +-1 in float.
static inline float ser_ferf(float x) {
    x = x < 4.0f ? x : 4.0f;
    x = x > -4.0f ? x : -4.0f;
    float x2 = x * x;
    float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
    p = x2 * p + -2.10102402082508e-06f;
    p = x2 * p + -5.69250639462346e-05f;
    p = x2 * p + -7.34990630326855e-04f;
    p = x2 * p + -2.95459980854025e-03f;
    p = x2 * p + -1.60960333262415e-02f;
    p = x * p;
    float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
    q = x2 * q + -1.68282697438203e-03f;
    q = x2 * q + -7.37332916720468e-03f;
    q = x2 * q + -1.42647390514189e-02f;
    return p / q;
}

#endif
