// ser_augself.c — AugSelf on MoCo-v3 (Lee et al. 2021; the paper's `augself` baseline, the
// reference's augself branch, ser-reference §5): predictors of the difference between the two
// global views' augmentation parameters from their final [CLS] rows.
//
// Targets, from the views' parameters (ser_gathered.vparams; the loader records them, a batch
// file carries them as `vparams`), with the crop box normalised by the source size
// [i/H, j/W, h/H, w/W]:
//   crop  d(1,2) = [centre1 - centre2 (row, column), h1 - h2, w1 - w2], centre = (i + h/2,
//         j + w/2), its column mirrored (1 - c) when that view was flipped. augself.mirror_typo
//         mirrors view 2's centre with view 1's flip instead (the augself branch's utils:1246-1247,
//         likely a typo). The centres are computed once per pair, so d(2,1) = -d(1,2) either way.
//   color d(1,2) = w1 - w2, w = ((b-1)/0.8, (c-1)/0.8, (s-1)/0.8, hue/0.2) of the drawn factors,
//         0 when the jitter was not applied. The divisors are the reference's (its 0.4 ranges)
//         also when data.jitter scales ser's ranges.
// Predictor per task (the reference's load_mlp_augself): Linear 2C-H no bias, BN, ReLU, Linear
// H-H no bias, BN, ReLU, Linear H-4 with bias; PyTorch's default init; named
// augself_predictor.crop.<Sequential index> / augself_predictor.color.<index> (an nn.ModuleDict).
// A task of weight 0 has no predictor.
// Loss (symmetric, one BatchNorm batch of 2B rows): inputs [z1||z2 ; z2||z1] with z the final
// [CLS] rows, targets [d(1,2) ; d(2,1)], sum over tasks of weight x MSE(tanh(pred), target)
// (mean over elements); the step's loss = loss_inv + lambda_ser * loss_ser + that (no extra
// lambda). The MSEs are the monitors augself_crop_mse / augself_color_mse.
// Local views, when the job has them, stay MoCo queries; the predictors read the globals only.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_config.h"
#include "ser_mlp.h"
#include "ser_moco_addon.h"

enum { S_CROP = 0, S_COLOR, S_TASKS };
static const char *const s_prefix[S_TASKS] = {"augself_predictor.crop.",
                                              "augself_predictor.color."};
static const char *const s_monitor[S_TASKS] = {"augself_crop_mse", "augself_color_mse"};

typedef struct s_augself {
    ser_mlp pred[S_TASKS];
    double weight[S_TASKS];
    int mirror_typo;
    double mse[S_TASKS];  // of the last loss call
} s_augself;

static int s_build(void *st, const ser_config *job, int C, ser_ptab *tab, ser_ptab *btab,
                   char err[SER_ERR_LEN]) {
    s_augself *a = st;
    int H = job->augself.hidden, rc;
    a->weight[S_CROP] = job->augself.crop, a->weight[S_COLOR] = job->augself.color;
    a->mirror_typo = job->augself.mirror_typo;
    if (!(a->weight[S_CROP] > 0) && !(a->weight[S_COLOR] > 0))
        return ser_errf(err, SER_ECONFIG, "augself: augself.crop and augself.color are both 0, "
                                          "nothing to predict (method.name = moco is that)");
    ser_mlp_layer_spec ps[3] = {{2 * C, H, 0, SER_BN_AFFINE, SER_ACT_RELU, 0},
                                {H, H, 0, SER_BN_AFFINE, SER_ACT_RELU, 0},
                                {H, 4, 1, SER_BN_NONE, SER_ACT_NONE, 0}};
    for (int t = 0; t < S_TASKS; t++)
        if (a->weight[t] > 0 && (rc = ser_mlp_register(&a->pred[t], ps, 3, tab, btab, s_prefix[t],
                                                       err)))
            return rc;
    return SER_OK;
}

static void s_bind(void *st, float *params, float *grads, float *buffers) {
    s_augself *a = st;
    for (int t = 0; t < S_TASKS; t++)
        if (a->weight[t] > 0) ser_mlp_bind(&a->pred[t], params, grads, buffers);
}

static void s_init_weights(void *st, uint64_t seed) {
    s_augself *a = st;
    for (int t = 0; t < S_TASKS; t++)
        if (a->weight[t] > 0) ser_mlp_init_weights(&a->pred[t], seed + 0x100 * (uint64_t)t);
}

