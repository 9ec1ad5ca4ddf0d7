// ser_stl.c — STL on MoCo-v3 (the paper's `stl` baseline, ser-reference.md §5: train_stl /
// MoCo.stl / EquiTrans): loss = loss_inv + lambda_ser * loss_ser + stl.lambda_equi * equi_loss +
// stl.lambda_trans * trans_loss, on the final [CLS] rows c0, c1 of the two global views (B rows
// by batch position; B even: positions 2k and 2k+1 are a pair):
//   y122 = trans_backbone(cat[c0, c1]),  y221 = trans_backbone(cat[c1, c0])
//   y_trans1 = cat[y122[even], y221[even]],  y_trans2 = cat[y122[odd], y221[odd]]   (B rows each)
//   s(i) = i xor 1 (the pairwise swap 2k <-> 2k+1)
//   ŷ1[i] = W(y221[s(i)]) c1[i],  ŷ2[i] = W(y122[s(i)]) c0[i],  W(t) = reshape(hypernet(t), C, C)
//   z = cat[proj(c0), proj(c1)],  ẑ = cat[proj(ŷ1), proj(ŷ2)]                    (2B rows each)
//   equi_loss = ctr(z, ẑ) + ctr(ẑ, z)
//   trans_loss = ctr(tp(y_trans1), tp(y_trans2)) + ctr(tp(y_trans2), tp(y_trans1))
// with ctr MoCo-v3's contrastive loss at tau = stl.temperature (x 2 tau) whose second argument is
// a constant (the reference's all-gathered keys). The pairs are meant to share their views'
// augmentation (the reference's aligned transform); the loss itself only reads positions.
//
// BatchNorm batches, in this order (the running statistics see it): trans_backbone on
// cat[c0, c1] then on cat[c1, c0] (B rows each); projector_stl on c0, c1, ŷ1, ŷ2 (B rows each);
// trans_projector on y_trans1 then y_trans2 (B rows each).
//
// Modules (PyTorch defaults: Linear U(+-1/sqrt(fan_in)), BN (1, 0)); T = stl.trans_dim,
// P = stl.proj_hidden, D = stl.proj_dim:
//   trans_backbone.   Linear 2C-T nb, BN, ReLU, Linear T-T nb
//   projector_stl.    Linear C-P nb, BN, ReLU, Linear P-D nb; the reference's `projector_equiv`,
//                     renamed since ser's SER projector has that name
//   trans_projector.  Linear T-T nb, BN, ReLU, Linear T-T nb
//   hypernet.weight   (C*C, T): EquiTrans's Linear(T -> C*C, no bias); W(t)[a][b] = (H t)[a*C + b].
//                     T*C*C parameters: 18.9M at T = 128 and C = 384 (ViT-S), 75.5M at C = 768;
//                     counted in the memory estimate (with its gradient and AdamW moments).
// The hypernet product is computed without materialising W(t) per row: with
// O[i][b*T + k] = r[i][b] t[i][k], ŷ = O H'^T where H' (C, C*T) is H's storage read row-major,
// in blocks of rows so that O stays under S_BLOCK_FLOATS.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "ser_config.h"
#include "ser_loss.h"
#include "ser_mlp.h"
#include "ser_moco_addon.h"
#include "ser_rng.h"

#define S_BLOCK_FLOATS ((size_t)1 << 24)  // 64 MB of O per block of rows

typedef struct s_stl {
    ser_mlp tb, proj, tp;
    size_t hw;  // hypernet.weight offset
    float *params, *grads;
    double lambda_equi, lambda_trans;
    float tau;
    int C, T, D;
    double equi, trans;  // of the last loss call
} s_stl;

