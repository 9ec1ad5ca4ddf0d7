// ser_status.c — the status port server (see ser_status.h, docs/status.md).
//
// Two sides share one struct:
//   - the training side calls ser_status_update(), which copies the snapshot into `shared`
//     and appends to the history ring, under `mu`;
//   - the server thread owns the libuv loop, the listener, the sweep timer, the $TERM async
//     and every connection. To serve a request it copies `shared` into its private `view`
//     under `mu` (a memcpy), releases the lock, and renders from the view. So the training
//     side waits at most for a memcpy, never for a client.
//
// Connections (libuv handle rules, STYLE rule 11): each s_conn is allocated on accept, linked
// into the server's list, and freed only in its close callback; each response is one
// s_write, freed only in its write callback (libuv calls it with UV_ECANCELED when the
// connection is closed first, before the close callback). A request is parsed by http-parser,
// which is paused in on_message_complete so that requests are handled one at a time, in order.
// After a response is queued, reading stops until it has drained (back-pressure: a client that
// does not read cannot make the server buffer without bound). A connection that errs or asks
// to close is half-closed (uv_shutdown) and read until EOF for a short while (a "lingering
// close", so that the client reads the error instead of a reset). A sweep timer closes every
// connection whose deadline passed: requests must arrive, and responses drain, within
// opts.timeout_ms.
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <http_parser.h>
#include <uv.h>

#include "ser_status.h"
#include "ser_status_page.h"

// Responses queued on one connection before reading stops; more pipelined requests than this
// in one read mean an abusive client, which is answered up to here and closed.
#define S_MAX_PIPELINE SER_STATUS_MAX_PIPELINE
// Likewise once more than this many bytes of responses wait in libuv (the kernel's socket
// buffer is full): bounds the memory a client that does not read can pin.
#define S_MAX_QUEUED (1u << 20)
// How long a closing connection is read (and discarded) after its last response.
#define S_LINGER_MS 2000
#define S_READ_BUF 65536

// --- names -------------------------------------------------------------------------------------

static const char *const s_state_names[SER_STATUS_STATE_COUNT] = {"starting", "running", "waiting",
                                                                  "stopped"};
static const char *const s_phase_names[SER_STATUS_PHASE_COUNT] = {
    "idle", "forward", "objective", "backward", "apply", "checkpoint"};
static const char *const s_worker_names[SER_STATUS_WORKER_COUNT] = {"joining", "idle", "busy",
                                                                    "lost"};

const char *ser_status_state_name(int state) {
    return state >= 0 && state < SER_STATUS_STATE_COUNT ? s_state_names[state] : "unknown";
}
const char *ser_status_phase_name(int phase) {
    return phase >= 0 && phase < SER_STATUS_PHASE_COUNT ? s_phase_names[phase] : "unknown";
}
const char *ser_status_worker_state_name(int state) {
    return state >= 0 && state < SER_STATUS_WORKER_COUNT ? s_worker_names[state] : "unknown";
}

void ser_status_snapshot_init(ser_status_snapshot *snap) {
    memset(snap, 0, sizeof *snap);
    snap->state = SER_STATUS_STATE_STARTING;
    snap->start_time_unix = NAN;
    snap->waiting_since_ms = -1;
    snap->ckpt_step = -1;
    snap->ckpt_time_ms = -1;
    snap->terms_step = -1;
    snap->epoch = NAN;
    snap->lr = snap->momentum = snap->weight_decay = NAN;
    snap->images_per_second = NAN;
    snap->eta_s = NAN;
    snap->steps_total = -1;
    snap->knn_top1 = NAN;
    snap->knn_step = -1;
    snap->cls_std = NAN;
}

void ser_status_opts_defaults(ser_status_opts *o) {
    o->max_conns = 64;
    o->timeout_ms = 10000;
    o->history_cap = 2000;
}

// --- snapshot copies ---------------------------------------------------------------------------

// A snapshot together with owned storage for its worker and loader arrays.
typedef struct s_data {
    ser_status_snapshot snap;  // snap.workers/loaders point into the arrays below
    ser_status_worker *workers;
    ser_status_loader *loaders;
    int workers_cap, loaders_cap;
} s_data;

#define S_TERMINATE(a) ((a)[sizeof(a) - 1] = '\0')

// Deep-copies src into dst, growing dst's arrays, and makes every string NUL-terminated.
static void s_data_copy(s_data *dst, const ser_status_snapshot *src) {
    int nw = src->n_workers > 0 && src->workers ? src->n_workers : 0;
    int nl = src->n_loaders > 0 && src->loaders ? src->n_loaders : 0;
    if (nw > dst->workers_cap) {
        dst->workers = realloc(dst->workers, (size_t)nw * sizeof *dst->workers);
        SER_ASSERT(dst->workers);
        dst->workers_cap = nw;
    }
    if (nl > dst->loaders_cap) {
        dst->loaders = realloc(dst->loaders, (size_t)nl * sizeof *dst->loaders);
        SER_ASSERT(dst->loaders);
        dst->loaders_cap = nl;
    }
    dst->snap = *src;
    if (nw) memcpy(dst->workers, src->workers, (size_t)nw * sizeof *dst->workers);
    if (nl) memcpy(dst->loaders, src->loaders, (size_t)nl * sizeof *dst->loaders);
    ser_status_snapshot *d = &dst->snap;
    d->n_workers = nw;
    d->n_loaders = nl;
    d->workers = dst->workers;
    d->loaders = dst->loaders;
    if (d->n_terms < 0) d->n_terms = 0;
    if (d->n_terms > SER_STATUS_MAX_TERMS) d->n_terms = SER_STATUS_MAX_TERMS;
    S_TERMINATE(d->job_id);
    S_TERMINATE(d->job_name);
    S_TERMINATE(d->waiting_for);
    S_TERMINATE(d->ckpt_path);
    for (int i = 0; i < d->n_terms; i++) S_TERMINATE(d->terms[i].name);
    for (int i = 0; i < nw; i++) {
        S_TERMINATE(dst->workers[i].id);
        S_TERMINATE(dst->workers[i].address);
        if (dst->workers[i].n_shards < 0) dst->workers[i].n_shards = 0;
    }
    for (int i = 0; i < nl; i++) {
        S_TERMINATE(dst->loaders[i].id);
        S_TERMINATE(dst->loaders[i].address);
    }
}

static void s_data_free(s_data *d) {
    free(d->workers);
    free(d->loaders);
    memset(d, 0, sizeof *d);
}

// --- history -----------------------------------------------------------------------------------
// A ring of points; column j of every point is the loss term named names[j] (NaN where that
// term was absent). Names are added as they first appear, up to SER_STATUS_MAX_TERMS.

typedef struct s_point {
    int64_t step;
    double lr;
    double v[SER_STATUS_MAX_TERMS];
} s_point;

typedef struct s_history {
    s_point *pts;
    int cap, head, len;  // oldest point at pts[head]
    int n_names;
    char names[SER_STATUS_MAX_TERMS][SER_STATUS_NAME_LEN];
} s_history;

static s_point *s_hist_at(s_history *h, int i) {
    return &h->pts[(h->head + i) % h->cap];
}

