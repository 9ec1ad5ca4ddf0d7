// ser_equiv.h — the SER term, shared by every objective (ser-reference.md §2.7-2.8, §4).
//
// For each direction w (anchors: student view w), the "key" map of the other view 1-w goes
// through projector_equiv and is moved onto view w's grid by the relative group action T;
// the student map of view w goes through projector_equiv; the patch-wise NT-Xent compares them
// over all equivariant tokens of the global batch. Keys come from the teacher (MoCo's momentum
// encoder, DINO's EMA teacher) or, for Barlow Twins, from the student itself.
//   MoCo, DINO:        both directions, loss_equiv = (L0 + L1) / 2, keys from the teacher
//   Barlow Twins:      one direction (anchors view 1, keys student view 0), loss_equiv = L0;
//                      `symmetric` adds the other direction and halves, as MoCo does
// The projector is applied to the key maps with its parameters trainable (the reference's
// "Controversial" choice, §2.6), so with grad on it gets gradient from both sides; teacher
// maps get none; student key maps (Barlow Twins) do.
//
// The 2+4-view SER (ser.local_pairs > 0, the paper's erl_local4 with its NT-Xent as intended):
// for one pair of student maps of the n equivariant samples, A = projector_equiv(map of view 0)
// and B = projector_equiv(map of view 1) moved onto view 0's grid by T_10; the loss is the
// SimCLR-style patch NT-Xent over X = [A; B] (ser_ntxent_pair_forward_backward: the positive of
// a token is its partner, every token of other images a negative). Both maps are the student's
// and get gradient, as does the projector through both.
//
// defines: ser_equiv_opts, ser_equiv_term(), ser_equiv_pair_term()
#ifndef SER_EQUIV_H
#define SER_EQUIV_H

#include "ser_engine.h"
#include "ser_mlp.h"

typedef struct ser_equiv_opts {
    float tau;             // NT-Xent temperature
    float lambda;          // weight of loss_equiv in the total loss (scales the gradient)
    int grad;              // 1: the paper's gradient; 0: the public code's (value only)
    int both_directions;   // MoCo, DINO; Barlow Twins with `symmetric`
    int keys_from_student; // Barlow Twins: key maps are g->qmap, and they get gradient
} ser_equiv_opts;

// Returns SER_OK and *loss_equiv; with grad on, accumulates projector gradients into proj's
// grads and ADDS to g->dqmap (student maps). Needs g->n_eq >= 1 (otherwise *loss_equiv = 0).
int ser_equiv_term(const ser_mlp *proj, const ser_batch *b, ser_gathered *g,
                   const ser_equiv_opts *o, double *loss_equiv, char err[SER_ERR_LEN]);

// One pair: map[v] (sum_e tok[v][e], C) the student maps of view v, sample-major; g[v] (n,) their
// group elements. *loss = L; with grad, proj's gradients accumulate and lambda * dL/dmap[v] is
// ADDED to dmap[v]. n >= 1.
int ser_equiv_pair_term(const ser_mlp *proj, int n, const int *const tok[2],
                        const ser_group_elem *const g[2], const float *const map[2],
                        float *const dmap[2], int C, float tau, float lambda, int grad,
                        double *loss, char err[SER_ERR_LEN]);

#endif
