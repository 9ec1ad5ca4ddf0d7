// ser_shard.c — see ser_shard.h.
#include "ser_shard.h"

#include <stdlib.h>
#include <string.h>

static const char *const s_cls[4] = {"qcls0", "qcls1", "kcls0", "kcls1"};
static const char *const s_maps[4] = {"qmap0", "qmap1", "kmap0", "kmap1"};
static const char *const s_lmaps[2] = {"lqmap0", "lqmap1"}, *const s_dlmaps[2] = {"dlqmap0",
                                                                                 "dlqmap1"};
static const char *const s_lcls[SER_MAX_LOCAL] = {"lcls0", "lcls1", "lcls2", "lcls3", "lcls4",
                                                  "lcls5", "lcls6", "lcls7", "lcls8", "lcls9"};
static const char *const s_dlcls[SER_MAX_LOCAL] = {"dlcls0", "dlcls1", "dlcls2", "dlcls3",
                                                   "dlcls4", "dlcls5", "dlcls6", "dlcls7",
                                                   "dlcls8", "dlcls9"};
static const char *const s_qpool[2 + SER_MAX_LOCAL] = {
    "qpool0", "qpool1", "qpool2", "qpool3", "qpool4",  "qpool5",
    "qpool6", "qpool7", "qpool8", "qpool9", "qpool10", "qpool11"};
static const char *const s_dqpool[2 + SER_MAX_LOCAL] = {
    "dqpool0", "dqpool1", "dqpool2", "dqpool3", "dqpool4",  "dqpool5",
    "dqpool6", "dqpool7", "dqpool8", "dqpool9", "dqpool10", "dqpool11"};
_Static_assert(SER_MAX_LOCAL == 10, "one frame name per local view");

int ser_shard_pack_params(ser_wire_tensor out[2], const float *student, const float *teacher,
                          size_t span) {
    out[0] = (ser_wire_tensor){"student", 1, {(int64_t)span}, student};
    if (!teacher) return 1;
    out[1] = (ser_wire_tensor){"teacher", 1, {(int64_t)span}, teacher};
    return 2;
}

void ser_shard_parse_params(const ser_wire_msg *m, size_t span, int want_teacher,
                            const float **student, const float **teacher) {
    *student = ser_wire_find(m, "student", span);
    *teacher = want_teacher ? ser_wire_find(m, "teacher", span) : NULL;
}

static void s_pack_groups(float *out, const ser_group_elem *const g[2], int n) {
    for (int q = 0; q < n; q++)
        for (int v = 0; v < 2; v++) {
            const ser_group_elem *ge = &g[v][q];
            float *o = out + (q * 2 + v) * 5;
            o[0] = ge->rot180, o[1] = ge->hflip, o[2] = ge->rot90, o[3] = ge->gh, o[4] = ge->gw;
        }
}

// The group elements of a (count, 2, 5) float frame: valid, integral, grids at most grid_max a
// side; g[v] (count + 1) allocated here and token totals in ntok. SER_EFORMAT (nothing kept).
static int s_parse_groups(const float *gf, int count, int grid_max, ser_group_elem *g[2],
                          size_t ntok[2]) {
    g[0] = ser_xcalloc((size_t)count + 1, sizeof(ser_group_elem));
    g[1] = ser_xcalloc((size_t)count + 1, sizeof(ser_group_elem));
    ntok[0] = ntok[1] = 0;
    int bad = 0;
    for (int e = 0; e < count && !bad; e++)
        for (int v = 0; v < 2 && !bad; v++) {
            float q[5];  // frames carry no alignment guarantee: copy, do not dereference
            memcpy(q, gf + (e * 2 + v) * 5, sizeof q);
            // Integral and in range before any conversion (rot180, hflip in {0, 1}, rot90 in
            // 0..3, gh, gw <= 4096): a float out of a type's range converts undefined.
            static const float hi[5] = {1, 1, 3, 4096, 4096};
            for (int k = 0; k < 5; k++)
                bad |= !(q[k] >= 0 && q[k] <= hi[k] && q[k] == (float)(int)q[k]);
            if (bad) break;
            g[v][e] = (ser_group_elem){(uint8_t)q[0], (uint8_t)q[1], (uint8_t)q[2], (int16_t)q[3],
                                       (int16_t)q[4]};
            bad |= ser_group_elem_check(&g[v][e]) != SER_OK;
            int r, cc;
            ser_group_view_grid(&g[v][e], &r, &cc);
            bad |= r > grid_max || cc > grid_max;  // no loader draws such a view
            ntok[v] += (size_t)r * cc;
        }
    if (bad) {
        free(g[0]), free(g[1]);
        g[0] = g[1] = NULL;
        return SER_EFORMAT;
    }
    return SER_OK;
}

