// ser_engine.c — see ser_engine.h.
#include "ser_engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ser_batch_check(const ser_batch *b, const ser_vit_config *vit, int shards,
                    char err[SER_ERR_LEN]) {
    int B = b->n_inv + b->n_eq;
    if (b->n_inv < 0 || b->n_eq < 0 || B < 2)
        return ser_errf(err, SER_ESHAPE, "batch: %d invariant + %d equivariant samples (need >= 2)",
                      b->n_inv, b->n_eq);
    if (shards < 1 || B % shards)
        return ser_errf(err, SER_ESHAPE, "batch: global batch %d is not divisible into %d shards", B,
                      shards);
    if (b->n_inv && (b->img % vit->patch || b->img < vit->patch || !b->inv[0] || !b->inv[1]))
        return ser_errf(err, SER_ESHAPE, "batch: invariant views of %d px with patch %d", b->img,
                      vit->patch);
    for (int e = 0; e < b->n_eq; e++)
        for (int v = 0; v < 2; v++) {
            if (!b->eq[v] || !b->eq[v][e] || !b->g[v])
                return ser_errf(err, SER_EINVAL, "batch: equivariant sample %d view %d missing", e, v);
            if (ser_group_elem_check(&b->g[v][e]))
                return ser_errf(err, SER_EINVAL,
                              "batch: equivariant sample %d view %d: invalid group element "
                              "(rot180 %d hflip %d rot90 %d grid %dx%d)",
                              e, v, b->g[v][e].rot180, b->g[v][e].hflip, b->g[v][e].rot90,
                              b->g[v][e].gh, b->g[v][e].gw);
        }
    if (b->n_local < 0 || b->n_local > SER_MAX_LOCAL)
        return ser_errf(err, SER_ESHAPE, "batch: %d local views (at most %d)", b->n_local,
                        SER_MAX_LOCAL);
    if (b->n_local && (b->local_img % vit->patch || b->local_img < vit->patch))
        return ser_errf(err, SER_ESHAPE, "batch: local views of %d px with patch %d", b->local_img,
                        vit->patch);
    for (int k = 0; k < b->n_local; k++)
        if (!b->local[k]) return ser_errf(err, SER_EINVAL, "batch: local view %d missing", k);
    if (b->n_lpairs < 0 || b->n_lpairs > SER_MAX_LOCAL_PAIRS)
        return ser_errf(err, SER_ESHAPE, "batch: %d local SER pairs per sample (at most %d)",
                        b->n_lpairs, SER_MAX_LOCAL_PAIRS);
    for (int i = 0; b->n_lpairs && i < b->n_eq * b->n_lpairs; i++)
        for (int v = 0; v < 2; v++) {
            if (!b->lpair[v] || !b->lpair[v][i] || !b->lg[v])
                return ser_errf(err, SER_EINVAL, "batch: local SER pair %d of equivariant sample "
                                "%d, view %d missing", i % b->n_lpairs, i / b->n_lpairs, v);
            if (ser_group_elem_check(&b->lg[v][i]))
                return ser_errf(err, SER_EINVAL, "batch: local SER pair %d of equivariant sample "
                                "%d, view %d: invalid group element", i % b->n_lpairs,
                                i / b->n_lpairs, v);
        }
    return SER_OK;
}

void ser_gathered_free(ser_gathered *g) {
    if (!g) return;
    for (int v = 0; v < 2; v++) {
        free(g->qcls[v]), free(g->kcls[v]), free(g->dqcls[v]), free(g->tok[v]), free(g->tokoff[v]);
        free(g->qmap[v]), free(g->kmap[v]), free(g->dqmap[v]);
        free(g->ltok[v]), free(g->ltokoff[v]), free(g->lqmap[v]), free(g->dlqmap[v]);
    }
    for (int k = 0; k < SER_MAX_LOCAL; k++) free(g->lcls[k]), free(g->dlcls[k]);
    for (int v = 0; v < 2 + SER_MAX_LOCAL; v++) free(g->qpool[v]), free(g->dqpool[v]);
    free(g->vparams);
    memset(g, 0, sizeof *g);
}

void ser_engine_free(ser_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->nacts; i++) ser_vit_acts_free(&e->acts[i]);
    free(e->acts);
    ser_vit_acts_free(&e->tacts);
    free(e->shard_grads);
    free(e->dmap);
    free(e->zrow);
    memset(e, 0, sizeof *e);
}

// --- calls -----------------------------------------------------------------------------------
typedef struct s_call {
    int view, eq;  // view 2 + k: local view k; eq: -1 for an invariant or local slice
    int i0, i1;    // rows [i0, i1)
    int pair;      // >= 0: view `view` of local SER pair `pair` of equivariant sample eq
} s_call;

