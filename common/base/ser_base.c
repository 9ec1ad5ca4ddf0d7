// ser_base.c — see ser_base.h.
#include "ser_base.h"

#include <errno.h>
#include <execinfo.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *ser_strerror(int rc) {
    switch (rc) {
    case SER_OK: return "success";
#define XX(name, code, msg) \
    case SER_##name: return msg;
        SER_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
    }
}

int ser_errf(char *err, int rc, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, SER_ERR_LEN, fmt, ap);
        va_end(ap);
    }
    return rc;
}

void ser_err_prefix(char *err, const char *fmt, ...) {
    if (!err) return;
    char old[SER_ERR_LEN];
    snprintf(old, sizeof old, "%s", err);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, SER_ERR_LEN, fmt, ap);
    va_end(ap);
    if (n >= 0 && n < SER_ERR_LEN) snprintf(err + n, (size_t)(SER_ERR_LEN - n), "%s", old);
}

int ser_mkdir_p(const char *dir, char *err) {
    char buf[4096];
    if (!dir || !dir[0]) return ser_errf(err, SER_EINVAL, "empty directory name");
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return ser_errf(err, SER_EINVAL, "directory name too long: %.200s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ser_errf(err, SER_EIO, "cannot create %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ser_errf(err, SER_EIO, "cannot create %s: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return ser_errf(err, SER_EIO, "%s is not a directory", buf);
    return SER_OK;
}

void ser__abort(const char *file, int line, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "%s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    void *frames[32];
    int n = backtrace(frames, 32);
    backtrace_symbols_fd(frames, n, 2);
    abort();
}

// --- logging ---------------------------------------------------------------------------------
static int s_log_level = SER_LL_INFO;

void ser_log_set_level(int level) { s_log_level = level; }
int ser_log_get_level(void) { return s_log_level; }

int ser_log_parse_level(const char *s) {
    static const char *names[] = {"debug", "info", "warning", "error", "silent"};
    for (int i = 0; i < 5; i++)
        if (s && strcmp(s, names[i]) == 0) return i;
    return -1;
}

void ser_log(int level, const char *fmt, ...) {
    if (level < s_log_level) return;
    static const char tag[] = "DIWE";
    char ts[32];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%03ld %c %s\n", ts, now.tv_nsec / 1000000, tag[level < 4 ? level : 3], buf);
}

// --- allocation ------------------------------------------------------------------------------
void *ser_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) SER_ABORT("out of memory allocating %zu bytes", n);
    return p;
}

void *ser_xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) SER_ABORT("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *ser_xaligned(size_t n) {
    size_t sz = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, sz ? sz : 64);
    if (!p) SER_ABORT("out of memory allocating %zu bytes", n);
    memset(p, 0, sz ? sz : 64);
    return p;
}

void *ser_xaligned_raw(size_t n) {
    size_t sz = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, sz ? sz : 64);
    if (!p) SER_ABORT("out of memory allocating %zu bytes", n);
    return p;
}

char *ser_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = ser_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

// --- time ------------------------------------------------------------------------------------
static int64_t (*s_clock_fn)(void);

static int64_t s_clock_default(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ser_clock_now_ms(void) { return s_clock_fn ? s_clock_fn() : s_clock_default(); }
void ser_clock_set(int64_t (*fn)(void)) { s_clock_fn = fn; }

static double (*s_unix_fn)(void);

double ser_clock_unix(void) {
    if (s_unix_fn) return s_unix_fn();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
void ser_clock_unix_set(double (*fn)(void)) { s_unix_fn = fn; }

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ser_median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, s_cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

double ser_time_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// --- sizes -----------------------------------------------------------------------------------

const char *ser_human_bytes(double bytes, char buf[SER_HUMAN_BYTES_LEN]) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (!(bytes >= 0) || bytes > 1e24) {  // NaN, negative, past what an int shows in EiB
        snprintf(buf, SER_HUMAN_BYTES_LEN, "?");
        return buf;
    }
    int u = 0;
    // Rounded as printed: 1023.97 B is "1.0 KiB", never "1024.0 B".
    while (u < 6 && bytes >= (u == 0 ? 1023.5 : 1023.95)) bytes /= 1024.0, u++;
    if (u == 0) snprintf(buf, SER_HUMAN_BYTES_LEN, "%d B", (int)(bytes + 0.5));
    else if (bytes < 99.95) snprintf(buf, SER_HUMAN_BYTES_LEN, "%.1f %s", bytes, units[u]);
    else snprintf(buf, SER_HUMAN_BYTES_LEN, "%d %s", (int)(bytes + 0.5), units[u]);
    return buf;
}

const char *ser_human_file_size(const char *path, char buf[SER_HUMAN_BYTES_LEN]) {
    struct stat st;
    return ser_human_bytes(stat(path, &st) == 0 ? (double)st.st_size : -1.0, buf);
}
