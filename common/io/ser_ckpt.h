// ser_ckpt.h — checkpoints: everything needed to continue a job bitwise, one safetensors file
// per checkpoint in a run directory (design.md §5; the file layout is in docs/checkpoints.md).
//
// A checkpoint is described once by a binding (ser_ckpt): the tables of named tensors with
// their arenas (trainable parameters, momentum / teacher encoder, BatchNorm buffers), the
// AdamW state, extra float tensors (the DINO centre) and extra int64 scalars. The same binding
// saves and loads, so what is written and what is read back cannot drift apart:
//
//     ser_ckpt *ck = ser_ckpt_new();
//     ser_ckpt_add_table(ck, &m.tab, m.params, NULL);     // base_encoder.*, predictor.*, ...
//     ser_ckpt_add_table(ck, &m.mtab, m.mparams, NULL);   // momentum_encoder.*
//     ser_ckpt_add_table(ck, &m.btab, m.buffers, NULL);   // BatchNorm running stats
//     ser_ckpt_add_optim(ck, &opt);                       // optimizer.<name>.exp_avg, ...
//     rc = ser_ckpt_load_latest_valid(ck, dir, &cfg, &pos, path, sizeof path, err);  // resume
//     ...  every run.checkpoint_every steps:
//     rc = ser_ckpt_save(ck, dir, &pos, &cfg, cfg.run.keep_checkpoints, path, sizeof path, err);
//
// Contents of one file (all tensors little-endian, row-major):
//   <table prefix><ptab name>        F32, the ptab shape: the reference state_dict names, so
//                                    PyTorch can load_state_dict(strict=True) the model subset;
//                                    counters (SER_TINFO_COUNTER) as 0-d I64, as PyTorch does
//   optimizer.<name>.exp_avg         F32, AdamW moments (ser_optim_state_key), for every
//   optimizer.<name>.exp_avg_sq      tensor with state (step > 0); a tensor without state
//   optimizer.<name>.step            0-d I64                (step 0) has none, as in torch
//   <extra name>                     F32 / 0-d I64 tensors added with ser_ckpt_add_f32/_i64
//   train.step, train.epoch,         0-d I64, the training position (ser_ckpt_pos)
//   train.data_cursor, train.iters_per_epoch
// and __metadata__: format, format_version, config_hash, config (the full canonical dump),
// content_hash (XXH3-64 over every tensor's name, dtype, shape and bytes and the other four
// metadata values). RNG streams and schedules (lr, wd, momentum, teacher temperature, SER
// ratio) are pure functions of the step in ser (ser_rng.h, ser_sched.h), so the step is their
// position and nothing else is stored for them.
//
// Run directory: <dir>/ckpt-<step, 10 digits>.safetensors, <dir>/latest (one line: the file
// name of the newest checkpoint), <dir>/.ckpt.lock (held while saving). Saving writes the file
// atomically (tmp, fsync, rename, fsync dir), then `latest` the same way, then deletes the
// checkpoints beyond the last K; a process killed at any point leaves the old set intact or
// the new one complete, and stale tmp files are removed by the next save.
//
// Loading verifies, in order, the format and its version, the content hash, the training
// position, the config hash (a mismatch names the options that differ) and every tensor's
// presence, dtype and shape (strict both ways: nothing missing, nothing unexpected); only then
// does it copy into the bound memory, so nothing is modified when a checkpoint is refused.
//
// defines:
//   SER_CKPT_FORMAT, SER_CKPT_VERSION, SER_CKPT_HASH_ALGO, SER_CKPT_LATEST
//   ser_ckpt_pos                                  step, epoch, data cursor
//   ser_ckpt (opaque binding)                     ser_ckpt_new(), ser_ckpt_destroy(),
//                                                 ser_ckpt_add_table(), ser_ckpt_add_optim(),
//                                                 ser_ckpt_add_f32(), ser_ckpt_add_i64()
//   ser_ckpt_save()                               write, point `latest` at it, rotate
//   ser_ckpt_load(), ser_ckpt_verify()            check everything, then copy (load only)
//   ser_ckpt_find_latest(), ser_ckpt_load_latest_valid(), ser_ckpt_find_latest_valid()
//                                                 resume from a directory, or pick from it
//   ser_ckpt_list(), ser_ckpt_name(), ser_ckpt_parse_name() the directory's naming scheme
#ifndef SER_CKPT_H
#define SER_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"
#include "ser_config.h"
#include "ser_optim.h"
#include "ser_ptab.h"