int ser_shard_pack_forward(ser_wire_tensor out[SER_SHARD_MAX_FWD], const ser_gathered *g,
                           const ser_batch *b, int has_teacher, float *gbuf) {
    int C = g->C, B = g->B, n = 0;
    for (int i = 0; i < 4; i++) {
        if (i >= 2 && !has_teacher) break;
        out[n++] = (ser_wire_tensor){s_cls[i], 2, {B, C}, i < 2 ? g->qcls[i] : g->kcls[i - 2]};
    }
    for (int k = 0; k < g->n_local; k++)
        out[n++] = (ser_wire_tensor){s_lcls[k], 2, {B, C}, g->lcls[k]};
    if (g->vparams)
        out[n++] = (ser_wire_tensor){"vparams", 3, {B, 2, SER_VIEW_PARAMS}, g->vparams};
    for (int v = 0; g->pool && v < 2 + g->n_local; v++)
        out[n++] = (ser_wire_tensor){s_qpool[v], 2, {B, C}, g->qpool[v]};
    if (b->n_eq == 0) return n;
    for (int i = 0; i < 4; i++) {
        if (i >= 2 && !has_teacher) break;
        out[n++] = (ser_wire_tensor){s_maps[i], 2, {(int64_t)g->ntok[i & 1], C},
                                     i < 2 ? g->qmap[i] : g->kmap[i - 2]};
    }
    s_pack_groups(gbuf, b->g, b->n_eq);
    out[n++] = (ser_wire_tensor){"g", 3, {b->n_eq, 2, 5}, gbuf};
    if (g->n_lpairs) {  // the local SER pairs: after g in gbuf
        int np = b->n_eq * g->n_lpairs;
        float *lbuf = gbuf + (size_t)b->n_eq * 10;
        s_pack_groups(lbuf, b->lg, np);
        out[n++] = (ser_wire_tensor){"lg", 3, {np, 2, 5}, lbuf};
        for (int v = 0; v < 2; v++)
            out[n++] = (ser_wire_tensor){s_lmaps[v], 2, {(int64_t)g->lntok[v], C}, g->lqmap[v]};
    }
    return n;
}

void ser_shard_fwd_free(ser_shard_fwd *f) {
    free(f->g[0]), free(f->g[1]), free(f->lg[0]), free(f->lg[1]);
    f->g[0] = f->g[1] = f->lg[0] = f->lg[1] = NULL;
}

int ser_shard_parse_forward(const ser_wire_msg *m, int rows, int C, int has_teacher, int n_local,
                            int want_vparams, int want_pool, int want_lpairs, int want_n_eq,
                            int grid_max, ser_shard_fwd *out) {
    memset(out, 0, sizeof *out);
    out->rows = rows, out->C = C;
    size_t nr = (size_t)rows, nsets = has_teacher ? 4 : 2;
    if (n_local < 0 || n_local > SER_MAX_LOCAL || want_lpairs < 0 ||
        want_lpairs > SER_MAX_LOCAL_PAIRS)
        return SER_EFORMAT;
    for (size_t i = 0; i < nsets; i++)
        if (!(out->cls[i] = ser_wire_find(m, s_cls[i], nr * (size_t)C))) return SER_EFORMAT;
    for (int k = 0; k < n_local; k++)
        if (!(out->lcls[k] = ser_wire_find(m, s_lcls[k], nr * (size_t)C))) {
            memset(out, 0, sizeof *out);
            return SER_EFORMAT;
        }
    if (want_vparams && !(out->vparams = ser_wire_find(m, "vparams", nr * 2 * SER_VIEW_PARAMS))) {
        memset(out, 0, sizeof *out);
        return SER_EFORMAT;
    }
    for (int v = 0; want_pool && v < 2 + n_local; v++)
        if (!(out->qpool[v] = ser_wire_find(m, s_qpool[v], nr * (size_t)C))) {
            memset(out, 0, sizeof *out);
            return SER_EFORMAT;
        }
    // Group elements: (n_eq, 2, 5) as floats; n_eq from the tensor's own shape.
    int n_eq = 0;
    const float *gf = NULL;
    for (int i = 0; i < m->n; i++) {
        const Ser__TensorMeta *t = m->env->tensors[i];
        if (strcmp(t->name, "g") == 0 && t->n_shape == 3 && t->shape[1] == 2 && t->shape[2] == 5 &&
            t->shape[0] >= 0 && t->shape[0] <= (int64_t)nr) {
            n_eq = (int)t->shape[0];
            gf = ser_wire_find(m, "g", (size_t)n_eq * 10);
        }
    }
    if (n_eq && !gf) return SER_EFORMAT;
    if (want_n_eq >= 0 && n_eq != want_n_eq) return SER_ESHAPE;
    ser_group_elem *g[2];
    size_t ntok[2];
    int bad = s_parse_groups(gf, n_eq, grid_max, g, ntok) != SER_OK;
    for (size_t i = 0; i < nsets && !bad && n_eq; i++)
        bad |= !(out->maps[i] = ser_wire_find(m, s_maps[i], ntok[i & 1] * (size_t)C));
    // The local SER pairs (want_lpairs per equivariant sample): lg (n_eq * P, 2, 5), lqmap0/1.
    const float *lgf = NULL;
    int np = n_eq * want_lpairs;
    if (!bad && want_lpairs > 0 && np > 0) {
        lgf = ser_wire_find(m, "lg", (size_t)np * 10);
        bad |= lgf == NULL || s_parse_groups(lgf, np, grid_max, out->lg, out->lntok) != SER_OK;
        for (int v = 0; v < 2 && !bad; v++)
            bad |= !(out->lmaps[v] = ser_wire_find(m, s_lmaps[v], out->lntok[v] * (size_t)C));
    }
    if (bad) {
        free(g[0]), free(g[1]);
        ser_shard_fwd_free(out);
        memset(out, 0, sizeof *out);
        return SER_EFORMAT;
    }
    out->n_eq = n_eq, out->g[0] = g[0], out->g[1] = g[1];
    out->ntok[0] = ntok[0], out->ntok[1] = ntok[1];
    out->n_lpairs = want_lpairs;
    return SER_OK;
}

