// ser_eval.c — see ser_eval.h.
#include "ser_eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_kernels.h"
#include "ser_loss.h"
#include "ser_rng.h"

// Counter words c0 of the evaluation's streams (purpose SER_EVAL_RNG), one per consumer.
enum {
    S_TAG_INIT = 1,     // classifier weights
    S_TAG_SHUFFLE = 2,  // epoch order (c1 = epoch)
    S_TAG_VAL = 3,      // held-out split
    S_TAG_SUBSET = 4,   // subset permutation
};

// --- features ----------------------------------------------------------------------------------

void ser_eval_l2_normalize(float *x, int n, int d) {
    float *norms = ser_xmalloc(sizeof(float) * ((size_t)n + 1));
    ser_l2norm_rows_forward(x, norms, x, n, d);  // F.normalize, in place
    free(norms);
}

double ser_eval_cosine(const float *a, const float *b, int d) {
    double ab = 0, aa = 0, bb = 0;
    for (int j = 0; j < d; j++) {
        ab += (double)a[j] * (double)b[j];
        aa += (double)a[j] * (double)a[j];
        bb += (double)b[j] * (double)b[j];
    }
    if (aa <= 0 || bb <= 0) return 0;
    return ab / (sqrt(aa) * sqrt(bb));
}

void ser_eval_standardize(float *x, int n, int d, float *mean, float *std) {
    for (int j = 0; j < d; j++) {
        double s = 0, ss = 0;
        for (int i = 0; i < n; i++) s += (double)x[(size_t)i * d + j];
        double m = n > 0 ? s / n : 0;
        for (int i = 0; i < n; i++) {
            double t = (double)x[(size_t)i * d + j] - m;
            ss += t * t;
        }
        double sd = n > 0 ? sqrt(ss / n) : 1;
        mean[j] = (float)m;
        std[j] = (float)(sd > 1e-6 ? sd : 1e-6);
    }
    ser_eval_standardize_apply(x, n, d, mean, std);
}

void ser_eval_standardize_apply(float *y, int n, int d, const float *mean, const float *std) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) y[(size_t)i * d + j] = (y[(size_t)i * d + j] - mean[j]) / std[j];
}

// --- metrics -----------------------------------------------------------------------------------

int ser_eval_rank(const float *s, int C, int y) {
    int r = 0;
    for (int c = 0; c < C; c++)
        if (s[c] > s[y] || (s[c] == s[y] && c < y)) r++;
    return r;
}

ser_eval_acc ser_eval_topk(const float *scores, const int *y, int n, int C) {
    ser_eval_acc a = {0, 0, n};
    if (n <= 0) return a;
    long c1 = 0, c5 = 0;
    for (int i = 0; i < n; i++) {
        int r = ser_eval_rank(scores + (size_t)i * C, C, y[i]);
        c1 += r < 1;
        c5 += r < 5;
    }
    a.top1 = 100.0 * (double)c1 / n;
    a.top5 = 100.0 * (double)c5 / n;
    return a;
}

// --- kNN -------------------------------------------------------------------------------------------

static int s_knn_check(const int *ytrain, int ntr, int nte, int d, int C, int k, float T) {
    if (ntr < 1 || nte < 0 || d < 1 || C < 1 || k < 1 || !(T > 0)) return SER_EINVAL;
    for (int i = 0; i < ntr; i++)
        if (ytrain[i] < 0 || ytrain[i] >= C) return SER_EINVAL;
    return SER_OK;
}

// Inserts (s, idx) into the list (sim, id) of length *len <= k sorted by descending
// similarity; candidates arrive in increasing idx, so an equal similarity goes after the
// earlier ones (the lower index wins the last slot).
static void s_topk_push(float *sim, int *id, int *len, int k, float s, int idx) {
    if (*len == k && !(s > sim[k - 1])) return;
    int p = *len < k ? (*len)++ : k - 1;
    while (p > 0 && s > sim[p - 1]) {
        sim[p] = sim[p - 1];
        id[p] = id[p - 1];
        p--;
    }
    sim[p] = s;
    id[p] = idx;
}

