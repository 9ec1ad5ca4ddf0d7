// ser_coord.c — see ser_coord.h.
#include "ser_coord.h"

#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <zmq.h>

#include "ser_ckpt.h"
#include "ser_curve.h"
#include "ser_cmd.h"
#include "ser_dl_data.h"
#include "ser_knn_monitor.h"
#include "ser_loadstat.h"
#include "ser_monitor.h"
#include "ser_kernels.h"
#include "ser_runlog.h"
#include "ser_safetensors.h"
#include "ser_status.h"
#include "ser_train.h"
#include "ser_shard.h"
#include "ser_wire.h"

#define SER_COORD_MAX_WORKERS 256

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

typedef struct s_worker {
    char id[SER_WIRE_MAX_IDENTITY];
    int alive;
    int64_t last_heard_ms;
    int64_t teacher_version;  // the step of the teacher it holds (INT64_MIN: none)
    int64_t params_sent_ms;   // when its last PARAMS went out
    int params_resends;       // PARAMS sent again in this step because it said it lacked them
    int64_t params_step;      // the step of the last PARAMS sent on its connection (INT64_MIN:
                              // none since its HELLO)
    int64_t skip_step;        // gets no more tasks in this step (it missed a task deadline)
    int strikes;              // task deadlines missed
    int banned;               // missed two: no more work, its messages are dropped
    int data_banned;          // banned because its data loader refuses the job's shards
    int data_failures;        // TASK_FAILED answers (its loader refused a shard)
    int offences;             // contributions that did not match what was asked
    char addr[64];            // its address as ZeroMQ saw it on its last HELLO ("" unknown)
    char peer_ep[160];        // cluster.reduce = chain: its peer socket ("" none announced)
    char peer_key[41];        // and its CURVE public key ("" plaintext)
} s_worker;

enum { SH_IDLE = 0, SH_FWD_SENT, SH_FWD_DONE, SH_BWD_SENT, SH_BWD_DONE };

typedef struct s_shard {
    int state;
    int worker;        // index into workers
    uint32_t attempt;
    int redo;          // the worker holding its activations died: forward again, then backward
    int64_t sent_ms;   // when its last FORWARD or BACKWARD went out
    int p0, p1;        // global positions
    int n_eq, e0;      // its equivariant samples (the last positions) and the first's index
    ser_group_elem *g[2];  // [view] (n_eq,) as computed by the worker
    float *maps[4];    // qmap0, qmap1, kmap0, kmap1 rows of this step
    size_t ntok[2];
    ser_group_elem *lg[2];  // [view] (n_eq * P,) its local SER pairs' group elements (P > 0)
    float *lmaps[2];        // lqmap0, lqmap1 rows of this step
    size_t lntok[2];
    float *grad;       // its ViT gradient when it came before an earlier shard's (span
                       // floats; NULL once folded into the step's sum, s_fold_ready)
    size_t bad_at;     // its gradient's first non-finite element (SIZE_MAX: none)
} s_shard;

typedef struct s_coord {
    const ser_coord_opts *o;
    ser_trainer tr;
    const ser_objective_model *m;  // the objective's model: student, teacher (workers compute with)
    size_t toff;                   // the teacher's span in its arena
    void *ctx, *sock;
    char job_id[SER_CONFIG_STR_LEN];
    uint64_t hash;
    s_worker w[SER_COORD_MAX_WORKERS];
    int nw;
    s_shard *sh;
    int S, B;
    size_t off, span;  // the student ViT's span of the arena
    ser_gathered g;    // the batch of this step, assembled from the shards
    ser_batch b;       // its composition (no images: the objective reads n_inv, n_eq, g)
    ser_group_elem *gall[2];
    ser_group_elem *lgall[2];  // the local SER pairs' group elements of the batch (e-major)
    int64_t step;
    double momentum;
    double tmom;  // the EMA taking step - 1's teacher to this step's (what PARAMS carries)
    // The status port (NULL when cluster.status_port < 0) and what it shows.
    ser_status *st;
    int phase, state;
    char waiting[SER_STATUS_TEXT_LEN];
    int64_t waiting_since;
    double lr, wd, ips, start_unix, gnorm;
    double step_med;  // median of the last (up to 50) step times: the ETA's rate (0: none yet)
    ser_runlog *log;  // metrics.jsonl + TensorBoard events in run.out_dir (NULL: none)
    double last[3];  // loss, loss_inv, loss_equiv of the last step
    ser_collapse_watch collapse;  // run.collapse_std for run.collapse_steps steps in a row
    ser_collapse_watch ocollapse;  // the objective's own test (collapsed()) in a row
    int io_threads;                // of the ZeroMQ context (cluster.io_threads or its default)
    int64_t last_step, steps_total, first_step;
    int64_t ipe, sched_end;  // steps per schedule epoch; optim.epochs * ipe
    int64_t task_max_ms;     // the slowest forward or backward answered so far
    char data_error[SER_STATUS_TEXT_LEN];  // the last TASK_FAILED reason ("" none)
    int E;                   // equivariant samples per step (the last E positions); -1: unknown
    int grid_max;            // largest token-grid side a loader can draw
    int L;                   // local views per sample (data.local_crops)
    float *fold;             // this step's gradient sum (the trainer's buffer) during backward
    int fold_next;           // shards folded into it so far (0 .. fold_next-1, in order)
    // cluster.reduce = chain (s_chain): workers keep their shards' gradients (keep = 1 in the
    // backward phase) and pass the running sum along runs of consecutive shards; the last run's
    // holder sends it here, chunk by chunk, for reduction round `round` of the step.
    int chain, keep;
    int bcast;               // cluster.broadcast = tree (s_broadcast)
    uint32_t round;
    int nchunks, ngot;
    uint8_t *got;            // per chunk of this round's sum: arrived
    int nruns;
    int *run_a, *run_w;      // each run's first shard and holder (run_a[nruns] = S)
    char chain_error[SER_ERR_LEN];  // a holder's REDUCE_FAILED ("" none)
    int64_t chain_steps, chain_fallbacks, chain_repairs, chain_early;
    int64_t last_poll_ms;    // when s_poll last ran (s_forgive_gap)
    int gaps;                // gaps forgiven (the first is a warning, the rest debug)
    int64_t params_direct;   // cluster.broadcast = tree: PARAMS sent directly after the first step
    ser_knn_monitor *knn;    // NULL: off
    int threads;             // BLAS/OpenMP threads (run.threads or the machine's cores)
    // Peers already named in a warning (unknown, refused or malformed): later messages from
    // them are logged at debug level, so a restart with many workers re-joining, or a
    // misbehaving peer, cannot flood the log.
    char warned[64][SER_WIRE_MAX_IDENTITY + 2];
    int nwarned;
    double knn_top1, knn_top5;
    int64_t knn_step;
    // The run: steps [first, end), the checkpoint binding, the first step's gradient and the
    // losses (for --out), the step times and the bytes counted from the second step on.
    int64_t first, end, nrun;
    ser_ckpt *ck;
    float *grads0, *losses;
    double *step_s, t0;
    uint64_t b_sent0, b_recv0;
    // PARAMS sent to a worker that had already been sent this step's on the same connection
    // (the resend storm of a slow link, docs/cost-model.md): in all, and as the run's second
    // step began.
    int64_t params_resent, params_resent0;
    // The last checkpoint written or resumed from (the status port shows it).
    char ckpt_path[1024];
    int64_t ckpt_step, ckpt_time_ms;
    // The data loaders, as the workers' FORWARD_DONE texts describe them (status port).
    ser_loadstat loaders[SER_LOADSTAT_MAX];
    int nloaders;
} s_coord;

// A step's loss terms, as named on the status port and in metrics.jsonl.
static const char *const s_loss_names[3] = {"loss", "loss_inv", "loss_equiv"};

// The loss terms v as a status snapshot's terms.
static void s_snap_terms(ser_status_snapshot *snap, const double v[3]) {
    snap->n_terms = 3;
    for (int i = 0; i < 3; i++) {
        snprintf(snap->terms[i].name, sizeof snap->terms[i].name, "%s", s_loss_names[i]);
        snap->terms[i].value = v[i];
    }
}

// Publishes the coordinator's state to the status port.
static void s_publish(s_coord *c) {
    if (!c->st) return;
    ser_status_snapshot snap;
    memset(&snap, 0, sizeof snap);
    snprintf(snap.job_id, sizeof snap.job_id, "%s", c->job_id);
    snprintf(snap.job_name, sizeof snap.job_name, "%s", c->tr.cfg.run.name);
    snap.state = c->state;
    snap.config_hash = c->hash;
    snap.start_time_unix = c->start_unix;
    snprintf(snap.waiting_for, sizeof snap.waiting_for, "%s", c->waiting);
    snap.waiting_since_ms = c->waiting_since;
    snap.step = c->step;
    snap.phase = c->phase;
    snprintf(snap.ckpt_path, sizeof snap.ckpt_path, "%.*s", (int)sizeof snap.ckpt_path - 1,
             c->ckpt_path);
    snap.ckpt_step = c->ckpt_path[0] ? c->ckpt_step : -1;
    snap.ckpt_time_ms = c->ckpt_path[0] ? c->ckpt_time_ms : -1;
    snap.terms_step = c->last_step;
    if (c->last_step >= 0) s_snap_terms(&snap, c->last);
    snap.lr = c->lr, snap.momentum = c->momentum, snap.weight_decay = c->wd;
    snap.images_per_second = c->ips;
    int64_t done = c->last_step - c->first_step + 1, left = c->steps_total - done;
    snap.eta_s = done > 0 && c->step_med > 0 ? (double)left * c->step_med : -1;
    snap.steps_total = c->first_step + c->steps_total;
    snap.epoch = c->ipe ? (double)(c->last_step + 1) / (double)c->ipe : (double)NAN;
    snap.knn_top1 = c->knn_step >= 0 ? c->knn_top1 : (double)NAN;
    snap.cls_std = c->last_step >= 0 ? c->tr.cls_std : (double)NAN;
    snap.knn_step = c->knn_step;
    ser_status_worker ws[SER_COORD_MAX_WORKERS];
    for (int i = 0; i < c->nw; i++) {
        ser_status_worker *w = &ws[i];
        memset(w, 0, sizeof *w);
        snprintf(w->id, sizeof w->id, "%.*s", (int)sizeof w->id - 1, c->w[i].id);
        w->last_heard_ms = c->w[i].last_heard_ms;
        snprintf(w->address, sizeof w->address, "%s", c->w[i].addr);
        for (int sh = 0; sh < c->S; sh++)
            if (c->sh && c->sh[sh].worker == i && c->sh[sh].state != SH_BWD_DONE &&
                w->n_shards < SER_STATUS_MAX_SHARDS)
                w->shards[w->n_shards++] = sh;
        w->state = !c->w[i].alive ? SER_STATUS_WORKER_LOST
                   : w->n_shards  ? SER_STATUS_WORKER_BUSY
                                  : SER_STATUS_WORKER_IDLE;
    }
    snap.n_workers = c->nw;
    snap.workers = ws;
    ser_status_loader ls[SER_LOADSTAT_MAX];
    for (int i = 0; i < c->nloaders; i++) {
        const ser_loadstat *L = &c->loaders[i];
        ser_status_loader *l = &ls[i];
        memset(l, 0, sizeof *l);
        snprintf(l->id, sizeof l->id, "l%d", i);
        snprintf(l->address, sizeof l->address, "%s", L->endpoint);
        l->lag_steps = L->step >= 0 && c->step >= 0 ? c->step - L->step : 0;
        l->lag_shards = -1;  // a worker's requests are spread over its loaders unattributed
        l->last_heard_ms = L->heard_ms;
        l->served = (int64_t)L->served, l->bad_files = (int64_t)L->bad_files;
        l->replacements = (int64_t)L->replacements;
    }
    snap.n_loaders = c->nloaders;
    snap.loaders = ls;
    ser_status_update(c->st, &snap);
}

// A FORWARD_DONE's text: the worker's data loaders (proto/ser_loadstat.h), into the table.
static void s_note_loaders(s_coord *c, const char *text) {
    ser_loadstat rec[SER_LOADSTAT_MAX];
    int n = ser_loadstat_parse(text, rec, SER_LOADSTAT_MAX, ser_clock_now_ms());
    for (int i = 0; i < n; i++)
        ser_loadstat_merge(c->loaders, &c->nloaders, SER_LOADSTAT_MAX, &rec[i]);
}

static int64_t s_now(void) { return ser_clock_now_ms(); }

static int s_find_worker(s_coord *c, const char *id) {
    for (int i = 0; i < c->nw; i++)
        if (strcmp(c->w[i].id, id) == 0) return i;
    return -1;
}

