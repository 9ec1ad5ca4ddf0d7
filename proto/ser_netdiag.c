// ser_netdiag.c — see ser_netdiag.h.
#include "ser_netdiag.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "ser_curve.h"

#define S_EP_LEN 256
#define S_CONFIRM_MS 1000  // a lone handshake hang-up waits this long for a better cause

// What ended the last failed attempt of an endpoint.
enum {
    S_NONE = 0,
    S_REFUSED,      // DELAYED, CLOSED, RETRIED
    S_UNREACHABLE,  // CLOSED, RETRIED: connect() failed at once
    S_RESOLVE,      // RETRIED alone: no socket was opened
    S_CURVE_NEEDED, // mechanism mismatch, this process without CURVE
    S_PLAIN_SERVER, // mechanism mismatch, this process with CURVE
    S_CRYPTO,       // CURVE cryptographic / key exchange error
    S_AUTH,         // ZAP refused (value: the status code)
    S_HUNG_UP,      // HANDSHAKE_FAILED_NO_DETAIL (value: errno)
    S_PROTOCOL,     // another protocol error (value: its code)
    S_LOST,         // DISCONNECTED after a handshake
};

typedef struct s_ep {
    char ep[S_EP_LEN];
    // The attempt in progress.
    int delayed, closed, tcp, handshake_failed;
    int64_t attempt_ms;  // when the current connect began (DELAYED), for describe()
    int up;              // handshake succeeded and no DISCONNECTED since
    int seen_up;         // was up at least once
    int64_t hung_up_ms;  // attempts end in NO_DETAIL since then, not named yet (0: none)
    uint32_t hung_up_value;
    // The cause in the log.
    int logged;
    uint32_t logged_value;
    char logged_text[400];  // as logged (describe() repeats it without asking the resolver again)
    int64_t logged_ms;
    int failures;        // failed attempts since the cause was logged
} s_ep;

struct ser_netdiag {
    void *ctx, *pair;
    char who[96];
    s_ep eps[SER_NETDIAG_MAX_ENDPOINTS];
    int nep;
};

static unsigned s_seq;  // makes every monitor's inproc address unique within the process

ser_netdiag *ser_netdiag_new(void *ctx, const char *who) {
    ser_netdiag *d = ser_xcalloc(1, sizeof *d);
    d->ctx = ctx;
    snprintf(d->who, sizeof d->who, "%s", who ? who : "client");
    return d;
}

static void s_close_pair(ser_netdiag *d) {
    if (!d->pair) return;
    zmq_close(d->pair);
    d->pair = NULL;
}

void ser_netdiag_destroy(ser_netdiag **dp) {
    if (!dp || !*dp) return;
    s_close_pair(*dp);
    free(*dp);
    *dp = NULL;
}

