// ser_runlog.c — see ser_runlog.h. JSON lines are made with cJSON (already a dependency, the
// status port uses it); TensorBoard events are packed with protobuf-c from proto/tfevent.proto
// and framed as TFRecords here.
//
// Both files are plain file descriptors without user-space buffering: each step is formatted
// into one buffer and handed to the kernel with write(2) (looped over short writes), so
// nothing is left in a stdio buffer when the process dies.
#include "ser_runlog.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tfevent.pb-c.h"

#define S_METRICS_NAME "metrics.jsonl"
#define S_FILE_VERSION "brain.Event:2"
#define S_PATH_LEN 4096
#define S_MAX_SUFFIX 1000  // events file names tried per open before giving up

struct ser_runlog {
    int json_fd;
    int event_fd;
    char json_path[S_PATH_LEN];
    char event_path[S_PATH_LEN];
};

// --- CRC-32C ---------------------------------------------------------------------------------
// Byte-at-a-time table for the reflected Castagnoli polynomial, built once on first use.
static uint32_t s_crc_table[256];
static pthread_once_t s_crc_once = PTHREAD_ONCE_INIT;

static void s_crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        s_crc_table[i] = c;
    }
}

uint32_t ser_runlog_crc32c(const void *data, size_t n) {
    pthread_once(&s_crc_once, s_crc_init);
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = s_crc_table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t ser_runlog_crc32c_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// --- files -----------------------------------------------------------------------------------
static double s_wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// Writes all of buf, retrying short writes and EINTR.
static int s_write_all(int fd, const void *buf, size_t n, const char *path, char *err) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return ser_errf(err, SER_EIO, "run log: cannot write %s: %s", path,
                            w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return SER_OK;
}

static void s_put_u32le(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

// Packs ev as one TFRecord and writes it with a single write.
static int s_write_event(ser_runlog *r, const Tensorboard__Event *ev, char *err) {
    size_t len = tensorboard__event__get_packed_size(ev);
    unsigned char *buf = ser_xmalloc(len + 16);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)len >> (8 * i));
    s_put_u32le(buf + 8, ser_runlog_crc32c_mask(ser_runlog_crc32c(buf, 8)));
    size_t packed = tensorboard__event__pack(ev, buf + 12);
    SER_ASSERT(packed == len);
    s_put_u32le(buf + 12 + len, ser_runlog_crc32c_mask(ser_runlog_crc32c(buf + 12, len)));
    int rc = s_write_all(r->event_fd, buf, len + 16, r->event_path, err);
    free(buf);
    return rc;
}

