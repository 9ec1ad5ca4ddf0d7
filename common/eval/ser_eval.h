// ser_eval.h — the mathematics of `ser eval`, on feature matrices, with no data or model
// behind it (so that tests can feed it known answers): the DINO kNN classifier, top-1/top-5
// accuracy, a linear softmax classifier trained with SGD (the linear-eval protocol of
// ser-reference.md §7, on precomputed frozen features), model selection of its learning rate
// on a held-out split, feature standardisation, cosine consistency and the equivariance error
// of a token map under the group action of ser_group.h.
//
// Features are row-major float matrices (n, d); labels are ints in 0..C-1. Accuracies are in
// percent. Every function is deterministic for a given seed (shuffles come from Philox streams
// with purpose SER_EVAL_RNG) and, except where BLAS is used (kNN similarities, classifier
// products), independent of the thread count.
//
// --- kNN (DINO eval_knn.py) ------------------------------------------------------------------
// Train and test features are L2-normalised; for each test row the k train rows of highest
// cosine similarity s_i vote for their labels with weight exp(s_i / T); the class scores are
// the summed votes. Ties: among equal similarities the lower train index wins a neighbour
// slot; among equal class scores the lower class index ranks first (top-k ranks).
//
// --- linear classifier ------------------------------------------------------------------------
// logits = x W^T + b, W (C, d) ~ N(0, init_std^2), b = 0; mean softmax cross-entropy; SGD with
// PyTorch's momentum (buf = m*buf + g + wd*w; w -= lr*buf); the learning rate follows
// CosineAnnealingLR(T_max = epochs, eta_min = 0) stepped once per epoch (epoch e uses
// lr * (1 + cos(pi e / epochs)) / 2); each epoch visits the training rows in a fresh seeded
// permutation in mini-batches (the last one smaller).
//
// --- equivariance ------------------------------------------------------------------------------
// For a token map Phi(x) on the base grid (gh0, gw0) and the map Phi(g.x) of the transformed
// image (on g's view grid), the error is ||rho(g) Phi(x) - Phi(g.x)||_F / ||Phi(x)||_F with
// rho(g) = ser_group_rel_action from the identity element on the base grid to g: the same
// analytic action the SER loss applies (token permutations; bicubic grid resampling).
//
// defines:
//   SER_EVAL_RNG, ser_eval_acc
//   ser_eval_l2_normalize(), ser_eval_cosine(), ser_eval_standardize(), _apply()
//   ser_eval_rank(), ser_eval_topk()                        ranks and top-1/top-5 accuracy
//   ser_eval_knn_scores(), ser_eval_knn_scores_naive()      the weighted kNN vote
//   ser_eval_linear_opts(+_default), ser_eval_linear (+_init, _free, _scores, _loss, _train)
//   ser_eval_select, ser_eval_linear_select()               lr grid on a held-out split
//   ser_eval_val_mask()                                     a seeded held-out split
//   ser_eval_subset()                                       a class-balanced seeded subset
//   ser_eval_std_group(), ser_eval_identity(), SER_EVAL_MAX_GROUP   the evaluated elements
//   ser_eval_equiv_error()                                  one map's relative error
#ifndef SER_EVAL_H
#define SER_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_group.h"

// Purpose word of the Philox streams of the evaluation (after the SER_RNG_* purposes).
#define SER_EVAL_RNG 32

typedef struct ser_eval_acc {
    double top1, top5;  // percent
    int n;              // samples scored
} ser_eval_acc;

// --- features ------------------------------------------------------------------------------
// Each row of x (n, d) divided by max(||row||, 1e-12) (torch F.normalize).
void ser_eval_l2_normalize(float *x, int n, int d);
// Cosine similarity of two d-vectors (0 if either is zero).
double ser_eval_cosine(const float *a, const float *b, int d);
// Per-column mean and standard deviation of x (n, d) (population std, floored at 1e-6) into
// mean (d,) and std (d,), and x standardised in place.
void ser_eval_standardize(float *x, int n, int d, float *mean, float *std);
// y (n, d) standardised in place with a given mean and std.
void ser_eval_standardize_apply(float *y, int n, int d, const float *mean, const float *std);

// --- metrics -------------------------------------------------------------------------------
// 0-based rank of class y among the C scores s: the classes with a higher score, plus the
// classes of lower index with an equal score.
int ser_eval_rank(const float *s, int C, int y);
// Top-1 and top-5 accuracy of scores (n, C) against labels y (n,). With C < 5, top-5 is top-C.
ser_eval_acc ser_eval_topk(const float *scores, const int *y, int n, int C);

// --- kNN -------------------------------------------------------------------------------------
// scores (nte, C): the summed weights exp(sim / T) of the k nearest (by dot product) train
// rows of each test row. train (ntr, d) and test (nte, d) are expected L2-normalised (the dot
// product is then the cosine similarity); ytrain (ntr,) in 0..C-1. k is clamped to ntr.
// Similarities are computed with sgemm in blocks of test rows; rows run in parallel (OpenMP).
// Returns SER_OK or SER_EINVAL (bad sizes or labels).
int ser_eval_knn_scores(float *scores, const float *train, const int *ytrain, int ntr,
                        const float *test, int nte, int d, int C, int k, float T);
