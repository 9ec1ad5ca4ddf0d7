// ser_eval_cmd.c — `ser eval`: evaluation of a checkpoint (or of the random initialisation of a
// job) on a labelled dataset. The numbers come from common/eval/ser_eval.h; this file does the data,
// the frozen features, the modes and the output.
//
// Data: the train and test splits of an ImageFolder tree (val/ is the test split; without one,
// a seeded 20% of train is held out as test), CIFAR-10 or Fashion-MNIST (gray replicated to
// RGB by the loader). Every image is resized to the model's img_size x img_size (PIL bilinear,
// antialiased, the whole image: no crop, no augmentation) and normalised with the ImageNet mean
// and std as the workers do. --train-limit / --test-limit take a seeded, class-balanced subset.
//
// Features: ser_vit_forward in eval mode (train = 0: no drop path), in batches, all threads.
//   knn           final [CLS] (acts->cls), L2-normalised; DINO's weighted kNN vote.
//   linear        the final-norm [CLS] of the last 4 blocks, concatenated (ser-reference §7;
//                 fewer when the network has fewer blocks with a [CLS] row), raw (the reference
//                 has no feature normalisation); lr picked on a seeded 10% of train, then
//                 retrained on all of train; top-1/top-5 on test.
//   equivariance  on the test subset: cosine consistency of the final [CLS] of x and g.x, and
//                 the relative error ||rho(g) Phi(x) - Phi(g.x)|| / ||Phi(x)|| of the block-k SER
//                 map (acts->map, after norm_equiv); in the baseline layout (cls_layer = depth)
//                 Phi is the last block's patch tokens through the final LayerNorm.
//   probe         per block l: the block output's patch tokens (the [CLS] row, where there is
//                 one, excluded), mean-pooled over the grid, standardised with the train
//                 statistics; a linear classifier predicts the rotation (4-way: every train image
//                 under rot 0/90/180/270) and the flip (2-way: identity and hflip) and is scored
//                 on the test images under the same transforms. Mean-pooled patch tokens rather
//                 than [CLS]: in the SER layout the blocks before k have no [CLS] token.
//   robustness    the linear classifier of `linear` (clean features) on the test subset under
//                 rot90/180/270, hflip, the two rescalings and the 15 corruptions x 5
//                 severities (ser_corrupt_apply on the uint8 image at model resolution; the seed
//                 depends on the image alone).
// Group elements: common/nn/ser_group.h; g.x is ser_group_image_action on the normalised image
// (bicubic rescaling is affine-equivariant, so normalising first changes nothing but rounding).
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <turbojpeg.h>

#include "ser_backbone.h"
#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_config.h"
#include "ser_corrupt.h"
#include "ser_dl_data.h"
#include "ser_dl_ops.h"
#include "ser_eval.h"
#include "ser_eval_data.h"
#include "ser_group.h"
#include "ser_kernels.h"
#include "ser_vit.h"

enum { S_KNN = 1, S_LINEAR = 2, S_EQUIV = 4, S_PROBE = 8, S_ROBUST = 16, S_NMODES = 5 };
static const char *const s_mode_names[S_NMODES] = {"knn", "linear", "equivariance", "probe",
                                                   "robustness"};

#define S_MAX_SET 64

typedef struct s_opts {
    unsigned modes;
    const char *ckpt, *config, *data, *json;
    const char *sets[S_MAX_SET];
    int nset, random_init, pixels, train_limit, test_limit, threads, batch, k, epochs, probe_epochs;
    uint64_t seed;
    double temperature;
    double lrs[SER_EVAL_MAX_LRS];
    int nlr;
    int sev[5], nsev;
    int corr[SER_CORRUPT_COUNT], ncorr;
} s_opts;


typedef struct s_ctx {
    s_opts o;
    ser_backbone bb;
    ser_vit *v;
    int img, P, g0, L, C, k, nl, baseline, ncls;
    ser_eval_data ed;  // the labelled data (dataloader/ser_eval_data.h)
    ser_vit_acts acts;
    int B, nthr;
    uint8_t *u8, *u8c;     // (B, img, img, 3): resized batch, corrupted copy
    float *xb, *xg;        // (B, 3, img, img) normalised batch; (B, 3, Hmax, Wmax) transformed
    size_t xg_cap;
    void **tj;             // per-thread TurboJPEG decompressors
    cJSON *root;
    float *cls_tr, *cls_te, *last_tr, *last_te;  // clean features
    ser_eval_linear lin;
    int have_lin;
    ser_group_elem G[SER_EVAL_MAX_GROUP];
    char gname[SER_EVAL_MAX_GROUP][24];
    int nG;
    // The result table's rows, held until every mode has run: it goes to stdout in one piece
    // after the last log line, so that no log line on a shared terminal or file lands inside it.
    char *rows;
    size_t rows_len, rows_cap;
} s_ctx;

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser eval MODE[,MODE...]|all (--checkpoint PATH | --config job.ini --random-init)\n"
            "                [--config job.ini] [--set section.key=value]... [--random-init]\n"
            "                [--data DIR|fashion-mnist[:DIR]|cifar10:DIR|imagefolder:DIR]\n"
            "                [--train-limit N] [--test-limit N] [--json FILE] [--threads N]\n"
            "                [--seed S] [--k K] [--temperature T] [--epochs N] [--lr LIST]\n"
            "                [--probe-epochs N] [--batch B] [--severities LIST]\n"
            "                [--corruptions LIST] [--pixels]\n"
            "  Modes: knn (k-NN on the final [CLS], DINO protocol), linear (linear classifier on\n"
            "  the last-4-block [CLS] features), equivariance (transformation consistency and the\n"
            "  SER map's equivariance error), probe (rotation/flip prediction from every block),\n"
            "  robustness (the linear classifier under group transforms and 15 corruptions x 5\n"
            "  severities), all.\n"
            "  --pixels: knn on the network's input itself (the normalised image at img_size,\n"
            "  flattened; and centred by the train subset's mean: top1_centred), the baseline a\n"
            "  learned feature has to beat, on the same subsets.\n"
            "  --checkpoint: a checkpoint file, a run directory (its newest valid checkpoint) or a\n"
            "  `ser step --out` state file (needs --config). --random-init evaluates the job's\n"
            "  untrained network instead (seeded by data.seed, as a fresh job starts), with the\n"
            "  configuration of --config or of the checkpoint. --data defaults to the job's\n"
            "  [data] path; fashion-mnist alone means %s.\n"
            "  Defaults: k 20, temperature 0.07, epochs 100 (probe 30), lr grid\n"
            "  0.001,0.003,0.01,0.03,0.1,0.3,1, seed 0, all cores, every severity and corruption.\n"
            "  Prints one line per metric; --json writes mode -> metric -> value with the\n"
            "  checkpoint, step, config hash and dataset. Exit 0 ok, 1 failure, 2 usage.\n",
            SER_EVAL_DEFAULT_FMNIST);
}