static int s_max_calls(int B, int shards) {
    return 2 + 2 * (B / shards) * (1 + SER_MAX_LOCAL_PAIRS) + SER_MAX_LOCAL;
}

static int s_shard_calls(const ser_batch *b, int s, int shards, s_call *calls) {
    int B = b->n_inv + b->n_eq, per = B / shards, p0 = s * per, p1 = p0 + per, n = 0;
    int i0 = p0, i1 = p1 < b->n_inv ? p1 : b->n_inv;
    if (i1 > i0)
        for (int v = 0; v < 2; v++) calls[n++] = (s_call){v, -1, i0, i1, -1};
    for (int p = p0 > b->n_inv ? p0 : b->n_inv; p < p1; p++)
        for (int v = 0; v < 2; v++) calls[n++] = (s_call){v, p - b->n_inv, 0, 0, -1};
    for (int k = 0; k < b->n_local; k++) calls[n++] = (s_call){2 + k, -1, p0, p1, -1};
    for (int p = p0 > b->n_inv ? p0 : b->n_inv; p < p1; p++)
        for (int k = 0; k < b->n_lpairs; k++)
            for (int v = 0; v < 2; v++) calls[n++] = (s_call){v, p - b->n_inv, 0, 0, k};
    return n;
}

// Index of a local SER pair call's view in lpair / lg / ltok (e-major, then pair).
static size_t s_pair_index(const ser_batch *b, const s_call *c) {
    return (size_t)c->eq * (size_t)b->n_lpairs + (size_t)c->pair;
}

static size_t s_call_pos(const ser_batch *b, const s_call *c) {
    return c->eq < 0 ? (size_t)c->i0 : (size_t)(b->n_inv + c->eq);
}

// Runs one ViT call (student with its activations kept in a, or the teacher) and copies the
// CLS rows (and the map of an equivariant sample) into the gathered arrays.
static int s_call_forward(const ser_batch *b, const s_call *c, ser_vit *vit, ser_vit_acts *a,
                          int student, int flags, uint64_t seed, uint32_t step, ser_gathered *g,
                          char *err) {
    int C = g->C, B, H, W;
    const float *img;
    size_t pos = s_call_pos(b, c);
    int local = c->view >= 2;
    if (c->pair >= 0) {
        B = 1;
        ser_group_image_size(&b->lg[c->view][s_pair_index(b, c)], vit->cfg.patch, &H, &W);
        img = b->lpair[c->view][s_pair_index(b, c)];
    } else if (local) {
        B = c->i1 - c->i0, H = W = b->local_img;
        img = b->local[c->view - 2] + (size_t)c->i0 * 3 * H * W;
    } else if (c->eq < 0) {
        B = c->i1 - c->i0, H = W = b->img;
        img = b->inv[c->view] + (size_t)c->i0 * 3 * H * W;
    } else {
        B = 1;
        ser_group_image_size(&b->g[c->view][c->eq], vit->cfg.patch, &H, &W);
        img = b->eq[c->view][c->eq];
    }
    uint32_t *ids = ser_xmalloc(sizeof(uint32_t) * (size_t)B);
    for (int i = 0; i < B; i++) {
        uint32_t id = b->ids ? b->ids[pos + (size_t)i] : (uint32_t)(pos + (size_t)i);
        ids[i] = id * 2u + (uint32_t)(local ? 0 : c->view);  // two views: two masks
    }
    uint64_t vseed = local ? seed + (uint64_t)(c->view - 1) * 0x9E3779B97F4A7C15ull : seed;
    if (c->pair >= 0) vseed = seed + (uint64_t)(SER_MAX_LOCAL + 1 + c->pair) * 0x9E3779B97F4A7C15ull;
    ser_vit_fwd_opts o = {.train = student, .seed = vseed, .step = step, .sample_ids = ids};
    int rc = ser_vit_forward(vit, a, img, B, H, W, &o, err);
    free(ids);
    if (rc) return rc;
    if (c->pair >= 0) {  // only the block-k map is kept (the student's: no teacher runs these)
        float *dst = g->lqmap[c->view] + g->ltokoff[c->view][s_pair_index(b, c)] * C;
        memcpy(dst, a->map, sizeof(float) * (size_t)a->NP * C);
        return SER_OK;
    }
    float *rows = local ? g->lcls[c->view - 2] : (student ? g->qcls : g->kcls)[c->view];
    memcpy(rows + pos * C, a->cls, sizeof(float) * (size_t)B * C);
    if (c->eq >= 0 && (flags & SER_ENGINE_MAPS)) {
        float *dst = (student ? g->qmap : g->kmap)[c->view] + g->tokoff[c->view][c->eq] * C;
        memcpy(dst, a->map, sizeof(float) * (size_t)a->NP * C);
    }
    if (student && (flags & SER_ENGINE_POOL)) {  // each row's mean over its tokens, in order
        float *dst = g->qpool[c->view] + pos * C;
        double *acc = ser_xcalloc((size_t)C, sizeof(double));
        for (int i = 0; i < B; i++) {
            memset(acc, 0, sizeof(double) * (size_t)C);
            const float *x = a->map + (size_t)i * a->NP * C;
            for (int t = 0; t < a->NP; t++)
                for (int k = 0; k < C; k++) acc[k] += (double)x[(size_t)t * C + k];
            for (int k = 0; k < C; k++) dst[(size_t)i * C + k] = (float)(acc[k] / a->NP);
        }
        free(acc);
    }
    return SER_OK;
}

