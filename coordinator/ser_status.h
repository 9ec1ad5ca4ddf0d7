// ser_status.h — the coordinator's status port: HTTP on libuv in its own thread, and the
// `ser status` client.
//
// The training side pushes a snapshot with ser_status_update() after every step or phase
// change; the call copies it under a mutex and returns (it never waits on the network). The
// server thread runs its own libuv loop and renders every response from its copy:
//
//   GET /                        a self-contained HTML page with the loss curves
//   GET /status                  JSON, four sections (coordinator, training, workers, data)
//   GET /status?section=NAME     one section (as a JSON object with that one key)
//   GET /status?format=info      the same fields as Redis INFO text (`# Training`, `key:value`)
//   GET /metrics                 Prometheus text exposition format 0.0.4
//   GET /history[?since=STEP]    the last `history_cap` (step, lr, loss terms) points
//
// Every field is documented in docs/status.md. Requests are parsed with http-parser (nodejs
// 2.9 API); anything larger than SER_STATUS_MAX_REQUEST bytes is refused (431) and the
// connection closed. Ages (heartbeat, checkpoint, waiting) are computed when a request is
// served, from timestamps taken with ser_clock_now_ms(), so they keep growing while the
// coordinator is stalled and does not update.
//
// Threads: the server is an actor (STYLE rule 9). ser_status_new() blocks until the listener is
// bound (or fails), ser_status_destroy() wakes the loop with a uv_async ($TERM), which closes
// every handle, and joins. ser_status_update() may be called from any thread.
//
// defines:
//   ser_status_state, ser_status_phase, ser_status_worker_state (+ _name())
//   ser_status_term, ser_status_worker, ser_status_loader, ser_status_snapshot,
//   ser_status_snapshot_init()
//   ser_status_opts, ser_status_opts_defaults()
//   ser_status (opaque), ser_status_new(), ser_status_port(), ser_status_update(),
//   ser_status_destroy()
//   client (coordinator/ser_status_cmd.c): ser_status_fetch(), ser_status_format(),
//   ser_cmd_status()
#ifndef SER_STATUS_H
#define SER_STATUS_H

#include <stddef.h>
#include <stdint.h>

#include "ser_base.h"

#define SER_STATUS_NAME_LEN 64       // ids (a worker id is up to 63 bytes) and term names, NUL included
#define SER_STATUS_ADDR_LEN 128      // "host:port" or a ZeroMQ endpoint
#define SER_STATUS_TEXT_LEN 256      // waiting_for
#define SER_STATUS_PATH_LEN 512      // checkpoint path
#define SER_STATUS_JOB_LEN 161       // as SER_CONFIG_STR_LEN
#define SER_STATUS_MAX_TERMS 16      // loss terms per snapshot (loss, loss_inv, loss_equiv, ...)
#define SER_STATUS_MAX_SHARDS 64     // shard indices listed per worker (more are counted only)
#define SER_STATUS_MAX_REQUEST 8192  // bytes of one request (request line + headers + body)
#define SER_STATUS_MAX_PIPELINE 16   // responses queued on one connection before it is closed

// --- values ------------------------------------------------------------------------------------

typedef enum ser_status_state {
    SER_STATUS_STATE_STARTING = 0,  // loading config/checkpoint, waiting for the first workers
    SER_STATUS_STATE_RUNNING,       // steps are being computed
    SER_STATUS_STATE_WAITING,       // a step is stalled; waiting_for says on whom
    SER_STATUS_STATE_STOPPED,       // finished or shutting down
    SER_STATUS_STATE_COUNT
} ser_status_state;

typedef enum ser_status_phase {
    SER_STATUS_PHASE_IDLE = 0,  // between steps
    SER_STATUS_PHASE_FORWARD,
    SER_STATUS_PHASE_OBJECTIVE,  // the reducer's global terms
    SER_STATUS_PHASE_BACKWARD,
    SER_STATUS_PHASE_APPLY,  // optimizer step, teacher/momentum update
    SER_STATUS_PHASE_CHECKPOINT,
    SER_STATUS_PHASE_COUNT
} ser_status_phase;

typedef enum ser_status_worker_state {
    SER_STATUS_WORKER_JOINING = 0,  // handshake done, no shard yet
    SER_STATUS_WORKER_IDLE,
    SER_STATUS_WORKER_BUSY,  // computing assigned shards
    SER_STATUS_WORKER_LOST,  // missed its heartbeats; its shards are being recomputed
    SER_STATUS_WORKER_COUNT
} ser_status_worker_state;

// Lower-case names as they appear in JSON and metrics ("running", "backward", "busy");
// "unknown" for an out-of-range value.
const char *ser_status_state_name(int state);
const char *ser_status_phase_name(int phase);
const char *ser_status_worker_state_name(int state);

// --- the snapshot ------------------------------------------------------------------------------
// Timestamps named *_ms are ser_clock_now_ms() values (monotonic); a value < 0 means "never"
// or "not set". Doubles that are NaN are "unknown" (JSON null, left out of /metrics).

typedef struct ser_status_term {
    char name[SER_STATUS_NAME_LEN];  // "loss", "loss_inv", "loss_equiv", ...
    double value;
} ser_status_term;

typedef struct ser_status_worker {
    char id[SER_STATUS_NAME_LEN];  // "w3"
    char address[SER_STATUS_ADDR_LEN];
    int state;                          // ser_status_worker_state
    int64_t last_heard_ms;              // last heartbeat or message
    int n_shards;                       // shards assigned for the current step
    int shards[SER_STATUS_MAX_SHARDS];  // the first min(n_shards, MAX) shard indices
} ser_status_worker;