// Opens metrics.jsonl for appending. If a crash left its last line without a newline, ends
// that line so that the next record starts on its own line (the torn line stays, unparseable,
// and readers skip it).
static int s_open_metrics(ser_runlog *r, const char *dir, char *err) {
    if (snprintf(r->json_path, sizeof r->json_path, "%s/%s", dir, S_METRICS_NAME) >=
        (int)sizeof r->json_path)
        return ser_errf(err, SER_EINVAL, "run log: directory name too long: %.200s", dir);
    r->json_fd = open(r->json_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (r->json_fd < 0)
        return ser_errf(err, SER_EIO, "run log: cannot open %s: %s", r->json_path, strerror(errno));
    struct stat st;
    if (fstat(r->json_fd, &st) != 0)
        return ser_errf(err, SER_EIO, "run log: cannot stat %s: %s", r->json_path, strerror(errno));
    if (st.st_size > 0) {
        char last = 0;
        if (pread(r->json_fd, &last, 1, st.st_size - 1) != 1)
            return ser_errf(err, SER_EIO, "run log: cannot read %s: %s", r->json_path,
                            strerror(errno));
        if (last != '\n') return s_write_all(r->json_fd, "\n", 1, r->json_path, err);
    }
    return SER_OK;
}

// Creates a new events file, named as TensorFlow's writers do; if the name is taken (a second
// open in the same second by the same process), appends ".1", ".2", ... which sorts after it,
// so TensorBoard reads the files in order.
static int s_open_events(ser_runlog *r, const char *dir, double now, char *err) {
    char host[256];
    if (gethostname(host, sizeof host) != 0 || !host[0]) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (*p == '/') *p = '_';
    for (int k = 0; k < S_MAX_SUFFIX; k++) {
        char suffix[16] = "";
        if (k > 0) snprintf(suffix, sizeof suffix, ".%d", k);
        if (snprintf(r->event_path, sizeof r->event_path, "%s/events.out.tfevents.%010lld.%s.%ld%s",
                     dir, (long long)now, host, (long)getpid(),
                     suffix) >= (int)sizeof r->event_path)
            return ser_errf(err, SER_EINVAL, "run log: directory name too long: %.200s", dir);
        r->event_fd = open(r->event_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (r->event_fd >= 0) break;
        if (errno != EEXIST)
            return ser_errf(err, SER_EIO, "run log: cannot create %s: %s", r->event_path,
                            strerror(errno));
    }
    if (r->event_fd < 0)
        return ser_errf(err, SER_EIO, "run log: %d events files named like %s exist already",
                        S_MAX_SUFFIX, r->event_path);
    Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
    ev.wall_time = now;
    ev.what_case = TENSORBOARD__EVENT__WHAT_FILE_VERSION;
    ev.file_version = (char *)(uintptr_t)S_FILE_VERSION;
    return s_write_event(r, &ev, err);
}

// --- API -------------------------------------------------------------------------------------
ser_runlog *ser_runlog_open(const char *dir, char err[SER_ERR_LEN]) {
    ser_runlog *r = ser_xcalloc(1, sizeof *r);
    r->json_fd = r->event_fd = -1;
    if (ser_mkdir_p(dir, err) != SER_OK) {
        ser_err_prefix(err, "run log: ");
        goto fail;
    }
    if (s_open_metrics(r, dir, err) != SER_OK) goto fail;
    if (s_open_events(r, dir, s_wall_time(), err) != SER_OK) goto fail;
    return r;
fail:
    if (r->event_fd >= 0) unlink(r->event_path);  // a file without its header helps nobody
    ser_runlog_destroy(&r);
    return NULL;
}

int ser_runlog_step(ser_runlog *r, int64_t step, const char *const *names, const double *values,
                    int n, char err[SER_ERR_LEN]) {
    SER_ASSERT(r);
    if (n < 0 || (n > 0 && (!names || !values)))
        return ser_errf(err, SER_EINVAL, "run log: bad scalar list (n = %d)", n);
    for (int i = 0; i < n; i++)
        if (!names[i]) return ser_errf(err, SER_EINVAL, "run log: scalar %d has no name", i);
    double now = s_wall_time();
    int rc = SER_OK;
    char *line = NULL;
    Tensorboard__Summary__Value *vals = ser_xcalloc((size_t)n + 1, sizeof *vals);
    Tensorboard__Summary__Value **ptrs = ser_xcalloc((size_t)n + 1, sizeof *ptrs);

    // The JSON line. cJSON escapes the keys and prints numbers with up to 17 significant
    // digits (shortest of %.15g / %.17g that round-trips).
    cJSON *o = cJSON_CreateObject();
    int ok = o && cJSON_AddNumberToObject(o, "step", (double)step) &&
             cJSON_AddNumberToObject(o, "time", now);
    for (int i = 0; ok && i < n; i++)
        ok = isfinite(values[i]) ? cJSON_AddNumberToObject(o, names[i], values[i]) != NULL
                                 : cJSON_AddNullToObject(o, names[i]) != NULL;
    char *json = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!json) {
        rc = ser_errf(err, SER_ENOMEM, "run log: out of memory formatting step %lld",
                      (long long)step);
        goto done;
    }
    size_t len = strlen(json);
    line = ser_xmalloc(len + 2);
    memcpy(line, json, len);
    line[len] = '\n';
    line[len + 1] = 0;
    cJSON_free(json);
    if ((rc = s_write_all(r->json_fd, line, len + 1, r->json_path, err)) != SER_OK) goto done;

    // The event: one Summary.Value per name.
    for (int i = 0; i < n; i++) {
        tensorboard__summary__value__init(&vals[i]);
        vals[i].tag = (char *)(uintptr_t)names[i];
        vals[i].value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
        vals[i].simple_value = (float)values[i];
        ptrs[i] = &vals[i];
    }
    Tensorboard__Summary sum = TENSORBOARD__SUMMARY__INIT;
    sum.n_value = (size_t)n;
    sum.value = ptrs;
    Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
    ev.wall_time = now;
    ev.step = step;
    ev.what_case = TENSORBOARD__EVENT__WHAT_SUMMARY;
    ev.summary = &sum;
    rc = s_write_event(r, &ev, err);
done:
    free(line);
    free(ptrs);
    free(vals);
    return rc;
}

void ser_runlog_destroy(ser_runlog **rp) {
    if (!rp || !*rp) return;
    ser_runlog *r = *rp;
    if (r->json_fd >= 0) close(r->json_fd);
    if (r->event_fd >= 0) close(r->event_fd);
    free(r);
    *rp = NULL;
}