int ser_netdiag_watch(ser_netdiag *d, void *sock, char err[SER_ERR_LEN]) {
    s_close_pair(d);
    for (int i = 0; i < d->nep; i++) {  // a new socket: every endpoint starts over, causes stay
        s_ep *e = &d->eps[i];
        e->delayed = e->closed = e->tcp = e->handshake_failed = e->up = 0;
        e->attempt_ms = 0;
    }
    char addr[96];
    snprintf(addr, sizeof addr, "inproc://ser-netdiag-%u-%p",
             __atomic_add_fetch(&s_seq, 1, __ATOMIC_RELAXED), (void *)d);
    int events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_DELAYED | ZMQ_EVENT_CONNECT_RETRIED |
                 ZMQ_EVENT_CLOSED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                 ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
    if (zmq_socket_monitor(sock, addr, events) != 0)
        return ser_errf(err, SER_EIO, "%s: cannot monitor the socket: %s", d->who,
                        zmq_strerror(zmq_errno()));
    // The PAIR connects before the watched socket does: events sent before it would be lost.
    d->pair = zmq_socket(d->ctx, ZMQ_PAIR);
    int linger = 0;
    if (!d->pair || zmq_setsockopt(d->pair, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(d->pair, addr) != 0) {
        int rc = ser_errf(err, SER_EIO, "%s: cannot read the socket's monitor: %s", d->who,
                          zmq_strerror(zmq_errno()));
        s_close_pair(d);
        zmq_socket_monitor(sock, NULL, 0);
        return rc;
    }
    return SER_OK;
}

void *ser_netdiag_socket(const ser_netdiag *d) { return d ? d->pair : NULL; }

// --- endpoints -------------------------------------------------------------------------------

// The HOST:PORT part of a tcp:// endpoint (after a "source;" part), into out.
static void s_hostport(const char *ep, char *out, size_t n) {
    const char *p = strstr(ep, "://");
    p = p ? p + 3 : ep;
    const char *semi = strrchr(p, ';');
    snprintf(out, n, "%s", semi ? semi + 1 : p);
}

// The host of a tcp:// endpoint without brackets, and its port, for getaddrinfo.
static int s_split_hostport(const char *ep, char *host, size_t hn, char *port, size_t pn) {
    char hp[S_EP_LEN];
    s_hostport(ep, hp, sizeof hp);
    char *colon = strrchr(hp, ':');
    if (!colon || colon == hp) return -1;
    *colon = 0;
    snprintf(port, pn, "%s", colon + 1);
    char *h = hp;
    size_t len = strlen(h);
    if (len >= 2 && h[0] == '[' && h[len - 1] == ']') h[len - 1] = 0, h++;
    snprintf(host, hn, "%s", h);
    return 0;
}

static int s_port_ok(const char *p) {
    if (!*p || strlen(p) > 5) return 0;
    for (const char *c = p; *c; c++)
        if (!isdigit((unsigned char)*c)) return 0;
    long v = strtol(p, NULL, 10);
    return v >= 1 && v <= 65535;
}

// A host name or an IPv4 address: letters, digits, '-', '.', '_'; or [IPv6], or an IPv6 address
// without brackets is not accepted by libzmq either for tcp://.
static int s_host_ok(const char *h, size_t n) {
    if (n == 0) return 0;
    if (h[0] == '[') return n > 2 && h[n - 1] == ']';
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '-' && h[i] != '.' && h[i] != '_' &&
            h[i] != '*')
            return 0;
    return 1;
}

// A bind's port may also be "*", "!" or 0 (any free one), "*" and "!" with a "[lo-hi]" range.
static int s_bind_port_ok(const char *p) {
    return s_port_ok(p) || !strcmp(p, "0") || ((p[0] == '*' || p[0] == '!') && (!p[1] || p[1] == '['));
}

// ser_netdiag_check_endpoint and ser_netdiag_check_bind: bind says which.
static int s_check(const char *ep, int bind, char err[SER_ERR_LEN]) {
    const char *want = bind ? "tcp://HOST:PORT (HOST may be *, PORT may be *)" : "tcp://HOST:PORT";
    if (!ep || !*ep) return ser_errf(err, SER_EINVAL, "empty endpoint: expected %s", want);
    if (strlen(ep) >= S_EP_LEN)
        return ser_errf(err, SER_EINVAL, "endpoint '%.40s...' is longer than %d characters", ep,
                        S_EP_LEN - 1);
    const char *sep = strstr(ep, "://");
    if (!sep) {
        const char *colon = strrchr(ep, ':');
        if (colon && !strchr(ep, '/') && s_port_ok(colon + 1) &&
            s_host_ok(ep, (size_t)(colon - ep)))
            return ser_errf(err, SER_EINVAL, "endpoint '%s' has no transport: expected "
                            "tcp://HOST:PORT (did you mean tcp://%s?)", ep, ep);
        return ser_errf(err, SER_EINVAL, "endpoint '%s': expected %s (or ipc://PATH)", ep, want);
    }
    size_t tlen = (size_t)(sep - ep);
    const char *rest = sep + 3;
    if (tlen == 3 && !strncmp(ep, "tcp", 3)) {
        const char *semi = strrchr(rest, ';');  // "tcp://source;host:port"
        const char *hp = semi ? semi + 1 : rest;
        const char *colon = strrchr(hp, ':');
        if (!colon)
            return ser_errf(err, SER_EINVAL, "endpoint '%s' has no port: expected %s", ep, want);
        if (!s_host_ok(hp, (size_t)(colon - hp)))
            return ser_errf(err, SER_EINVAL, "endpoint '%s': '%.*s' is not a host name or address: "
                            "expected %s", ep, (int)(colon - hp), hp, want);
        if (bind ? !s_bind_port_ok(colon + 1) : !s_port_ok(colon + 1))
            return ser_errf(err, SER_EINVAL, "endpoint '%s': port '%s' is not a number in "
                            "1..65535%s: expected %s", ep, colon + 1, bind ? ", 0 or *" : "", want);
        return SER_OK;
    }
    if ((tlen == 3 && !strncmp(ep, "ipc", 3)) || (tlen == 6 && !strncmp(ep, "inproc", 6))) {
        if (!*rest) return ser_errf(err, SER_EINVAL, "endpoint '%s' has no name after '://'", ep);
        return SER_OK;
    }
    static const char *const other[] = {"pgm", "epgm", "tipc", "vmci", "ws", "wss", "udp", NULL};
    for (int i = 0; other[i]; i++)
        if (strlen(other[i]) == tlen && !strncmp(ep, other[i], tlen)) return SER_OK;
    return ser_errf(err, SER_EINVAL, "endpoint '%s': unknown transport '%.*s': expected %s", ep,
                    (int)tlen, ep, want);
}