// --- small parsers ---------------------------------------------------------------------------------

static int s_int(const char *s, long lo, long hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int s_dbl(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

static int s_parse_modes(const char *s, unsigned *modes) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    *modes = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (strcmp(t, "all") == 0) {
            *modes = (1u << S_NMODES) - 1;
            continue;
        }
        int found = 0;
        for (int m = 0; m < S_NMODES; m++)
            if (strcmp(t, s_mode_names[m]) == 0) *modes |= 1u << m, found = 1;
        if (!found) {
            fprintf(stderr, "ser eval: unknown mode '%s' (modes: knn, linear, equivariance, probe, "
                    "robustness, all)\n", t);
            return -1;
        }
    }
    if (!*modes) {
        fprintf(stderr, "ser eval: no mode given\n");
        return -1;
    }
    return 0;
}

// --- output ----------------------------------------------------------------------------------------

// One metric: a row of the table (printed by s_print_table) and root[mode][metric] = value.
static void s_put(s_ctx *c, const char *mode, const char *metric, double value) {
    cJSON *m = cJSON_GetObjectItemCaseSensitive(c->root, mode);
    if (!m) m = cJSON_AddObjectToObject(c->root, mode);
    cJSON_AddNumberToObject(m, metric, value);
    char row[128];
    int n = snprintf(row, sizeof row, "%-13s %-34s %12.4f\n", mode, metric, value);
    if (n < 0) return;
    if ((size_t)n >= sizeof row) n = (int)sizeof row - 1;
    if (c->rows_len + (size_t)n + 1 > c->rows_cap) {
        c->rows_cap = 2 * c->rows_cap + (size_t)n + 1024;
        c->rows = realloc(c->rows, c->rows_cap);
        SER_ASSERT(c->rows);
    }
    memcpy(c->rows + c->rows_len, row, (size_t)n + 1);
    c->rows_len += (size_t)n;
}

