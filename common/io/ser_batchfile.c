// ser_batchfile.c — see ser_batchfile.h.
#include "ser_batchfile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_safetensors.h"

// ImageNet normalisation applied to uint8 images (the worker normalises; loaders ship uint8).
static const float s_mean[3] = {0.485f, 0.456f, 0.406f}, s_std[3] = {0.229f, 0.224f, 0.225f};

// Images of one tensor: F32 (n,3,H,W) already normalised, or U8 (n,H,W,3) raw RGB. With
// single = 1 the leading n is absent. Writes n*3*H*W floats to *out (malloc'ed).
static int s_images(const ser_st_file *f, const char *name, int single, int *n, int *H, int *W,
                    float **out, char *err) {
    const ser_st_entry *e = ser_st_find(f, name);
    if (!e) {
        snprintf(err, SER_ERR_LEN, "batch: tensor '%s' missing", name);
        return SER_ENOENT;
    }
    int nd = single ? 3 : 4, o = single ? 0 : 1;
    int64_t cnt = single ? 1 : e->shape[0];
    if (e->ndim != nd || cnt < 1) goto shape;
    if (e->dtype == SER_DT_F32) {
        if (e->shape[o] != 3) goto shape;
        *H = (int)e->shape[o + 1], *W = (int)e->shape[o + 2];
        *out = ser_xmalloc(e->nbytes ? e->nbytes : 4);
        memcpy(*out, e->data, e->nbytes);
    } else if (e->dtype == SER_DT_U8) {
        if (e->shape[o + 2] != 3) goto shape;
        *H = (int)e->shape[o], *W = (int)e->shape[o + 1];
        size_t hw = (size_t)*H * *W;
        float *x = ser_xmalloc(sizeof(float) * 3 * hw * (size_t)cnt);
        const uint8_t *u = e->data;
        for (int64_t i = 0; i < cnt; i++)
            for (size_t p = 0; p < hw; p++)
                for (int c = 0; c < 3; c++)
                    x[((size_t)i * 3 + c) * hw + p] =
                        ((float)u[((size_t)i * hw + p) * 3 + c] / 255.0f - s_mean[c]) / s_std[c];
        *out = x;
    } else {
        snprintf(err, SER_ERR_LEN, "batch: tensor '%s' has dtype %s (F32 CHW or U8 HWC expected)",
                 name, ser_dtype_name(e->dtype));
        return SER_EDTYPE;
    }
    *n = (int)cnt;
    return SER_OK;
shape:
    snprintf(err, SER_ERR_LEN, "batch: tensor '%s' has the wrong shape (%s expected)", name,
             single ? "F32 (3,H,W) or U8 (H,W,3)" : "F32 (n,3,H,W) or U8 (n,H,W,3)");
    return SER_ESHAPE;
}

static int s_int_at(const ser_st_entry *e, size_t i, int64_t *v) {
    switch (e->dtype) {
    case SER_DT_I64: *v = ((const int64_t *)e->data)[i]; return 0;
    case SER_DT_I32: *v = ((const int32_t *)e->data)[i]; return 0;
    case SER_DT_U8: *v = ((const uint8_t *)e->data)[i]; return 0;
    case SER_DT_F32: {
        float x = ((const float *)e->data)[i];
        if (x != floorf(x)) return -1;
        *v = (int64_t)x;
        return 0;
    }
    default: return -1;
    }
}

void ser_batchfile_free(ser_batchfile *sb) {
    for (int v = 0; v < 2; v++) {
        free(sb->inv[v]);
        for (int e = 0; sb->eq[v] && e < sb->b.n_eq; e++) free(sb->eq[v][e]);
        free(sb->eq[v]), free(sb->g[v]);
        for (int i = 0; sb->lpair[v] && i < sb->n_lpair_views; i++) free(sb->lpair[v][i]);
        free(sb->lpair[v]), free(sb->lg[v]);
    }
    for (int k = 0; k < SER_MAX_LOCAL; k++) free(sb->local[k]);
    free(sb->vparams);
    free(sb->ids);
    memset(sb, 0, sizeof *sb);  // safe to call again
}

