// ser_dl_service.c — see ser_dl_service.h.
#include "ser_dl_service.h"
#include "ser_wire.h"

#include "ser_curve.h"
#include "ser_netdiag.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "loader.pb-c.h"
#include "ser_base.h"

// protobuf-c's string fields are `char *` and its INIT macros cast away const; messages built
// here only ever point at data that outlives the pack call and is never written through.
#pragma GCC diagnostic ignored "-Wcast-qual"

#define S_MAX_FRAMES ((2 + SER_MAX_LOCAL + 2 * SER_MAX_LOCAL_PAIRS) * SER_DL_WIRE_MAX_SAMPLES + 3)
#define S_QUEUE_CAP 64

// --- multipart helpers -----------------------------------------------------------------------

typedef struct s_parts {
    zmq_msg_t *m;
    int n, cap;
    int truncated;  // more frames than cap arrived; they were drained and dropped
} s_parts;

static void s_parts_free(s_parts *p) {
    for (int i = 0; i < p->n; i++) zmq_msg_close(&p->m[i]);
    free(p->m);
    memset(p, 0, sizeof *p);
}

// Receives one whole multipart message (non-blocking when flags has ZMQ_DONTWAIT).
static int s_recv_parts(void *sock, s_parts *p, int flags) {
    memset(p, 0, sizeof *p);
    int more = 1;
    while (more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        int rc;
        do rc = zmq_msg_recv(&msg, sock, p->n == 0 ? flags : 0);
        while (rc < 0 && zmq_errno() == EINTR);
        if (rc < 0) {
            zmq_msg_close(&msg);
            s_parts_free(p);
            return zmq_errno() == EAGAIN ? SER_ETIMEDOUT : SER_EIO;
        }
        more = zmq_msg_more(&msg);
        if (p->n >= S_MAX_FRAMES) {
            p->truncated = 1;
            zmq_msg_close(&msg);
            continue;
        }
        if (p->n == p->cap) {
            p->cap = p->cap ? p->cap * 2 : 8;
            p->m = realloc(p->m, sizeof(zmq_msg_t) * (size_t)p->cap);
            SER_ASSERT(p->m);
        }
        memcpy(&p->m[p->n++], &msg, sizeof msg);  // zmq_msg_t may be moved while unused
    }
    return SER_OK;
}

static int s_send(void *sock, zmq_msg_t *m, int more) {
    int rc;
    do rc = zmq_msg_send(m, sock, more ? ZMQ_SNDMORE : 0);
    while (rc < 0 && zmq_errno() == EINTR);
    return rc < 0 ? SER_EIO : SER_OK;
}

static int s_send_buf(void *sock, const void *b, size_t n, int more) {
    zmq_msg_t m;
    zmq_msg_init_size(&m, n);
    if (n) memcpy(zmq_msg_data(&m), b, n);
    int rc = s_send(sock, &m, more);
    if (rc) zmq_msg_close(&m);
    return rc;
}

// --- service ---------------------------------------------------------------------------------

// A built shard shared by the cache and the frames in flight; freed on the last release.
typedef struct s_ref {
    ser_dl_shard sh;
    int refs;
} s_ref;

static void s_ref_release(s_ref *r) {
    if (__atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        ser_dl_shard_free(&r->sh);
        free(r);
    }
}

static void s_frame_free(void *data, void *hint) {
    (void)data;
    s_ref_release(hint);
}

typedef struct s_key {
    uint64_t step;
    uint32_t shard;
} s_key;

typedef struct s_slot {
    s_key key;
    s_ref *ref;  // NULL = empty
    uint64_t age;
} s_slot;

struct ser_dl_service {
    ser_dl *dl;
    void *ctx, *sock;
    char endpoint[256];
    uint64_t hash;
    int prefetch;
    s_slot *cache;
    int ncache;
    uint64_t clock;
    s_key queue[S_QUEUE_CAP];
    int qlen;
    int bad_logged;  // the bad-data refusal was logged (once)
    ser_dl_service_stats st;
    int64_t idle_exit_ms, last_request_ms;  // see ser_dl_service_set_idle_exit
    int idle_noted;                         // this silence was logged
};