// The table (header and every row so far) on stdout in one write, after what is pending on
// stderr: the modes log while they run, and none of it may interleave with the table.
static void s_print_table(s_ctx *c) {
    fflush(stderr);
    fflush(stdout);
    char head[128];
    int n = snprintf(head, sizeof head, "%-13s %-34s %12s\n", "mode", "metric", "value");
    size_t len = (size_t)n + c->rows_len;
    char *all = ser_xmalloc(len + 1);
    memcpy(all, head, (size_t)n);
    if (c->rows_len) memcpy(all + n, c->rows, c->rows_len);
    for (size_t off = 0; off < len;) {  // one write(2) unless the pipe takes it in parts
        ssize_t w = write(STDOUT_FILENO, all + off, len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    free(all);
}

// --- data ------------------------------------------------------------------------------------------

static int s_open_data(s_ctx *c, char err[SER_ERR_LEN]) {
    return ser_eval_data_open(&c->ed, c->o.data, &c->bb.cfg, c->o.train_limit, c->o.test_limit,
                              c->o.seed, err);
}

// --- batches ---------------------------------------------------------------------------------------

// Decodes and resizes images s->idx[i0 .. i0+nb) into c->u8.
static int s_load_u8(s_ctx *c, const ser_eval_set *s, int i0, int nb, char err[SER_ERR_LEN]) {
    return ser_eval_load_u8(s, i0, nb, c->img, c->u8, c->tj, c->nthr, err);
}

static void s_normalise_batch(s_ctx *c, const uint8_t *u8, int nb) {
    int img = c->img;
#pragma omp parallel for schedule(static)
    for (int q = 0; q < nb; q++)
        ser_dl_normalise(c->xb + (size_t)q * 3 * img * img, u8 + (size_t)q * img * img * 3, img, img);
}

// Corrupts c->u8 into c->u8c (seed per image: the dataset index).
static int s_corrupt_batch(s_ctx *c, const ser_eval_set *s, int i0, int nb, int type, int sev,
                           char err[SER_ERR_LEN]) {
    int img = c->img, rc = SER_OK;
    size_t per = (size_t)img * img * 3;
#pragma omp parallel for schedule(dynamic, 1)
    for (int q = 0; q < nb; q++) {
        char e2[SER_ERR_LEN];
        uint64_t seed = (c->o.seed * 0x9E3779B97F4A7C15ull) ^ s->idx[i0 + q];
        int r = ser_corrupt_apply(c->u8c + (size_t)q * per, c->u8 + (size_t)q * per, img, img,
                                  type, sev, seed, e2);
        if (r) {
#pragma omp critical(s_eval_err)
            if (!rc) rc = ser_errf(err, r, "corruption %s/%d: %s", ser_corrupt_name(type), sev, e2);
        }
    }
    return rc;
}

// c->xb -> c->xg under g; *H, *W receive the view size.
static int s_transform(s_ctx *c, int nb, const ser_group_elem *g, int *H, int *W) {
    ser_group_image_size(g, c->P, H, W);
    size_t in = (size_t)3 * c->img * c->img, out = (size_t)3 * *H * *W;
    if (out * nb > c->xg_cap) {
        free(c->xg);
        c->xg_cap = out * nb;
        c->xg = ser_xaligned_raw(sizeof(float) * c->xg_cap);
    }
    int rc = SER_OK;
#pragma omp parallel for schedule(static)
    for (int q = 0; q < nb; q++) {
        int r = ser_group_image_action(c->xg + q * out, c->xb + q * in, 3, c->img, c->img, c->P, g);
        if (r) {
#pragma omp critical(s_eval_err)
            rc = r;
        }
    }
    return rc;
}

static int s_forward(s_ctx *c, const float *x, int nb, int H, int W, int n_last,
                     char err[SER_ERR_LEN]) {
    ser_vit_fwd_opts fo;
    memset(&fo, 0, sizeof fo);
    fo.train = 0;
    fo.n_last = n_last;
    return ser_vit_forward(c->v, &c->acts, x, nb, H, W, &fo, err);
}

// The token map Phi of the last forward into out (nb, NP, C).
static void s_map(s_ctx *c, float *out) {
    const ser_vit_acts *a = &c->acts;
    int C = c->C, NP = a->NP, nb = a->B;
    if (!c->baseline) {
        memcpy(out, a->map, sizeof(float) * (size_t)nb * NP * C);
        return;
    }
    float *mu = ser_xmalloc(sizeof(float) * (size_t)NP), *rs = ser_xmalloc(sizeof(float) * (size_t)NP);
    const float *p = c->v->params;
    for (int q = 0; q < nb; q++)
        ser_layernorm_forward(out + (size_t)q * NP * C, mu, rs, a->xout + ((size_t)q * a->N1 + 1) * C,
                              p + c->v->off_norm_w, p + c->v->off_norm_b, NP, C, c->v->cfg.ln_eps);
    free(mu);
    free(rs);
}

// Mean-pooled patch tokens of every block of the last forward: out[l * stride + q * C + ch] for
// block l, image q of the batch.
static void s_block_means(s_ctx *c, float *out, size_t stride) {
    const ser_vit_acts *a = &c->acts;
    int C = c->C, NP = a->NP, nb = a->B, L = c->L, k = c->k;
    for (int l = 0; l < L; l++) {
        const float *x;
        if (l == L - 1) x = a->xout;
        else if (!c->baseline && l == k - 1) x = a->xk;
        else x = a->xin[l + 1];
        int has_cls = c->baseline || l >= k, T = has_cls ? NP + 1 : NP;
        for (int q = 0; q < nb; q++) {
            float *o = out + (size_t)l * stride + (size_t)q * C;
            const float *xq = x + ((size_t)q * T + (has_cls ? 1 : 0)) * C;
            for (int ch = 0; ch < C; ch++) {
                double s = 0;
                for (int t = 0; t < NP; t++) s += (double)xq[(size_t)t * C + ch];
                o[ch] = (float)(s / NP);
            }
        }
    }
}

// Clean features of a whole set: final [CLS] (cls, (n, C)) and the last-nl concatenation
// (last, (n, nl*C)); either may be NULL.
static int s_clean_features(s_ctx *c, const ser_eval_set *s, float **cls, float **last,
                            char err[SER_ERR_LEN]) {
    int C = c->C, nl = c->nl, rc = SER_OK;
    if (cls) *cls = ser_xmalloc(sizeof(float) * (size_t)s->n * C);
    if (!last)  // the path the coordinator's kNN monitor takes too: the same numbers
        return ser_eval_cls_features(c->v, &c->acts, s, c->B, NULL, c->tj, c->nthr, *cls, err);
    if (last) *last = ser_xmalloc(sizeof(float) * (size_t)s->n * nl * C);
    for (int i0 = 0; i0 < s->n && !rc; i0 += c->B) {
        int nb = s->n - i0 < c->B ? s->n - i0 : c->B;
        if ((rc = s_load_u8(c, s, i0, nb, err))) break;
        s_normalise_batch(c, c->u8, nb);
        if ((rc = s_forward(c, c->xb, nb, c->img, c->img, last ? nl : 0, err))) break;
        if (cls) memcpy(*cls + (size_t)i0 * C, c->acts.cls, sizeof(float) * (size_t)nb * C);
        if (last)
            memcpy(*last + (size_t)i0 * nl * C, c->acts.last_cls, sizeof(float) * (size_t)nb * nl * C);
    }
    return rc;
}

// --- modes -----------------------------------------------------------------------------------------

static int s_mode_knn(s_ctx *c, char err[SER_ERR_LEN]) {
    ser_eval_acc a;
    int rc = ser_eval_knn_acc(&a, c->cls_tr, c->ed.tr.y, c->ed.tr.n, c->cls_te, c->ed.te.y, c->ed.te.n,
                              c->C, c->ed.ncls, c->o.k, c->o.temperature);
    if (rc) return ser_errf(err, rc, "knn: bad sizes or labels");
    s_put(c, "knn", "k", c->o.k < c->ed.tr.n ? c->o.k : c->ed.tr.n);
    s_put(c, "knn", "temperature", c->o.temperature);
    s_put(c, "knn", "top1", a.top1);
    s_put(c, "knn", "top5", a.top5);
    return SER_OK;
}

// kNN on the normalised input pixels (3 x img x img), raw and centred by the train mean.
static int s_pixel_set(s_ctx *c, const ser_eval_set *s, float *out, char err[SER_ERR_LEN]) {
    size_t d = (size_t)3 * c->img * c->img;
    for (int i0 = 0; i0 < s->n; i0 += c->B) {
        int nb = s->n - i0 < c->B ? s->n - i0 : c->B;
        int rc = s_load_u8(c, s, i0, nb, err);
        if (rc) return rc;
        s_normalise_batch(c, c->u8, nb);
        memcpy(out + (size_t)i0 * d, c->xb, sizeof(float) * d * (size_t)nb);
    }
    return SER_OK;
}

static int s_mode_pixels(s_ctx *c, char err[SER_ERR_LEN]) {
    int d = 3 * c->img * c->img, ntr = c->ed.tr.n, nte = c->ed.te.n;
    float *tr = ser_xmalloc(sizeof(float) * (size_t)ntr * d);
    float *te = ser_xmalloc(sizeof(float) * (size_t)nte * d);
    int rc = s_pixel_set(c, &c->ed.tr, tr, err);
    if (!rc) rc = s_pixel_set(c, &c->ed.te, te, err);
    ser_eval_acc a, ac;
    if (!rc) rc = ser_eval_knn_acc(&a, tr, c->ed.tr.y, ntr, te, c->ed.te.y, nte, d, c->ed.ncls,
                                   c->o.k, c->o.temperature);
    if (!rc) {
        double *mu = ser_xcalloc((size_t)d, sizeof(double));
        for (int i = 0; i < ntr; i++)
            for (int j = 0; j < d; j++) mu[j] += (double)tr[(size_t)i * d + j];
        for (int j = 0; j < d; j++) mu[j] /= ntr;
        for (int i = 0; i < ntr; i++)
            for (int j = 0; j < d; j++) tr[(size_t)i * d + j] -= (float)mu[j];
        for (int i = 0; i < nte; i++)
            for (int j = 0; j < d; j++) te[(size_t)i * d + j] -= (float)mu[j];
        free(mu);
        rc = ser_eval_knn_acc(&ac, tr, c->ed.tr.y, ntr, te, c->ed.te.y, nte, d, c->ed.ncls,
                              c->o.k, c->o.temperature);
    }
    if (rc) {
        ser_errf(err, rc, "knn on pixels: bad sizes or labels");
    } else {
        s_put(c, "knn", "k", c->o.k < ntr ? c->o.k : ntr);
        s_put(c, "knn", "temperature", c->o.temperature);
        s_put(c, "knn", "top1", a.top1);
        s_put(c, "knn", "top5", a.top5);
        s_put(c, "knn", "top1_centred", ac.top1);
        s_put(c, "knn", "top5_centred", ac.top5);
    }
    free(tr), free(te);
    return rc;
}

static int s_mode_linear(s_ctx *c, char err[SER_ERR_LEN]) {
    int D = c->nl * c->C, ntr = c->ed.tr.n, nte = c->ed.te.n;
    ser_eval_linear_opts lo;
    ser_eval_linear_opts_default(&lo);
    lo.epochs = c->o.epochs;
    lo.seed = c->o.seed;
    uint8_t *isv = ser_xmalloc((size_t)ntr);
    ser_eval_val_mask(isv, ntr, 0.1, c->o.seed, NULL, 0);
    ser_eval_select sel;
    int rc = ser_eval_linear_select(&c->lin, &sel, c->last_tr, c->ed.tr.y, ntr, D, c->ed.ncls, isv,
                                    c->o.lrs, c->o.nlr, &lo, err);
    free(isv);
    if (rc) return rc;
    c->have_lin = 1;
    float *sc = ser_xmalloc(sizeof(float) * (size_t)nte * c->ed.ncls);
    ser_eval_linear_scores(&c->lin, sc, c->last_te, nte);
    ser_eval_acc a = ser_eval_topk(sc, c->ed.te.y, nte, c->ed.ncls);
    free(sc);
    s_put(c, "linear", "blocks", c->nl);
    s_put(c, "linear", "features", D);
    s_put(c, "linear", "epochs", lo.epochs);
    for (int j = 0; j < sel.nlr; j++) {
        char key[64];
        snprintf(key, sizeof key, "val_top1@lr=%g", sel.lr[j]);
        s_put(c, "linear", key, sel.val_top1[j]);
    }
    s_put(c, "linear", "lr", sel.lr[sel.best]);
    s_put(c, "linear", "val_top1", sel.val.top1);
    s_put(c, "linear", "val_top5", sel.val.top5);
    s_put(c, "linear", "train_loss", sel.final_loss);
    s_put(c, "linear", "test_top1", a.top1);
    s_put(c, "linear", "test_top5", a.top5);
    return SER_OK;
}

static int s_mode_equiv(s_ctx *c, char err[SER_ERR_LEN]) {
    int C = c->C, NP = c->g0 * c->g0, nG = c->nG, rc = SER_OK;
    double cons[SER_EVAL_MAX_GROUP] = {0}, errs[SER_EVAL_MAX_GROUP] = {0};
    int nerr[SER_EVAL_MAX_GROUP] = {0};
    float *cls0 = ser_xmalloc(sizeof(float) * (size_t)c->B * C);
    float *map0 = ser_xmalloc(sizeof(float) * (size_t)c->B * NP * C);
    size_t gmax = 0;
    for (int j = 0; j < nG; j++) {
        int r, q;
        ser_group_view_grid(&c->G[j], &r, &q);
        if ((size_t)r * q > gmax) gmax = (size_t)r * q;
    }
    float *mapg = ser_xmalloc(sizeof(float) * (size_t)c->B * gmax * C);
    int nthr = c->nthr;
    float *scratch = ser_xmalloc(sizeof(float) * gmax * C * (size_t)nthr);
    const ser_eval_set *s = &c->ed.te;
    for (int i0 = 0; i0 < s->n && !rc; i0 += c->B) {
        int nb = s->n - i0 < c->B ? s->n - i0 : c->B;
        if ((rc = s_load_u8(c, s, i0, nb, err))) break;
        s_normalise_batch(c, c->u8, nb);
        if ((rc = s_forward(c, c->xb, nb, c->img, c->img, 0, err))) break;
        memcpy(cls0, c->acts.cls, sizeof(float) * (size_t)nb * C);
        s_map(c, map0);
        for (int j = 0; j < nG && !rc; j++) {
            int H, W, gr, gc;
            if ((rc = s_transform(c, nb, &c->G[j], &H, &W))) {
                ser_errf(err, rc, "equivariance: group element %s", c->gname[j]);
                break;
            }
            if ((rc = s_forward(c, c->xg, nb, H, W, 0, err))) break;
            s_map(c, mapg);
            ser_group_view_grid(&c->G[j], &gr, &gc);
            size_t npg = (size_t)gr * gc * C;
            double sc = 0, se = 0;
            int ne = 0;
#pragma omp parallel for schedule(static) reduction(+ : sc, se, ne)
            for (int q = 0; q < nb; q++) {
                float *scr = scratch + gmax * C * (size_t)omp_get_thread_num();
                sc += ser_eval_cosine(cls0 + (size_t)q * C, c->acts.cls + (size_t)q * C, C);
                double e = ser_eval_equiv_error(map0 + (size_t)q * NP * C, c->g0, c->g0,
                                                mapg + (size_t)q * npg, C, &c->G[j], scr);
                if (isfinite(e) && e >= 0) se += e, ne++;
            }
            cons[j] += sc, errs[j] += se, nerr[j] += ne;
        }
    }
    if (!rc) {
        double mc = 0, me = 0;
        s_put(c, "equivariance", "map_block", c->baseline ? c->L : c->k);
        for (int j = 0; j < nG; j++) {
            char key[64];
            snprintf(key, sizeof key, "consistency.%s", c->gname[j]);
            s_put(c, "equivariance", key, cons[j] / s->n);
            mc += cons[j] / s->n;
        }
        s_put(c, "equivariance", "consistency.mean", mc / nG);
        for (int j = 0; j < nG; j++) {
            char key[64];
            snprintf(key, sizeof key, "error.%s", c->gname[j]);
            double e = nerr[j] ? errs[j] / nerr[j] : (double)NAN;
            s_put(c, "equivariance", key, e);
            me += e;
        }
        s_put(c, "equivariance", "error.mean", me / nG);
    }
    free(cls0), free(map0), free(mapg), free(scratch);
    return rc;
}

// Block means of a set under the 5 probe views (identity, rot90, rot180, rot270, hflip):
// out (5, L, n, C).
static int s_probe_features(s_ctx *c, const ser_eval_set *s, float **out, char err[SER_ERR_LEN]) {
    int C = c->C, L = c->L, rc = SER_OK;
    size_t stride = (size_t)s->n * C, vstride = (size_t)L * stride;
    *out = ser_xmalloc(sizeof(float) * 5 * vstride);
    ser_group_elem views[5];
    for (int v = 0; v < 5; v++) views[v] = ser_eval_identity(c->g0, c->g0);
    views[1].rot90 = 1, views[2].rot90 = 2, views[3].rot90 = 3, views[4].hflip = 1;
    for (int i0 = 0; i0 < s->n && !rc; i0 += c->B) {
        int nb = s->n - i0 < c->B ? s->n - i0 : c->B;
        if ((rc = s_load_u8(c, s, i0, nb, err))) break;
        s_normalise_batch(c, c->u8, nb);
        for (int v = 0; v < 5 && !rc; v++) {
            int H = c->img, W = c->img;
            const float *x = c->xb;
            if (v > 0) {
                if ((rc = s_transform(c, nb, &views[v], &H, &W))) break;
                x = c->xg;
            }
            if ((rc = s_forward(c, x, nb, H, W, 0, err))) break;
            s_block_means(c, *out + (size_t)v * vstride + (size_t)i0 * C, stride);
        }
    }
    return rc;
}

// One probe task on block l: the rows of views vs[0..nv) with label = position in vs.
static int s_probe_task(s_ctx *c, const float *ftr, const float *fte, int l, const int *vs, int nv,
                        double *top1, char err[SER_ERR_LEN]) {
    int C = c->C, L = c->L, ntr = c->ed.tr.n, nte = c->ed.te.n;
    int n1 = nv * ntr, n2 = nv * nte;
    float *xtr = ser_xmalloc(sizeof(float) * (size_t)n1 * C);
    float *xte = ser_xmalloc(sizeof(float) * (size_t)n2 * C);
    int *ytr = ser_xmalloc(sizeof(int) * (size_t)n1), *yte = ser_xmalloc(sizeof(int) * (size_t)n2);
    int *grp = ser_xmalloc(sizeof(int) * (size_t)n1);
    for (int a = 0; a < nv; a++) {
        const float *src = ftr + ((size_t)vs[a] * L + l) * (size_t)ntr * C;
        memcpy(xtr + (size_t)a * ntr * C, src, sizeof(float) * (size_t)ntr * C);
        const float *st = fte + ((size_t)vs[a] * L + l) * (size_t)nte * C;
        memcpy(xte + (size_t)a * nte * C, st, sizeof(float) * (size_t)nte * C);
        for (int i = 0; i < ntr; i++) ytr[a * ntr + i] = a, grp[a * ntr + i] = i;
        for (int i = 0; i < nte; i++) yte[a * nte + i] = a;
    }
    float *mean = ser_xmalloc(sizeof(float) * (size_t)C), *sd = ser_xmalloc(sizeof(float) * (size_t)C);
    ser_eval_standardize(xtr, n1, C, mean, sd);
    ser_eval_standardize_apply(xte, n2, C, mean, sd);
    uint8_t *isv = ser_xmalloc((size_t)n1);
    ser_eval_val_mask(isv, n1, 0.1, c->o.seed, grp, ntr);
    ser_eval_linear_opts lo;
    ser_eval_linear_opts_default(&lo);
    lo.epochs = c->o.probe_epochs;
    lo.seed = c->o.seed;
    ser_eval_select sel;
    ser_eval_linear m;
    int rc = ser_eval_linear_select(&m, &sel, xtr, ytr, n1, C, nv, isv, c->o.lrs, c->o.nlr, &lo, err);
    if (!rc) {
        float *sc = ser_xmalloc(sizeof(float) * (size_t)n2 * nv);
        ser_eval_linear_scores(&m, sc, xte, n2);
        *top1 = ser_eval_topk(sc, yte, n2, nv).top1;
        free(sc);
        ser_eval_linear_free(&m);
    }
    free(xtr), free(xte), free(ytr), free(yte), free(grp), free(mean), free(sd), free(isv);
    return rc;
}

static int s_mode_probe(s_ctx *c, char err[SER_ERR_LEN]) {
    float *ftr = NULL, *fte = NULL;
    int rc = s_probe_features(c, &c->ed.tr, &ftr, err);
    if (!rc) rc = s_probe_features(c, &c->ed.te, &fte, err);
    static const int rot[4] = {0, 1, 2, 3}, flip[2] = {0, 4};
    double acc[2][64];
    int L = c->L < 64 ? c->L : 64;
    for (int l = 0; l < L && !rc; l++) {
        rc = s_probe_task(c, ftr, fte, l, rot, 4, &acc[0][l], err);
        if (!rc) rc = s_probe_task(c, ftr, fte, l, flip, 2, &acc[1][l], err);
    }
    if (!rc) {
        s_put(c, "probe", "epochs", c->o.probe_epochs);
        for (int t = 0; t < 2; t++)
            for (int l = 0; l < L; l++) {
                char key[64];
                snprintf(key, sizeof key, "%s.block%d", t ? "hflip" : "rotation", l + 1);
                s_put(c, "probe", key, acc[t][l]);
            }
    }
    free(ftr), free(fte);
    return rc;
}

static int s_mode_robust(s_ctx *c, char err[SER_ERR_LEN]) {
    int nG = c->nG, nl = c->nl, ncls = c->ed.ncls, rc = SER_OK;
    int ncond = nG + c->o.ncorr * c->o.nsev;
    long *correct = ser_xcalloc((size_t)ncond, sizeof(long));
    float *sc = ser_xmalloc(sizeof(float) * (size_t)c->B * ncls);
    const ser_eval_set *s = &c->ed.te;
    for (int i0 = 0; i0 < s->n && !rc; i0 += c->B) {
        int nb = s->n - i0 < c->B ? s->n - i0 : c->B;
        if ((rc = s_load_u8(c, s, i0, nb, err))) break;
        for (int j = 0; j < ncond && !rc; j++) {
            int H = c->img, W = c->img;
            const float *x = c->xb;
            if (j < nG) {
                s_normalise_batch(c, c->u8, nb);
                if ((rc = s_transform(c, nb, &c->G[j], &H, &W))) break;
                x = c->xg;
            } else {
                int t = c->o.corr[(j - nG) / c->o.nsev], sv = c->o.sev[(j - nG) % c->o.nsev];
                if ((rc = s_corrupt_batch(c, s, i0, nb, t, sv, err))) break;
                s_normalise_batch(c, c->u8c, nb);
            }
            if ((rc = s_forward(c, x, nb, H, W, nl, err))) break;
            ser_eval_linear_scores(&c->lin, sc, c->acts.last_cls, nb);
            for (int q = 0; q < nb; q++)
                correct[j] += ser_eval_rank(sc + (size_t)q * ncls, ncls, s->y[i0 + q]) == 0;
        }
    }
    if (!rc) {
        float *sc2 = ser_xmalloc(sizeof(float) * (size_t)s->n * ncls);
        ser_eval_linear_scores(&c->lin, sc2, c->last_te, s->n);
        s_put(c, "robustness", "clean", ser_eval_topk(sc2, s->y, s->n, ncls).top1);
        free(sc2);
        for (int j = 0; j < nG; j++) s_put(c, "robustness", c->gname[j], 100.0 * correct[j] / s->n);
        double all = 0;
        for (int a = 0; a < c->o.ncorr; a++) {
            double m = 0;
            char key[64];
            const char *name = ser_corrupt_name(c->o.corr[a]);
            for (int b = 0; b < c->o.nsev; b++) {
                double v = 100.0 * correct[nG + a * c->o.nsev + b] / s->n;
                snprintf(key, sizeof key, "%s.s%d", name, c->o.sev[b]);
                s_put(c, "robustness", key, v);
                m += v;
            }
            snprintf(key, sizeof key, "%s.mean", name);
            s_put(c, "robustness", key, m / c->o.nsev);
            all += m / c->o.nsev;
        }
        if (c->o.ncorr) s_put(c, "robustness", "mean_corruption", all / c->o.ncorr);
    }
    free(correct), free(sc);
    return rc;
}

// --- the command -------------------------------------------------------------------------------------

static int s_parse(s_opts *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->train_limit = 0, o->test_limit = 0, o->k = 20, o->temperature = 0.07, o->epochs = 100;
    o->probe_epochs = 30;
    static const double lrs[] = {0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0};
    o->nlr = (int)(sizeof lrs / sizeof lrs[0]);
    memcpy(o->lrs, lrs, sizeof lrs);
    o->nsev = 5;
    for (int i = 0; i < 5; i++) o->sev[i] = i + 1;
    o->ncorr = SER_CORRUPT_COUNT;
    for (int i = 0; i < SER_CORRUPT_COUNT; i++) o->corr[i] = i;
    static const struct option opts[] = {
        {"checkpoint", required_argument, 0, 'c'}, {"config", required_argument, 0, 'C'},
        {"set", required_argument, 0, 's'},        {"random-init", no_argument, 0, 'r'},
        {"pixels", no_argument, 0, 'P'},
        {"data", required_argument, 0, 'd'},       {"train-limit", required_argument, 0, 'n'},
        {"test-limit", required_argument, 0, 'N'}, {"json", required_argument, 0, 'j'},
        {"threads", required_argument, 0, 't'},    {"seed", required_argument, 0, 'S'},
        {"k", required_argument, 0, 'k'},          {"temperature", required_argument, 0, 'T'},
        {"epochs", required_argument, 0, 'e'},     {"lr", required_argument, 0, 'l'},
        {"probe-epochs", required_argument, 0, 'p'}, {"batch", required_argument, 0, 'b'},
        {"severities", required_argument, 0, 'v'}, {"corruptions", required_argument, 0, 'x'},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    int ch, bad = 0;
    optind = 1;
    char *end;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': o->ckpt = optarg; break;
        case 'C': o->config = optarg; break;
        case 's':
            if (o->nset == S_MAX_SET) {
                fprintf(stderr, "ser eval: at most %d --set options\n", S_MAX_SET);
                return 2;
            }
            o->sets[o->nset++] = optarg;
            break;
        case 'r': o->random_init = 1; break;
        case 'P': o->pixels = 1; break;
        case 'd': o->data = optarg; break;
        case 'n': bad |= s_int(optarg, 0, 1 << 30, &o->train_limit); break;
        case 'N': bad |= s_int(optarg, 0, 1 << 30, &o->test_limit); break;
        case 'j': o->json = optarg; break;
        case 't': bad |= s_int(optarg, 1, 4096, &o->threads); break;
        case 'S': {
            unsigned long long v = strtoull(optarg, &end, 10);
            if (!*optarg || *end) bad = -1;
            o->seed = v;
            break;
        }
        case 'k': bad |= s_int(optarg, 1, 100000, &o->k); break;
        case 'T': bad |= s_dbl(optarg, 1e-6, 1e6, &o->temperature); break;
        case 'e': bad |= s_int(optarg, 1, 100000, &o->epochs); break;
        case 'p': bad |= s_int(optarg, 1, 100000, &o->probe_epochs); break;
        case 'b': bad |= s_int(optarg, 1, 65536, &o->batch); break;
        case 'l': {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", optarg);
            o->nlr = 0;
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
                if (o->nlr == SER_EVAL_MAX_LRS || s_dbl(t, 1e-9, 1e3, &o->lrs[o->nlr])) bad = -1;
                else o->nlr++;
            }
            if (!o->nlr) bad = -1;
            break;
        }
        case 'v': {
            char buf[64];
            snprintf(buf, sizeof buf, "%s", optarg);
            o->nsev = 0;
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
                if (o->nsev == 5 || s_int(t, 1, 5, &o->sev[o->nsev])) bad = -1;
                else o->nsev++;
            }
            if (!o->nsev) bad = -1;
            break;
        }
        case 'x': {
            char buf[1024];
            snprintf(buf, sizeof buf, "%s", optarg);
            o->ncorr = 0;
            if (strcmp(buf, "none") == 0) break;
            if (strcmp(buf, "all") == 0) {
                o->ncorr = SER_CORRUPT_COUNT;
                break;
            }
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
                int ty = ser_corrupt_from_name(t);
                if (ty < 0 || o->ncorr == SER_CORRUPT_COUNT) {
                    fprintf(stderr, "ser eval: unknown corruption '%s'\n", t);
                    bad = -1;
                } else {
                    o->corr[o->ncorr++] = ty;
                }
            }
            break;
        }
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (bad) {
        fprintf(stderr, "ser eval: bad option value (see ser eval --help)\n");
        return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "ser eval: no mode given\n");
        s_usage(stderr);
        return 2;
    }
    if (optind + 1 < argc) {
        fprintf(stderr, "ser eval: unexpected argument '%s'\n", argv[optind + 1]);
        return 2;
    }
    if (s_parse_modes(argv[optind], &o->modes)) return 2;
    if (o->pixels && o->modes != S_KNN) {
        fprintf(stderr, "ser eval: --pixels is a kNN baseline: give the mode knn alone\n");
        return 2;
    }
    if (o->pixels && !o->ckpt && o->config) o->random_init = 1;  // the job gives the image size
    if (!o->ckpt && !(o->random_init && o->config)) {
        fprintf(stderr, "ser eval: --checkpoint PATH is required (or --random-init with "
                        "--config)\n");
        return 2;
    }
    return -1;  // go on
}