// Group elements (n, 2, 5) of gname and the views "<prefix>.view<v>.<i>" they shape: *n, g[v]
// and img[v] (n each) allocated here (the caller frees them, also on failure).
static int s_group_views(const ser_st_file *f, const ser_st_entry *ge, const char *prefix,
                         int patch, int *n, ser_group_elem *g[2], float **img[2], char *err) {
    if (ge->ndim != 3 || ge->shape[1] != 2 || ge->shape[2] != 5 || ge->shape[0] > 65536) {
        snprintf(err, SER_ERR_LEN, "batch: %s.g must be (n, 2, 5): [rot180, hflip, rot90, gh, "
                 "gw] per view", prefix);
        return SER_ESHAPE;
    }
    int ne = (int)ge->shape[0], rc = SER_OK;
    *n = ne;
    for (int v = 0; v < 2; v++) {
        g[v] = ser_xcalloc((size_t)ne + 1, sizeof(ser_group_elem));
        img[v] = ser_xcalloc((size_t)ne + 1, sizeof(float *));
    }
    for (int e = 0; e < ne && !rc; e++)
        for (int v = 0; v < 2 && !rc; v++) {
            int64_t q[5];
            for (int k = 0; k < 5 && !rc; k++)
                if (s_int_at(ge, ((size_t)e * 2 + v) * 5 + k, &q[k]) || q[k] < 0 || q[k] > 8192)
                    rc = SER_EINVAL;
            if (rc) {
                snprintf(err, SER_ERR_LEN, "batch: %s.g[%d][%d] is not a list of small "
                         "non-negative integers", prefix, e, v);
                break;
            }
            ser_group_elem *ge1 = &g[v][e];
            *ge1 = (ser_group_elem){(uint8_t)q[0], (uint8_t)q[1], (uint8_t)q[2], (int16_t)q[3],
                                    (int16_t)q[4]};
            if (ser_group_elem_check(ge1)) {
                snprintf(err, SER_ERR_LEN, "batch: %s.g[%d][%d] = (%d,%d,%d,%d,%d) is not a "
                         "group element", prefix, e, v, ge1->rot180, ge1->hflip, ge1->rot90,
                         ge1->gh, ge1->gw);
                rc = SER_EINVAL;
                break;
            }
            char name[48];
            snprintf(name, sizeof name, "%s.view%d.%d", prefix, v, e);
            int one, h, w, eh, ew;
            rc = s_images(f, name, 1, &one, &h, &w, &img[v][e], err);
            ser_group_image_size(ge1, patch, &eh, &ew);
            if (!rc && (h != eh || w != ew)) {
                snprintf(err, SER_ERR_LEN, "batch: %s is %dx%d but its group element gives "
                         "%dx%d (patch %d)", name, h, w, eh, ew, patch);
                rc = SER_ESHAPE;
            }
        }
    return rc;
}