// The log level for a complaint of one kind ('u' unknown peer, 'b' bad message, 'r' refused)
// about peer id: WARNING the first time, DEBUG afterwards.
static int s_peer_level(s_coord *c, char kind, const char *id) {
    char key[SER_WIRE_MAX_IDENTITY + 2];
    snprintf(key, sizeof key, "%c%s", kind, id);
    for (int i = 0; i < c->nwarned; i++)
        if (strcmp(c->warned[i], key) == 0) return SER_LL_DEBUG;
    if (c->nwarned < 64) snprintf(c->warned[c->nwarned++], sizeof c->warned[0], "%s", key);
    return SER_LL_WARNING;
}

static void s_env(s_coord *c, Ser__Envelope *e, Ser__MsgType type) {
    ser__envelope__init(e);
    e->job_id = c->job_id;
    e->type = type;
    e->step = (uint64_t)c->step;
}

static void s_refuse(s_coord *c, const char *id, const char *why) {
    Ser__Envelope e;
    s_env(c, &e, SER__MSG_TYPE__MSG_REFUSE);
    e.text = (char *)(uintptr_t)why;
    ser_wire_send(c->sock, id, &e, NULL, 0);
    ser_log(s_peer_level(c, 'r', id), "refused peer %s: %s", id, why);
}

static int s_live_count(const s_coord *c) {
    int n = 0;
    for (int i = 0; i < c->nw; i++) n += c->w[i].alive;
    return n;
}

// PARAMS to one worker: the student backbone of this step, and the teacher (when the method
// has one) when the worker does not hold the previous step's; holding it, the worker advances
// it itself with the momentum the message carries (MoCo: this step's, taken before the keys;
// DINO: the previous step's, taken after its update).
// 1 when worker w must be sent the teacher whole: the method has one and w holds neither this
// step's nor the previous step's (which it would advance itself by the EMA).
static int s_needs_teacher(const s_coord *c, const s_worker *w) {
    return c->m->teacher && w->teacher_version != c->step - 1 && w->teacher_version != c->step;
}

static void s_send_params(s_coord *c, int wi) {
    s_worker *w = &c->w[wi];
    Ser__Envelope e;
    s_env(c, &e, SER__MSG_TYPE__MSG_PARAMS);
    e.params_version = (uint64_t)c->step;
    e.momentum = c->tmom;
    int whole = s_needs_teacher(c, w);
    ser_wire_tensor t[2];
    int n = ser_shard_pack_params(t, c->tr.params + c->off, whole ? c->m->tparams + c->toff : NULL,
                                  c->span);
    if (whole)
        ser_log(SER_LL_DEBUG, "step %lld: sending the teacher to %s (it holds step %lld's)",
                (long long)c->step, w->id, (long long)w->teacher_version);
    w->teacher_version = c->step;  // sent, or advanced by the worker from step - 1's
    w->params_sent_ms = s_now();
    if (w->params_step == c->step) c->params_resent++;
    if (c->bcast && c->step > c->first) c->params_direct++;
    w->params_step = c->step;
    ser_wire_send(c->sock, w->id, &e, t, n);
}

// cluster.broadcast = tree: this step's student goes once, in chunks of cluster.reduce_chunk
// floats, to the first of the live workers that hold the previous step's teacher (or need
// none) and have a peer socket; each passes the chunks on to its two children in a binary
// tree over them (its ROUTE says where,
// with the step, the momentum of the teacher's EMA and the XXH3-64 of the whole, which it
// checks). The other workers get PARAMS as before. A worker the tree does not reach says so
// in its heartbeats, and s_retry_idle sends it PARAMS after cluster.timeout_ms.
static void s_broadcast(s_coord *c) {
    int mem[SER_COORD_MAX_WORKERS], n = 0;
    for (int i = 0; i < c->nw; i++) {
        s_worker *w = &c->w[i];
        if (!w->alive) continue;
        if (s_needs_teacher(c, w) || !w->peer_ep[0])
            s_send_params(c, i);
        else
            mem[n++] = i;
    }
    if (!n) return;
    const float *p = c->tr.params + c->off;
    uint64_t hash = ser_ckpt_bytes_hash(p, sizeof(float) * c->span);
    int64_t now = s_now();
    for (int k = 0; k < n; k++) {
        s_worker *w = &c->w[mem[k]];
        Ser__Envelope e;
        s_env(c, &e, SER__MSG_TYPE__MSG_ROUTE);
        e.params_version = (uint64_t)c->step, e.momentum = c->tmom, e.params_hash = hash;
        // A binary tree over the chain's workers: k passes the chunks on to 2k + 1 and 2k + 2
        // (log2 N hops from the first to the last).
        int c1 = 2 * k + 1, c2 = 2 * k + 2;
        e.next_endpoint = c1 < n ? c->w[mem[c1]].peer_ep : (char *)"";
        e.next_key = c1 < n ? c->w[mem[c1]].peer_key : (char *)"";
        e.next2_endpoint = c2 < n ? c->w[mem[c2]].peer_ep : (char *)"";
        e.next2_key = c2 < n ? c->w[mem[c2]].peer_key : (char *)"";
        if (w->params_step == c->step) c->params_resent++;
        w->teacher_version = c->step, w->params_sent_ms = now, w->params_step = c->step;
        ser_wire_send(c->sock, w->id, &e, NULL, 0);
    }
    size_t K = (size_t)c->tr.cfg.cluster.reduce_chunk;
    for (int k = 0; k < ser_shard_nchunks(c->span, K); k++) {
        size_t i0, cnt = ser_shard_chunk(c->span, K, (size_t)k, &i0);
        ser_wire_tensor t = {"student", 1, {(int64_t)cnt}, p + i0};
        Ser__Envelope e;
        s_env(c, &e, SER__MSG_TYPE__MSG_PARAMS_CHUNK);
        e.params_version = (uint64_t)c->step, e.chunk = (uint32_t)k;
        e.momentum = c->tmom, e.params_hash = hash;
        ser_wire_send(c->sock, c->w[mem[0]].id, &e, &t, 1);
    }
}

// Round-robin over the live workers, leaving out one that missed a task deadline in this step
// while another is there.
// With cluster.reduce = chain, contiguous blocks instead: live worker r of n gets shards
// floor(rS/n) .. floor((r+1)S/n) - 1, so that a worker's shards are one run of the chain.
static int s_pick_worker(s_coord *c, int s) {
    int live[SER_COORD_MAX_WORKERS], n = 0;
    for (int i = 0; i < c->nw; i++)
        if (c->w[i].alive && c->w[i].skip_step != c->step) live[n++] = i;
    if (n == 0)
        for (int i = 0; i < c->nw; i++)
            if (c->w[i].alive) live[n++] = i;
    if (!n) return -1;
    if (!c->chain) return live[s % n];
    int r = 0;
    while (r + 1 < n && (int64_t)(r + 1) * c->S / n <= s) r++;
    return live[r];
}

// How long a task may stay unanswered by a worker that heartbeats (cluster.task_timeout_ms).
static int64_t s_task_deadline(const s_coord *c) {
    int64_t t = c->tr.cfg.cluster.task_timeout_ms;
    if (t > 0) return t;
    if (c->task_max_ms <= 0) return 600000;
    return 10 * c->task_max_ms > 60000 ? 10 * c->task_max_ms : 60000;
}

// The unfinished shards of worker wi (lost, or given no more work) go back to be computed
// elsewhere.
static void s_release_shards(s_coord *c, int wi) {
    for (int s = 0; s < c->S; s++) {
        s_shard *sh = &c->sh[s];
        if (sh->worker != wi) continue;
        if (sh->state == SH_FWD_SENT) {
            sh->state = SH_IDLE;  // forward again elsewhere (a redo stays a redo)
        } else if (sh->state == SH_FWD_DONE) {
            sh->redo = 1;  // rows gathered, activations lost: forward again before backward
        } else if (sh->state == SH_BWD_SENT) {
            sh->redo = 1;
            sh->state = SH_IDLE;
        }
    }
}

// Shard s goes back to be computed by another worker than wi in this step (forward again
// where its backward was lost with the worker's activations).
static void s_move_shard(s_coord *c, int wi, int s) {
    s_shard *sh = &c->sh[s];
    if (sh->state == SH_BWD_SENT) sh->redo = 1;
    sh->state = SH_IDLE;
    c->w[wi].skip_step = c->step;
}