int ser_netdiag_check_endpoint(const char *ep, char err[SER_ERR_LEN]) { return s_check(ep, 0, err); }

int ser_netdiag_check_bind(const char *ep, char err[SER_ERR_LEN]) { return s_check(ep, 1, err); }

int ser_netdiag_check_endpoints(const char *list, char err[SER_ERR_LEN]) {
    if (!list || !*list) return ser_errf(err, SER_EINVAL, "no endpoint given: expected "
                                         "tcp://HOST:PORT[,tcp://HOST:PORT...]");
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char ep[S_EP_LEN];
        if (n >= sizeof ep)
            return ser_errf(err, SER_EINVAL, "endpoint '%.40s...' is longer than %d characters", p,
                            S_EP_LEN - 1);
        memcpy(ep, p, n);
        ep[n] = 0;
        int rc = s_check(ep, 0, err);
        if (rc) {
            if (!n) ser_err_prefix(err, "'%s' has an empty item: ", list);
            return rc;
        }
        if (!comma) return SER_OK;
        p = comma + 1;
    }
}

int ser_netdiag_connect(void *sock, const char *endpoint, char err[SER_ERR_LEN]) {
    int rc = ser_netdiag_check_endpoint(endpoint, err);
    if (rc) return rc;
    if (zmq_connect(sock, endpoint) == 0) return SER_OK;
    int e = zmq_errno();
    if (e == EINVAL)
        return ser_errf(err, SER_EINVAL, "endpoint '%s' is malformed: expected tcp://HOST:PORT",
                        endpoint);
    if (e == EPROTONOSUPPORT)
        return ser_errf(err, SER_EINVAL, "endpoint '%s': this libzmq does not support its "
                        "transport", endpoint);
    return ser_errf(err, SER_EIO, "cannot connect to %s: %s", endpoint, zmq_strerror(e));
}

// --- causes ----------------------------------------------------------------------------------

static s_ep *s_find(ser_netdiag *d, const char *ep, size_t len) {
    if (len >= S_EP_LEN) len = S_EP_LEN - 1;
    for (int i = 0; i < d->nep; i++)
        if (strlen(d->eps[i].ep) == len && !memcmp(d->eps[i].ep, ep, len)) return &d->eps[i];
    if (d->nep == SER_NETDIAG_MAX_ENDPOINTS) return NULL;
    s_ep *e = &d->eps[d->nep++];
    memset(e, 0, sizeof *e);
    memcpy(e->ep, ep, len);
    e->ep[len] = 0;
    return e;
}

static const char *s_curve_hint(void) {
    return getenv("SER_CURVE_KEY") ? "set SER_CURVE_KEY / SER_CURVE_SERVER_KEY"
                                   : "SER_CURVE_KEY is unset: set SER_CURVE_KEY / "
                                     "SER_CURVE_SERVER_KEY";
}

