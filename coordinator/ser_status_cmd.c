// ser_status_cmd.c — `ser status HOST:PORT`: fetch /status and print it for a terminal.
//
// The client is a small blocking HTTP/1.1 GET over one TCP socket (non-blocking connect, then
// poll() against one deadline for connect, send and receive); the response is parsed with
// http-parser, the same library the server uses. No libcurl.
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <http_parser.h>

#include "ser_status.h"

#define S_MAX_RESPONSE (64u << 20)

// --- fetch -------------------------------------------------------------------------------------

static int64_t s_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// Splits "HOST:PORT", "[V6]:PORT", "PORT" or "http://HOST:PORT/..." into host and port.
static int s_split_hostport(const char *in, char *host, size_t hn, char *port, size_t pn) {
    if (strncmp(in, "http://", 7) == 0) in += 7;
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s", in);
    char *slash = strchr(tmp, '/');
    if (slash) *slash = '\0';
    const char *h = "127.0.0.1", *p = tmp;
    if (tmp[0] == '[') {
        char *close = strchr(tmp, ']');
        if (!close || close[1] != ':') return SER_EINVAL;
        *close = '\0';
        h = tmp + 1;
        p = close + 2;
    } else {
        char *colon = strrchr(tmp, ':');
        if (colon) {
            if (strchr(tmp, ':') != colon) return SER_EINVAL;  // a bare IPv6 address: use [...]
            *colon = '\0';
            h = tmp[0] ? tmp : "127.0.0.1";
            p = colon + 1;
        }
    }
    if (!p[0] || strspn(p, "0123456789") != strlen(p) || atoi(p) <= 0 || atoi(p) > 65535)
        return SER_EINVAL;
    if (strlen(h) >= hn || strlen(p) >= pn) return SER_EINVAL;
    memcpy(host, h, strlen(h) + 1);
    memcpy(port, p, strlen(p) + 1);
    return SER_OK;
}

// Waits for `events` on fd until deadline. Returns 1 ready, 0 timed out, -1 error.
static int s_wait(int fd, short events, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - s_mono_ms();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int rc = poll(&pfd, 1, (int)(left > 1000000 ? 1000000 : left));
        if (rc > 0) return 1;
        if (rc == 0) continue;
        if (errno != EINTR) return -1;
    }
}

// Connects to one of host's addresses before the deadline. Returns the fd or a negative code.
static int s_connect(const char *host, const char *port, int64_t deadline, char err[SER_ERR_LEN]) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, SER_ERR_LEN, "cannot resolve %.100s: %s", host, gai_strerror(gai));
        return SER_EPEER;
    }
    int rc = SER_EPEER, fd = -1;
    snprintf(err, SER_ERR_LEN, "cannot connect to %.100s:%s", host, port);
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int e = 0;
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            e = errno;
            if (e == EINPROGRESS) {
                int w = s_wait(fd, POLLOUT, deadline);
                if (w == 0) {
                    snprintf(err, SER_ERR_LEN, "connecting to %.100s:%s timed out", host, port);
                    rc = SER_ETIMEDOUT;
                    close(fd);
                    fd = -1;
                    break;
                }
                socklen_t len = sizeof e;
                if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) e = errno;
            }
        }
        if (e == 0) {
            rc = fd;
            break;
        }
        snprintf(
            err, SER_ERR_LEN, "cannot connect to %.100s:%s: %s%s", host, port, strerror(e),
            e == ECONNREFUSED ? " (is the coordinator running, with its status port on?)" : "");
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return rc;
}

typedef struct s_resp {
    char *body;
    size_t len, cap;
    int done, too_big;
} s_resp;

static int s_on_body(http_parser *p, const char *at, size_t len) {
    s_resp *r = p->data;
    if (r->len + len > S_MAX_RESPONSE) {
        r->too_big = 1;
        return 1;
    }
    if (r->len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + len + 1) cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb) return 1;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, at, len);
    r->len += len;
    return 0;
}

static int s_on_complete(http_parser *p) {
    s_resp *r = p->data;
    r->done = 1;
    return 0;
}