#define SER_CKPT_FORMAT "ser-checkpoint"  // metadata "format"
#define SER_CKPT_VERSION 2                // metadata "format_version"; bump on layout changes
#define SER_CKPT_HASH_ALGO "xxh3-64"      // metadata "content_hash" is "xxh3-64:<16 hex>"
#define SER_CKPT_LATEST "latest"          // the pointer file in the run directory

// The training position. step is the number of optimizer steps applied so far, which is also
// the 0-based iteration the next step runs (the argument of ser_sched_eval and of the RNG
// keys); epoch and data_cursor are where the data stream of that next step starts (the
// cursor's unit is the data loader's: e.g. the global sample index in the epoch order).
typedef struct ser_ckpt_pos {
    int64_t step, epoch, data_cursor;  // all >= 0
    // The schedules' epoch length the run was trained with (0: not recorded, e.g. `ser step`
    // without one): a resume keeps it, so it cannot change the schedules half-way.
    int64_t iters_per_epoch;
} ser_ckpt_pos;

// --- the binding -------------------------------------------------------------------------------
typedef struct ser_ckpt ser_ckpt;

// Caller owns the binding; release with ser_ckpt_destroy() (NULL-safe, sets *c = NULL).
ser_ckpt *ser_ckpt_new(void);
void ser_ckpt_destroy(ser_ckpt **c);

// Binds every entry t of tab as tensor prefix+t.name (prefix may be NULL) with data
// arena + t.offset. Nothing is copied: tab and arena must stay valid (and tab unchanged) while
// the binding is used; save reads the arena, load writes it. Names longer than
// SER_TINFO_NAME_LEN-1 bytes, or bound twice across the binding, abort (SER_ASSERT).
void ser_ckpt_add_table(ser_ckpt *c, const ser_ptab *tab, float *arena, const char *prefix);
// Binds the AdamW state of o (its exp_avg / exp_avg_sq arenas and per-tensor steps) under
// ser_optim_state_key names. Frozen tensors have no state. Not owned; at most one optimizer.
void ser_ckpt_add_optim(ser_ckpt *c, ser_optim *o);
// Binds an extra F32 tensor of ndim (0..4) dims, e.g. "dino_loss.center" (1, K). Not copied.
void ser_ckpt_add_f32(ser_ckpt *c, const char *name, float *data, int ndim, const int64_t *shape);
// Binds an extra int64 scalar (a 0-d I64 tensor), e.g. a count of skipped steps. Not copied.
void ser_ckpt_add_i64(ser_ckpt *c, const char *name, int64_t *value);

// --- saving ------------------------------------------------------------------------------------
// Writes <dir>/ckpt-<pos->step>.safetensors from the bound memory (which must not change
// during the call), with cfg's hash and canonical dump, then points <dir>/latest at it, then
// deletes the older checkpoints beyond the newest keep_last (keep_last < 1 keeps all; the file
// just written always stays; checkpoints with a larger step than pos->step, left by an
// abandoned run, are kept and logged). Creates dir (and its parents) if needed. Holds an
// exclusive lock (<dir>/.ckpt.lock, flock) for the duration: a second process saving into the
// same directory at the same time gets SER_EIO. Removes tmp files left by a killed save.
// path (may be NULL) receives the file written. Returns SER_OK, SER_EINVAL (negative
// position), SER_EIO (with the step that failed: the previous checkpoints are intact) or
// SER_ENOMEM.
int ser_ckpt_save(ser_ckpt *c, const char *dir, const ser_ckpt_pos *pos, const ser_config *cfg,
                  int keep_last, char *path, size_t path_len, char err[SER_ERR_LEN]);

