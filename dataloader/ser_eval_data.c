// ser_eval_data.c — see ser_eval_data.h.
#include "ser_eval_data.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ser_dl_ops.h"

// Forward batches are sized to keep the saved activations near this many bytes.
#define S_ACT_BUDGET ((size_t)1 << 30)

static int s_is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

// Labels of the indices idx[0..n) of d (all when idx is NULL) into a new array.
static int *s_labels(ser_dl_data *d, const uint32_t *idx, int n) {
    int *y = ser_xmalloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) y[i] = ser_dl_data_label(d, idx ? idx[i] : (uint32_t)i);
    return y;
}

// Fills s with a subset (limit) of the pool pool[0..npool) (NULL: the whole split).
static void s_take(ser_eval_set *s, ser_dl_data *d, const uint32_t *pool, int npool, int ncls,
                   int limit, uint64_t seed) {
    int *ypool = s_labels(d, pool, npool);
    uint32_t *pick = ser_xmalloc(sizeof(uint32_t) * (size_t)(npool > 0 ? npool : 1));
    int m = ser_eval_subset(pick, ypool, npool, ncls, limit, seed);
    s->d = d;
    s->n = m;
    s->total = (uint32_t)npool;
    s->idx = ser_xmalloc(sizeof(uint32_t) * (size_t)(m > 0 ? m : 1));
    s->y = ser_xmalloc(sizeof(int) * (size_t)(m > 0 ? m : 1));
    for (int i = 0; i < m; i++) {
        s->idx[i] = pool ? pool[pick[i]] : pick[i];
        s->y[i] = ypool[pick[i]];
    }
    free(ypool);
    free(pick);
}