int ser_status_fetch(const char *hostport, const char *path, int timeout_ms, int *http_status,
                     char **body, size_t *body_len, char err[SER_ERR_LEN]) {
    char host[256], port[16];
    *body = NULL;
    *body_len = 0;
    *http_status = 0;
    if (!hostport || s_split_hostport(hostport, host, sizeof host, port, sizeof port) != SER_OK) {
        snprintf(err, SER_ERR_LEN, "bad address '%s': expected HOST:PORT",
                 hostport ? hostport : "");
        return SER_EINVAL;
    }
    int64_t deadline = s_mono_ms() + (timeout_ms > 0 ? timeout_ms : 5000);
    int fd = s_connect(host, port, deadline, err);
    if (fd < 0) return fd;

    int rc = SER_OK;
    s_resp r = {0};
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: ser-status\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n",
                     path, strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port);
    if (n <= 0 || (size_t)n >= sizeof req) {
        snprintf(err, SER_ERR_LEN, "request path too long");
        rc = SER_EINVAL;
        goto done;
    }
    for (size_t off = 0; off < (size_t)n;) {
        ssize_t w = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ok = s_wait(fd, POLLOUT, deadline);
            if (ok > 0) continue;
            rc = ok == 0 ? SER_ETIMEDOUT : SER_EPEER;
        } else {
            rc = SER_EPEER;
        }
        snprintf(err, SER_ERR_LEN, "sending to %.100s:%s %s", host, port,
                 rc == SER_ETIMEDOUT ? "timed out" : "failed");
        goto done;
    }

    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &r;
    http_parser_settings st;
    http_parser_settings_init(&st);
    st.on_body = s_on_body;
    st.on_message_complete = s_on_complete;
    char buf[16384];
    while (!r.done) {
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ok = s_wait(fd, POLLIN, deadline);
            if (ok > 0) continue;
            rc = ok == 0 ? SER_ETIMEDOUT : SER_EPEER;
            snprintf(err, SER_ERR_LEN, "%s from %.100s:%s",
                     ok == 0 ? "no complete response in time" : "read error", host, port);
            goto done;
        }
        if (got < 0) {
            rc = SER_EPEER;
            snprintf(err, SER_ERR_LEN, "reading from %.100s:%s: %s", host, port, strerror(errno));
            goto done;
        }
        // got == 0 is EOF; http-parser is told with a zero-length execute.
        size_t parsed = http_parser_execute(&p, &st, buf, (size_t)got);
        if (HTTP_PARSER_ERRNO(&p) != HPE_OK || parsed != (size_t)got) {
            rc = SER_EPEER;
            snprintf(
                err, SER_ERR_LEN, "bad response from %.100s:%s: %s", host, port,
                r.too_big ? "larger than 64 MiB" : http_errno_description(HTTP_PARSER_ERRNO(&p)));
            goto done;
        }
        if (got == 0 && !r.done) {
            rc = SER_EPEER;
            snprintf(err, SER_ERR_LEN, "%.100s:%s closed the connection before a full response",
                     host, port);
            goto done;
        }
    }
    if (!r.body) {
        r.body = malloc(1);
        if (!r.body) {
            rc = SER_ENOMEM;
            snprintf(err, SER_ERR_LEN, "out of memory");
            goto done;
        }
    }
    r.body[r.len] = '\0';
    *http_status = (int)p.status_code;
    *body = r.body;
    *body_len = r.len;
    r.body = NULL;
done:
    free(r.body);
    close(fd);
    return rc;
}

// --- format ------------------------------------------------------------------------------------

static double s_num(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : (double)NAN;
}

// A JSON number as an int when it is one (and in range), else dflt.
static int s_int(const cJSON *v, int dflt) {
    if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) < 1e9)) return dflt;
    return (int)v->valuedouble;
}

static const char *s_str(const cJSON *o, const char *name, const char *dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : dflt;
}

// "3h12m", "41s", "2d03h"; "-" when unknown.
static const char *s_dur(char out[32], double s) {
    if (!isfinite(s) || s < 0) return strcpy(out, "-");
    long long t = (long long)(s + 0.5);
    long long d = t / 86400, h = t % 86400 / 3600, m = t % 3600 / 60, r = t % 60;
    if (d)
        snprintf(out, 32, "%lldd%02lldh", d, h);
    else if (h)
        snprintf(out, 32, "%lldh%02lldm", h, m);
    else if (m)
        snprintf(out, 32, "%lldm%02llds", m, r);
    else if (s < 10 && s != (double)t)
        snprintf(out, 32, "%.1fs", s);
    else
        snprintf(out, 32, "%llds", r);
    return out;
}

// An age in ms as "41s ago" / "never".
static const char *s_ago(char out[40], double ms) {
    if (!isfinite(ms)) return strcpy(out, "never");
    char d[32];
    snprintf(out, 40, "%s ago", s_dur(d, ms / 1000.0));
    return out;
}

// A value in 5 significant digits, or "-" when unknown.
static const char *s_val(char out[32], double v) {
    if (!isfinite(v)) return strcpy(out, "-");
    snprintf(out, 32, "%.5g", v);
    return out;
}

