// ser_wire.c — see ser_wire.h.
#include "ser_wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static uint64_t s_sent, s_received;  // bytes of frames, this process

void ser_wire_bytes(uint64_t *sent, uint64_t *received) {
    *sent = s_sent, *received = s_received;
}

static int s_send_frame(void *sock, const void *data, size_t n, int more) {
    for (;;) {
        if (zmq_send(sock, data, n, more ? ZMQ_SNDMORE : 0) >= 0) return s_sent += n, SER_OK;
        if (errno != EINTR) return SER_EIO;
    }
}

// --- fault plan ----------------------------------------------------------------------------
enum { F_DROP = 1, F_DUP, F_DELAY, F_KILL, F_NAN, F_BAD };
// The loader's reply (loader.proto's LoaderShard), not an Envelope type: only `bad` acts on it.
enum { S_TYPE_LOADER_SHARD = 1 << 20 };
typedef struct s_fault {
    int action, type, ms, fired;
    uint64_t step;
} s_fault;
static s_fault s_faults[16];
static int s_nfaults = -1;

static int s_type_of(const char *name) {
    if (!strcmp(name, "LOADER_SHARD")) return S_TYPE_LOADER_SHARD;
    const ProtobufCEnumDescriptor *d = &ser__msg_type__descriptor;
    char full[64];
    snprintf(full, sizeof full, "MSG_%s", name);
    for (unsigned i = 0; i < d->n_values; i++)
        if (strcmp(d->values[i].name, full) == 0) return d->values[i].value;
    return -1;
}

static const char *s_type_name(int type) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&ser__msg_type__descriptor, type);
    return v ? v->name + 4 : "?";  // without MSG_
}

static void s_fault_parse(void) {
    if (s_nfaults >= 0) return;
    s_nfaults = 0;
    const char *env = getenv("SER_FAULT");
    if (!env || !*env) return;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", env);
    for (char *save = NULL, *r = strtok_r(buf, ";", &save); r; r = strtok_r(NULL, ";", &save)) {
        if (s_nfaults == (int)(sizeof s_faults / sizeof s_faults[0])) {
            ser_log(SER_LL_ERROR, "SER_FAULT: more than %d rules; '%s' and the rest ignored",
                    s_nfaults, r);
            break;
        }
        char act[16] = "", type[32] = "";
        unsigned long long step = 0;
        int ms = 0, used = 0, n = sscanf(r, "%15[a-z]:%31[A-Z_]@%llu%n:%d%n", act, type, &step, &used,
                                         &ms, &used);
        s_fault f = {0, s_type_of(type), ms, 0, step};
        f.action = !strcmp(act, "drop") ? F_DROP : !strcmp(act, "dup") ? F_DUP
                   : !strcmp(act, "delay") ? F_DELAY : !strcmp(act, "kill") ? F_KILL
                   : !strcmp(act, "nan") ? F_NAN : !strcmp(act, "bad") ? F_BAD : 0;
        // The whole rule must be read: "drop:PARAMS@3x" or a delay on another action is an error.
        if (n < 3 || !f.action || f.type < 0 || r[used] != 0 || (f.action == F_DELAY) != (n == 4) ||
            ms < 0 || (f.action == F_BAD) != (f.type == S_TYPE_LOADER_SHARD)) {
            ser_log(SER_LL_ERROR, "SER_FAULT: rule '%s' ignored (see proto/ser_wire.h)", r);
            continue;
        }
        s_faults[s_nfaults++] = f;
        ser_log(SER_LL_WARNING, "SER_FAULT: %s armed", r);
    }
}

// The send-side rule for this message, fired (returns its action) or 0.
static int s_fault_send(const Ser__Envelope *env, int *ms) {
    s_fault_parse();
    for (int i = 0; i < s_nfaults; i++) {
        s_fault *f = &s_faults[i];
        if (f->fired || f->action == F_KILL || f->type != (int)env->type || f->step != env->step)
            continue;
        f->fired = 1;
        *ms = f->ms;
        ser_log(SER_LL_WARNING, "SER_FAULT: %s %s of step %llu",
                f->action == F_DROP ? "dropping" : f->action == F_DUP ? "duplicating"
                : f->action == F_NAN ? "poisoning (NaN)" : "delaying",
                s_type_name(f->type), (unsigned long long)f->step);
        return f->action;
    }
    return 0;
}