static int s_hist_column(s_history *h, const char *name) {
    for (int j = 0; j < h->n_names; j++)
        if (strcmp(h->names[j], name) == 0) return j;
    if (h->n_names == SER_STATUS_MAX_TERMS) return -1;
    snprintf(h->names[h->n_names], SER_STATUS_NAME_LEN, "%s", name);
    return h->n_names++;
}

static void s_hist_record(s_history *h, const ser_status_snapshot *snap) {
    if (snap->terms_step < 0 || h->cap <= 0) return;
    while (h->len > 0 && s_hist_at(h, h->len - 1)->step > snap->terms_step) h->len--;  // rollback
    s_point *p;
    if (h->len > 0 && s_hist_at(h, h->len - 1)->step == snap->terms_step) {
        p = s_hist_at(h, h->len - 1);  // the same step again: keep its latest values
    } else if (h->len < h->cap) {
        p = s_hist_at(h, h->len++);
    } else {
        p = s_hist_at(h, 0);  // full: overwrite the oldest
        h->head = (h->head + 1) % h->cap;
    }
    p->step = snap->terms_step;
    p->lr = snap->lr;
    for (int j = 0; j < SER_STATUS_MAX_TERMS; j++) p->v[j] = NAN;
    for (int i = 0; i < snap->n_terms; i++) {
        int j = s_hist_column(h, snap->terms[i].name);
        if (j >= 0) p->v[j] = snap->terms[i].value;
    }
    if (isfinite(snap->cls_std)) {
        int j = s_hist_column(h, "cls_std");
        if (j >= 0) p->v[j] = snap->cls_std;
    }
    if (snap->knn_step == snap->terms_step && isfinite(snap->knn_top1)) {
        int j = s_hist_column(h, "knn_top1");
        if (j >= 0) p->v[j] = snap->knn_top1;
    }
}

// --- the server struct -------------------------------------------------------------------------

typedef struct s_conn s_conn;

struct ser_status {
    // Set by the constructor before the thread starts; read-only afterwards.
    ser_status_opts opts;
    char bind_addr[64];
    int req_port;
    int port;  // the bound port, published by the thread before "ready"
    pthread_t thread;

    // Shared with the training side, under mu.
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, start_rc;
    char start_err[SER_ERR_LEN];
    s_data shared;
    s_history hist;
    uint64_t n_updates;
    int64_t last_update_ms;

    // Server thread only.
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_timer_t sweep;
    uv_async_t term;
    s_conn *conns;
    int n_conns;
    uint64_t n_requests, n_rejected;
    s_data view;
    uint64_t view_updates;
    int64_t view_last_update_ms;
    char rbuf[S_READ_BUF];
};

struct s_conn {
    uv_tcp_t tcp;  // tcp.data == this
    ser_status *s;
    s_conn *prev, *next;
    http_parser parser;
    uv_shutdown_t shut;
    uint64_t deadline;  // uv_now() after which the sweep closes it
    size_t req_bytes;   // bytes of the current request so far
    size_t url_len;
    int pending;  // responses queued, not yet written
    int reading, eof, stop_parsing, close_after_write, lingering;
    int keep_alive;  // of the request being handled
    int is_head;
    // Not NULL: an in-process connection (ser_status_serve_bytes): responses are appended
    // here instead of written to tcp, which is unused.
    struct s_buf *sink;
    char url[SER_STATUS_MAX_REQUEST + 1];
};

// --- growable text buffer ----------------------------------------------------------------------

typedef struct s_buf {
    char *p;
    size_t len, cap;
} s_buf;

static void s_buf_reserve(s_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra + 1) cap *= 2;
    b->p = realloc(b->p, cap);
    SER_ASSERT(b->p);
    b->cap = cap;
}

static void s_buf_printf(s_buf *b, const char *fmt, ...) SER_FMT(2, 3);
static void s_buf_printf(s_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    SER_ASSERT(n >= 0);
    s_buf_reserve(b, (size_t)n);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
}

