// ser_moco_addon.h — add-ons on MoCo-v3: a head and a loss next to the contrastive objective,
// the paper's invariance + equivariance baselines (E-SSL's rotation prediction, AugSelf's
// augmentation-difference predictors, EquiMod's transformation-conditioned predictor, STL's
// hypernetwork of transformation embeddings).
//
// An add-on is a method of its own (method.name = its name; its config section beside [moco],
// which it also reads). ser_moco registers the add-on's tensors after the predictor (names as in
// the reference's modules), runs the contrastive and SER terms, then the add-on's loss, which
// adds its gradient to the gathered rows (dqcls, dlcls) and to its own tensors. Its weighted
// loss is part of the step's total and its own values go to metrics.jsonl as monitors.
//
// Layer decoupling (moco.addon_layer = model.cls_layer): ser_moco hands the add-on a
// ser_gathered whose qcls / lcls rows are the pooled block-k maps (ser_gathered.qpool) and whose
// dqcls / dlcls are their gradients (dqpool), so every add-on reads either without a change.
//
// Adding an add-on: one file in this folder defining its `const ser_moco_addon_i`, one row in
// ser_moco.c's s_addons and one SER_MOCO_OBJECTIVE(name, vp) line there (vp = 1 for an add-on
// that reads ser_gathered.vparams), one row in ser_objective.c's
// s_table, and its config section in io/ser_config.c.
//
// defines:
//   ser_moco_addon_i   the table of an add-on
//   ser_moco_addon_essl, ser_moco_addon_augself
//   ser_moco_addon_equimod, ser_equimod_standardise(), ser_equimod_loss_keys()
//   ser_moco_addon_stl, ser_stl_loss_keys()
#ifndef SER_MOCO_ADDON_H
#define SER_MOCO_ADDON_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_engine.h"
#include "ser_ptab.h"

struct ser_config;

typedef struct ser_moco_addon_i {
    int method;         // SER_CONFIG_METHOD_* it is selected by
    size_t state_size;  // bytes of its state (zeroed before build)
    int local_queries;  // 1: the local views are also MoCo queries; 0: only the add-on reads them
    // Registers its tensors into tab (trainable) and btab (buffers) from the job; C is the ViT
    // width. SER_ECONFIG with the key named when the job does not fit.
    int (*build)(void *st, const struct ser_config *job, int C, ser_ptab *tab, ser_ptab *btab,
                 char err[SER_ERR_LEN]);
    void (*bind)(void *st, float *params, float *grads, float *buffers);
    void (*init_weights)(void *st, uint64_t seed);
    // Its term on the gathered batch: *loss = weight x its loss (the part of the step's total);
    // its gradient is ADDED to g->dqcls / g->dlcls, its tensors' gradients accumulate.
    int (*loss)(void *st, const ser_batch *b, ser_gathered *g, double *loss,
                char err[SER_ERR_LEN]);
    // Its monitors of the last loss call (SER_OBJECTIVE_MAX_MONITORS at most).
    int (*monitors)(void *st, const char **names, double *values);
    void (*free)(void *st);
    // Floats of its tensors (f[0]) and of its activations (f[2]) for the memory estimate.
    void (*memory)(const struct ser_config *cfg, double C, double B, double f[3]);
} ser_moco_addon_i;

// E-SSL (common/objectives/ser_essl.c).
extern const ser_moco_addon_i ser_moco_addon_essl;
// AugSelf (common/objectives/ser_augself.c).
extern const ser_moco_addon_i ser_moco_addon_augself;

// EquiMod (common/objectives/ser_equimod.c).
extern const ser_moco_addon_i ser_moco_addon_equimod;
// The 18 floats of EquiMod's transformation vector (SER_VIEW_PARAMS 0-17).
#define SER_EQUIMOD_DIMS 18
// out (18,): the standardised vector of one view's parameters vp (SER_VIEW_PARAMS): the fixed
// map documented in ser_equimod.c (not the reference's p_mean / p_std).
void ser_equimod_standardise(float *out, const float *vp);
// The add-on's loss with the contrastive keys given: keys[0] (2B, proj_dim) stands for the
// predictions in ctr(y_t, .) and keys[1] for the projections in ctr(ŷ_t, .). Their gradient is
// the add-on's (its keys are constants), so finite differences of this function with the keys
// of the point held fixed check it. keys NULL: the call's own rows (the add-on's loss); keys_out
// non-NULL: the call's own rows are copied there (2B x proj_dim each).
int ser_equimod_loss_keys(void *st, const ser_batch *b, ser_gathered *g,
                          const float *const keys[2], float *const keys_out[2], double *loss,
                          char err[SER_ERR_LEN]);

// STL (common/objectives/ser_stl.c).
extern const ser_moco_addon_i ser_moco_addon_stl;
// The add-on's loss with the contrastive keys given: keys[0] (2B, proj_dim) for ctr(z, .),
// keys[1] (2B, proj_dim) for ctr(ẑ, .), keys[2] (B, trans_dim) for ctr(tp(y_trans1), .),
// keys[3] (B, trans_dim) for ctr(tp(y_trans2), .). keys NULL: the call's own rows (the add-on's
// loss); keys_out non-NULL: the call's own rows are copied there. An odd batch is SER_EINVAL.
int ser_stl_loss_keys(void *st, const ser_batch *b, ser_gathered *g, const float *const keys[4],
                      float *const keys_out[4], double *loss, char err[SER_ERR_LEN]);

#endif