static void s_ctx_free(s_ctx *c) {
    ser_vit_acts_free(&c->acts);
    ser_backbone_free(&c->bb);
    if (c->tj)
        for (int t = 0; t < c->nthr; t++)
            if (c->tj[t]) tjDestroy(c->tj[t]);
    free(c->tj);
    ser_eval_data_free(&c->ed);
    free(c->u8), free(c->u8c), free(c->xb), free(c->xg);
    free(c->cls_tr), free(c->cls_te), free(c->last_tr), free(c->last_te);
    ser_eval_linear_free(&c->lin);
    cJSON_Delete(c->root);
    free(c->rows);
}

static int s_load_model(s_ctx *c, char err[SER_ERR_LEN]) {
    ser_config cfg;
    int have_cfg = 0, rc;
    if (c->o.config || c->o.nset) {
        ser_config_defaults(&cfg);
        if (c->o.config) {
            rc = ser_config_load(&cfg, c->o.config, c->o.nset, c->o.sets, err);
        } else {
            rc = SER_OK;
            for (int i = 0; i < c->o.nset && !rc; i++) rc = ser_config_set_arg(&cfg, c->o.sets[i], err);
            if (!rc) rc = ser_config_validate(&cfg, err);
        }
        if (rc) return rc;
        have_cfg = 1;
    }
    if (c->o.ckpt) {
        char e2[SER_ERR_LEN];
        rc = ser_backbone_load(&c->bb, c->o.ckpt, have_cfg ? &cfg : NULL, e2);
        if (rc) return ser_errf(err, rc, "checkpoint: %s", e2);
        if (c->o.random_init) {
            cfg = c->bb.cfg;
            have_cfg = 1;
            ser_backbone_free(&c->bb);
        }
    }
    if (c->o.random_init) {
        rc = ser_backbone_init_random(&c->bb, &cfg, (uint64_t)cfg.data.seed, err);
        if (rc) return rc;
    }
    return SER_OK;
}