static void s_buf_puts(s_buf *b, const char *s) {
    size_t n = strlen(s);
    s_buf_reserve(b, n);
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

// --- rendering helpers -------------------------------------------------------------------------


// Age in ms of a ser_clock_now_ms() timestamp, or -1 for "never" (t < 0).
static int64_t s_age_ms(int64_t t, int64_t now) {
    if (t < 0) return -1;
    return now > t ? now - t : 0;
}

// The shortest of %.15g / %.17g that reads back exactly; NaN and infinities as Prometheus
// writes them.
static const char *s_fmt_double(char out[40], double v) {
    if (isnan(v)) return strcpy(out, "NaN");
    if (isinf(v)) return strcpy(out, v > 0 ? "+Inf" : "-Inf");
    snprintf(out, 40, "%.15g", v);
    if (strtod(out, NULL) != v) snprintf(out, 40, "%.17g", v);
    return out;
}

static void s_json_num(cJSON *o, const char *name, double v) {
    if (isfinite(v))
        cJSON_AddNumberToObject(o, name, v);
    else
        cJSON_AddNullToObject(o, name);
}

static void s_json_age(cJSON *o, const char *name, int64_t t, int64_t now) {
    int64_t a = s_age_ms(t, now);
    if (a < 0)
        cJSON_AddNullToObject(o, name);
    else
        cJSON_AddNumberToObject(o, name, (double)a);
}

static void s_json_str_or_null(cJSON *o, const char *name, const char *s) {
    if (s[0])
        cJSON_AddStringToObject(o, name, s);
    else
        cJSON_AddNullToObject(o, name);
}

// --- JSON sections -----------------------------------------------------------------------------

enum { S_SEC_COORDINATOR, S_SEC_TRAINING, S_SEC_WORKERS, S_SEC_DATA, S_SEC_COUNT };
static const char *const s_section_names[S_SEC_COUNT] = {"coordinator", "training", "workers",
                                                         "data"};

typedef struct s_render_ctx {
    const ser_status *s;
    const ser_status_snapshot *snap;
    int64_t now_ms;
    double now_unix;
} s_render_ctx;

static int s_workers_alive(const ser_status_snapshot *snap) {
    int n = 0;
    for (int i = 0; i < snap->n_workers; i++) n += snap->workers[i].state != SER_STATUS_WORKER_LOST;
    return n;
}

static cJSON *s_json_section(const s_render_ctx *r, int sec) {
    const ser_status_snapshot *sn = r->snap;
    cJSON *o = cJSON_CreateObject();
    SER_ASSERT(o);
    if (sec == S_SEC_COORDINATOR) {
        char hash[17];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)sn->config_hash);
        cJSON_AddStringToObject(o, "job_id", sn->job_id);
        cJSON_AddStringToObject(o, "job_name", sn->job_name);
        cJSON_AddStringToObject(o, "state", ser_status_state_name(sn->state));
        cJSON_AddStringToObject(o, "config_hash", hash);
        s_json_num(o, "start_time_unix", sn->start_time_unix);
        s_json_num(o, "uptime_s",
                   isfinite(sn->start_time_unix) ? fmax(0.0, r->now_unix - sn->start_time_unix)
                                                 : (double)NAN);
        cJSON_AddNumberToObject(o, "time_unix", r->now_unix);
        s_json_str_or_null(o, "waiting_for", sn->waiting_for);
        s_json_age(o, "waiting_ms", sn->waiting_for[0] ? sn->waiting_since_ms : -1, r->now_ms);
        if (sn->ckpt_path[0]) {
            cJSON *c = cJSON_AddObjectToObject(o, "checkpoint");
            cJSON_AddStringToObject(c, "path", sn->ckpt_path);
            cJSON_AddNumberToObject(c, "step", (double)sn->ckpt_step);
            s_json_age(c, "age_ms", sn->ckpt_time_ms, r->now_ms);
        } else {
            cJSON_AddNullToObject(o, "checkpoint");
        }
        cJSON_AddNumberToObject(o, "updates", (double)r->s->view_updates);
        s_json_age(o, "last_update_age_ms", r->s->view_last_update_ms, r->now_ms);
    } else if (sec == S_SEC_TRAINING) {
        cJSON_AddNumberToObject(o, "step", (double)sn->step);
        s_json_num(o, "epoch", sn->epoch);
        cJSON_AddStringToObject(o, "phase", ser_status_phase_name(sn->phase));
        cJSON *l = cJSON_AddObjectToObject(o, "losses");
        for (int i = 0; i < sn->n_terms; i++) s_json_num(l, sn->terms[i].name, sn->terms[i].value);
        if (sn->terms_step >= 0)
            cJSON_AddNumberToObject(o, "losses_step", (double)sn->terms_step);
        else
            cJSON_AddNullToObject(o, "losses_step");
        s_json_num(o, "lr", sn->lr);
        s_json_num(o, "momentum", sn->momentum);
        s_json_num(o, "weight_decay", sn->weight_decay);
        s_json_num(o, "images_per_second", sn->images_per_second);
        s_json_num(o, "eta_s", sn->eta_s);
        if (sn->steps_total >= 0) cJSON_AddNumberToObject(o, "steps_total", (double)sn->steps_total);
        else cJSON_AddNullToObject(o, "steps_total");
        s_json_num(o, "cls_std", sn->cls_std);
        s_json_num(o, "knn_top1", sn->knn_top1);
        if (sn->knn_step >= 0) cJSON_AddNumberToObject(o, "knn_step", (double)sn->knn_step);
        else cJSON_AddNullToObject(o, "knn_step");
    } else if (sec == S_SEC_WORKERS) {
        cJSON_AddNumberToObject(o, "count", sn->n_workers);
        cJSON_AddNumberToObject(o, "alive", s_workers_alive(sn));
        cJSON *a = cJSON_AddArrayToObject(o, "list");
        for (int i = 0; i < sn->n_workers; i++) {
            const ser_status_worker *w = &sn->workers[i];
            cJSON *e = cJSON_CreateObject();
            SER_ASSERT(e);
            cJSON_AddStringToObject(e, "id", w->id);
            cJSON_AddStringToObject(e, "address", w->address);
            cJSON_AddStringToObject(e, "state", ser_status_worker_state_name(w->state));
            cJSON_AddNumberToObject(e, "n_shards", w->n_shards);
            cJSON *sh = cJSON_AddArrayToObject(e, "shards");
            int ns = w->n_shards < SER_STATUS_MAX_SHARDS ? w->n_shards : SER_STATUS_MAX_SHARDS;
            for (int k = 0; k < ns; k++) cJSON_AddItemToArray(sh, cJSON_CreateNumber(w->shards[k]));
            s_json_age(e, "last_heartbeat_age_ms", w->last_heard_ms, r->now_ms);
            cJSON_AddItemToArray(a, e);
        }
    } else {
        cJSON_AddNumberToObject(o, "count", sn->n_loaders);
        cJSON *a = cJSON_AddArrayToObject(o, "loaders");
        for (int i = 0; i < sn->n_loaders; i++) {
            const ser_status_loader *L = &sn->loaders[i];
            cJSON *e = cJSON_CreateObject();
            SER_ASSERT(e);
            cJSON_AddStringToObject(e, "id", L->id);
            cJSON_AddStringToObject(e, "address", L->address);
            cJSON_AddNumberToObject(e, "lag_steps", (double)L->lag_steps);
            s_json_num(e, "lag_shards", L->lag_shards < 0 ? (double)NAN : (double)L->lag_shards);
            s_json_num(e, "shards_served", L->served < 0 ? (double)NAN : (double)L->served);
            s_json_num(e, "bad_files", L->bad_files < 0 ? (double)NAN : (double)L->bad_files);
            s_json_num(e, "replacements",
                       L->replacements < 0 ? (double)NAN : (double)L->replacements);
            s_json_age(e, "last_heartbeat_age_ms", L->last_heard_ms, r->now_ms);
            cJSON_AddItemToArray(a, e);
        }
    }
    return o;
}

// /status as JSON: every section, or only `only` (>= 0).
static char *s_render_status_json(const s_render_ctx *r, int only) {
    cJSON *root = cJSON_CreateObject();
    SER_ASSERT(root);
    for (int sec = 0; sec < S_SEC_COUNT; sec++)
        if (only < 0 || only == sec)
            cJSON_AddItemToObject(root, s_section_names[sec], s_json_section(r, sec));
    char *text = cJSON_PrintUnformatted(root);
    SER_ASSERT(text);
    cJSON_Delete(root);
    return text;
}

// --- INFO text (Redis style: "# Section" then key:value lines) -----------------------------------

static void s_info_num(s_buf *b, const char *key, double v) {
    char t[40];
    s_buf_printf(b, "%s:%s\r\n", key, isfinite(v) ? s_fmt_double(t, v) : "");
}

static void s_info_age(s_buf *b, const char *key, int64_t t, int64_t now) {
    int64_t a = s_age_ms(t, now);
    if (a < 0)
        s_buf_printf(b, "%s:\r\n", key);
    else
        s_buf_printf(b, "%s:%lld\r\n", key, (long long)a);
}

// Values cannot hold CR/LF in INFO text; they are replaced by spaces.
static void s_info_str(s_buf *b, const char *key, const char *v) {
    s_buf_printf(b, "%s:", key);
    size_t start = b->len;
    s_buf_puts(b, v);
    for (size_t i = start; i < b->len; i++)
        if (b->p[i] == '\r' || b->p[i] == '\n') b->p[i] = ' ';
    s_buf_puts(b, "\r\n");
}