char *ser_status_format(const char *json, size_t len, char err[SER_ERR_LEN]) {
    cJSON *doc = cJSON_ParseWithLength(json, len);
    if (!doc) {
        snprintf(err, SER_ERR_LEN, "the response is not JSON");
        return NULL;
    }
    const cJSON *co = cJSON_GetObjectItemCaseSensitive(doc, "coordinator");
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(doc, "training");
    const cJSON *wk = cJSON_GetObjectItemCaseSensitive(doc, "workers");
    const cJSON *da = cJSON_GetObjectItemCaseSensitive(doc, "data");
    if (!cJSON_IsObject(co) || !cJSON_IsObject(tr) || !cJSON_IsObject(wk) || !cJSON_IsObject(da)) {
        snprintf(err, SER_ERR_LEN,
                 "not a /status document (coordinator, training, workers "
                 "and data expected)");
        cJSON_Delete(doc);
        return NULL;
    }
    char *out = NULL;
    size_t out_len = 0;
    FILE *f = open_memstream(&out, &out_len);
    SER_ASSERT(f);
    char a[40], b[40], c[40];

    const char *name = s_str(co, "job_name", ""), *id = s_str(co, "job_id", "");
    fprintf(f, "job         %s%s%s%s   state %s   config %s   up %s\n", name, id[0] ? " (" : "", id,
            id[0] ? ")" : "", s_str(co, "state", "?"), s_str(co, "config_hash", "?"),
            s_dur(a, s_num(co, "uptime_s")));
    fprintf(f, "step        %.0f   epoch %s   phase %s\n", s_num(tr, "step"),
            s_val(a, s_num(tr, "epoch")), s_str(tr, "phase", "?"));
    const cJSON *losses = cJSON_GetObjectItemCaseSensitive(tr, "losses"), *t;
    fprintf(f, "losses     ");
    int nl = 0;
    cJSON_ArrayForEach(t, losses) {
        if (!t->string) continue;
        fprintf(f, " %s %s ", t->string,
                s_val(a, cJSON_IsNumber(t) ? t->valuedouble : (double)NAN));
        nl++;
    }
    double ls = s_num(tr, "losses_step");
    if (nl && isfinite(ls)) fprintf(f, " (step %.0f)", ls);
    fprintf(f, "%s\n", nl ? "" : " -");
    fprintf(f, "lr          %s   momentum %s   weight decay %s\n", s_val(a, s_num(tr, "lr")),
            s_val(b, s_num(tr, "momentum")), s_val(c, s_num(tr, "weight_decay")));
    double ips = s_num(tr, "images_per_second");
    if (isfinite(ips))
        snprintf(b, sizeof b, "%.1f", ips);
    else
        snprintf(b, sizeof b, "-");
    fprintf(f, "speed       %s images/s   ETA %s\n", b, s_dur(a, s_num(tr, "eta_s")));
    const cJSON *ck = cJSON_GetObjectItemCaseSensitive(co, "checkpoint");
    if (cJSON_IsObject(ck))
        fprintf(f, "checkpoint  %s   step %.0f   %s\n", s_str(ck, "path", "?"), s_num(ck, "step"),
                s_ago(a, s_num(ck, "age_ms")));
    else
        fprintf(f, "checkpoint  none yet\n");
    const char *wait = s_str(co, "waiting_for", NULL);
    if (wait)
        fprintf(f, "WAITING     %s   (for %s)\n", wait, s_dur(a, s_num(co, "waiting_ms") / 1000.0));
    double upd = s_num(co, "last_update_age_ms");
    if (isfinite(upd) && upd > 60000)
        fprintf(f, "STALE       the coordinator last updated its status %s\n", s_ago(a, upd));

    const cJSON *list = cJSON_GetObjectItemCaseSensitive(wk, "list"), *w;
    fprintf(f, "\nworkers     %.0f (%.0f alive)\n", s_num(wk, "count"), s_num(wk, "alive"));
    if (cJSON_GetArraySize(list) > 0) {
        fprintf(f, "  %-10s %-24s %-8s %-16s %s\n", "ID", "ADDRESS", "STATE", "SHARDS",
                "HEARTBEAT");
        cJSON_ArrayForEach(w, list) {
            char shards[64] = "";
            size_t off = 0;
            const cJSON *sh = cJSON_GetObjectItemCaseSensitive(w, "shards"), *x;
            int k = 0, total = s_int(cJSON_GetObjectItemCaseSensitive(w, "n_shards"), 0);
            cJSON_ArrayForEach(x, sh) {
                int m =
                    snprintf(shards + off, sizeof shards - off, "%s%d", k ? "," : "", s_int(x, -1));
                if (m < 0 || off + (size_t)m >= sizeof shards - 4) {
                    snprintf(shards + off, sizeof shards - off, ",...");
                    k = total;
                    break;
                }
                off += (size_t)m;
                k++;
            }
            if (k < total) snprintf(shards + off, sizeof shards - off, ",...");
            if (!shards[0]) snprintf(shards, sizeof shards, "-");
            fprintf(f, "  %-10s %-24s %-8s %-16s %s\n", s_str(w, "id", "?"),
                    s_str(w, "address", "?"), s_str(w, "state", "?"), shards,
                    s_ago(a, s_num(w, "last_heartbeat_age_ms")));
        }
    }
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(da, "loaders"), *L;
    fprintf(f, "\nloaders     %.0f\n", s_num(da, "count"));
    if (cJSON_GetArraySize(lo) > 0) {
        fprintf(f, "  %-10s %-24s %-11s %-8s %-9s %-13s %s\n", "ID", "ADDRESS", "LAG(steps)",
                "SERVED", "BAD FILES", "REPLACEMENTS", "HEARTBEAT");
        cJSON_ArrayForEach(L, lo) {
            char n[3][24];
            const char *keys[3] = {"shards_served", "bad_files", "replacements"};
            for (int k = 0; k < 3; k++) {  // null (unknown): "-"
                double v = s_num(L, keys[k]);
                if (isfinite(v)) snprintf(n[k], sizeof n[k], "%.0f", v);
                else snprintf(n[k], sizeof n[k], "-");
            }
            fprintf(f, "  %-10s %-24s %-11.0f %-8s %-9s %-13s %s\n", s_str(L, "id", "?"),
                    s_str(L, "address", "?"), s_num(L, "lag_steps"), n[0], n[1], n[2],
                    s_ago(a, s_num(L, "last_heartbeat_age_ms")));
        }
    }
    fclose(f);
    cJSON_Delete(doc);
    return out;
}

