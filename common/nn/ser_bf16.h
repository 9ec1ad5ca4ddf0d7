// ser_bf16.h — matrix products on the CPU's bf16 units (run.precision = bf16), through oneDNN's
// matmul primitive: the inputs are rounded to bf16 (round to nearest even, as PyTorch's
// autocast does), the products are summed in fp32 and the result stays fp32.
//
// Determinism: oneDNN picks one kernel per shape and splits the work over the OpenMP threads
// statically, so a product's bits depend on its shape, the inputs, the thread count and the CPU
// family, never on the run or timing: the same conditions as the fp32 OpenBLAS path
// (ser_kernels.h), so N workers stay bitwise equal to one.
//
// defines:
//   ser_bf16_supported()    1 where oneDNN has a native bf16 matmul here (AVX512-BF16 or AMX)
//   ser_bf16_isa()          the instruction set oneDNN uses, for the logs
//   ser_bf16_round()        fp32 -> bf16 bits, round to nearest even (NaN stays NaN)
//   ser_bf16_to_float()     bf16 bits -> fp32 (exact)
//   ser_bf16_gemm()         C (M,N) = [C +] op(A) op(B) with A, B rounded to bf16
//   ser_bf16_gemm_naive()   its oracle: the same rounding, products summed in double
#ifndef SER_BF16_H
#define SER_BF16_H

#include <stddef.h>
#include <stdint.h>

int ser_bf16_supported(void);
const char *ser_bf16_isa(void);

void ser_bf16_round(uint16_t *out, const float *x, size_t n);
static inline float ser_bf16_to_float(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}

// op(A) is A (M,K) with row stride lda, or A^T for A stored (K,M) with row stride lda when
// trans_a; op(B) is B (K,N) with ldb, or B^T for B stored (N,K) when trans_b. acc = 1 adds the
// product to C (ldc), acc = 0 overwrites it. Aborts (naming the shape) if oneDNN refuses a shape
// or the CPU has no bf16 matmul: callers check ser_bf16_supported() when the job starts.
void ser_bf16_gemm(float *C, int ldc, int acc, int trans_a, const float *A, int lda, int trans_b,
                   const float *B, int ldb, int M, int N, int K);
void ser_bf16_gemm_naive(float *C, int ldc, int acc, int trans_a, const float *A, int lda,
                         int trans_b, const float *B, int ldb, int M, int N, int K);

#endif
