// ser_knn_monitor.h — the online kNN monitor (solo-learn's online kNN, made exact): every
// eval.knn_every steps (0: once per epoch) and after the last step, the coordinator measures the
// kNN top-1 of the current student backbone's final [CLS] on a fixed, class-balanced labelled
// subset (eval.knn_train train / eval.knn_test test images of eval.knn_data, else the job's
// data). Between steps, on the coordinator's copy of the weights: it reads them only, so the
// training bits are the same with the monitor on or off (tests/test_knn_monitor.c checks it).
//
// The numbers are those of `ser eval knn --train-limit N --test-limit M --seed 0` on the
// checkpoint of that step, at the same thread count: the subsets, the decoding, the forward
// batches and the vote are dataloader/ser_eval_data.h's, shared by both.
//
// The images of both subsets are decoded once at start and kept ((N + M) x img^2 x 3 bytes).
//
// defines: ser_knn_monitor (opaque), ser_knn_monitor_new(), ser_knn_monitor_due(),
//          ser_knn_monitor_run(), ser_knn_monitor_destroy()
#ifndef SER_KNN_MONITOR_H
#define SER_KNN_MONITOR_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_eval.h"
#include "ser_vit.h"

typedef struct ser_knn_monitor ser_knn_monitor;

// The monitor of job cfg for a student of vit config vc, computing with nthr threads, every
// `every` steps (already resolved: > 0). NULL when eval.knn_every = -1 or when there is no
// labelled data (err then says why, for one log line; neither stops the job).
ser_knn_monitor *ser_knn_monitor_new(const ser_config *cfg, const ser_vit_config *vc,
                                     int64_t every, int nthr, char err[SER_ERR_LEN]);
// 1 when the step just completed (0-based) is due a measurement: every `every` steps, and the
// run's last step (last = 1).
int ser_knn_monitor_due(const ser_knn_monitor *m, int64_t step, int last);
// Measures student (eval mode); *secs is the time it took.
int ser_knn_monitor_run(ser_knn_monitor *m, ser_vit *student, ser_eval_acc *out, double *secs,
                        char err[SER_ERR_LEN]);
// Train and test subset sizes (for the log line).
void ser_knn_monitor_sizes(const ser_knn_monitor *m, int *ntrain, int *ntest);
void ser_knn_monitor_destroy(ser_knn_monitor **mp);

#endif
