// ser_loss.h — invariance losses on embeddings of the whole global batch.
//
// defines:
//   ser_l2norm_rows_forward/_backward   F.normalize(x, dim=1, eps=1e-12) and its gradient
//   ser_moco_ctr()                      MoCo-v3 contrastive loss and its query gradient
#ifndef SER_LOSS_H
#define SER_LOSS_H

#include <stddef.h>

// y = x / max(||x||_2, 1e-12) per row of x (M, D); norms (M,) saved for backward.
void ser_l2norm_rows_forward(float *y, float *norms, const float *x, int M, int D);
// dx = d/dx of sum(dy * y) for the saved y and norms; written, or added when acc != 0.
void ser_l2norm_rows_backward(float *dx, const float *dy, const float *y, const float *norms,
                              int M, int D, int acc);

// MoCo-v3 ctr(q, k) (ser-reference.md §2.3): q (M, D) queries, k (M, D) keys of the whole global
// batch (constants: no gradient), both L2-normalised here; logits = q k^T / T; loss =
// mean_j CE(logits_j, label j) * 2T. Returns the loss; when dq is non-NULL adds scale * dL/dq.
double ser_moco_ctr(float *dq, const float *q, const float *k, int M, int D, float T, float scale);

#endif
