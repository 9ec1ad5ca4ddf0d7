// ser_worker.c — `ser worker`: connects to the coordinator, computes the shards it is given.
//
// Protocol (proto/ser.proto, coordinator/ser_coord.h): HELLO -> WELCOME (the job's config) ->
// PARAMS (student backbone and momentum; the teacher, for the methods with one, when it holds none) -> FORWARD (step,
// shard, attempt) -> FORWARD_DONE with the shard's rows -> BACKWARD with their gradients ->
// BACKWARD_DONE with the shard's ViT gradient. The worker applies the teacher EMA itself on
// each step's PARAMS (the same float operations as the coordinator's, so the same bits). Heartbeats go
// out every cluster.heartbeat_ms, from a thread of their own while a message is being handled
// (a shard, a model build, a loader fetch: s_heart), so that no block size, model size or CPU
// contention makes a computing worker look dead; a coordinator silent for cluster.timeout_ms
// is reconnected to (a restarted coordinator), and every invalid message is logged and dropped.
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "ser_batchfile.h"
#include "ser_ckpt.h"
#include "ser_cmd.h"
#include "ser_config.h"
#include "ser_curve.h"
#include "ser_dl.h"
#include "ser_dl_ops.h"
#include "ser_dl_service.h"
#include "ser_kernels.h"
#include "ser_backbones.h"
#include "ser_engine.h"
#include "ser_netdiag.h"
#include "ser_objective.h"
#include "ser_shard.h"
#include "ser_wire.h"

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

typedef struct s_wshard {
    int have;          // activations of (step, attempt) are held
    int64_t step;
    uint32_t attempt;
    ser_engine eng;
    ser_gathered g;
    ser_batch b;
    uint32_t *ids;
    // Loader-fed data of this shard's current step (normalised float CHW).
    float *inv[2], **eq[2];
    float *local[SER_MAX_LOCAL];  // (rows, 3, local_size, local_size) per local view
    float *vparams;               // (rows, 2, SER_VIEW_PARAMS) the global views' parameters
    ser_group_elem *gel[2];
    int neq_cap;
    float **lpair[2];             // the local SER pairs' views (n_eq * P), e-major
    ser_group_elem *lgel[2];
    int nlp_cap;
    // cluster.reduce = chain: the shard's gradient of (kstep, katt), kept until the chain has
    // passed it on (or the coordinator asks for it directly); kbad = 1 + its first non-finite
    // element, 0 none.
    float *kept;
    int64_t kstep;
    uint32_t katt;
    uint64_t kbad;
} s_wshard;

// A REDUCE task of the chain (cluster.reduce = chain), or the running sum's chunks that came
// ahead of it from the previous holder: shards [a, b) of (step, round).
typedef struct s_reduce {
    int used, have_task;
    int64_t step;
    uint32_t round, a, b;
    char next[160], key[41];  // the next holder's peer socket and CURVE key; "" = coordinator
    float *in;                // the running sum over shards [0, a) as received (a > 0)
    uint8_t *got, *sent;      // per chunk
    int nchunks, nsent;
} s_reduce;

#define S_MAX_REDUCE 8
#define S_MAX_LINKS 4

typedef struct s_worker {
    const char *endpoint, *name, *batch_file, *loader;
    ser_dl_client *dl;
    void *ctx, *sock;
    ser_netdiag *diag;  // why sock does not connect; read by the main thread only (s_run)
    char job_id[SER_CONFIG_STR_LEN];
    ser_config cfg;
    int have_model;
    int capped;       // the socket's ZMQ_MAXMSGSIZE is the job's (0: the pre-WELCOME one)
    ser_backbones v;  // the student (and teacher) backbones: the heads live at the coordinator
    ser_batchfile bf;
    s_wshard *sh;
    int S;
    size_t off, span;
    int64_t params_version, teacher_version;
    int64_t last_heard, last_sent;
    // The socket is shared with the heartbeat thread under mu: that thread sends only while
    // busy (the main thread is handling a message and sends only through s_send); the main
    // thread receives, polls and reconnects only while not busy.
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t heart;
    int busy, quit;
    // cluster.reduce = chain: the peer socket (ROUTER) that takes running sums, what HELLO
    // announces of it, links to the next holders (DEALERs, by endpoint), the tasks.
    const char *peer_bind;  // --peer-bind (NULL: the loopback, or every interface)
    void *peer;
    char peer_ep[160];
    struct {
        char ep[160];
        void *sock;
    } link[S_MAX_LINKS];
    int nlink;
    s_reduce red[S_MAX_REDUCE];
    float *chunk;  // one chunk of the sum being passed on
    // cluster.broadcast = tree: the student of step bc_step arriving in chunks (written into
    // the parameters as they come: params_version says none is whole meanwhile), where to pass
    // them on, and the FORWARD tasks of that step that came before the last chunk.
    int64_t bc_step;
    int bc_nchunks, bc_ngot, bc_route;
    uint8_t *bc_got, *bc_fwd[2];  // per chunk: in; passed on to child 0 / 1
    uint64_t bc_hash;
    double bc_mom;
    char bc_next[2][160], bc_key[2][41];  // its children in the tree ("" none)
    Ser__Envelope *bc_tasks;
    int bc_ntasks;
} s_worker;

static void s_env(s_worker *w, Ser__Envelope *e, Ser__MsgType type);

// Sends one message on the coordinator socket (any thread).
static int s_send(s_worker *w, Ser__Envelope *e, const ser_wire_tensor *t, int nt) {
    pthread_mutex_lock(&w->mu);
    int rc = ser_wire_send(w->sock, NULL, e, t, nt);
    w->last_sent = ser_clock_now_ms();
    pthread_mutex_unlock(&w->mu);
    return rc;
}

// Marks the main thread as handling a message (1) or back at the socket (0).
static void s_set_busy(s_worker *w, int busy) {
    pthread_mutex_lock(&w->mu);
    w->busy = busy;
    pthread_mutex_unlock(&w->mu);
}