static int s_build(void *st, const ser_config *job, int C, ser_ptab *tab, ser_ptab *btab,
                   char err[SER_ERR_LEN]) {
    s_stl *s = st;
    int T = job->stl.trans_dim, P = job->stl.proj_hidden, D = job->stl.proj_dim, rc;
    s->lambda_equi = job->stl.lambda_equi, s->lambda_trans = job->stl.lambda_trans;
    s->tau = (float)job->stl.temperature, s->C = C, s->T = T, s->D = D;
    ser_mlp_layer_spec ts[2] = {{2 * C, T, 0, SER_BN_AFFINE, SER_ACT_RELU, 0},
                                {T, T, 0, SER_BN_NONE, SER_ACT_NONE, 0}},
                       ps[2] = {{C, P, 0, SER_BN_AFFINE, SER_ACT_RELU, 0},
                                {P, D, 0, SER_BN_NONE, SER_ACT_NONE, 0}},
                       qs[2] = {{T, T, 0, SER_BN_AFFINE, SER_ACT_RELU, 0},
                                {T, T, 0, SER_BN_NONE, SER_ACT_NONE, 0}};
    if ((rc = ser_mlp_register(&s->tb, ts, 2, tab, btab, "trans_backbone.", err)) ||
        (rc = ser_mlp_register(&s->proj, ps, 2, tab, btab, "projector_stl.", err)) ||
        (rc = ser_mlp_register(&s->tp, qs, 2, tab, btab, "trans_projector.", err)))
        return rc;
    int64_t shape[2] = {(int64_t)C * C, T};
    s->hw = ser_ptab_add(tab, "hypernet.weight", 0, 2, shape);
    return SER_OK;
}

static void s_bind(void *st, float *params, float *grads, float *buffers) {
    s_stl *s = st;
    ser_mlp_bind(&s->tb, params, grads, buffers);
    ser_mlp_bind(&s->proj, params, grads, buffers);
    ser_mlp_bind(&s->tp, params, grads, buffers);
    s->params = params, s->grads = grads;
}

static void s_init_weights(void *st, uint64_t seed) {
    s_stl *s = st;
    ser_mlp_init_weights(&s->tb, seed);
    ser_mlp_init_weights(&s->proj, seed + 1);
    ser_mlp_init_weights(&s->tp, seed + 2);
    ser_rng r;  // nn.Linear's default: U(+-1/sqrt(fan_in)), fan_in = T
    ser_rng_init(&r, seed + 3, 0, 1, SER_RNG_INIT);
    double bound = 1.0 / sqrt((double)s->T);
    float *w = s->params + s->hw;
    for (size_t i = 0; i < (size_t)s->C * s->C * s->T; i++)
        w[i] = (float)((2.0 * ser_rng_uniform_double(&r) - 1.0) * bound);
}

// Rows of O per block: as many as fit S_BLOCK_FLOATS, and no more than the B rows there are (O
// is allocated per call: a block sized for the cap alone mapped 64 MB for a handful of rows).
static size_t s_block_rows(int C, int T, int B) {
    size_t n = S_BLOCK_FLOATS / ((size_t)C * T);
    if (n > (size_t)B) n = (size_t)B;
    return n ? n : 1;
}

// O (n, C*T) of rows r (n, C) and t (n, T).
static void s_outer(float *O, const float *r, const float *t, size_t n, int C, int T) {
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < C; b++) {
            float rb = r[i * C + b];
            float *o = O + (i * C + b) * T;
            const float *ti = t + i * T;
            for (int k = 0; k < T; k++) o[k] = rb * ti[k];
        }
}

// y (B, C) = W(t) r per row.
static void s_hyper_forward(const s_stl *s, float *y, const float *t, const float *r, int B) {
    int C = s->C, T = s->T, CT = C * T;
    size_t blk = s_block_rows(C, T, B);
    float *O = ser_xaligned(sizeof(float) * blk * CT);
    const float *H = s->params + s->hw;
    for (size_t i0 = 0; i0 < (size_t)B; i0 += blk) {
        size_t n = (size_t)B - i0 < blk ? (size_t)B - i0 : blk;
        s_outer(O, r + i0 * C, t + i0 * T, n, C, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, C, CT, 1.0f, O, CT, H, CT,
                    0.0f, y + i0 * C, C);
    }
    free(O);
}

