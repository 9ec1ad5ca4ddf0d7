// ser_wire.c — see ser_wire.h.
#include "ser_wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static int s_send_frame(void *sock, const void *data, size_t n, int more) {
    for (;;) {
        if (zmq_send(sock, data, n, more ? ZMQ_SNDMORE : 0) >= 0) return SER_OK;
        if (errno != EINTR) return SER_EIO;
    }
}

int ser_wire_send(void *sock, const char *identity, Ser__Envelope *env, const ser_wire_tensor *t,
                  int n) {
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
        memcpy(m->identity, zmq_msg_data(&f), n);
        m->identity[n] = 0;
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            return SER_EIO;
        }
    }
    int more = s_more(sock);
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