// The cause of endpoint e in words, into buf.
static void s_cause_text(const s_ep *e, int cause, uint32_t value, char *buf, size_t n) {
    char hp[S_EP_LEN];
    s_hostport(e->ep, hp, sizeof hp);
    switch (cause) {
    case S_REFUSED:
        snprintf(buf, n, "connection refused (nothing listening on %s?)", hp);
        break;
    case S_UNREACHABLE:
        snprintf(buf, n, "cannot reach %s (no route to the host, or the network is down?)", hp);
        break;
    case S_RESOLVE: {
        // libzmq resolves in its I/O thread and says nothing: ask the resolver for its message.
        char host[S_EP_LEN], port[16];
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int g = s_split_hostport(e->ep, host, sizeof host, port, sizeof port) ? EAI_NONAME
                : getaddrinfo(host, port, &hints, &res);
        if (res) freeaddrinfo(res);
        if (g)
            snprintf(buf, n, "host not found: cannot resolve '%s' (%s)", host, gai_strerror(g));
        else  // it resolves now: the attempt failed before connect() for another reason
            snprintf(buf, n, "cannot open a connection to %s (ZeroMQ could not resolve it then, or "
                     "is out of sockets)", hp);
        break;
    }
    case S_CURVE_NEEDED:
        snprintf(buf, n, "CURVE handshake failed: the server uses CURVE and this process has no "
                 "key (%s)", s_curve_hint());
        break;
    case S_PLAIN_SERVER:
        snprintf(buf, n, "CURVE handshake failed: the server does not use CURVE (give it the job's "
                 "cluster.curve_key, or run this process without SER_CURVE_KEY)");
        break;
    case S_CRYPTO:
        snprintf(buf, n, "CURVE handshake failed: cryptographic error (is SER_CURVE_SERVER_KEY the "
                 "server's public key?)");
        break;
    case S_AUTH:
        snprintf(buf, n, "CURVE handshake failed: the server refused this process's key (ZAP "
                 "status %u: is its public key in the server's cluster.curve_allow?)", value);
        break;
    case S_HUNG_UP:
        if (ser_curve_on())
            snprintf(buf, n, "CURVE handshake failed: the server hung up (%s) (is "
                     "SER_CURVE_SERVER_KEY the server's public key? does the server use CURVE?)",
                     strerror((int)value));
        else
            snprintf(buf, n, "handshake failed: the server hung up (%s) (a server that uses "
                     "CURVE? %s; or not a ser endpoint)", strerror((int)value), s_curve_hint());
        break;
    case S_PROTOCOL:
        snprintf(buf, n, "handshake failed: ZeroMQ protocol error 0x%x (not a ser endpoint?)",
                 value);
        break;
    case S_LOST:
        snprintf(buf, n, "disconnected (the server stopped, or the network dropped); "
                 "reconnecting");
        break;
    default:
        snprintf(buf, n, "not connected");
    }
}

static int s_handshake_cause(int c) {
    return c == S_CURVE_NEEDED || c == S_PLAIN_SERVER || c == S_CRYPTO || c == S_AUTH ||
           c == S_HUNG_UP || c == S_PROTOCOL;
}

// An attempt of e failed with cause: logged when new or changed, counted otherwise.
static void s_report(ser_netdiag *d, s_ep *e, int cause, uint32_t value) {
    int64_t now = ser_clock_now_ms();
    if (cause == S_HUNG_UP && s_handshake_cause(e->logged)) {
        cause = e->logged, value = e->logged_value;  // one more attempt of the named failure
    } else if (cause == S_HUNG_UP) {
        // Against a CURVE server, a client without a key sees some attempts end so (the server
        // closes while the client still writes) before one sees the mechanism mismatch, after
        // which libzmq stops retrying: a hang-up is named only when nothing more precise came
        // for S_CONFIRM_MS (ser_netdiag_drain checks the time too).
        if (!e->hung_up_ms) e->hung_up_ms = now, e->hung_up_value = value;
        if (now - e->hung_up_ms < S_CONFIRM_MS) return;
    }
    e->hung_up_ms = 0;
    if (cause == e->logged && value == e->logged_value) {
        e->failures++;
        if (now - e->logged_ms < SER_NETDIAG_REPEAT_MS) return;
        ser_log(SER_LL_WARNING, "%s: %s: %s (still; %d failed attempts in the last %lld s)",
                d->who, e->ep, e->logged_text, e->failures,
                (long long)((now - e->logged_ms) / 1000));
    } else {
        s_cause_text(e, cause, value, e->logged_text, sizeof e->logged_text);
        ser_log(SER_LL_WARNING, "%s: %s: %s", d->who, e->ep, e->logged_text);
    }
    e->logged = cause, e->logged_value = value, e->logged_ms = now, e->failures = 0;
}