// The heartbeat thread: while the main thread is busy, a "busy" heartbeat every
// cluster.heartbeat_ms (the coordinator must not mistake a long shard for a dead worker).
static void *s_heart(void *arg) {
    s_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->quit) {
        int64_t hb = w->have_model ? w->cfg.cluster.heartbeat_ms : 1000;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (hb / 4 + 1) * 1000000;
        ts.tv_sec += ns / 1000000000, ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        int64_t now = ser_clock_now_ms();
        if (w->quit || !w->busy || !w->have_model || now - w->last_sent < hb) continue;
        Ser__Envelope e;
        s_env(w, &e, SER__MSG_TYPE__MSG_HEARTBEAT);
        e.text = (char *)"busy";
        ser_wire_send(w->sock, NULL, &e, NULL, 0);
        w->last_sent = now;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void s_env(s_worker *w, Ser__Envelope *e, Ser__MsgType type) {
    ser__envelope__init(e);
    e->job_id = w->job_id;
    e->type = type;
}

// The largest frame a coordinator sends before its WELCOME is known: the WELCOME itself (the
// job's config text, a few KiB).
#define S_HELLO_MAXMSG ((int64_t)16 << 20)

// The job's largest legitimate frame from the coordinator: a PARAMS tensor (span floats) or a
// BACKWARD map gradient (a shard's samples x the largest token grid of a scaled view x dim), with
// 1 MiB for the envelope. A larger frame disconnects the coordinator before it is buffered.
static int64_t s_max_frame(const s_worker *w) {
    const ser_config *c = &w->cfg;
    int64_t side = (int64_t)(c->model.img_size * (c->ser.scale_max > 1 ? c->ser.scale_max : 1)) /
                   c->model.patch + 2;
    int64_t map = (int64_t)(c->data.global_batch / c->data.shards) * (side * side + 1) * c->model.dim;
    int64_t floats = (int64_t)w->span > map ? (int64_t)w->span : map;
    return floats * (int64_t)sizeof(float) + ((int64_t)1 << 20);
}

// cluster.reduce = chain: the peer socket that takes the running sums, bound once the job is
// known (before the HELLO that follows the WELCOME, which announces it): at --peer-bind, else
// on the loopback when the coordinator is there, else on every interface, announced as
// tcp://*:PORT (the coordinator fills in the address it sees this worker at). With CURVE it is
// a server with this worker's keypair; in plaintext, off the loopback only with
// SER_PLAINTEXT=1 / cluster.plaintext (proto/ser_curve.h).
static int s_bind_peer(s_worker *w) {
    if (w->peer || !w->have_model || w->cfg.cluster.reduce != SER_REDUCE_CHAIN) return SER_OK;
    const char *ep = w->peer_bind;
    if (!ep) {
        int local = !strncmp(w->endpoint, "tcp://127.", 10) ||
                    !strncmp(w->endpoint, "tcp://localhost:", 16);
        ep = local ? "tcp://127.0.0.1:*" : "tcp://*:*";
    }
    char err[SER_ERR_LEN], last[160];
    void *p = zmq_socket(w->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(p, ZMQ_LINGER, &linger, sizeof linger);
    // No peer can make this worker buffer more than one chunk of the sum.
    int64_t maxmsg = (int64_t)w->cfg.cluster.reduce_chunk * (int64_t)sizeof(float) + (1 << 20);
    zmq_setsockopt(p, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (ser_curve_server(w->ctx, p, ep, err)) {
        ser_log(SER_LL_ERROR, "worker %s: peer socket (cluster.reduce = chain): %s", w->name, err);
        zmq_close(p);
        return SER_EPEER;
    }
    if (zmq_bind(p, ep) != 0) {
        ser_log(SER_LL_ERROR, "worker %s: cannot bind its peer socket (cluster.reduce = chain) "
                "at %s: %s", w->name, ep, zmq_strerror(zmq_errno()));
        zmq_close(p);
        return SER_EIO;
    }
    size_t n = sizeof last;
    if (zmq_getsockopt(p, ZMQ_LAST_ENDPOINT, last, &n) != 0) snprintf(last, sizeof last, "%s", ep);
    if (!strncmp(last, "tcp://0.0.0.0:", 14))
        snprintf(w->peer_ep, sizeof w->peer_ep, "tcp://*:%s", last + 14);
    else
        snprintf(w->peer_ep, sizeof w->peer_ep, "%s", last);
    w->peer = p;
    ser_log(SER_LL_INFO, "worker %s: takes the chain's running sums at %s", w->name, w->peer_ep);
    return SER_OK;
}

static int s_connect(s_worker *w) {
    if (s_bind_peer(w)) return SER_EIO;
    if (w->sock) zmq_close(w->sock);
    // A new connection (a restarted coordinator may have resumed from an earlier step): what
    // this worker holds counts for nothing until the coordinator sends it again, as the
    // coordinator assumes of a worker that says HELLO; no broadcast is under way.
    w->params_version = w->teacher_version = w->bc_step = INT64_MIN;
    w->bc_ntasks = 0, w->bc_route = 0;
    w->sock = zmq_socket(w->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
    // Applies to the connections made from here on: a socket is made again (a reconnection,
    // below) once the WELCOME says how large the job's frames are.
    int64_t maxmsg = w->have_model ? s_max_frame(w) : S_HELLO_MAXMSG;
    zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    w->capped = w->have_model;
    // A connection dropped for a protocol error (such as a frame over that limit) is not made
    // again by ZeroMQ, and a send with no connection would wait for ever: sends give up after
    // a second, and the coordinator's silence makes this socket again (s_serve).
    int sndtimeo = 1000;
    zmq_setsockopt(w->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    zmq_setsockopt(w->sock, ZMQ_ROUTING_ID, w->name, strlen(w->name));
    char cerr[SER_ERR_LEN];
    // ZeroMQ retries a connection that does not come up in silence: the socket's monitor says
    // why (refused, unknown host, CURVE), read and logged by s_run. It outlives the socket, so
    // a cause is not logged again for every socket made again here. On failure it goes (its
    // socket must be closed before zmq_ctx_term; s_run is not reached or returns).
    if (!w->diag) {
        char who[96];
        snprintf(who, sizeof who, "worker %s", w->name);
        w->diag = ser_netdiag_new(w->ctx, who);
    }
    if (ser_netdiag_watch(w->diag, w->sock, cerr)) ser_log(SER_LL_WARNING, "%s", cerr);
    if (ser_curve_client(w->sock, cerr)) {
        ser_log(SER_LL_ERROR, "worker %s: %s", w->name, cerr);
        ser_netdiag_destroy(&w->diag);
        return SER_EIO;
    }
    if (ser_netdiag_connect(w->sock, w->endpoint, cerr)) {
        ser_log(SER_LL_ERROR, "worker %s: --coordinator: %s", w->name, cerr);
        ser_netdiag_destroy(&w->diag);
        return SER_EIO;
    }
    Ser__Envelope e;
    s_env(w, &e, SER__MSG_TYPE__MSG_HELLO);
    e.text = (char *)(uintptr_t)w->name;
    e.config_hash = w->have_model ? ser_config_hash(&w->cfg) : 0;
    e.threads = (uint32_t)ser_kernels_get_threads();
    if (w->peer) {
        e.peer_endpoint = w->peer_ep;
        e.peer_key = (char *)(uintptr_t)ser_curve_public();
    }
    w->last_heard = w->last_sent = ser_clock_now_ms();
    int rc = ser_wire_send(w->sock, NULL, &e, NULL, 0);
    if (rc) ser_netdiag_destroy(&w->diag);
    return rc;
}

static int s_welcome(s_worker *w, const Ser__Envelope *e) {
    char err[SER_ERR_LEN];
    ser_config cfg;
    ser_config_defaults(&cfg);
    int rc = ser_config_load_string(&cfg, e->text ? e->text : "", "<coordinator>", err);
    if (rc) {
        ser_log(SER_LL_ERROR, "worker %s: the coordinator's config does not load: %s", w->name, err);
        return rc;
    }
    if (w->have_model) {
        if (ser_config_hash(&cfg) != ser_config_hash(&w->cfg)) {
            ser_log(SER_LL_ERROR, "worker %s: the coordinator now runs another job config", w->name);
            return SER_EPEER;
        }
        return SER_OK;  // a restarted coordinator of the same job
    }
    w->cfg = cfg;
    snprintf(w->job_id, sizeof w->job_id, "%s", e->job_id ? e->job_id : "");
    int threads = cfg.run.threads > 0 ? cfg.run.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    ser_kernels_set_threads(threads);
    if ((rc = ser_backbones_init(&w->v, &cfg, err))) {
        ser_log(SER_LL_ERROR, "worker %s: %s", w->name, err);
        return rc;
    }
    const ser_vit_config *vc = &w->v.student.cfg;
    if (w->batch_file) {
        if ((rc = ser_batchfile_load(&w->bf, w->batch_file, vc->patch, err)) ||
            (rc = ser_batch_check(&w->bf.b, vc, cfg.data.shards, err))) {
            ser_log(SER_LL_ERROR, "worker %s: %s", w->name, err);
            ser_backbones_free(&w->v);
            return rc;
        }
        if (w->bf.b.n_inv + w->bf.b.n_eq != cfg.data.global_batch) {
            ser_log(SER_LL_ERROR, "worker %s: %s holds %d samples, the job's data.global_batch is %d",
                    w->name, w->batch_file, w->bf.b.n_inv + w->bf.b.n_eq, cfg.data.global_batch);
            ser_backbones_free(&w->v);
            return SER_ESHAPE;
        }
        const ser_objective_i *obj = ser_objective_get(cfg.method.name);
        if (obj && obj->view_params && !w->bf.b.vparams) {
            ser_log(SER_LL_ERROR, "worker %s: %s has no vparams (the global views' parameters, "
                    "(B, 2, %d) F32), which method.name = %s reads", w->name, w->batch_file,
                    SER_VIEW_PARAMS, obj->name);
            ser_backbones_free(&w->v);
            return SER_ESHAPE;
        }
        if (w->bf.b.n_local != cfg.data.local_crops) {
            ser_log(SER_LL_ERROR, "worker %s: %s holds %d local views, the job's data.local_crops "
                    "is %d", w->name, w->batch_file, w->bf.b.n_local, cfg.data.local_crops);
            ser_backbones_free(&w->v);
            return SER_ESHAPE;
        }
        if (w->bf.b.n_lpairs != cfg.ser.local_pairs) {
            ser_log(SER_LL_ERROR, "worker %s: %s holds %d local SER pairs per equivariant sample, "
                    "the job's ser.local_pairs is %d", w->name, w->batch_file, w->bf.b.n_lpairs,
                    cfg.ser.local_pairs);
            ser_backbones_free(&w->v);
            return SER_ESHAPE;
        }
    } else {
        ser_dl_config dc;
        ser_dl_config_from_job(&dc, &cfg);
        char derr[256];
        // No loader can make this worker buffer more than a legitimate shard of the job.
        int64_t max_msg = ser_dl_reply_max_bytes(cfg.data.global_batch / cfg.data.shards,
                                                 cfg.model.img_size, cfg.model.patch,
                                                 cfg.ser.scale_max);
        w->dl = ser_dl_client_new(w->loader, dc.job_id, ser_dl_config_hash(&dc), max_msg, derr);
        if (!w->dl) {
            ser_log(SER_LL_ERROR, "worker %s: loader %s: %s", w->name, w->loader, derr);
            ser_backbones_free(&w->v);
            return SER_EIO;
        }
    }
    pthread_mutex_lock(&w->mu);
    w->have_model = 1;
    pthread_mutex_unlock(&w->mu);
    w->span = w->v.span, w->off = w->v.off;
    w->S = cfg.data.shards;
    w->sh = ser_xcalloc((size_t)w->S, sizeof *w->sh);
    int per = cfg.data.global_batch / w->S;
    for (int s = 0; s < w->S; s++) {
        w->sh[s].ids = ser_xcalloc((size_t)per, sizeof(uint32_t));
        if (w->batch_file) ser_batch_shard(&w->bf.b, s, w->S, &w->sh[s].b, w->sh[s].ids);
    }
    w->params_version = w->teacher_version = INT64_MIN;  // none held
    w->bc_step = INT64_MIN;
    ser_log(SER_LL_INFO, "worker %s: joined job '%s' (%d threads)", w->name, w->job_id, threads);
    return SER_OK;
}

// Fetches shard (step, s) from the loaders into sh->b (normalised floats); why (256 bytes)
// says what went wrong.
static int s_fetch(s_worker *w, s_wshard *sh, int64_t step, int s, char *why) {
    ser_dl_shard d;
    char err[256];
    int rc = ser_dl_client_fetch(w->dl, (uint64_t)step, (uint32_t)s, w->cfg.cluster.timeout_ms, &d, err);
    if (rc) {
        ser_log(SER_LL_ERROR, "worker %s: step %lld shard %d from the loader: %s (%s)", w->name,
                (long long)step, s, ser_strerror(rc), err);
        snprintf(why, 256, "data loader %.60s: %.140s (%.30s)", w->loader, err, ser_strerror(rc));
        return rc;
    }
    int per = w->cfg.data.global_batch / w->S, img = w->cfg.model.img_size, n_inv = 0, n_eq = 0;
    if (d.n != per) {
        ser_log(SER_LL_ERROR, "worker %s: the loader sent %d samples for a shard of %d", w->name, d.n, per);
        ser_dl_shard_free(&d);
        return SER_ESHAPE;
    }
    for (int i = 0; i < d.n; i++) d.samples[i].equivariant ? n_eq++ : n_inv++;
    size_t pix = (size_t)3 * img * img;
    int P = w->cfg.ser.enabled ? w->cfg.ser.local_pairs : 0;
    // The equivariant views' sizes against their group elements at the job's patch (the engine
    // reads rows x patch by cols x patch): a loader's reply is another process's word.
    char cerr[256];
    if (ser_dl_shard_check(&d, w->cfg.model.patch, ser_config_grid_max(&w->cfg), cerr)) {
        ser_log(SER_LL_ERROR, "worker %s: loader shard %d of step %lld: %s", w->name, s,
                (long long)step, cerr);
        snprintf(why, 256, "data loader %.60s: %.180s", w->loader, cerr);
        ser_dl_shard_free(&d);
        return SER_ESHAPE;
    }
    for (int v = 0; v < 2; v++) {
        free(sh->inv[v]);
        sh->inv[v] = ser_xaligned(sizeof(float) * pix * (size_t)(n_inv ? n_inv : 1));
        for (int q = 0; q < sh->neq_cap; q++) free(sh->eq[v][q]);
        free(sh->eq[v]), free(sh->gel[v]);
        sh->eq[v] = ser_xcalloc((size_t)n_eq + 1, sizeof(float *));
        sh->gel[v] = ser_xcalloc((size_t)n_eq + 1, sizeof(ser_group_elem));
        for (int q = 0; q < sh->nlp_cap; q++) free(sh->lpair[v][q]);
        free(sh->lpair[v]), free(sh->lgel[v]);
        sh->lpair[v] = ser_xcalloc((size_t)n_eq * P + 1, sizeof(float *));
        sh->lgel[v] = ser_xcalloc((size_t)n_eq * P + 1, sizeof(ser_group_elem));
    }
    sh->neq_cap = n_eq, sh->nlp_cap = n_eq * P;
    int L = w->cfg.data.local_crops, ls = ser_config_local_size(&w->cfg);
    size_t lpix = (size_t)3 * ls * ls;
    for (int k = 0; k < SER_MAX_LOCAL; k++) {
        free(sh->local[k]);
        sh->local[k] = k < L ? ser_xaligned(sizeof(float) * lpix * (size_t)d.n) : NULL;
    }
    free(sh->vparams);
    sh->vparams = ser_xmalloc(sizeof(float) * (size_t)d.n * 2 * SER_VIEW_PARAMS);
    for (int i = 0; i < d.n; i++)
        memcpy(sh->vparams + (size_t)i * 2 * SER_VIEW_PARAMS, d.samples[i].vparams,
               sizeof d.samples[i].vparams);
    int ii = 0, qq = 0;
    rc = d.n_local != L || (L && d.local_size != ls) || d.local_pairs != P ? SER_ESHAPE : SER_OK;
    for (int i = 0; i < d.n && !rc; i++) {
        const ser_dl_sample *x = &d.samples[i];
        sh->ids[i] = (uint32_t)x->position;
        for (int k = 0; k < L; k++)
            ser_dl_normalise(sh->local[k] + (size_t)i * lpix, x->local[k], ls, ls);
        if ((x->equivariant && i < n_inv) || (!x->equivariant && i >= n_inv)) rc = SER_EFORMAT;
        for (int v = 0; v < 2 && !rc; v++) {
            if (!x->equivariant) {
                if (x->h[v] != img || x->w[v] != img) rc = SER_ESHAPE;
                else ser_dl_normalise(sh->inv[v] + (size_t)ii * pix, x->view[v], img, img);
            } else {
                sh->gel[v][qq] = x->g[v];
                sh->eq[v][qq] = ser_xaligned(sizeof(float) * 3 * (size_t)x->h[v] * x->w[v]);
                ser_dl_normalise(sh->eq[v][qq], x->view[v], x->h[v], x->w[v]);
                for (int k = 0; k < P; k++) {
                    size_t j = (size_t)qq * P + k;
                    sh->lgel[v][j] = x->lg[k][v];
                    sh->lpair[v][j] = ser_xaligned(sizeof(float) * 3 * (size_t)x->lh[k][v] *
                                                   x->lw[k][v]);
                    ser_dl_normalise(sh->lpair[v][j], x->lview[k][v], x->lh[k][v], x->lw[k][v]);
                }
            }
        }
        x->equivariant ? qq++ : ii++;
    }
    ser_dl_shard_free(&d);
    if (rc) {
        ser_log(SER_LL_ERROR, "worker %s: loader shard %d of step %lld is not laid out as the job's "
                "(%s)", w->name, s, (long long)step, ser_strerror(rc));
        return rc;
    }
    memset(&sh->b, 0, sizeof sh->b);
    sh->b.n_inv = n_inv, sh->b.n_eq = n_eq, sh->b.img = img, sh->b.ids = sh->ids;
    sh->b.n_local = L, sh->b.local_img = ls, sh->b.vparams = sh->vparams;
    for (int k = 0; k < L; k++) sh->b.local[k] = sh->local[k];
    for (int v = 0; v < 2; v++) {
        sh->b.inv[v] = sh->inv[v];
        sh->b.eq[v] = (const float *const *)sh->eq[v];
        sh->b.g[v] = sh->gel[v];
        sh->b.lpair[v] = (const float *const *)sh->lpair[v];
        sh->b.lg[v] = sh->lgel[v];
    }
    sh->b.n_lpairs = P;
    return SER_OK;
}

static void s_forward(s_worker *w, const Ser__Envelope *e) {
    int s = (int)e->shard;
    int64_t step = (int64_t)e->step;
    if (s >= 0 && s < w->S && step == w->bc_step && w->bc_ngot < w->bc_nchunks &&
        w->bc_ntasks < w->S) {
        // The chain is still bringing this step's parameters: the task waits for them.
        if (!w->bc_tasks) w->bc_tasks = ser_xcalloc((size_t)w->S, sizeof *w->bc_tasks);
        Ser__Envelope *t = &w->bc_tasks[w->bc_ntasks++];
        ser__envelope__init(t);
        t->type = e->type, t->step = e->step, t->shard = e->shard, t->attempt = e->attempt;
        t->params_version = e->params_version, t->momentum = e->momentum;
        return;
    }
    if (s < 0 || s >= w->S || (int64_t)e->params_version != w->params_version || step != w->params_version) {
        ser_log(SER_LL_WARNING, "worker %s: FORWARD step %lld shard %d without its parameters "
                "(have %lld): dropped", w->name, (long long)step, s, (long long)w->params_version);
        return;
    }
    if (w->v.has_teacher && w->teacher_version != step) {
        ser_log(SER_LL_WARNING, "worker %s: no teacher for step %lld: FORWARD dropped", w->name,
                (long long)step);
        return;
    }
    s_wshard *sh = &w->sh[s];
    if (sh->have) ser_gathered_free(&sh->g);
    sh->have = 0;
    char err[SER_ERR_LEN];
    if (w->dl) {
        char why[256] = "";
        int frc = s_fetch(w, sh, step, s, why);
        if (frc == SER_ETIMEDOUT) return;  // a slow or restarting loader: the task comes again
        if (frc) {  // the loader answered no: say so, so that the coordinator does not retry here
            Ser__Envelope f;
            s_env(w, &f, SER__MSG_TYPE__MSG_TASK_FAILED);
            f.step = e->step, f.shard = e->shard, f.attempt = e->attempt;
            f.text = why;
            s_send(w, &f, NULL, 0);
            return;
        }
    }
    int rc = ser_engine_forward(&sh->eng, &w->v.student, w->v.has_teacher ? &w->v.teacher : NULL, &sh->b, 1, w->v.maps,
                                (uint64_t)w->cfg.data.seed, (uint32_t)step, &sh->g, err);
    if (rc) {
        ser_log(SER_LL_ERROR, "worker %s: shard %d forward failed: %s", w->name, s, err);
        return;
    }
    sh->have = 1, sh->step = step, sh->attempt = e->attempt;
    // The group elements travel with the rows: the coordinator reads no data.
    float *gf = ser_xcalloc((size_t)sh->b.n_eq * (1 + (size_t)sh->b.n_lpairs) * 10 + 1, sizeof(float));
    ser_wire_tensor all[SER_SHARD_MAX_FWD];
    int nt = ser_shard_pack_forward(all, &sh->g, &sh->b, w->v.has_teacher, gf);
    Ser__Envelope out;
    s_env(w, &out, SER__MSG_TYPE__MSG_FORWARD_DONE);
    out.step = (uint64_t)step, out.shard = (uint32_t)s, out.attempt = e->attempt;
    // What the loaders said of themselves, for the coordinator's status port (the coordinator
    // talks to no loader): one line each (proto/ser_loadstat.h).
    ser_loadstat ls[SER_LOADSTAT_MAX];
    char ltext[SER_LOADSTAT_MAX * (SER_LOADSTAT_EP_LEN + 160)];
    int nls = w->dl ? ser_dl_client_loaders(w->dl, ls, SER_LOADSTAT_MAX) : 0;
    if (nls > 0 && ser_loadstat_format(ltext, sizeof ltext, ls, nls, ser_clock_now_ms()) > 0)
        out.text = ltext;
    s_send(w, &out, all, nt);
    free(gf);
    // Shards stay with their workers from step to step: the next step's comes while this one's
    // backward runs, instead of a round trip to the loader at the next FORWARD.
    if (w->dl) ser_dl_client_prefetch(w->dl, (uint64_t)step + 1, (uint32_t)s);
}

// The first non-finite element of g[0..n) plus 1; 0 when all are finite.
static uint64_t s_first_nonfinite(const float *g, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(g[i])) return (uint64_t)i + 1;
    return 0;
}

static void s_backward(s_worker *w, const ser_wire_msg *m) {
    const Ser__Envelope *e = m->env;
    int s = (int)e->shard;
    if (!e->keep && s >= 0 && s < w->S && w->sh[s].kept && w->sh[s].kstep == (int64_t)e->step &&
        w->sh[s].katt == e->attempt) {
        // The chain broke: the coordinator sums this step itself, from the kept gradients.
        ser_wire_tensor t;
        ser_shard_pack_grad(&t, w->sh[s].kept, w->span);
        Ser__Envelope out;
        s_env(w, &out, SER__MSG_TYPE__MSG_BACKWARD_DONE);
        out.step = e->step, out.shard = e->shard, out.attempt = e->attempt;
        s_send(w, &out, &t, 1);
        ser_log(SER_LL_DEBUG, "worker %s: step %llu shard %d: kept gradient sent", w->name,
                (unsigned long long)e->step, s);
        return;
    }
    if (s < 0 || s >= w->S || !w->sh[s].have || w->sh[s].step != (int64_t)e->step ||
        w->sh[s].attempt != e->attempt) {
        ser_log(SER_LL_WARNING, "worker %s: BACKWARD step %llu shard %d attempt %u without its "
                "forward: dropped", w->name, (unsigned long long)e->step, s, e->attempt);
        return;
    }
    s_wshard *sh = &w->sh[s];
    int C = sh->g.C;
    const float *d[SER_SHARD_MAX_BWD];
    if (ser_shard_parse_backward(m, sh->g.B, C, sh->g.ntok, sh->g.n_local, sh->g.pool,
                                 sh->g.n_lpairs ? sh->g.lntok : NULL, d)) {
        ser_log(SER_LL_WARNING, "worker %s: BACKWARD for shard %d with wrong sizes: dropped", w->name, s);
        return;
    }
    size_t BC = (size_t)sh->g.B * C;
    memcpy(sh->g.dqcls[0], d[0], sizeof(float) * BC);
    memcpy(sh->g.dqcls[1], d[1], sizeof(float) * BC);
    memcpy(sh->g.dqmap[0], d[2], sizeof(float) * sh->g.ntok[0] * C);
    memcpy(sh->g.dqmap[1], d[3], sizeof(float) * sh->g.ntok[1] * C);
    for (int k = 0; k < sh->g.n_local; k++) memcpy(sh->g.dlcls[k], d[4 + k], sizeof(float) * BC);
    int nd = 4 + sh->g.n_local;
    for (int v = 0; sh->g.pool && v < 2 + sh->g.n_local; v++)
        memcpy(sh->g.dqpool[v], d[nd++], sizeof(float) * BC);
    for (int v = 0; sh->g.n_lpairs && v < 2; v++)
        memcpy(sh->g.dlqmap[v], d[nd++], sizeof(float) * sh->g.lntok[v] * C);
    ser_engine_backward(&sh->eng, &w->v.student, &sh->b, 1, &sh->g, w->v.map_grad);
    ser_wire_tensor t;
    Ser__Envelope out;
    s_env(w, &out, SER__MSG_TYPE__MSG_BACKWARD_DONE);
    out.step = e->step, out.shard = e->shard, out.attempt = e->attempt;
    if (e->keep) {  // cluster.reduce = chain: kept for the REDUCE; the answer says it is done
        if (!sh->kept) sh->kept = ser_xaligned_raw(sizeof(float) * w->span);
        memcpy(sh->kept, w->v.grads + w->off, sizeof(float) * w->span);
        if (ser_wire_fault_nan(SER__MSG_TYPE__MSG_BACKWARD_DONE, e->step)) sh->kept[0] = NAN;
        sh->kstep = (int64_t)e->step, sh->katt = e->attempt;
        sh->kbad = s_first_nonfinite(sh->kept, w->span);
        out.bad_at = sh->kbad;
        s_send(w, &out, NULL, 0);
    } else {
        ser_shard_pack_grad(&t, w->v.grads + w->off, w->span);
        s_send(w, &out, &t, 1);
    }
    ser_gathered_free(&sh->g);
    sh->have = 0;
}

// --- cluster.reduce = chain ---------------------------------------------------------------------
// The coordinator sends one REDUCE per run of consecutive shards a worker holds: add their kept
// gradients to the running sum over the shards before them, and pass the sum on. The sum moves
// in chunks of cluster.reduce_chunk floats, each passed on as soon as this worker has added its
// shards to it, element by element in shard order, from zeros for shard 0: the left fold of
// the coordinator's sum (s_fold in coordinator/ser_coord.c) and of `ser step`, so the same bits.

static int s_nchunks(const s_worker *w) {
    return ser_shard_nchunks(w->span, (size_t)w->cfg.cluster.reduce_chunk);
}

// Chunk k of the parameter span: its first float (*i0) and length.
static size_t s_chunk(const s_worker *w, size_t k, size_t *i0) {
    return ser_shard_chunk(w->span, (size_t)w->cfg.cluster.reduce_chunk, k, i0);
}

static void s_reduce_free(s_reduce *r) {
    free(r->in), free(r->got), free(r->sent);
    memset(r, 0, sizeof *r);
}

// The task or inbox of (step, round, a); with create, a new one (an old step's slot, a free
// one, or NULL when every slot holds this step's).
static s_reduce *s_reduce_at(s_worker *w, int64_t step, uint32_t round, uint32_t a, int create) {
    s_reduce *free_slot = NULL;
    for (int i = 0; i < S_MAX_REDUCE; i++) {
        s_reduce *r = &w->red[i];
        if (r->used && r->step == step && r->round == round && r->a == a) return r;
        // An older step's, or an older round of this step's (the chain ran again): over.
        if (r->used && (r->step < step || (r->step == step && r->round < round))) s_reduce_free(r);
        if (!r->used && !free_slot) free_slot = r;
    }
    if (!create || !free_slot) return NULL;
    s_reduce *r = free_slot;
    r->used = 1, r->step = step, r->round = round, r->a = a;
    r->nchunks = s_nchunks(w);
    r->got = ser_xcalloc((size_t)r->nchunks, 1);
    r->sent = ser_xcalloc((size_t)r->nchunks, 1);
    if (a > 0) r->in = ser_xaligned_raw(sizeof(float) * w->span);
    return r;
}

static void s_reduce_failed(s_worker *w, int64_t step, uint32_t round, uint32_t a, const char *why) {
    ser_log(SER_LL_WARNING, "worker %s: step %lld: the chain's sum over shards from %u cannot go "
            "on here: %s", w->name, (long long)step, a, why);
    Ser__Envelope f;
    s_env(w, &f, SER__MSG_TYPE__MSG_REDUCE_FAILED);
    f.step = (uint64_t)step, f.shard = a, f.attempt = round;
    f.text = (char *)(uintptr_t)why;
    s_send(w, &f, NULL, 0);
}

// A link to the next holder's peer socket (made once per endpoint; the oldest goes when
// S_MAX_LINKS are open). It says this worker's name as its identity (the receiver's ROUTER
// takes printable names only); a send waits at most a second for room.
static void *s_link(s_worker *w, const char *ep, const char *key, char *why, size_t n) {
    for (int i = 0; i < w->nlink; i++)
        if (!strcmp(w->link[i].ep, ep)) return w->link[i].sock;
    if (w->nlink == S_MAX_LINKS) {
        zmq_close(w->link[0].sock);
        memmove(&w->link[0], &w->link[1], sizeof w->link[0] * (S_MAX_LINKS - 1));
        w->nlink--;
    }
    void *d = zmq_socket(w->ctx, ZMQ_DEALER);
    int linger = 0, sndtimeo = 1000;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    zmq_setsockopt(d, ZMQ_ROUTING_ID, w->name, strlen(w->name));
    char err[SER_ERR_LEN];
    if (ser_curve_client_to(d, key, err)) {
        snprintf(why, n, "the next holder at %.100s: %.200s", ep, err);
        zmq_close(d);
        return NULL;
    }
    if (zmq_connect(d, ep) != 0) {
        snprintf(why, n, "cannot connect to the next holder at %.100s: %s", ep,
                 zmq_strerror(zmq_errno()));
        zmq_close(d);
        return NULL;
    }
    snprintf(w->link[w->nlink].ep, sizeof w->link[0].ep, "%s", ep);
    w->link[w->nlink++].sock = d;
    return d;
}

// Passes on every chunk of r that is ready (all of them when a = 0; those received otherwise).
static void s_reduce_progress(s_worker *w, s_reduce *r) {
    if (!r->used || !r->have_task) return;
    size_t K = (size_t)w->cfg.cluster.reduce_chunk;
    if (!w->chunk) w->chunk = ser_xaligned_raw(sizeof(float) * K);
    for (uint32_t s = r->a; s < r->b; s++)
        if (!w->sh[s].kept || w->sh[s].kstep != r->step) {  // a later step's backward came first
            s_reduce_free(r);
            return;
        }
    for (int k = 0; k < r->nchunks; k++) {
        if (r->sent[k] || (r->a > 0 && !r->got[k])) continue;
        size_t i0, n = s_chunk(w, (size_t)k, &i0);
        float *out = w->chunk;
        if (r->a == 0)
            memset(out, 0, sizeof(float) * n);
        else
            memcpy(out, r->in + i0, sizeof(float) * n);
        for (uint32_t s = r->a; s < r->b; s++) {
            const float *g = w->sh[s].kept + i0;
            for (size_t i = 0; i < n; i++) out[i] += g[i];
        }
        ser_wire_tensor t = {"sum", 1, {(int64_t)n}, out};
        Ser__Envelope e;
        s_env(w, &e, SER__MSG_TYPE__MSG_PARTIAL);
        e.step = (uint64_t)r->step, e.shard = r->b, e.attempt = r->round, e.chunk = (uint32_t)k;
        int rc;
        if (!r->next[0]) {
            rc = s_send(w, &e, &t, 1);
        } else {
            char why[400];
            void *d = s_link(w, r->next, r->key, why, sizeof why);
            if (!d) {
                s_reduce_failed(w, r->step, r->round, r->a, why);
                s_reduce_free(r);
                return;
            }
            rc = ser_wire_send(d, NULL, &e, &t, 1);
        }
        if (rc) {
            char why[300];
            snprintf(why, sizeof why, "chunk %d could not be sent to %.200s", k,
                     r->next[0] ? r->next : "the coordinator");
            s_reduce_failed(w, r->step, r->round, r->a, why);
            s_reduce_free(r);
            return;
        }
        r->sent[k] = 1;
        r->nsent++;
    }
    if (r->nsent == r->nchunks) {
        ser_log(SER_LL_DEBUG, "worker %s: step %lld: shards %u..%u added, sum passed on to %s",
                w->name, (long long)r->step, r->a, r->b - 1, r->next[0] ? r->next : "the coordinator");
        s_reduce_free(r);
    }
}

static void s_reduce_task(s_worker *w, const Ser__Envelope *e) {
    int64_t step = (int64_t)e->step;
    char why[300];
    if (e->shard >= e->shard_end || e->shard_end > (uint32_t)w->S) {
        snprintf(why, sizeof why, "shards [%u, %u) of a job with %d", e->shard, e->shard_end, w->S);
        s_reduce_failed(w, step, e->attempt, e->shard, why);
        return;
    }
    for (uint32_t s = e->shard; s < e->shard_end; s++)
        if (!w->sh[s].kept || w->sh[s].kstep != step) {
            snprintf(why, sizeof why, "no gradient of shard %u of step %lld is kept here", s,
                     (long long)step);
            s_reduce_failed(w, step, e->attempt, e->shard, why);
            return;
        }
    const char *next = e->next_endpoint ? e->next_endpoint : "", *key = e->next_key ? e->next_key : "";
    if (strlen(next) >= sizeof w->red[0].next || strlen(key) >= sizeof w->red[0].key ||
        (next[0] && strncmp(next, "tcp://", 6) && strncmp(next, "ipc://", 6))) {
        s_reduce_failed(w, step, e->attempt, e->shard, "the next holder's endpoint or key is malformed");
        return;
    }
    s_reduce *r = s_reduce_at(w, step, e->attempt, e->shard, 1);
    if (!r) {
        s_reduce_failed(w, step, e->attempt, e->shard, "too many chain tasks at once");
        return;
    }
    if (r->have_task) return;  // a duplicate
    r->have_task = 1, r->b = e->shard_end;
    snprintf(r->next, sizeof r->next, "%s", next);
    snprintf(r->key, sizeof r->key, "%s", key);
    s_reduce_progress(w, r);
}

// A chunk of the running sum from the previous holder (peer socket). Only this job's, for this
// step or the next, and of the chunk's size; anything else is logged and dropped.
static void s_partial(s_worker *w, const ser_wire_msg *m) {
    const Ser__Envelope *e = m->env;
    int64_t step = (int64_t)e->step;
    int nchunks = s_nchunks(w);
    if (e->type != SER__MSG_TYPE__MSG_PARTIAL || e->shard == 0 || e->shard >= (uint32_t)w->S ||
        e->chunk >= (uint32_t)nchunks || step < w->params_version || step > w->params_version + 1) {
        ser_log(SER_LL_WARNING, "worker %s: peer message from %s (type %d, step %lld, shard %u, "
                "chunk %u) is no running sum this worker waits for: dropped", w->name,
                m->identity, e->type, (long long)step, e->shard, e->chunk);
        return;
    }
    size_t i0, n = s_chunk(w, e->chunk, &i0);
    const float *x = ser_wire_find(m, "sum", n);
    if (!x) {
        ser_log(SER_LL_WARNING, "worker %s: running sum from %s without its chunk of %zu floats: "
                "dropped", w->name, m->identity, n);
        return;
    }
    s_reduce *r = s_reduce_at(w, step, e->attempt, e->shard, 1);
    if (!r) {
        ser_log(SER_LL_WARNING, "worker %s: running sum from %s for step %lld: no room: dropped",
                w->name, m->identity, (long long)step);
        return;
    }
    if (r->got[e->chunk]) return;  // a duplicate
    memcpy(r->in + i0, x, sizeof(float) * n);
    r->got[e->chunk] = 1;
    s_reduce_progress(w, r);
}

static void s_params_chunk(s_worker *w, const ser_wire_msg *m);

// Reads what the peer socket holds (up to 64 messages).
static void s_drain_peer(s_worker *w) {
    for (int k = 0; w->peer && k < 64; k++) {
        ser_wire_msg m;
        char err[SER_ERR_LEN];
        int rc = ser_wire_recv(w->peer, 1, w->job_id, &m, err);
        if (rc == SER_ETIMEDOUT) break;
        if (rc) {
            ser_log(SER_LL_WARNING, "worker %s: bad peer message dropped: %s", w->name, err);
            continue;
        }
        s_set_busy(w, 1);
        if (m.env->type == SER__MSG_TYPE__MSG_PARAMS_CHUNK)
            s_params_chunk(w, &m);
        else
            s_partial(w, &m);
        s_set_busy(w, 0);
        ser_wire_msg_free(&m);
    }
}

// --- cluster.broadcast = tree -------------------------------------------------------------------
// The coordinator sends the step's student once, in chunks, to the root of a binary tree of
// workers and a ROUTE to each worker of it; each passes every chunk on to its two children as
// it arrives. The chunks are written into the parameters as they come; when all are in and
// their XXH3-64 equals the hash of the ROUTE (the coordinator's word), the worker holds the
// step's parameters (and advances its teacher by the EMA, as on PARAMS). A worker the tree does
// not reach says so in its heartbeats (it holds none) and the coordinator sends it PARAMS.

static void s_bc_forward(s_worker *w) {
    if (!w->bc_route) return;
    for (int j = 0; j < 2; j++) {
        if (!w->bc_next[j][0]) continue;
        char why[400];
        void *d = s_link(w, w->bc_next[j], w->bc_key[j], why, sizeof why);
        for (int k = 0; d && k < w->bc_nchunks; k++) {
            if (!w->bc_got[k] || w->bc_fwd[j][k]) continue;
            size_t i0, n = s_chunk(w, (size_t)k, &i0);
            ser_wire_tensor t = {"student", 1, {(int64_t)n}, w->v.params + w->off + i0};
            Ser__Envelope e;
            s_env(w, &e, SER__MSG_TYPE__MSG_PARAMS_CHUNK);
            e.step = e.params_version = (uint64_t)w->bc_step, e.chunk = (uint32_t)k;
            e.momentum = w->bc_mom, e.params_hash = w->bc_hash;
            if (ser_wire_send(d, NULL, &e, &t, 1)) {
                snprintf(why, sizeof why, "chunk %d could not be sent", k);
                d = NULL;
                break;
            }
            w->bc_fwd[j][k] = 1;
        }
        if (!d) {  // that child fetches them from the coordinator when it misses them
            ser_log(SER_LL_WARNING, "worker %s: step %lld's parameters cannot be passed on to %s: %s",
                    w->name, (long long)w->bc_step, w->bc_next[j], why);
            w->bc_next[j][0] = 0;
        }
    }
}

static void s_forward(s_worker *w, const Ser__Envelope *e);
static void s_bc_check(s_worker *w);

// The broadcast of step `step` begins (its route already known when route): nothing received,
// no parameters whole meanwhile.
static void s_bc_start(s_worker *w, int64_t step, int route) {
    w->bc_step = step, w->bc_nchunks = s_nchunks(w), w->bc_ngot = 0;
    free(w->bc_got), free(w->bc_fwd[0]), free(w->bc_fwd[1]);
    w->bc_got = ser_xcalloc((size_t)w->bc_nchunks, 1);
    w->bc_fwd[0] = ser_xcalloc((size_t)w->bc_nchunks, 1);
    w->bc_fwd[1] = ser_xcalloc((size_t)w->bc_nchunks, 1);
    w->bc_ntasks = 0;
    w->bc_route = route;
    if (!route) w->bc_next[0][0] = w->bc_next[1][0] = 0;
    w->params_version = INT64_MIN;
}

// The FORWARD tasks that waited for the chain's parameters, once they are whole.
static void s_bc_tasks(s_worker *w) {
    int nt = w->bc_ntasks;
    w->bc_ntasks = 0;
    for (int i = 0; i < nt; i++) s_forward(w, &w->bc_tasks[i]);
}

// A chunk of step `params_version`'s student (from the coordinator or the previous worker).
static void s_params_chunk(s_worker *w, const ser_wire_msg *m) {
    const Ser__Envelope *e = m->env;
    int64_t step = (int64_t)e->params_version;
    int nchunks = s_nchunks(w);
    if (step < w->bc_step || step <= w->params_version || e->chunk >= (uint32_t)nchunks) {
        ser_log(SER_LL_DEBUG, "worker %s: parameter chunk %u of step %lld dropped (late, a "
                "duplicate or out of range)", w->name, e->chunk, (long long)step);
        return;
    }
    size_t i0, n = s_chunk(w, e->chunk, &i0);
    const float *x = ser_wire_find(m, "student", n);
    if (!x) {
        ser_log(SER_LL_WARNING, "worker %s: parameter chunk %u of step %lld from %s is not %zu "
                "floats: dropped", w->name, e->chunk, (long long)step,
                m->identity[0] ? m->identity : "the coordinator", n);
        return;
    }
    if (step > w->bc_step) s_bc_start(w, step, 0);  // no parameters are whole until it is in
    if (w->bc_got[e->chunk]) return;
    memcpy(w->v.params + w->off + i0, x, sizeof(float) * n);
    w->bc_got[e->chunk] = 1;
    w->bc_ngot++;
    s_bc_forward(w);
    s_bc_check(w);
}

// Once every chunk is in and the ROUTE (the coordinator's word on the hash and the momentum)
// is here: the parameters are the step's when their hash matches.
static void s_bc_check(s_worker *w) {
    int64_t step = w->bc_step;
    if (!w->bc_route || !w->bc_got || w->bc_ngot < w->bc_nchunks || w->params_version == step)
        return;
    if (ser_ckpt_bytes_hash(w->v.params + w->off, sizeof(float) * w->span) != w->bc_hash) {
        ser_log(SER_LL_WARNING, "worker %s: step %lld's parameters from the chain do not match "
                "their hash: dropped (the coordinator sends them again)", w->name, (long long)step);
        w->bc_ntasks = 0;
        return;
    }
    w->params_version = step;
    if (!w->v.has_teacher) {
        w->teacher_version = step;
    } else if (w->teacher_version == step - 1) {
        ser_backbones_teacher_ema(&w->v, w->bc_mom);
        w->teacher_version = step;
    }
    s_bc_tasks(w);
}

static void s_route(s_worker *w, const Ser__Envelope *e) {
    int64_t step = (int64_t)e->params_version;
    const char *next[2] = {e->next_endpoint ? e->next_endpoint : "",
                           e->next2_endpoint ? e->next2_endpoint : ""};
    const char *key[2] = {e->next_key ? e->next_key : "", e->next2_key ? e->next2_key : ""};
    for (int j = 0; j < 2; j++)
        if (strlen(next[j]) >= sizeof w->bc_next[0] || strlen(key[j]) >= sizeof w->bc_key[0]) {
            ser_log(SER_LL_WARNING, "worker %s: ROUTE with a malformed endpoint or key: dropped",
                    w->name);
            return;
        }
    if (step == w->params_version) return;  // already whole (sent by the coordinator)
    // The coordinator's word: a ROUTE of another step than the broadcast under way starts that
    // step's (an earlier one: the coordinator went back, resumed from a checkpoint).
    if (step != w->bc_step) s_bc_start(w, step, 1);
    for (int j = 0; j < 2; j++) {
        snprintf(w->bc_next[j], sizeof w->bc_next[0], "%s", next[j]);
        snprintf(w->bc_key[j], sizeof w->bc_key[0], "%s", key[j]);
    }
    w->bc_hash = e->params_hash, w->bc_mom = e->momentum;
    w->bc_route = 1;
    s_bc_forward(w);
    s_bc_check(w);
}

static void s_params(s_worker *w, const ser_wire_msg *m) {
    const float *st, *te;
    ser_shard_parse_params(m, w->span, w->v.has_teacher, &st, &te);
    if (!st) {
        ser_log(SER_LL_WARNING, "worker %s: PARAMS without a student of %zu floats: dropped", w->name, w->span);
        return;
    }
    memcpy(w->v.params + w->off, st, sizeof(float) * w->span);
    w->params_version = (int64_t)m->env->params_version;
    if (!w->v.has_teacher) {
        w->teacher_version = w->params_version;  // nothing to hold
    } else if (te) {
        memcpy(w->v.tparams + w->v.toff, te, sizeof(float) * w->span);
        w->teacher_version = w->params_version;
    } else if (w->teacher_version == w->params_version - 1) {
        // The teacher of this step is the EMA towards these parameters: computed here, with
        // the coordinator's function and operands, instead of sent (half the bytes of a step).
        ser_backbones_teacher_ema(&w->v, m->env->momentum);
        w->teacher_version = w->params_version;
    }
    if (w->params_version == w->bc_step) {  // sent by the coordinator while the chain was late
        w->bc_ngot = w->bc_nchunks;
        s_bc_tasks(w);
    }
}

static int s_serve(s_worker *w) {
    int64_t hb = 1000, timeout = 10000;
    for (;;) {
        if (s_stop) return 0;
        if (w->have_model) hb = w->cfg.cluster.heartbeat_ms, timeout = w->cfg.cluster.timeout_ms;
        zmq_pollitem_t it[3] = {{w->sock, 0, ZMQ_POLLIN, 0}, {w->peer, 0, ZMQ_POLLIN, 0},
                                {ser_netdiag_socket(w->diag), 0, ZMQ_POLLIN, 0}};
        int nit = w->peer ? 2 : 1;
        if (it[2].socket) it[nit++] = it[2];
        zmq_poll(it, nit, (long)(hb / 2 > 0 ? hb / 2 : 1));
        s_drain_peer(w);
        for (int k = 0; k < 16; k++) {
            ser_wire_msg m;
            char err[SER_ERR_LEN];
            int rc = ser_wire_recv(w->sock, 0, w->have_model ? w->job_id : NULL, &m, err);
            if (rc == SER_ETIMEDOUT) break;
            w->last_heard = ser_clock_now_ms();
            if (rc) {
                ser_log(SER_LL_WARNING, "worker %s: bad message dropped: %s", w->name, err);
                continue;
            }
            int done = 0, fail = 0;
            s_set_busy(w, 1);
            switch (m.env->type) {
            case SER__MSG_TYPE__MSG_WELCOME: fail = s_welcome(w, m.env) != SER_OK; break;
            case SER__MSG_TYPE__MSG_REFUSE:
                ser_log(SER_LL_ERROR, "worker %s: refused by the coordinator: %s", w->name,
                        m.env->text ? m.env->text : "");
                fail = 1;
                break;
            case SER__MSG_TYPE__MSG_SHUTDOWN: done = 1; break;
            case SER__MSG_TYPE__MSG_HEARTBEAT: break;
            default:
                if (!w->have_model) {
                    ser_log(SER_LL_WARNING, "worker %s: message type %d before WELCOME dropped", w->name, m.env->type);
                } else if (m.env->type == SER__MSG_TYPE__MSG_PARAMS) {
                    s_params(w, &m);
                } else if (m.env->type == SER__MSG_TYPE__MSG_FORWARD) {
                    ser_wire_fault_kill(m.env->type, m.env->step);
                    s_forward(w, m.env);
                } else if (m.env->type == SER__MSG_TYPE__MSG_BACKWARD) {
                    ser_wire_fault_kill(m.env->type, m.env->step);
                    s_backward(w, &m);
                } else if (m.env->type == SER__MSG_TYPE__MSG_ROUTE) {
                    s_route(w, m.env);
                } else if (m.env->type == SER__MSG_TYPE__MSG_PARAMS_CHUNK) {
                    s_params_chunk(w, &m);
                } else if (m.env->type == SER__MSG_TYPE__MSG_REDUCE) {
                    ser_wire_fault_kill(m.env->type, m.env->step);
                    s_reduce_task(w, m.env);
                } else {
                    ser_log(SER_LL_WARNING, "worker %s: unexpected message type %d dropped", w->name, m.env->type);
                }
            }
            s_set_busy(w, 0);
            ser_wire_msg_free(&m);
            if (fail) return 1;
            if (done) {
                ser_log(SER_LL_INFO, "worker %s: job over", w->name);
                return 0;
            }
            if (w->have_model && !w->capped) {
                // The first WELCOME sized the job's frames: the socket is made again with that
                // limit (ZMQ_MAXMSGSIZE holds for connections made after it is set). Its HELLO
                // carries the config hash: the coordinator knows the worker and logs no second
                // join; anything it sent meanwhile is sent again (the worker holds nothing).
                ser_log(SER_LL_DEBUG, "worker %s: reconnecting with frames up to %lld bytes",
                        w->name, (long long)s_max_frame(w));
                if (s_connect(w)) return 1;
                break;
            }
        }
        // The connection's monitor: after the messages (a SHUTDOWN before its disconnect).
        ser_netdiag_drain(w->diag);
        // After draining what queued up (during a long task too): heartbeat, then judge silence.
        int64_t now = ser_clock_now_ms();
        if (w->have_model && now - w->last_sent >= hb) {
            Ser__Envelope e;
            s_env(w, &e, SER__MSG_TYPE__MSG_HEARTBEAT);
            // Idle only with nothing queued (the drain above stops after 16 messages): the
            // coordinator resends what an idle worker has not answered.
            int events = 0;
            size_t esz = sizeof events;
            zmq_getsockopt(w->sock, ZMQ_EVENTS, &events, &esz);
            e.text = (char *)((events & ZMQ_POLLIN) ? "busy" : "idle");
            // What it holds, so that the coordinator tells parameters still on the way (a
            // slow link) from a lost task, and does not queue a second copy behind the first.
            int whole = w->params_version >= 0 &&
                        (!w->v.has_teacher || w->teacher_version == w->params_version);
            e.holds_params = whole ? (uint64_t)w->params_version + 1 : 0;
            s_send(w, &e, NULL, 0);
        }
        if (now - w->last_heard > timeout) {
            // A connection that never came up has its cause in the log already (and again
            // every SER_NETDIAG_REPEAT_MS); otherwise the silence is named with what is known.
            char why[400];
            int st = ser_netdiag_describe(w->diag, why, sizeof why);
            ser_log(st == SER_NETDIAG_DOWN_LOGGED ? SER_LL_DEBUG : SER_LL_WARNING,
                    "worker %s: coordinator silent for %lld ms%s%s%s; reconnecting to %s", w->name,
                    (long long)(now - w->last_heard), why[0] ? " (" : "", why, why[0] ? ")" : "",
                    w->endpoint);
            if (s_connect(w)) return 1;
        }
    }
}

// s_serve, then the connection's monitor goes: its socket must be closed before zmq_ctx_term.
static int s_run(s_worker *w) {
    int rc = s_serve(w);
    ser_netdiag_destroy(&w->diag);
    return rc;
}

static void s_usage(FILE *f) {
    fprintf(f, "usage: ser worker --coordinator tcp://HOST:PORT (--loader EP[,EP...] | --batch-file B)\n"
               "                  [--name N] [--peer-bind tcp://ADDR:PORT] [--log-level L | --quiet]\n"
               "  Computes shards for the coordinator until it shuts the job down. The job's\n"
               "  configuration comes from the coordinator. Data: each shard from the data-loader\n"
               "  services at EP (tcp://HOST:PORT, comma-separated), or the global batch of every\n"
               "  step from a batch file (docs/step-format.md; the reference/testing path).\n"
               "  CURVE (a worker has no job file): SER_CURVE_KEY=FILE (its keypair, `ser keygen`),\n"
               "  SER_CURVE_SERVER_KEY=FILE.pub (the servers' public key when it is not the same\n"
               "  keypair's).\n"
               "  --peer-bind: where other workers reach this one with the running gradient sum\n"
               "  (cluster.reduce = chain; default: the loopback when the coordinator is there, else\n"
               "  every interface at an ephemeral port, announced at the address the coordinator\n"
               "  sees). PORT may be *.\n"
               "  --log-level L: error|warning|info|debug (info); --quiet: warning.\n"
               "  Exit status: 0 job ended or SIGINT/SIGTERM, 1 failed, 2 bad option.\n");
}

int ser_cmd_worker(int argc, char **argv) {
    s_worker w;
    memset(&w, 0, sizeof w);
    char name[64];
    snprintf(name, sizeof name, "w%d", (int)getpid());
    w.name = name;
    static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                          {"batch-file", required_argument, 0, 'b'},
                                          {"loader", required_argument, 0, 'l'},
                                          {"name", required_argument, 0, 'n'},
                                          {"peer-bind", required_argument, 0, 'p'},
                                          {"log-level", required_argument, 0, 'L'},
                                          {"quiet", no_argument, 0, 'q'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': w.endpoint = optarg; break;
        case 'b': w.batch_file = optarg; break;
        case 'l': w.loader = optarg; break;
        case 'n':
            if (!ser_wire_identity_ok(optarg, strlen(optarg))) {
                fprintf(stderr, "ser worker: --name '%s': must be 1 to %d printable ASCII "
                        "characters without spaces (it is the worker's ZeroMQ identity)\n", optarg,
                        SER_WIRE_MAX_IDENTITY - 1);
                return 2;
            }
            w.name = optarg;
            break;
        case 'p':
            if (strncmp(optarg, "tcp://", 6) || strlen(optarg) >= 128) {
                fprintf(stderr, "ser worker: --peer-bind '%s': want tcp://ADDRESS:PORT (PORT may "
                        "be *)\n", optarg);
                return 2;
            }
            w.peer_bind = optarg;
            break;
        case 'L':
            if (ser_log_parse_level(optarg) < 0) {
                fprintf(stderr, "ser worker: --log-level '%s': want error|warning|info|debug\n",
                        optarg);
                return 2;
            }
            ser_log_set_level(ser_log_parse_level(optarg));
            break;
        case 'q': ser_log_set_level(SER_LL_WARNING); break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (!w.endpoint || !w.batch_file == !w.loader || optind != argc) {
        s_usage(stderr);
        return 2;
    }
    // A malformed endpoint is a usage error, named before anything connects.
    char eerr[SER_ERR_LEN];
    const char *bad = ser_netdiag_check_endpoint(w.endpoint, eerr)                   ? "--coordinator"
                      : w.loader && ser_netdiag_check_endpoints(w.loader, eerr) ? "--loader"
                                                                                  : NULL;
    if (bad) {
        fprintf(stderr, "ser worker: %s: %s\n", bad, eerr);
        return 2;
    }
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    char cerr[SER_ERR_LEN];
    if (ser_curve_setup_env(cerr)) {  // a worker has no job file: its keys come from the environment
        fprintf(stderr, "ser worker: %s\n", cerr);
        return 2;
    }
    w.ctx = zmq_ctx_new();
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    pthread_create(&w.heart, NULL, s_heart, &w);
    int status = s_connect(&w) ? 1 : s_run(&w);
    pthread_mutex_lock(&w.mu);
    w.quit = 1;
    pthread_cond_signal(&w.cv);
    pthread_mutex_unlock(&w.mu);
    pthread_join(w.heart, NULL);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (w.sock) zmq_close(w.sock);
    if (w.peer) zmq_close(w.peer);
    for (int i = 0; i < w.nlink; i++) zmq_close(w.link[i].sock);
    for (int i = 0; i < S_MAX_REDUCE; i++) s_reduce_free(&w.red[i]);
    free(w.chunk), free(w.bc_got), free(w.bc_fwd[0]), free(w.bc_fwd[1]), free(w.bc_tasks);
    zmq_ctx_term(w.ctx);
    for (int s = 0; w.sh && s < w.S; s++) {
        s_wshard *sh = &w.sh[s];
        ser_engine_free(&sh->eng);
        ser_gathered_free(&sh->g);
        free(sh->ids);
        for (int v = 0; v < 2; v++) {
            free(sh->inv[v]);
            for (int q = 0; sh->eq[v] && q < sh->neq_cap; q++) free(sh->eq[v][q]);
            free(sh->eq[v]), free(sh->gel[v]);
            for (int q = 0; sh->lpair[v] && q < sh->nlp_cap; q++) free(sh->lpair[v][q]);
            free(sh->lpair[v]), free(sh->lgel[v]);
        }
        for (int k = 0; k < SER_MAX_LOCAL; k++) free(sh->local[k]);
        free(sh->vparams);
        free(sh->kept);
    }
    ser_dl_client_destroy(&w.dl);
    free(w.sh);
    ser_batchfile_free(&w.bf);
    if (w.have_model) ser_backbones_free(&w.v);
    return status;
}