static char *s_render_status_info(const s_render_ctx *r, int only, size_t *len) {
    const ser_status_snapshot *sn = r->snap;
    s_buf b = {0};
    s_buf_puts(&b, "");
    for (int sec = 0; sec < S_SEC_COUNT; sec++) {
        if (only >= 0 && only != sec) continue;
        if (b.len) s_buf_puts(&b, "\r\n");
        char title[32];
        snprintf(title, sizeof title, "%s", s_section_names[sec]);
        title[0] = (char)(title[0] - 'a' + 'A');
        s_buf_printf(&b, "# %s\r\n", title);
        if (sec == S_SEC_COORDINATOR) {
            s_info_str(&b, "job_id", sn->job_id);
            s_info_str(&b, "job_name", sn->job_name);
            s_info_str(&b, "state", ser_status_state_name(sn->state));
            s_buf_printf(&b, "config_hash:%016llx\r\n", (unsigned long long)sn->config_hash);
            s_info_num(&b, "start_time_unix", sn->start_time_unix);
            s_info_str(&b, "waiting_for", sn->waiting_for);
            s_info_age(&b, "waiting_ms", sn->waiting_for[0] ? sn->waiting_since_ms : -1, r->now_ms);
            s_info_str(&b, "checkpoint_path", sn->ckpt_path);
            if (sn->ckpt_path[0]) {
                s_buf_printf(&b, "checkpoint_step:%lld\r\n", (long long)sn->ckpt_step);
                s_info_age(&b, "checkpoint_age_ms", sn->ckpt_time_ms, r->now_ms);
            }
            s_buf_printf(&b, "updates:%llu\r\n", (unsigned long long)r->s->view_updates);
        } else if (sec == S_SEC_TRAINING) {
            s_buf_printf(&b, "step:%lld\r\n", (long long)sn->step);
            s_info_num(&b, "epoch", sn->epoch);
            s_info_str(&b, "phase", ser_status_phase_name(sn->phase));
            for (int i = 0; i < sn->n_terms; i++)
                s_info_num(&b, sn->terms[i].name, sn->terms[i].value);
            s_buf_printf(&b, "losses_step:%lld\r\n", (long long)sn->terms_step);
            s_info_num(&b, "lr", sn->lr);
            s_info_num(&b, "momentum", sn->momentum);
            s_info_num(&b, "weight_decay", sn->weight_decay);
            s_info_num(&b, "imgs_per_sec", sn->images_per_second);
            s_info_num(&b, "eta_s", sn->eta_s);
            s_info_num(&b, "cls_std", sn->cls_std);
            s_info_num(&b, "knn_top1", sn->knn_top1);
        } else if (sec == S_SEC_WORKERS) {
            s_buf_printf(&b, "workers:%d\r\nworkers_alive:%d\r\n", sn->n_workers,
                         s_workers_alive(sn));
            for (int i = 0; i < sn->n_workers; i++) {
                const ser_status_worker *w = &sn->workers[i];
                s_buf_printf(&b,
                             "worker_%s:address=%s,state=%s,shards=%d,heartbeat_age_ms=%lld\r\n",
                             w->id, w->address, ser_status_worker_state_name(w->state), w->n_shards,
                             (long long)s_age_ms(w->last_heard_ms, r->now_ms));
            }
        } else {
            s_buf_printf(&b, "loaders:%d\r\n", sn->n_loaders);
            for (int i = 0; i < sn->n_loaders; i++) {
                const ser_status_loader *L = &sn->loaders[i];
                char v[4][24];  // unknown counts are empty, as other unknown values
                const int64_t c[4] = {L->lag_shards, L->served, L->bad_files, L->replacements};
                for (int k = 0; k < 4; k++) {
                    if (c[k] < 0) v[k][0] = 0;
                    else snprintf(v[k], sizeof v[k], "%lld", (long long)c[k]);
                }
                s_buf_printf(&b,
                             "loader_%s:address=%s,lag_steps=%lld,lag_shards=%s,served=%s,"
                             "bad_files=%s,replacements=%s,heartbeat_age_ms=%lld\r\n",
                             L->id, L->address, (long long)L->lag_steps, v[0], v[1], v[2], v[3],
                             (long long)s_age_ms(L->last_heard_ms, r->now_ms));
            }
        }
    }
    *len = b.len;
    return b.p;
}

// --- Prometheus text format 0.0.4 ----------------------------------------------------------------

// Label values escape backslash, double quote and newline.
static void s_prom_label(s_buf *b, const char *v) {
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            s_buf_puts(b, "\\\\");
        else if (*p == '"')
            s_buf_puts(b, "\\\"");
        else if (*p == '\n')
            s_buf_puts(b, "\\n");
        else
            s_buf_printf(b, "%c", *p);
    }
}