int ser_wire_fault_bad_loader_shard(uint64_t step) {
    s_fault_parse();
    for (int i = 0; i < s_nfaults; i++) {
        s_fault *f = &s_faults[i];
        if (f->fired || f->action != F_BAD || f->step != step) continue;
        f->fired = 1;
        ser_log(SER_LL_WARNING, "SER_FAULT: sending a bad LOADER_SHARD of step %llu",
                (unsigned long long)step);
        return 1;
    }
    return 0;
}

int ser_wire_fault_nan(int type, uint64_t step) {
    s_fault_parse();
    for (int i = 0; i < s_nfaults; i++) {
        s_fault *f = &s_faults[i];
        if (f->fired || f->action != F_NAN || f->type != type || f->step != step) continue;
        f->fired = 1;
        ser_log(SER_LL_WARNING, "SER_FAULT: poisoning (NaN) the data of %s of step %llu",
                s_type_name(type), (unsigned long long)step);
        return 1;
    }
    return 0;
}

void ser_wire_fault_kill(int type, uint64_t step) {
    s_fault_parse();
    for (int i = 0; i < s_nfaults; i++)
        if (s_faults[i].action == F_KILL && s_faults[i].type == type && s_faults[i].step == step) {
            ser_log(SER_LL_WARNING, "SER_FAULT: killing this process (on %s of step %llu)",
                    s_type_name(type), (unsigned long long)step);
            raise(SIGKILL);
        }
}

static int s_send_once(void *sock, const char *identity, Ser__Envelope *env,
                       const ser_wire_tensor *t, int n);

int ser_wire_send(void *sock, const char *identity, Ser__Envelope *env, const ser_wire_tensor *t,
                  int n) {
    int ms = 0, action = s_fault_send(env, &ms);
    if (action == F_DROP) return SER_OK;
    if (action == F_DELAY) {
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    ser_wire_tensor poisoned[SER_WIRE_MAX_TENSORS];
    float *copy = NULL;
    if (action == F_NAN && n > 0) {  // the first tensor's first element becomes NaN (a copy)
        size_t numel = 1;
        for (int d = 0; d < t[0].ndim; d++) numel *= (size_t)t[0].shape[d];
        if (numel) {
            memcpy(poisoned, t, sizeof(ser_wire_tensor) * (size_t)n);
            copy = ser_xaligned(sizeof(float) * numel);
            memcpy(copy, t[0].data, sizeof(float) * numel);
            copy[0] = NAN;
            poisoned[0].data = copy;
            t = poisoned;
        }
    }
    int rc = s_send_once(sock, identity, env, t, n);
    free(copy);
    if (!rc && action == F_DUP) rc = s_send_once(sock, identity, env, t, n);
    return rc;
}

static int s_send_once(void *sock, const char *identity, Ser__Envelope *env,
                       const ser_wire_tensor *t, int n) {
    SER_ASSERT(n >= 0 && n <= SER_WIRE_MAX_TENSORS);
    Ser__TensorMeta meta[SER_WIRE_MAX_TENSORS], *mp[SER_WIRE_MAX_TENSORS];
    int64_t shapes[SER_WIRE_MAX_TENSORS][4];
    for (int i = 0; i < n; i++) {
        ser__tensor_meta__init(&meta[i]);
        memcpy(&meta[i].name, &t[i].name, sizeof meta[i].name);  // protobuf-c wants char *
        meta[i].dtype = SER__DTYPE__DTYPE_F32;
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) shapes[i][d] = t[i].shape[d], numel *= (size_t)t[i].shape[d];
        meta[i].n_shape = (size_t)t[i].ndim;
        meta[i].shape = shapes[i];
        meta[i].nbytes = numel * sizeof(float);
        mp[i] = &meta[i];
    }
    env->protocol_version = SER_PROTOCOL_VERSION;
    env->n_tensors = (size_t)n;
    env->tensors = mp;
    size_t len = ser__envelope__get_packed_size(env);
    uint8_t *buf = ser_xmalloc(len ? len : 1);
    ser__envelope__pack(env, buf);
    int rc = SER_OK;
    if (identity) rc = s_send_frame(sock, identity, strlen(identity), 1);
    if (!rc) rc = s_send_frame(sock, buf, len, n > 0);
    for (int i = 0; i < n && !rc; i++) rc = s_send_frame(sock, t[i].data, meta[i].nbytes, i < n - 1);
    free(buf);
    env->n_tensors = 0;
    env->tensors = NULL;
    return rc;
}

static int s_more(void *sock) {
    int more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    return more;
}

