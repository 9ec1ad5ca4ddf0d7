// ser_kernels.h — the compute kernels of the ViT, forward and backward side by side: fp32, except
// the linear layers' products under run.precision = bf16 (ser_kernels_set_precision below).
//
// Conventions (STYLE.md rule 3): outputs first, then inputs, then sizes; every shape is in a
// comment; backward kernels ACCUMULATE (+=) into parameter gradients, which the caller zeroes
// once per step. Input gradients (dinp) are written or accumulated as the `acc` flag says, so
// scratch buffers need no zeroing. Every BLAS-backed or vectorised kernel has a _naive twin in
// ser_kernels_naive.c: the test oracle.
//
// Determinism: every kernel gives the same bits on every run for a given thread count. The
// kernels that are ser's own loops (LayerNorm, GELU, softmax, column sums, im2col, elementwise)
// give the same bits for ANY thread count: each output element is reduced by one thread in a
// fixed order. The BLAS-backed ones (matmul, attention) are bitwise only for a fixed thread
// count: OpenBLAS splits M and N across threads, and its edge-tile kernels round differently
// from its main kernel, so where the split falls changes some bits (seen for 848x64x848 and
// 1000x500x300 backward products). The distributed runtime therefore fixes the compute thread
// count per job (it is part of the config hash), and results also depend on the CPU family,
// since OpenBLAS picks kernels by CPU.
//
// defines:
//   ser_matmul_forward/_backward          out = inp @ w^T + b (PyTorch nn.Linear)
//   ser_layernorm_forward/_backward       LayerNorm over the last dim
//   ser_gelu_forward/_backward            exact (erf) GELU
//   ser_attention_forward/_backward       multi-head softmax attention on a packed qkv
//   ser_softmax_rows                      in-place row softmax
//   ser_patch_im2col                      (B,3,H,W) image -> (B*gh*gw, 3*P*P) patches
//   ser_add_inplace, ser_scale_rows       residual add, per-row scaling (drop path)
//   ser_colsum_acc                        db += column sums of a (M,N) matrix
//   ser_sgemm_rows                        a thread-count-invariant sgemm (fixed row blocks)
//   ser_kernels_set_threads/get_threads   OpenMP + OpenBLAS thread count
//   ser_kernels_set_precision/get_precision   fp32 (OpenBLAS) or bf16 (oneDNN) linear layers
//   *_naive twins (ser_kernels_naive.c)
#ifndef SER_KERNELS_H
#define SER_KERNELS_H

#include <stddef.h>

void ser_kernels_set_threads(int n);
int ser_kernels_get_threads(void);

// The products of ser_matmul_forward/_backward (every linear layer: the ViT's, the patch
// embedding's, the heads'): fp32 through OpenBLAS (the default, and what the PyTorch fixtures
// check), or bf16 (run.precision = bf16): inputs rounded to bf16, products summed in fp32 on the
// CPU's bf16 units through oneDNN (ser_bf16.h), as PyTorch's CPU autocast does for nn.Linear,
// except that the outputs stay fp32. Everything else (attention products, norms, losses, the
// optimizer, master weights) stays fp32. Per process; returns -1 with a message in err (which
// may be NULL) where the CPU has no native bf16.
enum { SER_PRECISION_FP32 = 0, SER_PRECISION_BF16 = 1, SER_PRECISION_AUTO = 2 };
int ser_kernels_set_precision(int precision, char *err, size_t nerr);
int ser_kernels_get_precision(void);

// --- linear ----------------------------------------------------------------------------------
// inp (M,K), w (N,K), b (N,) or NULL -> out (M,N).
void ser_matmul_forward(float *out, const float *inp, const float *w, const float *b, int M, int K,
                        int N);
// dout (M,N). dinp (M,K) (skipped if NULL; acc=0 writes, acc=1 adds), dw (N,K) +=, db (N,) +=
// (skipped if NULL).
void ser_matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int M, int K, int N, int acc);
void ser_matmul_forward_naive(float *out, const float *inp, const float *w, const float *b, int M,
                              int K, int N);
void ser_matmul_backward_naive(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, int M, int K, int N, int acc);