static void s_prom_family(s_buf *b, const char *name, const char *type, const char *help) {
    s_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

// One sample: name{key="value"} v. key may be NULL (no labels).
static void s_prom_sample(s_buf *b, const char *name, const char *key, const char *value,
                          double v) {
    char t[40];
    s_buf_puts(b, name);
    if (key) {
        s_buf_printf(b, "{%s=\"", key);
        s_prom_label(b, value);
        s_buf_puts(b, "\"}");
    }
    s_buf_printf(b, " %s\n", s_fmt_double(t, v));
}

// A family with one unlabelled sample, left out when v is unknown (NaN).
static void s_prom_gauge(s_buf *b, const char *name, const char *help, double v) {
    if (isnan(v)) return;
    s_prom_family(b, name, "gauge", help);
    s_prom_sample(b, name, NULL, NULL, v);
}

static char *s_render_metrics(const s_render_ctx *r, size_t *len) {
    const ser_status_snapshot *sn = r->snap;
    s_buf b = {0};
    char hash[17];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)sn->config_hash);

    s_prom_family(&b, "ser_info", "gauge", "Job identity in labels; always 1.");
    s_buf_puts(&b, "ser_info{job_id=\"");
    s_prom_label(&b, sn->job_id);
    s_buf_puts(&b, "\",job_name=\"");
    s_prom_label(&b, sn->job_name);
    s_buf_printf(&b, "\",config_hash=\"%s\"} 1\n", hash);

    s_prom_family(&b, "ser_state", "gauge", "1 for the coordinator's current state, else 0.");
    for (int i = 0; i < SER_STATUS_STATE_COUNT; i++)
        s_prom_sample(&b, "ser_state", "state", s_state_names[i], sn->state == i);
    s_prom_gauge(&b, "ser_start_time_seconds", "Unix time the job (re)started.",
                 sn->start_time_unix);
    int64_t upd = s_age_ms(r->s->view_last_update_ms, r->now_ms);
    if (upd >= 0)
        s_prom_gauge(&b, "ser_status_last_update_age_seconds",
                     "Seconds since the coordinator last updated its status.", 1e-3 * (double)upd);
    s_prom_gauge(
        &b, "ser_waiting_seconds", "Seconds the current step has waited (0 when not waiting).",
        sn->waiting_for[0] ? 1e-3 * (double)s_age_ms(sn->waiting_since_ms, r->now_ms) : 0.0);
    if (sn->ckpt_path[0]) {
        s_prom_gauge(&b, "ser_checkpoint_step", "Step of the last checkpoint written.",
                     (double)sn->ckpt_step);
        int64_t a = s_age_ms(sn->ckpt_time_ms, r->now_ms);
        if (a >= 0)
            s_prom_gauge(&b, "ser_checkpoint_age_seconds", "Seconds since the last checkpoint.",
                         1e-3 * (double)a);
    }

    s_prom_gauge(&b, "ser_step", "Step being computed.", (double)sn->step);
    s_prom_gauge(&b, "ser_epoch", "Fractional epoch (samples seen / dataset size).", sn->epoch);
    s_prom_family(&b, "ser_phase", "gauge", "1 for the current phase of the step, else 0.");
    for (int i = 0; i < SER_STATUS_PHASE_COUNT; i++)
        s_prom_sample(&b, "ser_phase", "phase", s_phase_names[i], sn->phase == i);
    if (sn->n_terms > 0) {
        s_prom_family(&b, "ser_loss", "gauge", "Loss terms of step ser_loss_step.");
        for (int i = 0; i < sn->n_terms; i++)
            s_prom_sample(&b, "ser_loss", "term", sn->terms[i].name, sn->terms[i].value);
    }
    if (sn->terms_step >= 0)
        s_prom_gauge(&b, "ser_loss_step", "Step the ser_loss values belong to.",
                     (double)sn->terms_step);
    s_prom_gauge(&b, "ser_learning_rate", "Learning rate at the current step.", sn->lr);
    s_prom_gauge(&b, "ser_momentum", "Teacher/momentum-encoder coefficient.", sn->momentum);
    s_prom_gauge(&b, "ser_weight_decay", "Weight decay at the current step.", sn->weight_decay);
    s_prom_gauge(&b, "ser_images_per_second", "Recent training throughput.", sn->images_per_second);
    s_prom_gauge(&b, "ser_eta_seconds", "Estimated seconds to the end of the job.", sn->eta_s);
    s_prom_gauge(&b, "ser_cls_std", "Collapse monitor: spread of the normalised final [CLS] "
                 "(1 healthy, 0 collapsed).", sn->cls_std);
    s_prom_gauge(&b, "ser_knn_top1", "Online kNN monitor: top-1 accuracy in percent.", sn->knn_top1);
    if (sn->knn_step >= 0)
        s_prom_gauge(&b, "ser_knn_step", "Step the ser_knn_top1 value belongs to.",
                     (double)sn->knn_step);

    s_prom_family(&b, "ser_workers", "gauge", "Workers by state.");
    for (int st = 0; st < SER_STATUS_WORKER_COUNT; st++) {
        int n = 0;
        for (int i = 0; i < sn->n_workers; i++) n += sn->workers[i].state == st;
        s_prom_sample(&b, "ser_workers", "state", s_worker_names[st], n);
    }
    if (sn->n_workers > 0) {
        s_prom_family(&b, "ser_worker_info", "gauge", "One series per worker; always 1.");
        for (int i = 0; i < sn->n_workers; i++) {
            const ser_status_worker *w = &sn->workers[i];
            s_buf_puts(&b, "ser_worker_info{worker=\"");
            s_prom_label(&b, w->id);
            s_buf_puts(&b, "\",address=\"");
            s_prom_label(&b, w->address);
            s_buf_printf(&b, "\",state=\"%s\"} 1\n", ser_status_worker_state_name(w->state));
        }
        s_prom_family(&b, "ser_worker_shards", "gauge", "Shards assigned to the worker.");
        for (int i = 0; i < sn->n_workers; i++)
            s_prom_sample(&b, "ser_worker_shards", "worker", sn->workers[i].id,
                          sn->workers[i].n_shards);
        s_prom_family(&b, "ser_worker_last_heartbeat_seconds", "gauge",
                      "Seconds since the worker was last heard from.");
        for (int i = 0; i < sn->n_workers; i++) {
            int64_t a = s_age_ms(sn->workers[i].last_heard_ms, r->now_ms);
            if (a >= 0)
                s_prom_sample(&b, "ser_worker_last_heartbeat_seconds", "worker", sn->workers[i].id,
                              1e-3 * (double)a);
        }
    }
    s_prom_gauge(&b, "ser_loaders", "Data loaders known to the coordinator.", sn->n_loaders);
    if (sn->n_loaders > 0) {
        s_prom_family(&b, "ser_loader_lag_steps", "gauge", "Steps the loader is behind.");
        for (int i = 0; i < sn->n_loaders; i++)
            s_prom_sample(&b, "ser_loader_lag_steps", "loader", sn->loaders[i].id,
                          (double)sn->loaders[i].lag_steps);
        // Counts that are not known (< 0) are left out, as gauges of unknown value are.
        static const struct {
            const char *name, *type, *help;
            size_t off;
        } counts[] = {
            {"ser_loader_lag_shards", "gauge", "Shards requested, not served yet.",
             offsetof(ser_status_loader, lag_shards)},
            {"ser_loader_shards_served_total", "counter", "Shards the loader process has served.",
             offsetof(ser_status_loader, served)},
            {"ser_loader_bad_files_total", "counter", "Distinct files the loader could not decode.",
             offsetof(ser_status_loader, bad_files)},
            {"ser_loader_replacements_total", "counter",
             "Loads the loader served from a replacement of a bad file.",
             offsetof(ser_status_loader, replacements)},
        };
        for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
            s_prom_family(&b, counts[k].name, counts[k].type, counts[k].help);
            for (int i = 0; i < sn->n_loaders; i++) {
                int64_t v;
                memcpy(&v, (const char *)&sn->loaders[i] + counts[k].off, sizeof v);
                if (v >= 0)
                    s_prom_sample(&b, counts[k].name, "loader", sn->loaders[i].id, (double)v);
            }
        }
        s_prom_family(&b, "ser_loader_last_heartbeat_seconds", "gauge",
                      "Seconds since the loader was last heard from.");
        for (int i = 0; i < sn->n_loaders; i++) {
            int64_t a = s_age_ms(sn->loaders[i].last_heard_ms, r->now_ms);
            if (a >= 0)
                s_prom_sample(&b, "ser_loader_last_heartbeat_seconds", "loader", sn->loaders[i].id,
                              1e-3 * (double)a);
        }
    }
    s_prom_family(&b, "ser_status_requests_total", "counter", "HTTP requests served.");
    s_prom_sample(&b, "ser_status_requests_total", NULL, NULL, (double)r->s->n_requests);
    s_prom_family(&b, "ser_status_connections", "gauge", "Open HTTP connections.");
    s_prom_sample(&b, "ser_status_connections", NULL, NULL, r->s->n_conns);
    *len = b.len;
    return b.p;
}

// --- /history ----------------------------------------------------------------------------------

// Copies the points with step > since out of the ring under the lock, then renders unlocked.
static char *s_render_history(ser_status *s, int64_t since) {
    pthread_mutex_lock(&s->mu);
    s_history *h = &s->hist;
    int first = 0;
    while (first < h->len && s_hist_at(h, first)->step <= since) first++;
    int n = h->len - first, n_names = h->n_names, cap = h->cap;
    char names[SER_STATUS_MAX_TERMS][SER_STATUS_NAME_LEN];
    memcpy(names, h->names, sizeof names);
    s_point *pts = ser_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *pts);
    for (int i = 0; i < n; i++) pts[i] = *s_hist_at(h, first + i);
    pthread_mutex_unlock(&s->mu);

    cJSON *root = cJSON_CreateObject();
    SER_ASSERT(root);
    cJSON_AddNumberToObject(root, "capacity", cap);
    cJSON_AddNumberToObject(root, "count", n);
    cJSON *t = cJSON_AddArrayToObject(root, "terms");
    for (int j = 0; j < n_names; j++) cJSON_AddItemToArray(t, cJSON_CreateString(names[j]));
    cJSON *steps = cJSON_AddArrayToObject(root, "steps");
    cJSON *lr = cJSON_AddArrayToObject(root, "lr");
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(steps, cJSON_CreateNumber((double)pts[i].step));
        cJSON_AddItemToArray(
            lr, isfinite(pts[i].lr) ? cJSON_CreateNumber(pts[i].lr) : cJSON_CreateNull());
    }
    cJSON *series = cJSON_AddObjectToObject(root, "series");
    for (int j = 0; j < n_names; j++) {
        cJSON *a = cJSON_AddArrayToObject(series, names[j]);
        for (int i = 0; i < n; i++)
            cJSON_AddItemToArray(
                a, isfinite(pts[i].v[j]) ? cJSON_CreateNumber(pts[i].v[j]) : cJSON_CreateNull());
    }
    free(pts);
    char *text = cJSON_PrintUnformatted(root);
    SER_ASSERT(text);
    cJSON_Delete(root);
    return text;
}

