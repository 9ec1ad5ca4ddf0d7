// ser_essl.c — E-SSL on MoCo-v3 (Dangovski et al.; the paper's `essl` baseline, ser-reference
// train_essl): a rotation head on the final [CLS] of the 4 rotated local views
// (data.local_mode = rotations: one crop in its 4 counter-clockwise quarter turns, view k
// labelled k), loss = loss_inv + lambda_ser * loss_ser + essl.lambda * CE. The head is the
// reference's: Linear C-H, LN, ReLU, Linear H-H, LN, ReLU, Linear H-bottleneck, LN, Linear
// bottleneck-4, with biases and PyTorch's default init, named rotation_head.<Sequential index>.
// The rotated views are not MoCo queries (the reference's inv_essl, method moco with the same
// views, makes them queries instead).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ser_config.h"
#include "ser_mlp.h"
#include "ser_moco_addon.h"

typedef struct s_essl {
    ser_mlp head;
    double lambda;
    double ce, acc;  // of the last loss call
} s_essl;

static int s_build(void *st, const ser_config *job, int C, ser_ptab *tab, ser_ptab *btab,
                   char err[SER_ERR_LEN]) {
    s_essl *e = st;
    int H = job->essl.hidden ? job->essl.hidden : C, Bn = job->essl.bottleneck;
    e->lambda = job->essl.lambda;
    if (job->data.local_crops != 4)
        return ser_errf(err, SER_ECONFIG, "essl: needs data.local_crops = 4 rotated views, not %d",
                        job->data.local_crops);
    ser_mlp_layer_spec rs[4] = {{C, H, 1, SER_BN_LAYERNORM, SER_ACT_RELU, 0},
                                {H, H, 1, SER_BN_LAYERNORM, SER_ACT_RELU, 0},
                                {H, Bn, 1, SER_BN_LAYERNORM, SER_ACT_NONE, 0},
                                {Bn, 4, 1, SER_BN_NONE, SER_ACT_NONE, 0}};
    return ser_mlp_register(&e->head, rs, 4, tab, btab, "rotation_head.", err);
}

static void s_bind(void *st, float *params, float *grads, float *buffers) {
    ser_mlp_bind(&((s_essl *)st)->head, params, grads, buffers);
}

static void s_init_weights(void *st, uint64_t seed) {
    ser_mlp_init_weights(&((s_essl *)st)->head, seed);
}

// The head on the 4 views' [CLS] rows as one batch of 4B rows (view k's rows labelled k), the
// mean cross-entropy in double; lambda x its gradient is added to dlcls.
static int s_loss(void *st, const ser_batch *b, ser_gathered *g, double *loss,
                  char err[SER_ERR_LEN]) {
    (void)b, (void)err;
    s_essl *e = st;
    SER_ASSERT(g->n_local == 4);  // the config's rule
    int B = g->B, C = g->C, R = 4 * B;
    size_t BC = (size_t)B * C;
    float *X = ser_xaligned(sizeof(float) * (size_t)R * C);
    float *dX = ser_xaligned(sizeof(float) * (size_t)R * C);
    float *dZ = ser_xaligned(sizeof(float) * (size_t)R * 4);
    for (int k = 0; k < 4; k++) memcpy(X + k * BC, g->lcls[k], sizeof(float) * BC);
    ser_mlp_acts a;
    memset(&a, 0, sizeof a);
    const float *Z = ser_mlp_forward(&e->head, &a, X, R, 1);
    double ce = 0, scale = e->lambda / R;
    int right = 0;
    for (int r = 0; r < R; r++) {
        const float *z = Z + (size_t)r * 4;
        int label = r / B, best = 0;
        for (int j = 1; j < 4; j++)
            if (z[j] > z[best]) best = j;
        double mx = z[best], se = 0;
        for (int j = 0; j < 4; j++) se += exp((double)z[j] - mx);
        double lse = mx + log(se);
        ce += lse - (double)z[label];
        right += best == label;
        for (int j = 0; j < 4; j++)
            dZ[(size_t)r * 4 + j] = (float)((exp((double)z[j] - lse) - (j == label)) * scale);
    }
    ser_mlp_backward(&e->head, &a, dX, dZ);
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; i < BC; i++) g->dlcls[k][i] += dX[k * BC + i];
    ser_mlp_acts_free(&a);
    free(X), free(dX), free(dZ);
    e->ce = ce / R, e->acc = (double)right / R;
    *loss = e->lambda * e->ce;
    return SER_OK;
}

static int s_monitors(void *st, const char **names, double *values) {
    const s_essl *e = st;
    names[0] = "essl_rot_ce", values[0] = e->ce;
    names[1] = "essl_rot_acc", values[1] = e->acc;
    return 2;
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3]) {
    double H = cfg->essl.hidden ? cfg->essl.hidden : C, Bn = cfg->essl.bottleneck;
    f[0] += C * H + H * H + H * Bn + Bn * 4;
    f[2] += 4 * B * 2 * (C + 2 * H + Bn);  // the 4 rotated views' head rows and gradients
}

const ser_moco_addon_i ser_moco_addon_essl = {
    .method = SER_CONFIG_METHOD_ESSL,
    .state_size = sizeof(s_essl),
    .local_queries = 0,
    .build = s_build,
    .bind = s_bind,
    .init_weights = s_init_weights,
    .loss = s_loss,
    .monitors = s_monitors,
    .memory = s_memory,
};