// Worker wi gets no more work (its messages are dropped, a new HELLO refused) and its
// unfinished shards move; the warning says why.
static void s_ban(s_coord *c, int wi, const char *fmt, ...) SER_FMT(3, 4);
static void s_ban(s_coord *c, int wi, const char *fmt, ...) {
    s_worker *w = &c->w[wi];
    if (w->banned) return;
    w->banned = 1;
    w->alive = 0;
    char why[SER_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    ser_log(SER_LL_WARNING, "%s", why);
    s_release_shards(c, wi);
}

// Tasks past their deadline at a busy worker go to another one (the late answer will be stale);
// a worker that does this twice gets no more work.
static void s_check_deadlines(s_coord *c) {
    int64_t now = s_now(), dl = s_task_deadline(c);
    for (int s = 0; s < c->S; s++) {
        s_shard *sh = &c->sh[s];
        if ((sh->state != SH_FWD_SENT && sh->state != SH_BWD_SENT) || now - sh->sent_ms <= dl ||
            sh->worker < 0 || !c->w[sh->worker].alive)
            continue;
        s_worker *w = &c->w[sh->worker];
        ser_log(SER_LL_WARNING, "step %lld: shard %d %s (attempt %u) unanswered for %lld ms by "
                "worker %s, which still heartbeats (task deadline %lld ms): moving it",
                (long long)c->step, s, sh->state == SH_FWD_SENT ? "forward" : "backward",
                sh->attempt, (long long)(now - sh->sent_ms), w->id, (long long)dl);
        int wi = sh->worker;
        if (w->skip_step != c->step) w->strikes++;  // one strike per step, however many shards
        s_move_shard(c, wi, s);
        if (w->strikes >= 2)
            s_ban(c, wi, "worker %s missed its task deadline in %d steps: it gets no more work",
                  w->id, w->strikes);
    }
}

static void s_send_forward(s_coord *c, int s) {
    s_shard *sh = &c->sh[s];
    int wi = s_pick_worker(c, s);
    if (wi < 0) return;
    sh->worker = wi;
    sh->attempt++;
    sh->state = SH_FWD_SENT;
    Ser__Envelope e;
    s_env(c, &e, SER__MSG_TYPE__MSG_FORWARD);
    e.shard = (uint32_t)s;
    e.attempt = sh->attempt;
    e.momentum = c->momentum;
    e.params_version = (uint64_t)c->step;
    ser_wire_send(c->sock, c->w[wi].id, &e, NULL, 0);
    sh->sent_ms = s_now();
}

static void s_send_backward(s_coord *c, int s) {
    s_shard *sh = &c->sh[s];
    size_t map0[2] = {sh->n_eq ? c->g.tokoff[0][sh->e0] : 0, sh->n_eq ? c->g.tokoff[1][sh->e0] : 0};
    size_t lmap0[2] = {0, 0};
    for (int v = 0; c->g.n_lpairs && sh->n_eq && v < 2; v++)
        lmap0[v] = c->g.ltokoff[v][(size_t)sh->e0 * c->g.n_lpairs];
    ser_wire_tensor t[SER_SHARD_MAX_BWD];
    int nt = ser_shard_pack_backward(t, &c->g, sh->p0, sh->p1 - sh->p0, map0, sh->ntok, lmap0,
                                     sh->lntok);
    Ser__Envelope e;
    s_env(c, &e, SER__MSG_TYPE__MSG_BACKWARD);
    e.shard = (uint32_t)s;
    e.attempt = sh->attempt;
    e.keep = (uint32_t)c->keep;
    sh->state = SH_BWD_SENT;
    ser_wire_send(c->sock, c->w[sh->worker].id, &e, t, nt);
    sh->sent_ms = s_now();  // after the send, which a fault plan may delay
}

// Takes a shard's forward results (validated by the shard schema, proto/ser_shard.h): [CLS]
// rows into the batch (by position), its group elements and maps kept per shard until every
// shard is in. SER_EFORMAT / SER_ESHAPE when they are not what was asked.
static int s_take_forward(s_coord *c, int s, const ser_wire_msg *m) {
    s_shard *sh = &c->sh[s];
    int C = c->g.C, want = -1;
    if (c->E >= 0) {  // the job's layout: the last E positions of the batch are equivariant
        int lo = c->B - c->E;
        want = sh->p1 - (lo > sh->p0 ? lo : sh->p0);
        if (want < 0) want = 0;
    }
    ser_shard_fwd f;
    int rc = ser_shard_parse_forward(m, sh->p1 - sh->p0, C, c->m->teacher != NULL, c->L,
                                     c->g.vparams != NULL, c->g.pool, c->g.n_lpairs, want,
                                     c->grid_max, &f);
    if (rc) return rc;
    size_t nr = (size_t)(sh->p1 - sh->p0);
    float *dst[4] = {c->g.qcls[0], c->g.qcls[1], c->g.kcls[0], c->g.kcls[1]};
    for (int i = 0; i < 4; i++)
        if (f.cls[i]) memcpy(dst[i] + (size_t)sh->p0 * C, f.cls[i], sizeof(float) * nr * C);
    for (int k = 0; k < c->L; k++)
        memcpy(c->g.lcls[k] + (size_t)sh->p0 * C, f.lcls[k], sizeof(float) * nr * C);
    for (int v = 0; c->g.pool && v < 2 + c->L; v++)
        memcpy(c->g.qpool[v] + (size_t)sh->p0 * C, f.qpool[v], sizeof(float) * nr * C);
    if (f.vparams)
        memcpy(c->g.vparams + (size_t)sh->p0 * 2 * SER_VIEW_PARAMS, f.vparams,
               sizeof(float) * nr * 2 * SER_VIEW_PARAMS);
    for (int v = 0; v < 2; v++) free(sh->g[v]), sh->g[v] = f.g[v], f.g[v] = NULL;
    for (int i = 0; i < 4; i++) {
        free(sh->maps[i]);
        sh->maps[i] = ser_xaligned(sizeof(float) * (f.ntok[i & 1] * C + 1));
        if (f.maps[i]) memcpy(sh->maps[i], f.maps[i], sizeof(float) * f.ntok[i & 1] * C);
    }
    sh->n_eq = f.n_eq, sh->ntok[0] = f.ntok[0], sh->ntok[1] = f.ntok[1];
    for (int v = 0; v < 2; v++) {
        free(sh->lg[v]), sh->lg[v] = f.lg[v], f.lg[v] = NULL;
        free(sh->lmaps[v]);
        sh->lmaps[v] = ser_xaligned(sizeof(float) * (f.lntok[v] * C + 1));
        if (f.lmaps[v]) memcpy(sh->lmaps[v], f.lmaps[v], sizeof(float) * f.lntok[v] * C);
        sh->lntok[v] = f.lmaps[v] ? f.lntok[v] : 0;
    }
    return SER_OK;
}

// Once every shard's forward is in: the batch's composition and maps, in shard order. The
// equivariant samples must be the last positions of the batch (the loader's and the batch
// file's layout); SER_EFORMAT otherwise.
static int s_assemble(s_coord *c, char *err) {
    int n_eq = 0;
    for (int s = 0; s < c->S; s++) {
        s_shard *sh = &c->sh[s];
        if (sh->n_eq && sh->n_eq != sh->p1 - sh->p0 && s + 1 < c->S && c->sh[s + 1].n_eq != c->sh[s + 1].p1 - c->sh[s + 1].p0) {
            snprintf(err, SER_ERR_LEN, "shard %d: equivariant samples are not at the end of the batch", s);
            return SER_EFORMAT;
        }
        sh->e0 = n_eq;
        n_eq += sh->n_eq;
    }
    ser_gathered *g = &c->g;
    for (int v = 0; v < 2; v++) {
        free(g->tok[v]), free(g->tokoff[v]), free(g->qmap[v]), free(g->kmap[v]), free(g->dqmap[v]);
        free(c->gall[v]);
        c->gall[v] = ser_xcalloc((size_t)n_eq + 1, sizeof(ser_group_elem));
        g->tok[v] = ser_xcalloc((size_t)n_eq + 1, sizeof(int));
        g->tokoff[v] = ser_xcalloc((size_t)n_eq + 1, sizeof(size_t));
        for (int s = 0; s < c->S; s++)
            memcpy(c->gall[v] + c->sh[s].e0, c->sh[s].g[v],
                   sizeof(ser_group_elem) * (size_t)c->sh[s].n_eq);
        g->ntok[v] = ser_group_token_layout(c->gall[v], (size_t)n_eq, g->tok[v], g->tokoff[v]);
        size_t nm = (g->ntok[v] + 1) * (size_t)g->C;
        g->qmap[v] = ser_xaligned(sizeof(float) * nm);
        g->kmap[v] = ser_xaligned(sizeof(float) * nm);
        g->dqmap[v] = ser_xaligned(sizeof(float) * nm);
        memset(g->dqmap[v], 0, sizeof(float) * nm);  // the objectives accumulate into it
        for (int s = 0; s < c->S; s++) {
            const s_shard *sh = &c->sh[s];
            if (!sh->n_eq) continue;
            size_t at = g->tokoff[v][sh->e0] * (size_t)g->C, n = sh->ntok[v] * (size_t)g->C;
            memcpy(g->qmap[v] + at, sh->maps[v], sizeof(float) * n);
            if (c->m->teacher) memcpy(g->kmap[v] + at, sh->maps[2 + v], sizeof(float) * n);
        }
    }
    // The local SER pairs: P per equivariant sample, e-major, in shard order.
    int P = g->n_lpairs;
    for (int v = 0; P && v < 2; v++) {
        size_t np = (size_t)n_eq * P;
        free(g->ltok[v]), free(g->ltokoff[v]), free(g->lqmap[v]), free(g->dlqmap[v]);
        free(c->lgall[v]);
        c->lgall[v] = ser_xcalloc(np + 1, sizeof(ser_group_elem));
        g->ltok[v] = ser_xcalloc(np + 1, sizeof(int));
        g->ltokoff[v] = ser_xcalloc(np + 1, sizeof(size_t));
        for (int s = 0; s < c->S; s++)
            if (c->sh[s].n_eq)  // a shard without equivariant samples has no pair elements
                memcpy(c->lgall[v] + (size_t)c->sh[s].e0 * P, c->sh[s].lg[v],
                       sizeof(ser_group_elem) * (size_t)c->sh[s].n_eq * P);
        g->lntok[v] = ser_group_token_layout(c->lgall[v], np, g->ltok[v], g->ltokoff[v]);
        size_t nm = (g->lntok[v] + 1) * (size_t)g->C;
        g->lqmap[v] = ser_xaligned(sizeof(float) * nm);
        g->dlqmap[v] = ser_xaligned(sizeof(float) * nm);  // zeroed: the objective adds to it
        for (int s = 0; s < c->S; s++) {
            const s_shard *sh = &c->sh[s];
            if (!sh->n_eq) continue;
            size_t at = g->ltokoff[v][(size_t)sh->e0 * P] * (size_t)g->C;
            memcpy(g->lqmap[v] + at, sh->lmaps[v], sizeof(float) * sh->lntok[v] * g->C);
        }
    }
    g->n_eq = n_eq, g->n_inv = c->B - n_eq;
    memset(&c->b, 0, sizeof c->b);
    c->b.n_inv = g->n_inv, c->b.n_eq = n_eq;
    c->b.g[0] = c->gall[0], c->b.g[1] = c->gall[1];
    c->b.n_lpairs = P;
    c->b.lg[0] = c->lgall[0], c->b.lg[1] = c->lgall[1];
    // Rows only, no images here; the side as the workers resolve it (0 = the default size).
    c->b.n_local = c->L, c->b.local_img = c->L ? ser_config_local_size(&c->o->cfg) : 0;
    return SER_OK;
}

static void s_hello(s_coord *c, const ser_wire_msg *m) {
    const Ser__Envelope *e = m->env;
    char why[SER_ERR_LEN];
    if (strcmp(e->job_id ? e->job_id : "", c->job_id) != 0 && e->job_id && e->job_id[0]) {
        snprintf(why, sizeof why, "job id '%s' differs from this job's '%s'", e->job_id, c->job_id);
        s_refuse(c, m->identity, why);
        return;
    }
    if (e->config_hash && e->config_hash != c->hash) {
        snprintf(why, sizeof why, "config hash %016llx differs from this job's %016llx",
                 (unsigned long long)e->config_hash, (unsigned long long)c->hash);
        s_refuse(c, m->identity, why);
        return;
    }
    int wi = s_find_worker(c, m->identity);
    if (wi < 0) {
        if (c->nw == SER_COORD_MAX_WORKERS) {
            s_refuse(c, m->identity, "too many workers");
            return;
        }
        wi = c->nw++;
        snprintf(c->w[wi].id, sizeof c->w[wi].id, "%s", m->identity);
        c->w[wi].skip_step = -1;
    }
    s_worker *w = &c->w[wi];
    // A live worker that says the job's config hash is back on a new connection (after its
    // first WELCOME it reconnects with the job's frame limit; or it lost the coordinator for a
    // while): one line per join, not two.
    int again = w->alive && e->config_hash == c->hash;
    if (w->banned) {
        s_refuse(c, m->identity, "it missed its task deadline twice: no more work for it");
        return;
    }
    w->alive = 1;
    w->last_heard_ms = s_now();
    w->teacher_version = INT64_MIN;  // none held
    w->params_step = INT64_MIN;      // a new connection: nothing of this step queued on it
    // What was sent to its old connection may be lost with it: its tasks go out again now
    // rather than after the idle-retry grace (a late answer to an old attempt is stale).
    if (again) s_release_shards(c, wi);
    snprintf(w->addr, sizeof w->addr, "%s", m->peer);
    // Its peer socket for the chain's running sums: "tcp://*:PORT" is at the address seen here.
    const char *pe = e->peer_endpoint ? e->peer_endpoint : "", *pk = e->peer_key ? e->peer_key : "";
    w->peer_ep[0] = w->peer_key[0] = 0;
    if (pe[0] && strlen(pk) <= 40 && (!pk[0] || strlen(pk) == 40)) {
        if (!strncmp(pe, "tcp://*:", 8)) {
            char port[17];
            snprintf(port, sizeof port, "%s", pe + 8);
            if (m->peer[0]) snprintf(w->peer_ep, sizeof w->peer_ep, "tcp://%s:%s", m->peer, port);
        } else if (strlen(pe) < sizeof w->peer_ep)
            snprintf(w->peer_ep, sizeof w->peer_ep, "%s", pe);
        snprintf(w->peer_key, sizeof w->peer_key, "%s", pk);
    }
    if (c->chain && !w->peer_ep[0] && e->config_hash == c->hash)
        ser_log(SER_LL_WARNING, "worker %s announced no usable peer socket ('%.100s'): the chain "
                "cannot pass it the running sum (cluster.reduce = chain falls back to the "
                "coordinator's sum while it holds a run after the first)", w->id, pe);
    // The job's canonical configuration travels with the welcome.
    char *text = ser_config_text(&c->tr.cfg);
    SER_ASSERT(text);  // only out of memory fails
    Ser__Envelope out;
    s_env(c, &out, SER__MSG_TYPE__MSG_WELCOME);
    out.text = text;
    out.config_hash = c->hash;
    ser_wire_send(c->sock, w->id, &out, NULL, 0);
    free(text);
    ser_log(again ? SER_LL_DEBUG : SER_LL_INFO, "worker %s %s (%d live)", w->id,
            again ? "reconnected" : "joined", s_live_count(c));
}

// Workers not heard from within timeout_ms are dead; their unfinished shards move.
static void s_check_liveness(s_coord *c, int in_step) {
    int64_t now = s_now();
    for (int i = 0; i < c->nw; i++) {
        s_worker *w = &c->w[i];
        if (!w->alive || now - w->last_heard_ms <= c->tr.cfg.cluster.timeout_ms) continue;
        w->alive = 0;
        ser_log(SER_LL_WARNING, "step %lld: worker %s lost (last heard %lld ms ago)",
                (long long)c->step, w->id, (long long)(now - w->last_heard_ms));
        if (in_step) s_release_shards(c, i);
    }
}

// A worker says it is idle while shards sent to it long ago are unanswered: the task or its
// answer was lost on the way (or the worker dropped it, e.g. for lack of its parameters).
// Those shards go out again with a new attempt; a late answer to the old attempt is dropped as
// stale. "Long ago" is 3 heartbeats, so that an idle heartbeat crossing a fresh task on the
// wire does not trigger a retry. When the worker says it does not hold this step's parameters
// (holds = 1 + the step it holds, 0 none), they are most likely still on the way (a big model
// on a slow link: a message is delivered only when whole, and the tasks queue behind it), so a
// second copy would only lengthen the queue: they are sent again only after
// cluster.timeout_ms, then twice, four times... as long since the last copy (a copy lost
// with a broken connection).
static void s_retry_idle(s_coord *c, int wi, uint64_t holds) {
    s_worker *w = &c->w[wi];
    int64_t now = s_now(), grace = 3 * (int64_t)c->tr.cfg.cluster.heartbeat_ms;
    int has_params = holds == (uint64_t)c->step + 1;
    if (!has_params) {
        int64_t wait = (int64_t)c->tr.cfg.cluster.timeout_ms << (w->params_resends < 10 ? w->params_resends : 10);
        if (now - w->params_sent_ms <= wait) return;  // still on the way
    }
    int again = 0;
    for (int s = 0; s < c->S; s++) {
        s_shard *sh = &c->sh[s];
        if (sh->worker != wi || (sh->state != SH_FWD_SENT && sh->state != SH_BWD_SENT) ||
            now - sh->sent_ms <= grace)
            continue;
        ser_log(SER_LL_WARNING, "step %lld: shard %d %s (attempt %u) unanswered for %lld ms by "
                "idle worker %s%s; sending it again", (long long)c->step, s,
                sh->state == SH_FWD_SENT ? "forward" : "backward", sh->attempt,
                (long long)(now - sh->sent_ms), w->id,
                has_params ? "" : ", which lacks this step's parameters");
        if (sh->state == SH_BWD_SENT) sh->redo = 1;  // rebuild the activations, then backward
        sh->state = SH_IDLE;
        again = 1;
    }
    if (again && !has_params) {
        w->teacher_version = INT64_MIN;  // resend everything it needs
        w->params_resends++;
    }
}

// A worker cannot compute a shard it was given (its data loader refused it): the shard goes to
// another worker; a worker refused twice gets no more work, and when no worker is left the
// job stops with the reason (s_phase).
static void s_task_failed(s_coord *c, int wi, const Ser__Envelope *e) {
    s_worker *w = &c->w[wi];
    if ((int64_t)e->step != c->step || e->shard >= (uint32_t)c->S) return;
    s_shard *sh = &c->sh[e->shard];
    if (sh->worker != wi || sh->attempt != e->attempt || sh->state != SH_FWD_SENT) return;
    snprintf(c->data_error, sizeof c->data_error, "worker %.64s cannot compute shard %u: %.140s",
             w->id, e->shard, e->text ? e->text : "no reason given");
    ser_log(s_peer_level(c, 'f', w->id), "step %lld: %s", (long long)c->step, c->data_error);
    s_move_shard(c, wi, (int)e->shard);
    if (++w->data_failures >= 2 && !w->banned) {  // the loader answered no twice
        w->data_banned = 1;
        s_ban(c, wi, "worker %s gets no more work: its data loader refuses the job's shards (%.150s)",
              w->id, e->text ? e->text : "");
    }
}

// A contribution that does not match what was asked is dropped and its shard computed again
// elsewhere; a worker that sends two gets no more work. Nothing a peer sends ends the job.
static void s_offence(s_coord *c, int wi, int shard, const char *what) {
    s_worker *w = &c->w[wi];
    ser_log(SER_LL_WARNING, "step %lld: shard %d from worker %s dropped: %s", (long long)c->step,
            shard, w->id, what);
    s_move_shard(c, wi, shard);
    if (++w->offences >= 2)
        s_ban(c, wi, "worker %s sent %d contributions that did not match their task: it gets no "
              "more work", w->id, w->offences);
}


// The step's gradient sum, shard by shard in shard order as each arrives (the left fold of
// ser_engine_backward): total[i] = ((0 + g0[i]) + g1[i]) + ..., on the job's threads over
// blocks of the parameter range, so any thread count and any arrival order give the same bits.
// A shard that arrives before an earlier one waits in its buffer; no sum over all shards is left
// for the end of the backward phase. The first non-finite element of each shard is noted as it
// is folded (s_name_nonfinite_shard).
static void s_fold(s_coord *c, s_shard *sh, const float *g) {
    enum { BLK = 4096 };
    size_t nblk = (c->span + BLK - 1) / BLK, bad = SIZE_MAX;
    float *total = c->fold;
#pragma omp parallel for schedule(static) reduction(min : bad)
    for (size_t b = 0; b < nblk; b++) {
        size_t i0 = b * BLK, i1 = i0 + BLK < c->span ? i0 + BLK : c->span;
        for (size_t i = i0; i < i1; i++) {
            float x;
            memcpy(&x, g + i, sizeof x);  // frames carry no alignment guarantee
            if (!isfinite(x) && i < bad) bad = i;
            total[i] += x;
        }
    }
    sh->bad_at = bad;
}

// Folds the waiting shards that are next in order.
static void s_fold_ready(s_coord *c) {
    while (c->fold_next < c->S && c->sh[c->fold_next].state == SH_BWD_DONE) {
        s_shard *sh = &c->sh[c->fold_next];
        SER_ASSERT(sh->grad);
        s_fold(c, sh, sh->grad);
        free(sh->grad), sh->grad = NULL;
        c->fold_next++;
    }
}

// cluster.reduce = chain: a chunk of the step's sum from the last run's holder, or a holder's
// word that its REDUCE cannot be done (the step falls back to the coordinator's sum).
static void s_chain_message(s_coord *c, int wi, const ser_wire_msg *m) {
    const Ser__Envelope *e = m->env;
    s_worker *w = &c->w[wi];
    if (!c->got || (int64_t)e->step != c->step || e->attempt != c->round) {
        ser_log(SER_LL_DEBUG, "late chain message (type %d, step %llu, round %u) from %s dropped",
                e->type, (unsigned long long)e->step, e->attempt, w->id);
        return;
    }
    if (e->type == SER__MSG_TYPE__MSG_REDUCE_FAILED) {
        if (!c->chain_error[0])
            snprintf(c->chain_error, sizeof c->chain_error, "worker %.64s cannot add shards from "
                     "%u: %.120s", w->id, e->shard, e->text ? e->text : "no reason given");
        return;
    }
    size_t i0 = 0, n = 0;
    if (e->chunk < (uint32_t)c->nchunks)
        n = ser_shard_chunk(c->span, (size_t)c->tr.cfg.cluster.reduce_chunk, e->chunk, &i0);
    const float *x = n ? ser_wire_find(m, "sum", n) : NULL;
    if (e->shard != (uint32_t)c->S || wi != c->run_w[c->nruns - 1] || !x) {
        ser_log(s_peer_level(c, 'b', w->id), "step %lld: running sum from %s (shard %u, chunk %u) "
                "is not the chunk of the whole sum its holder owes: dropped", (long long)c->step,
                w->id, e->shard, e->chunk);
        return;
    }
    if (c->got[e->chunk]) return;  // a duplicate
    memcpy(c->fold + i0, x, sizeof(float) * n);
    c->got[e->chunk] = 1;
    c->ngot++;
}

static void s_handle(s_coord *c, ser_wire_msg *m) {
    const Ser__Envelope *e = m->env;
    int wi = s_find_worker(c, m->identity);
    if (e->type == SER__MSG_TYPE__MSG_HELLO) {
        s_hello(c, m);
        if ((wi = s_find_worker(c, m->identity)) >= 0 && c->step >= 0 && c->w[wi].alive)
            s_send_params(c, wi);
        return;
    }
    if (wi < 0) {  // e.g. a worker of the coordinator this one restarted from: it says HELLO soon
        ser_log(s_peer_level(c, 'u', m->identity), "message type %d from unknown peer %s dropped (it "
                "has not said HELLO to this coordinator; further ones at debug level)", e->type,
                m->identity);
        return;
    }
    s_worker *w = &c->w[wi];
    if (w->banned) {
        ser_log(SER_LL_DEBUG, "message type %d from %s (no more work for it) dropped", e->type, w->id);
        return;
    }
    w->last_heard_ms = s_now();
    if (!w->alive) {  // a worker we had given up on is back: it gets the current state again
        w->alive = 1;
        w->teacher_version = INT64_MIN;  // none held
        s_send_params(c, wi);
    }
    if (e->type == SER__MSG_TYPE__MSG_HEARTBEAT) {
        if (e->text && !strcmp(e->text, "idle")) s_retry_idle(c, wi, e->holds_params);
        return;
    }
    if (e->type == SER__MSG_TYPE__MSG_TASK_FAILED) {
        s_task_failed(c, wi, e);
        return;
    }
    if (e->type == SER__MSG_TYPE__MSG_PARTIAL || e->type == SER__MSG_TYPE__MSG_REDUCE_FAILED) {
        s_chain_message(c, wi, m);
        return;
    }
    if (e->type == SER__MSG_TYPE__MSG_FORWARD_DONE && e->text && e->text[0])
        s_note_loaders(c, e->text);  // also from a late or stale answer: the loaders are news
    if (e->type != SER__MSG_TYPE__MSG_FORWARD_DONE && e->type != SER__MSG_TYPE__MSG_BACKWARD_DONE) {
        ser_log(SER_LL_WARNING, "unexpected message type %d from %s dropped", e->type, w->id);
        return;
    }
    if ((int64_t)e->step != c->step || e->shard >= (uint32_t)c->S) {
        ser_log(SER_LL_DEBUG, "late message (step %llu shard %u) from %s dropped",
                (unsigned long long)e->step, e->shard, w->id);
        return;
    }
    s_shard *sh = &c->sh[e->shard];
    if (sh->worker != wi || sh->attempt != e->attempt) {
        ser_log(SER_LL_DEBUG, "stale attempt %u of shard %u from %s dropped", e->attempt, e->shard,
                w->id);
        return;
    }
    if (e->type == SER__MSG_TYPE__MSG_FORWARD_DONE && sh->state == SH_FWD_SENT) {
        if (sh->redo) {  // activations rebuilt; the rows were already gathered
            sh->redo = 0;
            s_send_backward(c, (int)e->shard);
            return;
        }
        int trc = s_take_forward(c, (int)e->shard, m);
        if (trc) {
            s_offence(c, wi, (int)e->shard,
                      trc == SER_ESHAPE ? "another number of equivariant samples than the job's "
                                          "layout puts in this shard"
                                        : "rows, group elements or token grids not of the job's "
                                          "sizes");
            return;
        }
        sh->state = SH_FWD_DONE;
        if (s_now() - sh->sent_ms > c->task_max_ms) c->task_max_ms = s_now() - sh->sent_ms;
    } else if (e->type == SER__MSG_TYPE__MSG_BACKWARD_DONE && sh->state == SH_BWD_SENT && c->keep) {
        if (m->n != 0) {  // kept at the worker for the chain: the answer carries no tensor
            s_offence(c, wi, (int)e->shard, "a gradient where the chain asked the worker to keep it");
            return;
        }
        sh->bad_at = e->bad_at ? (size_t)(e->bad_at - 1) : SIZE_MAX;
        sh->state = SH_BWD_DONE;
        if (s_now() - sh->sent_ms > c->task_max_ms) c->task_max_ms = s_now() - sh->sent_ms;
    } else if (e->type == SER__MSG_TYPE__MSG_BACKWARD_DONE && sh->state == SH_BWD_SENT) {
        const float *g = ser_shard_parse_grad(m, c->span);
        if (!g) {
            s_offence(c, wi, (int)e->shard, "a gradient not of the model's size");
            return;
        }
        sh->state = SH_BWD_DONE;
        if (c->fold && (int)e->shard == c->fold_next) {  // straight from the frame
            s_fold(c, sh, g);
            c->fold_next++;
            s_fold_ready(c);
        } else {  // an earlier shard is still out: keep it until then
            if (!sh->grad) sh->grad = ser_xaligned_raw(sizeof(float) * c->span);
            memcpy(sh->grad, g, sizeof(float) * c->span);
        }
        if (s_now() - sh->sent_ms > c->task_max_ms) c->task_max_ms = s_now() - sh->sent_ms;
    } else {
        ser_log(SER_LL_DEBUG, "duplicate message for shard %u from %s dropped", e->shard, w->id);
    }
}

// Polls and handles messages for up to ms milliseconds; heartbeats to live workers every
// cluster.heartbeat_ms (they reconnect when the coordinator falls silent).
// A gap of more than cluster.timeout_ms since this function last ran means this process did not
// run (the whole job suspended: SIGSTOP, a VM paused, a laptop asleep) or was busy for that
// long (a slow checkpoint): either way the workers cannot be judged for that time, so every
// timer that judges them moves on by the gap. A dead worker is then found up to that much later.
static void s_forgive_gap(s_coord *c, int64_t now) {
    int64_t gap = c->last_poll_ms ? now - c->last_poll_ms : 0;
    c->last_poll_ms = now;
    if (gap <= c->tr.cfg.cluster.timeout_ms) return;
    for (int i = 0; i < c->nw; i++) {
        c->w[i].last_heard_ms += gap;
        c->w[i].params_sent_ms += gap;
    }
    for (int s = 0; s < c->S; s++) c->sh[s].sent_ms += gap;
    ser_log(c->gaps++ ? SER_LL_DEBUG : SER_LL_WARNING, "step %lld: this coordinator did not run for %lld ms (suspended, or "
            "busy): the workers' heartbeats and task deadlines are counted from now (further "
            "gaps at debug level)",
            (long long)c->step, (long long)gap);
}

static int s_poll(s_coord *c, int ms) {
    static int64_t last_hb;
    int64_t now = s_now();
    s_forgive_gap(c, now);
    if (now - last_hb >= c->tr.cfg.cluster.heartbeat_ms) {
        last_hb = now;
        Ser__Envelope e;
        s_env(c, &e, SER__MSG_TYPE__MSG_HEARTBEAT);
        for (int i = 0; i < c->nw; i++)
            if (c->w[i].alive) ser_wire_send(c->sock, c->w[i].id, &e, NULL, 0);
    }
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0) return 0;
    int k;
    for (k = 0; k < 64; k++) {
        ser_wire_msg m;
        char err[SER_ERR_LEN];
        int rc = ser_wire_recv(c->sock, 1, NULL, &m, err);
        if (rc == SER_ETIMEDOUT) break;
        if (rc) {
            const char *id = m.identity[0] ? m.identity : "?";
            ser_log(s_peer_level(c, 'b', id), "bad message from %s dropped: %s", id, err);
            continue;
        }
        if (m.env->type != SER__MSG_TYPE__MSG_HELLO && strcmp(m.env->job_id ? m.env->job_id : "", c->job_id)) {
            ser_log(SER_LL_WARNING, "message for job '%s' from %s dropped", m.env->job_id, m.identity);
        } else {
            s_handle(c, &m);
        }
        ser_wire_msg_free(&m);
    }
    return k;  // 64: more may be queued
}

