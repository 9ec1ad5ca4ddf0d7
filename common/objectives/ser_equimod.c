// ser_equimod.c — EquiMod on MoCo-v3 (Devillers & Lefort; the paper's `equimod` baseline,
// ser-reference.md §5: train_equimod / MoCo.equimod / loader/equimod.py): loss = loss_inv +
// lambda_ser * loss_ser + equimod.lambda * loss_equiv, where
//   y_t  = cat[proj(CLS x_1), proj(CLS x_2)]            (2B rows; one projector call per view)
//   y_0  = proj(CLS x_0), duplicated to 2B rows         (x_0: local view 0, data.local_mode =
//                                                        center, the unaugmented centre crop)
//   p    = proj_head_t(std(v(x_1)); std(v(x_2)))         (2B rows of the 18-dim vectors)
//   ŷ_t  = predictor_eq(cat[y_0, p])
//   loss_equiv = 1/2 [ctr_tau(y_t, ŷ_t) + ctr_tau(ŷ_t, y_t)]
// with ctr_tau MoCo-v3's contrastive loss at tau = equimod.temperature (x 2 tau) whose second
// argument is a constant (the reference's all-gathered keys). Like the reference, each projector
// call has its own BatchNorm batch: x_1's B rows, x_2's B rows, x_0's B rows, in that order
// (its running statistics are updated three times per step); proj_head_t and predictor_eq see
// the 2B rows. The local view x_0 is not a MoCo query.
//
// Modules (PyTorch defaults: Linear U(+-1/sqrt(fan_in)), BN (1, 0)):
//   projector_equimod.  Linear C-H nb, BN, ReLU, Linear H-H nb, BN, ReLU, Linear H-D nb,
//                       BN(D, affine=False); the reference's `projector_equiv`, renamed since
//                       ser's SER projector has that name (and SER may be on at the same time)
//   proj_head_t.        Linear 18-D nb, BN(D)
//   predictor_eq.       Linear 2D-D nb, BN(D, affine=False)
// with H = equimod.hidden (0: the ViT width C) and D = equimod.proj_dim.
//
// The standardisation of the 18-dim vector (ser_equimod_standardise) is a fixed map, not the
// reference's p_mean / p_std (equimod.py:38-46, measured on its ImageNet loader at 224 px: the
// crop box there is in source pixels of ImageNet images, which does not carry to other data):
//   0-3    crop box i/H, j/W, h/H, w/W (fractions of the source image, in [0, 1])
//   4, 5   flip, jitter applied (0/1)
//   6-9    colour-jitter op order / 3 (in [0, 1]); 0, 1/3, 2/3, 1 when jitter was not applied
//   10-13  (b - 1) / 0.4, (c - 1) / 0.4, (s - 1) / 0.2, hue / 0.1: each factor's deviation over
//          MoCo-v3's range (in [-1, 1] at data.jitter = 1); 0 when jitter was not applied
//   14, 15 gray, blur applied (0/1)
//   16     sigma / 2 when blur was applied, else 0
//   17     solarize applied (0/1)
// The not-applied values are the reference's (loader/equimod.py writes order 0..3, factors
// 1, 1, 1, 0 and sigma 0 for an op it skipped; ser's loader records the draws as drawn). Any
// constant shift of a component is removed by proj_head_t's BatchNorm (a Linear without bias,
// then batch statistics), so only the scales matter: each puts its component in about [-1, 1].
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "ser_config.h"
#include "ser_loss.h"
#include "ser_mlp.h"
#include "ser_moco_addon.h"

typedef struct s_equimod {
    ser_mlp proj, embed, pred;
    double lambda;
    float tau;
    int D;
    double loss, acc;  // of the last loss call
} s_equimod;

void ser_equimod_standardise(float *out, const float *vp) {
    int jit = vp[5] != 0.0f, blur = vp[15] != 0.0f;
    float H = vp[18] > 0 ? vp[18] : 1, W = vp[19] > 0 ? vp[19] : 1;
    out[0] = vp[0] / H, out[1] = vp[1] / W, out[2] = vp[2] / H, out[3] = vp[3] / W;
    out[4] = vp[4], out[5] = vp[5];
    for (int k = 0; k < 4; k++) out[6 + k] = (jit ? vp[6 + k] : (float)k) / 3.0f;
    out[10] = jit ? (vp[10] - 1.0f) / 0.4f : 0.0f;
    out[11] = jit ? (vp[11] - 1.0f) / 0.4f : 0.0f;
    out[12] = jit ? (vp[12] - 1.0f) / 0.2f : 0.0f;
    out[13] = jit ? vp[13] / 0.1f : 0.0f;
    out[14] = vp[14], out[15] = vp[15];
    out[16] = blur ? vp[16] / 2.0f : 0.0f;
    out[17] = vp[17];
}