// dy (B, C) -> dt (B, T) and dr (B, C) written; hypernet.weight's gradient accumulates.
static void s_hyper_backward(const s_stl *s, float *dt, float *dr, const float *dy, const float *t,
                             const float *r, int B) {
    int C = s->C, T = s->T, CT = C * T;
    size_t blk = s_block_rows(C, T, B);
    float *O = ser_xaligned(sizeof(float) * blk * CT);
    const float *H = s->params + s->hw;
    float *dH = s->grads + s->hw;
    for (size_t i0 = 0; i0 < (size_t)B; i0 += blk) {
        size_t n = (size_t)B - i0 < blk ? (size_t)B - i0 : blk;
        s_outer(O, r + i0 * C, t + i0 * T, n, C, T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, CT, (int)n, 1.0f, dy + i0 * C, C,
                    O, CT, 1.0f, dH, CT);
        // dO = dy H' (n, C*T), into O
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, CT, C, 1.0f, dy + i0 * C, C,
                    H, CT, 0.0f, O, CT);
        for (size_t i = 0; i < n; i++) {
            const float *ti = t + (i0 + i) * T, *ri = r + (i0 + i) * C;
            float *dti = dt + (i0 + i) * T, *dri = dr + (i0 + i) * C;
            for (int k = 0; k < T; k++) dti[k] = 0;
            for (int b = 0; b < C; b++) {
                const float *o = O + (i * C + b) * T;
                float acc = 0, rb = ri[b];
                for (int k = 0; k < T; k++) acc += o[k] * ti[k], dti[k] += o[k] * rb;
                dri[b] = acc;
            }
        }
    }
    free(O);
}