static int s_all(const s_coord *c, int state) {
    for (int s = 0; s < c->S; s++)
        if (c->sh[s].state != state) return 0;
    return 1;
}

// Runs one phase until every shard reaches `target`; sends work to idle shards as workers
// appear; logs what it waits for. Returns SER_OK, SER_ETIMEDOUT or SER_EIO (stopped).
static int s_phase(s_coord *c, int target, const char *name) {
    int64_t start = s_now(), last_log = start, last_pub = 0;
    c->phase = target == SH_FWD_DONE ? SER_STATUS_PHASE_FORWARD : SER_STATUS_PHASE_BACKWARD;
    while (!s_all(c, target)) {
        if (s_now() - last_pub > 250) {
            last_pub = s_now();
            s_publish(c);
        }
        if (s_stop) return SER_EIO;
        // What queued up while this process was busy (the objective, the apply, a checkpoint)
        // is read before anyone is judged silent: their heartbeats are in there.
        while (s_poll(c, 0) == 64) {}
        s_check_liveness(c, 1);
        for (int s = 0; s < c->S; s++)
            if (c->sh[s].state == SH_IDLE && s_live_count(c) > 0) {
                for (int i = 0; i < c->nw; i++)
                    if (c->w[i].alive && c->w[i].teacher_version < c->step - 1) s_send_params(c, i);
                s_send_forward(c, s);
            }
        s_poll(c, 20);
        s_check_deadlines(c);
        int64_t now = s_now();
        if (now - last_log > c->tr.cfg.cluster.timeout_ms) {
            last_log = now;
            for (int s = 0; s < c->S; s++)
                if (c->sh[s].state != target) {
                    const s_worker *w = c->sh[s].worker >= 0 && c->sh[s].worker < c->nw ? &c->w[c->sh[s].worker] : NULL;
                    snprintf(c->waiting, sizeof c->waiting,
                             "step %lld %s: waiting on shard %d%s%.64s, last heard %lld ms ago%s%.120s",
                             (long long)c->step, name, s, w ? " at worker " : " (no live worker)",
                             w ? w->id : "", w ? (long long)(now - w->last_heard_ms) : -1LL,
                             c->data_error[0] ? "; " : "", c->data_error);
                    c->waiting_since = now;
                    c->state = SER_STATUS_STATE_WAITING;
                    ser_log(SER_LL_WARNING, "%s", c->waiting);
                    break;
                }
        }
        if (c->state == SER_STATUS_STATE_WAITING && s_all(c, target)) c->state = SER_STATUS_STATE_RUNNING;
        int data_banned = 0;
        for (int i = 0; i < c->nw; i++) data_banned += c->w[i].data_banned;
        if (s_live_count(c) == 0 && data_banned > 0 && data_banned == c->nw) {
            ser_log(SER_LL_ERROR, "step %lld %s: no usable worker: every worker's data loader "
                    "refuses the job's shards; the last: %s", (long long)c->step, name,
                    c->data_error);
            return SER_EPEER;
        }
        if (s_live_count(c) == 0 && now - start > c->o->wait_workers_ms) {
            ser_log(SER_LL_ERROR, "step %lld %s: no live worker for %d ms; giving up",
                    (long long)c->step, name, c->o->wait_workers_ms);
            return SER_ETIMEDOUT;
        }
    }
    return SER_OK;
}