// --- the command -------------------------------------------------------------------------------

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: ser status [HOST:PORT] [options]\n"
            "  HOST:PORT          the coordinator's status port (127.0.0.1:8080)\n"
            "  --json             print the raw /status JSON\n"
            "  --watch SECONDS    refresh every SECONDS until interrupted (errors are shown\n"
            "                     and retried)\n"
            "  --timeout SECONDS  connect + response deadline (5)\n"
            "  Exit status: 0 printed, 1 no answer or not a coordinator's, 2 bad option.\n");
}

// One fetch and print. Returns 0, or 1 with the error printed.
static int s_once(const char *hostport, int json, int timeout_ms) {
    char err[SER_ERR_LEN];
    int status = 0;
    char *body = NULL;
    size_t len = 0;
    int rc = ser_status_fetch(hostport, "/status", timeout_ms, &status, &body, &len, err);
    if (rc != SER_OK) {
        fprintf(stderr, "ser status: %s\n", err);
        return 1;
    }
    int ret = 0;
    if (status != 200) {
        fprintf(stderr, "ser status: %s answered HTTP %d: %.200s\n", hostport, status, body);
        ret = 1;
    } else if (json) {
        fwrite(body, 1, len, stdout);
        if (len == 0 || body[len - 1] != '\n') fputc('\n', stdout);
    } else {
        char *text = ser_status_format(body, len, err);
        if (text) {
            fputs(text, stdout);
            free(text);
        } else {
            fprintf(stderr, "ser status: %s: %s\n", hostport, err);
            ret = 1;
        }
    }
    fflush(stdout);
    free(body);
    return ret;
}

int ser_cmd_status(int argc, char **argv) {
    const char *hostport = "127.0.0.1:8080";
    int json = 0, c;
    double watch = 0, timeout = 5;
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"watch", required_argument, 0, 'w'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'h') {
            s_usage(stdout);
            return 0;
        } else if (c == 'j') {
            json = 1;
        } else if (c == 'w' || c == 't') {
            char *end;
            double v = strtod(optarg, &end);
            if (!*optarg || *end || !(v > 0) || v > 86400) {
                fprintf(stderr, "ser status: --%s wants a number of seconds in (0, 86400]\n",
                        c == 'w' ? "watch" : "timeout");
                return 2;
            }
            if (c == 'w')
                watch = v;
            else
                timeout = v;
        } else {
            s_usage(stderr);  // getopt_long named the option
            return 2;
        }
    }
    if (optind < argc) hostport = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "ser status: one HOST:PORT, not '%s' too\n", argv[optind]);
        return 2;
    }
    int timeout_ms = (int)(timeout * 1000);
    if (watch <= 0) return s_once(hostport, json, timeout_ms);
    int tty = isatty(STDOUT_FILENO);
    for (;;) {
        if (tty) fputs("\033[H\033[2J", stdout);
        time_t now = time(NULL);
        char when[64];
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
        if (!json) printf("ser status %s   every %gs   %s\n\n", hostport, watch, when);
        fflush(stdout);
        s_once(hostport, json, timeout_ms);
        struct timespec ts = {(time_t)watch, (long)((watch - (double)(time_t)watch) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
}