// --- public: update ----------------------------------------------------------------------------

void ser_status_update(ser_status *s, const ser_status_snapshot *snap) {
    if (!s) return;  // status port off
    int64_t now = ser_clock_now_ms();
    pthread_mutex_lock(&s->mu);
    s_data_copy(&s->shared, snap);
    s_hist_record(&s->hist, &s->shared.snap);
    s->n_updates++;
    s->last_update_ms = now;
    pthread_mutex_unlock(&s->mu);
}

// --- connections -------------------------------------------------------------------------------

static void s_on_close(uv_handle_t *h) {
    s_conn *c = h->data;
    ser_status *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_conns--;
    free(c);
}

static void s_close(s_conn *c) {
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, s_on_close);
}

static void s_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    s_conn *c = h->data;
    // One buffer for all connections: the loop is single-threaded and every read is consumed
    // inside its read callback.
    *buf = uv_buf_init(c->s->rbuf, sizeof c->s->rbuf);
}

static void s_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static int s_read_start(s_conn *c) {
    if (c->reading) return 0;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, s_on_alloc, s_on_read);
    if (rc == 0) c->reading = 1;
    return rc;
}

static void s_read_stop(s_conn *c) {
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

static void s_on_shutdown(uv_shutdown_t *req, int status) {
    s_conn *c = req->handle->data;
    if (status < 0) s_close(c);
}

// After the last response of a connection: half-close and read until EOF (or S_LINGER_MS), so
// that unread request bytes do not turn the close into a reset the client sees first.
static void s_linger(s_conn *c) {
    if (c->lingering) return;
    if (c->eof) {
        s_close(c);
        return;
    }
    c->lingering = 1;
    uint64_t lim =
        (uint64_t)(c->s->opts.timeout_ms < S_LINGER_MS ? c->s->opts.timeout_ms : S_LINGER_MS);
    c->deadline = uv_now(&c->s->loop) + lim;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, s_on_shutdown) != 0 || s_read_start(c) != 0)
        s_close(c);
}

typedef struct s_write {
    uv_write_t req;  // req.data == the connection
    char data[];
} s_write;

static void s_on_write(uv_write_t *req, int status) {
    s_conn *c = req->data;
    free((s_write *)req);  // req is its first member
    c->pending--;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    if (status < 0) {
        s_close(c);
        return;
    }
    if (c->pending > 0) return;
    c->deadline = uv_now(&c->s->loop) + (uint64_t)c->s->opts.timeout_ms;  // idle keep-alive
    if (c->close_after_write)
        s_linger(c);
    else if (s_read_start(c) != 0)
        s_close(c);
}

// Queues one response. The connection closes after it when the request did not ask for
// keep-alive, or when `close` is set (errors).
static void s_respond(s_conn *c, int code, const char *ctype, const char *body, size_t blen,
                      const char *extra_headers, int close) {
    if (close || !c->keep_alive) {
        c->close_after_write = 1;
        c->stop_parsing = 1;
    }
    char head[512];
    int hl =
        snprintf(head, sizeof head,
                 "HTTP/1.1 %d %s\r\n"
                 "Server: ser\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "Cache-Control: no-store\r\n"
                 "X-Content-Type-Options: nosniff\r\n"
                 "%s"
                 "Connection: %s\r\n\r\n",
                 code, http_status_str((enum http_status)code), ctype, blen,
                 extra_headers ? extra_headers : "", c->close_after_write ? "close" : "keep-alive");
    SER_ASSERT(hl > 0 && (size_t)hl < sizeof head);
    size_t send_body = c->is_head ? 0 : blen;
    if (c->sink) {
        s_buf_reserve(c->sink, (size_t)hl + send_body);
        memcpy(c->sink->p + c->sink->len, head, (size_t)hl);
        if (send_body) memcpy(c->sink->p + c->sink->len + hl, body, send_body);
        c->sink->len += (size_t)hl + send_body;
        c->sink->p[c->sink->len] = '\0';
        c->pending++;  // written when this read is done (ser_status_serve_bytes)
        return;
    }
    s_write *w = ser_xmalloc(sizeof *w + (size_t)hl + send_body);
    memcpy(w->data, head, (size_t)hl);
    if (send_body) memcpy(w->data + hl, body, send_body);
    w->req.data = c;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)((size_t)hl + send_body));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, s_on_write) != 0) {
        free(w);
        s_close(c);
        return;
    }
    c->pending++;
    c->deadline = uv_now(&c->s->loop) + (uint64_t)c->s->opts.timeout_ms;  // to drain
}

static void s_respond_text(s_conn *c, int code, const char *text, int close) {
    s_respond(c, code, "text/plain; charset=utf-8", text, strlen(text),
              code == 405 ? "Allow: GET, HEAD\r\n" : NULL, close);
}

// --- request routing ---------------------------------------------------------------------------

// Finds `key` in a query string "a=1&b=2". Returns 1 and the value (not NUL-terminated) or 0.
static int s_query_get(const char *q, size_t qlen, const char *key, const char **val,
                       size_t *vlen) {
    size_t klen = strlen(key), i = 0;
    while (i < qlen) {
        size_t j = i;
        while (j < qlen && q[j] != '&') j++;
        if (j - i > klen && memcmp(q + i, key, klen) == 0 && q[i + klen] == '=') {
            *val = q + i + klen + 1;
            *vlen = j - i - klen - 1;
            return 1;
        }
        if (j - i == klen && memcmp(q + i, key, klen) == 0) {  // "key" without a value
            *val = q + j;
            *vlen = 0;
            return 1;
        }
        i = j + 1;
    }
    return 0;
}

static int s_eq(const char *p, size_t n, const char *lit) {
    return strlen(lit) == n && memcmp(p, lit, n) == 0;
}

static void s_take_view(ser_status *s) {
    pthread_mutex_lock(&s->mu);
    s_data_copy(&s->view, &s->shared.snap);
    s->view_updates = s->n_updates;
    s->view_last_update_ms = s->n_updates ? s->last_update_ms : -1;
    pthread_mutex_unlock(&s->mu);
}

static void s_serve_status(s_conn *c, const char *q, size_t qlen) {
    ser_status *s = c->s;
    const char *v;
    size_t vl;
    int only = -1, info = 0;
    if (s_query_get(q, qlen, "section", &v, &vl)) {
        for (int i = 0; i < S_SEC_COUNT; i++)
            if (s_eq(v, vl, s_section_names[i])) only = i;
        if (only < 0) {
            s_respond_text(c, 400, "unknown section; use coordinator, training, workers or data\n",
                           0);
            return;
        }
    }
    if (s_query_get(q, qlen, "format", &v, &vl)) {
        if (s_eq(v, vl, "info"))
            info = 1;
        else if (!s_eq(v, vl, "json")) {
            s_respond_text(c, 400, "unknown format; use json or info\n", 0);
            return;
        }
    }
    s_take_view(s);
    s_render_ctx r = {s, &s->view.snap, ser_clock_now_ms(), ser_clock_unix()};
    if (info) {
        size_t len;
        char *text = s_render_status_info(&r, only, &len);
        s_respond(c, 200, "text/plain; charset=utf-8", text, len, NULL, 0);
        free(text);
    } else {
        char *text = s_render_status_json(&r, only);
        s_respond(c, 200, "application/json", text, strlen(text), NULL, 0);
        cJSON_free(text);
    }
}