static int s_build(void *st, const ser_config *job, int C, ser_ptab *tab, ser_ptab *btab,
                   char err[SER_ERR_LEN]) {
    s_equimod *e = st;
    int H = job->equimod.hidden ? job->equimod.hidden : C, D = job->equimod.proj_dim, rc;
    e->lambda = job->equimod.lambda, e->tau = (float)job->equimod.temperature, e->D = D;
    if (job->data.local_crops != 1 || job->data.local_mode != SER_CONFIG_LOCAL_CENTER)
        return ser_errf(err, SER_ECONFIG,
                        "equimod: needs data.local_crops = 1 and data.local_mode = center (the "
                        "centre view x_0), not %d local views in mode %d",
                        job->data.local_crops, job->data.local_mode);
    ser_mlp_layer_spec ps[3], es = {SER_EQUIMOD_DIMS, D, 0, SER_BN_AFFINE, SER_ACT_NONE, 0},
                              qs = {2 * D, D, 0, SER_BN_PLAIN, SER_ACT_NONE, 0};
    int n = ser_mlp_moco_spec(ps, 3, C, H, D, 1);
    if ((rc = ser_mlp_register(&e->proj, ps, n, tab, btab, "projector_equimod.", err)) ||
        (rc = ser_mlp_register(&e->embed, &es, 1, tab, btab, "proj_head_t.", err)))
        return rc;
    return ser_mlp_register(&e->pred, &qs, 1, tab, btab, "predictor_eq.", err);
}

static void s_bind(void *st, float *params, float *grads, float *buffers) {
    s_equimod *e = st;
    ser_mlp_bind(&e->proj, params, grads, buffers);
    ser_mlp_bind(&e->embed, params, grads, buffers);
    ser_mlp_bind(&e->pred, params, grads, buffers);
}

static void s_init_weights(void *st, uint64_t seed) {
    s_equimod *e = st;
    ser_mlp_init_weights(&e->proj, seed);
    ser_mlp_init_weights(&e->embed, seed + 1);
    ser_mlp_init_weights(&e->pred, seed + 2);
}

// Top-1 of the prediction -> view matching: the share of rows r of yh whose most similar row of
// y (cosine) is row r. One GEMM of the normalised rows (the coordinator computes it per step).
static double s_top1(const float *yh, const float *y, int R, int D) {
    size_t RD = (size_t)R * D;
    float *a = ser_xaligned(sizeof(float) * RD), *b = ser_xaligned(sizeof(float) * RD);
    float *na = ser_xmalloc(sizeof(float) * (size_t)R);
    float *nb = ser_xmalloc(sizeof(float) * (size_t)R);
    float *S = ser_xaligned(sizeof(float) * (size_t)R * R);
    ser_l2norm_rows_forward(a, na, yh, R, D);
    ser_l2norm_rows_forward(b, nb, y, R, D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, R, D, 1.0f, a, D, b, D, 0.0f, S, R);
    int right = 0;
    for (int r = 0; r < R; r++) {
        const float *row = S + (size_t)r * R;
        int best = 0;
        for (int j = 1; j < R; j++)
            if (row[j] > row[best]) best = j;
        right += best == r;
    }
    free(a), free(b), free(na), free(nb), free(S);
    return (double)right / R;
}