// Discards the rest of a multipart message.
static void s_drain(void *sock) {
    while (s_more(sock)) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        zmq_msg_recv(&f, sock, 0);
        zmq_msg_close(&f);
    }
}

static int s_bad(void *sock, char *err, int rc, const char *fmt, ...) SER_FMT(4, 5);
static int s_bad(void *sock, char *err, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, SER_ERR_LEN, fmt, ap);
    va_end(ap);
    s_drain(sock);
    return rc;
}

static int s_varint(const uint8_t *b, size_t n, size_t *i, uint64_t *v) {
    *v = 0;
    for (int sh = 0; sh < 64 && *i < n; sh += 7) {
        uint8_t c = b[(*i)++];
        *v |= (uint64_t)(c & 0x7f) << sh;
        if (!(c & 0x80)) return 1;
    }
    return 0;
}

static int s_in(uint32_t f, const uint32_t *set, int n) {
    for (int k = 0; k < n; k++)
        if (set[k] == f) return 1;
    return 0;
}

int ser_wire_pb_strings_ok(const uint8_t *b, size_t n, const uint32_t *strs, int ns,
                           uint32_t nested, const uint32_t *nstrs, int nns) {
    size_t i = 0;
    while (i < n) {
        uint64_t key, v;
        if (!s_varint(b, n, &i, &key)) return 0;
        uint32_t field = (uint32_t)(key >> 3), wt = (uint32_t)(key & 7);
        if (wt == 0) {
            if (!s_varint(b, n, &i, &v)) return 0;
        } else if (wt == 1 || wt == 5) {
            size_t w = wt == 1 ? 8 : 4;
            if (n - i < w) return 0;
            i += w;
        } else if (wt == 2) {
            if (!s_varint(b, n, &i, &v) || v > n - i) return 0;
            const uint8_t *d = b + i;
            if (s_in(field, strs, ns) && memchr(d, 0, (size_t)v)) return 0;
            if (nested && field == nested &&
                !ser_wire_pb_strings_ok(d, (size_t)v, nstrs, nns, 0, NULL, 0))
                return 0;
            i += (size_t)v;
        } else {
            return 0;  // groups (3, 4) are not used by these messages; 6, 7 do not exist
        }
    }
    return 1;
}

int ser_wire_identity_ok(const char *id, size_t n) {
    if (n == 0 || n >= SER_WIRE_MAX_IDENTITY) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] <= 0x20 || (unsigned char)id[i] >= 0x7f) return 0;
    return 1;
}

