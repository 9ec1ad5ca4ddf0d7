// ser_ntxent.h — the patch-wise NT-Xent of SER (ser-reference.md §2.8, §10.4), forward and
// backward, over ragged token sets; and its SimCLR-style pair form (below the first).
//
// One direction of the loss. n samples (the equivariant samples of the global batch); sample s
// has T_s tokens (T_s = gh*gw of its view, different per sample when ranks or samples draw
// different grids). Rows are sample-major, then token row-major; N = sum_s T_s.
//   k (N, D)  teacher rows (the teacher map of view a moved onto view b's grid by T_ab)
//   q (N, D)  student rows of view b, in the same order
// Neither is normalised on input. With x^ = x / max(||x||, 1e-12) (F.normalize):
//   S_ij = k^_i . q^_j / tau                        (i: teacher row, j: student row)
//   M_ij = 0 if sample(i) == sample(j) and i != j, else 1
//   L    = (1/N) sum_j [ log sum_i M_ij exp(S_ij) - S_jj ]
// Every student token j is an anchor: its positive is the teacher token of the same image and
// location (i = j), its negatives are all teacher tokens of all other images; other locations
// of the same image are excluded. The log-sum-exp subtracts each column's max, so any |S| is
// stable.
//
// Gradient, with P_ij = M_ij exp(S_ij - lse_j) and A_ji = (P_ij - [i==j]) / N:
//   dq^ = A k^ / tau,  dk^ = A^T q^ / tau,
//   dx  = (dx^ - x^ (x^ . dx^)) / ||x||   when ||x|| >= 1e-12,  dx^ / 1e-12 otherwise
// (the clamp of F.normalize passes no gradient to the norm; a zero row therefore gets a huge
// but finite gradient, exactly as in PyTorch).
//
// Edge case: with one sample every off-diagonal entry is masked, so each anchor's log-sum-exp
// is S_jj itself and L = 0 exactly, with zero gradients, whatever q and k are.
//
// Cost and determinism: S^T = Q^ K^^T is formed with BLAS (N x N floats of workspace: 100 MB at
// N = 5000), the gradients with two more products. Every product runs as fixed blocks of 128
// output rows, one single-threaded cblas_sgemm per block, the blocks spread over OpenMP threads:
// one multi-threaded OpenBLAS call is NOT bitwise stable across thread counts (OpenBLAS 0.3.21
// switches between sgemm_direct and its blocked driver, with different K chunking, by thread
// count; seen at M=848, N=64, K=848). The per-anchor log-sum-exp runs one anchor per thread in
// a fixed order and the loss is summed serially, so the result is bitwise the same for every
// thread count (tests/test_ntxent.c checks 1 vs 3 threads, D = 64 and D = 520).
// Measured on the 2-core dev box: N = 4704 (24 x 196 tokens), D = 512: forward 0.4 s,
// forward + backward 1.0 s.
//
// The pair form (the SER paper's 2+4-view variant erl_local4 means this loss; its public code
// has a bug, this is the intended formula). Same n, T_s, N and row order, and both sides are
// student maps:
//   A (N, D)  the projected student map of one view
//   B (N, D)  the projected student map of the paired view, moved onto A's grid (row r of A and
//             row r of B are the same image and location)
// With X = [A; B] (2N rows), e(r) the image of row r (either half):
//   S_rc = x^_r . x^_c / tau                        (r, c in 0..2N-1)
//   p(r) = r + N if r < N, else r - N               (the positive: the same location, other map)
//   M_rc = 1 if c == p(r) or e(c) != e(r), else 0   (self and every other token of the same
//                                                    image, in either half, are excluded)
//   L    = (1/2N) sum_r [ log sum_c M_rc exp(S_rc) - S_r,p(r) ]
// Every row of A and of B is an anchor; the negatives are all tokens of all other images in
// both maps. The log-sum-exp subtracts each row's max.
//
// Gradient, with P_rc = M_rc exp(S_rc - lse_r) and G_rc = (P_rc - [c == p(r)]) / 2N:
//   dX^ = (G + G^T) X^ / tau,   then dA, dB through the normalisation as above.
//
// Edge case: with one sample every column but the positive is masked, so L = 0 exactly, with
// zero gradients, whatever A and B are.
//
// Cost and determinism as above, at twice the rows: S (2N x 2N floats: 4x the first form's
// workspace at the same N) by one blocked product, G + G^T formed in place, dX^ by one more
// product; bitwise the same for every thread count (tests/test_ntxent.c checks 1 vs 3 threads).
// Measured on the 2-core dev box while a training run shared it: N = 2352 (12 x 196 tokens,
// 2N = 4704), D = 512: forward 0.9 s, forward + backward 1.7 s; the first form at N = 4704 (the
// same S) took 0.8 s and 3.2 s there (0.4 s and 1.0 s on the idle box).
//
// defines:
//   SER_NTXENT_NORM_EPS                       1e-12, F.normalize's eps
//   SER_NTXENT_MAX_TOKENS                     largest N accepted (2N for the pair form)
//   ser_ntxent_forward_backward(&L, dq, dk, q, k, tokens_per_sample, n, D, tau, scale)
//   ser_ntxent_naive(...)                     the brute-force double-precision twin (oracle)
//   ser_ntxent_pair_forward_backward(&L, dA, dB, A, B, tokens_per_sample, n, D, tau, scale)
//   ser_ntxent_pair_naive(...)                its brute-force double-precision twin (oracle)
#ifndef SER_NTXENT_H
#define SER_NTXENT_H