// The map gradient of a call whose pooled rows have a gradient: dmap (the SER term's, or NULL)
// plus dqpool / tokens on every token of each row, in the engine's scratch.
static const float *s_pool_grad(ser_engine *e, const ser_vit_acts *a, const ser_gathered *g,
                                const s_call *c, size_t pos, const float *dmap) {
    int C = g->C, B = a->B, NP = a->NP;
    size_t n = (size_t)B * NP * C;
    if (n > e->dmap_cap) {
        free(e->dmap);
        e->dmap = ser_xaligned(sizeof(float) * n);
        e->dmap_cap = n;
    }
    const float *dp = g->dqpool[c->view] + pos * C;
    for (int i = 0; i < B; i++)
        for (int t = 0; t < NP; t++) {
            size_t r = ((size_t)i * NP + t) * C;
            for (int k = 0; k < C; k++)
                e->dmap[r + k] = (dmap ? dmap[r + k] : 0.0f) + dp[(size_t)i * C + k] / (float)NP;
        }
    return e->dmap;
}

// --- the two halves --------------------------------------------------------------------------
int ser_engine_forward(ser_engine *e, ser_vit *student, ser_vit *teacher, const ser_batch *b,
                       int shards, int flags, uint64_t seed, uint32_t step, ser_gathered *g,
                       char err[SER_ERR_LEN]) {
    memset(g, 0, sizeof *g);
    int rc = ser_batch_check(b, &student->cfg, shards, err);
    if (rc) return rc;
    if ((flags & SER_ENGINE_POOL) && student->baseline)
        return ser_errf(err, SER_ECONFIG, "pooled block-k maps need the SER layout (cls_layer %d "
                        "< depth %d)", student->cfg.cls_layer, student->cfg.depth);
    g->B = b->n_inv + b->n_eq, g->C = student->cfg.dim, g->n_inv = b->n_inv, g->n_eq = b->n_eq;
    size_t BC = (size_t)g->B * g->C;
    for (int v = 0; v < 2; v++) {
        g->qcls[v] = ser_xaligned(sizeof(float) * BC);
        g->kcls[v] = ser_xaligned(sizeof(float) * BC);
        g->dqcls[v] = ser_xaligned(sizeof(float) * BC);
        g->tok[v] = ser_xcalloc((size_t)b->n_eq + 1, sizeof(int));
        g->tokoff[v] = ser_xcalloc((size_t)b->n_eq + 1, sizeof(size_t));
        g->ntok[v] = ser_group_token_layout(b->g[v], (size_t)b->n_eq, g->tok[v], g->tokoff[v]);
        size_t nm = (g->ntok[v] + 1) * (size_t)g->C;
        g->qmap[v] = ser_xaligned(sizeof(float) * nm);
        g->kmap[v] = ser_xaligned(sizeof(float) * nm);
        g->dqmap[v] = ser_xaligned(sizeof(float) * nm);
    }
    g->n_local = b->n_local;
    if (b->vparams) {
        size_t nv = (size_t)g->B * 2 * SER_VIEW_PARAMS;
        g->vparams = ser_xmalloc(sizeof(float) * nv);
        memcpy(g->vparams, b->vparams, sizeof(float) * nv);
    }
    for (int k = 0; k < b->n_local; k++) {
        g->lcls[k] = ser_xaligned(sizeof(float) * BC);
        g->dlcls[k] = ser_xaligned(sizeof(float) * BC);
    }
    g->n_lpairs = b->n_lpairs;
    if (b->n_lpairs && student->baseline) {
        ser_gathered_free(g);
        return ser_errf(err, SER_ECONFIG, "local SER pairs need the SER layout (cls_layer %d < "
                        "depth %d)", student->cfg.cls_layer, student->cfg.depth);
    }
    for (int v = 0; b->n_lpairs && v < 2; v++) {
        size_t np = (size_t)b->n_eq * b->n_lpairs;
        g->ltok[v] = ser_xcalloc(np + 1, sizeof(int));
        g->ltokoff[v] = ser_xcalloc(np + 1, sizeof(size_t));
        g->lntok[v] = ser_group_token_layout(b->lg[v], np, g->ltok[v], g->ltokoff[v]);
        g->lqmap[v] = ser_xaligned(sizeof(float) * (g->lntok[v] + 1) * (size_t)g->C);
        g->dlqmap[v] = ser_xaligned(sizeof(float) * (g->lntok[v] + 1) * (size_t)g->C);
    }
    g->pool = (flags & SER_ENGINE_POOL) != 0;
    for (int v = 0; g->pool && v < 2 + b->n_local; v++) {
        g->qpool[v] = ser_xaligned(sizeof(float) * BC);
        g->dqpool[v] = ser_xaligned(sizeof(float) * BC);
    }
    int maxc = s_max_calls(g->B, shards), need = shards * maxc;
    if (need > e->nacts) {
        e->acts = realloc(e->acts, sizeof *e->acts * (size_t)need);
        SER_ASSERT(e->acts);
        memset(e->acts + e->nacts, 0, sizeof *e->acts * (size_t)(need - e->nacts));
        e->nacts = need;
    }
    s_call *calls = ser_xcalloc((size_t)maxc, sizeof *calls);
    for (int s = 0; s < shards && !rc; s++) {
        int n = s_shard_calls(b, s, shards, calls);
        for (int i = 0; i < n && !rc; i++) {
            rc = s_call_forward(b, &calls[i], student, &e->acts[s * maxc + i], 1, flags, seed,
                                step, g, err);
            if (!rc && teacher && calls[i].view < 2 && calls[i].pair < 0)
                rc = s_call_forward(b, &calls[i], teacher, &e->tacts, 0, flags, seed, step, g, err);
        }
    }
    free(calls);
    if (rc) ser_gathered_free(g);
    return rc;
}

