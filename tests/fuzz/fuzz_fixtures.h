// fuzz_fixtures.h — the fixed setups that the fuzz harnesses and the corpus generator
// (fuzz_make_corpus.c) must share, so that the seeds stay valid for the harness that reads
// them: the loader's configuration (its job id and config hash are in the loader seeds) and
// the checkpoint binding (the tensors a checkpoint seed holds). Tests nothing itself.
//
// defines:
//   SER_FUZZ_JOB                       the job id of every seed
//   ser_fuzz_loader_config()           a tiny ImageFolder loader (2 shards of 2 samples, 16 px)
//   ser_fuzz_loader_data()             its synthetic data set under a folder
//   ser_fuzz_ckpt (binding + memory), ser_fuzz_ckpt_init(), ser_fuzz_ckpt_free()
#ifndef SER_FUZZ_FIXTURES_H
#define SER_FUZZ_FIXTURES_H

#include <stdint.h>

#include "ser_ckpt.h"
#include "ser_config.h"
#include "ser_dl.h"
#include "ser_optim.h"
#include "ser_ptab.h"

#define SER_FUZZ_JOB "fuzz-job"

// img 16, patch 8, global batch 4 in 2 shards, eq_ratio 0.5 (the last two positions are
// equivariant), one thread, data at root.
void ser_fuzz_loader_config(ser_dl_config *c, const char *root);
// Writes the synthetic ImageFolder (2 classes x 2 JPEGs of about 24 x 20) under root.
// Returns SER_OK or an error with err.
int ser_fuzz_loader_data(const char *root, char err[256]);

// A small checkpoint binding: a table of three tensors (one a BatchNorm-style counter) with
// an AdamW state, an extra F32 tensor and an extra I64 scalar; cfg holds the defaults.
typedef struct ser_fuzz_ckpt {
    ser_ptab tab;
    float *arena;
    ser_optim opt;
    float center[6];
    int64_t skipped;
    ser_ckpt *ck;
    ser_config cfg;
} ser_fuzz_ckpt;

void ser_fuzz_ckpt_init(ser_fuzz_ckpt *b);
void ser_fuzz_ckpt_free(ser_fuzz_ckpt *b);

#endif