int ser_eval_data_open(ser_eval_data *ed, const char *spec, const ser_config *cfg, int train_limit,
                       int test_limit, uint64_t seed, char err[SER_ERR_LEN]) {
    memset(ed, 0, sizeof *ed);
    int kind = SER_DL_KIND_AUTO;
    const char *root = NULL;
    if (!spec || !spec[0]) {
        if (cfg->data.kind == SER_CONFIG_DATA_SYNTHETIC || !cfg->data.path[0])
            return ser_errf(err, SER_EINVAL, "the job's [data] is %s: give labelled data",
                            cfg->data.kind == SER_CONFIG_DATA_SYNTHETIC
                                ? "synthetic (generated images, nothing to evaluate on)"
                                : "not set");
        root = cfg->data.path;
        kind = cfg->data.kind;  // SER_CONFIG_DATA_* equal SER_DL_KIND_* up to synthetic
    } else if (strncmp(spec, "fashion-mnist", 13) == 0 && (spec[13] == 0 || spec[13] == ':')) {
        kind = SER_DL_KIND_FMNIST;
        if (spec[13] == ':') root = spec + 14;
        else if (cfg->data.kind == SER_CONFIG_DATA_FASHION_MNIST && cfg->data.path[0])
            root = cfg->data.path;
        else root = SER_EVAL_DEFAULT_FMNIST;
    } else if (strncmp(spec, "cifar10:", 8) == 0) {
        kind = SER_DL_KIND_CIFAR10, root = spec + 8;
    } else if (strncmp(spec, "imagefolder:", 12) == 0) {
        kind = SER_DL_KIND_IMAGEFOLDER, root = spec + 12;
    } else {
        root = spec;
    }
    snprintf(ed->root, sizeof ed->root, "%s", root);
    char e2[256];
    ed->dtr = ser_dl_data_open(root, kind, SER_DL_SPLIT_TRAIN, NULL, e2);
    if (!ed->dtr) return ser_errf(err, SER_ENOENT, "dataset: %s", e2);
    kind = ser_dl_data_kind(ed->dtr);
    snprintf(ed->kind, sizeof ed->kind, "%s",
             kind == SER_DL_KIND_CIFAR10 ? "cifar10"
             : kind == SER_DL_KIND_FMNIST ? "fashion-mnist" : "imagefolder");
    // ImageFolder's test split: val/, else test/ (ser_dl_data_open's order); neither: holdout.
    char valdir[4200], testdir[4200];
    snprintf(valdir, sizeof valdir, "%s/val", root);
    snprintf(testdir, sizeof testdir, "%s/test", root);
    int holdout = kind == SER_DL_KIND_IMAGEFOLDER && !s_is_dir(valdir) && !s_is_dir(testdir);
    ed->ncls = ser_dl_data_num_classes(ed->dtr);
    uint32_t ntot = ser_dl_data_count(ed->dtr);
    if (ed->ncls < 2)
        return ser_errf(err, SER_EINVAL, "dataset %s: %d class(es); need at least 2", root, ed->ncls);
    if (holdout) {
        // No val/: a seeded 20% of train (by image) becomes the test split.
        snprintf(ed->test_split, sizeof ed->test_split, "holdout");
        ed->dte = ed->dtr;
        uint8_t *m = ser_xmalloc(ntot ? ntot : 1);
        ser_eval_val_mask(m, (int)ntot, 0.2, seed ^ 0x7e57u, NULL, 0);
        uint32_t *ptr = ser_xmalloc(sizeof(uint32_t) * (ntot ? ntot : 1));
        uint32_t *pte = ser_xmalloc(sizeof(uint32_t) * (ntot ? ntot : 1));
        int a = 0, b = 0;
        for (uint32_t i = 0; i < ntot; i++) m[i] ? (pte[b++] = i) : (ptr[a++] = i);
        s_take(&ed->tr, ed->dtr, ptr, a, ed->ncls, train_limit, seed);
        s_take(&ed->te, ed->dte, pte, b, ed->ncls, test_limit, seed + 1);
        free(m), free(ptr), free(pte);
        ser_log(SER_LL_INFO, "eval data %s: no val/ or test/ folder: the test split is a seeded "
                "20%% of train (%d images)", root, b);
    } else {
        ed->dte = ser_dl_data_open(root, kind, SER_DL_SPLIT_VAL, NULL, e2);
        if (!ed->dte) return ser_errf(err, SER_ENOENT, "dataset (test split): %s", e2);
        // "val" or "test": the folder ImageFolder read (the in-memory datasets' own test files
        // are "val" here, as before).
        const char *dir = ser_dl_data_dir(ed->dte), *slash = strrchr(dir, '/');
        snprintf(ed->test_split, sizeof ed->test_split, "%s",
                 kind == SER_DL_KIND_IMAGEFOLDER && slash ? slash + 1 : "val");
        int nc2 = ser_dl_data_num_classes(ed->dte);
        if (nc2 != ed->ncls)
            return ser_errf(err, SER_ESHAPE, "dataset %s: train has %d classes, val %d", root,
                            ed->ncls, nc2);
        s_take(&ed->tr, ed->dtr, NULL, (int)ntot, ed->ncls, train_limit, seed);
        s_take(&ed->te, ed->dte, NULL, (int)ser_dl_data_count(ed->dte), ed->ncls, test_limit,
               seed + 1);
    }
    if (ed->tr.n < 2 || ed->te.n < 1)
        return ser_errf(err, SER_EINVAL, "dataset %s: %d train and %d test images (need >= 2, >= 1)",
                        root, ed->tr.n, ed->te.n);
    return SER_OK;
}

void ser_eval_data_free(ser_eval_data *ed) {
    if (!ed) return;
    if (ed->dte != ed->dtr) ser_dl_data_destroy(&ed->dte);
    ser_dl_data_destroy(&ed->dtr);
    free(ed->tr.idx), free(ed->tr.y), free(ed->te.idx), free(ed->te.y);
    memset(ed, 0, sizeof *ed);
}