static void s_serve_history(s_conn *c, const char *q, size_t qlen) {
    const char *v;
    size_t vl;
    int64_t since = INT64_MIN;
    if (s_query_get(q, qlen, "since", &v, &vl)) {
        char tmp[32], *end;
        if (vl == 0 || vl >= sizeof tmp) goto bad;
        memcpy(tmp, v, vl);
        tmp[vl] = '\0';
        since = strtoll(tmp, &end, 10);
        if (*end) goto bad;
    }
    char *text = s_render_history(c->s, since);
    s_respond(c, 200, "application/json", text, strlen(text), NULL, 0);
    cJSON_free(text);
    return;
bad:
    s_respond_text(c, 400, "since must be an integer step\n", 0);
}

static void s_handle_request(s_conn *c) {
    ser_status *s = c->s;
    s->n_requests++;
    int method = (int)c->parser.method;
    c->is_head = method == HTTP_HEAD;
    if (method != HTTP_GET && method != HTTP_HEAD) {
        s_respond_text(c, 405, "method not allowed; the status port only serves GET\n", 0);
        return;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (c->url_len == 0 || http_parser_parse_url(c->url, c->url_len, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH))) {
        s_respond_text(c, 400, "bad request target\n", 1);
        return;
    }
    const char *path = c->url + u.field_data[UF_PATH].off;
    size_t plen = u.field_data[UF_PATH].len;
    const char *q = "";
    size_t qlen = 0;
    if (u.field_set & (1 << UF_QUERY)) {
        q = c->url + u.field_data[UF_QUERY].off;
        qlen = u.field_data[UF_QUERY].len;
    }
    if (s_eq(path, plen, "/") || s_eq(path, plen, "/index.html")) {
        s_respond(c, 200, "text/html; charset=utf-8", ser_status_page_html,
                  sizeof ser_status_page_html - 1, NULL, 0);
    } else if (s_eq(path, plen, "/status")) {
        s_serve_status(c, q, qlen);
    } else if (s_eq(path, plen, "/metrics")) {
        s_take_view(s);
        s_render_ctx r = {s, &s->view.snap, ser_clock_now_ms(), ser_clock_unix()};
        size_t len;
        char *text = s_render_metrics(&r, &len);
        s_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, 0);
        free(text);
    } else if (s_eq(path, plen, "/history")) {
        s_serve_history(c, q, qlen);
    } else {
        s_respond_text(c, 404, "not found; try /, /status, /metrics or /history\n", 0);
    }
}

// --- http-parser callbacks ---------------------------------------------------------------------

static int s_on_message_begin(http_parser *p) {
    s_conn *c = p->data;
    c->url_len = 0;
    c->is_head = 0;
    return 0;
}

static int s_on_url(http_parser *p, const char *at, size_t len) {
    s_conn *c = p->data;
    if (c->url_len + len > SER_STATUS_MAX_REQUEST) return 1;  // cannot happen: req_bytes bound
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

// Pauses the parser after each request, so that the read loop handles one at a time.
static int s_on_message_complete(http_parser *p) {
    s_conn *c = p->data;
    c->keep_alive = http_should_keep_alive(p);
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings s_settings = {
    .on_message_begin = s_on_message_begin,
    .on_url = s_on_url,
    .on_message_complete = s_on_message_complete,
};

// Feeds received bytes to the parser and answers every complete request in them.
static void s_feed(s_conn *c, const char *data, size_t len) {
    size_t off = 0;
    while (off < len && !c->stop_parsing) {
        if (c->pending >= S_MAX_PIPELINE ||
            (c->pending > 0 && !c->sink &&
             uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > S_MAX_QUEUED)) {
            c->close_after_write = 1;  // too many pipelined requests: answer those, then close
            c->stop_parsing = 1;
            break;
        }
        size_t room = SER_STATUS_MAX_REQUEST - c->req_bytes;
        if (room == 0) {
            c->keep_alive = 0;
            s_respond_text(c, 431, "request larger than 8192 bytes\n", 1);
            break;
        }
        size_t feed = len - off < room ? len - off : room;
        size_t n = http_parser_execute(&c->parser, &s_settings, data + off, feed);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        off += n;
        c->req_bytes += n;
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            c->req_bytes = 0;
            if (c->parser.upgrade) c->keep_alive = 0;  // the rest is another protocol
            s_handle_request(c);
            continue;
        }
        if (e != HPE_OK || n != feed) {
            char msg[160];
            snprintf(msg, sizeof msg, "bad request: %s\n", http_errno_description(e));
            c->keep_alive = 0;
            s_respond_text(c, 400, msg, 1);
            break;
        }
    }
    // Back-pressure: read no more until the queued responses have drained.
    if (c->pending > 0) s_read_stop(c);
}

static void s_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    s_conn *c = st->data;
    if (nread == 0) return;  // EAGAIN
    if (nread < 0) {
        c->eof = 1;
        s_read_stop(c);
        // A client that half-closes after its request still gets the response.
        if (nread == UV_EOF && c->pending > 0 && !c->lingering) {
            c->close_after_write = 1;
            c->stop_parsing = 1;
        } else {
            s_close(c);
        }
        return;
    }
    if (c->lingering || c->stop_parsing) return;  // discarding until EOF
    s_feed(c, buf->base, (size_t)nread);
}

// The request path without a socket: one connection's bytes fed in reads of `chunk` bytes
// (0: all at once), as s_on_read would after an accept, with its EOF at the end.
char *ser_status_serve_bytes(ser_status *s, const char *data, size_t len, size_t chunk,
                             size_t *out_len, int *closed) {
    s_buf out = {0};
    s_conn *c = ser_xcalloc(1, sizeof *c);
    c->s = s, c->sink = &out;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->keep_alive = 1;
    for (size_t off = 0; off < len && !c->stop_parsing;) {
        size_t n = chunk && chunk < len - off ? chunk : len - off;
        if (n > sizeof s->rbuf) n = sizeof s->rbuf;  // one read is at most the read buffer
        s_feed(c, data + off, n);
        off += n;
        c->pending = 0;  // the responses of this read are written before the next read
    }
    *closed = c->stop_parsing || c->close_after_write;
    free(c);
    s_buf_reserve(&out, 0);
    *out_len = out.len;
    return out.p;
}

// --- the loop: accept, sweep, $TERM ------------------------------------------------------------

// Sent with uv_try_write to connections over the limit, which are then closed.
static char s_busy_reply[] =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 26\r\n"
    "Connection: close\r\n\r\n"
    "too many connections; bye\n";