int ser_wire_recv(void *sock, int router, const char *job_id, ser_wire_msg *m,
                  char err[SER_ERR_LEN]) {
    memset(m, 0, sizeof *m);
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&f);
        return errno == EAGAIN || errno == EINTR ? SER_ETIMEDOUT : SER_EIO;
    }
    if (router) {
        size_t n = zmq_msg_size(&f);
        if (n == 0 || n >= SER_WIRE_MAX_IDENTITY || !s_more(sock)) {
            zmq_msg_close(&f);
            return s_bad(sock, err, SER_EFORMAT, "bad peer identity frame (%zu bytes)", n);
        }
        // Identities are compared as C strings, so one with a NUL byte ("w0\\0x") would pass
        // for another peer ("w0"), and ZeroMQ's generated ones start with a NUL: only
        // printable ASCII is accepted (workers name themselves; ser_wire_identity_ok).
        const uint8_t *id = zmq_msg_data(&f);
        int ok = ser_wire_identity_ok((const char *)id, n);
        for (size_t i = 0; i < n; i++)  // a printable rendering for the log either way
            m->identity[i] = id[i] > 0x20 && id[i] < 0x7f ? (char)id[i] : '?';
        m->identity[n] = 0;
        zmq_msg_close(&f);
        if (!ok)
            return s_bad(sock, err, SER_EPEER,
                         "peer identity with a byte that is not printable ASCII (a NUL or a "
                         "control byte; ZeroMQ's generated identities start with a NUL): refused");
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            return SER_EIO;
        }
    }
    int more = s_more(sock);
    s_received += zmq_msg_size(&f);
    const char *peer = zmq_msg_gets(&f, "Peer-Address");  // on the data frames; TCP only
    if (peer) snprintf(m->peer, sizeof m->peer, "%s", peer);
    // Envelope strings: job_id (2), text (8), peer_endpoint (14), peer_key (15), next_endpoint
    // (19), next_key (20), next2_endpoint (23), next2_key (24); TensorMeta (7) name (1).
    static const uint32_t env_strs[8] = {2, 8, 14, 15, 19, 20, 23, 24}, meta_strs[1] = {1};
    if (!ser_wire_pb_strings_ok(zmq_msg_data(&f), zmq_msg_size(&f), env_strs, 8, 7, meta_strs, 1)) {
        zmq_msg_close(&f);
        return s_bad(sock, err, SER_EFORMAT,
                     "envelope with a NUL byte in a string (job id, text or tensor name), or "
                     "that does not parse: refused");
    }
    m->env = ser__envelope__unpack(NULL, zmq_msg_size(&f), zmq_msg_data(&f));
    zmq_msg_close(&f);
    if (!m->env) return s_bad(sock, err, SER_EFORMAT, "envelope does not unpack");
    Ser__Envelope *e = m->env;
    int rc = SER_OK;
    if (e->protocol_version != SER_PROTOCOL_VERSION) {
        rc = SER_EVERSION;
        snprintf(err, SER_ERR_LEN, "protocol version %u (this build speaks %d)", e->protocol_version,
                 SER_PROTOCOL_VERSION);
    } else if (job_id && strcmp(e->job_id ? e->job_id : "", job_id) != 0) {
        rc = SER_EPEER;
        snprintf(err, SER_ERR_LEN, "job id '%s' (this job is '%s')", e->job_id ? e->job_id : "",
                 job_id);
    } else if (e->n_tensors > SER_WIRE_MAX_TENSORS) {
        rc = SER_EFORMAT;
        snprintf(err, SER_ERR_LEN, "%zu tensors (at most %d)", e->n_tensors, SER_WIRE_MAX_TENSORS);
    }
    if (rc) {
        s_drain(sock);
        ser_wire_msg_free(m);
        return rc;
    }
    zmq_msg_t *frames = ser_xcalloc(e->n_tensors + 1, sizeof(zmq_msg_t));
    m->frames = frames;
    for (size_t i = 0; i < e->n_tensors; i++) {
        const Ser__TensorMeta *t = e->tensors[i];
        size_t numel = 1;
        int ok = t->dtype == SER__DTYPE__DTYPE_F32 && t->n_shape <= 4 && t->name;
        for (size_t d = 0; ok && d < t->n_shape; d++) {
            ok = t->shape[d] >= 0 && t->shape[d] < ((int64_t)1 << 40);
            numel *= ok ? (size_t)t->shape[d] : 0;
        }
        ok = ok && numel < ((size_t)1 << 40) && t->nbytes == numel * sizeof(float);
        if (!ok || !more) {
            rc = SER_EFORMAT;
            snprintf(err, SER_ERR_LEN, "tensor %zu ('%s'): %s", i, t->name ? t->name : "?",
                     !more ? "frame missing" : "bad dtype, shape or size");
            break;
        }
        zmq_msg_init(&frames[i]);
        m->n = (int)i + 1;
        if (zmq_msg_recv(&frames[i], sock, 0) < 0) {
            rc = SER_EIO;
            snprintf(err, SER_ERR_LEN, "receiving tensor frame %zu failed", i);
            break;
        }
        more = s_more(sock);
        s_received += zmq_msg_size(&frames[i]);
        if (zmq_msg_size(&frames[i]) != t->nbytes) {
            rc = SER_EFORMAT;
            snprintf(err, SER_ERR_LEN, "tensor '%s': frame of %zu bytes, metadata says %llu",
                     t->name, zmq_msg_size(&frames[i]), (unsigned long long)t->nbytes);
            break;
        }
    }
    if (!rc && more) {
        rc = SER_EFORMAT;
        snprintf(err, SER_ERR_LEN, "more frames than the %zu tensors announced", e->n_tensors);
    }
    if (rc) {
        s_drain(sock);
        ser_wire_msg_free(m);
    }
    return rc;
}

void ser_wire_msg_free(ser_wire_msg *m) {
    if (!m) return;
    zmq_msg_t *frames = m->frames;
    for (int i = 0; i < m->n; i++) zmq_msg_close(&frames[i]);
    free(frames);
    if (m->env) ser__envelope__free_unpacked(m->env, NULL);
    memset(m, 0, sizeof *m);
}

const float *ser_wire_find(const ser_wire_msg *m, const char *name, size_t numel) {
    zmq_msg_t *frames = m->frames;
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->env->tensors[i]->name, name) == 0) {
            if (zmq_msg_size(&frames[i]) != numel * sizeof(float)) return NULL;
            return zmq_msg_data(&frames[i]);
        }
    return NULL;
}