int ser_equimod_loss_keys(void *st, const ser_batch *b, ser_gathered *g,
                          const float *const keys[2], float *const keys_out[2], double *loss,
                          char err[SER_ERR_LEN]) {
    (void)b;
    s_equimod *e = st;
    if (!g->vparams)
        return ser_errf(err, SER_EINVAL,
                        "equimod: the batch has no view parameters (vparams (B, 2, %d): the "
                        "global views' transformation vectors)", SER_VIEW_PARAMS);
    SER_ASSERT(g->n_local == 1);  // the config's rule
    int B = g->B, C = g->C, D = e->D, R = 2 * B;
    size_t BD = (size_t)B * D, RD = (size_t)R * D;
    ser_mlp_acts pa[3], ea, qa;
    memset(pa, 0, sizeof pa), memset(&ea, 0, sizeof ea), memset(&qa, 0, sizeof qa);
    float *yt = ser_xaligned(sizeof(float) * RD), *y0 = ser_xaligned(sizeof(float) * BD);
    float *P = ser_xaligned(sizeof(float) * (size_t)R * SER_EQUIMOD_DIMS);
    float *in = ser_xaligned(sizeof(float) * RD * 2), *yh = ser_xaligned(sizeof(float) * RD);
    float *dyt = ser_xaligned(sizeof(float) * RD), *dyh = ser_xaligned(sizeof(float) * RD);
    float *din = ser_xaligned(sizeof(float) * RD * 2), *dy = ser_xaligned(sizeof(float) * BD);
    float *dx = ser_xaligned(sizeof(float) * (size_t)B * C);
    // The projector on x_1, x_2, then x_0 (the reference's order: its BN buffers see it).
    for (int v = 0; v < 2; v++)
        memcpy(yt + v * BD, ser_mlp_forward(&e->proj, &pa[v], g->qcls[v], B, 1),
               sizeof(float) * BD);
    memcpy(y0, ser_mlp_forward(&e->proj, &pa[2], g->lcls[0], B, 1), sizeof(float) * BD);
    for (int v = 0; v < 2; v++)  // rows [0, B): x_1's vectors; [B, 2B): x_2's
        for (int i = 0; i < B; i++)
            ser_equimod_standardise(P + ((size_t)v * B + i) * SER_EQUIMOD_DIMS,
                                    g->vparams + ((size_t)i * 2 + v) * SER_VIEW_PARAMS);
    const float *p = ser_mlp_forward(&e->embed, &ea, P, R, 1);
    for (int r = 0; r < R; r++) {
        memcpy(in + (size_t)r * 2 * D, y0 + (size_t)(r % B) * D, sizeof(float) * D);
        memcpy(in + (size_t)r * 2 * D + D, p + (size_t)r * D, sizeof(float) * D);
    }
    memcpy(yh, ser_mlp_forward(&e->pred, &qa, in, R, 1), sizeof(float) * RD);
    if (keys_out) {
        memcpy(keys_out[0], yh, sizeof(float) * RD);
        memcpy(keys_out[1], yt, sizeof(float) * RD);
    }
    memset(dyt, 0, sizeof(float) * RD), memset(dyh, 0, sizeof(float) * RD);
    float scale = (float)(0.5 * e->lambda);
    double l = ser_moco_ctr(dyt, yt, keys ? keys[0] : yh, R, D, e->tau, scale) +
               ser_moco_ctr(dyh, yh, keys ? keys[1] : yt, R, D, e->tau, scale);
    ser_mlp_backward(&e->pred, &qa, din, dyh);
    float *dp = yh;  // yh is no longer needed after the monitor below: reuse it for dL/dp
    e->acc = s_top1(yh, yt, R, D);
    memset(dy, 0, sizeof(float) * BD);
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) {
            dy[(size_t)(r % B) * D + d] += din[(size_t)r * 2 * D + d];
            dp[(size_t)r * D + d] = din[(size_t)r * 2 * D + D + d];
        }
    ser_mlp_backward(&e->embed, &ea, NULL, dp);
    float *dst[3] = {g->dqcls[0], g->dqcls[1], g->dlcls[0]};
    const float *src[3] = {dyt, dyt + BD, dy};
    for (int v = 0; v < 3; v++) {  // the reference's backward order does not matter (float64)
        ser_mlp_backward(&e->proj, &pa[v], dx, src[v]);
        for (size_t i = 0; i < (size_t)B * C; i++) dst[v][i] += dx[i];
    }
    for (int v = 0; v < 3; v++) ser_mlp_acts_free(&pa[v]);
    ser_mlp_acts_free(&ea), ser_mlp_acts_free(&qa);
    free(yt), free(y0), free(P), free(in), free(yh), free(dyt), free(dyh), free(din), free(dy);
    free(dx);
    e->loss = 0.5 * l;
    *loss = e->lambda * e->loss;
    return SER_OK;
}

static int s_loss(void *st, const ser_batch *b, ser_gathered *g, double *loss,
                  char err[SER_ERR_LEN]) {
    return ser_equimod_loss_keys(st, b, g, NULL, NULL, loss, err);
}

static int s_monitors(void *st, const char **names, double *values) {
    const s_equimod *e = st;
    names[0] = "equimod_loss", values[0] = e->loss;
    names[1] = "equimod_top1", values[1] = e->acc;
    return 2;
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3]) {
    double H = cfg->equimod.hidden ? cfg->equimod.hidden : C, D = cfg->equimod.proj_dim;
    f[0] += C * H + H * H + H * D + SER_EQUIMOD_DIMS * D + 2 * D * D;
    // three projector calls of B rows, then 2B rows of embedding, predictor input and output,
    // with their gradients
    f[2] += 3 * B * 2 * (2 * H + D) + 2 * B * 2 * (SER_EQUIMOD_DIMS + 5 * D);
}

const ser_moco_addon_i ser_moco_addon_equimod = {
    .method = SER_CONFIG_METHOD_EQUIMOD,
    .state_size = sizeof(s_equimod),
    .local_queries = 0,
    .build = s_build,
    .bind = s_bind,
    .init_weights = s_init_weights,
    .loss = s_loss,
    .monitors = s_monitors,
    .memory = s_memory,
};