int ser_eval_knn_scores(float *scores, const float *train, const int *ytrain, int ntr,
                        const float *test, int nte, int d, int C, int k, float T) {
    int rc = s_knn_check(ytrain, ntr, nte, d, C, k, T);
    if (rc) return rc;
    if (k > ntr) k = ntr;
    // Blocks of test rows keep the similarity matrix at TB x ntr floats.
    const int TB = 256;
    float *sim = ser_xmalloc(sizeof(float) * (size_t)TB * ntr);
    for (int i0 = 0; i0 < nte; i0 += TB) {
        int nb = nte - i0 < TB ? nte - i0 : TB;
        ser_matmul_forward(sim, test + (size_t)i0 * d, train, NULL, nb, d, ntr);
#pragma omp parallel
        {
            float *ts = ser_xmalloc(sizeof(float) * (size_t)k);
            int *ti = ser_xmalloc(sizeof(int) * (size_t)k);
            double *acc = ser_xmalloc(sizeof(double) * (size_t)C);
#pragma omp for schedule(static)
            for (int r = 0; r < nb; r++) {
                const float *row = sim + (size_t)r * ntr;
                int len = 0;
                for (int j = 0; j < ntr; j++) s_topk_push(ts, ti, &len, k, row[j], j);
                for (int c = 0; c < C; c++) acc[c] = 0;
                for (int q = 0; q < len; q++) acc[ytrain[ti[q]]] += exp((double)ts[q] / (double)T);
                float *out = scores + (size_t)(i0 + r) * C;
                for (int c = 0; c < C; c++) out[c] = (float)acc[c];
            }
            free(ts);
            free(ti);
            free(acc);
        }
    }
    free(sim);
    return SER_OK;
}

typedef struct s_simidx {
    double s;
    int i;
} s_simidx;