typedef struct ser_status_loader {
    char id[SER_STATUS_NAME_LEN];
    char address[SER_STATUS_ADDR_LEN];
    int64_t lag_steps;   // steps the loader is behind the coordinator's step (< 0: ahead)
    int64_t lag_shards;  // shards requested but not served yet (< 0: unknown)
    int64_t last_heard_ms;
    // The loader process's own counters (< 0: unknown): shards served to every client, distinct
    // bad files, loads that needed a replacement.
    int64_t served, bad_files, replacements;
} ser_status_loader;

typedef struct ser_status_snapshot {
    // coordinator
    char job_id[SER_STATUS_JOB_LEN];
    char job_name[SER_STATUS_JOB_LEN];
    int state;               // ser_status_state
    uint64_t config_hash;    // ser_config_hash(); shown as 16 hex digits
    double start_time_unix;  // wall clock (seconds since 1970) when the job (re)started
    char waiting_for[SER_STATUS_TEXT_LEN];  // "" when not waiting
    int64_t waiting_since_ms;
    char ckpt_path[SER_STATUS_PATH_LEN];  // "" when no checkpoint yet
    int64_t ckpt_step;
    int64_t ckpt_time_ms;
    // training
    int64_t step;        // the step being computed (or the next one when idle)
    double epoch;        // fractional: samples seen / dataset size
    int phase;           // ser_status_phase
    int64_t terms_step;  // the step the loss terms below belong to (< 0: none yet)
    int n_terms;
    ser_status_term terms[SER_STATUS_MAX_TERMS];
    double lr, momentum, weight_decay;  // schedules at `step` (momentum: teacher/momentum coef.)
    double images_per_second;           // recent throughput
    double eta_s;                       // estimated seconds to the end of the job
    int64_t steps_total;                // the run's last step + 1 (< 0: unknown)
    double knn_top1;                    // online kNN monitor: top-1 in percent (NaN: none yet)
    int64_t knn_step;                   // the step whose weights it measured (< 0: none yet)
    double cls_std;                     // collapse monitor of step terms_step (NaN: none yet)
    // workers and data. Borrowed by ser_status_update() for the duration of the call only.
    int n_workers;
    const ser_status_worker *workers;
    int n_loaders;
    const ser_status_loader *loaders;
} ser_status_snapshot;

// Zeroes *snap and sets "unknown" values: NaNs, -1 timestamps and steps, no terms.
void ser_status_snapshot_init(ser_status_snapshot *snap);

// --- the server --------------------------------------------------------------------------------

typedef struct ser_status_opts {
    int max_conns;    // concurrent connections; extra ones get 503 and are closed (64)
    int timeout_ms;   // a request must arrive, and its response drain, within this (10000)
    int history_cap;  // points kept in the loss-curve ring buffer (2000)
} ser_status_opts;

void ser_status_opts_defaults(ser_status_opts *o);

typedef struct ser_status ser_status;

// Starts the server thread and blocks until it listens on bind_addr:port. bind_addr is a
// numeric IPv4/IPv6 address or "localhost"; NULL or "" means 127.0.0.1. port 0 picks an
// ephemeral port (see ser_status_port). opts may be NULL (defaults). Returns NULL with a reason
// in err when the address is bad or in use. Release with ser_status_destroy().
ser_status *ser_status_new(const char *bind_addr, int port, const ser_status_opts *opts,
                           char err[SER_ERR_LEN]);
// The port actually bound.
int ser_status_port(const ser_status *s);
// Copies *snap (and the worker/loader arrays it points to) into the server under a mutex.
// When snap->terms_step is set and differs from the last recorded point, appends
// (terms_step, lr, terms) to the history, with a column cls_std when it is finite and a
// column knn_top1 when knn_step equals
// terms_step; a smaller terms_step (a rollback) first drops the points at or after it. Thread-safe; never blocks on a client. s == NULL (port off): no-op.
void ser_status_update(ser_status *s, const ser_status_snapshot *snap);
// The request path of one connection without a socket, for tests and fuzzing: feeds `len`
// bytes in reads of `chunk` bytes (0: one read) through the parser, the request limits,
// pipelining, keep-alive, the router and the renderers, exactly as a connection would, and
// returns every response it would have written (malloc'ed, NUL-terminated, *out_len bytes);
// *closed says whether the server would then close the connection. The data it renders is
// the server thread's: call it only on a server that no client is connected to.
char *ser_status_serve_bytes(ser_status *s, const char *data, size_t len, size_t chunk,
                             size_t *out_len, int *closed);
// Sends $TERM, closes the listener and every connection, joins. NULL-safe; sets *sp = NULL.
void ser_status_destroy(ser_status **sp);

// --- the client (coordinator/ser_status_cmd.c) ---------------------------------------------

// GETs `path` from "HOST:PORT" ("[v6addr]:PORT", "PORT" alone means 127.0.0.1; an
// "http://" prefix is accepted) over a blocking TCP socket, waiting at most timeout_ms for
// connect, send and the whole response. On SER_OK, *http_status is the response status and
// *body (NUL-terminated, *body_len bytes; the caller frees it with free()) its body, whatever
// the status. Returns SER_EPEER (refused, unreachable, bad response), SER_ETIMEDOUT or
// SER_EINVAL (bad HOST:PORT), with a reason in err.
int ser_status_fetch(const char *hostport, const char *path, int timeout_ms, int *http_status,
                     char **body, size_t *body_len, char err[SER_ERR_LEN]);
// Renders a /status JSON document as the terminal table of `ser status`. Returns a malloc'ed
// NUL-terminated string (caller frees), or NULL with a reason in err when json does not parse
// or is not a /status document.
char *ser_status_format(const char *json, size_t len, char err[SER_ERR_LEN]);
// `ser status HOST:PORT [--json] [--watch SECONDS] [--timeout SECONDS]`.
int ser_cmd_status(int argc, char **argv);

#endif