static const char *const s_bwd[4] = {"dqcls0", "dqcls1", "dqmap0", "dqmap1"};

int ser_shard_pack_backward(ser_wire_tensor out[SER_SHARD_MAX_BWD], const ser_gathered *g,
                            int row0, int rows, const size_t map0[2], const size_t ntok[2],
                            const size_t lmap0[2], const size_t lntok[2]) {
    int C = g->C;
    for (int v = 0; v < 2; v++) {
        out[v] = (ser_wire_tensor){s_bwd[v], 2, {rows, C}, g->dqcls[v] + (size_t)row0 * C};
        out[2 + v] = (ser_wire_tensor){s_bwd[2 + v], 2, {(int64_t)ntok[v], C},
                                       g->dqmap[v] + map0[v] * (size_t)C};
    }
    int n = 4;
    for (int k = 0; k < g->n_local; k++)
        out[n++] = (ser_wire_tensor){s_dlcls[k], 2, {rows, C}, g->dlcls[k] + (size_t)row0 * C};
    for (int v = 0; g->pool && v < 2 + g->n_local; v++)
        out[n++] = (ser_wire_tensor){s_dqpool[v], 2, {rows, C}, g->dqpool[v] + (size_t)row0 * C};
    for (int v = 0; g->n_lpairs && v < 2; v++)
        out[n++] = (ser_wire_tensor){s_dlmaps[v], 2, {(int64_t)lntok[v], C},
                                     g->dlqmap[v] + lmap0[v] * (size_t)C};
    return n;
}

int ser_shard_parse_backward(const ser_wire_msg *m, int rows, int C, const size_t ntok[2],
                             int n_local, int pool, const size_t lntok[2],
                             const float *out[SER_SHARD_MAX_BWD]) {
    size_t BC = (size_t)rows * C;
    if (n_local < 0 || n_local > SER_MAX_LOCAL) return SER_EFORMAT;
    int ok = 1, np = pool ? 2 + n_local : 0, n = 4 + n_local + np;
    for (int v = 0; lntok && v < 2; v++) {  // the local SER pairs' map gradients, last
        out[n + v] = ser_wire_find(m, s_dlmaps[v], lntok[v] * (size_t)C);
        ok &= out[n + v] != NULL;
    }
    for (int i = 0; i < n; i++) {
        const char *name = i < 4 ? s_bwd[i]
                           : i < 4 + n_local ? s_dlcls[i - 4] : s_dqpool[i - 4 - n_local];
        out[i] = ser_wire_find(m, name, i == 2 || i == 3 ? ntok[i - 2] * (size_t)C : BC);
        ok &= out[i] != NULL;
    }
    return ok ? SER_OK : SER_EFORMAT;
}

void ser_shard_pack_grad(ser_wire_tensor *out, const float *grad, size_t span) {
    *out = (ser_wire_tensor){"grad", 1, {(int64_t)span}, grad};
}

const float *ser_shard_parse_grad(const ser_wire_msg *m, size_t span) {
    return ser_wire_find(m, "grad", span);
}
