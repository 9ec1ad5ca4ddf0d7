// ser_backbones.h — what a worker computes with: the job's student backbone and, when its
// objective has one, the teacher backbone — no heads, no optimizer state (those live at the
// coordinator). The tensors are laid out exactly as in the objective's tables, so the spans the
// runtime moves (ser_trainer_span) copy in and out as they are.
//
// defines:
//   ser_backbones, ser_backbones_init(), ser_backbones_free()
//   ser_backbones_teacher_ema()   the teacher EMA over the backbone, bitwise the coordinator's
#ifndef SER_BACKBONES_H
#define SER_BACKBONES_H

#include <stddef.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_objective.h"
#include "ser_ptab.h"
#include "ser_vit.h"

typedef struct ser_backbones {
    const ser_objective_i *obj;
    ser_ptab tab, ttab;          // the student's / teacher's ViT tensors, with the method's names
    ser_vit student, teacher;
    float *params, *grads, *tparams;
    int has_teacher;
    int maps, map_grad;          // engine flags (SER_ENGINE_*); backpropagate through the SER maps
    size_t off, toff, span;      // the spans (ser_trainer_span of the same job)
} ser_backbones;

int ser_backbones_init(ser_backbones *b, const ser_config *cfg, char err[SER_ERR_LEN]);
void ser_backbones_free(ser_backbones *b);
// teacher <- EMA towards the student with momentum m, with the objective's formula (ema_kind):
// element for element the operation of the objective's own teacher EMA, so a worker that
// advances its teacher itself holds the coordinator's bits.
void ser_backbones_teacher_ema(ser_backbones *b, double momentum);

#endif
