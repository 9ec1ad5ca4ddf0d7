// ser_equiv.c — see ser_equiv.h.
#include "ser_equiv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ser_ntxent.h"

int ser_equiv_term(const ser_mlp *proj, const ser_batch *b, ser_gathered *g,
                   const ser_equiv_opts *o, double *loss_equiv, char err[SER_ERR_LEN]) {
    *loss_equiv = 0;
    if (b->n_eq < 1) return SER_OK;
    int E = proj->layer[proj->n - 1].s.out, C = g->C, rc = SER_OK;
    int first = o->both_directions ? 0 : 1;  // one direction: anchors are student view 1
    float *const *keys = o->keys_from_student ? g->qmap : g->kmap;
    ser_mlp_acts pq[2], pk[2];
    memset(pq, 0, sizeof pq), memset(pk, 0, sizeof pk);
    float *PQ[2] = {0}, *PK[2] = {0}, *K[2] = {0}, *dPQ[2] = {0}, *dK[2] = {0}, *dPK[2] = {0};
    for (int v = 0; v < 2; v++) {
        size_t n = g->ntok[v] * (size_t)E;
        PQ[v] = ser_xaligned(sizeof(float) * n), PK[v] = ser_xaligned(sizeof(float) * n);
        K[v] = ser_xaligned(sizeof(float) * n);
        dPQ[v] = ser_xaligned(sizeof(float) * n), dK[v] = ser_xaligned(sizeof(float) * n);
        dPK[v] = ser_xaligned(sizeof(float) * n);
        memcpy(PQ[v], ser_mlp_forward(proj, &pq[v], g->qmap[v], (int)g->ntok[v], 0),
               sizeof(float) * n);
        memcpy(PK[v], ser_mlp_forward(proj, &pk[v], keys[v], (int)g->ntok[v], 0),
               sizeof(float) * n);
    }
    // K[w] = key map of view 1-w moved onto view w's grid (w = 1: the reference's K0).
    for (int w = first; w < 2 && !rc; w++)
        for (int e = 0; e < b->n_eq && !rc; e++)
            rc = ser_group_rel_action(K[w] + g->tokoff[w][e] * E, PK[1 - w] + g->tokoff[1 - w][e] * E,
                                      E, &b->g[1 - w][e], &b->g[w][e]);
    double L[2] = {0, 0};
    int ndir = 2 - first;
    float scale = o->grad ? o->lambda / (float)ndir : 0.0f;
    for (int w = first; w < 2 && !rc; w++)
        rc = ser_ntxent_forward_backward(&L[w], o->grad ? dPQ[w] : NULL, o->grad ? dK[w] : NULL,
                                         PQ[w], K[w], g->tok[w], b->n_eq, E, o->tau, scale);
    if (rc) snprintf(err, SER_ERR_LEN, "ser: group action or NT-Xent failed (%s)", ser_strerror(rc));
    *loss_equiv = (L[0] + L[1]) / ndir;
    if (!rc && o->grad) {
        for (int w = first; w < 2 && !rc; w++)
            for (int e = 0; e < b->n_eq && !rc; e++)
                rc = ser_group_rel_action_backward(dPK[1 - w] + g->tokoff[1 - w][e] * E,
                                                   dK[w] + g->tokoff[w][e] * E, E, &b->g[1 - w][e],
                                                   &b->g[w][e]);
        for (int v = 0; v < 2 && !rc; v++) {
            size_t nc = g->ntok[v] * (size_t)C;
            float *tmp = ser_xaligned(sizeof(float) * (nc ? nc : 1));
            ser_mlp_backward(proj, &pq[v], tmp, dPQ[v]);
            for (size_t i = 0; i < nc; i++) g->dqmap[v][i] += tmp[i];
            // Key side: parameters always; the map only when it is the student's own.
            ser_mlp_backward(proj, &pk[v], o->keys_from_student ? tmp : NULL, dPK[v]);
            if (o->keys_from_student)
                for (size_t i = 0; i < nc; i++) g->dqmap[v][i] += tmp[i];
            free(tmp);
        }
    }
    for (int v = 0; v < 2; v++) {
        free(PQ[v]), free(PK[v]), free(K[v]), free(dPQ[v]), free(dK[v]), free(dPK[v]);
        ser_mlp_acts_free(&pq[v]), ser_mlp_acts_free(&pk[v]);
    }
    return rc;
}

int ser_equiv_pair_term(const ser_mlp *proj, int n, const int *const tok[2],
                        const ser_group_elem *const g[2], const float *const map[2],
                        float *const dmap[2], int C, float tau, float lambda, int grad,
                        double *loss, char err[SER_ERR_LEN]) {
    *loss = 0;
    int E = proj->layer[proj->n - 1].s.out, rc = SER_OK;
    size_t ntok[2] = {0, 0};
    size_t *off[2] = {ser_xcalloc((size_t)n + 1, sizeof(size_t)),
                      ser_xcalloc((size_t)n + 1, sizeof(size_t))};
    for (int v = 0; v < 2; v++)
        for (int e = 0; e < n; e++) off[v][e] = ntok[v], ntok[v] += (size_t)tok[v][e];
    ser_mlp_acts pa[2];
    memset(pa, 0, sizeof pa);
    float *P[2], *dP[2];
    for (int v = 0; v < 2; v++) {
        size_t m = ntok[v] * (size_t)E;
        P[v] = ser_xaligned(sizeof(float) * (m ? m : 1));
        dP[v] = ser_xaligned(sizeof(float) * (m ? m : 1));
        memcpy(P[v], ser_mlp_forward(proj, &pa[v], map[v], (int)ntok[v], 0), sizeof(float) * m);
    }
    // B: view 1's projected map moved onto view 0's grid, sample by sample.
    size_t m0 = ntok[0] * (size_t)E;
    float *Bm = ser_xaligned(sizeof(float) * (m0 ? m0 : 1));
    float *dBm = ser_xaligned(sizeof(float) * (m0 ? m0 : 1));
    for (int e = 0; e < n && !rc; e++)
        rc = ser_group_rel_action(Bm + off[0][e] * E, P[1] + off[1][e] * E, E, &g[1][e], &g[0][e]);
    if (!rc)
        rc = ser_ntxent_pair_forward_backward(loss, grad ? dP[0] : NULL, grad ? dBm : NULL, P[0], Bm,
                                              tok[0], n, E, tau, grad ? lambda : 0.0f);
    for (int e = 0; grad && e < n && !rc; e++)
        rc = ser_group_rel_action_backward(dP[1] + off[1][e] * E, dBm + off[0][e] * E, E, &g[1][e],
                                           &g[0][e]);
    if (rc) snprintf(err, SER_ERR_LEN, "ser: group action or pair NT-Xent failed (%s)",
                     ser_strerror(rc));
    for (int v = 0; grad && v < 2 && !rc; v++) {
        size_t nc = ntok[v] * (size_t)C;
        float *tmp = ser_xaligned(sizeof(float) * (nc ? nc : 1));
        ser_mlp_backward(proj, &pa[v], tmp, dP[v]);
        for (size_t i = 0; i < nc; i++) dmap[v][i] += tmp[i];
        free(tmp);
    }
    for (int v = 0; v < 2; v++) free(P[v]), free(dP[v]), free(off[v]), ser_mlp_acts_free(&pa[v]);
    free(Bm), free(dBm);
    return rc;
}