void ser_engine_backward(ser_engine *e, ser_vit *student, const ser_batch *b, int shards,
                         const ser_gathered *g, int map_grad) {
    size_t off, span = ser_vit_span(student, &off);
    if (off + span > e->cap) {
        free(e->shard_grads);
        e->shard_grads = ser_xaligned(sizeof(float) * (off + span));
        e->cap = off + span;
    }
    float *grads = student->grads, *total = grads + off;
    memset(total, 0, sizeof(float) * span);
    int maxc = s_max_calls(g->B, shards), C = g->C;
    s_call *calls = ser_xcalloc((size_t)maxc, sizeof *calls);
    for (int s = 0; s < shards; s++) {
        memset(e->shard_grads + off, 0, sizeof(float) * span);
        ser_vit_bind(student, student->params, e->shard_grads);
        int n = s_shard_calls(b, s, shards, calls);
        for (int i = 0; i < n; i++) {
            const s_call *c = &calls[i];
            if (c->pair >= 0) {  // a local SER pair's view: its map's gradient only
                if (!map_grad) continue;  // nothing reaches it
                if (e->zrow_cap < C) {
                    free(e->zrow);
                    e->zrow = ser_xaligned(sizeof(float) * (size_t)C);
                    e->zrow_cap = C;
                }
                ser_vit_backward(student, &e->acts[s * maxc + i], e->zrow,
                                 g->dlqmap[c->view] + g->ltokoff[c->view][s_pair_index(b, c)] * C);
                continue;
            }
            size_t pos = s_call_pos(b, c);
            const float *dmap = c->eq >= 0 && map_grad
                                    ? g->dqmap[c->view] + g->tokoff[c->view][c->eq] * C
                                    : NULL;
            if (g->pool) dmap = s_pool_grad(e, &e->acts[s * maxc + i], g, c, pos, dmap);
            const float *dcls = c->view >= 2 ? g->dlcls[c->view - 2] : g->dqcls[c->view];
            ser_vit_backward(student, &e->acts[s * maxc + i], dcls + pos * C, dmap);
        }
        ser_vit_bind(student, student->params, grads);
        const float *sg = e->shard_grads + off;
        for (size_t i = 0; i < span; i++) total[i] += sg[i];
    }
    free(calls);
}