// After a non-finite gradient (nothing applied): when a shard's contribution is the source,
// err names it and its worker instead of the global norm.
static void s_name_nonfinite_shard(const s_coord *c, char *err) {
    for (int s = 0; s < c->S; s++)
        if (c->sh[s].bad_at != SIZE_MAX) {
            ser_errf(err, SER_ENONFINITE, "step %lld: non-finite gradient from shard %d (worker "
                     "%s, element %zu); not applied", (long long)c->step, s,
                     c->w[c->sh[s].worker].id, c->sh[s].bad_at);
            return;
        }
}

// After a non-finite loss: when a shard's forward rows are the source, err names the first such
// shard and its worker.
static void s_name_nonfinite_rows(const s_coord *c, char *err) {
    int C = c->g.C;
    for (int s = 0; s < c->S; s++) {
        const s_shard *sh = &c->sh[s];
        const float *rows[4] = {c->g.qcls[0], c->g.qcls[1], c->g.kcls[0], c->g.kcls[1]};
        int bad = 0;
        int nq = c->m->teacher ? 4 : 2, np = c->g.pool ? 2 + c->L : 0;
        for (int i = 0; i < nq + c->L + np && !bad; i++) {
            const float *x = i < nq ? rows[i] : i < nq + c->L ? c->g.lcls[i - nq]
                                                              : c->g.qpool[i - nq - c->L];
            for (size_t j = (size_t)sh->p0 * C; j < (size_t)sh->p1 * C && !bad; j++)
                bad = !isfinite(x[j]);
        }
        for (int v = 0; v < 2 && sh->n_eq && !bad; v++)
            for (size_t j = 0; j < sh->ntok[v] * (size_t)C && !bad; j++)
                bad = !isfinite(sh->maps[v][j]) || (c->m->teacher && !isfinite(sh->maps[2 + v][j]));
        for (int v = 0; v < 2 && sh->lmaps[v] && !bad; v++)  // the local SER pairs' maps
            for (size_t j = 0; j < sh->lntok[v] * (size_t)C && !bad; j++)
                bad = !isfinite(sh->lmaps[v][j]);
        if (bad) {
            size_t n = strlen(err);
            snprintf(err + n, SER_ERR_LEN - n, " (non-finite forward rows from shard %d, worker %s)",
                     s, sh->worker >= 0 ? c->w[sh->worker].id : "?");
            return;
        }
    }
}

// The step's engine on the workers (ser_train.h): the forward half sends the parameters and
// every shard's forward task, then assembles the batch from the shards' answers; the backward
// half sends the gradients of the gathered rows and sums the shard gradients in shard order (as
// ser_engine_backward does in one process).
static int s_remote_forward(void *ctx, const ser_batch **b, ser_gathered **g, char *err) {
    s_coord *c = ctx;
    for (int i = 0; i < c->nw; i++) {
        c->w[i].params_resends = 0;
        if (c->w[i].alive && !c->bcast) s_send_params(c, i);
    }
    if (c->bcast) s_broadcast(c);
    for (int s = 0; s < c->S; s++) c->sh[s].state = SH_IDLE, c->sh[s].redo = 0;
    int rc = s_phase(c, SH_FWD_DONE, "forward");
    if (rc) return rc;
    c->waiting[0] = 0;
    c->state = SER_STATUS_STATE_RUNNING;
    c->phase = SER_STATUS_PHASE_OBJECTIVE;
    if ((rc = s_assemble(c, err))) return rc;
    for (int v = 0; v < 2; v++) memset(c->g.dqcls[v], 0, sizeof(float) * (size_t)c->g.B * c->g.C);
    for (int k = 0; k < c->L; k++) memset(c->g.dlcls[k], 0, sizeof(float) * (size_t)c->g.B * c->g.C);
    for (int v = 0; c->g.pool && v < 2 + c->L; v++)
        memset(c->g.dqpool[v], 0, sizeof(float) * (size_t)c->g.B * c->g.C);
    *b = &c->b, *g = &c->g;
    return SER_OK;
}

enum { S_CHAIN_BROKEN = 1 };  // s_chain: the chain runs again, or the caller sums the step itself
enum { S_CHAIN_ROUNDS = 3 };  // chain rounds a step may take before the coordinator sums it

// cluster.reduce = chain, once every shard's gradient is kept at its worker: one REDUCE per
// run of consecutive shards one worker holds, each run's holder adding its shards to the sum it
// receives from the previous run's and passing it on; the last sends it here, chunk by chunk,
// into total. SER_OK with the step's sum in total; S_CHAIN_BROKEN when the chain broke (a holder
// lost or unable, no sum within the task deadline): why says how, and the caller sums the
// step itself; SER_EIO when stopped.
// Sends a new round's REDUCEs over the runs of the shards' holders of now (into total);
// S_CHAIN_BROKEN (why) when a holder after the first has no peer socket.
static int s_chain_send(s_coord *c, float *total, char *why) {
    c->round++;
    c->nruns = 0;
    for (int s = 0; s < c->S; s++)
        if (s == 0 || c->sh[s].worker != c->sh[s - 1].worker) {
            c->run_a[c->nruns] = s;
            c->run_w[c->nruns++] = c->sh[s].worker;
        }
    c->run_a[c->nruns] = c->S;
    for (int r = 1; r < c->nruns; r++)
        if (!c->w[c->run_w[r]].peer_ep[0]) {
            snprintf(why, SER_ERR_LEN, "worker %s, which holds shards from %d, has no peer socket",
                     c->w[c->run_w[r]].id, c->run_a[r]);
            return S_CHAIN_BROKEN;
        }
    c->nchunks = ser_shard_nchunks(c->span, (size_t)c->tr.cfg.cluster.reduce_chunk), c->ngot = 0;
    free(c->got);
    c->got = ser_xcalloc((size_t)c->nchunks, 1);
    c->chain_error[0] = 0;
    c->fold = total;
    for (int r = 0; r < c->nruns; r++) {
        Ser__Envelope e;
        s_env(c, &e, SER__MSG_TYPE__MSG_REDUCE);
        e.shard = (uint32_t)c->run_a[r], e.shard_end = (uint32_t)c->run_a[r + 1];
        e.attempt = c->round;
        const s_worker *next = r + 1 < c->nruns ? &c->w[c->run_w[r + 1]] : NULL;
        e.next_endpoint = next ? (char *)(uintptr_t)next->peer_ep : (char *)"";
        e.next_key = next ? (char *)(uintptr_t)next->peer_key : (char *)"";
        ser_wire_send(c->sock, c->w[c->run_w[r]].id, &e, NULL, 0);
    }
    return SER_OK;
}

// 1 when the shards' holders of now make the runs the last REDUCEs went to.
static int s_chain_same_runs(const s_coord *c) {
    for (int r = 0; r < c->nruns; r++)
        for (int s = c->run_a[r]; s < c->run_a[r + 1]; s++)
            if (c->sh[s].worker != c->run_w[r]) return 0;
    return c->nruns > 0;
}

// One round of the chain: its REDUCEs sent (unless sent, at the start of the backward phase),
// then the sum awaited.
static int s_chain(s_coord *c, float *total, char *why, int sent) {
    if (!sent) {
        int rc = s_chain_send(c, total, why);
        if (rc) return rc;
    }
    int64_t start = s_now(), last_pub = 0, dl = s_task_deadline(c);
    int rc = SER_OK;
    while (c->ngot < c->nchunks) {
        if (s_now() - last_pub > 250) {
            last_pub = s_now();
            s_publish(c);
        }
        if (s_stop) {
            rc = SER_EIO;
            break;
        }
        while (s_poll(c, 0) == 64) {}
        s_check_liveness(c, 1);
        if (c->ngot == c->nchunks) break;
        int lost = -1;
        for (int r = 0; r < c->nruns && lost < 0; r++)
            if (!c->w[c->run_w[r]].alive) lost = r;
        if (lost >= 0) {
            snprintf(why, SER_ERR_LEN, "worker %s, which holds shards %d..%d, is gone",
                     c->w[c->run_w[lost]].id, c->run_a[lost], c->run_a[lost + 1] - 1);
            rc = S_CHAIN_BROKEN;
        } else if (c->chain_error[0]) {
            snprintf(why, SER_ERR_LEN, "%s", c->chain_error);
            rc = S_CHAIN_BROKEN;
        } else if (s_now() - start > dl) {
            snprintf(why, SER_ERR_LEN, "%d of %d chunks of the sum after %lld ms (task deadline)",
                     c->ngot, c->nchunks, (long long)(s_now() - start));
            rc = S_CHAIN_BROKEN;
        }
        if (rc) break;
        s_poll(c, 20);
    }
    free(c->got), c->got = NULL;  // what comes later is late
    return rc;
}