// The same with double-precision dot products and a full sort per row (the test oracle).
int ser_eval_knn_scores_naive(float *scores, const float *train, const int *ytrain, int ntr,
                              const float *test, int nte, int d, int C, int k, float T);

// --- linear classifier -------------------------------------------------------------------------
typedef struct ser_eval_linear_opts {
    int epochs;           // 100
    int batch;            // 256
    double lr;            // base learning rate (cosine-annealed over the epochs)
    double momentum;      // 0.9
    double weight_decay;  // 0
    double init_std;      // 0.01
    uint64_t seed;        // initialisation and shuffling
} ser_eval_linear_opts;

void ser_eval_linear_opts_default(ser_eval_linear_opts *o);

typedef struct ser_eval_linear {
    int d, C;
    float *w;  // (C, d)
    float *b;  // (C,)
} ser_eval_linear;

// Allocates and initialises W ~ N(0, init_std^2) from (seed, SER_EVAL_RNG), b = 0.
void ser_eval_linear_init(ser_eval_linear *m, int d, int C, double init_std, uint64_t seed);
void ser_eval_linear_free(ser_eval_linear *m);
// scores (n, C) = x W^T + b.
void ser_eval_linear_scores(const ser_eval_linear *m, float *scores, const float *x, int n);
// Mean softmax cross-entropy over the n rows of x (n, d).
double ser_eval_linear_loss(const ser_eval_linear *m, const float *x, const int *y, int n);
// Trains m (already initialised) on the rows rows[0..n) of x (all rows 0..n-1 when rows is
// NULL). epoch_loss (epochs,) receives the mean training loss of each epoch (may be NULL).
// Returns SER_OK, SER_EINVAL (bad sizes or labels) or SER_ENONFINITE (the loss diverged: a
// learning rate too high; m then holds non-finite weights).
int ser_eval_linear_train(ser_eval_linear *m, const float *x, const int *y, const uint32_t *rows,
                          int n, const ser_eval_linear_opts *o, double *epoch_loss);

// --- model selection -----------------------------------------------------------------------------
#define SER_EVAL_MAX_LRS 16

typedef struct ser_eval_select {
    int nlr, best;                    // grid size; index of the picked lr
    double lr[SER_EVAL_MAX_LRS];      // the grid
    double val_top1[SER_EVAL_MAX_LRS];  // held-out top-1 of each (-1: diverged)
    ser_eval_acc val;                 // held-out accuracy of the picked lr
    int n_train, n_val;
    double final_loss;                // last-epoch training loss of the retrained classifier
} ser_eval_select;

// is_val (n,) gets 1 for a seeded ~frac share of the rows (at least 1 when n >= 2 and at most
// n - 1), 0 for the others. group (n,) optional: rows with the same group value go to the same
// side (the transformed copies of one image), the split drawn over groups 0..n_groups-1.
void ser_eval_val_mask(uint8_t *is_val, int n, double frac, uint64_t seed, const int *group,
                       int n_groups);
// Trains one classifier per learning rate on the rows with is_val == 0, scores each on the
// rows with is_val == 1, picks the best held-out top-1 (the first on ties), then retrains *out
// on ALL n rows with that lr (o->lr is ignored). out is initialised here; free with
// ser_eval_linear_free. Returns SER_OK, SER_EINVAL, or SER_ENONFINITE if every lr diverged.
int ser_eval_linear_select(ser_eval_linear *out, ser_eval_select *sel, const float *x,
                           const int *y, int n, int d, int C, const uint8_t *is_val,
                           const double *lrs, int nlr, const ser_eval_linear_opts *o,
                           char err[SER_ERR_LEN]);

// --- subsets ---------------------------------------------------------------------------------
// Chooses min(limit, n) of the n samples (labels y, classes 0..C-1; limit <= 0: all) into
// out (sorted ascending); returns the count. The samples are visited in a seeded permutation;
// a first pass takes up to ceil(limit / C) per class, a second fills the rest in permutation
// order, so the subset is balanced when the classes allow it.
int ser_eval_subset(uint32_t *out, const int *y, int n, int C, int limit, uint64_t seed);

// --- equivariance --------------------------------------------------------------------------------
#define SER_EVAL_MAX_GROUP 8

// The evaluated elements on the base grid g0 (square): rot90, rot180, rot270, hflip, and the
// rescalings to round_half_even(g0 * s) for s in scales (nscales <= 2; grids clamped to >= 1).
// names receive "rot90", ..., "scale0.75". Returns the number of elements.
int ser_eval_std_group(ser_group_elem *g, char names[][24], int g0, const double *scales,
                       int nscales);
// The identity element on the grid (gh0, gw0).
ser_group_elem ser_eval_identity(int gh0, int gw0);
// ||rho(g) phi_x - phi_gx|| / ||phi_x|| for phi_x (gh0, gw0, C) and phi_gx on g's view grid
// (ser_group_view_grid). scratch holds rows*cols*C floats of the view grid. Returns the error
// (0 when phi_x is zero and the maps agree), or a negative value for a bad element.
double ser_eval_equiv_error(const float *phi_x, int gh0, int gw0, const float *phi_gx, int C,
                            const ser_group_elem *g, float *scratch);

#endif