static void s_on_connection(uv_stream_t *server, int status) {
    ser_status *s = server->data;
    if (status < 0) {
        ser_log(SER_LL_WARNING, "status port: accept failed: %s", uv_strerror(status));
        return;
    }
    s_conn *c = ser_xcalloc(1, sizeof *c);
    c->s = s;
    SER_ASSERT(uv_tcp_init(&s->loop, &c->tcp) == 0);
    c->tcp.data = c;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        s_close(c);
        return;
    }
    if (s->n_conns > s->opts.max_conns) {
        s->n_rejected++;
        uv_buf_t b = uv_buf_init(s_busy_reply, sizeof s_busy_reply - 1);
        (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        s_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->keep_alive = 1;
    c->deadline = uv_now(&s->loop) + (uint64_t)s->opts.timeout_ms;
    if (s_read_start(c) != 0) s_close(c);
}

static void s_on_sweep(uv_timer_t *t) {
    ser_status *s = t->data;
    uint64_t now = uv_now(&s->loop);
    for (s_conn *c = s->conns; c; c = c->next)
        if (now >= c->deadline) s_close(c);  // unlinked later, in its close callback
}

static void s_on_term(uv_async_t *a) {
    ser_status *s = a->data;
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_close((uv_handle_t *)&s->sweep, NULL);
    uv_close((uv_handle_t *)&s->term, NULL);
    for (s_conn *c = s->conns; c; c = c->next) s_close(c);
}

// Parses a numeric IPv4/IPv6 address ("[::1]" too) or "localhost".
static int s_parse_addr(const char *host, int port, struct sockaddr_storage *sa) {
    char h[64];
    snprintf(h, sizeof h, "%s", host);
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        memmove(h, h + 1, n - 2);
        h[n - 2] = '\0';
    }
    if (strcmp(h, "localhost") == 0) snprintf(h, sizeof h, "127.0.0.1");
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)sa) == 0) return 0;
    if (uv_ip6_addr(h, port, (struct sockaddr_in6 *)sa) == 0) return 0;
    return UV_EINVAL;
}

static void s_publish_start(ser_status *s, int rc, const char *err) {
    pthread_mutex_lock(&s->mu);
    s->start_rc = rc;
    if (err) snprintf(s->start_err, sizeof s->start_err, "%s", err);
    s->ready = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *s_main(void *arg) {
    ser_status *s = arg;
    char err[SER_ERR_LEN];
    int rc = uv_loop_init(&s->loop);
    if (rc != 0) {
        snprintf(err, sizeof err, "status port: uv_loop_init: %s", uv_strerror(rc));
        s_publish_start(s, SER_EIO, err);
        return NULL;
    }
    SER_ASSERT(uv_async_init(&s->loop, &s->term, s_on_term) == 0);
    SER_ASSERT(uv_timer_init(&s->loop, &s->sweep) == 0);
    SER_ASSERT(uv_tcp_init(&s->loop, &s->listener) == 0);
    s->term.data = s->sweep.data = s->listener.data = s;

    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    const char *what = "bad address";
    rc = s_parse_addr(s->bind_addr, s->req_port, &sa);
    if (rc == 0) {
        what = "bind";
        rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0);
    }
    if (rc == 0) {
        what = "listen";  // EADDRINUSE may be deferred to here
        rc = uv_listen((uv_stream_t *)&s->listener, 128, s_on_connection);
    }
    if (rc == 0) {
        struct sockaddr_storage got;
        int len = sizeof got;
        what = "getsockname";
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
        if (rc == 0)
            s->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                      : ((struct sockaddr_in *)&got)->sin_port);
    }
    if (rc != 0) {
        if (strcmp(what, "bad address") == 0)
            snprintf(err, sizeof err,
                     "status port: bad bind address '%s' (numeric IPv4/IPv6 or localhost)",
                     s->bind_addr);
        else
            snprintf(err, sizeof err, "status port %s:%d: %s: %s", s->bind_addr, s->req_port, what,
                     uv_strerror(rc));
        uv_close((uv_handle_t *)&s->listener, NULL);
        uv_close((uv_handle_t *)&s->sweep, NULL);
        uv_close((uv_handle_t *)&s->term, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        SER_ASSERT(uv_loop_close(&s->loop) == 0);
        s_publish_start(
            s, rc == UV_EINVAL && strcmp(what, "bad address") == 0 ? SER_EINVAL : SER_EIO, err);
        return NULL;
    }
    uint64_t period = (uint64_t)(s->opts.timeout_ms / 4);
    if (period < 20) period = 20;
    if (period > 1000) period = 1000;
    SER_ASSERT(uv_timer_start(&s->sweep, s_on_sweep, period, period) == 0);
    s_publish_start(s, SER_OK, NULL);

    uv_run(&s->loop, UV_RUN_DEFAULT);
    // Every handle was closed by $TERM and the run above returned only after their close
    // callbacks: the loop must close cleanly.
    SER_ASSERT(s->conns == NULL && s->n_conns == 0);
    SER_ASSERT(uv_loop_close(&s->loop) == 0);
    return NULL;
}

// --- public: lifecycle -------------------------------------------------------------------------

ser_status *ser_status_new(const char *bind_addr, int port, const ser_status_opts *opts,
                           char err[SER_ERR_LEN]) {
    if (port < 0 || port > 65535) {
        snprintf(err, SER_ERR_LEN, "status port %d out of range [0, 65535]", port);
        return NULL;
    }
    if (bind_addr && strlen(bind_addr) >= 64) {
        snprintf(err, SER_ERR_LEN, "status bind address too long: %.64s...", bind_addr);
        return NULL;
    }
    ser_status *s = ser_xcalloc(1, sizeof *s);
    ser_status_opts_defaults(&s->opts);
    if (opts) {
        if (opts->max_conns > 0) s->opts.max_conns = opts->max_conns;
        if (opts->timeout_ms > 0) s->opts.timeout_ms = opts->timeout_ms;
        if (opts->history_cap > 0) s->opts.history_cap = opts->history_cap;
    }
    snprintf(s->bind_addr, sizeof s->bind_addr, "%s",
             bind_addr && bind_addr[0] ? bind_addr : "127.0.0.1");
    s->req_port = port;
    s->last_update_ms = -1;
    ser_status_snapshot_init(&s->shared.snap);
    ser_status_snapshot_init(&s->view.snap);
    s->hist.cap = s->opts.history_cap;
    s->hist.pts = ser_xcalloc((size_t)s->hist.cap, sizeof *s->hist.pts);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, s_main, s) != 0) {
        snprintf(err, SER_ERR_LEN, "status port: cannot start its thread");
        goto fail;
    }
    pthread_mutex_lock(&s->mu);
    while (!s->ready) pthread_cond_wait(&s->cv, &s->mu);
    int rc = s->start_rc;
    pthread_mutex_unlock(&s->mu);
    if (rc != SER_OK) {
        pthread_join(s->thread, NULL);
        snprintf(err, SER_ERR_LEN, "%s", s->start_err);
        goto fail;
    }
    ser_log(SER_LL_INFO, "status port: http://%s%s%s:%d/ (/status, /metrics, /history)",
            strchr(s->bind_addr, ':') && s->bind_addr[0] != '[' ? "[" : "", s->bind_addr,
            strchr(s->bind_addr, ':') && s->bind_addr[0] != '[' ? "]" : "", s->port);
    return s;
fail:
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->hist.pts);
    free(s);
    return NULL;
}

int ser_status_port(const ser_status *s) {
    return s->port;
}

void ser_status_destroy(ser_status **sp) {
    if (!sp || !*sp) return;
    ser_status *s = *sp;
    *sp = NULL;
    uv_async_send(&s->term);  // $TERM
    pthread_join(s->thread, NULL);
    s_data_free(&s->shared);
    s_data_free(&s->view);
    free(s->hist.pts);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