ser_dl_service *ser_dl_service_new(ser_dl *dl, const char *endpoint, int prefetch,
                                   int cache_shards, char err[256]) {
    ser_dl_service *s = ser_xcalloc(1, sizeof *s);
    s->dl = dl;
    s->hash = ser_dl_config_hash(ser_dl_config_of(dl));
    s->prefetch = prefetch < 0 ? 0 : prefetch;
    s->ncache = cache_shards < 1 ? 1 : cache_shards;
    s->cache = ser_xcalloc((size_t)s->ncache, sizeof *s->cache);
    s->ctx = zmq_ctx_new();
    s->sock = s->ctx ? zmq_socket(s->ctx, ZMQ_ROUTER) : NULL;
    if (!s->sock) {
        snprintf(err, 256, "zmq: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    int linger = 0, hwm = 0;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);  // never drop a reply's frames
    int64_t maxmsg = 1 << 20;  // requests are tiny: refuse big inbound frames at the socket
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (ser_curve_server(s->ctx, s->sock, endpoint, err)) goto fail;
    if (zmq_bind(s->sock, endpoint) != 0) {
        snprintf(err, 256, "cannot bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t len = sizeof s->endpoint;
    zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &len);
    return s;
fail:
    ser_dl_service_destroy(&s);
    return NULL;
}

const char *ser_dl_service_endpoint(const ser_dl_service *s) { return s->endpoint; }

void ser_dl_service_set_idle_exit(ser_dl_service *s, int64_t ms) { s->idle_exit_ms = ms; }

void ser_dl_service_get_stats(const ser_dl_service *s, ser_dl_service_stats *out) {
    *out = s->st;
    out->bad_files = ser_dl_bad_files(s->dl);
    out->replacements = ser_dl_replacements(s->dl);
}

void ser_dl_service_destroy(ser_dl_service **sp) {
    if (!sp || !*sp) return;
    ser_dl_service *s = *sp;
    if (s->sock) zmq_close(s->sock);
    if (s->ctx) zmq_ctx_term(s->ctx);  // after this, no frame is in flight
    for (int i = 0; s->cache && i < s->ncache; i++)
        if (s->cache[i].ref) s_ref_release(s->cache[i].ref);
    free(s->cache);
    free(s);
    *sp = NULL;
}

static s_slot *s_cache_find(ser_dl_service *s, s_key k) {
    for (int i = 0; i < s->ncache; i++)
        if (s->cache[i].ref && s->cache[i].key.step == k.step && s->cache[i].key.shard == k.shard)
            return &s->cache[i];
    return NULL;
}

static void s_cache_put(ser_dl_service *s, s_key k, s_ref *r) {
    s_slot *victim = &s->cache[0];
    for (int i = 0; i < s->ncache; i++) {
        if (!s->cache[i].ref) {
            victim = &s->cache[i];
            break;
        }
        if (s->cache[i].age < victim->age) victim = &s->cache[i];
    }
    if (victim->ref) s_ref_release(victim->ref);
    victim->key = k;
    victim->ref = r;
    victim->age = ++s->clock;
}

static s_ref *s_build(ser_dl_service *s, s_key k, int *rc) {
    s_ref *r = ser_xcalloc(1, sizeof *r);
    *rc = ser_dl_make_shard(s->dl, k.step, k.shard, &r->sh);
    if (*rc) {
        free(r);
        return NULL;
    }
    r->refs = 1;
    return r;
}

static void s_fill_group(Ser__LoaderGroup *m, const ser_group_elem *g) {
    m->rot180 = g->rot180;
    m->hflip = g->hflip;
    m->gh = (uint32_t)g->gh;
    m->gw = (uint32_t)g->gw;
    m->rot90 = (uint32_t)g->rot90;
}

// Sends [identity, "", LoaderShard, frames...]; r may be NULL for an error reply.
static void s_reply(ser_dl_service *s, zmq_msg_t *identity, uint64_t step, uint32_t shard,
                    s_ref *r, int status, const char *error) {
    Ser__LoaderShard m = SER__LOADER_SHARD__INIT;
    m.protocol_version = SER_DL_PROTOCOL_VERSION;
    m.job_id = (char *)ser_dl_config_of(s->dl)->job_id;
    m.config_hash = s->hash;
    m.step = step;
    m.shard = shard;
    m.status = status;
    m.error = (char *)(error ? error : "");
    m.bad_files = ser_dl_bad_files(s->dl);
    m.replacements = ser_dl_replacements(s->dl);
    m.endpoint = s->endpoint;
    m.served = s->st.served + (r ? 1 : 0);
    int n = r ? r->sh.n : 0, L = r ? r->sh.n_local : 0, LS = r ? r->sh.local_size : 0;
    int P = r ? r->sh.local_pairs : 0;
    m.local_crops = (uint32_t)L, m.local_size = (uint32_t)LS, m.local_pairs = (uint32_t)P;
    Ser__LoaderSample *smp = ser_xcalloc((size_t)n + 1, sizeof *smp);
    Ser__LoaderSample **sp = ser_xcalloc((size_t)n + 1, sizeof *sp);
    Ser__LoaderGroup *gr = ser_xcalloc(2 * (size_t)n * (1 + (size_t)P) + 1, sizeof *gr);
    Ser__LoaderGroup **lgp = ser_xcalloc(2 * (size_t)n * (size_t)P + 1, sizeof *lgp);
    uint32_t *lhw = ser_xcalloc(4 * (size_t)n * (size_t)P + 1, sizeof *lhw);
    for (int i = 0; i < n; i++) {
        const ser_dl_sample *x = &r->sh.samples[i];
        Ser__LoaderSample init = SER__LOADER_SAMPLE__INIT;
        smp[i] = init;
        smp[i].position = x->position;
        smp[i].dataset_index = x->index;
        smp[i].source_index = x->source;
        smp[i].label = x->label;
        smp[i].equivariant = x->equivariant;
        smp[i].n_vparams = 2 * SER_VIEW_PARAMS;
        smp[i].vparams = (float *)x->vparams[0];  // [2][SER_VIEW_PARAMS]: contiguous
        smp[i].h0 = (uint32_t)x->h[0];
        smp[i].w0 = (uint32_t)x->w[0];
        smp[i].h1 = (uint32_t)x->h[1];
        smp[i].w1 = (uint32_t)x->w[1];
        if (x->equivariant) {
            Ser__LoaderGroup ginit = SER__LOADER_GROUP__INIT;
            gr[2 * i] = ginit;
            gr[2 * i + 1] = ginit;
            s_fill_group(&gr[2 * i], &x->g[0]);
            s_fill_group(&gr[2 * i + 1], &x->g[1]);
            smp[i].g0 = &gr[2 * i];
            smp[i].g1 = &gr[2 * i + 1];
            for (int k = 0; k < P; k++)
                for (int v = 0; v < 2; v++) {
                    size_t j = ((size_t)i * P + k) * 2 + v;  // pair k view v of sample i
                    Ser__LoaderGroup *q = &gr[2 * (size_t)n + j];
                    *q = ginit;
                    s_fill_group(q, &x->lg[k][v]);
                    lgp[j] = q;
                    lhw[2 * j] = (uint32_t)x->lh[k][v], lhw[2 * j + 1] = (uint32_t)x->lw[k][v];
                }
            if (P) {
                smp[i].n_lg = 2 * (size_t)P, smp[i].lg = &lgp[(size_t)i * P * 2];
                smp[i].n_lhw = 4 * (size_t)P, smp[i].lhw = &lhw[(size_t)i * P * 4];
            }
        }
        sp[i] = &smp[i];
    }
    for (int i = 0; i < n; i++)  // the fault plan's lying loader (proto/ser_wire.h)
        if (smp[i].g0 && ser_wire_fault_bad_loader_shard(step)) {
            smp[i].g0->gh *= 2, smp[i].g0->gw *= 2;
            break;
        }
    m.n_samples = (size_t)n;
    m.samples = sp;
    size_t len = ser__loader_shard__get_packed_size(&m);
    uint8_t *buf = ser_xmalloc(len ? len : 1);
    ser__loader_shard__pack(&m, buf);
    int rc = s_send(s->sock, identity, 1);
    if (rc == SER_OK) rc = s_send_buf(s->sock, "", 0, 1);
    if (rc == SER_OK) rc = s_send_buf(s->sock, buf, len, n > 0);
    for (int i = 0; rc == SER_OK && i < n; i++) {
        const ser_dl_sample *x = &r->sh.samples[i];
        int per = 2 + L + (x->equivariant ? 2 * P : 0);
        for (int v = 0; v < per && rc == SER_OK; v++) {
            zmq_msg_t f;
            __atomic_add_fetch(&r->refs, 1, __ATOMIC_ACQ_REL);
            if (v < 2) {
                zmq_msg_init_data(&f, x->view[v], (size_t)x->h[v] * x->w[v] * 3, s_frame_free, r);
            } else if (v < 2 + L) {
                zmq_msg_init_data(&f, x->local[v - 2], (size_t)LS * LS * 3, s_frame_free, r);
            } else {
                int k = (v - 2 - L) / 2, w = (v - 2 - L) % 2;
                zmq_msg_init_data(&f, x->lview[k][w], (size_t)x->lh[k][w] * x->lw[k][w] * 3,
                                  s_frame_free, r);
            }
            rc = s_send(s->sock, &f, !(i == n - 1 && v == per - 1));
            if (rc) zmq_msg_close(&f);  // releases the reference
        }
    }
    if (rc) ser_log(SER_LL_WARNING, "dataloader: reply for step %llu shard %u not sent",
                    (unsigned long long)step, shard);
    free(buf);
    free(smp);
    free(sp);
    free(gr);
    free(lgp);
    free(lhw);
}

static void s_enqueue(ser_dl_service *s, s_key k) {
    if (s_cache_find(s, k)) return;
    for (int i = 0; i < s->qlen; i++)
        if (s->queue[i].step == k.step && s->queue[i].shard == k.shard) return;
    if (s->qlen == S_QUEUE_CAP) return;
    s->queue[s->qlen++] = k;
}

static void s_handle(ser_dl_service *s, s_parts *p) {
    s->st.requests++;
    s->last_request_ms = ser_clock_now_ms();
    s->idle_noted = 0;
    // [identity, "", request]
    if (p->truncated || p->n != 3 || zmq_msg_size(&p->m[1]) != 0) {
        ser_log(SER_LL_WARNING, "dataloader: dropped a malformed request (%d frames)", p->n);
        s->st.dropped++;
        return;
    }
    static const uint32_t req_strs[1] = {2};  // job_id: a NUL would make "a\0b" pass for "a"
    Ser__LoaderShardRequest *req =
        ser_wire_pb_strings_ok(zmq_msg_data(&p->m[2]), zmq_msg_size(&p->m[2]), req_strs, 1, 0,
                               NULL, 0)
            ? ser__loader_shard_request__unpack(NULL, zmq_msg_size(&p->m[2]),
                                                zmq_msg_data(&p->m[2]))
            : NULL;
    if (!req) {
        ser_log(SER_LL_WARNING, "dataloader: dropped a request that does not parse (%zu bytes)",
                zmq_msg_size(&p->m[2]));
        s->st.dropped++;
        return;
    }
    const ser_dl_config *cfg = ser_dl_config_of(s->dl);
    char why[512] = "";
    int status = SER_OK;
    if (req->protocol_version != SER_DL_PROTOCOL_VERSION) {
        snprintf(why, sizeof why, "protocol version %u, this loader speaks %u",
                 req->protocol_version, SER_DL_PROTOCOL_VERSION);
        status = SER_EVERSION;
    } else if (!req->job_id || strcmp(req->job_id, cfg->job_id) != 0) {
        snprintf(why, sizeof why, "job '%s', this loader serves job '%s'",
                 req->job_id ? req->job_id : "", cfg->job_id);
        status = SER_ECONFIG;
    } else if (req->config_hash != s->hash) {
        snprintf(why, sizeof why, "data hash %016llx, this loader's is %016llx (another [data] or augmentation)",
                 (unsigned long long)req->config_hash, (unsigned long long)s->hash);
        status = SER_ECONFIG;
    } else if (req->shard >= (uint32_t)cfg->shards || req->step > UINT32_MAX) {
        snprintf(why, sizeof why, "shard %u / step %llu out of range (%d shards)", req->shard,
                 (unsigned long long)req->step, cfg->shards);
        status = SER_EINVAL;
    }
    s_key k = {req->step, req->shard};
    if (status) {
        ser_log(SER_LL_WARNING, "dataloader: refused a request: %s", why);
        s->st.refused++;
        s_reply(s, &p->m[0], k.step, k.shard, NULL, status, why);
    } else {
        s_ref *r;
        s_slot *slot = s_cache_find(s, k);
        if (slot) {
            r = slot->ref;
            slot->ref = NULL;  // served shards leave the cache
            s->st.cache_hits++;
        } else {
            int rc;
            r = s_build(s, k, &rc);
            if (!r) {
                // Bad data refuses every shard from now on: the worker passes the reason on
                // and the coordinator stops the job with it (the counts and files first, as
                // the way there cuts long texts).
                char bad[400];
                if (rc == SER_EFORMAT && ser_dl_bad_report(s->dl, bad, sizeof bad)) {
                    snprintf(why, sizeof why, "bad data: %s", bad);
                    if (!s->bad_logged++)
                        ser_log(SER_LL_ERROR, "dataloader: refusing every shard: %s (each bad "
                                "file is logged above)", bad);
                } else {
                    snprintf(why, sizeof why, "cannot build the shard: %s", ser_strerror(rc));
                }
                s_reply(s, &p->m[0], k.step, k.shard, NULL, rc, why);
            }
        }
        if (r) {
            s_reply(s, &p->m[0], k.step, k.shard, r, SER_OK, NULL);
            s_ref_release(r);
            s->st.served++;
        }
        for (int d = 1; d <= s->prefetch; d++) s_enqueue(s, (s_key){k.step + (uint64_t)d, k.shard});
    }
    ser__loader_shard_request__free_unpacked(req, NULL);
}

// After a job: 1 when the idle exit is due. A minute of silence is logged once, with what the
// service will do about it, so that a loader left running says why.
static int s_idle_over(ser_dl_service *s, int64_t now) {
    if (s->st.served == 0) return 0;  // not yet a job to wait out
    int64_t idle = now - s->last_request_ms;
    if (s->idle_exit_ms > 0 && idle >= s->idle_exit_ms) {
        ser_log(SER_LL_INFO, "dataloader: no request for %.0f s after serving shards: the job has "
                "ended; exiting (--idle-exit)", (double)idle / 1000.0);
        return 1;
    }
    if (!s->idle_noted && idle >= 60000) {
        s->idle_noted = 1;
        if (s->idle_exit_ms > 0)
            ser_log(SER_LL_INFO, "dataloader: no request for 60 s; exiting when none comes for "
                    "%.0f s (--idle-exit)", (double)s->idle_exit_ms / 1000.0);
        else
            ser_log(SER_LL_INFO, "dataloader: no request for 60 s; serving until stopped "
                    "(--idle-exit 0)");
    }
    return 0;
}

int ser_dl_service_run(ser_dl_service *s, volatile sig_atomic_t *stop) {
    int64_t last_stats = ser_clock_now_ms();
    while (!*stop) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, s->qlen ? 0 : 100);
        if (rc < 0 && zmq_errno() != EINTR) {
            ser_log(SER_LL_ERROR, "dataloader: poll: %s", zmq_strerror(zmq_errno()));
            return SER_EIO;
        }
        if (rc > 0 && (it.revents & ZMQ_POLLIN)) {
            s_parts p;
            if (s_recv_parts(s->sock, &p, ZMQ_DONTWAIT) == SER_OK) {
                s_handle(s, &p);
                s_parts_free(&p);
            }
            continue;
        }
        if (s->qlen) {  // idle: prefetch the oldest queued shard
            s_key k = s->queue[0];
            memmove(s->queue, s->queue + 1, sizeof(s_key) * (size_t)--s->qlen);
            int brc;
            s_ref *r = s_build(s, k, &brc);
            if (r) {
                s_cache_put(s, k, r);
                s->st.prefetched++;
            }
        }
        int64_t now = ser_clock_now_ms();
        if (now - last_stats >= 10000) {
            last_stats = now;
            ser_dl_service_stats st;
            ser_dl_service_get_stats(s, &st);
            ser_log(SER_LL_DEBUG,  // counters: /status and --log-level debug
                    "dataloader: requests:%llu served:%llu cache_hits:%llu prefetched:%llu "
                    "dropped:%llu refused:%llu bad_files:%llu replacements:%llu",
                    (unsigned long long)st.requests, (unsigned long long)st.served,
                    (unsigned long long)st.cache_hits, (unsigned long long)st.prefetched,
                    (unsigned long long)st.dropped, (unsigned long long)st.refused,
                    (unsigned long long)st.bad_files, (unsigned long long)st.replacements);
        }
        if (!s->qlen && s_idle_over(s, now)) break;
    }
    return SER_OK;
}

// --- client ----------------------------------------------------------------------------------

struct ser_dl_client {
    void *ctx, *sock;
    ser_netdiag *diag;  // why an endpoint does not connect (logged while fetching)
    char job_id[64];
    char endpoints[256];  // as given, for messages
    uint64_t hash;
    ser_loadstat loaders[SER_LOADSTAT_MAX];  // what the replies said (ser_dl_client_loaders)
    int nloaders;
    // Requests sent ahead (ser_dl_client_prefetch) and, once it came, each one's reply, kept
    // until its fetch: a worker with several shards asks for all of its next ones.
    struct {
        uint64_t step;
        uint32_t shard;
        int have;
        s_parts reply;
    } ahead[SER_DL_AHEAD_MAX];
    int nahead;
};

// The endpoint this client knows a loader by, from the one the loader says it is bound to:
// that one when the client connected to it, else the client's only endpoint, else the one of
// the client's endpoints with the same port (a loader bound to tcp://*:5600 or 0.0.0.0 and
// reached as tcp://host:5600), else the loader's own.
static void s_loader_name(const ser_dl_client *c, const char *bound, char *out, size_t n) {
    const char *bport = strrchr(bound, ':');
    int nep = 0, nport = 0;
    char only[SER_LOADSTAT_EP_LEN] = "", byport[SER_LOADSTAT_EP_LEN] = "";
    for (const char *p = c->endpoints; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char ep[SER_LOADSTAT_EP_LEN];
        snprintf(ep, sizeof ep, "%.*s", (int)(len < sizeof ep ? len : sizeof ep - 1), p);
        if (len && !strcmp(ep, bound)) {
            snprintf(out, n, "%s", ep);
            return;
        }
        const char *port = strrchr(ep, ':');
        if (len) nep++, snprintf(only, sizeof only, "%s", ep);
        if (len && port && bport && !strcmp(port, bport))
            nport++, snprintf(byport, sizeof byport, "%s", ep);
        if (!comma) break;
        p = comma + 1;
    }
    snprintf(out, n, "%s", nep == 1 ? only : nport == 1 ? byport : bound[0] ? bound : "?");
}

// Notes what a reply of a loader said about it.
static void s_note_loader(ser_dl_client *c, const Ser__LoaderShard *m) {
    ser_loadstat r;
    memset(&r, 0, sizeof r);
    s_loader_name(c, m->endpoint ? m->endpoint : "", r.endpoint, sizeof r.endpoint);
    r.served = m->served, r.bad_files = m->bad_files, r.replacements = m->replacements;
    r.step = (int64_t)m->step;
    r.heard_ms = ser_clock_now_ms();
    ser_loadstat_merge(c->loaders, &c->nloaders, SER_LOADSTAT_MAX, &r);
}

int ser_dl_client_loaders(const ser_dl_client *c, ser_loadstat *out, int max) {
    int n = c->nloaders < max ? c->nloaders : max;
    if (n > 0) memcpy(out, c->loaders, (size_t)n * sizeof *out);
    return n;
}

int64_t ser_dl_reply_max_bytes(int per_shard, int img, int patch, double scale_max) {
    int64_t side = (int64_t)ceil(img * (scale_max > 1 ? scale_max : 1.0)) + 2 * (int64_t)patch;
    return (int64_t)per_shard * 2 * 3 * side * side + ((int64_t)1 << 20);
}

ser_dl_client *ser_dl_client_new(const char *endpoints, const char *job_id, uint64_t config_hash,
                                 int64_t max_msg, char err[256]) {
    ser_dl_client *c = ser_xcalloc(1, sizeof *c);
    snprintf(c->job_id, sizeof c->job_id, "%s", job_id);
    snprintf(c->endpoints, sizeof c->endpoints, "%s", endpoints);
    c->hash = config_hash;
    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_DEALER) : NULL;
    if (!c->sock) {
        snprintf(err, 256, "zmq: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    int linger = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg);
    if (ser_curve_client(c->sock, err)) goto fail;
    c->diag = ser_netdiag_new(c->ctx, "data-loader client");
    char derr[SER_ERR_LEN];
    if (ser_netdiag_watch(c->diag, c->sock, derr)) ser_log(SER_LL_WARNING, "%s", derr);
    char *list = ser_xstrdup(endpoints), *save = NULL;
    int nconn = 0;
    for (char *e = strtok_r(list, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        if (ser_netdiag_connect(c->sock, e, derr)) {
            snprintf(err, 256, "%s", derr);
            free(list);
            goto fail;
        }
        nconn++;
    }
    free(list);
    if (!nconn) {
        snprintf(err, 256, "no loader endpoint given: expected tcp://HOST:PORT[,...]");
        goto fail;
    }
    return c;
fail:
    ser_dl_client_destroy(&c);
    return NULL;
}

void ser_dl_client_destroy(ser_dl_client **cp) {
    if (!cp || !*cp) return;
    ser_dl_client *c = *cp;
    for (int i = 0; i < c->nahead; i++) s_parts_free(&c->ahead[i].reply);
    ser_netdiag_destroy(&c->diag);  // its PAIR socket first: zmq_ctx_term waits for every socket
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    free(c);
    *cp = NULL;
}

// A wire g as a ser_group_elem: SER_OK when every field is in range (ser_group_elem_check)
// and the view's frame size (h, w) is P*(rows, cols) of its grid for some patch size P.
static int s_group_from_wire(ser_group_elem *out, const Ser__LoaderGroup *g, uint32_t h,
                             uint32_t w) {
    if (!g || g->gh > SER_GROUP_MAX_GRID || g->gw > SER_GROUP_MAX_GRID || g->rot90 > 3)
        return SER_EFORMAT;
    ser_group_elem e = {(uint8_t)(g->rot180 != 0), (uint8_t)(g->hflip != 0), (uint8_t)g->rot90,
                        (int16_t)g->gh, (int16_t)g->gw};
    if (ser_group_elem_check(&e)) return SER_EFORMAT;
    int rows, cols;
    ser_group_view_grid(&e, &rows, &cols);
    if (h % (uint32_t)rows || w % (uint32_t)cols || h / (uint32_t)rows != w / (uint32_t)cols)
        return SER_EFORMAT;
    *out = e;
    return SER_OK;
}

// s_parse_reply's verdicts besides SER_OK and the negative codes it returns.
#define S_STALE 1      // a reply to another request (late after a timeout): dropped quietly
#define S_MALFORMED 2  // dropped with a warning (not SER_EFORMAT: a loader that cannot decode
                       // its files refuses with that status, and that must reach the caller)

// Validates a reply [ "", LoaderShard, frames ] for (step, shard) and fills out.
// Returns SER_OK, S_MALFORMED, S_STALE (the reply is for (*rstep, *rshard)), or the loader's
// negative status (SER_EVERSION, SER_ECONFIG for a reply of another job).
static int s_parse_reply(ser_dl_client *c, s_parts *p, uint64_t step, uint32_t shard,
                         ser_dl_shard *out, uint64_t *rstep, uint32_t *rshard, char *err) {
    if (p->truncated || p->n < 2 || zmq_msg_size(&p->m[0]) != 0) {
        snprintf(err, 256, "malformed reply (%d frames)", p->n);
        return S_MALFORMED;
    }
    static const uint32_t reply_strs[3] = {2, 7, 11};  // job_id, error, endpoint
    Ser__LoaderShard *m =
        ser_wire_pb_strings_ok(zmq_msg_data(&p->m[1]), zmq_msg_size(&p->m[1]), reply_strs, 3, 0,
                               NULL, 0)
            ? ser__loader_shard__unpack(NULL, zmq_msg_size(&p->m[1]), zmq_msg_data(&p->m[1]))
            : NULL;
    if (!m) {
        snprintf(err, 256, "reply does not parse");
        return S_MALFORMED;
    }
    int rc = S_MALFORMED;
    if (m->protocol_version != SER_DL_PROTOCOL_VERSION) {
        snprintf(err, 256, "reply has protocol version %u, want %u", m->protocol_version,
                 SER_DL_PROTOCOL_VERSION);
        rc = SER_EVERSION;
        goto done;
    }
    if (m->step != step || m->shard != shard) {
        *rstep = m->step, *rshard = m->shard;
        rc = S_STALE;
        goto done;
    }
    s_note_loader(c, m);  // a refusal too: its counters say why
    if (m->status != 0) {
        snprintf(err, 256, "loader refused: %s (%s)", m->error ? m->error : "",
                 ser_strerror(m->status));
        rc = m->status < 0 ? m->status : SER_EPEER;
        goto done;
    }
    if (!m->job_id || strcmp(m->job_id, c->job_id) != 0 || m->config_hash != c->hash) {
        snprintf(err, 256, "reply for another job or config");
        rc = SER_ECONFIG;
        goto done;
    }
    size_t n = m->n_samples, L = m->local_crops, LS = m->local_size, P = m->local_pairs;
    if (L > SER_MAX_LOCAL || (L && (LS < 1 || LS > SER_DL_WIRE_MAX_SIDE))) {
        snprintf(err, 256, "reply has %zu local views of %zu px", L, LS);
        goto done;
    }
    if (P > SER_MAX_LOCAL_PAIRS) {
        snprintf(err, 256, "reply has %zu local SER pairs per sample (at most %d)", P,
                 SER_MAX_LOCAL_PAIRS);
        goto done;
    }
    size_t frames = 0;
    for (size_t i = 0; i < n && i <= SER_DL_WIRE_MAX_SAMPLES; i++)
        frames += 2 + L + (m->samples[i]->equivariant ? 2 * P : 0);
    if (n > SER_DL_WIRE_MAX_SAMPLES || (size_t)p->n != 2 + frames) {
        snprintf(err, 256, "reply has %zu samples but %d frames", n, p->n);
        goto done;
    }
    size_t total = 0, at = 2;
    for (size_t i = 0; i < n; i++) {
        const Ser__LoaderSample *x = m->samples[i];
        size_t pairs = x->equivariant ? P : 0, per = 2 + L + 2 * pairs;
        if (pairs && (x->n_lg != 2 * pairs || x->n_lhw != 4 * pairs)) {
            snprintf(err, 256, "sample %zu: %zu pair group elements and %zu sizes, want %zu and "
                     "%zu", i, x->n_lg, x->n_lhw, 2 * pairs, 4 * pairs);
            goto done;
        }
        for (size_t v = 0; v < per; v++) {
            size_t j = v - 2 - L;  // pair view index when v >= 2 + L
            uint32_t h = v == 0 ? x->h0 : v == 1 ? x->h1 : v < 2 + L ? (uint32_t)LS : x->lhw[2 * j];
            uint32_t w = v == 0 ? x->w0 : v == 1 ? x->w1 : v < 2 + L ? (uint32_t)LS
                                                                     : x->lhw[2 * j + 1];
            if (h < 1 || w < 1 || h > SER_DL_WIRE_MAX_SIDE || w > SER_DL_WIRE_MAX_SIDE ||
                zmq_msg_size(&p->m[at + v]) != (size_t)h * w * 3) {
                snprintf(err, 256, "sample %zu view %zu: frame size does not match %ux%u", i, v,
                         h, w);
                goto done;
            }
            total += (size_t)h * w * 3;
        }
        at += per;
        if (x->n_vparams != 2 * SER_VIEW_PARAMS) {
            snprintf(err, 256, "sample %zu: %zu view parameters, want %d", i, x->n_vparams,
                     2 * SER_VIEW_PARAMS);
            goto done;
        }
        ser_group_elem g[2];
        if (x->equivariant && (s_group_from_wire(&g[0], x->g0, x->h0, x->w0) ||
                               s_group_from_wire(&g[1], x->g1, x->h1, x->w1))) {
            snprintf(err, 256, "sample %zu: equivariant without a valid g", i);
            goto done;
        }
        for (size_t j = 0; j < 2 * pairs; j++)
            if (s_group_from_wire(&g[0], x->lg[j], x->lhw[2 * j], x->lhw[2 * j + 1])) {
                snprintf(err, 256, "sample %zu: local SER pair %zu view %zu without a valid g", i,
                         j / 2, j % 2);
                goto done;
            }
    }
    memset(out, 0, sizeof *out);
    out->step = step;
    out->shard = shard;
    out->n = (int)n;
    out->n_local = (int)L, out->local_size = L ? (int)LS : 0;
    out->local_pairs = (int)P;
    out->samples = ser_xcalloc(n ? n : 1, sizeof *out->samples);
    out->data = ser_xmalloc(total ? total : 1);
    out->nbytes = total;
    size_t off = 0;
    at = 2;
    for (size_t i = 0; i < n; i++) {
        const Ser__LoaderSample *x = m->samples[i];
        ser_dl_sample *s = &out->samples[i];
        s->position = x->position;
        s->index = x->dataset_index;
        s->source = x->source_index;
        s->label = x->label;
        s->equivariant = x->equivariant;
        s->h[0] = (int)x->h0, s->w[0] = (int)x->w0, s->h[1] = (int)x->h1, s->w[1] = (int)x->w1;
        memcpy(s->vparams, x->vparams, sizeof s->vparams);
        size_t pairs = x->equivariant ? P : 0, per = 2 + L + 2 * pairs;
        if (x->equivariant) {  // validated above, so this cannot fail
            int ok = s_group_from_wire(&s->g[0], x->g0, x->h0, x->w0) == SER_OK &&
                     s_group_from_wire(&s->g[1], x->g1, x->h1, x->w1) == SER_OK;
            for (size_t j = 0; j < 2 * pairs; j++) {
                ok &= s_group_from_wire(&s->lg[j / 2][j % 2], x->lg[j], x->lhw[2 * j],
                                        x->lhw[2 * j + 1]) == SER_OK;
                s->lh[j / 2][j % 2] = (int)x->lhw[2 * j], s->lw[j / 2][j % 2] = (int)x->lhw[2 * j + 1];
            }
            SER_ASSERT(ok);
        }
        for (size_t v = 0; v < per; v++) {
            const zmq_msg_t *f = &p->m[at + v];
            uint8_t **dst = v < 2       ? &s->view[v]
                            : v < 2 + L ? &s->local[v - 2]
                                        : &s->lview[(v - 2 - L) / 2][(v - 2 - L) % 2];
            *dst = out->data + off;
            memcpy(*dst, zmq_msg_data((zmq_msg_t *)f), zmq_msg_size((zmq_msg_t *)f));
            off += zmq_msg_size((zmq_msg_t *)f);
        }
        at += per;
    }
    rc = SER_OK;
done:
    ser__loader_shard__free_unpacked(m, NULL);
    return rc;
}

static int s_request(ser_dl_client *c, uint64_t step, uint32_t shard) {
    Ser__LoaderShardRequest req = SER__LOADER_SHARD_REQUEST__INIT;
    req.protocol_version = SER_DL_PROTOCOL_VERSION;
    req.job_id = c->job_id;
    req.config_hash = c->hash;
    req.step = step;
    req.shard = shard;
    uint8_t buf[256];
    size_t len = ser__loader_shard_request__get_packed_size(&req);
    SER_ASSERT(len <= sizeof buf);
    ser__loader_shard_request__pack(&req, buf);
    return s_send_buf(c->sock, "", 0, 1) || s_send_buf(c->sock, buf, len, 0) ? SER_EIO : SER_OK;
}

static void s_ahead_drop(ser_dl_client *c, int i) {
    s_parts_free(&c->ahead[i].reply);
    c->ahead[i] = c->ahead[--c->nahead];
}

static int s_ahead_find(const ser_dl_client *c, uint64_t step, uint32_t shard) {
    for (int i = 0; i < c->nahead; i++)
        if (c->ahead[i].step == step && c->ahead[i].shard == shard) return i;
    return -1;
}

void ser_dl_client_prefetch(ser_dl_client *c, uint64_t step, uint32_t shard) {
    if (s_ahead_find(c, step, shard) >= 0) return;
    if (c->nahead == SER_DL_AHEAD_MAX) {  // the oldest goes
        int old = 0;
        for (int i = 1; i < c->nahead; i++)
            if (c->ahead[i].step < c->ahead[old].step) old = i;
        s_ahead_drop(c, old);
    }
    if (s_request(c, step, shard)) return;
    int i = c->nahead++;
    memset(&c->ahead[i], 0, sizeof c->ahead[i]);
    c->ahead[i].step = step, c->ahead[i].shard = shard;
}

int ser_dl_client_fetch(ser_dl_client *c, uint64_t step, uint32_t shard, int timeout_ms,
                        ser_dl_shard *out, char err[256]) {
    memset(out, 0, sizeof *out);
    err[0] = 0;
    // What was asked ahead for earlier steps will not be fetched.
    for (int i = c->nahead - 1; i >= 0; i--)
        if (c->ahead[i].step < step) s_ahead_drop(c, i);
    // Asked for ahead: its reply may be here already. If it is not by half the time, the
    // request goes again (a loader restarted since has lost it; a second reply to the same
    // request is the same bytes, and a late one is dropped as stale by the next fetch).
    int ai = s_ahead_find(c, step, shard), ahead = ai >= 0;
    s_parts kept = {0};
    if (ahead) {
        kept = c->ahead[ai].reply;
        memset(&c->ahead[ai].reply, 0, sizeof kept);
        s_ahead_drop(c, ai);
    }
    if (!ahead && s_request(c, step, shard)) {
        snprintf(err, 256, "send failed: %s", zmq_strerror(zmq_errno()));
        return SER_EIO;
    }
    int64_t start = ser_clock_now_ms(), deadline = start + timeout_ms;
    char dropped[200] = "";  // the last malformed reply's fault, told with a timeout
    int ndropped = 0;
    for (;;) {
        int64_t left = deadline - ser_clock_now_ms();
        if (left < 0) left = 0;
        // The connection's monitor too: why a loader does not answer is logged while waiting.
        zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0},
                                {ser_netdiag_socket(c->diag), 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, it[1].socket ? 2 : 1, kept.n ? 0 : (long)left);
        if (rc < 0 && zmq_errno() != EINTR) {
            snprintf(err, 256, "poll: %s", zmq_strerror(zmq_errno()));
            s_parts_free(&kept);
            return SER_EIO;
        }
        if (rc > 0 && (it[1].revents & ZMQ_POLLIN)) ser_netdiag_drain(c->diag);
        if (!kept.n && (rc <= 0 || !(it[0].revents & ZMQ_POLLIN))) {
            if (ahead && ser_clock_now_ms() - start >= timeout_ms / 2) {
                ahead = 0;
                if (s_request(c, step, shard)) {
                    snprintf(err, 256, "send failed: %s", zmq_strerror(zmq_errno()));
                    return SER_EIO;
                }
            }
            if (ser_clock_now_ms() >= deadline) {
                char why[200];
                ser_netdiag_describe(c->diag, why, sizeof why);
                if (ndropped)
                    snprintf(err, 256, "no valid reply for step %llu shard %u in %d ms from "
                             "%.60s: dropped %d malformed (%.120s)", (unsigned long long)step,
                             shard, timeout_ms, c->endpoints, ndropped, dropped);
                else
                    snprintf(err, 256, "no reply for step %llu shard %u in %d ms from %.80s%s%s%s",
                             (unsigned long long)step, shard, timeout_ms, c->endpoints,
                             why[0] ? " (" : "", why, why[0] ? ")" : "");
                return SER_ETIMEDOUT;
            }
            continue;
        }
        s_parts p;
        if (kept.n) {  // the reply to the request sent ahead, first
            p = kept;
            memset(&kept, 0, sizeof kept);
        } else if (s_recv_parts(c->sock, &p, ZMQ_DONTWAIT) != SER_OK) {
            continue;
        }
        uint64_t rs;
        uint32_t rsh;
        rc = s_parse_reply(c, &p, step, shard, out, &rs, &rsh, err);
        if (rc == S_STALE) {
            int j = s_ahead_find(c, rs, rsh);
            if (j >= 0 && !c->ahead[j].have)  // asked ahead: kept for its fetch
                c->ahead[j].reply = p, c->ahead[j].have = 1;
            else
                s_parts_free(&p);
            continue;
        }
        s_parts_free(&p);
        if (rc == S_MALFORMED) {
            ser_log(SER_LL_WARNING, "dataloader client: dropped a reply: %s", err);
            snprintf(dropped, sizeof dropped, "%s", err);
            ndropped++;
            continue;
        }
        return rc;
    }
}
