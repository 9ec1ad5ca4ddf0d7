// ser_objective.h — the objective interface: one table per SSL objective (in the style of
// ggml's backend table), used by the trainer, the coordinator, the worker, `ser step`, backbone
// extraction and export, none of which has a method-specific branch.
//
// An objective owns everything that is not the per-shard ViT work: its heads, its teacher (if
// any), its losses and its config section. The step loop (train/ser_train.h) is the same for
// every objective:
//     [teacher EMA, when ema == SER_OBJECTIVE_EMA_BEFORE]
//     engine forward (per shard: student ViT, teacher ViT) -> gathered [CLS] rows and SER maps
//     objective (batch-coupled: heads, losses; fills dqcls/dqmap and the head gradients)
//     engine backward (per shard, summed in shard order) -> student ViT gradients
//     apply (clip, AdamW on the tensors that got a gradient) -> after_apply (e.g. DINO's centre
//     and teacher EMA, when ema == SER_OBJECTIVE_EMA_AFTER)
//
// Adding an objective: one file in this folder that defines its `const ser_objective_i`, one
// row in s_table (ser_objective.c) and, if it has options, its section in io/ser_config.c. A
// test build can also register one at run time (ser_objective_register). A head and loss on top
// of MoCo-v3 (the paper's E-SSL, AugSelf, EquiMod baselines) is a MoCo add-on instead
// (ser_moco_addon.h).
//
// defines:
//   ser_objective_model   what an objective's init hands the trainer (tables, arenas, ViTs)
//   ser_objective_step    the per-step values an objective may read (iteration, schedules)
//   ser_objective_i       the table
//   ser_objective_get(), ser_objective_find(), ser_objective_count(), ser_objective_names,
//   ser_objective_register()
//   ser_objective_equiv_active()   the shared rule for projector_equiv / norm_equiv gradients
#ifndef SER_OBJECTIVE_H
#define SER_OBJECTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_engine.h"
#include "ser_ptab.h"
#include "ser_vit.h"

struct ser_config;
struct ser_sched_params;

// The most objectives a process knows (built-in plus registered).
#define SER_OBJECTIVE_MAX 16
// The most collapse monitors one objective reports (ser_objective_i.monitors).
#define SER_OBJECTIVE_MAX_MONITORS 4

// When the teacher's EMA runs (the coordinator and the worker follow it).
enum {
    SER_OBJECTIVE_EMA_NONE = 0,  // no teacher (Barlow Twins)
    SER_OBJECTIVE_EMA_BEFORE,    // opens a step, before the keys are computed (MoCo)
    SER_OBJECTIVE_EMA_AFTER      // closes a step, after the optimizer (DINO)
};

// The state an objective's init builds, as the trainer sees it.
typedef struct ser_objective_model {
    ser_ptab *tab;                 // trainable tensors (the student ViT first, at offset off)
    float *params, *grads;         // tab's arenas
    const ser_ptab *tabs[3];       // every table of a checkpoint: trainable, teacher, buffers
    float *arenas[3];
    int ntabs;
    ser_vit *student, *teacher;    // teacher NULL without one
    float *tparams;                // the teacher's arena (offsets mirror tab's), or NULL
    int ser, ser_grad;             // the SER term is on; it has a gradient
    int pool;                      // the objective reads the pooled block-k maps (qpool)
} ser_objective_model;

typedef struct ser_objective_step {
    int64_t it, epoch;
    double momentum;      // the teacher EMA's momentum of this step
    double teacher_temp;  // DINO's teacher temperature of this epoch
} ser_objective_step;