int ser_eval_load_u8(const ser_eval_set *s, int i0, int nb, int img, uint8_t *u8, void **tj,
                     int nthr, char err[SER_ERR_LEN]) {
    int rc = SER_OK;
    size_t per = (size_t)img * img * 3;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthr)
    for (int q = 0; q < nb; q++) {
        ser_dl_image im = {0, 0, NULL};
        int t = omp_get_thread_num();
        int r = ser_dl_data_load(s->d, s->idx[i0 + q], t < nthr ? &tj[t] : NULL, &im, NULL);
        if (r) {
#pragma omp critical(s_eval_err)
            if (!rc) rc = ser_errf(err, r, "dataset: no image of the split can be decoded");
        } else {
            uint8_t *o = u8 + (size_t)q * per;
            if (im.w == img && im.h == img) memcpy(o, im.px, per);
            else ser_dl_pil_resize(o, img, img, im.px, im.w * 3, 0, 0, im.w, im.h,
                                   SER_DL_INTERP_BILINEAR);
        }
        ser_dl_image_free(&im);
    }
    return rc;
}

int ser_eval_batch(const ser_vit_config *vc) {
    ser_group_elem G[SER_EVAL_MAX_GROUP];
    char names[SER_EVAL_MAX_GROUP][24];
    static const double scales[2] = {0.75, 1.25};
    int g0 = vc->img_size / vc->patch, gmax = g0;
    int nG = ser_eval_std_group(G, names, g0, scales, 2);
    for (int j = 0; j < nG; j++) gmax = G[j].gh > gmax ? G[j].gh : gmax;
    size_t T = (size_t)gmax * gmax + 1, C = (size_t)vc->dim;
    size_t per_img = sizeof(float) * ((size_t)vc->depth * T * (16 * C + 2 * (size_t)vc->mlp_hidden)
                                      + (size_t)vc->depth * vc->heads * T * T);
    int B = (int)(S_ACT_BUDGET / per_img);
    return B < 1 ? 1 : B > 256 ? 256 : B;
}

int ser_eval_cls_features(ser_vit *v, ser_vit_acts *acts, const ser_eval_set *s, int B,
                          const uint8_t *cache, void **tj, int nthr, float *out,
                          char err[SER_ERR_LEN]) {
    int img = v->cfg.img_size, C = v->cfg.dim, rc = SER_OK;
    size_t pix = (size_t)img * img * 3;
    uint8_t *u8 = cache ? NULL : ser_xmalloc(pix * (size_t)B);
    float *xb = ser_xaligned_raw(sizeof(float) * pix * (size_t)B);
    ser_vit_fwd_opts fo;
    memset(&fo, 0, sizeof fo);
    for (int i0 = 0; i0 < s->n && !rc; i0 += B) {
        int nb = s->n - i0 < B ? s->n - i0 : B;
        const uint8_t *src = cache ? cache + (size_t)i0 * pix : u8;
        if (!cache && (rc = ser_eval_load_u8(s, i0, nb, img, u8, tj, nthr, err))) break;
#pragma omp parallel for schedule(static) num_threads(nthr)
        for (int q = 0; q < nb; q++)
            ser_dl_normalise(xb + (size_t)q * 3 * img * img, src + (size_t)q * pix, img, img);
        if ((rc = ser_vit_forward(v, acts, xb, nb, img, img, &fo, err))) break;
        memcpy(out + (size_t)i0 * C, acts->cls, sizeof(float) * (size_t)nb * C);
    }
    free(u8);
    free(xb);
    return rc;
}

int ser_eval_knn_acc(ser_eval_acc *out, const float *ftr, const int *ytr, int ntr,
                     const float *fte, const int *yte, int nte, int C, int ncls, int k, double T) {
    float *tr = ser_xmalloc(sizeof(float) * (size_t)ntr * C);
    float *te = ser_xmalloc(sizeof(float) * (size_t)nte * C);
    float *sc = ser_xmalloc(sizeof(float) * (size_t)nte * ncls);
    memcpy(tr, ftr, sizeof(float) * (size_t)ntr * C);
    memcpy(te, fte, sizeof(float) * (size_t)nte * C);
    ser_eval_l2_normalize(tr, ntr, C);
    ser_eval_l2_normalize(te, nte, C);
    int rc = ser_eval_knn_scores(sc, tr, ytr, ntr, te, nte, C, ncls, k, (float)T);
    if (!rc) *out = ser_eval_topk(sc, yte, nte, ncls);
    free(tr), free(te), free(sc);
    return rc;
}
