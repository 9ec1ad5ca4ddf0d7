// ser_curve.c — see ser_curve.h.
#include "ser_curve.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define S_KEY 41      // a Z85 key and its NUL
#define S_ALLOW 1024  // keys in an allow-list

static struct {
    int on, plaintext;
    char pub[S_KEY], sec[S_KEY], server[S_KEY];
    char allow[S_ALLOW][S_KEY];
    int nallow;
} s_k;

// Reads "public <z85>" / "secret <z85>" lines (or a bare z85 public key per line) of path.
static int s_read_keys(const char *path, char *pub, char *sec, char (*more)[S_KEY], int *nmore,
                       char *err) {
    FILE *f = fopen(path, "r");
    if (!f) return ser_errf(err, SER_EIO, "CURVE key file %s: %s", path, strerror(errno));
    char line[256];
    int n = 0, rc = SER_OK;
    while (fgets(line, sizeof line, f) && !rc) {
        n++;
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        char word[16] = "public", key[64] = "";  // "public KEY", "secret KEY" or a bare KEY
        if (strchr(line, ' ')) {
            if (sscanf(line, "%15s %63s", word, key) != 2) key[0] = 0;
        } else {
            snprintf(key, sizeof key, "%.63s", line);
        }
        uint8_t raw[32];
        if (strlen(key) != 40 || !zmq_z85_decode(raw, key)) {
            rc = ser_errf(err, SER_EINVAL, "CURVE key file %s line %d: not a 40-character Z85 key",
                          path, n);
        } else if (!strcmp(word, "secret") && sec) {
            snprintf(sec, S_KEY, "%s", key);
        } else if (!strcmp(word, "public")) {
            if (pub && !pub[0]) snprintf(pub, S_KEY, "%s", key);
            else if (more && *nmore < S_ALLOW) snprintf(more[(*nmore)++], S_KEY, "%s", key);
        } else {
            rc = ser_errf(err, SER_EINVAL, "CURVE key file %s line %d: expected 'public KEY' or "
                          "'secret KEY'", path, n);
        }
    }
    fclose(f);
    return rc;
}

int ser_curve_keygen(const char *path, char err[SER_ERR_LEN]) {
    char pub[S_KEY], sec[S_KEY], pubpath[1100];
    if (zmq_curve_keypair(pub, sec) != 0)
        return ser_errf(err, SER_ENOTSUP, "this libzmq has no CURVE: %s", zmq_strerror(zmq_errno()));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return ser_errf(err, SER_EIO, "cannot create %s: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "w");
    int bad = !f || fprintf(f, "public %s\nsecret %s\n", pub, sec) < 0;
    if (f) bad |= fclose(f) != 0;
    snprintf(pubpath, sizeof pubpath, "%s.pub", path);
    FILE *p = bad ? NULL : fopen(pubpath, "w");
    bad |= !p || fprintf(p, "public %s\n", pub) < 0;
    if (p) bad |= fclose(p) != 0;
    if (bad) {
        unlink(path), unlink(pubpath);
        return ser_errf(err, SER_EIO, "cannot write %s / %s", path, pubpath);
    }
    return SER_OK;
}

static const char *s_pick(const char *cfg, const char *env) {
    if (cfg && cfg[0]) return cfg;
    const char *e = getenv(env);
    return e && e[0] ? e : NULL;
}

static int s_setup(const char *key, const char *server, const char *allow, int plaintext,
                   char *err) {
    memset(&s_k, 0, sizeof s_k);
    s_k.plaintext = plaintext;
    if (!key) {
        if (server || allow)
            return ser_errf(err, SER_ECONFIG, "cluster.curve_server_key / curve_allow need "
                            "cluster.curve_key (this process's keypair)");
        return SER_OK;
    }
    if (!zmq_has("curve")) return ser_errf(err, SER_ENOTSUP, "this libzmq has no CURVE support");
    int rc = s_read_keys(key, s_k.pub, s_k.sec, NULL, NULL, err);
    if (!rc && (!s_k.pub[0] || !s_k.sec[0]))
        rc = ser_errf(err, SER_EINVAL, "CURVE key file %s: needs both a public and a secret line "
                      "(write one with `ser keygen`)", key);
    if (!rc && server) {
        char sp[S_KEY] = "";
        if (!(rc = s_read_keys(server, sp, NULL, NULL, NULL, err))) {
            if (!sp[0]) rc = ser_errf(err, SER_EINVAL, "CURVE server key file %s: no public key", server);
            snprintf(s_k.server, S_KEY, "%s", sp);
        }
    } else if (!rc) {
        snprintf(s_k.server, S_KEY, "%s", s_k.pub);
    }
    if (!rc && allow) {
        char first[S_KEY] = "";
        if (!(rc = s_read_keys(allow, first, NULL, s_k.allow + 1, &s_k.nallow, err))) {
            if (!first[0]) rc = ser_errf(err, SER_EINVAL, "CURVE allow-list %s: no key", allow);
            snprintf(s_k.allow[0], S_KEY, "%s", first);
            s_k.nallow++;
        }
    } else if (!rc) {
        snprintf(s_k.allow[0], S_KEY, "%s", s_k.pub);
        s_k.nallow = 1;
    }
    if (rc) {
        memset(&s_k, 0, sizeof s_k);
        return rc;
    }
    s_k.on = 1;
    return SER_OK;
}

// The job's [cluster] keys (c), each falling back to its environment variable; c NULL: the
// environment alone.
static int s_setup_from(const ser_config_cluster *c, char *err) {
    const char *pt = getenv("SER_PLAINTEXT");
    return s_setup(s_pick(c ? c->curve_key : NULL, "SER_CURVE_KEY"),
                   s_pick(c ? c->curve_server_key : NULL, "SER_CURVE_SERVER_KEY"),
                   s_pick(c ? c->curve_allow : NULL, "SER_CURVE_ALLOW"),
                   (c && c->plaintext) || (pt && !strcmp(pt, "1")), err);
}

int ser_curve_setup(const ser_config *cfg, char err[SER_ERR_LEN]) {
    return s_setup_from(&cfg->cluster, err);
}

int ser_curve_setup_env(char err[SER_ERR_LEN]) { return s_setup_from(NULL, err); }

int ser_curve_on(void) { return s_k.on; }

// The ZAP handler (RFC 27) of one context: allows the CURVE clients whose key is listed.
static void *s_zap(void *sock) {
    for (;;) {
        zmq_msg_t part[8];
        int n = 0, more = 1;
        while (more && n < 8) {
            zmq_msg_init(&part[n]);
            if (zmq_msg_recv(&part[n], sock, 0) < 0) {
                for (int i = 0; i <= n; i++) zmq_msg_close(&part[i]);
                zmq_close(sock);  // the context is terminating
                return NULL;
            }
            more = zmq_msg_more(&part[n]);
            n++;
        }
        const char *status = "400", *text = "key not in cluster.curve_allow";
        char z85[S_KEY] = "?";
        if (n >= 7 && zmq_msg_size(&part[5]) == 5 && !memcmp(zmq_msg_data(&part[5]), "CURVE", 5) &&
            zmq_msg_size(&part[6]) == 32) {
            zmq_z85_encode(z85, zmq_msg_data(&part[6]), 32);
            for (int i = 0; i < s_k.nallow; i++)
                if (!strcmp(z85, s_k.allow[i])) status = "200", text = "OK";
        }
        if (strcmp(status, "200"))
            ser_log(SER_LL_WARNING, "CURVE: refused a client with key %s (not in the allow-list)", z85);
        zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(sock, n > 1 ? zmq_msg_data(&part[1]) : "", n > 1 ? zmq_msg_size(&part[1]) : 0,
                 ZMQ_SNDMORE);
        zmq_send(sock, status, 3, ZMQ_SNDMORE);
        zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(sock, "", 0, ZMQ_SNDMORE);
        zmq_send(sock, "", 0, 0);
        while (more) {  // a malformed request longer than 8 frames: drain it
            zmq_msg_t x;
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, sock, 0) < 0) more = 0;
            else more = zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
        for (int i = 0; i < n; i++) zmq_msg_close(&part[i]);
    }
}