static void s_event(ser_netdiag *d, uint16_t ev, uint32_t value, const char *ep, size_t len) {
    s_ep *e = s_find(d, ep, len);
    if (!e) return;
    switch (ev) {
    case ZMQ_EVENT_CONNECT_DELAYED:
        e->delayed = 1;
        e->attempt_ms = ser_clock_now_ms();
        break;
    case ZMQ_EVENT_CONNECTED:
        e->tcp = 1;
        break;
    case ZMQ_EVENT_CLOSED:
        e->closed = 1;
        break;
    case ZMQ_EVENT_CONNECT_RETRIED:  // an attempt ended; a handshake failure named it already
        if (!e->handshake_failed && !e->tcp)
            s_report(d, e, e->closed ? (e->delayed ? S_REFUSED : S_UNREACHABLE) : S_RESOLVE, 0);
        e->delayed = e->closed = e->tcp = e->handshake_failed = 0;
        e->attempt_ms = 0;
        break;
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        e->up = e->seen_up = 1;
        e->hung_up_ms = 0;
        if (e->logged)
            ser_log(SER_LL_INFO, "%s: %s: connected (after %d more failed attempts)", d->who,
                    e->ep, e->failures);
        e->logged = S_NONE, e->logged_value = 0, e->failures = 0;
        break;
    case ZMQ_EVENT_DISCONNECTED:
        if (e->up) s_report(d, e, S_LOST, 0);
        e->up = 0;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        e->handshake_failed = 1;
        s_report(d, e, S_HUNG_UP, value);
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        e->handshake_failed = 1;
        s_report(d, e, S_AUTH, value);
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        e->handshake_failed = 1;
        if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            s_report(d, e, ser_curve_on() ? S_PLAIN_SERVER : S_CURVE_NEEDED, 0);
        else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC ||
                 value == ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE)
            s_report(d, e, S_CRYPTO, 0);
        else if ((value & 0xF0000000u) == 0x20000000u)  // ZMQ_PROTOCOL_ERROR_ZAP_*
            s_report(d, e, S_AUTH, 0);
        else
            s_report(d, e, S_PROTOCOL, value);
        break;
    default:
        break;
    }
}

void ser_netdiag_drain(ser_netdiag *d) {
    if (!d || !d->pair) return;
    for (int i = 0; i < d->nep; i++)  // a hang-up that nothing more precise followed
        if (d->eps[i].hung_up_ms &&
            ser_clock_now_ms() - d->eps[i].hung_up_ms >= S_CONFIRM_MS)
            s_report(d, &d->eps[i], S_HUNG_UP, d->eps[i].hung_up_value);
    for (;;) {
        // [6 bytes: uint16 event, uint32 value][the endpoint], host byte order (libzmq 4.x).
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, d->pair, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        uint32_t value = 0;
        int ok = zmq_msg_size(&m) == 6;
        if (ok) {
            memcpy(&ev, zmq_msg_data(&m), 2);
            memcpy(&value, (const uint8_t *)zmq_msg_data(&m) + 2, 4);
        }
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        int first = 1;
        while (more) {  // the endpoint frame arrives with the first (a message is atomic)
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, d->pair, 0) < 0) {
                zmq_msg_close(&m);
                return;
            }
            if (ok && first) s_event(d, ev, value, zmq_msg_data(&m), zmq_msg_size(&m));
            first = 0;
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
    }
}

int ser_netdiag_describe(ser_netdiag *d, char *buf, size_t n) {
    if (n) buf[0] = 0;
    if (!d) return SER_NETDIAG_UNKNOWN;
    ser_netdiag_drain(d);
    int state = SER_NETDIAG_UNKNOWN;
    size_t off = 0;
    int64_t now = ser_clock_now_ms();
    for (int i = 0; i < d->nep; i++) {
        const s_ep *e = &d->eps[i];
        char text[400];
        int st;
        if (e->up) {
            if (state == SER_NETDIAG_UNKNOWN) state = SER_NETDIAG_UP;
            continue;
        }
        if (e->logged) {
            st = SER_NETDIAG_DOWN_LOGGED;
            snprintf(text, sizeof text, "%s", e->logged_text);
        } else if (e->tcp) {
            st = SER_NETDIAG_DOWN;
            snprintf(text, sizeof text, "TCP connected, but no ZeroMQ handshake (not a ser "
                     "endpoint?)");
        } else if (e->delayed) {
            st = SER_NETDIAG_DOWN;
            snprintf(text, sizeof text, "no answer to the TCP connection for %lld ms (the host is "
                     "down, or a firewall drops the packets?)", (long long)(now - e->attempt_ms));
        } else {
            continue;  // between attempts, nothing named yet
        }
        if (st == SER_NETDIAG_DOWN || state != SER_NETDIAG_DOWN) state = st;
        if (off < n) {
            int w = snprintf(buf + off, n - off, "%s%s: %s", off ? "; " : "", e->ep, text);
            off += w > 0 ? (size_t)w : 0;
        }
    }
    return state;
}