#define SER_NTXENT_NORM_EPS 1e-12
// Largest N = sum_s T_s accepted (the workspace is N*N floats: 16 GiB at this bound); the pair
// form accepts 2N up to it (the same workspace bound).
#define SER_NTXENT_MAX_TOKENS 65536

// *loss = L (unscaled). dq, dk (N, D) each ACCUMULATE (+=) scale * dL/dq, scale * dL/dk when
// not NULL (the caller passes e.g. lambda * 0.5); with both NULL only the forward runs.
// tokens_per_sample (n,) entries >= 0 with N = sum in 1..SER_NTXENT_MAX_TOKENS. Returns SER_OK,
// or SER_EINVAL for n < 1, a negative count, N out of range, D < 1, tau not > 0 or not finite,
// scale not finite, NULL pointers. The workspace (N*N + 3*N*D floats) is allocated per call
// with ser_xmalloc (aborts on out-of-memory).
// A NaN in q or k makes the loss NaN (every row is its own anchor's positive); the gradients
// are then meaningless and the caller's NaN guard must drop the step.
int ser_ntxent_forward_backward(double *loss, float *dq, float *dk, const float *q, const float *k,
                                const int *tokens_per_sample, int n_samples, int D, float tau,
                                float scale);

// The same contract, by the definition: double precision throughout, explicit mask test per
// entry, O(N^2 D) loops. For tests and small N only.
int ser_ntxent_naive(double *loss, float *dq, float *dk, const float *q, const float *k,
                     const int *tokens_per_sample, int n_samples, int D, float tau, float scale);

// The pair form. *loss = L (unscaled). dA, dB (N, D) each ACCUMULATE (+=) scale * dL/dA,
// scale * dL/dB; both NULL runs only the forward, one NULL is refused (both maps are student
// maps). Returns SER_OK, or SER_EINVAL as ser_ntxent_forward_backward, with 2N in place of N
// (2N = 2 sum_s T_s in 2..SER_NTXENT_MAX_TOKENS), and for exactly one of dA, dB NULL. The
// workspace (4N^2 + 4N*D floats) is allocated per call with ser_xmalloc.
// A NaN in A or B makes the loss NaN (row r reaches S_r,p(r)).
int ser_ntxent_pair_forward_backward(double *loss, float *dA, float *dB, const float *A,
                                     const float *B, const int *tokens_per_sample, int n_samples,
                                     int D, float tau, float scale);

// The same contract, by the definition: double precision, explicit mask test per entry.
int ser_ntxent_pair_naive(double *loss, float *dA, float *dB, const float *A, const float *B,
                          const int *tokens_per_sample, int n_samples, int D, float tau,
                          float scale);

#endif