int ser_batchfile_load(ser_batchfile *sb, const char *path, int patch, char err[SER_ERR_LEN]) {
    memset(sb, 0, sizeof *sb);
    ser_st_file *f = NULL;
    int rc = ser_st_open(&f, path, err);
    if (rc) return rc;
    int n[2] = {0, 0}, H[2] = {0, 0}, W[2] = {0, 0};
    for (int v = 0; v < 2 && !rc; v++) {
        char name[32];
        snprintf(name, sizeof name, "inv.view%d", v);
        if (ser_st_find(f, name)) rc = s_images(f, name, 0, &n[v], &H[v], &W[v], &sb->inv[v], err);
    }
    if (!rc && (n[0] != n[1] || H[0] != H[1] || W[0] != W[1] || H[0] != W[0])) {
        snprintf(err, SER_ERR_LEN, "batch: inv.view0 and inv.view1 must hold the same number of "
                 "square images of one size (got %d of %dx%d and %d of %dx%d)", n[0], H[0], W[0],
                 n[1], H[1], W[1]);
        rc = SER_ESHAPE;
    }
    sb->b.n_inv = n[0], sb->b.img = H[0];
    const ser_st_entry *ge = rc ? NULL : ser_st_find(f, "eq.g");
    if (ge) rc = s_group_views(f, ge, "eq", patch, &sb->b.n_eq, sb->g, sb->eq, err);
    // Local SER pairs: lpair.g (n_eq * P, 2, 5) and lpair.view<v>.<e * P + k>.
    const ser_st_entry *lge = rc ? NULL : ser_st_find(f, "lpair.g");
    if (lge) {
        int np = 0;
        rc = s_group_views(f, lge, "lpair", patch, &np, sb->lg, sb->lpair, err);
        int P = sb->b.n_eq ? np / sb->b.n_eq : 0;
        if (!rc && (!sb->b.n_eq || np % sb->b.n_eq || P < 1 || P > SER_MAX_LOCAL_PAIRS)) {
            snprintf(err, SER_ERR_LEN, "batch: lpair.g holds %d pairs for %d equivariant samples "
                     "(1 to %d per sample expected)", np, sb->b.n_eq, SER_MAX_LOCAL_PAIRS);
            rc = SER_ESHAPE;
        }
        sb->n_lpair_views = np;
        sb->b.n_lpairs = rc ? 0 : P;
    }
    // Local views: local.view0, local.view1, ... (B, 3, ls, ls), consecutive from 0.
    for (int k = 0; k < SER_MAX_LOCAL && !rc; k++) {
        char name[32];
        snprintf(name, sizeof name, "local.view%d", k);
        if (!ser_st_find(f, name)) break;
        int ln, lh, lw, B = sb->b.n_inv + sb->b.n_eq;
        rc = s_images(f, name, 0, &ln, &lh, &lw, &sb->local[k], err);
        if (!rc && (ln != B || lh != lw || (k && lh != sb->b.local_img) || lh % patch)) {
            snprintf(err, SER_ERR_LEN, "batch: %s must hold %d square images of one size, a "
                     "multiple of the patch %d (got %d of %dx%d)", name, B, patch, ln, lh, lw);
            rc = SER_ESHAPE;
        }
        if (!rc) sb->b.n_local = k + 1, sb->b.local_img = lh;
    }
    // The global views' parameters (AugSelf, EquiMod): vparams (B, 2, SER_VIEW_PARAMS), F32.
    const ser_st_entry *ve = rc ? NULL : ser_st_find(f, "vparams");
    if (ve) {
        int B = sb->b.n_inv + sb->b.n_eq;
        if (ve->dtype != SER_DT_F32 || ve->ndim != 3 || ve->shape[0] != B || ve->shape[1] != 2 ||
            ve->shape[2] != SER_VIEW_PARAMS) {
            snprintf(err, SER_ERR_LEN, "batch: vparams must be F32 (%d, 2, %d)", B,
                     SER_VIEW_PARAMS);
            rc = SER_ESHAPE;
        } else {
            sb->vparams = ser_xmalloc(ve->nbytes);
            memcpy(sb->vparams, ve->data, ve->nbytes);
            for (size_t i = 0; i < ve->numel; i++)
                if (!isfinite(sb->vparams[i])) {
                    snprintf(err, SER_ERR_LEN, "batch: vparams[%zu] is not finite", i);
                    rc = SER_EINVAL;
                    break;
                }
        }
    }
    const ser_st_entry *ie = rc ? NULL : ser_st_find(f, "ids");
    if (ie) {
        int B = sb->b.n_inv + sb->b.n_eq;
        if (ie->ndim != 1 || ie->shape[0] != B) {
            snprintf(err, SER_ERR_LEN, "batch: ids must have shape (%d,)", B);
            rc = SER_ESHAPE;
        } else {
            sb->ids = ser_xcalloc((size_t)B, sizeof(uint32_t));
            for (int i = 0; i < B && !rc; i++) {
                int64_t v;
                if (s_int_at(ie, (size_t)i, &v) || v < 0 || v > UINT32_MAX) {
                    snprintf(err, SER_ERR_LEN, "batch: ids[%d] is not a sample id", i);
                    rc = SER_EINVAL;
                } else {
                    sb->ids[i] = (uint32_t)v;
                }
            }
        }
    }
    ser_st_destroy(&f);
    if (rc) {
        ser_batchfile_free(sb);
        return rc;
    }
    sb->b.inv[0] = sb->inv[0], sb->b.inv[1] = sb->inv[1];
    for (int v = 0; v < 2; v++) {
        sb->b.eq[v] = (const float *const *)sb->eq[v];
        sb->b.g[v] = sb->g[v];
        sb->b.lpair[v] = (const float *const *)sb->lpair[v];
        sb->b.lg[v] = sb->lg[v];
    }
    sb->b.ids = sb->ids;
    for (int k = 0; k < sb->b.n_local; k++) sb->b.local[k] = sb->local[k];
    sb->b.vparams = sb->vparams;
    return SER_OK;
}


void ser_batch_shard(const ser_batch *b, int s, int shards, ser_batch *out, uint32_t *ids) {
    int B = b->n_inv + b->n_eq, per = B / shards, p0 = s * per, p1 = p0 + per;
    int i0 = p0 < b->n_inv ? p0 : b->n_inv, i1 = p1 < b->n_inv ? p1 : b->n_inv;
    int e0 = (p0 > b->n_inv ? p0 : b->n_inv) - b->n_inv, e1 = p1 - b->n_inv > 0 ? p1 - b->n_inv : 0;
    memset(out, 0, sizeof *out);
    out->n_inv = i1 - i0, out->n_eq = e1 - e0, out->img = b->img;
    size_t per_img = (size_t)3 * b->img * b->img;
    for (int v = 0; v < 2; v++) {
        out->inv[v] = b->inv[v] ? b->inv[v] + (size_t)i0 * per_img : NULL;
        out->eq[v] = b->eq[v] ? b->eq[v] + e0 : NULL;
        out->g[v] = b->g[v] ? b->g[v] + e0 : NULL;
    }
    for (int p = p0; p < p1; p++) ids[p - p0] = b->ids ? b->ids[p] : (uint32_t)p;
    out->ids = ids;
    out->n_local = b->n_local, out->local_img = b->local_img;
    size_t per_local = (size_t)3 * b->local_img * b->local_img;
    for (int k = 0; k < b->n_local; k++) out->local[k] = b->local[k] + (size_t)p0 * per_local;
    out->vparams = b->vparams ? b->vparams + (size_t)p0 * 2 * SER_VIEW_PARAMS : NULL;
    out->n_lpairs = b->n_lpairs;
    for (int v = 0; b->n_lpairs && v < 2; v++) {
        out->lpair[v] = b->lpair[v] + (size_t)e0 * b->n_lpairs;
        out->lg[v] = b->lg[v] + (size_t)e0 * b->n_lpairs;
    }
}