static int s_remote_backward(void *ctx, float *total, char *err) {
    (void)err;
    s_coord *c = ctx;
    memset(total, 0, sizeof(float) * c->span);  // the gradients fold into it as they come
    c->fold = total, c->fold_next = 0;
    c->keep = c->chain;  // chain: the workers keep their gradients for s_chain
    for (int s = 0; s < c->S; s++) {
        c->sh[s].bad_at = SIZE_MAX;
        free(c->sh[s].grad), c->sh[s].grad = NULL;
    }
    int redo = 0;
    for (int s = 0; s < c->S; s++) {
        if (c->sh[s].redo)
            c->sh[s].state = SH_IDLE, redo = 1;  // its worker died after the forward: s_phase redoes it
        else
            s_send_backward(c, s);
    }
    // The chain's first round goes out with the backward tasks: each worker takes its REDUCE
    // after its own backward passes (one socket, in order) and passes the sum on while the
    // workers after it are still computing theirs. If the holders change meanwhile (a shard
    // moved), the round is sent again over the new runs.
    char why[SER_ERR_LEN];
    int early = c->chain && !redo && s_chain_send(c, total, why) == SER_OK;
    int rc = s_phase(c, SH_BWD_DONE, "backward");
    for (int round = 1; !rc && c->chain; round++) {
        int sent = round == 1 && early && s_chain_same_runs(c);
        rc = s_chain(c, total, why, sent);
        c->chain_early += sent && rc == SER_OK;
        if (rc == SER_OK) {
            c->fold_next = c->S;
            c->chain_steps++;
            break;
        }
        if (rc == S_CHAIN_BROKEN && round < S_CHAIN_ROUNDS) {
            // Repaired within the step: the shards of a lost holder are computed again by a
            // survivor (keeping their gradients too), and the chain runs again over the holders
            // of now, each adding its kept gradients (a new round: what is left of the last
            // one is dropped as late).
            int lost = 0;
            for (int s = 0; s < c->S; s++) {
                s_shard *sh = &c->sh[s];
                if (sh->worker < 0 || !c->w[sh->worker].alive) {
                    sh->redo = 1, sh->state = SH_IDLE, sh->bad_at = SIZE_MAX;
                    lost++;
                }
            }
            c->chain_repairs++;
            ser_log(SER_LL_WARNING, "step %lld: the chain's sum broke (%s): %s, the chain runs "
                    "again (round %d)", (long long)c->step, why,
                    lost ? "the lost holder's shards are computed again" : "every holder is there",
                    round + 1);
            rc = lost ? s_phase(c, SH_BWD_DONE, "backward (a lost holder's shards)") : SER_OK;
            continue;
        }
        c->keep = 0;
        if (rc == S_CHAIN_BROKEN) {
            // The coordinator sums this step itself: every live holder sends its kept gradient
            // (no recomputation), a lost holder's shards are computed again elsewhere.
            c->chain_fallbacks++;
            ser_log(SER_LL_WARNING, "step %lld: the chain's sum broke %d times, the last: %s; the "
                    "coordinator sums this step's gradients itself", (long long)c->step,
                    S_CHAIN_ROUNDS, why);
            memset(total, 0, sizeof(float) * c->span);
            c->fold = total, c->fold_next = 0;
            for (int s = 0; s < c->S; s++) {
                s_shard *sh = &c->sh[s];
                sh->bad_at = SIZE_MAX;
                if (sh->worker >= 0 && c->w[sh->worker].alive) {
                    s_send_backward(c, s);
                } else {
                    sh->redo = 1;
                    sh->state = SH_IDLE;
                }
            }
            rc = s_phase(c, SH_BWD_DONE, "backward (the coordinator's sum)");
        }
        break;
    }
    c->keep = 0;
    c->fold = NULL;
    if (rc) return rc;
    SER_ASSERT(c->fold_next == c->S);
    c->phase = SER_STATUS_PHASE_APPLY;
    c->waiting[0] = 0;
    return SER_OK;
}

static const ser_step_engine_i s_remote_engine = {s_remote_forward, s_remote_backward};

static int s_step(s_coord *c, double lr, double wd, double L[3], float *grads0, char *err) {
    int phase = 0;
    int rc = ser_trainer_step(&c->tr, &s_remote_engine, c, c->step, lr, wd, c->momentum, L, grads0,
                              &c->gnorm, &phase, err);
    if (rc == SER_ENONFINITE && phase == SER_STEP_OBJECTIVE) s_name_nonfinite_rows(c, err);
    if (rc == SER_ENONFINITE && phase == SER_STEP_APPLY) s_name_nonfinite_shard(c, err);
    return rc;
}

// Saves the state after step `next - 1` (the next to run is `next`) into run.out_dir.
static int s_checkpoint(s_coord *c, ser_ckpt *ck, int64_t next, char *err) {
    int prev = c->phase;
    c->phase = SER_STATUS_PHASE_CHECKPOINT;
    s_publish(c);
    ser_ckpt_pos pos = {next, next / c->ipe, next * (int64_t)c->B, c->ipe};
    char path[1024];
    int rc = ser_ckpt_save(ck, c->tr.cfg.run.out_dir, &pos, &c->tr.cfg, c->tr.cfg.run.keep_checkpoints,
                           path, sizeof path, err);
    if (rc == SER_OK) {
        char hs[SER_HUMAN_BYTES_LEN];
        ser_log(SER_LL_INFO, "checkpoint %s (%s)", path, ser_human_file_size(path, hs));
        snprintf(c->ckpt_path, sizeof c->ckpt_path, "%s", path);
        c->ckpt_step = next, c->ckpt_time_ms = s_now();
    }
    c->phase = prev;
    return rc;
}

int ser_coord_iters_per_epoch(const ser_coord_opts *o, int64_t *ipe, char *how, size_t hn,
                              char err[SER_ERR_LEN]) {
    const ser_config *cfg = &o->cfg;
    int64_t B = cfg->data.global_batch, n = 0;
    if (o->iters_per_epoch > 0) {
        *ipe = o->iters_per_epoch;
        snprintf(how, hn, "--iters-per-epoch");
        return SER_OK;
    }
    if (cfg->data.iters_per_epoch > 0) {
        *ipe = cfg->data.iters_per_epoch;
        snprintf(how, hn, "data.iters_per_epoch");
        return SER_OK;
    }
    if (o->batch_file) {
        *ipe = 1;
        snprintf(how, hn, "the batch file: one batch per epoch");
        return SER_OK;
    }
    if (cfg->data.kind == SER_CONFIG_DATA_SYNTHETIC) {
        n = cfg->data.synthetic_images;
    } else {
        char e2[256];
        ser_dl_data *d = cfg->data.path[0]
                             ? ser_dl_data_open(cfg->data.path, cfg->data.kind, SER_DL_SPLIT_TRAIN,
                                                NULL, e2)
                             : NULL;
        if (!d)
            return ser_errf(err, SER_ECONFIG,
                            "cannot size the schedule's epoch: %s; set data.iters_per_epoch (or "
                            "--iters-per-epoch) on a coordinator that cannot read the data",
                            cfg->data.path[0] ? e2 : "data.path is not set");
        n = ser_dl_data_count(d);
        ser_dl_data_destroy(&d);
    }
    *ipe = (n + B - 1) / B;
    if (*ipe < 1) *ipe = 1;
    snprintf(how, hn, "ceil(%lld train images / %lld per step)", (long long)n, (long long)B);
    return SER_OK;
}

// --- the run: start-up, steps with their periodic work, teardown --------------------------------
// The schedule's length and what this run trains of it (--steps K from --iter, else
// run.max_steps, else the whole schedule), logged with the warnings users need.
static void s_plan(s_coord *c, const char *how) {
    const ser_coord_opts *o = c->o;
    c->sched_end = (int64_t)o->cfg.optim.epochs * c->ipe;
    c->end = o->steps > 0 ? o->iter + o->steps
             : o->cfg.run.max_steps > 0 ? o->cfg.run.max_steps
                                        : c->sched_end;
    if (c->end > c->sched_end) {  // the schedules are defined up to their end only
        ser_log(SER_LL_WARNING, "the run would go past the schedule's end (step %lld of %lld): it "
                "stops there; raise optim.epochs to train longer", (long long)c->end,
                (long long)c->sched_end);
        c->end = c->sched_end;
    }
    if (c->first >= c->end)
        ser_log(SER_LL_INFO, "schedule: %d epochs x %lld steps (%s) = %lld steps; nothing to "
                "train: the run is at step %lld and ends at %lld", o->cfg.optim.epochs,
                (long long)c->ipe, how, (long long)c->sched_end, (long long)c->first,
                (long long)c->end);
    else
        ser_log(SER_LL_INFO, "schedule: %d epochs x %lld steps (%s) = %lld steps; this run trains "
                "steps %lld..%lld", o->cfg.optim.epochs, (long long)c->ipe, how,
                (long long)c->sched_end, (long long)c->first, (long long)c->end - 1);
    if (c->end < c->sched_end)
        ser_log(SER_LL_WARNING, "the run stops at step %lld of the schedule's %lld (epoch %.2f of "
                "%d): the lr and momentum schedules will not have reached their end",
                (long long)c->end, (long long)c->sched_end, (double)c->end / (double)c->ipe,
                o->cfg.optim.epochs);
}

// Resume: the newest valid checkpoint of run.out_dir, if there is one (restart == resume).
static int s_resume(s_coord *c, char *how, size_t hn, char *err) {
    const ser_coord_opts *o = c->o;
    ser_ckpt_pos pos;
    char from[1024];
    c->first = o->iter;
    int rc = ser_ckpt_load_latest_valid(c->ck, o->cfg.run.out_dir, &o->cfg, &pos, from,
                                        sizeof from, err);
    if (rc == SER_ENOENT) return SER_OK;
    if (rc) return rc;
    c->first = pos.step;
    ser_log(SER_LL_INFO, "resumed from %s at step %lld", from, (long long)c->first);
    snprintf(c->ckpt_path, sizeof c->ckpt_path, "%s", from);
    c->ckpt_step = pos.step, c->ckpt_time_ms = s_now();
    if (pos.iters_per_epoch > 0 && pos.iters_per_epoch != c->ipe) {
        ser_log(SER_LL_WARNING, "the checkpoint was trained with %lld steps per epoch, not "
                "%lld (%s): keeping %lld, so the schedules do not jump",
                (long long)pos.iters_per_epoch, (long long)c->ipe, how,
                (long long)pos.iters_per_epoch);
        c->ipe = pos.iters_per_epoch;
        snprintf(how, hn, "the checkpoint");
        ser_trainer_set_ipe(&c->tr, c->ipe);
    }
    return SER_OK;
}

// A resumed job's status history starts where the job started, not at the resume step: the
// points of run.out_dir/metrics.jsonl before the resume step go to the status port first (a
// step logged twice, redone after a restart, keeps its last line, as /history does live).
static void s_seed_history(s_coord *c) {
    char path[SER_CONFIG_STR_LEN + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->o->cfg.run.out_dir);
    FILE *f = c->first > 0 ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *st = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
        if (cJSON_IsNumber(st) && st->valuedouble >= 0 && st->valuedouble < (double)c->first) {
            ser_status_snapshot snap;
            ser_status_snapshot_init(&snap);
            snap.terms_step = (int64_t)st->valuedouble;
            double L[3];
            for (int i = 0; i < 3; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, s_loss_names[i]);
                L[i] = cJSON_IsNumber(v) ? v->valuedouble : (double)NAN;
            }
            s_snap_terms(&snap, L);
            const cJSON *lr = cJSON_GetObjectItemCaseSensitive(j, "lr"),
                        *sd = cJSON_GetObjectItemCaseSensitive(j, "cls_std"),
                        *knn = cJSON_GetObjectItemCaseSensitive(j, "knn_top1");
            snap.lr = cJSON_IsNumber(lr) ? lr->valuedouble : (double)NAN;
            snap.cls_std = cJSON_IsNumber(sd) ? sd->valuedouble : (double)NAN;
            if (cJSON_IsNumber(knn)) {  // the summary's last kNN figure too, until a new one
                snap.knn_top1 = c->knn_top1 = knn->valuedouble;
                snap.knn_step = c->knn_step = snap.terms_step;
            }
            ser_status_update(c->st, &snap);
            n++;
        }
        cJSON_Delete(j);
    }
    fclose(f);
    if (n) ser_log(SER_LL_INFO, "status history: %d steps before step %lld from %s", n,
                   (long long)c->first, path);
}