int ser_stl_loss_keys(void *st, const ser_batch *b, ser_gathered *g, const float *const keys[4],
                      float *const keys_out[4], double *loss, char err[SER_ERR_LEN]) {
    (void)b;
    s_stl *s = st;
    int B = g->B, C = s->C, T = s->T, D = s->D, H = B / 2;
    if (B % 2 || B < 4)
        return ser_errf(err, SER_EINVAL,
                        "stl: the batch has %d rows; it pairs positions 2k and 2k+1, so it needs "
                        "an even count of at least 4 (data.global_batch)", B);
    SER_ASSERT(g->C == C);
    size_t BC = (size_t)B * C, BT = (size_t)B * T, BD = (size_t)B * D;
    const float *c[2] = {g->qcls[0], g->qcls[1]};
    ser_mlp_acts ta[2], pa[4], qa[2];
    memset(ta, 0, sizeof ta), memset(pa, 0, sizeof pa), memset(qa, 0, sizeof qa);
    float *cat = ser_xaligned(sizeof(float) * 2 * BC), *y[2], *tt[2], *yh[2];
    float *z = ser_xaligned(sizeof(float) * 2 * BD), *zh = ser_xaligned(sizeof(float) * 2 * BD);
    float *ytr[2], *p[2], *dp[2], *dytr[2], *dy[2], *dtt[2], *dyh[2];
    for (int v = 0; v < 2; v++) {
        y[v] = ser_xaligned(sizeof(float) * BT), tt[v] = ser_xaligned(sizeof(float) * BT);
        yh[v] = ser_xaligned(sizeof(float) * BC), ytr[v] = ser_xaligned(sizeof(float) * BT);
        p[v] = ser_xaligned(sizeof(float) * BT), dp[v] = ser_xaligned(sizeof(float) * BT);
        dytr[v] = ser_xaligned(sizeof(float) * BT), dy[v] = ser_xaligned(sizeof(float) * BT);
        dtt[v] = ser_xaligned(sizeof(float) * BT), dyh[v] = ser_xaligned(sizeof(float) * BC);
    }
    float *dz = ser_xaligned(sizeof(float) * 2 * BD), *dzh = ser_xaligned(sizeof(float) * 2 * BD);
    float *dx = ser_xaligned(sizeof(float) * 2 * BC);
    // y[0] = y122 = tb(cat[c0, c1]), y[1] = y221 = tb(cat[c1, c0])
    for (int v = 0; v < 2; v++) {
        for (int i = 0; i < B; i++) {
            memcpy(cat + (size_t)i * 2 * C, c[v] + (size_t)i * C, sizeof(float) * C);
            memcpy(cat + (size_t)i * 2 * C + C, c[1 - v] + (size_t)i * C, sizeof(float) * C);
        }
        memcpy(y[v], ser_mlp_forward(&s->tb, &ta[v], cat, B, 1), sizeof(float) * BT);
    }
    // tt[0] = y221[s(i)] (for ŷ1 from c1), tt[1] = y122[s(i)] (for ŷ2 from c0)
    for (int i = 0; i < B; i++) {
        memcpy(tt[0] + (size_t)i * T, y[1] + (size_t)(i ^ 1) * T, sizeof(float) * T);
        memcpy(tt[1] + (size_t)i * T, y[0] + (size_t)(i ^ 1) * T, sizeof(float) * T);
    }
    s_hyper_forward(s, yh[0], tt[0], c[1], B);
    s_hyper_forward(s, yh[1], tt[1], c[0], B);
    for (int v = 0; v < 2; v++)
        memcpy(z + v * BD, ser_mlp_forward(&s->proj, &pa[v], c[v], B, 1), sizeof(float) * BD);
    for (int v = 0; v < 2; v++)
        memcpy(zh + v * BD, ser_mlp_forward(&s->proj, &pa[2 + v], yh[v], B, 1),
               sizeof(float) * BD);
    // ytr[0] = cat[y122[even], y221[even]], ytr[1] = the odd rows
    for (int o = 0; o < 2; o++)
        for (int v = 0; v < 2; v++)
            for (int k = 0; k < H; k++)
                memcpy(ytr[o] + ((size_t)v * H + k) * T, y[v] + (size_t)(2 * k + o) * T,
                       sizeof(float) * T);
    for (int o = 0; o < 2; o++)
        memcpy(p[o], ser_mlp_forward(&s->tp, &qa[o], ytr[o], B, 1), sizeof(float) * BT);
    if (keys_out) {
        memcpy(keys_out[0], zh, sizeof(float) * 2 * BD), memcpy(keys_out[1], z, sizeof(float) * 2 * BD);
        memcpy(keys_out[2], p[1], sizeof(float) * BT), memcpy(keys_out[3], p[0], sizeof(float) * BT);
    }
    memset(dz, 0, sizeof(float) * 2 * BD), memset(dzh, 0, sizeof(float) * 2 * BD);
    memset(dp[0], 0, sizeof(float) * BT), memset(dp[1], 0, sizeof(float) * BT);
    float le = (float)s->lambda_equi, lt = (float)s->lambda_trans;
    s->equi = ser_moco_ctr(dz, z, keys ? keys[0] : zh, 2 * B, D, s->tau, le) +
              ser_moco_ctr(dzh, zh, keys ? keys[1] : z, 2 * B, D, s->tau, le);
    s->trans = ser_moco_ctr(dp[0], p[0], keys ? keys[2] : p[1], B, T, s->tau, lt) +
               ser_moco_ctr(dp[1], p[1], keys ? keys[3] : p[0], B, T, s->tau, lt);
    // dx[0..BC) accumulates dL/dc0, dx[BC..2BC) dL/dc1
    float *dc[2] = {dx, dx + BC};
    for (int v = 0; v < 2; v++) ser_mlp_backward(&s->proj, &pa[v], dc[v], dz + v * BD);
    for (int v = 0; v < 2; v++) ser_mlp_backward(&s->proj, &pa[2 + v], dyh[v], dzh + v * BD);
    for (int o = 0; o < 2; o++) ser_mlp_backward(&s->tp, &qa[o], dytr[o], dp[o]);
    for (int o = 0; o < 2; o++)
        for (int v = 0; v < 2; v++)
            for (int k = 0; k < H; k++)
                memcpy(dy[v] + (size_t)(2 * k + o) * T, dytr[o] + ((size_t)v * H + k) * T,
                       sizeof(float) * T);
    // ŷ1 = W(tt[0]) c1, ŷ2 = W(tt[1]) c0: dyh[0] reuses as dr scratch after use
    float *dr = cat;  // (B, C) scratch: cat is free now
    for (int v = 0; v < 2; v++) {
        s_hyper_backward(s, dtt[v], dr, dyh[v], tt[v], c[1 - v], B);
        for (size_t i = 0; i < BC; i++) dc[1 - v][i] += dr[i];
    }
    for (int i = 0; i < B; i++)
        for (int k = 0; k < T; k++) {
            dy[1][(size_t)(i ^ 1) * T + k] += dtt[0][(size_t)i * T + k];
            dy[0][(size_t)(i ^ 1) * T + k] += dtt[1][(size_t)i * T + k];
        }
    for (int v = 0; v < 2; v++) {
        ser_mlp_backward(&s->tb, &ta[v], cat, dy[v]);
        for (int i = 0; i < B; i++)
            for (int j = 0; j < C; j++) {
                dc[v][(size_t)i * C + j] += cat[(size_t)i * 2 * C + j];
                dc[1 - v][(size_t)i * C + j] += cat[(size_t)i * 2 * C + C + j];
            }
    }
    for (int v = 0; v < 2; v++)
        for (size_t i = 0; i < BC; i++) g->dqcls[v][i] += dc[v][i];
    for (int v = 0; v < 2; v++) ser_mlp_acts_free(&ta[v]), ser_mlp_acts_free(&qa[v]);
    for (int v = 0; v < 4; v++) ser_mlp_acts_free(&pa[v]);
    for (int v = 0; v < 2; v++) {
        free(y[v]), free(tt[v]), free(yh[v]), free(ytr[v]), free(p[v]), free(dp[v]);
        free(dytr[v]), free(dy[v]), free(dtt[v]), free(dyh[v]);
    }
    free(cat), free(z), free(zh), free(dz), free(dzh), free(dx);
    *loss = s->lambda_equi * s->equi + s->lambda_trans * s->trans;
    return SER_OK;
}