static int s_local(const char *ep) {
    return !strncmp(ep, "inproc://", 9) || !strncmp(ep, "ipc://", 6) ||
           !strncmp(ep, "tcp://127.", 10) || !strncmp(ep, "tcp://localhost:", 16) ||
           !strncmp(ep, "tcp://[::1]:", 12);
}

int ser_curve_server(void *ctx, void *sock, const char *endpoint, char err[SER_ERR_LEN]) {
    if (!s_k.on) {
        if (s_local(endpoint) || s_k.plaintext) return SER_OK;
        return ser_errf(err, SER_EPEER, "refusing plaintext on %s, off the loopback: give the job "
                        "a key (ser keygen FILE; cluster.curve_key = FILE) or set "
                        "cluster.plaintext = true for a trusted network", endpoint);
    }
    // One ZAP handler per context: the inproc bind fails with EADDRINUSE when it exists.
    void *zap = zmq_socket(ctx, ZMQ_REP);
    int linger = 0;
    if (zap) zmq_setsockopt(zap, ZMQ_LINGER, &linger, sizeof linger);
    if (zap && zmq_bind(zap, "inproc://zeromq.zap.01") == 0) {
        pthread_t th;
        if (pthread_create(&th, NULL, s_zap, zap) != 0) {
            zmq_close(zap);
            return ser_errf(err, SER_EIO, "cannot start the CURVE authentication thread");
        }
        pthread_detach(th);
    } else if (zap) {
        zmq_close(zap);
    }
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s_k.sec, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "ser", 3) != 0)
        return ser_errf(err, SER_EIO, "CURVE server options: %s", zmq_strerror(zmq_errno()));
    return SER_OK;
}

const char *ser_curve_public(void) { return s_k.on ? s_k.pub : ""; }

int ser_curve_client_to(void *sock, const char *server_key, char err[SER_ERR_LEN]) {
    if (!s_k.on) return SER_OK;
    if (!server_key || strlen(server_key) != 40)
        return ser_errf(err, SER_EPEER, "the peer's CURVE public key is missing or not 40 Z85 "
                        "characters");
    uint8_t bin[32];
    if (!zmq_z85_decode(bin, server_key))
        return ser_errf(err, SER_EPEER, "the peer's CURVE public key is not Z85");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_key, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, s_k.pub, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s_k.sec, 40) != 0)
        return ser_errf(err, SER_EIO, "CURVE client options: %s", zmq_strerror(zmq_errno()));
    return SER_OK;
}

int ser_curve_client(void *sock, char err[SER_ERR_LEN]) {
    return ser_curve_client_to(sock, s_k.server, err);
}