static int s_cmp_simidx(const void *pa, const void *pb) {
    const s_simidx *a = pa, *b = pb;
    if (a->s != b->s) return a->s > b->s ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

int ser_eval_knn_scores_naive(float *scores, const float *train, const int *ytrain, int ntr,
                              const float *test, int nte, int d, int C, int k, float T) {
    int rc = s_knn_check(ytrain, ntr, nte, d, C, k, T);
    if (rc) return rc;
    if (k > ntr) k = ntr;
    s_simidx *v = ser_xmalloc(sizeof *v * (size_t)ntr);
    double *acc = ser_xmalloc(sizeof(double) * (size_t)C);
    for (int r = 0; r < nte; r++) {
        for (int j = 0; j < ntr; j++) {
            double s = 0;
            for (int q = 0; q < d; q++)
                s += (double)test[(size_t)r * d + q] * (double)train[(size_t)j * d + q];
            v[j].s = s, v[j].i = j;
        }
        qsort(v, (size_t)ntr, sizeof *v, s_cmp_simidx);
        for (int c = 0; c < C; c++) acc[c] = 0;
        for (int q = 0; q < k; q++) acc[ytrain[v[q].i]] += exp(v[q].s / (double)T);
        for (int c = 0; c < C; c++) scores[(size_t)r * C + c] = (float)acc[c];
    }
    free(v);
    free(acc);
    return SER_OK;
}

// --- linear classifier -------------------------------------------------------------------------

void ser_eval_linear_opts_default(ser_eval_linear_opts *o) {
    o->epochs = 100;
    o->batch = 256;
    o->lr = 0.1;
    o->momentum = 0.9;
    o->weight_decay = 0;
    o->init_std = 0.01;
    o->seed = 0;
}

void ser_eval_linear_init(ser_eval_linear *m, int d, int C, double init_std, uint64_t seed) {
    m->d = d, m->C = C;
    m->w = ser_xmalloc(sizeof(float) * (size_t)C * d);
    m->b = ser_xcalloc((size_t)C, sizeof(float));
    ser_rng r;
    ser_rng_init(&r, seed, S_TAG_INIT, 0, SER_EVAL_RNG);
    for (size_t i = 0; i < (size_t)C * d; i++) m->w[i] = (float)(init_std * ser_rng_normal(&r));
}

void ser_eval_linear_free(ser_eval_linear *m) {
    if (!m) return;
    free(m->w);
    free(m->b);
    m->w = m->b = NULL;
}

void ser_eval_linear_scores(const ser_eval_linear *m, float *scores, const float *x, int n) {
    if (n > 0) ser_matmul_forward(scores, x, m->w, m->b, n, m->d, m->C);
}

// Softmax cross-entropy of one row of logits (in place: becomes the probabilities); returns the
// loss -log p_y.
static double s_softmax_ce(float *z, int C, int y) {
    float mx = z[0];
    for (int c = 1; c < C; c++) mx = z[c] > mx ? z[c] : mx;
    double s = 0;
    for (int c = 0; c < C; c++) s += exp((double)z[c] - (double)mx);
    double lse = log(s) + (double)mx;
    double loss = lse - (double)z[y];
    for (int c = 0; c < C; c++) z[c] = (float)exp((double)z[c] - lse);
    return loss;
}

double ser_eval_linear_loss(const ser_eval_linear *m, const float *x, const int *y, int n) {
    if (n <= 0) return 0;
    float *z = ser_xmalloc(sizeof(float) * (size_t)n * m->C);
    ser_eval_linear_scores(m, z, x, n);
    double s = 0;
    for (int i = 0; i < n; i++) s += s_softmax_ce(z + (size_t)i * m->C, m->C, y[i]);
    free(z);
    return s / n;
}

int ser_eval_linear_train(ser_eval_linear *m, const float *x, const int *y, const uint32_t *rows,
                          int n, const ser_eval_linear_opts *o, double *epoch_loss) {
    int d = m->d, C = m->C, B = o->batch;
    if (n < 1 || B < 1 || o->epochs < 0) return SER_EINVAL;
    for (int i = 0; i < n; i++) {
        int yi = y[rows ? rows[i] : (uint32_t)i];
        if (yi < 0 || yi >= C) return SER_EINVAL;
    }
    if (B > n) B = n;
    size_t nw = (size_t)C * d;
    float *xb = ser_xmalloc(sizeof(float) * (size_t)B * d);
    float *z = ser_xmalloc(sizeof(float) * (size_t)B * C);
    float *gw = ser_xmalloc(sizeof(float) * nw), *gb = ser_xmalloc(sizeof(float) * (size_t)C);
    float *mw = ser_xcalloc(nw, sizeof(float)), *mb = ser_xcalloc((size_t)C, sizeof(float));
    uint32_t *perm = ser_xmalloc(sizeof(uint32_t) * (size_t)n);
    int *yb = ser_xmalloc(sizeof(int) * (size_t)B);
    int rc = SER_OK;
    const double pi = 3.14159265358979323846;
    for (int e = 0; e < o->epochs; e++) {
        double lr = o->lr * 0.5 * (1.0 + cos(pi * e / o->epochs));
        ser_rng_permutation(perm, (uint32_t)n, o->seed, ((uint32_t)S_TAG_SHUFFLE << 24) ^ (uint32_t)e);
        double loss_sum = 0;
        for (int i0 = 0; i0 < n; i0 += B) {
            int nb = n - i0 < B ? n - i0 : B;
            for (int q = 0; q < nb; q++) {
                uint32_t r = perm[i0 + q];
                if (rows) r = rows[r];
                memcpy(xb + (size_t)q * d, x + (size_t)r * d, sizeof(float) * (size_t)d);
                yb[q] = y[r];
            }
            ser_matmul_forward(z, xb, m->w, m->b, nb, d, C);
            for (int q = 0; q < nb; q++) {
                float *zq = z + (size_t)q * C;
                loss_sum += s_softmax_ce(zq, C, yb[q]);
                zq[yb[q]] -= 1.0f;
                for (int c = 0; c < C; c++) zq[c] /= (float)nb;  // d(mean loss)/d logits
            }
            memset(gw, 0, sizeof(float) * nw);
            memset(gb, 0, sizeof(float) * (size_t)C);
            ser_matmul_backward(NULL, gw, gb, z, xb, m->w, nb, d, C, 0);
            float mom = (float)o->momentum, wd = (float)o->weight_decay, flr = (float)lr;
            for (size_t i = 0; i < nw; i++) {
                mw[i] = mom * mw[i] + gw[i] + wd * m->w[i];
                m->w[i] -= flr * mw[i];
            }
            for (int c = 0; c < C; c++) {
                mb[c] = mom * mb[c] + gb[c] + wd * m->b[c];
                m->b[c] -= flr * mb[c];
            }
        }
        double mean = loss_sum / n;
        if (epoch_loss) epoch_loss[e] = mean;
        if (!isfinite(mean)) {
            rc = SER_ENONFINITE;
            break;
        }
    }
    free(xb), free(z), free(gw), free(gb), free(mw), free(mb), free(perm), free(yb);
    return rc;
}

// --- model selection -----------------------------------------------------------------------------

void ser_eval_val_mask(uint8_t *is_val, int n, double frac, uint64_t seed, const int *group,
                       int n_groups) {
    int G = group ? n_groups : n;
    memset(is_val, 0, (size_t)n);
    if (G < 2) return;
    int nv = (int)lround(frac * G);
    if (nv < 1) nv = 1;
    if (nv > G - 1) nv = G - 1;
    uint32_t *perm = ser_xmalloc(sizeof(uint32_t) * (size_t)G);
    uint8_t *gv = ser_xcalloc((size_t)G, 1);
    ser_rng_permutation(perm, (uint32_t)G, seed, (uint32_t)S_TAG_VAL << 24);
    for (int i = 0; i < nv; i++) gv[perm[i]] = 1;
    for (int i = 0; i < n; i++) {
        int g = group ? group[i] : i;
        is_val[i] = g >= 0 && g < G ? gv[g] : 0;
    }
    free(perm);
    free(gv);
}

int ser_eval_linear_select(ser_eval_linear *out, ser_eval_select *sel, const float *x,
                           const int *y, int n, int d, int C, const uint8_t *is_val,
                           const double *lrs, int nlr, const ser_eval_linear_opts *o,
                           char err[SER_ERR_LEN]) {
    memset(sel, 0, sizeof *sel);
    memset(out, 0, sizeof *out);
    if (nlr < 1 || nlr > SER_EVAL_MAX_LRS)
        return ser_errf(err, SER_EINVAL, "linear: %d learning rates (1..%d allowed)", nlr,
                        SER_EVAL_MAX_LRS);
    int ntr = 0, nv = 0;
    for (int i = 0; i < n; i++) is_val[i] ? nv++ : ntr++;
    if (ntr < 1 || nv < 1)
        return ser_errf(err, SER_EINVAL, "linear: %d training and %d held-out rows", ntr, nv);
    uint32_t *tr = ser_xmalloc(sizeof(uint32_t) * (size_t)ntr);
    float *xv = ser_xmalloc(sizeof(float) * (size_t)nv * d);
    int *yv = ser_xmalloc(sizeof(int) * (size_t)nv);
    float *sv = ser_xmalloc(sizeof(float) * (size_t)nv * C);
    for (int i = 0, a = 0, b = 0; i < n; i++) {
        if (is_val[i]) {
            memcpy(xv + (size_t)b * d, x + (size_t)i * d, sizeof(float) * (size_t)d);
            yv[b++] = y[i];
        } else {
            tr[a++] = (uint32_t)i;
        }
    }
    sel->nlr = nlr, sel->best = -1, sel->n_train = ntr, sel->n_val = nv;
    int rc = SER_OK;
    ser_eval_linear_opts oo = *o;
    for (int j = 0; j < nlr; j++) {
        sel->lr[j] = lrs[j];
        oo.lr = lrs[j];
        ser_eval_linear m;
        ser_eval_linear_init(&m, d, C, o->init_std, o->seed);
        rc = ser_eval_linear_train(&m, x, y, tr, ntr, &oo, NULL);
        if (rc == SER_OK) {
            ser_eval_linear_scores(&m, sv, xv, nv);
            ser_eval_acc a = ser_eval_topk(sv, yv, nv, C);
            sel->val_top1[j] = a.top1;
            if (sel->best < 0 || a.top1 > sel->val.top1) sel->best = j, sel->val = a;
        } else {
            sel->val_top1[j] = -1;
        }
        ser_eval_linear_free(&m);
        if (rc != SER_OK && rc != SER_ENONFINITE) goto done;
    }
    if (sel->best < 0) {
        rc = ser_errf(err, SER_ENONFINITE, "linear: training diverged for every learning rate");
        goto done;
    }
    oo.lr = sel->lr[sel->best];
    ser_eval_linear_init(out, d, C, o->init_std, o->seed);
    double *hist = ser_xmalloc(sizeof(double) * (size_t)(o->epochs > 0 ? o->epochs : 1));
    rc = ser_eval_linear_train(out, x, y, NULL, n, &oo, hist);
    sel->final_loss = o->epochs > 0 ? hist[o->epochs - 1] : 0;
    free(hist);
    if (rc) {
        ser_errf(err, rc, "linear: retraining on all rows with lr %g failed", oo.lr);
        ser_eval_linear_free(out);
    }
done:
    free(tr), free(xv), free(yv), free(sv);
    return rc;
}

// --- subsets -------------------------------------------------------------------------------------

static int s_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, z = *(const uint32_t *)b;
    return (x > z) - (x < z);
}