static int s_loss(void *st, const ser_batch *b, ser_gathered *g, double *loss,
                  char err[SER_ERR_LEN]) {
    return ser_stl_loss_keys(st, b, g, NULL, NULL, loss, err);
}

static int s_monitors(void *st, const char **names, double *values) {
    const s_stl *s = st;
    names[0] = "stl_equi_loss", values[0] = s->equi;
    names[1] = "stl_trans_loss", values[1] = s->trans;
    return 2;
}

static void s_memory(const ser_config *cfg, double C, double B, double f[3]) {
    double T = cfg->stl.trans_dim, P = cfg->stl.proj_hidden, D = cfg->stl.proj_dim;
    // the hypernet's T*C*C dominate (18.9M at T = 128, C = 384)
    f[0] += 2 * C * T + T * T + 2 * T + C * P + 2 * P + P * D + 2 * T * T + 2 * T + T * C * C;
    // two trans_backbone calls, four projector calls, two trans_projector calls of B rows, the
    // predictions and their gradients; one block of the hypernet's outer products
    double blk = (double)s_block_rows((int)C, (int)T, B < 1 ? 1 : B > 1e9 ? 1000000000 : (int)B);
    f[2] += 2 * (2 * B * (2 * C + 3 * T) + 4 * B * (C + 3 * P + D) + 2 * B * 4 * T + 2 * B * C) +
            blk * C * T;  // s_block_rows is at most B
}

const ser_moco_addon_i ser_moco_addon_stl = {
    .method = SER_CONFIG_METHOD_STL,
    .state_size = sizeof(s_stl),
    .local_queries = 1,
    .build = s_build,
    .bind = s_bind,
    .init_weights = s_init_weights,
    .loss = s_loss,
    .monitors = s_monitors,
    .memory = s_memory,
};