typedef struct ser_objective_i {
    const char *name;            // method.name, and its config section when it has one
    const char *student_prefix;  // state-dict prefix of the student backbone ("base_encoder.")
    const char *teacher_prefix;  // ... of the teacher backbone, or NULL
    int ema;                     // SER_OBJECTIVE_EMA_*
    int ema_kind;                // SER_OPTIM_EMA_* formula of the teacher EMA (backbone part)
    size_t state_size;           // bytes of the objective's state (zeroed before init)
    // Export: tensors under alias_from are also written under alias_to (--full), or NULL.
    const char *alias_from, *alias_to;
    // The objective reads local views (ser_gathered.lcls) when data.local_crops > 0; the config
    // refuses local crops for one that does not.
    int local_views;
    // Another method's config section it also reads (E-SSL: "moco"), hashed with its own; NULL.
    const char *base_section;
    // The objective reads the global views' parameters (ser_gathered.vparams: AugSelf,
    // EquiMod): the workers send them and the coordinator requires them.
    int view_params;

    // Builds the model from the job config (no weights): SER_ECONFIG with a message naming the
    // key when the config does not fit. On failure the state is left freeable.
    int (*init)(void *st, const struct ser_config *cfg, ser_objective_model *m,
                char err[SER_ERR_LEN]);
    void (*free)(void *st);
    void (*init_weights)(void *st, uint64_t seed);
    // The batch-coupled half on gathered features: fills g->dqcls / g->dqmap and the head-side
    // gradients (m->grads is zeroed by the caller). losses: total, invariance, equivariance.
    // SER_ENONFINITE names the term when a loss is not finite.
    int (*objective)(void *st, const ser_batch *b, ser_gathered *g, const ser_objective_step *s,
                     double losses[3], char err[SER_ERR_LEN]);
    // The teacher EMA towards the student with momentum m, over every teacher tensor (NULL
    // without a teacher).
    void (*teacher_ema)(void *st, double momentum);
    // Tensors the objective holds out of this step's update although they have a gradient
    // (DINO's frozen last layer): clears active[i]. NULL: none.
    void (*hold)(void *st, int64_t epoch, unsigned char *active);
    // After the optimizer step (DINO: centre update then teacher EMA). NULL: nothing.
    void (*after_apply)(void *st, const ser_objective_step *s);
    // The method's part of the schedules (momentum kind, teacher temperature). NULL: none.
    void (*sched)(const struct ser_config *cfg, struct ser_sched_params *sp);
    // The method's floats for the memory estimate: heads (trainable), teacher heads, head
    // activations; *key names the config keys that size them. C: ViT width, B: global batch.
    void (*memory)(const struct ser_config *cfg, double C, double B, double floats[3],
                   const char **key);
    // Method-specific config rules (beyond the section's ranges), or NULL.
    int (*check)(const struct ser_config *cfg, char err[SER_ERR_LEN]);
    // The objective's own collapse monitors of its last objective call (DINO: the teacher's
    // entropy and the student-teacher KL; Barlow Twins: the on- and off-diagonal terms):
    // fills names / values (SER_OBJECTIVE_MAX_MONITORS at most), returns how many. NULL: none.
    int (*monitors)(void *st, const char **names, double *values);
    // The objective's own collapse test on its last objective call: 1 with a reason naming the
    // monitor and its documented threshold when the monitors show a collapse (DINO: the
    // teacher's entropy near ln(out_dim), a uniform output, or near 0, a one-hot one; Barlow
    // Twins: the views' embeddings unrelated, or the dimensions redundant). The
    // runtime warns (or stops, run.on_collapse) after run.collapse_steps such steps in a row.
    // NULL: none (cls_std covers every method).
    int (*collapsed)(void *st, char *why, size_t n);
} ser_objective_i;

// Fills m from an objective's tables: trainable (tab, its arenas), teacher (ttab / tparams, or
// NULL), buffers (btab / buffers, or NULL), the ViTs (teacher NULL without one), the SER flags.
// The checkpoint tables are trainable, then teacher, then buffers, as present.
void ser_objective_model_fill(ser_objective_model *m, ser_ptab *tab, float *params, float *grads,
                              const ser_ptab *ttab, float *tparams, const ser_ptab *btab,
                              float *buffers, ser_vit *student, ser_vit *teacher, int ser,
                              int ser_grad);

// The objective of method index i (SER_CONFIG_METHOD_*, or a registered one), NULL if none.
const ser_objective_i *ser_objective_get(int i);
// Its index by name, -1 if none.
int ser_objective_find(const char *name);
int ser_objective_count(void);
// Names of every known objective, NULL-terminated (the config's method.name values).
extern const char *ser_objective_names[SER_OBJECTIVE_MAX + 1];
// Adds an objective (a test build's own, for example); returns its index (the value of
// method.name), or -1 when the table is full or the name is taken.
int ser_objective_register(const ser_objective_i *o);

// The shared gradient rule of the SER tensors: projector_equiv.* and the ViT's norm_equiv get a
// gradient in a step only when the SER term is on with its gradient and the batch has
// equivariant samples, and norm_equiv also when the objective reads the pooled maps (pool);
// otherwise active[i] is cleared, so AdamW leaves them, their moments and step counts untouched
// (torch skips a parameter whose .grad is None).
void ser_objective_equiv_active(const ser_ptab *tab, int ser, int ser_grad, int n_eq, int pool,
                                unsigned char *active);

#endif