// --- loading -----------------------------------------------------------------------------------
// Loads the checkpoint at path into the bound memory and *pos. cfg is the current job's
// configuration; NULL skips the config check (tools that only read weights, never a resume).
// Every check runs before anything is written; on error the bound memory and *pos are
// unchanged. Returns SER_OK or, with a one-line message naming the file:
//   SER_ENOENT / SER_EIO  cannot open or read;          SER_EFORMAT  not a ser checkpoint,
//   SER_EVERSION  another format version (with a hint); SER_EHASH    corrupt or modified,
//   SER_ECONFIG   written by another config (names the differing options, both hashes),
//   SER_EFORMAT   bound tensors missing from the file or file tensors nothing binds (counts,
//                 first names), SER_ESHAPE / SER_EDTYPE a tensor's shape or dtype (name, both
//                 sides). SER_ENOENT always means the file itself does not exist.
int ser_ckpt_load(ser_ckpt *c, const char *path, const ser_config *cfg, ser_ckpt_pos *pos,
                  char err[SER_ERR_LEN]);
// The checks of ser_ckpt_load that need no binding (format, version, content hash, position,
// config): SER_OK if the file is an intact checkpoint of this job. pos (may be NULL) receives
// the stored position.
int ser_ckpt_verify(const char *path, const ser_config *cfg, ser_ckpt_pos *pos,
                    char err[SER_ERR_LEN]);

// --- the run directory -------------------------------------------------------------------------
// "ckpt-0000000100.safetensors" for step 100 (at least 10 digits, zero-padded); returns buf.
const char *ser_ckpt_name(char *buf, size_t n, int64_t step);
// 1 and *step if name is exactly ser_ckpt_name(step) for some step >= 0, else 0 (tmp files,
// other names, non-canonical padding).
int ser_ckpt_parse_name(const char *name, int64_t *step);
// The steps of the checkpoint files in dir (regular files with a parseable name), ascending.
// Caller owns *steps (free()); *n may be 0. SER_ENOENT if dir does not exist, SER_EIO.
int ser_ckpt_list(const char *dir, int64_t **steps, int *n, char err[SER_ERR_LEN]);
// The newest checkpoint of dir: the file `latest` names if it parses and exists, else the
// largest step present. Nothing is opened or verified. path (may be NULL) and *step (may be
// NULL) receive it. SER_OK, SER_ENOENT (no checkpoint, or no dir) or SER_EIO.
int ser_ckpt_find_latest(const char *dir, char *path, size_t path_len, int64_t *step,
                         char err[SER_ERR_LEN]);
// Resume: tries ser_ckpt_find_latest()'s checkpoint, then every older one in descending step
// order, logging each refusal (SER_LL_WARNING), and loads the first that passes every check.
// It stops at the first SER_ECONFIG or SER_EVERSION (a property of the job, not of one file).
// Returns SER_OK (path receives the file), SER_ENOENT when dir holds no checkpoint at all
// (a fresh start), or the refusal of the newest checkpoint when none could be loaded (never
// start from scratch on that). The bound memory is only written by the load that succeeds.
int ser_ckpt_load_latest_valid(ser_ckpt *c, const char *dir, const ser_config *cfg,
                               ser_ckpt_pos *pos, char *path, size_t path_len,
                               char err[SER_ERR_LEN]);
// The same choice without a binding or a config check (evaluation, export): the first
// checkpoint, in resume's order, that ser_ckpt_verify(path, NULL, ...) passes. Same returns;
// nothing is loaded.
int ser_ckpt_find_latest_valid(const char *dir, char *path, size_t path_len,
                               char err[SER_ERR_LEN]);

// XXH3-64 of n bytes at p (the hash the chain's parameter broadcast checks).
uint64_t ser_ckpt_bytes_hash(const void *p, size_t n);

#endif