// The targets d(1,2) of sample n into rows n (and -d into rows B + n) of T[task] (2B, 4), in
// double from the views' parameters; a view with a bad source size is an error naming it.
static int s_targets(const s_augself *a, const float *vparams, int B, float *T[S_TASKS],
                     char err[SER_ERR_LEN]) {
    for (int n = 0; n < B; n++) {
        double box[2][4], col[2][4];
        for (int v = 0; v < 2; v++) {
            const float *pf = vparams + ((size_t)n * 2 + v) * SER_VIEW_PARAMS;
            double p[SER_VIEW_PARAMS];
            for (int k = 0; k < SER_VIEW_PARAMS; k++) p[k] = pf[k];
            double Hs = p[18], Ws = p[19];
            if (!(Hs >= 1 && Ws >= 1))
                return ser_errf(err, SER_EINVAL, "augself: vparams of sample %d view %d: source "
                                "size %g x %g (floats 18-19) must be at least 1", n, v, Hs, Ws);
            double h = p[2] / Hs, w = p[3] / Ws;
            box[v][0] = p[0] / Hs + 0.5 * h, box[v][1] = p[1] / Ws + 0.5 * w;
            box[v][2] = h, box[v][3] = w;
            int jit = p[5] != 0.0;
            col[v][0] = jit ? (p[10] - 1.0) / 0.8 : 0.0;
            col[v][1] = jit ? (p[11] - 1.0) / 0.8 : 0.0;
            col[v][2] = jit ? (p[12] - 1.0) / 0.8 : 0.0;
            col[v][3] = jit ? p[13] / 0.2 : 0.0;
        }
        const float *p0 = vparams + (size_t)n * 2 * SER_VIEW_PARAMS;
        int flip0 = p0[4] != 0.0f, flip1 = p0[SER_VIEW_PARAMS + 4] != 0.0f;
        if (flip0) box[0][1] = 1.0 - box[0][1];
        if (a->mirror_typo ? flip0 : flip1) box[1][1] = 1.0 - box[1][1];
        for (int k = 0; k < 4; k++) {
            double dc = box[0][k] - box[1][k], dw = col[0][k] - col[1][k];
            T[S_CROP][(size_t)n * 4 + k] = (float)dc, T[S_CROP][(size_t)(B + n) * 4 + k] = (float)-dc;
            T[S_COLOR][(size_t)n * 4 + k] = (float)dw;
            T[S_COLOR][(size_t)(B + n) * 4 + k] = (float)-dw;
        }
    }
    return SER_OK;
}

static int s_loss(void *st, const ser_batch *b, ser_gathered *g, double *loss,
                  char err[SER_ERR_LEN]) {
    (void)b;
    s_augself *a = st;
    if (!g->vparams)
        return ser_errf(err, SER_EINVAL, "augself: the batch has no vparams (the global views' "
                        "parameters, (B, 2, %d) F32 in a batch file; the loader sends them)",
                        SER_VIEW_PARAMS);
    int B = g->B, C = g->C, R = 2 * B;
    float *X = ser_xaligned(sizeof(float) * (size_t)R * 2 * C);
    float *dX = ser_xaligned(sizeof(float) * (size_t)R * 2 * C);
    float *dZ = ser_xaligned(sizeof(float) * (size_t)R * 4);
    float *T[S_TASKS] = {ser_xaligned(sizeof(float) * (size_t)R * 4),
                         ser_xaligned(sizeof(float) * (size_t)R * 4)};
    int rc = s_targets(a, g->vparams, B, T, err);
    for (int n = 0; n < B && !rc; n++) {  // rows [z1 || z2] then [z2 || z1]
        memcpy(X + (size_t)n * 2 * C, g->qcls[0] + (size_t)n * C, sizeof(float) * C);
        memcpy(X + (size_t)n * 2 * C + C, g->qcls[1] + (size_t)n * C, sizeof(float) * C);
        memcpy(X + (size_t)(B + n) * 2 * C, g->qcls[1] + (size_t)n * C, sizeof(float) * C);
        memcpy(X + (size_t)(B + n) * 2 * C + C, g->qcls[0] + (size_t)n * C, sizeof(float) * C);
    }
    *loss = 0;
    for (int t = 0; t < S_TASKS && !rc; t++) {
        a->mse[t] = 0;
        if (!(a->weight[t] > 0)) continue;
        ser_mlp_acts acts;
        memset(&acts, 0, sizeof acts);
        const float *P = ser_mlp_forward(&a->pred[t], &acts, X, R, 1);
        double se = 0, scale = 2.0 * a->weight[t] / ((double)R * 4);
        for (size_t i = 0; i < (size_t)R * 4; i++) {
            double y = tanh((double)P[i]), d = y - (double)T[t][i];
            se += d * d;
            dZ[i] = (float)(scale * d * (1.0 - y * y));
        }
        ser_mlp_backward(&a->pred[t], &acts, dX, dZ);
        ser_mlp_acts_free(&acts);
        for (int n = 0; n < B; n++)
            for (int c = 0; c < C; c++) {
                size_t i = (size_t)n * C + c;
                g->dqcls[0][i] += dX[(size_t)n * 2 * C + c] + dX[(size_t)(B + n) * 2 * C + C + c];
                g->dqcls[1][i] += dX[(size_t)n * 2 * C + C + c] + dX[(size_t)(B + n) * 2 * C + c];
            }
        a->mse[t] = se / ((double)R * 4);
        *loss += a->weight[t] * a->mse[t];
    }
    free(X), free(dX), free(dZ), free(T[0]), free(T[1]);
    return rc;
}

static int s_monitors(void *st, const char **names, double *values) {
    const s_augself *a = st;
    int n = 0;
    for (int t = 0; t < S_TASKS; t++)
        if (a->weight[t] > 0) names[n] = s_monitor[t], values[n++] = a->mse[t];
    return n;
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3]) {
    double H = cfg->augself.hidden;
    int tasks = (cfg->augself.crop > 0) + (cfg->augself.color > 0);
    f[0] += tasks * (2 * C * H + H * H + 4 * H + 4 + 4 * H);
    f[2] += 2 * B * 2 * (2 * C + tasks * (4 * H + 8));  // the 2B input rows and each head's
}

const ser_moco_addon_i ser_moco_addon_augself = {
    .method = SER_CONFIG_METHOD_AUGSELF,
    .state_size = sizeof(s_augself),
    .local_queries = 1,
    .build = s_build,
    .bind = s_bind,
    .init_weights = s_init_weights,
    .loss = s_loss,
    .monitors = s_monitors,
    .memory = s_memory,
};