static int s_run(s_ctx *c) {
    char err[SER_ERR_LEN] = "";
    double t0 = ser_time_sec();
    int rc = s_load_model(c, err);
    if (rc) {
        fprintf(stderr, "ser eval: %s\n", err);
        return 1;
    }
    c->v = &c->bb.vit;
    const ser_vit_config *vc = &c->v->cfg;
    c->img = vc->img_size, c->P = vc->patch, c->g0 = vc->img_size / vc->patch, c->L = vc->depth;
    c->C = vc->dim, c->k = vc->cls_layer, c->baseline = c->v->baseline;
    int nmax = c->baseline ? c->L : c->L - c->k;
    c->nl = nmax < 4 ? nmax : 4;
    if (c->nl < 1) c->nl = 1;
    static const double scales[2] = {0.75, 1.25};
    c->nG = ser_eval_std_group(c->G, c->gname, c->g0, scales, 2);
    if ((rc = s_open_data(c, err))) {
        fprintf(stderr, "ser eval: %s\n", err);
        return 1;
    }
    c->nthr = c->o.threads > 0 ? c->o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (c->nthr < 1) c->nthr = 1;
    ser_kernels_set_threads(c->nthr);
    c->tj = ser_xcalloc((size_t)c->nthr, sizeof(void *));
    for (int t = 0; t < c->nthr; t++) c->tj[t] = tjInitDecompress();
    // Batch: the saved activations of one forward at the largest evaluated grid.
    c->B = c->o.batch ? c->o.batch : ser_eval_batch(vc);
    size_t pix = (size_t)c->img * c->img * 3;
    c->u8 = ser_xmalloc(pix * c->B);
    c->u8c = ser_xmalloc(pix * c->B);
    c->xb = ser_xaligned_raw(sizeof(float) * pix * c->B);

    // Header: what is evaluated, on what.
    c->root = cJSON_CreateObject();
    char hash[17], file[4096] = "";
    ser_config_hash_hex(&c->bb.cfg, hash);
    if (c->o.ckpt && ser_backbone_resolve(c->o.ckpt, file, sizeof file, err) != SER_OK)
        snprintf(file, sizeof file, "%s", c->o.ckpt);
    cJSON_AddItemToObject(c->root, "checkpoint", c->o.ckpt ? cJSON_CreateString(file) : cJSON_CreateNull());
    cJSON_AddBoolToObject(c->root, "random_init", c->o.random_init && !c->o.pixels);
    cJSON_AddBoolToObject(c->root, "pixels", c->o.pixels);
    if (c->bb.step >= 0) cJSON_AddNumberToObject(c->root, "step", (double)c->bb.step);
    else cJSON_AddNullToObject(c->root, "step");  // random init, or a file without a position
    cJSON_AddStringToObject(c->root, "config_hash", hash);
    cJSON *jm = cJSON_AddObjectToObject(c->root, "model");
    cJSON_AddNumberToObject(jm, "img_size", c->img);
    cJSON_AddNumberToObject(jm, "patch", c->P);
    cJSON_AddNumberToObject(jm, "dim", c->C);
    cJSON_AddNumberToObject(jm, "depth", c->L);
    cJSON_AddNumberToObject(jm, "cls_layer", c->k);
    cJSON *jd = cJSON_AddObjectToObject(c->root, "dataset");
    cJSON_AddStringToObject(jd, "root", c->ed.root);
    cJSON_AddStringToObject(jd, "kind", c->ed.kind);
    cJSON_AddStringToObject(jd, "test_split", c->ed.test_split);
    cJSON_AddNumberToObject(jd, "classes", c->ed.ncls);
    cJSON_AddNumberToObject(jd, "train", c->ed.tr.n);
    cJSON_AddNumberToObject(jd, "test", c->ed.te.n);
    cJSON_AddNumberToObject(jd, "train_pool", c->ed.tr.total);
    cJSON_AddNumberToObject(jd, "test_pool", c->ed.te.total);
    cJSON_AddNumberToObject(c->root, "seed", (double)c->o.seed);
    cJSON_AddNumberToObject(c->root, "threads", c->nthr);
    char stepbuf[32] = "no step";
    if (c->bb.step >= 0) snprintf(stepbuf, sizeof stepbuf, "step %lld", (long long)c->bb.step);
    printf("ser eval: %s%s (%s, config %s), ViT %d/%d dim %d depth %d cls_layer %d\n",
           c->o.pixels ? "input pixels at the image size of " : c->o.random_init ? "random init of " : "", c->o.ckpt ? file : c->o.config, stepbuf,
           hash, c->img, c->P, c->C, c->L, c->k);
    printf("data: %s %s, %d classes, train %d of %u, test %d of %u (%s)\n", c->ed.kind,
           c->ed.root, c->ed.ncls, c->ed.tr.n, c->ed.tr.total, c->ed.te.n, c->ed.te.total, c->ed.test_split);
    fflush(stdout);

    unsigned m = c->o.modes;
    cJSON *jt = cJSON_AddObjectToObject(c->root, "seconds");
    double t = ser_time_sec();
    int need_cls = (m & S_KNN) != 0, need_last = (m & (S_LINEAR | S_ROBUST)) != 0;
    if (c->o.pixels) {
        rc = s_mode_pixels(c, err);
        m = 0, need_cls = need_last = 0;
    }
    if (need_cls || need_last) {
        rc = s_clean_features(c, &c->ed.tr, need_cls ? &c->cls_tr : NULL, need_last ? &c->last_tr : NULL, err);
        if (!rc)
            rc = s_clean_features(c, &c->ed.te, need_cls ? &c->cls_te : NULL,
                                  need_last ? &c->last_te : NULL, err);
        cJSON_AddNumberToObject(jt, "features", ser_time_sec() - t);
        ser_log(SER_LL_INFO, "eval: clean features of %d + %d images in %.1f s (batch %d, %d threads)",
                c->ed.tr.n, c->ed.te.n, ser_time_sec() - t, c->B, c->nthr);
    }
    typedef int (*s_mode_fn)(s_ctx *, char *);
    static const s_mode_fn fns[S_NMODES] = {s_mode_knn, s_mode_linear, s_mode_equiv, s_mode_probe,
                                            s_mode_robust};
    for (int i = 0; i < S_NMODES && !rc; i++) {
        int want = (m >> i) & 1;
        if (i == 1 && (m & S_ROBUST)) want = 1;  // robustness evaluates the linear classifier
        if (!want) continue;
        t = ser_time_sec();
        rc = fns[i](c, err);
        cJSON_AddNumberToObject(jt, s_mode_names[i], ser_time_sec() - t);
        if (!rc) ser_log(SER_LL_INFO, "eval: %s done in %.1f s", s_mode_names[i], ser_time_sec() - t);
    }
    s_print_table(c);  // what was measured, also when a mode failed
    if (rc) {
        fprintf(stderr, "ser eval: %s\n", err[0] ? err : ser_strerror(rc));
        return 1;
    }
    double total = ser_time_sec() - t0;
    cJSON_AddNumberToObject(jt, "total", total);
    if (c->o.json) {
        char *txt = cJSON_Print(c->root);
        FILE *f = fopen(c->o.json, "w");
        int ok = f && txt && fputs(txt, f) >= 0 && fputc('\n', f) != EOF;
        if (f && fclose(f) != 0) ok = 0;
        free(txt);
        if (!ok) {
            fprintf(stderr, "ser eval: cannot write %s\n", c->o.json);
            return 1;
        }
    }
    fprintf(stderr, "ser eval: done in %.1f s\n", total);
    return 0;
}

int ser_cmd_eval(int argc, char **argv) {
    s_ctx c;
    memset(&c, 0, sizeof c);
    int rc = s_parse(&c.o, argc, argv);
    if (rc >= 0) return rc;
    rc = s_run(&c);
    s_ctx_free(&c);
    return rc;
}