// The sockets: bound, CURVE when configured, the endpoint written for `ser local`.
static int s_bind(s_coord *c, char *err) {
    const ser_coord_opts *o = c->o;
    int linger = 0, mandatory = 0, rc;
    c->ctx = zmq_ctx_new();
    // The I/O threads are fixed before the first socket: each peer connection is served by one,
    // which with CURVE encrypts about 0.9 GB/s, so a second one spreads the workers' links.
    if ((rc = ser_curve_setup(&o->cfg, err))) return rc;
    c->io_threads = o->cfg.cluster.io_threads ? o->cfg.cluster.io_threads : ser_curve_on() ? 2 : 1;
    zmq_ctx_set(c->ctx, ZMQ_IO_THREADS, c->io_threads);
    c->sock = zmq_socket(c->ctx, ZMQ_ROUTER);
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    // A worker's new connection takes over its name from the old one, which ZeroMQ may not have
    // closed yet: each worker connects again right after its first WELCOME (with the job's frame
    // limit), and after a silence. Without handover the new connection would be ignored and its
    // first message taken for its identity.
    int handover = 1;
    zmq_setsockopt(c->sock, ZMQ_ROUTER_HANDOVER, &handover, sizeof handover);
    char ep[256];
    if (o->cfg.cluster.port)
        snprintf(ep, sizeof ep, "tcp://%s:%d", o->cfg.cluster.coordinator, o->cfg.cluster.port);
    else
        snprintf(ep, sizeof ep, "tcp://%s:*", o->cfg.cluster.coordinator);
    // No peer may make the coordinator buffer more than the job's largest legitimate frame, a
    // worker's gradient (span floats), with room for the small ones; a larger frame
    // disconnects its sender (ZMQ_MAXMSGSIZE).
    int64_t maxmsg = (int64_t)c->span * (int64_t)sizeof(float) + ((int64_t)1 << 20);
    zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if ((rc = ser_curve_server(c->ctx, c->sock, ep, err))) return rc;
    if (ser_curve_on()) ser_log(SER_LL_INFO, "CURVE on: encrypted, clients checked against the allow-list");
    if (zmq_bind(c->sock, ep) != 0) {
        snprintf(err, SER_ERR_LEN, "cannot bind %.160s: %s", ep, zmq_strerror(zmq_errno()));
        return SER_EIO;
    }
    size_t eplen = sizeof ep;
    zmq_getsockopt(c->sock, ZMQ_LAST_ENDPOINT, ep, &eplen);
    ser_log(SER_LL_INFO, "coordinator of job '%s' (config hash %016llx) on %s; %d shards of %d; "
            "%d ZeroMQ I/O thread%s", c->job_id, (unsigned long long)c->hash, ep, c->S,
            c->B / c->S, c->io_threads, c->io_threads == 1 ? "" : "s");
    if (o->endpoint_file) {
        char tmp[1100];
        snprintf(tmp, sizeof tmp, "%s.tmp", o->endpoint_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", ep) < 0 || fclose(f) != 0 || rename(tmp, o->endpoint_file)) {
            snprintf(err, SER_ERR_LEN, "cannot write %s", o->endpoint_file);
            return SER_EIO;
        }
    }
    return SER_OK;
}

// Everything before the first step. *code: the exit status when it fails (2: the job itself
// cannot start; 1: a runtime failure).
static int s_startup(s_coord *c, const ser_coord_opts *o, int *code, char *err) {
    char how[160];
    int rc;
    c->o = o;
    *code = 2;
    if ((rc = ser_coord_iters_per_epoch(o, &c->ipe, how, sizeof how, err)) ||
        (rc = ser_trainer_init(&c->tr, &o->cfg, c->ipe, err)))
        return rc;
    *code = 1;
    c->tr.lr_fix = o->lr_fix, c->tr.wd_fix = o->wd_fix, c->tr.mom_fix = o->mom_fix;
    c->m = &c->tr.mdl;
    c->threads = o->cfg.run.threads > 0 ? o->cfg.run.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ser_kernels_set_threads(c->threads);
    c->hash = ser_config_hash(&o->cfg);
    snprintf(c->job_id, sizeof c->job_id, "%s", o->cfg.run.name[0] ? o->cfg.run.name : "ser");
    if (o->weights) {
        if ((rc = ser_trainer_load(&c->tr, o->weights, err))) return rc;
    } else {
        ser_trainer_init_weights(&c->tr, o->cfg.data.seed);
    }
    c->ck = ser_trainer_ckpt(&c->tr);
    if ((rc = s_resume(c, how, sizeof how, err))) return rc;
    s_plan(c, how);
    c->knn_step = -1;
    c->collapse = (ser_collapse_watch){o->cfg.run.collapse_std, o->cfg.run.collapse_steps, 0, 0};
    c->ocollapse = (ser_collapse_watch){0.5, o->cfg.run.collapse_steps, 0, 0};  // fed 0 / 1
    c->tr.cls_std = NAN;
    {
        double tk = ser_time_sec();
        int64_t every = o->cfg.eval.knn_every > 0 ? o->cfg.eval.knn_every : c->ipe;
        char kerr[SER_ERR_LEN];
        c->knn = ser_knn_monitor_new(&o->cfg, &c->m->student->cfg, every, c->threads, kerr);
        if (c->knn) {
            int ntr, nte;
            ser_knn_monitor_sizes(c->knn, &ntr, &nte);
            ser_log(SER_LL_INFO, "kNN monitor: every %lld steps and at the end, %d train / %d test "
                    "images (k %d, T %g; decoded in %.1f s)", (long long)every, ntr, nte,
                    o->cfg.eval.knn_k, o->cfg.eval.knn_temperature, ser_time_sec() - tk);
        } else {
            ser_log(SER_LL_INFO, "kNN monitor %s", kerr);
        }
    }
    c->span = ser_trainer_span(&c->tr, &c->off, &c->toff);
    c->S = o->cfg.data.shards;
    c->B = o->cfg.data.global_batch;
    // The equivariant samples a loader puts in each step (the batch file's own count is not
    // known here: then only the sizes are checked).
    c->E = o->batch_file ? -1
           : o->cfg.ser.enabled ? ser_sched_equiv_count(o->cfg.ser.ratio, c->B) : 0;
    c->grid_max = ser_config_grid_max(&o->cfg);
    c->sh = ser_xcalloc((size_t)c->S, sizeof *c->sh);
    c->chain = o->cfg.cluster.reduce == SER_REDUCE_CHAIN;
    c->bcast = o->cfg.cluster.broadcast == SER_BROADCAST_TREE;
    c->run_a = ser_xcalloc((size_t)c->S + 1, sizeof(int));
    c->run_w = ser_xcalloc((size_t)c->S + 1, sizeof(int));
    for (int s = 0; s < c->S; s++) {
        s_shard *sh = &c->sh[s];
        sh->p0 = s * (c->B / c->S), sh->p1 = sh->p0 + c->B / c->S, sh->worker = -1;
        sh->bad_at = SIZE_MAX;
    }
    c->g.B = c->B, c->g.C = c->m->student->cfg.dim;
    for (int v = 0; v < 2; v++) {
        c->g.qcls[v] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
        c->g.kcls[v] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
        c->g.dqcls[v] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
    }
    c->L = c->g.n_local = o->cfg.data.local_crops;
    if (c->tr.obj->view_params)  // the workers send them; a FORWARD_DONE without them is refused
        c->g.vparams = ser_xaligned(sizeof(float) * (size_t)c->B * 2 * SER_VIEW_PARAMS);
    if (c->tr.obj->view_params && o->batch_file) {  // say so now, not after the workers' timeout
        ser_st_file *bf = NULL;
        char berr[SER_ERR_LEN];
        int lacks = ser_st_open(&bf, o->batch_file, berr) == 0 && !ser_st_find(bf, "vparams");
        ser_st_destroy(&bf);  // a file this host cannot open is the workers' to check
        if (lacks)
            return ser_errf(err, SER_ESHAPE, "%s has no vparams (the global views' parameters, "
                            "(B, 2, %d) F32), which method.name = %s reads", o->batch_file,
                            SER_VIEW_PARAMS, c->tr.obj->name);
    }
    for (int k = 0; k < c->L; k++) {
        c->g.lcls[k] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
        c->g.dlcls[k] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
    }
    c->g.pool = c->m->pool;  // a decoupled add-on's pooled maps (moco.addon_layer)
    c->g.n_lpairs = o->cfg.ser.enabled ? o->cfg.ser.local_pairs : 0;
    for (int v = 0; c->g.pool && v < 2 + c->L; v++) {
        c->g.qpool[v] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
        c->g.dqpool[v] = ser_xaligned(sizeof(float) * (size_t)c->B * c->g.C);
    }
    if ((rc = s_bind(c, err))) return rc;
    c->last_step = -1, c->first_step = c->first, c->steps_total = c->end - c->first;
    c->start_unix = (double)time(NULL);
    c->state = SER_STATUS_STATE_STARTING;
    if (o->cfg.cluster.status_port >= 0) {
        char serr[SER_ERR_LEN];
        c->st = ser_status_new(o->cfg.cluster.status_bind, o->cfg.cluster.status_port, NULL, serr);
        if (!c->st) {
            snprintf(err, SER_ERR_LEN, "%.160s ---> HINT: set cluster.status_port to a free port "
                     "(0 = any free one, -1 = no status port)", serr);
            return SER_EIO;
        }
        ser_log(SER_LL_INFO, "status on http://%s:%d/", o->cfg.cluster.status_bind,
                ser_status_port(c->st));
        s_seed_history(c);
        s_publish(c);
    }
    if (o->cfg.run.out_dir[0]) {
        char lerr[SER_ERR_LEN];
        if (!(c->log = ser_runlog_open(o->cfg.run.out_dir, lerr)))
            ser_log(SER_LL_WARNING, "%s; running without step logs", lerr);
        else
            ser_log(SER_LL_INFO, "logging each step to %s/metrics.jsonl and TensorBoard events "
                    "(tensorboard --logdir %s)", o->cfg.run.out_dir, o->cfg.run.out_dir);
    }
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    c->grads0 = ser_xaligned(sizeof(float) * c->tr.tab->total);
    c->nrun = c->end > c->first ? c->end - c->first : 0;
    c->losses = ser_xcalloc((size_t)c->nrun * 3 + 1, sizeof(float));
    c->step_s = ser_xcalloc((size_t)c->nrun + 1, sizeof(double));
    c->t0 = ser_time_sec();
    return SER_OK;
}

// "1h02m", "14m05s", "42s".
static void s_duration(char *buf, size_t n, double sec) {
    long t = sec > 0 && sec < 1e9 ? (long)(sec + 0.5) : 0;
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, n, "%lds", t);
}

