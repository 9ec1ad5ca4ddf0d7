// ser_eval_data.h — the labelled data of an evaluation, shared by `ser eval` and the online kNN
// monitor of the coordinator (coordinator/ser_knn_monitor.h), so that both see the same
// images, in the same order, and compute the same features: the monitor's figure at step t
// equals `ser eval knn` on the checkpoint of step t (same subsets, same threads).
//
// Data: the train and test splits of an ImageFolder tree (val/, else test/, is the test split;
// without either, a seeded 20% of train is held out as test, and the log says so), CIFAR-10
// or Fashion-MNIST (gray replicated to RGB by the loader). Every image is resized to the model's img_size x img_size (PIL bilinear,
// antialiased, the whole image: no crop, no augmentation) and normalised with the ImageNet mean
// and std as the workers do. Limits take a seeded, class-balanced subset (ser_eval_subset).
//
// defines:
//   ser_eval_set, ser_eval_data         one split's subset; both splits of a dataset
//   ser_eval_data_open(), ser_eval_data_free()
//   ser_eval_load_u8()                  decode + resize a run of a subset (OpenMP)
//   ser_eval_batch()                    the forward batch for a model (activation budget)
//   ser_eval_cls_features()             final [CLS] of a subset, in forward batches
//   ser_eval_knn_acc()                  kNN top-1/top-5 of [CLS] features (L2-normalised)
#ifndef SER_EVAL_DATA_H
#define SER_EVAL_DATA_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_dl_data.h"
#include "ser_eval.h"
#include "ser_vit.h"

#define SER_EVAL_DEFAULT_FMNIST "/usr/share/datasets/fashion-mnist"

// One split subset: dataset indices and labels.
typedef struct ser_eval_set {
    ser_dl_data *d;
    uint32_t *idx;
    int *y;
    int n;
    uint32_t total;  // size of the split (or of the pool it was drawn from)
} ser_eval_set;

typedef struct ser_eval_data {
    ser_dl_data *dtr, *dte;  // dte may equal dtr (held-out test split)
    ser_eval_set tr, te;
    int ncls;
    char root[4096], kind[32], test_split[16];
} ser_eval_data;

// Opens spec (NULL: the job's data.path/kind; "fashion-mnist[:DIR]", "cifar10:DIR",
// "imagefolder:DIR" or DIR) and draws the subsets (0: the whole split) with seed (train) and
// seed + 1 (test). On failure ed holds nothing to free beyond ser_eval_data_free().
int ser_eval_data_open(ser_eval_data *ed, const char *spec, const ser_config *job, int train_limit,
                       int test_limit, uint64_t seed, char err[SER_ERR_LEN]);
void ser_eval_data_free(ser_eval_data *ed);  // safe on a zeroed struct

// Decodes and resizes images s->idx[i0 .. i0+nb) into u8 (nb, img, img, 3), in parallel over
// nthr OpenMP threads with one TurboJPEG handle each in tj[nthr].
int ser_eval_load_u8(const ser_eval_set *s, int i0, int nb, int img, uint8_t *u8, void **tj,
                     int nthr, char err[SER_ERR_LEN]);

// Forward batch that keeps one forward's saved activations near 1 GiB at the largest grid
// `ser eval` evaluates (the standard group with scales 0.75 and 1.25; at most 256 images).
int ser_eval_batch(const ser_vit_config *vc);

// Final [CLS] (acts->cls) of every image of s into out (s->n, C): batches of B images from
// u8 (NULL: decoded here with tj/nthr) through ser_vit_forward in eval mode. cache, when not
// NULL, holds s's images already decoded ((s->n, img, img, 3)), as the monitor keeps them.
int ser_eval_cls_features(ser_vit *v, ser_vit_acts *acts, const ser_eval_set *s, int B,
                          const uint8_t *cache, void **tj, int nthr, float *out,
                          char err[SER_ERR_LEN]);

// kNN of test features against train features (DINO's weighted vote, temperature T, k
// neighbours; copies are L2-normalised): top-1 and top-5 in percent.
int ser_eval_knn_acc(ser_eval_acc *out, const float *ftr, const int *ytr, int ntr,
                     const float *fte, const int *yte, int nte, int C, int ncls, int k, double T);

#endif
