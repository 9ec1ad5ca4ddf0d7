// ser_backbone.h — the student backbone of a training state, standalone, for evaluation and
// export (`ser eval`, `ser export`).
//
// A training state holds the student ViT under a prefix that follows the method (the
// reference state_dict names): moco "base_encoder." (its head "base_encoder.head.*" is not part
// of the backbone), dino "student.backbone.", barlow "backbone.". ser_backbone_load() takes
// those tensors out of a checkpoint, a run directory or a `ser step --out` state file into a
// standalone ser_vit (own table, names without prefix), exactly as trained.
//
// defines:
//   ser_backbone                   cfg, method, vit, step
//   ser_backbone_load()            from a checkpoint file, a run directory or a state file
//   ser_backbone_resolve()         the file ser_backbone_load() reads for a path
//   ser_backbone_init_random()     the untrained network a fresh job starts from (baseline)
//   ser_backbone_free()
//   ser_backbone_prefix()          the backbone's name prefix in a method's state
//   ser_backbone_timm_name()       the timm model name for an export, and whether it is exact
#ifndef SER_BACKBONE_H
#define SER_BACKBONE_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_vit.h"

// The student backbone of a training state, standalone, for evaluation and export.
typedef struct ser_backbone {
    ser_config cfg;  // the job's configuration (from the file's metadata, or the one given)
    int method;      // SER_CONFIG_METHOD_*
    ser_vit vit;     // the student ViT (ser_vit_init: its own table, names without prefix), loaded
    int64_t step;    // the checkpoint's training position (train.step), -1 when the file has none
} ser_backbone;

// path: a checkpoint file (ckpt-*.safetensors: its __metadata__ "config" gives the job; its
// format, version and content hash are verified as ser_ckpt_verify does), a run directory (its
// newest valid checkpoint, as resume picks it: `latest`, then older ones in descending step
// order, stopping at a version mismatch), or a state file written by `ser step --out` /
// `ser local --out` (ser_trainer_write; it has no config metadata: then cfg must be given, else
// SER_ECONFIG saying so). cfg (may be NULL) overrides / supplies the configuration (a different
// config hash than the file's is logged as a warning; shapes are always checked). Every
// backbone tensor must be present with the right shape and a float dtype.
// Returns SER_OK or, with a one-line message naming the file (and the tensor):
//   SER_ENOENT  no such file / directory, a directory without checkpoints, a missing tensor;
//   SER_ESHAPE  a tensor's shape (both sides); SER_EDTYPE a non-float tensor;
//   SER_EFORMAT / SER_EHASH / SER_EVERSION  not a safetensors file, a corrupt checkpoint;
//   SER_ECONFIG  no configuration (state file without cfg) or an invalid stored one.
// On error *b is zeroed (nothing to free). Caller owns *b; release with ser_backbone_free().
int ser_backbone_load(ser_backbone *b, const char *path, const ser_config *cfg,
                      char err[SER_ERR_LEN]);

// The file that ser_backbone_load(path) reads: path itself for a file, for a run directory the
// checkpoint chosen as described above (verified). SER_ENOENT / SER_EIO / the refusal of the
// newest checkpoint as ser_backbone_load() gives them; SER_EINVAL if file_len is too small.
int ser_backbone_resolve(const char *path, char *file, size_t file_len, char err[SER_ERR_LEN]);

// The randomly initialised network of cfg (the baseline next to a trained one): the init
// scheme of the job's method (as ser_trainer_init_weights does for the student), from seed:
// bitwise the student a fresh job (ser_trainer_init + ser_trainer_init_weights(seed)) starts
// from. step is -1.
int ser_backbone_init_random(ser_backbone *b, const ser_config *cfg, uint64_t seed,
                             char err[SER_ERR_LEN]);

// Safe on a zeroed struct; zeroes *b.
void ser_backbone_free(ser_backbone *b);

// "base_encoder.", "student.backbone." or "backbone." (NULL for an unknown method).
const char *ser_backbone_prefix(int method);

// The timm model name an export writes for a ViT of arch (SER_CONFIG_ARCH_*) shaped as c.
// Returns 1 when timm registers that very model ("vit_small_patch8_224": the arch's width,
// depth, heads and 4x MLP, this patch and image size), else 0: then name is the closest
// registered one of the arch (same patch size if timm has one, then the nearest image size;
// "vit_tiny_patch16_224" for a 32 px / patch-4 ViT-Ti) and note (may be NULL) says what
// differs. Either way timm.create_model(name, **timm_kwargs) builds the real model, since the
// export's kwargs give every size explicitly.
int ser_backbone_timm_name(int arch, const ser_vit_config *c, char *name, size_t n, char *note,
                           size_t nn);

#endif