int ser_eval_subset(uint32_t *out, const int *y, int n, int C, int limit, uint64_t seed) {
    if (n <= 0) return 0;
    if (limit <= 0 || limit >= n) {
        for (int i = 0; i < n; i++) out[i] = (uint32_t)i;
        return n;
    }
    if (C < 1) C = 1;
    uint32_t *perm = ser_xmalloc(sizeof(uint32_t) * (size_t)n);
    uint8_t *taken = ser_xcalloc((size_t)n, 1);
    int *per = ser_xcalloc((size_t)C, sizeof(int));
    ser_rng_permutation(perm, (uint32_t)n, seed, (uint32_t)S_TAG_SUBSET << 24);
    int quota = (limit + C - 1) / C, m = 0;
    for (int i = 0; i < n && m < limit; i++) {
        int c = y[perm[i]];
        if (c < 0 || c >= C || per[c] >= quota) continue;
        per[c]++;
        taken[perm[i]] = 1;
        out[m++] = perm[i];
    }
    for (int i = 0; i < n && m < limit; i++)
        if (!taken[perm[i]]) taken[perm[i]] = 1, out[m++] = perm[i];
    qsort(out, (size_t)m, sizeof *out, s_cmp_u32);
    free(perm), free(taken), free(per);
    return m;
}

