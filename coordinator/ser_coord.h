// ser_coord.h — the coordinator: owns the parameters, AdamW state and teacher, schedules the
// two-phase steps over the workers, reduces in shard order, applies the update.
//
// A step t (docs/batch-coupling.md):
//   1. teacher EMA with m_t; PARAMS: the student backbone at t to every worker (and the teacher
//      to a worker that does not hold the previous one: workers apply the same EMA themselves);
//   2. FORWARD (t, s, attempt) for every shard, round-robin over live workers;
//   3. when every shard's rows are in: the objective over the gathered batch (by position);
//   4. BACKWARD (t, s, attempt) with the shard's gradient rows to the worker holding its
//      activations; a worker that died after its forward is replaced by a survivor that redoes
//      FORWARD then BACKWARD (same bits: the forward is deterministic);
//   5. when every shard's gradient is in: the sum in shard order, clipping, AdamW.
// Contributions are accepted only for the current (step, shard, attempt): late or duplicate
// ones are dropped. Every wait has a deadline (cluster.timeout_ms) and logs what it waits for.
//
// defines: ser_coord_opts, ser_coord_run(), ser_coord_iters_per_epoch(), ser_cmd_coordinator()
#ifndef SER_COORD_H
#define SER_COORD_H

#include <stdint.h>

#include "ser_base.h"
#include "ser_cmd.h"
#include "ser_config.h"

typedef struct ser_coord_opts {
    ser_config cfg;
    const char *batch_file;     // for `ser local`: the workers' batch file (the coordinator
                                // itself reads no data: shards' results carry their layout)
    const char *loader;         // for `ser local`: loader endpoints handed to the workers
    const char *weights;        // initial weights (strict), or NULL: init from data.seed
    const char *out;            // final state, in `ser step`'s output layout
    const char *endpoint_file;  // written with the bound control endpoint (ephemeral ports)
    int64_t steps, iter, iters_per_epoch;
    double lr_fix, wd_fix, mom_fix;  // NAN: schedules
    int wait_workers_ms;        // how long to wait for the first worker
    int min_workers;            // workers to wait for (up to wait_workers_ms) before the first
                                // step; 0 or 1: start with the first
} ser_coord_opts;

// Runs the job to the end; returns a process exit status: SER_EXIT_OK (done), SER_EXIT_FAILED,
// SER_EXIT_USAGE (the job cannot start), SER_EXIT_INTERRUPTED (stopped by SIGINT/SIGTERM after
// checkpointing the last completed step). The run trains --steps K steps from --iter, else up
// to run.max_steps, else the whole schedule (optim.epochs x the steps per epoch below); a
// resume continues from the newest checkpoint of run.out_dir and keeps the epoch length it
// was trained with.
int ser_coord_run(const ser_coord_opts *o);

// Steps per schedule epoch: o->iters_per_epoch (--iters-per-epoch) when > 0, else
// data.iters_per_epoch when > 0, else ceil(train images / data.global_batch) with the images
// counted from data.path (a batch file is a dataset of one batch: 1; synthetic data has
// data.synthetic_images). *how (hn bytes) says which. SER_ECONFIG, naming the key to set, when
// the data cannot be read here.
int ser_coord_iters_per_epoch(const ser_coord_opts *o, int64_t *ipe, char *how, size_t hn,
                              char err[SER_ERR_LEN]);

#endif