// db (N,) += column sums of x (M,N), each summed pairwise (a cascade, like numpy's and
// PyTorch's reductions though not in their exact order) rather than row after row, so that
// rounding grows like log2(M), not M: the bias and position-embedding gradients sum up to ~50k
// rows that largely cancel (batch norm in Barlow Twins).
// The order, the same for every column and every M: split the rows, in order, into groups of
// 2^k rows by the binary expansion of M (M = 50 = 32 + 16 + 2: rows 0-31, 32-47, 48-49); sum
// each group as a perfect binary tree, (((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))) and
// so on; fold the group sums from the last (smallest) group back to the first, acc = group +
// acc (for 50: s0_31 + (s32_47 + s48_49)); then db[j] += acc. M = 0 leaves db as it is.
// All fp32. Every x[m][j] passes through at most d = floor(log2 M) + 1 additions before the
// db += acc, so |acc - exact| <= gamma_d * sum_m |x[m][j]|, gamma_d = d*u / (1 - d*u),
// u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 4.2); row after row, d
// was M - 1. Parallel over column blocks only, so the bits depend on x and M alone, never on
// the thread count, N or the block a column falls in; no heap (~30 KiB of stack per thread).
void ser_colsum_acc(float *db, const float *x, int M, int N);

// C (M, n) = alpha * op(A) op(B) in fixed blocks of SER_SGEMM_ROWS rows of C, one BLAS call
// per block, the blocks spread over OpenMP threads. OpenBLAS runs single-threaded inside a
// parallel region, and it picks its kernel and K-chunking from the call's shape and the threads
// it may use, so letting it thread one big call changes the summation order with the thread
// count (OpenBLAS 0.3.21: M=848, N=64, K=848 differs between 1 and 3 threads); fixed blocks
// give the same bits for any thread count. Relies on the OpenMP build of OpenBLAS (preferred
// by the top-level CMakeLists.txt). op(A) is A (M, K) with lda, or A^T for A (K, M) with lda
// when trans_a; op(B) likewise with ldb. Used by the NT-Xent and Barlow Twins' cross-correlation.
#define SER_SGEMM_ROWS 128
void ser_sgemm_rows(float *C, int ldc, int trans_a, const float *A, int lda, const float *B, int ldb,
                    int trans_b, int M, int n, int K, float alpha);

// --- layernorm -------------------------------------------------------------------------------
// inp (M,C), w/b (C,) -> out (M,C); mean/rstd (M,) saved for backward (may be NULL in eval).
void ser_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int M, int C, float eps);
// dinp (M,C) (acc=0 writes, acc=1 adds), dw/db (C,) +=.
void ser_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *mean, const float *rstd, int M, int C,
                            int acc);
void ser_layernorm_forward_naive(float *out, float *mean, float *rstd, const float *inp,
                                 const float *w, const float *b, int M, int C, float eps);
void ser_layernorm_backward_naive(float *dinp, float *dw, float *db, const float *dout,
                                  const float *inp, const float *w, const float *mean,
                                  const float *rstd, int M, int C, int acc);

// --- GELU (exact: 0.5 x (1 + erf(x / sqrt 2))) ----------------------------------------------
void ser_gelu_forward(float *out, const float *inp, size_t n);
// dinp = dout * gelu'(inp) (acc=0 writes, acc=1 adds).
void ser_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int acc);
void ser_gelu_forward_naive(float *out, const float *inp, size_t n);
void ser_gelu_backward_naive(float *dinp, const float *inp, const float *dout, size_t n, int acc);

// --- attention -------------------------------------------------------------------------------
// qkv (B,N,3C) packed as PyTorch's reshape(B,N,3,H,hd): q = qkv[..., 0:C], k = [C:2C], v =
// [2C:3C], head h uses columns h*hd..(h+1)*hd of each. out (B,N,C) = concat_h softmax(q k^T *
// hd^-0.5) v. att (B,H,N,N) keeps the probabilities for backward.
void ser_attention_forward(float *out, float *att, const float *qkv, int B, int N, int C, int H);
// dout (B,N,C) -> dqkv (B,N,3C) (written, not accumulated). scratch: see _scratch_floats.
void ser_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                            int B, int N, int C, int H);
void ser_attention_forward_naive(float *out, float *att, const float *qkv, int B, int N, int C,
                                 int H);
void ser_attention_backward_naive(float *dqkv, const float *dout, const float *qkv,
                                  const float *att, int B, int N, int C, int H);

// In-place softmax of each row of x (M,N).
void ser_softmax_rows(float *x, int M, int N);

// --- patch embedding -------------------------------------------------------------------------
// img (B,3,H,W) with H = gh*P, W = gw*P -> cols (B*gh*gw, 3*P*P), column order (c, ky, kx) to
// match a Conv2d weight (D,3,P,P) flattened to (D, 3*P*P); row order (b, row, col).
void ser_patch_im2col(float *cols, const float *img, int B, int H, int W, int P);

// --- elementwise -----------------------------------------------------------------------------
// x (n,) += y (n,).
void ser_add_inplace(float *x, const float *y, size_t n);
// x (M,C): row m *= s[m / rows_per_group]. Used for drop path (one scale per sample).
void ser_scale_rows(float *x, const float *s, int M, int C, int rows_per_group);

#endif