// What follows step k of the run (c->step): the status, the kNN monitor when due, the step
// logs, a checkpoint when due and the progress line.
static int s_after_step(s_coord *c, int64_t k, const double L[3], char *err) {
    const ser_coord_opts *o = c->o;
    memcpy(c->last, L, sizeof c->last);
    c->last_step = c->step, c->phase = SER_STATUS_PHASE_IDLE;
    c->ips = (double)c->B * (double)(k + 1) / (ser_time_sec() - c->t0);
    {  // the ETA's rate, robust to outliers: the median of the last (up to 50) step times, the
       // first step (set-up) left out when there are others
        int64_t lo = k + 1 > 50 ? k + 1 - 50 : (k > 0 ? 1 : 0);
        double recent[50];  // ser_median sorts: a copy
        memcpy(recent, c->step_s + lo, sizeof(double) * (size_t)(k + 1 - lo));
        c->step_med = ser_median(recent, (int)(k + 1 - lo));
    }
    s_publish(c);
    for (int j = 0; j < 3; j++) c->losses[k * 3 + j] = (float)L[j];
    int measured = 0;
    if (ser_knn_monitor_due(c->knn, c->step, k + 1 == c->nrun)) {
        ser_eval_acc acc;
        double secs;
        char kerr[SER_ERR_LEN];
        if (ser_knn_monitor_run(c->knn, c->m->student, &acc, &secs, kerr)) {
            ser_log(SER_LL_WARNING, "kNN monitor: %s; off from here", kerr);
            ser_knn_monitor_destroy(&c->knn);
        } else {
            measured = 1;
            c->knn_top1 = acc.top1, c->knn_top5 = acc.top5, c->knn_step = c->step;
            ser_log(SER_LL_INFO, "step %lld: kNN top-1 %.2f%% top-5 %.2f%% (%.1f s)",
                    (long long)c->step, acc.top1, acc.top5, secs);
            s_publish(c);
        }
    }
    if (c->log) {
        // The fixed scalars, the objective's own monitors (DINO, Barlow Twins), then the kNN
        // monitor's figures at the steps it measured.
        const char *names[10 + SER_OBJECTIVE_MAX_MONITORS + 2] = {
            "loss", "loss_inv", "loss_equiv", "lr", "weight_decay", "momentum", "grad_norm",
            "step_seconds", "images_per_second", "cls_std"};
        double vals[10 + SER_OBJECTIVE_MAX_MONITORS + 2] = {
            L[0], L[1], L[2], c->lr, c->wd, c->momentum, c->gnorm, c->step_s[k], c->ips,
            c->tr.cls_std};
        int nv = 10;
        for (int i = 0; i < c->tr.n_mon; i++) names[nv] = c->tr.mon_names[i], vals[nv++] = c->tr.mon[i];
        if (measured) {
            names[nv] = "knn_top1", vals[nv++] = c->knn_top1;
            names[nv] = "knn_top5", vals[nv++] = c->knn_top5;
        }
        char lerr[SER_ERR_LEN];
        if (ser_runlog_step(c->log, c->step, names, vals, nv, lerr)) {  // the run goes on
            ser_log(SER_LL_WARNING, "%s; step logs stop here", lerr);
            ser_runlog_destroy(&c->log);
        }
    }
    int every = o->cfg.run.checkpoint_every, rc;
    char why[384] = "", owhy[256] = "";
    int collapsed = ser_collapse_watch_feed(&c->collapse, c->tr.cls_std);
    if (collapsed)
        snprintf(why, sizeof why, "cls_std (the spread of the student's normalised [CLS], ~1 when "
                 "healthy) has been below run.collapse_std = %g for %d steps in a row (now %.4f)",
                 c->collapse.threshold, c->collapse.steps, c->tr.cls_std);
    const ser_objective_i *obj = c->tr.obj;
    int oc = obj->collapsed && obj->collapsed(c->tr.st, owhy, sizeof owhy);
    if (ser_collapse_watch_feed(&c->ocollapse, oc ? 0.0 : 1.0) && !collapsed) {
        collapsed = 1;
        snprintf(why, sizeof why, "%s, for %d steps in a row", owhy, c->ocollapse.steps);
    }
    int stop = collapsed && o->cfg.run.on_collapse == SER_CONFIG_ON_COLLAPSE_ABORT;
    if (collapsed)
        ser_log(SER_LL_WARNING, "step %lld: the features are collapsing: %s%s", (long long)c->step,
                why, stop ? "; stopping (run.on_collapse = abort)" : "; going on (run.on_collapse = warn)");
    if ((every > 0 && (c->step + 1) % every == 0) || k + 1 == c->nrun || stop)
        if ((rc = s_checkpoint(c, c->ck, c->step + 1, err))) return rc;
    if (stop)
        return ser_errf(err, SER_ENONFINITE, "step %lld: collapse (%s; run.on_collapse = abort): "
                        "checkpointed at step %lld", (long long)c->step, why,
                        (long long)c->step + 1);
    if ((k + 1) % o->cfg.run.log_every == 0 || k + 1 == c->nrun) {
        char knn[48] = "", eta[32];
        if (c->knn_step >= 0) snprintf(knn, sizeof knn, " · kNN %.1f%%", c->knn_top1);
        double med = c->step_med;
        s_duration(eta, sizeof eta, med * (double)(c->nrun - k - 1));
        ser_log(SER_LL_INFO, "step %lld: loss %.6f inv %.6f equiv %.6f · %lld/%lld (%.1f%%) · "
                "epoch %.2f/%d · lr %.3g · std %.2f%s · %.0f img/s · %.2f s/step · %d workers · ETA %s",
                (long long)c->step, L[0], L[1], L[2], (long long)c->step + 1, (long long)c->end,
                100.0 * (double)(c->step + 1) / (double)c->end,
                (double)(c->step + 1) / (double)c->ipe, o->cfg.optim.epochs, c->lr, c->tr.cls_std, knn,
                (double)c->B / (med > 0 ? med : 1e-9), med, s_live_count(c), eta);
    }
    return SER_OK;
}

// A failed step: 1 to go on (a skipped non-finite step), 0 to stop (*rc: SER_OK for a stop
// signal, after checkpointing the last completed step).
static int s_step_failed(s_coord *c, int *rc, double L[3], char *err) {
    const ser_coord_opts *o = c->o;
    if (*rc == SER_EIO) {  // a stop signal: keep the last completed step, then exit
        ser_log(SER_LL_INFO, "stop requested during step %lld: checkpointing step %lld",
                (long long)c->step, (long long)c->step - 1);
        if (c->step > c->first && (*rc = s_checkpoint(c, c->ck, c->step, err))) return 0;
        *rc = SER_OK;
        return 0;
    }
    if (*rc == SER_ENONFINITE && o->cfg.run.nonfinite == SER_CONFIG_NONFINITE_SKIP) {
        // Nothing of the step reaches the parameters or AdamW; the momentum encoder's EMA
        // (taken before the keys) and the heads' BatchNorm buffers keep its update. An EMA
        // that closes a step (DINO) did not run: the teacher stays where it was, so the
        // workers' own EMA would be wrong: they get it whole next step.
        ser_log(SER_LL_WARNING, "%s; skipped (run.nonfinite = skip)", err);
        L[0] = L[1] = L[2] = NAN;
        if (c->tr.obj->ema == SER_OBJECTIVE_EMA_AFTER)
            for (int i = 0; i < c->nw; i++) c->w[i].teacher_version = INT64_MIN;
        *rc = SER_OK;
        return 1;
    }
    if (*rc == SER_ETIMEDOUT) snprintf(err, SER_ERR_LEN, "step %lld: no worker", (long long)c->step);
    if (*rc == SER_EPEER)
        snprintf(err, SER_ERR_LEN, "step %lld: no usable worker: every worker's data "
                 "loader refuses the job's shards (%.150s)", (long long)c->step, c->data_error);
    if (*rc == SER_ENONFINITE) {
        snprintf(err + strlen(err), SER_ERR_LEN - strlen(err), " (run.nonfinite = abort)");
        char cerr[SER_ERR_LEN];  // keep the last good state for a resume
        if (c->step > c->first && s_checkpoint(c, c->ck, c->step, cerr))
            ser_log(SER_LL_ERROR, "checkpoint before aborting: %s", cerr);
    }
    return 0;
}

static void s_teardown(s_coord *c) {
    c->state = SER_STATUS_STATE_STOPPED;
    s_publish(c);
    ser_status_destroy(&c->st);
    ser_runlog_destroy(&c->log);
    ser_knn_monitor_destroy(&c->knn);
    ser_ckpt_destroy(&c->ck);
    if (c->sock) {
        Ser__Envelope e;
        s_env(c, &e, SER__MSG_TYPE__MSG_SHUTDOWN);
        for (int i = 0; i < c->nw; i++)
            if (c->w[i].alive) ser_wire_send(c->sock, c->w[i].id, &e, NULL, 0);
        zmq_close(c->sock);
    }
    if (c->ctx) zmq_ctx_term(c->ctx);
    for (int s = 0; c->sh && s < c->S; s++) {
        free(c->sh[s].grad), free(c->sh[s].g[0]), free(c->sh[s].g[1]);
        for (int i = 0; i < 4; i++) free(c->sh[s].maps[i]);
        for (int v = 0; v < 2; v++) free(c->sh[s].lg[v]), free(c->sh[s].lmaps[v]);
    }
    free(c->sh), free(c->grads0), free(c->losses), free(c->step_s);
    free(c->run_a), free(c->run_w), free(c->got);
    free(c->gall[0]), free(c->gall[1]), free(c->lgall[0]), free(c->lgall[1]);
    ser_gathered_free(&c->g);
    ser_trainer_free(&c->tr);
}

int ser_coord_run(const ser_coord_opts *o) {
    s_coord c;
    memset(&c, 0, sizeof c);
    char err[SER_ERR_LEN];
    int status = 1, code = 1;
    int rc = s_startup(&c, o, &code, err);
    if (rc && code == 2) {  // the job cannot start: nothing else was set up
        fprintf(stderr, "ser coordinator: %s\n", err);
        ser_trainer_free(&c.tr);
        return 2;
    }
    if (!rc && o->min_workers > 1) {  // --workers N: all of them in from the first step
        int64_t t0 = s_now(), keep = c.step;
        c.step = -1;  // no PARAMS on their HELLO: the first step sends them
        while (s_live_count(&c) < o->min_workers && s_now() - t0 < o->wait_workers_ms && !s_stop)
            s_poll(&c, 50);
        c.step = keep;
        if (s_live_count(&c) < o->min_workers)
            ser_log(SER_LL_WARNING, "%d of the %d workers asked for (--workers) joined within %d ms: "
                    "starting with them", s_live_count(&c), o->min_workers, o->wait_workers_ms);
    }
    for (int64_t k = 0; !rc && k < c.nrun; k++) {
        c.step = c.first + k;
        if (k == 1) {  // the first step carries the set-up (and the workers' joins)
            ser_wire_bytes(&c.b_sent0, &c.b_recv0);
            c.params_resent0 = c.params_resent;
        }
        double ts = ser_time_sec();
        ser_trainer_values(&c.tr, c.step, &c.lr, &c.wd, &c.momentum);
        c.tmom = c.momentum;
        if (c.tr.obj->ema == SER_OBJECTIVE_EMA_AFTER && c.step > 0) {  // the EMA that closed the previous step
            double lr1, wd1;
            ser_trainer_values(&c.tr, c.step - 1, &lr1, &wd1, &c.tmom);
        }
        if (c.state == SER_STATUS_STATE_STARTING) c.state = SER_STATUS_STATE_RUNNING;
        double L[3];
        if ((rc = s_step(&c, c.lr, c.wd, L, k == 0 ? c.grads0 : NULL, err))) {
            if (!s_step_failed(&c, &rc, L, err)) {
                if (!rc) status = SER_EXIT_INTERRUPTED;  // stopped by a signal, checkpointed
                goto done;
            }
        }
        c.step_s[k] = ser_time_sec() - ts;
        rc = s_after_step(&c, k, L, err);
    }
    if (rc) goto done;
    if (c.nrun > 1) {  // the figures `ser bench cluster` reads: steady-state steps only
        uint64_t b_sent, b_recv;
        ser_wire_bytes(&b_sent, &b_recv);
        // The exact counts first (`ser bench cluster` reads them), then for people.
        double ps = (double)(b_sent - c.b_sent0) / (double)(c.nrun - 1);
        double pr = (double)(b_recv - c.b_recv0) / (double)(c.nrun - 1);
        char hs[SER_HUMAN_BYTES_LEN], hr[SER_HUMAN_BYTES_LEN];
        // Then what tools/bench_link.sh checks against the cost model: the PARAMS sent again
        // after the first step and P, the parameters of one PARAMS.
        ser_log(SER_LL_INFO, "run summary: %lld steps, median %.4f s/step after the first, "
                "%.0f bytes/step sent, %.0f bytes/step received (%s sent, %s received a step), "
                "%lld PARAMS resent after the first step (%lld in all), P = %zu",
                (long long)c.nrun, ser_median(c.step_s + 1, (int)c.nrun - 1), ps, pr,
                ser_human_bytes(ps, hs), ser_human_bytes(pr, hr),
                (long long)(c.params_resent - c.params_resent0), (long long)c.params_resent,
                c.span);
    }
    if (c.chain)
        ser_log(SER_LL_INFO, "run summary: cluster.reduce = chain: %lld steps summed along the "
                "workers' chain (%lld of its rounds broke and were run again; %lld steps by the "
                "round sent with the backward tasks), %lld by the coordinator after the chain "
                "broke %d times", (long long)c.chain_steps, (long long)c.chain_repairs,
                (long long)c.chain_early, (long long)c.chain_fallbacks, S_CHAIN_ROUNDS);
    if (c.bcast)
        ser_log(SER_LL_INFO, "run summary: cluster.broadcast = tree: the parameters went to the "
                "root of the workers' tree each step; %lld PARAMS sent to a worker directly after "
                "the first step (the tree missed it, or it lacked the previous teacher)",
                (long long)c.params_direct);
    if (o->out && (rc = ser_trainer_write(&c.tr, o->out, c.nrun ? c.grads0 : NULL, c.losses, c.nrun,
                                          c.first, err)))
        goto done;
    status = 0;
done:
    if (status && rc) fprintf(stderr, "ser coordinator: %s\n", err);
    s_teardown(&c);
    return status;
}