// --- equivariance --------------------------------------------------------------------------------

ser_group_elem ser_eval_identity(int gh0, int gw0) {
    ser_group_elem e = {0, 0, 0, (int16_t)gh0, (int16_t)gw0};
    return e;
}

int ser_eval_std_group(ser_group_elem *g, char names[][24], int g0, const double *scales,
                       int nscales) {
    int n = 0;
    static const char *rn[3] = {"rot90", "rot180", "rot270"};
    for (int r = 1; r <= 3; r++) {
        g[n] = ser_eval_identity(g0, g0);
        g[n].rot90 = (uint8_t)r;
        snprintf(names[n++], 24, "%s", rn[r - 1]);
    }
    g[n] = ser_eval_identity(g0, g0);
    g[n].hflip = 1;
    snprintf(names[n++], 24, "hflip");
    for (int s = 0; s < nscales && s < SER_EVAL_MAX_GROUP - 4; s++) {
        int gs = (int)nearbyint(g0 * scales[s]);  // round half to even (default rounding mode)
        if (gs < 1) gs = 1;
        g[n] = ser_eval_identity(gs, gs);
        snprintf(names[n++], 24, "scale%.2f", scales[s]);
    }
    return n;
}

double ser_eval_equiv_error(const float *phi_x, int gh0, int gw0, const float *phi_gx, int C,
                            const ser_group_elem *g, float *scratch) {
    ser_group_elem e = ser_eval_identity(gh0, gw0);
    if (ser_group_rel_action(scratch, phi_x, C, &e, g) != SER_OK) return -1;
    int rows, cols;
    ser_group_view_grid(g, &rows, &cols);
    size_t nv = (size_t)rows * cols * C, n0 = (size_t)gh0 * gw0 * C;
    double num = 0, den = 0;
    for (size_t i = 0; i < nv; i++) {
        double t = (double)scratch[i] - (double)phi_gx[i];
        num += t * t;
    }
    for (size_t i = 0; i < n0; i++) den += (double)phi_x[i] * (double)phi_x[i];
    if (den <= 0) return num > 0 ? INFINITY : 0;
    return sqrt(num / den);
}
